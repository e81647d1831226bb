"""PubMed Central open-access articles -> figure-level PathCap records (``pathasst extract pmc``).

Inputs, each one :class:`~pathasst.dataset_builders.extract.common.Unit` per article:

- an OA package (``PMC1234567.tar.gz``, as PMC serves them: the ``.nxml`` article and its
  graphics in one folder);
- a folder, searched recursively for ``.nxml`` files, ``.xml`` files that are JATS articles (as
  PLOS ships them) or wrap them (PMC's ``<pmc-articleset>``, the Springer Nature API's
  ``<response>``), their graphics beside them, and OA packages;
- ``pmcid:PMC1234567`` (``--pmcid`` on the command line): the package link is asked of the PMC OA
  web service (``oa.fcgi?id=...``), the package downloaded with retries and cached in ``work_dir``.

Every ``<fig>`` becomes one record: its label, its caption (title and paragraphs, inline markup
flattened, citations kept as text), its graphic resolved to the file whatever the extension, the
article's ids (PMCID, PMID, DOI), journal, year, and the licence from ``<permissions>`` (the figure's
own, else the article's) normalised (``CC BY 4.0`` and its URL). Non-commercial licences are kept
and flagged (``noncommercial=True``) so a release can filter them; ``allow_noncommercial=false``
sends them to the ledger instead.

Safety, because OA packages and XML come from outside:

- XML: the prolog is read by expat with handlers that refuse any entity declaration (XXE, billion
  laughs, parameter entities) before the document is parsed, except an external parameter entity
  that is only declared, never referenced (it expands to nothing: the Springer Nature API's JATS names
  its DTDs that way); nothing is ever fetched (no DTD, no external entity); named HTML/MathML entities from the external JATS DTD (``&nbsp;``) map to their
  characters from a fixed table. Text that is not valid in its declared encoding is repaired
  (invalid bytes read as Windows-1252) and flagged in ``meta``.
- Archives: members are read in memory (``extractfile``), never extracted to disk. A package with
  a member that is an absolute path, climbs out with ``..``, is a symbolic or hard link, a device
  or a FIFO is refused as a whole, with the offending members named in the ledger. Members above
  ``max_member_mb`` are not read; archives above ``max_members`` members or ``max_package_mb``
  unpacked are refused.
- Folders: a graphic must resolve inside the input folder (symbolic links leading out are refused).
- Downloads: http(s) only (redirects too), bounded size, retries with exponential backoff that
  honour ``Retry-After`` on 429 and 5xx, a minimum interval between requests (NCBI asks for at most
  three per second).
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import html.entities
import http.client
import logging
import os
import posixpath
import random
import re
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional
from xml.parsers import expat

from pathasst.dataset_builders.extract.common import (
    retry_after_seconds,
    ExtractConfig,
    License,
    Source,
    Unit,
    UnitResult,
    figure_record,
    normalize_license,
)
from pathasst.errors import ConfigError, InputError
from pathasst.inputs import file_sha256

log = logging.getLogger(__name__)

DEFAULT_OA_SERVICE = "https://www.ncbi.nlm.nih.gov/pmc/utils/oa/oa.fcgi"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
MB = 1 << 20

# Extensions a graphic may be stored under, in order of preference when the href has none. PMC
# ships a small .gif thumbnail beside each full-size .jpg: gif comes after the full-size formats.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".jp2", ".gif")
# Extensions that mark an href as already naming a file type (stripped to find an alternative).
_KNOWN_EXTS = frozenset(IMAGE_EXTS) | {".eps", ".ps", ".pdf", ".svg", ".ai", ".emf", ".wmf", ".pict", ".psd"}
PACKAGE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
_PMCID = re.compile(r"^\s*(?:PMC)?(\d{1,10})\s*$", re.IGNORECASE)
_PMCID_IN_NAME = re.compile(r"^(PMC\d+)(?:\.tar(?:\.gz|\.bz2|\.xz)?|\.tgz)$", re.IGNORECASE)
_PMCID_IN_HEAD = re.compile(
    rb"<article-id[^>]*pub-id-type\s*=\s*[\"']pmc(?:id)?[\"'][^>]*>\s*(?:PMC)?(\d+)\s*</article-id>", re.IGNORECASE
)
# Named entities the JATS DTD defines (it is never loaded): HTML5's table covers them.
_NAMED_ENTITIES = {name[:-1]: value for name, value in html.entities.html5.items() if name.endswith(";")}
# Publication-date types in order of preference for the year.
_DATE_TYPES = ("epub", "pub", "ppub", "epub-ppub", "collection", "ecorrected", "pmc-release")
# Elements that separate words when a caption is flattened.
_BLOCK_TAGS = frozenset({
    "p", "title", "list", "list-item", "def-list", "def-item", "term", "def", "disp-formula",
    "disp-quote", "break", "table", "tr", "td", "th", "label",
})
_XML_SPACE = re.compile(r"[ \t\r\n]+")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))


# --- configuration ---------------------------------------------------------------------------


@dataclasses.dataclass
class PmcConfig(ExtractConfig):
    """Settings of ``pathasst extract pmc`` (plus the shared :class:`ExtractConfig` keys).

    Attributes:
        oa_service_url: the PMC OA web service endpoint (``oa.fcgi``); ``?id=PMC...`` is appended.
        user_agent: sent with every request.
        timeout: seconds to wait for a connection or for data before an attempt fails.
        retries: attempts after the first, on 429, 5xx, timeouts and dropped connections.
        backoff: seconds before the first retry; doubled each time (with a little jitter) unless
            the server says ``Retry-After``.
        max_backoff: ceiling of one computed wait, in seconds.
        max_retry_after: ceiling of a server's ``Retry-After``, in seconds.
        min_interval: seconds between two requests of one process (NCBI: at most 3 per second).
        ftp_to_https: fetch ``ftp://ftp.ncbi.nlm.nih.gov/...`` package links over HTTPS (the same
            tree is served there); other ftp links are refused.
        work_dir: where downloaded packages are cached (reruns do not download again); default
            ``$XDG_CACHE_HOME/pathasst/pmc`` (``~/.cache/pathasst/pmc``).
        max_member_mb: archive members and XML files larger than this are not read (a graphic
            that is larger goes to the ledger).
        max_package_mb: largest download, and largest total of member sizes in one archive.
        max_members: archives with more members are refused.
        allow_noncommercial: keep figures under non-commercial licences (flagged
            ``noncommercial=True``); false sends them to the ledger.
    """

    RUNTIME_KEYS: ClassVar[tuple[str, ...]] = ExtractConfig.RUNTIME_KEYS + (
        "user_agent", "timeout", "retries", "backoff", "max_backoff", "max_retry_after", "min_interval", "work_dir",
    )

    oa_service_url: str = DEFAULT_OA_SERVICE
    # no version number: the config is hashed with the output, and an upgrade must not change it
    user_agent: str = "pathasst (PMC open-access figure extractor)"
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    max_retry_after: float = 300.0
    min_interval: float = 0.34
    ftp_to_https: bool = True
    work_dir: Optional[str] = None
    max_member_mb: float = 256.0
    max_package_mb: float = 4096.0
    max_members: int = 20_000
    allow_noncommercial: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        scheme = urllib.parse.urlsplit(self.oa_service_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"oa_service_url must be an http(s) URL (got {self.oa_service_url!r})")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0 (got {self.retries})")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds (got {self.timeout})")
        for key in ("backoff", "max_backoff", "max_retry_after", "min_interval"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (got {getattr(self, key)})")
        for key in ("max_member_mb", "max_package_mb", "max_members"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0 (got {getattr(self, key)})")

    def cache_dir(self) -> Path:
        """The folder downloads are cached in (created on first use)."""
        if self.work_dir:
            return Path(self.work_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "pathasst" / "pmc"


# --- errors ----------------------------------------------------------------------------------


class PmcRejected(Exception):
    """An input (article, package, figure) that cannot give records; ``reason`` goes to the ledger."""

    def __init__(self, reason: str, **info: Any):
        super().__init__(reason)
        self.reason = reason
        self.info = info


class UnsafeXML(PmcRejected):
    """The XML declares entities (XXE, entity expansion) and is refused before it is parsed."""


class MalformedXML(PmcRejected):
    """The XML is not well-formed, even after repairing its text encoding."""


class UnsafePackage(PmcRejected):
    """The archive holds members that could escape the working folder, or exceeds the limits."""


class FetchError(PmcRejected):
    """The OA service or the package download failed (after retries where they make sense)."""


# --- safe XML --------------------------------------------------------------------------------


class _PrologDone(Exception):
    pass


def _refuse_declarations(data: bytes) -> None:
    """Read the prolog (up to the root element) with expat and refuse any entity declaration.

    Expat itself never fetches anything; what makes XML dangerous is a parser that expands
    declared entities (billion laughs, quadratic blowup) or resolves external ones (XXE). No
    declaration, no entity to expand or resolve: the document is then parsed without handlers.
    """
    parser = expat.ParserCreate()
    # Parameter-entity references are reported (to external_ref, which loads nothing) so that a
    # reference to a declared one is seen; the parse of the document itself never reads them.
    # ALWAYS, not UNLESS_STANDALONE: a document calling itself standalone="yes" is no exception.
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_ALWAYS)
    external_parameters: dict[str, str] = {}  # system id -> name of a declared external parameter entity

    def entity_decl(name, is_parameter, value, base, system_id, public_id, notation):
        if is_parameter and value is None and system_id:
            # Only declared, an external parameter entity expands to nothing and fetches nothing
            # (the Springer Nature API's JATS names the JATS and BITS DTDs this way and never
            # references them); a reference to it is refused in external_ref.
            external_parameters.setdefault(system_id, name)
            return
        kind = "parameter entity" if is_parameter else "entity"
        where = f"external: {system_id}" if system_id else "internal"
        raise UnsafeXML(
            f"unsafe XML: the DOCTYPE declares {kind} '{name}' ({where}); documents declaring entities "
            "are refused (XXE, entity expansion)"
        )

    def unparsed_entity_decl(name, base, system_id, public_id, notation):
        raise UnsafeXML(f"unsafe XML: the DOCTYPE declares unparsed entity '{name}' ({system_id}); refused")

    def external_ref(context, base, system_id, public_id):
        name = external_parameters.get(system_id)
        if name is not None:
            raise UnsafeXML(
                f"unsafe XML: the DOCTYPE declares parameter entity '{name}' (external: {system_id}) and "
                "references it; refused, not fetched"
            )
        if context is None:
            return 1  # the external DTD subset (<!DOCTYPE article SYSTEM "...dtd">): skipped, never read
        raise UnsafeXML(f"unsafe XML: reference to external entity {system_id!r}; refused, not fetched")

    def root_start(name, attrs):
        raise _PrologDone

    parser.EntityDeclHandler = entity_decl
    parser.UnparsedEntityDeclHandler = unparsed_entity_decl
    parser.ExternalEntityRefHandler = external_ref
    parser.StartElementHandler = root_start
    try:
        parser.Parse(data, True)
    except _PrologDone:
        return


def _parse_tree(data: bytes) -> ET.Element:
    parser = ET.XMLParser()  # the C parser: no handlers that fetch, nothing declared to expand
    parser.entity.update(_NAMED_ENTITIES)
    parser.feed(data)
    return parser.close()


def _cp1252_bytes(error: UnicodeDecodeError) -> tuple[str, int]:
    chunk = error.object[error.start:error.end]
    return chunk.decode("cp1252", errors="replace"), error.end


codecs.register_error("pathasst-cp1252", _cp1252_bytes)

_XML_DECL = re.compile(r"^\ufeff?\s*<\?xml[^>]*\?>")
_DECLARED_ENCODING = re.compile(rb"^(?:\xef\xbb\xbf)?\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._\-]+)[\"']")


def _repair_text(data: bytes) -> tuple[bytes, str] | None:
    """UTF-8 bytes of ``data`` when it is not valid in its declared encoding, else None.

    Bytes that are not UTF-8 are read as Windows-1252, one by one, so a file mostly in UTF-8 with
    a few Latin-1 bytes keeps its UTF-8 text intact (decoding the whole file as Latin-1 would
    garble it).
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None  # UTF-16 with a BOM: expat reads it; an error there is not about bytes
    found = _DECLARED_ENCODING.match(data)
    declared = found[1].decode("ascii") if found else "utf-8"
    try:
        codecs.lookup(declared)
        data.decode(declared)
        return None  # the bytes are fine in their encoding: the error is elsewhere
    except LookupError:
        pass  # an encoding Python does not know: repair as UTF-8 / Windows-1252
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="pathasst-cp1252")
    text = _XML_DECL.sub("", text, count=1)
    return text.encode("utf-8"), f"text not valid {declared}: invalid bytes read as Windows-1252"


