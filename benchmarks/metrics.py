"""Every metric the suite reports, offline, with the convention behind each stated.

Classification: top-1 accuracy, balanced accuracy (mean per-class recall, CONCH's choice) and
support-weighted F1 (PLIP's choice) from scikit-learn, always all three.

Retrieval: Recall@K in both directions with the correct pair on the diagonal, computed in chunks of
queries so memory is ``chunk x N``, never ``N x N`` (:func:`retrieval_ranks`).

VQA: closed-ended accuracy by the LLaVA-Med/Quilt-LLaVA keyword rule and by a strict rule;
open-ended token recall (LLaVA-Med), exact match, token F1 (SQuAD-style) and sentence BLEU-1/2/3
(nltk, the n-gram order's weight alone, no smoothing, as LLaVA-Med's ``run_eval.py``); nltk's BLEU
is used rather than sacrebleu because sacrebleu is a corpus metric with cumulative n-gram weights
and would not reproduce the numbers these papers report.

Multiple choice: a letter parser after MMMU/PathMMU with a seeded random fallback.

Compound-caption splitting: panel precision, recall and F1 with a word-F1 match of sub-captions
(:func:`split_scores`), shared with ``benchmarks/perf/split_quality.py``.

Confidence intervals: percentile bootstrap over items (:func:`bootstrap_ci`).
"""

from __future__ import annotations

import random
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

