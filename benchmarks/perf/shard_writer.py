"""Benchmark: pathasst's DatasetWriter against what a user would otherwise do with ``datasets``.

Both contenders write the same N PathCap records (256x256 JPEGs cut from a real IHC micrograph)
to Parquet with the images embedded:

* ``writer``:   ``DatasetWriter(out, get_spec('pathcap'), config=...)``, ``add`` each record, ``finalize()``.
* ``datasets``: ``Dataset.from_generator(gen, features=spec.features)`` then ``.to_parquet(path)``.

Each run happens in a fresh subprocess (this module with the hidden ``--worker`` flag), so its
peak RSS is its own. The machine running this is shared and noisy: the numbers that mean anything
are the ratios of runs measured side by side in one invocation, not the absolute rates.

    python -m pathasst.benchmarks.perf.shard_writer                     # 20,000 records; sizes 5000,20000
    python -m pathasst.benchmarks.perf.shard_writer --records 2000 --sizes 500,2000 --json out.json

See benchmarks/perf/README.md for what each column means and the results measured so far.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import io
import json
import os
import pickle
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pathasst.benchmarks.perf.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

MODULE = "pathasst.benchmarks.perf.shard_writer"
CONTENDERS = ("writer", "datasets")
TILE = 256
DEFAULT_RECORDS = 20_000
DEFAULT_SIZES = (5_000, 20_000)
# Parquet compresses each ~1 MB data page (~40 images) on its own: a tile that came back within one
# page would be deduplicated by zstd. The sparse splits (5%) span ~800 records per page, so the pool
# must be larger than that for every split's bytes per record to be honest (256 tiles: -4.5%).
DEFAULT_POOL = 1024
MiB = 1 << 20

# --- the data: a pool of real micrograph tiles, records that cycle through it ------------------


def build_tile_pool(size: int = DEFAULT_POOL, seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Distinct 256x256 JPEG tiles cut from scikit-image's IHC micrograph (512x512 RGB, no download).

    Each tile is a random crop, flipped and rotated by one of the 8 symmetries of the square, saved
    once as JPEG at a quality between 85 and 95 (what figures in articles are stored at): about
    20-30 KB each, incompressible like real figure images.
    """
    import imagehash
    import numpy as np
    from PIL import Image
    from skimage.data import immunohistochemistry
    from tqdm.auto import tqdm

    source = immunohistochemistry()
    height, width = source.shape[:2]
    rng = np.random.default_rng(seed)
    pool, seen = [], set()
    with tqdm(total=size, desc="tile pool (JPEG)", unit="tile", disable=not progress) as bar:
        while len(pool) < size:
            y = int(rng.integers(0, height - TILE + 1))
            x = int(rng.integers(0, width - TILE + 1))
            k, flip, quality = int(rng.integers(0, 4)), bool(rng.integers(0, 2)), int(rng.integers(85, 96))
            if (y, x, k, flip) in seen:
                continue
            seen.add((y, x, k, flip))
            tile = np.rot90(source[y : y + TILE, x : x + TILE], k)
            if flip:
                tile = tile[:, ::-1]
            img = Image.fromarray(np.ascontiguousarray(tile))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
            pool.append({"jpeg": buf.getvalue(), "phash": str(imagehash.phash(img))})
            bar.update(1)
    return pool


@functools.lru_cache(maxsize=4)
def load_pool(pool_file: str) -> tuple[dict[str, Any], ...]:
    """The tile pool saved by the parent (loaded once per process, before any timing starts)."""
    with open(pool_file, "rb") as fh:
        return tuple(pickle.load(fh))


_STAINS = ("H&E", "CD20", "CD3", "Ki-67", "p53", "cytokeratin AE1/AE3", "HER2", "PAX8", "S100", "TTF-1")
_TISSUES = ("lymph node", "colonic mucosa", "breast", "lung", "liver", "kidney", "skin", "endometrium",
            "thyroid", "prostate core biopsy", "stomach", "soft tissue")
_FINDINGS = (
    "diffuse membranous positivity in the neoplastic cells",
    "a high proliferation index in the tumour nests",
    "scattered positive lymphocytes in the interfollicular areas",
    "strong nuclear staining in the atypical glands",
    "infiltrating cords of tumour cells within a desmoplastic stroma",
    "preserved architecture without evidence of malignancy",
    "sheets of large atypical cells with prominent nucleoli",
    "granulomatous inflammation with multinucleated giant cells",
)
_MAGS = ("x40", "x100", "x200", "x400")
_SOURCE_CYCLE = ("pubmed",) * 14 + ("book",) * 3 + ("web",) * 2 + ("private",)
_PER_GROUP = 5  # records per article / book page run / web case / private slide


