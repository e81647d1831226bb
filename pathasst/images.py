"""Image normalisation shared by every extractor stage: one decoded, checked, display-ready image.

Whatever a source hands us (a JPEG out of a PDF, a 16-bit TIFF from a microscope, a palette GIF from
a web page, a CMYK figure from a publisher), :func:`normalize_image` returns PNG or JPEG bytes in RGB
or L, rotated as a viewer shows it, or raises :class:`ImageRejected` with a reason for the rejection
ledger. Files already in that shape are returned byte for byte: re-encoding a JPEG loses quality a
second time for nothing.

Pillow is imported at module level: it is a core dependency and this module is nothing without it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
import zlib
from contextlib import ExitStack
from typing import Any, Union

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow raises DecompressionBombError above twice MAX_IMAGE_PIXELS (and only warns between one and
# two times it); that hard limit is our default.
DEFAULT_MAX_PIXELS: int = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)

# The Pillow plugins we let identify a file. EPS and PDF are left out because Pillow hands them to
# Ghostscript, a subprocess with its own attack surface; formats without a magic number (TGA, ...)
# are left out because they would "recognise" arbitrary bytes as an image.
ALLOWED_FORMATS: tuple[str, ...] = (
    "PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP", "JPEG2000", "PPM", "AVIF",
)

OUTPUT_MODES = ("RGB", "L")
_PASSTHROUGH_FORMATS = ("JPEG", "PNG")
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG with extra frames (phone cameras)
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# What Pillow raises on damaged data besides OSError; zlib.error and struct.error escape from some
# plugins unwrapped.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_ORIENTATION_TAG = 0x0112

ImageSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", Image.Image]


class ImageRejected(Exception):
    """An input that cannot become a dataset image; ``reason`` goes to the rejection ledger.

    Attributes:
        reason: ``"<kind>: <detail>"``, e.g. ``"truncated image: image file is truncated"``. Kinds:
            ``not an image``, ``image too large``, ``truncated image``, ``corrupt image``,
            ``unsupported image``.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    @property
    def kind(self) -> str:
        """The part of :attr:`reason` before the first colon, for counting rejections by kind."""
        return self.reason.split(":", 1)[0]


@dataclasses.dataclass
class NormalizedImage:
    """An encoded image ready to embed in a dataset record.

    Attributes:
        bytes_: the encoded file.
        format: ``"PNG"`` or ``"JPEG"``.
        width: width in pixels, after EXIF rotation and downscaling.
        height: height in pixels, after EXIF rotation and downscaling.
        mode: the output mode, ``"RGB"`` or ``"L"``.
        source_mode: the Pillow mode of the input (``"CMYK"``, ``"I;16"``, ``"P"``, ...).
        converted: False when ``bytes_`` are the input bytes untouched, True when re-encoded.
        phash: the perceptual hash of the normalised pixels, when asked for (``with_phash``).
    """

    bytes_: bytes
    format: str
    width: int
    height: int
    mode: str
    source_mode: str
    converted: bool
    phash: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclasses.dataclass
class _Decoded:
    image: Image.Image  # display-ready: RGB or L, rotated, downscaled
    source_format: str | None
    source_mode: str
    data: bytes | None  # the input file when it can be passed through
    changed: bool  # pixels or container differ from the input file
    icc_profile: bytes | None


def _open_formats() -> list[str]:
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.ID]


def _describe_head(data: bytes) -> str:
    if not data:
        return "empty data"
    return f"unrecognised data starting {data[:16]!r}"


def _bomb_reason(error: Exception) -> str:
    # Pillow refuses inside Image.open, before we see the size; its message carries the count.
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(error))
    if found:
        return f"image too large: {found[1]} pixels > limit {found[2]} (decompression bomb check)"
    return f"image too large: {error}"


def _target_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int] | None:
    if max_side is None or max(size) <= max_side:
        return None
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _flatten_on_white(img: Image.Image) -> Image.Image:
    # Figures are printed on white paper, and a transparent background means "no ink": compositing
    # on white shows the figure as a reader saw it, where dropping alpha would show whatever colour
    # the transparent pixels happen to store (often black).
    grey = img.mode in ("LA", "La", "L")
    rgba = img.convert("LA" if grey else "RGBA")  # also un-premultiplies RGBa/La and applies tRNS
    base = rgba.getchannel(0) if grey else rgba.convert("RGB")
    out = Image.new("L" if grey else "RGB", rgba.size, 255 if grey else (255, 255, 255))
    out.paste(base, mask=rgba.getchannel("A"))
    return out


