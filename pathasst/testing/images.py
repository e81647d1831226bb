"""Image fixtures made in code: every Pillow mode an extractor meets, broken files, and a tissue tile.

All factories are deterministic in ``seed``; different seeds give visibly (and perceptual-hash)
different pictures, so deduplication tests can rely on them.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside the functions
    import numpy as np
    from PIL import Image

#: Modes :func:`make_image` can write, and the formats each can be written in (first is preferred).
MODE_FORMATS: dict[str, tuple[str, ...]] = {
    "RGB": ("PNG", "JPEG", "TIFF", "WEBP", "BMP"),
    "L": ("PNG", "JPEG", "TIFF", "BMP"),
    "P": ("PNG", "GIF", "BMP", "TIFF"),
    "1": ("PNG", "TIFF", "BMP"),
    "RGBA": ("PNG", "TIFF", "WEBP"),
    "LA": ("PNG", "TIFF"),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "I": ("TIFF",),
    "F": ("TIFF",),
}


def _pattern(size: tuple[int, int], seed: int) -> "np.ndarray":
    """A smooth random colour field plus one hard-edged shape: low-frequency, so the perceptual
    hash differs from seed to seed, and compressible, so files stay small."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    coarse = (rng.random((4, 5, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    w, h = size
    x0, y0 = int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h // 2)))
    box = (x0, y0, x0 + max(2, w // 3), y0 + max(2, h // 3))
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if seed % 2 else draw.rectangle)(box, fill=fill)
    return np.asarray(img)


def _alpha(size: tuple[int, int]) -> "np.ndarray":
    """Opaque on the left, fading to fully transparent on the right: covers 0, partial and 255."""
    import numpy as np

    w, h = size
    ramp = np.clip(np.linspace(300, -60, w), 0, 255).astype(np.uint8)
    return np.broadcast_to(ramp, (h, w)).copy()


def pil_image(mode: str = "RGB", size: tuple[int, int] = (64, 48), seed: int = 0, *, transparent: bool = False) -> "Image.Image":
    """The in-memory image :func:`make_image` encodes (same arguments), for tests that need pixels.

    Args:
        mode: a key of :data:`MODE_FORMATS`.
        size: (width, height) in pixels.
        seed: picks the pattern.
        transparent: for ``P``, make palette index 0 transparent (``info['transparency']``).
    """
    import numpy as np
    from PIL import Image

    if mode not in MODE_FORMATS:
        raise ValueError(f"unsupported mode {mode!r}; choose from {', '.join(MODE_FORMATS)}")
    rgb = Image.fromarray(_pattern(size, seed))
    if mode == "RGB":
        return rgb
    if mode == "L":
        return rgb.convert("L")
    if mode == "1":
        return rgb.convert("L").point(lambda v: 255 if v > 127 else 0).convert("1")
    if mode == "P":
        img = rgb.quantize(colors=16, dither=Image.Dither.NONE)
        if transparent:
            img.info["transparency"] = 0
        return img
    if mode == "RGBA":
        return Image.merge("RGBA", (*rgb.split(), Image.fromarray(_alpha(size))))
    if mode == "LA":
        return Image.merge("LA", (rgb.convert("L"), Image.fromarray(_alpha(size))))
    if mode == "CMYK":
        return rgb.convert("CMYK")
    grey = np.asarray(rgb.convert("L"), dtype=np.float64)
    if mode == "I;16":
        # A 12-bit camera's range inside 16 bits: 1000..5080, far from 0..65535.
        return Image.fromarray((1000 + grey * 16).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((grey * 1000 - 50_000).astype(np.int32))
    # F: float intensities, negative values included (background-subtracted fluorescence)
    return Image.fromarray((grey / 100.0 - 0.5).astype(np.float32))


def to_bytes(img: "Image.Image", fmt: str = "PNG", **save_kwargs: Any) -> bytes:
    """Encode a PIL image (JPEG at quality 90 unless ``quality`` is given)."""
    buf = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        save_kwargs.setdefault("quality", 90)
    img.save(buf, format=fmt.upper(), **save_kwargs)
    return buf.getvalue()


def make_image(
    mode: str = "RGB",
    size: tuple[int, int] = (64, 48),
    seed: int = 0,
    fmt: str | None = "PNG",
    *,
    orientation: int | None = None,
    transparent: bool = False,
) -> bytes:
    """An encoded image in the given Pillow mode; opening it gives back that mode.

    Args:
        mode: ``RGB``, ``L``, ``P``, ``1``, ``RGBA``, ``LA``, ``CMYK`` (JPEG or TIFF), ``I;16``
            (16-bit PNG or TIFF, values 1000..5080), ``I`` and ``F`` (TIFF).
        size: (width, height) as stored in the file (before any EXIF rotation).
        seed: picks the pattern; the same arguments give the same bytes.
        fmt: container format; ``None`` picks the first that suits ``mode`` (see
            :data:`MODE_FORMATS`). ``PNG`` is switched to ``JPEG`` for CMYK and to ``TIFF`` for I/F,
            the formats such images actually come in.
        orientation: an EXIF orientation (1..8) to store, e.g. 6 for a phone photo taken upright.
        transparent: for ``P``, mark palette index 0 transparent.

    Raises:
        ValueError: unknown mode, or a format that cannot hold it.
    """
    fmts = MODE_FORMATS.get(mode)
    if fmts is None:
        raise ValueError(f"unsupported mode {mode!r}; choose from {', '.join(MODE_FORMATS)}")
    fmt = (fmt or fmts[0]).upper()
    fmt = "JPEG" if fmt == "JPG" else fmt
    if fmt == "PNG" and "PNG" not in fmts:
        fmt = fmts[0]
    if fmt not in fmts:
        raise ValueError(f"mode {mode} cannot be written as {fmt}; use one of {', '.join(fmts)}")
    img = pil_image(mode, size, seed, transparent=transparent)
    kwargs: dict[str, Any] = {}
    if orientation is not None:
        exif = img.getexif()
        exif[0x0112] = int(orientation)
        kwargs["exif"] = exif.tobytes()
    if mode == "P" and transparent:
        kwargs["transparency"] = 0
    return to_bytes(img, fmt, **kwargs)


def make_truncated_image(fmt: str = "JPEG", size: tuple[int, int] = (96, 72), seed: int = 0, keep: float = 0.5) -> bytes:
    """A valid header followed by only ``keep`` of the file: opens, fails to decode.

    The pattern is noisy so that the pixel data, not the header, is most of the file.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    noisy = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    data = to_bytes(noisy, fmt)
    return data[: max(64, int(len(data) * keep))]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def make_huge_image_header(width: int = 30_000, height: int = 30_000) -> bytes:
    """A well-formed PNG of a few dozen bytes whose header declares ``width`` x ``height`` RGB.

    What a decompression bomb looks like from the outside: Pillow reads the header, sees the size,
    and must refuse before allocating. (Its pixel data is empty, so a decoder that did not refuse
    would fail on truncation instead of allocating gigabytes in a test.)
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=1)
def _ihc_micrograph() -> "np.ndarray | None":
    try:
        from skimage import data
    except ImportError:
        return None
    # Shipped inside the scikit-image wheel (ihc.png): no download.
    return data.immunohistochemistry()


@functools.lru_cache(maxsize=1)
def _he_micrograph() -> "np.ndarray | None":
    """The IHC micrograph re-stained as H&E: its hematoxylin kept, DAB and background turned to eosin.

    Colour deconvolution (Ruifrok & Johnston, skimage ``rgb2hed``) separates the stains; the real
    tissue architecture (colonic glands, nuclei) stays, only the palette changes.
    """
    ihc = _ihc_micrograph()
    if ihc is None:
        return None
    import numpy as np
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(ihc)
    hema = hed[..., 0]
    dab = np.clip(hed[..., 2] - 0.03, 0, None)  # 0.03: the DAB optical density of unstained glass
    # Eosin stains all cytoplasm and stroma: a floor wherever there is tissue, more where DAB was.
    tissue = np.clip((hema + dab) / 0.05, 0, 1)
    eosin = 0.06 * tissue + 0.08 * dab
    rgb = hed2rgb(np.stack([hema * 1.1, eosin, np.zeros_like(hema)], axis=-1))
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _synthetic_tile(size: int, seed: int) -> "np.ndarray":
    # Fallback when scikit-image is absent: pink stroma with purple ellipsoid nuclei and noise.
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (236, 170, 200))
    draw = ImageDraw.Draw(img)
    for _ in range(size * size // 400):
        x, y = rng.integers(0, size, 2)
        rx, ry = rng.integers(3, 8, 2)
        shade = int(rng.integers(60, 120))
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=(shade, 40, shade + 80))
    img = img.filter(ImageFilter.GaussianBlur(1))
    noise = rng.normal(0, 8, (size, size, 3))
    return np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


