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
