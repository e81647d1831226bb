"""Benchmark: split quality on REAL compound captions, for the rules and for an LLM splitter.

The held-out set (``dataset_builders/curate/data/real_compound_captions.yaml``, beside the synthetic
golden cases) holds compound figure captions
copied verbatim from openly licensed (CC BY / CC0) PubMed Central articles, each with its source
and licence, and the split written by hand: shared prefix, shared suffix, and ``[label,
sub-caption]`` per panel. None of them is ever trained on.

Metric: **panel F1**. A predicted panel is correct when the hand split has a panel with the same
label (compared case-insensitively) and their sub-captions match: word-level F1 (case-folded
words and numbers, as the faithfulness check counts them) of at least ``--match`` (default 0.8),
so a differing full stop or a stray "and" is not an error but a missing clause is. Precision is
over predicted panels, recall over hand-labelled panels, both micro-averaged over all captions;
**label F1** counts labels alone; **exact** counts captions whose every panel matches. Ranges are
expanded on both sides ("(B–D)" is three panels).

Steps (each also runs alone):

* ``data``: SFT pairs for the LLM from captions that are NOT the held-out ones: generated compound
  captions (:func:`pathasst.benchmarks.perf.captions.make_corpus`, answers from the rules) plus the
  hand-written golden cases of ``dataset_builders/curate/data/caption_cases.yaml`` as hand
  corrections (their expected split overrides the rules'), through ``pathasst curate
  splitter-data`` with ``exclude=`` the held-out file;
* ``train``: ``pathasst train splitter --recipe smollm2`` on those pairs; the recipe's 300 steps of
  8 pairs are for a GPU; the measured 2-core CPU run used ``max_steps=50 batch_size=4
  max_length=512 lora_last_layers=8 warmup_steps=4`` (20-55 s per step on a loaded machine);
* ``eval``: F1 of the rules, and of a model folder (``--model``) through the same
  :class:`~pathasst.dataset_builders.curate.llm.LLMCaptioner` that ``curate split --model`` uses,
  with the LLM's fallbacks counted; the model's F1 is reported twice: as used in the pipeline
  (fallbacks replaced by the rules) and on its own (fallbacks scored as wrong).

    python -m pathasst.benchmarks.perf.split_quality eval                       # rules only
    python -m pathasst.benchmarks.perf.split_quality data --work runs/sq
    python -m pathasst.benchmarks.perf.split_quality train --work runs/sq
    python -m pathasst.benchmarks.perf.split_quality eval --model runs/sq/model/model --json out.json

On a CPU, add ``--order shortest --budget 1800 --timeout 240 --threads 1 --progress FILE`` to
``eval``: the shortest captions first, no new caption after 30 minutes, one JSON line per answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

from pathasst.benchmarks.metrics import match_panels, prf, split_scores, word_f1  # noqa: F401 - re-exported

DATA_FILE = "real_compound_captions.yaml"


def data_path() -> Path:
    """The held-out file shipped with the benchmarks."""
    return Path(str(resources.files("pathasst.dataset_builders.curate"))) / "data" / DATA_FILE


def load_heldout(path: Optional[str | Path] = None) -> list[dict[str, Any]]:
    """The hand-labelled real captions: ``[{id, caption, shared_prefix, shared_suffix, panels:
    [(label, subcaption)], source}]``.

    Raises:
        ValueError: an entry without caption or panels, or a duplicate id.
    """
    from pathasst.config import yaml_load

    data = yaml_load(Path(path or data_path()).read_text(encoding="utf-8"))
    out, seen = [], set()
    for item in data["captions"]:
        cid = item["id"]
        if cid in seen:
            raise ValueError(f"{cid}: duplicate id")
        seen.add(cid)
        if not item.get("caption") or not item.get("panels"):
            raise ValueError(f"{cid}: needs caption and panels")
        panels = [(None if p[0] is None else str(p[0]), str(p[1])) for p in item["panels"]]
        out.append({"id": cid, "caption": item["caption"], "shared_prefix": item.get("shared_prefix", ""),
                    "shared_suffix": item.get("shared_suffix", ""), "panels": panels,
                    "source": item.get("source", {})})
    return out


# --- metric ---------------------------------------------------------------------------------------


# word_f1, match_panels, prf and score are the suite's one sub-caption scoring, in
# pathasst.benchmarks.metrics: `pathasst bench run --task caption_split_f1` calls the same functions.
score = split_scores


def rules_predictions(heldout: list[dict[str, Any]]) -> dict[str, list[tuple[Optional[str], str]]]:
    from pathasst.dataset_builders.curate.captions import split_caption

    return {item["id"]: [(p.label, p.subcaption) for p in split_caption(item["caption"]).panels] for item in heldout}


# --- steps ----------------------------------------------------------------------------------------


def build_data(work: Path, n: int = 700, seed: int = 11, heldout_file: Optional[str] = None,
               tasks: Sequence[str] = ("split",)) -> dict[str, Any]:
    """Write ``work/captions.jsonl`` (generated), ``work/corrections.yaml`` (golden cases) and the
    SFT pairs in ``work/pairs`` (see the module docstring). Returns the builder's summary."""
    import yaml

    from pathasst.benchmarks.perf.captions import make_corpus
    from pathasst.config import yaml_load
    from pathasst.dataset_builders.curate.sft import SFTConfig, build_pairs

    work.mkdir(parents=True, exist_ok=True)
    with (work / "captions.jsonl").open("w", encoding="utf-8") as fh:
        for i, (caption, _labels) in enumerate(make_corpus(n // 2, seed=seed) + make_corpus(n - n // 2, seed=seed + 1,
                                                                                             extra=1)):
            fh.write(json.dumps({"id": f"generated-{i}", "caption": caption}, ensure_ascii=False) + "\n")
    golden_path = Path(str(resources.files("pathasst.dataset_builders.curate"))) / "data" / "caption_cases.yaml"
    golden = yaml_load(golden_path.read_text(encoding="utf-8"))
    corrections, captions = {}, []
    for case in golden["split"]:
        if case.get("distribute") or not case.get("panels"):
            continue  # distributed panels (the pairs are not), or nothing to split
        captions.append({"id": f"golden-{case['id']}", "caption": case["caption"]})
        corrections[f"golden-{case['id']}"] = {"split": {
            "shared_prefix": case.get("prefix", ""), "shared_suffix": case.get("suffix", ""),
            "panels": [[p[0], p[1]] for p in case["panels"]]}}
    (work / "golden_captions.yaml").write_text(yaml.safe_dump({"captions": captions}, allow_unicode=True, width=1000))
    (work / "corrections.yaml").write_text(yaml.safe_dump(corrections, allow_unicode=True, width=1000))
    cfg = SFTConfig(tasks=list(tasks), corrections=str(work / "corrections.yaml"),
                    exclude=str(heldout_file or data_path()))
    return build_pairs([str(work / "captions.jsonl"), str(work / "golden_captions.yaml")], work / "pairs", cfg,
                       overwrite=True)