def parse_xml(data: bytes) -> tuple[ET.Element, Optional[str]]:
    """Parse untrusted XML safely.

    Returns:
        ``(root, repair)``: the root element, and a note when the text encoding had to be
        repaired (None otherwise).

    Raises:
        UnsafeXML: the DOCTYPE declares entities.
        MalformedXML: the document is not well-formed.
    """
    try:
        _refuse_declarations(data)
        return _parse_tree(data), None
    except (expat.ExpatError, ET.ParseError) as first:
        repaired = _repair_text(data)
        if repaired is None:
            raise MalformedXML(f"malformed XML: {first}") from None
        fixed, note = repaired
    try:
        _refuse_declarations(fixed)
        return _parse_tree(fixed), note
    except (expat.ExpatError, ET.ParseError) as second:
        raise MalformedXML(f"malformed XML: {second} (after repairing the text encoding)") from None


# --- JATS ------------------------------------------------------------------------------------


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _href(el: ET.Element) -> Optional[str]:
    value = el.get(XLINK_HREF)
    if value is None:  # a file that binds xlink to another prefix, or none
        value = next((v for k, v in el.attrib.items() if _local(k) == "href"), None)
    return value.strip() if value and value.strip() else None


def _flatten(el: Optional[ET.Element]) -> str:
    """An element's text with inline markup dropped, words kept apart at block boundaries.

    ``<xref>`` and ``<ext-link>`` keep their text (a citation stays "[12]"); of an
    ``<alternatives>`` only one rendering counts (MathML over TeX), so a formula is not doubled.
    """
    if el is None:
        return ""
    parts: list[str] = []

    def walk(node: ET.Element) -> None:
        if node.text:
            parts.append(node.text)
        children = list(node)
        keep = None
        if _local(node.tag) == "alternatives" and len(children) > 1:
            keep = next((c for c in children if _local(c.tag) == "math"), children[0])
        for child in children:
            if keep is None or child is keep:
                block = _local(child.tag) in _BLOCK_TAGS
                if block:
                    parts.append(" ")
                walk(child)
                if block:
                    parts.append(" ")
            if child.tail:
                parts.append(child.tail)

    walk(el)
    # XML whitespace (indentation, line breaks) collapsed; a no-break space is text and stays
    return _XML_SPACE.sub(" ", "".join(parts)).strip(" ")


