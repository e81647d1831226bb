"""`pathasst curate splitter-data INPUT... --out DIR`: SFT pairs for `pathasst train splitter`.

Turns captions into the training pairs of the LLM splitter/refiner: for every caption, the rules'
split (:func:`~pathasst.dataset_builders.curate.captions.split_caption`) as the JSON answer of the
``split`` task and the rules' refinement as the answer of the ``refine`` task, unless a **hand
correction** for that figure says otherwise. The answers are written exactly as inference expects
them (:func:`~pathasst.dataset_builders.curate.llm.split_answer`), the prompt template version is
recorded on every pair.

Inputs (any mix):

* PathCap dataset folders: their figure records (subfigure records, which repeat their parent's
  caption, are skipped and counted); the id is ``figure_id`` (else ``id``);
* ``.jsonl`` files of ``{"id", "caption"}`` lines;
* ``.yaml`` files with a list of ``{id, caption}`` (top level, or under ``captions:`` or
  ``split:`` as in ``data/caption_cases.yaml``).

Hand corrections (``corrections=FILE``, YAML mapping or JSONL with ``id``), keyed by figure id::

    PMC1234567/F2:
      split:                      # replaces the rules' split
        shared_prefix: "Renal biopsy."
        shared_suffix: ""
        panels: [[A, "Crescent."], [B, "IgA deposits."]]     # or [{label, subcaption}]
      refine: "Renal biopsy. (A) Crescent. (B) IgA deposits."  # replaces the rules' refinement
      skip: false                 # true: leave this caption out of training

A correction must satisfy the prompt's JSON Schema and must not add words to the caption (the same
faithfulness check inference applies): a bad one stops the build with its id.

``exclude=FILE`` (same forms as a caption input) names captions that must never be trained on,
e.g. a held-out benchmark: inputs whose id or whitespace-normalised caption text is in it go to
the ledger. Output: ``DIR/pairs.jsonl``, ``DIR/rejects.jsonl`` (one line per input not turned into
pairs, with the reason) and ``DIR/summary.json``: inputs = captions used + ledger lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from pathasst.errors import ConfigError, InputError

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
SUBFIGURE = "\0subfigure"  # marks a skipped subfigure record in read_captions' output


@dataclasses.dataclass
class SFTConfig:
    """Settings of ``curate splitter-data``.

    Attributes:
        tasks: the pairs to write per caption (``split``, ``refine``).
        corrections: hand corrections file (YAML or JSONL, keyed by figure id).
        exclude: captions never to write (a held-out set), by id or caption text.
        distribute: answer split pairs with the shared parts copied into every sub-caption.
        keep_unsplit: also write split pairs for captions without panel markers (one panel, label
            null): the model must learn to leave single captions whole.
    """

    tasks: list[str] = dataclasses.field(default_factory=lambda: ["split", "refine"])
    corrections: Optional[str] = None
    exclude: Optional[str] = None
    distribute: bool = False
    keep_unsplit: bool = True

    def __post_init__(self) -> None:
        if not self.tasks or any(t not in ("split", "refine") for t in self.tasks):
            raise ValueError(f"tasks must be a non-empty list of split, refine (got {self.tasks!r})")


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def read_captions(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(id, caption)`` of a caption input: a PathCap folder, a JSONL or a YAML file (see the
    module docstring). A subfigure record of a PathCap folder (it repeats its parent's caption)
    yields ``("", SUBFIGURE)`` so that the caller can count it as skipped."""
    from pathasst.config import yaml_load

    p = Path(path).expanduser()
    if p.is_dir():
        from pathasst.dataset_builders.curate.split import input_shards, is_subfigure, iter_rows, load_meta

        for row, _split in iter_rows(input_shards(p)):
            if is_subfigure(row, load_meta(row)):
                yield "", SUBFIGURE
                continue
            yield str(row.get("figure_id") or row.get("id") or ""), row.get("caption") or ""
        return
    if not p.is_file():
        raise InputError(f"INPUT {path}: no such file or folder")
    if p.suffix == ".jsonl":
        with p.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        item = json.loads(line)
                    except ValueError as exc:
                        raise InputError(f"INPUT {path}: line {number} is not JSON ({exc})") from None
                    yield str(item.get("id") or f"{p.stem}:{number}"), str(item.get("caption") or "")
        return
    if p.suffix in (".yaml", ".yml"):
        data = yaml_load(p.read_text(encoding="utf-8"))
        if isinstance(data, Mapping):
            data = data.get("captions", data.get("split", []))
        if not isinstance(data, list):
            raise InputError(f"INPUT {path}: expected a list of {{id, caption}} (or one under captions:)")
        for number, item in enumerate(data, 1):
            if not isinstance(item, Mapping):
                raise InputError(f"INPUT {path}: item {number} is not a mapping with id and caption")
            yield str(item.get("id") or f"{p.stem}:{number}"), str(item.get("caption") or "")
        return
    raise InputError(f"INPUT {path}: expected a PathCap folder, a .jsonl or a .yaml file")


