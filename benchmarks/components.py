"""Runners of the pipeline-component tasks ``subfig_map``, ``caption_split_f1`` and ``pdf_pairing``.

Each one calls the project's own evaluation of that component, never a second implementation:

- ``subfig_map``: :func:`pathasst.trainers.subfig.evaluate` (ultralytics' validator) gives mAP50
  and mAP50-95. While it runs, the validator's per-image matching statistics (true positives at the
  ten IoU thresholds, confidences, classes) are collected, and the 95% intervals resample images
  and recompute mAP with ultralytics' own ``ap_per_class`` on them.
- ``caption_split_f1``: a splitter (the rules of :func:`~pathasst.dataset_builders.curate.captions.split_caption`,
  or an LLM splitter through :class:`~pathasst.dataset_builders.curate.llm.LLMCaptioner`, as
  ``curate split --model`` runs it) scored by :func:`pathasst.benchmarks.metrics.split_scores`, the
  function ``benchmarks/perf/split_quality.py`` scores with; intervals resample captions.
- ``pdf_pairing``: the records ``extract pdf`` makes of each document
  (:func:`pathasst.benchmarks.perf.extract_quality.extract`), scored by that module's
  :func:`~pathasst.benchmarks.perf.extract_quality.score`; intervals resample documents.

Every runner returns the same :class:`~pathasst.benchmarks.runner.RunOutput` as the other kinds
(estimates, per-item details, counts) with the :class:`~pathasst.benchmarks.data.EvalData` and the
model's id and revision, so ``bench run`` writes the same results JSON and details JSONL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from pathasst.benchmarks import metrics as M
from pathasst.benchmarks.data import EvalData, folder_revision
from pathasst.benchmarks.runner import RunOutput
from pathasst.errors import ConfigError, InputError
from pathasst.inputs import file_sha256

log = logging.getLogger(__name__)

#: component name (a task file's ``component``) -> runner; ``selector`` runs in runner.py
COMPONENTS = ("subfig_detector", "caption_splitter", "pdf_figure_caption")


@dataclass
class ComponentRun:
    """A component task's outcome: what ``bench run`` records and prints."""

    output: RunOutput
    data: EvalData
    model_id: str
    model_revision: Optional[str]


def handles(task) -> bool:
    """Whether ``task`` is a component task this module runs."""
    return task.kind == "component" and task.raw.get("component") in COMPONENTS


def run_component(task, *, model: str, dataset: Optional[str], split: Optional[str], limit: Optional[int],
                  n_boot: int, seed: int, device: str, base_url: Optional[str], batch_size: int,
                  on_details: Optional[Callable[[list[dict]], None]] = None) -> ComponentRun:
    """Run the component task ``task`` (see the module docstring)."""
    component = task.raw.get("component")
    if component == "subfig_detector":
        return run_subfig(task, model, dataset, split=split, n_boot=n_boot, seed=seed, device=device,
                          batch_size=batch_size, limit=limit)
    if component == "caption_splitter":
        return run_caption_split(task, model, dataset, split=split, n_boot=n_boot, seed=seed, device=device,
                                 base_url=base_url, limit=limit, on_details=on_details)
    if component == "pdf_figure_caption":
        return run_pdf_pairing(task, model, dataset, n_boot=n_boot, seed=seed, limit=limit)
    raise ConfigError(f"task {task.name}: component {component!r} has no runner here (known: {', '.join(COMPONENTS)})")


# --- bootstrap of ratios of sums over clusters (captions, documents, images) ------------------------


