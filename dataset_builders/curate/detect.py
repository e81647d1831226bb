"""`pathasst curate detect DATASET --model M --out DIR`: split compound figures into subfigure records.

Reads a PathCap folder, runs the YOLO subfigure detector (``pathasst train subfig``) over every
figure-level record and writes a PathCap folder in which

- a figure with two or more panels is replaced by one record per panel: the crop as its image,
  ``bbox`` = the crop's box in the parent figure in pixels (COCO ``[x, y, w, h]``), the parent's
  ``figure_id``, ``id = <figure_id>/<label or reading-order index>``, ``subfigure_label`` = the
  panel letter when one is read (else null), and everything else inherited from the parent:
  caption and caption_raw (splitting the caption is the next stage), source, source_id, page,
  licence, figure_label. ``pathology_score`` is null (it scored the whole figure; the parent's value
  is kept in ``meta.subfigure.parent_pathology_score``); ``page_bbox`` is the panel's box on the
  PDF page when the parent has one; width, height and phash are the crop's;
- a figure with one panel or none stays whole: its record is written unchanged (not a rejection);
- records that already are subfigures (``bbox`` set) pass through unchanged;
- an image that cannot be decoded goes to ``rejects.jsonl`` with the reason. Inputs = outputs
  (units) + rejected, and a rerun resumes where the last one stopped.

Evidence besides the detector, read from the parent's ``meta`` JSON (the contract with the PDF
extractor; both keys optional, boxes in the figure image's pixels, COCO ``[x, y, w, h]``):

- ``panel_candidates``: ``[[x, y, w, h], ...]``, the boxes of the images placed on the PDF page
  that make up the figure. A detection that overlaps one (IoU >= ``match_iou``) is confirmed: it
  takes the candidate's exact box, and is accepted down to ``candidate_conf`` instead of ``conf``.
  Candidates no detection confirms are not added (PDF placements also hold logos, scale bars and
  tiles of one panel).
- ``text_spans``: ``[{"text": "A", "bbox": [x, y, w, h]}, ...]``, words of the PDF text layer over
  the figure. A span reading as a panel letter (``A``, ``b``, ``(c)``, ``D.``, ``iv``) inside a panel
  or just outside its top-left edge labels that panel, the nearest to its top-left corner winning.

Without a text layer, letters come from OCR of the detector's ``panel_label`` boxes when
``pytesseract`` and the ``tesseract`` program are installed (``--ocr auto``, the default; neither is
a pathasst dependency), and stay null otherwise.

``--eval DATA [--split test]`` instead reports the detector's mAP50 and mAP50-95 on a held-out
split of a YOLO dataset (or PathSubfig folder), through ultralytics' validator.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from pathasst.errors import ConfigError, InputError
from pathasst.inputs import file_sha256

log = logging.getLogger(__name__)

STAGE = "detect"
META_CANDIDATES = "panel_candidates"
META_SPANS = "text_spans"
_LABEL_TEXT = re.compile(r"^[(\[]?(?P<label>[A-Za-z]|i{1,3}|iv|v|vi{1,3}|ix|x)[)\].:]?$")


@dataclasses.dataclass
class DetectConfig:
    """Settings of ``curate detect`` (written to ``config.yaml``; their hash guards resumes).

    Attributes:
        model: the detector checkpoint (``.pt``) or its run folder.
        model_sha256: the checkpoint's content hash (filled in at run time).
        conf: a detection is a panel from this confidence up.
        candidate_conf: ... or from this one when a PDF candidate box confirms it.
        iou: NMS IoU threshold.
        match_iou: IoU from which a detection and a PDF candidate box are the same panel.
        contain: a detection lying at least this fraction inside a more confident one is dropped
            (duplicates and insets: a figure is split into its top-level panels).
        min_side: panels narrower or lower than this many pixels are ignored.
        imgsz: detector input size; None: the size it was trained at.
        batch_size: figures per forward pass.
        device: ``cpu``, ``0``, ...; None: the first GPU if any.
        ocr: ``auto`` (tesseract when installed), ``off``, or ``tesseract`` (required).
        keep_parents: also write the whole compound figure next to its panels.
        shard: ``K/N``: process only the K-th of N parts of the input.
    """

    model: str = ""
    model_sha256: str = ""
    conf: float = 0.4
    candidate_conf: float = 0.2
    iou: float = 0.5
    match_iou: float = 0.5
    contain: float = 0.8
    min_side: int = 8
    imgsz: Optional[int] = None
    batch_size: int = 8
    device: Optional[str] = None
    ocr: str = "auto"
    keep_parents: bool = False
    shard: Optional[str] = None

    def __post_init__(self) -> None:
        for key in ("conf", "candidate_conf", "iou", "match_iou", "contain"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1] (got {value})")
        if self.candidate_conf > self.conf:
            raise ValueError(f"candidate_conf ({self.candidate_conf}) must not exceed conf ({self.conf})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.imgsz is not None and self.imgsz < 32:
            raise ValueError(f"imgsz must be >= 32 (got {self.imgsz})")
        if self.ocr not in ("auto", "off", "tesseract"):
            raise ValueError(f"ocr must be auto, off or tesseract (got {self.ocr!r})")
        from pathasst.inputs import parse_shard

        parse_shard(self.shard)


# --------------------------------------------------------------------------------------------
# panels: pure geometry, testable without a model


@dataclasses.dataclass
class Panel:
    """One accepted panel of a figure.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in the figure's pixels (integers after :func:`choose_panels`).
        conf: the detector's confidence.
        evidence: ``detector`` or ``detector+pdf`` (confirmed by a PDF candidate box).
        label: the panel letter, if one was read.
        label_source: ``text_layer`` or ``ocr``.
    """

    box: tuple[float, float, float, float]
    conf: float
    evidence: str = "detector"
    label: Optional[str] = None
    label_source: Optional[str] = None

    @property
    def xywh(self) -> list[float]:
        x0, y0, x1, y1 = self.box
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _inter(a: Sequence[float], b: Sequence[float]) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    inter = _inter(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def xywh_to_xyxy(box: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)
    return x, y, x + w, y + h


def choose_panels(
    detections: Sequence[tuple[Sequence[float], float]],
    width: int,
    height: int,
    candidates: Sequence[Sequence[float]] = (),
    *,
    conf: float = 0.4,
    candidate_conf: float = 0.2,
    match_iou: float = 0.5,
    contain: float = 0.8,
    min_side: int = 8,
) -> list[Panel]:
    """The panels of one figure, from subfigure detections and PDF candidate boxes.

    Args:
        detections: ``((x0, y0, x1, y1), confidence)`` in figure pixels.
        width, height: the figure's size; boxes are clipped to it and rounded outwards to pixels.
        candidates: PDF candidate panel boxes, COCO ``[x, y, w, h]`` in figure pixels.
        conf, candidate_conf, match_iou, contain, min_side: see :class:`DetectConfig`.

    Returns:
        Panels in reading order (rows top to bottom, left to right within a row).
    """
    cands = [xywh_to_xyxy(c) for c in candidates if len(c) == 4 and c[2] > 0 and c[3] > 0]
    accepted: list[Panel] = []
    for box, score in sorted(detections, key=lambda d: -float(d[1])):
        box = tuple(float(v) for v in box)
        best = max(cands, key=lambda c: iou(box, c), default=None)
        confirmed = best is not None and iou(box, best) >= match_iou
        if score < (candidate_conf if confirmed else conf):
            continue
        if confirmed:
            box = best
        x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
        if x1 - x0 < min_side or y1 - y0 < min_side:
            continue
        panel_box = (x0, y0, x1, y1)
        area = _area(panel_box)
        if any(_inter(panel_box, p.box) >= contain * area for p in accepted):
            continue  # a duplicate of, or an inset in, a more confident panel
        accepted.append(Panel(panel_box, float(score), "detector+pdf" if confirmed else "detector"))
    return reading_order(accepted)


def reading_order(panels: Sequence[Panel]) -> list[Panel]:
    """Rows top to bottom (a panel joins a row when its centre lies within the row's first panel's
    height), left to right within each row."""
    rows: list[list[Panel]] = []
    for panel in sorted(panels, key=lambda p: (p.box[1] + p.box[3]) / 2):
        cy = (panel.box[1] + panel.box[3]) / 2
        if rows and rows[-1][0].box[1] <= cy <= rows[-1][0].box[3]:
            rows[-1].append(panel)
        else:
            rows.append([panel])
    return [p for row in rows for p in sorted(row, key=lambda p: p.box[0])]


def label_of(text: str) -> Optional[str]:
    """The panel letter a text reads as (``"(b)"`` -> ``"b"``, ``"D."`` -> ``"D"``), or None."""
    match = _LABEL_TEXT.match(text.strip())
    return match["label"] if match else None


def _margin(panel: Panel) -> float:
    x0, y0, x1, y1 = panel.box
    return max(4.0, 0.1 * min(x1 - x0, y1 - y0))


def assign_labels(panels: Sequence[Panel], spans: Sequence[tuple[str, Sequence[float]]], source: str) -> None:
    """Label panels from ``(text, (x0, y0, x1, y1))`` spans, in place.

    A span labels a panel when it reads as a letter and its centre lies inside the panel grown by
    a margin (10% of its shorter side, at least 4 px); pairs are taken nearest to the panel's
    top-left corner first, each span and each panel once. Panels already labelled are kept.
    """
    pairs = []
    for si, (text, box) in enumerate(spans):
        letter = label_of(text)
        if letter is None:
            continue
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        for pi, panel in enumerate(panels):
            if panel.label is not None:
                continue
            m = _margin(panel)
            x0, y0, x1, y1 = panel.box
            if x0 - m <= cx <= x1 + m and y0 - m <= cy <= y1 + m:
                dist = math.hypot(cx - x0, cy - y0) / max(1.0, math.hypot(x1 - x0, y1 - y0))
                pairs.append((dist, si, pi, letter))
    used_spans, used_panels = set(), set()
    for _, si, pi, letter in sorted(pairs):
        if si in used_spans or pi in used_panels:
            continue
        used_spans.add(si)
        used_panels.add(pi)
        panels[pi].label, panels[pi].label_source = letter, source


def dedupe_labels(panels: Sequence[Panel]) -> None:
    """A letter read twice in one figure is trusted nowhere: both panels lose it (ids stay unique)."""
    counts: dict[str, int] = {}
    for p in panels:
        if p.label is not None:
            counts[p.label] = counts.get(p.label, 0) + 1
    for p in panels:
        if p.label is not None and counts[p.label] > 1:
            p.label, p.label_source = None, None


def _meta(record: Mapping[str, Any]) -> dict[str, Any]:
    raw = record.get("meta")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _candidates(meta: Mapping[str, Any]) -> list[list[float]]:
    out = []
    for box in meta.get(META_CANDIDATES) or []:
        if isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            out.append([float(v) for v in box])
    return out


def _spans(meta: Mapping[str, Any]) -> list[tuple[str, tuple[float, float, float, float]]]:
    out = []
    for span in meta.get(META_SPANS) or []:
        if not isinstance(span, Mapping):
            continue
        box, text = span.get("bbox"), span.get("text")
        if isinstance(text, str) and isinstance(box, (list, tuple)) and len(box) == 4:
            try:
                out.append((text, xywh_to_xyxy(box)))
            except (TypeError, ValueError):
                continue
    return out


# --------------------------------------------------------------------------------------------
# OCR (optional, never a dependency)


def ocr_backend(mode: str) -> Optional[Callable[[Any], str]]:
    """A function reading one short text from a PIL image, or None when OCR is off/unavailable.

    Raises:
        ConfigError: ``mode="tesseract"`` and pytesseract or the tesseract program is missing.
    """
    if mode == "off":
        return None
    try:
        import pytesseract
    except ImportError:
        pytesseract = None
    if pytesseract is None or shutil.which("tesseract") is None:
        if mode == "tesseract":
            raise ConfigError("ocr=tesseract needs `pip install pytesseract` and the tesseract program")
        return None
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz()."

    def read(img) -> str:
        # psm 8: a single word; the label box holds one letter with its brackets or dot
        return pytesseract.image_to_string(img, config=f"--psm 8 -c tessedit_char_whitelist={letters}").strip()

    return read


def _ocr_labels(panels: Sequence[Panel], label_boxes: Sequence[tuple[Sequence[float], float]], image,
                read: Callable[[Any], str], conf: float) -> None:
    spans = []
    for box, score in label_boxes:
        if score < conf:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        pad = max(2, (y1 - y0) // 4)
        crop = image.crop((max(0, x0 - pad), max(0, y0 - pad), x1 + pad, y1 + pad))
        if crop.height < 24:  # tesseract reads glyphs of ~20 px and up
            scale = 32 / max(1, crop.height)
            crop = crop.resize((max(1, round(crop.width * scale)), 32))
        try:
            text = read(crop.convert("L"))
        except Exception as exc:  # noqa: BLE001 - OCR is best effort: a failure leaves the label null
            log.debug("OCR failed: %s", exc)
            continue
        spans.append((text, tuple(float(v) for v in box)))
    assign_labels(panels, spans, "ocr")


# --------------------------------------------------------------------------------------------
# records


def _encode_crop(crop, parent_format: str) -> bytes:
    buf = io.BytesIO()
    if parent_format == "JPEG":
        crop.save(buf, format="JPEG", quality=95, subsampling=0)
    else:
        crop.save(buf, format="PNG")
    return buf.getvalue()


def subfigure_records(record: Mapping[str, Any], image, parent_format: str, panels: Sequence[Panel],
                      detector: str) -> list[dict[str, Any]]:
    """One PathCap record per panel of ``record`` (see the module docstring for each field)."""
    from pathasst.images import image_phash

    meta = _meta(record)
    base_meta = {k: v for k, v in meta.items() if k not in (META_CANDIDATES, META_SPANS)}
    width, height = image.size
    page_bbox = record.get("page_bbox")
    out = []
    for index, panel in enumerate(panels, start=1):
        x0, y0, x1, y1 = (int(v) for v in panel.box)
        crop = image.crop((x0, y0, x1, y1))
        data = _encode_crop(crop, parent_format)
        sub_page_bbox = None
        if page_bbox is not None and len(page_bbox) == 4 and width and height:
            px, py, pw, ph = (float(v) for v in page_bbox)
            sx, sy = pw / width, ph / height
            sub_page_bbox = [px + x0 * sx, py + y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy]
        sub_meta = dict(base_meta)
        sub_meta["subfigure"] = {
            "parent_id": record["id"],
            "index": index,
            "confidence": round(panel.conf, 4),
            "evidence": panel.evidence,
            "label_source": panel.label_source,
            "detector": detector,
            "parent_pathology_score": record.get("pathology_score"),
        }
        out.append({
            **{k: v for k, v in record.items()},
            "id": f"{record['figure_id']}/{panel.label or index}",
            "image": {"bytes": data, "path": None},
            "subfigure_label": panel.label,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "pathology_score": None,
            "width": x1 - x0,
            "height": y1 - y0,
            "phash": image_phash(data),
            "page_bbox": sub_page_bbox,
            "meta": json.dumps(sub_meta, sort_keys=True, ensure_ascii=False),
        })
    return out


# --------------------------------------------------------------------------------------------
# reading the input dataset


def _input_shards(dataset: Path) -> list[tuple[Path, str]]:
    from pathasst.trainers.subfig import _shard_split

    shards = sorted((dataset / "data").glob("*.parquet"))
    if not shards:
        raise InputError(f"{dataset}: no data/*.parquet shards; expected a PathCap dataset folder")
    return [(p, _shard_split(p)) for p in shards]


def _input_splits(dataset: Path, shards: Sequence[tuple[Path, str]]) -> tuple[dict[str, float], str]:
    manifest = dataset / ".pathasst" / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            if isinstance(m.get("splits"), dict) and all(s in m["splits"] for _, s in shards):
                return dict(m["splits"]), str(m.get("split_salt", "pathasst"))
        except json.JSONDecodeError:
            pass
    names = list(dict.fromkeys(s for _, s in shards))
    return {name: 1.0 for name in names}, "pathasst"


def iter_records(shards: Sequence[tuple[Path, str]], batch_rows: int = 32) -> Iterator[tuple[dict[str, Any], str]]:
    """``(record, split)`` for every row of the shards, a few rows in memory at a time."""
    import pyarrow.parquet as pq

    for path, split in shards:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                yield row, split


def _count_rows(shards: Sequence[tuple[Path, str]]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p, _ in shards)



def _pathcap_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as read back from Parquet, ready for the writer (unknown nulls left out)."""
    return {k: v for k, v in row.items()}


