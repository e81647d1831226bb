"""`pathasst extract pdf`: figure-caption records from PDF textbooks, papers and atlases (pymupdf).

One unit per PDF file (``pdf:<sha256 of the file>``). The whole document is analysed first (boxes
and text, no pixels), then its records are made and written in pieces of whole pages
(:func:`extract_chunks`, about :data:`CHUNK_FIGURES` records each, committed as writer units
``<key>#part<k>``, the last as the PDF's own key): memory does not grow with a book's figures.
For each page the extractor finds

- **figures**: placed raster images (``page.get_image_info``), vector drawings
  (``page.get_drawings`` clustered into regions, with the tick and axis labels around them), and
  figures built from several placed images (adjacent images grouped into one figure; each placed
  image's box is kept in ``meta.panel_candidates`` for the subfigure stage);
- **captions**: paragraphs opening with a figure label (``Figure 2.5:``, ``Fig. 3.``, ``FIGURE 12-4``,
  ``Plate 7``, ``Figure 3 (continued)``: :data:`~pathasst.dataset_builders.extract.common.CAPTION_LABEL`),
  continued over the text blocks that follow them in the same column and type size;

and pairs them by geometry: a caption below, above, or beside its figure with nothing between the
two, the nearest first; a figure left without a caption on its page takes a caption left without a
figure on the facing page (the next page first, then the previous one). Running headers and footers
(the ``header_footer_margin`` bands), logos, icons and decorations (smaller than
``min_figure_side``, or the same image at the same place on many pages) are ignored. Figures
without a caption and captions without a figure go to the ledger, as do encrypted, corrupt and
figureless PDFs and embedded images that cannot be decoded.

``method=layout`` takes the figure and caption boxes from pymupdf's layout model instead (the
ONNX model shipped with pymupdf 2, as pymupdf4llm runs it, offline); the pairing is the same. On
the generated quality set (``benchmarks/perf/extract_pdf.py --quality``) and on real documents
(``benchmarks/perf/extract_quality.py``: R vignettes, figure recall 0.79-0.80 for the model
against 1.00 for geometry on the same tuning documents) the geometry method wins and is the
default; the numbers, held-out set included, are in ``benchmarks/perf/README.md``.

Pixels: a figure that is one placed image, shown as stored (axis-aligned, not masked, RGB or grey
8-bit, with no text or drawing on top of it), is taken **from the file by its xref**: those are
the author's own pixels at their full resolution (a 2000-pixel micrograph placed three inches wide
would lose two thirds of its pixels if rendered at 200 dpi) and a JPEG passes through untouched
instead of being decoded and re-encoded; and a damaged image stream is caught by
:func:`~pathasst.images.normalize_image` and reported, where rendering would silently draw a grey
box. Everything else (vector figures, grouped images, images with labels or arrows drawn on them,
masked, rotated, CMYK or 16-bit images) is **rendered** at ``dpi``, because only the rendering is
what the reader saw. ``pixels=render`` renders every figure.

Records (PathCap, figure level): ``source="book"``, ``source_id="<sha256>#p<page>"`` (the split
group is the book), ``figure_id="<sha256[:16]>/p<page>/f<n>"`` (n: reading order on the page),
``page`` 1-based, ``page_bbox`` ``[x, y, w, h]`` in PDF points (origin top-left), ``figure_label``
as printed, ``caption_raw`` as printed (line breaks kept, ligatures expanded). ``meta`` holds
``file``, ``method``, ``kind`` (raster | compound | vector | mixed), ``pixels`` (embedded |
rendered), ``dpi`` (rendered: the render dpi; embedded: the image's pixels per inch as placed),
``caption_pairing`` (below | above | right | left | facing-next | facing-previous),
``caption_bbox``, ``caption_page``, ``caption_distance``, ``page_size``; for grouped figures
``panel_candidates`` (each placed image's box in the record's pixels, COCO ``[x, y, w, h]``) and
``panels_pt`` (the same in page points); for figures with text on them (panel letters, tick
labels) ``text_spans`` (``[{"text", "bbox"}]``, pixels) and ``text_spans_pt`` (points): the keys
``curate detect`` reads; ``license_note`` when the licence is unknown, ``repaired`` when mupdf
had to repair the file. Ledger ids: the figure id, ``<sha256[:16]>/p<page>/c<n>`` for a
caption, ``<sha256[:16]>/p<page>`` for a page, the unit key for the whole file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from pathasst.dataset_builders.extract.common import (
    CAPTION_LABEL,
    ExtractConfig,
    License,
    Source,
    Unit,
    UnitResult,
    expand_ligatures,
    figure_record,
    normalize_license,
)
from pathasst.inputs import file_sha256

log = logging.getLogger(__name__)

METHODS = ("geometry", "layout")
PIXELS = ("auto", "render")
UNKNOWN_LICENSE = License("unknown", None, None)
_LICENSE_NOTE = "the PDF states no licence and none was given (license=...): treat as all rights reserved"

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in points, origin top-left (pymupdf)


@dataclasses.dataclass
class PdfConfig(ExtractConfig):
    """Settings of ``pathasst extract pdf`` (``key=value`` on the command line).

    Attributes:
        dpi: resolution at which vector figures, grouped images and images that must be rendered
            are drawn (lowered for a figure whose longer side would exceed ``max_side``).
        min_figure_side: points; an image, drawing or group whose longer side is smaller, or whose
            shorter side is under half of it, is a decoration (logo, icon, bullet, rule), not a
            figure.
        header_footer_margin: fraction of the page height at the top and at the bottom where
            running heads, page numbers and logos live; text and images entirely inside are ignored.
        caption_max_distance: points; the farthest a caption may sit from its figure's edge.
        group_gap: points; placed images and drawings closer than this, with no text between
            them, are one figure (the panels of a compound figure).
        method: ``geometry`` (our own page geometry, the default: it won the comparison) or
            ``layout`` (pymupdf's layout model labels picture and caption boxes).
        pixels: ``auto`` (a figure that is one image shown as stored is taken from the file by its
            xref; anything else is rendered) or ``render`` (render every figure at ``dpi``).
        license: licence of the books (PDFs rarely state one; an XMP Creative Commons licence in
            the file wins). None: the licence is recorded as ``unknown`` and ``meta`` says so.
    """

    dpi: int = 200
    min_figure_side: float = 40.0
    header_footer_margin: float = 0.06
    caption_max_distance: float = 72.0
    group_gap: float = 12.0
    method: str = "geometry"
    pixels: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 36 <= self.dpi <= 1200:
            raise ValueError(f"dpi must be between 36 and 1200 (got {self.dpi})")
        if self.min_figure_side < 0:
            raise ValueError(f"min_figure_side must be >= 0 points (got {self.min_figure_side})")
        if not 0 <= self.header_footer_margin < 0.5:
            raise ValueError(f"header_footer_margin must be a fraction of the page height in [0, 0.5) "
                             f"(got {self.header_footer_margin})")
        if self.caption_max_distance <= 0:
            raise ValueError(f"caption_max_distance must be > 0 points (got {self.caption_max_distance})")
        if self.group_gap < 0:
            raise ValueError(f"group_gap must be >= 0 points (got {self.group_gap})")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if self.method == "layout":
            import importlib.util

            if importlib.util.find_spec("pymupdf4llm") is None:
                raise ValueError("method=layout needs pymupdf4llm (pip install pymupdf4llm); method=geometry does not")
        if self.pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {', '.join(PIXELS)} (got {self.pixels!r})")


# --- geometry helpers ------------------------------------------------------------------------


def _union(boxes: Iterable[Box]) -> Box:
    boxes = list(boxes)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _inter(a: Box, b: Box) -> Box:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _gap(a: Box, b: Box) -> float:
    """Distance between two boxes along the axis that separates them (0 when they touch)."""
    dx = max(0.0, b[0] - a[2], a[0] - b[2])
    dy = max(0.0, b[1] - a[3], a[1] - b[3])
    return max(dx, dy)


def _grow(b: Box, d: float) -> Box:
    return (b[0] - d, b[1] - d, b[2] + d, b[3] + d)


def _touches(a: Box, b: Box) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _contains(outer: Box, inner: Box, tol: float = 1.0) -> bool:
    return (inner[0] >= outer[0] - tol and inner[1] >= outer[1] - tol
            and inner[2] <= outer[2] + tol and inner[3] <= outer[3] + tol)


def _centre_in(b: Box, outer: Box) -> bool:
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def _xywh(b: Box, nd: int = 2) -> list[float]:
    return [round(b[0], nd), round(b[1], nd), round(b[2] - b[0], nd), round(b[3] - b[1], nd)]


# --- page model ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Line:
    bbox: Box
    text: str
    size: float
    font: str
    block: int
    spans: tuple = ()  # ((bbox, text), ...): what the subfigure stage reads panel letters from
    dir: tuple = (1.0, 0.0)  # writing direction: (0, -1) for text set bottom to top (a sideways float)


@dataclasses.dataclass
class _Para:
    """Consecutive lines of one text block in one type size: a paragraph as printed."""

    lines: list[_Line]

    @functools.cached_property
    def bbox(self) -> Box:  # asked for thousands of times per page; lines are fixed once made
        return _union(ln.bbox for ln in self.lines)

    @property
    def size(self) -> float:
        return self.lines[0].size

    @property
    def text(self) -> str:
        return "\n".join(ln.text for ln in self.lines)


@dataclasses.dataclass
class _Caption:
    page: int  # 0-based
    index: int  # 1-based, reading order on its page
    paras: list[_Para]
    kind: str  # figure | table

    @property
    def bbox(self) -> Box:
        return _union(p.bbox for p in self.paras)

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.paras)

    def reading_side(self, side: str) -> str:
        """``side`` (where the caption sits on the page) as the reader of the caption sees it: a
        sideways float (figure and caption turned a quarter, the caption set bottom to top) has
        its caption on the right of the page and below the figure once the page is turned."""
        return _TURNED.get(self.paras[0].lines[0].dir, {}).get(side, side)

    def to_reading(self, b: Box) -> Box:
        """Box ``b`` in the frame of a reader of this caption (the page turned for a sideways
        caption; unchanged for a caption set left to right)."""
        d = self.paras[0].lines[0].dir
        if d == (0, -1):  # turned clockwise: the page's right is the reader's bottom
            return (-b[3], b[0], -b[1], b[2])
        if d == (0, 1):  # turned anticlockwise: the page's left is the reader's bottom
            return (b[1], -b[2], b[3], -b[0])
        return b


# Page side -> reading side for captions written bottom to top (the page is turned clockwise to
# read them) and top to bottom (turned anticlockwise).
_TURNED = {
    (0, -1): {"right": "below", "left": "above", "above": "right", "below": "left"},
    (0, 1): {"right": "above", "left": "below", "above": "left", "below": "right"},
}


@dataclasses.dataclass
class _Part:
    kind: str  # raster | vector
    bbox: Box
    info: Optional[dict] = None  # raster: the get_image_info entry


@dataclasses.dataclass
class _Figure:
    page: int
    parts: list[_Part]
    bbox: Box
    index: int = 0
    caption: Optional[_Caption] = None
    pairing: Optional[str] = None
    distance: Optional[float] = None
    overlaid: bool = True  # text or drawings on top of it (only single images are checked)
    spans: list = dataclasses.field(default_factory=list)  # text layer over the figure: [(bbox, text)]

    @property
    def kind(self) -> str:
        kinds = {p.kind for p in self.parts}
        rasters = sum(p.kind == "raster" for p in self.parts)
        if kinds == {"raster"}:
            return "raster" if rasters == 1 else "compound"
        if kinds == {"vector"}:
            return "vector"
        return "mixed"


@dataclasses.dataclass
class _Page:
    index: int
    size: tuple[float, float]
    figures: list[_Figure]
    captions: list[_Caption]
    blockers: list[Box]  # body text that nothing is paired across
    warning: Optional[str] = None


def _caption_label(text: str) -> Optional[str]:
    """The label a caption paragraph opens with, or None when the text is not a caption start.

    A label followed by lower-case prose ("Figure 3 shows ...") is a sentence of the body text, not
    a caption; a caption's label is followed by punctuation, a capital, a parenthesis or nothing.
    """
    match = CAPTION_LABEL.match(text)
    if not match:
        return None
    if match["continued"] or re.search(r"[:.\-\u2013\u2014|]\s*$", match.group(0)):
        return match["label"].strip()
    rest = text[match.end():]
    if not rest or rest[0].isupper() or rest[0].isdigit() or rest[0] in "([\u201c\"'":
        return match["label"].strip()
    if re.match(r"[,;]\s*[A-Z0-9(]", rest):  # "Fig. 4A, B. ...": panel letters listed after the label
        return match["label"].strip()
    return None


_TABLE_LABEL = re.compile(r"^\s*(?:table|tab\.)\s*(?:[A-Z]?\d+(?:[.\-]\d+)*|[IVXLC]+)\b", re.IGNORECASE)


def _text_lines(page: Any) -> list[_Line]:
    import pymupdf

    flags = pymupdf.TEXTFLAGS_DICT & ~pymupdf.TEXT_PRESERVE_IMAGES
    lines = []
    for b, block in enumerate(page.get_text("dict", flags=flags)["blocks"]):
        for line in block.get("lines", ()):
            spans = [s for s in line["spans"] if s["text"]]
            text = "".join(s["text"] for s in spans)
            if not text.strip():
                continue
            main = max(spans, key=lambda s: len(s["text"].strip()))
            new = _Line(tuple(line["bbox"]), text.rstrip(), round(main["size"], 1), main["font"], b,
                        tuple((tuple(sp["bbox"]), sp["text"].strip()) for sp in spans if sp["text"].strip()),
                        tuple(round(v) for v in line.get("dir", (1.0, 0.0))))
            prev = lines[-1] if lines else None
            if (prev is not None and prev.block == b and new.bbox[0] >= prev.bbox[2] - 1.0
                    and new.bbox[0] - prev.bbox[2] < 4 * max(new.size, 1.0)
                    and abs(new.bbox[1] - prev.bbox[1]) < 0.3 * max(new.size, 1.0)
                    and CAPTION_LABEL.match(prev.text)):
                # A caption line cut in two by a wide justified space ("Figure 1:      Default
                # ordination" in a narrow caption beside a figure): one line again, or the label
                # would be taken for a paragraph of its own, set in another column. (Only after a
                # label: tick labels on one baseline must stay short lines of their own.)
                lines[-1] = dataclasses.replace(prev, bbox=_union([prev.bbox, new.bbox]),
                                                text=prev.text + " " + new.text.lstrip(), spans=prev.spans + new.spans)
                continue
            lines.append(new)
    return lines


def _paragraphs(lines: list[_Line]) -> list[_Para]:
    """Split text blocks into paragraphs: at a change of type size, a blank line, a line set beside
    the previous one (another column), or a line that opens with a figure label after a short line
    or in another font (a caption set right after body text)."""
    paras: list[_Para] = []
    current: list[_Line] = []
    right = 0.0
    for ln in lines:
        if current:
            prev = current[-1]
            short = prev.bbox[2] < right - 0.15 * (right - current[0].bbox[0])  # a paragraph's last line
            new = (
                ln.block != prev.block
                or abs(ln.size - prev.size) > 0.5
                or ln.bbox[1] - prev.bbox[3] > 0.8 * max(ln.size, 1.0)
                or (ln.bbox[0] > prev.bbox[2] + ln.size and ln.bbox[1] < prev.bbox[3])  # beside it: another column
                or (_caption_label(ln.text) is not None and (ln.font != prev.font or short))
            )
            if new:
                paras.append(_Para(current))
                current, right = [], 0.0
        current.append(ln)
        right = max(right, ln.bbox[2])
    if current:
        paras.append(_Para(current))
    return paras


# --- finding figures by geometry -------------------------------------------------------------


_CLUSTER_EXACT_MAX = 2000  # boxes; above this _cluster works on an occupancy grid
_CLUSTER_GRID_STEP = 0.5  # points per grid cell of that path
_CLUSTER_GRID_MAX_CELLS = 16_000_000


def _cluster(boxes: list[Box], tol: float) -> list[list[int]]:
    """Connected components of boxes that come within ``tol`` of each other.

    Up to ``_CLUSTER_EXACT_MAX`` boxes every pair is tested. A page can hold far more paths (a heat
    map drawn as 262,756 vector cells took 494 s pairwise): then each box, grown by ``tol / 2`` on
    every side, is painted on a half-point occupancy grid and the grid's connected components
    (scipy.ndimage.label) are the clusters: the same components, with ``tol`` exact to a grid cell.
    """
    n = len(boxes)
    if n == 0:
        return []
    import numpy as np

    arr = np.asarray(boxes, dtype=float)
    if n > _CLUSTER_EXACT_MAX:
        return _cluster_on_grid(arr, tol)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Pairwise test in blocks of rows: O(n^2) comparisons, but vectorised and in bounded memory.
    step = 512
    for start in range(0, n, step):
        a = arr[start:start + step, None, :]
        near = ((a[..., 0] <= arr[None, :, 2] + tol) & (arr[None, :, 0] <= a[..., 2] + tol)
                & (a[..., 1] <= arr[None, :, 3] + tol) & (arr[None, :, 1] <= a[..., 3] + tol))
        for i, j in zip(*np.nonzero(near)):
            i, j = find(int(i) + start), find(int(j))
            if i != j:
                parent[max(i, j)] = min(i, j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


_WORDY = re.compile(r"\w")
_TICKS = re.compile(r"[\d\s.,:%+\-\u2212\u2013eE/()]+")


def _runs_along(line: Box, region: Box, text: str = "", share: float = 0.6) -> bool:
    """A line of body text rather than a label of the drawing: a horizontal line wider than 0.6 of
    the region, or a vertical one (text on a page turned by its /Rotate) longer than the region is
    tall; a y-axis title or a column of tick labels is vertical and shorter than its axis. A row of
    numbers is tick labels however wide it runs (a map's "4100 4200 ... 4600" set as one line
    spans its whole axis): body text is words. ``share``: the 0.6 (of the region's width) for
    text in the body's font, more for text in the figure's own label font (a narrow panel's
    "Time (months)" runs nearly as wide as the panel)."""
    if text and _TICKS.fullmatch(text.strip()) and re.search(r"\d", text):
        return False
    w, h = line[2] - line[0], line[3] - line[1]
    if h > w:
        return h > region[3] - region[1]
    return w > share * (region[2] - region[0])


def _cluster_on_grid(arr: Any, tol: float) -> list[list[int]]:
    """:func:`_cluster` for many boxes: components of the boxes painted on an occupancy grid."""
    import numpy as np
    from scipy import ndimage

    grown = arr + np.array([-tol / 2, -tol / 2, tol / 2, tol / 2])
    origin = grown[:, :2].min(axis=0)
    extent = grown[:, 2:].max(axis=0) - origin
    step = max(_CLUSTER_GRID_STEP, float(np.sqrt(extent[0] * extent[1] / _CLUSTER_GRID_MAX_CELLS)))
    cells = np.floor((grown - np.concatenate([origin, origin])) / step).astype(np.int64)
    width, height = int(cells[:, 2].max()) + 1, int(cells[:, 3].max()) + 1
    grid = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in cells.tolist():
        grid[y0:y1 + 1, x0:x1 + 1] = True
    labels, _ = ndimage.label(grid, structure=np.ones((3, 3), dtype=int))
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels[cells[:, 1], cells[:, 0]].tolist()):
        groups.setdefault(label, []).append(i)
    return list(groups.values())


def _visible_drawings(page: Any) -> list[dict]:
    """The page's vector paths with each ``rect`` cut to the clip that is active when it is drawn.

    Plotting programs draw lines past the plot area and let a clip path hide the rest (R's
    ``abline`` runs from edge to edge of the device); the unclipped rectangle of such a line
    would turn a plot into a region the height of the page that swallows its own caption.

    ``rect`` is a plain ``(x0, y0, x1, y1)`` tuple: the paths come from ``get_cdrawings``, not
    ``get_drawings``, whose conversion of every coordinate to pymupdf objects cost two thirds of
    the time on a page of 262,756 paths (a heat map drawn as vector cells).
    """
    out = []
    clips: list[tuple[int, Any]] = []  # (level, scissor) of the clips enclosing the current path
    for item in page.get_cdrawings(extended=True):
        level = item.get("level", 0)
        while clips and clips[-1][0] >= level:
            clips.pop()  # a clip applies to the items nested below it (higher levels) only
        kind = item.get("type")
        if kind == "clip":
            scissor = tuple(item["scissor"])
            if clips:
                scissor = _inter(scissor, clips[-1][1])
            clips.append((level, scissor))
            continue
        if kind == "group":
            continue
        if clips:
            # by hand, not Rect & Rect: a horizontal or vertical line is an "empty" rect to pymupdf
            x0, y0, x1, y1 = _inter(tuple(item["rect"]), clips[-1][1])
            if x0 > x1 or y0 > y1:
                continue  # clipped away entirely
            item["rect"] = (x0, y0, x1, y1)
        else:
            item["rect"] = tuple(item["rect"])
        out.append(item)
    return out


def _vector_regions(page: Any, drawings: list[dict], band: tuple[float, float], paras: list[_Para],
                    captions: set[int], cfg: PdfConfig, text_stats: Optional[dict] = None) -> list[Box]:
    """Regions of vector drawings, grown by the short text around them (tick and axis labels).

    ``text_stats``: characters by type size (``"sizes"``) and by font (``"fonts"``) of the pages
    analysed so far, this one's added here; the body's size and font are the document's, not the
    page's: on a page that is nearly all plot, the plot's labels outnumber the body text.
    """
    # The body's type size and font (most characters, counted over every page read so far, figureless
    # ones too): labels set smaller than it, or in another font, may sit farther out.
    stats = text_stats if text_stats is not None else {}
    sizes: dict[float, int] = stats.setdefault("sizes", {})
    for para in paras:
        sizes[para.size] = sizes.get(para.size, 0) + len(para.text)
    body_size = max(sizes, key=sizes.get) if sizes else 0.0
    fonts: dict[str, int] = stats.setdefault("fonts", {})
    for para in paras:
        for ln in para.lines:
            fonts[ln.font] = fonts.get(ln.font, 0) + len(ln.text)
    body_font = max(fonts, key=fonts.get) if fonts else ""
    rect = page.rect  # once: each page.rect works out the page's rotation again
    width, height = rect.width, rect.height
    page_area = width * height
    rects, white = [], []
    for path in drawings:
        x0, y0, x1, y1 = path["rect"]
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height))
        if box[2] < box[0] or box[3] < box[1]:
            continue
        if box[3] <= band[0] or box[1] >= band[1]:
            continue  # rules and ornaments of the running head or foot
        if _area(box) >= 0.5 * page_area:
            continue  # page backgrounds and frames
        fill, stroke = path.get("fill"), path.get("color")
        if stroke is None and fill is not None and all(c >= 0.98 for c in fill):
            white.append(box)  # erasers and label backgrounds, invisible on paper; or a canvas
            continue
        rects.append(box)
    if not rects:
        return []
    # A white rectangle under three or more visible drawings is the plot's canvas (R's pdf and tikz
    # devices paint one first): short text printed on it, a credit line, a sub-title, is the
    # plot's, not body text between the plot and its caption (see below). One holding a caption
    # is a float's background, not a plot's. The canvas itself is no ink: two plots side by side
    # may have canvases that touch, and stay two figures.
    import numpy as np

    inked = np.asarray(rects, dtype=float)
    canvases = []
    for box in white:
        if min(box[2] - box[0], box[3] - box[1]) < cfg.min_figure_side:
            continue  # a white cell of a heat map, a label's background: no canvas
        if int(_held_by(inked, box).sum()) >= 3 and not any(_centre_in(paras[k].bbox, box) for k in captions):
            canvases.append(box)
    regions = [_union(rects[i] for i in group) for group in _cluster(rects, 8.0)]
    side = cfg.min_figure_side
    big = [r for r in regions if max(r[2] - r[0], r[3] - r[1]) >= side]
    # Small multiples: a grid of plots each narrower than min_figure_side (a 5 x 5 matrix of
    # autocorrelation plots) is one figure. Plots at least half that size, four or more of them
    # within three group gaps of each other, are kept; the grouping below joins them.
    small = [r for r in regions if side / 2 <= max(r[2] - r[0], r[3] - r[1]) < side]
    for group in _cluster(small, 3 * cfg.group_gap):
        if len(group) >= 4:
            big += [small[i] for i in group]
    regions = big
    out = []
    for region in regions:
        # Grow by paragraphs of short lines that touch the region: tick labels, axis titles,
        # legends. Body text (lines as wide as the region or wider) and captions stay out.
        for _ in range(3):
            grown = region
            # The fonts of the labels already taken (the plotting program's Helvetica, say):
            # more text in one of them, not the body's font, is more of the figure's labelling.
            own = {ln.font for p in paras for ln in p.lines if _contains(grown, ln.bbox)} - {body_font}
            for k, para in enumerate(paras):
                pb = para.bbox
                # An axis title sits a line below the tick labels: text smaller than the body may
                # be 1.6 lines away, text in the figure's own label font two lines (R sets tick
                # labels a line and a half below the axis); anything else must come within 10
                # points (headings and body text beside a plot would otherwise snowball into it).
                own_font = para.lines[0].font in own
                if own_font:
                    reach = max(10.0, 3.0 * para.size)
                elif para.size < body_size - 0.3:
                    reach = max(10.0, 1.6 * para.size)
                elif (len(para.lines) == 1 and len(para.text.strip()) <= 8 and para.size <= body_size + 0.3
                      and _TICKS.fullmatch(para.text.strip()) and re.search(r"\d", para.text)):
                    # a number alone in the body's type (not larger: a section number "3.2"): a tick
                    # label or an axis title "1" of a plot typeset in the body's font
                    reach = max(10.0, 1.6 * para.size)
                else:
                    reach = 10.0
                if k in captions or _contains(grown, pb) or not _touches(_grow(grown, reach), pb):
                    continue
                share = 1.2 if own_font else 0.6
                if any(_runs_along(ln.bbox, grown, ln.text, share) for ln in para.lines):
                    continue  # a line as long as the drawing: body text, not a label
                grown = _union([grown, pb])
            if grown == region:
                break
            region = grown
        for canvas in canvases:
            if _area(_inter(region, canvas)) >= 0.9 * _area(region):
                on_it = [para.bbox for k, para in enumerate(paras)
                         if k not in captions and len(para.lines) <= 3 and _centre_in(para.bbox, canvas)]
                region = _union([region] + on_it)
                break
        # A frame full of text is a sidebar or a ruled table, not a figure. Rows of symbols with no
        # letter or digit ("+ + + +": a plot's points, drawn as characters) are no such text.
        wordy = [ln.bbox for p in paras for ln in p.lines if _centre_in(ln.bbox, region) and _WORDY.search(ln.text)]
        if sum(_area(b) for b in wordy) > 0.35 * _area(region):
            continue
        # Shaded or ruled boxes filled with lines of text and nothing else drawn (a code chunk and
        # its output under it, a note) are text boxes however short their lines: every drawing
        # there spans the region's width (a background or frame, not the boxes of a diagram),
        # and the lines run down most of its height (one label in an empty frame, a plot's title
        # over a polygon, do not).
        if wordy and _covered_length([(b[1], b[3]) for b in wordy]) >= 0.5 * (region[3] - region[1]):
            held = inked[_held_by(inked, region)]
            if len(held) and bool((held[:, 2] - held[:, 0] >= 0.9 * (region[2] - region[0])).all()):
                continue
        out.append(region)
    return out


def _held_by(boxes: Any, outer: Box, tol: float = 1.0) -> Any:
    """:func:`_contains` for an ``(n, 4)`` array of boxes at once: a boolean mask."""
    return ((boxes[:, 0] >= outer[0] - tol) & (boxes[:, 1] >= outer[1] - tol)
            & (boxes[:, 2] <= outer[2] + tol) & (boxes[:, 3] <= outer[3] + tol))


def _covered_length(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of the intervals ``(start, end)``."""
    total, reach = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def _image_parts(infos: list[dict], page: Any, band: tuple[float, float], decorations: set,
                 lines: list[_Line]) -> list[_Part]:
    rect = page.rect  # once: each page.rect works out the page's rotation again
    width, height = rect.width, rect.height
    parts = []
    for info in infos:
        x0, y0, x1, y1 = info["bbox"]
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height))
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            continue  # off the page, or a hairline
        if box[3] <= band[0] or box[1] >= band[1]:
            continue  # in the running head or foot: logos, ornaments
        if (_image_id(info), _key_box(tuple(info["bbox"]))) in decorations:
            continue  # the same image at the same place on many pages: a logo or a border
        if min(info.get("width", 0), info.get("height", 0)) < 8:
            continue  # a few pixels stretched over an area: a background tint, a rule
        if _area(box) >= 0.85 * width * height and sum(_centre_in(ln.bbox, box) for ln in lines) >= 5:
            continue  # a page-sized background (a scan under its text layer, a paper texture)
        parts.append(_Part("raster", box, info))
    return parts


