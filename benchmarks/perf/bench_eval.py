"""Benchmark: evaluation at scale (issue 8) — retrieval in bounded memory, VQA scoring throughput.

Retrieval: ``N`` image embeddings against ``N`` text embeddings (``--dim``, default 512 as CLIP
ViT-B; text = image + 5 x Gaussian noise: cosine of a true pair ~0.2, about the largest of 100,000
random cosines at 512 dimensions, so Recall@1 is far from 1), the rank of
the correct item for every query, as ``bench run`` computes Recall@K:

- ``chunked`` (:func:`metrics.retrieval_ranks`): queries in chunks of ``--chunk`` (default 1,024);
  memory ``chunk x N`` floats at a time. Run at ``--n`` (default 100,000) and at ``--full-n``.
- ``full`` (:func:`metrics.retrieval_ranks_full`): the whole ``N x N`` similarity matrix at once, at
  ``--full-n`` (default 20,000: 1.6 GB of float32 plus a same-shaped comparison).

Each run is a **fresh interpreter** (this module with ``--worker``) so its peak RSS (VmHWM, reset
just before the ranking; :mod:`benchmarks.perf.memory`) is its own. Printed: seconds, peak RSS,
growth over the embeddings already in memory, Recall@1/10, and the chunked/full ratios at
``--full-n``; the two rank vectors are checked equal there.

VQA scoring: ``--vqa-items`` (default 20,000) synthetic predictions/answers scored with all eight
closed and open metrics, batched (:func:`metrics.score_vqa`: each text normalised once, n-grams
counted once for BLEU-1/2/3) against one by one (each metric's public function per item), items per
second after a warm-up, values checked equal.

    python -m pathasst.benchmarks.perf.bench_eval                  # ~4-6 minutes on 2 cores
    python -m pathasst.benchmarks.perf.bench_eval --n 20000 --full-n 5000 --vqa-items 2000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

MODULE = "pathasst.benchmarks.perf.bench_eval"


def make_embeddings(n: int, dim: int, noise: float, seed: int = 0):
    """``(images, texts)`` float32 arrays; text i = image i + noise (both left unnormalised)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, dim), dtype=np.float32)
    txt = img + noise * rng.standard_normal((n, dim), dtype=np.float32)
    return img, txt


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from pathasst.benchmarks import metrics as M
    from pathasst.benchmarks.perf.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

    img, txt = make_embeddings(args.n, args.dim, args.noise, args.seed)
    rss_before = current_rss_bytes()
    reset = reset_peak_rss()
    start = time.perf_counter()
    if args.worker == "chunked":
        ranks = M.retrieval_ranks(img, txt, chunk=args.chunk)
    else:
        ranks = M.retrieval_ranks_full(img, txt)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    if args.ranks_out:
        np.save(args.ranks_out, ranks)
    rec = M.recall_at_k(ranks, (1, 10))
    return {
        "contender": args.worker, "n": args.n, "dim": args.dim, "chunk": args.chunk if args.worker == "chunked" else None,
        "seconds": round(seconds, 3), "peak_rss_mib": round(peak / 2**20, 1),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_growth_mib": round((peak - rss_before) / 2**20, 1) if reset else None,
        "recall@1": round(rec[1], 4), "recall@10": round(rec[10], 4),
    }