# --------------------------------------------------------------------------------------------
# the stage


@dataclasses.dataclass
class _Pending:
    record: dict[str, Any]
    split: str
    view: Any  # PIL RGB, at most 2 x imgsz on its longer side: what the detector sees
    size: tuple[int, int]  # the figure's own size, the frame of bbox, candidates and spans
    fmt: str
    mode: str


def run_detect(dataset: str | Path, out: str | Path, cfg: DetectConfig, *, overwrite: bool = False,
               resume: bool = False, progress: bool = True, command: Optional[str] = None):
    """Detect subfigures in every record of ``dataset`` and write ``out`` (see the module docstring).

    Returns:
        ``(WriteSummary, counts)`` with counts of figures split, kept whole, passed through.

    Raises:
        InputError: bad dataset or model; ConfigError: bad settings; OutputError: unusable --out.
    """
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from pathasst.images import ImageRejected, load_rgb
    from pathasst.inputs import in_shard, parse_shard
    from pathasst.records import get_spec
    from pathasst.trainers.subfig import load_detector
    from pathasst.writer import DatasetWriter

    dataset = Path(dataset)
    if not dataset.is_dir():
        raise InputError(f"DATASET {dataset}: no such folder")
    shards = _input_shards(dataset)
    shard = parse_shard(cfg.shard)
    model, ckpt = load_detector(cfg.model)
    cfg = dataclasses.replace(cfg, model=str(cfg.model), model_sha256=file_sha256(ckpt))
    names = {int(k): str(v) for k, v in model.names.items()}
    subfig_cls = next(k for k, v in names.items() if v == "subfigure")
    label_cls = next((k for k, v in names.items() if v == "panel_label"), None)
    imgsz = cfg.imgsz or int((model.ckpt or {}).get("train_args", {}).get("imgsz") or 640)
    ocr = ocr_backend(cfg.ocr)
    detector_name = f"{ckpt.name}@{cfg.model_sha256[:12]}"
    splits, salt = _input_splits(dataset, shards)
    counts = {"split": 0, "whole": 0, "passed_through": 0, "subfigures": 0, "skipped_done": 0}

    with DatasetWriter(out, get_spec("pathcap"), config=cfg, resume=resume, overwrite=overwrite,
                       splits=splits, split_salt=salt, command=command) as writer:
        pending: list[_Pending] = []

        def flush() -> None:
            if not pending:
                return
            batch = [np.ascontiguousarray(np.asarray(p.view)[:, :, ::-1]) for p in pending]  # RGB -> BGR
            kwargs: dict[str, Any] = dict(conf=min(cfg.conf, cfg.candidate_conf), iou=cfg.iou, imgsz=imgsz,
                                          verbose=False, batch=len(batch))
            if cfg.device is not None:
                kwargs["device"] = cfg.device
            results = model.predict(batch, **kwargs)
            for item, result in zip(pending, results):
                boxes = result.boxes
                sx, sy = item.size[0] / item.view.width, item.size[1] / item.view.height
                xyxy = [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes.xyxy.cpu().numpy().tolist()]
                confs = boxes.conf.cpu().numpy().tolist() if len(boxes) else []
                classes = boxes.cls.cpu().numpy().astype(int).tolist() if len(boxes) else []
                dets = [(b, c) for b, c, k in zip(xyxy, confs, classes) if k == subfig_cls]
                label_dets = [(b, c) for b, c, k in zip(xyxy, confs, classes) if k == label_cls]
                _write_figure(writer, item, dets, label_dets)
            pending.clear()

        def _write_figure(writer, item: _Pending, dets, label_dets) -> None:
            record = item.record
            meta = _meta(record)
            width, height = item.size
            panels = choose_panels(
                dets, width, height, _candidates(meta), conf=cfg.conf, candidate_conf=cfg.candidate_conf,
                match_iou=cfg.match_iou, contain=cfg.contain, min_side=cfg.min_side,
            )
            with writer.unit(record["id"]):
                if len(panels) < 2:
                    counts["whole"] += 1
                    writer.add(_pathcap_record(record), split=item.split)
                    return
                # decoded again at full size, one figure at a time: the batch holds small views only
                full = load_rgb(record["image"]["bytes"])
                assign_labels(panels, _spans(meta), "text_layer")
                if ocr is not None and label_dets and any(p.label is None for p in panels):
                    _ocr_labels(panels, label_dets, full, ocr, cfg.conf)
                dedupe_labels(panels)
                crop_source = full if item.mode != "L" else full.convert("L")
                counts["split"] += 1
                if cfg.keep_parents:
                    writer.add(_pathcap_record(record), split=item.split)
                for sub in subfigure_records(record, crop_source, item.fmt, panels, detector_name):
                    if writer.add(sub, split=item.split):
                        counts["subfigures"] += 1

        bar = tqdm(total=_count_rows(shards), desc="curate detect", unit="figure", disable=not progress)
        for row, split in iter_records(shards):
            bar.update(1)
            key = str(row.get("id"))
            if not in_shard(key, shard):
                continue
            if writer.is_done(key):
                counts["skipped_done"] += 1
                continue
            if row.get("bbox") is not None:  # already a subfigure
                with writer.unit(key):
                    writer.add(_pathcap_record(row), split=split)
                counts["passed_through"] += 1
                continue
            image = row.get("image") or {}
            data = image.get("bytes") if isinstance(image, Mapping) else None
            if not data:
                writer.reject(key, "no image: the record holds no image bytes")
                continue
            try:
                # load_rgb first: its pixel limit names an oversized image ("image too large") before
                # Pillow's own bomb check in a bare open() would call it corrupt
                view = load_rgb(data)
                with Image.open(io.BytesIO(data)) as probe:
                    fmt, mode = probe.format or "PNG", probe.mode
                size = view.size
                if max(size) > 2 * imgsz:
                    view.thumbnail((2 * imgsz, 2 * imgsz), Image.Resampling.BILINEAR)
            except ImageRejected as exc:
                writer.reject(key, exc.reason)
                continue
            except Exception as exc:  # noqa: BLE001 - Pillow's header errors on damaged files
                writer.reject(key, f"corrupt image: {type(exc).__name__}: {exc}")
                continue
            pending.append(_Pending(_pathcap_record(row), split, view, size, fmt, mode))
            if len(pending) >= cfg.batch_size:
                flush()
        flush()
        bar.close()
        summary = writer.finalize()
    return summary, counts