def _image_id(info: dict) -> Any:
    """The image's xref, or what identifies it where the xref is not resolved (shape and size)."""
    return info.get("xref") or ("shape", info.get("width"), info.get("height"), info.get("bpc"), info.get("size"))


def _key_box(b: Box) -> tuple[int, ...]:
    return tuple(int(round(v / 2.0)) for v in b)


def _group(parts: list[_Part], blockers: list[Box], gap: float) -> list[list[_Part]]:
    """Merge parts that touch or come within ``gap`` with no text paragraph between them."""
    groups = [[p] for p in parts]
    changed = True
    while changed:
        changed = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                a, b = _union(p.bbox for p in groups[i]), _union(p.bbox for p in groups[j])
                if _gap(a, b) > gap:
                    continue
                between = _between(a, b)
                if between and any(_area(_inter(between, t)) > 1.0 for t in blockers
                                   if not _contains(a, t) and not _contains(b, t)):
                    continue
                groups[i] = groups[i] + groups[j]
                del groups[j]
                changed = True
                break
            if changed:
                break
    return groups


def _figure_sized(box: Box, side: float) -> bool:
    """Big enough to be a figure: the longer side at least ``side``, the shorter at least half
    of it. A flat plot (one row of ranges over an axis, 130 x 39 points) is a figure; an icon, a
    bullet, a rule or a colour key alone is not."""
    w, h = box[2] - box[0], box[3] - box[1]
    return max(w, h) >= side and min(w, h) >= side / 2


