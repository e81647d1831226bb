"""JATS articles and PMC open-access packages made in code, shaped like what PMC serves.

:func:`make_jats_article` writes the ``.nxml`` text: DOCTYPE, ``article-meta`` with PMCID, PMID and
DOI, title, license, body sections with ``<fig>`` elements (label, caption title and paragraphs with
inline markup, ``<graphic xlink:href>``) and a reference list the ``<xref>`` links resolve to.
:func:`make_oa_package` wraps it with its graphics into a ``.tar.gz`` like PMC's OA packages.

Caption titles, caption paragraphs and the article title are XML *fragments*: inline JATS markup
(``<italic>``, ``<xref>``, ``<sup>``) is written as given; escape plain text with
``xml.sax.saxutils.escape``. The result is parsed before it is returned, so a bad fragment fails
here, not in the extractor under test.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

XLINK = "http://www.w3.org/1999/xlink"
ALI = "http://www.niso.org/schemas/ali/1.0/"
DOCTYPE = (
    '<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD with '
    'MathML3 v1.3 20210610//EN" "JATS-archive-oasis-article1-3-mathml3.dtd">'
)

#: License texts we know the URL of; anything else is written as text only (no link), and a
#: string with "://" is written as a link only. Real PMC files come in all three shapes.
LICENSE_URLS: dict[str, str] = {
    "CC BY 4.0": "https://creativecommons.org/licenses/by/4.0/",
    "CC BY-NC 4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
    "CC BY-NC-ND 4.0": "https://creativecommons.org/licenses/by-nc-nd/4.0/",
    "CC BY-SA 4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "CC BY 3.0": "https://creativecommons.org/licenses/by/3.0/",
    "CC0 1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
}


@dataclasses.dataclass
class JatsFigure:
    """One ``<fig>``.

    Attributes:
        fig_id: the element's ``id`` (what ``<xref ref-type="fig" rid=...>`` points at).
        label: ``<label>`` text ("Figure 1"); None for none.
        title: caption ``<title>`` fragment; None for none.
        paragraphs: caption ``<p>`` fragments (inline markup allowed).
        graphic: the ``xlink:href`` as written; PMC omits the extension ("gr1" for gr1.jpg).
        image: the graphic's file for :func:`make_oa_package`; default a tissue tile.
        image_ext: extension of the packaged file.
    """

    fig_id: str = "F1"
    label: str | None = "Figure 1"
    title: str | None = None
    paragraphs: Sequence[str] = ()
    graphic: str | None = None
    image: bytes | None = None
    image_ext: str = "jpg"

    @property
    def graphic_file(self) -> str | None:
        """The file name of the graphic inside the package."""
        if not self.graphic:
            return None
        return self.graphic if "." in self.graphic.rsplit("/", 1)[-1] else f"{self.graphic}.{self.image_ext}"

    @property
    def caption_text(self) -> str:
        """Title and paragraphs as plain text (markup stripped), separated by single spaces."""
        parts = [self.title or "", *self.paragraphs]
        texts = ("".join(ET.fromstring(f'<x xmlns:xlink="{XLINK}">{p}</x>').itertext()) for p in parts if p)
        return " ".join(" ".join(texts).split())


def default_figures(n: int = 2) -> list[JatsFigure]:
    """``n`` figures with the markup real captions carry: italics, a citation, a unit with sup."""
    titles = [
        "Histology of <italic>Helicobacter pylori</italic> gastritis.",
        "Immunohistochemistry for CD20.",
        "Lymph node metastasis.",
        "Electron micrograph of the basement membrane.",
    ]
    paragraphs = [
        ["(A) Chronic active gastritis with curved bacilli on the surface epithelium (H&amp;E, &#215;400). "
         "(B) Giemsa stain highlights the organisms <xref ref-type=\"bibr\" rid=\"B1\">1</xref>."],
        ["Diffuse membranous staining of the neoplastic cells. Scale bar, 50 &#181;m."],
        ["Subcapsular sinus involved by adenocarcinoma <xref ref-type=\"bibr\" rid=\"B2\">2</xref>."],
        ["Lamination of the glomerular basement membrane; 10<sup>4</sup> magnification."],
    ]
    return [
        JatsFigure(
            fig_id=f"F{i + 1}",
            label=f"Figure {i + 1}",
            title=titles[i % len(titles)],
            paragraphs=paragraphs[i % len(paragraphs)],
            graphic=f"gr{i + 1}",
        )
        for i in range(n)
    ]


def _as_figure(f: JatsFigure | Mapping[str, Any], i: int) -> JatsFigure:
    fig = f if isinstance(f, JatsFigure) else JatsFigure(**f)
    if fig.graphic is None:
        fig = dataclasses.replace(fig, graphic=f"gr{i + 1}")
    return fig


def _license_xml(license: str | None) -> str:
    if not license:
        return ""
    if "://" in license:
        url, text = license, None
    else:
        url, text = LICENSE_URLS.get(license), license
    href = f' xlink:href={quoteattr(url)}' if url else ""
    ref = f"<ali:license_ref>{escape(url)}</ali:license_ref>" if url else ""
    para = f"<license-p>This is an open access article distributed under the terms of the {escape(text)} license.</license-p>" if text else ""
    return f'<permissions><copyright-statement>&#169; The authors</copyright-statement><license license-type="open-access"{href}>{ref}{para}</license></permissions>'


def _fig_xml(fig: JatsFigure) -> str:
    label = f"<label>{escape(fig.label)}</label>" if fig.label else ""
    title = f"<title>{fig.title}</title>" if fig.title else ""
    paras = "".join(f"<p>{p}</p>" for p in fig.paragraphs)
    caption = f"<caption>{title}{paras}</caption>" if (title or paras) else ""
    graphic = f'<graphic xlink:href={quoteattr(fig.graphic)}/>' if fig.graphic else ""
    return f'<fig id={quoteattr(fig.fig_id)} position="float">{label}{caption}{graphic}</fig>'


def make_jats_article(
    pmcid: str = "PMC1234567",
    figures: Sequence[JatsFigure | Mapping[str, Any]] | None = None,
    license: str | None = "CC BY 4.0",
    *,
    pmid: str | None = "31234567",
    doi: str | None = "10.1234/jtp.2024.0042",
    title: str = "Histopathological spectrum of <italic>Helicobacter pylori</italic> gastritis",
    journal: str = "Journal of Test Pathology",
    abstract: str = "We describe the histological findings in a series of gastric biopsies.",
    pmcid_type: str = "pmcid",
    figures_in: str = "body",
    doctype: bool = True,
    article_type: str = "research-article",
) -> str:
    """A JATS (NLM archiving) article as PMC serves it in the OA package ``.nxml``.

    Args:
        pmcid: e.g. ``PMC1234567``.
        figures: :class:`JatsFigure` (or dicts of its fields); default :func:`default_figures`.
            An empty list gives an article without figures.
        license: a key of :data:`LICENSE_URLS`, a URL, other text (no link), or None (no
            ``<permissions>`` at all).
        pmid: PubMed id, or None to leave it out.
        doi: DOI, or None to leave it out.
        title: article title fragment.
        journal: journal title.
        abstract: abstract text (plain).
        pmcid_type: ``pmcid`` (``PMC1234567``, current files) or ``pmc`` (digits only, older files).
        figures_in: ``body`` (figures inside the section that cites them) or ``floats-group``
            (collected after ``<back>``, as some publishers deliver them).
        doctype: write the DOCTYPE line (its DTD is never fetched by a parser that does not
            validate).
        article_type: the ``article-type`` attribute.

    Returns:
        The XML text.

    Raises:
        ValueError: a fragment is not well-formed XML, or an unknown option value.
    """
    figs = [_as_figure(f, i) for i, f in enumerate(default_figures() if figures is None else figures)]
    if pmcid_type not in ("pmcid", "pmc"):
        raise ValueError(f"pmcid_type must be 'pmcid' or 'pmc', got {pmcid_type!r}")
    if figures_in not in ("body", "floats-group"):
        raise ValueError(f"figures_in must be 'body' or 'floats-group', got {figures_in!r}")
    pmc_value = pmcid if pmcid_type == "pmcid" else pmcid.removeprefix("PMC")
    ids = f'<article-id pub-id-type="{pmcid_type}">{escape(pmc_value)}</article-id>'
    if pmid:
        ids += f'<article-id pub-id-type="pmid">{escape(pmid)}</article-id>'
    if doi:
        ids += f'<article-id pub-id-type="doi">{escape(doi)}</article-id>'

    cites = ", ".join(f'<xref ref-type="fig" rid={quoteattr(f.fig_id)}>{escape(f.label or f.fig_id)}</xref>' for f in figs)
    fig_xml = "".join(_fig_xml(f) for f in figs)
    results = (
        "<sec id=\"s2\"><title>Results</title>"
        f"<p>The main findings are shown in {cites or 'the text'}.</p>"
        + (fig_xml if figures_in == "body" else "")
        + "</sec>"
    )
    floats = f"<floats-group>{fig_xml}</floats-group>" if figures_in == "floats-group" and figs else ""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + (DOCTYPE + "\n" if doctype else "")
        + f'<article xmlns:xlink="{XLINK}" xmlns:mml="http://www.w3.org/1998/Math/MathML" xmlns:ali="{ALI}" '
        f'article-type={quoteattr(article_type)} dtd-version="1.3" xml:lang="en">'
        "<front>"
        f"<journal-meta><journal-title-group><journal-title>{escape(journal)}</journal-title></journal-title-group>"
        "<issn pub-type=\"epub\">0000-0000</issn></journal-meta>"
        f"<article-meta>{ids}"
        "<article-categories><subj-group subj-group-type=\"heading\"><subject>Research Article</subject></subj-group></article-categories>"
        f"<title-group><article-title>{title}</article-title></title-group>"
        "<contrib-group><contrib contrib-type=\"author\"><name><surname>Doe</surname><given-names>Jane</given-names></name></contrib></contrib-group>"
        "<pub-date pub-type=\"epub\"><day>15</day><month>3</month><year>2024</year></pub-date>"
        f"{_license_xml(license)}"
        f"<abstract><p>{escape(abstract)}</p></abstract>"
        "</article-meta></front>"
        "<body>"
        "<sec id=\"s1\"><title>Introduction</title><p>Gastritis is common <xref ref-type=\"bibr\" rid=\"B1\">1</xref>.</p></sec>"
        f"{results}"
        "</body>"
        "<back><ref-list><title>References</title>"
        "<ref id=\"B1\"><mixed-citation publication-type=\"journal\">Marshall BJ, Warren JR. Unidentified curved bacilli. Lancet. 1984.</mixed-citation></ref>"
        "<ref id=\"B2\"><mixed-citation publication-type=\"journal\">Doe J. Nodal metastasis. J Test Pathol. 2020.</mixed-citation></ref>"
        "</ref-list></back>"
        f"{floats}"
        "</article>\n"
    )
    try:
        ET.fromstring(xml.encode("utf-8"))
    except ET.ParseError as e:
        raise ValueError(f"generated JATS is not well-formed ({e}); check the markup in titles and captions") from None
    return xml


@dataclasses.dataclass
class OAPackage:
    """A written OA package and what is in it.

    Attributes:
        path: the ``.tar.gz``.
        pmcid: the article's PMCID (also the top folder inside the archive).
        nxml_member: archive member name of the article XML.
        xml: the article XML text.
        members: every member name, in archive order.
        figures: the figures, with ``graphic_file`` naming their image in the package.
        license: the license given.
    """

    path: Path
    pmcid: str
    nxml_member: str
    xml: str
    members: list[str]
    figures: list[JatsFigure]
    license: str | None

    def member(self, name: str) -> str:
        """Archive member name of a file in the package folder."""
        return f"{self.pmcid}/{name}"


def _figure_image(fig: JatsFigure, seed: int) -> bytes:
    if fig.image is not None:
        return fig.image
    from pathasst.testing.images import tissue_tile, to_bytes

    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF", "gif": "GIF"}.get(fig.image_ext.lower(), fig.image_ext.upper())
    return to_bytes(tissue_tile(192, seed), fmt)


def make_oa_package(
    tmp_dir: str | Path,
    pmcid: str = "PMC1234567",
    figures: Sequence[JatsFigure | Mapping[str, Any]] | None = None,
    license: str | None = "CC BY 4.0",
    *,
    nxml_name: str | None = None,
    thumbnails: bool = False,
    pdf: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
    **article_kwargs: Any,
) -> OAPackage:
    """Write ``<tmp_dir>/<pmcid>.tar.gz`` laid out as a PMC OA package.

    Layout: ``<pmcid>/<name>.nxml`` plus one image per figure graphic; optionally a small ``.gif``
    thumbnail per graphic (PMC ships both: an extractor must take the full-size file), a PDF of the
    article, and any ``extra_files`` (supplementary material).

    Args:
        tmp_dir: folder to write into.
        pmcid: the article's PMCID.
        figures: as :func:`make_jats_article`; each figure's ``image`` (default a tissue tile,
            a different crop per figure) is packaged as its ``graphic_file``.
        license: as :func:`make_jats_article`.
        nxml_name: file name of the XML; default a publisher-style name, never ``<pmcid>.nxml``,
            since real packages do not use that either.
        thumbnails: add ``<graphic>.gif`` thumbnails (64 px).
        pdf: add a one-page ``<name>.pdf``.
        extra_files: more files to add, name -> bytes.
        **article_kwargs: passed to :func:`make_jats_article`.
    """
    figs = [_as_figure(f, i) for i, f in enumerate(default_figures() if figures is None else figures)]
    xml = make_jats_article(pmcid, figs, license, **article_kwargs)
    stem = (nxml_name or f"jtp-{pmcid.removeprefix('PMC')[-6:]}.nxml").removesuffix(".nxml")
    files: dict[str, bytes] = {f"{stem}.nxml": xml.encode("utf-8")}
    for i, fig in enumerate(figs):
        if not fig.graphic_file:
            continue
        data = _figure_image(fig, seed=i)
        files[fig.graphic_file] = data
        if thumbnails:
            from PIL import Image

            from pathasst.testing.images import to_bytes

            thumb = Image.open(io.BytesIO(data)).convert("RGB")
            thumb.thumbnail((64, 64))
            files[fig.graphic_file.rsplit(".", 1)[0] + ".gif"] = to_bytes(thumb, "GIF")
    if pdf:
        import pymupdf

        doc = pymupdf.open()
        doc.new_page().insert_text((72, 72), "Article PDF", fontsize=12)
        files[f"{stem}.pdf"] = doc.tobytes()
        doc.close()
    files.update(extra_files or {})

    path = Path(tmp_dir) / f"{pmcid}.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    members = []
    # gzip stamps the time into its header unless told otherwise: mtime=0 keeps the bytes reproducible.
    with gzip.GzipFile(path, "wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{pmcid}/{name}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644  # fixed, for the same reason
            tar.addfile(info, io.BytesIO(data))
            members.append(info.name)
    return OAPackage(path, pmcid, f"{pmcid}/{stem}.nxml", xml, members, figs, license)


class JatsFactory:
    """The ``jats_factory`` fixture: ``jats_factory(pmcid, ...)`` gives XML text;
    ``jats_factory.package(pmcid, ...)`` writes an OA package under the fixture's folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, pmcid: str = "PMC1234567", figures: Sequence[JatsFigure | Mapping[str, Any]] | None = None, license: str | None = "CC BY 4.0", **kwargs: Any) -> str:
        return make_jats_article(pmcid, figures, license, **kwargs)

    def package(self, pmcid: str = "PMC1234567", figures: Sequence[JatsFigure | Mapping[str, Any]] | None = None, license: str | None = "CC BY 4.0", **kwargs: Any) -> OAPackage:
        return make_oa_package(self.root, pmcid, figures, license, **kwargs)

    Figure = JatsFigure
    default_figures = staticmethod(default_figures)


__all__ = [
    "JatsFactory",
    "JatsFigure",
    "LICENSE_URLS",
    "OAPackage",
    "default_figures",
    "make_jats_article",
    "make_oa_package",
]