def normalize_pmcid(value: str) -> Optional[str]:
    """``PMC1234567`` from ``PMC1234567``, ``pmc1234567`` or ``1234567``; None if it is none of them."""
    found = _PMCID.match(value or "")
    return f"PMC{int(found[1])}" if found else None


@dataclasses.dataclass
class ArticleMeta:
    """What an article says about itself (``<front>``)."""

    pmcid: Optional[str] = None
    pmid: Optional[str] = None
    doi: Optional[str] = None
    journal: Optional[str] = None
    year: Optional[int] = None
    article_type: Optional[str] = None
    license: Optional[License] = None
    license_from: Optional[str] = None  # "copyright-statement" when no <license> states it


def _licence_of(permissions: Optional[ET.Element]) -> Optional[License]:
    """The licence stated in a ``<permissions>`` element (Creative Commons preferred when several)."""
    if permissions is None:
        return None
    found: list[License] = []
    for lic in permissions.iter("license"):
        url = _href(lic)
        if not url:
            ref = next((c for c in lic.iter() if _local(c.tag) == "license_ref"), None)
            url = (ref.text or "").strip() if ref is not None else None
        text = " ".join(_flatten(p) for p in lic.iter("license-p")) or _flatten(lic)
        if not url:  # the link is often only inside the prose: <ext-link xlink:href="...cc...">
            links = [_href(e) for e in lic.iter() if _local(e.tag) in ("ext-link", "uri")]
            url = next((u for u in links if u and "creativecommons.org" in u), None)
        license_type = lic.get("license-type") or ""
        if not text and not url and "cc" in license_type.lower():
            text = license_type
        normalized = normalize_license(text or None, url or None)
        if normalized is not None:
            found.append(normalized)
    if not found:
        # only <ali:license_ref> / <ali:free_to_read> outside a <license> element
        ref = next((c for c in permissions.iter() if _local(c.tag) == "license_ref"), None)
        if ref is not None and (ref.text or "").strip():
            found.append(normalize_license(None, ref.text.strip()))
    cc = [lic for lic in found if lic and lic.name.startswith(("CC", "Public Domain"))]
    return (cc or found or [None])[0]


_OPEN_LICENCE_WORDS = re.compile(r"creative\s*commons|creativecommons\.org|\bCC[\s\-]?(?:BY|0)\b", re.IGNORECASE)


def _licence_in_statements(holders: list[Optional[ET.Element]]) -> Optional[License]:
    """A Creative Commons licence named in a ``<copyright-statement>`` of ``holders``, else None.

    Older articles (NLM Archiving DTD 2.x, PLoS ONE 2007 for one) have no ``<license>``: the
    statement says "distributed under the terms of the Creative Commons Attribution License". Only
    a statement naming a Creative Commons licence counts; "(c) 2010 The Authors" is no licence.
    """
    for holder in holders:
        if holder is None:
            continue
        for statement in holder.findall("copyright-statement"):
            text = _flatten(statement)
            if not _OPEN_LICENCE_WORDS.search(text):
                continue
            links = [_href(e) for e in statement.iter() if _local(e.tag) in ("ext-link", "uri")]
            url = next((u for u in links if u and "creativecommons.org" in u), None)
            found = _CC_PHRASE.search(text)
            return normalize_license(found[0] if found else text, url)
    return None


