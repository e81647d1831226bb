"""`pathasst curate split DATASET... --out DIR [distribute=true]`: compound captions into sub-captions.

Reads PathCap dataset folders (figure records from ``pathasst extract``/``curate select``, or the
subfigure records written by ``pathasst curate detect``) and splits every caption with the rules
of :func:`pathasst.dataset_builders.curate.captions.split_caption`:

- a **figure record** is written unchanged except for its ``meta`` JSON, which gains
  ``{"split": {"shared_prefix", "shared_suffix", "panels": [{"label", "subcaption"}], "markers",
  "distributed", "rules"}}``; the next stage (``curate align``) matches these panels with the
  detected subfigures;
- a **subfigure record** (``bbox`` or ``subfigure_label`` set, as ``curate detect`` writes them,
  with the parent's caption) gets as ``caption`` the sub-caption of its panel, found by its
  ``subfigure_label`` (letters compared case-insensitively), ``caption_raw`` untouched. When it
  cannot, the record keeps the whole caption and says why in ``meta.split.match``:
  ``no_label`` (the detector read no letter), ``no_markers`` (the caption names no panel),
  ``label_not_found`` (the caption names other panels), ``empty_subcaption``. A matched one says
  ``label``. ``meta.split`` also holds the shared prefix and suffix and the caption's labels. A
  subfigure record already split (``meta.split`` present) passes through unchanged.

``distribute=true`` copies the shared prefix and suffix ("Renal biopsy.", "Scale bars, 50 µm.")
into every sub-caption, so that each reads as a full caption of its panel.

``--model DIR_OR_ENDPOINT`` splits with an LLM instead: a model folder from ``pathasst train
splitter`` (or any chat model folder), or an OpenAI-compatible endpoint ``http(s)://.../v1`` with
``endpoint_model=NAME``. Every answer is validated (JSON Schema, faithfulness, repetition, time;
see :mod:`pathasst.dataset_builders.curate.llm`); when it fails, the rules' split is used
(``fallback=rules``, the default) and the reason is recorded in ``meta.split.llm`` and counted
per reason in ``summary.json`` (``llm.fallbacks``); with ``fallback=none`` the record goes to the
ledger instead. ``meta.split.source`` says which answer a record carries (``llm`` or ``rules``).

Every input is accounted for: records with an empty caption (or no id, or an id seen before) go
to ``rejects.jsonl`` with the reason, so inputs = records written + ledger lines. The unit of
resumption is the record id: rerunning the same command continues a killed run. Records keep
the split (train/validation/test) they came from. ``summary.json`` and a one-line summary report
what was done.

This module imports only the standard library at import time: the CLI lists it on every start.
The record-by-record runner here is shared with ``curate refine``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional

from pathasst.dataset_builders.curate.llm import LLMSettings, LLMUnavailable  # standard library only at import

if TYPE_CHECKING:
    from pathasst.dataset_builders.curate.llm import LLMCaptioner

log = logging.getLogger(__name__)

SUBFIGURE_MATCHES = ("label", "no_label", "no_markers", "label_not_found", "empty_subcaption")


@dataclasses.dataclass
class SplitConfig(LLMSettings):
    """Settings of ``curate split`` (``key=value`` on the command line or a ``--recipe`` YAML).

    The LLM keys (``model``, ``endpoint_model``, ``max_new_tokens``, ``timeout_s``,
    ``max_prompt_chars``, ``long_caption``, ``fallback``, ``on_endpoint_down``...) are those of
    :class:`~pathasst.dataset_builders.curate.llm.LLMSettings`; without ``model`` the rules split.

    Attributes:
        distribute: copy the shared prefix and suffix into every sub-caption.
        shard: ``K/N``: process only the records whose id hashes to the K-th of N parts.
        inputs: the input dataset folders (filled in from the command line).
        rules_version: version of the splitting rules (filled in; part of the config hash, so an
            output folder is not continued with other rules without ``--resume``).
    """

    distribute: bool = False
    shard: Optional[str] = None
    inputs: list[str] = dataclasses.field(default_factory=list)
    rules_version: str = ""

    def __post_init__(self) -> None:
        from pathasst.inputs import parse_shard

        parse_shard(self.shard)
        self.check()


# --------------------------------------------------------------------------------------------
# records


def load_meta(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's ``meta`` JSON as a dict (an unreadable one is kept under ``meta_unparsed``)."""
    raw = record.get("meta")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError):
        return {"meta_unparsed": str(raw)}
    return meta if isinstance(meta, dict) else {"meta_unparsed": meta}


