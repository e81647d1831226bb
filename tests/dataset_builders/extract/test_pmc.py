"""`pathasst extract pmc`: OA packages, .nxml folders and PMCIDs in; PathCap folders and ledgers out.

Everything is made in code (pathasst.testing): JATS articles, OA packages, hostile archives and XML,
images in awkward modes, and a loopback HTTP server standing in for the PMC OA web service.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import datasets
import pytest
from PIL import Image

from pathasst.cli import main
from pathasst.dataset_builders.extract import pmc
from pathasst.dataset_builders.extract.common import Unit
from pathasst.testing.http_server import server_error, too_many_requests
from pathasst.testing.images import make_image, make_truncated_image, tissue_tile, to_bytes
from pathasst.testing.jats import JatsFigure, default_figures, make_jats_article, make_oa_package

# --- helpers ---------------------------------------------------------------------------------


def extract(*args) -> int:
    return main(["extract", "pmc", *(str(a) for a in args)])


def load_records(out: Path, cache: Path) -> list[dict]:
    ds = datasets.load_dataset(str(out), cache_dir=str(cache))
    rows = [row for split in ds for row in ds[split]]
    return sorted(rows, key=lambda r: r["id"])


def load_rejects(out: Path) -> list[dict]:
    path = out / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_tar(path: Path, files: dict[str, bytes], special: list[tarfile.TarInfo] = ()) -> Path:
    """A .tar.gz with regular files (name -> bytes) and hand-made members (links, devices)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in special:
            tar.addfile(info)
    return path


def tile_jpeg(seed: int = 0, size: int = 96) -> bytes:
    return to_bytes(tissue_tile(size, seed), "JPEG")


def write_article_dir(folder: Path, xml: str | bytes, images: dict[str, bytes], name: str = "article.nxml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(xml.encode("utf-8") if isinstance(xml, str) else xml)
    for file_name, data in images.items():
        (folder / file_name).parent.mkdir(parents=True, exist_ok=True)
        (folder / file_name).write_bytes(data)
    return folder / name


def files_under(root: Path, skip: tuple[str, ...] = ()) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not any(str(p.relative_to(root)).startswith(s) for s in skip)}


# --- end to end ------------------------------------------------------------------------------


