"""`pathasst build instruct DIR... --out DIR`: one released PathInstruct from several generated folders.

``generate instruct`` scales out by ``shard=K/N`` (N workers, N folders) and is rerun with other
models or prompt templates; this stage assembles their folders into the dataset that is released:

- every record keeps the split it was generated in, which is its PathCap figure's split: a figure
  in PathCap's test split never gives an instruction sample to PathInstruct's train split;
- a record id met again (the same folder given twice, overlapping shards) goes to the ledger naming
  the folder that supplied the kept copy; ``task_types=[...]`` keeps only those task types and
  ``generators=[...]`` only samples whose ``generator`` names one of those models, the others going to
  the ledger with that reason;
- records that break the PathInstruct contract go to the ledger (the writer checks every one);
- the generation ledgers of the inputs (captions too short, schema and grounding drops, ...) are
  gathered in ``generation_rejects.jsonl`` with the folder each came from, so the released folder
  still explains every PathCap record that produced nothing;
- the card is rendered from the released shards (samples per split, task type and generator; tools
  offered) by the templates of :mod:`pathasst.model_cards`; ``--export-llava FILE`` also writes
  LLaVA's JSON conversation format.

Input records = records written + ledger lines (``summary.json`` checks it). Resumable by record id.
This module imports only argparse at import time: the CLI lists it on every start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)

GENERATION_REJECTS = "generation_rejects.jsonl"
_COLUMNS = {"id", "messages", "task_type", "tools", "generator"}


@dataclasses.dataclass
class InstructBuildConfig:
    """Settings of ``build instruct``.

    Attributes:
        name: the dataset's name in its card.
        task_types: keep only these task types (empty: all).
        generators: keep only samples whose ``generator`` names one of these models (empty: all).
        inputs: the generated folders, as given (filled in from the command line).
    """

    name: str = "PathInstruct"
    task_types: list[str] = dataclasses.field(default_factory=list)
    generators: list[str] = dataclasses.field(default_factory=list)
    inputs: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        from pathasst.records import TASK_TYPES

        unknown = [t for t in self.task_types if t not in TASK_TYPES]
        if unknown:
            raise ValueError(f"task_types: {', '.join(unknown)} unknown; choose from {', '.join(TASK_TYPES)}")


def _check_folder(folder: str) -> list[tuple[Path, str]]:
    import pyarrow.parquet as pq

    from pathasst.dataset_builders.curate.split import input_shards
    from pathasst.errors import InputError

    shards = input_shards(folder)
    missing = _COLUMNS - set(pq.ParquetFile(shards[0][0]).schema_arrow.names)
    if missing:
        raise InputError(f"{folder} is not a PathInstruct folder: no column(s) {', '.join(sorted(missing))}")
    return shards


def _generator_model(value: Optional[str]) -> str:
    try:
        return str(json.loads(value or "{}").get("model", ""))
    except (ValueError, AttributeError):
        return str(value or "")


def shard_statistics(shards: list[tuple[Path, str]]) -> dict[str, Any]:
    """What the card reports, from the committed shards (no images)."""
    from collections import Counter

    import pyarrow.parquet as pq

    by = {name: Counter() for name in ("split", "task_type", "generator", "tool")}
    turns = []
    figures = set()
    for path, split in shards:
        for row in pq.read_table(path, columns=["figure_id", "task_type", "generator", "tools", "messages"]).to_pylist():
            by["split"][split] += 1
            by["task_type"][row["task_type"]] += 1
            by["generator"][_generator_model(row["generator"]) or "unknown"] += 1
            for schema in row["tools"] or []:
                try:
                    name = json.loads(schema).get("function", {}).get("name") or json.loads(schema).get("name")
                except (ValueError, AttributeError):
                    name = None
                by["tool"][name or "unnamed"] += 1
            turns.append(len(row["messages"] or []))
            figures.add(row["figure_id"])
    n = sum(by["split"].values())
    return {
        "samples": n,
        "figures": len(figures - {None}),
        "mean_messages": round(sum(turns) / n, 2) if n else 0,
        **{f"by_{k}": dict(v.most_common()) for k, v in by.items()},
    }


def build_instruct(
    folders: list[str],
    out: str | Path,
    cfg: Optional[InstructBuildConfig] = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: Optional[str] = None,
    export_llava: Optional[str] = None,
) -> dict[str, Any]:
    """Assemble the released PathInstruct folder ``out`` (see the module docstring).

    Raises:
        InputError: a missing folder or one that is not PathInstruct.
        OutputError: the output folder is in use or holds another run.
    """
    from tqdm.auto import tqdm

    from pathasst.dataset_builders.curate.split import iter_rows
    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    cfg = cfg or InstructBuildConfig()
    cfg.inputs = cfg.inputs or [str(f) for f in folders]
    twice = sorted({str(f) for f in folders if sum(Path(g).resolve() == Path(f).resolve() for g in folders) > 1})
    if twice:
        from pathasst.errors import InputError

        raise InputError(f"folder(s) given more than once: {', '.join(twice)}")
    shards = {str(f): _check_folder(str(f)) for f in folders}  # every input checked before any work
    splits = sorted({split for items in shards.values() for _, split in items})
    out = Path(out)
    started = time.monotonic()
    counts = {"inputs": 0, "written": 0, "duplicate": 0, "filtered": 0, "invalid": 0, "already_done": 0}
    first_from: dict[str, str] = {}
    with DatasetWriter(out, get_spec("pathinstruct"), config=cfg, resume=resume, overwrite=overwrite,
                       splits={s: 1.0 for s in splits}, command=command or "pathasst build instruct") as writer:
        bar = tqdm(desc="build instruct", unit="sample", disable=not progress)
        for folder, items in shards.items():
            for position, (row, split) in enumerate(iter_rows(items)):
                bar.update(1)
                counts["inputs"] += 1
                rid = str(row.get("id") or f"{Path(folder).name}#{position}")
                seen_in = first_from.get(rid)
                key = rid if seen_in is None else f"{rid}@{Path(folder).name}#{position}"
                first_from.setdefault(rid, folder)
                if writer.is_done(key):
                    counts["already_done"] += 1
                    continue
                with writer.unit(key):
                    if seen_in is not None:
                        writer.reject(rid, f"duplicate id: already taken from {Path(seen_in).name}", input=folder)
                        counts["duplicate"] += 1
                    elif cfg.task_types and row.get("task_type") not in cfg.task_types:
                        writer.reject(rid, f"filtered: task_type {row.get('task_type')} not in {cfg.task_types}",
                                      input=folder)
                        counts["filtered"] += 1
                    elif cfg.generators and _generator_model(row.get("generator")) not in cfg.generators:
                        writer.reject(rid, f"filtered: generator {_generator_model(row.get('generator'))!r} not in "
                                      f"{cfg.generators}", input=folder)
                        counts["filtered"] += 1
                    elif writer.add(row, split=split):  # the PathCap figure's split, kept
                        counts["written"] += 1
                    else:
                        counts["invalid"] += 1
        bar.close()
        writer.commit()
        stats = shard_statistics([(out / s["file"], s["split"]) for s in writer.manifest["shards"]])
        gathered = _gather_generation_ledgers(list(shards), out / GENERATION_REJECTS)
        result = writer.finalize(render_instruct_card(cfg, stats, gathered, list(shards)))
    summary = {
        "out": str(out),
        "inputs_folders": [str(f) for f in shards],
        "this_run": counts,
        "inputs": counts["inputs"],
        "records": result.records,
        "records_total": result.total_records,
        "rejected_total": result.rejected,
        "reject_reasons": result.reject_reasons,
        "generation_rejects": gathered,
        "statistics": stats,
        "seconds": round(time.monotonic() - started, 3),
    }
    summary["accounted"] = result.total_records + result.rejected == counts["inputs"]
    if export_llava:
        from pathasst.dataset_builders.generate.llava import export_llava as _export

        summary["llava"] = _export(out, export_llava)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _gather_generation_ledgers(folders: list[str], target: Path) -> dict[str, int]:
    """Copy each input's ``rejects.jsonl`` into one file, each line naming its folder."""
    from pathasst.writer import _atomic_write_text

    lines, per_folder = [], {}
    for folder in folders:
        path = Path(folder) / "rejects.jsonl"
        n = 0
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    lines.append(json.dumps({**json.loads(line), "input": Path(folder).name}, ensure_ascii=False))
                    n += 1
        per_folder[Path(folder).name] = n
    _atomic_write_text(target, "".join(line + "\n" for line in lines))
    return per_folder


