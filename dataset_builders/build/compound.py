"""Synthetic compound figures with exact `subfigure` and `panel_label` boxes (PathSubfig, synthetic).

A journal figure is a few micrographs laid out on a page with panel letters. PathAsst trained its
subfigure detector on 2K hand-annotated figures it never released; hand annotation does not scale,
and a generator that lays real images out the way journals do gives unlimited figures whose boxes
are exact by construction. This module is that generator.

What varies, figure to figure (all drawn from ``numpy``'s generator seeded by ``(seed, index)``, so
figure ``i`` is the same whichever order or process makes it):

- layout: equal grids (1x2 .. 4x4); rows of unequal heights holding unequal numbers of panels;
  columns likewise; one big panel beside (or above) a strip of small ones; L-shapes (a big panel
  with small ones along two sides); single-panel figures;
- spacing: gutters from none (panels touching) to wide, outer margins, panel borders;
- background: white, black, or light grey;
- panel fit: cropped to fill its cell, or letterboxed inside it (panels of unequal sizes);
- insets: a small panel over a corner of a big one, a zoom into the big panel or another image,
  always framed;
- charts: a share of the panels (``chart_fraction``, 0.3 by default) are line-art plots drawn by
  matplotlib at the panel's size (line plots, survival curves, bar charts with error bars, scatter
  and box plots, histograms; see :mod:`.charts`), as real pathology figures mix micrographs with
  charts. The share varies figure to figure (drawn from a Beta distribution whose mean is
  ``chart_fraction``: many figures are all micrographs or all charts, others mix them). Chart
  choices come from a random stream of their own, so ``chart_fraction=0`` gives exactly the
  micrograph-only figures of earlier versions;
- panel letters: fonts (Pillow's bundled default, plus the DejaVu and STIX faces matplotlib ships
  when it is installed, plus any ``extra_font_dirs``), sizes, cases (``A``, ``a``, ``(a)``, ``(A)``),
  corners (inside each of the four, or above the panel in the gutter), with or without a plate
  behind the letter, black or white by the brightness under it; some figures have no letters.

Box conventions (COCO ``[x, y, w, h]``, pixels, in the final image):

- ``subfigure``: every pixel of the panel, its border included, and nothing else: the image pasted
  there covers exactly that rectangle. A chart panel is its plotting area's frame, as in the real
  annotations (the frame's ink, whole line width included); its tick labels, axis titles and title
  lie outside the box, inside the chart's canvas (the rest of its cell).
- ``panel_label``: the tight bounding box of the letter's ink (every pixel the text rendering
  touched): placed with ``ImageDraw.textbbox`` and tightened to the rendered glyph mask, because
  ``textbbox`` includes the glyphs' side bearings (up to 6 px at 30 px in DejaVu Mono). A plate
  behind a letter is not part of its box.

The image pool holds the panels' pictures: a folder of images or a dataset folder with an ``image``
column (PathCap), see :meth:`ImagePool.load`. Single-panel pictures make the best pool: a compound
figure used as a panel brings its own unlabelled panels along.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pathasst.dataset_builders.build import charts

LAYOUTS = ("grid", "rows", "columns", "big_side", "l_shape", "single")
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (232, 232, 232)}
CASES = ("upper", "lower", "paren_lower", "paren_upper")
POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right", "outside")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2")

# Weights, not probabilities: what share of figures gets each choice. Grids dominate real journals;
# single panels are there so the detector learns that a plain figure is one subfigure.
_LAYOUT_WEIGHTS = {"grid": 0.30, "rows": 0.17, "columns": 0.09, "big_side": 0.14, "l_shape": 0.12, "single": 0.18}
_BACKGROUND_WEIGHTS = {"white": 0.65, "black": 0.25, "grey": 0.10}
_CASE_WEIGHTS = {"upper": 0.45, "lower": 0.25, "paren_lower": 0.20, "paren_upper": 0.10}
_POSITION_WEIGHTS = {"top_left": 0.42, "top_right": 0.09, "bottom_left": 0.10, "bottom_right": 0.07, "outside": 0.32}
_GRID_SHAPES = [(1, 2), (2, 1), (1, 3), (2, 2), (2, 3), (3, 2), (3, 3), (1, 4), (2, 4), (4, 2), (3, 4), (4, 4)]
_GRID_WEIGHTS = [0.12, 0.06, 0.10, 0.18, 0.14, 0.08, 0.10, 0.05, 0.07, 0.03, 0.04, 0.03]

MIN_PANEL = 40  # px: the smallest panel side a layout may produce
LEAF = ("leaf",)


# --- fonts ------------------------------------------------------------------------------------

_MPL_FACES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf",
)
DEFAULT_FONT = "pil-default"


def available_fonts(extra_dirs: Iterable[str | Path] = ()) -> list[tuple[str, str | None]]:
    """The label faces on this machine, as ``(name, path)``; ``path`` None is Pillow's default font.

    Pillow's bundled face (``ImageFont.load_default(size=...)``) is always there; the DejaVu and
    STIX faces come from matplotlib's bundled fonts when matplotlib is installed (found without
    importing it); ``extra_dirs`` adds every ``.ttf``/``.otf`` found in those folders. Nothing is
    downloaded. The list is sorted, so a seed picks the same face on machines with the same fonts.
    """
    fonts: list[tuple[str, str | None]] = [(DEFAULT_FONT, None)]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        ttf = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"
        fonts += [(name.rsplit(".", 1)[0], str(ttf / name)) for name in _MPL_FACES if (ttf / name).is_file()]
    for folder in extra_dirs:
        for path in sorted(Path(folder).expanduser().glob("*")):
            if path.suffix.lower() in (".ttf", ".otf"):
                fonts.append((path.stem, str(path)))
    return fonts


@functools.lru_cache(maxsize=256)
def _font(path: str | None, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=2048)
def _text_mask(path: str | None, size: int, text: str) -> Image.Image:
    """The rendered text as an ``L`` mask cropped to its ink: what is pasted is what is boxed."""
    font = _font(path, size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font, anchor="la")
    mask = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(mask).text((2 - left, 2 - top), text, font=font, fill=255, anchor="la")
    ink = mask.getbbox()
    return mask.crop(ink) if ink else mask.crop((0, 0, 1, 1))


def label_text(n: int, case: str) -> str:
    """The n-th panel letter (0 -> A) in a case style: ``A``, ``a``, ``(a)``, ``(A)``; past Z: AA, AB..."""
    letters = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    if case in ("lower", "paren_lower"):
        letters = letters.lower()
    return f"({letters})" if case.startswith("paren") else letters


# --- the image pool ---------------------------------------------------------------------------


class ImagePool:
    """The pictures panels are cut from, kept encoded (bounded memory) and decoded on demand.

    Args:
        entries: ``(name, encoded image bytes)``, each already checked and downscaled.
        sizes: ``(width, height)`` of each entry (layouts need aspect ratios without decoding).
        cache: decoded images kept (a figure reuses its parent image for a zoom inset).
    """

    def __init__(self, entries: Sequence[tuple[str, bytes]], sizes: Sequence[tuple[int, int]], cache: int = 64):
        if not entries:
            raise ValueError("the image pool is empty")
        self.names = [name for name, _ in entries]
        self._data = [data for _, data in entries]
        self.sizes = list(sizes)
        self._cache: OrderedDict[int, Image.Image] = OrderedDict()
        self._cache_size = cache

    def __len__(self) -> int:
        return len(self._data)

    def entries(self) -> list[tuple[str, bytes]]:
        """``(name, encoded bytes)`` of every image: what another process needs to rebuild the pool."""
        return list(zip(self.names, self._data))

    def get(self, i: int) -> Image.Image:
        """Pool image ``i`` as RGB (shared: never modify it)."""
        img = self._cache.get(i)
        if img is not None:
            self._cache.move_to_end(i)
            return img
        with Image.open(io.BytesIO(self._data[i])) as opened:
            img = opened.convert("RGB")
        self._cache[i] = img
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img

    @classmethod
    def from_images(cls, images: Sequence[Image.Image | bytes], names: Sequence[str] | None = None) -> "ImagePool":
        """A pool from images in memory (tests, benchmarks): PIL images are stored as PNG."""
        entries, sizes = [], []
        for i, img in enumerate(images):
            if isinstance(img, Image.Image):
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="PNG", compress_level=1)
                data, size = buf.getvalue(), img.size
            else:
                data = bytes(img)
                with Image.open(io.BytesIO(data)) as opened:
                    size = opened.size
            entries.append((names[i] if names else f"image-{i}", data))
            sizes.append(size)
        return cls(entries, sizes)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        max_side: int = 768,
        limit: int | None = 1000,
        min_side: int = 32,
        max_pixels: int | None = None,
    ) -> tuple["ImagePool | None", list[tuple[str, str]]]:
        """Read a pool from a folder of images or a dataset folder (Parquet with an ``image`` column).

        Every image goes through :func:`pathasst.images.normalize_image` (modes, EXIF rotation,
        decompression-bomb check) and is downscaled to ``max_side``; large PNGs are kept as JPEG so
        a pool of ``limit`` images stays in memory comfortably (~100 KB each).

        Args:
            path: an image folder (searched recursively, sorted) or a dataset folder (``*.parquet``
                files with an ``image`` column of ``{'bytes', 'path'}``, e.g. PathCap).
            max_side: longest side kept per image.
            limit: keep the first ``limit`` usable images (in sorted order); None keeps all.
            min_side: images whose shorter side is below this cannot make a panel.
            max_pixels: passed to ``normalize_image`` (default: its own limit).

        Returns:
            ``(pool, rejected)``: the pool (None when no image was usable) and ``(name, reason)``
            for each image that was not.
        """
        from pathasst.images import DEFAULT_MAX_PIXELS, ImageRejected, normalize_image

        entries: list[tuple[str, bytes]] = []
        sizes: list[tuple[int, int]] = []
        rejected: list[tuple[str, str]] = []
        for name, src in iter_pool_sources(path):
            if limit is not None and len(entries) >= limit:
                break
            try:
                norm = normalize_image(src, max_side=max_side, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
            except ImageRejected as exc:
                rejected.append((name, exc.reason))
                continue
            except OSError as exc:
                rejected.append((name, f"cannot read image: {exc.strerror or exc}"))
                continue
            if min(norm.width, norm.height) < min_side:
                rejected.append((name, f"image too small: {norm.width}x{norm.height} (a panel needs {min_side} px a side)"))
                continue
            data = norm.bytes_
            if norm.format == "PNG" and len(data) > 256_000:
                with Image.open(io.BytesIO(data)) as opened:
                    buf = io.BytesIO()
                    opened.convert("RGB").save(buf, format="JPEG", quality=92)
                data = buf.getvalue()
            entries.append((name, data))
            sizes.append((norm.width, norm.height))
        return (cls(entries, sizes) if entries else None), rejected


def is_dataset_folder(path: str | Path) -> bool:
    """True when ``path`` holds Parquet files (a dataset folder) rather than image files."""
    path = Path(path)
    return path.is_dir() and (any(path.glob("data/*.parquet")) or any(path.glob("*.parquet")))


def iter_pool_sources(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(name, path or bytes)`` for each candidate pool image, in a stable (sorted) order."""
    path = Path(path)
    if path.is_file():
        yield path.name, path
        return
    if is_dataset_folder(path):
        import pyarrow.parquet as pq

        files = sorted(path.glob("data/*.parquet")) or sorted(path.glob("*.parquet"))
        for file in files:
            pf = pq.ParquetFile(file)
            names = pf.schema_arrow.names
            if "image" not in names:
                continue
            key = next((k for k in ("id", "image_id", "figure_id") if k in names), None)
            columns = ["image"] + ([key] if key else [])
            row = 0
            for batch in pf.iter_batches(batch_size=64, columns=columns):
                for item in batch.to_pylist():
                    image = item["image"] or {}
                    name = str(item[key]) if key else f"{file.name}#{row}"
                    row += 1
                    yield name, image.get("bytes") or b""
        return
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        yield str(file.relative_to(path)), file


