"""PDF fixtures written with pymupdf from a small declarative spec, returned with their ground truth.

A document is a list of :class:`Page` specs; each holds :class:`Figure` and :class:`Text` items and
optional running header, footer and logo. :func:`make_pdf` writes it and returns a
:class:`PdfTruth`: where every figure is (page points, origin top-left, as pymupdf reports), its
caption text and box, its panels, and the decoys (logos) an extractor must not take for figures.

The helpers (``caption_below_page`` ...) build the layouts book and article extractors meet: caption
below or above, vector drawings, two columns, running headers, compound figures, and a caption on
the facing page. ``sample_book_pages()`` strings them together.

Example::

    truth = make_pdf(tmp_path / "book.pdf", [caption_below_page(), *facing_caption_pages()])
    fig = truth.figures[0]  # .page_index, .bbox, .caption, .label, .caption_bbox
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 in points, origin top-left

A4: tuple[float, float] = (595.0, 842.0)
MARGIN = 56.0
_GAP = 8.0  # between a figure and its caption
_LABEL_RE = re.compile(r"^\s*((?:fig(?:ure)?|FIG(?:URE)?)\.?\s+[0-9A-Za-z]+(?:[.\-][0-9A-Za-z]+)*)", re.I)

_SENTENCES = (
    "The mucosa shows a dense infiltrate of lymphocytes and plasma cells in the lamina propria.",
    "Glands are crowded and lined by cells with enlarged hyperchromatic nuclei.",
    "Mitotic figures are frequent, and some are atypical.",
    "The stroma is desmoplastic, with scattered neutrophils and eosinophils.",
    "Immunohistochemistry shows strong membranous staining in the tumour cells.",
    "Necrosis is present in the centre of the lesion, surrounded by palisading histiocytes.",
    "The surgical margins are free of tumour at a distance of five millimetres.",
    "Granulomas are non-caseating and composed of epithelioid histiocytes and giant cells.",
    "Fibrin thrombi occlude several small vessels at the edge of the infarct.",
    "Reactive changes should not be mistaken for dysplasia in inflamed epithelium.",
)


def filler_text(n_words: int, seed: int = 0) -> str:
    """Deterministic pathology-flavoured prose of about ``n_words`` words (whole sentences)."""
    words: list[str] = []
    i = seed
    while len(words) < n_words:
        words.extend(_SENTENCES[i % len(_SENTENCES)].split())
        i += 3  # coprime with 10: cycles through every sentence
    text = " ".join(words[: max(n_words, 1)]).rstrip(",;")
    return text if text.endswith(".") else text + "."


def caption_label(caption: str | None) -> str | None:
    """The figure label a caption opens with: ``"Figure 2.5: ..."`` -> ``"Figure 2.5"``."""
    if not caption:
        return None
    found = _LABEL_RE.match(caption)
    return found[1].rstrip(".:-") if found else None


# --- spec ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Figure:
    """One figure to place on a page.

    Attributes:
        rect: where the figure goes (for ``vector``, the area the drawing is made in).
        caption: caption text, starting with its label ("Figure 2.5: ..."); None for no caption.
        caption_position: ``below``, ``above``, ``facing`` (top of the next page), or
            ``sideways`` (a sideways float: the caption turned a quarter, set bottom to top at the
            right of the figure, so that it is below the figure once the page is turned).
        kind: ``raster`` (one placed image), ``vector`` (drawn with lines, rectangles, curves and
            tick labels), ``compound`` (a grid of placed images with panel labels), or ``row``
            (``grid[1]`` separate vector plots side by side, ``panel_gap`` points of white between
            them, as LaTeX subfigures or a row of R plots are set; ``grid[0]`` such rows when it
            is more than one: small multiples).
        figure_id: defaults to ``p<page>-f<n>``.
        images: encoded images to place (raster: one; compound: one per panel); default tissue tiles.
        grid: compound layout as (rows, columns).
        panel_labels: compound panel labels; default A, B, C, ...; an empty list draws none.
        caption_rect: where the caption goes; by default just below/above the figure, or under
            the running header of the next page for ``facing``.
        caption_fontsize: caption font size in points.
        caption_font: the caption's font (``helv``; ``tiro`` for a caption set in the body's
            Times, as LaTeX sets it, while the plot labels itself in Helvetica).
        caption_break: the caption from the first occurrence of this text on is set as a text
            object of its own, written before the rest and starting a few points back on the line
            where the first part ends: the way a subscript of inline math that overlaps its letter
            (TeX's "x" then "1 + x2 + x3, with ...") makes the text layer start a new block there.
        seed: picks the default images and the drawing.
        axis_title: vector and row plots: an x-axis title set ``axis_title_gap`` points below the
            tick labels, in the plot's label font (Helvetica) at ``axis_title_size``.
        tick_row: vector and row plots: the x tick labels as one line of numbers across the axis
            ("4100 4200 4300 ...", as a map's axis is often set) instead of one label per bar.
        text_markers: vector and row plots: the plot's points drawn as characters, rows of "+"
            over the whole plot area (R's ``pch = "+"``), as much text as drawing.
        subcaptions: row plots: a sub-caption set under each plot ("(a) Type B."), in
            ``subcaption_font`` a line and a half below the plot.
        colour_key: raster figures: a heat map's colour key ``colour_key_gap`` points to the right
            of the image, as R's image plots draw it: a 100 x 1 pixel gradient stretched to a strip
            6 points wide and as tall as the image, framed, with tick marks and numbers 0-7 at 5
            points, the lowest centred on the image's bottom edge (so it hangs below the image).
        canvas_note: vector plots: the plot is drawn on a white canvas (an unstroked white
            rectangle 30 points beyond the drawing area on each side, painted first, as R's pdf and
            tikz devices paint their background) and this note is set in the body's font (Times,
            10 points) near the canvas's bottom edge, 26 points under the tick labels: a credit
            line or sub-title of the plot, too far from the axes to pass for one of its labels.
    """

    rect: Rect
    caption: str | None = None
    caption_position: str = "below"
    kind: str = "raster"
    figure_id: str | None = None
    images: Sequence[bytes] | None = None
    grid: tuple[int, int] = (2, 2)
    panel_labels: Sequence[str] | None = None
    caption_rect: Rect | None = None
    caption_fontsize: float = 9.0
    caption_font: str = "helv"
    caption_break: str | None = None
    seed: int = 0
    axis_title: str | None = None
    axis_title_size: float = 10.0
    axis_title_gap: float = 12.0
    tick_row: bool = False
    text_markers: bool = False
    subcaptions: Sequence[str] | None = None
    subcaption_font: str = "tiro"
    panel_gap: float = 30.0
    colour_key: bool = False
    colour_key_gap: float = 15.5
    canvas_note: str | None = None


@dataclasses.dataclass
class Text:
    """A block of text set in ``rect``; ``text=None`` fills the rect with as much prose as fits."""

    rect: Rect
    text: str | None = None
    fontsize: float = 10.0
    fontname: str = "helv"
    role: str = "body"  # body | heading
    seed: int = 0
    shade: tuple[float, float, float] | None = None  # a fill under the block, 4 points beyond it (a code chunk)


@dataclasses.dataclass
class Page:
    """One page: figures, text blocks, and the running elements books repeat on every page.

    Attributes:
        figures: figures on this page.
        texts: text blocks (body, headings) on this page.
        header: running header text, set at the top margin.
        footer: running footer text (usually the printed page number), at the bottom.
        logo: a small image in the top-right corner (True: a generated one; bytes: that image).
        size: (width, height) in points.
    """

    figures: list[Figure] = dataclasses.field(default_factory=list)
    texts: list[Text] = dataclasses.field(default_factory=list)
    header: str | None = None
    footer: str | None = None
    logo: bool | bytes = False
    size: tuple[float, float] = A4


# --- ground truth -------------------------------------------------------------------------------


@dataclasses.dataclass
class PanelTruth:
    bbox: Rect
    label: str | None
    label_bbox: Rect | None


@dataclasses.dataclass
class FigureTruth:
    """Where a figure really is. Boxes are in page points (pymupdf's coordinates).

    Attributes:
        figure_id: the spec's id.
        page_index: 0-based page of the figure (``page_number`` is 1-based).
        bbox: the figure's box: the placed image(s), or the union of the vector drawing and its
            tick labels.
        kind: ``raster``, ``vector`` or ``compound``.
        caption: caption text as written, or None.
        label: the caption's label ("Figure 2.5"), or None.
        caption_page_index: page of the caption (differs from ``page_index`` for facing captions).
        caption_bbox: tight box of the caption's words.
        panels: for compound figures, each placed image with its label.
    """

    figure_id: str
    page_index: int
    bbox: Rect
    kind: str
    caption: str | None
    label: str | None
    caption_page_index: int | None
    caption_bbox: Rect | None
    panels: list[PanelTruth] = dataclasses.field(default_factory=list)

    @property
    def page_number(self) -> int:
        return self.page_index + 1


@dataclasses.dataclass
class TextTruth:
    page_index: int
    bbox: Rect
    text: str
    role: str  # body | heading | header | footer


@dataclasses.dataclass
class DecoyTruth:
    """Something image-like that is not a figure (a logo)."""

    page_index: int
    bbox: Rect
    kind: str


@dataclasses.dataclass
class PdfTruth:
    path: Path
    page_count: int
    page_sizes: list[tuple[float, float]]
    figures: list[FigureTruth]
    texts: list[TextTruth]
    decoys: list[DecoyTruth]

    def figures_on(self, page_index: int) -> list[FigureTruth]:
        return [f for f in self.figures if f.page_index == page_index]

    def figure(self, figure_id: str) -> FigureTruth:
        for f in self.figures:
            if f.figure_id == figure_id:
                return f
        raise KeyError(figure_id)


# --- writing ------------------------------------------------------------------------------------


def _union(rects: Iterable[Sequence[float]]) -> Rect | None:
    rects = list(rects)
    if not rects:
        return None
    return (
        min(r[0] for r in rects),
        min(r[1] for r in rects),
        max(r[2] for r in rects),
        max(r[3] for r in rects),
    )


def _round(rect: Sequence[float]) -> Rect:
    return tuple(round(float(v), 2) for v in rect)  # type: ignore[return-value]


def _words_box(page: Any, rect: Sequence[float]) -> Rect | None:
    import pymupdf

    box = _union(w[:4] for w in page.get_text("words", clip=pymupdf.Rect(rect)))
    return _round(box) if box else None


def _default_image(seed: int, rect: Sequence[float] | None = None, long_side: int = 320) -> bytes:
    """A tissue photo with the aspect ratio of ``rect``, so that placing it does not stretch it."""
    from pathasst.testing.images import tissue_tile, to_bytes

    aspect = 1.0 if rect is None else (rect[2] - rect[0]) / max(rect[3] - rect[1], 1e-6)
    w, h = (long_side, max(1, round(long_side / aspect))) if aspect >= 1 else (max(1, round(long_side * aspect)), long_side)
    tile = tissue_tile(max(w, h), seed)
    return to_bytes(tile.crop((0, 0, w, h)), "JPEG")


def _logo_image() -> bytes:
    from PIL import Image, ImageDraw

    from pathasst.testing.images import to_bytes

    img = Image.new("RGB", (48, 48), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.ellipse((4, 4, 44, 44), fill=(20, 60, 140))
    draw.rectangle((18, 12, 30, 36), fill=(255, 255, 255))
    return to_bytes(img, "PNG")


def _set_text(page: Any, rect: Sequence[float], text: str, fontsize: float, fontname: str = "helv", align: int = 0) -> None:
    import pymupdf

    rc = page.insert_textbox(pymupdf.Rect(rect), text, fontsize=fontsize, fontname=fontname, align=align)
    if rc < 0:  # pymupdf wrote nothing: say so rather than leave a silent hole in the fixture
        raise ValueError(f"text does not fit in {tuple(rect)} at {fontsize}pt: {text[:60]!r}...")


def _fill_text(page: Any, rect: Sequence[float], fontsize: float, fontname: str, seed: int) -> str:
    import pymupdf

    lo, hi, best = 1, 600, ""
    while lo <= hi:  # binary search on the word count; a failed insert writes nothing
        mid = (lo + hi) // 2
        text = filler_text(mid, seed)
        probe = pymupdf.open()
        fits = probe.new_page(width=page.rect.width, height=page.rect.height).insert_textbox(
            pymupdf.Rect(rect), text, fontsize=fontsize, fontname=fontname
        ) >= 0
        probe.close()
        if fits:
            best, lo = text, mid + 1
        else:
            hi = mid - 1
    if best:
        _set_text(page, rect, best, fontsize, fontname)
    return best


def _set_split_caption(page: Any, rect: Sequence[float], text: str, brk: str, fontsize: float, fontname: str) -> None:
    """Set ``text`` in ``rect`` with everything from ``brk`` on in a text object of its own (see
    ``Figure.caption_break``), written under the first part in the content stream."""
    import pymupdf

    if brk not in text:
        raise ValueError(f"caption_break {brk!r} is not in the caption {text[:60]!r}")
    cut = text.index(brk)
    _set_text(page, rect, text[:cut].rstrip(), fontsize, fontname)
    lines = [ln for b in page.get_text("dict", clip=pymupdf.Rect(rect))["blocks"] for ln in b.get("lines", ())]
    lines.sort(key=lambda ln: ln["spans"][0]["origin"][1])
    last = lines[-1]
    leading = (last["spans"][0]["origin"][1] - lines[-2]["spans"][0]["origin"][1]) if len(lines) > 1 else 1.2 * fontsize
    pieces, x, y, current = [], last["bbox"][2] - 4.0, last["spans"][0]["origin"][1] + 1.5, ""
    for word in text[cut:].split():
        trial = f"{current} {word}".strip()
        if current and x + pymupdf.get_text_length(trial, fontname, fontsize) > rect[2]:
            pieces.append(((x, y), current))
            x, y, current = rect[0], y + leading, word
        else:
            current = trial
    pieces.append(((x, y), current))
    if y > rect[3]:
        raise ValueError(f"text does not fit in {tuple(rect)} at {fontsize}pt: {text[:60]!r}...")
    for point, words in reversed(pieces):  # each under the ones before: first in the content stream
        page.insert_text(point, words, fontsize=fontsize, fontname=fontname, overlay=False)


def _caption_height(text: str, width: float, fontsize: float) -> float:
    import pymupdf

    lines = pymupdf.get_text_length(text, fontname="helv", fontsize=fontsize) / max(width - 4, 1) + 1
    return int(lines + 1) * fontsize * 1.3 + 2


def _draw_vector(page: Any, rect: Rect, seed: int, fig: Figure | None = None) -> Rect:
    """A bar-and-line chart drawn with vector paths and tick labels; returns its tight box (with
    the axis title and tick row that ``fig`` asks for)."""
    import numpy as np
    import pymupdf

    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = rect
    if fig and fig.canvas_note:
        page.draw_rect(pymupdf.Rect(x0 - 30, y0 - 30, x1 + 30, y1 + 30), color=None, fill=(1, 1, 1))
    left, bottom, top, right = x0 + 24, y1 - 16, y0 + 6, x1 - 6
    page.draw_line((left, bottom), (right, bottom), color=(0, 0, 0), width=0.8)  # x axis
    page.draw_line((left, bottom), (left, top), color=(0, 0, 0), width=0.8)  # y axis
    n = 5
    slot = (right - left) / n
    heights = rng.uniform(0.2, 0.95, n)
    for i, h in enumerate(heights):
        bx = left + i * slot + slot * 0.2
        page.draw_rect(
            pymupdf.Rect(bx, bottom - h * (bottom - top), bx + slot * 0.6, bottom),
            color=(0.1, 0.1, 0.1), fill=(0.35, 0.5 + 0.1 * (i % 3), 0.8), width=0.5,
        )
        if not (fig and fig.tick_row):
            page.insert_text((bx + slot * 0.22, y1 - 5), str(i + 1), fontsize=7, fontname="helv")
    if fig and fig.tick_row:
        sep = " "
        while pymupdf.get_text_length(sep.join(str(4100 + 100 * i) for i in range(n)), "helv", 7) < x1 - left:
            sep += " "  # spread over the whole axis, as one line of text
        page.insert_text((left - 8, y1 - 5), sep.join(str(4100 + 100 * i) for i in range(n)), fontsize=7, fontname="helv")
    if fig and fig.text_markers:
        row = " ".join("+" * 1 for _ in range(int((right - left - 8) / 8)))
        for my in np.arange(top + 10, bottom - 2, 7.0):
            page.insert_text((left + 4, my), row, fontsize=10, fontname="helv", color=(0.8, 0.2, 0.1))
    points = [(left + (i + 0.5) * slot, bottom - v * (bottom - top)) for i, v in enumerate(rng.uniform(0.1, 0.9, n))]
    page.draw_polyline(points, color=(0.8, 0.1, 0.1), width=1.2)
    for p in points:
        page.draw_circle(p, 2.2, color=(0.8, 0.1, 0.1), fill=(1, 1, 1))
    for k, frac in enumerate((0.0, 0.5, 1.0)):
        ty = bottom - frac * (bottom - top)
        page.draw_line((left - 3, ty), (left, ty), color=(0, 0, 0), width=0.6)
        page.insert_text((x0 + 2, ty + 2.5), f"{50 * k}", fontsize=7, fontname="helv")
    drawn = [d["rect"] for d in page.get_drawings() if pymupdf.Rect(rect).contains(d["rect"])]
    words = [w[:4] for w in page.get_text("words", clip=pymupdf.Rect(rect))]
    if fig and fig.axis_title:
        width = pymupdf.get_text_length(fig.axis_title, "helv", fig.axis_title_size)
        base = y1 + fig.axis_title_gap + fig.axis_title_size * 0.8
        page.insert_text(((left + right - width) / 2, base), fig.axis_title, fontsize=fig.axis_title_size,
                         fontname="helv")
        words += [w[:4] for w in page.get_text("words", clip=pymupdf.Rect(x0, y1, x1, base + fig.axis_title_size))]
    if fig and fig.canvas_note:
        width = pymupdf.get_text_length(fig.canvas_note, "tiro", 10)
        page.insert_text(((x0 + x1 - width) / 2, y1 + 26), fig.canvas_note, fontsize=10, fontname="tiro")
        words += [w[:4] for w in page.get_text("words", clip=pymupdf.Rect(x0 - 30, y1 + 12, x1 + 30, y1 + 30))]
    return _round(_union([tuple(r) for r in drawn] + words))  # type: ignore[arg-type]


def _draw_colour_key(page: Any, fig: Figure) -> Rect:
    """A heat map's colour key right of ``fig.rect`` (see ``Figure.colour_key``); returns its box."""
    import io

    import numpy as np
    import pymupdf
    from PIL import Image

    x0, y0, x1, y1 = fig.rect
    kx0 = x1 + fig.colour_key_gap
    kx1 = kx0 + 6.0
    ramp = np.linspace((20, 40, 160), (240, 240, 250), 100).astype(np.uint8).reshape(100, 1, 3)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    page.insert_image(pymupdf.Rect(kx0, y0, kx1, y1), stream=buf.getvalue(), keep_proportion=False)
    page.draw_rect(pymupdf.Rect(kx0, y0, kx1, y1), color=(0, 0, 0), width=0.5)
    right = kx1
    for i in range(8):
        y = y1 - i * (y1 - y0) / 7
        page.draw_line((kx1, y), (kx1 + 3, y), color=(0, 0, 0), width=0.5)
        page.insert_text((kx1 + 5, y + 2.2), str(i), fontsize=5, fontname="helv")
        right = max(right, kx1 + 5 + pymupdf.get_text_length(str(i), "helv", 5))
    return (kx0, y0, right, y1 + 3.0)


def _place_row(page: Any, fig: Figure) -> Rect:
    """``grid[1]`` vector plots side by side in ``fig.rect`` with their sub-captions; the whole box.
    ``grid[0]`` rows of them, ``panel_gap`` apart, when it is more than one (small multiples)."""
    import pymupdf

    rows, n = fig.grid
    if rows > 1:
        x0, y0, x1, y1 = fig.rect
        h = (y1 - y0 - fig.panel_gap * (rows - 1)) / rows
        row = dataclasses.replace(fig, grid=(1, n))
        return _round(_union([_place_row(page, dataclasses.replace(
            row, rect=(x0, y0 + r * (h + fig.panel_gap), x1, y0 + r * (h + fig.panel_gap) + h), seed=fig.seed + 10 * r))
            for r in range(rows)]))  # type: ignore[arg-type]
    x0, y0, x1, y1 = fig.rect
    subs = list(fig.subcaptions or [])
    sub_h = 14.0 if subs else 0.0
    w = (x1 - x0 - fig.panel_gap * (n - 1)) / n
    boxes = []
    for i in range(n):
        px = x0 + i * (w + fig.panel_gap)
        plot = _draw_vector(page, (px, y0, px + w, y1 - 1.5 * sub_h - (fig.axis_title_gap + fig.axis_title_size if fig.axis_title else 0)),
                            fig.seed + i, fig)
        boxes.append(plot)
        if i < len(subs):
            rect = (px, y1 - sub_h, px + w, y1 + 6)
            _set_text(page, rect, subs[i], 10, fig.subcaption_font, align=pymupdf.TEXT_ALIGN_CENTER)
            found = _words_box(page, rect)
            if found:
                boxes.append(found)
    return _round(_union(boxes))  # type: ignore[arg-type]


def _place_compound(page: Any, fig: Figure) -> list[PanelTruth]:
    import pymupdf

    rows, cols = fig.grid
    gap = 6.0
    x0, y0, x1, y1 = fig.rect
    w = (x1 - x0 - gap * (cols - 1)) / cols
    h = (y1 - y0 - gap * (rows - 1)) / rows
    labels = list(fig.panel_labels) if fig.panel_labels is not None else [chr(ord("A") + i) for i in range(rows * cols)]
    images = list(fig.images) if fig.images else [_default_image(fig.seed + i, (0, 0, w, h), 192) for i in range(rows * cols)]
    if len(images) < rows * cols:
        raise ValueError(f"compound figure needs {rows * cols} images, got {len(images)}")
    panels = []
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        box = (x0 + c * (w + gap), y0 + r * (h + gap), x0 + c * (w + gap) + w, y0 + r * (h + gap) + h)
        page.insert_image(pymupdf.Rect(box), stream=images[i], keep_proportion=False)
        label = labels[i] if i < len(labels) else None
        label_box = None
        if label:
            # Panel letters as journals print them: bold, in a white square at the top-left corner.
            label_box = (box[0] + 2, box[1] + 2, box[0] + 16, box[1] + 16)
            page.draw_rect(pymupdf.Rect(label_box), color=None, fill=(1, 1, 1))
            page.insert_text((box[0] + 5, box[1] + 13), label, fontsize=10, fontname="hebo")
        panels.append(PanelTruth(_round(box), label, _round(label_box) if label_box else None))
    return panels


def _as_page(spec: Page | Mapping[str, Any]) -> Page:
    if isinstance(spec, Page):
        return spec
    spec = dict(spec)
    spec["figures"] = [f if isinstance(f, Figure) else Figure(**f) for f in spec.get("figures", [])]
    spec["texts"] = [t if isinstance(t, Text) else Text(**t) for t in spec.get("texts", [])]
    return Page(**spec)


def make_pdf(path: str | Path, pages: Sequence[Page | Mapping[str, Any]], *, title: str = "pathasst test document") -> PdfTruth:
    """Write ``pages`` to a PDF at ``path`` and return where everything went.

    Args:
        path: output file.
        pages: :class:`Page` specs (or dicts with the same fields, figures and texts as dicts).
        title: the PDF's metadata title.

    Returns:
        The :class:`PdfTruth`, boxes in points, pages 0-based.

    Raises:
        ValueError: a text or caption does not fit its box, an unknown figure kind or caption
            position, or a facing caption on the last page.
    """
    import pymupdf

    specs = [_as_page(p) for p in pages]
    doc = pymupdf.open()
    for spec in specs:
        doc.new_page(width=spec.size[0], height=spec.size[1])
    figures: list[FigureTruth] = []
    texts: list[TextTruth] = []
    decoys: list[DecoyTruth] = []
    logo_bytes: bytes | None = None

    for index, spec in enumerate(specs):
        page = doc[index]
        width, height = spec.size
        if spec.header:
            rect = (MARGIN, 24, width - MARGIN - 40, 44)
            _set_text(page, rect, spec.header, 8, "helv")
            texts.append(TextTruth(index, _words_box(page, rect), spec.header, "header"))
        if spec.logo:
            if spec.logo is True:
                logo_bytes = logo_bytes or _logo_image()
            box = (width - MARGIN - 22, 20, width - MARGIN, 42)
            page.insert_image(pymupdf.Rect(box), stream=logo_bytes if spec.logo is True else spec.logo)
            decoys.append(DecoyTruth(index, _round(box), "logo"))
        if spec.footer:
            rect = (MARGIN, height - 40, width - MARGIN, height - 22)
            _set_text(page, rect, spec.footer, 8, "helv", align=pymupdf.TEXT_ALIGN_CENTER)
            texts.append(TextTruth(index, _words_box(page, rect), spec.footer, "footer"))
        for block in spec.texts:
            if block.shade is not None:
                x0, y0, x1, y1 = block.rect
                page.draw_rect(pymupdf.Rect(x0 - 4, y0 - 4, x1 + 4, y1 + 4), color=None, fill=block.shade)
            if block.text is None:
                written = _fill_text(page, block.rect, block.fontsize, block.fontname, block.seed)
            else:
                _set_text(page, block.rect, block.text, block.fontsize, block.fontname)
                written = block.text
            if written:
                texts.append(TextTruth(index, _words_box(page, block.rect), written, block.role))

        for n, fig in enumerate(spec.figures):
            fid = fig.figure_id or f"p{index + 1}-f{n + 1}"
            panels: list[PanelTruth] = []
            if fig.kind == "raster":
                data = fig.images[0] if fig.images else _default_image(fig.seed, fig.rect)
                page.insert_image(pymupdf.Rect(fig.rect), stream=data, keep_proportion=False)
                bbox = _round(_union([fig.rect, _draw_colour_key(page, fig)]) if fig.colour_key else fig.rect)
            elif fig.kind == "compound":
                panels = _place_compound(page, fig)
                bbox = _round(_union(p.bbox for p in panels))  # type: ignore[arg-type]
            elif fig.kind == "vector":
                bbox = _draw_vector(page, fig.rect, fig.seed, fig)
            elif fig.kind == "row":
                bbox = _place_row(page, fig)
            else:
                raise ValueError(f"figure {fid}: unknown kind {fig.kind!r} (raster, vector, compound, row)")

            cap_index = cap_box = None
            if fig.caption:
                cap_page, cap_index = page, index
                x0, y0, x1, y1 = fig.rect
                h = _caption_height(fig.caption, x1 - x0, fig.caption_fontsize)
                if fig.kind in ("vector", "row") and fig.caption_position == "below":
                    y1 = max(y1, bbox[3])  # an axis title may hang below the drawing area
                if fig.caption_position == "below":
                    rect = fig.caption_rect or (x0, y1 + _GAP, x1, y1 + _GAP + h)
                elif fig.caption_position == "above":
                    rect = fig.caption_rect or (x0, y0 - _GAP - h, x1, y0 - _GAP)
                elif fig.caption_position == "facing":
                    if index + 1 >= len(specs):
                        raise ValueError(f"figure {fid}: a facing caption needs a next page")
                    cap_index = index + 1
                    cap_page = doc[cap_index]
                    w2 = specs[cap_index].size[0]
                    rect = fig.caption_rect or (MARGIN, 64, w2 - MARGIN, 64 + _caption_height(fig.caption, w2 - 2 * MARGIN, fig.caption_fontsize))
                elif fig.caption_position == "sideways":
                    h = _caption_height(fig.caption, y1 - y0, fig.caption_fontsize)
                    rect = fig.caption_rect or (x1 + _GAP, y0, x1 + _GAP + h, y1)
                else:
                    raise ValueError(f"figure {fid}: unknown caption_position {fig.caption_position!r}")
                if fig.caption_position == "sideways":
                    rc = cap_page.insert_textbox(pymupdf.Rect(rect), fig.caption, fontsize=fig.caption_fontsize,
                                                 fontname="helv", rotate=90)
                    if rc < 0:
                        raise ValueError(f"figure {fid}: sideways caption does not fit in {rect}")
                elif fig.caption_break:
                    _set_split_caption(cap_page, rect, fig.caption, fig.caption_break, fig.caption_fontsize, fig.caption_font)
                else:
                    _set_text(cap_page, rect, fig.caption, fig.caption_fontsize, fig.caption_font)
                cap_box = _words_box(cap_page, rect)
            figures.append(
                FigureTruth(fid, index, bbox, fig.kind, fig.caption, caption_label(fig.caption), cap_index, cap_box, panels)
            )

    doc.set_metadata({"title": title, "producer": "pathasst.testing.pdfs"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path, garbage=3, deflate=True)
    sizes = [tuple(s.size) for s in specs]
    doc.close()
    return PdfTruth(path, len(specs), sizes, figures, texts, decoys)  # type: ignore[arg-type]


# --- layouts ------------------------------------------------------------------------------------


def _content_width(size: tuple[float, float]) -> float:
    return size[0] - 2 * MARGIN


def caption_below_page(
    caption: str = "Figure 2.5: Chronic gastritis with lymphoid follicles in the lamina propria (H&E, x200).",
    *, seed: int = 0, size: tuple[float, float] = A4, header: str | None = None, footer: str | None = None,
) -> Page:
    """A heading, a full-width raster figure, its caption below it, and body text under that."""
    w = _content_width(size)
    fig_rect = (MARGIN, 130.0, MARGIN + w, 130.0 + w * 0.6)
    cap_bottom = fig_rect[3] + _GAP + _caption_height(caption, w, 9)
    return Page(
        figures=[Figure(fig_rect, caption, "below", seed=seed)],
        texts=[
            Text((MARGIN, 66, MARGIN + w, 92), "2.3 Inflammation of the stomach", 14, "hebo", role="heading"),
            Text((MARGIN, 96, MARGIN + w, 124), None, seed=seed),
            Text((MARGIN, cap_bottom + 14, MARGIN + w, size[1] - 60), None, seed=seed + 1),
        ],
        header=header,
        footer=footer,
        size=size,
    )


def caption_above_page(
    caption: str = "FIGURE 12-4 Acute appendicitis. Neutrophils infiltrate the muscular wall and serosa.",
    *, seed: int = 1, size: tuple[float, float] = A4, header: str | None = None, footer: str | None = None,
) -> Page:
    """Body text, then a caption in capitals above its figure (a textbook convention)."""
    w = _content_width(size)
    cap_h = _caption_height(caption, w, 9)
    fig_top = 260.0 + cap_h + _GAP
    fig_rect = (MARGIN, fig_top, MARGIN + w, fig_top + w * 0.55)
    return Page(
        figures=[Figure(fig_rect, caption, "above", seed=seed)],
        texts=[
            Text((MARGIN, 70, MARGIN + w, 250), None, seed=seed),
            Text((MARGIN, fig_rect[3] + 20, MARGIN + w, size[1] - 60), None, seed=seed + 2),
        ],
        header=header,
        footer=footer,
        size=size,
    )


def vector_figure_page(
    caption: str = "Figure 3.1: Incidence of gastric carcinoma by decade of age, drawn as vector graphics.",
    *, seed: int = 2, size: tuple[float, float] = A4, header: str | None = None, footer: str | None = None,
) -> Page:
    """A chart drawn with vector paths (no image at all) and its caption below."""
    w = _content_width(size)
    fig_rect = (MARGIN + 40, 200.0, MARGIN + w - 40, 200.0 + (w - 80) * 0.6)
    cap_bottom = fig_rect[3] + _GAP + _caption_height(caption, w - 80, 9)
    return Page(
        figures=[Figure(fig_rect, caption, "below", kind="vector", seed=seed)],
        texts=[
            Text((MARGIN, 70, MARGIN + w, 190), None, seed=seed),
            Text((MARGIN, cap_bottom + 14, MARGIN + w, size[1] - 60), None, seed=seed + 3),
        ],
        header=header,
        footer=footer,
        size=size,
    )


def two_column_page(
    caption: str = "Fig. 4. Tubular adenoma of the colon with low-grade dysplasia (H&E, x100).",
    *, seed: int = 3, size: tuple[float, float] = A4, gutter: float = 18.0, header: str | None = None, footer: str | None = None,
) -> Page:
    """A journal-style page: two text columns, a column-wide figure with its caption in the left one."""
    col = (_content_width(size) - gutter) / 2
    left, right = MARGIN, MARGIN + col + gutter
    fig_rect = (left, 250.0, left + col, 250.0 + col * 0.75)
    cap_bottom = fig_rect[3] + _GAP + _caption_height(caption, col, 8)
    bottom = size[1] - 60
    return Page(
        figures=[Figure(fig_rect, caption, "below", seed=seed, caption_fontsize=8)],
        texts=[
            Text((left, 70, left + col, 240), None, 9, seed=seed),
            Text((left, cap_bottom + 12, left + col, bottom), None, 9, seed=seed + 4),
            Text((right, 70, right + col, bottom), None, 9, seed=seed + 5),
        ],
        header=header,
        footer=footer,
        size=size,
    )


def running_header_page(
    header: str = "CHAPTER 4  Hemodynamic Disorders, Thromboembolism, and Shock",
    footer: str = "112",
    caption: str = "Figure 4.7: Organizing thrombus in a medium-sized artery (H&E, x40).",
    *, seed: int = 4, size: tuple[float, float] = A4, logo: bool | bytes = True,
) -> Page:
    """A book page with a running header, a printed page number and a small logo: none of them
    part of the figure, all of them repeated on every page of a real book."""
    page = caption_below_page(caption, seed=seed, size=size, header=header, footer=footer)
    page.logo = logo
    return page


def compound_figure_page(
    caption: str = "Figure 5: Colorectal adenocarcinoma. (A) Low power. (B) Invasive glands. (C) Necrosis. (D) Lymphovascular invasion.",
    *, grid: tuple[int, int] = (2, 2), seed: int = 5, size: tuple[float, float] = A4, header: str | None = None, footer: str | None = None,
) -> Page:
    """A figure assembled from several placed images in a grid, each with a panel letter."""
    w = _content_width(size)
    rows, cols = grid
    fig_rect = (MARGIN, 120.0, MARGIN + w, 120.0 + w * rows / cols * 0.8)
    cap_bottom = fig_rect[3] + _GAP + _caption_height(caption, w, 9)
    return Page(
        figures=[Figure(fig_rect, caption, "below", kind="compound", grid=grid, seed=seed)],
        texts=[
            Text((MARGIN, 70, MARGIN + w, 110), None, seed=seed),
            Text((MARGIN, cap_bottom + 14, MARGIN + w, size[1] - 60), None, seed=seed + 6),
        ],
        header=header,
        footer=footer,
        size=size,
    )


def facing_caption_pages(
    caption: str = "Figure 7.3 (facing page): Diffuse large B-cell lymphoma replacing the nodal architecture (H&E, x400).",
    *, seed: int = 6, size: tuple[float, float] = A4, headers: tuple[str | None, str | None] = (None, None),
    footers: tuple[str | None, str | None] = (None, None),
) -> list[Page]:
    """Two pages: a full-page figure with no caption on it, and the caption atop the next page."""
    w = _content_width(size)
    cap_rect = (MARGIN, 64.0, MARGIN + w, 64.0 + _caption_height(caption, w, 9))
    return [
        Page(
            figures=[Figure((MARGIN, 70.0, MARGIN + w, size[1] - 70), caption, "facing", seed=seed, caption_rect=cap_rect)],
            header=headers[0],
            footer=footers[0],
            size=size,
        ),
        Page(
            texts=[Text((MARGIN, cap_rect[3] + 20, MARGIN + w, size[1] - 60), None, seed=seed)],
            header=headers[1],
            footer=footers[1],
            size=size,
        ),
    ]


def sample_book_pages(header: str = "CHAPTER 2  Inflammation and Repair", first_page_number: int = 37) -> list[Page]:
    """Every layout above in one book: running header, page numbers and logo on every page."""
    pages = [
        caption_below_page(),
        caption_above_page(),
        vector_figure_page(),
        two_column_page(),
        compound_figure_page(),
        *facing_caption_pages(),
    ]
    for i, page in enumerate(pages):
        page.header, page.footer, page.logo = header, str(first_page_number + i), True
    return pages


class PdfFactory:
    """The ``pdf_factory`` fixture: :func:`make_pdf` writing under a folder, plus the layouts.

    ``truth = pdf_factory([pdf_factory.caption_below_page()])``; ``pdf_factory.sample_book()``.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._count = 0

    def __call__(self, pages: Sequence[Page | Mapping[str, Any]], name: str | None = None, **kwargs: Any) -> PdfTruth:
        self._count += 1
        return make_pdf(self.root / (name or f"doc{self._count}.pdf"), pages, **kwargs)

    def sample_book(self, name: str = "book.pdf", **kwargs: Any) -> PdfTruth:
        return self(sample_book_pages(**kwargs), name)

    Page = Page
    Figure = Figure
    Text = Text
    caption_below_page = staticmethod(caption_below_page)
    caption_above_page = staticmethod(caption_above_page)
    vector_figure_page = staticmethod(vector_figure_page)
    two_column_page = staticmethod(two_column_page)
    running_header_page = staticmethod(running_header_page)
    compound_figure_page = staticmethod(compound_figure_page)
    facing_caption_pages = staticmethod(facing_caption_pages)


__all__ = [
    "A4",
    "DecoyTruth",
    "Figure",
    "FigureTruth",
    "Page",
    "PanelTruth",
    "PdfFactory",
    "PdfTruth",
    "Text",
    "TextTruth",
    "caption_above_page",
    "caption_below_page",
    "caption_label",
    "compound_figure_page",
    "facing_caption_pages",
    "filler_text",
    "make_pdf",
    "running_header_page",
    "sample_book_pages",
    "two_column_page",
    "vector_figure_page",
]