def _attach_strips(groups: list[list[_Part]], blockers: list[Box], cfg: PdfConfig) -> list[list[_Part]]:
    """Join a strip too narrow to be a figure to the figure it runs along: a colour key.

    A heat map's colour key (a gradient strip with its ticks and numbers, R's image plots, pheatmap)
    or a scale beside a plot is set a little farther from the plot than the panels of one figure
    are from each other; alone it is narrower than ``min_figure_side`` and would be dropped, and its
    numbers would then count as printed text between the figure and its caption. A group narrower
    than that minimum joins a figure when it lies beside it within twice ``group_gap`` with nothing
    printed between, runs along at least half the figure's side, and lies along it over at least
    80% of its own length (a rule or a strip longer than the figure does not).
    """
    side = cfg.min_figure_side
    boxes = [_union(p.bbox for p in g) for g in groups]
    big = [i for i, b in enumerate(boxes) if _figure_sized(b, side)]
    joined: dict[int, int] = {}
    for i, b in enumerate(boxes):
        if i in big:
            continue
        best = None
        for j in big:
            f = boxes[j]
            gap = _gap(b, f)
            if gap > 2 * cfg.group_gap:
                continue
            beside = b[0] >= f[2] - 1 or b[2] <= f[0] + 1  # left or right of the figure: a vertical strip
            lo, hi, flo, fhi = (b[1], b[3], f[1], f[3]) if beside else (b[0], b[2], f[0], f[2])
            if _overlap(lo, hi, flo, fhi) < 0.8 * (hi - lo) or hi - lo < 0.5 * (fhi - flo):
                continue
            between = _between(b, f)
            if between and any(_area(_inter(between, t)) > 1.0 for t in blockers
                               if not _contains(b, t) and not _contains(f, t)):
                continue
            if best is None or gap < best[0]:
                best = (gap, j)
        if best is not None:
            joined[i] = best[1]
    if not joined:
        return groups
    out = {j: list(groups[j]) for j in range(len(groups)) if j not in joined}
    for i, j in joined.items():
        out[j] += groups[i]
    return [out[j] for j in sorted(out)]