def _stretch_to_8bit(img: Image.Image) -> Image.Image:
    # 16-bit and float microscopy images rarely use their full range: a 12-bit camera fills 0..4095
    # of 0..65535, a float image may hold -0.2..1.7. Pillow's own conversion clips to 0..255 and
    # gives a white or black picture, so we stretch each image's own min..max to 0..255, as
    # microscopy viewers do on open. Absolute intensities are lost, which captioning does not need.
    import numpy as np

    arr = np.asarray(img).astype(np.float32)
    finite = np.isfinite(arr)
    out = np.zeros(arr.shape, dtype=np.uint8)
    if finite.any():
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        if hi > lo:
            scaled = (np.where(finite, arr, lo) - lo) * (255.0 / (hi - lo))
            out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _to_output_mode(img: Image.Image) -> Image.Image:
    mode = img.mode
    transparent = "transparency" in img.info and mode in ("P", "L", "RGB")
    if mode in OUTPUT_MODES and not transparent:
        return img
    if mode in _ALPHA_MODES or transparent:
        return _flatten_on_white(img)
    if mode in _HIGH_BIT_MODES:
        return _stretch_to_8bit(img)
    if mode == "1":
        return img.convert("L")
    # P without transparency, CMYK, YCbCr, LAB, HSV, RGBX. CMYK uses Pillow's naive formula, not
    # the embedded ICC profile: colours shift a little, shapes (what we learn from) do not.
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageRejected(f"unsupported image: cannot convert mode {mode} to RGB ({e})") from None


def _decode(src: Any, max_pixels: int | None, max_side: int | None) -> _Decoded:
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    with ExitStack() as stack:
        data: bytes | None = None
        owned = True  # we opened it, so we may decode it at a reduced size in place
        if isinstance(src, Image.Image):
            img, owned = src, False
        else:
            if isinstance(src, (bytes, bytearray, memoryview)):
                data = bytes(src)
                fp: Any = io.BytesIO(data)
            elif isinstance(src, (str, os.PathLike)):
                # Opened here, outside the error mapping below: a missing file is the caller's
                # problem, not a rejected image. Read lazily: the size check comes first.
                fp = stack.enter_context(open(src, "rb"))
            else:
                raise TypeError(f"expected image bytes, a path or a PIL image, got {type(src).__name__}")
            try:
                img = Image.open(fp, formats=_open_formats())
            except Image.DecompressionBombError as e:
                raise ImageRejected(_bomb_reason(e)) from None
            except UnidentifiedImageError:
                fp.seek(0)
                raise ImageRejected(f"not an image: {_describe_head(fp.read(16))}") from None
            except _DECODE_ERRORS as e:
                raise ImageRejected(f"corrupt image: {e}") from None

        # Before any pixel is decoded: Image.open read the header only.
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageRejected(f"image too large: {width}x{height} pixels > limit {max_pixels}")
        source_format, source_mode = img.format, img.mode
        icc = img.info.get("icc_profile")

        target = _target_size(img.size, max_side)
        if target and owned and source_format in _JPEG_FORMATS:
            # libjpeg can decode at 1/2, 1/4 or 1/8 scale, never below the requested size: a large
            # book scan then costs a fraction of a full decode before the exact resize below.
            img.draft(img.mode, target)

        try:
            img.load()
        except Image.DecompressionBombError as e:  # some formats check again per frame
            raise ImageRejected(_bomb_reason(e)) from None
        except _DECODE_ERRORS as e:
            kind = "truncated image" if "truncated" in str(e).lower() else "corrupt image"
            raise ImageRejected(f"{kind}: {e}") from None

        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
        rotated = orientation in range(2, 9)
        out = ImageOps.exif_transpose(img) if rotated else img
        out = _to_output_mode(out)
        if target:
            if rotated and orientation >= 5:  # orientations 5..8 swap width and height
                target = target[1], target[0]
            if out.size != target:
                out = out.resize(target, Image.Resampling.LANCZOS)
        changed = (
            out is not img  # rotated, converted or resized
            or bool(target)
            or source_format not in _PASSTHROUGH_FORMATS
            or getattr(img, "n_frames", 1) > 1  # animated PNG: we keep the first frame only
            or not owned
        )
        if not owned and out is img:
            out = img.copy()  # never hand back (or let a caller mutate) the caller's own object
        if owned and not changed and data is None:
            # A path: its bytes are read only now that we know they pass through untouched.
            fp.seek(0)
            data = fp.read()
        return _Decoded(out, source_format, source_mode, data if owned else None, changed, icc)