def dump_meta(meta: Mapping[str, Any]) -> Optional[str]:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False) if meta else None


def is_subfigure(record: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """A subfigure record: a crop of a parent figure (``curate detect``: ``bbox``, the label)."""
    return record.get("bbox") is not None or bool(record.get("subfigure_label")) or "subfigure" in meta


@dataclasses.dataclass
class Outcome:
    """What a stage made of one record: a record to write (``record``) under a counter name
    (``kind``), or a ledger line (``reason`` and ``info``)."""

    kind: str
    record: Optional[dict[str, Any]] = None
    reason: Optional[str] = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def split_record(record: Mapping[str, Any], cfg: SplitConfig, captioner: Optional["LLMCaptioner"] = None) -> Outcome:
    """Split one PathCap record's caption (see the module docstring); with the LLM when a
    ``captioner`` is given."""
    from pathasst.dataset_builders.curate.captions import RULES_VERSION, split_caption

    caption = record.get("caption") or ""
    if not caption.strip():
        return Outcome("rejected", reason="empty caption: nothing to split")
    meta = load_meta(record)
    subfigure = is_subfigure(record, meta)
    if subfigure and isinstance(meta.get("split"), dict):
        return Outcome("already_split", record=dict(record))
    provenance: dict[str, Any] = {"rules": RULES_VERSION}  # + source and llm on the LLM path
    if captioner is None:
        result = split_caption(caption, distribute=cfg.distribute)
    else:
        answer = captioner.split(caption, distribute=cfg.distribute)
        provenance.update(source="llm" if answer.used_llm else "rules", llm=answer.info)
        if answer.value is None:  # fallback=none
            return Outcome("rejected", reason=f"LLM answer unusable: {answer.info.get('reason')}",
                           info={"detail": answer.info.get("detail", ""), "model": answer.info.get("model")})
        result = answer.value
    if not result.panels:
        return Outcome("rejected", reason="empty caption: nothing but a figure number",
                       info={"caption": caption[:200]})
    labels = [p.label for p in result.panels]
    if not subfigure:
        meta["split"] = {**result.to_dict(), "distributed": cfg.distribute, **provenance}
        kind = "figures_split" if result.markers_found else "figures_without_markers"
        return Outcome(kind, record={**record, "meta": dump_meta(meta)})

    label = record.get("subfigure_label")
    panel = None
    if not label:
        match = "no_label"
    elif not result.markers_found:
        match = "no_markers"
    else:
        panel = result.panel(str(label))
        if panel is None:
            match = "label_not_found"
        elif not panel.subcaption.strip():
            match, panel = "empty_subcaption", None
        else:
            match = "label"
    meta["split"] = {
        "match": match,
        "panel": panel.label if panel else None,
        "labels": labels,
        "shared_prefix": result.shared_prefix,
        "shared_suffix": result.shared_suffix,
        "distributed": cfg.distribute,
        **provenance,
    }
    out = {**record, "meta": dump_meta(meta)}
    if panel is not None:
        out["caption"] = panel.subcaption
    return Outcome(f"subfigures_{match}", record=out)


# --------------------------------------------------------------------------------------------
# the runner every caption stage shares


def input_shards(dataset: str | Path) -> list[tuple[Path, str]]:
    """``(parquet file, split)`` of a PathCap dataset folder, in file order."""
    import re

    from pathasst.errors import InputError

    folder = Path(dataset).expanduser()
    if not folder.is_dir():
        raise InputError(f"DATASET {dataset}: no such folder (expected a PathCap dataset folder)")
    files = sorted((folder / "data").glob("*.parquet"))
    if not files:
        raise InputError(f"DATASET {dataset}: no data/*.parquet shards; expected a PathCap dataset folder")
    out = []
    for path in files:
        match = re.match(r"^(?P<split>.+?)-(\d{5}-of-\d{5}|p\d{6})\.parquet$", path.name)
        out.append((path, match["split"] if match else path.stem.split("-", 1)[0]))
    return out


def _check_columns(path: Path, dataset: str) -> None:
    import pyarrow.parquet as pq

    from pathasst.errors import InputError

    names = set(pq.ParquetFile(path).schema_arrow.names)
    missing = {"id", "caption", "caption_raw", "image"} - names
    if missing:
        raise InputError(f"DATASET {dataset} is not a PathCap dataset: {path.name} has no column(s) "
                         f"{', '.join(sorted(missing))}")


def _input_splits(datasets: list[str], shards: list[tuple[Path, str]]) -> tuple[dict[str, float], str]:
    """The writer's splits: the first input's own ratios and salt when they cover every split."""
    from pathasst.writer import DEFAULT_SPLITS

    names = list(dict.fromkeys(split for _, split in shards))
    manifest = Path(datasets[0]) / ".pathasst" / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            if isinstance(m.get("splits"), dict) and all(s in m["splits"] for s in names):
                return dict(m["splits"]), str(m.get("split_salt", "pathasst"))
        except (OSError, ValueError):
            pass
    return {name: DEFAULT_SPLITS.get(name, 1.0) for name in names}, "pathasst"


def iter_rows(shards: list[tuple[Path, str]], batch_rows: int = 64) -> Iterator[tuple[dict[str, Any], str]]:
    """``(record, split)`` for every row of the shards, a batch in memory at a time."""
    import pyarrow.parquet as pq

    for path, split in shards:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield from ((row, split) for row in batch.to_pylist())


def run_record_stage(
    stage: str,
    datasets: list[str],
    out: str | Path,
    cfg: Any,
    transform: Callable[[Mapping[str, Any], Any], Outcome],
    *,
    card: str = "",
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: Optional[str] = None,
) -> dict[str, Any]:
    """Map every record of ``datasets`` through ``transform`` into the PathCap folder ``out``.

    One writer unit per record id: a rerun skips what a killed run committed. Records keep their
    input split. An id seen before, a record without id and every :class:`Outcome` with a
    ``reason`` become ledger lines.

    Returns:
        The summary (also written to ``out/summary.json``): inputs seen by this run, records and
        ledger lines in the folder, what this run did by outcome, rejection reasons.

    Raises:
        InputError: a missing or non-PathCap input. OutputError: an unusable output folder.
    """
    from tqdm.auto import tqdm

    from pathasst.inputs import in_shard, parse_shard
    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    started = time.monotonic()
    shards = [item for dataset in datasets for item in input_shards(dataset)]
    for dataset in datasets:
        _check_columns(input_shards(dataset)[0][0], dataset)
    part = parse_shard(getattr(cfg, "shard", None))
    splits, salt = _input_splits(datasets, shards)
    counts: dict[str, int] = {}
    inputs = 0
    seen: dict[str, int] = {}

    def count(kind: str) -> None:
        counts[kind] = counts.get(kind, 0) + 1

    with DatasetWriter(out, get_spec("pathcap"), config=cfg, resume=resume, overwrite=overwrite, splits=splits,
                       split_salt=salt, command=command or f"pathasst curate {stage}") as writer:
        total = None
        if part is None:
            import pyarrow.parquet as pq

            total = sum(pq.ParquetFile(path).metadata.num_rows for path, _ in shards)
        bar = tqdm(total=total, desc=f"curate {stage}", unit="rec", disable=not progress)
        for position, (row, split) in enumerate(iter_rows(shards)):
            bar.update(1)
            rid = row.get("id")
            rid = str(rid) if rid not in (None, "") else None
            key = rid or f"{split}#{position}"
            if part is not None and not in_shard(key, part):
                continue
            inputs += 1
            if rid is None:
                if writer.is_done(key):
                    count("already_done")
                else:
                    writer.reject(key, "invalid record: no id")
                    count("rejected")
                continue
            occurrence = seen.get(rid, 0)
            seen[rid] = occurrence + 1
            if occurrence:  # keyed so that a resumed run counts the same extra copy once
                key = f"{rid}#dup{occurrence}"
                if writer.is_done(key):
                    count("already_done")
                else:
                    with writer.unit(key):
                        writer.reject(rid, f"duplicate id: '{rid}' occurs {occurrence + 1} times in the input")
                    count("rejected")
                continue
            if writer.is_done(rid):
                count("already_done")
                continue
            try:
                outcome = transform(row, cfg)
            except LLMUnavailable:  # the model server, not the record: stop (a rerun resumes)
                raise
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the run
                outcome = Outcome("rejected", reason=f"{stage} error: {type(exc).__name__}: {str(exc)[:300]}")
            with writer.unit(rid):
                if outcome.record is not None:
                    if writer.add(outcome.record, split=split):
                        count(outcome.kind)
                    else:
                        count("rejected")
                else:
                    writer.reject(rid, outcome.reason or "rejected", **outcome.info)
                    count("rejected")
        bar.close()
        result = writer.finalize(card)

    summary = {
        "out": str(out),
        "stage": stage,
        "inputs": inputs,
        "this_run": counts,
        "records": result.records,
        "records_total": result.total_records,
        "rejected_total": result.rejected,
        "reject_reasons": result.reject_reasons,
        "seconds": round(time.monotonic() - started, 3),
    }
    summary["accounted"] = result.total_records + result.rejected == inputs
    if not summary["accounted"]:
        log.warning("accounting: %d input records but %d records + %d ledger lines in %s", inputs,
                    result.total_records, result.rejected, out)
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------------------------
# command line


def add_output_arguments(parser: argparse.ArgumentParser, out_help: str = "output dataset folder") -> None:
    """The options every stage that writes a dataset folder takes: --out, --recipe, --overwrite,
    --resume, --no-progress."""
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help=out_help)
    parser.add_argument("--recipe", help="YAML file with settings (key=value overrides win over it)")
    parser.add_argument("--overwrite", action="store_true", help="start the output folder afresh")
    parser.add_argument("--resume", action="store_true", help="continue a folder written with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="DATASET | key=value",
                        help="input PathCap dataset folder(s), and settings such as distribute=true")
    add_output_arguments(parser)
    parser.add_argument("--shard", metavar="K/N", help="process only the K-th of N disjoint parts of the records")


