"""`pathasst curate dedup DATASET... --out DIR [key=value ...]`: one copy of every figure.

Reads one or more PathCap datasets (folders or Hub ids, through ``datasets.load_dataset``), finds

- **near-duplicate images**: 64-bit pHashes (the records' ``phash``; computed from the image with
  :func:`pathasst.images.image_phash` where it is missing) within Hamming distance
  ``max_distance`` (default 6), found by :class:`NearDuplicateIndex` (faiss multi-index hashing);
- **exact caption duplicates**: captions equal once normalised (Unicode NFKC, case-folded, word
  tokens only: punctuation and spacing do not count) and at least ``caption_min_words`` words
  long (default 8): short captions such as "H&E, ×400" or "Normal liver." are shared by distinct
  figures and say nothing about duplication;

and writes one copy of each to ``--out`` (a PathCap folder, records in the split they came from)
and every other copy to ``rejects.jsonl`` with the id of the copy it duplicates::

    {"id": "b", "reason": "duplicate image: phash distance 3 to a", "duplicate_of": "a", "distance": 3}
    {"id": "c", "reason": "duplicate caption: same normalised caption as a", "duplicate_of": "a"}

so that ``input records = output records + ledger lines``.

**Default distance 6.** Measured on tissue tiles cut from scikit-image's IHC micrograph: JPEG
re-encoding (quality 95 vs 40), 60% resizing and a 10% brightness change move a pHash by at most 2
bits; a 1-2% crop by 0-10 (95% within 6); distinct non-overlapping tiles are 17-45 bits apart (mean
31). Random 64-bit hashes fall within 6 bits of each other with probability 4e-12 (about 2 chance
pairs among a million hashes). Raise it (e.g. ``max_distance=10``) to catch larger crops at the
cost of more chance matches among similar-looking tissue.

**Groups and the keep rule.** Records linked by an image or a caption match form a group
(connected components, as union-find computes them). Within a group the records are ranked:

1. larger image area (``width * height``) first: the full-resolution copy wins over a thumbnail;
2. then a caption present, and longer first;
3. then source priority ``pubmed > book > web > private`` (journals state licences and
   provenance most completely);
4. then the smaller id (string order): deterministic whatever the input order.

Walking the group in that order, a record is kept unless it duplicates a record already kept
(image within the distance, or the same caption), in which case it goes to the ledger naming
that kept record. A chain a~b~c whose ends are far apart (a and c distinct) therefore keeps both
ends: nothing is removed for being a duplicate of a duplicate, and every ledger line names a kept
record it directly duplicates. Image evidence is named before caption evidence when both hold.

A second record with an id already seen (the same record in two inputs) goes to the ledger as
``duplicate id``. Records whose image cannot be hashed take part in caption matching only (counted
as ``unhashable`` in ``summary.json``).

**Memory.** Three streaming passes, images never held: (1) only the columns the decision needs
(``id, phash, width, height, caption, source``) into flat arrays; (1b) only if some records lack a
pHash, the images, one at a time, to compute it; (2) the full records, streamed to the writer.
Resumable: rerun the same command and committed records are skipped (the decisions are recomputed
identically).

This module imports only argparse at import time: the CLI lists it on every start.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import re
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

log = logging.getLogger(__name__)

DEFAULT_MAX_DISTANCE = 6
DEFAULT_CAPTION_MIN_WORDS = 8
DEFAULT_SHOW = 20
# Keep-rule step 3; a source outside the contract ranks after these.
SOURCE_PRIORITY = {"pubmed": 0, "book": 1, "web": 2, "private": 3}
META_COLUMNS = ("id", "phash", "width", "height", "caption", "source")
_BATCH = 4096
_WORD = re.compile(r"\w+")


@dataclasses.dataclass
class DedupConfig:
    """What decides the output of a dedup run (hashed by the writer: a rerun with other values
    needs ``--resume`` or ``--overwrite``).

    Attributes:
        max_distance: images whose pHashes differ in at most this many of 64 bits are duplicates.
        captions: also remove exact caption duplicates.
        caption_min_words: captions with fewer words are never compared (too generic).
        inputs: the input datasets, as given (set by the command).
    """

    max_distance: int = DEFAULT_MAX_DISTANCE
    captions: bool = True
    caption_min_words: int = DEFAULT_CAPTION_MIN_WORDS
    inputs: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.max_distance <= 32:
            raise ValueError(f"max_distance must be in [0, 32] bits of 64 (got {self.max_distance})")
        if self.caption_min_words < 1:
            raise ValueError(f"caption_min_words must be >= 1 (got {self.caption_min_words})")


# --- text ------------------------------------------------------------------------------------


def normalized_words(text: Optional[str]) -> list[str]:
    """Word tokens of ``text``, Unicode-normalised (NFKC) and case-folded; punctuation dropped.

    ``"H&E stain, ×400."`` -> ``["h", "e", "stain", "400"]``. Shared with ``curate decontam``.
    """
    if not text:
        return []
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def caption_key(text: Optional[str], min_words: int) -> Optional[int]:
    """64-bit key of the normalised caption, or None when it has fewer than ``min_words`` words."""
    words = normalized_words(text)
    if len(words) < min_words:
        return None
    return int.from_bytes(hashlib.blake2b(" ".join(words).encode(), digest_size=8).digest(), "big")


# --- reading ---------------------------------------------------------------------------------


def open_pathcap(dataset: str, columns: Optional[tuple[str, ...]] = None, *, what: str = "DATASET"):
    """The splits of a PathCap dataset, streaming, images left undecoded.

    Args:
        dataset: a folder or a Hub id.
        columns: read only these columns (those the dataset has); None: every column.
        what: how to name the input in errors.

    Raises:
        InputError: missing, unreadable, or without ``id`` and ``image`` columns.
    """
    from datasets import Image, IterableDatasetDict, load_dataset

    from pathasst.errors import InputError
    from pathasst.inputs import data_ref

    ref = data_ref(dataset, key=what)

    def load(**kwargs):
        try:
            ds = load_dataset(ref.value, streaming=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds for "this is not a dataset"
            raise InputError(f"{what} {dataset}: cannot read it as a dataset ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
        return ds if isinstance(ds, IterableDatasetDict) else IterableDatasetDict({"train": ds})

    ds = load()
    for split, part in ds.items():
        have = set(part.features or {})
        missing = {"id", "image"} - have
        if missing:
            raise InputError(f"{what} {dataset} [{split}] is not a PathCap dataset: no column(s) "
                             f"{', '.join(sorted(missing))} (columns: {', '.join(sorted(have)) or 'unknown'})")
    if columns is not None:
        have = set(next(iter(ds.values())).features or {})
        wanted = [c for c in columns if c in have]
        try:
            narrow = load(columns=wanted)  # Parquet reads only these columns
        except Exception:  # noqa: BLE001 - a format without column selection: drop them after reading
            narrow = IterableDatasetDict({s: p.select_columns(wanted) for s, p in ds.items()})
        return narrow
    return IterableDatasetDict({s: p.cast_column("image", Image(decode=False)) for s, p in ds.items()})


def split_sizes(ds) -> dict[str, Optional[int]]:
    """Rows per split when the dataset card says (for progress bars)."""
    sizes = {}
    for split, part in ds.items():
        splits = getattr(getattr(part, "info", None), "splits", None) or {}
        sizes[split] = splits[split].num_examples if split in splits else None
    return sizes


def iter_batches(ds) -> Iterator[tuple[str, dict[str, list]]]:
    """``(split, columns as lists)`` batches over every split, in a fixed order."""
    for split, part in ds.items():
        for batch in part.iter(batch_size=_BATCH):
            yield split, batch


def record_units(dataset_index: int, split: str, position: int, rid: Any, seen: dict[str, int]) -> tuple[str, str]:
    """``(kind, unit key)`` of one input record: ``ok`` (its id), ``noid`` or ``dupid``.

    The same walk in every pass gives every record the same key, so the writer's resume counts a
    second record with an id once (``<id>#dup<k>``).
    """
    if rid is None or str(rid) == "":
        return "noid", f"#{dataset_index}/{split}/{position}"
    rid = str(rid)
    occurrence = seen.get(rid, 0)
    seen[rid] = occurrence + 1
    if occurrence:
        return "dupid", f"{rid}#dup{occurrence}"
    return "ok", rid


def compute_phash(image: Any) -> Optional[str]:
    """pHash of a stored image value (``{'bytes', 'path'}``, bytes, or a path); None if it cannot be read."""
    from pathasst.images import ImageRejected, image_phash

    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if image is None:
        return None
    try:
        return image_phash(image)
    except (ImageRejected, OSError, TypeError, ValueError):
        return None


# --- deciding ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Scan:
    """What pass 1 keeps per record (flat, no images)."""

    ids: list[str] = dataclasses.field(default_factory=list)
    status: list[str] = dataclasses.field(default_factory=list)  # ok | noid | dupid
    keys: list[str] = dataclasses.field(default_factory=list)  # writer unit keys
    phash: list[Optional[str]] = dataclasses.field(default_factory=list)
    area: list[int] = dataclasses.field(default_factory=list)
    caption_len: list[int] = dataclasses.field(default_factory=list)
    caption_key: list[Optional[int]] = dataclasses.field(default_factory=list)
    source: list[str] = dataclasses.field(default_factory=list)
    splits: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Decision:
    """Why a record goes to the ledger: ``kind`` image | caption, the kept record, the distance."""

    kind: str
    kept: int
    distance: Optional[int] = None


def decide(scan_phash: list[Optional[str]], area, caption_len, source_rank, id_order, caption_keys,
           eligible, max_distance: int, progress: Any = None) -> tuple[dict[int, Decision], dict[str, Any]]:
    """The dedup decisions over flat per-record arrays (positions 0..n-1).

    Args:
        scan_phash: 16-hex pHash per record (None: no image evidence).
        area, caption_len, source_rank, id_order: the keep-rule keys (see the module docstring).
        caption_keys: normalised-caption key per record (None: not compared).
        eligible: records taking part (others, e.g. duplicate ids, are ignored).
        max_distance: image distance threshold.

    Returns:
        ``{position: Decision}`` for every removed record, and statistics (groups, pairs, plan).
    """
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from pathasst.dataset_builders.curate.near_duplicates import NearDuplicateIndex, is_hash

    n = len(scan_phash)
    if n == 0:
        return {}, {"hashed": 0, "distinct_hashes": 0, "hash_pairs": 0, "search": None, "captions_compared": 0,
                    "groups": {"count": 0, "records": 0, "size_histogram": {}, "largest": [],
                               "kept_per_group_histogram": {}}}
    eligible = np.asarray(eligible, dtype=bool)
    hashed = np.array([bool(eligible[i]) and is_hash(h) for i, h in enumerate(scan_phash)], dtype=bool)
    positions = np.nonzero(hashed)[0]
    index = NearDuplicateIndex(max_distance)
    index.add(positions, [scan_phash[i] for i in positions.tolist()])
    graph = index.hash_graph(progress=progress)
    n_values = len(graph.values)
    hash_node = np.full(n, -1, dtype=np.int64)
    hash_node[positions] = graph.inverse

    cap = np.array([k is not None and bool(eligible[i]) for i, k in enumerate(caption_keys)], dtype=bool)
    cap_positions = np.nonzero(cap)[0]
    cap_values = np.array([caption_keys[i] for i in cap_positions.tolist()], dtype=np.uint64)
    cap_unique, cap_inverse = np.unique(cap_values, return_inverse=True)
    caption_node = np.full(n, -1, dtype=np.int64)
    caption_node[cap_positions] = cap_inverse.ravel()
    n_captions = len(cap_unique)

    # one graph: records, distinct hashes, distinct captions; components = duplicate groups
    rows = np.concatenate([positions, cap_positions, n + graph.u])
    cols = np.concatenate([n + graph.inverse, n + n_values + cap_inverse.ravel(), n + graph.v])
    size = n + n_values + n_captions
    adjacency = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(size, size)).tocsr()
    _, labels = connected_components(adjacency, directed=False)
    record_labels = labels[:n]
    group_size = np.bincount(record_labels[eligible], minlength=size) if n else np.zeros(0, dtype=np.int64)
    in_group = eligible & (group_size[record_labels] > 1) if n else eligible

    # neighbours of each distinct hash (both directions), with distances
    nb = coo_matrix((graph.distance + 1, (graph.u, graph.v)), shape=(n_values, n_values)).tocsr()
    nb = (nb + nb.T).tocsr()

    order = np.lexsort((np.asarray(id_order), np.asarray(source_rank), -np.asarray(caption_len),
                        -np.asarray(area, dtype=np.int64)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    kept_at_hash = np.full(n_values, -1, dtype=np.int64)
    kept_at_caption = np.full(n_captions, -1, dtype=np.int64)
    removed: dict[int, Decision] = {}
    for p in order[in_group[order]].tolist():
        best: Optional[tuple[int, int, int]] = None  # (distance, rank of kept, kept)
        h = hash_node[p]
        if h >= 0:
            if kept_at_hash[h] >= 0:
                best = (0, rank[kept_at_hash[h]], int(kept_at_hash[h]))
            else:
                start, end = nb.indptr[h], nb.indptr[h + 1]
                for other, dist in zip(nb.indices[start:end].tolist(), (nb.data[start:end] - 1).tolist()):
                    k = kept_at_hash[other]
                    if k >= 0 and (best is None or (dist, rank[k]) < best[:2]):
                        best = (dist, int(rank[k]), int(k))
        if best is not None:
            removed[p] = Decision("image", best[2], best[0])
            continue
        c = caption_node[p]
        if c >= 0 and kept_at_caption[c] >= 0:
            removed[p] = Decision("caption", int(kept_at_caption[c]))
            continue
        if h >= 0:
            kept_at_hash[h] = p
        if c >= 0:
            kept_at_caption[c] = p

    sizes = group_size[group_size > 1]
    hist = Counter(sizes.tolist())
    kept_per_group = Counter()
    if len(sizes):
        removed_mask = np.zeros(n, dtype=bool)
        removed_mask[list(removed)] = True
        groups_of_kept = record_labels[in_group & ~removed_mask]
        kept_per_group = Counter(np.bincount(groups_of_kept)[np.unique(groups_of_kept)].tolist())
    stats = {
        "hashed": int(hashed.sum()),
        "distinct_hashes": int(n_values),
        "hash_pairs": int(len(graph.u)),
        "search": graph.plan.describe() if graph.plan else None,
        "captions_compared": int(cap.sum()),
        "groups": {
            "count": int(len(sizes)),
            "records": int(sizes.sum()),
            "size_histogram": {str(k): v for k, v in sorted(hist.items())},
            "largest": sorted(sizes.tolist(), reverse=True)[:10],
            "kept_per_group_histogram": {str(k): v for k, v in sorted(kept_per_group.items())},
        },
    }
    return removed, stats


# --- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Remove near-duplicate images (pHash Hamming distance <= max_distance, default "
        f"{DEFAULT_MAX_DISTANCE}) and exact caption duplicates (normalised, >= caption_min_words words, default "
        f"{DEFAULT_CAPTION_MIN_WORDS}) across one or more PathCap datasets. One copy of each group is kept "
        "(larger image, then longer caption, then source pubmed > book > web > private, then id); every other "
        "copy goes to rejects.jsonl naming the kept copy. Settings: key=value (max_distance=K captions=false "
        "caption_min_words=N)."
    )
    parser.add_argument("inputs", nargs="+", metavar="DATASET | key=value",
                        help="PathCap dataset folders or Hub ids, and settings such as max_distance=8")
    from pathasst.dataset_builders.curate.split import add_output_arguments

    add_output_arguments(parser, "output PathCap folder")
    parser.add_argument("--show", type=int, default=DEFAULT_SHOW, metavar="N",
                        help=f"print the first N removals with their reasons (default {DEFAULT_SHOW}; 0: none)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.common import parse_paths_and_overrides

    datasets, overrides = parse_paths_and_overrides(list(args.inputs))
    cfg = load_config(DedupConfig, args.recipe, overrides)
    cfg.inputs = [str(d) for d in datasets]
    from pathasst.dataset_builders.curate.split import command_line

    command = command_line("dedup")
    summary = dedup_datasets(datasets, args.out, cfg, overwrite=args.overwrite, resume=args.resume,
                             progress=not args.no_progress, command=command, show=args.show)
    for line in summary.pop("_shown"):
        print(line)
    more = summary["this_run"]["removed"] - min(args.show, summary["this_run"]["removed"])
    if more > 0:
        print(f"  ... and {more} more (see {Path(args.out) / 'rejects.jsonl'})")
    removed = summary["removed"]
    reasons = ", ".join(f"{k} {v}" for k, v in removed.items() if v) or "none"
    print(f"{summary['inputs']} records in, {summary['records_total']} kept, {summary['rejected_total']} to the ledger "
          f"({reasons}); {summary['groups']['count']} duplicate groups -> {args.out}")
    return 0


def dedup_datasets(
    datasets: list[str],
    out: Path | str,
    cfg: Optional[DedupConfig] = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: Optional[str] = None,
    show: int = 0,
) -> dict[str, Any]:
    """Deduplicate PathCap datasets into the PathCap folder ``out`` (see the module docstring).

    Returns:
        The summary (also written to ``out/summary.json``): inputs, records kept per split, removals
        by kind, duplicate groups (count, size histogram, largest), image distances of removals,
        how the search ran, seconds per phase. Under ``_shown``: the first ``show`` removal lines.

    Raises:
        InputError: a missing or non-PathCap input.
        OutputError: the output folder is in use or holds another run.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from pathasst.dataset_builders.curate.near_duplicates import is_hash
    from pathasst.records import get_spec
    from pathasst.writer import DEFAULT_SPLITS, DatasetWriter

    cfg = cfg or DedupConfig(inputs=[str(d) for d in datasets])
    if not cfg.inputs:
        cfg.inputs = [str(d) for d in datasets]
    started = time.monotonic()
    seconds: dict[str, float] = {}
    narrow = [open_pathcap(d, META_COLUMNS) for d in datasets]  # every input checked before any work
    full = [open_pathcap(d) for d in datasets]

    # pass 1: the columns the decision needs, no images
    scan = _Scan()
    seen: dict[str, int] = {}
    total = sum(v or 0 for ds in narrow for v in split_sizes(ds).values()) or None
    bar = tqdm(total=total, desc="dedup: scan", unit="rec", disable=not progress)
    for di, ds in enumerate(narrow):
        position = Counter()
        for split, batch in iter_batches(ds):
            scan.splits.setdefault(split, DEFAULT_SPLITS.get(split, 1.0))
            rows = len(batch["id"])
            column = {name: batch.get(name) or [None] * rows for name in META_COLUMNS}
            for rid, caption, phash, width, height, source in zip(
                column["id"], column["caption"], column["phash"], column["width"], column["height"], column["source"]
            ):
                status, key = record_units(di, split, position[split], rid, seen)
                position[split] += 1
                scan.ids.append(str(rid) if rid is not None else "")
                scan.status.append(status)
                scan.keys.append(key)
                scan.phash.append(phash if is_hash(phash) else None)
                scan.area.append(int(width or 0) * int(height or 0))
                scan.caption_len.append(len(caption.strip()) if caption else 0)
                scan.caption_key.append(caption_key(caption, cfg.caption_min_words) if cfg.captions else None)
                scan.source.append(source or "")
            bar.update(rows)
    bar.close()
    n = len(scan.ids)
    seconds["scan"] = round(time.monotonic() - started, 3)

    # pass 1b: hash the images of records without a pHash (one image in memory at a time)
    missing = {i for i in range(n) if scan.status[i] == "ok" and scan.phash[i] is None}
    computed: dict[int, str] = {}
    unhashable = 0
    if missing:
        t = time.monotonic()
        bar = tqdm(total=len(missing), desc="dedup: pHash", unit="img", disable=not progress)
        for i, (_, _, record) in enumerate(_iter_records(full)):
            if i in missing:
                value = compute_phash(record.get("image"))
                if value is None:
                    unhashable += 1
                else:
                    computed[i] = value
                    scan.phash[i] = value
                bar.update(1)
        bar.close()
        seconds["phash"] = round(time.monotonic() - t, 3)

    # decide
    t = time.monotonic()
    ids_array = np.array(scan.ids, dtype=object)
    id_order = np.empty(n, dtype=np.int64)
    id_order[np.argsort(ids_array.astype(str), kind="stable")] = np.arange(n)
    eligible = [s == "ok" for s in scan.status]
    bar = tqdm(total=None, desc="dedup: search", unit="hash", disable=not progress)
    removed, stats = decide(
        scan.phash, scan.area, scan.caption_len,
        [SOURCE_PRIORITY.get(s, len(SOURCE_PRIORITY)) for s in scan.source], id_order,
        scan.caption_key, eligible, cfg.max_distance, progress=bar.update,
    )
    bar.close()
    seconds["search"] = round(time.monotonic() - t, 3)
    log.info("dedup: %d records, %d hashed, %d hash pairs within %d (%s), %d removals decided", n, stats["hashed"],
             stats["hash_pairs"], cfg.max_distance, stats["search"], len(removed))

    # pass 2: stream the records to the writer
    t = time.monotonic()
    counts = Counter()
    distances = Counter()
    shown: list[str] = []
    spec = get_spec("pathcap")
    with DatasetWriter(out, spec, config=cfg, resume=resume, overwrite=overwrite, splits=scan.splits,
                       command=command or "pathasst curate dedup " + " ".join(map(str, datasets))) as writer:
        bar = tqdm(total=n, desc="dedup: write", unit="rec", disable=not progress)
        for i, (split, _, record) in enumerate(_iter_records(full)):
            bar.update(1)
            key = scan.keys[i]
            if writer.is_done(key):
                counts["already_done"] += 1
                continue
            status = scan.status[i]
            line = None
            if status == "noid":
                with writer.unit(key):
                    writer.reject(key, "invalid record: no id")
                counts["invalid"] += 1
            elif status == "dupid":
                rid = scan.ids[i]
                line = (rid, f"duplicate id: '{rid}' occurs {seen.get(rid, 0)} times in the input")
                with writer.unit(key):
                    writer.reject(rid, line[1])
                counts["duplicate_id"] += 1
            elif i in removed:
                d = removed[i]
                kept_id = scan.ids[d.kept]
                if d.kind == "image":
                    reason = f"duplicate image: phash distance {d.distance} to {kept_id}"
                    writer.reject(scan.ids[i], reason, duplicate_of=kept_id, distance=d.distance)
                    distances[d.distance] += 1
                else:
                    reason = f"duplicate caption: same normalised caption as {kept_id}"
                    writer.reject(scan.ids[i], reason, duplicate_of=kept_id)
                counts[d.kind] += 1
                line = (scan.ids[i], reason)
            else:
                if i in computed:
                    record = dict(record, phash=computed[i])
                if writer.add(record, split=split):
                    counts["kept"] += 1
                else:
                    counts["invalid"] += 1
            if line is not None and len(shown) < show:
                shown.append(f"  removed {line[0]}: {line[1]}")
        bar.close()
        result = writer.finalize(_card_text(datasets, cfg))
    seconds["write"] = round(time.monotonic() - t, 3)
    seconds["total"] = round(time.monotonic() - started, 3)

    inputs = n
    removed_total = counts["image"] + counts["caption"] + counts["duplicate_id"]
    summary = {
        "out": str(out),
        "inputs_datasets": [str(d) for d in datasets],
        "settings": {"max_distance": cfg.max_distance, "captions": cfg.captions,
                     "caption_min_words": cfg.caption_min_words},
        "inputs": inputs,
        "removed": {"duplicate image": counts["image"], "duplicate caption": counts["caption"],
                    "duplicate id": counts["duplicate_id"], "invalid record": counts["invalid"]},
        "this_run": {"kept": counts["kept"], "removed": removed_total, "invalid": counts["invalid"],
                     "already_done": counts["already_done"]},
        "phash_computed": len(computed),
        "unhashable": unhashable,
        "image_distance_histogram": {str(k): v for k, v in sorted(distances.items())},
        **stats,
        "records": result.records,
        "records_total": result.total_records,
        "rejected_total": result.rejected,
        "reject_reasons": result.reject_reasons,
        "seconds": seconds,
    }
    summary["accounted"] = result.total_records + result.rejected == inputs
    if not summary["accounted"]:
        log.warning("accounting: %d input records but %d records + %d ledger lines in %s", inputs,
                    result.total_records, result.rejected, out)
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["_shown"] = shown
    return summary


def _iter_records(full) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(split, dataset index, record)`` over every input, in the order of the scan."""
    for di, ds in enumerate(full):
        for split, part in ds.items():
            for record in part:
                yield split, di, record


def _card_text(datasets: list[str], cfg: DedupConfig) -> str:
    names = ", ".join(f"`{Path(str(d)).name}`" for d in datasets)
    captions = (f"and exact caption duplicates (normalised, at least {cfg.caption_min_words} words)"
                if cfg.captions else "(captions not compared)")
    return (
        "# PathCap (deduplicated)\n\n"
        f"One copy of every near-duplicate image (64-bit pHash within Hamming distance {cfg.max_distance}) "
        f"{captions}. Kept: the larger image, then the longer caption, then source pubmed > book > web > "
        "private, then the smaller id. Every removed copy is listed in `rejects.jsonl` with the id of the "
        f"copy it duplicates.\n\nInputs: {names}.\n\n"
        "```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\")\n```\n"
    )


if __name__ == "__main__":  # python -m pathasst.dataset_builders.curate.dedup DATASET... --out DIR
    from pathasst.cli import main as _main

    sys.exit(_main(["curate", "dedup", *sys.argv[1:]]))