def test_oa_packages_end_to_end_load_with_datasets(tmp_path):
    # the licence in every shape PMC writes it: text + link, link only, text only
    by = make_oa_package(tmp_path / "in", "PMC1000001", license="CC BY 4.0", thumbnails=True, pdf=True)
    nc = make_oa_package(tmp_path / "in", "PMC1000002", default_figures(3), license="CC BY-NC 4.0",
                         pmcid_type="pmc", figures_in="floats-group", pmid=None, doi="10.9/x.2")
    url_only = make_oa_package(tmp_path / "in", "PMC1000003", default_figures(1),
                               license="https://creativecommons.org/licenses/by-nc-nd/4.0/")
    text_only = make_oa_package(tmp_path / "in", "PMC1000004", default_figures(1),
                                license="Creative Commons Attribution-NonCommercial 3.0")
    out = tmp_path / "caps"

    assert extract(by.path, nc.path, url_only.path, text_only.path, "--out", out) == 0

    records = load_records(out, tmp_path / "hf")
    assert load_rejects(out) == []
    expected = {}
    for pkg, license, url, noncommercial in (
        (by, "CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/", False),
        (nc, "CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/", True),
        (url_only, "CC BY-NC-ND 4.0", "https://creativecommons.org/licenses/by-nc-nd/4.0/", True),
        (text_only, "CC BY-NC 3.0", "https://creativecommons.org/licenses/by-nc/3.0/", True),
    ):
        for fig in pkg.figures:
            expected[f"{pkg.pmcid}/{fig.fig_id}"] = (pkg, fig, license, url, noncommercial)
    assert [r["id"] for r in records] == sorted(expected)

    for record in records:
        pkg, fig, license, url, noncommercial = expected[record["id"]]
        assert record["source"] == "pubmed"
        assert record["source_id"] == pkg.pmcid
        assert record["figure_id"] == f"{pkg.pmcid}/{fig.fig_id}"
        assert record["figure_label"] == fig.label
        assert record["caption"] == fig.caption_text  # markup flattened, citation "1" kept as text
        assert record["caption_raw"].split() == fig.caption_text.split()
        assert record["license"] == license
        assert record["license_url"] == url
        assert record["noncommercial"] is noncommercial
        assert record["subfigure_label"] is None and record["bbox"] is None
        # the full-size JPEG, not the 64 px .gif thumbnail PMC ships beside it
        assert record["image"].size == (192, 192) == (record["width"], record["height"])
        assert len(record["phash"]) == 16
        meta = json.loads(record["meta"])
        assert meta["graphic"] == fig.graphic_file
        assert meta["journal"] == "Journal of Test Pathology" and meta["year"] == 2024
        if pkg is nc:
            assert "pmid" not in meta and meta["doi"] == "10.9/x.2"
        else:
            assert meta["pmid"] == "31234567" and meta["doi"] == "10.1234/jtp.2024.0042"
    assert "×400" in records[0]["caption"] and "µm" in records[1]["caption"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs_done"] == 4 and sum(summary["records"].values()) == 7
    assert "oa_service_url" in (out / "config.yaml").read_text()


def test_folder_of_nxml_with_graphics_found_whatever_the_extension(tmp_path):
    root = tmp_path / "articles"
    figs = [
        JatsFigure("F1", "Figure 1", "Tubular adenoma.", ["Low-grade dysplasia."], graphic="gr1"),
        JatsFigure("F2", "Figure 2", "Granuloma.", ["Epithelioid histiocytes."], graphic="fig2.tif"),
        JatsFigure("F3", "Figure 3", "Mitoses.", ["Atypical forms."], graphic="images/f3"),
    ]
    write_article_dir(root / "a" / "b", make_jats_article("PMC2000001", figs), {
        "gr1.png": make_image("RGB", (80, 60), seed=1),  # href without extension
        "fig2.jpg": tile_jpeg(2),  # href says .tif, PMC converted it
        "images/f3.JPG": tile_jpeg(3),  # a subfolder, upper-case extension
    })
    # a second article in another folder: no figures at all -> one ledger line for it
    write_article_dir(root / "c", make_jats_article("PMC2000002", figures=[]), {})
    out = tmp_path / "caps"

    assert extract(root, "--out", out) == 0

    records = load_records(out, tmp_path / "hf")
    assert [r["id"] for r in records] == ["PMC2000001/F1", "PMC2000001/F2", "PMC2000001/F3"]
    assert [json.loads(r["meta"])["graphic"] for r in records] == ["gr1.png", "fig2.jpg", "images/f3.JPG"]
    assert records[0]["caption"] == "Tubular adenoma. Low-grade dysplasia."
    assert records[0]["image"].size == (80, 60)
    rejects = load_rejects(out)
    assert [(r["id"], r["reason"].split(":")[0]) for r in rejects] == [("pmc:PMC2000002", "no figures")]


def test_pmcid_through_the_oa_service_with_retries_and_cache(tmp_path, http_server):
    package = make_oa_package(tmp_path / "served", "PMC3000001")
    http_server.routes["/pkg/PMC3000001.tar.gz"] = package.path.read_bytes()
    http_server.routes["/pkg/PMC3000003.tar.gz"] = server_error(503)  # never recovers

    def oa(req):
        pmcid = req.query["id"][0]
        if pmcid == "PMC3000002":
            body = (f'<OA><responseDate>2024-05-01 10:00:00</responseDate><request id="{pmcid}">x</request>'
                    f"<error code=\"idIsNotOpenAccess\">identifier '{pmcid}' is not Open Access</error></OA>")
        else:
            body = (f'<?xml version="1.0" encoding="UTF-8"?><OA><responseDate>2024-05-01 10:00:00</responseDate>'
                    f'<request id="{pmcid}">x</request><records returned-count="1" total-count="1">'
                    f'<record id="{pmcid}" citation="J Test Pathol" license="CC BY" retracted="no">'
                    f'<link format="pdf" href="/pdf/{pmcid}.pdf"/>'
                    f'<link format="tgz" updated="2024-04-30 12:00:00" href="/pkg/{pmcid}.tar.gz"/>'
                    "</record></records></OA>")
        return 200, {"Content-Type": "text/xml"}, body

    http_server.routes["/oa.fcgi"] = oa
    http_server.queue("/oa.fcgi", too_many_requests(retry_after=1))  # the first question is rate limited
    http_server.queue("/pkg/PMC3000001.tar.gz", server_error(500))  # the first download fails
    out, work = tmp_path / "caps", tmp_path / "work"
    settings = [f"oa_service_url={http_server.url}/oa.fcgi", f"work_dir={work}", "backoff=0.01",
                "min_interval=0", "retries=2", "timeout=5"]

    started = time.monotonic()
    assert extract("--pmcid", "PMC3000001", "--pmcid", "3000002", "--pmcid", "PMC3000003",
                   "--out", out, *settings) == 0
    elapsed = time.monotonic() - started

    records = load_records(out, tmp_path / "hf")
    assert [r["id"] for r in records] == ["PMC3000001/F1", "PMC3000001/F2"]
    assert records[0]["caption"] == package.figures[0].caption_text
    rejects = {r["id"]: r["reason"] for r in load_rejects(out)}
    assert rejects.keys() == {"pmc:PMC3000002", "pmc:PMC3000003"}
    assert "idIsNotOpenAccess" in rejects["pmc:PMC3000002"]
    assert "after 3 attempt(s): HTTP 503" in rejects["pmc:PMC3000003"]

    oa_ids = [r.query["id"][0] for r in http_server.requests_to("/oa.fcgi")]
    assert oa_ids == ["PMC3000001", "PMC3000001", "PMC3000002", "PMC3000003"]  # 429, then the answer
    assert len(http_server.requests_to("/pkg/PMC3000001.tar.gz")) == 2  # 500, then the package
    assert len(http_server.requests_to("/pkg/PMC3000003.tar.gz")) == 3
    assert elapsed >= 1.0  # Retry-After: 1 was honoured (the backoff alone is 0.01 s)
    assert all(r.header("User-Agent", "").startswith("pathasst ") for r in http_server.requests)
    assert not http_server.requests_to("/pdf/PMC3000001.pdf")

    # a rerun pays nothing for what is cached in work_dir
    before = len(http_server.requests_to("/pkg/PMC3000001.tar.gz")), oa_ids.count("PMC3000001")
    assert extract("--pmcid", "PMC3000001", "--out", tmp_path / "again", *settings) == 0
    after = (len(http_server.requests_to("/pkg/PMC3000001.tar.gz")),
             [r.query["id"][0] for r in http_server.requests_to("/oa.fcgi")].count("PMC3000001"))
    assert after == before
    assert len(load_records(tmp_path / "again", tmp_path / "hf")) == 2


def test_oa_answer_links_are_checked():
    def answer(href: str) -> bytes:
        return (f'<OA><records><record id="PMC5" license="CC BY-NC"><link format="tgz" href="{href}"/>'
                "</record></records></OA>").encode()

    ftp = pmc.parse_oa_response(answer("ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/8e/71/PMC5.tar.gz"),
                                "PMC5", pmc.DEFAULT_OA_SERVICE)
    assert ftp.package_url == "https://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/8e/71/PMC5.tar.gz"
    assert ftp.license == "CC BY-NC"
    relative = pmc.parse_oa_response(answer("/pkg/PMC5.tar.gz"), "PMC5", "http://127.0.0.1:9/oa.fcgi")
    assert relative.package_url == "http://127.0.0.1:9/pkg/PMC5.tar.gz"
    local = pmc.parse_oa_response(answer("file:///etc/passwd"), "PMC5", pmc.DEFAULT_OA_SERVICE)
    with pytest.raises(pmc.FetchError, match="not an http"):
        pmc.http_get(local.package_url, pmc.PmcConfig())
    with pytest.raises(pmc.FetchError, match="no tgz"):
        pmc.parse_oa_response(b'<OA><records><record id="PMC5"><link format="pdf" href="x"/></record></records></OA>',
                              "PMC5", pmc.DEFAULT_OA_SERVICE)
    assert pmc.retry_after_seconds("2") == 2.0
    assert pmc.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: go now
    assert pmc.retry_after_seconds("soon") is None


# --- hostile input ---------------------------------------------------------------------------


def _hostile(xml: str, doctype: str, caption_entity: str | None = None) -> str:
    if caption_entity:
        xml = xml.replace("Immunohistochemistry for CD20.", f"Immunohistochemistry for CD20 {caption_entity}.")
    return xml.replace('<?xml version="1.0" encoding="UTF-8"?>\n', f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype}\n')


def test_entity_tricks_are_refused_and_nothing_is_fetched(tmp_path, http_server):
    for path in ("/secret", "/evil.dtd", "/jats.dtd"):
        http_server.routes[path] = (200, {}, b'<!ENTITY nbsp "pwned">')
    base = make_jats_article("PMC4000001", doctype=False)
    images = {"gr1.jpg": tile_jpeg(1), "gr2.jpg": tile_jpeg(2)}
    laughs = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    root = tmp_path / "xml"
    docs = {
        "xxe": _hostile(base, f'<!DOCTYPE article [<!ENTITY xxe SYSTEM "{http_server.url}/secret">]>', "&xxe;"),
        "laughs": _hostile(base, f"<!DOCTYPE article [{laughs}]>", "&lol9;"),
        "param": _hostile(base, f'<!DOCTYPE article [<!ENTITY % remote SYSTEM "{http_server.url}/evil.dtd"> %remote;]>'),
        "internal": _hostile(base, '<!DOCTYPE article [<!ENTITY pathologist "Dr. X">]>', "&pathologist;"),
        # an external DTD, as every PMC file names: never fetched, its named entities still read
        "plain-dtd": _hostile(base, f'<!DOCTYPE article SYSTEM "{http_server.url}/jats.dtd">', "&nbsp;&mu;m"),
    }
    for name, xml in docs.items():
        write_article_dir(root / name, xml.replace("PMC4000001", f"PMC40000{len(name):02d}"), images, f"{name}.nxml")
    out = tmp_path / "caps"

    started = time.monotonic()
    assert extract(root, "--out", out) == 0
    assert time.monotonic() - started < 30  # the billion laughs never expanded

    assert http_server.requests == []  # no DTD, no entity, nothing fetched
    rejects = {r["file"]: r["reason"] for r in load_rejects(out)}
    assert set(rejects) == {"xxe.nxml", "laughs.nxml", "param.nxml", "internal.nxml"}
    assert all(reason.startswith("unsafe XML: the DOCTYPE declares") for reason in rejects.values())
    assert "entity 'xxe' (external: http://127.0.0.1" in rejects["xxe.nxml"]
    assert "entity 'lol' (internal)" in rejects["laughs.nxml"]
    assert "parameter entity 'remote'" in rejects["param.nxml"]
    records = load_records(out, tmp_path / "hf")
    assert len(records) == 2  # plain-dtd.nxml
    assert "CD20 \u00a0μm." in records[1]["caption_raw"]
    assert "pwned" not in records[1]["caption_raw"]


def test_parse_xml_refuses_declarations_directly():
    with pytest.raises(pmc.UnsafeXML, match="entity 'a'"):
        pmc.parse_xml(b'<!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>')
    with pytest.raises(pmc.UnsafeXML, match="unparsed entity"):
        pmc.parse_xml(b'<!DOCTYPE r [<!NOTATION n SYSTEM "x"><!ENTITY u SYSTEM "y" NDATA n>]><r/>')
    with pytest.raises(pmc.MalformedXML, match="undefined entity"):
        pmc.parse_xml(b"<r>&undeclared;</r>")  # no DTD: nothing to map it from
    root, repair = pmc.parse_xml('<?xml version="1.0" encoding="windows-1252"?><r>caf\xe9 \u2013</r>'.encode("cp1252"))
    assert (root.text, repair) == ("café –", None)
    root, repair = pmc.parse_xml("<?xml version='1.0' encoding='UTF-8'?><r>na\u00efve caf".encode() + b"\xe9 \x93q\x94</r>")
    assert root.text == "naïve café “q”" and "Windows-1252" in repair


def _member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def test_unsafe_archives_are_refused_and_nothing_is_written_outside(tmp_path, monkeypatch):
    work = tmp_path / "cwd" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # a relative "../" write would land in tmp_path
    nxml = make_jats_article("PMC5000001").encode()
    good = {"PMC/article.nxml": nxml, "PMC/gr1.jpg": tile_jpeg(1), "PMC/gr2.jpg": tile_jpeg(2)}
    inputs = tmp_path / "in"
    absolute = str(tmp_path / "abs-evil.txt")
    cases = {
        "PMC5000001.tar.gz": ({**good, "../../evil.txt": b"x", "PMC/../../evil2.txt": b"x"}, [], "path traversal"),
        "PMC5000002.tar.gz": ({**good, absolute: b"x"}, [], "absolute path"),
        "PMC5000003.tar.gz": ({"PMC/article.nxml": nxml, "PMC/gr2.jpg": tile_jpeg(2)},
                              [_member("PMC/gr1.jpg", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link to '/etc/passwd'"),
        "PMC5000004.tar.gz": ({**good}, [_member("PMC/gr3.jpg", tarfile.LNKTYPE, "../../outside.txt")], "hard link"),
        "PMC5000005.tar.gz": ({**good}, [_member("PMC/tty", tarfile.CHRTYPE)], "device file"),
        "PMC5000006.tar.gz": ({**good}, [_member("PMC/pipe", tarfile.FIFOTYPE)], "FIFO"),
    }
    for name, (files, special, _) in cases.items():
        write_tar(inputs / name, files, special)
    (inputs / "PMC5000007.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 not really a gzip stream")
    before = files_under(tmp_path)
    out = tmp_path / "caps"

    assert extract(inputs, "--out", out) == 0

    created = files_under(tmp_path) - before
    assert created and all(p.startswith(("caps",)) for p in created), created
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cwd" / "evil.txt").exists()
    assert not Path(absolute).exists()
    rejects = {r["id"]: r for r in load_rejects(out)}
    assert len(rejects) == 7
    for name, (_, _, kind) in cases.items():
        reject = rejects[f"pmc:{name.split('.')[0]}"]
        assert reject["reason"].startswith("unsafe package refused (nothing extracted)"), reject
        assert kind in reject["reason"]
    assert rejects["pmc:PMC5000007"]["reason"].startswith("corrupt package")
    assert sum(json.loads((out / "summary.json").read_text())["records"].values()) == 0


def test_member_and_archive_limits(tmp_path):
    big = to_bytes(tissue_tile(256, 1), "PNG")
    path = write_tar(tmp_path / "PMC6000001.tar.gz", {
        "PMC/a.nxml": make_jats_article("PMC6000001").encode(), "PMC/gr1.png": big, "PMC/gr2.jpg": tile_jpeg(2),
    })
    unit = Unit("pmc:PMC6000001", {"kind": "package", "path": str(path), "pmcid": "PMC6000001"})

    result = pmc.extract_unit(unit, pmc.PmcConfig(max_member_mb=len(big) / 2 / pmc.MB))
    assert [r["id"] for r in result.records] == ["PMC6000001/F2"]
    assert [(i, r.split(":")[0]) for i, r, _ in result.rejects] == [("PMC6000001/F1", "graphic too large")]

    result = pmc.extract_unit(unit, pmc.PmcConfig(max_member_mb=0.001))
    assert result.records == [] and "article XML" in result.rejects[0][1]
    result = pmc.extract_unit(unit, pmc.PmcConfig(max_members=2))
    assert "more than max_members=2" in result.rejects[0][1]
    result = pmc.extract_unit(unit, pmc.PmcConfig(max_package_mb=len(big) / pmc.MB))
    assert "max_package_mb" in result.rejects[0][1]


def test_missing_graphic_bad_images_and_awkward_modes(tmp_path):
    def fig(n: int, href: str, caption: bool = True) -> JatsFigure:
        return JatsFigure(f"F{n}", f"Figure {n}", f"Panel {n} title." if caption else None,
                          [f"Panel {n} text."] if caption else (), graphic=href)

    figures = [fig(1, "gr1"), fig(2, "gr2"), fig(3, "gr3"), fig(4, "gr4"), fig(5, "gr5"), fig(6, "gr6", caption=False),
               fig(7, "gr7.tif"), fig(8, "gr8.tif"), fig(9, "gr9"), fig(10, "gr10"), fig(11, "http://example.org/x.jpg")]
    files = {
        "PMC7000001/paper.nxml": make_jats_article("PMC7000001", figures).encode(),
        "PMC7000001/gr1.jpg": tile_jpeg(1),
        # gr2: missing
        "PMC7000001/gr3.jpg": make_image("CMYK", (64, 48), seed=3, fmt="JPEG"),
        "PMC7000001/gr4.png": make_image("I;16", (64, 48), seed=4),
        "PMC7000001/gr5.jpg": make_truncated_image("JPEG"),
        "PMC7000001/gr6.jpg": tile_jpeg(6),
        "PMC7000001/gr7.tif": make_image("RGB", (50, 40), seed=7, fmt="TIFF"),
        "PMC7000001/gr8.jpg": tile_jpeg(8),
        "PMC7000001/gr9.jpg": tile_jpeg(9, size=120),
        "PMC7000001/gr9.gif": make_image("P", (30, 30), seed=9, fmt="GIF"),  # the thumbnail
        "PMC7000001/gr10.gif": make_image("P", (40, 30), seed=10, fmt="GIF", transparent=True),
    }
    out = tmp_path / "caps"
    assert extract(write_tar(tmp_path / "PMC7000001.tar.gz", files), "--out", out) == 0

    records = {r["id"].split("/")[1]: r for r in load_records(out, tmp_path / "hf")}
    rejects = {r["id"].split("/")[1]: r["reason"] for r in load_rejects(out)}
    assert set(records) == {"F1", "F3", "F4", "F7", "F8", "F9", "F10"}
    assert rejects.keys() == {"F2", "F5", "F6", "F11"}
    assert len(records) + len(rejects) == len(figures)  # every figure: a record or a ledger line
    assert rejects["F2"].startswith("missing graphic: 'gr2'")
    assert rejects["F5"].startswith("truncated image")
    assert rejects["F6"].startswith("no caption")
    assert rejects["F11"].startswith("remote graphic")
    assert records["F3"]["image"].mode == "RGB"  # CMYK converted
    assert records["F4"]["image"].mode == "L"
    low, high = records["F4"]["image"].getextrema()
    assert high - low > 200  # 16-bit stretched over its own range, not clipped to white
    gif = Image.open(io.BytesIO(files["PMC7000001/gr10.gif"]))
    transparent = next((x, y) for y in range(30) for x in range(40) if gif.getpixel((x, y)) == 0)
    assert records["F10"]["image"].getpixel(transparent) == (255, 255, 255)  # composited on white
    assert json.loads(records["F8"]["meta"])["graphic"] == "gr8.jpg"
    assert records["F9"]["image"].size == (120, 120)  # the full-size file, not the thumbnail


def test_licences_captions_and_ids_from_real_jats_shapes():
    xml = b"""<?xml version="1.0"?>
<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD v1.2 20190208//EN" "JATS-archivearticle1.dtd">
<article xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:mml="http://www.w3.org/1998/Math/MathML" xmlns:ali="http://www.niso.org/schemas/ali/1.0/" article-type="case-report">
<front><journal-meta><journal-id journal-id-type="nlm-ta">Diagn Pathol</journal-id></journal-meta>
<article-meta><article-id pub-id-type="pmc">9876543</article-id><article-id pub-id-type="doi">10.1/dp</article-id>
<pub-date pub-type="collection"><year>2019</year></pub-date><pub-date pub-type="epub"><day>2</day><month>1</month><year>2018</year></pub-date>
<permissions><license><ali:license_ref>http://creativecommons.org/licenses/by/4.0/</ali:license_ref></license></permissions>
</article-meta></front><body>
<fig id="f1"><label>Fig. 1</label><caption><title>Renal biopsy</title><p>PAS stain, <inline-formula><alternatives><tex-math>\\times 400</tex-math><mml:math><mml:mo>&#215;</mml:mo><mml:mn>400</mml:mn></mml:math></alternatives></inline-formula> [<xref ref-type="bibr" rid="r3">3</xref>]<list><list-item><p>a</p></list-item><list-item><p>b</p></list-item></list></p></caption><graphic xlink:href="dp-1"/></fig>
<fig id="f2"><caption><p>Reproduced from [4].</p></caption>
<permissions><copyright-statement>(c) Other Press</copyright-statement><license license-type="open-access"><license-p>Under a <ext-link ext-link-type="uri" xlink:href="https://creativecommons.org/licenses/by-nc-sa/3.0/">CC licence</ext-link>.</license-p></license></permissions>
<alternatives><graphic xlink:href="dp-2"/><graphic xlink:href="dp-2-alt"/></alternatives></fig>
</body></article>"""
    root, _ = pmc.parse_xml(xml)
    meta = pmc.article_meta(root)
    assert (meta.pmcid, meta.doi, meta.pmid, meta.journal, meta.year) == ("PMC9876543", "10.1/dp", None, "Diagn Pathol", 2018)
    assert (meta.license.name, meta.license.noncommercial) == ("CC BY 4.0", False)
    f1, f2 = pmc.iter_figures(root)
    assert f1.label == "Fig. 1"
    assert f1.caption_raw == "Renal biopsy\nPAS stain, ×400 [3] a b"
    assert f1.license is None and f1.graphics == ["dp-1"]
    assert (f2.license.name, f2.license.noncommercial) == ("CC BY-NC-SA 3.0", True)  # the figure's own
    assert f2.graphics == ["dp-2", "dp-2-alt"] and f2.label is None
    assert pmc.normalize_pmcid("pmc000123") == "PMC123" and pmc.normalize_pmcid("PMCX") is None


def test_noncommercial_can_be_refused_and_missing_licence_goes_to_the_ledger(tmp_path):
    nc = make_oa_package(tmp_path, "PMC8000001", default_figures(1), license="CC BY-NC 4.0")
    none = make_oa_package(tmp_path, "PMC8000002", default_figures(1), license=None)
    units = list(pmc.iter_units([str(nc.path), str(none.path)], pmc.PmcConfig()))

    strict = pmc.PmcConfig(allow_noncommercial=False)
    result = pmc.extract_unit(units[0], strict)
    assert result.records == [] and "non-commercial licence CC BY-NC 4.0" in result.rejects[0][1]
    result = pmc.extract_unit(units[1], pmc.PmcConfig())
    assert result.rejects[0][1].startswith("no licence")
    result = pmc.extract_unit(units[1], pmc.PmcConfig(license="CC BY 4.0"))
    assert result.records[0]["license"] == "CC BY 4.0"
    assert json.loads(result.records[0]["meta"])["license_from"] == "config"


def test_non_utf8_article_and_graphic_link_out_of_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(tile_jpeg(5))
    figs = [JatsFigure("F1", "Figure 1", "Caf\u00e9-au-lait macule.", ["Basal hyperpigmentation."], graphic="gr1"),
            JatsFigure("F2", "Figure 2", "Linked.", ["Out of the folder."], graphic="gr2")]
    xml = make_jats_article("PMC9000001", figs).encode("utf-8").replace("Caf\u00e9".encode(), b"Caf\xe9")  # Latin-1
    root = tmp_path / "in"
    write_article_dir(root, xml, {"gr1.jpg": tile_jpeg(1)})
    os.symlink(outside / "secret.jpg", root / "gr2.jpg")
    out = tmp_path / "caps"

    assert extract(root, "--out", out) == 0
    (record,) = load_records(out, tmp_path / "hf")
    assert record["caption"].startswith("Café-au-lait macule.")
    assert "Windows-1252" in json.loads(record["meta"])["text_repaired"]
    (reject,) = load_rejects(out)
    assert reject["id"] == "PMC9000001/F2" and "leads out of the input folder" in reject["reason"]


# --- scale: shards, processes, resume --------------------------------------------------------


def _mixed_corpus(root: Path) -> int:
    """A corpus with every kind of outcome; returns how many inputs it holds (figures, or the
    article/package itself where nothing could be read)."""
    make_oa_package(root, "PMC2001", default_figures(2))
    make_oa_package(root, "PMC2002", default_figures(3), license="CC BY-NC 4.0")
    make_oa_package(root / "sub", "PMC2004", figures=[])
    nxml = make_jats_article("PMC2003").encode()
    write_tar(root / "PMC2003.tar.gz", {"PMC2003/a.nxml": nxml, "PMC2003/gr1.jpg": tile_jpeg(1)})  # gr2 missing
    write_tar(root / "PMC2005.tar.gz", {"PMC2005/a.nxml": nxml, "../x": b"x"})
    (root / "broken.tgz").write_bytes(os.urandom(300))
    write_article_dir(root / "sub" / "PMC2006", make_jats_article("PMC2006"), {"gr1.jpg": tile_jpeg(3), "gr2.jpg": tile_jpeg(4)})
    xxe = _hostile(make_jats_article("PMC2007", doctype=False), '<!DOCTYPE article [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "&x;")
    write_article_dir(root / "sub" / "PMC2007", xxe, {"gr1.jpg": tile_jpeg(5), "gr2.jpg": tile_jpeg(6)})
    return 2 + 3 + 1 + 2 + 1 + 1 + 2 + 1


def _outcome(out: Path, cache: Path) -> tuple[list, list]:
    records = [(r["id"], r["caption"], r["license"], r["noncommercial"], r["phash"], r["width"])
               for r in load_records(out, cache)]
    rejects = sorted((r["id"], r["reason"]) for r in load_rejects(out))
    return records, rejects


def test_num_proc_resume_and_accounting_on_a_mixed_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    inputs = _mixed_corpus(corpus)
    hf = tmp_path / "hf"

    assert extract(corpus, "--out", tmp_path / "one") == 0
    records, rejects = _outcome(tmp_path / "one", hf)
    assert len(records) + len(rejects) == inputs  # inputs = records + rejects
    assert len(records) == 2 + 3 + 1 + 2
    assert len({r[0] for r in records}) == len(records)

    assert extract(corpus, "--out", tmp_path / "two", "--num-proc", "2") == 0
    assert _outcome(tmp_path / "two", hf) == (records, rejects)

    # resume: a run that saw part of the corpus, then the whole corpus into the same folder
    assert extract(corpus / "PMC2001.tar.gz", corpus / "sub", "--out", tmp_path / "resumed") == 0
    assert extract(corpus, "--out", tmp_path / "resumed") == 0
    assert _outcome(tmp_path / "resumed", hf) == (records, rejects)
    # and the same command once more changes nothing
    assert extract(corpus, "--out", tmp_path / "resumed") == 0
    assert _outcome(tmp_path / "resumed", hf) == (records, rejects)

    # --shard K/N: disjoint parts that together are the whole
    parts = []
    for k in (1, 2):
        assert extract(corpus, "--out", tmp_path / f"shard{k}", "--shard", f"{k}/2") == 0
        parts.append(_outcome(tmp_path / f"shard{k}", hf))
    assert sorted(parts[0][0] + parts[1][0]) == records
    assert sorted(parts[0][1] + parts[1][1]) == rejects


def test_bad_command_lines(tmp_path, capsys):
    assert extract("--pmcid", "not-an-id", "--out", tmp_path / "o") == 2
    assert "is not a PMCID" in capsys.readouterr().err
    assert extract(tmp_path / "nope.tar.gz", "--out", tmp_path / "o2") == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert extract(tmp_path / "notes.txt", "--out", tmp_path / "o3") == 2
    assert "not an OA package" in capsys.readouterr().err
    assert extract(tmp_path, "oa_service_url=file:///x", "--out", tmp_path / "o4") == 2


def test_same_article_twice_is_extracted_once(tmp_path):
    pkg = make_oa_package(tmp_path / "a", "PMC1100001", default_figures(1))
    copy = tmp_path / "b" / pkg.path.name
    copy.parent.mkdir()
    copy.write_bytes(pkg.path.read_bytes())
    units = list(pmc.iter_units([str(pkg.path), str(copy), "pmcid:PMC1100001"], pmc.PmcConfig()))
    assert [u.key for u in units] == ["pmc:PMC1100001"]
    unnamed = tmp_path / "c" / "article.tar.gz"
    unnamed.parent.mkdir()
    unnamed.write_bytes(pkg.path.read_bytes())
    (unit,) = pmc.iter_units([str(unnamed)], pmc.PmcConfig())
    assert unit.key.startswith("pmc:sha256:")
    assert pmc.extract_unit(unit, pmc.PmcConfig()).records[0]["source_id"] == "PMC1100001"


# --- the benchmark runs and reports what it promises -----------------------------------------


def test_benchmark_tiny_run(tmp_path, capsys):
    from pathasst.benchmarks.perf import extract_pmc

    out_json = tmp_path / "bench.json"
    assert extract_pmc.main(["--articles", "6", "--figures", "2", "--repeat", "1", "--json", str(out_json),
                             "--work-dir", str(tmp_path / "w")]) == 0
    result = json.loads(out_json.read_text())
    assert {"parse", "full", "cli"} <= set(result["runs"])
    for run in result["runs"].values():
        assert run["articles"] == 6 and run["articles_per_s"] > 0
    assert result["runs"]["full"]["records"] == result["runs"]["cli"]["records"] == 12
    assert isinstance(result["ratios"]["parse_over_full"], float)
    assert "articles/s" in capsys.readouterr().out


def test_truncated_package_and_foreign_xml_go_to_the_ledger(tmp_path):
    pkg = make_oa_package(tmp_path, "PMC1200001")
    data = pkg.path.read_bytes()
    cut = tmp_path / "cut" / "PMC1200001.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) * 2 // 3])  # the download stopped two thirds in
    foreign = write_tar(tmp_path / "PMC1200002.tar.gz", {"x/a.nxml": b"<html><body>not JATS</body></html>"})
    cfg = pmc.PmcConfig()
    for path, reason in ((cut, "corrupt package"), (foreign, "not a JATS article: root element <html>")):
        (unit,) = pmc.iter_units([str(path)], cfg)
        result = pmc.extract_unit(unit, cfg)
        assert result.records == [] and len(result.rejects) == 1
        assert result.rejects[0][0] == unit.key and result.rejects[0][1].startswith(reason), result.rejects