def parse_common(args: argparse.Namespace, schema: type) -> tuple[list[str], Any]:
    """Input folders and the typed config from the positionals, ``--recipe`` and ``--shard``."""
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.common import parse_paths_and_overrides
    from pathasst.inputs import require_paths

    datasets, overrides = parse_paths_and_overrides(list(args.inputs))
    if getattr(args, "shard", None) is not None:  # stages without --shard have no such option
        overrides.append(f"shard={args.shard}")
    cfg = load_config(schema, args.recipe, overrides)
    require_paths(datasets, what="DATASET")
    return [str(d) for d in datasets], cfg


def command_line(verb: str) -> str:
    from pathasst.subcommands import invoked_command

    return invoked_command(f"pathasst curate {verb}")


def summary_line(summary: Mapping[str, Any], described: str) -> str:
    reasons = "; ".join(f"{k}: {v}" for k, v in summary["reject_reasons"].items())
    done = summary["this_run"].get("already_done", 0)
    return (f"{summary['inputs']} records in, {summary['records_total']} written ({described}), "
            f"{summary['rejected_total']} to the ledger" + (f" ({reasons})" if reasons else "")
            + (f", {done} already done" if done else "") + f" -> {summary['out']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Split compound captions into per-panel sub-captions with the rule-based splitter, or with an LLM "
        "(--model). Figure records gain meta.split (shared prefix/suffix and [{label, subcaption}]); subfigure "
        "records from `curate detect` get their panel's sub-caption as caption (caption_raw kept). "
        "distribute=true copies the shared parts into every sub-caption. LLM answers are validated; on failure "
        "the rules' split is used and the reason counted. Empty captions go to rejects.jsonl; rerunning resumes."
    )
    add_common_arguments(parser)
    add_model_argument(parser)
    parser.set_defaults(func=run)


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", metavar="DIR_OR_URL",
        help="use an LLM: a model folder (`pathasst train splitter` output_dir/model) or an OpenAI-compatible "
             "endpoint http(s)://HOST/v1 (with endpoint_model=NAME; API key from OPENAI_API_KEY). Settings: "
             "fallback=rules|none, on_endpoint_down=fallback|error, max_new_tokens, timeout_s, max_prompt_chars, "
             "long_caption=fallback|truncate")