# the licence's own words inside a longer statement ("This is an open-access article distributed
# under the terms of the Creative Commons Attribution License, which permits ...")
_CC_PHRASE = re.compile(
    r"creative\s+commons\s+(?:attribution[\w\s\-.]*?licen[cs]e|CC0|zero)(?:[^.,;]*?\b\d\.\d\b)?"
    r"|\bCC[\s\-]?(?:BY(?:[\s\-](?:NC|SA|ND))*|0)\b(?:[\s\-]*\d\.\d)?",
    re.IGNORECASE,
)


def article_meta(root: ET.Element) -> ArticleMeta:
    """Ids, journal, year, type and licence from the article's ``<front>``."""
    meta = ArticleMeta(article_type=root.get("article-type"))
    front = root.find("front")
    am = front.find("article-meta") if front is not None else None
    jm = front.find("journal-meta") if front is not None else None
    if am is not None:
        for aid in am.findall("article-id"):
            kind, value = (aid.get("pub-id-type") or "").lower(), (aid.text or "").strip()
            if not value:
                continue
            if kind in ("pmcid", "pmc") and meta.pmcid is None:
                meta.pmcid = normalize_pmcid(value)
            elif kind == "pmid" and meta.pmid is None:
                meta.pmid = value
            elif kind == "doi" and meta.doi is None:
                meta.doi = value
        years: dict[str, int] = {}
        for date in am.findall("pub-date"):
            kind = date.get("pub-type") or date.get("date-type") or ""
            found = re.search(r"\d{4}", date.findtext("year") or "")
            if found:
                years.setdefault(kind, int(found[0]))
        meta.year = next((years[k] for k in _DATE_TYPES if k in years), next(iter(years.values()), None))
        meta.license = _licence_of(am.find("permissions"))
        if meta.license is None:
            meta.license = _licence_in_statements([am.find("permissions"), am])
            meta.license_from = "copyright-statement" if meta.license is not None else None
    if jm is not None:
        title = jm.find("journal-title-group/journal-title")
        if title is None:
            title = jm.find("journal-title")
        journal = _flatten(title)
        if not journal:
            ids = {(j.get("journal-id-type") or ""): (j.text or "").strip() for j in jm.findall("journal-id")}
            journal = ids.get("nlm-ta") or ids.get("iso-abbrev") or next(iter(ids.values()), "")
        meta.journal = journal or None
    return meta


@dataclasses.dataclass
class FigureInfo:
    """One ``<fig>`` as found: no file resolved, nothing decoded yet."""

    fig_id: str
    label: Optional[str]
    caption_raw: str
    graphics: list[str]
    license: Optional[License]


def iter_figures(root: ET.Element) -> Iterator[FigureInfo]:
    """Every ``<fig>`` of the article (body, floats-group, appendices, boxes, sub-articles)."""
    seen: set[str] = set()
    for i, fig in enumerate(root.iter("fig"), 1):
        fig_id = (fig.get("id") or "").strip() or f"fig{i}"
        base, n = fig_id, 1
        while fig_id in seen:
            n += 1
            fig_id = f"{base}-{n}"
        seen.add(fig_id)
        label = _flatten(fig.find("label")) or None
        caption = fig.find("caption")
        parts: list[str] = []
        if caption is not None:
            blocks = [c for c in caption if _local(c.tag) in ("title", "p")]
            parts = [_flatten(b) for b in blocks] if blocks else [_flatten(caption)]
        graphics = [h for g in fig.iter("graphic") if (h := _href(g))]
        yield FigureInfo(
            fig_id=fig_id,
            label=label,
            caption_raw="\n".join(p for p in parts if p),
            graphics=graphics,
            license=_licence_of(fig.find("permissions")),
        )


# --- where graphics come from ----------------------------------------------------------------


class _Files:
    """Graphic lookup for one article: names are posix paths relative to the article's container."""

    def exists(self, name: str) -> Optional[str]:  # the stored name (case may differ), or None
        raise NotImplementedError

    def same_stem(self, stem: str) -> list[str]:
        return []

    def size(self, name: str) -> int:
        raise NotImplementedError

    def order(self, name: str) -> int:
        return 0

    def read(self, name: str) -> bytes:
        raise NotImplementedError


class _TarFiles(_Files):
    def __init__(self, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]):
        self.tar = tar
        self.members = members
        self.lower: dict[str, str] = {}
        for name in members:
            self.lower.setdefault(name.lower(), name)

    def exists(self, name: str) -> Optional[str]:
        return name if name in self.members else self.lower.get(name.lower())

    def same_stem(self, stem: str) -> list[str]:
        stem = stem.lower()
        base = posixpath.basename(stem)
        near = [n for low, n in self.lower.items() if posixpath.splitext(low)[0] == stem]
        if near:
            return near
        # the graphic may sit in another folder of the package than the XML
        return [n for low, n in self.lower.items() if posixpath.splitext(posixpath.basename(low))[0] == base]

    def size(self, name: str) -> int:
        return self.members[name].size

    def order(self, name: str) -> int:
        return self.members[name].offset_data

    def read(self, name: str) -> bytes:
        handle = self.tar.extractfile(self.members[name])
        if handle is None:  # not a regular file: refused by the scan already
            raise PmcRejected(f"graphic '{name}' is not a regular file in the package")
        with handle:
            return handle.read()


class _DirFiles(_Files):
    def __init__(self, root: Path):
        self.root = root
        self.real_root = os.path.realpath(root)

    def _path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> Optional[str]:
        path = self._path(name)
        if not path.is_file():
            return None
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.real_root]) != self.real_root:
            raise PmcRejected(f"unsafe graphic path: '{name}' leads out of the input folder (symbolic link)")
        return name

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def read(self, name: str) -> bytes:
        return self._path(name).read_bytes()


