"""`pathasst demo`: every stage that exists, in order, on the embedded sample; one run folder.

The sample (``dataset_builders/samples/demo_figures.yaml``) is cut from a real IHC micrograph that
scikit-image ships, plus deliberately broken inputs, so the run shows both the output and the
rejection ledger. Each later stage (extraction, curation, training, benchmarks) adds itself to
``STAGES``; the summary lists what each stage did.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from pathasst import __version__
from pathasst.errors import OutputError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoContext:
    out: Path
    max_side: int
    collection: str = "sample"
    results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[DemoContext], dict[str, Any]]


def _load_sample() -> dict[str, Any]:
    text = resources.files("pathasst.dataset_builders.samples").joinpath("demo_figures.yaml").read_text()
    return yaml.safe_load(text)


def _crop_png(micrograph, crop: list[int] | None) -> bytes:
    from PIL import Image

    img = Image.fromarray(micrograph)
    if crop:
        x, y, size = crop
        img = img.crop((x, y, x + size, y + size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def stage_sample(ctx: DemoContext) -> dict[str, Any]:
    """Write the embedded sample as a private collection would arrive: images plus a manifest."""
    from skimage.data import immunohistochemistry

    sample = _load_sample()
    micrograph = immunohistochemistry()
    inputs = ctx.out / "inputs"
    (inputs / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, fig in enumerate(sample["figures"] + sample.get("broken", [])):
        png = _crop_png(micrograph, fig.get("crop"))
        defect = fig.get("defect")
        if defect == "truncate":
            png = png[: len(png) // 3]
        elif defect == "not-an-image":
            png = b"this file was meant to be a figure but holds text\n"
        name = f"images/{i:03d}-{fig['id']}.png"
        (inputs / name).write_bytes(png)
        rows.append({
            "id": fig["id"],
            "image": name,
            "caption": fig["caption"].strip(),
            "license": sample["license"],
            "provenance": f"scikit-image data: immunohistochemistry, {fig.get('crop') or 'whole image'}",
        })
    with open(inputs / "figures.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    ctx.collection = sample["collection"]
    return {"inputs": len(rows), "manifest": "inputs/figures.jsonl",
            "source": "skimage.data.immunohistochemistry (real IHC micrograph)"}


def stage_extract_private(ctx: DemoContext) -> dict[str, Any]:
    """`pathasst extract private inputs/figures.jsonl --out pathcap`, the real source extractor."""
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.common import run_extract
    from pathasst.dataset_builders.extract.private import SOURCE

    manifest = ctx.out / "inputs" / "figures.jsonl"
    cfg = load_config(SOURCE.config, None, [f"collection={ctx.collection}", f"max_side={ctx.max_side}"])
    summary = run_extract(SOURCE, cfg, [str(manifest)], str(ctx.out / "pathcap"),
                          command="pathasst demo (extract private)")
    inputs = sum(1 for line in open(manifest) if line.strip())
    accounted = summary.total_records + summary.rejected
    if accounted != inputs:
        raise OutputError(f"accounting broken: {inputs} inputs but {accounted} records + rejections")
    return {
        "inputs": inputs,
        "records": summary.records,
        "rejected": summary.rejected,
        "reject_reasons": summary.reject_reasons,
        "shards": summary.shards,
        "bytes": summary.bytes,
        "folder": "pathcap",
    }


def stage_verify(ctx: DemoContext) -> dict[str, Any]:
    """Load the folder exactly as a user would and check it against the contract."""
    from datasets import load_dataset

    from pathasst.records import get_spec

    spec = get_spec("pathcap")
    ds = load_dataset(str(ctx.out / "pathcap"))
    groups: dict[str, set[str]] = {}
    checked = 0
    for split, part in ds.items():
        for record in part:
            spec.validate(record)
            groups.setdefault(spec.group_of(record), set()).add(split)
            checked += 1
    leaking = sorted(g for g, s in groups.items() if len(s) > 1)
    expected = sum(ctx.results["extract"]["records"].values())
    if checked != expected or leaking:
        raise OutputError(f"verification failed: {checked} rows loaded, {expected} written; "
                          f"groups in several splits: {leaking}")
    return {"loaded_rows": {k: len(v) for k, v in ds.items()}, "groups": len(groups),
            "groups_spanning_splits": 0, "contract": "every row valid"}


STAGES: tuple[Stage, ...] = (
    Stage("sample", "write the embedded sample (real IHC micrograph crops + broken inputs)", stage_sample),
    Stage("extract", "extract private: the manifest -> a PathCap dataset folder", stage_extract_private),
    Stage("verify", "load it with datasets.load_dataset and check the record contract", stage_verify),
)


def run_demo(out: Path, overwrite: bool = False, max_side: int = 1024) -> dict[str, Any]:
    """Run every stage into ``out``; returns the summary also written as summary.json/summary.md."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"run folder {out} exists and is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create run folder {out}: {exc.strerror or exc}") from None
    ctx = DemoContext(out=out, max_side=max_side)
    started = time.time()
    stages = []
    for i, stage in enumerate(STAGES, 1):
        print(f"[{i}/{len(STAGES)}] {stage.name}: {stage.description}", flush=True)
        t0 = time.monotonic()
        result = stage.run(ctx)
        ctx.results[stage.name] = result
        stages.append({"name": stage.name, "description": stage.description,
                       "seconds": round(time.monotonic() - t0, 2), **result})
    summary = {
        "pathasst_version": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 2),
        "stages": stages,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_summary_markdown(summary))
    return summary


def _summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# pathasst demo ({summary['started']}, {summary['seconds']} s)", "",
             "| stage | what it did | result | seconds |", "|---|---|---|---|"]
    for s in summary["stages"]:
        shown = {k: v for k, v in s.items() if k not in ("name", "description", "seconds", "shards")}
        lines.append(f"| {s['name']} | {s['description']} | {_readable(shown)} | {s['seconds']} |")
    extract = next((s for s in summary["stages"] if s["name"] == "extract"), None)
    if extract:
        lines += ["", "Load the dataset:", "", "```python", "from datasets import load_dataset",
                  'ds = load_dataset("pathcap")  # path relative to this run folder', "```", "",
                  f"Rejected inputs ({extract['rejected']}) are listed with their reasons in "
                  "`pathcap/rejects.jsonl`."]
    return "\n".join(lines) + "\n"


def _readable(values: dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        parts.append(f"{key.replace('_', ' ')}: {value}")
    return "; ".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default: runs/demo-YYYYmmdd-HHMMSS)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--max-side", type=int, default=1024, help="longest image side kept (pixels)")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    run_demo(out, overwrite=args.overwrite, max_side=args.max_side)
    print(f"\nRun folder: {out}\n" + (out / "summary.md").read_text())
    return 0