def train(work: Path, overrides: Sequence[str] = ()) -> int:
    """``pathasst train splitter --recipe smollm2 data=work/pairs output_dir=work/model ...``."""
    from pathasst.trainers.splitter import main

    return main(["--recipe", "smollm2", f"data={work / 'pairs'}", f"output_dir={work / 'model'}", "tasks=[split]",
                 *overrides])


def evaluate(model: Optional[str], heldout: list[dict[str, Any]], threshold: float = 0.8,
             max_new_tokens: int = 1024, timeout_s: float = 300.0, limit: int = 0, budget_s: float = 0.0,
             progress: Optional[Path] = None) -> dict[str, Any]:
    """Scores of the rules and (with ``model``) of the LLM on the held-out captions.

    Args:
        budget_s: with a model, stop asking it once this many seconds have passed (0: no limit);
            the captions left are scored with the rules' answer in the pipeline row and as
            wrong in the LLM-alone row, and counted as ``not_run`` (a CPU-time budget, reported
            as such). The ``attempted`` block scores the LLM and the rules on the captions the LLM
            was asked about only.
        progress: append one JSON line per caption here as it is answered (a run cut short
            keeps what it measured).
    """
    items = heldout[:limit] if limit else heldout
    started = time.perf_counter()
    rules = rules_predictions(items)
    result: dict[str, Any] = {"rules": {**score(rules, items, threshold),
                                        "seconds": round(time.perf_counter() - started, 3)}}
    if model:
        from pathasst.dataset_builders.curate.llm import LLMCaptioner, LLMSettings

        captioner = LLMCaptioner(LLMSettings(model=model, max_new_tokens=max_new_tokens, timeout_s=timeout_s,
                                             max_prompt_chars=8000))
        used, alone, per_caption, attempted = {}, {}, [], []
        started = time.perf_counter()
        for item in items:
            if budget_s and time.perf_counter() - started > budget_s:
                panels, status, reason, seconds = rules[item["id"]], "not_run", "budget", 0.0
                alone[item["id"]] = []
            else:
                asked = time.perf_counter()
                answer = captioner.split(item["caption"])
                seconds = round(time.perf_counter() - asked, 1)
                panels = [(p.label, p.subcaption) for p in answer.value.panels]
                status, reason = answer.info.get("status"), answer.info.get("reason")
                alone[item["id"]] = panels if answer.used_llm else []
                attempted.append(item)
            used[item["id"]] = panels
            row = {"id": item["id"], "chars": len(item["caption"]), "status": status, "reason": reason,
                   "seconds": seconds, **match_panels(panels, item["panels"], threshold)}
            per_caption.append(row)
            if progress:
                with progress.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({**row, "panels": panels}, ensure_ascii=False) + "\n")
            print(f"[{len(per_caption)}/{len(items)}] {item['id']} ({len(item['caption'])} chars, {seconds} s): "
                  f"{status} {reason or ''}", file=sys.stderr, flush=True)
        result["llm"] = {**score(used, items, threshold), "seconds": round(time.perf_counter() - started, 1),
                         "llm_alone": score(alone, items, threshold), "llm_stats": captioner.summary(),
                         "not_run": len(items) - len(attempted),
                         "attempted": {"captions": len(attempted),
                                       "llm_alone": score(alone, attempted, threshold),
                                       "rules": score(rules, attempted, threshold)},
                         "per_caption": per_caption}
    return result


