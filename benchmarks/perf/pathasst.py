"""Benchmark: PathAsst on CPU (issue 9): generation, the server, and training through the shared loop.

Sections (``--sections``, default all), on the ``mini`` model (EfficientNet-Lite0 + SmolLM2-135M;
``--tier tiny`` for a smoke run):

* ``generate``: time to first token and generation tokens/s, with the KV cache and without, on
  one image + question (greedy, ``--new-tokens`` forced with ``min_new_tokens`` so both runs
  generate the same number). Time to first token = the prefill (vision tower, projector, prompt)
  and one token; decode tokens/s = (N - 1) tokens / (time of N tokens - time of 1 token).
* ``server``: requests/s of ``pathasst serve`` (on 127.0.0.1, in this process) at concurrency 1 and
  4 (``--concurrency``), each request an image + question with ``max_tokens=--server-tokens``.
  Generation is serialised by a lock (one model), so concurrency shows overhead, not speed-up.
* ``train``: samples/s of stage 1 (projector) and stage 2 (LoRA) through
  :func:`pathasst.trainers.loop.train` against a plain PyTorch loop (AdamW, forward, backward,
  step) over the same model, the same batches and the same collation. Each side is timed from the
  start of its second step to the start of its last (``--train-steps``), so building, the first
  step's warm-up and the final checkpoint/export are outside it; each side runs ``--train-rounds``
  times in ABBA order (plain, loop, loop, plain) so that a drifting machine load weighs on both
  alike, and its rate is total samples / total seconds. Ratio = loop / plain; target
  >= 0.95. Process CPU time is measured over the same steps and its ratio printed beside the
  wall-time one: another job holding a core slows wall time, not CPU time (``--threads 1`` keeps
  torch's own thread pool from adding to that noise). Stage 2 trains on the short dialogues (``--stage2-max-length``; the ~930-token tool
  dialogues are counted out), to keep a CPU run short.

The machine running this is shared and noisy: read ratios measured in one run, not absolute rates.

    python -m pathasst.benchmarks.perf.pathasst                       # mini, every section
    python -m pathasst.benchmarks.perf.pathasst --tier tiny --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _data(root: Path, n: int) -> dict[str, Path]:
    from pathasst.testing.assistant_data import write_pathcap, write_pathinstruct

    return {"cap": write_pathcap(root / "cap", n, size=96), "inst": write_pathinstruct(root / "inst", n, size=96)}


def _model_folder(args: argparse.Namespace, root: Path) -> Path:
    """A saved PathAsst folder: --model, or the tier built fresh (untrained projector)."""
    if args.model:
        return Path(args.model)
    from pathasst.trainers.pathasst import PathAsstConfig, build_assistant

    tower, lm = ("tiny", "tiny") if args.tier == "tiny" else ("efficientnet_lite0", "smollm2")
    cfg = PathAsstConfig(data=str(root), vision_tower=tower, language_model=lm)
    model, processor, _ = build_assistant(cfg, ["Describe this pathology image.", "colonic glands"])
    folder = root / f"pa-{args.tier}" / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _question(image_size: int = 256) -> tuple[list[dict[str, Any]], Any]:
    from pathasst.testing.images import tissue_tile

    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "Describe the staining pattern in this image."}]}]
    return messages, tissue_tile(image_size, seed=7, stain="ihc")


def bench_generate(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import torch

    from pathasst.trainers.assistant import Assistant

    assistant = Assistant(folder)
    messages, image = _question()
    inputs = assistant.prepare(messages, None, [image], max_new_tokens=args.new_tokens)
    n = args.new_tokens

    def timed(tokens: int, cache: bool) -> float:
        kwargs = dict(inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, use_cache=cache,
                      temperature=None, top_p=None, top_k=None, pad_token_id=assistant.tokenizer.pad_token_id)
        start = time.perf_counter()
        with torch.inference_mode():
            out = assistant.model.generate(**kwargs)
        elapsed = time.perf_counter() - start
        assert out.shape[1] - inputs["input_ids"].shape[1] == tokens
        return elapsed

    timed(2, True)  # warm-up: allocations, lazy initialisation
    rows = []
    for cache in (True, False):
        ttft = statistics.median(timed(1, cache) for _ in range(args.repeat))
        full = statistics.median(timed(n, cache) for _ in range(args.repeat))
        rows.append({"kv_cache": cache, "prompt_tokens": int(inputs["input_ids"].shape[1]), "new_tokens": n,
                     "ttft_s": round(ttft, 4), "total_s": round(full, 4),
                     # None when noise makes N tokens look no slower than 1 (tiny models, busy machines)
                     "decode_tokens_per_s": round((n - 1) / (full - ttft), 2) if full > ttft else None,
                     "tokens_per_s": round(n / full, 2)})
    with_cache, without = rows
    speedup = None
    if with_cache["decode_tokens_per_s"] and without["decode_tokens_per_s"]:
        speedup = round(with_cache["decode_tokens_per_s"] / without["decode_tokens_per_s"], 2)
    return {"rows": rows, "decode_speedup_kv_cache": speedup}


def bench_server(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import base64
    import io

    import openai

    from pathasst.trainers.assistant import Assistant
    from pathasst.trainers.serve import ChatService, PathAsstServer

    service = ChatService(Assistant(folder), default_max_tokens=args.server_tokens)
    server = PathAsstServer(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _, image = _question()
    buf = io.BytesIO()
    image.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe the staining pattern in this image."},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    rows = []
    try:
        for concurrency in args.concurrency:
            client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=600)
            client.chat.completions.create(model=service.model_id, messages=messages, max_tokens=2)  # warm-up
            total = args.server_requests * concurrency
            done, errors = [], []

            def worker(k: int) -> None:
                for _ in range(args.server_requests):
                    try:
                        client.chat.completions.create(model=service.model_id, messages=messages,
                                                       max_tokens=args.server_tokens)
                        done.append(1)
                    except Exception as exc:  # noqa: BLE001 - counted and reported
                        errors.append(repr(exc))

            start = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            rows.append({"concurrency": concurrency, "requests": total, "ok": len(done), "errors": len(errors),
                         "seconds": round(wall, 3), "requests_per_s": round(len(done) / wall, 3),
                         "max_tokens": args.server_tokens})
    finally:
        server.shutdown()
        server.server_close()
    return {"rows": rows}


def _train_side(task: Any, cfg: Any, plain: bool) -> dict[str, Any]:
    """Samples/s of one side: timestamps at the start of every step's forward."""
    import torch

    from pathasst.trainers.loop import reset_accelerate_state, train

    stamps: list[float] = []
    cpu_stamps: list[float] = []  # process CPU time: steadier than wall time on a shared machine
    if plain:
        torch.manual_seed(cfg.seed)
        model = task.build_model(cfg)
        model.train()
        loader = task.train_dataloader(cfg)
        optimizer = torch.optim.AdamW(task.param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                      eps=cfg.adam_eps)
        steps = 0
        while steps < cfg.max_steps:
            for batch in loader:
                stamps.append(time.perf_counter())
                cpu_stamps.append(time.process_time())
                loss = task.loss(model, batch)
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                if steps >= cfg.max_steps:
                    break
    else:
        original = task.loss

        def loss(model: Any, batch: Any) -> Any:
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())
            return original(model, batch)

        task.loss = loss
        reset_accelerate_state()
        train(task, cfg)
        reset_accelerate_state()
    measured = len(stamps) - 2  # from the start of step 2 to the start of the last step
    seconds = stamps[-1] - stamps[1]
    cpu_seconds = cpu_stamps[-1] - cpu_stamps[1]
    return {"steps_timed": measured, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "samples_per_s": round(measured * cfg.batch_size / seconds, 3)}