def _encode(img: Image.Image, fmt: str, icc_profile: bytes | None) -> bytes:
    buf = io.BytesIO()
    extra: dict[str, Any] = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "JPEG":
        # 4:4:4: figures hold thin lines and small text, which chroma subsampling smears.
        img.save(buf, format="JPEG", quality=95, subsampling=0, **extra)
    else:
        img.save(buf, format="PNG", **extra)
    return buf.getvalue()


def encode_png_fast(pixels: bytes | bytearray | memoryview, width: int, height: int, *, stride: int | None = None) -> bytes:
    """Lossless PNG of 8-bit RGB pixels, about 2.5x faster than Pillow's or mupdf's PNG writers.

    For the figures a PDF extractor renders (charts and diagrams: mostly white, a few colours) the
    cost of a PNG is not the compression but the per-row filter choice the libraries make: Pillow
    spends 9 ms of its 11 ms on a 1100x660 chart with compression off. Here every row takes the
    "Up" filter (the row minus the row above, one vectorised subtraction: repeated rows of a chart
    become zeros) and zlib compresses at level 1. Measured on 29 rendered charts: 4.1 ms and 36 KiB
    each against mupdf's 10.1 ms and 27 KiB and Pillow's 11.4 ms and 35 KiB at level 1. No library
    offers this trade (Pillow, mupdf and OpenCV filter adaptively), hence this small writer; the
    container is the PNG specification's IHDR, IDAT and IEND chunks, nothing more.

    Args:
        pixels: ``height`` rows of ``width`` RGB triplets (row ``r`` starts at ``r * stride``).
        width, height: the image size in pixels (both at least 1).
        stride: bytes per row in ``pixels``; ``3 * width`` when None.

    Returns:
        The PNG file's bytes (8-bit RGB, no alpha, no metadata).
    """
    import numpy as np

    if width < 1 or height < 1:
        raise ValueError(f"a PNG needs at least one pixel, got {width}x{height}")
    row = 3 * width
    stride = row if stride is None else stride
    if stride < row or len(pixels) < stride * (height - 1) + row:
        raise ValueError(f"{len(pixels)} bytes do not hold {width}x{height} RGB pixels at stride {stride}")
    src = np.lib.stride_tricks.as_strided(
        np.frombuffer(pixels, dtype=np.uint8), shape=(height, row), strides=(stride, 1), writeable=False)
    rows = np.empty((height, row + 1), dtype=np.uint8)
    rows[:, 0] = 2  # filter type 2, "Up"
    rows[0, 1:] = src[0]  # the row above the first is zeros
    np.subtract(src[1:], src[:-1], out=rows[1:, 1:])  # modulo 256, as the filter is defined

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.data, 1))
            + chunk(b"IEND", b""))


def _same_colour_model(source_mode: str, out_mode: str) -> bool:
    return (out_mode == "RGB" and source_mode in ("RGB", "RGBA", "RGBa", "RGBX")) or (
        out_mode == "L" and source_mode in ("L", "LA", "La")
    )


