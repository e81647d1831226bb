"""`pathasst extract web`: figure-caption pairs from web pages, fetched politely or read from disk.

PATH is a text file of URLs (one per line; blank lines and ``#`` comments skipped; a line may also
name a local HTML file, relative to the list), a URL, a local HTML file, or a folder of them
(``*.html``, ``*.htm``, ``*.xhtml``, recursively). One page is one unit, keyed
``web:<normalised URL>`` or, for a local file, ``web:file:<sha256 of its bytes>``.

Figures, in order of trust (``meta.caption_origin`` says which one paired each record):

1. ``figcaption``: a ``<figure>`` with a ``<figcaption>``. Several images in one captioned figure
   are one figure: they are laid out in a grid (reading order) and each panel's box is kept in
   ``meta.panels`` for the subfigure stage. A captioned figure without any ``<img>`` (an inline
   SVG, a table) goes to the ledger.
2. ``caption_class``: an element next to the image whose class or id says caption/legend
   (``wp-caption-text``, ``<div class="caption">``, ...).
3. ``label_paragraph`` / ``preceding_label``: the following (or else the preceding) paragraph
   opens with a figure label ("Figure 3.", "Fig. 2").
4. ``following_paragraph``: the paragraph right after the image, when it is short enough
   (``max_caption_chars``) and holds no image, heading or list.
5. ``table_cell``: an image alone in a table cell with the text of the cell below it (old atlases).
6. ``alt``: the image's ``alt`` (or ``title``) text, only when nothing else is there,
   ``allow_alt_text`` is on, the text has at least ``min_alt_chars`` and the image is not in
   navigation, header, footer or aside. Such records carry the flag ``alt_text_caption``.

Images declared smaller than ``min_image_side`` (``width``/``height`` attributes) are icons and
are not figures at all unless a figure caption claims them; a captioned image whose shorter side
turns out smaller goes to the ledger. A thumbnail wrapped in a link to an image file is replaced by
the linked full-size image (the thumbnail is the fallback), and the largest ``srcset`` candidate
is preferred to ``src``. Relative URLs resolve against ``<base href>`` or the page (a local
file's folder for a local page); ``data:`` URLs are decoded; ``file:`` URLs are read only for
local pages (a remote page must never make us read local files).

Politeness, on every request (page, image, robots.txt): the ``user_agent`` header; robots.txt
obeyed with :mod:`urllib.robotparser` (its Crawl-delay honoured too; a robots.txt answering 4xx
allows everything, one failing with 5xx or unreachable disallows everything, as RFC 9309 says);
``rate_limit_per_host`` seconds from the end of one request to a host to the start of the next
(the host's requests go one at a time); retries with
exponential backoff on 5xx and network errors, and after ``Retry-After`` on 429/503 (which pauses
the whole host). Redirects are followed by hand (at most 5) so each hop is checked and paced too.

Parallel runs (``--num-proc N``): the per-host clock and the robots.txt cache are files under one
folder per run, locked with ``flock``, so the N worker processes of one run share them and the
rate limit holds across them on one machine. Separate runs (``--shard K/N`` on other machines, or
two commands at once) do not know of each other: give each ``rate_limit_per_host * N`` if they
crawl the same hosts.

Licence: a figure's own ``rel="license"`` or Creative Commons link, else the page's
(``<link|a rel="license">``, ``<meta name="dc.rights|dcterms.license|...">``, JSON-LD ``license``,
a Creative Commons link or badge anywhere), through :func:`normalize_license`; else the config's
``license``; else ``unknown`` with the flag ``license_unknown`` in ``meta``.

Records: ``source="web"``, ``source_id`` the page URL (after redirects, with the URL asked for in
``meta.requested_url`` when they differ; a local page's ``file://`` URI), ``figure_id =
sha256(URL)[:16]/f<index>`` with the URL as listed (normalised, before redirects, so the id is as
stable as the unit key) and the index of the figure among the page's candidates in document order.
For a local page its content sha256 stands in for the URL, so the id does not depend on where the
file lies. robots.txt rules are matched on the first product token of ``user_agent``
(``pathasst`` by default), first matching rule wins (the stdlib parser: no ``*``/``$`` wildcards).
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import urllib.robotparser
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional
from urllib.parse import quote, unquote_to_bytes, urljoin, urlsplit, urlunsplit

from pathasst import __version__
from pathasst.dataset_builders.extract.common import (
    retry_after_seconds,
    CAPTION_LABEL,
    ExtractConfig,
    License,
    Source,
    Unit,
    UnitResult,
    figure_record,
    normalize_license,
)
from pathasst.errors import InputError
from pathasst.inputs import file_sha256

DEFAULT_USER_AGENT = (
    f"pathasst/{__version__} (pathology figure-caption extraction for open research datasets; "
    "obeys robots.txt)"
)
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".webp", ".bmp", ".jp2", ".avif")
_MAX_REDIRECTS = 5


@dataclasses.dataclass
class WebConfig(ExtractConfig):
    """Settings of ``pathasst extract web`` (flat keys; ``key=value`` on the command line).

    Attributes:
        user_agent: sent on every request; robots.txt rules are matched against its first word.
        rate_limit_per_host: seconds from the end of one request to a host to the start of the next.
        obey_robots: check robots.txt before each request (switch off only for your own sites).
        timeout: seconds to wait for a connection or for data.
        retries: further attempts after a 429, a 5xx or a network error.
        backoff: first wait before a retry, doubled each time (unless the server says Retry-After).
        max_retry_after: longest Retry-After (or Crawl-delay) honoured, in seconds; a server asking
            for more is given up on (a ledger line) rather than waited for.
        allow_alt_text: fall back on ``alt`` text when a page gives an image no caption (flagged).
        min_alt_chars: shortest alt text taken as a caption.
        min_image_side: images with a shorter side below this are icons, not figures.
        max_caption_chars: longest paragraph taken as the caption of the image before it.
        max_page_mb: pages larger than this are rejected.
        max_image_mb: image downloads larger than this are rejected.
    """

    RUNTIME_KEYS: ClassVar[tuple[str, ...]] = ExtractConfig.RUNTIME_KEYS + (
        "user_agent", "rate_limit_per_host", "timeout", "retries", "backoff", "max_retry_after",
    )

    user_agent: str = DEFAULT_USER_AGENT
    rate_limit_per_host: float = 1.0
    obey_robots: bool = True
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    max_retry_after: float = 300.0
    allow_alt_text: bool = True
    min_alt_chars: int = 15
    min_image_side: int = 64
    max_caption_chars: int = 1500
    max_page_mb: int = 20
    max_image_mb: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.user_agent.strip():
            raise ValueError("user_agent must not be empty")
        for name in ("rate_limit_per_host", "backoff", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds (got {self.timeout})")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0 (got {self.retries})")
        if self.min_image_side < 1 or self.max_page_mb < 1 or self.max_image_mb < 1:
            raise ValueError("min_image_side, max_page_mb and max_image_mb must be >= 1")


# --- URLs ------------------------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """The canonical spelling of an http(s) URL: lower-case scheme and host, no default port, no
    user info, no fragment, a path (at least ``/``) with upper-case percent escapes.

    Raises:
        ValueError: not an absolute http(s) URL.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url[:200]!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == {"http": 80, "https": 443}[scheme] else f"{host}:{port}"
    path = quote(parts.path or "/", safe="/:@!$&'()*+,;=-._~%")
    path = re.sub(r"%[0-9a-f]{2}", lambda m: m.group(0).upper(), path)
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def _host_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _short_url(url: str) -> str:
    if url.startswith("data:"):
        return url.split(",", 1)[0][:80] + ",..."
    return url if len(url) <= 500 else url[:500] + "..."