def resolve_graphic(href: str, base: str, files: _Files) -> str:
    """The stored name of the file an ``xlink:href`` means, whatever its extension.

    ``gr1`` finds ``gr1.jpg`` (or ``.png``, ``.tif``, ..., full-size formats before ``.gif``
    thumbnails); ``gr1.tif`` finds ``gr1.jpg`` when only that is there (PMC converts TIFF).

    Raises:
        PmcRejected: a remote link, a path leaving the package, or no such file.
    """
    if href.lower().startswith("info:doi/"):
        # PLOS writes its graphics as DOI URIs (info:doi/10.1371/journal.pone.0080518.g001), and
        # names the files after the DOI's last segment (journal.pone.0080518.g001.tif)
        href = href[len("info:doi/"):].rstrip("/").rsplit("/", 1)[-1]
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", href) or href.lower().startswith(("data:", "file:")):
        raise PmcRejected(f"remote graphic: '{href}' is a link, not a file in the package (not fetched)")
    rel = urllib.parse.unquote(href).replace("\\", "/")
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise PmcRejected(f"unsafe graphic path: '{href}' is absolute")
    target = posixpath.normpath(posixpath.join(base, rel)) if base else posixpath.normpath(rel)
    if target == ".." or target.startswith("../"):
        raise PmcRejected(f"unsafe graphic path: '{href}' leads out of the package folder")
    found = files.exists(target)
    if found:
        return found
    stem, ext = posixpath.splitext(target)
    if ext.lower() not in _KNOWN_EXTS:
        stem = target
    for candidate in IMAGE_EXTS:
        for variant in (candidate, candidate.upper()):
            found = files.exists(stem + variant)
            if found:
                return found
    others = files.same_stem(stem)
    if others:
        rank = {e: i for i, e in enumerate(IMAGE_EXTS)}
        return min(others, key=lambda n: (rank.get(posixpath.splitext(n)[1].lower(), len(rank)), n))
    raise PmcRejected(
        f"missing graphic: '{href}' is not in the package (no {posixpath.basename(stem)} with "
        f"{', '.join(IMAGE_EXTS)} or another extension)"
    )


# --- archives --------------------------------------------------------------------------------


def _member_problem(member: tarfile.TarInfo) -> Optional[str]:
    name = member.name
    if not name or "\x00" in name:
        return "empty or invalid name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]+", name):
        return "path traversal (..)"
    if member.issym():
        return f"symbolic link to '{member.linkname}'"
    if member.islnk():
        return f"hard link to '{member.linkname}'"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if not (member.isreg() or member.isdir()):
        return f"unsupported member type {member.type!r}"
    return None