def normalize_image(
    src: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    with_phash: bool = False,
) -> NormalizedImage:
    """Decode, check and normalise one image into PNG/JPEG bytes in RGB or L.

    Steps: open (header only) and refuse images over ``max_pixels`` before decoding; decode fully,
    so truncated and corrupt files fail here rather than in a training job; apply the EXIF
    orientation; convert the mode (RGB and L kept; alpha and palette transparency composited on
    white; P to RGB; 1 to L; CMYK to RGB; 16-bit and float to L stretched over the image's own
    range); downscale so that the longer side is at most ``max_side``. An input that is already a
    JPEG or PNG in RGB or L and needs none of these changes is returned byte for byte; anything else
    is encoded as JPEG (quality 95) when the source was a JPEG, PNG otherwise.

    Args:
        src: encoded bytes, a path to a file, or a PIL image (always re-encoded; never modified).
        max_pixels: refuse images with more pixels than this (``None``: no limit of our own).
            Pillow's decompression-bomb limit, twice ``Image.MAX_IMAGE_PIXELS``, applies on top.
        max_side: if given, downscale (never upscale) so that the longer side fits.
        with_phash: also compute the perceptual hash from the pixels already decoded here
            (calling :func:`image_phash` on the bytes afterwards would decode them a second time).

    Returns:
        The :class:`NormalizedImage`.

    Raises:
        ImageRejected: not an image, too large, truncated, corrupt, or in an unsupported mode.
        FileNotFoundError: ``src`` is a path that does not exist.
        TypeError: ``src`` is none of the accepted types.
    """
    dec = _decode(src, max_pixels, max_side)
    img = dec.image
    phash = _phash(img) if with_phash else None
    if not dec.changed and dec.data is not None:
        return NormalizedImage(
            bytes_=dec.data,
            format=dec.source_format or "PNG",
            width=img.width,
            height=img.height,
            mode=img.mode,
            source_mode=dec.source_mode,
            converted=False,
            phash=phash,
        )
    fmt = "JPEG" if dec.source_format in _JPEG_FORMATS else "PNG"
    # Keep an embedded ICC profile only when it still describes the pixels (not after CMYK -> RGB).
    icc = dec.icc_profile if _same_colour_model(dec.source_mode, img.mode) else None
    return NormalizedImage(
        bytes_=_encode(img, fmt, icc),
        format=fmt,
        width=img.width,
        height=img.height,
        mode=img.mode,
        source_mode=dec.source_mode,
        converted=True,
        phash=phash,
    )


def image_phash(img_or_bytes: ImageSource | NormalizedImage, *, hash_size: int = 8) -> str:
    """Perceptual hash (DCT pHash via ``imagehash``) as a hex string: 16 characters by default.

    The image goes through the same orientation and mode handling as :func:`normalize_image`
    first, so a raw file and its normalised version hash alike (a transparent background hashes
    as the white it is shown as, not as the black it may store).

    Args:
        img_or_bytes: encoded bytes, a path, a PIL image, or a :class:`NormalizedImage`.
        hash_size: side of the DCT block kept; the hash has ``hash_size**2`` bits.

    Raises:
        ImageRejected: as :func:`normalize_image`.
    """
    src = img_or_bytes.bytes_ if isinstance(img_or_bytes, NormalizedImage) else img_or_bytes
    if (isinstance(src, Image.Image) and src.mode in OUTPUT_MODES
            and src.getexif().get(_ORIENTATION_TAG, 1) == 1):
        # Already as a viewer shows it: hash it where it is. _decode would copy it first, so as
        # never to hand back the caller's object, a copy that costs as much as the hash.
        return _phash(src, hash_size)
    return _phash(_decode(src, DEFAULT_MAX_PIXELS, None).image, hash_size)


def _phash(img: Image.Image, hash_size: int = 8) -> str:
    import imagehash  # lazily: it imports scipy-sized dependencies on some versions

    # pHash keeps only the lowest frequencies of a (4 * hash_size)^2 thumbnail; imagehash resizes
    # the full image with Lanczos to get there, the costliest step of a figure record for a large
    # figure. A box-filter reduction to at most ~8x the thumbnail first gives the same
    # low-frequency content at a fraction of the cost.
    gray = img.convert("L")
    factor = max(gray.size) // (32 * hash_size)
    if factor >= 2:
        gray = gray.reduce(factor)
    return str(imagehash.phash(gray, hash_size=hash_size))


def load_rgb(src: ImageSource | NormalizedImage, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The display-ready PIL image (RGB) for code that needs pixels rather than bytes (models, crops).

    Raises:
        ImageRejected: as :func:`normalize_image`.
    """
    src = src.bytes_ if isinstance(src, NormalizedImage) else src
    img = _decode(src, max_pixels, None).image
    return img if img.mode == "RGB" else img.convert("RGB")


__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageRejected",
    "NormalizedImage",
    "encode_png_fast",
    "image_phash",
    "load_rgb",
    "normalize_image",
]