def report(result: dict[str, Any]) -> str:
    lines = [f"held-out real compound captions: {result['rules']['captions']} captions, "
             f"{result['rules']['panels_gold']} hand-labelled panels; match threshold word F1 >= {result['threshold']}",
             f"{'splitter':<34} {'panel P':>8} {'panel R':>8} {'panel F1':>9} {'label F1':>9} {'exact':>7}"]

    def row(name: str, s: dict[str, Any]) -> str:
        return (f"{name:<34} {s['panel']['precision']:>8.3f} {s['panel']['recall']:>8.3f} {s['panel']['f1']:>9.3f} "
                f"{s['label']['f1']:>9.3f} {s['exact_captions']:>3}/{s['captions']:<3}")

    lines.append(row("rules", result["rules"]))
    if "llm" in result:
        llm = result["llm"]
        lines.append(row("LLM (fallbacks -> rules)", llm))
        lines.append(row("LLM alone (fallbacks wrong)", llm["llm_alone"]))
        stats = llm["llm_stats"]
        lines.append(f"LLM {stats['model']}: {stats['accepted']} of {stats['calls']} answers used, fallbacks "
                     f"{stats['fallbacks'] or 'none'}; {llm['seconds']} s")
        if llm.get("not_run"):
            done = llm["attempted"]
            lines.append(f"time budget: the LLM was asked about {done['captions']} of {llm['captions']} captions "
                         f"({llm['not_run']} not run); on those {done['captions']} alone:")
            if done["captions"]:
                lines.append(row("  rules", done["rules"]))
                lines.append(row("  LLM alone (fallbacks wrong)", done["llm_alone"]))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pathasst.benchmarks.perf.split_quality", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("data", "train", "eval"))
    parser.add_argument("--work", type=Path, default=Path("runs/split_quality"), help="folder of data and model")
    parser.add_argument("--heldout", help="held-out YAML (default: the shipped real captions)")
    parser.add_argument("--captions", type=int, default=700, help="generated training captions (data)")
    parser.add_argument("--model", help="model folder or endpoint to evaluate (eval)")
    parser.add_argument("--match", type=float, default=0.8, help="word-F1 threshold of a sub-caption match")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per caption before the rules take over")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N captions only")
    parser.add_argument("--shortest", type=int, default=0,
                        help="evaluate the N shortest captions only (a CPU-time budget; reported as a subset)")
    parser.add_argument("--order", choices=("file", "shortest"), default="file",
                        help="the order captions are asked in (shortest first: most answers within a --budget)")
    parser.add_argument("--budget", type=float, default=0.0,
                        help="stop asking the LLM after this many seconds; the rest are counted as not run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for a local model (0: torch's default)")
    parser.add_argument("--progress", type=Path, help="append one JSON line per caption here as it is answered")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("overrides", nargs="*", help="train: key=value overrides of the smollm2 recipe")
    args = parser.parse_intermixed_args(argv)
    if args.step == "data":
        summary = build_data(args.work, args.captions, heldout_file=args.heldout)
        print(json.dumps({k: summary[k] for k in ("inputs", "pairs", "corrected_split", "reject_reasons")}))
        return 0
    if args.step == "train":
        return train(args.work, args.overrides)
    heldout = load_heldout(args.heldout)
    if args.shortest or args.order == "shortest":
        heldout = sorted(heldout, key=lambda item: len(item["caption"]))[:args.shortest or None]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # a shared CPU: fewer threads than cores can be faster
    result = evaluate(args.model, heldout, args.match, args.max_new_tokens, args.timeout, limit=args.limit,
                      budget_s=args.budget, progress=args.progress)
    result.update(threshold=args.match, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  heldout=str(args.heldout or data_path()))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