def tissue_tile(size: int = 256, seed: int = 0, *, stain: str = "he") -> "Image.Image":
    """A square RGB tile of real-looking tissue.

    A crop of scikit-image's IHC micrograph of colonic glands (a real slide photograph), at an
    offset chosen by ``seed``; with ``stain="he"`` (default) re-stained as H&E, with ``"ihc"`` as
    photographed (DAB brown, hematoxylin blue). Without scikit-image, a synthetic texture.

    Args:
        size: side in pixels; above 512 (the micrograph's side) the crop is upscaled.
        seed: picks the crop.
        stain: ``"he"`` or ``"ihc"``.
    """
    import numpy as np
    from PIL import Image

    if stain not in ("he", "ihc"):
        raise ValueError(f"stain must be 'he' or 'ihc', got {stain!r}")
    source = _he_micrograph() if stain == "he" else _ihc_micrograph()
    if source is None:
        return Image.fromarray(_synthetic_tile(size, seed))
    side = min(size, source.shape[0], source.shape[1])
    rng = np.random.default_rng(seed)
    y, x = (int(rng.integers(0, n - side + 1)) for n in source.shape[:2])
    crop = Image.fromarray(np.ascontiguousarray(source[y : y + side, x : x + side]))
    return crop if side == size else crop.resize((size, size), Image.Resampling.BICUBIC)