# --- plans: what a figure holds, decided before a pixel is drawn --------------------------------


@dataclasses.dataclass
class Rect:
    """Pixel rectangle, ``x1``/``y1`` exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    def xywh(self) -> list[float]:
        return [float(self.x0), float(self.y0), float(self.w), float(self.h)]

    def contains(self, other: "Rect") -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1

    def intersects(self, other: "Rect") -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1


@dataclasses.dataclass
class LabelPlan:
    text: str
    font: str  # face name from available_fonts()
    size: int
    box: Rect  # the ink: exactly what the mask paints
    color: tuple[int, int, int]
    position: str  # a POSITIONS value
    plate: Rect | None = None
    plate_color: tuple[int, int, int] | None = None


@dataclasses.dataclass
class PanelPlan:
    box: Rect  # the subfigure box: every panel pixel, border included
    source: int  # pool index
    region: tuple[float, float, float, float]  # the part of the source shown, source pixels
    fit: str  # cover | contain | zoom (an inset magnifying its parent)
    cell: Rect  # the layout cell the panel sits in (equals box for cover without outside labels)
    border: int = 0
    border_color: tuple[int, int, int] | None = None
    inset_of: int | None = None  # index of the panel an inset overlaps
    label: LabelPlan | None = None
    chart: Any = None  # a charts.ChartPlan: the panel is a chart drawn on ``canvas``, ``box`` its frame
    canvas: Rect | None = None  # a chart's whole drawing (texts included); None for a picture


@dataclasses.dataclass
class FigurePlan:
    seed: int
    index: int
    width: int
    height: int
    layout: str
    background: str
    gutter: int
    margin: int
    case: str | None  # None: no panel letters in this figure
    position: str | None
    font: str | None
    panels: list[PanelPlan]
    image_format: str  # JPEG | PNG
    jpeg_quality: int
    jpeg_subsampling: int = 2  # 0: 4:4:4, 2: 4:2:0 (what most publishers' pipelines write)
    chart_share: float = 0.0  # chance of each panel of this figure being a chart


@dataclasses.dataclass
class CompoundFigure:
    """One generated figure: the image, its PathSubfig objects, and the plan that made it."""

    image: Image.Image
    objects: list[dict[str, Any]]
    plan: FigurePlan

    @property
    def image_id(self) -> str:
        return synthetic_id(self.plan.seed, self.plan.index)

    def encode(self) -> bytes:
        """The image as the plan's format: mostly JPEG (quality 75..95, 4:2:0 or 4:4:4), some PNG,
        as journals publish figures (PNG at zlib level 1: it costs 3x less time than level 6 for
        ~8% more bytes on photographs)."""
        buf = io.BytesIO()
        if self.plan.image_format == "JPEG":
            self.image.save(buf, format="JPEG", quality=self.plan.jpeg_quality, subsampling=self.plan.jpeg_subsampling)
        else:
            self.image.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def record(self) -> dict[str, Any]:
        """The PathSubfig record (``origin`` synthetic, image encoded)."""
        return {
            "image_id": self.image_id,
            "image": self.encode(),
            "width": self.image.width,
            "height": self.image.height,
            "objects": [dict(o, bbox=list(o["bbox"])) for o in self.objects],
            "origin": "synthetic",
        }


def synthetic_id(seed: int, index: int) -> str:
    return f"synth-{seed}-{index}"


# --- the generator ----------------------------------------------------------------------------


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.asarray([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _partition(start: int, length: int, weights: Sequence[float], gutter: int) -> list[tuple[int, int]]:
    """Cut ``length`` pixels into parts proportional to ``weights`` with ``gutter`` between them;
    integer sizes that add up exactly (largest remainders get the spare pixels)."""
    k = len(weights)
    avail = length - gutter * (k - 1)
    total = float(sum(weights))
    raw = [avail * w / total for w in weights]
    sizes = [math.floor(r) for r in raw]
    for i in sorted(range(k), key=lambda i: raw[i] - sizes[i], reverse=True)[: avail - sum(sizes)]:
        sizes[i] += 1
    out, pos = [], start
    for size in sizes:
        out.append((pos, size))
        pos += size + gutter
    return out


def _assign(node: tuple, rect: Rect, gutter: int, out: list[Rect]) -> None:
    """Leaf rectangles of a guillotine layout tree, in the tree's (reading) order."""
    if node[0] == "leaf":
        out.append(rect)
        return
    direction, children, weights = node
    if direction == "h":  # side by side
        for child, (x, w) in zip(children, _partition(rect.x0, rect.w, weights, gutter)):
            _assign(child, Rect(x, rect.y0, x + w, rect.y1), gutter, out)
    else:  # stacked
        for child, (y, h) in zip(children, _partition(rect.y0, rect.h, weights, gutter)):
            _assign(child, Rect(rect.x0, y, rect.x1, y + h), gutter, out)


