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
    atlas_figures: dict[str, str] = dataclasses.field(default_factory=dict)
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
    ctx.atlas_figures = _write_atlas(inputs / "atlas.pdf", micrograph, sample)
    return {"inputs": len(rows), "manifest": "inputs/figures.jsonl", "atlas": "inputs/atlas.pdf",
            "atlas_figures": len(ctx.atlas_figures),
            "source": "skimage.data.immunohistochemistry (real IHC micrograph)"}


def _write_atlas(path: Path, micrograph, sample: dict[str, Any]) -> dict[str, str]:
    """A small textbook PDF of the sample figures: captions below and above, running heads, and
    one compound figure of four placed panels. Returns figure label -> caption as printed."""
    from pathasst.testing.pdfs import A4, MARGIN, Figure, Page, Text, make_pdf

    width = A4[0] - 2 * MARGIN
    pages, printed = [], {}
    figures = sample["figures"]
    for i, fig in enumerate(figures[1:], 1):
        label = f"Figure 1.{i}"
        caption = f"{label}: {' '.join(fig['caption'].split())}"
        printed[label] = caption
        below = i % 2 == 1
        top = 140.0 if below else 200.0
        rect = (MARGIN + width * 0.2, top, MARGIN + width * 0.8, top + width * 0.6)
        pages.append(Page(
            figures=[Figure(rect, caption, "below" if below else "above", images=[_crop_png(micrograph, fig.get("crop"))])],
            texts=[Text((MARGIN, 70, MARGIN + width, 95), "Chapter 1. The colonic mucosa", 13, "hebo", role="heading")],
            header="Atlas of colonic immunohistochemistry", footer=str(len(pages) + 1)))
    panels = [fig for fig in figures[1:5]]
    label = f"Figure 1.{len(figures)}"
    caption = (f"{label}: FHL2 immunohistochemistry, DAB with hematoxylin counterstain. "
               + " ".join(f"({chr(65 + j)}) {' '.join(fig['caption'].split())}" for j, fig in enumerate(panels)))
    printed[label] = caption
    rect = (MARGIN, 120.0, MARGIN + width, 120.0 + width * 0.8)
    pages.append(Page(
        figures=[Figure(rect, caption, "below", kind="compound", grid=(2, 2),
                        images=[_crop_png(micrograph, fig.get("crop")) for fig in panels])],
        header="Atlas of colonic immunohistochemistry", footer=str(len(pages) + 1)))
    make_pdf(path, pages, title="pathasst demo atlas")
    return printed


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


def stage_extract_pdf(ctx: DemoContext) -> dict[str, Any]:
    """`pathasst extract pdf inputs/atlas.pdf --out pathcap_pdf`, checked against what was printed."""
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.common import run_extract
    from pathasst.dataset_builders.extract.pdf import SOURCE

    sample = _load_sample()
    cfg = load_config(SOURCE.config, None, [f"license={sample['license']}", f"max_side={ctx.max_side}"])
    summary = run_extract(SOURCE, cfg, [str(ctx.out / "inputs" / "atlas.pdf")], str(ctx.out / "pathcap_pdf"),
                          command="pathasst demo (extract pdf)")
    from pathasst.inputs import load_dataset_fresh

    rows = [r for part in load_dataset_fresh(str(ctx.out / "pathcap_pdf")).values() for r in part]
    found = {r["figure_label"]: " ".join(r["caption_raw"].split()) for r in rows}  # raw keeps line breaks
    paired = sum(1 for label, caption in ctx.atlas_figures.items() if found.get(label) == caption)
    return {
        "figures_printed": len(ctx.atlas_figures),
        "records": summary.records,
        "rejected": summary.rejected,
        "captions_paired_exactly": paired,
        "folder": "pathcap_pdf",
    }


def stage_subfig(ctx: DemoContext) -> dict[str, Any]:
    """`pathasst build subfig --synthetic 24 --images pathcap`: compound figures with exact boxes."""
    from pathasst.config import load_config
    from pathasst.dataset_builders.build.subfig import SubfigConfig, build_subfig

    cfg = load_config(SubfigConfig, None, ["synthetic=24", f"images={ctx.out / 'pathcap'}", "seed=0",
                                           f"yolo_export={ctx.out / 'subfig_yolo'}"])
    summary = build_subfig(cfg, ctx.out / "subfig", command="pathasst demo (build subfig)")
    return {"figures": summary.records, "boxes": summary.objects, "rejected": summary.rejected,
            "folder": "subfig", "yolo_export": "subfig_yolo"}