# --- fetching --------------------------------------------------------------------------------


class FetchError(Exception):
    """A resource that could not be had; ``reason`` (``"<kind>: <detail>"``) goes to the ledger."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class Fetched:
    url: str  # after redirects
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def charset(self) -> Optional[str]:
        found = re.search(r"charset\s*=\s*\"?([\w.:\-]+)", self.headers.get("content-type", ""), re.IGNORECASE)
        return found[1] if found else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - we follow by hand
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class HostState:
    """Per-host politeness state shared by the processes of one run: a host's clock (when its
    next request may start) and its robots.txt, as files under ``root`` guarded by ``flock``.

    Time is ``time.monotonic()``, one clock for every process of a machine (CLOCK_MONOTONIC).
    """

    def __init__(self, root: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._robots: dict[str, urllib.robotparser.RobotFileParser] = {}

    def _path(self, host: str, suffix: str) -> Path:
        return self.root / (hashlib.sha256(host.encode()).hexdigest()[:24] + suffix)

    def _locked(self, host: str, suffix: str):
        fh = open(self._path(host, suffix + ".lock"), "a+")
        fcntl.flock(fh, fcntl.LOCK_EX)
        return fh

    def _read_clock(self, clock: Path) -> float:
        try:
            return float(clock.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0.0

    @contextlib.contextmanager
    def slot(self, host: str, interval: float) -> Iterator[None]:
        """Hold the host for one request: wait until its clock allows, and after the request set
        the clock ``interval`` seconds ahead. With a rate limit the host is held (locked) for the
        whole request, so the processes of a run send it one request at a time, each starting at
        least ``interval`` after the previous one ended; without one, only pauses are waited out."""
        clock = self._path(host, ".clock")
        if interval <= 0:
            with self._locked(host, ".clock"):
                wait = self._read_clock(clock) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            yield
            return
        with self._locked(host, ".clock"):
            wait = self._read_clock(clock) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                yield
            finally:
                clock.write_text(repr(max(self._read_clock(clock), time.monotonic() + interval)))

    def pause(self, host: str, seconds: float) -> None:
        """No request to ``host`` before ``seconds`` from now (Retry-After, backoff)."""
        clock = self._path(host, ".clock")
        with self._locked(host, ".clock"):
            clock.write_text(repr(max(self._read_clock(clock), time.monotonic() + seconds)))

    def robots(self, host: str, fetch) -> urllib.robotparser.RobotFileParser:
        """The host's parsed robots.txt, fetched once per run (``fetch()`` -> (status, text))."""
        parser = self._robots.get(host)
        if parser is not None:
            return parser
        cache = self._path(host, ".robots")
        with self._locked(host, ".robots"):
            try:
                status, text = json.loads(cache.read_text())
            except (FileNotFoundError, ValueError):
                status, text = fetch()
                cache.write_text(json.dumps([status, text]))
        parser = urllib.robotparser.RobotFileParser()
        if status == 200:
            parser.parse(text.splitlines())
        elif 400 <= status < 500:
            parser.allow_all = True  # RFC 9309 2.3.1.3: unavailable -> no restriction
        else:
            parser.disallow_all = True  # RFC 9309 2.3.1.4: unreachable -> complete disallow
        if len(self._robots) > 4096:  # bounded: a crawl of a million hosts must not keep them all
            self._robots.clear()
        self._robots[host] = parser
        return parser


