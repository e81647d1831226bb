"""`pathasst build subfig --out DIR`: the PathSubfig dataset from Labelme, COCO and synthetic figures.

Sources, in any mix (each repeatable except ``--synthetic``):

- ``--labelme DIR`` (or one ``.json`` file): Labelme annotations, searched recursively. Rectangles
  and polygons become boxes (a polygon becomes its bounding box); other shape types (circle, line,
  point, ...) are rejected shape by shape. The image is the embedded ``imageData`` when present (as
  Labelme itself shows it), else ``imagePath`` resolved relative to the JSON file (Windows ``\\``
  separators accepted; if not found there, the file name beside the JSON).
- ``--coco FILE``: COCO detection JSON (``images``, ``annotations`` with ``bbox``, ``categories``).
  Images are looked up under ``--coco-images DIR`` when given, else beside the JSON, then in its
  ``images/`` folder. An annotation without a ``bbox`` uses its polygon segmentation's bounds.
- ``--synthetic N --images DIR_OR_DATASET``: N compound figures from the generator in
  :mod:`pathasst.dataset_builders.build.compound`, deterministic in ``--seed``; ids
  ``synth-<seed>-<index>``.

Labels and category names map to the two categories by this rule (case, spaces, ``-`` and ``_``
ignored), after any ``--label-map NAME=CATEGORY``:

- ``subfigure``: subfigure, subfig, sub figure, panel, subpanel, figure, image, subimage;
- ``panel_label``: panel label, label, panel letter, letter, subfigure label, text, char, and any
  single letter with or without parentheses or a dot (``A``, ``b``, ``(c)``, ``D.``), which is what
  annotators type when they label a letter by its own text;
- anything else: that box goes to the ledger naming the label and how to map it.

Bad input never stops the run and is never dropped silently:

- file-level (one ledger line, id = the record id it would have had): unreadable or empty JSON, not
  Labelme/COCO, missing or undecodable image (corrupt, truncated, not an image, decompression bomb),
  images under ``min_image_side`` (a 1x1 image), an annotation whose declared size differs from the
  image, and a file left with no usable box;
- box-level (one ledger line, id ``<record id>#<shape index>``, with the file and the box): zero or
  negative size, non-finite or malformed coordinates, unknown label, unsupported shape type, a box
  entirely outside the image, a box under ``min_box_side`` pixels after downscaling;
- kept, with a note: a box partly outside the image is clipped to it; every clip is one line of
  ``notes.jsonl`` in the output folder (file, box as given, box kept) and counted in
  ``summary.json``. Clipping keeps the annotator's box where it is on the image; rejecting it would
  lose real panels that were merely dragged past the edge.

Images go through :func:`pathasst.images.normalize_image`: grayscale, CMYK, palette, 16-bit and
float images become RGB or L, EXIF rotation is applied, and images longer than ``max_side`` are
downscaled with their boxes scaled by the same factors.

Units are one annotation file (Labelme), one image (COCO) or one synthetic index, so an interrupted
run resumes where it stopped. Every input ends up as a record or a ledger line.

With ``--yolo-export DIR`` the finished dataset is also written in the ultralytics layout:
``images/{train,val,test}``, ``labels/{train,val,test}`` (``class cx cy w h``, normalised) and
``data.yaml`` (``names: {0: subfigure, 1: panel_label}``), with the dataset's own splits
(``validation`` is ``val``). The export is rebuilt from the dataset folder on every run.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import io
import json
import logging
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

from pathasst.errors import ConfigError, InputError, OutputError
from pathasst.inputs import in_shard

log = logging.getLogger(__name__)

CATEGORIES = ("subfigure", "panel_label")
YOLO_SPLITS = {"train": "train", "validation": "val", "test": "test"}
NOTES = "notes.jsonl"
SUMMARY = "summary.json"
_YOLO_MARK = "# pathasst build subfig: YOLO export"

_SUBFIGURE_NAMES = {"subfigure", "subfig", "panel", "subpanel", "figure", "image", "subimage"}
_LABEL_NAMES = {"panellabel", "label", "panelletter", "letter", "subfigurelabel", "subfiglabel", "text",
                "char", "character"}
_LETTER = re.compile(r"^\(?[a-z]\)?\.?$")
_SUPPORTED_SHAPES = ("rectangle", "polygon")


@dataclasses.dataclass
class SubfigConfig:
    """Settings of ``pathasst build subfig`` (recipe keys; flags and ``key=value`` override them).

    Attributes:
        labelme: Labelme folders (searched recursively for ``*.json``) or single JSON files.
        coco: COCO detection JSON files.
        coco_images: folder the COCO ``file_name`` entries are relative to (default: beside the JSON).
        synthetic: how many synthetic compound figures to generate.
        images: the synthetic generator's image pool: a folder of images or a dataset folder.
        seed: the generator's seed; figure ``i`` depends on ``(seed, i)`` only.
        label_map: extra label or category name -> ``subfigure`` | ``panel_label`` (wins over the rule).
        yolo_export: also write the ultralytics YOLO layout here.
        max_side: longest image side kept; larger images are downscaled, boxes with them.
        max_pixels: images declaring more pixels are rejected before decoding.
        min_image_side: images whose shorter side is below this are rejected (1x1 placeholders).
        min_box_side: boxes narrower or lower than this (pixels, after downscaling) are rejected.
        pool_limit: at most this many pool images are used (the first ones, in sorted order).
        pool_side: pool images are downscaled to this longest side.
        min_width: narrowest synthetic figure (pixels).
        max_width: widest synthetic figure (pixels).
        inset_rate: share of synthetic figures with an inset.
        chart_fraction: expected share of synthetic panels drawn as charts (line, survival, bar,
            scatter, box, histogram; needs matplotlib when above 0); 0 gives micrograph-only figures.
        font_dirs: extra folders of ``.ttf``/``.otf`` faces for synthetic panel letters.
        num_proc: processes generating synthetic figures.
        shard: ``K/N``: only the K-th of N disjoint parts of the inputs (each worker its own --out).
        max_shard_mb: Parquet shard size in MB.
    """

    labelme: list[str] = dataclasses.field(default_factory=list)
    coco: list[str] = dataclasses.field(default_factory=list)
    coco_images: Optional[str] = None
    synthetic: int = 0
    images: Optional[str] = None
    seed: int = 0
    label_map: dict[str, str] = dataclasses.field(default_factory=dict)
    yolo_export: Optional[str] = None
    max_side: int = 2048
    max_pixels: int = 178_956_970
    min_image_side: int = 16
    min_box_side: float = 1.0
    pool_limit: int = 1000
    pool_side: int = 768
    min_width: int = 480
    max_width: int = 1400
    inset_rate: float = 0.2
    chart_fraction: float = 0.3
    font_dirs: list[str] = dataclasses.field(default_factory=list)
    num_proc: int = 1
    shard: Optional[str] = None
    max_shard_mb: int = 500

    def __post_init__(self) -> None:
        if self.synthetic < 0:
            raise ValueError(f"synthetic must be >= 0 (got {self.synthetic})")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (got {self.seed})")
        if self.max_side < 32:
            raise ValueError(f"max_side must be >= 32 pixels (got {self.max_side})")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1 (got {self.num_proc})")
        if not 160 <= self.min_width <= self.max_width:
            raise ValueError(f"need 160 <= min_width <= max_width (got {self.min_width}, {self.max_width})")
        if not 0.0 <= self.inset_rate <= 1.0:
            raise ValueError(f"inset_rate must be within 0..1 (got {self.inset_rate})")
        if not 0.0 <= self.chart_fraction <= 1.0:
            raise ValueError(f"chart_fraction must be within 0..1 (got {self.chart_fraction})")
        for name, category in self.label_map.items():
            if category not in CATEGORIES:
                raise ValueError(f"label_map: '{name}' maps to '{category}'; categories are {', '.join(CATEGORIES)}")
        self.shard_index()

    def shard_index(self) -> tuple[int, int] | None:
        from pathasst.inputs import parse_shard

        return parse_shard(self.shard)


# --- labels ------------------------------------------------------------------------------------


def _norm_label(label: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(label).strip().lower())


def category_for(label: Any, label_map: dict[str, str] | None = None) -> str | None:
    """The PathSubfig category of a Labelme label or COCO category name, None when unknown.

    ``label_map`` (compared case-insensitively, ignoring spaces, ``-`` and ``_``) wins over the rule
    in the module docstring.
    """
    if label is None:
        return None
    key = _norm_label(label)
    for name, category in (label_map or {}).items():
        if _norm_label(name) == key:
            return category
    if key in _SUBFIGURE_NAMES:
        return "subfigure"
    if key in _LABEL_NAMES or _LETTER.match(str(label).strip().lower()):
        return "panel_label"
    return None


# --- one annotated image -------------------------------------------------------------------------


class FileRejected(Exception):
    """A whole annotation file (or COCO image) cannot become a record; ``reason`` goes to the ledger."""

    def __init__(self, reason: str, **info: Any):
        super().__init__(reason)
        self.reason = reason
        self.info = info


@dataclasses.dataclass
class RawBox:
    """A box as annotated, in the source image's pixels (corners), before checks."""

    index: int  # shape or annotation index in its file: names the box in the ledger
    label: Any
    category: str | None
    x0: float
    y0: float
    x1: float
    y1: float
    given: Any  # what the file said (points, bbox), for the ledger


