"""`pathasst curate select DATASET --model M --threshold T --out DIR`: keep the pathology images.

Every record of the PathCap dataset ``DATASET`` (a folder or a Hub id, read streaming: memory stays
flat whatever its size) is scored by the selector ``M`` (a folder in timm's Hub layout, as written
by ``pathasst train selector``, or a Hub model id). The score is the softmax probability of the
model's pathology class(es) (``--positive``, default: the classes the model's config names, else
``pathology``). Records scoring at or above ``T`` are written to ``DIR`` with ``pathology_score``
set, in the split they came from, their image bytes untouched; every other input becomes one line
of ``DIR/rejects.jsonl`` with its reason (and ``score`` when it was scored), so that

    input records = output records + ledger lines

Images are decoded the way the selector was validated (:func:`pathasst.trainers.selector.decode_rgb`):
grayscale, CMYK, 16-bit and palette images are converted for scoring, huge images are downscaled
while decoding (or refused above ``--max-pixels``), images under ``--min-side`` pixels and
undecodable files go to the ledger. The unit of resumption is the record id: rerunning the same
command continues where a killed run stopped, without duplicates.

Evaluation (``--evaluate``): ``pathasst curate select DATA --model M --evaluate`` reads labelled
images instead (an ImageFolder with one subfolder per class, or a dataset with a label column;
``--split`` picks the held-out split, default ``test``, else ``validation``) and reports accuracy
(argmax over the classes), AUROC of the pathology score, and precision/recall at ``--threshold``;
``--json FILE`` saves them. Nothing is written to a dataset folder.

This module imports only argparse at import time: the CLI lists it on every start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional
from pathasst.inputs import file_sha256

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
DEFAULT_BATCH_SIZE = 32
DEFAULT_MIN_SIDE = 16


@dataclasses.dataclass
class SelectConfig:
    """What decides the output of a selection run (hashed by the writer: a rerun with other values
    needs ``--resume`` or ``--overwrite``). Batch size and device do not change the output and are
    left out.

    Attributes:
        dataset: the input PathCap dataset (as given).
        model: the selector (as given).
        model_sha256: hash of its weights file (a retrained model in place counts as another model).
        threshold: records scoring below it go to the ledger.
        positive_labels: the classes whose probabilities make the score.
        min_side: images with a shorter side go to the ledger.
        max_pixels: images declaring more pixels go to the ledger before decoding.
        shard: ``K/N``: only the records whose id hashes to the K-th of N parts (None: all).
    """

    dataset: str
    model: str
    model_sha256: Optional[str]
    threshold: float
    positive_labels: list[str]
    min_side: int
    max_pixels: int
    shard: Optional[str] = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pathasst.images import DEFAULT_MAX_PIXELS

    parser.description = (
        "Score every record of a PathCap dataset with the pathology-image selector and keep those at or above "
        "the threshold, with pathology_score set; the others go to rejects.jsonl with their score. Resumable. "
        "With --evaluate: accuracy and AUROC of the selector on labelled images (ImageFolder or a dataset with "
        "a label column)."
    )
    parser.add_argument("dataset", metavar="DATASET",
                        help="PathCap dataset folder or Hub id (with --evaluate: labelled ImageFolder or dataset)")
    parser.add_argument("--model", required=True, metavar="M",
                        help="selector folder (timm Hub layout, from `pathasst train selector`) or Hub id owner/name")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, metavar="T",
                        help=f"keep records whose pathology score is >= T (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output dataset folder (required unless --evaluate)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"images per forward pass (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--positive", action="append", metavar="LABEL",
                        help="class name that counts as pathology (repeatable; default: from the model's config)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, metavar="PX",
                        help=f"images with a shorter side go to the ledger (default {DEFAULT_MIN_SIDE})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="images declaring more pixels go to the ledger, undecoded (default: Pillow's bomb limit)")
    parser.add_argument("--shard", metavar="K/N",
                        help="score only the K-th of N disjoint parts of the records (by id hash); each part "
                        "writes its own --out, so N machines can share a corpus")
    parser.add_argument("--overwrite", action="store_true", help="start the output folder afresh")
    parser.add_argument("--resume", action="store_true", help="continue a folder written with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--evaluate", action="store_true",
                            help="report accuracy and AUROC on labelled images instead of writing a dataset")
    evaluation.add_argument("--split", help="split of a labelled dataset (default: test, else validation)")
    evaluation.add_argument("--label-column", default="label", help="label column of a labelled dataset")
    evaluation.add_argument("--image-column", default="image", help="image column of a labelled dataset")
    evaluation.add_argument("--json", type=Path, metavar="FILE", help="write the evaluation metrics to FILE")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathasst.errors import ConfigError

    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be a probability in [0, 1] (got {args.threshold})")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.min_side < 1:
        raise ConfigError(f"--min-side must be >= 1 (got {args.min_side})")
    if args.evaluate:
        return run_evaluate(args)
    if args.out is None:
        raise ConfigError("--out DIR is required (or pass --evaluate)")
    summary = select_dataset(
        args.dataset,
        args.model,
        args.out,
        threshold=args.threshold,
        batch_size=args.batch_size,
        positive_labels=args.positive,
        device=args.device,
        min_side=args.min_side,
        max_pixels=args.max_pixels,
        shard=args.shard,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        command=_command(args),
    )
    reasons = "; ".join(f"{k}: {v}" for k, v in summary["reject_reasons"].items())
    print(f"{summary['inputs']} records in, {summary['records_total']} kept, {summary['rejected_total']} to the ledger"
          + (f" ({reasons})" if reasons else "") + f" -> {args.out}")
    return 0


def _command(args: argparse.Namespace) -> str:
    parts = ["pathasst curate select", str(args.dataset), "--model", str(args.model),
             "--threshold", str(args.threshold)]
    if args.out is not None:
        parts += ["--out", str(args.out)]
    return " ".join(parts)


def _parse_shard(shard: Optional[str]) -> Optional[tuple[int, int]]:
    from pathasst.errors import ConfigError
    from pathasst.inputs import parse_shard

    try:
        return parse_shard(shard)
    except ValueError as exc:
        raise ConfigError(f"--{exc}") from None



def _weights_hash(model_ref: str) -> Optional[str]:
    folder = Path(model_ref).expanduser()
    for name in ("model.safetensors", "pytorch_model.bin", "model.pth"):
        if (folder / name).is_file():
            return file_sha256(folder / name)
    return None  # a Hub id: its revision is the identity


def _open_pathcap(dataset: str):
    """The input splits, streaming, images left undecoded; a clear error for a non-PathCap input."""
    from datasets import Image, IterableDatasetDict, load_dataset

    from pathasst.errors import InputError
    from pathasst.inputs import data_ref

    ref = data_ref(dataset, key="DATASET")
    try:
        ds = load_dataset(ref.value, streaming=True)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds for "this is not a dataset"
        raise InputError(f"DATASET {dataset}: cannot read it as a dataset ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
    if not isinstance(ds, IterableDatasetDict):
        ds = IterableDatasetDict({"train": ds})
    for split, part in ds.items():
        columns = set(part.features or {})
        missing = {"id", "image"} - columns
        if missing:
            raise InputError(f"DATASET {dataset} [{split}] is not a PathCap dataset: no column(s) "
                             f"{', '.join(sorted(missing))} (columns: {', '.join(sorted(columns)) or 'unknown'})")
    return IterableDatasetDict({split: part.cast_column("image", Image(decode=False)) for split, part in ds.items()})


def _split_sizes(ds) -> dict[str, Optional[int]]:
    sizes = {}
    for split, part in ds.items():
        info = getattr(part, "info", None)
        splits = getattr(info, "splits", None) or {}
        sizes[split] = splits[split].num_examples if split in splits else None
    return sizes


def select_dataset(
    dataset: str,
    model: str,
    out: Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = DEFAULT_BATCH_SIZE,
    positive_labels: Optional[list[str]] = None,
    device: str = "auto",
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: Optional[int] = None,
    shard: Optional[str] = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: Optional[str] = None,
) -> dict[str, Any]:
    """Score and filter a PathCap dataset (see the module docstring).

    With ``shard="K/N"`` only the records whose id falls in the K-th of N parts are read as inputs
    (the accounting holds per part).

    Returns:
        The run's summary (also written to ``out/summary.json``): inputs seen in this run, records
        and ledger lines in the folder, what this run added, rejection reasons.

    Raises:
        InputError: missing dataset, not a PathCap dataset, a model folder of another family.
        OutputError: the output folder is in use or holds another run.
    """
    from pathasst.trainers.selector import Selector
    from tqdm.auto import tqdm

    from pathasst.images import DEFAULT_MAX_PIXELS, ImageRejected
    from pathasst.inputs import in_shard
    from pathasst.records import get_spec
    from pathasst.writer import DEFAULT_SPLITS, DatasetWriter

    started = time.monotonic()
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    part = _parse_shard(shard)
    ds = _open_pathcap(dataset)  # the input fails before the model loads
    selector = Selector.load(model, positive_labels=positive_labels, device=device)
    positive = [selector.labels[i] for i in selector.positive]
    config = SelectConfig(dataset=str(dataset), model=str(model), model_sha256=_weights_hash(model),
                          threshold=float(threshold), positive_labels=positive, min_side=min_side,
                          max_pixels=max_pixels, shard=shard)
    # records keep the split they came from: the writer is told every input split (ratios unused)
    splits = {split: DEFAULT_SPLITS.get(split, 1.0) for split in ds}
    spec = get_spec("pathcap")
    counts = {"inputs": 0, "already_done": 0, "kept": 0, "rejected": 0}
    seen: dict[str, int] = {}
    sizes = _split_sizes(ds)
    total = sum(sizes.values()) if part is None and all(v is not None for v in sizes.values()) else None
    log.info("selecting with %s (%s, positive %s, input %s px) at threshold %s", model, selector.labels, positive,
             selector.image_size, threshold)

    with DatasetWriter(out, spec, config=config, resume=resume, overwrite=overwrite, splits=splits,
                       command=command or f"pathasst curate select {dataset}") as writer:
        pending: list[tuple[dict[str, Any], str, Any]] = []

        def flush() -> None:
            if not pending:
                return
            scores = selector.score([img for _, _, img in pending])
            for (record, split, _), score in zip(pending, scores):
                s = float(score)
                rid = str(record["id"])
                if s >= threshold:
                    kept = dict(record)
                    kept["pathology_score"] = s
                    if writer.add(kept, split=split):
                        counts["kept"] += 1
                    else:
                        counts["rejected"] += 1
                else:
                    writer.reject(rid, f"not pathology: score {s:.3f} < threshold {threshold}", score=round(s, 6))
                    counts["rejected"] += 1
            pending.clear()

        bar = tqdm(total=total, desc="select", unit="rec", disable=not progress)
        for split, rows in ds.items():
            for position, record in enumerate(rows):
                bar.update(1)
                rid = record.get("id")
                if part is not None and not in_shard(str(rid) if rid else f"{split}#{position}", part):
                    continue
                counts["inputs"] += 1
                if rid is None or str(rid) == "":
                    key = f"{split}#{position}"
                    if writer.is_done(key):
                        counts["already_done"] += 1
                    else:
                        with writer.unit(key):
                            writer.reject(key, "invalid record: no id")
                        counts["rejected"] += 1
                    continue
                rid = str(rid)
                occurrence = seen.get(rid, 0)
                seen[rid] = occurrence + 1
                if occurrence:
                    # A second record with the same id: one ledger line per extra occurrence, keyed
                    # so that a resumed run counts it once.
                    key = f"{rid}#dup{occurrence}"
                    if writer.is_done(key):
                        counts["already_done"] += 1
                    else:
                        with writer.unit(key):
                            writer.reject(rid, f"duplicate id: '{rid}' occurs {occurrence + 1} times in the input")
                        counts["rejected"] += 1
                    continue
                if writer.is_done(rid):
                    counts["already_done"] += 1
                    continue
                try:
                    img = selector.decode(record.get("image"), max_pixels=max_pixels, min_side=min_side)
                except ImageRejected as exc:
                    writer.reject(rid, exc.reason)
                    counts["rejected"] += 1
                    continue
                pending.append((record, split, img))
                if len(pending) >= batch_size:
                    flush()
            flush()
        bar.close()
        card = _card_text(dataset, model, selector, threshold)
        result = writer.finalize(card)

    summary = {
        "out": str(out),
        "model": str(model),
        "labels": selector.labels,
        "positive_labels": positive,
        "threshold": threshold,
        "inputs": counts["inputs"],
        "this_run": {"kept": counts["kept"], "rejected": counts["rejected"], "already_done": counts["already_done"]},
        "records": result.records,
        "records_total": result.total_records,
        "rejected_total": result.rejected,
        "reject_reasons": result.reject_reasons,
        "seconds": round(time.monotonic() - started, 3),
    }
    accounted = result.total_records + result.rejected
    if accounted != counts["inputs"]:
        log.warning("accounting: %d input records but %d records + %d ledger lines in %s", counts["inputs"],
                    result.total_records, result.rejected, out)
    summary["accounted"] = accounted == counts["inputs"]
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _card_text(dataset: str, model: str, selector, threshold: float) -> str:
    positive = ", ".join(selector.labels[i] for i in selector.positive)
    return (
        "# PathCap (selected)\n\n"
        "Pathology image-caption pairs kept by the pathology-image selector: every record's "
        f"`pathology_score` is the selector's probability of the class(es) {positive}; records scoring "
        f"below {threshold} are listed with their score in `rejects.jsonl`.\n\n"
        f"Input: `{Path(str(dataset)).name}`. Selector: `{Path(str(model)).name}` "
        f"({selector.model.pretrained_cfg.get('architecture')}, labels {', '.join(selector.labels)}).\n\n"
        "```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\")\n```\n"
    )


def run_evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate(
        args.dataset,
        args.model,
        split=args.split,
        threshold=args.threshold,
        batch_size=args.batch_size,
        positive_labels=args.positive,
        device=args.device,
        image_column=args.image_column,
        label_column=args.label_column,
        max_pixels=args.max_pixels,
        progress=not args.no_progress,
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2))
    print(
        f"selector {args.model} on {metrics['data']} (n={metrics['n']}, {metrics.get('positives', 0)} pathology, "
        f"{metrics.get('negatives', 0)} other, {metrics['skipped']} skipped): "
        f"accuracy {metrics['accuracy']:.4f}, AUROC {metrics['auroc']:.4f}; at threshold {args.threshold}: "
        f"precision {metrics.get('precision', float('nan')):.4f}, recall {metrics.get('recall', float('nan')):.4f}"
    )
    return 0


def evaluate(
    data: str,
    model: str,
    *,
    split: Optional[str] = None,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = DEFAULT_BATCH_SIZE,
    positive_labels: Optional[list[str]] = None,
    device: str = "auto",
    image_column: str = "image",
    label_column: str = "label",
    max_pixels: Optional[int] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy and AUROC of a selector on held-out labelled images.

    Args:
        data: an ImageFolder (every image is evaluated) or a dataset folder / Hub id with a label
            column (``split``, default ``test``, else ``validation``).

    Returns:
        ``n``, ``accuracy``, ``auroc``, ``positives``, ``negatives``, ``per_class``, ``threshold``,
        ``binary_accuracy``, ``precision``, ``recall``, ``confusion``, ``skipped``, ``data``, ``model``.
    """
    from pathasst.trainers.selector import (
        Selector,
        _load_dataset_dict,
        evaluate_selector,
        is_image_folder,
        load_labelled,
    )

    from pathasst.errors import InputError
    from pathasst.images import DEFAULT_MAX_PIXELS
    from pathasst.inputs import data_ref

    ref = data_ref(data, key="DATA")
    origin = str(data)
    if not (ref.kind == "local" and is_image_folder(ref.path)):
        names = list(_load_dataset_dict(ref.value))
        if split is None:
            split = next((s for s in ("test", "validation") if s in names), None)
            if split is None:
                raise InputError(f"DATA {data}: no 'test' or 'validation' split (splits: {', '.join(names)}); "
                                 "pass --split NAME to evaluate on another (held-out!) split")
        origin = f"{data} [{split}]"
    selector = Selector.load(model, positive_labels=positive_labels, device=device)
    labelled = load_labelled(data, split=split, image_column=image_column, label_column=label_column, key="DATA")
    metrics = evaluate_selector(selector, labelled, batch_size=batch_size, threshold=threshold,
                                max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels, progress=progress)
    return {"data": origin, "model": str(model), "labels": selector.labels, **metrics}


if __name__ == "__main__":  # python -m pathasst.dataset_builders.curate.select DATASET --model M ...
    from pathasst.cli import main as _main

    sys.exit(_main(["curate", "select", *sys.argv[1:]]))
