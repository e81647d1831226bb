"""Benchmark `generate instruct` against a local OpenAI-compatible server with a fixed latency.

The server (:class:`pathasst.testing.openai_server.OpenAITestServer` answering with the scripted
model of :mod:`pathasst.dataset_builders.generate.scripted`) runs in its own process, so its
threads do not compete with the generator for the interpreter lock, and waits ``--latency``
seconds (default 0.2) before every answer. For each concurrency (default 1, 8, 32) a fresh PathCap
folder of ``max(--min-records, 4 × concurrency)`` records goes through the full generator (all task
types, gates, response cache, writer, finalize) into a fresh output folder with an empty cache, so
every request is paid.

Reported per concurrency: records, samples written, requests, wall seconds, samples/s,
requests/s, and the ratio to the ideal. With a fixed latency L and C requests in flight the
endpoint can answer at most C / L requests per second; the ratio is requests/s ÷ (C / L), which is
also samples/s ÷ the ideal samples/s (C / L × samples per request). Target: ≥ 0.8 at C = 32.

    python -m pathasst.benchmarks.perf.generate                 # 1, 8, 32 at 200 ms
    python -m pathasst.benchmarks.perf.generate --concurrency 1,8,32,64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _serve(latency: float) -> None:
    """Worker: run the server, print its base URL, stop when stdin closes."""
    from pathasst.dataset_builders.generate.scripted import answer
    from pathasst.testing.openai_server import OpenAITestServer

    with OpenAITestServer(answer, latency=latency) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


CAPTIONS = [
    "Colonic adenocarcinoma with cribriform glands and dirty necrosis, H&E.",
    "Renal biopsy showing a cellular crescent compressing the glomerular tuft.",
    "Skin punch biopsy with spongiotic dermatitis and a perivascular infiltrate.",
    "Liver core biopsy showing macrovesicular steatosis in most hepatocytes.",
    "Lung resection with granulomas containing multinucleated giant cells.",
]


def _pathcap(folder: Path, n: int) -> Path:
    from pathasst.records import get_spec
    from pathasst.testing.images import make_image
    from pathasst.writer import DatasetWriter

    with DatasetWriter(folder, get_spec("pathcap"), splits={"train": 1.0}) as writer:
        for i in range(n):
            caption = f"{CAPTIONS[i % len(CAPTIONS)]} Case {i}."
            writer.add({
                "id": f"B{i}/F1", "image": make_image("RGB", (48, 40), seed=i), "caption": caption,
                "caption_raw": caption, "source": "pubmed", "source_id": f"B{i}", "figure_id": f"B{i}/F1",
                "license": "CC BY 4.0", "width": 48, "height": 40,
            })
        writer.finalize()
    return folder


def run_one(base_url: str, concurrency: int, records: int, latency: float, work: Path) -> dict:
    from pathasst.dataset_builders.generate.instruct import InstructConfig, generate_instruct
    from pathasst.endpoint import EndpointConfig

    pathcap = _pathcap(work / f"pathcap-{concurrency}", records)
    cfg = InstructConfig(endpoint=EndpointConfig(base_url=base_url, model="scripted", concurrency=concurrency,
                                                 timeout_s=30, max_retries=2))
    start = time.perf_counter()
    summary = generate_instruct([str(pathcap)], work / f"out-{concurrency}", cfg, progress=False)
    seconds = time.perf_counter() - start
    requests = summary["usage"]["requests"]
    samples = summary["this_run"]["samples_written"]
    ideal = concurrency / latency
    return {
        "concurrency": concurrency,
        "records": records,
        "samples": samples,
        "requests": requests,
        "seconds": round(seconds, 3),
        "samples_per_s": round(samples / seconds, 2),
        "requests_per_s": round(requests / seconds, 2),
        "ideal_requests_per_s": round(ideal, 2),
        "ratio_to_ideal": round(requests / seconds / ideal, 3),
        "rejected": summary["rejected_total"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrencies")
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per answer, seconds")
    parser.add_argument("--min-records", type=int, default=8, help="records at least, per concurrency")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.latency)
        return 0
    import logging

    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # imports outside the timed part: the first generate_instruct would pay them (~2-3 s)
    import datasets  # noqa: F401
    import jsonschema  # noqa: F401
    import openai  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import tqdm.auto  # noqa: F401

    import pathasst.dataset_builders.curate.captions  # noqa: F401
    import pathasst.dataset_builders.generate.gates  # noqa: F401
    import pathasst.dataset_builders.generate.instruct  # noqa: F401
    import pathasst.images  # noqa: F401
    levels = [int(c) for c in args.concurrency.split(",")]
    server = subprocess.Popen([sys.executable, "-m", "pathasst.benchmarks.perf.generate", "--serve",
                               "--latency", str(args.latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base_url = server.stdout.readline().strip()
        if not base_url.startswith("http://127.0.0.1"):
            raise RuntimeError(f"the benchmark server did not start (said {base_url!r})")
        results = []
        with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
            for c in levels:
                row = run_one(base_url, c, max(args.min_records, 4 * c), args.latency, Path(tmp))
                results.append(row)
                print(f"concurrency {c:>3}: {row['records']:>4} records, {row['samples']:>4} samples, "
                      f"{row['requests']:>5} requests in {row['seconds']:7.2f} s = {row['samples_per_s']:7.2f} "
                      f"samples/s, {row['requests_per_s']:7.2f} req/s of ideal {row['ideal_requests_per_s']:g} "
                      f"-> ratio {row['ratio_to_ideal']:.3f}", flush=True)
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    report = {"latency_s": args.latency, "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