def bench_train(args: argparse.Namespace, data: dict[str, Path], root: Path) -> dict[str, Any]:
    from pathasst.trainers.pathasst import PathAsstConfig, make_task

    tower, lm = ("tiny", "tiny") if args.tier == "tiny" else ("efficientnet_lite0", "smollm2")
    rows = []
    stage1_model = None
    for stage in args.train_stages:
        common = dict(vision_tower=tower, language_model=lm, stage=stage, max_steps=args.train_steps,
                      batch_size=args.train_batch, lr=1e-4, warmup_steps=0, schedule="constant", save_every=0,
                      keep_checkpoints=1, log_every=1000, resume="never", lora_r=8, lora_alpha=16, lora_dropout=0.0)
        if stage == 2:
            common.update(init_from=str(stage1_model), max_length=args.stage2_max_length)
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "loop": []}
        # ABBA order over the rounds (plain, loop, loop, plain, ...): a load that drifts during the
        # run weighs on both sides alike
        order = [("plain", "loop") if r % 2 == 0 else ("loop", "plain") for r in range(args.train_rounds)]
        for r, names in enumerate(order):
            for name in names:
                cfg = PathAsstConfig(data=str(data["cap" if stage == 1 else "inst"]),
                                     output_dir=str(root / f"train-s{stage}-{name}-{r}"), **common)
                task = make_task(cfg)
                runs[name].append(_train_side(task, cfg, plain=name == "plain"))
                if stage == 1 and name == "loop":
                    stage1_model = root / f"train-s1-loop-{r}" / "model"
        sides = {}
        for name, side in runs.items():
            steps, seconds = sum(x["steps_timed"] for x in side), sum(x["seconds"] for x in side)
            cpu_seconds = sum(x["cpu_seconds"] for x in side)
            sides[name] = {"steps_timed": steps, "seconds": round(seconds, 3),
                           "samples_per_s": round(steps * args.train_batch / seconds, 3),
                           "samples_per_cpu_s": round(steps * args.train_batch / cpu_seconds, 3),
                           "samples_per_s_each": [x["samples_per_s"] for x in side],
                           "samples_per_cpu_s_each": [round(x["steps_timed"] * args.train_batch / x["cpu_seconds"], 3)
                                                      for x in side]}
        rows.append({"stage": stage, "batch_size": args.train_batch, "rounds": args.train_rounds,
                     **{f"{m}_{k}": v for k in sides for m, v in sides[k].items()},
                     "ratio_loop_to_plain": round(sides["loop"]["samples_per_s"] / sides["plain"]["samples_per_s"], 3),
                     "cpu_ratio_loop_to_plain": round(sides["loop"]["samples_per_cpu_s"]
                                                      / sides["plain"]["samples_per_cpu_s"], 3),
                     "records_used": task.stats["used"], "records_skipped": task.stats["skipped"]})
    return {"rows": rows, "target_ratio": 0.95}


