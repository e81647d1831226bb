"""The native runner: scores one model on one task and returns per-item details and metric estimates.

Every kind follows the task file alone: zero-shot builds one text embedding per class from the
prompt ensemble; retrieval ranks both directions in bounded memory; VQA and multiple choice send the
task's prompt template through the adapter (the same text for a local model and an endpoint) and
score with the metrics named in the task. Each metric gets a percentile-bootstrap 95% CI over items.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from pathasst.benchmarks import metrics as M
from pathasst.benchmarks.data import EvalData, label_names, label_strings, readable_name
from pathasst.errors import InputError, PathasstError

log = logging.getLogger(__name__)


class EmptyPredictionsError(PathasstError):
    """Every prediction of a generative model was empty: nothing meaningful to score."""

    exit_code = 4


@dataclass
class RunOutput:
    estimates: dict[str, M.Estimate]
    details: list[dict[str, Any]]
    counts: dict[str, Any] = field(default_factory=dict)


def _images(ds, column: str, start: int, stop: int):
    return [im.convert("RGB") for im in ds[start:stop][column]]


# --- classification statistics for the bootstrap (numpy; sklearn per resample is too slow) -----


def _cls_stats(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> dict[str, float]:
    """accuracy, balanced accuracy, weighted F1 from one confusion matrix (same definitions as
    :func:`metrics.classification_metrics`; a test checks they agree)."""
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(k), where=present)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    n = support.sum()
    return {
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(recall[present].mean()),
        "weighted_f1": float((f1 * support).sum() / n),
    }


def _cls_estimates(y_true, y_pred, k, names, n_boot, seed) -> dict[str, M.Estimate]:
    rng = np.random.default_rng(seed)
    n = len(y_true)
    point = M.classification_metrics(y_true, y_pred)
    boots = {m: [] for m in names}
    if n >= 2:
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            stats = _cls_stats(y_true[idx], y_pred[idx], k)
            for m in names:
                boots[m].append(stats[m])
    out = {}
    for m in names:
        b = np.asarray(boots[m])
        if len(b):
            lo, hi = np.quantile(b, [0.025, 0.975])
            out[m] = M.Estimate(point[m], float(b.std(ddof=1)), float(lo), float(hi), n)
        else:
            out[m] = M.Estimate(point[m], None, None, None, n)
    return out


# --- kinds ------------------------------------------------------------------------------------


def class_texts(task, data: EvalData, class_names: Optional[dict[str, list[str]]] = None):
    """``(labels, names per label)`` of a zero-shot task: from the task file, or from the data
    (generic tasks), with ``class_names`` overriding the names of any label."""
    col = task.columns["label"]
    if task.classes is not None:
        labels = [c.label for c in task.classes]
        names = {c.label: list(c.names) for c in task.classes}
    else:
        labels = label_names(data.ds, col) or sorted(set(label_strings(data.ds, col)))
        names = {lab: [readable_name(lab)] for lab in labels}
    for lab, alt in (class_names or {}).items():
        if lab not in names:
            raise InputError(f"--class-names names label '{lab}', which the task's data does not have "
                             f"(labels: {', '.join(labels)})")
        names[lab] = [alt] if isinstance(alt, str) else list(alt)
    return labels, names


def run_zeroshot(task, adapter, data: EvalData, *, batch_size=32, n_boot=1000, seed=0, class_names=None) -> RunOutput:
    labels, names = class_texts(task, data, class_names)
    index = {lab: i for i, lab in enumerate(labels)}
    truth = label_strings(data.ds, task.columns["label"])
    unknown = sorted(set(truth) - set(index))
    if unknown:
        raise InputError(f"task {task.name}: the data's labels {unknown[:10]} are not classes of the task "
                         f"({', '.join(labels)}); a relabelled copy? pass --class-names or use zeroshot_folder")
    class_emb = []
    for lab in labels:
        prompts = [t.format(n) for n in names[lab] for t in task.templates]
        e = adapter.encode_texts(prompts).mean(axis=0)
        class_emb.append(e / np.linalg.norm(e))
    class_emb = np.stack(class_emb)
    col = task.columns["image"]
    preds, scores = [], []
    for start in range(0, len(data.ds), batch_size):
        img = adapter.encode_images(_images(data.ds, col, start, start + batch_size))
        sims = img @ class_emb.T
        preds.extend(sims.argmax(axis=1).tolist())
        scores.extend(sims.max(axis=1).tolist())
    y_true = np.array([index[t] for t in truth])
    y_pred = np.array(preds)
    details = [{"id": i, "label": t, "prediction": labels[p], "score": round(float(s), 6)}
               for i, t, p, s in zip(data.ids, truth, preds, scores)]
    est = _cls_estimates(y_true, y_pred, len(labels), list(task.metrics), n_boot, seed)
    return RunOutput(est, details, {"classes": len(labels), "prompts_per_class": {l: len(names[l]) * len(task.templates) for l in labels}})


def run_retrieval(task, adapter, data: EvalData, *, batch_size=32, n_boot=1000, seed=0, chunk=1024) -> RunOutput:
    img_col, txt_col = task.columns["image"], task.columns["text"]
    texts = [str(t) for t in data.ds[txt_col]]
    empty = [data.ids[i] for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise InputError(f"task {task.name}: {len(empty)} rows have an empty '{txt_col}' (first ids: {empty[:5]})")
    img, txt = [], []
    for start in range(0, len(texts), batch_size):
        img.append(adapter.encode_images(_images(data.ds, img_col, start, start + batch_size)))
        txt.append(adapter.encode_texts(texts[start:start + batch_size]))
    img, txt = np.concatenate(img), np.concatenate(txt)
    i2t = M.retrieval_ranks(img, txt, chunk=chunk)
    t2i = M.retrieval_ranks(txt, img, chunk=chunk)
    est = {}
    for m in task.metrics:
        direction, k = m.split("_recall@")
        ranks = i2t if direction == "i2t" else t2i
        est[m] = M.mean_ci((ranks <= int(k)).astype(float), n_boot=n_boot, seed=seed)
    pair = (img * txt).sum(axis=1)
    details = [{"id": i, "label": t[:200], "prediction": {"i2t_rank": int(a), "t2i_rank": int(b)},
                "score": round(float(s), 6)} for i, t, a, b, s in zip(data.ids, texts, i2t, t2i, pair)]
    return RunOutput(est, details, {"pairs": len(texts)})


def _generate_all(task, adapter, data: EvalData, prompts: list[str]) -> list[str]:
    gen = task.raw.get("generation") or {}
    max_new = int(gen.get("max_new_tokens", 32))
    col = task.columns["image"]
    out = []
    for i, prompt in enumerate(prompts):
        image = data.ds[i][col]
        out.append(adapter.generate(image, prompt, max_new_tokens=max_new))
    return out


def _check_empty(task, adapter, predictions: list[str], details: list[dict]) -> int:
    empty = sum(1 for p in predictions if not p.strip())
    if empty == len(predictions):
        raise EmptyPredictionsError(
            f"model {adapter.model_id} returned an empty answer for all {len(predictions)} items of {task.name}: "
            "check its chat template, its generation settings and that it was trained to answer; "
            "the per-item details were written, no score was recorded")
    if empty:
        log.warning("model %s returned an empty answer for %d of %d items (scored as wrong)",
                    adapter.model_id, empty, len(predictions))
    return empty


def run_vqa(task, adapter, data: EvalData, *, n_boot=1000, seed=0, on_details=None) -> RunOutput:
    cols = task.columns
    template = task.raw["prompt"]["template"]
    questions = [str(q) for q in data.ds[cols["question"]]]
    answers = [str(a) for a in data.ds[cols["answer"]]]
    prompts = [template.format(question=q) for q in questions]
    predictions = _generate_all(task, adapter, data, prompts)
    scores = M.score_vqa(predictions, answers, list(task.metrics))
    details = [{"id": i, "label": a, "prediction": p, "score": {m: float(scores[m][k]) for m in task.metrics}}
               for k, (i, a, p) in enumerate(zip(data.ids, answers, predictions))]
    if on_details:
        on_details(details)
    empty = _check_empty(task, adapter, predictions, details)
    est = {m: M.mean_ci(scores[m], n_boot=n_boot, seed=seed) for m in task.metrics}
    return RunOutput(est, details, {"empty_predictions": empty})


def run_multiple_choice(task, adapter, data: EvalData, *, n_boot=1000, seed=0, on_details=None) -> RunOutput:
    cols = task.columns
    prompt_cfg = task.raw["prompt"]
    fmt = prompt_cfg.get("options_format", "{letter}. {text}")
    options = [list(o) for o in data.ds[cols["options"]]]
    bad = [data.ids[i] for i, o in enumerate(options) if len(o) < 2]
    if bad:
        raise InputError(f"task {task.name}: rows with fewer than 2 options in '{cols['options']}' (first ids: {bad[:5]})")
    refs = []
    for i, (a, o) in enumerate(zip(data.ds[cols["answer"]], options)):
        try:
            refs.append(M.answer_letter(str(a), o))
        except ValueError as exc:
            raise InputError(f"task {task.name}: row {data.ids[i]}: {exc}") from None
    prompts = [prompt_cfg["template"].format(
        question=q, options="\n".join(fmt.format(letter=L, text=t) for L, t in zip(M.letters(len(o)), o)))
        for q, o in zip(data.ds[cols["question"]], options)]
    predictions = _generate_all(task, adapter, data, prompts)
    parser = task.raw.get("parser") or {}
    rng = random.Random(int(parser.get("seed", 42)))  # one stream in dataset order, as PathMMU/MMMU
    parsed = [M.parse_choice(p, o, rng) for p, o in zip(predictions, options)]
    correct = np.array([float(c.letter == r) for c, r in zip(parsed, refs)])
    details = [{"id": i, "label": r, "prediction": c.letter, "score": float(s), "response": p, "parsed_by": c.method}
               for i, r, c, s, p in zip(data.ids, refs, parsed, correct, predictions)]
    if on_details:
        on_details(details)
    empty = _check_empty(task, adapter, predictions, details)
    fallback = sum(c.method == "random" for c in parsed)
    est = {"mc_accuracy": M.mean_ci(correct, n_boot=n_boot, seed=seed)}
    return RunOutput(est, details, {"empty_predictions": empty, "random_fallbacks": fallback,
                                    "random_fallback_rate": fallback / len(parsed)})


def run_selector(task, selector, data: EvalData, *, batch_size=32, n_boot=1000, seed=0) -> RunOutput:
    """``selector_auroc``: the selector's pathology score ranks positive-class images above the others
    (AUROC); accuracy, balanced accuracy and weighted F1 of the binary decision at 0.5."""
    positive = set(task.raw.get("positive_labels") or ["pathology"])
    truth = label_strings(data.ds, task.columns["label"])
    present = set(truth)
    if not present & positive or not present - positive:
        raise InputError(f"task {task.name}: the data needs images of a positive class ({', '.join(sorted(positive))}) "
                         f"and of another class; its labels are {', '.join(sorted(present))}")
    col = task.columns["image"]
    scores = []
    for start in range(0, len(data.ds), batch_size):
        scores.extend(float(v) for v in selector.score(_images(data.ds, col, start, start + batch_size)))
    s = np.asarray(scores)
    if not np.isfinite(s).all():
        raise InputError(f"selector {selector.source}: NaN scores for {int((~np.isfinite(s)).sum())} images")
    y = np.array([t in positive for t in truth], dtype=int)
    pred = (s >= 0.5).astype(int)
    est = _cls_estimates(y, pred, 2, [m for m in task.metrics if m != "auroc"], n_boot, seed)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):  # a resample holding one class has no AUROC: drawn again
            boots.append(M.auroc(y[idx], s[idx]))
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots else (None, None)
    est["auroc"] = M.Estimate(M.auroc(y, s), float(np.std(boots, ddof=1)) if len(boots) > 1 else None,
                              None if lo is None else float(lo), None if hi is None else float(hi), len(y))
    details = [{"id": i, "label": t, "prediction": "positive" if p else "negative", "score": round(v, 6)}
               for i, t, p, v in zip(data.ids, truth, pred, s)]
    return RunOutput(est, details, {"positive_labels": sorted(positive), "threshold": 0.5})


def run(task, adapter, data: EvalData, **kwargs) -> RunOutput:
    """Dispatch on the task's kind."""
    if task.kind == "zeroshot":
        return run_zeroshot(task, adapter, data, **{k: v for k, v in kwargs.items() if k in ("batch_size", "n_boot", "seed", "class_names")})
    if task.kind == "retrieval":
        return run_retrieval(task, adapter, data, **{k: v for k, v in kwargs.items() if k in ("batch_size", "n_boot", "seed", "chunk")})
    if task.kind in ("vqa_closed", "vqa_open"):
        return run_vqa(task, adapter, data, **{k: v for k, v in kwargs.items() if k in ("n_boot", "seed", "on_details")})
    if task.kind == "multiple_choice":
        return run_multiple_choice(task, adapter, data, **{k: v for k, v in kwargs.items() if k in ("n_boot", "seed", "on_details")})
    if task.kind == "component" and task.raw.get("component") == "selector":
        return run_selector(task, adapter, data, **{k: v for k, v in kwargs.items() if k in ("batch_size", "n_boot", "seed")})
    from pathasst.errors import NotLandedError

    raise NotLandedError(f"task {task.name} ({task.kind}: {task.raw.get('component')}) has no runner yet; "
                         "its metadata is registered so that results can be submitted and validated")


def check_runnable(task) -> None:
    """Raise :class:`NotLandedError` for a registered task without a runner, before any data is read."""
    from pathasst.benchmarks.components import COMPONENTS

    if task.kind == "component" and task.raw.get("component") not in ("selector", *COMPONENTS):
        from pathasst.errors import NotLandedError

        raise NotLandedError(f"task {task.name} ({task.raw.get('component')}) has no runner yet; the task is "
                             "registered so that results computed elsewhere can be submitted and validated")


def model_kind(task) -> str:
    if task.kind == "component":
        return str(task.raw.get("component"))
    return "embedding" if task.kind in ("zeroshot", "retrieval") else "generative"