def _fractions(node: tuple) -> list[tuple[float, float]]:
    """(width, height) of each leaf as fractions of the figure, gutters ignored."""
    rects: list[Rect] = []
    _assign(node, Rect(0, 0, 1 << 20, 1 << 20), 0, rects)
    return [(r.w / (1 << 20), r.h / (1 << 20)) for r in rects]


def _weights(rng: np.random.Generator, n: int, lo: float = 0.6, hi: float = 1.6) -> list[float]:
    return [float(w) for w in rng.uniform(lo, hi, n)]


def _layout_tree(rng: np.random.Generator, layout: str) -> tuple:
    if layout == "single":
        return LEAF
    if layout == "grid":
        r, c = _GRID_SHAPES[int(rng.choice(len(_GRID_SHAPES), p=np.asarray(_GRID_WEIGHTS) / sum(_GRID_WEIGHTS)))]
        return ("v", [("h", [LEAF] * c, [1.0] * c) for _ in range(r)], [1.0] * r)
    if layout in ("rows", "columns"):
        k = int(rng.integers(2, 4))
        counts = [int(rng.integers(1, 5)) for _ in range(k)]
        if max(counts) == 1:
            counts[int(rng.integers(0, k))] = int(rng.integers(2, 5))
        inner = "h" if layout == "rows" else "v"
        outer = "v" if layout == "rows" else "h"
        return (outer, [(inner, [LEAF] * n, _weights(rng, n)) if n > 1 else LEAF for n in counts],
                _weights(rng, k, 0.6, 1.5))
    if layout == "big_side":
        m = int(rng.integers(2, 5))
        side = ["right", "left", "bottom", "top"][int(rng.choice(4, p=[0.45, 0.15, 0.3, 0.1]))]
        strip = ("v" if side in ("right", "left") else "h", [LEAF] * m, _weights(rng, m, 0.8, 1.25))
        big = float(rng.uniform(1.4, 3.0))
        direction = "h" if side in ("right", "left") else "v"
        children, weights = [LEAF, strip], [big, 1.0]
        if side in ("left", "top"):
            children, weights = children[::-1], weights[::-1]
        return (direction, children, weights)
    if layout == "l_shape":
        k = int(rng.integers(3, 5))  # the big panel spans (k-1)x(k-1) cells of a k x k grid
        side = ("v", [LEAF] * (k - 1), [1.0] * (k - 1))
        top_children, top_weights = [LEAF, side], [float(k - 1), 1.0]
        if rng.random() < 0.3:  # mirrored: the small column on the left
            top_children, top_weights = top_children[::-1], top_weights[::-1]
        rows = [("h", top_children, top_weights), ("h", [LEAF] * k, [1.0] * k)]
        weights = [float(k - 1), 1.0]
        if rng.random() < 0.25:  # upside down: the small row on top
            rows, weights = rows[::-1], weights[::-1]
        return ("v", rows, weights)
    raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def _luminance(img: Image.Image, box: Rect) -> float:
    region = img.crop((box.x0, box.y0, box.x1, box.y1)).convert("L")
    return float(np.asarray(region).mean()) if box.w > 0 and box.h > 0 else 255.0


