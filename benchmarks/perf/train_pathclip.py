"""Benchmark: ``pathasst train pathclip`` against a minimal plain-PyTorch open_clip loop (issue 7).

Three measurements, each in its own fresh interpreter (this module with the hidden ``--worker``
flag) so that peak RSS is the run's own:

* ``train``: samples/s of ``pathasst train pathclip`` (the shared Accelerate loop: scheduler,
  gradient clipping, logging, the PathCap data path with per-sample caption choice) on a PathCap
  folder, steps ``--warmup``..``--steps`` timed from the loop's own log (checkpointing and export
  are excluded: the end of the last timed step is taken from the train summary's step times);
* ``plain``: samples/s of the smallest correct open_clip loop on the same model, data and batch size
  (``DataLoader`` over the same Parquet rows, open_clip's transform and tokenizer, ``ClipLoss``,
  AdamW, the same clamp of the logit scale); ``train / plain`` is the overhead of our loop
  (target >= 0.95);
* ``data``: images/s of the data path alone (decode + transform + tokenize + collate), reading the
  Parquet folder, against torchvision's ``ImageFolder`` over the same images as PNG files.

The images are textured tiles whose captions name their colour and pattern (a pairing a model can
learn: the tests use the same builder, :func:`textured_pathcap`), written with the project's
``DatasetWriter``. The machine running this is shared and noisy: the numbers that mean something
are the ratios of runs measured side by side in one invocation.

    python -m pathasst.benchmarks.perf.train_pathclip                      # tiny, 64 steps x 32
    python -m pathasst.benchmarks.perf.train_pathclip --recipe mini --image-size 128 --steps 24
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pathasst.benchmarks.perf.memory import peak_rss_bytes, reset_peak_rss

MODULE = "pathasst.benchmarks.perf.train_pathclip"
MiB = 1 << 20
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200), "yellow": (220, 200, 40)}
PATTERNS = ("stripes", "dots", "checks")


# --- data ---------------------------------------------------------------------------------------


def textured_tile(colour: str, pattern: str, seed: int, size: int = 64) -> bytes:
    """A PNG: ``pattern`` (stripes, dots, checks) in ``colour`` on a light ground, with noise and a
    random period and phase (so no two tiles are equal)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    period = int(rng.integers(max(4, size // 10), max(6, size // 6)))
    half = max(1, period // 2)
    phase = int(rng.integers(0, period))
    if pattern == "stripes":
        mask = ((x + phase) // half) % 2 == 0
    elif pattern == "dots":
        mask = (((x + phase) % period - period / 2) ** 2 + ((y + phase) % period - period / 2) ** 2) < (period / 3) ** 2
    else:
        mask = (((x + phase) // half) + ((y + phase) // half)) % 2 == 0
    img = np.full((size, size, 3), 235.0)
    img[mask] = COLOURS[colour]
    img += rng.normal(0, 12, img.shape)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def textured_pathcap(out: str | Path, n: int = 240, size: int = 64, splits: dict[str, float] | None = None) -> Path:
    """A PathCap folder of ``n`` textured tiles (``DatasetWriter``; one article per record).

    ``caption`` is "<colour> <pattern>"; ``caption_raw`` a longer sentence saying the same;
    ``figure_label`` holds the colour (a class column for zero-shot tests).
    """
    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    out = Path(out)
    with DatasetWriter(out, get_spec("pathcap"), config={"n": n, "size": size},
                       splits=splits or {"train": 0.8, "validation": 0.2}, command="textured_pathcap") as writer:
        for i in range(n):
            colour, pattern = list(COLOURS)[i % 4], PATTERNS[(i // 4) % 3]
            writer.add({
                "id": f"tile-{i}", "image": textured_tile(colour, pattern, i, size),
                "caption": f"{colour} {pattern}", "caption_raw": f"Figure {i}. A {colour} tile with {pattern}.",
                "source": "pubmed", "source_id": f"PMC{1000 + i}", "figure_id": f"F{i}", "subfigure_label": None,
                "bbox": None, "page": None, "license": "CC BY 4.0", "pathology_score": None, "width": size,
                "height": size, "phash": None, "figure_label": colour,
            })
        writer.finalize()
    return out


def write_image_folder(caps: Path, out: Path) -> Path:
    """The training split of ``caps`` as an ImageFolder (one folder per caption, the same PNG bytes)."""
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    ds = load_dataset(str(caps), split="train").cast_column("image", ImageFeature(decode=False))
    for i, row in enumerate(ds.select_columns(["image", "caption"])):
        folder = out / row["caption"].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.png").write_bytes(row["image"]["bytes"])
    return out


# --- workers (one fresh interpreter each) --------------------------------------------------------


def _config(shared: dict[str, Any], output_dir: str):
    from pathasst.trainers import pathclip as pc
    from pathasst.trainers.registry import load_family_config

    argv = ["--recipe", shared["recipe"], f"data={shared['caps']}", f"output_dir={output_dir}",
            f"max_steps={shared['steps']}", f"batch_size={shared['batch_size']}", "eval_every=0",
            f"save_every={shared['steps']}", f"log_every={shared['steps']}", "warmup_steps=0",
            "num_workers=0", "export_hf=false"]
    if shared.get("image_size"):
        argv.append(f"image_size={shared['image_size']}")
    return load_family_config(pc.PathClipConfig, "pathclip", argv)


def _mark() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _timed(marks: list[tuple[float, float]], warmup: int, steps: int, batch_size: int) -> dict[str, Any]:
    # marks[k] = start of step k (k = 0..steps-1, then the end of the last): steps warmup.. timed.
    # Wall time and this process's CPU time: on a shared machine the wall rate moves with the
    # neighbours' load, the CPU-time rate (samples per CPU-second) much less.
    seconds = marks[steps][0] - marks[warmup][0]
    cpu = marks[steps][1] - marks[warmup][1]
    n = (steps - warmup) * batch_size
    return {"seconds": seconds, "cpu_seconds": cpu, "timed_steps": steps - warmup,
            "samples_per_s": n / seconds, "samples_per_cpu_s": n / cpu}


def worker_train(shared: dict[str, Any]) -> dict[str, Any]:
    """``train pathclip`` through the shared loop; step boundaries taken at each loss call."""
    import torch

    from pathasst.trainers import pathclip as pc

    torch.set_num_threads(shared["threads"])
    marks: list[float] = []
    original = pc.PathClipTask.loss

    def loss(self, model, batch):
        marks.append(_mark())
        return original(self, model, batch)

    pc.PathClipTask.loss = loss
    original_export = pc.PathClipTask.export

    def export(self, model, output_dir, accelerator):
        marks.append(_mark())  # the end of the last step's optimizer update
        original_export(self, model, output_dir, accelerator)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(shared, str(Path(tmp) / "run"))
        pc.PathClipTask.export = export
        # the last checkpoint is written between the last step and the export: keep it out
        from pathasst.trainers import loop

        original_save = loop._save_checkpoint

        def save(*args, **kwargs):
            marks.append(_mark())
            t0 = time.perf_counter()
            out = original_save(*args, **kwargs)
            save.seconds += time.perf_counter() - t0
            return out

        save.seconds = 0.0
        loop._save_checkpoint = save
        result, _ = pc.train_pathclip(cfg)
    step_marks = marks[: shared["steps"]] + [marks[shared["steps"]]]  # the save's mark ends the last step
    out = _timed(step_marks, shared["warmup"], shared["steps"], shared["batch_size"])
    out.update(first_loss=result.losses[0], last_loss=result.losses[-1], checkpoint_s=save.seconds)
    return out


def worker_plain(shared: dict[str, Any]) -> dict[str, Any]:
    """The smallest correct open_clip loop on the same model, data, batch size and optimizer."""
    import math

    import open_clip
    import torch
    from datasets import Image as ImageFeature
    from datasets import load_dataset
    from open_clip.loss import ClipLoss
    from PIL import Image

    from pathasst.trainers import pathclip as pc

    torch.set_num_threads(shared["threads"])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(shared, str(Path(tmp) / "run"))
    bundle = pc.build_clip(cfg)
    model, transform, tokenizer = bundle.model.train(), bundle.preprocess_train, bundle.tokenizer
    ds = load_dataset(shared["caps"], split="train").cast_column("image", ImageFeature(decode=False))

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            row = ds[i]
            img = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            return transform(img), tokenizer([row["caption"]])[0]

    loader = torch.utils.data.DataLoader(Pairs(), batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                                  betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)
    total = cfg.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    loss_fn = ClipLoss()
    marks, losses, step = [], [], 0
    while step < total:
        for images, texts in loader:
            marks.append(_mark())
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            image_features, text_features, logit_scale = model(images, texts)
            loss = loss_fn(image_features, text_features, logit_scale)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if step == total:
                break
    marks.append(_mark())
    out = _timed(marks, shared["warmup"], shared["steps"], shared["batch_size"])
    out.update(first_loss=losses[0], last_loss=losses[-1])
    return out


def worker_data(shared: dict[str, Any]) -> dict[str, Any]:
    """Images/s of the data path: PathCap Parquet (our dataset) vs ImageFolder of the same PNGs."""
    import torch
    from torchvision.datasets import ImageFolder

    from pathasst.trainers import pathclip as pc

    torch.set_num_threads(shared["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(shared, str(Path(tmp) / "run"))
    bundle = pc.build_clip(cfg)
    transform, tokenizer = bundle.preprocess_train, bundle.tokenizer
    bs = shared["batch_size"]
    if shared["source"] == "parquet":
        train, _ = pc.load_splits(cfg)
        dataset = pc.PairDataset(train, cfg, transform, tokenizer)
        loader = torch.utils.data.DataLoader(dataset, batch_size=bs, sampler=pc.CaptionSampler(len(dataset), 0),
                                             drop_last=True, collate_fn=pc.collate_pairs)
    else:
        folder = ImageFolder(shared["image_folder"], transform=transform)
        names = [c.replace("_", " ") for c in folder.classes]
        folder.target_transform = lambda c: tokenizer([names[c]])[0]
        loader = torch.utils.data.DataLoader(folder, batch_size=bs, shuffle=True, drop_last=True)
    n, t0, epoch = 0, time.perf_counter(), 0
    while n < shared["data_images"]:  # whole epochs until enough images: one epoch is a second or two
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for images, _ in loader:
            n += len(images)
        epoch += 1
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


WORKERS = {"train": worker_train, "plain": worker_plain, "data": worker_data}


def run_worker(kind: str, shared: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; return its JSON result (with its peak RSS)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"kind": kind, "shared": shared}, fh)
        spec = fh.name
    try:
        proc = subprocess.run([sys.executable, "-m", MODULE, "--worker", spec], capture_output=True, text=True,
                              timeout=timeout)
    finally:
        os.unlink(spec)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    reset_peak_rss()
    result = WORKERS[spec["kind"]](spec["shared"])
    result["peak_rss_mib"] = round(peak_rss_bytes() / MiB, 1)
    print(json.dumps(result))
    return 0


# --- driver ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="tiny", help="pathclip recipe (tiny, mini)")
    parser.add_argument("--records", type=int, default=480, help="PathCap records to write")
    parser.add_argument("--tile-size", type=int, default=64, help="side of the tiles, pixels")
    parser.add_argument("--image-size", type=int, default=0, help="model input size override (0: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=8, help="untimed first steps")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: on a shared machine a second thread's spin-waits cost more)")
    parser.add_argument("--data-images", type=int, default=4096, help="images to read in the data-path runs")
    parser.add_argument("--repeat", type=int, default=1, help="alternate train/plain runs this many times")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args.worker)
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be in [0, --steps)")

    with tempfile.TemporaryDirectory() as tmp:
        caps = textured_pathcap(Path(tmp) / "caps", n=args.records, size=args.tile_size)
        image_folder = write_image_folder(caps, Path(tmp) / "imagefolder")
        shared = {"recipe": args.recipe, "caps": str(caps), "image_folder": str(image_folder),
                  "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
                  "threads": args.threads, "image_size": args.image_size or None,
                  "data_images": args.data_images}
        runs: dict[str, list[dict[str, Any]]] = {"train": [], "plain": []}
        for _ in range(args.repeat):  # alternated, so drift on a shared machine hits both
            for kind in ("train", "plain"):
                runs[kind].append(run_worker(kind, shared))
        data = {src: run_worker("data", {**shared, "source": src}) for src in ("parquet", "imagefolder")}

    import statistics

    pairs = list(zip(runs["train"], runs["plain"]))
    ratio = statistics.median(t["samples_per_s"] / p["samples_per_s"] for t, p in pairs)
    cpu_ratio = statistics.median(t["samples_per_cpu_s"] / p["samples_per_cpu_s"] for t, p in pairs)
    data_ratio = data["parquet"]["images_per_s"] / data["imagefolder"]["images_per_s"]
    print(f"pathclip {args.recipe}: batch {args.batch_size}, steps {args.warmup}..{args.steps} timed, "
          f"{args.threads} torch threads, {args.records} records of {args.tile_size} px")
    for kind in ("train", "plain"):
        rates = ", ".join(f"{r['samples_per_s']:.1f}" for r in runs[kind])
        cpu_rates = ", ".join(f"{r['samples_per_cpu_s']:.1f}" for r in runs[kind])
        last = runs[kind][-1]
        print(f"  {kind:<6} samples/s {rates}; per CPU-second {cpu_rates}  (loss {last['first_loss']:.3f} -> "
              f"{last['last_loss']:.3f}, peak RSS {max(r['peak_rss_mib'] for r in runs[kind]):.0f} MiB)")
    print(f"  train / plain = {ratio:.3f} wall, {cpu_ratio:.3f} CPU time (medians over {len(pairs)} pairs; "
          "target >= 0.95)")
    for src in ("parquet", "imagefolder"):
        print(f"  data {src:<11} images/s {data[src]['images_per_s']:.1f}  (peak RSS {data[src]['peak_rss_mib']:.0f} MiB)")
    print(f"  parquet / imagefolder = {data_ratio:.3f}")
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
               "cpus": os.cpu_count(), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "runs": runs, "ratio_train_over_plain": ratio,
               "ratio_train_over_plain_cpu": cpu_ratio, "data": data, "ratio_parquet_over_imagefolder": data_ratio}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