def _between(a: Box, b: Box) -> Optional[Box]:
    """The strip between two boxes that do not overlap (None when they do)."""
    if b[0] >= a[2]:
        return (a[2], max(a[1], b[1]), b[0], min(a[3], b[3]))
    if a[0] >= b[2]:
        return (b[2], max(a[1], b[1]), a[0], min(a[3], b[3]))
    if b[1] >= a[3]:
        return (max(a[0], b[0]), a[3], min(a[2], b[2]), b[1])
    if a[1] >= b[3]:
        return (max(a[0], b[0]), b[3], min(a[2], b[2]), a[1])
    return None


def _on_the_line_of(para: _Para, last_line: Box, size: float) -> bool:
    """``para`` goes on with a line ending at ``last_line``: its first line's middle within that
    line's height, starting after its start and no more than one and a half ``size`` after its end
    (a justified line in a narrow column stretches its spaces past a whole em)."""
    first = para.lines[0].bbox
    return (last_line[1] < (first[1] + first[3]) / 2 < last_line[3] and first[0] > last_line[0]
            and first[0] - last_line[2] <= 1.5 * size)


def _rest_of_caption_lines(paras: list[_Para], starts: set[int]) -> set[int]:
    """Paragraphs that only continue the last line of a caption paragraph (or of such a piece): a
    caption line that the text layer broke into blocks at inline math or a lowered letter."""
    found: set[int] = set()
    frontier = set(starts)
    while frontier:
        new = {j for j, para in enumerate(paras) if j not in starts and j not in found
               for k in frontier if _on_the_line_of(para, paras[k].lines[-1].bbox, paras[k].size)
               and abs(para.size - paras[k].size) <= 0.5}
        found |= new
        frontier = new
    return found


def _captions_from_paras(paras: list[_Para], page_index: int, taken: list[Box]) -> tuple[list[_Caption], set[int]]:
    """Caption paragraphs and their continuations (later paragraphs of the same column, type size
    and leading that do not open with a label). Returns the captions and the paragraphs used."""
    starts = []
    for k, para in enumerate(paras):
        first = para.lines[0].text
        if _caption_label(first):
            starts.append((k, "figure"))
        elif _TABLE_LABEL.match(first):
            starts.append((k, "table"))
    used = {k for k, _ in starts}
    captions = []
    for k, kind in starts:
        chain = [paras[k]]
        while True:
            last = chain[-1]
            lb = _union(p.bbox for p in chain)
            best: Optional[tuple] = None
            for j, para in enumerate(paras):
                if j in used:
                    continue
                pb = para.bbox
                # Another type is the body text after the caption, unless it follows at the
                # caption's own leading and from its left edge: a bold title line, then the
                # description in another face ("Figure 3: Small figure" / "A plot displayed with
                # the \smallfigure ...", BiocStyle, a line whose code outweighs its words).
                tight = -1.0 <= pb[1] - last.bbox[3] <= 0.5 * last.size and abs(pb[0] - lb[0]) <= 1.0
                if (abs(para.size - last.size) > 0.5 or para.lines[0].font != last.lines[-1].font) and not tight:
                    continue
                below = -1.0 <= pb[1] - last.bbox[3] <= 0.9 * last.size + 2
                # The rest of a caption line that the text layer set as a block of its own (after
                # inline math: "... x" then "1 + x2 + x3, with" and the lines under it; a logo
                # with a lowered letter, "X" "E" "LaTeX example"): it sits on the caption's last
                # line (its middle within that line's height), after its start, and either in
                # the same column (the overlap test) or where the line left off.
                first, end = para.lines[0].bbox, last.lines[-1].bbox
                rest_of_line = end[1] < (first[1] + first[3]) / 2 < end[3] and first[0] > end[0]
                if not (below or rest_of_line):
                    continue
                same_column = _overlap(pb[0], pb[2], lb[0], lb[2]) >= 0.5 * min(pb[2] - pb[0], lb[2] - lb[0])
                if not same_column and not _on_the_line_of(para, end, last.size):
                    continue
                if any(_centre_in(pb, t) for t in taken):
                    continue
                if best is None or (rest_of_line, -first[0]) > best[0]:
                    best = ((rest_of_line, -first[0]), j)  # the line's own continuation, leftmost first
            if best is None:
                break
            nxt = best[1]
            used.add(nxt)
            chain.append(paras[nxt])
        captions.append(_Caption(page_index, 0, chain, kind))
    return captions, used


_SUBCAPTION = re.compile(r"^\s*\((?:[a-z]|[ivx]{1,4})\)(?:\s|$)")


def _attach_subcaptions(figures: list[_Figure], paras: list[_Para], skip: set[int]) -> None:
    """Give each figure the sub-captions set just under (or over) it: "(a) Epidemic proportion.".

    A figure of LaTeX subfigures has a short "(a) ..." line under each panel, in the body font and
    a line or two of white away, and the figure's own caption below them; left as body text,
    those lines would stand between the panels and their caption. A paragraph of at most three
    lines that opens with "(a)", lies mostly within the width of a figure and at most two and a
    half lines from its edge is taken into that figure's box (the reader sees it as part of it).
    """
    for k, para in enumerate(paras):
        if k in skip or len(para.lines) > 3 or not _SUBCAPTION.match(para.lines[0].text):
            continue
        pb = para.bbox
        reach = 2.5 * max(para.size, 1.0)
        best = None
        for fig in figures:
            f = fig.bbox
            if _contains(f, pb) or _overlap(f[0], f[2], pb[0], pb[2]) < 0.5 * (pb[2] - pb[0]):
                continue
            dist = pb[1] - f[3] if pb[1] >= f[3] - 1.0 else f[1] - pb[3]
            if -1.0 <= dist <= reach and (best is None or dist < best[0]):
                best = (dist, fig)
        if best is not None:
            best[1].bbox = _union([best[1].bbox, pb])


def _reading_order(boxes: list[Box]) -> list[int]:
    return sorted(range(len(boxes)), key=lambda i: (round(boxes[i][1] / 4.0), boxes[i][0]))