def make_captioner(cfg: LLMSettings) -> Optional["LLMCaptioner"]:
    """The LLM captioner ``cfg.model`` asks for (None: rules only); an endpoint is probed first."""
    if not cfg.model:
        return None
    from pathasst.dataset_builders.curate.llm import LLMCaptioner

    captioner = LLMCaptioner(cfg)
    captioner.check_available()
    return captioner


def add_llm_summary(summary: dict[str, Any], captioner: Optional["LLMCaptioner"]) -> dict[str, Any]:
    """Add the LLM's calls and fallbacks (per reason) to a stage summary and rewrite summary.json."""
    if captioner is None:
        return summary
    summary["llm"] = captioner.summary()
    (Path(summary["out"]) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def llm_line(summary: Mapping[str, Any]) -> str:
    llm = summary.get("llm")
    if not llm:
        return ""
    reasons = ", ".join(f"{k} {v}" for k, v in llm["fallbacks"].items())
    return (f"; LLM {llm['model']}: {llm['calls']} calls, {llm['accepted']} answers used, "
            f"{llm['fallbacks_total']} fell back" + (f" ({reasons})" if reasons else ""))


def split_dataset(datasets: list[str], out: str | Path, cfg: Optional[SplitConfig] = None,
                  **kwargs: Any) -> dict[str, Any]:
    """Run the split stage (see the module docstring); keyword arguments go to :func:`run_record_stage`."""
    from pathasst.dataset_builders.curate.captions import RULES_VERSION

    cfg = dataclasses.replace(cfg or SplitConfig(), inputs=[str(d) for d in datasets], rules_version=RULES_VERSION)
    captioner = make_captioner(cfg)
    card = (
        "# PathCap (captions split)\n\n"
        "Pathology image-caption pairs whose compound captions were split into per-panel sub-captions by the "
        "rule-based splitter of `pathasst curate split` (rules version " + RULES_VERSION + "). Figure records "
        "carry the panels in `meta.split`; subfigure records carry their panel's sub-caption as `caption` and "
        "the caption as found in `caption_raw`. Inputs that could not be used are listed in `rejects.jsonl`.\n\n"
        "```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\")\n```\n"
    )
    if captioner is not None:
        card = card.replace("rule-based splitter of `pathasst curate split`",
                            f"LLM splitter of `pathasst curate split --model` (prompt {captioner.prompt_tag('split')}; "
                            "the rules where its answer failed validation, see `meta.split.source`)")
    transform = split_record if captioner is None else functools.partial(split_record, captioner=captioner)
    summary = run_record_stage("split", cfg.inputs, out, cfg, transform, card=card, **kwargs)
    return add_llm_summary(summary, captioner)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "model", None):
        args.inputs = [*args.inputs, f"model={args.model}"]
    datasets, cfg = parse_common(args, SplitConfig)
    summary = split_dataset(datasets, args.out, cfg, overwrite=args.overwrite, resume=args.resume,
                            progress=not args.no_progress, command=command_line("split"))
    c = summary["this_run"]
    subfigures = sum(v for k, v in c.items() if k.startswith("subfigures_"))
    described = (f"{c.get('figures_split', 0)} figures split into panels, {c.get('figures_without_markers', 0)} "
                 f"without markers; {subfigures} subfigures, {c.get('subfigures_label', 0)} given their "
                 f"panel's sub-caption")
    if c.get("already_split"):
        described += f", {c['already_split']} already split"
    print(summary_line(summary, described) + llm_line(summary))
    return 0


if __name__ == "__main__":  # python -m pathasst.dataset_builders.curate.split DATASET --out DIR
    from pathasst.cli import main as _main

    sys.exit(_main(["curate", "split", *sys.argv[1:]]))