def _report(results: dict[str, Any]) -> str:
    lines = []
    gen = results.get("generate")
    if gen:
        lines.append("generate (greedy, one image + question):")
        for r in gen["rows"]:
            lines.append(f"  kv_cache={str(r['kv_cache']):5}  prompt {r['prompt_tokens']} tok  TTFT {r['ttft_s']:.3f} s  "
                         f"{r['new_tokens']} tokens in {r['total_s']:.2f} s  decode {r['decode_tokens_per_s']} tok/s")
        lines.append(f"  KV cache decode speed-up: {gen['decode_speedup_kv_cache']}x")
    srv = results.get("server")
    if srv:
        lines.append("server (openai client, image + question):")
        for r in srv["rows"]:
            lines.append(f"  concurrency {r['concurrency']}: {r['ok']}/{r['requests']} ok in {r['seconds']:.2f} s = "
                         f"{r['requests_per_s']:.3f} req/s (max_tokens {r['max_tokens']})")
    tr = results.get("train")
    if tr:
        lines.append("train (samples/s, loop vs plain PyTorch, same model and batches):")
        for r in tr["rows"]:
            lines.append(f"  stage {r['stage']}: loop {r['samples_per_s_loop']:.3f}  plain {r['samples_per_s_plain']:.3f}  "
                         f"ratio {r['ratio_loop_to_plain']:.3f} (target >= {tr['target_ratio']})  "
                         f"per CPU-second: loop {r['samples_per_cpu_s_loop']:.3f}  plain {r['samples_per_cpu_s_plain']:.3f}  "
                         f"ratio {r['cpu_ratio_loop_to_plain']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pathasst.benchmarks.perf.pathasst", description=__doc__.split("\n")[0])
    parser.add_argument("--tier", choices=("mini", "tiny"), default="mini")
    parser.add_argument("--model", default=None, help="a saved PathAsst folder (default: the tier, built fresh)")
    parser.add_argument("--sections", default="generate,server,train")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--server-requests", type=int, default=3, help="requests per client thread")
    parser.add_argument("--server-tokens", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-rounds", type=int, default=2, help="runs of each side, in ABBA order")
    parser.add_argument("--train-stages", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                        help="stages to time (stage 2 starts from the stage-1 loop's model, so 2 needs 1)")
    parser.add_argument("--stage2-max-length", type=int, default=400)
    parser.add_argument("--records", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own); 1 gives steadier ratios on a loaded machine")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - {"generate", "server", "train"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    if set(args.train_stages) - {1, 2} or (2 in args.train_stages and 1 not in args.train_stages):
        parser.error("--train-stages takes 1 or 1,2 (stage 2 starts from stage 1's model)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"tier": args.tier, "python": platform.python_version(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "machine": platform.machine()}
    with tempfile.TemporaryDirectory(prefix="bench-pathasst-") as tmp:
        root = Path(tmp)
        if "generate" in sections or "server" in sections:
            folder = _model_folder(args, root)
            if "generate" in sections:
                results["generate"] = bench_generate(args, folder)
            if "server" in sections:
                results["server"] = bench_server(args, folder)
        if "train" in sections:
            results["train"] = bench_train(args, _data(root, args.records), root)
    print(_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
