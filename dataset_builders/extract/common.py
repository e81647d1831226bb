"""What every source extractor shares: its config keys, caption and licence normalisation, the
PathCap record builder, and the runner (units, ``--shard K/N``, ``--num-proc``, the writer).

A source module (``pdf``, ``pmc``, ``web``, ``private``) defines one :class:`Source`:

- ``config``: a dataclass subclassing :class:`ExtractConfig` with the source's own keys;
- ``iter_units(paths, cfg)``: yields :class:`Unit` objects, one per input (a PDF, an article, a
  page, a manifest row); a unit's key is stable across runs (resume skips committed keys) and
  picklable (it travels to worker processes);
- ``extract_unit(unit, cfg) -> UnitResult``: the records and the rejections of one unit. It runs in
  a worker process; an exception it raises becomes one ledger line for the unit, and the run goes on.
- ``extract_chunks(unit, cfg) -> Iterator[UnitResult]`` (optional, for inputs that can be huge: a
  PDF atlas): the same in pieces, written as they come (:func:`write_chunks`); worker processes
  hand them over through files, one piece at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import traceback
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Optional

from pathasst.errors import ConfigError
from pathasst.inputs import in_shard, parse_shard, require_paths  # noqa: F401 (in_shard re-exported)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExtractConfig:
    """Keys every extractor shares (source configs subclass it, so keys stay flat).

    Attributes:
        num_proc: worker processes that extract units in parallel (1: in this process).
        shard: ``K/N`` to process only the K-th of N disjoint parts of the inputs (1-based), so N
            machines can split a corpus; each writes its own ``--out`` folder.
        max_side: longest image side kept, in pixels (larger images are downscaled).
        max_pixels: images declaring more pixels are rejected before decoding (decompression bombs).
        license: licence for inputs that do not state one (sources that require one ignore it).
        max_shard_mb: Parquet shard size in MB.
    """

    # keys that change how a run goes, not what it writes: a rerun may change them freely (they
    # are left out of the config hash that guards an output folder); sources add their own
    RUNTIME_KEYS: ClassVar[tuple[str, ...]] = ("num_proc", "max_shard_mb")

    num_proc: int = 1
    shard: Optional[str] = None
    max_side: int = 2048
    max_pixels: int = 178_956_970
    license: Optional[str] = None
    max_shard_mb: int = 500

    def __post_init__(self) -> None:
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1 (got {self.num_proc})")
        if self.max_side < 32:
            raise ValueError(f"max_side must be >= 32 pixels (got {self.max_side})")
        self.shard_index()  # validates the K/N form

    def shard_index(self) -> tuple[int, int] | None:
        """``(k, n)`` with 0-based k, or None when the whole input is processed."""
        return parse_shard(self.shard)


# --- text ------------------------------------------------------------------------------------

_LIGATURES = {
    "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
    "\ufb05": "st", "\ufb06": "st", "\u0132": "IJ", "\u0133": "ij", "\u0152": "OE", "\u0153": "oe",
}
_LIGATURE_RE = re.compile("|".join(_LIGATURES))
# "Figure 2.5:", "Fig. 3.", "FIGURE 12-4", "Plate 7", "Figure 3 (continued)", "Figs. 4a", "Fig. S2"
CAPTION_LABEL = re.compile(
    r"^\s*(?P<label>(?:fig(?:ure)?s?|plate|supplementary\s+fig(?:ure)?)\.?\s*"
    r"(?P<number>S?\d+(?:[.\-\u2013]\d+)*[A-Za-z]?(?:\s*[\u2013\-]\s*[A-Za-z]\b)?|[IVXLC]+\b))"
    r"\s*(?P<continued>\((?:continued|cont(?:'d|\.)?)\))?\s*[:.\-\u2013\u2014|]?\s*",
    re.IGNORECASE,
)


def expand_ligatures(text: str) -> str:
    """Replace typographic ligatures (ﬁ, ﬂ, ...) with their letters; the rest is untouched."""
    return _LIGATURE_RE.sub(lambda m: _LIGATURES[m.group(0)], text)


def clean_text(text: str) -> str:
    """Ligatures expanded, words hyphenated across line breaks joined, whitespace collapsed."""
    text = expand_ligatures(text).replace("\u00ad", "")  # soft hyphens
    text = re.sub(r"(\w)-\s*\n\s*(\w)", r"\1\2", text)
    return re.sub(r"\s+", " ", text).strip()


def split_caption_label(text: str) -> tuple[Optional[str], str, bool]:
    """``("Figure 2.5", "the caption text", continued)``; label None when the text has none."""
    match = CAPTION_LABEL.match(text)
    if not match:
        return None, text.strip(), False
    label = re.sub(r"\s+", " ", match["label"]).strip().rstrip(".")
    return label, text[match.end():].strip(), bool(match["continued"])


# --- licences --------------------------------------------------------------------------------

_CC_URL = re.compile(
    r"creativecommons\.org/(?:licenses/(?P<variant>[a-z\-]+)/(?P<version>[\d.]+)|"
    r"publicdomain/(?P<pd>zero|mark)/(?P<pdversion>[\d.]+))",
    re.IGNORECASE,
)
_CC_NAME = re.compile(
    r"\bCC[\s\-]?(?P<variant>BY(?:[\s\-](?:NC|SA|ND))*|0)\b(?:[\s\-]*(?P<version>\d\.\d))?", re.IGNORECASE
)


@dataclasses.dataclass(frozen=True)
class License:
    """A normalised licence: ``name`` like ``CC BY 4.0``, its ``url``, and the non-commercial flag."""

    name: str
    url: Optional[str]
    noncommercial: Optional[bool]


def normalize_license(text: Optional[str], url: Optional[str] = None) -> Optional[License]:
    """Recognise Creative Commons licences by URL or name; keep anything else as stated.

    Returns None when neither text nor url says anything.
    """
    for candidate in (url, text):
        match = _CC_URL.search(candidate or "")
        if match:
            if match["pd"]:
                name = "CC0 " + match["pdversion"] if match["pd"] == "zero" else "Public Domain Mark"
                return License(name, f"https://{match.group(0)}/", False)
            variant = match["variant"].upper()
            return License(f"CC {variant} {match['version']}", f"https://{match.group(0)}/",
                           "NC" in variant.split("-"))
    match = _CC_NAME.search(text or "")
    if match:
        variant = re.sub(r"[\s\-]+", "-", match["variant"].upper())
        if variant == "0":
            return License("CC0 1.0", "https://creativecommons.org/publicdomain/zero/1.0/", False)
        version = match["version"] or "4.0"
        path = variant.lower()
        return License(f"CC {variant} {version}", f"https://creativecommons.org/licenses/{path}/{version}/",
                       "NC" in variant.split("-"))
    words = re.search(r"creative\s+commons\s+attribution(?P<rest>[\w\s\-]*)", text or "", re.IGNORECASE)
    if words:
        rest = words["rest"].lower().replace(" ", "")
        variant = "BY" + "".join(f"-{code}" for word, code in (("noncommercial", "NC"), ("noderiv", "ND"),
                                                               ("sharealike", "SA")) if word in rest)
        version = re.search(r"\b(\d\.\d)\b", text or "")
        version = version[1] if version else None
        url = url or (f"https://creativecommons.org/licenses/{variant.lower()}/{version}/" if version else None)
        return License(f"CC {variant}" + (f" {version}" if version else ""), url, "NC" in variant.split("-"))
    stated = re.sub(r"\s+", " ", text or "").strip()
    if not stated and not url:
        return None
    noncommercial = True if re.search(r"non-?commercial", stated, re.IGNORECASE) else None
    return License(stated[:300] or url or "", url, noncommercial)


# --- HTTP ------------------------------------------------------------------------------------


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), or None."""
    import email.utils
    import time

    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


