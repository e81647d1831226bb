"""`pathasst bench leaderboard RESULTS_DIR --out DIR`: Markdown, CSV and HTML (with a plot).

Only submissions that pass :func:`~pathasst.benchmarks.results.check_submission` enter the board;
each rejected file is listed with its reasons in the Markdown and HTML. One table per task: a row
per model (and revision), a column per metric, ``value [ci_low, ci_high]``; rows are ordered by the
task's first metric. The plot shows that first metric with its 95% interval for every task.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from pathasst.benchmarks.results import check_submission, results_files
from pathasst.errors import OutputError

CSV_FIELDS = ["task_name", "task_version", "model_id", "model_revision", "metric", "value", "ci_low", "ci_high",
              "stderr", "n", "dataset_id", "dataset_revision", "split", "seed", "suite_version", "config_hash", "date"]


def _fmt(rec: dict[str, Any]) -> str:
    if rec.get("ci_low") is None:
        return f"{rec['value']:.3f}"
    return f"{rec['value']:.3f} [{rec['ci_low']:.3f}, {rec['ci_high']:.3f}]"


def collect(results_dir: Path) -> tuple[list[dict], list[tuple[str, list[str]]]]:
    """Records of every valid results file, and ``(file, failures)`` of the rejected ones."""
    records, rejected = [], []
    for f in results_files(results_dir):
        check = check_submission(f)
        if check.ok:
            records.extend(check.records)
        else:
            rejected.append((str(f.relative_to(results_dir)) if results_dir.is_dir() else f.name, check.failures))
    return records, rejected


def tables(records: list[dict]) -> dict[str, dict[str, Any]]:
    """``{task: {"metrics": [...], "rows": [(model label, {metric: record})]}}`` sorted best first."""
    from pathasst.benchmarks.registry import get_task

    by_task: dict[str, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        label = r["model_id"] + (f" @{r['model_revision'][:19]}" if r.get("model_revision") else "")
        by_task[r["task_name"]][label][r["metric"]] = r
    out = {}
    for name in sorted(by_task):
        metrics = list(get_task(name).metrics)
        first = metrics[0]
        rows = sorted(by_task[name].items(), key=lambda kv: -(kv[1].get(first, {}).get("value", -1.0)))
        out[name] = {"metrics": metrics, "rows": rows}
    return out


def render_markdown(tabs, rejected) -> str:
    lines = ["# pathasst benchmark leaderboard", "",
             "Values are point estimates with percentile-bootstrap 95% intervals over items.", ""]
    for name, t in tabs.items():
        lines += [f"## {name}", "", "| model | " + " | ".join(t["metrics"]) + " | n |",
                  "|---|" + "---|" * (len(t["metrics"]) + 1)]
        for label, recs in t["rows"]:
            n = next(iter(recs.values()))["n"]
            cells = [_fmt(recs[m]) if m in recs else "—" for m in t["metrics"]]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {n} |")
        lines.append("")
    if rejected:
        lines += ["## Rejected submissions", ""]
        for f, failures in rejected:
            lines.append(f"- `{f}`: " + "; ".join(failures))
        lines.append("")
    return "\n".join(lines)


def _plot_png(tabs) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(tabs)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(max(4, 3.2 * len(names)), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        t = tabs[name]
        metric = t["metrics"][0]
        labels, vals, lo, hi = [], [], [], []
        for label, recs in t["rows"]:
            r = recs.get(metric)
            if r is None:
                continue
            labels.append(label.split(" @")[0][:18])
            vals.append(r["value"])
            lo.append(r["value"] - (r["ci_low"] if r.get("ci_low") is not None else r["value"]))
            hi.append((r["ci_high"] if r.get("ci_high") is not None else r["value"]) - r["value"])
        ax.bar(range(len(vals)), vals, yerr=[lo, hi], capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(vals)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}\n{metric}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def render_html(tabs, rejected, png: bytes) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>pathasst leaderboard</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>",
             "</head><body><h1>pathasst benchmark leaderboard</h1>",
             "<p>Point estimates with percentile-bootstrap 95% intervals over items.</p>",
             f"<img alt='first metric of each task with 95% intervals' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"]
    for name, t in tabs.items():
        parts.append(f"<h2>{html.escape(name)}</h2><table><tr><th>model</th>"
                     + "".join(f"<th>{html.escape(m)}</th>" for m in t["metrics"]) + "<th>n</th></tr>")
        for label, recs in t["rows"]:
            n = next(iter(recs.values()))["n"]
            parts.append(f"<tr><td>{html.escape(label)}</td>"
                         + "".join(f"<td>{html.escape(_fmt(recs[m])) if m in recs else '—'}</td>" for m in t["metrics"])
                         + f"<td>{n}</td></tr>")
        parts.append("</table>")
    if rejected:
        parts.append("<h2>Rejected submissions</h2><ul>")
        for f, failures in rejected:
            parts.append(f"<li><code>{html.escape(f)}</code>: {html.escape('; '.join(failures))}</li>")
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build(results_dir: Path, out: Path) -> dict[str, Any]:
    """Write ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.html`` and ``leaderboard.png``."""
    records, rejected = collect(results_dir)
    tabs = tables(records)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "leaderboard.md").write_text(render_markdown(tabs, rejected))
        with open(out / "leaderboard.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in sorted(records, key=lambda r: (r["task_name"], r["model_id"], r["metric"])):
                w.writerow(r)
        png = _plot_png(tabs) if tabs else b""
        if png:
            (out / "leaderboard.png").write_bytes(png)
        (out / "leaderboard.html").write_text(render_html(tabs, rejected, png))
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write the leaderboard ({exc})") from None
    return {"records": len(records), "tasks": len(tabs), "models": len({r['model_id'] for r in records}),
            "rejected": rejected, "tables": tabs}