def _spawn(worker: str, n: int, args: argparse.Namespace, ranks_out: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", MODULE, "--worker", worker, "--n", str(n), "--dim", str(args.dim),
           "--chunk", str(args.chunk), "--noise", str(args.noise), "--seed", str(args.seed)]
    if ranks_out:
        cmd += ["--ranks-out", ranks_out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {worker} n={n} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def vqa_throughput(items: int, seed: int = 0) -> dict[str, Any]:
    """Items per second of batched vs one-by-one VQA scoring on synthetic answers."""
    import numpy as np

    from pathasst.benchmarks import metrics as M

    rng = np.random.default_rng(seed)
    words = ["yes", "no", "the", "tumor", "is", "benign", "malignant", "cells", "show", "nuclear", "atypia",
             "lymphocytes", "adenocarcinoma", "of", "colon", "with", "necrosis", "and", "mitoses", "stroma"]
    preds = [" ".join(rng.choice(words, int(rng.integers(1, 25)))).capitalize() + "." for _ in range(items)]
    answers = [" ".join(rng.choice(words, int(rng.integers(1, 6)))) for _ in range(items)]
    metrics = list(M.CLOSED_METRICS) + list(M.OPEN_METRICS)
    # warm-up: the first BLEU call imports nltk (about a second), which is not scoring time
    M.score_vqa(preds[:20], answers[:20], metrics)
    M.score_vqa_one_by_one(preds[:20], answers[:20], metrics)
    t0 = time.perf_counter()
    batched = M.score_vqa(preds, answers, metrics)
    t1 = time.perf_counter()
    single = M.score_vqa_one_by_one(preds, answers, metrics)
    t2 = time.perf_counter()
    equal = all(np.allclose(batched[m], single[m]) for m in metrics)
    return {"items": items, "metrics": len(metrics), "batched_s": round(t1 - t0, 3), "one_by_one_s": round(t2 - t1, 3),
            "batched_items_per_s": round(items / (t1 - t0), 1), "one_by_one_items_per_s": round(items / (t2 - t1), 1),
            "speedup": round((t2 - t1) / (t1 - t0), 2), "equal": equal}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="pairs of the chunked run")
    p.add_argument("--full-n", type=int, default=20_000, help="pairs of the full-matrix comparison")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--noise", type=float, default=5.0, help="text = image + noise * N(0, 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vqa-items", type=int, default=20_000)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", choices=("chunked", "full"), help=argparse.SUPPRESS)
    p.add_argument("--ranks-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0

    import tempfile

    import numpy as np

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        small_c = _spawn("chunked", args.full_n, args, os.path.join(tmp, "c.npy"))
        small_f = _spawn("full", args.full_n, args, os.path.join(tmp, "f.npy"))
        same = bool((np.load(os.path.join(tmp, "c.npy")) == np.load(os.path.join(tmp, "f.npy"))).all())
        runs += [small_c, small_f]
        big = _spawn("chunked", args.n, args) if args.n != args.full_n else small_c
        if big is not small_c:
            runs.append(big)
    print(f"{'run':<8} {'N':>9} {'seconds':>9} {'peak RSS MiB':>13} {'growth MiB':>11} {'R@1':>7} {'R@10':>7}")
    for r in runs:
        print(f"{r['contender']:<8} {r['n']:>9,} {r['seconds']:>9.2f} {r['peak_rss_mib']:>13.1f} "
              f"{r['rss_growth_mib'] if r['rss_growth_mib'] is not None else '—':>11} {r['recall@1']:>7.4f} {r['recall@10']:>7.4f}")
    ratios = {
        "full_over_chunked_peak_rss": round(small_f["peak_rss_mib"] / small_c["peak_rss_mib"], 2),
        "full_over_chunked_growth": round(small_f["rss_growth_mib"] / max(small_c["rss_growth_mib"], 1e-9), 2)
        if small_c["rss_growth_mib"] is not None else None,
        "full_over_chunked_seconds": round(small_f["seconds"] / small_c["seconds"], 2),
        "chunked_seconds_n_over_full_n": round(big["seconds"] / small_c["seconds"], 2),
        "ranks_equal_at_full_n": same,
    }
    print(f"at N={args.full_n:,}: full matrix / chunked = {ratios['full_over_chunked_peak_rss']}x peak RSS, "
          f"{ratios['full_over_chunked_growth']}x RSS growth, {ratios['full_over_chunked_seconds']}x time; ranks equal: {same}")
    print(f"chunked N={args.n:,} took {ratios['chunked_seconds_n_over_full_n']}x the N={args.full_n:,} time "
          f"(quadratic would be {(args.n / args.full_n) ** 2:.1f}x)")
    vqa = vqa_throughput(args.vqa_items, args.seed)
    print(f"VQA scoring, {vqa['items']:,} items x {vqa['metrics']} metrics: batched {vqa['batched_items_per_s']:,.0f} items/s, "
          f"one by one {vqa['one_by_one_items_per_s']:,.0f} items/s ({vqa['speedup']}x); values equal: {vqa['equal']}")
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "ranks_out", "json")},
        "runs": runs, "ratios": ratios, "vqa": vqa,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0 if same and vqa["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