def _analyse_page(page: Any, infos: list[dict], decorations: set, cfg: PdfConfig,
                  layout: Optional[list] = None, text_stats: Optional[dict] = None) -> _Page:
    """Figures, captions and body text of one page (geometry, or the layout model's boxes).

    ``text_stats``: the document's characters by size and font so far (see :func:`_vector_regions`).
    """
    rect = page.rect  # once: each page.rect works out the page's rotation again
    width, height = rect.width, rect.height
    band = (cfg.header_footer_margin * height, height - cfg.header_footer_margin * height)
    # Running heads and feet are the paragraphs wholly inside the bands: a caption or a paragraph
    # that starts in the top band of a page set high (no running head) and goes on below it stays.
    all_lines = _text_lines(page)
    paras = [p for p in _paragraphs(all_lines)
             if not all(ln.bbox[3] <= band[0] or ln.bbox[1] >= band[1] for ln in p.lines)]
    kept = {id(ln) for p in paras for ln in p.lines}
    lines = [ln for ln in all_lines if id(ln) in kept]
    drawings = _visible_drawings(page)

    if layout is None:
        cap_idx = {k for k, p in enumerate(paras) if _caption_label(p.lines[0].text) or _TABLE_LABEL.match(p.lines[0].text)}
        cap_idx |= _rest_of_caption_lines(paras, cap_idx)  # not a plot's labels, however short
        parts = _image_parts(infos, page, band, decorations, lines)
        body = [p.bbox for k, p in enumerate(paras) if k not in cap_idx
                and not any(_centre_in(p.bbox, part.bbox) for part in parts)]
        vectors = _vector_regions(page, drawings, band, paras, cap_idx, cfg, text_stats)
        parts += [_Part("vector", r) for r in vectors]
        # Text inside an image or a drawing region (panel letters, tick labels) belongs to it.
        blockers_for_grouping = [b for b in body if not any(_contains(part.bbox, b, 2.0) for part in parts)]
        blockers_here = blockers_for_grouping + [paras[k].bbox for k in cap_idx]
        groups = _attach_strips(_group(parts, blockers_here, cfg.group_gap), blockers_here, cfg)
        figures = []
        for group in groups:
            box = _union(p.bbox for p in group)
            if not _figure_sized(box, cfg.min_figure_side):
                continue  # icons, bullets, small ornaments
            figures.append(_Figure(page.number, group, box))
        _attach_subcaptions(figures, paras, cap_idx)
        taken = [f.bbox for f in figures]
        captions, used = _captions_from_paras(paras, page.number, taken)
    else:
        figures, captions, used = _layout_page(page, infos, band, decorations, lines, paras, layout, cfg)
        taken = [f.bbox for f in figures]

    # Everything printed between a figure and a caption keeps them apart: body paragraphs and
    # other captions. Text inside a figure (its labels) does not.
    blockers = [p.bbox for k, p in enumerate(paras) if k not in used and not any(_centre_in(p.bbox, t) for t in taken)]
    for n, i in enumerate(_reading_order([f.bbox for f in figures]), 1):
        figures[i].index = n
    figures.sort(key=lambda f: f.index)
    for n, i in enumerate(_reading_order([c.bbox for c in captions]), 1):
        captions[i].index = n
    captions.sort(key=lambda c: c.index)
    # A single image with text or drawings on top (labels, arrows, scale bars) must be rendered
    # to look as printed; decide here, where the page's text and drawings are at hand.
    ink = [ln.bbox for ln in lines] + [d["rect"] for d in drawings]
    for fig in figures:
        fig.spans = [sp for ln in lines if _centre_in(ln.bbox, fig.bbox) for sp in ln.spans]
        if len(fig.parts) == 1 and fig.parts[0].kind == "raster":
            fig.overlaid = any(_area(_inter(b, fig.bbox)) > 1.0 for b in ink)
    return _Page(page.number, (width, height), figures, captions, blockers)


# --- layout model ----------------------------------------------------------------------------


def _layout_boxes(page: Any) -> list[tuple[Box, str]]:
    """Picture and caption boxes of pymupdf's layout model, post-processed as pymupdf4llm does
    (``parse_document``): the GNN's boxes, pictures grown over the images and drawings they
    touch, and images and drawing clusters no box covers added as pictures."""
    import pymupdf

    from pymupdf4llm.helpers import document_layout, utils

    textpage = page.get_textpage(flags=document_layout.FLAGS, clip=pymupdf.INFINITE_RECT())
    blocks = textpage.extractDICT()["blocks"]
    document_layout.get_layout_locked(page, return_raw=True)
    info = []
    for b in page.layout_information or []:
        gb = list(b["group_bbox"])
        if gb[2] - gb[0] <= 2 or gb[3] - gb[1] <= 2:
            continue
        if b["class_name"] == "table" and not b.get("table_grid"):
            continue
        info.append(gb + [b["class_name"]])
    page.layout_information = info
    utils.clean_pictures(page, blocks)
    utils.add_image_orphans(page, blocks)
    return [(tuple(float(v) for v in b[:4]), b[4]) for b in page.layout_information]


def _layout_page(page: Any, infos: list[dict], band: tuple[float, float], decorations: set, lines: list[_Line],
                 paras: list[_Para], boxes: list, cfg: PdfConfig):
    parts_all = _image_parts(infos, page, band, decorations, lines)
    figures = []
    for box, cls in boxes:
        if cls != "picture":
            continue
        box = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], page.rect.width), min(box[3], page.rect.height))
        if box[3] <= band[0] or box[1] >= band[1]:
            continue
        if not _figure_sized(box, cfg.min_figure_side):
            continue
        inner = [p for p in parts_all if _area(_inter(p.bbox, box)) > 0.5 * _area(p.bbox)]
        covered = sum(_area(p.bbox) for p in inner)
        parts = inner if inner and covered >= 0.5 * _area(box) else inner + [_Part("vector", box)]
        figures.append(_Figure(page.number, parts, box))
    captions, used = [], set()
    for box, cls in boxes:
        if cls != "caption":
            continue
        ks = [k for k, p in enumerate(paras) if _centre_in(p.bbox, box) and k not in used]
        if not ks:
            continue
        used.update(ks)
        kind = "table" if _TABLE_LABEL.match(paras[ks[0]].lines[0].text) else "figure"
        captions.append(_Caption(page.number, 0, [paras[k] for k in ks], kind))
    return figures, captions, used


# --- pairing ---------------------------------------------------------------------------------

_SIDE_COST = {"below": 0.0, "above": 2.0, "right": 4.0, "left": 4.0}


def _candidates(fig: _Figure, cap: _Caption, others: list[Box], max_dist: float,
                side_cost: Optional[dict[str, float]] = None) -> Optional[tuple[float, str, float]]:
    f, c = fig.bbox, cap.bbox
    fw, fh, cw, ch = f[2] - f[0], f[3] - f[1], c[2] - c[0], c[3] - c[1]
    options = []
    h_ok = _overlap(f[0], f[2], c[0], c[2]) >= 0.5 * min(fw, cw)
    # (beside: 0.4 of the caption's height, for a caption set level with the top of the plot's
    # device, above the plot's own ink)
    v_ok = _overlap(f[1], f[3], c[1], c[3]) >= 0.4 * min(fh, ch)
    if h_ok:
        options.append(("below", c[1] - f[3], (max(f[0], c[0]), f[3], min(f[2], c[2]), c[1])))
        options.append(("above", f[1] - c[3], (max(f[0], c[0]), c[3], min(f[2], c[2]), f[1])))
    elif _overlap(f[0], f[2], c[0], c[2]) > 0:
        # A short caption set flush left under a narrow figure centred on the page (BiocStyle) shares
        # only a little of its width: still its caption when nothing is printed anywhere between
        # them across both widths, at a cost that lets any caption really under the figure win.
        extra = max_dist / 2
        span = (min(f[0], c[0]), max(f[2], c[2]))
        options.append(("below", c[1] - f[3], (span[0], f[3], span[1], c[1]), extra))
        options.append(("above", f[1] - c[3], (span[0], c[3], span[1], f[1]), extra))
    if v_ok:
        options.append(("right", c[0] - f[2], (f[2], max(f[1], c[1]), c[0], min(f[3], c[3]))))
        options.append(("left", f[0] - c[2], (c[2], max(f[1], c[1]), f[0], min(f[3], c[3]))))
    best = None
    for side, dist, strip, *extra in options:
        if not -3.0 <= dist <= max_dist:
            continue
        strip = (strip[0] + 0.5, strip[1] + 0.5, strip[2] - 0.5, strip[3] - 0.5)
        if dist > 0 and any(_area(_inter(strip, o)) > 0.5 for o in others):
            continue  # something printed between them
        cost = max(dist, 0.0) + (side_cost or _SIDE_COST)[side] + sum(extra)
        if best is None or cost < best[0]:
            best = (cost, side, dist)
    return best


def _caption_convention(pages: list[_Page], max_dist: float) -> Optional[str]:
    """``below`` or ``above`` when the document clearly sets its figure captions on that side.

    A caption that can pair with one figure only votes for the side it sits on; a side with at least
    three votes and more than two thirds of them is the document's convention. Where two figures
    sandwich a caption, the convention decides whose caption it is: a caption between a figure and
    the next is the first one's in a document that captions below.
    """
    votes = {"below": 0, "above": 0}
    for page in pages:
        for ci, cap in enumerate(page.captions):
            if cap.kind != "figure":
                continue
            sides = []
            for fi, fig in enumerate(page.figures):
                others = page.blockers + [f.bbox for k, f in enumerate(page.figures) if k != fi] + [
                    c.bbox for k, c in enumerate(page.captions) if k != ci]
                found = _candidates(fig, cap, others, max_dist)
                if found:
                    sides.append(found[1])
            if len(sides) == 1 and sides[0] in votes:
                votes[sides[0]] += 1
    side, n = max(votes.items(), key=lambda kv: kv[1])
    total = sum(votes.values())
    return side if n >= 3 and n > 2 * total / 3 else None


