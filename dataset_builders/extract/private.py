"""`pathasst extract private`: figure-caption records from a private annotated collection.

PATH is a manifest file, or a folder searched recursively for manifests (``*.csv``, ``*.tsv``,
``*.jsonl``, ``*.ndjson``) and Labelme files (``*.json``).

**Manifests.** One row per image; column names are matched case-insensitively, with aliases:

==============  ===========================================  ==========================================
column          aliases                                      meaning
==============  ===========================================  ==========================================
``image``       image_path, file, file_name, filename, path  image file, relative to the manifest
``caption``     text, description                            the caption (required, non-empty)
``license``     licence                                      licence text or SPDX-like name (required)
``provenance``  source_id, source                            where the item comes from (required)
``id``          item_id, image_id                            the item's id in the collection (optional)
``labels``      label                                        ``a; b`` or ``a|b`` or a JSON list (optional)
``license_url`` licence_url                                  the licence's URL (optional)
``collection``                                               the row's collection (optional)
==============  ===========================================  ==========================================

Other columns are kept in ``meta.fields``. A row without a licence or a provenance is rejected
with that reason, unless the manifest's folder (or a parent, up to PATH) holds a
``collection.yaml`` that states them for the whole collection; the config's ``license`` is never
used here: a private collection must say under which terms it is shared. A manifest without an
image or caption column, an empty one, or one that cannot be decoded is one ledger line.

Text encoding (``encoding=auto``): a BOM decides (UTF-8, UTF-16, UTF-32); else UTF-8 when the
whole file decodes as UTF-8; else windows-1252 when it decodes as such into plausible Western text
(non-ASCII characters are letters or common scientific symbols, never three in a row, which is
what other double-byte encodings look like when misread); else the manifest is rejected with the
offset of the first bad byte and the advice to pass ``encoding=...``.

**Labelme.** One record per Labelme file: its image is ``imagePath`` (relative to the JSON file),
or the embedded ``imageData`` when the file is absent. The caption is, in order: a top-level
``caption`` (or ``description``) string; an image-level flag ``caption: <text>`` set true; the
``description`` of a shape labelled ``caption``; else (``labels_as_caption``, default on) the
shape labels and true image flags in order, ``label: description`` where a shape has one, joined
with ``; `` and flagged ``labels_as_caption`` in ``meta.flags``. Shapes are kept in
``meta.shapes`` (label, type, ``[x, y, w, h]`` box in the Labelme image's pixels, whose size is
``meta.labelme_size``). Licence and provenance come from ``collection.yaml`` (``license``,
``provenance``, optional ``license_url``, ``name``, ``description``) in the file's folder or a
parent up to PATH, or from top-level ``license``/``provenance`` keys of the file; required.

**Identity.** The collection is the config's ``collection``, else ``name`` in collection.yaml,
else the name of the folder holding collection.yaml (or the manifest, or PATH). An item is the
row's id, else ``<manifest stem>-row<N>`` (N counts data rows from 1), or a Labelme file's path
relative to its collection folder without ``.json``. Unit key ``private:<collection>/<item>``;
``source_id = figure_id = "<collection>/<item>"``, so the split group is the collection. A
manifest id used twice gives a ledger line for the later row (ids seen are kept, as 8-byte hashes,
for the manifest being read).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterator, Optional

from pathasst.dataset_builders.extract.common import (
    ExtractConfig,
    Source,
    Unit,
    UnitResult,
    figure_record,
    normalize_license,
)
from pathasst.errors import InputError

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
SIDECAR = "collection.yaml"
COLUMNS: dict[str, tuple[str, ...]] = {
    "image": ("image", "image_path", "file", "file_name", "filename", "path"),
    "caption": ("caption", "text", "description"),
    "license": ("license", "licence"),
    "provenance": ("provenance", "source_id", "source"),
    "id": ("id", "item_id", "image_id"),
    "labels": ("labels", "label"),
    "license_url": ("license_url", "licence_url"),
    "collection": ("collection",),
}
# Characters that windows-1252 text in a pathology manifest plausibly holds besides letters.
_PLAUSIBLE_SYMBOLS = set("µ°±×÷·–—‘’‚“”„…€£¥§©®™²³¹¼½¾¬¦¨´¸ºª«»¿¡ ")


@dataclasses.dataclass
class PrivateConfig(ExtractConfig):
    """Settings of ``pathasst extract private`` (flat keys; ``key=value`` on the command line).

    Attributes:
        collection: the collection name for every input (default: collection.yaml ``name`` or the
            folder name); it is the split group, so one collection never spans splits.
        encoding: text encoding of manifests; ``auto`` detects (see the module docstring).
        labels_as_caption: for Labelme files without a caption, use their labels (flagged).
    """

    collection: Optional[str] = None
    encoding: str = "auto"
    labels_as_caption: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ValueError(f"encoding: unknown text encoding {self.encoding!r}") from None
        if self.collection is not None and not _slug(self.collection):
            raise ValueError(f"collection: {self.collection!r} holds no usable character")


def _slug(name: str) -> str:
    """A collection name usable as the first component of a source_id (no '/')."""
    return re.sub(r"[^\w.\-]+", "-", str(name).strip()).strip("-.")


# --- collection.yaml -------------------------------------------------------------------------


def _read_sidecar(folder: Path) -> dict[str, Any]:
    """``{"name", "license", "license_url", "provenance"}`` from folder/collection.yaml, or
    ``{"error": reason}``; ``{}`` when there is none."""
    import yaml

    path = folder / SIDECAR
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return {"error": f"bad {SIDECAR}: {str(exc).splitlines()[0][:200]}", "dir": str(folder)}
    if not isinstance(data, dict):
        return {"error": f"bad {SIDECAR}: expected a mapping of keys to values", "dir": str(folder)}
    out = {"dir": str(folder)}
    for key, aliases in (("name", ("name", "collection")), ("license", COLUMNS["license"]),
                         ("license_url", COLUMNS["license_url"]), ("provenance", ("provenance", "source"))):
        value = next((data[a] for a in aliases if data.get(a) not in (None, "")), None)
        if value is not None:
            out[key] = str(value).strip()
    return out


class _Sidecars:
    """collection.yaml lookup: the nearest one in a folder or its parents, up to the input root."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self._cache: dict[Path, dict[str, Any]] = {}

    def find(self, folder: Path) -> dict[str, Any]:
        folder = folder.resolve()
        chain = [folder, *folder.parents]
        for candidate in chain:
            if candidate not in self._cache:
                self._cache[candidate] = _read_sidecar(candidate)
            if self._cache[candidate]:
                return self._cache[candidate]
            if candidate == self.root or self.root not in candidate.parents:
                break
        return {}