# --- classification ---------------------------------------------------------------------------


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], n_classes: Optional[int] = None) -> dict[str, float]:
    """Top-1 accuracy, balanced accuracy and weighted F1 (all three, always).

    Balanced accuracy averages recall over the classes present in ``y_true`` (scikit-learn's
    definition); weighted F1 weights each class's F1 by its support in ``y_true``.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) == 0:
        raise ValueError("no items to score")
    import warnings

    with warnings.catch_warnings():
        # a class never predicted has an undefined precision: scored 0, as scikit-learn's default
        warnings.simplefilter("ignore")
        return {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        }


def auroc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve of binary labels (1 = positive)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(y_true), np.asarray(scores, dtype=float)))


# --- retrieval --------------------------------------------------------------------------------


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = np.unique(np.nonzero(~np.isfinite(x))[0])
        raise ValueError(f"{len(bad)} embedding row(s) hold NaN or infinite values (first rows: {bad[:5].tolist()})")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.nonzero(norms[:, 0] == 0)[0]
    if len(zero):
        raise ValueError(f"{len(zero)} embedding row(s) are all zeros (first rows: {zero[:5].tolist()})")
    return x / norms


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """1-based rank of the correct gallery item (the one with the query's index) for each query.

    Rank = 1 + the number of gallery items scored strictly higher than the correct one (ties in
    the model's favour, so a constant model scores rank 1 everywhere only if every score ties; a
    NaN anywhere is refused instead). Embeddings are L2-normalised here; similarity is cosine.
    Memory is ``chunk x len(gallery)`` floats at a time.

    Raises:
        ValueError: shapes differ, or NaN/infinite/zero rows.
    """
    q = _normalize(queries)
    g = _normalize(gallery)
    if q.shape != g.shape:
        raise ValueError(f"queries {q.shape} and gallery {g.shape} must pair one to one")
    n = len(q)
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = q[start:stop] @ g.T  # (chunk, N)
        correct = sims[np.arange(stop - start), np.arange(start, stop)]
        ranks[start:stop] = 1 + (sims > correct[:, None]).sum(axis=1)
    return ranks


def retrieval_ranks_full(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """The same ranks from the whole similarity matrix at once (the reference, O(N^2) memory)."""
    q = _normalize(queries)
    g = _normalize(gallery)
    sims = q @ g.T
    correct = np.diag(sims)
    return 1 + (sims > correct[:, None]).sum(axis=1)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10, 50)) -> dict[int, float]:
    """Share of queries whose correct item ranks within the top k."""
    ranks = np.asarray(ranks)
    return {k: float((ranks <= k).mean()) for k in ks}


# --- text normalisation -----------------------------------------------------------------------

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: Optional[str]) -> str:
    """Lower-case, NFKC, punctuation replaced by spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def tokens(text: Optional[str]) -> list[str]:
    return normalize_answer(text).split()


# --- VQA closed -------------------------------------------------------------------------------

_YES_NO = ("yes", "no")


def closed_keyword(prediction: str, answer: str) -> float:
    """LLaVA-Med/Quilt-LLaVA rule: 1 when the reference answer occurs as a substring of the
    lower-cased prediction. Lenient by design of those scripts: "no" inside "not", "know" or
    "unknown" counts, and "yes and no" is right whatever the reference."""
    return float(normalize_answer(answer) in (prediction or "").lower())


def closed_strict(prediction: str, answer: str) -> float:
    """Strict rule: the prediction's first word is the reference word and the other yes/no word
    does not occur as a word anywhere in it. For non-yes/no references: normalised exact match."""
    ref = normalize_answer(answer)
    words = tokens(prediction)
    if ref not in _YES_NO:
        return float(" ".join(words) == ref)
    other = "no" if ref == "yes" else "yes"
    return float(bool(words) and words[0] == ref and other not in words)


# --- VQA open ---------------------------------------------------------------------------------


def _recall_tokens(pred: list[str], ref: list[str]) -> float:
    if not ref:
        return 0.0
    left = Counter(pred)
    hit = 0
    for w in ref:
        if left[w] > 0:
            hit += 1
            left[w] -= 1
    return hit / len(ref)


def _f1_tokens(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def _bleu_tokens(pred: list[str], ref: list[str], n: int) -> float:
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    if not pred or not ref:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns for every zero n-gram count
        return float(sentence_bleu([ref], pred, weights=_BLEU_WEIGHTS[n]))


def token_recall(prediction: str, answer: str) -> float:
    """LLaVA-Med's open-ended recall: share of the reference's words found among the prediction's
    words (each reference word counted once per occurrence, with multiplicity)."""
    return _recall_tokens(tokens(prediction), tokens(answer))


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(answer))


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD-style token F1 on normalised words (0 when either side is empty, 1 when both are)."""
    return _f1_tokens(tokens(prediction), tokens(answer))


_BLEU_WEIGHTS = {1: (1, 0, 0, 0), 2: (0, 1, 0, 0), 3: (0, 0, 1, 0)}


def bleu_n(prediction: str, answer: str, n: int) -> float:
    """Sentence BLEU with only the n-gram order's weight (LLaVA-Med's BLEU-1/2/3), nltk, no smoothing."""
    return _bleu_tokens(tokens(prediction), tokens(answer), n)


OPEN_METRICS: dict[str, Callable[[str, str], float]] = {
    "open_token_recall": token_recall,
    "exact_match": exact_match,
    "token_f1": token_f1,
    "bleu_1": lambda p, a: bleu_n(p, a, 1),
    "bleu_2": lambda p, a: bleu_n(p, a, 2),
    "bleu_3": lambda p, a: bleu_n(p, a, 3),
}
CLOSED_METRICS: dict[str, Callable[[str, str], float]] = {
    "closed_accuracy_keyword": closed_keyword,
    "closed_accuracy_strict": closed_strict,
}
# the same metrics on pre-normalised inputs: (pred words, ref words, pred lower-cased raw, ref normalised)
_ON_TOKENS: dict[str, Callable[[list[str], list[str], str, str], float]] = {
    "open_token_recall": lambda p, r, raw, ref: _recall_tokens(p, r),
    "exact_match": lambda p, r, raw, ref: float(p == r),
    "token_f1": lambda p, r, raw, ref: _f1_tokens(p, r),
    "bleu_1": lambda p, r, raw, ref: _bleu_tokens(p, r, 1),
    "bleu_2": lambda p, r, raw, ref: _bleu_tokens(p, r, 2),
    "bleu_3": lambda p, r, raw, ref: _bleu_tokens(p, r, 3),
    "closed_accuracy_keyword": lambda p, r, raw, ref: float(ref in raw),
    "closed_accuracy_strict": lambda p, r, raw, ref: _strict_tokens(p, ref),
}


def _strict_tokens(words: list[str], ref: str) -> float:
    if ref not in _YES_NO:
        return float(" ".join(words) == ref)
    other = "no" if ref == "yes" else "yes"
    return float(bool(words) and words[0] == ref and other not in words)


def score_vqa(predictions: Sequence[str], answers: Sequence[str], metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-item scores of each named VQA metric (closed or open), as float arrays.

    Batched: each prediction and answer is normalised and split once for all metrics, and the
    n-grams of a pair are counted once for BLEU-1/2/3 (the per-item functions redo both for every
    metric); the values are identical.
    """
    unknown = [m for m in metrics if m not in _ON_TOKENS]
    if unknown:
        raise ValueError(f"unknown VQA metric(s) {unknown}; known: {sorted(_ON_TOKENS)}")
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    out = {m: np.empty(len(answers)) for m in metrics}
    bleus = [m for m in metrics if m.startswith("bleu_")]
    fns = [(m, _ON_TOKENS[m]) for m in metrics if m not in bleus]
    orders = [int(m[-1]) for m in bleus]
    for i, (p, a) in enumerate(zip(predictions, answers)):
        ref = normalize_answer(a)
        pw, rw, raw = normalize_answer(p).split(), ref.split(), (p or "").lower()
        for m, fn in fns:
            out[m][i] = fn(pw, rw, raw, ref)
        if bleus:
            for m, v in zip(bleus, _bleu_orders(pw, rw, orders)):
                out[m][i] = v
    return out