def _pair_page(page: _Page, max_dist: float, convention: Optional[str] = None) -> None:
    _join_row_over_caption(page, max_dist, "above" if convention == "above" else "below")
    captions = [c for c in page.captions]
    side_cost = dict(_SIDE_COST)
    if convention is not None:  # the other vertical side only when nothing else will do
        side_cost["above" if convention == "below" else "below"] += max_dist
    pairs = []
    for fi, fig in enumerate(page.figures):
        for ci, cap in enumerate(captions):
            others = page.blockers + [f.bbox for k, f in enumerate(page.figures) if k != fi] + [
                c.bbox for k, c in enumerate(captions) if k != ci]
            found = _candidates(fig, cap, others, max_dist, side_cost)
            if found:
                pairs.append((found[0], fi, ci, found[1], found[2]))
    for _, fi, ci, side, dist in _best_pairs(pairs):
        fig = page.figures[fi]
        fig.caption, fig.pairing, fig.distance = captions[ci], captions[ci].reading_side(side), round(dist, 2)
    _merge_panels_over_caption(page, max_dist)
    _pair_across_white(page, max_dist, convention)


def _best_pairs(pairs: list[tuple]) -> list[tuple]:
    """The most figure-caption pairs a page allows, and of those the cheapest: ``pairs`` are
    ``(cost, figure, caption, side, distance)`` candidates.

    Taking the cheapest pair first can leave a caption without its figure: two images stacked with
    a caption between them, 24 points under the first and 19 over the second, and another caption
    under the second. The first caption is the second image's by distance, and the second caption
    is then left with nothing; the assignment pairs both (scipy's linear_sum_assignment on costs
    shifted so that every pair counts before any distance does).
    """
    if not pairs:
        return []
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    figs = sorted({p[1] for p in pairs})
    caps = sorted({p[2] for p in pairs})
    best: dict[tuple[int, int], tuple] = {}
    for p in pairs:
        if (p[1], p[2]) not in best or p[0] < best[(p[1], p[2])][0]:
            best[(p[1], p[2])] = p
    shift = 1.0 + sum(p[0] for p in best.values())
    cost = np.zeros((len(figs), len(caps)))
    for (fi, ci), p in best.items():
        cost[figs.index(fi), caps.index(ci)] = p[0] - shift
    rows, cols = linear_sum_assignment(cost)
    return sorted(best[(figs[r], caps[c])] for r, c in zip(rows, cols) if (figs[r], caps[c]) in best)


def _pair_across_white(page: _Page, max_dist: float, convention: Optional[str]) -> None:
    """A figure and a caption both left alone pair across up to twice ``max_dist`` of white.

    A plot exported with empty space under it (a device taller than its panels) leaves its caption
    farther off than any caption sits from its figure; with nothing printed between them and
    neither paired, the caption on the document's caption side (below when it has none) is still
    that figure's.
    """
    paired = {id(f.caption) for f in page.figures if f.caption is not None}
    side = convention or "below"
    for cap in page.captions:
        if cap.kind != "figure" or id(cap) in paired:
            continue
        best = None
        for fig in page.figures:
            if fig.caption is not None:
                continue
            found = _candidates(fig, cap, page.blockers + [o.bbox for o in page.figures if o is not fig]
                                + [o.bbox for o in page.captions if o is not cap], 2 * max_dist)
            if found and found[1] == side and found[2] > max_dist and (best is None or found[2] < best[0]):
                best = (found[2], fig)
        if best is not None:
            best[1].caption, best[1].pairing, best[1].distance = cap, cap.reading_side(side), round(best[0], 2)
            paired.add(id(cap))


def _join(page: _Page, loose: list[_Figure]) -> _Figure:
    """Make ``loose`` one figure (the first in reading order keeps its place and index)."""
    first = min(loose, key=lambda f: f.index)
    first.parts = [part for f in loose for part in f.parts]
    first.bbox = _union(f.bbox for f in loose)
    first.spans = [sp for f in loose for sp in f.spans]
    first.overlaid = True
    page.figures = [f for f in page.figures if f is first or all(f is not g for g in loose)]
    return first


def _renumber(page: _Page) -> None:
    """Figure ids follow reading order on the page: renumber without gaps."""
    for n, fig in enumerate(sorted(page.figures, key=lambda f: f.index), 1):
        fig.index = n


def _join_row_over_caption(page: _Page, max_dist: float, side: str) -> None:
    """Join a row of figures that one caption spans into one figure, before any pairing.

    Panels set side by side as separate plots (LaTeX subfigures, a row of R devices) are separate
    drawings with white between them; their caption is centred under the whole row. Each panel
    would pair with it alone (the nearest wins, the others are left without a caption). A figure
    caption that runs under at least half the width of each of two or more figures of one row,
    within ``max_dist`` of each with nothing printed between, is their caption: they are one
    figure. (Two figures side by side with a caption each: each caption runs under its own.)
    ``side``: where the document sets its captions (``below``, or ``above`` by its convention),
    as the caption's reader sees it: for a sideways caption the page is turned first.
    """
    joined = False
    for cap in page.captions:
        if cap.kind != "figure":
            continue
        turn = cap.to_reading
        c = turn(cap.bbox)
        row = []
        for fig in page.figures:
            f = turn(fig.bbox)
            dist = c[1] - f[3] if side == "below" else f[1] - c[3]
            if not -3.0 <= dist <= max_dist or _overlap(f[0], f[2], c[0], c[2]) < 0.5 * (f[2] - f[0]):
                continue
            if side == "below":
                strip = (max(f[0], c[0]) + 0.5, f[3] + 0.5, min(f[2], c[2]) - 0.5, c[1] - 0.5)
            else:
                strip = (max(f[0], c[0]) + 0.5, c[3] + 0.5, min(f[2], c[2]) - 0.5, f[1] - 0.5)
            others = [turn(o) for o in page.blockers] + [turn(o.bbox) for o in page.captions if o is not cap]
            if dist > 0 and any(_area(_inter(strip, o)) > 0.5 for o in others):
                continue
            row.append(fig)
        if len(row) < 2:
            continue
        # one row: every figure shares most of its height with the tallest
        tall = max((turn(f.bbox) for f in row), key=lambda b: b[3] - b[1])
        row = [f for f in row
               if _overlap(turn(f.bbox)[1], turn(f.bbox)[3], tall[1], tall[3]) >= 0.5 * (turn(f.bbox)[3] - turn(f.bbox)[1])]
        if len(row) >= 2:
            _join(page, row)
            joined = True
    if joined:
        _renumber(page)


def _merge_panels_over_caption(page: _Page, max_dist: float) -> None:
    """Join the loose panels of one figure under the caption they share.

    The panels of a vector figure can stand far apart (two diagrams side by side, 60 points of
    white between them) and the caption, centred under the whole, then lies under neither panel
    enough to pair with it. A figure caption left unpaired takes every unpaired figure that sits
    above it within ``max_dist``, overlaps it horizontally and has nothing printed between them,
    when there are at least two: together they are one figure. One such figure alone is left
    alone (its pairing already failed for a reason the rules above state).
    """
    paired = {id(f.caption) for f in page.figures if f.caption is not None}
    merged = False
    for cap in page.captions:
        if cap.kind != "figure" or id(cap) in paired:
            continue
        c = cap.bbox
        loose = []
        for fig in page.figures:
            f = fig.bbox
            if fig.caption is not None or not (-3.0 <= c[1] - f[3] <= max_dist) or _overlap(f[0], f[2], c[0], c[2]) <= 0:
                continue
            strip = (max(f[0], c[0]) + 0.5, f[3] + 0.5, min(f[2], c[2]) - 0.5, c[1] - 0.5)
            others = page.blockers + [o.bbox for o in page.figures if o is not fig] + [
                o.bbox for o in page.captions if o is not cap]
            if c[1] - f[3] > 0 and any(_area(_inter(strip, o)) > 0.5 for o in others):
                continue
            loose.append(fig)
        if len(loose) < 2:
            continue
        first = _join(page, loose)
        first.caption, first.pairing, first.distance = cap, "below", round(c[1] - first.bbox[3], 2)
        paired.add(id(cap))
        merged = True
    if merged:
        _renumber(page)


def _pair_facing(pages: list[_Page]) -> None:
    """A figure left without a caption takes one left without a figure on the facing page.

    Candidates are scored and taken best first: a figure alone on its page (a plate) before one set
    in text, the next page before the previous one, a caption opening the next page (or closing
    the previous one) before a caption in the middle of the text. A pair that fails more than one of
    these is not made: a figure in running text whose caption sits mid-page overleaf is more likely
    an uncaptioned figure next to an unrelated caption than a facing pair.
    """
    by_index = {p.index: p for p in pages}
    claimed = {id(f.caption) for p in pages for f in p.figures if f.caption is not None}
    options = []
    for page in pages:
        alone = not page.blockers
        for fi, fig in enumerate(page.figures):
            if fig.caption is not None:
                continue
            for other, how in ((page.index + 1, "facing-next"), (page.index - 1, "facing-previous")):
                neighbour = by_index.get(other)
                if neighbour is None:
                    continue
                for cap in neighbour.captions:
                    if cap.kind != "figure" or id(cap) in claimed:
                        continue
                    rest = neighbour.blockers + [f.bbox for f in neighbour.figures]
                    if how == "facing-next":
                        at_edge = all(b[1] >= cap.bbox[1] - 1 for b in rest)  # nothing above it
                    else:
                        at_edge = all(b[3] <= cap.bbox[3] + 1 for b in rest)  # nothing below it
                    cost = (0 if alone else 2) + (0 if how == "facing-next" else 1) + (0 if at_edge else 2)
                    if cost <= 2:
                        options.append((cost, page.index, fi, how, cap))
    options.sort(key=lambda o: o[:3])
    done = set()
    for cost, pindex, fi, how, cap in options:
        if (pindex, fi) in done or id(cap) in claimed:
            continue
        fig = by_index[pindex].figures[fi]
        fig.caption, fig.pairing = cap, how
        done.add((pindex, fi))
        claimed.add(id(cap))


# --- pixels ----------------------------------------------------------------------------------