def unique_jpeg(jpeg: bytes, tag: str) -> bytes:
    """The same JPEG with a comment segment naming the record: same pixels, different bytes.

    Real datasets hold no two identical images; without this, Parquet's dictionary encoding would
    store a tile repeated inside one row group once and make an output look smaller than it is.
    """
    comment = tag.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def gen_records(n: int, pool_file: str, seed: int = 0) -> Iterator[dict[str, Any]]:
    """N PathCap records: unique ids and captions, images cycling through the tile pool.

    Five consecutive records share a source item (an article, a book, a web site, a collection),
    so the writer's group-wise split fills train, validation and test. Every record's JPEG bytes
    are unique (see :func:`unique_jpeg`). Deterministic in ``seed``.
    The same function feeds both contenders; it costs a few microseconds per record.
    """
    pool = load_pool(pool_file)
    rng = random.Random(seed)
    for i in range(n):
        g, j = divmod(i, _PER_GROUP)
        tile = pool[i % len(pool)]
        source = _SOURCE_CYCLE[g % len(_SOURCE_CYCLE)]
        fig = j // 2 + 1
        label = "AB"[j % 2] if j < 4 else None
        bbox = [float(128 * (j % 2)), 0.0, 128.0, 256.0] if label else None
        page = None
        if source == "pubmed":
            source_id = f"PMC{7_000_000 + g}"
            figure_id = f"{source_id}_F{fig}"
            license_ = "CC BY 4.0"
        elif source == "book":
            book = hashlib.sha256(f"book-{g % 40}".encode()).hexdigest()
            page = 10 + (g * _PER_GROUP + j) % 400
            source_id = f"{book}#p{page}"
            figure_id = f"{book[:12]}-p{page}-f{fig}"
            license_ = "CC BY-NC 4.0"
        elif source == "web":
            source_id = f"https://www.pathology-atlas-{g % 7}.org/cases/{g}/figure-{fig}"
            figure_id = f"web-{g}-{fig}"
            license_ = "CC BY-NC-SA 4.0"
        else:
            source_id = f"collection-{g % 3}/slide-{g:06d}-{j}"
            figure_id = f"private-{g}-{j}"
            license_ = "proprietary"
        stain, tissue, finding, mag = (rng.choice(seq) for seq in (_STAINS, _TISSUES, _FINDINGS, _MAGS))
        caption = f"{stain} staining of {tissue} shows {finding} ({mag}; record {i})."
        rid = f"pathcap-{i:08d}"
        yield {
            "id": rid,
            "image": {"bytes": unique_jpeg(tile["jpeg"], rid), "path": None},
            "caption": caption,
            "caption_raw": f"Figure {fig}{label or ''}. {caption} Scale bar, {rng.choice((20, 50, 100))} um.",
            "source": source,
            "source_id": source_id,
            "figure_id": figure_id,
            "subfigure_label": label,
            "bbox": bbox,
            "page": page,
            "license": license_,
            "pathology_score": round(rng.uniform(0.6, 1.0), 4),
            "width": TILE,
            "height": TILE,
            "phash": tile["phash"],
        }


# --- the worker: one contender, one size, one fresh process ------------------------------------


