"""JATS shapes found in real articles by the JATS quality benchmark, as generated regression fixtures.

* PLOS ships its articles as ``.xml`` (not ``.nxml``) and writes graphics as DOI URIs
  (``xlink:href="info:doi/10.1371/journal.pone.0080518.g001"``), the file named after the DOI's last
  segment: a folder of such articles gave no unit at all, and the graphic never resolved.
* Older articles (NLM Archiving DTD 2.x) state the licence only in a ``<copyright-statement>``, with
  no ``<permissions>``/``<license>``: every figure went to the ledger for want of a licence.
* The Springer Nature API's JATS declares its DTDs as external parameter entities that nothing
  references: the whole article went to the ledger as unsafe XML.
* The Springer Nature API wraps its ``<article>`` in ``<response><records>``, PMC's E-utilities in
  ``<pmc-articleset>``: "not a JATS article", nothing extracted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathasst.config import load_config
from pathasst.dataset_builders.extract import pmc
from pathasst.testing.images import tissue_tile, to_bytes
from pathasst.testing.jats import JatsFigure, make_jats_article


def run_folder(folder: Path, *overrides: str):
    cfg = load_config(pmc.SOURCE.config, None, list(overrides))
    units = list(pmc.SOURCE.iter_units([str(folder)], cfg))
    results = [pmc.SOURCE.extract_unit(unit, cfg) for unit in units]
    return units, [r for res in results for r in res.records], [j for res in results for j in res.rejects]


def plos_figures(doi_suffix: str) -> list[JatsFigure]:
    return [
        JatsFigure(f"{doi_suffix}.g00{i}", f"Fig {i}", f"Panel {i} of a compound figure.", [f"(A) Left. (B) Right {i}."],
                   graphic=f"info:doi/10.1371/{doi_suffix}.g00{i}")
        for i in (1, 2)
    ]


def test_folder_of_plos_xml_articles_with_info_doi_graphics(tmp_path):
    folder = tmp_path / "plos"
    folder.mkdir()
    xml = make_jats_article("PMC4000001", plos_figures("journal.pone.0000001"), doi="10.1371/journal.pone.0000001")
    (folder / "journal.pone.0000001.xml").write_text(xml, encoding="utf-8")
    (folder / "journal.pone.0000001.g001.tif").write_bytes(to_bytes(tissue_tile(64, 1), "TIFF"))
    (folder / "journal.pone.0000001.g002.png").write_bytes(to_bytes(tissue_tile(64, 2), "PNG"))
    (folder / "catalog.xml").write_text("<?xml version='1.0'?><catalog><entry/></catalog>", encoding="utf-8")

    units, records, rejects = run_folder(folder)

    assert [u.label for u in units] == ["journal.pone.0000001.xml"]  # the JATS .xml, not the catalog
    assert rejects == []
    assert [json.loads(r["meta"])["graphic"] for r in records] == [
        "journal.pone.0000001.g001.tif", "journal.pone.0000001.g002.png"]
    assert [r["figure_label"] for r in records] == ["Fig 1", "Fig 2"]
    assert records[0]["caption_raw"] == "Panel 1 of a compound figure.\n(A) Left. (B) Right 1."


def test_info_doi_href_resolves_to_the_doi_suffix_and_stays_in_the_package():
    class Files(pmc._Files):
        def __init__(self, names):
            self.names = names

        def exists(self, name):
            return name if name in self.names else None

    files = Files({"PMC1/journal.pbio.0020334.g001.jpg"})
    assert pmc.resolve_graphic("info:doi/10.1371/journal.pbio.0020334.g001", "PMC1", files) == \
        "PMC1/journal.pbio.0020334.g001.jpg"
    try:
        pmc.resolve_graphic("info:doi/10.1371/journal.pbio.0020334.g009", "PMC1", files)
    except pmc.PmcRejected as exc:
        assert exc.reason.startswith("missing graphic") and "journal.pbio.0020334.g009" in exc.reason
    else:
        raise AssertionError("a missing info:doi graphic must be rejected")


def with_copyright_statement(xml: str, statement: str) -> str:
    assert "</article-meta>" in xml and "<permissions>" not in xml
    return xml.replace("</article-meta>", f"<copyright-statement>{statement}</copyright-statement></article-meta>", 1)


def test_licence_stated_only_in_the_copyright_statement(tmp_path):
    figs = [JatsFigure("F1", "Figure 1", "Granuloma.", ["Epithelioid histiocytes."], graphic="gr1")]
    old = with_copyright_statement(
        make_jats_article("PMC4000002", figs, license=None),
        "Tenaillon et al. This is an open-access article distributed under the terms of the Creative Commons "
        "Attribution License, which permits unrestricted use, distribution, and reproduction in any medium.")
    plain = with_copyright_statement(make_jats_article("PMC4000003", figs, license=None), "&#169; 2007 The Authors")
    for name, xml in (("a", old), ("b", plain)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "article.nxml").write_text(xml, encoding="utf-8")
        (tmp_path / name / "gr1.jpg").write_bytes(to_bytes(tissue_tile(64, 3), "JPEG"))

    _, records, rejects = run_folder(tmp_path)

    assert [(r["source_id"], r["license"], r["noncommercial"]) for r in records] == [("PMC4000002", "CC BY", False)]
    assert json.loads(records[0]["meta"])["license_from"] == "copyright-statement"
    # a copyright line that names no licence is no licence: the figure goes to the ledger
    assert [(item, reason.split(":")[0]) for item, reason, _ in rejects] == [("PMC4000003/F1", "no licence")]


def test_noncommercial_licence_in_a_copyright_statement_is_flagged():
    root = pmc.parse_xml(with_copyright_statement(
        make_jats_article("PMC4000004", license=None),
        "Distributed under the Creative Commons Attribution-NonCommercial 3.0 License, which permits "
        "non-commercial use.").encode("utf-8"))[0]
    meta = pmc.article_meta(root)
    assert (meta.license.name, meta.license.noncommercial, meta.license_from) == ("CC BY-NC 3.0", True, "copyright-statement")


# The Springer Nature API's JATS declares the JATS and BITS DTDs as external parameter entities in its
# DOCTYPE and never references them: the whole article went to the ledger as "unsafe XML".
def springer_doctype(url: str, referenced: bool = False) -> str:
    return (f'<!DOCTYPE response [\n<!ENTITY % article SYSTEM "{url}/JATS-archivearticle1.dtd">\n'
            f'<!ENTITY % book-part-wrapper SYSTEM "{url}/BITS-book2.dtd">\n' + ("%article;\n" if referenced else "") + "]>")


def test_external_parameter_entities_only_declared_are_harmless_and_never_fetched(tmp_path, http_server):
    http_server.routes["/JATS-archivearticle1.dtd"] = (200, {}, b'<!ENTITY nbsp "pwned">')
    xml = make_jats_article("PMC4000005", doctype=False)
    declared = xml.replace("?>\n", "?>\n" + springer_doctype(http_server.url) + "\n", 1)
    referenced = make_jats_article("PMC4000006", doctype=False).replace(
        "?>\n", "?>\n" + springer_doctype(http_server.url, referenced=True) + "\n", 1)
    for name, text in (("declared", declared), ("referenced", referenced)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "article.nxml").write_text(text, encoding="utf-8")
        for i in (1, 2):
            (tmp_path / name / f"gr{i}.jpg").write_bytes(to_bytes(tissue_tile(64, i), "JPEG"))

    _, records, rejects = run_folder(tmp_path)

    assert http_server.requests == []  # declared or referenced, nothing is fetched
    assert [r["source_id"] for r in records] == ["PMC4000005", "PMC4000005"]
    # a reference to the external parameter entity is still refused, whole
    assert len(rejects) == 1 and rejects[0][1].startswith(
        "unsafe XML: the DOCTYPE declares parameter entity 'article' (external: http://127.0.0.1")
    assert "and references it" in rejects[0][1]
    standalone = referenced.replace('<?xml version="1.0" encoding="UTF-8"?>', '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>', 1)
    assert "standalone" in standalone
    with pytest.raises(pmc.UnsafeXML, match="and references it"):  # standalone="yes" is no way around it
        pmc.parse_xml(standalone.encode())
    assert http_server.requests == []
    with pytest.raises(pmc.UnsafeXML, match="parameter entity 'p' \\(internal\\)"):  # internal ones carry markup
        pmc.parse_xml(b"<!DOCTYPE r [<!ENTITY % p \"<!ENTITY g 'x'>\"> %p;]><r/>")


# The Springer Nature API answers with its JATS <article> inside <response><records>, and PMC's
# E-utilities with <pmc-articleset>: "not a JATS article: root element <response>", nothing extracted.
def wrapped(root: str, *articles: str, head: str = "") -> str:
    bodies = "".join(a.split("?>\n", 1)[1] for a in articles)  # each article without its XML declaration
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{head}<records>{bodies}</records></{root}>\n'


def test_articles_inside_a_wrapper_each_give_their_figures_with_their_own_ids(tmp_path):
    one = make_jats_article("PMC4000007", [JatsFigure("F1", "Fig. 1", None, ["Granuloma [12]"], graphic="MediaObjects/a_Fig1_HTML")],
                            doctype=False)
    two = make_jats_article("PMC4000008", [JatsFigure("F1", "Fig. 1", None, ["Giant cells."], graphic="b_Fig1_HTML")],
                            license="CC BY-NC 4.0", doi="10.1234/two", doctype=False)
    api = tmp_path / "api"
    (api / "MediaObjects").mkdir(parents=True)
    (api / "response.xml").write_text(wrapped("response", one, head="<apiMessage>provided by a publisher</apiMessage>"),
                                      encoding="utf-8")
    (api / "MediaObjects" / "a_Fig1_HTML.png").write_bytes(to_bytes(tissue_tile(64, 1), "PNG"))
    efetch = tmp_path / "efetch"
    efetch.mkdir()
    (efetch / "articleset.xml").write_text(wrapped("pmc-articleset", one.replace("PMC4000007", "PMC4000009"), two),
                                           encoding="utf-8")
    for name in ("MediaObjects/a_Fig1_HTML.png", "b_Fig1_HTML.png"):
        (efetch / name).parent.mkdir(exist_ok=True)
        (efetch / name).write_bytes(to_bytes(tissue_tile(64, 2), "PNG"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "set.xml").write_text("<pmc-articleset><article-like/></pmc-articleset>\n<!-- <article> -->",
                                                encoding="utf-8")

    units, records, rejects = run_folder(tmp_path)

    assert len(units) == 3
    assert [(r["source_id"], r["license"], json.loads(r["meta"])["graphic"]) for r in records] == [
        ("PMC4000007", "CC BY 4.0", "MediaObjects/a_Fig1_HTML.png"),
        ("PMC4000009", "CC BY 4.0", "MediaObjects/a_Fig1_HTML.png"),
        ("PMC4000008", "CC BY-NC 4.0", "b_Fig1_HTML.png"),
    ]
    assert json.loads(records[2]["meta"])["doi"] == "10.1234/two"
    assert [reason for _, reason, _ in rejects] == [
        "not a JATS article: root element <pmc-articleset> holds no <article>"]