def _bleu_orders(pred: list[str], ref: list[str], orders: list[int]) -> list[float]:
    """Several BLEU-n of one pair from one set of n-gram counts: nltk's ``sentence_bleu`` with a list
    of weight tuples counts the n-grams once (one call per order counts them again each time)."""
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    if not pred or not ref:
        return [0.0] * len(orders)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = sentence_bleu([ref], pred, weights=[_BLEU_WEIGHTS[n] for n in orders])
    return [float(x) for x in (scores if isinstance(scores, list) else [scores])]


def score_vqa_one_by_one(predictions: Sequence[str], answers: Sequence[str], metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """The same scores through the per-item public functions (the reference :func:`score_vqa` is
    tested and benchmarked against)."""
    fns = {**OPEN_METRICS, **CLOSED_METRICS}
    return {m: np.array([fns[m](p, a) for p, a in zip(predictions, answers)], dtype=float) for m in metrics}


# --- multiple choice --------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedChoice:
    letter: str
    method: str  # "letter", "text" or "random"


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def parse_choice(response: str, options: Sequence[str], rng: random.Random) -> ParsedChoice:
    """The option a free-text response picks (after MMMU's ``parse_multi_choice_response``).

    In order: a bracketed letter "(B)"; a letter standing alone ("B", "B.", "B:", "answer: B");
    else the text of an option found in the response (the last mentioned wins, as in MMMU); else a
    random letter drawn from ``rng`` (PathMMU/MMMU seed it with 42 once per run).
    """
    choices = letters(len(options))
    text = " " + (response or "").strip() + " "
    found: list[tuple[int, str]] = []
    for c in choices:
        for pattern in (f"({c})", f"[{c}]"):
            idx = text.rfind(pattern)
            if idx >= 0:
                found.append((idx, c))
    if not found:
        for c in choices:
            m = None
            for m in re.finditer(rf"(?<![A-Za-z]){c}(?=[\s.,:;)\]]|$)", text):
                pass
            if m is not None:
                found.append((m.start(), c))
    if found:
        return ParsedChoice(max(found)[1], "letter")
    lower = text.lower()
    hits = [(lower.rfind(normalize_answer(o)), c) for c, o in zip(choices, options) if normalize_answer(o)]
    hits = [h for h in hits if h[0] >= 0]
    if hits:
        return ParsedChoice(max(hits)[1], "text")
    return ParsedChoice(rng.choice(choices), "random")


def answer_letter(answer: str, options: Sequence[str]) -> str:
    """The reference as a letter: a letter as given, or the option whose text it equals.

    Raises:
        ValueError: neither a valid letter nor the text of an option.
    """
    choices = letters(len(options))
    a = (answer or "").strip()
    if a.upper().strip("().") in choices and len(a.strip("().")) == 1:
        return a.upper().strip("().")
    norm = normalize_answer(a)
    for c, o in zip(choices, options):
        if normalize_answer(o) == norm:
            return c
    raise ValueError(f"answer {answer!r} is neither a letter of {choices} nor the text of an option")


# --- compound-caption splitting (component task caption_split_f1) -----------------------------
# The one scoring of a caption splitter: `pathasst bench run --task caption_split_f1` and the
# split-quality benchmark (benchmarks/perf/split_quality.py) both call these.


def word_f1(a: str, b: str) -> float:
    """F1 of the multisets of words of two texts (1.0 for two empty texts).

    Words are those of the faithfulness check (:func:`pathasst.dataset_builders.curate.captions.words`):
    case-folded runs of letters and runs of digits.
    """
    from pathasst.dataset_builders.curate.captions import words

    wa, wb = Counter(words(a)), Counter(words(b))
    if not wa and not wb:
        return 1.0
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    p, r = common / sum(wa.values()), common / sum(wb.values())
    return 2 * p * r / (p + r)


def _panel_key(label: Optional[str]) -> Optional[str]:
    return None if label is None else label.strip().strip("()").casefold()


def match_panels(pred: Sequence[tuple[Optional[str], str]], gold: Sequence[tuple[Optional[str], str]],
                 threshold: float = 0.8) -> dict[str, int]:
    """Counts for one caption: ``tp``, ``pred``, ``gold`` and ``label_tp``.

    A predicted ``(label, sub-caption)`` panel is a true positive when an unused gold panel has the
    same label (case-insensitive, parentheses stripped) and the best such panel's sub-caption has a
    :func:`word_f1` of at least ``threshold`` with it. ``label_tp`` counts labels alone (multiset
    intersection).
    """
    used: set[int] = set()
    tp = 0
    for label, text in pred:
        best, best_j = -1.0, None
        for j, (g_label, g_text) in enumerate(gold):
            if j in used or _panel_key(g_label) != _panel_key(label):
                continue
            score = word_f1(text, g_text)
            if score > best:
                best, best_j = score, j
        if best_j is not None and best >= threshold:
            used.add(best_j)
            tp += 1
    pred_labels = Counter(_panel_key(label) for label, _ in pred)
    gold_labels = Counter(_panel_key(label) for label, _ in gold)
    return {"tp": tp, "pred": len(pred), "gold": len(gold),
            "label_tp": sum((pred_labels & gold_labels).values())}


def prf(tp: int, pred: int, gold: int) -> dict[str, float]:
    """Precision (over ``pred``), recall (over ``gold``) and F1, rounded to 4 places; 0 when undefined."""
    p = tp / pred if pred else 0.0
    r = tp / gold if gold else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def split_scores(predictions: dict[str, list[tuple[Optional[str], str]]], gold: Sequence[dict],
                 threshold: float = 0.8) -> dict:
    """Panel P/R/F1 (micro-averaged over captions), label P/R/F1 and exact-caption count.

    Args:
        predictions: caption id -> predicted ``(label, sub-caption)`` panels (a missing id: none).
        gold: ``[{"id", "panels": [(label, sub-caption)]}]``, the hand splits.
        threshold: the :func:`word_f1` a sub-caption needs to match.
    """
    totals: Counter = Counter()
    exact = 0
    for item in gold:
        counts = match_panels(predictions.get(item["id"], []), item["panels"], threshold)
        totals.update(counts)
        exact += counts["tp"] == counts["gold"] == counts["pred"]
    return {"panel": prf(totals["tp"], totals["pred"], totals["gold"]),
            "label": prf(totals["label_tp"], totals["pred"], totals["gold"]),
            "exact_captions": exact, "captions": len(gold), "panels_gold": totals["gold"],
            "panels_pred": totals["pred"]}


# --- confidence intervals ---------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    n: int


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """Percentile bootstrap over items: ``statistic(indices)`` on ``n_boot`` resamples of ``range(n)``.

    ``stderr`` is the standard deviation of the bootstrap distribution. With one item the interval
    is undefined and left None.
    """
    value = float(statistic(np.arange(n)))
    if n < 2 or n_boot <= 0:
        return Estimate(value, None, None, None, n)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        stats[b] = statistic(rng.integers(0, n, n))
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(stats.std(ddof=1)), float(lo), float(hi), n)


def mean_ci(scores: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Bootstrap CI of a mean of per-item scores (vectorised: one resample matrix per 100 draws)."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    value = float(scores.mean()) if n else float("nan")
    if n < 2 or n_boot <= 0:
        return Estimate(value, None, None, None, n)
    rng = np.random.default_rng(seed)
    means = np.concatenate([scores[rng.integers(0, n, (min(100, n_boot - s), n))].mean(axis=1)
                            for s in range(0, n_boot, 100)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    return Estimate(value, float(means.std(ddof=1)), float(lo), float(hi), n)