# --------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Detect subfigures with a YOLO detector trained by `pathasst train subfig` and write a PathCap folder "
        "in which compound figures are replaced by their panels (crop, bbox in the parent, parent figure_id, "
        "panel letter when read); figures with one panel stay whole. PDF candidate boxes and text spans in a "
        "record's meta count as evidence. With --eval DATA, report mAP50/mAP50-95 on a held-out split instead."
    )
    parser.add_argument("dataset", nargs="?", metavar="DATASET", help="input PathCap dataset folder")
    parser.add_argument("--model", required=True, help="detector checkpoint (.pt) or its `train subfig` run folder")
    parser.add_argument("--out", type=Path, help="output dataset folder (with --eval: where to write eval JSON)")
    parser.add_argument("--conf", type=float, default=DetectConfig.conf,
                        help="confidence from which a detection is a panel (default %(default)s: a wrong cut costs "
                             "more than a compound figure left whole)")
    parser.add_argument("--candidate-conf", type=float, default=DetectConfig.candidate_conf,
                        help="lower confidence accepted when a PDF candidate box confirms the panel (default %(default)s)")
    parser.add_argument("--iou", type=float, default=DetectConfig.iou, help="NMS IoU threshold (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DetectConfig.batch_size,
                        help="figures per forward pass (default %(default)s)")
    parser.add_argument("--imgsz", type=int, help="detector input size (default: the size it was trained at)")
    parser.add_argument("--device", help="cpu, 0, 0,1 ... (default: first GPU if any, else CPU)")
    parser.add_argument("--ocr", choices=("auto", "off", "tesseract"), default="auto",
                        help="read panel letters by OCR when the PDF text layer has none (auto: if tesseract is installed)")
    parser.add_argument("--keep-parents", action="store_true", help="also keep each compound figure's whole record")
    parser.add_argument("--shard", help="K/N: process only the K-th of N parts of the input")
    parser.add_argument("--overwrite", action="store_true", help="start the output folder afresh")
    parser.add_argument("--resume", action="store_true", help="continue a folder written with other settings")
    parser.add_argument("--eval", metavar="DATA",
                        help="evaluate instead: a YOLO data.yaml, YOLO folder or PathSubfig folder")
    parser.add_argument("--split", default="test", help="with --eval: the split to score (default %(default)s)")
    parser.set_defaults(func=run)