@dataclasses.dataclass
class UnitOutcome:
    """What one unit gave: at most one record, rejections ``(id, reason, info)``, clip notes."""

    record: dict[str, Any] | None = None
    rejects: list[tuple[str, str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    notes: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _oriented_size(data: bytes) -> tuple[int, int]:
    """Size of an encoded image as a viewer shows it (EXIF orientations 5..8 swap the sides)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def annotated_record(
    image_id: str,
    image: bytes,
    declared: tuple[Any, Any] | None,
    boxes: list[RawBox],
    cfg: SubfigConfig,
    file: str,
) -> UnitOutcome:
    """Normalise the image, check and scale the boxes, and build the PathSubfig record.

    Args:
        image_id: the record's id.
        image: the encoded image.
        declared: ``(width, height)`` the annotation was made on, when the file says.
        boxes: the boxes as annotated.
        cfg: the run's settings.
        file: the annotation file, named in the ledger.
    """
    from pathasst.images import ImageRejected, normalize_image

    out = UnitOutcome()
    try:
        norm = normalize_image(image, max_side=cfg.max_side, max_pixels=cfg.max_pixels)
    except ImageRejected as exc:
        raise FileRejected(exc.reason, file=file) from None
    src_w, src_h = _oriented_size(image)
    if min(src_w, src_h) < cfg.min_image_side:
        raise FileRejected(f"image too small: {src_w}x{src_h} (min_image_side={cfg.min_image_side})", file=file)
    if declared is not None and all(v is not None for v in declared):
        dw, dh = declared
        if not _finite(dw, dh) or (round(dw), round(dh)) != (src_w, src_h):
            raise FileRejected(
                f"size mismatch: the annotation says {dw}x{dh}, the image is {src_w}x{src_h}; "
                "its boxes cannot be placed", file=file)
    sx, sy = norm.width / src_w, norm.height / src_h
    objects = []
    for box in boxes:
        box_id = f"{image_id}#{box.index}"
        info = {"file": file, "box": box.given, "label": box.label}
        if box.category is None:
            out.rejects.append((box_id, f"unknown label: {box.label!r} is neither subfigure nor panel_label; "
                                f"map it with --label-map {str(box.label).strip() or 'NAME'}=subfigure", info))
            continue
        if box.x1 <= box.x0 or box.y1 <= box.y0:
            out.rejects.append((box_id, f"invalid box: zero or negative size "
                                f"({box.x1 - box.x0:g} x {box.y1 - box.y0:g} px)", info))
            continue
        x0, y0 = max(0.0, box.x0), max(0.0, box.y0)
        x1, y1 = min(float(src_w), box.x1), min(float(src_h), box.y1)
        if x1 <= x0 or y1 <= y0:
            out.rejects.append((box_id, f"box outside the image: ({box.x0:g}, {box.y0:g})-({box.x1:g}, {box.y1:g}) "
                                f"does not meet the {src_w}x{src_h} image", info))
            continue
        clipped = (x0, y0, x1, y1) != (box.x0, box.y0, box.x1, box.y1)
        bbox = [round(x0 * sx, 3), round(y0 * sy, 3), round((x1 - x0) * sx, 3), round((y1 - y0) * sy, 3)]
        if bbox[2] < cfg.min_box_side or bbox[3] < cfg.min_box_side:
            out.rejects.append((box_id, f"box too small: {bbox[2]:g} x {bbox[3]:g} px after scaling "
                                f"(min_box_side={cfg.min_box_side:g})", info))
            continue
        if clipped:
            out.notes.append({"id": box_id, "note": "box clipped to the image", "file": file, "box": box.given,
                              "image_size": [src_w, src_h], "kept_bbox": bbox})
        objects.append({"bbox": bbox, "category": box.category})
    if not objects:
        reason = "no usable boxes: every box was rejected" if boxes else "empty annotation: no boxes"
        raise FileRejected(reason, file=file)
    out.record = {
        "image_id": image_id,
        "image": norm.bytes_,
        "width": norm.width,
        "height": norm.height,
        "objects": objects,
        "origin": "annotated",
    }
    return out


# --- Labelme -----------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileRejected(f"bad annotation file: not UTF-8 text ({exc.reason})", file=str(path)) from None
    except OSError as exc:
        raise FileRejected(f"bad annotation file: cannot read ({exc.strerror or exc})", file=str(path)) from None
    if not text.strip():
        raise FileRejected("empty annotation file: 0 bytes of JSON", file=str(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileRejected(f"bad annotation file: not JSON ({exc.msg} at line {exc.lineno})", file=str(path)) from None


def _resolve_image(base: Path, name: str, extra_dirs: tuple[Path, ...] = ()) -> Path | None:
    name = name.replace("\\", "/")
    candidates = [base / name] + [d / name for d in extra_dirs] + [base / Path(name).name]
    for path in candidates:
        if path.is_file():
            return path
    return None


def labelme_units(root: Path) -> Iterator[tuple[str, str, Path]]:
    """``(unit key, image_id, json path)`` for every Labelme file under ``root`` (or ``root`` itself)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if p.is_file())
    base = root.parent if root.is_file() else root
    tag = root.stem if root.is_file() else (root.resolve().name or "labelme")
    for path in files:
        rel = path.relative_to(base).with_suffix("").as_posix()
        yield f"labelme:{tag}/{rel}", f"labelme/{tag}/{rel}", path


def labelme_outcome(image_id: str, path: Path, cfg: SubfigConfig) -> UnitOutcome:
    """Read one Labelme file into a record (or raise :class:`FileRejected`)."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise FileRejected("bad annotation file: not Labelme JSON (no 'shapes' list)", file=str(path))
    image_data = data.get("imageData")
    if image_data:
        try:
            image = base64.b64decode(str(image_data), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise FileRejected(f"bad annotation file: imageData is not base64 ({exc})", file=str(path)) from None
    else:
        name = data.get("imagePath")
        if not name:
            raise FileRejected("missing image: neither imageData nor imagePath", file=str(path))
        found = _resolve_image(path.parent, str(name))
        if found is None:
            raise FileRejected(f"missing image: {name} (not found beside {path.name})", file=str(path))
        image = found.read_bytes()
    boxes: list[RawBox] = []
    rejects: list[tuple[str, str, dict[str, Any]]] = []
    for i, shape in enumerate(data["shapes"]):
        box_id = f"{image_id}#{i}"
        if not isinstance(shape, dict):
            rejects.append((box_id, "invalid box: shape is not an object", {"file": str(path), "box": shape}))
            continue
        kind = shape.get("shape_type") or "polygon"  # Labelme's default when the key is absent
        points = shape.get("points")
        label = shape.get("label")
        info = {"file": str(path), "box": points, "label": label}
        if kind not in _SUPPORTED_SHAPES:
            rejects.append((box_id, f"unsupported shape: {kind!r} (rectangle and polygon are used)", info))
            continue
        ok = isinstance(points, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 and _finite(*p)
                                              for p in points)
        need = 2 if kind == "rectangle" else 3
        if not ok or len(points) < need:
            rejects.append((box_id, f"invalid box: a {kind} needs {need}+ finite [x, y] points", info))
            continue
        xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
        boxes.append(RawBox(i, label, category_for(label, cfg.label_map), min(xs), min(ys), max(xs), max(ys), points))
    declared = (data.get("imageWidth"), data.get("imageHeight"))
    try:
        outcome = annotated_record(image_id, image, declared, boxes, cfg, str(path))
    except FileRejected as exc:
        exc.info.setdefault("file", str(path))
        exc.rejects = rejects  # type: ignore[attr-defined]  - shape rejections still go to the ledger
        raise
    outcome.rejects[:0] = rejects
    return outcome


# --- COCO --------------------------------------------------------------------------------------


@dataclasses.dataclass
class CocoFile:
    path: Path
    tag: str
    images: list[dict[str, Any]]
    annotations: dict[Any, list[tuple[int, dict[str, Any]]]]
    categories: dict[Any, str]
    orphans: list[tuple[int, dict[str, Any]]]
    problem: FileRejected | None = None


def load_coco(path: Path) -> CocoFile:
    """Parse a COCO detection file; a file-level problem is kept in ``problem`` (for the ledger)."""
    tag = f"{path.parent.resolve().name or 'coco'}/{path.stem}"
    empty = CocoFile(path, tag, [], {}, {}, [])
    try:
        data = _read_json(path)
    except FileRejected as exc:
        empty.problem = exc
        return empty
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        empty.problem = FileRejected("bad annotation file: not COCO JSON (no 'images' list)", file=str(path))
        return empty
    categories = {c.get("id"): str(c.get("name")) for c in data.get("categories") or [] if isinstance(c, dict)}
    images = [im for im in data["images"] if isinstance(im, dict)]
    if not images:
        empty.problem = FileRejected("empty annotation file: no images", file=str(path))
        return empty
    ids = {im.get("id") for im in images}
    annotations: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    orphans = []
    for i, ann in enumerate(data.get("annotations") or []):
        if isinstance(ann, dict) and ann.get("image_id") in ids:
            annotations.setdefault(ann["image_id"], []).append((i, ann))
        else:
            orphans.append((i, ann))
    return CocoFile(path, tag, images, annotations, categories, orphans)


def coco_image_id(coco: CocoFile, image: dict[str, Any]) -> str:
    return f"coco/{coco.tag}/{image.get('file_name') or image.get('id')}"


def _coco_box(ann: dict[str, Any]) -> tuple[float, float, float, float] | None:
    bbox = ann.get("bbox")
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4 and _finite(*bbox):
        x, y, w, h = (float(v) for v in bbox)
        return x, y, x + w, y + h
    seg = ann.get("segmentation")
    if bbox is None and isinstance(seg, list) and seg and all(isinstance(s, list) for s in seg):
        coords = [v for s in seg for v in s]
        if len(coords) >= 6 and len(coords) % 2 == 0 and _finite(*coords):
            xs, ys = coords[0::2], coords[1::2]
            return min(xs), min(ys), max(xs), max(ys)
    return None


def coco_outcome(coco: CocoFile, image: dict[str, Any], cfg: SubfigConfig) -> UnitOutcome:
    """One COCO image into a record (or raise :class:`FileRejected`)."""
    image_id = coco_image_id(coco, image)
    file = f"{coco.path}#images[id={image.get('id')}]"
    name = image.get("file_name")
    if not name:
        raise FileRejected("missing image: the COCO image has no file_name", file=file)
    base = Path(cfg.coco_images) if cfg.coco_images else coco.path.parent
    found = _resolve_image(base, str(name), (coco.path.parent / "images",))
    if found is None:
        raise FileRejected(f"missing image: {name} (looked in {base})", file=file)
    boxes, rejects = [], []
    for i, ann in coco.annotations.get(image.get("id"), []):
        given = ann.get("bbox", ann.get("segmentation"))
        label = coco.categories.get(ann.get("category_id"))
        corners = _coco_box(ann)
        if corners is None:
            rejects.append((f"{image_id}#{i}", "invalid box: no finite [x, y, w, h] bbox (or polygon)",
                            {"file": file, "box": given, "label": label}))
            continue
        if label is None:
            rejects.append((f"{image_id}#{i}", f"unknown label: category_id {ann.get('category_id')!r} is not "
                            "in 'categories'", {"file": file, "box": given}))
            continue
        boxes.append(RawBox(i, label, category_for(label, cfg.label_map), *corners, given))
    try:
        outcome = annotated_record(image_id, found.read_bytes(), (image.get("width"), image.get("height")),
                                   boxes, cfg, file)
    except FileRejected as exc:
        exc.rejects = rejects  # type: ignore[attr-defined]
        raise
    outcome.rejects[:0] = rejects
    return outcome


# --- synthetic ---------------------------------------------------------------------------------

_WORKER_GEN = None


def _make_generator(pool, cfg: SubfigConfig):
    from pathasst.dataset_builders.build.compound import CompoundFigureGenerator, available_fonts

    return CompoundFigureGenerator(pool, cfg.seed, min_width=cfg.min_width, max_width=cfg.max_width,
                                   fonts=available_fonts(cfg.font_dirs), inset_rate=cfg.inset_rate,
                                   chart_fraction=cfg.chart_fraction)


def _init_worker(entries, sizes, cfg: SubfigConfig) -> None:
    global _WORKER_GEN
    from pathasst.dataset_builders.build.compound import ImagePool

    _WORKER_GEN = _make_generator(ImagePool(entries, sizes), cfg)


def _synthetic_outcome(index: int, gen=None) -> tuple[int, dict[str, Any] | None, str | None]:
    gen = gen or _WORKER_GEN
    try:
        return index, gen.record(index), None
    except Exception as exc:  # noqa: BLE001 - one failed figure is a ledger line, not a dead run
        return index, None, f"generator error: {type(exc).__name__}: {str(exc)[:300]}"


def _synthetic_results(pool, cfg: SubfigConfig, indices: list[int]) -> Iterator[tuple[int, Any, Any]]:
    """Generated records in index order; ``num_proc`` processes each hold the pool and a generator."""
    if cfg.num_proc <= 1 or len(indices) < 8:
        gen = _make_generator(pool, cfg)
        for i in indices:
            yield _synthetic_outcome(i, gen)
        return
    from concurrent.futures import ProcessPoolExecutor

    entries = pool.entries()
    with ProcessPoolExecutor(cfg.num_proc, initializer=_init_worker, initargs=(entries, pool.sizes, cfg)) as ex:
        # map keeps order; chunks amortise the transfer of each encoded figure
        yield from ex.map(_synthetic_outcome, indices, chunksize=4)


# --- the run -----------------------------------------------------------------------------------


@dataclasses.dataclass
class SubfigSummary:
    """What ``build subfig`` reports (also written as ``summary.json`` in the output folder)."""

    out: str
    records: dict[str, int]
    rejected: int
    reject_reasons: dict[str, int]
    inputs_done: int
    objects: dict[str, int]
    records_by_origin: dict[str, int]
    boxes_clipped: int
    yolo: dict[str, Any] | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _write_unit(writer, key: str, image_id: str, outcome: UnitOutcome | None, error: FileRejected | None,
                notes_fh) -> None:
    with writer.unit(key):
        extra = getattr(error, "rejects", []) if error else []
        for item_id, reason, info in (outcome.rejects if outcome else []) + extra:
            writer.reject(item_id, reason, **info)
        if error is not None:
            writer.reject(image_id, error.reason, **error.info)
        elif outcome is not None and outcome.record is not None:
            writer.add(outcome.record)
    for note in (outcome.notes if outcome else []):
        notes_fh.write(json.dumps(note, ensure_ascii=False, default=str) + "\n")


def build_subfig(
    cfg: SubfigConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> SubfigSummary:
    """Build the PathSubfig dataset folder ``out`` (and the YOLO export when configured).

    Raises:
        ConfigError: no source given, or ``synthetic`` without ``images``.
        InputError: an input path does not exist, or the pool holds no usable image.
        OutputError: ``out`` or the YOLO folder cannot be used.
    """
    import time

    from tqdm.auto import tqdm

    from pathasst.inputs import require_paths
    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    start = time.monotonic()
    if not (cfg.labelme or cfg.coco or cfg.synthetic):
        raise ConfigError("nothing to build: pass --labelme DIR, --coco FILE and/or --synthetic N --images DIR")
    if cfg.synthetic and not cfg.images:
        raise ConfigError("--synthetic N needs --images DIR_OR_DATASET: the pictures panels are cut from")
    require_paths(cfg.labelme + cfg.coco + ([cfg.images] if cfg.synthetic else [])
                  + ([cfg.coco_images] if cfg.coco_images else []))
    out = Path(out)
    if cfg.yolo_export:
        _check_yolo_target(Path(cfg.yolo_export), out)
    shard = cfg.shard_index()
    # What does not change the dataset stays out of the config hash (still written to config.yaml):
    # the YOLO export is derived from the finished folder, and processes give the same figures.
    runtime_keys = ("yolo_export", "num_proc", "max_shard_mb")
    spec = get_spec("pathsubfig")
    seen_keys: set[str] = set()
    dup_counts: dict[str, int] = {}

    def fresh(key: str, image_id: str, writer) -> bool:
        if not in_shard(key, shard):
            return False
        if key in seen_keys:  # two inputs that map to one id: the second would be lost on resume
            n = dup_counts[key] = dup_counts.get(key, 0) + 1
            dup_key = f"{key}#dup{n}"
            if not writer.is_done(dup_key):
                with writer.unit(dup_key):
                    writer.reject(f"{image_id}#dup{n}", f"duplicate input: another input of this run is also {key}; "
                                  "rename one of them")
            return False
        seen_keys.add(key)
        return not writer.is_done(key)

    with DatasetWriter(out, spec, config=cfg, resume=resume, overwrite=overwrite,
                       max_shard_bytes=cfg.max_shard_mb << 20, command=command,
                       config_ignore=runtime_keys) as writer, \
            open(out / NOTES, "a", encoding="utf-8") as notes_fh:
        bar = tqdm(desc="build subfig", unit="input", disable=not progress)
        for root in cfg.labelme:
            for key, image_id, path in labelme_units(Path(root)):
                if not fresh(key, image_id, writer):
                    continue
                try:
                    _write_unit(writer, key, image_id, labelme_outcome(image_id, path, cfg), None, notes_fh)
                except FileRejected as exc:
                    _write_unit(writer, key, image_id, None, exc, notes_fh)
                bar.update(1)
        for file in cfg.coco:
            coco = load_coco(Path(file))
            file_key = f"coco:{coco.tag}"
            if coco.problem is not None:
                if fresh(file_key, file_key, writer):
                    _write_unit(writer, file_key, file_key, None, coco.problem, notes_fh)
                continue
            if coco.orphans and fresh(file_key + ":orphans", file_key, writer):
                with writer.unit(file_key + ":orphans"):
                    for i, ann in coco.orphans:
                        writer.reject(f"{file_key}#{i}", "invalid box: annotation for an image id that is not in "
                                      "'images'", file=str(coco.path), box=ann)
            for image in coco.images:
                image_id = coco_image_id(coco, image)
                key = f"coco:{coco.tag}:{image.get('id')}"
                if not fresh(key, image_id, writer):
                    continue
                try:
                    _write_unit(writer, key, image_id, coco_outcome(coco, image, cfg), None, notes_fh)
                except FileRejected as exc:
                    _write_unit(writer, key, image_id, None, exc, notes_fh)
                bar.update(1)
        if cfg.synthetic:
            from pathasst.dataset_builders.build.compound import ImagePool, synthetic_id

            keys = {i: f"synthetic:{cfg.seed}:{i}" for i in range(cfg.synthetic)}
            todo = [i for i, k in keys.items() if fresh(k, synthetic_id(cfg.seed, i), writer)]
            if todo:
                pool, pool_rejects = ImagePool.load(cfg.images, max_side=cfg.pool_side, limit=cfg.pool_limit,
                                                    max_pixels=cfg.max_pixels)
                for name, reason in pool_rejects:
                    if not writer.is_done(f"pool:{name}"):
                        writer.reject(f"pool:{name}", f"pool {reason}", images=str(cfg.images))
                if pool is None:
                    raise InputError(f"--images {cfg.images}: no usable image for the synthetic figures "
                                     f"({len(pool_rejects)} rejected; see {out / 'rejects.jsonl'})")
                log.info("synthetic: %d figures from a pool of %d images", len(todo), len(pool))
                for index, record, error in _synthetic_results(pool, cfg, todo):
                    image_id = synthetic_id(cfg.seed, index)
                    with writer.unit(keys[index]):
                        if record is not None:
                            writer.add(record)
                        else:
                            writer.reject(image_id, error)
                    bar.update(1)
        bar.close()
        stats = _dataset_stats(writer)
        summary = writer.finalize(card_text=_card_text(stats))
    clipped = _dedupe_notes(out / NOTES)
    yolo = export_yolo(out, cfg.yolo_export) if cfg.yolo_export else None
    result = SubfigSummary(
        out=str(out), records=summary.records, rejected=summary.rejected, reject_reasons=summary.reject_reasons,
        inputs_done=summary.units, objects=stats["objects"], records_by_origin=stats["origin"],
        boxes_clipped=clipped, yolo=yolo, seconds=round(time.monotonic() - start, 3),
    )
    (out / SUMMARY).write_text(json.dumps(result.as_dict(), indent=2))
    return result


def _dataset_stats(writer) -> dict[str, Any]:
    """Objects by category and records by origin over everything committed (earlier runs too)."""
    import pyarrow.parquet as pq

    writer.commit()
    objects: Counter[str] = Counter()
    origin: Counter[str] = Counter()
    for shard in writer.manifest["shards"]:
        table = pq.read_table(writer.out / shard["file"], columns=["objects", "origin"])
        for row in table.column("objects").to_pylist():
            objects.update(o["category"] for o in row)
        origin.update(table.column("origin").to_pylist())
    return {"objects": {c: objects.get(c, 0) for c in CATEGORIES}, "origin": dict(origin)}


def _dedupe_notes(path: Path) -> int:
    """Units redone after an interruption write their notes again: keep each note once."""
    if not path.exists():
        return 0
    lines = list(dict.fromkeys(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
    return len(lines)


def _card_text(stats: dict[str, Any]) -> str:
    origin = ", ".join(f"{k}: {v}" for k, v in sorted(stats["origin"].items())) or "none"
    objects = ", ".join(f"{k}: {v}" for k, v in stats["objects"].items())
    return f"""# PathSubfig

Compound pathology figures with boxes for every **subfigure** (panel) and **panel label** (the
printed letter), for training and evaluating subfigure detectors.

- Records by origin: {origin}. Objects: {objects}.
- `annotated`: boxes drawn by people (Labelme, COCO); `synthetic`: figures laid out by the
  pathasst compound-figure generator from real images and charts it draws, with exact boxes.
- Boxes are COCO `[x, y, width, height]` in pixels of the stored image. A `subfigure` box covers
  the panel and its frame (for a chart: its plotting area's frame, without the tick labels and axis
  titles outside it); a `panel_label` box is the tight box of the letter's ink.
- Splits are assigned by a stable hash of `image_id`.
- `rejects.jsonl` lists every input, image or box that did not make it, with the reason;
  `notes.jsonl` lists boxes clipped to their image.

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/folder")
ds["train"][0]["objects"]  # [{{"bbox": [x, y, w, h], "category": "subfigure"}}, ...]
```
"""


# --- YOLO export -------------------------------------------------------------------------------


def _check_yolo_target(target: Path, out: Path) -> None:
    target_r, out_r = target.resolve(), out.resolve()
    if target_r == out_r or out_r in target_r.parents or target_r in out_r.parents:
        raise OutputError(f"--yolo-export {target} must be outside the dataset folder {out} (and not contain it)")
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"--yolo-export {target} exists and is not a folder")
        marker = target / "data.yaml"
        ours = marker.is_file() and marker.read_text(errors="replace").startswith(_YOLO_MARK)
        if any(target.iterdir()) and not ours:
            raise OutputError(f"--yolo-export {target} is not empty and holds no earlier export of "
                              "`pathasst build subfig`; choose an empty or new folder")


def _safe_name(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image"


def _image_suffix(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return ".png"


def yolo_lines(objects: list[dict[str, Any]], width: int, height: int) -> list[str]:
    """``class cx cy w h`` lines (normalised to 0..1) for PathSubfig objects."""
    lines = []
    for obj in objects:
        x, y, w, h = obj["bbox"]
        cls = CATEGORIES.index(obj["category"])
        vals = [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
        lines.append(f"{cls} " + " ".join(f"{min(1.0, max(0.0, v)):.6f}" for v in vals))
    return lines


def export_yolo(dataset: str | os.PathLike, target: str | os.PathLike) -> dict[str, Any]:
    """Write a PathSubfig dataset folder in the ultralytics YOLO detection layout.

    The export is built beside ``target`` and swapped in when complete, so an earlier export stays
    usable until the new one is whole.

    Returns:
        ``{"path", "images": {split: n}, "objects": {split: n}}``.
    """
    import pyarrow.parquet as pq
    import yaml

    dataset, target = Path(dataset), Path(target)
    _check_yolo_target(target, dataset)
    tmp = target.with_name(target.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    counts: Counter[str] = Counter()
    objects: Counter[str] = Counter()
    used: set[str] = set()
    for split in YOLO_SPLITS.values():
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
    for file in sorted((dataset / "data").glob("*.parquet")):
        split_name = file.name.split("-", 1)[0]
        split = YOLO_SPLITS.get(split_name, split_name)
        (tmp / "images" / split).mkdir(parents=True, exist_ok=True)
        (tmp / "labels" / split).mkdir(parents=True, exist_ok=True)
        pf = pq.ParquetFile(file)
        for batch in pf.iter_batches(batch_size=64, columns=["image_id", "image", "width", "height", "objects"]):
            for row in batch.to_pylist():
                data = row["image"]["bytes"]
                stem = _safe_name(row["image_id"])
                if stem in used:  # two ids that sanitise alike: keep both, apart
                    import hashlib

                    stem = f"{stem}-{hashlib.sha1(row['image_id'].encode()).hexdigest()[:8]}"
                used.add(stem)
                (tmp / "images" / split / (stem + _image_suffix(data))).write_bytes(data)
                lines = yolo_lines(row["objects"], row["width"], row["height"])
                (tmp / "labels" / split / (stem + ".txt")).write_text("".join(line + "\n" for line in lines))
                counts[split] += 1
                objects[split] += len(lines)
    data_yaml = {
        "path": str(target.resolve()),
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": {i: name for i, name in enumerate(CATEGORIES)},
    }
    (tmp / "data.yaml").write_text(f"{_YOLO_MARK} (from {dataset.name})\n" + yaml.safe_dump(data_yaml, sort_keys=False))
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.replace(old)
    tmp.replace(target)
    if old.exists():
        shutil.rmtree(old)
    if not counts.get("val"):
        log.warning("YOLO export %s has no validation images: ultralytics needs some to train", target)
    return {"path": str(target), "images": dict(counts), "objects": dict(objects)}


# --- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build the PathSubfig dataset (subfigure and panel-label boxes, COCO xywh) from Labelme and COCO "
        "annotations and synthetic compound figures; optionally export the ultralytics YOLO layout. Every "
        "input becomes a record or a line of rejects.jsonl; rerunning the same command resumes."
    )
    parser.epilog = (
        "Labels map to categories by name: subfigure/panel/image -> subfigure; label/letter/text and single "
        "letters such as A, b, (c) -> panel_label; anything else is rejected unless --label-map maps it."
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="settings such as max_side=1024 pool_limit=500 (see the recipe keys)")
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder")
    parser.add_argument("--labelme", action="append", default=[], metavar="DIR",
                        help="Labelme JSON folder (recursive) or file; repeatable")
    parser.add_argument("--coco", action="append", default=[], metavar="FILE", help="COCO detection JSON; repeatable")
    parser.add_argument("--coco-images", metavar="DIR", help="folder COCO file_name entries are relative to")
    parser.add_argument("--synthetic", type=int, metavar="N", help="generate N synthetic compound figures")
    parser.add_argument("--images", metavar="DIR_OR_DATASET",
                        help="image pool for --synthetic: a folder of images or a dataset folder (PathCap)")
    parser.add_argument("--seed", type=int, help="seed of the synthetic figures (default 0)")
    parser.add_argument("--label-map", action="append", default=[], metavar="NAME=CATEGORY",
                        help="map a label or category name to subfigure or panel_label; repeatable")
    parser.add_argument("--yolo-export", metavar="DIR", help="also write the ultralytics YOLO layout here")
    parser.add_argument("--num-proc", type=int, help="processes generating synthetic figures (default 1)")
    parser.add_argument("--shard", help="K/N: only the K-th of N parts of the inputs")
    parser.add_argument("--recipe", help="YAML file with settings (flags and key=value win over it)")
    parser.add_argument("--overwrite", action="store_true", help="start the output folder afresh")
    parser.add_argument("--resume", action="store_true", help="continue a folder written with another config")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SubfigConfig:
    """Defaults <- recipe <- ``key=value`` <- flags."""
    from pathasst.config import load_config

    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"unexpected argument '{item}': inputs are given with --labelme, --coco or --images; "
                              "settings as key=value")
    cfg = load_config(SubfigConfig, args.recipe, args.overrides)
    changes: dict[str, Any] = {}
    if args.labelme:
        changes["labelme"] = [str(p) for p in args.labelme]
    if args.coco:
        changes["coco"] = [str(p) for p in args.coco]
    for flag in ("coco_images", "synthetic", "images", "seed", "yolo_export", "num_proc", "shard"):
        value = getattr(args, flag)
        if value is not None:
            changes[flag] = str(value) if flag in ("coco_images", "images", "yolo_export") else value
    if args.label_map:
        mapping = dict(cfg.label_map)
        for item in args.label_map:
            name, sep, category = item.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"--label-map {item}: expected NAME=CATEGORY, e.g. fig=subfigure")
            mapping[name.strip()] = category.strip()
        changes["label_map"] = mapping
    try:
        return dataclasses.replace(cfg, **changes)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"command line: {exc}") from None


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from pathasst.subcommands import invoked_command

    s = build_subfig(cfg, args.out, overwrite=args.overwrite, resume=args.resume,
                     command=invoked_command("pathasst build subfig"))
    counts = ", ".join(f"{k} {v}" for k, v in s.records.items() if v) or "none"
    origin = ", ".join(f"{k} {v}" for k, v in sorted(s.records_by_origin.items()))
    reasons = "; ".join(f"{k}: {v}" for k, v in s.reject_reasons.items())
    print(f"{sum(s.records.values())} figures ({counts}; {origin}), "
          f"{s.objects['subfigure']} subfigure + {s.objects['panel_label']} panel_label boxes, "
          f"{s.rejected} rejected" + (f" ({reasons})" if reasons else "")
          + (f", {s.boxes_clipped} boxes clipped (notes.jsonl)" if s.boxes_clipped else "") + f" -> {args.out}")
    if s.yolo:
        print(f"YOLO export: {s.yolo['path']} ({', '.join(f'{k} {v}' for k, v in s.yolo['images'].items())})")
    return 0
