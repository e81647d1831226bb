"""`pathasst bench {list,run,leaderboard,validate}`.

::

    pathasst bench list
    pathasst bench run --task crc100k --model PATHCLIP_DIR --dataset LOCAL_COPY --out runs/crc
    pathasst bench leaderboard runs/ --out board/
    pathasst bench validate runs/crc/results.json

This module imports only argparse at import time: the CLI lists it on every start.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    p = sub.add_parser("list", help="the registered tasks with kind, dataset, metrics and version")
    p.add_argument("--json", action="store_true", help="print the parsed task files as JSON")
    p.set_defaults(func=_list)

    p = sub.add_parser("run", help="score a model on a task: results.json + details.jsonl, metrics with 95%% CIs",
                       description="Score a model on one task. Writes DIR/results.json (results records, "
                       "DESIGN.md §4) and DIR/details.jsonl (id, label, prediction, score per item) and prints "
                       "every metric with its bootstrap 95%% interval.")
    p.add_argument("--task", required=True, help="task name (`pathasst bench list`)")
    p.add_argument("--model",
                   help="local-dir:PATH or hf-hub:ID (open_clip), a CLIPModel or image-text-to-text folder, "
                   "or endpoint:MODEL with --base-url; component tasks: a selector export (selector_auroc), a "
                   "detector .pt or run folder (subfig_map), rules / a splitter folder / an endpoint "
                   "(caption_split_f1), geometry or layout (pdf_pairing, default geometry)")
    p.add_argument("--dataset", help="local copy of the task's data (dataset folder, ImageFolder or image-text folder; "
                   "subfig_map: PathSubfig or YOLO data; caption_split_f1: a folder or hand-split YAML, default the "
                   "shipped real captions; pdf_pairing: PDFs + annotations.yaml)")
    p.add_argument("--split", help="split to evaluate (default: the task's)")
    p.add_argument("--dataset-revision", help="Hub revision to load and record")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--base-url", help="API root of an endpoint model (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--class-names", help="YAML {label: name or [names]} overriding class names (zero-shot)")
    p.add_argument("--text-column", help="caption column of a retrieval folder (default: the task's)")
    p.add_argument("--limit", type=int, help="evaluate only the first N items (smoke runs; recorded in n)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (the multiple-choice fallback uses the task's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-data", nargs="+", metavar="FOLDER",
                   help="training datasets (PathCap folders or Hub ids): report evaluation items that are "
                   "near-duplicates of training records (pHash + n-gram, as curate decontam)")
    p.set_defaults(func=_run)

    p = sub.add_parser("leaderboard", help="render results files as Markdown, CSV and HTML with a plot")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_leaderboard)

    p = sub.add_parser("validate", help="check a submission (results file or folder) and explain each failure")
    p.add_argument("submission", metavar="SUBMISSION")
    p.set_defaults(func=_validate)


def _list(args: argparse.Namespace) -> int:
    from pathasst.benchmarks.registry import all_tasks

    tasks = all_tasks()
    if args.json:
        print(json.dumps([{"name": t.name, "task_version": t.task_version, **t.raw} for t in tasks], indent=1, default=str))
        return 0
    w = max(len(t.name) for t in tasks)
    print(f"{'task':<{w}}  {'kind':<15}  {'version':<10}  {'dataset':<28}  metrics")
    for t in tasks:
        ds = t.dataset.get("id") or ("--dataset FOLDER" if t.generic else
                                     "shipped with pathasst" if t.dataset.get("packaged") else "local copy (--dataset)")
        metrics = ", ".join(t.metrics) if len(t.metrics) <= 4 else f"{', '.join(t.metrics[:3])}, … ({len(t.metrics)})"
        print(f"{t.name:<{w}}  {t.kind:<15}  {t.task_version:<10}  {ds:<28}  {metrics}")
    return 0


def _load_class_names(path: str | None):
    if not path:
        return None
    import yaml

    from pathasst.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--class-names {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--class-names {path}: expected a mapping label -> name or [names]")
    return {str(k): v for k, v in data.items()}


def _run(args: argparse.Namespace) -> int:
    from pathasst.benchmarks import components, runner
    from pathasst.benchmarks.adapters import load_model
    from pathasst.benchmarks.data import load_eval_data
    from pathasst.benchmarks.registry import get_task
    from pathasst.errors import ConfigError, OutputError

    task = get_task(args.task)
    runner.check_runnable(task)
    if task.generic and not args.dataset:
        raise ConfigError(f"task {task.name} is generic: pass the folder with --dataset")
    if not args.model:
        if not task.raw.get("default_model"):
            raise ConfigError(f"task {task.name}: --model is required (the model to score)")
        args.model = str(task.raw["default_model"])
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create it ({exc})") from None
    if components.handles(task):
        return _run_component(args, task, out)
    class_names = _load_class_names(args.class_names)
    columns = {"text": args.text_column} if args.text_column else None
    data = load_eval_data(task, args.dataset, split=args.split, revision=args.dataset_revision, columns=columns)
    if columns:
        task = _with_columns(task, columns)
    if args.limit:
        data.ds = data.ds.select(range(min(args.limit, len(data.ds))))
        data.ids = data.ids[: len(data.ds)]
    adapter = load_model(args.model, kind=runner.model_kind(task), base_url=args.base_url, device=args.device,
                         cache_dir=out)
    if hasattr(adapter, "template_version"):
        adapter.template_version = f"{task.name}@{task.task_version}"
    details_path = out / "details.jsonl"

    def write_details(details):
        with open(details_path, "w") as fh:
            fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in details)

    print(f"bench run: {task.name} ({task.kind}, {task.task_version}) on {data.dataset_id} [{data.split}], "
          f"{len(data.ds)} items; model {adapter.model_id}", flush=True)
    result = runner.run(task, adapter, data, batch_size=args.batch_size, n_boot=args.bootstrap, seed=args.seed,
                        class_names=class_names, on_details=write_details)
    write_details(result.details)
    config = {
        "task": task.name, "task_version": task.task_version, "model": adapter.model_id,
        "model_revision": adapter.revision, "dataset": data.dataset_id, "dataset_revision": data.revision,
        "split": data.split, "limit": args.limit, "bootstrap": args.bootstrap, "seed": args.seed,
        "class_names": class_names, "columns": columns,
    }
    leakage = None
    if args.train_data:
        from pathasst.benchmarks.leakage import leakage_report

        leakage = leakage_report(task, data, args.train_data)
    return _record_and_print(args, task, out, adapter.model_id, adapter.revision, data, result, config, leakage)


def _record_and_print(args, task, out: Path, model_id, model_revision, data, result, config, leakage) -> int:
    """Write results.json (records + run info) and print every metric with its interval."""
    from pathasst.benchmarks.results import SUITE_VERSION, make_records, write_results
    from pathasst.subcommands import invoked_command

    details_path = out / "details.jsonl"
    records = make_records(task, model_id, model_revision, data, result.estimates, seed=args.seed, config=config)
    warnings = []
    if not data.revision and not str(data.dataset_id).startswith("local:"):
        warnings.append(f"dataset revision not pinned: {data.dataset_id} as loaded today; the Hub copy may change "
                        "(pass --dataset-revision to load and record one)")
    run_info = {"command": invoked_command("pathasst bench run"), "suite_version": SUITE_VERSION, "config": config,
                "n_items": len(data.ds), "n_rows_before_select": data.n_total, "counts": result.counts,
                "leakage": leakage, "warnings": warnings}
    path = write_results(out, records, run_info)
    w = max(len(m) for m in task.metrics)
    for rec in records:
        ci = f"  95% CI [{rec['ci_low']:.4f}, {rec['ci_high']:.4f}]" if rec["ci_low"] is not None else ""
        print(f"  {rec['metric']:<{w}}  {rec['value']:.4f}{ci}  (n={rec['n']})")
    for key in ("empty_predictions", "random_fallbacks"):
        if result.counts.get(key):
            print(f"  {key}: {result.counts[key]}")
    if leakage is not None:
        print(f"  leakage: {leakage['near_duplicate_items']} of {leakage['items']} evaluation items are near-duplicates "
              f"of training records ({leakage['by_image']} by image, {leakage['by_text']} by text)")
    for warning in warnings:
        print(f"  warning: {warning}")
    print(f"wrote {path} and {details_path}")
    return 0


def _run_component(args: argparse.Namespace, task, out: Path) -> int:
    """``bench run`` of subfig_map, caption_split_f1 and pdf_pairing (benchmarks/components.py)."""
    from pathasst.benchmarks.components import run_component
    from pathasst.errors import ConfigError

    if args.train_data:
        raise ConfigError(f"--train-data: task {task.name} scores a pipeline component, not a model trained on "
                          "image-text records; leakage is not measured for it")
    details_path = out / "details.jsonl"

    def write_details(details):
        with open(details_path, "w") as fh:
            fh.writelines(json.dumps(d, ensure_ascii=False, default=str) + "\n" for d in details)

    print(f"bench run: {task.name} ({task.kind}: {task.raw.get('component')}, {task.task_version}); "
          f"model {args.model}", flush=True)
    run = run_component(task, model=args.model, dataset=args.dataset, split=args.split, limit=args.limit,
                        n_boot=args.bootstrap, seed=args.seed, device=args.device, base_url=args.base_url,
                        batch_size=args.batch_size, on_details=write_details)
    write_details(run.output.details)
    config = {
        "task": task.name, "task_version": task.task_version, "model": run.model_id,
        "model_revision": run.model_revision, "dataset": run.data.dataset_id, "dataset_revision": run.data.revision,
        "split": run.data.split, "limit": args.limit, "bootstrap": args.bootstrap, "seed": args.seed,
    }
    print(f"  {run.data.dataset_id} [{run.data.split}], {len(run.data.ds)} items; model {run.model_id}")
    return _record_and_print(args, task, out, run.model_id, run.model_revision, run.data, run.output, config, None)


def _with_columns(task, columns):
    import dataclasses

    return dataclasses.replace(task, columns=dict(task.columns) | columns)


def _leaderboard(args: argparse.Namespace) -> int:
    from pathasst.benchmarks.leaderboard import build

    info = build(Path(args.results_dir), Path(args.out))
    print(f"leaderboard: {info['records']} records, {info['models']} model(s), {info['tasks']} task(s)")
    for name, t in info["tables"].items():
        first = t["metrics"][0]
        best_label, best = t["rows"][0]
        if first in best:
            print(f"  {name}: best {first} {best[first]['value']:.4f} ({best_label})")
    for f, failures in info["rejected"]:
        print(f"  rejected {f}: {len(failures)} problem(s), first: {failures[0]}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'leaderboard.md'}, .csv, .html, .png")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pathasst.benchmarks.results import check_submission

    check = check_submission(Path(args.submission))
    for w in check.warnings:
        print(f"warning: {w}")
    if check.ok:
        print(f"valid: {len(check.records)} record(s)")
        return 0
    print(f"invalid: {len(check.failures)} problem(s) in {args.submission}", file=sys.stderr)
    for f in check.failures:
        print(f"  - {f}", file=sys.stderr)
    return 4