def _collection(cfg: PrivateConfig, sidecar: dict[str, Any], folder: Path) -> str:
    for name in (cfg.collection, sidecar.get("name"), Path(sidecar.get("dir") or folder).name):
        if name and _slug(name):
            return _slug(name)
    return "collection"


# --- manifests -------------------------------------------------------------------------------


def detect_encoding(path: Path, configured: str = "auto") -> tuple[Optional[str], str]:
    """``(encoding, how)`` for a text file, or ``(None, reason)`` when it cannot be decoded.

    Reads the file in 1 MiB chunks (memory stays flat whatever its size).
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return enc, "byte-order mark"
    if configured != "auto":
        return configured, "configured"
    bad_at = _first_undecodable(path, "utf-8")
    if bad_at is None:
        return "utf-8", "utf-8"
    if _first_undecodable(path, "cp1252") is None and _plausible_western(path):
        return "cp1252", "detected (not UTF-8; decodes as windows-1252)"
    return None, (f"not UTF-8 (undecodable byte at offset {bad_at}) and not plausibly windows-1252; "
                  "re-save it as UTF-8 or pass encoding=NAME")


def _first_undecodable(path: Path, encoding: str) -> Optional[int]:
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return offset + exc.start
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            return offset + exc.start
    return None


def _plausible_western(path: Path) -> bool:
    with open(path, encoding="cp1252", newline="") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), ""):
            for run in re.findall(r"[^\x00-\x7f]+", chunk):
                if len(run) >= 3:
                    return False
                if any(not unicodedata.category(ch).startswith("L") and ch not in _PLAUSIBLE_SYMBOLS for ch in run):
                    return False
    return True


def _column_map(fieldnames: list[str]) -> dict[str, str]:
    """Canonical column -> the header name the manifest uses."""
    by_lower = {str(name).strip().lstrip("\ufeff").lower(): name for name in fieldnames if name is not None}
    out = {}
    for canonical, aliases in COLUMNS.items():
        for alias in aliases:
            if alias in by_lower:
                out[canonical] = by_lower[alias]
                break
    return out


def _rows(path: Path, encoding: str) -> Iterator[tuple[int, Any]]:
    """``(row number, row dict or an error string)``; rows counted from 1, header excluded."""
    with open(path, encoding=encoding, newline="", errors="strict") as fh:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            n = 0
            for line in fh:
                if not line.strip():
                    continue
                n += 1
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    yield n, f"invalid JSON: {exc}"
                    continue
                yield n, row if isinstance(row, dict) else f"invalid row: expected a JSON object, got {type(row).__name__}"
            return
        sample = fh.read(1 << 16)
        fh.seek(0)
        if path.suffix.lower() == ".tsv":
            dialect: Any = csv.excel_tab
        else:
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
            except csv.Error:
                dialect = csv.excel
        # captions can be long (a whole figure legend); the csv module's 128 KiB field cap is not ours
        csv.field_size_limit(max(csv.field_size_limit(), 16 << 20))
        reader = csv.DictReader(fh, dialect=dialect)
        for n, row in enumerate(reader, 1):
            yield n, {k: v for k, v in row.items() if k is not None}


def _manifest_units(path: Path, root: Path, cfg: PrivateConfig, sidecars: _Sidecars) -> Iterator[Unit]:
    sidecar = sidecars.find(path.parent)
    collection = _collection(cfg, sidecar, path.parent)
    manifest_key = f"private:{collection}/{path.name}"

    def whole(reason: str) -> Unit:
        return Unit(key=manifest_key, payload={"error": reason}, label=path.name)

    encoding, how = detect_encoding(path, cfg.encoding)
    if encoding is None:
        yield whole(f"undecodable manifest: {path.name} is {how}")
        return
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    seen: set[int] = set()
    count = 0
    columns: Optional[dict[str, str]] = None
    try:
        rows = _rows(path, encoding)
        for n, row in rows:
            if columns is None and not jsonl:
                columns = _column_map(list(row))
                missing = [c for c in ("image", "caption") if c not in columns]
                if missing:
                    yield whole(f"not a manifest: {path.name} has no {' or '.join(missing)} column "
                                f"(expected one of: {', '.join(COLUMNS[missing[0]])})")
                    return
            count += 1
            cols = _column_map(list(row)) if jsonl and isinstance(row, dict) else (columns or {})
            item = None
            if isinstance(row, dict) and cols.get("id") and str(row.get(cols["id"]) or "").strip():
                item = str(row[cols["id"]]).strip()
            item = item or f"{path.stem}-row{n}"
            row_collection = collection
            if isinstance(row, dict) and cols.get("collection") and str(row.get(cols["collection"]) or "").strip() \
                    and not cfg.collection:
                row_collection = _slug(str(row[cols["collection"]])) or collection
            key = f"private:{row_collection}/{item}"
            digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
            payload: dict[str, Any] = {
                "manifest": str(path), "row_number": n, "collection": row_collection, "item": item,
                "columns": cols, "sidecar": sidecar, "encoding": encoding if how != "utf-8" else None,
                "encoding_how": how,
            }
            if digest in seen:
                payload["error"] = f"duplicate id: {item!r} is used by an earlier row of {path.name}"
                key = f"{key}#row{n}"
            seen.add(digest)
            if isinstance(row, str):
                payload["error"] = f"{row} ({path.name} row {n})"
            else:
                payload["row"] = row
            yield Unit(key=key, payload=payload, label=f"{path.name} row {n}")
    except UnicodeDecodeError as exc:  # a configured encoding that does not fit the file
        yield whole(f"undecodable manifest: {path.name} as {encoding} ({how}) after row {count}: {exc}")
        return
    except csv.Error as exc:
        yield whole(f"bad manifest: {path.name}: {exc}")
        return
    if count == 0:
        yield whole(f"empty manifest: {path.name} has no rows")


def _labels(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if text.startswith("["):
        try:
            return _labels(json.loads(text))
        except ValueError:
            pass
    return [part.strip() for part in re.split(r"[;|]", text) if part.strip()]


def _value(row: dict[str, Any], cols: dict[str, str], name: str) -> str:
    column = cols.get(name)
    value = row.get(column) if column else None
    return "" if value is None else str(value).strip()


def _extract_row(unit: Unit, cfg: PrivateConfig) -> UnitResult:
    p = unit.payload
    result = UnitResult()
    row, cols, sidecar = p["row"], p["columns"], p["sidecar"]
    manifest = Path(p["manifest"])
    context = {"manifest": manifest.name, "row": p["row_number"]}
    caption = _value(row, cols, "caption")
    image_ref = _value(row, cols, "image")
    license_text, license_url = _value(row, cols, "license"), _value(row, cols, "license_url")
    if not license_text and not license_url:  # the collection's terms, when it states them
        license_text, license_url = sidecar.get("license", ""), sidecar.get("license_url", "")
    provenance = _value(row, cols, "provenance") or sidecar.get("provenance", "")
    problems = []
    if not license_text and not license_url:
        problems.append(f"missing licence: the row has no {'/'.join(COLUMNS['license'])} value"
                        + ("" if not sidecar.get("error") else f" ({sidecar['error']})")
                        + f" and no {SIDECAR} states one")
    if not provenance:
        problems.append(f"missing provenance: the row has no {'/'.join(COLUMNS['provenance'])} value "
                        f"and no {SIDECAR} states one")
    if not image_ref:
        problems.append("missing image: the row names no image")
    if not caption:
        problems.append("missing caption: the row's caption is empty")
    if problems:
        result.reject(unit.key, "; ".join(problems), **context)
        return result
    if re.match(r"[a-z][a-z0-9+.\-]*://", image_ref, re.IGNORECASE):
        result.reject(unit.key, f"unsupported image: {image_ref[:200]} is a URL, not a file beside the manifest",
                      **context)
        return result
    image_path = manifest.parent / image_ref.replace("\\", "/")
    if not image_path.is_file():
        result.reject(unit.key, f"missing image file: {image_ref}", **context)
        return result
    known = {column for column in cols.values()}
    extra = {str(k): v for k, v in row.items() if k not in known and v not in (None, "")}
    meta: dict[str, Any] = {
        "provenance": provenance,
        "manifest": manifest.name,
        "row": p["row_number"],
        "image_path": image_ref if not Path(image_ref).is_absolute() else Path(image_ref).name,
    }
    labels = _labels(row.get(cols["labels"])) if cols.get("labels") else []
    if labels:
        meta["labels"] = labels
    if extra:
        meta["fields"] = json.loads(json.dumps(extra, default=str))
    if p.get("encoding"):
        meta["manifest_encoding"] = p["encoding"]
    if not _value(row, cols, "license") or not _value(row, cols, "provenance"):
        meta["collection_defaults"] = SIDECAR
    return _record(unit, cfg, result, image_path, caption, license_text, license_url, meta, context)


def _record(unit, cfg, result, image, caption, license_text, license_url, meta, context) -> UnitResult:
    from pathasst.images import ImageRejected

    lic = normalize_license(license_text or None, license_url or None)
    item_id = f"{unit.payload['collection']}/{unit.payload['item']}"
    try:
        result.records.append(figure_record(
            image=image, caption_raw=caption, source="private", source_id=item_id, figure_id=item_id,
            license=lic, cfg=cfg, meta=meta))
    except ImageRejected as exc:
        result.reject(unit.key, exc.reason, **context)
    except ValueError as exc:
        result.reject(unit.key, f"missing caption: {exc}", **context)
    return result


# --- Labelme ---------------------------------------------------------------------------------


def _labelme_unit(path: Path, root: Path, cfg: PrivateConfig, sidecars: _Sidecars) -> Unit:
    sidecar = sidecars.find(path.parent)
    home = Path(sidecar["dir"]) if sidecar.get("dir") else root
    collection = _collection(cfg, sidecar, home)
    try:
        rel = path.resolve().relative_to(home.resolve())
    except ValueError:
        rel = Path(path.name)
    item = rel.with_suffix("").as_posix()
    return Unit(key=f"private:{collection}/{item}",
                payload={"labelme": str(path), "collection": collection, "item": item, "sidecar": sidecar},
                label=rel.as_posix())


def _bbox(points: Any) -> Optional[list[float]]:
    try:
        xs = [float(pt[0]) for pt in points]
        ys = [float(pt[1]) for pt in points]
    except (TypeError, ValueError, IndexError):
        return None
    if not xs:
        return None
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def labelme_caption(doc: dict[str, Any], labels_as_caption: bool = True) -> tuple[Optional[str], str, list[str]]:
    """``(caption, origin, labels)`` of a Labelme document (see the module docstring)."""
    shapes = [s for s in doc.get("shapes") or [] if isinstance(s, dict)]
    flags = doc.get("flags") if isinstance(doc.get("flags"), dict) else {}
    shape_labels: list[str] = []
    described: list[str] = []
    caption_shape = None
    for shape in shapes:
        label = str(shape.get("label") or "").strip()
        desc = str(shape.get("description") or "").strip()
        if label.lower() == "caption":
            caption_shape = caption_shape or desc
            continue
        if label and label not in shape_labels:
            shape_labels.append(label)
            described.append(f"{label}: {desc}" if desc else label)
    flag_labels = [str(name).strip() for name, on in flags.items()
                   if on is True and not str(name).lower().startswith("caption:") and str(name).strip()]
    extra = [f for f in flag_labels if f not in shape_labels]
    labels = shape_labels + extra
    for key in ("caption", "description"):
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip(), "caption_field", labels
    for name, on in flags.items():
        if on is True and str(name).lower().startswith("caption:") and str(name)[8:].strip():
            return str(name)[8:].strip(), "caption_flag", labels
    if caption_shape:
        return caption_shape, "caption_shape", labels
    if labels_as_caption and labels:
        return "; ".join(described + extra), "labels", labels
    return None, "", labels


def _extract_labelme(unit: Unit, cfg: PrivateConfig) -> UnitResult:
    p = unit.payload
    result = UnitResult()
    path = Path(p["labelme"])
    context = {"file": path.name}
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        result.reject(unit.key, f"not a Labelme file: invalid JSON: {str(exc)[:200]}", **context)
        return result
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list) or not (
            doc.get("imagePath") or doc.get("imageData")):
        result.reject(unit.key, "not a Labelme file: no shapes list and imagePath/imageData", **context)
        return result
    sidecar = p["sidecar"]
    license_text = str(doc.get("license") or doc.get("licence") or sidecar.get("license") or "").strip()
    license_url = str(doc.get("license_url") or sidecar.get("license_url") or "").strip()
    provenance = str(doc.get("provenance") or sidecar.get("provenance") or "").strip()
    problems = []
    where = sidecar.get("error") or f"no {SIDECAR} in its folder or above states one"
    if not license_text and not license_url:
        problems.append(f"missing licence: {where}")
    if not provenance:
        problems.append(f"missing provenance: {where}")
    caption, origin, labels = labelme_caption(doc, cfg.labels_as_caption)
    if not caption:
        problems.append("missing caption: no caption field, caption flag or caption shape"
                        + ("" if cfg.labels_as_caption else " (labels_as_caption is off)")
                        + ("" if labels or not cfg.labels_as_caption else " and no labels"))
    if problems:
        result.reject(unit.key, "; ".join(problems), **context)
        return result
    image: Any = None
    image_ref = str(doc.get("imagePath") or "").replace("\\", "/")
    if image_ref and (path.parent / image_ref).is_file():
        image = path.parent / image_ref
    elif doc.get("imageData"):
        try:
            image = base64.b64decode(str(doc["imageData"]), validate=False)
        except (binascii.Error, ValueError) as exc:
            result.reject(unit.key, f"corrupt image: imageData is not base64 ({exc})", **context)
            return result
    else:
        result.reject(unit.key, f"missing image file: {image_ref}", **context)
        return result
    shapes = []
    for shape in doc["shapes"]:
        if isinstance(shape, dict) and str(shape.get("label") or "").lower() != "caption":
            entry = {"label": str(shape.get("label") or ""), "shape_type": str(shape.get("shape_type") or "polygon"),
                     "bbox": _bbox(shape.get("points") or [])}
            if shape.get("group_id") is not None:
                entry["group_id"] = shape["group_id"]
            shapes.append(entry)
    meta: dict[str, Any] = {"provenance": provenance, "caption_origin": origin, "labelme_file": path.name,
                            "image_path": image_ref or None}
    if labels:
        meta["labels"] = labels
    if shapes:
        meta["shapes"] = shapes
    if doc.get("imageWidth") and doc.get("imageHeight"):
        meta["labelme_size"] = [doc["imageWidth"], doc["imageHeight"]]
    if origin == "labels":
        meta["flags"] = ["labels_as_caption"]
    if not isinstance(image, Path):
        meta["image_from"] = "imageData"
    meta = {k: v for k, v in meta.items() if v is not None}
    return _record(unit, cfg, result, image, caption, license_text, license_url, meta, context)


# --- the source ------------------------------------------------------------------------------


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def iter_units(paths: list[str], cfg: PrivateConfig) -> Iterator[Unit]:
    """One unit per manifest row or Labelme file; missing inputs fail at once with InputError."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise InputError(f"input not found: {', '.join(missing)}")
    if cfg.license:
        log.warning("extract private ignores license=%s: every row or collection.yaml must state its own", cfg.license)
    return _units([Path(p) for p in paths], cfg)