def _panels(value: Any, where: str) -> list[dict[str, Any]]:
    out = []
    for item in value or []:
        if isinstance(item, Mapping):
            out.append({"label": item.get("label"), "subcaption": item.get("subcaption")})
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            out.append({"label": item[0], "subcaption": item[1]})
        else:
            raise ConfigError(f"{where}: a panel must be [label, sub-caption] or {{label, subcaption}} (got {item!r})")
    return out


def read_corrections(path: Optional[str]) -> dict[str, dict[str, Any]]:
    """Hand corrections keyed by figure id (see the module docstring).

    Raises:
        ConfigError: an unreadable file or a malformed entry, named by id.
    """
    from pathasst.config import yaml_load

    if not path:
        return {}
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"corrections={path}: no such file")
    entries: dict[str, Any] = {}
    if p.suffix == ".jsonl":
        for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                item = json.loads(line)
                if not isinstance(item, dict) or not item.get("id"):
                    raise ConfigError(f"corrections={path}: line {number} has no id")
                entries[str(item.pop("id"))] = item
    else:
        data = yaml_load(p.read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise ConfigError(f"corrections={path}: expected a mapping of figure id -> correction")
        entries = {str(k): v for k, v in data.items()}
    out = {}
    for fid, entry in entries.items():
        where = f"corrections={path}, {fid}"
        if not isinstance(entry, Mapping) or not set(entry) <= {"split", "refine", "skip", "note"}:
            raise ConfigError(f"{where}: expected keys split, refine, skip, note (got {entry!r})")
        fixed: dict[str, Any] = {"skip": bool(entry.get("skip", False))}
        if entry.get("split") is not None:
            split = entry["split"]
            if not isinstance(split, Mapping):
                raise ConfigError(f"{where}: split must be a mapping with shared_prefix, shared_suffix, panels")
            fixed["split"] = {"shared_prefix": str(split.get("shared_prefix") or ""),
                              "shared_suffix": str(split.get("shared_suffix") or ""),
                              "panels": _panels(split.get("panels"), where)}
        if entry.get("refine") is not None:
            fixed["refine"] = str(entry["refine"])
        out[fid] = fixed
    return out


def _exclusions(path: Optional[str]) -> tuple[set[str], set[str]]:
    if not path:
        return set(), set()
    ids, texts = set(), set()
    for cid, caption in read_captions(path):
        ids.add(cid)
        if caption:
            texts.add(_normal(caption))
    return ids, texts


def build_pairs(inputs: list[str], out: str | Path, cfg: Optional[SFTConfig] = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Write ``out/pairs.jsonl`` from ``inputs`` (see the module docstring); returns the summary.

    Raises:
        InputError: a missing input. ConfigError: a bad correction. OutputError: ``out`` holds
            pairs already and ``overwrite`` is false.
    """
    from pathasst.dataset_builders.curate.captions import RULES_VERSION, SplitResult, Panel, refine_caption, split_caption
    from pathasst.dataset_builders.curate.llm import (
        AnswerRejected,
        load_prompt,
        parse_refine_answer,
        parse_split_answer,
        refine_answer,
        split_answer,
    )
    from pathasst.errors import OutputError

    cfg = cfg or SFTConfig()
    folder = Path(out)
    if (folder / PAIRS_FILE).exists() and not overwrite:
        raise OutputError(f"--out {out} already holds {PAIRS_FILE}; pass --overwrite to write it afresh")
    folder.mkdir(parents=True, exist_ok=True)
    corrections = read_corrections(cfg.corrections)
    excluded_ids, excluded_texts = _exclusions(cfg.exclude)
    templates = {task: load_prompt(task) for task in cfg.tasks}
    counts = {"inputs": 0, "captions": 0, "pairs": 0, "corrected_split": 0, "corrected_refine": 0,
              "subfigure_records_skipped": 0}
    by_task = {task: 0 for task in cfg.tasks}
    reasons: dict[str, int] = {}
    seen: set[str] = set()
    used_corrections: set[str] = set()

    with (folder / PAIRS_FILE).open("w", encoding="utf-8") as pairs, \
            (folder / "rejects.jsonl").open("w", encoding="utf-8") as rejects:

        def reject(cid: str, reason: str, source: str) -> None:
            key = reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
            rejects.write(json.dumps({"id": cid, "reason": reason, "input": source}, ensure_ascii=False) + "\n")

        def write(cid: str, task: str, caption: str, answer: str, origin: str) -> None:
            pairs.write(json.dumps({"id": f"{cid}#{task}", "figure_id": cid, "task": task, "caption": caption,
                                    "answer": answer, "origin": origin, "prompt": templates[task].tag,
                                    "rules": RULES_VERSION}, ensure_ascii=False) + "\n")
            counts["pairs"] += 1
            by_task[task] += 1

        for source in inputs:
            for cid, caption in read_captions(source):
                if caption == SUBFIGURE:
                    counts["subfigure_records_skipped"] += 1
                    continue
                counts["inputs"] += 1
                if not cid:
                    reject(cid, "invalid: no id", source)
                    continue
                if cid in seen:
                    reject(cid, f"duplicate id: '{cid}' seen before", source)
                    continue
                seen.add(cid)
                if not caption.strip():
                    reject(cid, "empty caption: nothing to learn from", source)
                    continue
                if cid in excluded_ids or _normal(caption) in excluded_texts:
                    reject(cid, "held out: the caption is in the exclude file", source)
                    continue
                fix = corrections.get(cid)
                if fix is not None:
                    used_corrections.add(cid)
                    if fix["skip"]:
                        reject(cid, "skipped: the corrections file says skip", source)
                        continue
                wrote = False
                if "split" in cfg.tasks:
                    if fix is not None and "split" in fix:
                        answer = json.dumps(fix["split"], ensure_ascii=False, separators=(", ", ": "))
                        try:
                            parse_split_answer(answer, caption, templates["split"])
                        except AnswerRejected as exc:
                            raise ConfigError(f"corrections={cfg.corrections}, {cid}: the split correction is not "
                                              f"usable ({exc})") from None
                        if cfg.distribute:
                            result = SplitResult(fix["split"]["shared_prefix"], fix["split"]["shared_suffix"],
                                                 [Panel(p["label"], p["subcaption"]) for p in fix["split"]["panels"]])
                            answer = split_answer(result.distribute())
                        write(cid, "split", caption, answer, "correction")
                        counts["corrected_split"] += 1
                        wrote = True
                    else:
                        result = split_caption(caption, distribute=cfg.distribute)
                        if result.panels and (result.markers_found or cfg.keep_unsplit):
                            write(cid, "split", caption, split_answer(result), "rules")
                            wrote = True
                if "refine" in cfg.tasks:
                    if fix is not None and "refine" in fix:
                        try:
                            parse_refine_answer(refine_answer(fix["refine"]), caption, templates["refine"])
                        except AnswerRejected as exc:
                            raise ConfigError(f"corrections={cfg.corrections}, {cid}: the refine correction is not "
                                              f"usable ({exc})") from None
                        write(cid, "refine", caption, refine_answer(fix["refine"]), "correction")
                        counts["corrected_refine"] += 1
                        wrote = True
                    else:
                        refined = refine_caption(caption)
                        if refined:
                            write(cid, "refine", caption, refine_answer(refined), "rules")
                            wrote = True
                if wrote:
                    counts["captions"] += 1
                else:
                    reject(cid, "no pair: nothing left to answer (no panels, nothing descriptive)", source)

    unused = sorted(set(corrections) - used_corrections)
    if unused:
        log.warning("%d corrections name no input caption: %s", len(unused), ", ".join(unused[:5]))
    summary = {
        "out": str(folder),
        **counts,
        "pairs_by_task": by_task,
        "rejected": sum(reasons.values()),
        "reject_reasons": reasons,
        "corrections_unused": unused,
        "prompts": {task: t.tag for task, t in templates.items()},
        "rules": RULES_VERSION,
        "config": dataclasses.asdict(cfg),
        "inputs_files": [str(i) for i in inputs],
    }
    summary["accounted"] = counts["captions"] + summary["rejected"] == counts["inputs"]
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build SFT pairs for `pathasst train splitter`: the rules' split and refinement of every caption, as the "
        "JSON answers inference expects, overridden by hand corrections (corrections=FILE keyed by figure id). "
        "Inputs: PathCap folders, .jsonl or .yaml caption files. exclude=FILE keeps a held-out set out. Writes "
        "DIR/pairs.jsonl, DIR/rejects.jsonl and DIR/summary.json."
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT | key=value",
                        help="PathCap folders, .jsonl/.yaml caption files, and settings such as corrections=FILE")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (pairs.jsonl)")
    parser.add_argument("--recipe", help="YAML file with settings (key=value overrides win over it)")
    parser.add_argument("--overwrite", action="store_true", help="write pairs.jsonl afresh")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.common import parse_paths_and_overrides
    from pathasst.inputs import require_paths

    inputs, overrides = parse_paths_and_overrides(list(args.inputs))
    cfg = load_config(SFTConfig, args.recipe, overrides)
    require_paths(inputs, what="INPUT")
    summary = build_pairs([str(i) for i in inputs], args.out, cfg, overwrite=args.overwrite)
    reasons = "; ".join(f"{k}: {v}" for k, v in summary["reject_reasons"].items())
    print(f"{summary['inputs']} captions in, {summary['pairs']} pairs from {summary['captions']} captions "
          f"({', '.join(f'{k} {v}' for k, v in summary['pairs_by_task'].items())}; "
          f"{summary['corrected_split'] + summary['corrected_refine']} from hand corrections), "
          f"{summary['rejected']} to the ledger" + (f" ({reasons})" if reasons else "")
          + f" -> {Path(args.out) / PAIRS_FILE}")
    return 0


if __name__ == "__main__":  # python -m pathasst.dataset_builders.curate.sft INPUT... --out DIR
    from pathasst.cli import main as _main

    sys.exit(_main(["curate", "splitter-data", *sys.argv[1:]]))
