"""pathasst.images: decoding, checks, mode conversion, pass-through, perceptual hash."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from pathasst.images import (
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    NormalizedImage,
    encode_png_fast,
    image_phash,
    load_rgb,
    normalize_image,
)
from pathasst.testing.images import (
    make_huge_image_header,
    make_image,
    make_truncated_image,
    pil_image,
    tissue_tile,
    to_bytes,
)


def _open(result: NormalizedImage) -> Image.Image:
    img = Image.open(io.BytesIO(result.bytes_))
    img.load()
    return img


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


# --- modes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fmt", "out_mode", "out_format", "converted"),
    [
        ("RGB", "PNG", "RGB", "PNG", False),
        ("RGB", "JPEG", "RGB", "JPEG", False),
        ("L", "PNG", "L", "PNG", False),
        ("L", "JPEG", "L", "JPEG", False),
        ("RGB", "TIFF", "RGB", "PNG", True),
        ("RGB", "WEBP", "RGB", "PNG", True),
        ("RGB", "BMP", "RGB", "PNG", True),
        ("P", "PNG", "RGB", "PNG", True),
        ("P", "GIF", "RGB", "PNG", True),
        ("1", "PNG", "L", "PNG", True),
        ("RGBA", "PNG", "RGB", "PNG", True),
        ("RGBA", "WEBP", "RGB", "PNG", True),
        ("LA", "PNG", "L", "PNG", True),
        ("CMYK", "JPEG", "RGB", "JPEG", True),
        ("CMYK", "TIFF", "RGB", "PNG", True),
        ("I;16", "PNG", "L", "PNG", True),
        ("I;16", "TIFF", "L", "PNG", True),
        ("I", "TIFF", "L", "PNG", True),
        ("F", "TIFF", "L", "PNG", True),
    ],
)
def test_every_mode_becomes_rgb_or_l(mode, fmt, out_mode, out_format, converted):
    data = make_image(mode, size=(40, 30), fmt=fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # the fixture really is in that mode

    result = normalize_image(data)

    assert (result.mode, result.format, result.converted) == (out_mode, out_format, converted)
    assert result.source_mode == mode
    assert result.size == (40, 30)
    decoded = _open(result)
    assert decoded.mode == out_mode and decoded.format == out_format and decoded.size == (40, 30)


def test_rgba_is_composited_on_white():
    data = make_image("RGBA", size=(40, 30), seed=3)
    original = pil_image("RGBA", size=(40, 30), seed=3)

    pixels = np.asarray(_open(normalize_image(data)))

    alpha = np.asarray(original.getchannel("A"))
    assert (alpha[:, -1] == 0).all() and (alpha[:, 0] == 255).all()  # the fixture covers both ends
    assert (pixels[:, -1] == 255).all()  # fully transparent -> white, not the stored colour
    np.testing.assert_array_equal(pixels[:, 0], np.asarray(original.convert("RGB"))[:, 0])  # opaque kept
    partial = alpha[0] == 128
    if partial.any():  # half transparent: half way to white
        stored = np.asarray(original.convert("RGB"))[0, partial].astype(int)
        np.testing.assert_allclose(pixels[0, partial], (stored + 255) / 2, atol=2)


def test_la_is_composited_on_white_and_stays_grey():
    result = normalize_image(make_image("LA", size=(40, 30)))
    pixels = np.asarray(_open(result))
    assert result.mode == "L"
    assert (pixels[:, -1] == 255).all()


def test_palette_transparency_is_composited_on_white():
    data = make_image("P", size=(40, 30), transparent=True)
    source = Image.open(io.BytesIO(data))
    assert source.info.get("transparency") == 0
    transparent_pixels = np.asarray(source) == 0
    assert transparent_pixels.any()

    result = normalize_image(data)

    assert result.mode == "RGB"
    assert (np.asarray(_open(result))[transparent_pixels] == 255).all()


def test_palette_without_transparency_keeps_its_colours():
    data = make_image("P", size=(40, 30))
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(_open(normalize_image(data))), expected)


def test_cmyk_becomes_rgb_of_the_same_picture():
    data = make_image("CMYK", size=(40, 30), fmt="TIFF", seed=4)
    rgb = np.asarray(pil_image("RGB", size=(40, 30), seed=4)).astype(int)
    out = np.asarray(_open(normalize_image(data))).astype(int)
    assert np.abs(out - rgb).mean() < 3  # naive CMYK round trip is near-lossless for RGB-made CMYK


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF")])
def test_high_bit_depth_is_stretched_over_its_own_range(mode, fmt):
    source = pil_image(mode, size=(40, 30), seed=1)
    values = np.asarray(source).astype(np.float64)

    out = np.asarray(_open(normalize_image(make_image(mode, size=(40, 30), seed=1, fmt=fmt)))).astype(np.float64)

    # Pillow's own conversion would clip 1000..5080 to a white picture; ours spans 0..255 ...
    assert out.min() == 0 and out.max() == 255
    # ... and is the linear map of the source values.
    expected = (values - values.min()) / (values.max() - values.min()) * 255
    np.testing.assert_allclose(out, expected, atol=0.51)


def test_float_image_with_nan_and_a_constant_image_do_not_fail():
    arr = np.linspace(-1, 1, 40 * 30, dtype=np.float32).reshape(30, 40)
    arr[0, :5] = np.nan
    arr[1, :5] = np.inf
    out = np.asarray(_open(normalize_image(to_bytes(Image.fromarray(arr), "TIFF"))))
    assert out.max() == 255 and (out[0, :5] == 0).all()

    flat = Image.fromarray(np.full((30, 40), 3000, dtype=np.uint16))
    result = normalize_image(to_bytes(flat, "PNG"))
    assert result.mode == "L" and np.asarray(_open(result)).max() == 0


def test_animated_png_keeps_its_first_frame():
    frames = [pil_image("RGB", seed=s) for s in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2

    result = normalize_image(buf.getvalue())

    assert result.converted
    assert getattr(_open(result), "n_frames", 1) == 1
    np.testing.assert_array_equal(np.asarray(_open(result)), np.asarray(frames[0]))


# --- pass-through -------------------------------------------------------------------------------


def test_untouched_jpeg_bytes_are_returned_identical(tmp_path):
    data = to_bytes(tissue_tile(128, seed=2), "JPEG", quality=80)
    path = tmp_path / "tile.jpg"
    path.write_bytes(data)

    for src in (data, bytearray(data), path, str(path)):
        result = normalize_image(src)
        assert result.bytes_ == data
        assert (result.format, result.mode, result.converted) == ("JPEG", "RGB", False)
        assert result.size == (128, 128)


def test_untouched_png_bytes_are_returned_identical():
    data = make_image("L", size=(50, 20))
    result = normalize_image(data)
    assert result.bytes_ == data and not result.converted


def test_jpeg_needing_change_is_reencoded_as_jpeg():
    result = normalize_image(make_image("RGB", size=(300, 200), fmt="JPEG"), max_side=100)
    assert result.format == "JPEG" and result.converted and result.size == (100, 67)
    assert _open(result).format == "JPEG"


def test_pil_input_is_encoded_and_left_unchanged():
    img = pil_image("RGBA", size=(40, 30))
    before = img.tobytes()

    result = normalize_image(img)

    assert result.converted and result.mode == "RGB" and result.format == "PNG"
    assert img.mode == "RGBA" and img.tobytes() == before

    rgb = pil_image("RGB", size=(40, 30))
    result = normalize_image(rgb)
    assert result.converted and np.array_equal(np.asarray(_open(result)), np.asarray(rgb))


# --- orientation and size -----------------------------------------------------------------------


def test_exif_orientation_is_applied():
    stored = make_image("RGB", size=(64, 48), fmt="PNG", orientation=6)  # PNG: exact pixels
    result = normalize_image(stored)

    assert result.converted and result.size == (48, 64)
    expected = pil_image("RGB", size=(64, 48)).transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(np.asarray(_open(result)), np.asarray(expected))
    assert _open(result).getexif().get(0x0112) in (None, 1)  # not rotated twice by a viewer


def test_exif_orientation_on_jpeg_reencodes_as_jpeg():
    result = normalize_image(make_image("RGB", size=(64, 48), fmt="JPEG", orientation=8))
    assert (result.format, result.size, result.converted) == ("JPEG", (48, 64), True)


def test_orientation_one_is_passed_through():
    data = make_image("RGB", size=(64, 48), fmt="JPEG", orientation=1)
    assert normalize_image(data).bytes_ == data


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_max_side_downscales_keeping_aspect(fmt):
    data = make_image("RGB", size=(400, 300), fmt=fmt)
    assert normalize_image(data, max_side=100).size == (100, 75)
    assert normalize_image(data, max_side=1000).size == (400, 300)  # never upscaled
    assert normalize_image(data, max_side=1000).bytes_ == data


def test_max_side_with_rotation_bounds_the_displayed_long_side():
    data = make_image("RGB", size=(400, 300), fmt="JPEG", orientation=6)
    assert normalize_image(data, max_side=100).size == (75, 100)


def test_max_side_must_be_positive():
    with pytest.raises(ValueError):
        normalize_image(make_image(), max_side=0)


# --- rejections ---------------------------------------------------------------------------------


def test_too_many_pixels_is_rejected_with_a_reason():
    with pytest.raises(ImageRejected) as err:
        normalize_image(make_image("RGB", size=(64, 48)), max_pixels=1000)
    assert err.value.reason == "image too large: 64x48 pixels > limit 1000"
    assert err.value.kind == "image too large"
    assert str(err.value) == err.value.reason


def test_pixel_limit_is_checked_before_decoding():
    # The header declares 9000x9000 but holds no pixel data: decoding would fail as truncated.
    # Seeing "too large" proves the limit is applied to the header, before any decoding.
    with pytest.raises(ImageRejected) as err:
        normalize_image(make_huge_image_header(9000, 9000), max_pixels=1_000_000)
    assert err.value.reason == "image too large: 9000x9000 pixels > limit 1000000"


def test_decompression_bomb_is_rejected():
    bomb = make_huge_image_header(30_000, 30_000)
    assert len(bomb) < 100
    for limit in (DEFAULT_MAX_PIXELS, None):  # Pillow's own check holds even without ours
        with pytest.raises(ImageRejected) as err:
            normalize_image(bomb, max_pixels=limit)
        assert err.value.kind == "image too large"
        assert "900000000 pixels" in err.value.reason
    assert DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF"])
def test_truncated_files_are_rejected(fmt):
    with pytest.raises(ImageRejected) as err:
        normalize_image(make_truncated_image(fmt))
    assert err.value.kind == "truncated image", err.value.reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on globally


def test_damaged_webp_is_rejected_as_corrupt_or_truncated():
    with pytest.raises(ImageRejected) as err:
        normalize_image(make_truncated_image("WEBP"))
    assert err.value.kind in ("corrupt image", "truncated image")


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj",
        b"<html><body>not found</body></html>",
        b"",
        bytes(range(256)) * 4,
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # EPS would run Ghostscript: refused
    ],
)
def test_non_images_are_rejected(data):
    with pytest.raises(ImageRejected) as err:
        normalize_image(data)
    assert err.value.kind == "not an image"
    assert err.value.reason.startswith("not an image: ")


def test_missing_path_and_wrong_type_are_errors_not_rejections(tmp_path):
    with pytest.raises(FileNotFoundError):
        normalize_image(tmp_path / "missing.png")
    with pytest.raises(TypeError):
        normalize_image(12345)  # type: ignore[arg-type]


# --- perceptual hash ----------------------------------------------------------------------------


def test_phash_is_stable_across_input_forms(tmp_path):
    data = make_image("RGB", size=(96, 96), seed=7)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    h = image_phash(data)

    assert len(h) == 16 and int(h, 16) >= 0
    assert image_phash(data) == h
    assert image_phash(path) == h
    assert image_phash(Image.open(io.BytesIO(data))) == h
    assert image_phash(normalize_image(data)) == h
    # A JPEG re-encode of the same picture stays within a few bits.
    assert _hamming(image_phash(make_image("RGB", size=(96, 96), seed=7, fmt="JPEG")), h) <= 4


def test_phash_of_a_pil_image_applies_its_orientation_and_leaves_it_alone():
    stored = make_image("RGB", size=(64, 48), fmt="PNG", orientation=6)
    img = Image.open(io.BytesIO(stored))
    img.load()
    before = (img.mode, img.size, img.tobytes())
    upright = pil_image("RGB", size=(64, 48)).transpose(Image.Transpose.ROTATE_270)
    assert image_phash(img) == image_phash(upright) == image_phash(stored)
    assert (img.mode, img.size, img.tobytes()) == before


def test_phash_differs_for_different_images():
    hashes = {image_phash(make_image("RGB", size=(96, 96), seed=s)) for s in range(6)}
    assert len(hashes) == 6
    a, b = image_phash(tissue_tile(128, seed=0)), image_phash(tissue_tile(128, seed=1))
    assert _hamming(a, b) > 8


def test_phash_sees_transparency_as_white():
    data = make_image("RGBA", size=(64, 64))
    assert image_phash(data) == image_phash(normalize_image(data))
    assert image_phash(data, hash_size=16) != image_phash(data) and len(image_phash(data, hash_size=16)) == 64


def test_load_rgb_gives_pixels():
    img = load_rgb(make_image("I;16", size=(20, 10)))
    assert img.mode == "RGB" and img.size == (20, 10)


def test_phash_from_normalize_matches_image_phash_of_the_result():
    from pathasst.images import image_phash, normalize_image
    from pathasst.testing.images import make_image

    for mode, fmt in [("RGB", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("I;16", "PNG")]:
        out = normalize_image(make_image(mode, size=(96, 80), fmt=fmt), with_phash=True)
        again = image_phash(out.bytes_)
        if out.format == "PNG":  # lossless: the same pixels, the same hash
            assert out.phash == again, mode
        else:  # re-encoded JPEG: a bit or two of 64 may move
            assert bin(int(out.phash, 16) ^ int(again, 16)).count("1") <= 4, mode
    assert normalize_image(make_image("RGB")).phash is None


# --- encode_png_fast: the PDF extractor's writer for rendered charts --------------------------


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (64, 1), (1, 40), (301, 173)])
def test_fast_png_decodes_to_the_same_pixels(size):
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 2:] = pixels[: size[1] - size[1] // 2]  # repeated rows: the Up filter's zeros
    data = encode_png_fast(pixels.tobytes(), *size)
    img = Image.open(io.BytesIO(data))
    img.verify()  # chunk CRCs and structure
    img = Image.open(io.BytesIO(data))
    assert (img.format, img.mode, img.size) == ("PNG", "RGB", size)
    assert np.array_equal(np.asarray(img), pixels)


def test_fast_png_honours_the_row_stride_and_passes_normalize_unchanged():
    rows = np.arange(5 * 16, dtype=np.uint8).reshape(5, 16)  # 16-byte rows holding 4 pixels + padding
    data = encode_png_fast(memoryview(rows.tobytes()), 4, 5, stride=16)
    got = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(got.reshape(5, 12), rows[:, :12])
    out = normalize_image(data)
    assert (out.converted, out.format, out.bytes_) == (False, "PNG", data)


def test_fast_png_refuses_a_buffer_too_small_or_an_empty_image():
    with pytest.raises(ValueError, match="do not hold 4x2 RGB pixels"):
        encode_png_fast(b"\0" * 23, 4, 2)
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_png_fast(b"", 0, 3)