def _embeddable(fig: _Figure, cfg: PdfConfig) -> bool:
    if cfg.pixels != "auto" or len(fig.parts) != 1 or fig.parts[0].kind != "raster":
        return False
    info = fig.parts[0].info or {}
    a, b, c, d = info.get("transform", (0, 1, 1, 0))[:4]
    return (
        info.get("xref", 0) != 0
        and abs(b) < 1e-6 and abs(c) < 1e-6 and a > 0 and d > 0  # upright, not rotated or flipped
        and not info.get("has-mask")
        and info.get("colorspace") in (1, 3)
        and info.get("bpc") == 8
        and not fig.overlaid
        and _contains(fig.parts[0].bbox, fig.bbox, 0.5)
        and _contains(tuple(info["bbox"]), fig.bbox, 0.5)  # not cut by the page edge
    )


def _pixels(doc: Any, page: Any, fig: _Figure, cfg: PdfConfig) -> tuple[bytes, dict[str, Any], Optional[tuple]]:
    """The figure's image bytes, how they were made (``meta``), and for a rendering the pixels
    and their format (see :func:`figure_record`'s ``decoded``)."""
    from pathasst.images import ImageRejected

    box = fig.bbox
    w_pt, h_pt = box[2] - box[0], box[3] - box[1]
    if _embeddable(fig, cfg) and fig.parts[0].info.get("xref") is None:
        fig.parts[0].info["xref"] = _resolve_xref(page, fig.parts[0].info)
    if _embeddable(fig, cfg) and doc.xref_get_key(fig.parts[0].info["xref"], "Decode")[0] == "null":
        # (an image with a /Decode array is stored inverted or remapped: only rendering shows it right)
        info = fig.parts[0].info
        pixels = int(info["width"]) * int(info["height"])
        if cfg.max_pixels and pixels > cfg.max_pixels:
            raise ImageRejected(f"image too large: {info['width']}x{info['height']} pixels > limit {cfg.max_pixels}")
        try:
            data = doc.extract_image(info["xref"])
        except Exception as exc:  # noqa: BLE001 - mupdf raises plain RuntimeErrors for bad streams
            raise ImageRejected(f"corrupt image: embedded image xref {info['xref']}: {exc}") from None
        if not data or not data.get("image"):
            raise ImageRejected(f"corrupt image: embedded image xref {info['xref']} has no data")
        if data.get("ext") in ("jpeg", "jpg", "png"):
            dpi = round(72.0 * int(info["width"]) / max(w_pt, 1e-6), 1)
            return data["image"], {"pixels": "embedded", "dpi": dpi, "xref": int(info["xref"])}, None
        # JPEG 2000, JBIG2, CCITT ...: mupdf decodes them when it renders; Pillow may not.
    import pymupdf

    dpi = float(cfg.dpi)
    longest = max(w_pt, h_pt) * dpi / 72.0
    if longest > cfg.max_side:
        dpi = cfg.max_side * 72.0 / max(w_pt, h_pt)  # render no more than will be kept
    pixels = (w_pt * dpi / 72.0) * (h_pt * dpi / 72.0)
    if cfg.max_pixels and pixels > cfg.max_pixels:
        raise ImageRejected(f"image too large: {int(pixels)} pixels at {dpi:.0f} dpi > limit {cfg.max_pixels}")
    pix = page.get_pixmap(clip=pymupdf.Rect(box), dpi=max(1, int(round(dpi))), alpha=False, colorspace=pymupdf.csRGB)
    raster_area = sum(_area(p.bbox) for p in fig.parts if p.kind == "raster")
    from PIL import Image

    # The rendered pixels go to the record with their encoding, so that it need not decode what
    # was just encoded (measured: a fifth of the cost of a rendered figure).
    rendered = Image.frombytes("RGB", (pix.width, pix.height), pix.samples_mv)  # one copy, not two
    # Photographs as JPEG (quality 95, 4:4:4 like pathasst.images; the writer keeps it byte for
    # byte), encoded by Pillow: mupdf's own JPEG writer measured 12x slower. Line art as PNG, by
    # encode_png_fast: mupdf's PNG writer was the costliest step of a rendered chart (its docstring
    # has the numbers).
    if raster_area >= 0.5 * _area(box):
        import io

        buf = io.BytesIO()
        rendered.save(buf, "JPEG", quality=95, subsampling=0)
        data, fmt = buf.getvalue(), "JPEG"
    else:
        from pathasst.images import encode_png_fast

        data, fmt = encode_png_fast(pix.samples_mv, pix.width, pix.height, stride=pix.stride), "PNG"
    return data, {"pixels": "rendered", "dpi": round(dpi, 1)}, (rendered, fmt)


# --- units -----------------------------------------------------------------------------------



def _pdf_files(paths: list[str]) -> Iterator[Path]:
    from pathasst.inputs import require_paths

    for path in require_paths(paths, what="PDF input"):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".pdf" and p.is_file())
            if not found:
                log.warning("no *.pdf files under %s", path)
            yield from found
        else:
            yield path


def iter_units(paths: list[str], cfg: PdfConfig) -> Iterator[Unit]:
    """One unit per PDF file (a folder is searched recursively for ``*.pdf``).

    The key is the SHA-256 of the file's bytes, so a renamed or moved book resumes as done. A second
    file with the same bytes becomes a unit of its own that the ledger reports as a duplicate.
    """
    seen: dict[str, str] = {}
    for path in _pdf_files(paths):
        try:
            sha = file_sha256(path)
        except OSError as exc:
            tag = hashlib.sha256(str(path).encode()).hexdigest()[:16]
            yield Unit(f"pdf-unreadable:{tag}", {"path": str(path), "error": f"{type(exc).__name__}: {exc}"}, path.name)
            continue
        if sha in seen:
            tag = hashlib.sha256(str(path).encode()).hexdigest()[:16]
            yield Unit(f"pdf:{sha}:duplicate:{tag}", {"path": str(path), "sha256": sha, "duplicate_of": seen[sha]},
                       path.name)
            continue
        seen[sha] = path.name
        yield Unit(f"pdf:{sha}", {"path": str(path), "sha256": sha}, path.name)


def _license(doc: Any, cfg: PdfConfig) -> tuple[License, Optional[str]]:
    """A Creative Commons licence stated in the PDF's XMP metadata, else the configured one."""
    try:
        xmp = doc.get_xml_metadata() or ""
    except Exception:  # noqa: BLE001 - damaged metadata is no reason to lose the book
        xmp = ""
    found = re.search(r"https?://creativecommons\.org/(?:licenses|publicdomain)/[\w./\-]+", xmp)
    if found:
        lic = normalize_license(None, found.group(0))
        if lic:
            return lic, "from the PDF's XMP metadata"
    if cfg.license:
        return normalize_license(cfg.license) or UNKNOWN_LICENSE, None
    return UNKNOWN_LICENSE, _LICENSE_NOTE


def _image_infos(page: Any) -> list[dict]:
    """``page.get_image_info()`` with each image's xref.

    ``get_image_info(xrefs=True)`` finds xrefs by decoding and hashing every image on the page
    (measured: twice the cost of the plain info call). An image whose width, height and bit depth
    match exactly one image of the page's resources (``get_images``) is that image; only pages
    where that is ambiguous (two images of the same size, inline images) pay for the hashes.
    """
    infos = page.get_image_info()
    if not infos:
        return infos
    by_shape: dict[tuple, set] = {}
    for item in page.get_images(full=True):
        by_shape.setdefault((item[2], item[3], item[4]), set()).add(item[0])
    for info in infos:
        xrefs = by_shape.get((info.get("width"), info.get("height"), info.get("bpc")), ())
        # None: not known yet (several images of that shape, or an inline image); resolved by
        # _resolve_xref only for a figure that would be taken from the file.
        info["xref"] = next(iter(xrefs)) if len(xrefs) == 1 else None
    return infos


def _resolve_xref(page: Any, info: dict) -> int:
    for other in page.get_image_info(xrefs=True):
        if other.get("number") == info.get("number"):
            return int(other.get("xref") or 0)
    return 0


def _decorations(infos_by_page: list[list[dict]]) -> set:
    """(xref, box) of images placed at the same spot on many pages: logos, borders, ornaments."""
    n = len(infos_by_page)
    if n < 3:
        return set()
    counts: dict[tuple, int] = {}
    for infos in infos_by_page:
        for key in {(_image_id(i), _key_box(tuple(i["bbox"]))) for i in infos}:
            counts[key] = counts.get(key, 0) + 1
    return {key for key, c in counts.items() if c >= max(3, 0.2 * n)}


CHUNK_FIGURES = 32  # records of one PDF handed to the writer at a time (extract_chunks)


def extract_unit(unit: Unit, cfg: PdfConfig) -> UnitResult:
    """Records and ledger lines of one PDF, all in memory (the runner streams :func:`extract_chunks`)."""
    result = UnitResult()
    for chunk in extract_chunks(unit, cfg):
        result.records.extend(chunk.records)
        result.rejects.extend(chunk.rejects)
    return result