class CompoundFigureGenerator:
    """Lay pool images out as compound figures; figure ``index`` depends on ``(seed, index)`` only.

    Args:
        pool: where the panels' pictures come from.
        seed: non-negative; with ``index``, decides every choice of a figure.
        min_width: narrowest figure, pixels.
        max_width: widest figure, pixels.
        fonts: ``(name, path)`` faces for panel letters (default :func:`available_fonts`).
        layouts: restrict to these layouts (default all of :data:`LAYOUTS`, by their weights).
        inset_rate: share of figures with an inset.
        chart_fraction: expected share of panels that are charts (0 to 1; needs matplotlib when
            above 0). Each figure draws its own share from ``Beta(f, 1 - f)``, mean ``f``.

    Raises:
        ValueError: a bad seed, width, layout or chart fraction; a chart fraction above 0 without
            matplotlib installed.

    Example::

        pool, _ = ImagePool.load("micrographs/")
        gen = CompoundFigureGenerator(pool, seed=0)
        fig = gen.generate(12)
        fig.image.save("fig.png"); print(fig.objects)
    """

    def __init__(
        self,
        pool: ImagePool,
        seed: int = 0,
        *,
        min_width: int = 480,
        max_width: int = 1400,
        fonts: Sequence[tuple[str, str | None]] | None = None,
        layouts: Sequence[str] | None = None,
        inset_rate: float = 0.2,
        chart_fraction: float = 0.3,
    ):
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (got {seed})")
        if not 160 <= min_width <= max_width:
            raise ValueError(f"need 160 <= min_width <= max_width (got {min_width}, {max_width})")
        unknown = set(layouts or ()) - set(LAYOUTS)
        if unknown:
            raise ValueError(f"unknown layout(s) {', '.join(sorted(unknown))}; choose from {', '.join(LAYOUTS)}")
        self.pool = pool
        self.seed = int(seed)
        self.min_width = min_width
        self.max_width = max_width
        self.fonts = list(fonts) if fonts is not None else available_fonts()
        self._font_paths = dict(self.fonts)
        self.layout_weights = {k: v for k, v in _LAYOUT_WEIGHTS.items() if not layouts or k in layouts}
        self.inset_rate = inset_rate
        if not 0.0 <= chart_fraction <= 1.0:
            raise ValueError(f"chart_fraction must be within 0..1 (got {chart_fraction})")
        if chart_fraction > 0 and not charts.matplotlib_available():
            raise ValueError(f"chart_fraction={chart_fraction} draws chart panels with matplotlib, which is not "
                             "installed: pip install matplotlib (it comes with pathasst[demo], [detect] and [bench]), "
                             "or set chart_fraction=0 for micrograph-only figures")
        self.chart_fraction = float(chart_fraction)

    # -- public ------------------------------------------------------------------------------

    def generate(self, index: int, *, draw_labels: bool = True) -> CompoundFigure:
        """Figure ``index``. ``draw_labels=False`` paints the same figure without its letters (and
        their plates), for checking the label boxes; the objects still list them."""
        rng = np.random.default_rng([self.seed, int(index)])
        plan = self._plan(rng, int(index))
        image = self._render(plan, draw_labels)
        objects: list[dict[str, Any]] = []
        for panel in plan.panels:
            objects.append({"bbox": panel.box.xywh(), "category": "subfigure"})
            if panel.label is not None:
                objects.append({"bbox": panel.label.box.xywh(), "category": "panel_label"})
        return CompoundFigure(image=image, objects=objects, plan=plan)

    def record(self, index: int) -> dict[str, Any]:
        """The PathSubfig record of figure ``index``."""
        return self.generate(index).record()

    # -- planning ----------------------------------------------------------------------------

    def _plan(self, rng: np.random.Generator, index: int) -> FigurePlan:
        # charts draw from a stream of their own: chart_fraction=0 leaves every other choice as it was
        crng = np.random.default_rng([self.seed, index, 1])
        f = self.chart_fraction
        share = f if f in (0.0, 1.0) else float(crng.beta(f, 1.0 - f))
        for _attempt in range(6):
            layout = _pick(rng, self.layout_weights)
            plan = self._try_plan(rng, index, layout, crng=crng, chart_share=share)
            if plan is not None:
                return plan
        return self._try_plan(rng, index, "single", force=True, crng=crng, chart_share=share)  # type: ignore[return-value]

    def _try_plan(self, rng: np.random.Generator, index: int, layout: str, force: bool = False, *,
                  crng: np.random.Generator | None = None, chart_share: float = 0.0) -> FigurePlan | None:
        tree = _layout_tree(rng, layout)
        fractions = _fractions(tree)
        n = len(fractions)
        width = int(rng.integers(self.min_width, self.max_width + 1))
        if layout == "single":
            width = int(rng.integers(self.min_width, max(self.min_width, min(self.max_width, 1000)) + 1))
        # height: leaf cells near a target aspect (h/w), so panels look like micrographs
        target = float(rng.uniform(0.65, 1.35))
        geo = math.exp(sum(math.log(fh / fw) for fw, fh in fractions) / n)
        height = int(np.clip(round(width * target / geo), 200, int(self.max_width * 1.3)))

        background = _pick(rng, _BACKGROUND_WEIGHTS)
        gutter = 0 if rng.random() < 0.12 else int(rng.integers(2, 9) if rng.random() < 0.45 else rng.integers(9, 31))
        margin = 0 if rng.random() < 0.3 else int(rng.integers(2, 31))
        if layout == "single" and rng.random() < 0.5:
            margin = 0  # the figure is the picture itself

        # letters: style for the whole figure, as journals do
        labelled = rng.random() < (0.35 if n == 1 else 0.92)
        case = _pick(rng, _CASE_WEIGHTS)
        position = _pick(rng, _POSITION_WEIGHTS)
        font_name, _font_path = self.fonts[int(rng.integers(0, len(self.fonts)))]
        size = int(np.clip(round(width * rng.uniform(0.022, 0.05)), 11, 56))
        if position == "outside" and gutter == 0 and rng.random() < 0.5:
            position = "top_left"  # touching panels leave no gutter to print in
        texts = [label_text(i, case) for i in range(n + 1)]
        strip = 0
        gap = int(rng.integers(2, 7))
        if labelled and position == "outside":
            strip = max(self._mask(font_name, size, t).height for t in texts) + gap + 1

        border = 0
        border_color = None
        if rng.random() < 0.35:
            border = int(rng.integers(1, 4))
            options = [c for c in ((0, 0, 0), (128, 128, 128), (255, 255, 255)) if c != BACKGROUNDS[background]]
            border_color = options[int(rng.integers(0, len(options)))]

        inner = Rect(margin, margin, width - margin, height - margin)
        cells: list[Rect] = []
        _assign(tree, inner, gutter, cells)
        if not force and any(c.w < MIN_PANEL or c.h - strip < MIN_PANEL for c in cells):
            return None

        sources = self._sources(rng, n + 1)
        panels: list[PanelPlan] = []
        for cell, src in zip(cells, sources):
            area = Rect(cell.x0, cell.y0 + strip, cell.x1, cell.y1)
            chart = None
            if chart_share > 0 and crng is not None and crng.random() < chart_share:
                chart = self._place_chart(crng, area, cell)  # None: the cell is too small for a chart
            panels.append(chart or self._place(rng, area, cell, src, n, border, border_color))
        if force and any(p.box.w < 1 or p.box.h < 1 for p in panels):
            raise RuntimeError("figure too small for any layout")

        if labelled:
            if not self._place_labels(rng, panels, texts, font_name, size, position, gap, background):
                labelled = False
                for p in panels:
                    p.label = None
        if rng.random() < self.inset_rate:
            self._add_inset(rng, panels, sources[-1], texts[n] if labelled else None, font_name, size)
        return FigurePlan(
            seed=self.seed, index=index, width=width, height=height, layout=layout, background=background,
            gutter=gutter, margin=margin, case=case if labelled else None,
            position=position if labelled else None, font=font_name if labelled else None, panels=panels,
            image_format="JPEG" if rng.random() < 0.88 else "PNG", jpeg_quality=int(rng.integers(75, 96)),
            jpeg_subsampling=0 if rng.random() < 0.4 else 2, chart_share=chart_share,
        )

    def _sources(self, rng: np.random.Generator, n: int) -> list[int]:
        # a figure does not repeat a picture when the pool allows
        size = len(self.pool)
        if size >= n:
            return [int(i) for i in rng.choice(size, n, replace=False)]
        return [int(i) for i in rng.integers(0, size, n)]

    def _place(self, rng, area: Rect, cell: Rect, src: int, n: int, border: int, border_color) -> PanelPlan:
        sw, sh = self.pool.sizes[src]
        fit = "contain" if (n > 1 and rng.random() < 0.2) else "cover"
        if fit == "contain":
            scale = min(area.w / sw, area.h / sh)
            w, h = max(1, min(area.w, round(sw * scale))), max(1, min(area.h, round(sh * scale)))
            if min(w, h) >= 24:
                if rng.random() < 0.7:  # centred, else top-left as many layouts align panels
                    x0, y0 = area.x0 + (area.w - w) // 2, area.y0 + (area.h - h) // 2
                else:
                    x0, y0 = area.x0, area.y0
                return PanelPlan(box=Rect(x0, y0, x0 + w, y0 + h), source=src, region=(0.0, 0.0, float(sw), float(sh)),
                                 fit="contain", cell=cell, border=border, border_color=border_color)
        # cover: crop the source to the area's aspect at a random offset, then scale to fill
        scale = max(area.w / sw, area.h / sh)
        cw, ch = area.w / scale, area.h / scale
        x0, y0 = float(rng.uniform(0, sw - cw)) if sw > cw else 0.0, float(rng.uniform(0, sh - ch)) if sh > ch else 0.0
        return PanelPlan(box=area, source=src, region=(x0, y0, x0 + cw, y0 + ch), fit="cover", cell=cell,
                         border=border, border_color=border_color)

    @staticmethod
    def _place_chart(crng: np.random.Generator, area: Rect, cell: Rect) -> PanelPlan | None:
        """A chart drawn over the whole ``area``; its box is the plotting area's frame."""
        chart = charts.plan_chart(crng, area.w, area.h)
        if chart is None:
            return None
        fx0, fy0, fx1, fy1 = chart.frame
        box = Rect(area.x0 + fx0, area.y0 + fy0, area.x0 + fx1, area.y0 + fy1)
        return PanelPlan(box=box, source=-1, region=(0.0, 0.0, float(area.w), float(area.h)), fit="chart",
                         cell=cell, chart=chart, canvas=area)

    def _mask(self, font_name: str, size: int, text: str) -> Image.Image:
        return _text_mask(self._font_paths[font_name], size, text)

    def _place_labels(self, rng, panels: list[PanelPlan], texts: list[str], font_name: str, size: int,
                      position: str, gap: int, background: str) -> bool:
        """Give each panel its letter box, shrinking the font until every letter fits; False if none can."""
        plate_mode = position != "outside" and rng.random() < 0.25
        pad = int(rng.integers(2, 11))
        dx = int(rng.integers(0, 4))
        plate_pad = int(rng.integers(2, 5))
        plate_color = (255, 255, 255) if rng.random() < 0.75 else (0, 0, 0)
        while size >= 9:
            ok = True
            for panel, text in zip(panels, texts):
                mask = self._mask(font_name, size, text)
                # a letter inside a chart's frame gets a plate: over lines and bars, bare ink would
                # vanish wherever it has the colour below it
                plated = plate_mode or (position != "outside" and panel.chart is not None)
                label = self._label_box(panel, mask, position, pad, gap, dx, plate_pad if plated else 0)
                if label is None:
                    ok = False
                    break
                panel.label = LabelPlan(text=text, font=font_name, size=size, box=label, color=(0, 0, 0),
                                        position=position)
                if plated:
                    panel.label.plate = Rect(label.x0 - plate_pad, label.y0 - plate_pad,
                                             label.x1 + plate_pad, label.y1 + plate_pad)
                    panel.label.plate_color = plate_color if plate_mode else (255, 255, 255)
            if ok:
                for panel in panels:
                    assert panel.label is not None
                    if position == "outside":
                        panel.label.color = (255, 255, 255) if background == "black" else (0, 0, 0)
                    elif panel.label.plate is not None:
                        white = panel.label.plate_color == (255, 255, 255)
                        panel.label.color = (0, 0, 0) if white else (255, 255, 255)
                    # inside without a plate: colour chosen at render time from the pixels below
                return True
            size = int(size * 0.85)
        return False

    @staticmethod
    def _label_box(panel: PanelPlan, mask: Image.Image, position: str, pad: int, gap: int, dx: int,
                   plate_pad: int) -> Rect | None:
        w, h = mask.size
        box = panel.box
        if position == "outside":
            # a chart's letter goes above its whole drawing (title included), as journals print it
            anchor = panel.canvas or box
            x0, y0 = anchor.x0 + dx, anchor.y0 - gap - h
            rect = Rect(x0, y0, x0 + w, y0 + h)
            return rect if panel.cell.contains(rect) else None
        # inside: at most 40% of the panel each way, so a corner inset and the letter never meet
        off = panel.border + max(pad, plate_pad + 1)
        if w + 2 * off > 0.4 * box.w or h + 2 * off > 0.4 * box.h:
            return None
        x0 = box.x0 + off if position.endswith("left") else box.x1 - off - w
        y0 = box.y0 + off if position.startswith("top") else box.y1 - off - h
        return Rect(x0, y0, x0 + w, y0 + h)

    def _add_inset(self, rng, panels: list[PanelPlan], other_src: int, text: str | None, font_name: str,
                   size: int) -> None:
        pictures = [i for i, p in enumerate(panels) if p.chart is None]  # insets magnify pictures, not plots
        if not pictures:
            return
        host_i = max(pictures, key=lambda i: panels[i].box.w * panels[i].box.h)
        host = panels[host_i]
        if min(host.box.w, host.box.h) < 160:
            return
        fw, fh = float(rng.uniform(0.22, 0.38)), float(rng.uniform(0.22, 0.38))
        w, h = max(40, round(host.box.w * fw)), max(40, round(host.box.h * fh))
        corners = ["top_left", "top_right", "bottom_left", "bottom_right"]
        if host.label is not None and host.label.position != "outside":
            opposite = {"top_left": "bottom_right", "top_right": "bottom_left",
                        "bottom_left": "top_right", "bottom_right": "top_left"}
            corner = opposite[host.label.position]
        else:
            corner = corners[int(rng.integers(0, 4))]
        off = int(rng.integers(0, max(1, round(0.04 * min(host.box.w, host.box.h)))))
        x0 = host.box.x0 + off if corner.endswith("left") else host.box.x1 - off - w
        y0 = host.box.y0 + off if corner.startswith("top") else host.box.y1 - off - h
        box = Rect(x0, y0, x0 + w, y0 + h)
        border = int(rng.integers(2, 4))
        border_color = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
        if rng.random() < 0.5:  # a zoom into the host: a region of what the host shows
            hx0, hy0, hx1, hy1 = host.region
            zoom = float(rng.uniform(2.0, 4.0))
            rw = (hx1 - hx0) / zoom
            rh = rw * h / w
            if rh > (hy1 - hy0):
                rh = (hy1 - hy0) / zoom
                rw = rh * w / h
            rx = hx0 + float(rng.uniform(0, (hx1 - hx0) - rw))
            ry = hy0 + float(rng.uniform(0, (hy1 - hy0) - rh))
            inset = PanelPlan(box=box, source=host.source, region=(rx, ry, rx + rw, ry + rh), fit="zoom",
                              cell=host.box, border=border, border_color=border_color, inset_of=host_i)
        else:
            inset = self._place(rng, box, host.box, other_src, 1, border, border_color)
            inset.inset_of = host_i
        if text is not None and rng.random() < 0.5:
            label_size = size
            while label_size >= 9:
                mask = self._mask(font_name, label_size, text)
                rect = self._label_box(inset, mask, "top_left", 2, 0, 0, 0)
                if rect is not None:
                    inset.label = LabelPlan(text=text, font=font_name, size=label_size, box=rect, color=(0, 0, 0),
                                            position="top_left")
                    break
                label_size = int(label_size * 0.85)
        panels.append(inset)

    # -- rendering ---------------------------------------------------------------------------

    def _render(self, plan: FigurePlan, draw_labels: bool) -> Image.Image:
        canvas = Image.new("RGB", (plan.width, plan.height), BACKGROUNDS[plan.background])
        draw = ImageDraw.Draw(canvas)
        for panel in plan.panels:
            box = panel.box
            if panel.chart is not None:
                assert panel.canvas is not None
                canvas.paste(charts.render_chart(panel.chart), (panel.canvas.x0, panel.canvas.y0))
                continue
            src = self.pool.get(panel.source)
            # bilinear: a third faster than bicubic, and figures carry both kinds of resampling
            piece = src.resize((box.w, box.h), Image.Resampling.BILINEAR, box=panel.region, reducing_gap=2.0)
            canvas.paste(piece, (box.x0, box.y0))
            if panel.border:
                draw.rectangle((box.x0, box.y0, box.x1 - 1, box.y1 - 1), outline=panel.border_color,
                               width=panel.border)
        # colours first, from the picture without any letter, so draw_labels changes nothing else
        for panel in plan.panels:
            label = panel.label
            if label is not None and label.position != "outside" and label.plate is None:
                label.color = (0, 0, 0) if _luminance(canvas, label.box) > 140 else (255, 255, 255)
        if not draw_labels:
            return canvas
        for panel in plan.panels:
            label = panel.label
            if label is None:
                continue
            if label.plate is not None:
                p = label.plate
                draw.rectangle((p.x0, p.y0, p.x1 - 1, p.y1 - 1), fill=label.plate_color)
            mask = self._mask(label.font, label.size, label.text)
            b = label.box
            canvas.paste(label.color, (b.x0, b.y0, b.x1, b.y1), mask)
        return canvas


def draw_boxes(figure: CompoundFigure | Image.Image, objects: Sequence[dict[str, Any]] | None = None) -> Image.Image:
    """A copy of the figure with its boxes drawn (subfigures green, labels red), for eyeballing."""
    img = (figure.image if isinstance(figure, CompoundFigure) else figure).convert("RGB").copy()
    objects = figure.objects if isinstance(figure, CompoundFigure) else (objects or [])
    draw = ImageDraw.Draw(img)
    for obj in objects:
        x, y, w, h = obj["bbox"]
        color = (0, 200, 0) if obj["category"] == "subfigure" else (230, 0, 0)
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=color, width=2)
    return img


__all__ = [
    "BACKGROUNDS",
    "CASES",
    "CompoundFigure",
    "CompoundFigureGenerator",
    "FigurePlan",
    "ImagePool",
    "LAYOUTS",
    "POSITIONS",
    "PanelPlan",
    "available_fonts",
    "draw_boxes",
    "label_text",
    "synthetic_id",
]
