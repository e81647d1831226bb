"""Benchmark: the curation vision models on CPU (issue 4), one section per model.

Sections (``--sections``, default all):

* ``selector``: images/s of the pathology-image selector at batch sizes 1, 8 and 32, for the tiny
  test architecture (timm ``test_convnext`` at 64 px) and the real one (``convnext_tiny`` at 224 px),
  both random-initialised (same cost as trained weights, no download). Measured end to end, as
  ``pathasst curate select`` runs it: encoded image bytes -> decode (downscaled) -> timm's eval
  transform -> forward -> softmax, plus the model's share alone (transform + forward on decoded
  images). Peak RSS of each run.
* ``detector``: images/s of the subfigure detector at batch sizes 1, 8 and 32 for the tiny recipe's
  architecture (128 px) and YOLOv8m (640 px), random-initialised, end to end as ``pathasst curate
  detect`` runs it (decode, view at twice the input size, letterbox, forward, NMS) and the model's
  share alone, with peak RSS; then one training epoch on synthetic compound figures: the tiny recipe
  on ``--epoch-figures`` (1,000), YOLOv8m on ``--epoch-figures-v8m`` (32) extrapolated to 1,000.

Every (section, configuration) runs in its own fresh interpreter (this module with the hidden
``--worker`` flag), so its peak RSS is its own; the images are made once by the parent. The machine
running this is shared and noisy: the numbers that mean something are the ratios of runs measured
side by side in one invocation, which are printed next to the rates.

    python -m pathasst.benchmarks.perf.curate_vision                       # every section
    python -m pathasst.benchmarks.perf.curate_vision --sections selector --images 64 --json out.json

A new section is one more ``Section`` in :data:`SECTIONS`: a ``plan``
(the worker configurations), a ``worker`` (one measurement in a fresh process) and a ``report``
(the table), below the selector's.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pathasst.benchmarks.perf.memory import reset_peak_rss, rss_mib

MODULE = "pathasst.benchmarks.perf.curate_vision"
MiB = 1 << 20


# --- shared helpers ----------------------------------------------------------------------------


def run_worker(section: str, config: dict[str, Any], shared: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; return its JSON result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"section": section, "config": config, "shared": shared}, fh)
        spec = fh.name
    try:
        proc = subprocess.run([sys.executable, "-m", MODULE, "--worker", spec], capture_output=True, text=True,
                              timeout=timeout)
    finally:
        os.unlink(spec)
    if proc.returncode != 0:
        raise RuntimeError(f"{section} worker {config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


@dataclasses.dataclass(frozen=True)
class Section:
    """One benchmark section.

    Attributes:
        plan: ``args -> (shared, configs)``: what the parent prepares once (files, paths) and the
            list of worker configurations.
        worker: ``(config, shared) -> result``: one measurement, in a fresh process.
        report: ``(results, args) -> str``: the table with rates and ratios.
    """

    plan: Callable[[argparse.Namespace, Path], tuple[dict[str, Any], list[dict[str, Any]]]]
    worker: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
    report: Callable[[list[dict[str, Any]], argparse.Namespace], str]


# --- section: selector -------------------------------------------------------------------------

SELECTOR_MODELS = {"tiny": ("test_convnext", 64), "convnext_tiny": ("convnext_tiny", 224)}


def make_selector_images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` encoded images like the figures a selector sees: half real tissue (crops of the IHC
    micrograph, H&E and IHC, JPEG, 256-512 px), half real non-pathology pictures (scikit-image's
    astronaut, coffee, cat, camera, page, rocket, text, moon; PNG and JPEG, 200-600 px)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from pathasst.testing.images import tissue_tile

    rng = np.random.default_rng(seed)
    pictures = [data.astronaut(), data.coffee(), data.chelsea(), data.camera(), data.page(), data.rocket(),
                data.text(), data.moon()]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        if i % 2 == 0:
            size = int(rng.integers(256, 513))
            tissue_tile(size, seed=i, stain="he" if i % 4 else "ihc").save(buf, format="JPEG", quality=90)
        else:
            arr = pictures[(i // 2) % len(pictures)]
            img = Image.fromarray(arr).convert("RGB")
            scale = float(rng.uniform(0.5, 1.2))
            img = img.resize((max(32, int(img.width * scale)), max(32, int(img.height * scale))))
            img.save(buf, format="PNG" if i % 3 else "JPEG")
        out.append(buf.getvalue())
    return out


def _selector_plan(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    images = make_selector_images(args.images)
    images_file = workdir / "selector_images.pkl"
    images_file.write_bytes(pickle.dumps(images))
    configs = [
        {"model": name, "batch_size": bs, "repeat": r, "threads": args.threads}
        for name in args.models.split(",")
        for bs in (int(b) for b in args.batch_sizes.split(","))
        for r in range(args.repeat)
    ]
    unknown = sorted({c["model"] for c in configs} - set(SELECTOR_MODELS))
    if unknown:
        raise SystemExit(f"unknown selector model(s) {unknown}; choose from {', '.join(SELECTOR_MODELS)}")
    mean_bytes = sum(map(len, images)) / len(images)
    shared = {"images_file": str(images_file), "workdir": str(workdir), "mean_bytes": mean_bytes}
    return shared, configs


def _selector_worker(config: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from pathasst.trainers import selector as sel

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    name, image_size = SELECTOR_MODELS[config["model"]]
    images = pickle.loads(Path(shared["images_file"]).read_bytes())
    folder = Path(shared["workdir"]) / f"model-{config['model']}"
    if not (folder / "config.json").exists():
        cfg = sel.SelectorConfig(data=".", model=name, image_size=image_size, output_dir=".")
        torch.manual_seed(0)
        model = sel.create_selector_model(cfg, ["non_pathology", "pathology"]).eval()
        sel.save_selector(model.state_dict(), model, folder, ["pathology"])
    selector = sel.Selector.load(str(folder), device="cpu")
    bs = config["batch_size"]
    # warm-up: one batch (allocator, oneDNN primitives), not timed
    selector.score([selector.decode(b) for b in images[:bs]])
    rss_before = rss_mib()
    reset_peak_rss()
    decode_s = model_s = 0.0
    scores, per_image = [], []
    start = time.perf_counter()
    for i in range(0, len(images), bs):
        t0 = time.perf_counter()
        decoded = [selector.decode(b) for b in images[i:i + bs]]
        t1 = time.perf_counter()
        scores.append(selector.score(decoded))
        t2 = time.perf_counter()
        decode_s += t1 - t0
        model_s += t2 - t1
        per_image.append((t2 - t0) / len(decoded))
    seconds = time.perf_counter() - start
    scores = np.concatenate(scores)
    return {
        **config,
        "architecture": name,
        "image_size": image_size,
        "params_m": round(sum(p.numel() for p in selector.model.parameters()) / 1e6, 2),
        "images": len(images),
        "seconds": seconds,
        "images_per_s": len(images) / seconds,
        # robust to the stalls of a shared machine: the median batch's rate
        "median_batch_images_per_s": 1 / statistics.median(per_image),
        "model_images_per_s": len(images) / model_s,
        "decode_share": decode_s / seconds,
        "peak_rss_mib": rss_mib("VmHWM"),
        "rss_before_mib": rss_before,
        "torch_threads": torch.get_num_threads(),
        "score_mean": float(scores.mean()),
    }


def _selector_report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        by_key.setdefault((r["model"], r["batch_size"]), []).append(r)
    fields = ("images_per_s", "median_batch_images_per_s", "model_images_per_s", "decode_share", "peak_rss_mib",
              "rss_before_mib")
    med = {k: v[0] | {f: statistics.median(x[f] for x in v) for f in fields} for k, v in by_key.items()}
    models = list(dict.fromkeys(r["model"] for r in results))
    sizes = sorted({r["batch_size"] for r in results})
    rows = []
    for model in models:
        base = med.get((model, sizes[0]))
        for bs in sizes:
            m = med.get((model, bs))
            if m is None:
                continue
            other = [o for o in models if o != model]
            vs = med.get((other[0], bs)) if other else None
            rows.append([
                f"{model} ({m['architecture']}, {m['params_m']} M, {m['image_size']} px)",
                str(bs),
                f"{m['images_per_s']:.1f}",
                f"{m['median_batch_images_per_s']:.1f}",
                f"{m['images_per_s'] / base['images_per_s']:.2f}x" if base else "-",
                f"{m['images_per_s'] / vs['images_per_s']:.2f}x" if vs else "-",
                f"{m['model_images_per_s']:.1f}",
                f"{100 * m['decode_share']:.0f}%",
                f"{m['peak_rss_mib']:.0f}",
                f"{m['peak_rss_mib'] - m['rss_before_mib']:+.0f}",
            ])
    header = ["selector", "batch", "img/s", "median-batch img/s", f"vs batch {sizes[0]}", "vs other model",
              "model img/s", "decode",
              "peak RSS MiB", "growth MiB"]
    threads = results[0]["torch_threads"] if results else "?"
    note = (f"\n{results[0]['images'] if results else 0} images per run (half tissue JPEGs 256-512 px, half "
            f"pictures 200-600 px), end to end (decode + transform + forward); 'model img/s' counts transform + "
            f"forward only; 'median-batch img/s' is the rate of the median batch (robust to stalls of a shared "
            f"machine); ratios use img/s; torch threads {threads}; medians of {args.repeat} run(s).")
    return _fmt_table(header, rows) + note


# --- section: detector -------------------------------------------------------------------------
#
# The subfigure detector (``pathasst curate detect``): images/s at batch sizes 1, 8 and 32 for the
# tiny recipe's architecture (128 px) and YOLOv8m (640 px, the full-scale recipe), random-initialised
# (same cost as trained weights, no download), measured end to end as the stage runs it: encoded
# figure -> decode -> view at twice the input size -> letterbox + forward + NMS, plus the model's
# share alone (``predict`` on decoded views). Then one training epoch over synthetic figures:
# the tiny recipe over all ``--epoch-figures`` (default 1,000), YOLOv8m over ``--epoch-figures-v8m``
# (default 32) with its time per figure extrapolated to ``--epoch-figures`` (printed as such).

DETECTOR_MODELS = {"tiny": 128, "yolov8m": 640}


def make_detector_figures(n: int, seed: int = 0) -> list[bytes]:
    """``n`` encoded compound figures as journals print them: 1-4 tissue panels in grids on white,
    640-1280 px wide, PNG and JPEG alternately."""
    import numpy as np

    from pathasst.trainers.subfig import TOY_LAYOUTS, toy_compound_figure

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        width = int(rng.integers(640, 1281))
        size = (width, int(width * rng.uniform(0.6, 1.0)))
        img, _ = toy_compound_figure(TOY_LAYOUTS[i % len(TOY_LAYOUTS)], seed=seed + i, size=size, gutter=size[0] // 40)
        buf = io.BytesIO()
        img.save(buf, format="JPEG" if i % 2 else "PNG", **({"quality": 90} if i % 2 else {}))
        out.append(buf.getvalue())
    return out


def _random_detector(name: str, folder: Path) -> Path:
    """A random-initialised subfigure detector checkpoint of the given architecture (no training)."""
    import torch
    import yaml as _yaml

    from pathasst.trainers.registry import recipe_dir
    from pathasst.ultralytics_offline import import_ultralytics

    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    path = folder / f"detector-{name}.pt"
    if path.is_file():
        return path
    if name == "tiny":
        arch = _yaml.safe_load((recipe_dir("subfig") / "tiny.yaml").read_text())["model"]
    else:
        arch = f"{name}.yaml"
    torch.manual_seed(0)
    model = DetectionModel(arch, nc=2, verbose=False).eval()
    model.names = {0: "subfigure", 1: "panel_label"}
    torch.save({"model": model, "train_args": {"imgsz": DETECTOR_MODELS[name], "task": "detect"}, "epoch": -1,
                "optimizer": None}, path)
    return path


def _detector_plan(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    figures = make_detector_figures(args.detector_images)
    figures_file = workdir / "detector_figures.pkl"
    figures_file.write_bytes(pickle.dumps(figures))
    models = [m for m in args.detector_models.split(",") if m]
    unknown = sorted(set(models) - set(DETECTOR_MODELS))
    if unknown:
        raise SystemExit(f"unknown detector model(s) {unknown}; choose from {', '.join(DETECTOR_MODELS)}")
    configs: list[dict[str, Any]] = [
        {"kind": "infer", "model": m, "batch_size": bs, "repeat": r, "threads": args.threads}
        for m in models
        for bs in (int(b) for b in args.batch_sizes.split(","))
        for r in range(args.repeat)
    ] if figures else []
    if args.epoch_figures:
        for m, n in (("tiny", args.epoch_figures), ("yolov8m", args.epoch_figures_v8m)):
            if m in models and n:
                configs.append({"kind": "epoch", "model": m, "figures": n, "extrapolate_to": args.epoch_figures,
                                "threads": args.threads})
    shared = {"figures_file": str(figures_file), "workdir": str(workdir),
              "mean_bytes": sum(map(len, figures)) / max(1, len(figures))}
    return shared, configs


def _detector_infer(config: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from pathasst.images import load_rgb
    from pathasst.trainers.subfig import load_detector

    figures = pickle.loads(Path(shared["figures_file"]).read_bytes())
    model, _ = load_detector(_random_detector(config["model"], Path(shared["workdir"])))
    imgsz, bs = DETECTOR_MODELS[config["model"]], config["batch_size"]

    def view(data: bytes):  # what `curate detect` hands the detector
        img = load_rgb(data)
        if max(img.size) > 2 * imgsz:
            img.thumbnail((2 * imgsz, 2 * imgsz), Image.Resampling.BILINEAR)
        return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])

    def predict(batch):
        return model.predict(batch, imgsz=imgsz, conf=0.2, iou=0.5, verbose=False, batch=len(batch), device="cpu")

    predict([view(b) for b in figures[:bs]])  # warm-up (fuse, allocator), not timed
    rss_before = rss_mib()
    reset_peak_rss()
    decode_s = model_s = 0.0
    per_image, boxes = [], 0
    start = time.perf_counter()
    for i in range(0, len(figures), bs):
        t0 = time.perf_counter()
        batch = [view(b) for b in figures[i:i + bs]]
        t1 = time.perf_counter()
        boxes += sum(len(r.boxes) for r in predict(batch))
        t2 = time.perf_counter()
        decode_s += t1 - t0
        model_s += t2 - t1
        per_image.append((t2 - t0) / len(batch))
    seconds = time.perf_counter() - start
    return {
        **config,
        "image_size": imgsz,
        "params_m": round(sum(p.numel() for p in model.model.parameters()) / 1e6, 2),
        "images": len(figures),
        "seconds": seconds,
        "images_per_s": len(figures) / seconds,
        "median_batch_images_per_s": 1 / statistics.median(per_image),
        "model_images_per_s": len(figures) / model_s,
        "decode_share": decode_s / seconds,
        "peak_rss_mib": rss_mib("VmHWM"),
        "rss_before_mib": rss_before,
        "torch_threads": __import__("torch").get_num_threads(),
        "boxes": boxes,
    }


def _detector_epoch(config: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    import csv

    import yaml as _yaml
    from PIL import Image

    from pathasst.trainers.subfig import TOY_LAYOUTS
    from pathasst.trainers.subfig import main as train_main

    work = Path(shared["workdir"]) / f"epoch-{config['model']}-{config['figures']}"
    data = work / "yolo"
    figures = make_detector_figures(config["figures"], seed=10_000)
    for split in ("train", "val"):
        (data / "images" / split).mkdir(parents=True, exist_ok=True)
        (data / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i, blob in enumerate(figures):
        split = "val" if i < 2 else "train"
        suffix = ".jpg" if blob[:3] == b"\xff\xd8\xff" else ".png"
        (data / "images" / split / f"{i:05d}{suffix}").write_bytes(blob)
        w, h = Image.open(io.BytesIO(blob)).size
        rows, cols = TOY_LAYOUTS[i % len(TOY_LAYOUTS)]
        g = w // 40  # the gutter make_detector_figures used
        pw, ph = (w - g * (cols + 1)) // cols, (h - g * (rows + 1)) // rows
        lines = [f"0 {(g + c * (pw + g) + pw / 2) / w:.6f} {(g + r * (ph + g) + ph / 2) / h:.6f} {pw / w:.6f} {ph / h:.6f}"
                 for r in range(rows) for c in range(cols)]
        (data / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
    (data / "data.yaml").write_text(_yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                     "names": {0: "subfigure", 1: "panel_label"}}))
    recipe = "tiny" if config["model"] == "tiny" else "yolov8m"
    extra = [] if config["model"] == "tiny" else ["mixed_precision='no'", "device=cpu", "num_workers=0", "batch_size=8",
                                                  "grad_accum_steps=8", "plots=false"]
    reset_peak_rss()
    start = time.perf_counter()
    train_main(["--recipe", recipe, f"data={data}", f"output_dir={work / 'run'}", "epochs=1", "val=false",
                "eval_split=null", *extra])
    total = time.perf_counter() - start
    rows = list(csv.DictReader(open(work / "run" / "results.csv")))
    epoch_s = float(rows[0]["time"])  # ultralytics' own clock: the epoch's training loop and its validation
    n_train = config["figures"] - 2
    return {
        **config,
        "image_size": DETECTOR_MODELS[config["model"]],
        "train_figures": n_train,
        "epoch_seconds": epoch_s,
        "run_seconds": total,
        "figures_per_s": n_train / epoch_s,
        "extrapolated_epoch_seconds": epoch_s * config["extrapolate_to"] / n_train,
        "peak_rss_mib": rss_mib("VmHWM"),
    }


def _detector_worker(config: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    import torch

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    return (_detector_infer if config["kind"] == "infer" else _detector_epoch)(config, shared)


def _detector_report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    infer = [r for r in results if r["kind"] == "infer"]
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in infer:
        by_key.setdefault((r["model"], r["batch_size"]), []).append(r)
    fields = ("images_per_s", "median_batch_images_per_s", "model_images_per_s", "decode_share", "peak_rss_mib",
              "rss_before_mib")
    med = {k: v[0] | {f: statistics.median(x[f] for x in v) for f in fields} for k, v in by_key.items()}
    models = list(dict.fromkeys(r["model"] for r in infer))
    sizes = sorted({r["batch_size"] for r in infer})
    rows = []
    for model in models:
        base = med.get((model, sizes[0])) if sizes else None
        for bs in sizes:
            m = med.get((model, bs))
            if m is None:
                continue
            rows.append([
                f"{model} ({m['params_m']} M, {m['image_size']} px)", str(bs), f"{m['images_per_s']:.1f}",
                f"{m['median_batch_images_per_s']:.1f}",
                f"{m['images_per_s'] / base['images_per_s']:.2f}x" if base else "-",
                f"{m['model_images_per_s']:.1f}", f"{100 * m['decode_share']:.0f}%", f"{m['peak_rss_mib']:.0f}",
                f"{m['peak_rss_mib'] - m['rss_before_mib']:+.0f}",
            ])
    parts = []
    if rows:
        header = ["detector", "batch", "img/s", "median-batch img/s", f"vs batch {sizes[0]}", "model img/s", "decode",
                  "peak RSS MiB", "growth MiB"]
        threads = infer[0]["torch_threads"]
        parts.append(_fmt_table(header, rows) + (
            f"\n{infer[0]['images']} compound figures per run (640-1280 px, PNG/JPEG), end to end as `curate detect` "
            f"runs them (decode + view at 2x input + letterbox + forward + NMS); 'model img/s' counts predict only; "
            f"random-initialised weights (the cost of trained ones); torch threads {threads}; medians of "
            f"{args.repeat} run(s); ultralytics sets torch to (CPU count - 1) threads."))
    epochs = [r for r in results if r["kind"] == "epoch"]
    if epochs:
        erows = []
        for r in epochs:
            measured = r["train_figures"] + 2 == r["extrapolate_to"]
            erows.append([
                f"{r['model']} ({r['image_size']} px)", str(r["train_figures"]), f"{r['epoch_seconds']:.1f}",
                f"{r['figures_per_s']:.1f}",
                f"{r['extrapolated_epoch_seconds']:.0f}" + ("" if measured else " (extrapolated)"),
                f"{r['peak_rss_mib']:.0f}",
            ])
        parts.append(_fmt_table(["training epoch", "figures", "epoch s", "figures/s",
                                 f"s per {epochs[0]['extrapolate_to']} figures", "peak RSS MiB"], erows)
                     + "\nOne epoch of ultralytics' loop (augmentation, forward, backward, optimizer, EMA) on CPU, "
                     "timed by ultralytics (with the final epoch's validation of 2 figures); 'extrapolated' rows ran "
                     "on fewer figures and scale the time per figure linearly.")
    return "\n\n".join(parts)


SECTIONS: dict[str, Section] = {
    "selector": Section(_selector_plan, _selector_worker, _selector_report),
    "detector": Section(_detector_plan, _detector_worker, _detector_report),
}


# --- driver ------------------------------------------------------------------------------------


def _worker_main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    result = SECTIONS[spec["section"]].worker(spec["config"], spec["shared"])
    print(json.dumps(result))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--images", type=int, default=96, help="images per selector run (default 96)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="selector batch sizes (default 1,8,32)")
    parser.add_argument("--models", default="tiny,convnext_tiny", help="selector models (default tiny,convnext_tiny)")
    parser.add_argument("--detector-images", type=int, default=64,
                        help="compound figures per detector inference run (default 64; 0: skip inference)")
    parser.add_argument("--detector-models", default="tiny,yolov8m", help="detector models (default tiny,yolov8m)")
    parser.add_argument("--epoch-figures", type=int, default=1000,
                        help="synthetic figures of the tiny detector's training epoch (default 1000; 0: skip epochs)")
    parser.add_argument("--epoch-figures-v8m", type=int, default=32,
                        help="figures of YOLOv8m's CPU epoch, extrapolated to --epoch-figures (default 32; 0: skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh runs per configuration; medians reported")
    parser.add_argument("--json", type=Path, help="write every run's numbers and the environment here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    env = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    out: dict[str, Any] = {"environment": env, "sections": {}}
    with tempfile.TemporaryDirectory(prefix="curate-vision-") as tmp:
        for name in sections:
            section = SECTIONS[name]
            shared, configs = section.plan(args, Path(tmp))
            results = []
            for config in configs:
                result = run_worker(name, config, shared)
                print(f"  {name} {config}: {result.get('images_per_s', 0):.1f} img/s, "
                      f"peak RSS {result.get('peak_rss_mib', 0):.0f} MiB", file=sys.stderr, flush=True)
                results.append(result)
            out["sections"][name] = results
            print(f"\n## {name}\n\n{section.report(results, args)}\n")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        _worker_main(args.worker)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