def extract_chunks(unit: Unit, cfg: PdfConfig, chunk_figures: int = 0) -> Iterator[UnitResult]:
    """Records and ledger lines of one PDF in pieces of whole pages, about ``chunk_figures``
    (default :data:`CHUNK_FIGURES`) records each, rendered only when the piece is asked for.

    The whole document is analysed first (boxes and text, no pixels: what facing-page pairing,
    decorations repeated over pages and the document's caption side need); the pixels, which are
    nearly all of a record's size, are then made page by page, so a 1000-figure atlas never holds
    more than a piece of them. The last piece carries the PDF's ledger lines.
    """
    import pymupdf

    payload = unit.payload
    name = unit.label or Path(payload["path"]).name
    fail = UnitResult()
    if "error" in payload:
        fail.reject(unit.key, f"unreadable: {payload['error']}", file=name)
        yield fail
        return
    if "duplicate_of" in payload:
        fail.reject(unit.key, f"duplicate: same bytes as {payload['duplicate_of']} (sha256 {payload['sha256'][:16]})",
                    file=name)
        yield fail
        return
    sha = payload["sha256"]
    shown = pymupdf.TOOLS.mupdf_display_errors()
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_warnings(reset=True)
    try:
        try:
            doc = pymupdf.open(payload["path"], filetype="pdf")
        except Exception as exc:  # noqa: BLE001 - FileDataError, EmptyFileError, RuntimeError ...
            fail.reject(unit.key, f"corrupt pdf: cannot open {name}: {type(exc).__name__}: {exc}", file=name)
            yield fail
            return
        with doc:
            if doc.needs_pass:
                fail.reject(unit.key, f"encrypted: {name} needs a password", file=name)
                yield fail
                return
            if doc.page_count == 0:
                fail.reject(unit.key, f"corrupt pdf: {name} has no pages", file=name)
                yield fail
                return
            repaired = _repair_note(pymupdf.TOOLS.mupdf_warnings(reset=True))
            yield from _extract_doc(doc, unit, sha, name, repaired, cfg, chunk_figures or CHUNK_FIGURES)
    finally:
        pymupdf.TOOLS.mupdf_display_errors(shown)


def _repair_note(warnings: str) -> Optional[str]:
    for line in (warnings or "").splitlines():
        if "repair" in line or "cannot" in line or "error" in line:
            return line.strip()[:200]
    return None


def analyse_pdf(doc: Any, cfg: PdfConfig) -> tuple[list[_Page], dict[int, str]]:
    """Find and pair the figures and captions of an open PDF, without touching any pixel.

    Returns:
        the analysed pages (figures with their captions, captions left over) and the errors of
        pages that could not be read, by 0-based page number.
    """
    import pymupdf

    infos_by_page: list[list[dict]] = []
    page_errors: dict[int, str] = {}
    for page in doc:
        try:
            if page.rotation:
                # Work in the coordinates the reader sees (boxes, captions beside, rendering), as
                # pymupdf4llm does; only this in-memory copy changes.
                page.remove_rotation()
            infos_by_page.append(_image_infos(page))
        except Exception as exc:  # noqa: BLE001 - a damaged page must not cost the others
            infos_by_page.append([])
            page_errors[page.number] = f"{type(exc).__name__}: {exc}"
    decorations = _decorations(infos_by_page)
    layout_doc = None
    if cfg.method == "layout":
        # The layout pass removes page rotation and the structure tree in memory: give it its own copy.
        import pymupdf4llm  # noqa: F401 - activates the layout model

        layout_doc = pymupdf.open(doc.name, filetype="pdf")
    pages: list[_Page] = []
    text_stats: dict = {}  # the body's type size and font, counted over the pages read so far
    try:
        for page in doc:
            if page.number in page_errors:
                continue
            pymupdf.TOOLS.mupdf_warnings(reset=True)
            try:
                layout = _layout_boxes(layout_doc[page.number]) if layout_doc is not None else None
                analysed = _analyse_page(page, infos_by_page[page.number], decorations, cfg, layout, text_stats)
            except Exception as exc:  # noqa: BLE001
                page_errors[page.number] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            analysed.warning = _repair_note(pymupdf.TOOLS.mupdf_warnings(reset=True))
            pages.append(analysed)
    finally:
        if layout_doc is not None:
            layout_doc.close()
    convention = _caption_convention(pages, cfg.caption_max_distance)
    for analysed in pages:
        _pair_page(analysed, cfg.caption_max_distance, convention)
    _pair_facing(pages)
    return pages, page_errors


def _extract_doc(doc: Any, unit: Unit, sha: str, name: str, repaired: Optional[str], cfg: PdfConfig,
                 chunk_figures: int) -> Iterator[UnitResult]:
    from pathasst.images import ImageRejected

    lic, lic_note = _license(doc, cfg)
    pages, page_errors = analyse_pdf(doc, cfg)
    prefix = sha[:16]
    result = UnitResult()  # ledger lines (small) wait for the last piece; records go out by pieces
    piece = UnitResult()
    total = 0
    for pg in pages:
        if len(piece.records) >= chunk_figures:
            total += len(piece.records)
            # mupdf keeps decoded images and display lists in its store (up to 256 MB by default):
            # the pages of this piece are done, so let it go, or memory grows with the book after all.
            import pymupdf

            pymupdf.TOOLS.store_shrink(100)
            yield piece
            piece = UnitResult()
        page = doc[pg.index]
        for fig in pg.figures:
            fid = f"{prefix}/p{pg.index + 1}/f{fig.index}"
            where = {"file": name, "page": pg.index + 1, "page_bbox": _xywh(fig.bbox)}
            if fig.caption is None:
                result.reject(fid, f"no caption: {fig.kind} figure on page {pg.index + 1} at {_xywh(fig.bbox, 0)}",
                              **where)
                continue
            cap = fig.caption
            if cap.kind == "table":
                result.reject(fid, f"table: drawn region paired with {cap.text.splitlines()[0][:60]!r} "
                                   f"on page {cap.page + 1}", **where)
                continue
            try:
                record = _record(doc, page, pg, fig, fid, sha, name, lic, lic_note, repaired, cfg)
            except ImageRejected as exc:
                result.reject(fid, exc.reason, **where)
                continue
            except ValueError as exc:
                result.reject(fid, f"empty caption: {exc}", **where)
                continue
            piece.records.append(record)
    total += len(piece.records)
    claimed = {id(f.caption) for p in pages for f in p.figures if f.caption is not None}
    for pg in pages:
        for cap in pg.captions:
            if cap.kind != "figure" or id(cap) in claimed:
                continue
            first = expand_ligatures(cap.text.splitlines()[0])[:80]
            result.reject(f"{prefix}/p{pg.index + 1}/c{cap.index}", f"no figure: caption {first!r} on page {pg.index + 1}",
                          file=name, page=pg.index + 1, caption_bbox=_xywh(cap.bbox))
    for number, error in sorted(page_errors.items()):
        result.reject(f"{prefix}/p{number + 1}", f"corrupt page: page {number + 1} of {name}: {error}", file=name,
                      page=number + 1)
    for pg in pages:
        if pg.warning and not pg.figures:
            result.reject(f"{prefix}/p{pg.index + 1}", f"damaged page: page {pg.index + 1} of {name}: {pg.warning}",
                          file=name, page=pg.index + 1)
    if repaired and not total:
        # A damaged file that gave nothing is one lost input, not a line per page it broke.
        damaged = sum(1 for _, reason, _ in result.rejects if reason.startswith(("damaged page", "corrupt page")))
        result.rejects.clear()
        result.reject(unit.key, f"corrupt pdf: {name} is damaged ({repaired}); no figure recovered, "
                                f"{damaged} of {doc.page_count} page(s) unreadable", file=name)
    elif not total and not result.rejects:
        result.reject(unit.key, f"no figures: {name} has {doc.page_count} page(s) and no figure", file=name,
                      pages=doc.page_count)
    piece.rejects.extend(result.rejects)
    yield piece


def _record(doc: Any, page: Any, pg: _Page, fig: _Figure, fid: str, sha: str, name: str, lic: License,
            lic_note: Optional[str], repaired: Optional[str], cfg: PdfConfig) -> dict[str, Any]:
    box = fig.bbox
    image, how, decoded = _pixels(doc, page, fig, cfg)
    cap = fig.caption
    meta: dict[str, Any] = {
        "file": name,
        "method": cfg.method,
        "kind": fig.kind,
        **how,
        "caption_pairing": fig.pairing,
        "caption_bbox": _xywh(cap.bbox),
        "caption_page": cap.page + 1,
        "page_size": [round(pg.size[0], 2), round(pg.size[1], 2)],
    }
    if fig.distance is not None:
        meta["caption_distance"] = fig.distance
    rasters = [p for p in fig.parts if p.kind == "raster"]
    if len(fig.parts) > 1 and rasters:
        meta["panels_pt"] = [_xywh(p.bbox) for p in rasters]
    if fig.spans:
        meta["text_spans_pt"] = [{"text": t, "bbox": _xywh(b)} for b, t in fig.spans]
    if lic_note:
        meta["license_note"] = lic_note
    if repaired:
        meta["repaired"] = repaired
    record = figure_record(
        image=image,
        caption_raw=cap.text,
        source="book",
        source_id=f"{sha}#p{pg.index + 1}",
        figure_id=fid,
        license=lic,
        cfg=cfg,
        page=pg.index + 1,
        page_bbox=_xywh(box),
        meta=meta,
        decoded=decoded,
    )
    if "panels_pt" in meta or fig.spans:
        # The same boxes in the pixels of the record's image (COCO [x, y, w, h]): what the
        # subfigure stage (curate detect) reads as panel_candidates and text_spans.
        sx, sy = record["width"] / (box[2] - box[0]), record["height"] / (box[3] - box[1])

        def px(b: Box) -> list[float]:
            return [round((b[0] - box[0]) * sx, 1), round((b[1] - box[1]) * sy, 1),
                    round((b[2] - b[0]) * sx, 1), round((b[3] - b[1]) * sy, 1)]

        kept = json.loads(record["meta"])  # figure_record adds its own keys ("continued")
        if "panels_pt" in meta:
            kept["panel_candidates"] = [px(p.bbox) for p in rasters]
        if fig.spans:
            kept["text_spans"] = [{"text": t, "bbox": px(b)} for b, t in fig.spans]
        record["meta"] = json.dumps(kept, sort_keys=True, ensure_ascii=False)
    return record


SOURCE = Source(
    name="pdf",
    config=PdfConfig,
    iter_units=iter_units,
    extract_unit=extract_unit,
    description="PDF textbooks, papers and atlases (pymupdf)",
    extract_chunks=extract_chunks,
)
