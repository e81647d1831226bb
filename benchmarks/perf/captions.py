"""Benchmark: the caption curation rules (issue 5), one section per component.

Sections (``--sections``, default all):

* ``splitter``: captions per second of the rule-based splitter
  (:func:`pathasst.dataset_builders.curate.captions.split_caption`) on a corpus of generated
  compound captions (``--captions``, default 50,000; mean ~220 characters), measured in one process
  (that rate *is* the per-core figure: the splitter is pure Python, one caption at a time) and in
  ``--procs`` worker processes side by side (total and per core, to see how it scales); the same on
  as many longer captions (each panel described by three clauses, mean ~570 characters), since the
  cost grows with length; the refiner's rates on both corpora; the time of the worst 50,000-character captions (adversarial runs of markers,
  parentheses, separators) to show the rules stay linear; and, as a sanity check of the generator
  and the rules together, how often the split finds exactly the panel labels the generator put in.
  That agreement is on synthetic captions: it is no measure of quality on real ones.

Target (issue 5): at least 5,000 captions per second per core. The machine running this is shared
and noisy: rates move by tens of percent between runs; the ratio of the multi-process per-core
rate to the single-process rate, measured in one invocation, is the stable figure.

    python -m pathasst.benchmarks.perf.captions                              # every section
    python -m pathasst.benchmarks.perf.captions --sections splitter --captions 5000 --json out.json

A new section (dedup: near-duplicate search over hashes) is one more entry in :data:`SECTIONS`:
a function ``(args) -> (result dict, printed report)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

# --- generated compound captions ---------------------------------------------------------------

PREFIXES = (
    "", "", "", "Renal biopsy from a 54-year-old woman.", "Histopathology of the resected specimen.",
    "Gastric biopsy:", "Representative images of xenograft tumours.", "Cutaneous lesion of the forearm.",
    "Autopsy findings in case 3.", "Immunohistochemical profile of the tumour.", "Liver biopsy after treatment.",
    "Figure 2. Lymph node excision.", "Fig. 4: Bone marrow trephine.",
)
DESCRIPTIONS = (
    "Low-power view of the tumour", "Glomerulus with mesangial expansion", "CD20 immunostain",
    "Ki-67 proliferation index is higher in tumour (p < 0.05)", "Necrosis with karyorrhectic debris [12]",
    "Nuclear pleomorphism and mitoses (arrows)", "Vascular invasion as reported (Smith et al., 2019)",
    "Tumour cells positive for CK7 (n = 12)", "Hepatitis B surface antigen in hepatocytes",
    "Changes of vitamin A deficiency", "Dense T-cell infiltrate", "H and E stain of the resection margin",
    "Granulomas with Langhans giant cells", "Periodic acid-Schiff stain highlighting basement membranes",
    "Acid-fast bacilli on Ziehl-Neelsen stain", "Gross photograph of the cut surface",
    "Fibrinoid necrosis of an arteriole", "Signet-ring cells in the lamina propria",
    "Perineural invasion by carcinoma", "Psammoma bodies within papillae", "S-100 positive dendritic cells",
    "Reed-Sternberg cell with prominent nucleoli", "Amyloid deposits with apple-green birefringence",
    "Hyaline membranes lining alveoli", "Intestinal metaplasia with goblet cells",
    "Crescent formation in Bowman space", "Colonies of E. coli on culture", "Epidermal spongiosis",
    "Mucin pools with floating tumour cells", "Osteoid produced by malignant cells",
)
SUFFIXES = (
    "", "", "Scale bars, 50 µm.", "H&E, ×200.", "Original magnification ×400.", "Hematoxylin and eosin stain.",
    "All images from the same patient.", "Data are shown as mean ± SD.",
)
POSITIONS = (("Left", "Right"), ("Top", "Bottom"), ("Upper panel", "Lower panel"), ("Left", "Middle", "Right"))


def _labels(n: int, lower: bool) -> list[str]:
    letters = "abcdefghijkl" if lower else "ABCDEFGHIJKL"
    return list(letters[:n])


def _description(rng: random.Random, extra: int) -> str:
    text = rng.choice(DESCRIPTIONS)
    for _ in range(extra):
        more = rng.choice(DESCRIPTIONS)
        if more[1:2].islower():
            more = more[0].lower() + more[1:]
        text += rng.choice((", with ", " and ", ", next to ")) + more
    return text


def make_compound_caption(rng: random.Random, extra: int = 0) -> tuple[str, list[str | None]]:
    """One generated caption and the panel labels it names (``[None]``: no markers).

    ``extra``: clauses added to each panel's description (0: mean ~220 characters a caption,
    2: ~570): the rules cost time in proportion to length, so both are measured.
    """
    style = rng.choice(("paren", "paren", "paren", "clause", "colon", "close", "postfix", "range", "keyword", "plain"))
    prefix, suffix = rng.choice(PREFIXES), rng.choice(SUFFIXES)
    n = rng.randint(2, 8)
    lower = rng.random() < 0.3
    labels = _labels(n, lower)
    descriptions = [_description(rng, extra) for _ in labels]
    if style == "plain":
        body = ". ".join(descriptions[:rng.randint(1, 3)]) + "."
        return " ".join(p for p in (prefix, body, suffix) if p), [None]
    if style == "paren":
        body = " ".join(f"({lab}) {d}." for lab, d in zip(labels, descriptions))
    elif style == "clause":
        body = " ".join(f"{lab}, {d}." for lab, d in zip(labels, descriptions))
    elif style == "colon":
        body = "; ".join(f"{lab}: {d}" for lab, d in zip(labels, descriptions)) + "."
    elif style == "close":
        body = "; ".join(f"{lab}) {d}" for lab, d in zip(labels, descriptions)) + "."
    elif style == "postfix":
        parts = [f"{d[0].lower() + d[1:] if i else d} ({lab})" for i, (lab, d) in enumerate(zip(labels, descriptions))]
        body = ", ".join(parts[:-1]) + " and " + parts[-1] + "."
        suffix = rng.choice(SUFFIXES)
    elif style == "range":
        cut = rng.randint(1, n - 1)
        first = f"({labels[0]}–{labels[cut - 1]})" if cut > 1 else f"({labels[0]})"
        second = f"({labels[cut]}–{labels[-1]})" if n - cut > 1 else f"({labels[cut]})"
        body = f"{first} {descriptions[0]}. {second} {descriptions[1]}."
    else:  # keyword
        words = rng.choice(POSITIONS)
        descriptions += [_description(rng, extra) for _ in words]
        body = " ".join(f"{w}: {d}." for w, d in zip(words, descriptions))
        labels = [w.lower().replace(" panel", "") for w in words]
    return " ".join(p for p in (prefix, body, suffix) if p), list(labels)


def make_corpus(n: int, seed: int = 0, extra: int = 0) -> list[tuple[str, list[str | None]]]:
    """``n`` generated compound captions with their labels (deterministic for a seed)."""
    rng = random.Random(seed)
    return [make_compound_caption(rng, extra) for _ in range(n)]


def adversarial_captions(length: int = 50_000) -> dict[str, str]:
    """Long captions built to make a careless rule backtrack: runs of markers, parentheses,
    separators and conjunctions, unbalanced and unclosed brackets, one word without spaces."""
    def fill(unit: str) -> str:
        return (unit * (length // len(unit) + 1))[:length]

    return {
        "open_parens": fill("("),
        "unclosed_paren": "(" + fill("a")[1:],
        "letter_list": fill("A, "),
        "sentence_markers": fill(". A, "),
        "paren_markers": fill("(A) "),
        "close_markers": fill("a) "),
        "keywords": fill("Left: "),
        "dashes": fill("A–"),
        "conjunctions": "(A) x (B) " + fill(" and") + " y",
        "separators": "(A) " + fill(", ") + "x",
        "postfix_connectors": "necrosis (A)" + fill(", and") + " fibrosis (B) x",
        "shared_clauses": "(A) x. " + fill("Scale bar. "),
        "citations": fill("(Smith et al., 2019; "),
        "brackets": fill("[1, "),
        "magnifications": fill("x400 "),
        "no_spaces": fill("abcdefghij"),
    }


# --- section: splitter -------------------------------------------------------------------------


def _split_chunk(captions: list[str]) -> int:
    from pathasst.dataset_builders.curate.captions import split_caption

    for caption in captions:
        split_caption(caption)
    return len(captions)


def _rate(fn: Callable[[], Any], n: int, repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), times


def splitter_section(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from concurrent.futures import ProcessPoolExecutor

    from pathasst.dataset_builders.curate.captions import refine_caption, split_caption, unsupported_words

    corpus = make_corpus(args.captions, seed=args.seed)
    captions = [c for c, _ in corpus]
    chars = sum(map(len, captions))
    long_corpus = make_corpus(args.captions, seed=args.seed + 1, extra=2)
    long_captions = [c for c, _ in long_corpus]
    long_chars = sum(map(len, long_captions))
    _split_chunk(captions[:500])  # warm-up: regex caches, imports

    split_rate, split_times = _rate(lambda: _split_chunk(captions), len(captions), args.repeat)
    long_rate, _ = _rate(lambda: _split_chunk(long_captions), len(long_captions), args.repeat)
    refine_rate, _ = _rate(lambda: [refine_caption(c) for c in captions], len(captions), args.repeat)
    long_refine_rate, _ = _rate(lambda: [refine_caption(c) for c in long_captions], len(long_captions), args.repeat)

    procs = max(1, args.procs)
    chunks = [captions[i::procs] for i in range(procs)]
    with ProcessPoolExecutor(max_workers=procs) as pool:
        list(pool.map(_split_chunk, [c[:200] for c in chunks]))  # start and warm the workers
        multi_times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            assert sum(pool.map(_split_chunk, chunks)) == len(captions)
            multi_times.append(time.perf_counter() - t0)
    multi_rate = len(captions) / statistics.median(multi_times)

    worst = {}
    for name, text in adversarial_captions(args.long_chars).items():
        t0 = time.perf_counter()
        split_caption(text)
        t1 = time.perf_counter()
        refine_caption(text)
        worst[name] = {"split_s": round(t1 - t0, 4), "refine_s": round(time.perf_counter() - t1, 4)}

    exact = added = 0
    for caption, labels in corpus + long_corpus:
        result = split_caption(caption)
        exact += [p.label for p in result.panels] == labels
        added += bool(unsupported_words(" ".join(p.subcaption for p in result.panels), caption))

    checked = len(corpus) + len(long_corpus)
    result = {
        "captions": len(captions),
        "mean_chars": round(chars / len(captions), 1),
        "split_per_s_one_core": round(split_rate, 1),
        "split_seconds": [round(t, 3) for t in split_times],
        "split_chars_per_s_one_core": round(split_rate * chars / len(captions)),
        "long_mean_chars": round(long_chars / len(long_captions), 1),
        "split_per_s_one_core_long": round(long_rate, 1),
        "refine_per_s_one_core": round(refine_rate, 1),
        "refine_per_s_one_core_long": round(long_refine_rate, 1),
        "procs": procs,
        "split_per_s_total": round(multi_rate, 1),
        "split_per_s_per_core": round(multi_rate / procs, 1),
        "scaling_efficiency": round(multi_rate / procs / split_rate, 3),
        "target_per_s_per_core": 5000,
        "meets_target": split_rate >= 5000,
        "meets_target_long": long_rate >= 5000,
        "long_captions_chars": args.long_chars,
        "long_captions": worst,
        "worst_long_split_s": max(v["split_s"] for v in worst.values()),
        "worst_long_refine_s": max(v["refine_s"] for v in worst.values()),
        "generated_labels_exact": round(exact / checked, 4),
        "captions_with_added_words": added,
    }
    report = "\n".join([
        f"splitter: {len(captions):,} generated compound captions (mean {result['mean_chars']:.0f} chars), "
        f"median of {args.repeat}",
        f"  split   one process: {split_rate:,.0f} captions/s = per core   (target >= 5,000: "
        f"{'met' if result['meets_target'] else 'NOT met'}; {result['split_chars_per_s_one_core'] / 1e6:.1f}M chars/s)",
        f"  split   one process, longer captions (mean {result['long_mean_chars']:.0f} chars): "
        f"{long_rate:,.0f} captions/s = per core (target: {'met' if result['meets_target_long'] else 'NOT met'})",
        f"  split   {procs} processes: {multi_rate:,.0f} captions/s total, {multi_rate / procs:,.0f} per core "
        f"({result['scaling_efficiency']:.2f} of the one-process rate)",
        f"  refine  one process: {refine_rate:,.0f} captions/s ({long_refine_rate:,.0f} on the longer ones)",
        f"  {len(worst)} adversarial captions of {args.long_chars:,} chars: worst split "
        f"{result['worst_long_split_s'] * 1000:.0f} ms, worst refine {result['worst_long_refine_s'] * 1000:.0f} ms",
        f"  sanity (synthetic, not a quality measure): labels found exactly in {exact / checked:.1%} of the "
        f"{checked:,} generated captions; sub-captions with a word not in their caption: {added}",
    ])
    return result, report


SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[dict[str, Any], str]]] = {
    "splitter": splitter_section,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    parser.add_argument("--captions", type=int, default=50_000, help="generated captions (default 50,000)")
    parser.add_argument("--procs", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes for the multi-process rate (default: min(4, CPUs))")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the median is reported")
    parser.add_argument("--long-chars", type=int, default=50_000, help="length of the adversarial captions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    for name in names:
        result, report = SECTIONS[name](args)
        results[name] = result
        print(report, flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