def _write_demo_benchmark(folder: Path, micrograph, sample: dict[str, Any]) -> None:
    """A two-question benchmark written for the demo, as a downloaded Hub benchmark looks (Parquet
    only): one question shows a sample crop (re-encoded, as benchmarks re-encode figures), so that
    decontamination has a real leak to find; the other shares nothing with the sample."""
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    leaked = next(f for f in sample["figures"] if f["id"] == "ihc-stroma")
    buf = io.BytesIO()
    PILImage.open(io.BytesIO(_crop_png(micrograph, leaked["crop"]))).convert("RGB").save(buf, "JPEG", quality=70)
    other = io.BytesIO()
    PILImage.new("RGB", (96, 96), (236, 200, 220)).save(other, "JPEG")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(
        {"id": ["q1", "q2"], "image": [buf.getvalue(), other.getvalue()],
         "question": ["Is DAB signal present in the cells of this region?", "What organ is shown?"],
         "answer": ["no", "skin"]},
        features=Features({"id": Value("string"), "image": Image(), "question": Value("string"),
                           "answer": Value("string")}),
    ).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))


def stage_pathcap(ctx: DemoContext) -> dict[str, Any]:
    """`curate refine` both sources, then `build pathcap` against a demo benchmark.

    The atlas and the private collection hold the same crops, so the cross-source dedup has real
    duplicates to remove, and the demo benchmark re-uses one crop, so decontamination has a leak.
    """
    from skimage.data import immunohistochemistry

    from pathasst.config import load_config
    from pathasst.dataset_builders.build.pathcap import PathCapBuildConfig, build_pathcap
    from pathasst.dataset_builders.curate.refine import RefineConfig, refine_dataset

    sources = [str(ctx.out / "pathcap"), str(ctx.out / "pathcap_pdf")]
    refined = refine_dataset(sources, ctx.out / "curated", RefineConfig(inputs=sources), progress=False,
                             command="pathasst demo (curate refine)")
    bench = ctx.out / "inputs" / "demo_benchmark"
    _write_demo_benchmark(bench, immunohistochemistry(), _load_sample())
    cfg = load_config(PathCapBuildConfig, None, [])
    cfg.inputs, cfg.benchmarks = [str(ctx.out / "curated")], [str(bench)]
    summary = build_pathcap([str(ctx.out / "curated")], ctx.out / "PathCap", cfg, progress=False,
                            command="pathasst demo (build pathcap)")
    if not summary["accounted"]:
        raise OutputError("build pathcap: records + ledger lines do not add up to the inputs")
    stages = summary["stages"]
    return {
        "refined": refined["records_total"],
        "filtered_out": stages["filter"]["rejected"],
        "duplicates_removed": stages["dedup"]["rejected"],
        "benchmark_leaks_removed": stages["decontam"]["rejected"],
        "records": summary["records"],
        "rejected": summary["rejected_total"],
        "folder": "PathCap",
    }


def stage_verify(ctx: DemoContext) -> dict[str, Any]:
    """Load every dataset folder exactly as a user would and check it against its contract."""
    from pathasst.inputs import load_dataset_fresh
    from pathasst.records import get_spec

    checks = {"pathcap": ("pathcap", "extract"), "pathcap_pdf": ("pathcap", "extract-pdf"),
              "subfig": ("pathsubfig", "subfig"), "PathCap": ("pathcap", "pathcap")}
    report: dict[str, Any] = {}
    for folder, (kind, stage) in checks.items():
        written = ctx.results.get(stage)
        if written is None:
            continue
        spec = get_spec(kind)
        ds = load_dataset_fresh(str(ctx.out / folder))
        groups: dict[str, set[str]] = {}
        rows = 0
        for split, part in ds.items():
            for record in part:
                spec.validate(record)
                groups.setdefault(spec.group_of(record), set()).add(split)
                rows += 1
        expected = sum((written.get("records") or written.get("figures")).values())
        leaking = sorted(g for g, s in groups.items() if len(s) > 1)
        if rows != expected or leaking:
            raise OutputError(f"verification of {folder} failed: {rows} rows loaded, {expected} written; "
                              f"groups in several splits: {leaking}")
        report[folder] = f"{rows} rows valid, {len(groups)} groups, none across splits"
    return report


STAGES: tuple[Stage, ...] = (
    Stage("sample", "write the embedded sample (real IHC micrograph crops + broken inputs)", stage_sample),
    Stage("extract", "extract private: the manifest -> a PathCap dataset folder", stage_extract_private),
    Stage("extract-pdf", "extract pdf: the atlas -> a PathCap dataset folder, pairs checked", stage_extract_pdf),
    Stage("subfig", "build subfig: synthetic compound figures from the PathCap images", stage_subfig),
    Stage("pathcap", "curate refine + build pathcap: cross-source dedup, decontamination, the released folder",
          stage_pathcap),
    Stage("verify", "load every dataset folder with datasets and check its contract", stage_verify),
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
