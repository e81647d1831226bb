"""The fixture factories in pathasst.testing produce what they claim."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from pathasst.testing import images as image_mod
from pathasst.testing.http_server import (
    LocalHTTPServer,
    Scripted,
    dropped,
    json_response,
    server_error,
    slow,
    stalled,
    too_many_requests,
)
from pathasst.testing.images import MODE_FORMATS, make_huge_image_header, make_image, make_truncated_image, tissue_tile
from pathasst.testing.jats import JatsFigure, make_jats_article, make_oa_package
from pathasst.testing.pdfs import (
    Figure,
    Page,
    Text,
    caption_above_page,
    caption_below_page,
    caption_label,
    compound_figure_page,
    facing_caption_pages,
    make_pdf,
    running_header_page,
    sample_book_pages,
    two_column_page,
    vector_figure_page,
)

pymupdf = pytest.importorskip("pymupdf")

XLINK = "{http://www.w3.org/1999/xlink}"


def _inside(inner, outer, tol=0.6) -> bool:
    return (
        inner[0] >= outer[0] - tol
        and inner[1] >= outer[1] - tol
        and inner[2] <= outer[2] + tol
        and inner[3] <= outer[3] + tol
    )


def _close(a, b, tol=0.6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# --- images -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "fmt"), [(m, f) for m, fmts in MODE_FORMATS.items() for f in fmts])
def test_make_image_opens_in_the_declared_mode(mode, fmt):
    img = Image.open(io.BytesIO(make_image(mode, size=(33, 21), fmt=fmt)))
    img.load()
    assert (img.mode, img.format, img.size) == (mode, fmt, (33, 21))


def test_make_image_defaults_and_determinism():
    assert Image.open(io.BytesIO(make_image())).format == "PNG"
    assert Image.open(io.BytesIO(make_image("CMYK"))).format == "JPEG"  # CMYK cannot be PNG
    assert Image.open(io.BytesIO(make_image("F"))).format == "TIFF"
    assert make_image(seed=1) == make_image(seed=1)
    assert make_image(seed=1) != make_image(seed=2)
    with pytest.raises(ValueError, match="unsupported mode"):
        make_image("YCbCr")
    with pytest.raises(ValueError, match="cannot be written"):
        make_image("RGBA", fmt="JPEG")


def test_make_image_writes_exif_orientation():
    img = Image.open(io.BytesIO(make_image(fmt="JPEG", orientation=6)))
    assert img.getexif()[0x0112] == 6


def test_make_image_i16_uses_a_narrow_12_bit_range():
    arr = np.asarray(Image.open(io.BytesIO(make_image("I;16"))))
    assert arr.dtype == np.uint16 and 1000 <= arr.min() and arr.max() <= 5080


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "GIF"])
def test_truncated_image_opens_but_does_not_decode(fmt):
    img = Image.open(io.BytesIO(make_truncated_image(fmt)))
    assert img.format == fmt
    with pytest.raises(OSError):
        img.load()


def test_huge_header_is_small_and_declares_huge_dimensions():
    data = make_huge_image_header(30_000, 20_000)
    assert len(data) < 100
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    # Below Pillow's limit the header opens and reports the declared size without decoding.
    assert Image.open(io.BytesIO(make_huge_image_header(5000, 4000))).size == (5000, 4000)


def test_tissue_tile_is_a_crop_of_the_real_micrograph():
    skimage_data = pytest.importorskip("skimage.data")
    ihc = skimage_data.immunohistochemistry()

    tile = np.asarray(tissue_tile(64, seed=3, stain="ihc"))

    hits = [
        (y, x)
        for y in range(0, ihc.shape[0] - 63)
        for x in range(0, ihc.shape[1] - 63)
        if ihc[y, x, 0] == tile[0, 0, 0] and np.array_equal(ihc[y : y + 64, x : x + 64], tile)
    ]
    assert hits


def test_tissue_tile_looks_like_h_and_e():
    tile = tissue_tile(256, seed=0)
    assert tile.mode == "RGB" and tile.size == (256, 256)
    r, g, b = np.asarray(tile).reshape(-1, 3).mean(axis=0)
    assert r > g and b > g  # pink and purple: eosin and hematoxylin both absorb green
    assert np.asarray(tile).std() > 20  # textured, not a flat colour
    assert not np.array_equal(np.asarray(tissue_tile(128, seed=0)), np.asarray(tissue_tile(128, seed=1)))
    assert tissue_tile(700).size == (700, 700)


def test_tissue_tile_falls_back_without_scikit_image(monkeypatch):
    monkeypatch.setattr(image_mod, "_he_micrograph", lambda: None)
    tile = tissue_tile(96, seed=1)
    assert tile.size == (96, 96) and tile.mode == "RGB"
    r, g, b = np.asarray(tile).reshape(-1, 3).mean(axis=0)
    assert r > g and b > g


def test_image_factory_fixture(image_factory):
    assert Image.open(io.BytesIO(image_factory("LA"))).mode == "LA"
    path = image_factory.file("sub/x.jpg", "CMYK")
    assert path.is_file() and Image.open(path).mode == "CMYK" and Image.open(path).format == "JPEG"
    assert image_factory.tissue(32).size == (32, 32)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(image_factory.truncated())).load()


# --- PDFs ---------------------------------------------------------------------------------------


def _page_images(page):
    return [tuple(i["bbox"]) for i in page.get_image_info(xrefs=True)]


def _text_in(page, bbox) -> str:
    return " ".join(page.get_text("text", clip=pymupdf.Rect(bbox)).split())


def test_caption_below(tmp_path):
    truth = make_pdf(tmp_path / "a.pdf", [caption_below_page()])
    fig = truth.figures[0]
    with pymupdf.open(truth.path) as doc:
        page = doc[0]
        assert [b for b in _page_images(page) if _close(b, fig.bbox)]
        assert _text_in(page, fig.caption_bbox) == fig.caption
        assert page.search_for("Figure 2.5")[0].y0 >= fig.bbox[3]
    assert fig.label == "Figure 2.5" and fig.caption.startswith("Figure 2.5: ")
    assert fig.caption_bbox[1] > fig.bbox[3] and fig.caption_page_index == fig.page_index == 0
    assert fig.page_number == 1 and fig.kind == "raster"


def test_caption_above(tmp_path):
    truth = make_pdf(tmp_path / "a.pdf", [caption_above_page()])
    fig = truth.figures[0]
    with pymupdf.open(truth.path) as doc:
        assert _text_in(doc[0], fig.caption_bbox) == fig.caption
        assert [b for b in _page_images(doc[0]) if _close(b, fig.bbox)]
    assert fig.label == "FIGURE 12-4"
    assert fig.caption_bbox[3] < fig.bbox[1]


def test_vector_figure_is_drawn_not_placed(tmp_path):
    truth = make_pdf(tmp_path / "v.pdf", [vector_figure_page()])
    fig = truth.figures[0]
    with pymupdf.open(truth.path) as doc:
        page = doc[0]
        assert _page_images(page) == []
        drawings = page.get_drawings()
        assert len(drawings) >= 10
        assert all(_inside(tuple(d["rect"]), fig.bbox) for d in drawings)
        union = pymupdf.Rect(drawings[0]["rect"])
        for d in drawings[1:]:
            union |= d["rect"]
        assert _inside(tuple(union), fig.bbox)
        ticks = [w for w in page.get_text("words") if _inside(w[:4], fig.bbox)]
        assert {"1", "5", "50"} <= {w[4] for w in ticks}
        assert _text_in(page, fig.caption_bbox) == fig.caption
    assert fig.kind == "vector" and fig.caption_bbox[1] > fig.bbox[3]


def test_two_column_page(tmp_path):
    truth = make_pdf(tmp_path / "c.pdf", [two_column_page()])
    fig = truth.figures[0]
    page_width = truth.page_sizes[0][0]
    body = [t for t in truth.texts if t.role == "body"]
    left = [t for t in body if t.bbox[2] < page_width / 2]
    right = [t for t in body if t.bbox[0] > page_width / 2]
    assert len(left) == 2 and len(right) == 1
    assert fig.bbox[2] < page_width / 2 and fig.caption_bbox[2] < page_width / 2
    with pymupdf.open(truth.path) as doc:
        blocks = doc[0].get_text("blocks")
        assert any(b[0] > page_width / 2 for b in blocks) and any(b[2] < page_width / 2 for b in blocks)
        assert _text_in(doc[0], fig.caption_bbox) == fig.caption
    assert fig.label == "Fig. 4"


def test_running_header_footer_and_logo(tmp_path):
    truth = make_pdf(tmp_path / "h.pdf", [running_header_page()])
    header = next(t for t in truth.texts if t.role == "header")
    footer = next(t for t in truth.texts if t.role == "footer")
    logo = truth.decoys[0]
    fig = truth.figures[0]
    with pymupdf.open(truth.path) as doc:
        page = doc[0]
        assert _text_in(page, header.bbox) == " ".join(header.text.split())
        assert _text_in(page, footer.bbox) == "112"
        boxes = _page_images(page)
        assert len(boxes) == 2
        assert [b for b in boxes if _close(b, logo.bbox)] and [b for b in boxes if _close(b, fig.bbox)]
    assert logo.kind == "logo" and (logo.bbox[2] - logo.bbox[0]) < 30
    assert header.bbox[3] < fig.bbox[1] and footer.bbox[1] > fig.caption_bbox[3]


def test_compound_figure(tmp_path):
    truth = make_pdf(tmp_path / "m.pdf", [compound_figure_page(grid=(2, 3))])
    fig = truth.figures[0]
    assert fig.kind == "compound" and len(fig.panels) == 6
    assert [p.label for p in fig.panels] == list("ABCDEF")
    with pymupdf.open(truth.path) as doc:
        page = doc[0]
        boxes = _page_images(page)
        assert len(boxes) == 6
        for panel in fig.panels:
            assert [b for b in boxes if _close(b, panel.bbox)]
            assert _inside(panel.bbox, fig.bbox) and _inside(panel.label_bbox, panel.bbox)
            assert _text_in(page, panel.label_bbox) == panel.label
    xs = sorted({p.bbox[0] for p in fig.panels})
    assert len(xs) == 3  # three columns with gaps between them
    assert _close((min(p.bbox[0] for p in fig.panels), min(p.bbox[1] for p in fig.panels)), fig.bbox[:2])


def test_caption_on_the_facing_page(tmp_path):
    truth = make_pdf(tmp_path / "f.pdf", facing_caption_pages())
    fig = truth.figures[0]
    assert (fig.page_index, fig.caption_page_index) == (0, 1)
    with pymupdf.open(truth.path) as doc:
        assert doc[0].search_for("Figure 7.3") == []
        assert doc[1].search_for("Figure 7.3")
        assert _text_in(doc[1], fig.caption_bbox) == fig.caption
        assert [b for b in _page_images(doc[0]) if _close(b, fig.bbox)]
        assert _page_images(doc[1]) == []


def test_sample_book_holds_every_layout(tmp_path, pdf_factory):
    truth = pdf_factory.sample_book()
    assert truth.path.parent.parent == tmp_path and truth.page_count == 7
    assert {f.kind for f in truth.figures} == {"raster", "vector", "compound"}
    assert len(truth.figures) == 6 and len(truth.decoys) == 7
    footers = [t.text for t in truth.texts if t.role == "footer"]
    assert footers == [str(37 + i) for i in range(7)]
    with pymupdf.open(truth.path) as doc:
        assert doc.page_count == 7
        for i, page in enumerate(doc):
            assert page.search_for("Inflammation and Repair")
            for fig in truth.figures_on(i):
                placed = [p.bbox for p in fig.panels] if fig.kind == "compound" else [fig.bbox] * (fig.kind == "raster")
                for box in placed:
                    assert [b for b in _page_images(page) if _close(b, box)]


def test_make_pdf_accepts_dicts_and_reports_problems(tmp_path):
    spec = {"figures": [{"rect": (50, 50, 250, 200), "caption": "Figure 1. A dict figure.", "figure_id": "one"}],
            "texts": [{"rect": (50, 260, 500, 300), "text": "Some text."}], "size": (612, 792)}
    truth = make_pdf(tmp_path / "d.pdf", [spec])
    assert truth.figure("one").bbox == (50, 50, 250, 200) and truth.page_sizes == [(612, 792)]
    assert truth.figure("one").label == "Figure 1"

    with pytest.raises(ValueError, match="does not fit"):
        make_pdf(tmp_path / "e.pdf", [Page(texts=[Text((50, 50, 60, 55), "far too long for this box")])])
    with pytest.raises(ValueError, match="next page"):
        make_pdf(tmp_path / "e.pdf", [Page(figures=[Figure((50, 50, 200, 200), "Figure 9: x", "facing")])])
    with pytest.raises(ValueError, match="unknown kind"):
        make_pdf(tmp_path / "e.pdf", [Page(figures=[Figure((50, 50, 200, 200), kind="chart")])])


def test_caption_label():
    assert caption_label("Figure 2.5: Chronic gastritis") == "Figure 2.5"
    assert caption_label("FIGURE 12-4 Acute appendicitis") == "FIGURE 12-4"
    assert caption_label("Fig. 3. Something") == "Fig. 3"
    assert caption_label("Table 1. Not a figure") is None and caption_label(None) is None


def test_sample_book_pages_are_independent_specs():
    a, b = sample_book_pages(), sample_book_pages(header="X")
    assert a[0].header != b[0].header and len(a) == 7


# --- JATS ---------------------------------------------------------------------------------------


def test_jats_article_parses_and_has_the_declared_figures():
    figures = [
        JatsFigure("F1", "Figure 1", "A <italic>title</italic>.", ["First <xref ref-type=\"bibr\" rid=\"B1\">1</xref>."], "gr1"),
        {"fig_id": "F2", "label": "Figure 2", "title": None, "paragraphs": ["Only text."], "graphic": "pone.0001.g002"},
    ]
    xml = make_jats_article("PMC7654321", figures, "CC BY 4.0", pmid="111", doi="10.1/x")
    assert xml.startswith('<?xml version="1.0"') and "<!DOCTYPE article" in xml

    root = ET.fromstring(xml)
    ids = {e.get("pub-id-type"): e.text for e in root.iter("article-id")}
    assert ids == {"pmcid": "PMC7654321", "pmid": "111", "doi": "10.1/x"}
    assert "Helicobacter" in "".join(root.find(".//article-title").itertext())
    figs = root.findall(".//fig")
    assert [f.get("id") for f in figs] == ["F1", "F2"]
    assert [f.findtext("label") for f in figs] == ["Figure 1", "Figure 2"]
    assert figs[0].find("caption/title/italic").text == "title"
    assert figs[0].find("caption/p/xref").get("rid") == "B1"
    assert figs[1].find("caption/title") is None
    assert [f.find("graphic").get(f"{XLINK}href") for f in figs] == ["gr1", "pone.0001.g002"]
    license = root.find(".//permissions/license")
    assert license.get(f"{XLINK}href") == "https://creativecommons.org/licenses/by/4.0/"
    assert license.findtext("{http://www.niso.org/schemas/ali/1.0/}license_ref") == license.get(f"{XLINK}href")
    # Every cross-reference resolves.
    targets = {e.get("id") for e in root.iter() if e.get("id")}
    assert all(x.get("rid") in targets for x in root.iter("xref"))


def test_jats_default_figures_and_caption_text():
    root = ET.fromstring(make_jats_article())
    figs = root.findall(".//body//fig")
    assert len(figs) == 2
    caption = " ".join("".join(figs[0].find("caption").itertext()).split())
    assert "Helicobacter pylori" in caption and "\u00d7400" in caption
    assert JatsFigure(title="A <italic>b</italic>", paragraphs=["c <sup>2</sup>"]).caption_text == "A b c 2"


@pytest.mark.parametrize(
    ("license", "href", "text"),
    [
        ("CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/", "CC BY-NC 4.0"),
        ("https://example.org/license", "https://example.org/license", None),
        ("Free to read", None, "Free to read"),
        (None, None, None),
    ],
)
def test_jats_license_shapes(license, href, text):
    root = ET.fromstring(make_jats_article(license=license))
    element = root.find(".//license")
    if license is None:
        assert root.find(".//permissions") is None
        return
    assert element.get(f"{XLINK}href") == href
    assert (text in "".join(element.itertext())) if text else element.find("license-p") is None


def test_jats_options():
    root = ET.fromstring(make_jats_article("PMC42", pmcid_type="pmc", pmid=None, doi=None, figures_in="floats-group", doctype=False))
    assert {e.get("pub-id-type"): e.text for e in root.iter("article-id")} == {"pmc": "42"}
    assert root.find("body//fig") is None and len(root.findall("floats-group/fig")) == 2
    assert ET.fromstring(make_jats_article(figures=[])).find(".//fig") is None
    with pytest.raises(ValueError, match="well-formed"):
        make_jats_article(figures=[JatsFigure(title="<italic>unclosed")])


def test_oa_package_holds_the_article_and_its_graphics(tmp_path):
    pkg = make_oa_package(tmp_path, "PMC555", thumbnails=True, pdf=True, extra_files={"supp1.csv": b"a,b\n"})
    assert pkg.path == tmp_path / "PMC555.tar.gz"
    with tarfile.open(pkg.path, "r:gz") as tar:
        names = tar.getnames()
        assert names == pkg.members
        assert pkg.nxml_member in names and pkg.nxml_member.endswith(".nxml")
        root = ET.fromstring(tar.extractfile(pkg.nxml_member).read())
        hrefs = [g.get(f"{XLINK}href") for g in root.iter("graphic")]
        assert hrefs == ["gr1", "gr2"]
        for fig in pkg.figures:
            member = pkg.member(fig.graphic_file)
            img = Image.open(io.BytesIO(tar.extractfile(member).read()))
            assert img.format == "JPEG" and img.size == (192, 192)
            thumb = Image.open(io.BytesIO(tar.extractfile(member.replace(".jpg", ".gif")).read()))
            assert thumb.format == "GIF" and max(thumb.size) <= 64
        assert tar.extractfile(pkg.member("supp1.csv")).read() == b"a,b\n"
        assert tar.extractfile(pkg.nxml_member.replace(".nxml", ".pdf")).read().startswith(b"%PDF")
    # Two writes give the same bytes: archives can be checksummed in tests.
    again = make_oa_package(tmp_path / "again", "PMC555", thumbnails=True, pdf=False, extra_files={"supp1.csv": b"a,b\n"})
    plain = make_oa_package(tmp_path / "plain", "PMC555", thumbnails=True, pdf=False, extra_files={"supp1.csv": b"a,b\n"})
    assert again.path.read_bytes() == plain.path.read_bytes()


def test_oa_package_uses_given_images(jats_factory, image_factory):
    png = image_factory("RGB", size=(30, 20), fmt="PNG")
    pkg = jats_factory.package("PMC9", [JatsFigure("F1", "Figure 1", "T", [], "fig1", image=png, image_ext="png")], license=None)
    with tarfile.open(pkg.path) as tar:
        assert tar.extractfile("PMC9/fig1.png").read() == png
    assert ET.fromstring(jats_factory("PMC9")).find(".//fig") is not None


# --- HTTP server --------------------------------------------------------------------------------


def _get(url, timeout=2.0, headers=None, method="GET", data=None):
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_http_server_serves_routes_and_logs_requests(http_server):
    http_server.routes["/data.bin"] = (200, {"Content-Type": "application/octet-stream"}, b"0123456789")
    http_server.routes["/echo"] = lambda req: json_response({"method": req.method, "body": req.body.decode(), "q": req.query})
    http_server.routes["/text"] = "hello"

    assert http_server.url.startswith("http://127.0.0.1:")
    assert _get(http_server.url_for("/data.bin"))[::2] == (200, b"0123456789")
    assert _get(http_server.url_for("text"))[2] == b"hello"
    status, _, body = _get(http_server.url_for("/echo?x=1"), method="POST", data=b"payload", headers={"X-Token": "t"})
    assert status == 200 and json.loads(body) == {"method": "POST", "body": "payload", "q": {"x": ["1"]}}
    assert _get(http_server.url_for("/missing"))[0] == 404
    status, headers, body = _get(http_server.url_for("/data.bin"), method="HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == "10"

    log = http_server.requests
    assert [(r.method, r.path) for r in log] == [
        ("GET", "/data.bin"), ("GET", "/text"), ("POST", "/echo?x=1"), ("GET", "/missing"), ("HEAD", "/data.bin"),
    ]
    assert log[2].body == b"payload" and log[2].header("x-token") == "t" and log[2].url_path == "/echo"
    assert len(http_server.requests_to("/data.bin")) == 2


def test_http_server_scripted_429_500_then_success(http_server):
    http_server.routes["/api"] = json_response({"ok": True})
    http_server.queue("/api", too_many_requests(retry_after=2), server_error(503))
    assert http_server.pending("/api") == 2

    first, second, third = (_get(http_server.url_for("/api")) for _ in range(3))

    assert first[0] == 429 and first[1]["Retry-After"] == "2"
    assert second[0] == 503
    assert third[0] == 200 and json.loads(third[2]) == {"ok": True}
    assert http_server.pending("/api") == 0 and len(http_server.requests) == 3


def test_http_server_slow_stalled_and_dropped(http_server):
    http_server.routes["/big"] = (200, {}, b"x" * 1000)
    http_server.queue("/big", slow(1.0), stalled((200, {}, b"y" * 1000), after_bytes=100, seconds=1.0), dropped())

    start = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        _get(http_server.url_for("/big"), timeout=0.2)
    with urllib.request.urlopen(http_server.url_for("/big"), timeout=0.2) as response:
        assert response.status == 200
        with pytest.raises((TimeoutError, socket.timeout)):
            response.read()
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        _get(http_server.url_for("/big"))
    assert time.monotonic() - start < 1.5
    assert _get(http_server.url_for("/big"))[2] == b"x" * 1000


def test_http_server_scripted_callable_and_ranges(http_server):
    http_server.routes["/file"] = (200, {}, b"abcdefghij")
    http_server.routes["/flaky"] = lambda req: Scripted(dropped().response, drop=len(http_server.requests_to("/flaky")) < 2)
    assert _get(http_server.url_for("/file"), headers={"Range": "bytes=3-"})[::2] == (206, b"defghij")
    status, headers, body = _get(http_server.url_for("/file"), headers={"Range": "bytes=-2"})
    assert (status, headers["Content-Range"], body) == (206, "bytes 8-9/10", b"ij")
    assert _get(http_server.url_for("/file"), headers={"Range": "bytes=20-"})[0] == 416
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        _get(http_server.url_for("/flaky"))
    assert _get(http_server.url_for("/flaky"))[0] == 200


def test_http_server_binds_loopback_only():
    for host in ("0.0.0.0", "192.168.1.10", "example.org", ""):
        with pytest.raises(ValueError, match="loopback"):
            LocalHTTPServer(host=host)
    with LocalHTTPServer({"/": b"ok"}) as server:
        assert server._httpd.server_address[0] == "127.0.0.1"
        assert _get(server.url_for("/"))[2] == b"ok"
        server.queue("/", slow(30))
        outcome: list = []

        def client():
            try:
                outcome.append(_get(server.url_for("/"), timeout=10))
            except Exception as e:  # the connection closes when the server stops
                outcome.append(e)

        waiting = threading.Thread(target=client, daemon=True)
        waiting.start()
        while len(server.requests) < 2:
            time.sleep(0.01)
        start = time.monotonic()
    # Stopping does not wait for a handler asleep in a scripted delay.
    assert time.monotonic() - start < 2
    waiting.join(timeout=2)
    assert outcome and not isinstance(outcome[0], tuple)
    with pytest.raises(RuntimeError):
        server.url
