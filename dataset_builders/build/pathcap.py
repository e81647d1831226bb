"""`pathasst build pathcap DATASET... --benchmarks BENCH... --out DIR`: the published PathCap dataset.

Takes the curated PathCap folders of every source (the outputs of ``curate select``, ``split``,
``align`` and ``refine``, figure- and subfigure-level records alike) and assembles the dataset that
is released, in four stages run in this order:

1. **filter**: records whose caption has fewer than ``min_caption_words`` words, whose
   ``pathology_score`` is under ``min_pathology_score`` (records without a score are kept unless
   ``missing_score=reject``), or, with ``noncommercial=exclude``, whose licence forbids commercial
   use, go to the ledger. Filtering comes first so that deduplication never keeps a copy that the
   filter then removes while a usable copy was already thrown away.
2. **dedup** (:func:`pathasst.dataset_builders.curate.dedup.dedup_datasets`): near-duplicate images
   and exact caption duplicates across all sources; one copy kept by the documented rule.
3. **decontam** (:func:`pathasst.dataset_builders.curate.decontam.decontaminate`): records that
   overlap a benchmark (image pHash or a long shared n-gram) are removed. Benchmarks are required:
   a release built without checking for leakage is what this project exists to prevent, so skipping
   it takes an explicit ``decontam.enabled=false``, which the dataset card then states.
4. **assemble**: the remaining records are written to ``--out`` with splits re-assigned by the hash
   of their group (article, book, site, collection), the ledgers of every stage merged into
   ``rejects.jsonl`` (each line says its ``stage``), the contamination report copied beside the data,
   and a dataset card rendered from the statistics (counts per split, source, licence and level;
   what each stage removed; the settings).

Every input record is in the output or in the ledger (``summary.json`` checks it). Stages run in
``OUT/.pathasst/build/<stage>/``; a stage that finished is not run again, one that was interrupted
resumes, so the command can be rerun after a crash. Each stage's records are deleted once the next
stage has finished with them (its ledger and summary are kept), so the build needs at most two
copies of the data beside the output; ``keep_stages=true`` keeps them all for inspection.

Inputs are local dataset folders (``hf download --repo-type dataset`` fetches a Hub copy).
This module imports only argparse at import time: the CLI lists it on every start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)

STAGES = ("filter", "dedup", "decontam")
WORK = "build"  # under the writer's state folder, so --overwrite wipes it with everything else
DONE = "stage-done.json"
NONCOMMERCIAL = ("include", "exclude")
MISSING_SCORE = ("keep", "reject")
_WORD_RE = r"\w+"


@dataclasses.dataclass
class DedupSettings:
    """Stage 2 (see ``pathasst curate dedup --help``)."""

    enabled: bool = True
    max_distance: int = 6
    captions: bool = True
    caption_min_words: int = 8


@dataclasses.dataclass
class DecontamSettings:
    """Stage 3 (see ``pathasst curate decontam --help``)."""

    enabled: bool = True
    max_distance: int = 6
    ngram: int = 13
    fields: list[str] = dataclasses.field(default_factory=lambda: ["caption", "caption_raw"])


@dataclasses.dataclass
class PathCapBuildConfig:
    """Settings of ``build pathcap`` (hashed by the writer: a rerun with other values needs
    ``--resume`` or ``--overwrite``).

    Attributes:
        name: the dataset's name in its card.
        min_caption_words: captions with fewer words describe nothing a model can learn from.
        min_pathology_score: the selector score under which a record is not pathology (null: no
            threshold).
        missing_score: what to do with records that never went through ``curate select``.
        noncommercial: ``exclude`` builds the subset whose licences allow commercial use.
        splits: the released splits and their shares of the document groups.
        dedup: stage 2 settings. decontam: stage 3 settings.
        keep_stages: keep every stage's records after the build.
        inputs: the curated folders, as given. benchmarks: the benchmarks, as given.
    """

    RUNTIME_KEYS = ("keep_stages",)

    name: str = "PathCap"
    min_caption_words: int = 3
    min_pathology_score: Optional[float] = 0.5
    missing_score: str = "keep"
    noncommercial: str = "include"
    dedup: DedupSettings = dataclasses.field(default_factory=DedupSettings)
    decontam: DecontamSettings = dataclasses.field(default_factory=DecontamSettings)
    splits: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"train": 0.9, "validation": 0.05, "test": 0.05})
    keep_stages: bool = False
    inputs: list[str] = dataclasses.field(default_factory=list)
    benchmarks: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.min_caption_words < 0:
            raise ValueError(f"min_caption_words must be >= 0 (got {self.min_caption_words})")
        if self.min_pathology_score is not None and not 0.0 <= self.min_pathology_score <= 1.0:
            raise ValueError(f"min_pathology_score must be in [0, 1] or null (got {self.min_pathology_score})")
        if self.missing_score not in MISSING_SCORE:
            raise ValueError(f"missing_score must be one of {', '.join(MISSING_SCORE)} (got {self.missing_score!r})")
        if self.noncommercial not in NONCOMMERCIAL:
            raise ValueError(f"noncommercial must be one of {', '.join(NONCOMMERCIAL)} (got {self.noncommercial!r})")
        if not self.splits or any(not 0 <= v <= 1 for v in self.splits.values()) or sum(self.splits.values()) <= 0:
            raise ValueError(f"splits must map split names to shares in [0, 1] with a positive sum (got {self.splits})")


# --- stage 1: the record filter --------------------------------------------------------------


def filter_record(record: Mapping[str, Any], cfg: PathCapBuildConfig):
    """Keep ``record`` or say why it is not released (stage 1)."""
    import re

    from pathasst.dataset_builders.curate.split import Outcome

    caption = record.get("caption") or ""
    words = len(re.findall(_WORD_RE, caption))
    if words < max(cfg.min_caption_words, 1):
        why = "empty caption" if not words else f"caption too short: {words} words (min_caption_words={cfg.min_caption_words})"
        return Outcome("rejected", reason=why)
    score = record.get("pathology_score")
    if score is None:
        if cfg.min_pathology_score is not None and cfg.missing_score == "reject":
            return Outcome("rejected", reason="no pathology_score (missing_score=reject): run curate select first")
    elif cfg.min_pathology_score is not None and score < cfg.min_pathology_score:
        return Outcome("rejected", reason=f"not pathology: pathology_score {score:.3f} < {cfg.min_pathology_score}",
                       info={"pathology_score": score})
    if cfg.noncommercial == "exclude" and record.get("noncommercial"):
        return Outcome("rejected", reason=f"noncommercial licence ({record.get('license')}) excluded "
                       "(noncommercial=exclude)", info={"license": record.get("license")})
    return Outcome("kept", record=dict(record))


# --- the build ---------------------------------------------------------------------------------


def _stage_done(folder: Path) -> Optional[dict[str, Any]]:
    marker = folder / DONE
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except ValueError:
        return None


def _finish_stage(folder: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Mark a stage finished: its summary and ledger stay, the marker is written last."""
    from pathasst.writer import _atomic_write_text

    done = {k: v for k, v in summary.items() if not k.startswith("_")}
    _atomic_write_text(folder / DONE, json.dumps(done, indent=1, default=str))
    return done