def _run_eval(args: argparse.Namespace) -> int:
    from pathasst.trainers.subfig import evaluate

    if args.dataset:
        raise ConfigError("--eval takes the dataset as its own value; drop the DATASET argument")
    kwargs: dict[str, Any] = dict(split=args.split, batch=args.batch_size, device=args.device, iou=0.7)
    if args.imgsz:
        kwargs["imgsz"] = args.imgsz
    result = evaluate(args.model, args.eval, **kwargs)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"eval_{result['split']}.json").write_text(text + "\n")
    print(text)
    print(f"detector {args.model} on {args.eval} [{result['split']}, {result['images']} images]: "
          f"mAP50 {result['map50']:.4f}, mAP50-95 {result['map50_95']:.4f}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.eval:
        return _run_eval(args)
    if not args.dataset:
        raise ConfigError("curate detect: give the input DATASET folder (or --eval DATA)")
    if args.out is None:
        raise ConfigError("curate detect: --out DIR is required")
    try:
        cfg = DetectConfig(model=str(args.model), conf=args.conf, candidate_conf=min(args.candidate_conf, args.conf),
                           iou=args.iou, batch_size=args.batch_size, imgsz=args.imgsz, device=args.device,
                           ocr=args.ocr, keep_parents=args.keep_parents, shard=args.shard)
        from pathasst.inputs import parse_shard

        parse_shard(cfg.shard)
    except ValueError as exc:
        raise ConfigError(f"curate detect: {exc}") from None
    from pathasst.subcommands import invoked_command

    summary, counts = run_detect(args.dataset, args.out, cfg, overwrite=args.overwrite, resume=args.resume,
                                 command=invoked_command("pathasst curate detect"))
    report = {**summary.report(), **counts}
    (Path(args.out) / "summary.json").write_text(json.dumps(report, indent=2))
    print(f"{counts['split']} figures split into {counts['subfigures']} subfigures, {counts['whole']} kept whole, "
          f"{counts['passed_through']} passed through, {summary.rejected} rejected -> {args.out}")
    return 0