def _units(paths: list[Path], cfg: PrivateConfig) -> Iterator[Unit]:
    for path in paths:
        root = path if path.is_dir() else path.parent
        sidecars = _Sidecars(root)
        files = _walk(path) if path.is_dir() else iter([path])
        found = False
        for file in files:
            suffix = file.suffix.lower()
            if suffix in MANIFEST_SUFFIXES:
                found = True
                yield from _manifest_units(file, root, cfg, sidecars)
            elif suffix == ".json":
                found = True
                yield _labelme_unit(file, root, cfg, sidecars)
            elif not path.is_dir():
                found = True
                yield Unit(key=f"private:{_collection(cfg, {}, root)}/{file.name}",
                           payload={"error": f"not a manifest: {file.name} is not .csv, .tsv, .jsonl or Labelme .json"},
                           label=file.name)
        if not found:
            yield Unit(key=f"private:{_collection(cfg, sidecars.find(root), root)}/",
                       payload={"error": f"no manifest: {path.name} holds no .csv/.tsv/.jsonl manifest "
                                         "and no Labelme .json file"},
                       label=path.name)


def extract_unit(unit: Unit, cfg: PrivateConfig) -> UnitResult:
    payload = unit.payload or {}
    if payload.get("error"):
        result = UnitResult()
        info = {"manifest": Path(payload["manifest"]).name, "row": payload["row_number"]} if "manifest" in payload else {}
        result.reject(unit.key, payload["error"], **info)
        return result
    if "labelme" in payload:
        return _extract_labelme(unit, cfg)
    return _extract_row(unit, cfg)


SOURCE = Source(
    name="private",
    config=PrivateConfig,
    iter_units=iter_units,
    extract_unit=extract_unit,
    description="a folder with a CSV/JSONL manifest (image, caption, licence, provenance) or Labelme JSON",
)