def _clean_name(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/")).lstrip("/")


def _is_article_xml(name: str) -> bool:
    return name.lower().endswith(".nxml")


@dataclasses.dataclass
class Article:
    """One article to extract: its XML bytes and where its graphics are."""

    name: str  # for messages: the member or file name
    xml: bytes
    files: _Files
    base: str  # folder of the XML, relative to the files' root ('' at the root)
    pmcid_hint: Optional[str] = None  # from the package name or the --pmcid item


def scan_package(tar: tarfile.TarFile, cfg: PmcConfig, label: str) -> tuple[dict[str, tarfile.TarInfo], dict[str, bytes]]:
    """Check every member and read the article XML, in one pass over the archive.

    Nothing is written anywhere: members are only listed, and the XML read in memory.

    Returns:
        ``(members, xml)``: regular-file members by cleaned name, and the ``.nxml`` texts (the
        ``.xml`` ones when the package has no ``.nxml``).

    Raises:
        UnsafePackage: an unsafe member, too many members, or too much unpacked data.
    """
    limit = int(cfg.max_member_mb * MB)
    members: dict[str, tarfile.TarInfo] = {}
    texts: dict[str, bytes] = {}
    xml_members: list[str] = []
    unsafe: list[str] = []
    total = 0
    try:
        for count, member in enumerate(tar, 1):
            if count > cfg.max_members:
                raise UnsafePackage(f"package refused: more than max_members={cfg.max_members} members", package=label)
            total += max(member.size, 0)
            if total > cfg.max_package_mb * MB:
                raise UnsafePackage(
                    f"package refused: members hold more than max_package_mb={cfg.max_package_mb:g} MB unpacked",
                    package=label,
                )
            problem = _member_problem(member)
            if problem:
                unsafe.append(f"'{member.name}': {problem}")
                continue
            if member.isdir():
                continue
            name = _clean_name(member.name)
            if name in members:
                unsafe.append(f"'{member.name}': duplicate member name")
                continue
            members[name] = member
            low = name.lower()
            if low.endswith((".nxml", ".xml")):
                xml_members.append(name)
                if member.size <= limit:  # read now: the stream is positioned on it
                    handle = tar.extractfile(member)
                    if handle is not None:
                        texts[name] = handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UnsafePackage(f"corrupt package: {type(exc).__name__}: {exc}", package=label) from None
    if unsafe:
        shown = "; ".join(unsafe[:5]) + (f"; and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        raise UnsafePackage(
            f"unsafe package refused (nothing extracted): {len(unsafe)} member(s) could escape the working "
            f"folder or are not regular files: {shown}",
            package=label, members=[u for u in unsafe[:20]],
        )
    articles = [n for n in xml_members if _is_article_xml(n)] or xml_members
    for name in articles:
        if name not in texts:
            raise UnsafePackage(
                f"article XML '{name}' is {members[name].size / MB:.1f} MB > max_member_mb={cfg.max_member_mb:g}",
                package=label,
            )
    return members, {name: texts[name] for name in articles}


# --- downloads -------------------------------------------------------------------------------


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only: never to file:, ftp: or anything else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise FetchError(f"download refused: redirect to a non-http(s) URL {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER: Optional[urllib.request.OpenerDirector] = None
_LAST_REQUEST = 0.0


def _opener() -> urllib.request.OpenerDirector:
    global _OPENER
    if _OPENER is None:
        _OPENER = urllib.request.build_opener(_HttpOnlyRedirects())
    return _OPENER




def _throttle(cfg: PmcConfig) -> None:
    global _LAST_REQUEST
    wait = _LAST_REQUEST + cfg.min_interval - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    _LAST_REQUEST = time.monotonic()


def http_get(url: str, cfg: PmcConfig, *, dest: Optional[Path] = None, max_bytes: Optional[int] = None) -> bytes:
    """GET ``url`` with retries; the body, or (``dest`` given) write it there atomically.

    Retried: 429 and 5xx answers (waiting what ``Retry-After`` says, capped at
    ``max_retry_after``, else ``backoff * 2**attempt`` with jitter, capped at ``max_backoff``),
    timeouts, refused and dropped connections, short bodies. Not retried: other 4xx answers.

    Raises:
        FetchError: what went wrong, with the attempts made.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"download refused: {url!r} is not an http(s) URL")
    max_bytes = max_bytes if max_bytes is not None else int(cfg.max_package_mb * MB)
    attempts = cfg.retries + 1
    last = ""
    for attempt in range(attempts):
        wait: Optional[float] = None
        _throttle(cfg)
        request = urllib.request.Request(url, headers={"User-Agent": cfg.user_agent, "Accept-Encoding": "identity"})
        try:
            with _opener().open(request, timeout=cfg.timeout) as response:
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > max_bytes:
                    raise FetchError(f"download refused: {url} is {int(length) / MB:.1f} MB > limit {max_bytes / MB:.1f} MB")
                if dest is None:
                    body = response.read(max_bytes + 1)
                    if len(body) > max_bytes:
                        raise FetchError(f"download refused: {url} is larger than {max_bytes / MB:.1f} MB")
                    if length and length.isdigit() and len(body) != int(length):
                        raise http.client.IncompleteRead(body, int(length) - len(body))
                    return body
                _stream_to(response, dest, max_bytes, int(length) if length and length.isdigit() else None, url)
                return b""
        except urllib.error.HTTPError as exc:
            status, header = exc.code, exc.headers.get("Retry-After") if exc.headers else None
            exc.close()
            last = f"HTTP {status} {exc.reason}"
            if status not in _RETRY_STATUS:
                raise FetchError(f"download failed: {last} for {url}", status=status) from None
            asked = retry_after_seconds(header)
            if asked is not None:
                wait = min(asked, cfg.max_retry_after)
        except FetchError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            last = f"{type(exc).__name__}: {reason}"
        if attempt + 1 < attempts:
            if wait is None:
                wait = min(cfg.backoff * 2**attempt, cfg.max_backoff) * (1 + 0.1 * random.random())
            log.info("GET %s: %s; retry %d/%d in %.1f s", url, last, attempt + 1, cfg.retries, wait)
            time.sleep(wait)
    raise FetchError(f"download failed after {attempts} attempt(s): {last} for {url}")


def _stream_to(response: Any, dest: Path, max_bytes: int, length: Optional[int], url: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    size = 0
    try:
        with open(tmp, "wb") as fh:
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"download refused: {url} is larger than {max_bytes / MB:.1f} MB")
                fh.write(chunk)
        if length is not None and size != length:
            raise http.client.IncompleteRead(b"", length - size)
        os.replace(tmp, dest)  # atomic: a cached file is always complete
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclasses.dataclass
class OARecord:
    """The OA web service's answer for one article."""

    pmcid: str
    package_url: str
    license: Optional[str]


def parse_oa_response(body: bytes, pmcid: str, service_url: str, ftp_to_https: bool = True) -> OARecord:
    """The ``tgz`` link of ``pmcid`` in an ``oa.fcgi`` answer.

    Raises:
        FetchError: the service reports an error (not open access, unknown id) or has no package.
    """
    try:
        root, _ = parse_xml(body)
    except PmcRejected as exc:
        raise FetchError(f"OA service answer for {pmcid} is not usable XML: {exc.reason}") from None
    error = root.find("error")
    if error is not None:
        code = error.get("code") or "error"
        raise FetchError(f"OA service: {code}: {(error.text or '').strip()}", oa_error=code)
    for record in root.iter("record"):
        if normalize_pmcid(record.get("id") or "") not in (pmcid, None):
            continue
        for link in record.iter("link"):
            if (link.get("format") or "").lower() != "tgz" or not link.get("href"):
                continue
            url = urllib.parse.urljoin(service_url, link.get("href").strip())
            parts = urllib.parse.urlsplit(url)
            if parts.scheme == "ftp" and ftp_to_https and parts.hostname == "ftp.ncbi.nlm.nih.gov":
                url = urllib.parse.urlunsplit(("https",) + tuple(parts[1:]))
            return OARecord(pmcid, url, record.get("license"))
        raise FetchError(f"OA service: no tgz package for {pmcid} (formats: "
                         f"{', '.join(sorted({l.get('format') or '?' for l in record.iter('link')})) or 'none'})")
    raise FetchError(f"OA service: no record for {pmcid} in its answer")


def fetch_package(pmcid: str, cfg: PmcConfig) -> tuple[Path, OARecord]:
    """The article's OA package, from the cache in ``work_dir`` or downloaded into it.

    The service's answer is cached beside the package, so a rerun makes no request at all.
    """
    cache = cfg.cache_dir() / "oa"
    package, answer = cache / f"{pmcid}.tar.gz", cache / f"{pmcid}.oa.xml"
    sep = "&" if "?" in cfg.oa_service_url else "?"
    service = f"{cfg.oa_service_url}{sep}id={urllib.parse.quote(pmcid)}"
    body = answer.read_bytes() if answer.is_file() else http_get(service, cfg, max_bytes=16 * MB)
    record = parse_oa_response(body, pmcid, cfg.oa_service_url, cfg.ftp_to_https)
    if not answer.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = answer.with_name(f".{answer.name}.{os.getpid()}.part")
        tmp.write_bytes(body)
        os.replace(tmp, answer)
    if not package.is_file():
        http_get(record.package_url, cfg, dest=package)
    return package, record


# --- units -----------------------------------------------------------------------------------



def _pmcid_in_xml_head(path: Path) -> Optional[str]:
    with open(path, "rb") as fh:
        found = _PMCID_IN_HEAD.search(fh.read(1 << 16))
    return f"PMC{int(found[1])}" if found else None


def _is_package(path: Path) -> bool:
    return path.name.lower().endswith(PACKAGE_SUFFIXES)


def _file_unit(path: Path, root: Path) -> Unit:
    if _is_package(path):
        found = _PMCID_IN_NAME.match(path.name)
        pmcid = normalize_pmcid(found[1]) if found else None
        key = f"pmc:{pmcid}" if pmcid else f"pmc:sha256:{file_sha256(path)}"
        return Unit(key, {"kind": "package", "path": str(path), "pmcid": pmcid}, label=path.name)
    pmcid = _pmcid_in_xml_head(path)
    key = f"pmc:{pmcid}" if pmcid else f"pmc:sha256:{file_sha256(path)}"
    return Unit(key, {"kind": "nxml", "path": str(path), "root": str(root)}, label=path.name)


_JATS_HEAD = re.compile(rb"<!DOCTYPE\s+article\b|<article[\s>]")


def _is_jats_xml(path: Path) -> bool:
    """Is ``path`` (an ``.xml`` file) a JATS article? Publishers (PLOS, eLife) ship them as ``.xml``."""
    try:
        with open(path, "rb") as fh:
            return _JATS_HEAD.search(fh.read(1 << 16)) is not None
    except OSError:
        return False


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):  # symbolic links to folders are not followed
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            lower = name.lower()
            if lower.endswith(".nxml") or _is_package(path) or (lower.endswith(".xml") and _is_jats_xml(path)):
                yield path


def iter_units(paths: list[str], cfg: PmcConfig) -> Iterator[Unit]:
    """One unit per article; inputs are checked before the first unit is handed out.

    Raises:
        InputError: a path that does not exist or is not a package, an XML file or a folder.
        ConfigError: a ``pmcid:`` item that is not a PMCID.
    """
    items: list[tuple[str, Any]] = []
    missing, wrong = [], []
    for item in paths:
        if item.startswith("pmcid:"):
            pmcid = normalize_pmcid(item[len("pmcid:"):])
            if pmcid is None:
                raise ConfigError(f"--pmcid {item[len('pmcid:'):]!r} is not a PMCID (like PMC1234567)")
            items.append(("pmcid", pmcid))
            continue
        path = Path(item).expanduser()
        if not path.exists():
            missing.append(item)
        elif path.is_dir():
            items.append(("dir", path))
        elif _is_package(path) or path.name.lower().endswith((".nxml", ".xml")):
            items.append(("file", path))
        else:
            wrong.append(item)
    if missing:
        raise InputError(f"input not found: {', '.join(missing)}")
    if wrong:
        raise InputError(
            f"not an OA package ({', '.join(PACKAGE_SUFFIXES)}), a .nxml/.xml article or a folder: {', '.join(wrong)}"
        )
    return _units(items)


def _units(items: list[tuple[str, Any]]) -> Iterator[Unit]:
    seen: dict[str, str] = {}
    for kind, value in items:
        if kind == "pmcid":
            units: Iterator[Unit] = iter([Unit(f"pmc:{value}", {"kind": "pmcid", "pmcid": value}, label=value)])
        elif kind == "dir":
            units = (_file_unit(path, value) for path in _walk(value))
        else:
            units = iter([_file_unit(value, value.parent)])
        for unit in units:
            if unit.key in seen:
                log.warning("%s is the same article as %s (%s): extracted once", unit.label, seen[unit.key], unit.key)
                continue
            seen[unit.key] = unit.label
            yield unit


# --- extraction ------------------------------------------------------------------------------


def _licence_for(fig: FigureInfo, meta: ArticleMeta, oa_license: Optional[str], cfg: PmcConfig) -> tuple[License, str]:
    if fig.license is not None:
        return fig.license, "figure"
    if meta.license is not None:
        return meta.license, "article"
    if oa_license:
        return normalize_license(oa_license), "oa-service"
    if cfg.license:
        return normalize_license(cfg.license), "config"
    raise PmcRejected("no licence: neither the figure nor the article states one (<permissions>); "
                      "set license=... to assign one")


def extract_article(article: Article, cfg: PmcConfig, result: UnitResult, unit_key: str,
                    oa_license: Optional[str] = None) -> None:
    """Append the records and rejections of the article's figures to ``result``.

    A document whose root wraps articles (PMC's ``<pmc-articleset>``, the Springer Nature API's
    ``<response>``) gives the figures of each ``<article>`` it holds, each with that article's ids.
    """
    try:
        root, repair = parse_xml(article.xml)
    except PmcRejected as exc:
        result.reject(unit_key, exc.reason, file=article.name)
        return
    roots = article_elements(root)
    if not roots:
        result.reject(unit_key, f"not a JATS article: root element <{_local(root.tag)}> holds no <article>",
                      file=article.name)
        return
    for index, element in enumerate(roots):
        fallback = hashlib.sha256(article.xml).hexdigest()[:16] + (f"-{index + 1}" if len(roots) > 1 else "")
        _extract_article_element(element, article, cfg, result, unit_key, oa_license, repair,
                                 hint=article.pmcid_hint if len(roots) == 1 else None, fallback=fallback)


def article_elements(root: ET.Element) -> list[ET.Element]:
    """The JATS ``<article>`` elements of a document: the root, or those a wrapper holds.

    A wrapper is what a service puts around articles: PMC's E-utilities answer with
    ``<pmc-articleset>``, the Springer Nature API with ``<response><records><article>``. Articles are
    not nested in JATS (``<sub-article>`` is another element), so the outermost ones are taken.
    """
    if _local(root.tag) == "article":
        return [root]
    found: list[ET.Element] = []

    def walk(node: ET.Element) -> None:
        for child in node:
            if _local(child.tag) == "article":
                found.append(child)
            else:
                walk(child)

    walk(root)
    return found


def _extract_article_element(root: ET.Element, article: Article, cfg: PmcConfig, result: UnitResult, unit_key: str,
                             oa_license: Optional[str], repair: Optional[str], *, hint: Optional[str],
                             fallback: str) -> None:
    meta = article_meta(root)
    pmcid = meta.pmcid or hint
    if pmcid is None:
        pmcid = f"doi:{meta.doi}" if meta.doi else f"sha256:{fallback}"
    figures = list(iter_figures(root))
    if not figures:
        result.reject(unit_key, f"no figures: article {pmcid} has no <fig> element", file=article.name)
        return

    # Resolve every graphic first, then read them in archive order (one forward pass over a
    # .tar.gz, one raw image in memory at a time); outcomes are reported in figure order.
    outcomes: list[Optional[tuple[str, Any]]] = [None] * len(figures)
    todo: list[tuple[int, str, License, str]] = []
    for index, fig in enumerate(figures):
        try:
            if not fig.caption_raw.strip():
                raise PmcRejected("no caption: the <fig> has no caption text")
            if not fig.graphics:
                raise PmcRejected("no graphic: the <fig> has no <graphic xlink:href>")
            license, scope = _licence_for(fig, meta, oa_license, cfg)
            if license.noncommercial and not cfg.allow_noncommercial:
                raise PmcRejected(f"non-commercial licence {license.name} (allow_noncommercial=false)")
            name, first_error = None, None
            for href in fig.graphics:  # several <graphic> (alternatives): the first that resolves
                try:
                    name = resolve_graphic(href, article.base, article.files)
                    break
                except PmcRejected as exc:
                    first_error = first_error or exc
            if name is None:
                raise first_error  # type: ignore[misc]
            size = article.files.size(name)
            if size > cfg.max_member_mb * MB:
                raise PmcRejected(f"graphic too large: '{name}' is {size / MB:.1f} MB > max_member_mb={cfg.max_member_mb:g}")
        except PmcRejected as exc:
            outcomes[index] = ("reject", (exc.reason, fig.graphics[0] if fig.graphics else None))
            continue
        todo.append((index, name, license, scope))

    from pathasst.images import ImageRejected

    for index, name, license, scope in sorted(todo, key=lambda t: (article.files.order(t[1]), t[0])):
        fig = figures[index]
        try:
            data = article.files.read(name)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            outcomes[index] = ("reject", (f"unreadable graphic: '{name}': {type(exc).__name__}: {exc}", name))
            continue
        record_meta: dict[str, Any] = {
            "pmid": meta.pmid,
            "doi": meta.doi,
            "journal": meta.journal,
            "year": meta.year,
            "graphic": name[len(article.base) + 1:] if article.base and name.startswith(article.base + "/") else name,
            "article_type": meta.article_type,
        }
        if scope != "article":
            record_meta["license_from"] = scope
        elif meta.license_from:
            record_meta["license_from"] = meta.license_from
        if repair:
            record_meta["text_repaired"] = repair
        try:
            outcomes[index] = ("record", figure_record(
                image=data,
                caption_raw=fig.caption_raw,
                source="pubmed",
                source_id=pmcid,
                figure_id=f"{pmcid}/{fig.fig_id}",
                license=license,
                cfg=cfg,
                figure_label=fig.label,
                meta={k: v for k, v in record_meta.items() if v is not None},
            ))
        except ImageRejected as exc:
            outcomes[index] = ("reject", (exc.reason, name))
        except ValueError as exc:  # an empty caption once the label is taken off
            outcomes[index] = ("reject", (str(exc), name))
        del data

    for fig, outcome in zip(figures, outcomes):
        kind, value = outcome  # type: ignore[misc]
        if kind == "record":
            result.records.append(value)
        else:
            reason, graphic = value
            result.reject(f"{pmcid}/{fig.fig_id}", reason, source_id=pmcid, figure_label=fig.label, graphic=graphic)


def _package_articles(tar: tarfile.TarFile, cfg: PmcConfig, label: str, pmcid_hint: Optional[str]) -> list[Article]:
    members, texts = scan_package(tar, cfg, label)
    if not texts:
        raise UnsafePackage(f"no article: the package has no .nxml file ({len(members)} members)", package=label)
    files = _TarFiles(tar, members)
    hint = pmcid_hint if len(texts) == 1 else None
    return [Article(name, data, files, posixpath.dirname(name), hint) for name, data in texts.items()]


def _extract_package(path: Path, cfg: PmcConfig, unit: Unit, result: UnitResult, pmcid_hint: Optional[str],
                     oa_license: Optional[str] = None) -> None:
    try:
        tar = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UnsafePackage(f"corrupt package: {type(exc).__name__}: {exc}", package=path.name) from None
    with tar:
        for article in _package_articles(tar, cfg, path.name, pmcid_hint):
            extract_article(article, cfg, result, unit.key, oa_license)


def extract_unit(unit: Unit, cfg: PmcConfig) -> UnitResult:
    """Records and rejections of one input: a package, an ``.nxml`` file or a PMCID."""
    result = UnitResult()
    payload = unit.payload
    try:
        if payload["kind"] == "pmcid":
            path, oa = fetch_package(payload["pmcid"], cfg)
            try:
                _extract_package(path, cfg, unit, result, payload["pmcid"], oa.license)
            except UnsafePackage as exc:
                if exc.reason.startswith("corrupt package"):
                    path.unlink(missing_ok=True)  # a broken download must not stay cached
                raise
        elif payload["kind"] == "package":
            _extract_package(Path(payload["path"]), cfg, unit, result, payload.get("pmcid"))
        else:
            path, root = Path(payload["path"]), Path(payload["root"])
            size = path.stat().st_size
            if size > cfg.max_member_mb * MB:
                raise PmcRejected(f"article XML is {size / MB:.1f} MB > max_member_mb={cfg.max_member_mb:g}")
            rel_dir = path.parent.relative_to(root).as_posix()
            article = Article(path.name, path.read_bytes(), _DirFiles(root), "" if rel_dir == "." else rel_dir)
            extract_article(article, cfg, result, unit.key)
    except PmcRejected as exc:
        result.reject(unit.key, exc.reason, **exc.info)
    return result


SOURCE = Source(
    name="pmc",
    config=PmcConfig,
    iter_units=iter_units,
    extract_unit=extract_unit,
    description="PubMed Central open-access articles: OA packages, folders of .nxml, or PMCIDs via the OA service",
)

__all__ = [
    "Article",
    "ArticleMeta",
    "FetchError",
    "FigureInfo",
    "MalformedXML",
    "OARecord",
    "PmcConfig",
    "PmcRejected",
    "SOURCE",
    "UnsafePackage",
    "UnsafeXML",
    "article_elements",
    "article_meta",
    "extract_article",
    "extract_unit",
    "fetch_package",
    "http_get",
    "iter_figures",
    "iter_units",
    "normalize_pmcid",
    "parse_oa_response",
    "parse_xml",
    "resolve_graphic",
    "scan_package",
]