def _drop_records(folder: Path) -> None:
    """Free a finished stage's records once the next stage has read them (ledger and summary stay)."""
    shutil.rmtree(folder / "data", ignore_errors=True)


def _stage_ledger(folder: Path):
    path = folder / "rejects.jsonl"
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


def build_pathcap(
    datasets: list[str],
    out: str | Path,
    cfg: Optional[PathCapBuildConfig] = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: Optional[str] = None,
) -> dict[str, Any]:
    """Assemble the released PathCap folder ``out`` from curated folders (see the module docstring).

    Returns:
        The summary (also ``out/summary.json``): inputs, records per split, what each stage removed,
        the card statistics, whether every input is accounted for.

    Raises:
        ConfigError: no benchmarks and decontamination not switched off.
        InputError: a missing or non-PathCap input or benchmark.
        OutputError: the output folder is in use or holds another run.
    """
    from tqdm.auto import tqdm

    from pathasst.dataset_builders.curate.decontam import REPORT, REPORT_MD, DecontamConfig, decontaminate
    from pathasst.dataset_builders.curate.dedup import DedupConfig, dedup_datasets
    from pathasst.dataset_builders.curate.split import input_shards, iter_rows, run_record_stage
    from pathasst.errors import ConfigError
    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    cfg = cfg or PathCapBuildConfig()
    cfg.inputs = cfg.inputs or [str(d) for d in datasets]
    if cfg.decontam.enabled and not cfg.benchmarks:
        raise ConfigError(
            "build pathcap: no --benchmarks given. A release must be checked against the benchmarks it "
            "will be scored on; pass --benchmarks FOLDER_OR_HUB_ID..., or decontam.enabled=false to build "
            "without the check (the dataset card will say so)"
        )
    for dataset in datasets:
        input_shards(dataset)  # every input checked before any work
    out = Path(out)
    started = time.monotonic()
    command = command or "pathasst build pathcap " + " ".join(map(str, datasets))
    spec = get_spec("pathcap")
    with DatasetWriter(out, spec, config=cfg, resume=resume, overwrite=overwrite, command=command,
                       splits=dict(cfg.splits),
                       config_ignore=PathCapBuildConfig.RUNTIME_KEYS) as writer:
        work = writer.state / WORK
        work.mkdir(exist_ok=True)
        stage_summaries: dict[str, dict[str, Any]] = {}

        def run_stage(name: str, fn) -> Path:
            folder = work / name
            done = _stage_done(folder)
            if done is None:
                log.info("build pathcap: stage %s", name)
                done = _finish_stage(folder, fn(folder))
            else:
                log.info("build pathcap: stage %s finished earlier (%s records)", name, done.get("records_total"))
            stage_summaries[name] = done
            return folder

        current = run_stage("filter", lambda folder: run_record_stage(
            "filter", [str(d) for d in datasets], folder, cfg, filter_record, progress=progress,
            command=command + "  [stage filter]"))
        if cfg.dedup.enabled:
            previous = current
            dedup_cfg = DedupConfig(max_distance=cfg.dedup.max_distance, captions=cfg.dedup.captions,
                                    caption_min_words=cfg.dedup.caption_min_words, inputs=[str(previous)])
            current = run_stage("dedup", lambda folder: dedup_datasets(
                [str(previous)], folder, dedup_cfg, progress=progress, command=command + "  [stage dedup]"))
            if not cfg.keep_stages:
                _drop_records(previous)
        if cfg.decontam.enabled:
            previous = current
            decontam_cfg = DecontamConfig(max_distance=cfg.decontam.max_distance, ngram=cfg.decontam.ngram,
                                          fields=list(cfg.decontam.fields), remove=True, inputs=[str(previous)],
                                          benchmarks=list(cfg.benchmarks))
            current = run_stage("decontam", lambda folder: decontaminate(
                [str(previous)], list(cfg.benchmarks), folder, decontam_cfg, progress=progress,
                command=command + "  [stage decontam]"))
            if not cfg.keep_stages:
                _drop_records(previous)
            for name in (REPORT, REPORT_MD):
                if (current / name).is_file():
                    shutil.copyfile(current / name, out / name)

        # stage 4: the ledgers of every stage, then the records, into the released folder
        ledgers = 0
        for name in STAGES:
            folder = work / name
            for item in _stage_ledger(folder):
                rid = str(item.pop("id"))
                key = f"{name}:{rid}:{ledgers}"
                ledgers += 1
                if not writer.is_done(key):
                    with writer.unit(key):
                        writer.reject(rid, item.pop("reason"), stage=name, **item)
        written = 0
        shards = input_shards(current)
        total = stage_summaries[list(stage_summaries)[-1]].get("records_total")
        bar = tqdm(total=total, desc="build pathcap: write", unit="rec", disable=not progress)
        for record, _split in iter_rows(shards):
            bar.update(1)
            rid = str(record["id"])
            if writer.is_done(rid):
                continue
            with writer.unit(rid):
                # split=None: the released splits are assigned here, by the record's group
                if writer.add(record):
                    written += 1
        bar.close()
        writer.commit()
        stats = shard_statistics([(out / s["file"], s["split"]) for s in writer.manifest["shards"]])
        card = render_pathcap_card(cfg, stats, stage_summaries, datasets)
        result = writer.finalize(card)

    if not cfg.keep_stages:
        _drop_records(current)
    inputs = stage_summaries["filter"]["inputs"]
    summary = {
        "out": str(out),
        "inputs_datasets": [str(d) for d in datasets],
        "benchmarks": list(cfg.benchmarks),
        "inputs": inputs,
        "stages": {name: {"inputs": s.get("inputs"), "records": s.get("records_total"),
                          "rejected": s.get("rejected_total"), "reject_reasons": s.get("reject_reasons")}
                   for name, s in stage_summaries.items()},
        "records": result.records,
        "records_total": result.total_records,
        "rejected_total": result.rejected,
        "reject_reasons": result.reject_reasons,
        "statistics": stats,
        "seconds": round(time.monotonic() - started, 3),
    }
    summary["accounted"] = result.total_records + result.rejected == inputs
    if not summary["accounted"]:
        log.warning("accounting: %d input records but %d records + %d ledger lines in %s", inputs,
                    result.total_records, result.rejected, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def shard_statistics(shards: list[tuple[Path, str]]) -> dict[str, Any]:
    """What the dataset card reports, from the committed shards (narrow columns, no images)."""
    import statistics
    from collections import Counter

    import pyarrow.parquet as pq

    columns = ("source", "license", "noncommercial", "subfigure_label", "pathology_score", "caption",
               "width", "height", "source_id")
    by = {name: Counter() for name in ("split", "source", "license", "level")}
    noncommercial = scored = 0
    words: list[int] = []
    sides: list[int] = []
    groups: set[str] = set()
    for path, split in shards:
        table = pq.read_table(path, columns=list(columns))
        for row in table.to_pylist():
            by["split"][split] += 1
            by["source"][row["source"]] += 1
            by["license"][row["license"] or "unknown"] += 1
            by["level"]["subfigure" if row["subfigure_label"] is not None else "figure"] += 1
            noncommercial += bool(row["noncommercial"])
            scored += row["pathology_score"] is not None
            words.append(len((row["caption"] or "").split()))
            sides.append(min(row["width"] or 0, row["height"] or 0))
            groups.add(f"{row['source']}:{row['source_id']}")
    n = sum(by["split"].values())
    return {
        "records": n,
        **{f"by_{k}": dict(v.most_common()) for k, v in by.items()},
        "noncommercial": noncommercial,
        "with_pathology_score": scored,
        "caption_words_median": statistics.median(words) if words else 0,
        "short_side_median": statistics.median(sides) if sides else 0,
        "source_ids": len(groups),
    }


def render_pathcap_card(cfg: PathCapBuildConfig, stats: Mapping[str, Any], stages: Mapping[str, Mapping[str, Any]],
                        datasets: list[str]) -> str:
    """The card body, rendered from data by :mod:`pathasst.model_cards` (never hand-edited)."""
    from pathasst.config import to_dict
    from pathasst.model_cards.render import render

    return render("pathcap_dataset.md.j2", {
        "name": cfg.name,
        "stats": stats,
        "stages": {name: {"inputs": s.get("inputs"), "records": s.get("records_total"),
                          "rejected": s.get("rejected_total"), "reasons": s.get("reject_reasons") or {}}
                   for name, s in stages.items()},
        "config": to_dict(cfg),
        "inputs": [Path(d).name for d in datasets],
        # names, not paths: the card is published and must not carry this machine's folders
        "benchmarks": [Path(b).name if Path(b).exists() else b for b in cfg.benchmarks],
    })


# --- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pathasst.dataset_builders.curate.split import add_output_arguments

    parser.description = (
        "Assemble the released PathCap dataset from curated PathCap folders: filter (caption length, "
        "pathology_score, licence), dedup across all sources, decontaminate against the benchmarks, then write "
        "the folder with group-hashed splits, one merged rejects.jsonl (each line names its stage), the "
        "contamination report and a dataset card rendered from the statistics. Settings: key=value "
        "(min_caption_words=N min_pathology_score=X missing_score=keep|reject noncommercial=include|exclude "
        "dedup.max_distance=K decontam.ngram=N decontam.enabled=false keep_stages=true)."
    )
    parser.add_argument("inputs", nargs="+", metavar="DATASET | key=value",
                        help="curated PathCap dataset folders, and settings such as min_caption_words=5")
    parser.add_argument("--benchmarks", nargs="+", default=[], metavar="BENCH",
                        help="benchmark dataset folders or Hub ids to decontaminate against (required unless "
                        "decontam.enabled=false)")
    add_output_arguments(parser, "output PathCap folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathasst.dataset_builders.curate.split import parse_common
    from pathasst.subcommands import invoked_command

    datasets, cfg = parse_common(args, PathCapBuildConfig)
    cfg.inputs = datasets
    cfg.benchmarks = [str(b) for b in args.benchmarks]
    summary = build_pathcap(datasets, args.out, cfg, overwrite=args.overwrite, resume=args.resume,
                            progress=not args.no_progress,
                            command=invoked_command("pathasst build pathcap"))
    for name, stage in summary["stages"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in (stage["reject_reasons"] or {}).items() if v) or "none"
        print(f"  {name}: {stage['inputs']} in, {stage['records']} kept, {stage['rejected']} removed ({reasons})")
    stats = summary["statistics"]
    splits = ", ".join(f"{k} {v}" for k, v in stats["by_split"].items())
    print(f"{summary['inputs']} records in, {summary['records_total']} released ({splits}), "
          f"{summary['rejected_total']} in the ledger -> {args.out}")
    if not summary["accounted"]:
        print("warning: records + ledger lines do not add up to the inputs; see summary.json")
        return 1
    return 0
