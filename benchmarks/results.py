"""Results files and submission checks.

A run writes ``results.json``::

    {"format": "pathasst-results/1", "records": [<results record>, ...], "run": {...}}

where each record is the results contract of :mod:`pathasst.records` (``get_spec("results")``): one
row per (model, task, metric) with the value, its bootstrap standard error and 95% interval, n,
seed, suite version, config hash and date. ``run`` holds what the records do not (counts, the
command, the prompts per class, fallbacks) for humans; :func:`check_submission` reads records only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pathasst import __version__
from pathasst.errors import ConfigError, InputError, RecordError

FORMAT = "pathasst-results/1"
SUITE_VERSION = __version__
# every metric of the suite is a proportion, a recall, an F1 or an AUC: all live in [0, 1]
_BOUNDED = True


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_records(task, model_id: str, model_revision: Optional[str], data, estimates, *, seed: int,
                 config: dict[str, Any]) -> list[dict[str, Any]]:
    """One results record per metric, validated against the contract."""
    from pathasst.records import get_spec, validate_record

    chash = config_hash(config)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    spec = get_spec("results")
    records = []
    for metric in task.metrics:
        est = estimates[metric]
        rec = {
            "model_id": model_id,
            "model_revision": model_revision,
            "task_name": task.name,
            "task_version": task.task_version,
            "dataset_id": data.dataset_id,
            "dataset_revision": data.revision,
            "split": data.split,
            "metric": metric,
            "value": float(est.value),
            "stderr": est.stderr,
            "ci_low": est.ci_low,
            "ci_high": est.ci_high,
            "n": int(est.n),
            "seed": int(seed),
            "suite_version": SUITE_VERSION,
            "config_hash": chash,
            "date": date,
        }
        validate_record(spec, rec, where=f"task {task.name}")
        records.append(rec)
    return records


def write_results(out: Path, records: list[dict], run: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "records": records, "run": run}, indent=1, ensure_ascii=False))
    tmp.replace(path)
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a results file (``{"records": [...]}`` or a bare list).

    Raises:
        InputError: unreadable or not JSON; RecordError: wrong top-level shape.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        return data["records"]
    if isinstance(data, list):
        return data
    raise RecordError(f"{path}: expected {{\"records\": [...]}} or a list of results records")


def results_files(path: Path) -> list[Path]:
    """``path`` itself if a file, else every ``*.json`` below it that holds results (sorted)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.json") if p.name == "results.json" or p.parent == path)
    if not files:
        raise InputError(f"{path}: no results.json below it")
    return files