_STATES: dict[str, HostState] = {}  # by run folder: each process parses a host's robots.txt once
_OWN_STATE_DIR: Optional[str] = None


def _run_state_dir() -> str:
    """A folder for one run's host state, removed when the process that made it exits."""
    path = tempfile.mkdtemp(prefix="pathasst-web-")
    atexit.register(shutil.rmtree, path, True)
    return path


def _host_state(root: Optional[str]) -> HostState:
    """The run's shared state; a unit made without one (a direct call) gets this process's own."""
    global _OWN_STATE_DIR
    if not root or not Path(root).is_dir():
        if _OWN_STATE_DIR is None or not Path(_OWN_STATE_DIR).is_dir():
            _OWN_STATE_DIR = _run_state_dir()
        root = _OWN_STATE_DIR
    state = _STATES.get(root)
    if state is None:
        if len(_STATES) > 16:  # the runs of a long-lived process come and go
            _STATES.clear()
        state = _STATES[root] = HostState(root)
    return state




class Fetcher:
    """HTTP GET with robots.txt, the per-host rate limit, the user agent, retries and size caps."""

    def __init__(self, cfg: WebConfig, state: HostState):
        self.cfg = cfg
        self.state = state

    def _interval(self, host: str, robots) -> float:
        interval = self.cfg.rate_limit_per_host
        if robots is not None:
            delay = robots.crawl_delay(self.cfg.user_agent)
            if delay:
                interval = max(interval, min(float(delay), self.cfg.max_retry_after))
        return interval

    def _robots_for(self, url: str):
        host = _host_key(url)

        def fetch() -> tuple[int, str]:
            url = host + "/robots.txt"
            try:
                for _ in range(_MAX_REDIRECTS + 1):  # RFC 9309 2.3.1.2: follow up to five redirects
                    got = self._get_once_with_retries(url, 1 << 20, robots=None, accept_errors=True)
                    location = got.headers.get("location")
                    if got.status not in (301, 302, 303, 307, 308) or not location:
                        break
                    url = urljoin(url, location)
            except FetchError:
                return 599, ""  # unreachable after retries
            return got.status, got.body.decode("utf-8", "replace")

        return self.state.robots(host, fetch)

    def get(self, url: str, max_bytes: int) -> Fetched:
        """Fetch ``url``, following redirects; raises :class:`FetchError` with a ledger reason."""
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            robots = None
            if self.cfg.obey_robots:
                robots = self._robots_for(current)
                if not robots.can_fetch(self.cfg.user_agent, current):
                    raise FetchError(f"robots: disallowed by robots.txt: {_short_url(current)}")
            got = self._get_once_with_retries(current, max_bytes, robots=robots)
            if got.status in (301, 302, 303, 307, 308):
                location = got.headers.get("location")
                if not location:
                    raise FetchError(f"http {got.status}: redirect without Location: {_short_url(current)}")
                current = urljoin(current, location)
                if urlsplit(current).scheme not in ("http", "https"):
                    raise FetchError(f"bad redirect: to {_short_url(current)}")
                continue
            return got
        raise FetchError(f"too many redirects: {_short_url(url)}")

    def _get_once_with_retries(self, url: str, max_bytes: int, robots, accept_errors: bool = False) -> Fetched:
        """One resource, retried on 429, 5xx and network errors; a 4xx is an answer.

        With ``accept_errors`` (robots.txt) an error status is returned rather than raised.
        """
        host = _host_key(url)
        interval = self._interval(host, robots)
        last_reason, last_status = "", None
        for attempt in range(self.cfg.retries + 1):
            try:
                with self.state.slot(host, interval):
                    got = self._request(url, max_bytes)
            except FetchError as exc:
                if not exc.reason.startswith("network:"):
                    raise  # too large: retrying cannot help
                last_reason, last_status = exc.reason, None
                if attempt < self.cfg.retries:
                    self.state.pause(host, self.cfg.backoff * 2**attempt)
                continue
            if got.status == 429 or got.status >= 500:
                last_reason, last_status = f"http {got.status}: {_short_url(url)}", got.status
                if attempt >= self.cfg.retries:
                    break
                after = retry_after_seconds(got.headers.get("retry-after"))
                if after is not None and after > self.cfg.max_retry_after:
                    raise FetchError(f"http {got.status}: Retry-After {after:.0f} s exceeds max_retry_after "
                                     f"({self.cfg.max_retry_after:g} s): {_short_url(url)}")
                self.state.pause(host, after if after is not None else self.cfg.backoff * 2**attempt)
                continue
            if got.status >= 400 and not accept_errors:
                raise FetchError(f"http {got.status}: {_short_url(url)}")
            return got
        if accept_errors and last_status is not None:
            return Fetched(url, last_status, {}, b"")
        tries = self.cfg.retries + 1
        raise FetchError(f"{last_reason} (gave up after {tries} attempt{'s' if tries > 1 else ''})")

    def _request(self, url: str, max_bytes: int) -> Fetched:
        req = urllib.request.Request(url, headers={"User-Agent": self.cfg.user_agent, "Accept": "*/*"})
        try:
            resp = _OPENER.open(req, timeout=self.cfg.timeout)
        except urllib.error.HTTPError as exc:  # 3xx (not followed), 4xx, 5xx: an answer
            with exc:
                body = exc.read(max_bytes + 1) if exc.fp is not None else b""
            return Fetched(url, exc.code, {k.lower(): v for k, v in exc.headers.items()}, body[:max_bytes])
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"network: {type(reason).__name__}: {reason} ({_short_url(url)})") from None
        try:
            with resp:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                declared = headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(f"too large: {int(declared)} bytes > {max_bytes} ({_short_url(url)})")
                body = resp.read(max_bytes + 1)
        except (socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
            if isinstance(exc, FetchError):
                raise
            raise FetchError(f"network: {type(exc).__name__}: {exc} ({_short_url(url)})") from None
        if len(body) > max_bytes:
            raise FetchError(f"too large: over {max_bytes} bytes ({_short_url(url)})")
        return Fetched(resp.geturl(), resp.status, headers, body)


def _decode_data_url(url: str, max_bytes: int) -> bytes:
    head, sep, data = url[5:].partition(",")
    if not sep:
        raise FetchError("bad data URL: no comma")
    if head.lower().endswith(";base64"):
        try:
            out = base64.b64decode(re.sub(r"\s+", "", unquote_to_bytes(data).decode("ascii", "replace")), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise FetchError(f"bad data URL: {exc}") from None
    else:
        out = unquote_to_bytes(data)
    if len(out) > max_bytes:
        raise FetchError(f"too large: data URL of {len(out)} bytes > {max_bytes}")
    return out


# --- parsing ---------------------------------------------------------------------------------

# WHATWG Encoding Standard: these labels mean windows-1252 in HTML (0x80-0x9F are punctuation,
# not C1 controls, in every page that declares them).
_WHATWG = {"iso-8859-1": "windows-1252", "iso8859-1": "windows-1252", "latin1": "windows-1252",
           "latin-1": "windows-1252", "us-ascii": "windows-1252", "ascii": "windows-1252",
           "l1": "windows-1252", "iso_8859-1": "windows-1252"}
_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "td", "th", "dd", "dt", "figcaption", "blockquote", "section",
               "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "caption", "hr"}
_CAPTION_CLASS = re.compile(r"caption|legend|figcap", re.IGNORECASE)
_CHROME_TAGS = ("nav", "header", "footer", "aside")
_SECTION_TAGS = ("body", "html", "[document]", "article", "section", "main")
_CAPTION_TAGS = {"p", "div", "span", "small", "em", "i", "cite", "dd", "figcaption", "caption", "font", "b",
                 "strong", "center"}
_STRUCTURE_TAGS = ["img", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "figure", "picture", "svg"]
_META_LICENSE = {"dc.rights", "dcterms.rights", "dc.license", "dcterms.license", "license", "rights"}
_CC_BADGE = re.compile(
    r"(?:licensebuttons\.net|i\.creativecommons\.org|mirrors\.creativecommons\.org)/(?:l|p)/"
    r"(?P<variant>[a-z\-]+)/(?P<version>[\d.]+)", re.IGNORECASE)


def parse_html(data: bytes, charset: Optional[str] = None):
    """A BeautifulSoup tree (stdlib ``html.parser``: the same tree everywhere) decoded with the HTTP
    charset, else the page's declared one, else detected (UTF-8, then windows-1252)."""
    from bs4 import BeautifulSoup
    from bs4.dammit import EncodingDetector

    enc = charset or EncodingDetector.find_declared_encoding(data, is_html=True)
    if enc:
        enc = _WHATWG.get(enc.strip().lower(), enc.strip())
    return BeautifulSoup(data, "html.parser", from_encoding=enc)


def _text(el) -> str:
    """Visible text of an element: block boundaries become spaces, scripts and comments are left
    out, whitespace collapsed (HTML line breaks carry no hyphenation, so none is undone)."""
    from bs4.element import CData, NavigableString, Tag

    if el is None:
        return ""
    parts: list[str] = []
    for node in el.descendants:
        if isinstance(node, Tag):
            if node.name in _BLOCK_TAGS:
                parts.append(" ")
        elif type(node) in (NavigableString, CData):
            parts.append(str(node))
    return re.sub(r"\s+", " ", "".join(parts)).strip()


def _classes(el) -> str:
    cls = el.get("class") or []
    return " ".join(cls if isinstance(cls, list) else [cls]) + " " + str(el.get("id") or "")


def _int_attr(el, name: str) -> Optional[int]:
    found = re.match(r"\s*(\d+)\s*(?:px)?\s*$", str(el.get(name) or ""))
    return int(found[1]) if found else None


def _declared_tiny(img, min_side: int) -> bool:
    sizes = [v for v in (_int_attr(img, "width"), _int_attr(img, "height")) if v is not None]
    return bool(sizes) and min(sizes) < min_side


def _in_chrome(el) -> bool:
    for parent in el.parents:
        if parent.name in _CHROME_TAGS or (parent.get("role") if hasattr(parent, "get") else None) in (
                "navigation", "banner", "contentinfo"):
            return True
    return False


def _own_figure(el):
    """The nearest ``<figure>`` ancestor of ``el``."""
    return el.find_parent("figure")


def _figcaption(fig):
    """The figure's own caption (not one of a nested figure)."""
    for cap in fig.find_all("figcaption"):
        if _own_figure(cap) is fig:
            return cap
    return None


def _srcset_best(value: str) -> Optional[str]:
    best, best_score = None, -1.0
    for found in re.finditer(r"\s*([^\s,][^\s]*?)(?:\s+([\d.]+)([wx]))?\s*(?:,|$)", value or ""):
        url = found[1].rstrip(",")
        if not url:
            continue
        try:
            score = float(found[2]) * (1 if found[3] == "w" else 1000) if found[2] else 1000.0
        except ValueError:
            score = 0.0
        if score > best_score:
            best, best_score = url, score
    return best


def _image_urls(img, base: str) -> list[str]:
    """Where the image may be fetched, best first: a linked full-size file, the largest srcset
    candidate, src (or a lazy-loading attribute when src is missing or a placeholder)."""
    urls: list[str] = []
    link = img.find_parent("a")
    if link is not None and link.get("href") and len(link.find_all("img")) == 1:
        href = str(link["href"]).strip()
        if urlsplit(href).path.lower().endswith(_IMAGE_SUFFIXES):
            urls.append(href)
    if img.get("srcset"):
        best = _srcset_best(str(img["srcset"]))
        if best:
            urls.append(best)
    src = str(img.get("src") or "").strip()
    lazy = next((str(img[a]).strip() for a in ("data-src", "data-original", "data-lazy-src") if img.get(a)), "")
    if lazy and (not src or src.startswith("data:")):
        urls.append(lazy)
    if src:
        urls.append(src)
    out: list[str] = []
    for url in urls:
        absolute = url if url.startswith("data:") else urljoin(base, url)
        if absolute not in out:
            out.append(absolute)
    return out


def _block_of(img):
    """The largest element around ``img`` that holds nothing else: ``<p><a><img></a></p>`` -> p."""
    block = img
    while block.parent is not None and block.parent.name not in _SECTION_TAGS + ("figure", "td", "th", "li"):
        parent = block.parent
        if len(parent.find_all("img")) != 1 or _text(parent):
            break
        block = parent
    return block


def _sibling(el, forward: bool):
    from bs4.element import Tag

    node = el.next_sibling if forward else el.previous_sibling
    while node is not None:
        if isinstance(node, Tag):
            if node.name != "br" and (_text(node) or node.find("img")):
                return node
        elif str(node).strip():
            return None  # loose text between: not a caption element
        node = node.next_sibling if forward else node.previous_sibling
    return None


def _is_caption_like(el) -> bool:
    return el.name in _CAPTION_TAGS and el.find(_STRUCTURE_TAGS) is None


@dataclasses.dataclass
class Candidate:
    """One figure found on a page: its images (usually one), caption element and how it paired."""

    images: list[Any]
    caption: str
    origin: str
    element: Any = None  # the figure element (licence links inside it), or the image block
    caption_el: Any = None


def find_figures(soup, cfg: WebConfig) -> list[Candidate]:
    """Every figure of a page in document order (see the module docstring for the rules)."""
    out: list[Candidate] = []
    used_captions: set[int] = set()
    done: set[int] = set()
    for el in soup.find_all(["figure", "img"]):
        if el.name == "figure":
            cap = _figcaption(el)
            if cap is None:
                continue
            images = [img for img in el.find_all("img") if _own_figure(img) is el]
            if not images and el.find("figure") is not None:
                continue  # a gallery: its figures are the candidates, its caption their group_caption
            kept = [img for img in images if not _declared_tiny(img, cfg.min_image_side)] or images
            done.update(id(img) for img in images)
            used_captions.add(id(cap))
            out.append(Candidate(kept, _text(cap), "figcaption", el, cap))
            continue
        img = el
        if id(img) in done:
            continue
        done.add(id(img))
        if _declared_tiny(img, cfg.min_image_side) or _in_chrome(img):
            continue
        found = _adjacent_caption(img, cfg, used_captions)
        if found is not None:
            cap, origin = found
            used_captions.add(id(cap))
            out.append(Candidate([img], _text(cap), origin, _block_of(img), cap))
            continue
        alt = re.sub(r"\s+", " ", str(img.get("alt") or img.get("title") or "")).strip()
        if len(alt) >= cfg.min_alt_chars and len(alt.split()) >= 2 and not re.fullmatch(
                r"[\w\-. ]+\.(?:jpe?g|png|gif|tiff?|webp|bmp)", alt, re.IGNORECASE):
            out.append(Candidate([img], alt, "alt", _block_of(img)))
    return out


def _adjacent_caption(img, cfg: WebConfig, used: set[int]) -> Optional[tuple[Any, str]]:
    block = _block_of(img)
    nxt, prev = _sibling(block, True), _sibling(block, False)
    nxt = nxt if nxt is not None and id(nxt) not in used else None
    prev = prev if prev is not None and id(prev) not in used else None
    if nxt is not None and not nxt.find("img"):
        if _CAPTION_CLASS.search(_classes(nxt)):
            return nxt, "caption_class"
        inner = nxt.find(lambda t: _CAPTION_CLASS.search(_classes(t)) is not None)
        if inner is not None and _text(inner):
            return inner, "caption_class"
    if block.parent is not None and block.parent.name not in _SECTION_TAGS \
            and len(block.parent.find_all("img")) == 1:
        # <div class="wp-caption"><img><p class="wp-caption-text">...</p></div>, anywhere inside
        inner = block.parent.find(lambda t: t is not block and _CAPTION_CLASS.search(_classes(t)) is not None
                                  and not t.find("img") and bool(_text(t)))
        if inner is not None and id(inner) not in used and inner not in block.parents:
            return inner, "caption_class"
    if nxt is not None and _is_caption_like(nxt) and CAPTION_LABEL.match(_text(nxt)):
        return nxt, "label_paragraph"
    if prev is not None and _is_caption_like(prev) and CAPTION_LABEL.match(_text(prev)) \
            and len(_text(prev)) <= cfg.max_caption_chars:
        return prev, "preceding_label"
    if nxt is not None and _is_caption_like(nxt) and nxt.name not in ("div",) \
            and 0 < len(_text(nxt)) <= cfg.max_caption_chars:
        return nxt, "following_paragraph"
    cell = block.parent if block.parent is not None and block.parent.name in ("td", "th") else None
    if cell is not None and len(cell.find_all("img")) == 1 and not _text(cell):
        row = cell.find_parent("tr")
        below = row.find_next_sibling("tr") if row is not None else None
        if below is not None:
            cells = row.find_all(["td", "th"], recursive=False)
            under = below.find_all(["td", "th"], recursive=False)
            index = cells.index(cell) if cell in cells else 0
            target = under[index] if index < len(under) else (under[0] if len(under) == 1 else None)
            if target is not None and not target.find("img") and 0 < len(_text(target)) <= cfg.max_caption_chars \
                    and id(target) not in used:
                return target, "table_cell"
    return None


def _license_from_links(root, base: str) -> Optional[License]:
    for tag in root.find_all(["link", "a"], href=True):
        rel = tag.get("rel") or []
        rel = rel if isinstance(rel, list) else str(rel).split()
        if "license" in [r.lower() for r in rel]:
            lic = normalize_license(_text(tag) or None, urljoin(base, str(tag["href"])))
            if lic is not None:
                return lic
    for tag in root.find_all("a", href=True):
        href = str(tag["href"])
        if "creativecommons.org/licenses/" in href or "creativecommons.org/publicdomain/" in href:
            lic = normalize_license(None, href)
            if lic is not None:
                return lic
    for tag in root.find_all("img", src=True):
        found = _CC_BADGE.search(str(tag["src"]))
        if found:
            variant, version = found["variant"].lower(), found["version"]
            url = (f"https://creativecommons.org/publicdomain/{variant}/{version}/" if variant in ("zero", "mark")
                   else f"https://creativecommons.org/licenses/{variant}/{version}/")
            return normalize_license(None, url)
    return None


def page_license(soup, base: str) -> Optional[License]:
    """The licence a page states for itself, or None."""
    lic = _license_from_links(soup, base)
    if lic is not None:
        return lic
    for meta in soup.find_all("meta"):
        name = str(meta.get("name") or meta.get("property") or "").strip().lower()
        if name in _META_LICENSE and meta.get("content"):
            content = str(meta["content"]).strip()
            lic = normalize_license(None if content.startswith("http") else content,
                                    content if content.startswith("http") else None)
            if lic is not None:
                return lic
    for script in soup.find_all("script", type=re.compile(r"ld\+json", re.IGNORECASE)):
        try:
            data = json.loads(script.string or "")
        except (TypeError, ValueError):
            continue
        for item in data if isinstance(data, list) else [data]:
            value = item.get("license") if isinstance(item, dict) else None
            if isinstance(value, dict):
                value = value.get("url") or value.get("@id") or value.get("name")
            if isinstance(value, str) and value.strip():
                value = value.strip()
                lic = normalize_license(None if value.startswith("http") else value,
                                        value if value.startswith("http") else None)
                if lic is not None:
                    return lic
    return None


# --- units -----------------------------------------------------------------------------------



def _html_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(HTML_SUFFIXES):
                yield Path(dirpath) / name


def _file_unit(path: Path, state: str) -> Unit:
    return Unit(key=f"web:file:{file_sha256(path)}", payload={"file": str(path.resolve()), "state": state},
                label=path.name)


def _url_unit(text: str, state: str, where: str = "") -> Unit:
    try:
        url = normalize_url(text)
    except ValueError as exc:
        return Unit(key=f"web:invalid:{text[:200]}", payload={"error": f"invalid input: {exc}{where}"}, label=text[:80])
    return Unit(key=f"web:{url}", payload={"url": url, "state": state}, label=url)


def iter_units(paths: list[str], cfg: WebConfig) -> Iterator[Unit]:
    """One unit per page. Missing local inputs fail at once (before any work) with InputError."""
    missing = [p for p in paths if not re.match(r"https?://", p, re.IGNORECASE) and not Path(p).exists()]
    if missing:
        raise InputError(f"input not found: {', '.join(missing)}")
    return _units(paths, cfg)


def _units(paths: list[str], cfg: WebConfig) -> Iterator[Unit]:
    state = _run_state_dir()
    for item in paths:
        if re.match(r"https?://", item, re.IGNORECASE):
            yield _url_unit(item, state)
            continue
        path = Path(item)
        if path.is_dir():
            for file in _html_files(path):
                yield _file_unit(file, state)
        elif path.suffix.lower() in HTML_SUFFIXES:
            yield _file_unit(path, state)
        else:  # a list of URLs
            with open(path, "rb") as fh:
                for lineno, raw in enumerate(fh, 1):
                    line = raw.decode("utf-8", "replace").strip()
                    if not line or line.startswith("#"):
                        continue
                    local = path.parent / line
                    if not re.match(r"[a-z][a-z0-9+.\-]*://", line, re.IGNORECASE) and local.suffix.lower() in \
                            HTML_SUFFIXES and local.is_file():
                        yield _file_unit(local, state)
                    else:
                        yield _url_unit(line, state, f" ({path.name} line {lineno})")


# --- extraction ------------------------------------------------------------------------------


def _read_local(url: str, max_bytes: int) -> bytes:
    path = Path(urllib.request.url2pathname(urlsplit(url).path))
    if not path.is_file():
        raise FetchError(f"missing file: {path.name} (from {_short_url(url)})")
    if path.stat().st_size > max_bytes:
        raise FetchError(f"too large: {path.stat().st_size} bytes > {max_bytes} ({path.name})")
    return path.read_bytes()


def _fetch_image(url: str, fetcher: Fetcher, local_page: bool, max_bytes: int) -> bytes:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "data":
        return _decode_data_url(url, max_bytes)
    if scheme == "file":
        if not local_page:
            raise FetchError(f"refused: a web page may not point at a local file ({_short_url(url)})")
        return _read_local(url, max_bytes)
    if scheme in ("http", "https"):
        return fetcher.get(url, max_bytes).body
    raise FetchError(f"unsupported url: scheme {scheme or 'none'!r} ({_short_url(url)})")


def _montage(panels: list[Any], gutter: int = 8):
    """Lay several images of one figure out in reading order; returns (image, boxes xywh)."""
    from PIL import Image

    cols = max(1, round(len(panels) ** 0.5 + 0.49))
    height = sorted(p.height for p in panels)[len(panels) // 2]
    scaled = [p.resize((max(1, round(p.width * height / p.height)), height)) for p in panels]
    rows = [scaled[i:i + cols] for i in range(0, len(scaled), cols)]
    width = max(sum(p.width for p in row) + gutter * (len(row) - 1) for row in rows)
    canvas = Image.new("RGB", (width, height * len(rows) + gutter * (len(rows) - 1)), (255, 255, 255))
    boxes, y = [], 0
    for row in rows:
        x = (width - sum(p.width for p in row) - gutter * (len(row) - 1)) // 2
        for p in row:
            canvas.paste(p, (x, y))
            boxes.append([x, y, p.width, p.height])
            x += p.width + gutter
        y += height + gutter
    return canvas, boxes


def extract_unit(unit: Unit, cfg: WebConfig) -> UnitResult:
    """The figures of one page: records, and ledger lines for what could not be used."""
    from pathasst.images import ImageRejected, load_rgb

    result = UnitResult()
    payload = unit.payload or {}
    if payload.get("error"):
        result.reject(unit.key, payload["error"])
        return result
    fetcher = Fetcher(cfg, _host_state(payload.get("state")))
    meta_page: dict[str, Any] = {}
    if "file" in payload:
        path = Path(payload["file"])
        try:
            data = _read_local(path.as_uri(), cfg.max_page_mb << 20)
        except FetchError as exc:
            result.reject(unit.key, exc.reason, page=path.name)
            return result
        page_url, charset, local = path.as_uri(), None, True
        id_seed = unit.key.rsplit(":", 1)[1]
    else:
        try:
            got = fetcher.get(payload["url"], cfg.max_page_mb << 20)
        except FetchError as exc:
            result.reject(unit.key, exc.reason, page=payload["url"])
            return result
        if got.content_type and got.content_type not in ("text/html", "application/xhtml+xml"):
            result.reject(unit.key, f"not an HTML page: content-type {got.content_type}", page=got.url)
            return result
        data, charset, local = got.body, got.charset, False
        page_url = normalize_url(got.url)
        if page_url != payload["url"]:
            meta_page["requested_url"] = payload["url"]
        id_seed = hashlib.sha256(payload["url"].encode()).hexdigest()
    soup = parse_html(data, charset)
    base_tag = soup.find("base", href=True)
    base = urljoin(page_url, str(base_tag["href"])) if base_tag is not None else page_url
    title = _text(soup.title) if soup.title else ""
    if title:
        meta_page["page_title"] = title[:300]
    if soup.original_encoding:
        meta_page["page_encoding"] = soup.original_encoding
    page_lic = page_license(soup, base)
    config_lic = normalize_license(cfg.license) if cfg.license else None
    max_image = cfg.max_image_mb << 20

    for index, cand in enumerate(find_figures(soup, cfg)):
        figure_id = f"{id_seed[:16]}/f{index}"
        context = {"page": page_url, "caption": cand.caption[:200]}
        if not cand.images:
            kinds = sorted({t.name for t in cand.element.find_all(["svg", "table", "canvas", "video", "object",
                                                                   "iframe", "picture", "embed"])})
            result.reject(figure_id, "no image: a captioned <figure> holds no <img>"
                          + (f" ({', '.join(kinds)})" if kinds else ""), **context)
            continue
        if cand.origin == "alt" and not cfg.allow_alt_text:
            result.reject(figure_id, "alt text only: the image has no caption but its alt text, and "
                          "allow_alt_text is off", **context)
            continue
        panels, urls, problem, skipped = [], [], None, 0
        for img in cand.images:
            tried = _image_urls(img, base)
            if not tried:
                problem = "no image url: <img> without src"
                break
            data_img, error = None, None
            for url in tried:
                try:
                    data_img = _fetch_image(url, fetcher, local, max_image)
                    pil = load_rgb(data_img, max_pixels=cfg.max_pixels)
                    break
                except (FetchError, ImageRejected) as exc:
                    error = error or exc.reason  # the best candidate's failure explains the loss
                    data_img = None
            if data_img is None:
                problem = error
                context["image_url"] = _short_url(tried[0])
                break
            if min(pil.size) < cfg.min_image_side:
                skipped += 1
                last_tiny = pil.size
                continue
            panels.append((pil, data_img))
            urls.append(_short_url(url))
        if problem is None and not panels:
            problem = (f"tiny image: {last_tiny[0]}x{last_tiny[1]} pixels, shorter side < "
                       f"min_image_side {cfg.min_image_side} (an icon, not a figure)")
        if problem is not None:
            result.reject(figure_id, problem, **context)
            continue
        meta = dict(meta_page)
        meta["caption_origin"] = cand.origin
        meta["image_url"] = urls[0] if len(urls) == 1 else None
        flags = []
        if cand.origin == "alt":
            flags.append("alt_text_caption")
        lic = (_license_from_links(cand.element, base) if cand.element is not None and cand.element.name == "figure"
               else None)
        if lic is not None:
            meta["license_origin"] = "figure"
        elif page_lic is not None:
            lic, meta["license_origin"] = page_lic, "page"
        elif config_lic is not None:
            lic, meta["license_origin"] = config_lic, "config"
        else:
            lic, meta["license_origin"] = License("unknown", None, None), "none"
            flags.append("license_unknown")
        if flags:
            meta["flags"] = flags
        if cand.element is not None and cand.element.get("id"):
            meta["element_id"] = str(cand.element["id"])[:200]
        if skipped:
            meta["skipped_icons"] = skipped
        if cand.origin == "figcaption":
            outer = _own_figure(cand.element)
            group = _figcaption(outer) if outer is not None else None
            if group is not None:
                meta["group_caption"] = _text(group)[:cfg.max_caption_chars]
        if len(panels) == 1:
            image: Any = panels[0][1]
        else:
            image, boxes = _montage([p for p, _ in panels])
            if max(image.size) > cfg.max_side:  # scaled here so that the panel boxes stay exact
                scale = cfg.max_side / max(image.size)
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
                boxes = [[round(v * scale) for v in box] for box in boxes]
            meta["panels"] = [{"url": u, "box": b} for u, b in zip(urls, boxes)]
            meta["montage_size"] = list(image.size)
        meta = {k: v for k, v in meta.items() if v is not None}
        try:
            result.records.append(figure_record(
                image=image, caption_raw=cand.caption, source="web", source_id=page_url, figure_id=figure_id,
                license=lic, cfg=cfg, meta=meta))
        except (ImageRejected, ValueError) as exc:
            result.reject(figure_id, getattr(exc, "reason", None) or str(exc), **context)
    return result


SOURCE = Source(
    name="web",
    config=WebConfig,
    iter_units=iter_units,
    extract_unit=extract_unit,
    description="web pages: a file of URLs or local HTML files",
)