# --- records ---------------------------------------------------------------------------------


def figure_record(
    *,
    image: Any,
    caption_raw: str,
    source: str,
    source_id: str,
    figure_id: str,
    license: License,
    cfg: ExtractConfig,
    page: Optional[int] = None,
    page_bbox: Optional[list[float]] = None,
    figure_label: Optional[str] = None,
    meta: Optional[Mapping[str, Any]] = None,
    decoded: Optional[tuple[Any, str]] = None,
) -> dict[str, Any]:
    """A figure-level PathCap record: image normalised and hashed, caption cleaned and unlabelled.

    Args:
        decoded: ``(PIL image, "PNG" | "JPEG")`` when ``image`` is bytes the caller has just encoded
            from those RGB or L pixels itself (a PDF page rendered): they are then kept as they
            are and hashed from these pixels, not decoded again to be checked, unless they need
            a change (larger than ``max_side``, another mode).

    Raises:
        pathasst.images.ImageRejected: the image cannot be used (its reason goes to the ledger).
        ValueError: the caption is empty once cleaned.
    """
    from pathasst.images import NormalizedImage, image_phash, normalize_image

    raw = expand_ligatures(caption_raw).strip()
    label, text, continued = split_caption_label(clean_text(raw))
    if not text:
        raise ValueError("empty caption: nothing but a label")
    pixels, fmt = decoded or (None, None)
    if (pixels is not None and pixels.mode in ("RGB", "L") and fmt in ("PNG", "JPEG")
            and (not cfg.max_side or max(pixels.size) <= cfg.max_side)
            and (not cfg.max_pixels or pixels.width * pixels.height <= cfg.max_pixels)):
        img = NormalizedImage(bytes_=bytes(image), format=fmt, width=pixels.width, height=pixels.height,
                              mode=pixels.mode, source_mode=pixels.mode, converted=False, phash=image_phash(pixels))
    else:
        img = normalize_image(image, max_side=cfg.max_side, max_pixels=cfg.max_pixels, with_phash=True)
    meta = dict(meta or {})
    if continued:
        meta["continued"] = True
    return {
        "id": figure_id,
        "image": img.bytes_,
        "caption": text,
        "caption_raw": raw,
        "source": source,
        "source_id": source_id,
        "figure_id": figure_id,
        "subfigure_label": None,
        "bbox": None,
        "page": page,
        "license": license.name,
        "pathology_score": None,
        "width": img.width,
        "height": img.height,
        "phash": img.phash,
        "figure_label": figure_label or label,
        "page_bbox": [float(v) for v in page_bbox] if page_bbox is not None else None,
        "license_url": license.url,
        "noncommercial": license.noncommercial,
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False) if meta else None,
    }