def render_instruct_card(cfg: InstructBuildConfig, stats: Mapping[str, Any], gathered: Mapping[str, int],
                         folders: list[str]) -> str:
    from pathasst.model_cards.render import render

    return render("pathinstruct_dataset.md.j2", {
        "name": cfg.name, "stats": stats, "inputs": [Path(f).name for f in folders],
        "generation_rejects": sum(gathered.values()), "task_types": cfg.task_types, "generators": cfg.generators,
    })


# --- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pathasst.dataset_builders.curate.split import add_output_arguments

    parser.description = (
        "Assemble the released PathInstruct from folders written by `generate instruct` (shards, or runs with "
        "other models or templates): each sample keeps its PathCap figure's split; repeated ids, filtered task "
        "types or generators, and records that break the contract go to rejects.jsonl; the inputs' generation "
        "ledgers are gathered in generation_rejects.jsonl; the card is rendered from the shards. Settings: "
        "key=value (task_types=[description,tool] generators=[MODEL])."
    )
    parser.add_argument("inputs", nargs="+", metavar="DIR | key=value",
                        help="PathInstruct folders written by generate instruct, and settings")
    add_output_arguments(parser, "output PathInstruct folder")
    parser.add_argument("--export-llava", metavar="FILE", help="also write LLaVA's JSON conversation format")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathasst.dataset_builders.curate.split import parse_common
    from pathasst.subcommands import invoked_command

    folders, cfg = parse_common(args, InstructBuildConfig)
    cfg.inputs = folders
    summary = build_instruct(folders, args.out, cfg, overwrite=args.overwrite, resume=args.resume,
                             progress=not args.no_progress, command=invoked_command("pathasst build instruct"),
                             export_llava=args.export_llava)
    c = summary["this_run"]
    splits = ", ".join(f"{k} {v}" for k, v in summary["statistics"]["by_split"].items())
    print(f"{summary['inputs']} samples in, {summary['records_total']} released ({splits}); ledger: duplicate "
          f"{c['duplicate']}, filtered {c['filtered']}, invalid {c['invalid']}; "
          f"{sum(summary['generation_rejects'].values())} generation rejections gathered -> {args.out}")
    return 0 if summary["accounted"] else 1