class _AnonPeak:
    """Samples the process's anonymous (non file-backed) resident memory at 20 Hz; keeps the peak.

    Peak RSS counts resident pages of memory-mapped files too (``datasets`` reads its Arrow cache
    through mmap; those pages are reclaimable page cache). RSS minus shared is the part that is not.
    """

    def __init__(self, interval: float = 0.05):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self.start = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        info = self._proc.memory_info()
        return info.rss - getattr(info, "shared", 0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> "_AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def _tree_bytes(path: Path, pattern: str = "*") -> tuple[int, int]:
    files = [p for p in path.rglob(pattern) if p.is_file()] if path.exists() else []
    return sum(p.stat().st_size for p in files), len(files)


def run_worker(contender: str, n: int, pool_file: str, dest: Path, result_file: Path) -> dict[str, Any]:
    """Write N records with one contender in this (fresh) process and record time and memory."""
    # Everything either contender imports is imported before the clock starts, so both start from
    # the same baseline and neither pays an import inside its timing.
    import datasets
    import huggingface_hub  # noqa: F401  (the writer renders its card with it)
    import pyarrow.parquet  # noqa: F401

    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    datasets.disable_progress_bars()
    spec = get_spec("pathcap")
    _ = spec.features.arrow_schema
    load_pool(pool_file)
    (dest / "data").mkdir(parents=True, exist_ok=True)
    gc.collect()
    import_peak_rss = peak_rss_bytes()
    baseline_rss = current_rss_bytes()
    peak_reset = reset_peak_rss()
    extra: dict[str, Any] = {}

    with _AnonPeak() as anon:
        start = time.perf_counter()
        if contender == "writer":
            writer = DatasetWriter(
                dest, spec, config={"benchmark": "shard_writer", "records": n}, overwrite=True,
                command=f"{MODULE} --worker writer --records {n}",
            )
            for record in gen_records(n, pool_file):
                writer.add(record)
            summary = writer.finalize()
            seconds = time.perf_counter() - start
            extra = {"splits": summary.records, "rejected": summary.rejected, "shards": len(summary.shards)}
        elif contender == "datasets":
            cache = dest / "hf-cache"
            ds = datasets.Dataset.from_generator(
                gen_records, features=spec.features, cache_dir=str(cache),
                gen_kwargs={"n": n, "pool_file": pool_file},
            )
            ds.to_parquet(str(dest / "data" / "train-00000-of-00001.parquet"))
            seconds = time.perf_counter() - start
            extra = {"rows_in_dataset": len(ds), "arrow_cache_bytes": _tree_bytes(cache, "*.arrow")[0]}
            del ds
        else:
            raise ValueError(f"unknown contender {contender!r}")

    peak = peak_rss_bytes()
    output_bytes, output_files = _tree_bytes(dest / "data", "*.parquet")
    result = {
        "contender": contender,
        "records": n,
        "seconds": round(seconds, 4),
        "records_per_s": round(n / seconds, 1),
        "peak_rss_mib": round(peak / MiB, 1),
        "baseline_rss_mib": round(baseline_rss / MiB, 1),
        "rss_growth_mib": round((peak - baseline_rss) / MiB, 1),
        "peak_anon_mib": round(anon.peak / MiB, 1),
        "baseline_anon_mib": round(anon.start / MiB, 1),
        "import_peak_rss_mib": round(import_peak_rss / MiB, 1),
        "peak_is_write_only": peak_reset,
        "output_bytes": output_bytes,
        "output_files": output_files,
        **extra,
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def _spawn_worker(contender: str, n: int, pool_file: Path, dest: Path, env: dict[str, str]) -> dict[str, Any]:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    result_file = dest.with_name(dest.name + ".result.json")
    cmd = [sys.executable, "-m", MODULE, "--worker", contender, "--records", str(n),
           "--pool-file", str(pool_file), "--out-dir", str(dest), "--result", str(result_file)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{contender} worker for {n} records failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(result_file.read_text())


# --- checking that both outputs are what they claim ---------------------------------------------


def verify_output(contender: str, dest: Path, n: int, cache_dir: Path) -> dict[str, Any]:
    """Load an output the way its users will, count its rows, check ids and one image."""
    import datasets

    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        if contender == "writer":  # the folder's README declares its splits (load_dataset(folder))
            loaded = datasets.load_dataset(str(dest), cache_dir=str(cache_dir))
        else:
            loaded = datasets.load_dataset(
                "parquet", data_files=str(dest / "data" / "*.parquet"), cache_dir=str(cache_dir)
            )
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
    rows = {split: ds.num_rows for split, ds in loaded.items()}
    ids = set()
    for ds in loaded.values():
        ids.update(ds.data.column("id").to_pylist())
    expected = {f"pathcap-{i:08d}" for i in range(n)}
    first = next(ds for ds in loaded.values() if ds.num_rows)
    image = first[0]["image"]
    return {
        "rows_loaded": sum(rows.values()),
        "rows_per_split": rows,
        "ids_match": ids == expected,
        "image_size": list(image.size),
    }


# --- the parent: generate, run both contenders at each size, compare ----------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _pick(runs: list[dict[str, Any]], contender: str, n: int) -> dict[str, Any] | None:
    return next((r for r in runs if r["contender"] == contender and r["records"] == n), None)


def _median_run(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge repeats of one (contender, size): median time and memory, the rest from the first."""
    if len(reps) == 1:
        return reps[0]
    merged = dict(reps[0])
    for key in ("seconds", "peak_rss_mib", "baseline_rss_mib", "rss_growth_mib", "peak_anon_mib"):
        merged[key] = round(statistics.median(r[key] for r in reps), 4 if key == "seconds" else 1)
    merged["records_per_s"] = round(merged["records"] / merged["seconds"], 1)
    merged["repeats"] = len(reps)
    merged["seconds_all"] = [r["seconds"] for r in reps]
    return merged


def _table(runs: list[dict[str, Any]]) -> str:
    head = ("contender", "records", "seconds", "records/s", "peak RSS MiB", "RSS growth MiB",
            "peak anon MiB", "output MB", "files", "rows loaded")
    rows = [head]
    for r in runs:
        rows.append((
            r["contender"], f"{r['records']:,}", f"{r['seconds']:.2f}", f"{r['records_per_s']:,.0f}",
            f"{r['peak_rss_mib']:.0f}", f"{r['rss_growth_mib']:.0f}", f"{r['peak_anon_mib']:.0f}",
            f"{r['output_bytes'] / 1e6:.1f}", str(r["output_files"]), f"{r['rows_loaded']:,}" if "rows_loaded" in r else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    import datasets
    import psutil
    import pyarrow

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "datasets": datasets.__version__,
        "pyarrow": pyarrow.__version__,
    }


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("--sizes needs at least one positive size")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Compare DatasetWriter with datasets' from_generator + to_parquet on the same "
        "PathCap records (speed, peak memory, output size), each run in a fresh subprocess.",
    )
    p.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                   help="records for the head-to-head comparison (default %(default)s)")
    p.add_argument("--sizes", type=_parse_sizes, default=list(DEFAULT_SIZES),
                   help="comma-separated sizes at which both contenders also run, to see how peak RSS "
                   "grows with the number of records (default 5000,20000); --records is always added")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where to write the outputs (kept); default: a temporary folder, removed at the end")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per contender and size (fresh process each); medians are reported")
    p.add_argument("--pool-size", type=int, default=DEFAULT_POOL,
                   help="distinct image tiles the records cycle through (default %(default)s)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip loading the outputs back with datasets.load_dataset (faster, less honest)")
    p.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--pool-file", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.records < 1:
        p.error("--records must be positive")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.pool_size < 1:
        p.error("--pool-size must be positive")
    return args


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from pathasst.records import get_spec, record_errors

    sizes = sorted(set(args.sizes) | {args.records})
    keep = args.out_dir is not None
    root = Path(args.out_dir) if keep else Path(tempfile.mkdtemp(prefix="pathasst-bench-shard-writer-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(root / "hf-cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    try:
        # Generation, outside every measured region: the tiles are encoded once here, and the
        # record generator is run through once (validating every record against the contract) so
        # its own cost is known; the workers then replay it from the saved pool.
        pool = build_tile_pool(args.pool_size)
        pool_file = root / "tile-pool.pkl"
        with open(pool_file, "wb") as fh:
            pickle.dump(pool, fh, protocol=pickle.HIGHEST_PROTOCOL)
        spec = get_spec("pathcap")
        n_max = max(sizes)
        start = time.perf_counter()
        for record in tqdm(gen_records(n_max, str(pool_file)), total=n_max, desc="records", unit="rec"):
            pass
        generator_seconds = time.perf_counter() - start
        invalid = [e for r in gen_records(min(n_max, 1000), str(pool_file)) for e in record_errors(spec, r)]
        if invalid:
            raise RuntimeError(f"the benchmark's own records break the pathcap contract: {invalid[:3]}")
        jpeg_sizes = [len(t["jpeg"]) for t in pool]

        runs: list[dict[str, Any]] = []
        for n in sizes:
            for contender in CONTENDERS:
                reps = []
                for rep in range(args.repeat):
                    dest = root / f"{contender}-{n}" if args.repeat == 1 else root / f"{contender}-{n}-r{rep}"
                    print(f"[{contender}] writing {n:,} records (fresh process)...", flush=True)
                    result = _spawn_worker(contender, n, pool_file, dest, env)
                    if not args.no_verify:
                        result.update(verify_output(contender, dest, n, root / "verify-cache"))
                        shutil.rmtree(root / "verify-cache", ignore_errors=True)
                    print(f"[{contender}] {n:,} records: {result['seconds']:.2f} s, "
                          f"{result['records_per_s']:,.0f} records/s, peak RSS {result['peak_rss_mib']:.0f} MiB"
                          + (f", {result['rows_loaded']:,} rows loaded back" if "rows_loaded" in result else ""),
                          flush=True)
                    reps.append(result)
                    if not keep:
                        shutil.rmtree(dest, ignore_errors=True)
                runs.append(_median_run(reps))

        n, lo, hi = args.records, sizes[0], sizes[-1]
        w, d = _pick(runs, "writer", n), _pick(runs, "datasets", n)
        ratios = {
            "records_per_s_writer_over_datasets": _ratio(w["records_per_s"], d["records_per_s"]),
            "peak_rss_writer_over_datasets": _ratio(w["peak_rss_mib"], d["peak_rss_mib"]),
            "rss_growth_writer_over_datasets": _ratio(w["rss_growth_mib"], d["rss_growth_mib"]),
            "output_bytes_writer_over_datasets": _ratio(w["output_bytes"], d["output_bytes"]),
            "writer_peak_rss_largest_over_smallest": _ratio(
                _pick(runs, "writer", hi)["peak_rss_mib"], _pick(runs, "writer", lo)["peak_rss_mib"]),
            "datasets_peak_rss_largest_over_smallest": _ratio(
                _pick(runs, "datasets", hi)["peak_rss_mib"], _pick(runs, "datasets", lo)["peak_rss_mib"]),
            "writer_rss_growth_largest_over_smallest": _ratio(
                _pick(runs, "writer", hi)["rss_growth_mib"], _pick(runs, "writer", lo)["rss_growth_mib"]),
        }
        return {
            "benchmark": "shard_writer",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": _machine(),
            "records": n,
            "sizes": sizes,
            "repeat": args.repeat,
            "images": {
                "source": "skimage.data.immunohistochemistry (512x512 RGB), cropped/rotated/flipped",
                "pool_tiles": len(pool),
                "width": TILE,
                "height": TILE,
                "format": "JPEG, quality 85-95",
                "mean_jpeg_bytes": round(statistics.mean(jpeg_sizes)),
                "min_jpeg_bytes": min(jpeg_sizes),
                "max_jpeg_bytes": max(jpeg_sizes),
            },
            "generator_seconds": round(generator_seconds, 3),
            "generator_records_per_s": round(n_max / generator_seconds, 1),
            "runs": runs,
            "results": {"writer": w, "datasets": d},
            "ratios": ratios,
            "rss_sizes": {"smallest": lo, "largest": hi},
            "out_dir": str(root) if keep else None,
        }
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def report(result: dict[str, Any]) -> str:
    r, lo, hi = result["ratios"], result["rss_sizes"]["smallest"], result["rss_sizes"]["largest"]
    m, img = result["machine"], result["images"]

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    return "\n".join([
        "",
        f"shard_writer benchmark, {result['date']}: {m['cpus']} CPUs, {m['memory_gib']} GiB, "
        f"datasets {m['datasets']}, pyarrow {m['pyarrow']}",
        f"images: {img['pool_tiles']} distinct {img['width']}x{img['height']} JPEG tiles, "
        f"mean {img['mean_jpeg_bytes'] / 1024:.1f} KiB; record generator alone: "
        f"{result['generator_records_per_s']:,.0f} records/s (included in both contenders' time)",
        "",
        _table(result["runs"]),
        "",
        f"ratios at {result['records']:,} records (measured side by side in this run):",
        f"  records/s   writer / datasets          {fmt(r['records_per_s_writer_over_datasets'])}",
        f"  peak RSS    writer / datasets          {fmt(r['peak_rss_writer_over_datasets'])}",
        f"  RSS growth  writer / datasets          {fmt(r['rss_growth_writer_over_datasets'])}",
        f"  output size writer / datasets          {fmt(r['output_bytes_writer_over_datasets'])}",
        f"  writer   peak RSS @{hi:,} / @{lo:,}   {fmt(r['writer_peak_rss_largest_over_smallest'])}",
        f"  datasets peak RSS @{hi:,} / @{lo:,}   {fmt(r['datasets_peak_rss_largest_over_smallest'])}",
        "",
        "peak RSS counts mapped file pages; peak anon is the process's own heap (sampled at 20 Hz).",
        *([f"datasets also left an Arrow cache of {cache / 1e6:,.1f} MB on disk next to its Parquet file."]
          if (cache := result["results"]["datasets"].get("arrow_cache_bytes")) else []),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        # Run the worker through the module's importable name (not __main__), so `datasets` can
        # fingerprint gen_records by reference instead of pickling its globals.
        import importlib

        mod = importlib.import_module(MODULE)
        mod.run_worker(args.worker, args.records, args.pool_file, Path(args.out_dir), args.result)
        return 0
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # nothing here needs the network
        os.environ.setdefault(var, "1")
    result = run_benchmark(args)
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
