"""Benchmark: the subfigure detector on REAL compound figures next to held-out synthetic ones.

The detector is trained on synthetic compound figures (``pathasst build subfig --synthetic``), whose
boxes are exact; how well it finds panels there says little about real documents. This benchmark
scores one detector on both:

* **real**: the figures of ``benchmarks/data/subfig_real.yaml``, compound figures (and a few
  single-panel ones) from real typeset documents (R package vignettes), every panel box checked by
  eye (the yaml's header says what a panel is and how the boxes were made). The PDFs are fetched as
  :mod:`pathasst.benchmarks.perf.extract_quality` fetches them (same helper, same cache), each
  figure is rendered from its PDF clip at the yaml's DPI, written as COCO JSON + PNG files and
  turned into a PathSubfig folder through ``pathasst build subfig --coco`` (its Python API), which
  also writes the YOLO export that the evaluation reads;
* **synthetic**: compound figures from the generator with another seed and another image pool than
  the training figures (held out), evaluated the same way. ``--chart-fraction`` sets the share of
  chart panels in the training figures (and, unless ``--test-chart-fraction`` says otherwise, in the
  held-out ones); 0 gives the micrograph-only figures of the first measurement.

Both go through :func:`pathasst.trainers.subfig.evaluate` (``pathasst curate detect --eval``):
mAP50 and mAP50-95 over all classes the set has, and for the ``subfigure`` class alone (the real set
has no ``panel_label`` boxes: none of its figures prints panel letters, so the like-for-like number
is the ``subfigure`` one). The real set is also scored per layout (lattice, base-graphics grid, ...)
to show which kinds of figure fail.

The detector is either given (``--model``: a ``.pt`` or a ``pathasst train subfig`` run folder) or
trained here with a shipped recipe (``--recipe tiny``, the default, plus ``key=value`` overrides) on
``--train-figures`` synthetic figures.

    python -m pathasst.benchmarks.perf.subfig_real --fetch --work runs/subfig-real epochs=25
    python -m pathasst.benchmarks.perf.subfig_real --work runs/subfig-real --model runs/x/weights/best.pt
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pathasst.benchmarks.perf.extract_quality import default_cache, obtain

DOC_KEYS = ("name", "package", "version", "path", "sha256")
FIGURE_KEYS = ("document", "page", "label", "kind", "layout", "clip", "panels")
KINDS = ("compound", "single")


def default_labels() -> Path:
    return Path(str(resources.files("pathasst.benchmarks"))) / "data" / "subfig_real.yaml"


# --- the annotations ---------------------------------------------------------------------------


def _box(value: Any, where: str) -> list[float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
        raise ValueError(f"{where}: expected [x0, y0, x1, y1] in PDF points, got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{where}: [x0, y0, x1, y1] = {value!r} has zero or negative size")
    return [x0, y0, x1, y1]


def load_annotations(path: str | Path | None = None) -> dict[str, Any]:
    """Read and check the real-figure annotations.

    Returns:
        ``{"dpi", "documents": {name: doc}, "figures": [figure, ...]}``; each figure gets an ``id``
        (``<document>-p<page>-<label>``) and its boxes as float lists.

    Raises:
        ValueError: a missing key, a document a figure names but the file does not list, a box that is
            malformed, empty, or not inside its figure's clip, a clip with no panel, two figures with
            one id.
    """
    import yaml

    path = Path(path) if path else default_labels()
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("figures"), list):
        raise ValueError(f"{path}: expected a mapping with 'dpi', 'documents' and 'figures'")
    dpi = data.get("dpi")
    if not isinstance(dpi, (int, float)) or not 36 <= dpi <= 600:
        raise ValueError(f"{path}: 'dpi' must be a number within 36..600 (got {dpi!r})")
    documents: dict[str, dict[str, Any]] = {}
    for i, doc in enumerate(data.get("documents") or []):
        missing = [k for k in DOC_KEYS if k not in (doc or {})]
        if missing:
            raise ValueError(f"{path}: documents[{i}] lacks {', '.join(missing)}")
        documents[doc["name"]] = dict(doc)
    figures, ids = [], set()
    for i, fig in enumerate(data["figures"]):
        where = f"{path}: figures[{i}]"
        missing = [k for k in FIGURE_KEYS if k not in (fig or {})]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        if fig["document"] not in documents:
            raise ValueError(f"{where}: document '{fig['document']}' is not in 'documents'")
        if fig["kind"] not in KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)} (got {fig['kind']!r})")
        if not isinstance(fig["page"], int) or fig["page"] < 1:
            raise ValueError(f"{where}: page must be a 1-based page number (got {fig['page']!r})")
        clip = _box(fig["clip"], f"{where}.clip")
        panels = fig["panels"] or []
        if not panels:
            raise ValueError(f"{where}: no panels (a single-panel figure has one)")
        if (fig["kind"] == "single") != (len(panels) == 1):
            raise ValueError(f"{where}: kind '{fig['kind']}' with {len(panels)} panels")
        boxes = []
        for k, panel in enumerate(panels):
            box = _box((panel or {}).get("box"), f"{where}.panels[{k}].box")
            if box[0] < clip[0] or box[1] < clip[1] or box[2] > clip[2] or box[3] > clip[3]:
                raise ValueError(f"{where}.panels[{k}].box {box} is not inside the figure's clip {clip}")
            boxes.append({"box": box, "letter": panel.get("letter")})
        fid = f"{fig['document']}-p{fig['page']}-{re.sub(r'[^A-Za-z0-9]+', '', str(fig['label']))}"
        if fid in ids:
            raise ValueError(f"{where}: a second figure {fid}")
        ids.add(fid)
        figures.append({**fig, "id": fid, "clip": clip, "panels": boxes})
    return {"dpi": float(dpi), "documents": documents, "figures": figures}


def to_pixels(box: Sequence[float], clip: Sequence[float], dpi: float, size: tuple[int, int]) -> list[float]:
    """A box in page points -> ``[x, y, w, h]`` in pixels of the clip rendered at ``dpi`` (clamped
    to the rendered image, whose size is the clip's rounded to whole pixels)."""
    s = dpi / 72.0
    w, h = size
    x0, y0 = min(w, max(0.0, (box[0] - clip[0]) * s)), min(h, max(0.0, (box[1] - clip[1]) * s))
    x1, y1 = min(w, max(0.0, (box[2] - clip[0]) * s)), min(h, max(0.0, (box[3] - clip[1]) * s))
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def render_figure(pdf: Path, page: int, clip: Sequence[float], dpi: float) -> tuple[bytes, int, int]:
    """PNG of a page clip at ``dpi`` and its pixel size."""
    import pymupdf

    with pymupdf.open(pdf) as doc:
        pix = doc[page - 1].get_pixmap(clip=pymupdf.Rect(clip), dpi=int(round(dpi)), alpha=False,
                                       colorspace=pymupdf.csRGB)
        return pix.tobytes("png"), pix.width, pix.height


def write_coco(ann: Mapping[str, Any], pdfs: Mapping[str, Path], out_dir: str | Path) -> dict[str, Any]:
    """Render every figure whose document is in ``pdfs`` and write ``out_dir/real.json`` (COCO) with
    the PNGs in ``out_dir/images``.

    Returns:
        ``{"coco": path, "images": n, "boxes": n, "skipped": [(figure id, why), ...]}``: a figure whose
        document is missing is skipped and named, never dropped silently.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations, skipped = [], [], []
    for fig in ann["figures"]:
        pdf = pdfs.get(fig["document"])
        if pdf is None:
            skipped.append((fig["id"], f"document {fig['document']} not available"))
            continue
        png, w, h = render_figure(pdf, fig["page"], fig["clip"], ann["dpi"])
        name = f"{fig['id']}.png"
        (out_dir / "images" / name).write_bytes(png)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": w, "height": h, "figure": fig["id"],
                       "kind": fig["kind"], "layout": fig["layout"]})
        for panel in fig["panels"]:
            x, y, bw, bh = to_pixels(panel["box"], fig["clip"], ann["dpi"], (w, h))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x, y, bw, bh], "area": round(bw * bh, 2), "iscrowd": 0,
                                **({"letter": panel["letter"]} if panel.get("letter") else {})})
    coco = {"info": {"description": "real compound figures (pathasst benchmarks/data/subfig_real.yaml)",
                     "dpi": ann["dpi"]},
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "subfigure"}, {"id": 2, "name": "panel_label"}]}
    path = out_dir / "real.json"
    path.write_text(json.dumps(coco, indent=1))
    return {"coco": str(path), "images": len(images), "boxes": len(annotations), "skipped": skipped}


def build_dataset(coco: str | Path, out: str | Path, yolo: str | Path) -> Any:
    """The PathSubfig folder (and its YOLO export) of a COCO file, as ``pathasst build subfig --coco``
    builds it; every figure and box must come through (the real set is small and clean)."""
    from pathasst.dataset_builders.build.subfig import SubfigConfig, build_subfig

    cfg = SubfigConfig(coco=[str(coco)], yolo_export=str(yolo))
    return build_subfig(cfg, out, overwrite=True, progress=False)


def eval_yaml(yolo: str | Path, out: str | Path, images: Optional[Sequence[Path]] = None) -> Path:
    """A data.yaml whose ``test`` split is every image of a YOLO export (all its splits), or the
    listed ``images`` only (a per-layout subset)."""
    import yaml

    yolo, out = Path(yolo).resolve(), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = yaml.safe_load((yolo / "data.yaml").read_text())["names"]
    if images is None:
        test: Any = [f"images/{s}" for s in ("train", "val", "test") if (yolo / "images" / s).is_dir()]
    else:
        listing = out.with_suffix(".txt")
        listing.write_text("".join(f"{Path(p).resolve()}\n" for p in images))
        test = str(listing.resolve())
    data = {"path": str(yolo), "train": "images/train", "val": "images/val", "test": test, "names": names}
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


# --- the synthetic side and the detector ------------------------------------------------------


def synthetic_dataset(out: Path, figures: int, seed: int, pool_size: int = 64, chart_fraction: float | None = None) -> Any:
    """``figures`` synthetic compound figures from a pool of real micrograph tiles (both drawn from
    ``seed``), built with ``pathasst build subfig --synthetic`` and exported to YOLO; ``chart_fraction``
    of the panels are charts (None: the builder's default)."""
    from pathasst.benchmarks.perf.synthetic_figures import build_pool
    from pathasst.dataset_builders.build.subfig import SubfigConfig, build_subfig

    pool_dir = out / "pool"
    pool_dir.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(build_pool(pool_size, seed)[1]):
        img.save(pool_dir / f"pool-{i:03d}.jpg", quality=92)
    extra = {} if chart_fraction is None else {"chart_fraction": chart_fraction}
    cfg = SubfigConfig(synthetic=figures, images=str(pool_dir), seed=seed, yolo_export=str(out / "yolo"), **extra)
    return build_subfig(cfg, out / "pathsubfig", overwrite=True, progress=False)


def train_detector(recipe: str, overrides: Sequence[str], data: Path, output_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Train with a shipped ``subfig`` recipe (``key=value`` overrides win); return best.pt and the
    training summary."""
    from pathasst.trainers.registry import load_family_config
    from pathasst.trainers.subfig import FAMILY, SubfigConfig, train

    argv = ["--recipe", recipe, f"data={data}", f"output_dir={output_dir}", *overrides]
    cfg = load_family_config(SubfigConfig, FAMILY, argv)
    summary = train(cfg)
    return output_dir / summary["best"], summary


def _score(model: Path, data: Path, device: str) -> dict[str, Any]:
    from pathasst.trainers.subfig import evaluate

    m = evaluate(model, data, "test", device=device, work_dir=data.parent / f".eval-{data.stem}")
    sub = m["per_class"].get("subfigure", {})
    label = m["per_class"].get("panel_label", {})
    return {"images": m["images"], "instances": m["instances"], "map50": m["map50"], "map50_95": m["map50_95"],
            "subfigure_map50": sub.get("map50"), "subfigure_map50_95": sub.get("map50_95"),
            "panel_label_map50": label.get("map50"), "panel_label_map50_95": label.get("map50_95"),
            "precision": m["precision"], "recall": m["recall"], "imgsz": m["imgsz"]}


def count_detections(model: Path, images: Sequence[Path], conf: float = 0.25, device: str = "cpu") -> list[int]:
    """Subfigure boxes the detector reports at ``conf`` (the ``curate detect`` default) on each
    image, at its training size: how many real figures it leaves with no panel at all."""
    from pathasst.trainers.subfig import load_detector

    detector, _ = load_detector(model, "model")
    imgsz = int((detector.ckpt or {}).get("train_args", {}).get("imgsz") or 640)
    sub = next(int(k) for k, v in detector.names.items() if v == "subfigure")
    counts = []
    for image in images:
        result = detector.predict(str(image), imgsz=imgsz, conf=conf, device=device, verbose=False)[0]
        counts.append(sum(int(c) == sub for c in result.boxes.cls.tolist()))
    return counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ann = load_annotations(args.labels)
    pdfs, missing = {}, []
    for name, doc in ann["documents"].items():
        path, why = obtain(doc, Path(args.cache), args.fetch)
        if path is None:
            missing.append((name, why))
        else:
            pdfs[name] = path
    for name, why in missing:
        print(f"skipped document {name}: {why}", file=sys.stderr)
    coco = write_coco(ann, pdfs, work / "real")
    if not coco["images"]:
        raise SystemExit(f"no real figure could be rendered ({len(missing)} documents missing; try --fetch)")
    built = build_dataset(coco["coco"], work / "real" / "pathsubfig", work / "real" / "yolo")
    n_records = sum(built.records.values())
    if n_records != coco["images"] or built.objects["subfigure"] != coco["boxes"] or built.rejected:
        raise SystemExit(f"build subfig kept {n_records} of {coco['images']} figures and {built.objects['subfigure']} "
                         f"of {coco['boxes']} boxes ({built.rejected} rejected, see {work / 'real' / 'pathsubfig'})")
    result: dict[str, Any] = {
        "real": {"figures": coco["images"], "boxes": coco["boxes"], "skipped_figures": coco["skipped"],
                 "compound": sum(f["kind"] == "compound" for f in ann["figures"] if f["document"] in pdfs),
                 "documents": len(pdfs), "dpi": ann["dpi"]},
    }
    model = Path(args.model) if args.model else None
    if model is None:
        t0 = time.monotonic()
        train_set = synthetic_dataset(work / "synthetic-train", args.train_figures, seed=args.seed,
                                      chart_fraction=args.chart_fraction)
        model, summary = train_detector(args.recipe, args.overrides, work / "synthetic-train" / "pathsubfig",
                                        work / "detector")
        result["training"] = {
            "recipe": args.recipe, "overrides": list(args.overrides), "figures": sum(train_set.records.values()),
            "chart_fraction": args.chart_fraction,
            "images": summary["images"], "epochs_done": summary["epochs_done"], "seconds": summary["seconds"],
            "seconds_with_data": round(time.monotonic() - t0, 1), "val_map50": summary["map50"],
            "val_map50_95": summary["map50_95"],
        }
    result["model"] = str(model)
    test_charts = args.chart_fraction if args.test_chart_fraction is None else args.test_chart_fraction
    held = synthetic_dataset(work / "synthetic-test", args.test_figures, seed=args.seed + 1000,
                             chart_fraction=test_charts)
    scores = {
        "synthetic": _score(model, eval_yaml(work / "synthetic-test" / "yolo", work / "eval" / "synthetic.yaml"),
                            args.device),
        "real": _score(model, eval_yaml(work / "real" / "yolo", work / "eval" / "real.yaml"), args.device),
    }
    scores["synthetic"]["figures"] = sum(held.records.values())
    scores["synthetic"]["chart_fraction"] = test_charts
    # per layout: the real figures' YOLO images, found by the figure id in their file names
    yolo_images = sorted(p for p in (work / "real" / "yolo" / "images").rglob("*.png"))
    by_layout: dict[str, list[Path]] = {}
    for image in json.loads(Path(coco["coco"]).read_text())["images"]:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", image["file_name"])
        hits = [p for p in yolo_images if p.name.endswith(f"_{stem}{p.suffix}")]  # coco_<tag>_<file name>.png
        if len(hits) != 1:
            raise SystemExit(f"{image['file_name']}: {len(hits)} images of the YOLO export match it")
        by_layout.setdefault(image["layout"], []).append(hits[0])
    scores["real_by_layout"] = {
        layout: _score(model, eval_yaml(work / "real" / "yolo", work / "eval" / f"real-{layout}.yaml", images),
                       args.device)
        for layout, images in sorted(by_layout.items())
    }
    for layout, images in by_layout.items():
        counts = count_detections(model, images, device=args.device)
        scores["real_by_layout"][layout]["no_detection"] = sum(n == 0 for n in counts)
    scores["real"]["no_detection"] = sum(s["no_detection"] for s in scores["real_by_layout"].values())
    result["scores"] = scores
    return result


def report(result: dict[str, Any]) -> str:
    real = result["real"]
    lines = [f"real: {real['figures']} figures ({real['compound']} compound) from {real['documents']} documents, "
             f"{real['boxes']} panel boxes, rendered at {real['dpi']:g} dpi"]
    if "training" in result:
        t = result["training"]
        lines.append(f"detector: recipe {t['recipe']} {' '.join(t['overrides'])} on {t['figures']} synthetic figures, "
                     f"{t['epochs_done']} epochs, {t['seconds']:.0f} s training ({t['seconds_with_data']:.0f} s with "
                     f"the data); val mAP50 {t['val_map50']:.3f}, mAP50-95 {t['val_map50_95']:.3f}; "
                     f"chart_fraction {'default' if t.get('chart_fraction') is None else t['chart_fraction']}")
    lines.append(f"model: {result['model']}")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [("set", "images", "boxes", "mAP50", "mAP50-95", "subfig mAP50", "subfig mAP50-95", "P", "R",
             "no panel found")]
    scores = result["scores"]
    cf = scores["synthetic"].get("chart_fraction")
    named = [(f"synthetic (held out{'' if cf is None else f', charts {cf:g}'})", scores["synthetic"]),
             ("real", scores["real"])]
    named += [(f"  real: {k}", v) for k, v in scores["real_by_layout"].items()]
    for name, s in named:
        rows.append((name, str(s["images"]), str(s["instances"]), fmt(s["map50"]), fmt(s["map50_95"]),
                     fmt(s["subfigure_map50"]), fmt(s["subfigure_map50_95"]), fmt(s["precision"]), fmt(s["recall"]),
                     str(s.get("no_detection", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.append("no panel found: real figures with no subfigure box at conf 0.25 (curate detect keeps them whole)")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="training settings for the recipe, e.g. epochs=25 (only without --model)")
    parser.add_argument("--labels", type=Path, help="annotations yaml (default: the shipped subfig_real.yaml)")
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="folder of the fetched PDFs (default: extract_quality's cache)")
    parser.add_argument("--fetch", action="store_true", help="download missing documents (apt-get download)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the rendered sets, the detector, evals")
    parser.add_argument("--model", help="score this detector (.pt or run folder) instead of training one")
    parser.add_argument("--recipe", default="tiny", help="subfig recipe to train with (default tiny)")
    parser.add_argument("--train-figures", type=int, default=1000, help="synthetic training figures (default 1000)")
    parser.add_argument("--test-figures", type=int, default=200, help="held-out synthetic figures (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training figures; held out: seed + 1000")
    parser.add_argument("--chart-fraction", type=float, default=None,
                        help="share of synthetic panels drawn as charts (default: build subfig's, 0.3; 0: "
                             "micrograph-only figures, as before charts existed)")
    parser.add_argument("--test-chart-fraction", type=float, default=None,
                        help="the same for the held-out synthetic figures (default: --chart-fraction)")
    parser.add_argument("--device", default="cpu", help="evaluation device (default cpu)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.model and args.overrides:
        parser.error("key=value training overrides need training: drop --model")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"unexpected argument {bad[0]!r}: training settings are key=value")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