# --- running ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Unit:
    """One input: ``key`` is its stable identity (resume and the ledger use it); ``payload`` is
    whatever the source needs to extract it (paths, URLs, a manifest row), and must pickle."""

    key: str
    payload: Any = None
    label: str = ""  # how to name it in messages (a file name, a URL)


@dataclasses.dataclass
class UnitResult:
    """What one unit gave: records to write, and ``(id, reason, info)`` rejections."""

    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rejects: list[tuple[str, str, dict[str, Any]]] = dataclasses.field(default_factory=list)

    def reject(self, item_id: str, reason: str, **info: Any) -> None:
        self.rejects.append((item_id, reason, info))


@dataclasses.dataclass(frozen=True)
class Source:
    """An extractor. ``extract_chunks`` (optional) gives a unit's result in pieces, for inputs too
    big to hold whole (a 1000-figure atlas): each piece holds the records of a few pages, the last
    one the rest and the unit's ledger lines. The runner then writes each piece as it comes
    (:func:`write_chunks`), and memory stays flat however big one input is."""

    name: str
    config: type
    iter_units: Callable[[list[str], Any], Iterable[Unit]]
    extract_unit: Callable[[Unit, Any], UnitResult]
    description: str = ""
    extract_chunks: Optional[Callable[[Unit, Any], Iterator[UnitResult]]] = None


def _safe_extract(source: Source, cfg: Any, unit: Unit) -> UnitResult:
    """Run in a worker: an exception becomes the unit's ledger line instead of killing the run."""
    try:
        return source.extract_unit(unit, cfg)
    except Exception as exc:  # noqa: BLE001 - any failure of one input must not stop the others
        return _failure(unit, exc)


def _failure(unit: Unit, exc: Exception) -> UnitResult:
    """The unit's one ledger line for an exception its extractor raised (call in the handler)."""
    result = UnitResult()
    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    result.reject(unit.key, f"extractor error: {type(exc).__name__}: {detail}",
                  where=traceback.format_exc(limit=-1).strip().splitlines()[-1][:300])
    return result


def _safe_chunks(source: Source, cfg: Any, unit: Unit) -> Iterator[UnitResult]:
    """``source.extract_chunks`` with the guarantee of :func:`_safe_extract`: a failure part way is
    the last piece, one ledger line for the unit (the pieces before it stand)."""
    try:
        yield from source.extract_chunks(unit, cfg)
    except Exception as exc:  # noqa: BLE001 - any failure of one input must not stop the others
        yield _failure(unit, exc)