def ratio_estimates(num: np.ndarray, den: np.ndarray, *, n_boot: int, seed: int, n: int,
                    f1_of: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> M.Estimate:
    """``sum(num) / sum(den)`` (0 when the sum of ``den`` is 0) with a percentile-bootstrap 95% CI
    that resamples the rows: the clusters (captions, documents) whose counts are summed.

    ``n`` is what the record reports: the number of rows, the unit the interval resamples. With
    ``f1_of = (tp, pred, gold)`` the statistic is the micro F1 of those sums instead.
    """
    def stat(idx: np.ndarray) -> float:
        if f1_of is not None:
            tp, pred, gold = (a[idx].sum() for a in f1_of)
            p = tp / pred if pred else 0.0
            r = tp / gold if gold else 0.0
            return 2 * p * r / (p + r) if p + r else 0.0
        d = den[idx].sum()
        return float(num[idx].sum() / d) if d else 0.0

    return dataclasses.replace(M.bootstrap_ci(len(num), stat, n_boot=n_boot, seed=seed), n=n)


def _pathasst_revision() -> str:
    from pathasst import __version__

    return f"pathasst-{__version__}"


# --- subfig_map ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _validator_stats() -> Iterator[list[dict[str, Any]]]:
    """Collect the per-image statistics of every ultralytics validation run inside the block.

    ultralytics' validator appends one entry per image to ``metrics.stats`` (``tp`` at the ten IoU
    thresholds, ``conf``, ``pred_cls``, ``target_cls``) and clears them after computing mAP; a
    batch-end callback copies each batch's new entries first. The callback is registered in
    ultralytics' default callbacks for the duration of the block, because
    :func:`~pathasst.trainers.subfig.evaluate` builds its model (and so its callbacks) itself.
    """
    from pathasst.ultralytics_offline import import_ultralytics

    import_ultralytics()
    from ultralytics.utils.callbacks import base

    images: list[dict[str, Any]] = []
    state: dict[str, Any] = {"done": 0, "validator": None}

    def on_val_batch_end(validator) -> None:
        if validator is not state["validator"]:  # a new validation run: its lists start empty
            state.update(done=0, validator=validator)
        stats = validator.metrics.stats
        n = len(stats["tp"])
        names = list(getattr(validator.metrics.box, "image_metrics", {}) or {})
        for i in range(state["done"], n):
            images.append({"name": names[i] if len(names) == n else f"image-{i:06d}",
                           **{k: np.asarray(stats[k][i]) for k in ("tp", "conf", "pred_cls", "target_cls")}})
        state["done"] = n

    base.default_callbacks["on_val_batch_end"].append(on_val_batch_end)
    try:
        yield images
    finally:
        base.default_callbacks["on_val_batch_end"].remove(on_val_batch_end)


def map_of(images: list[dict[str, Any]], idx: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(mAP50, mAP50-95) of the images ``idx`` (default: all), as ultralytics computes them: AP per
    class over the classes that have labels, then the mean."""
    from ultralytics.utils.metrics import ap_per_class

    chosen = [images[i] for i in (range(len(images)) if idx is None else idx)]
    cat = {k: np.concatenate([im[k] for im in chosen], 0) for k in ("tp", "conf", "pred_cls", "target_cls")}
    if not len(cat["target_cls"]):
        return 0.0, 0.0
    ap = ap_per_class(cat["tp"], cat["conf"], cat["pred_cls"], cat["target_cls"])[5]
    if not len(ap):
        return 0.0, 0.0
    return float(ap[:, 0].mean()), float(ap.mean())


#: confidence of the per-image detail lines (ultralytics' predict default): mAP itself uses every box
DETAIL_CONF = 0.25


def _image_detail(im: dict[str, Any]) -> dict[str, Any]:
    keep = im["conf"] >= DETAIL_CONF
    tp = int(im["tp"][keep, 0].sum()) if len(im["tp"]) else 0
    n_pred, n_gt = int(keep.sum()), int(len(im["target_cls"]))
    if n_pred == 0 and n_gt == 0:
        f1 = 1.0
    else:
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gt if n_gt else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"id": im["name"], "label": {"boxes": n_gt},
            "prediction": {"boxes": n_pred, "true_positives_iou50": tp, "boxes_any_conf": int(len(im["conf"]))},
            "score": round(f1, 6)}


def run_subfig(task, model: str, dataset: Optional[str], *, split: Optional[str], n_boot: int, seed: int,
               device: str, batch_size: int, limit: Optional[int]) -> ComponentRun:
    """``subfig_map``: mAP50 and mAP50-95 of a detector (``--model``: a ``.pt`` or a ``pathasst
    train subfig`` run folder) on a PathSubfig folder or YOLO data (``--dataset``)."""
    from pathasst.trainers.subfig import evaluate, resolve_checkpoint

    if not dataset:
        raise InputError(f"task {task.name} reads local data: pass --dataset with a PathSubfig dataset folder, a "
                         f"YOLO data.yaml or a folder holding one (download {task.dataset.get('id')} first)")
    if limit:
        raise ConfigError(f"--limit is not supported by {task.name}: ultralytics validates a whole split "
                          "(make a smaller YOLO split instead)")
    path = Path(dataset).expanduser()
    if not path.exists():
        raise InputError(f"--dataset {dataset}: no such file or folder")
    checkpoint = resolve_checkpoint(model, "--model")
    chosen = split or task.dataset.get("split") or "test"
    with _validator_stats() as images:
        result = evaluate(checkpoint, path, split=chosen, batch=batch_size, device=device)
    if not images:
        raise InputError(f"--dataset {dataset} [{chosen}]: ultralytics validated no image")
    map50, map50_95 = map_of(images)
    if abs(map50 - result["map50"]) > 1e-4 or abs(map50_95 - result["map50_95"]) > 1e-4:
        # the collected statistics are not the ones evaluate scored: no interval rather than a wrong one
        log.warning("per-image statistics give mAP50 %.6f / mAP50-95 %.6f, evaluate %.6f / %.6f: no CI reported",
                    map50, map50_95, result["map50"], result["map50_95"])
        boots = None
    else:
        boots = []
        if len(images) >= 2 and n_boot > 0:
            rng = np.random.default_rng(seed)
            boots = [map_of(images, rng.integers(0, len(images), len(images))) for _ in range(n_boot)]
    est = {}
    for j, metric in enumerate(("map50", "map50_95")):
        value = float(result[metric])
        if boots:
            b = np.array([x[j] for x in boots])
            lo, hi = np.quantile(b, [0.025, 0.975])
            # evaluate rounds to 6 places: keep the reported value inside its own interval
            est[metric] = M.Estimate(value, float(b.std(ddof=1)), float(min(lo, value)), float(max(hi, value)),
                                     len(images))
        else:
            est[metric] = M.Estimate(value, None, None, None, len(images))
    details = [_image_detail(im) for im in images]
    root = path if path.is_dir() else path.parent
    data = EvalData(ds=images, dataset_id=f"local:{root.resolve().name}", revision=folder_revision(root),
                    split=result["split"], ids=[d["id"] for d in details], n_total=result["images"])
    counts = {k: result[k] for k in ("images", "instances", "precision", "recall", "per_class", "imgsz", "conf", "iou")}
    counts["ci"] = ("percentile bootstrap over images, mAP recomputed with ultralytics' ap_per_class"
                    if boots else "none (fewer than 2 images, --bootstrap 0, or statistics that disagree)")
    counts["detail_conf"] = DETAIL_CONF
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "weights" else checkpoint.parent
    model_id = f"{run_dir.name}/{checkpoint.name}"
    return ComponentRun(RunOutput(est, details, counts), data, model_id, "sha256:" + file_sha256(checkpoint)[:12])


# --- caption_split_f1 ------------------------------------------------------------------------------


def packaged_data(task) -> Optional[Path]:
    """The file a task's ``dataset.packaged`` names (``package:relative/path``), shipped with pathasst."""
    ref = task.dataset.get("packaged")
    if not ref:
        return None
    package, _, rel = str(ref).partition(":")
    return Path(str(resources.files(package))) / rel


def caption_rows(path: Path) -> list[dict[str, Any]]:
    """Hand-split captions in the format of ``real_compound_captions.yaml`` as the task's columns:
    ``[{"id", "caption", "sub_captions": [{"label", "text"}, ...]}]``.

    Raises:
        InputError: unreadable file, or an entry without caption or panels.
    """
    from pathasst.benchmarks.perf.split_quality import load_heldout

    try:
        items = load_heldout(path)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"--dataset {path}: not a hand-split captions file ({type(exc).__name__}: {exc}); "
                         "expected captions: [{id, caption, panels: [[label, sub-caption], ...]}]") from None
    return [{"id": it["id"], "caption": it["caption"],
             "sub_captions": [{"label": lab, "text": text} for lab, text in it["panels"]]} for it in items]


def _panels(value: Any, where: str) -> list[tuple[Optional[str], str]]:
    """A row's ``sub_captions`` as ``(label, text)`` pairs: ``{label, text}`` mappings or pairs."""
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{where}: sub_captions must be a list of {{label, text}} (got {type(value).__name__})")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and ("text" in item or "subcaption" in item):
            label, text = item.get("label"), item.get("text", item.get("subcaption"))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            label, text = item
        else:
            raise InputError(f"{where}: sub_captions[{i}] must be {{label, text}} or [label, text] (got {item!r:.80})")
        out.append((None if label is None else str(label), str(text or "")))
    if not out:
        raise InputError(f"{where}: sub_captions is empty (a caption needs its hand split)")
    return out


class _Splitter:
    """``--model`` of caption_split_f1: ``rules``, a splitter model folder (``pathasst train
    splitter``), or ``endpoint:MODEL`` with ``--base-url`` (the endpoint and model that ``curate split
    model=URL endpoint_model=MODEL`` takes)."""

    def __init__(self, spec: str, base_url: Optional[str], device: str) -> None:
        self.spec = spec
        self.captioner = None
        if spec == "rules":
            self.model_id, self.revision = "rules", _pathasst_revision()
            return
        from pathasst.dataset_builders.curate.llm import LLMCaptioner, LLMSettings, is_endpoint

        if spec.startswith("endpoint:"):
            if not base_url:
                raise ConfigError(f"--model {spec}: an endpoint splitter needs --base-url (the API root, .../v1)")
            settings = LLMSettings(model=base_url, endpoint_model=spec[len("endpoint:"):])
            self.model_id, self.revision = spec, None
        elif is_endpoint(spec):
            raise ConfigError(f"--model {spec}: name the model the endpoint serves: --model endpoint:NAME --base-url {spec}")
        else:
            folder = Path(spec).expanduser()
            if not folder.is_dir():
                raise InputError(f"--model {spec}: not 'rules', a splitter model folder or an endpoint URL")
            from pathasst.benchmarks.adapters import folder_fingerprint

            settings = LLMSettings(model=str(folder))
            self.model_id, self.revision = folder.resolve().name, folder_fingerprint(folder)
        # the settings split_quality evaluates with; the rules answer a failed caption (counted), and
        # the task's metrics score the model alone (see run_caption_split)
        settings.max_new_tokens, settings.timeout_s, settings.max_prompt_chars = 1024, 300.0, 8000
        settings.device = device
        self.captioner = LLMCaptioner(settings)

    def split(self, caption: str) -> tuple[list[tuple[Optional[str], str]], list[tuple[Optional[str], str]], dict]:
        """(panels of the model alone, panels as the pipeline uses them, info)."""
        from pathasst.dataset_builders.curate.captions import split_caption

        if self.captioner is None:
            panels = [(p.label, p.subcaption) for p in split_caption(caption).panels]
            return panels, panels, {"status": "rules"}
        answer = self.captioner.split(caption)
        panels = [(p.label, p.subcaption) for p in answer.value.panels] if answer.value is not None else []
        return (panels if answer.used_llm else []), panels, {"status": answer.info.get("status"),
                                                              "reason": answer.info.get("reason")}


#: word F1 a predicted sub-caption needs to match a hand-split one (split_quality's default)
DEFAULT_MATCH = 0.8


def run_caption_split(task, model: str, dataset: Optional[str], *, split: Optional[str], n_boot: int, seed: int,
                      device: str, base_url: Optional[str], limit: Optional[int],
                      on_details: Optional[Callable[[list[dict]], None]] = None) -> ComponentRun:
    """``caption_split_f1``: sub-caption precision, recall and F1 of a splitter.

    Data: ``--dataset`` a dataset folder with the task's columns (``caption``; ``sub_captions`` a
    list of ``{label, text}``; optional ``id``), or a YAML file in the hand-split format; without
    it, the task's packaged file (the real hand-split captions shipped with pathasst).
    """
    threshold = float(task.raw.get("match_threshold", DEFAULT_MATCH))
    cols = task.columns
    if dataset and not Path(dataset).expanduser().is_dir():
        path = Path(dataset).expanduser()
        if not path.is_file():
            raise InputError(f"--dataset {dataset}: no such file or folder")
        rows = caption_rows(path)
        data = EvalData(ds=rows, dataset_id=f"local:{path.name}", revision="sha256:" + file_sha256(path)[:12],
                        split=task.dataset.get("split") or "test", ids=[r["id"] for r in rows], n_total=len(rows))
    elif dataset:
        from pathasst.benchmarks.data import load_eval_data

        ev = load_eval_data(task, dataset, split=split)
        rows = []
        for i, row in enumerate(ev.ds):
            rows.append({"id": ev.ids[i], "caption": str(row[cols["caption"]] or ""),
                         "sub_captions": row[cols["sub_captions"]]})
        data = EvalData(ds=rows, dataset_id=ev.dataset_id, revision=ev.revision, split=ev.split, ids=ev.ids,
                        n_total=ev.n_total)
    else:
        path = packaged_data(task)
        if path is None:
            raise InputError(f"task {task.name}: pass --dataset (a folder with columns caption and sub_captions)")
        rows = caption_rows(path)
        data = EvalData(ds=rows, dataset_id=f"pathasst:{path.stem}", revision="sha256:" + file_sha256(path)[:12],
                        split=task.dataset.get("split") or "test", ids=[r["id"] for r in rows], n_total=len(rows))
    if limit:
        data.ds, data.ids = data.ds[:limit], data.ids[:limit]
    gold = [{"id": r["id"], "panels": _panels(r["sub_captions"], f"{data.dataset_id} row {r['id']}")} for r in data.ds]
    empty = [r["id"] for r in data.ds if not r["caption"].strip()]
    if empty:
        raise InputError(f"task {task.name}: {len(empty)} rows have an empty caption (first ids: {empty[:5]})")
    splitter = _Splitter(model, base_url, device)
    alone, used, details = {}, {}, []
    for k, (row, g) in enumerate(zip(data.ds, gold), 1):
        pred_alone, pred_used, info = splitter.split(row["caption"])
        alone[row["id"]], used[row["id"]] = pred_alone, pred_used
        counts = M.match_panels(pred_alone, g["panels"], threshold)
        details.append({"id": row["id"], "label": [list(p) for p in g["panels"]],
                        "prediction": [list(p) for p in pred_alone],
                        "score": M.prf(counts["tp"], counts["pred"], counts["gold"])["f1"], **counts, **info})
        if splitter.captioner is not None:
            log.info("[%d/%d] %s: %s", k, len(gold), row["id"], info.get("status"))
    if on_details:
        on_details(details)
    tp, pred, n_gold = (np.array([d[key] for d in details], dtype=float) for key in ("tp", "pred", "gold"))
    n = len(details)
    est = {
        "subcaption_precision": ratio_estimates(tp, pred, n_boot=n_boot, seed=seed, n=n),
        "subcaption_recall": ratio_estimates(tp, n_gold, n_boot=n_boot, seed=seed, n=n),
        "subcaption_f1": ratio_estimates(tp, pred, n_boot=n_boot, seed=seed, n=n, f1_of=(tp, pred, n_gold)),
    }
    scores = M.split_scores(alone, gold, threshold)
    counts = {"captions": len(gold), "panels_gold": scores["panels_gold"], "panels_pred": scores["panels_pred"],
              "match_threshold": threshold, "scores": scores, "ci": "percentile bootstrap over captions"}
    if splitter.captioner is not None:
        counts["with_rules_fallback"] = M.split_scores(used, gold, threshold)
        counts["llm_stats"] = splitter.captioner.summary()
    return ComponentRun(RunOutput(est, details, counts), data, splitter.model_id, splitter.revision)


# --- pdf_pairing -----------------------------------------------------------------------------------

ANNOTATIONS = "annotations.yaml"


def load_annotations(dataset: str) -> tuple[Path, Path, list[dict[str, Any]]]:
    """``(annotations file, folder of the PDFs, documents)`` of a pdf_pairing ``--dataset``: a folder
    holding ``annotations.yaml`` and the PDFs, or an annotations YAML with the PDFs beside it.

    The format is ``benchmarks/data/pdf_quality_real.yaml``'s: ``documents: [{name, figures: [{page,
    label, caption, side?}], sha256?}]``, the PDF of each being ``<name>.pdf``; caption = the opening
    words after the label; other keys (set, package, version, path) are ignored.

    Raises:
        InputError: no annotations, unreadable YAML, a document without name or figures.
    """
    import yaml

    path = Path(dataset).expanduser()
    file = path / ANNOTATIONS if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"--dataset {dataset}: no {ANNOTATIONS} in the folder (the labelled figures of its PDFs, in "
                         "the format of benchmarks/data/pdf_quality_real.yaml)" if path.is_dir() else
                         f"--dataset {dataset}: no such file or folder")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{file}: cannot read it ({exc})") from None
    docs = raw.get("documents") if isinstance(raw, dict) else None
    if not isinstance(docs, list) or not docs:
        raise InputError(f"{file}: expected 'documents: [{{name, figures: [...]}}, ...]'")
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or not doc.get("name") or not isinstance(doc.get("figures"), list):
            raise InputError(f"{file}: documents[{i}] needs name and figures (a list, empty when it has none)")
        for j, fig in enumerate(doc["figures"]):
            missing = [k for k in ("page", "label", "caption") if not isinstance(fig, dict) or fig.get(k) in (None, "")]
            if missing:
                raise InputError(f"{file}: document {doc['name']} figures[{j}] lacks {', '.join(missing)}")
    names = [d["name"] for d in docs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{file}: document(s) listed twice: {', '.join(dup)}")
    return file, file.parent, docs


def run_pdf_pairing(task, model: str, dataset: Optional[str], *, n_boot: int, seed: int,
                    limit: Optional[int]) -> ComponentRun:
    """``pdf_pairing``: figure recall (``pairing_recall``) and pairing precision of ``extract pdf``
    with ``method=<--model>`` on labelled PDFs, scored by extract_quality's :func:`score`."""
    from pathasst.benchmarks.perf import extract_quality as q

    if model not in q.METHODS:
        raise ConfigError(f"--model {model}: task {task.name} scores an extract pdf method: {', '.join(q.METHODS)}")
    if not dataset:
        raise InputError(f"task {task.name}: pass --dataset, a folder of PDFs with an {ANNOTATIONS} of their "
                         "captioned figures (format: benchmarks/data/pdf_quality_real.yaml)")
    file, folder, docs = load_annotations(dataset)
    if limit:
        docs = docs[:limit]
    skipped: dict[str, str] = {}
    per_doc, details = [], []
    for doc in docs:
        pdf = folder / f"{doc['name']}.pdf"
        if not pdf.is_file():
            skipped[doc["name"]] = f"{pdf.name} is not in {folder}"
            continue
        if doc.get("sha256") and file_sha256(pdf) != doc["sha256"]:
            skipped[doc["name"]] = f"{pdf.name}: sha256 differs from the annotated document's"
            continue
        records = q.extract(pdf, model)
        res = q.score(records, doc["figures"])
        per_doc.append((doc["name"], res))
        # which record each labelled figure was found by: the same first-match rule score() counts
        hit_by: dict[int, dict] = {}
        for rec in records:
            hit = next((i for i, fig in enumerate(doc["figures"]) if q.matches(rec, fig)), None)
            if hit is not None:
                hit_by.setdefault(hit, rec)
        for i, fig in enumerate(doc["figures"]):
            rec = hit_by.get(i)
            details.append({"id": f"{doc['name']}/p{fig['page']}/{fig['label']}", "kind": "figure",
                            "label": f"{fig['label']}: {fig['caption']}",
                            "prediction": None if rec is None else (rec.get("caption_raw") or "")[:300],
                            "score": 0.0 if rec is None else 1.0})
        for k, wrong in enumerate(res["wrong"]):
            details.append({"id": f"{doc['name']}/p{wrong['page']}/unmatched-{k}", "kind": "record",
                            "label": None, "prediction": f"{wrong['label']}: {wrong['caption']}", "score": 0.0})
    for name, why in skipped.items():
        log.warning("pdf_pairing: skipped %s: %s", name, why)
    if not per_doc:
        raise InputError(f"--dataset {dataset}: no annotated document could be scored: "
                         + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5]))
    found, figures, good, n_records = (np.array([r[key] for _, r in per_doc], dtype=float)
                                       for key in ("found", "figures", "good", "records"))
    est = {"pairing_precision": ratio_estimates(good, n_records, n_boot=n_boot, seed=seed, n=len(per_doc)),
           "pairing_recall": ratio_estimates(found, figures, n_boot=n_boot, seed=seed, n=len(per_doc))}
    counts = {"documents": len(per_doc), "skipped": skipped, "figures": int(figures.sum()), "found": int(found.sum()),
              "records": int(n_records.sum()), "good": int(good.sum()), "method": model,
              "per_document": {name: {k: r[k] for k in ("figures", "found", "records", "good")} for name, r in per_doc},
              "ci": "percentile bootstrap over documents"}
    data = EvalData(ds=[name for name, _ in per_doc], dataset_id=f"local:{folder.resolve().name}",
                    revision=folder_revision(folder), split=task.dataset.get("split") or "test", ids=[d["id"] for d in details], n_total=len(docs))
    return ComponentRun(RunOutput(est, details, counts), data, f"extract-pdf:{model}", _pathasst_revision())