@dataclass
class Check:
    """Outcome of :func:`check_submission`: ``failures`` make it invalid; ``warnings`` do not."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _where(i: int, rec: Any, source: str) -> str:
    if not isinstance(rec, dict):
        return f"{source} record {i}"
    return (f"{source} record {i} (model {rec.get('model_id')}, task {rec.get('task_name')}, "
            f"metric {rec.get('metric')})")


def check_submission(path: Path) -> Check:
    """Every problem of a submission (a results file or a folder of them), explained.

    Failures: broken JSON or contract fields; unknown task (with close matches); a task version
    that is not the registry's (the task file was edited, or is from another suite version); a
    metric the task does not report; a dataset other than the task's Hub dataset, or another
    revision than a pinned one; impossible values (outside [0, 1], NaN, an interval that does not
    hold the value, n < 1, negative stderr); duplicate (model, revision, task, split, metric) rows;
    a zero-shot result without all three classification metrics.
    Warnings: local or unpinned dataset copies (scores not comparable to the Hub version).
    """
    from pathasst.benchmarks.registry import get_task
    from pathasst.records import get_spec, record_errors

    spec = get_spec("results")
    out = Check()
    seen: Counter = Counter()
    per_model_task: dict[tuple, set[str]] = {}
    for file in results_files(Path(path)):
        try:
            records = read_records(file)
        except (InputError, RecordError) as exc:
            out.failures.append(str(exc))
            continue
        src = file.name if Path(path).is_file() else str(file.relative_to(path))
        for i, rec in enumerate(records):
            where = _where(i, rec, src)
            if not isinstance(rec, dict):
                out.failures.append(f"{where}: expected a mapping, got {type(rec).__name__}")
                continue
            errs = record_errors(spec, rec)
            if errs:
                out.failures.append(f"{where}: breaks the results contract: " + "; ".join(errs))
                continue
            out.records.append(rec)
            try:
                task = get_task(rec["task_name"])
            except ConfigError as exc:
                out.failures.append(f"{where}: {exc}")
                continue
            if rec["task_version"] != task.task_version:
                out.failures.append(
                    f"{where}: task_version {rec['task_version']} is not the registry's {task.task_version}: the "
                    "task definition it was scored under differs (an edited task file, or another suite "
                    "version); rerun with the registered task")
            if rec["metric"] not in task.metrics:
                out.failures.append(f"{where}: task {task.name} does not report '{rec['metric']}' "
                                    f"(it reports {', '.join(task.metrics)})")
            hub_id = task.dataset.get("id")
            pinned = task.dataset.get("revision")
            ds_id = rec["dataset_id"]
            if ds_id.startswith("local:"):
                if not task.generic:
                    out.warnings.append(f"{where}: scored on a local copy ({ds_id}, {rec.get('dataset_revision')}); "
                                        f"not verifiable against {hub_id or 'the official release'}")
            elif hub_id and ds_id != hub_id:
                out.failures.append(f"{where}: dataset_id {ds_id} is not the task's dataset {hub_id}")
            elif pinned and rec.get("dataset_revision") != pinned:
                out.failures.append(f"{where}: dataset_revision {rec.get('dataset_revision')} is not the task's "
                                    f"pinned revision {pinned}")
            elif not rec.get("dataset_revision"):
                out.warnings.append(f"{where}: no dataset_revision (unpinned): the Hub data may have changed since; "
                                    "not comparable with results on a recorded revision")
            elif hub_id and not pinned:
                out.warnings.append(f"{where}: task {task.name} pins no dataset revision; this result used "
                                    f"{rec['dataset_revision']}: compare it only with results on the same revision")
            v = rec["value"]
            if not math.isfinite(v):
                out.failures.append(f"{where}: value is {v}")
            elif _BOUNDED and not 0.0 <= v <= 1.0:
                out.failures.append(f"{where}: value {v} is impossible: {rec['metric']} lies in [0, 1]")
            lo, hi, se = rec.get("ci_low"), rec.get("ci_high"), rec.get("stderr")
            if (lo is None) != (hi is None):
                out.failures.append(f"{where}: only one end of the confidence interval is given")
            elif lo is not None:
                if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                    out.failures.append(f"{where}: interval [{lo}, {hi}] is not an interval")
                elif not lo - 1e-9 <= v <= hi + 1e-9:
                    out.failures.append(f"{where}: value {v} lies outside its own interval [{lo}, {hi}]")
                elif lo < -1e-9 or hi > 1 + 1e-9:
                    out.failures.append(f"{where}: interval [{lo}, {hi}] leaves [0, 1]")
            if se is not None and (not math.isfinite(se) or se < 0):
                out.failures.append(f"{where}: stderr {se} is impossible")
            if rec["n"] < 1:
                out.failures.append(f"{where}: n = {rec['n']}: a score needs at least one item")
            key = (rec["model_id"], rec.get("model_revision"), rec["task_name"], rec["split"], rec["metric"])
            seen[key] += 1
            if seen[key] == 2:
                out.failures.append(f"{where}: duplicate: model {key[0]} (revision {key[1]}) already has "
                                    f"{key[4]} on {key[2]} [{key[3]}]")
            if task.kind == "zeroshot":
                per_model_task.setdefault((rec["model_id"], rec.get("model_revision"), task.name), set()).add(rec["metric"])
    for (model, _rev, name), metrics in per_model_task.items():
        missing = {"accuracy", "balanced_accuracy", "weighted_f1"} - metrics
        if missing:
            out.failures.append(f"model {model} on {name}: zero-shot results must report accuracy, balanced_accuracy "
                                f"and weighted_f1 together; missing {', '.join(sorted(missing))}")
    return out