def _spool_chunks(source: Source, cfg: Any, folder: str, unit: Unit) -> list[str]:
    """Run in a worker process: each piece pickled to a file of its own in ``folder`` as it is
    made, so that neither the worker nor the pipe back holds a whole big input. Returns the files."""
    import os
    import pickle
    import tempfile

    files = []
    for chunk in _safe_chunks(source, cfg, unit):
        fd, path = tempfile.mkstemp(suffix=".chunk", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(chunk, fh, protocol=pickle.HIGHEST_PROTOCOL)
        files.append(path)
    return files


def _unspool(files: list[str]) -> Iterator[UnitResult]:
    """The pieces of :func:`_spool_chunks`, one at a time, each file removed once read."""
    import os
    import pickle

    for path in files:
        try:
            with open(path, "rb") as fh:
                chunk = pickle.load(fh)
        finally:
            os.unlink(path)
        yield chunk
    # (a reader that stops early leaves the rest: the spool folder is removed with the run)


def write_chunks(writer: Any, unit: Unit, chunks: Iterable[UnitResult]) -> int:
    """Write one unit given in pieces; returns how many records it gave.

    Each piece but the last is a writer unit of its own, ``<unit key>#part<k>``, committed as it
    comes (its rows go to the part file, not to memory); the last piece is written as the unit
    itself, so the input counts as done (``is_done``, resume) only when every piece is in. A run
    stopped part way resumes the input from the start and skips the pieces already committed; the
    pieces of an input are deterministic, so none is written twice. One piece of look-ahead tells
    the last piece from the others.
    """
    total = 0
    pieces = iter(chunks)
    current = next(pieces, None)
    k = 0
    while current is not None:
        following = next(pieces, None)
        last = following is None
        key = unit.key if last else f"{unit.key}#part{k}"
        if last or not writer.is_done(key):
            with writer.unit(key):
                for record in current.records:
                    writer.add(record)
                for item_id, reason, info in current.rejects:
                    writer.reject(item_id, reason, **info)
                if last and not total and not current.records and not current.rejects:
                    writer.reject(unit.key, f"no figures: nothing to extract from {unit.label or unit.key}")
        total += len(current.records)
        current, k = following, k + 1
    return total


def _bounded_map(fn: Callable, items: Iterator, num_proc: int) -> Iterator[tuple[Any, Any]]:
    """Ordered ``(item, fn(item))`` with at most ``4 * num_proc`` units in flight.

    Why not ``Pool.imap``: it consumes the whole input iterator up front, and a corpus of millions
    of units would then sit in memory; this window keeps memory flat.
    """
    if num_proc <= 1:
        for item in items:
            yield item, fn(item)
        return
    window: deque = deque()
    with ProcessPoolExecutor(max_workers=num_proc) as pool:
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= 4 * num_proc:
                done_item, future = window.popleft()
                yield done_item, future.result()
        while window:
            done_item, future = window.popleft()
            yield done_item, future.result()


def run_extract(
    source: Source,
    cfg: ExtractConfig,
    paths: list[str],
    out: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    command: Optional[str] = None,
    progress: bool = True,
):
    """Extract every unit of ``paths`` into the PathCap dataset folder ``out``.

    Returns:
        the writer's :class:`~pathasst.writer.WriteSummary` (also written as ``summary.json``).
    """
    import functools

    from tqdm.auto import tqdm

    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    # local inputs must exist before the output folder is created (URLs and ids are checked later)
    require_paths([p for p in paths if "://" not in p and not re.match(r"^[a-z]+:[^/\\]", p)])
    shard = cfg.shard_index()
    spec = get_spec("pathcap")
    seen = skipped = 0
    queued: set[str] = set()  # keys handed to workers this run: an input listed twice runs once
    with DatasetWriter(
        out, spec, config=cfg, resume=resume, overwrite=overwrite,
        max_shard_bytes=cfg.max_shard_mb << 20, command=command, config_ignore=type(cfg).RUNTIME_KEYS,
    ) as writer:
        def todo() -> Iterator[Unit]:
            nonlocal seen, skipped
            for unit in source.iter_units(paths, cfg):
                if not in_shard(unit.key, shard):
                    continue
                seen += 1
                if writer.is_done(unit.key) or unit.key in queued:
                    skipped += 1
                    continue
                queued.add(unit.key)
                yield unit

        spool = None
        if source.extract_chunks is not None and cfg.num_proc > 1:
            import tempfile

            spool = tempfile.TemporaryDirectory(prefix=f"pathasst-extract-{source.name}-")
            work = functools.partial(_spool_chunks, source, cfg, spool.name)
        elif source.extract_chunks is not None:
            work = functools.partial(_safe_chunks, source, cfg)  # a generator: pieces made as written
        else:
            work = functools.partial(_safe_extract, source, cfg)
        bar = tqdm(desc=f"extract {source.name}", unit="input", disable=not progress)
        for unit, result in _bounded_map(work, todo(), cfg.num_proc):
            if source.extract_chunks is not None:
                write_chunks(writer, unit, _unspool(result) if spool is not None else result)
                bar.update(1)
                continue
            with writer.unit(unit.key):
                for record in result.records:
                    writer.add(record)
                for item_id, reason, info in result.rejects:
                    writer.reject(item_id, reason, **info)
                if not result.records and not result.rejects:
                    writer.reject(unit.key, f"no figures: nothing to extract from {unit.label or unit.key}")
            bar.update(1)
        bar.close()
        if spool is not None:
            spool.cleanup()
        summary = writer.finalize()
    if skipped:
        log.info("resumed: %d of %d inputs were already done", skipped, seen)
    return summary


def parse_paths_and_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Split CLI positionals into input paths and ``key=value`` overrides."""
    from pathlib import Path

    paths, overrides = [], []
    for item in items:
        key = item.split("=", 1)[0]
        if "=" in item and re.fullmatch(r"[A-Za-z_][\w.]*", key) and not Path(item).exists():
            overrides.append(item)
        else:
            paths.append(item)
    if not paths:
        raise ConfigError("no input given: pass at least one PATH")
    return paths, overrides
