"""`pathasst extract {pdf,pmc,web,private} PATH... --out DIR [key=value ...]`."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from pathasst.errors import NotLandedError
from pathasst.subcommands import invoked_command

# source name -> (module defining SOURCE, one-line help); modules import their stacks lazily
SOURCES: dict[str, tuple[str, str]] = {
    "pdf": ("pathasst.dataset_builders.extract.pdf", "PDF textbooks, papers and atlases (pymupdf)"),
    "pmc": ("pathasst.dataset_builders.extract.pmc", "PubMed Central OA packages, .nxml folders or --pmcid ids"),
    "web": ("pathasst.dataset_builders.extract.web", "web pages: a file of URLs or local HTML files"),
    "private": ("pathasst.dataset_builders.extract.private",
                "a folder with a CSV/JSONL manifest (image, caption, licence, provenance) or Labelme JSON"),
}


def _source_module(name: str):
    module_name = SOURCES[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise NotLandedError(f"`pathasst extract {name}` is not available yet: it arrives with issue #3") from None
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Extract figure-caption records into a PathCap dataset folder (README.md card, data/*.parquet, "
        "rejects.jsonl, config.yaml). Every input becomes records or ledger lines; rerunning the same "
        "command resumes where it stopped."
    )
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for name, (_, help_text) in SOURCES.items():
        p = sub.add_parser(name, help=help_text, description=help_text + ". Extra settings: key=value.")
        p.add_argument("inputs", nargs="*", metavar="PATH | key=value",
                       help="input files or folders, and config overrides such as max_side=1024")
        p.add_argument("--out", required=True, type=Path, help="output dataset folder")
        p.add_argument("--recipe", help="YAML file with settings (overrides win over it)")
        p.add_argument("--num-proc", type=int, help="worker processes (default 1)")
        p.add_argument("--shard", help="K/N: process only the K-th of N parts of the inputs")
        p.add_argument("--overwrite", action="store_true", help="start the output folder afresh")
        p.add_argument("--resume", action="store_true", help="continue a folder written with another config")
        if name == "pmc":
            p.add_argument("--pmcid", action="append", default=[], metavar="ID",
                           help="fetch this article's OA package from the PMC OA service (repeatable)")
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.common import parse_paths_and_overrides, run_extract

    module = _source_module(args.source)
    source = module.SOURCE
    items = list(args.inputs)
    for item in getattr(args, "pmcid", []) or []:
        items.append(f"pmcid:{item}")
    paths, overrides = parse_paths_and_overrides(items)
    if args.num_proc is not None:
        overrides.append(f"num_proc={args.num_proc}")
    if args.shard is not None:
        overrides.append(f"shard={args.shard}")
    cfg = load_config(source.config, args.recipe, overrides)
    summary = run_extract(source, cfg, paths, str(args.out), overwrite=args.overwrite, resume=args.resume,
                          command=invoked_command(f"pathasst extract {args.source}"))
    (args.out / "summary.json").write_text(json.dumps(summary.report(), indent=2))
    counts = ", ".join(f"{k} {v}" for k, v in summary.records.items() if v) or "none"
    reasons = "; ".join(f"{k}: {v}" for k, v in summary.reject_reasons.items())
    print(f"{summary.total_records} records ({counts}), {summary.rejected} rejected"
          + (f" ({reasons})" if reasons else "") + f" -> {args.out}")
    return 0