class ImageFactory:
    """The ``image_factory`` fixture: the functions above, plus writing files under a folder.

    ``image_factory("CMYK", fmt="JPEG")`` returns bytes; ``image_factory.file("a.png")`` a path.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, mode: str = "RGB", size: tuple[int, int] = (64, 48), seed: int = 0, fmt: str | None = "PNG", **kwargs: Any) -> bytes:
        return make_image(mode, size, seed, fmt, **kwargs)

    def file(self, name: str, mode: str = "RGB", **kwargs: Any) -> Path:
        """Write ``make_image(mode, **kwargs)`` to ``root/name`` (format from ``fmt`` or the suffix)."""
        if "fmt" not in kwargs:
            suffix = Path(name).suffix.lower().lstrip(".")
            kwargs["fmt"] = {"jpg": "JPEG", "tif": "TIFF"}.get(suffix, suffix.upper() or "PNG")
        return self.write(name, make_image(mode, **kwargs))

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    pil = staticmethod(pil_image)
    truncated = staticmethod(make_truncated_image)
    huge_header = staticmethod(make_huge_image_header)
    tissue = staticmethod(tissue_tile)
    to_bytes = staticmethod(to_bytes)


__all__ = [
    "ImageFactory",
    "MODE_FORMATS",
    "make_huge_image_header",
    "make_image",
    "make_truncated_image",
    "pil_image",
    "tissue_tile",
    "to_bytes",
]
