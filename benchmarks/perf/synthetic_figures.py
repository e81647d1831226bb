"""Benchmark: how many synthetic compound figures per second the PathSubfig generator makes.

One process, one core. The pool is real tissue: tiles cut from scikit-image's IHC micrograph, as
photographed and re-stained as H&E (``pathasst.testing.images.tissue_tile``), at several sizes and
aspect ratios. Three rates are measured over the same figure indices:

* ``generate``: plan + render (layout, resizing the panels, letters), the figure as a PIL image;
* ``record``: ``generate`` plus encoding (JPEG or PNG, as each figure's plan says): a record ready
  for the writer;
* ``build``: ``pathasst build subfig --synthetic N`` end to end (pool loading, the Parquet writer,
  the dataset card), the rate a user sees; skipped with ``--no-build``.

    python -m pathasst.benchmarks.perf.synthetic_figures                  # 500 figures
    python -m pathasst.benchmarks.perf.synthetic_figures --figures 2000 --json out.json

The machines are shared and noisy: take the rates as +-30%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def build_pool(size: int = 64, seed: int = 0):
    """Real micrograph tiles of varied sizes and aspects, as an ImagePool and as PIL images."""
    import numpy as np

    from pathasst.dataset_builders.build.compound import ImagePool
    from pathasst.testing.images import tissue_tile

    rng = np.random.default_rng(seed)
    images = []
    for i in range(size):
        tile = tissue_tile(int(rng.integers(256, 513)), seed=seed * 10_000 + i, stain="he" if i % 3 else "ihc")
        w, h = tile.size
        aspect = float(rng.uniform(0.6, 1.6))
        if aspect > 1:
            tile = tile.crop((0, 0, w, max(64, int(h / aspect))))
        else:
            tile = tile.crop((0, 0, max(64, int(w * aspect)), h))
        images.append(tile)
    return ImagePool.from_images(images), images


def _peak_rss_mib() -> float:
    from pathasst.benchmarks.perf.memory import rss_mib

    return rss_mib("VmHWM")


def run(figures: int, seed: int, pool_size: int, build: bool, warmup: int = 5) -> dict[str, Any]:
    from pathasst.dataset_builders.build.compound import CompoundFigureGenerator

    pool, images = build_pool(pool_size, seed)
    gen = CompoundFigureGenerator(pool, seed=seed)
    for i in range(warmup):  # fonts and the decoded-image cache warm up
        gen.generate(figures + i)

    megapixels, objects, jpeg = [], [], 0
    t_generate = 0.0
    for i in range(figures):  # figures are dropped as made: the RSS is the generator's, not a list's
        t0 = time.perf_counter()
        fig = gen.generate(i)
        t_generate += time.perf_counter() - t0
        megapixels.append(fig.image.width * fig.image.height / 1e6)
        objects.append(len(fig.objects))
        jpeg += fig.plan.image_format == "JPEG"

    t0 = time.perf_counter()
    sizes = [len(gen.record(i)["image"]) for i in range(figures)]
    t_record = time.perf_counter() - t0

    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "figures": figures,
        "seed": seed,
        "pool_images": len(pool),
        "mean_megapixels": round(statistics.fmean(megapixels), 3),
        "mean_objects": round(statistics.fmean(objects), 2),
        "jpeg_share": round(jpeg / figures, 3),
        "mean_encoded_kib": round(statistics.fmean(sizes) / 1024, 1),
        "generate_figures_per_s": round(figures / t_generate, 1),
        "record_figures_per_s": round(figures / t_record, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }
    if build:
        from pathasst.dataset_builders.build.subfig import SubfigConfig, build_subfig

        work = Path(tempfile.mkdtemp(prefix="pathasst-bench-subfig-"))
        try:
            for i, img in enumerate(images):
                img.save(work / f"pool-{i:03d}.jpg", quality=92)
            cfg = SubfigConfig(synthetic=figures, images=str(work), seed=seed)
            t0 = time.perf_counter()
            summary = build_subfig(cfg, work / "out", progress=False, command="benchmark")
            t_build = time.perf_counter() - t0
            result["build_figures_per_s"] = round(figures / t_build, 1)
            result["build_records"] = sum(summary.records.values())
            result["peak_rss_mib"] = round(_peak_rss_mib(), 1)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", type=int, default=500, help="figures per measurement (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-size", type=int, default=64, help="distinct pool images (default 64)")
    parser.add_argument("--no-build", action="store_true", help="skip the end-to-end `build subfig` run")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args.figures, args.seed, args.pool_size, build=not args.no_build)
    print(f"synthetic compound figures, one process ({result['figures']} figures, pool {result['pool_images']}, "
          f"mean {result['mean_megapixels']} MP, {result['mean_objects']} boxes, "
          f"{result['mean_encoded_kib']} KiB encoded)")
    print(f"  generate (plan + render):      {result['generate_figures_per_s']:8.1f} figures/s")
    print(f"  record (+ JPEG/PNG encoding):  {result['record_figures_per_s']:8.1f} figures/s")
    if "build_figures_per_s" in result:
        print(f"  build subfig (+ pool, writer): {result['build_figures_per_s']:8.1f} figures/s")
    print(f"  peak RSS: {result['peak_rss_mib']} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
