"""`pathasst curate refine DATASET... --out DIR`: rewrite captions without what describes nothing.

Every record's ``caption`` is rewritten by the rules of
:func:`pathasst.dataset_builders.curate.captions.refine_caption`: the figure number, reference
markers, in-text citations, cross-references and boilerplate ("See text for details", the
colour-reference note, "Reproduced with permission from ...") are removed, stain names and
magnifications normalised ("H and E" -> "H&E", "x400" -> "×400"). Nothing is added: apart from the
normalisation table's outputs, every word of a refined caption was in the caption it came from.
``caption_raw`` stays as it was found. A figure record's ``meta.split`` (written by ``curate
split``) is refined the same way, part by part, so that its panels match the refined caption.
``meta.refine`` records the rules version and whether the caption changed.

Records whose caption is empty, or refines to nothing (a caption that was nothing but
boilerplate), go to ``rejects.jsonl`` with the reason: inputs = records written + ledger lines.
Resumable by record id, like every stage; records keep their split; ``summary.json`` and a
one-line summary report what was done.

``--model DIR_OR_ENDPOINT`` refines the caption with an LLM instead (the same model folders and
endpoints as ``curate split --model``, prompt ``data/prompts/refine.yaml``). Its answer must be
valid JSON of the template's schema and add no word to the caption (the rules' normalisations
``H&E``, ``PAS`` and ``×`` excepted); otherwise the rules' refinement is used and the reason is
recorded in ``meta.refine.llm`` and counted in ``summary.json``. The parts of a figure's
``meta.split`` are refined by the rules either way (they are pieces of the caption, not
captions).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from pathasst.dataset_builders.curate.llm import LLMSettings

from pathasst.dataset_builders.curate.split import (
    Outcome,
    add_common_arguments,
    add_llm_summary,
    add_model_argument,
    command_line,
    dump_meta,
    is_subfigure,
    llm_line,
    load_meta,
    make_captioner,
    parse_common,
    run_record_stage,
    summary_line,
)

if TYPE_CHECKING:
    from pathasst.dataset_builders.curate.llm import LLMCaptioner


@dataclasses.dataclass
class RefineConfig(LLMSettings):
    """Settings of ``curate refine``; the LLM keys are those of
    :class:`~pathasst.dataset_builders.curate.llm.LLMSettings` (without ``model``: rules only).

    Attributes:
        shard: ``K/N``: process only the records whose id hashes to the K-th of N parts.
        inputs: the input dataset folders (filled in from the command line).
        rules_version: version of the refining rules (filled in; part of the config hash).
    """

    shard: Optional[str] = None
    inputs: list[str] = dataclasses.field(default_factory=list)
    rules_version: str = ""

    def __post_init__(self) -> None:
        from pathasst.inputs import parse_shard

        parse_shard(self.shard)
        self.check()


def refine_record(record: Mapping[str, Any], cfg: RefineConfig, captioner: Optional["LLMCaptioner"] = None) -> Outcome:
    """Refine one PathCap record's caption (see the module docstring); with the LLM when a
    ``captioner`` is given."""
    from pathasst.dataset_builders.curate.captions import RULES_VERSION, refine_caption

    caption = record.get("caption") or ""
    if not caption.strip():
        return Outcome("rejected", reason="empty caption: nothing to refine")
    llm: Optional[dict[str, Any]] = None
    if captioner is None:
        refined = refine_caption(caption)
    else:
        answer = captioner.refine(caption)
        llm = answer.info
        if answer.value is None:  # fallback=none
            return Outcome("rejected", reason=f"LLM answer unusable: {llm.get('reason')}",
                           info={"detail": llm.get("detail", ""), "model": llm.get("model")})
        refined = answer.value
    if not refined:
        return Outcome("rejected", reason="empty after refining: nothing descriptive left",
                       info={"caption": caption[:300]})
    meta = load_meta(record)
    split = meta.get("split")
    if isinstance(split, dict) and not is_subfigure(record, meta):
        meta["split"] = _refine_split_meta(split)
    elif isinstance(split, dict):
        for key in ("shared_prefix", "shared_suffix"):
            if isinstance(split.get(key), str):
                split[key] = refine_caption(split[key])
    changed = refined != caption
    meta["refine"] = {"rules": RULES_VERSION, "changed": changed}
    if llm is not None:
        meta["refine"].update(source="llm" if llm.get("status") == "llm" else "rules", llm=llm)
    return Outcome("changed" if changed else "unchanged",
                   record={**record, "caption": refined, "meta": dump_meta(meta)})


def _refine_split_meta(split: dict[str, Any]) -> dict[str, Any]:
    from pathasst.dataset_builders.curate.captions import refine_caption

    out = dict(split)
    for key in ("shared_prefix", "shared_suffix"):
        if isinstance(out.get(key), str):
            out[key] = refine_caption(out[key])
    panels = []
    for panel in out.get("panels") or []:
        if isinstance(panel, dict) and isinstance(panel.get("subcaption"), str):
            panel = {**panel, "subcaption": refine_caption(panel["subcaption"])}
        panels.append(panel)
    if "panels" in out:
        out["panels"] = panels
    return out


def refine_dataset(datasets: list[str], out: str | Path, cfg: Optional[RefineConfig] = None,
                   **kwargs: Any) -> dict[str, Any]:
    """Run the refine stage (see the module docstring); keyword arguments go to
    :func:`~pathasst.dataset_builders.curate.split.run_record_stage`."""
    from pathasst.dataset_builders.curate.captions import RULES_VERSION

    cfg = dataclasses.replace(cfg or RefineConfig(), inputs=[str(d) for d in datasets], rules_version=RULES_VERSION)
    captioner = make_captioner(cfg)
    card = (
        "# PathCap (captions refined)\n\n"
        "Pathology image-caption pairs whose captions were refined by the rules of `pathasst curate refine` "
        "(rules version " + RULES_VERSION + "): figure numbers, reference markers, citations and boilerplate "
        "removed; stain names and magnifications normalised (H&E, ×400); nothing added. The caption as found "
        "is kept in `caption_raw`. Inputs that could not be used are listed in `rejects.jsonl`.\n\n"
        "```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\")\n```\n"
    )
    if captioner is not None:
        card = card.replace("refined by the rules of `pathasst curate refine`",
                            f"refined by an LLM (`pathasst curate refine --model`, prompt {captioner.prompt_tag('refine')}; "
                            "the rules where its answer failed validation, see `meta.refine.source`) and the rules of "
                            "`pathasst curate refine`")
    transform = refine_record if captioner is None else functools.partial(refine_record, captioner=captioner)
    summary = run_record_stage("refine", cfg.inputs, out, cfg, transform, card=card, **kwargs)
    return add_llm_summary(summary, captioner)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Refine captions with rules: remove figure numbers, reference markers, citations and boilerplate; "
        "normalise stains and magnifications (H and E -> H&E, x400 -> ×400); never add a fact. caption_raw is "
        "kept. Empty captions, and captions with nothing descriptive left, go to rejects.jsonl; rerunning resumes."
    )
    add_common_arguments(parser)
    add_model_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "model", None):
        args.inputs = [*args.inputs, f"model={args.model}"]
    datasets, cfg = parse_common(args, RefineConfig)
    summary = refine_dataset(datasets, args.out, cfg, overwrite=args.overwrite, resume=args.resume,
                             progress=not args.no_progress, command=command_line("refine"))
    c = summary["this_run"]
    print(summary_line(summary, f"{c.get('changed', 0)} captions changed, {c.get('unchanged', 0)} unchanged")
          + llm_line(summary))
    return 0


if __name__ == "__main__":  # python -m pathasst.dataset_builders.curate.refine DATASET --out DIR
    from pathasst.cli import main as _main

    sys.exit(_main(["curate", "refine", *sys.argv[1:]]))
