"""`pathasst curate decontam DATASET... --benchmarks BENCH... --out DIR [key=value ...]`.

Finds the training records that overlap a benchmark, so that no model trained on PathCap is
scored on what it saw (peers were caught training on PubMed figures that their benchmark, ARCH,
was also cut from). A training record is **contaminated** by a benchmark when

- its image is a near-duplicate of a benchmark image: 64-bit pHash Hamming distance
  ``<= max_distance`` (default 6, as ``curate dedup``; the benchmark images are hashed with
  :func:`pathasst.images.image_phash`, the training records use their ``phash`` column, computed
  from the image where it is missing); or
- one of its text fields (``fields``, default ``caption`` and ``caption_raw``) shares an n-gram
  of ``ngram`` words (default 13, the length GPT-3's and later LLM decontamination use) with any
  benchmark text. Words are normalised as in dedup (NFKC, case-folded, punctuation dropped), so
  "H&E, x400" and "h e x400" are the same words. 13 words is longer than stain/magnification
  boilerplate ("hematoxylin and eosin stain, original magnification ×400" is 7 words) and
  short enough to catch a copied sentence.

**Benchmarks** are dataset folders or Hub ids, read through ``datasets.load_dataset`` (all their
splits). Their columns are detected from the features, nothing is configured per benchmark: every
``Image`` column (or list of images) is hashed; every string column (or list of strings, or string
inside a struct: caption, question, answer, options, ...) except the id column is a text column.
The report lists the columns used and how many of their texts are long enough to hold an n-gram.

**Outputs** in ``--out``:

- ``contamination_report.json`` and a readable ``contamination_report.md``: per benchmark (the
  columns used, images hashed, records flagged by image / text / both, per training source, the
  number of distinct benchmark items matched, examples with both ids and the matching n-gram or
  distance) and totals per source;
- with ``remove=true`` (the default): a PathCap folder of the clean records (in the splits they
  came from), and one ``rejects.jsonl`` line per removed record naming the benchmark and the
  evidence::

      {"id": "x", "reason": "benchmark image: phash distance 2 to PathVQA test/17", "benchmarks": ["PathVQA"],
       "evidence": [{"benchmark": "PathVQA", "kind": "image", "distance": 2, "benchmark_id": "17", ...}]}

- with ``remove=false``: the report only (plus ``summary.json`` and ``config.yaml``); no records are
  copied and nothing is removed: the input stays the dataset of record, the report says what
  ``remove=true`` would take out. (A copy of every record with a flag would double the disk for a
  decision the report already holds.)

Input records = output records + ledger lines when ``remove=true``; the report counts every input.
Resumable like every stage: rerun the same command and committed records are skipped.

This module imports only argparse at import time: the CLI lists it on every start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

DEFAULT_MAX_DISTANCE = 6
DEFAULT_NGRAM = 13
DEFAULT_FIELDS = ("caption", "caption_raw")
DEFAULT_SHOW = 20
REPORT = "contamination_report.json"
REPORT_MD = "contamination_report.md"
ID_COLUMNS = ("id", "question_id", "qid", "uid", "image_id", "sample_id")
_NGRAM_BASE = 0x100000001B3  # odd multiplier of the rolling n-gram hash (FNV prime)
_QUERY_BATCH = 8192


@dataclasses.dataclass
class DecontamConfig:
    """What decides the output of a decontamination run.

    Attributes:
        max_distance: a training image within this many pHash bits (of 64) of a benchmark image is
            contaminated.
        ngram: a training text sharing this many consecutive normalised words with a benchmark text is
            contaminated.
        remove: write the clean PathCap folder (True) or the report only (False).
        fields: the training record's text fields compared with the benchmarks.
        max_examples: examples per benchmark in the report.
        inputs: the training datasets, as given (set by the command).
        benchmarks: the benchmarks, as given (set by the command).
    """

    RUNTIME_KEYS = ("max_examples",)

    max_distance: int = DEFAULT_MAX_DISTANCE
    ngram: int = DEFAULT_NGRAM
    remove: bool = True
    fields: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_FIELDS))
    max_examples: int = 20
    inputs: list[str] = dataclasses.field(default_factory=list)
    benchmarks: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.max_distance <= 32:
            raise ValueError(f"max_distance must be in [0, 32] bits of 64 (got {self.max_distance})")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1 words (got {self.ngram})")
        if not self.fields:
            raise ValueError("fields must name at least one text field of the training records")
        if self.max_examples < 0:
            raise ValueError(f"max_examples must be >= 0 (got {self.max_examples})")


# --- n-grams -----------------------------------------------------------------------------------


def ngram_hashes(words: list[str], n: int):
    """64-bit hashes of every run of ``n`` consecutive words (``uint64``, one per start position).

    A polynomial rolling hash over Python's string hashes: consistent within one process (the
    benchmark table and the training texts are hashed by the same run), and every hit is checked
    word by word before it is reported.
    """
    import numpy as np

    count = len(words) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    tokens = np.fromiter((hash(w) for w in words), dtype=np.int64, count=len(words)).view(np.uint64)
    out = np.zeros(count, dtype=np.uint64)
    base = np.uint64(_NGRAM_BASE)
    for j in range(n):
        out = out * base + tokens[j : j + count]
    return out


@dataclasses.dataclass
class _TextEntry:
    benchmark: int
    record_id: str
    split: str
    column: str
    words: list[str]


class NgramTable:
    """Every ``n``-gram of the benchmark texts, sorted by hash, for vectorised lookups."""

    def __init__(self, n: int):
        self.n = n
        self.entries: list[_TextEntry] = []
        self._hashes: list[Any] = []
        self._entry: list[Any] = []
        self._offset: list[Any] = []
        self.sorted_hash = None

    def add(self, entry: _TextEntry) -> int:
        """Add one text; returns how many n-grams it holds (0 when shorter than n words)."""
        import numpy as np

        hashes = ngram_hashes(entry.words, self.n)
        if len(hashes):
            self.entries.append(entry)
            self._hashes.append(hashes)
            self._entry.append(np.full(len(hashes), len(self.entries) - 1, dtype=np.int64))
            self._offset.append(np.arange(len(hashes), dtype=np.int64))
        return len(hashes)

    def freeze(self) -> None:
        import numpy as np

        if self._hashes:
            hashes = np.concatenate(self._hashes)
            order = np.argsort(hashes, kind="stable")
            self.sorted_hash = hashes[order]
            self.entry = np.concatenate(self._entry)[order]
            self.offset = np.concatenate(self._offset)[order]
        else:
            self.sorted_hash = np.zeros(0, dtype=np.uint64)
            self.entry = self.offset = np.zeros(0, dtype=np.int64)
        self._hashes, self._entry, self._offset = [], [], []

    def __len__(self) -> int:
        return 0 if self.sorted_hash is None else len(self.sorted_hash)

    def matches(self, words: list[str], per_benchmark: int = 1) -> dict[int, list[tuple[int, _TextEntry]]]:
        """Benchmarks whose texts share an n-gram with ``words``: ``{benchmark: [(start, entry)]}``.

        Every hit is verified word by word (a hash collision is never reported). At most
        ``per_benchmark`` hits are kept per benchmark, plus the set of distinct entries matched.
        """
        import numpy as np

        found: dict[int, list[tuple[int, _TextEntry]]] = {}
        if not len(self):
            return found
        hashes = ngram_hashes(words, self.n)
        if not len(hashes):
            return found
        left = np.searchsorted(self.sorted_hash, hashes, side="left")
        right = np.searchsorted(self.sorted_hash, hashes, side="right")
        for start in np.nonzero(right > left)[0].tolist():
            gram = words[start : start + self.n]
            for k in range(left[start], right[start]):
                entry = self.entries[self.entry[k]]
                offset = int(self.offset[k])
                if entry.words[offset : offset + self.n] != gram:
                    continue
                hits = found.setdefault(entry.benchmark, [])
                if len(hits) < per_benchmark or all(e is not entry for _, e in hits):
                    hits.append((start, entry))
                if len(hits) >= 32:  # enough to count distinct benchmark items cheaply
                    break
        return found


# --- benchmarks --------------------------------------------------------------------------------


@dataclasses.dataclass
class Benchmark:
    """One benchmark as read: its name, where it came from, what was detected and counted."""

    name: str
    ref: str
    splits: dict[str, int] = dataclasses.field(default_factory=dict)
    id_column: Optional[str] = None
    image_columns: list[str] = dataclasses.field(default_factory=list)
    text_columns: list[str] = dataclasses.field(default_factory=list)
    text_detail: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    images_hashed: int = 0
    images_unreadable: int = 0
    ngrams: int = 0


def _columns(features) -> tuple[list[str], list[str], dict[str, Any]]:
    """``(image columns, text column paths, casts)`` detected from a benchmark's features.

    Text paths are dotted for strings inside structs (``options.A``); a list of strings counts as
    one column. ``casts`` leaves image columns undecoded (bytes are hashed, not pixels held).
    """
    from datasets import Image, LargeList, List, Sequence, Value

    images: list[str] = []
    texts: list[str] = []
    casts: dict[str, Any] = {}

    def walk(feature: Any, path: str, top: str) -> None:
        if isinstance(feature, Image):
            if path == top:
                images.append(path)
                casts[top] = Image(decode=False)
        elif isinstance(feature, (List, Sequence, LargeList)):
            inner = feature.feature
            if isinstance(inner, Image) and path == top:
                images.append(path)
                casts[top] = List(Image(decode=False))
            else:
                walk(inner, path, top)
        elif isinstance(feature, dict):
            for key, sub in feature.items():
                walk(sub, f"{path}.{key}", top)
        elif isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
            texts.append(path)

    for name, feature in (features or {}).items():
        walk(feature, name, name)
    return images, texts, casts


def _values(record: Any, path: str) -> list[Any]:
    """Every value at a dotted path, lists flattened (``options`` -> its strings)."""
    values = [record]
    for part in path.split("."):
        nxt = []
        for value in values:
            if isinstance(value, list):
                value = [v.get(part) if isinstance(v, dict) else None for v in value]
                nxt.extend(value)
            elif isinstance(value, dict):
                nxt.append(value.get(part))
        values = nxt
    flat: list[Any] = []
    for value in values:
        if isinstance(value, list):
            flat.extend(v for v in value if v is not None)
        elif value is not None:
            flat.append(value)
    return flat


def _benchmark_name(ref: str, taken: set[str]) -> str:
    from pathasst.inputs import data_ref

    kind = data_ref(ref, key="--benchmarks")
    name = Path(kind.value).resolve().name if kind.kind == "local" else kind.value
    base, k = name, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    taken.add(name)
    return name


def load_benchmarks(refs: list[str], ngram: int, progress: bool = False):
    """Read every benchmark: hash its images, table its n-grams.

    Returns:
        ``(benchmarks, image_entries, image_hashes, table)``: ``image_entries[i]`` is
        ``(benchmark index, record id, split, column)`` of ``image_hashes[i]``.

    Raises:
        InputError: a benchmark that is missing or unreadable, or has neither images nor text.
    """
    from datasets import IterableDatasetDict, load_dataset
    from tqdm.auto import tqdm

    from pathasst.dataset_builders.curate.dedup import compute_phash, normalized_words
    from pathasst.errors import InputError
    from pathasst.inputs import data_ref

    for ref in refs:  # every reference checked before any is read
        data_ref(ref, key="--benchmarks")
    taken: set[str] = set()
    benchmarks: list[Benchmark] = []
    image_entries: list[tuple[int, str, str, str]] = []
    image_hashes: list[str] = []
    table = NgramTable(ngram)
    for bi, ref in enumerate(refs):
        bench = Benchmark(name=_benchmark_name(ref, taken), ref=str(ref))
        try:
            ds = load_dataset(data_ref(ref, key="--benchmarks").value, streaming=True)
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds for "this is not a dataset"
            raise InputError(f"--benchmarks {ref}: cannot read it as a dataset ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
        if not isinstance(ds, IterableDatasetDict):
            ds = IterableDatasetDict({"train": ds})
        bar = tqdm(desc=f"benchmark {bench.name}", unit="rec", disable=not progress)
        for split, part in ds.items():
            features = part.features
            images, texts, casts = _columns(features)
            id_column = next((c for c in ID_COLUMNS if c in (features or {})), None)
            texts = [t for t in texts if t != id_column]
            for name, feature in casts.items():
                part = part.cast_column(name, feature)
            bench.id_column = bench.id_column or id_column
            bench.image_columns += [c for c in images if c not in bench.image_columns]
            bench.text_columns += [c for c in texts if c not in bench.text_columns]
            rows = 0
            for row, record in enumerate(part):
                rows += 1
                rid = str(record.get(id_column)) if id_column and record.get(id_column) is not None else str(row)
                for column in images:
                    for value in _values(record, column):
                        phash = compute_phash(value)
                        if phash is None:
                            bench.images_unreadable += 1
                            continue
                        image_entries.append((bi, rid, split, column))
                        image_hashes.append(phash)
                        bench.images_hashed += 1
                for column in texts:
                    detail = bench.text_detail.setdefault(column, {"texts": 0, "long_enough": 0})
                    for value in _values(record, column):
                        if not isinstance(value, str):
                            continue
                        detail["texts"] += 1
                        grams = table.add(_TextEntry(bi, rid, split, column, normalized_words(value)))
                        if grams:
                            detail["long_enough"] += 1
                            bench.ngrams += grams
                bar.update(1)
            bench.splits[split] = rows
        bar.close()
        if not bench.image_columns and not bench.text_columns:
            raise InputError(f"--benchmarks {ref}: no image column and no text column to compare with "
                             f"(columns: {', '.join(next(iter(ds.values())).features or {})})")
        benchmarks.append(bench)
    table.freeze()
    return benchmarks, image_entries, image_hashes, table


# --- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Find training records whose image is a near-duplicate of a benchmark image (pHash distance <= "
        f"max_distance, default {DEFAULT_MAX_DISTANCE}) or whose caption shares a run of ngram words (default "
        f"{DEFAULT_NGRAM}) with any benchmark text (columns detected: captions, questions, answers, options). "
        "Writes contamination_report.json/.md per benchmark and per source; with remove=true (default) also the "
        "clean PathCap folder, removed records in rejects.jsonl with the benchmark and the evidence; with "
        "remove=false the report only. Settings: key=value (max_distance=K ngram=N remove=false "
        "fields=[caption,caption_raw])."
    )
    parser.add_argument("inputs", nargs="+", metavar="DATASET | key=value",
                        help="PathCap dataset folders or Hub ids, and settings such as ngram=13")
    parser.add_argument("--benchmarks", nargs="+", required=True, metavar="BENCH",
                        help="benchmark dataset folders or Hub ids (all their splits are compared)")
    from pathasst.dataset_builders.curate.split import add_output_arguments

    add_output_arguments(parser, "output folder: the reports, and with remove=true the clean PathCap dataset")
    parser.add_argument("--show", type=int, default=DEFAULT_SHOW, metavar="N",
                        help=f"print the first N contaminated records with their evidence (default {DEFAULT_SHOW})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.common import parse_paths_and_overrides

    datasets, overrides = parse_paths_and_overrides(list(args.inputs))
    cfg = load_config(DecontamConfig, args.recipe, overrides)
    cfg.inputs = [str(d) for d in datasets]
    cfg.benchmarks = [str(b) for b in args.benchmarks]
    from pathasst.dataset_builders.curate.split import command_line

    command = command_line("decontam")
    summary = decontaminate(datasets, args.benchmarks, args.out, cfg, overwrite=args.overwrite, resume=args.resume,
                            progress=not args.no_progress, command=command, show=args.show)
    for line in summary.pop("_shown"):
        print(line)
    flagged = summary["flagged"]
    more = flagged["total"] - min(args.show, flagged["total"])
    if more > 0:
        where = "rejects.jsonl" if cfg.remove else REPORT
        print(f"  ... and {more} more (see {Path(args.out) / where})")
    per_bench = ", ".join(f"{name} {b['flagged']['total']}" for name, b in summary["benchmarks"].items())
    action = (f"removed {summary['removed']}, kept {summary['records_total']}" if cfg.remove
              else "report only, nothing removed (remove=false)")
    print(f"{summary['inputs']} records in, {flagged['total']} contaminated (image {flagged['image']}, "
          f"text {flagged['text']}; {per_bench}); {action} -> {args.out}")
    return 0


def decontaminate(
    datasets: list[str],
    benchmarks: list[str],
    out: Path | str,
    cfg: Optional[DecontamConfig] = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: Optional[str] = None,
    show: int = 0,
) -> dict[str, Any]:
    """Flag (and with ``cfg.remove`` remove) training records that overlap the benchmarks.

    Returns:
        The summary (also ``out/summary.json``); the report itself is ``out/contamination_report.json``.
        Under ``_shown``: the first ``show`` flagged records as printable lines.

    Raises:
        InputError: a missing or unreadable training dataset or benchmark.
        OutputError: the output folder is in use, holds another run, or (remove=false) holds a dataset.
    """
    from tqdm.auto import tqdm

    from pathasst.config import write_resolved_config
    from pathasst.dataset_builders.curate.dedup import (
        _iter_records,
        compute_phash,
        iter_batches,
        normalized_words,
        open_pathcap,
        record_units,
        split_sizes,
    )
    from pathasst.dataset_builders.curate.near_duplicates import NearDuplicateIndex, is_hash
    from pathasst.errors import OutputError
    from pathasst.records import get_spec
    from pathasst.writer import DEFAULT_SPLITS, DatasetWriter, STATE_DIR

    cfg = cfg or DecontamConfig()
    cfg.inputs = cfg.inputs or [str(d) for d in datasets]
    cfg.benchmarks = cfg.benchmarks or [str(b) for b in benchmarks]
    out = Path(out)
    started = time.monotonic()
    seconds: dict[str, float] = {}
    if not cfg.remove and (out / STATE_DIR / "manifest.json").exists():
        raise OutputError(f"output folder {out} holds a dataset written by a run with remove=true; a report-only "
                          "run (remove=false) would leave it beside a report that does not describe it: choose "
                          "another --out")
    columns = ("id", "phash", "source", *cfg.fields)
    narrow = [open_pathcap(d, columns) for d in datasets]  # training inputs checked before the benchmarks load
    full = [open_pathcap(d) for d in datasets]

    benches, image_entries, image_hashes, table = load_benchmarks(list(benchmarks), cfg.ngram, progress)
    index = NearDuplicateIndex(cfg.max_distance)
    index.add(None, image_hashes)
    seconds["benchmarks"] = round(time.monotonic() - started, 3)
    log.info("decontam: %d benchmarks, %d images hashed, %d n-grams of %d words", len(benches), len(image_hashes),
             len(table), cfg.ngram)

    evidence: dict[int, dict[int, dict[str, Any]]] = {}  # position -> benchmark -> {"image": ..., "text": ...}
    matched_items: dict[int, set] = defaultdict(set)  # benchmark -> benchmark items matched

    def check_images(positions: list[int], hashes: list[str]) -> None:
        if not positions or not len(index):
            return
        hits = index.query(hashes)
        for q, entry, dist in hits:
            bi, bid, bsplit, bcol = image_entries[entry]
            slot = evidence.setdefault(positions[q], {}).setdefault(bi, {})
            matched_items[bi].add((bsplit, bid))
            if "image" not in slot or dist < slot["image"]["distance"]:
                slot["image"] = {"distance": int(dist), "benchmark_id": bid, "benchmark_split": bsplit,
                                 "column": bcol}

    def check_text(position: int, field: str, text: Any) -> None:
        if not isinstance(text, str) or not text:
            return
        words = normalized_words(text)
        for bi, hits in table.matches(words).items():
            start, entry = hits[0]
            for _, e in hits:
                matched_items[bi].add((e.split, e.record_id))
            slot = evidence.setdefault(position, {}).setdefault(bi, {})
            if "text" not in slot:
                slot["text"] = {"ngram": " ".join(words[start : start + cfg.ngram]), "field": field,
                                "benchmark_id": entry.record_id, "benchmark_split": entry.split,
                                "column": entry.column}

    # pass A: ids, hashes, sources and text fields; no images
    t = time.monotonic()
    keys: list[str] = []
    status: list[str] = []
    ids: list[str] = []
    sources: list[str] = []
    splits: dict[str, float] = {}
    missing: list[int] = []
    seen: dict[str, int] = {}
    total = sum(v or 0 for ds in narrow for v in split_sizes(ds).values()) or None
    bar = tqdm(total=total, desc="decontam: scan", unit="rec", disable=not progress)
    pending_pos: list[int] = []
    pending_hash: list[str] = []
    for di, ds in enumerate(narrow):
        position_in_split = Counter()
        for split, batch in iter_batches(ds):
            splits.setdefault(split, DEFAULT_SPLITS.get(split, 1.0))
            rows = len(batch["id"])
            for j in range(rows):
                pos = len(keys)
                rid = batch["id"][j]
                kind, key = record_units(di, split, position_in_split[split], rid, seen)
                position_in_split[split] += 1
                keys.append(key)
                status.append(kind)
                ids.append(str(rid) if rid is not None else key)
                sources.append((batch.get("source") or [None] * rows)[j] or "unknown")
                if kind != "ok":
                    continue
                phash = (batch.get("phash") or [None] * rows)[j]
                if is_hash(phash):
                    pending_pos.append(pos)
                    pending_hash.append(phash)
                else:
                    missing.append(pos)
                for field in cfg.fields:
                    check_text(pos, field, (batch.get(field) or [None] * rows)[j])
            if len(pending_pos) >= _QUERY_BATCH:
                check_images(pending_pos, pending_hash)
                pending_pos, pending_hash = [], []
            bar.update(rows)
    check_images(pending_pos, pending_hash)
    bar.close()
    n = len(keys)
    seconds["scan"] = round(time.monotonic() - t, 3)

    # pass B: hash the images of records without a pHash
    computed: dict[int, str] = {}
    unhashable = 0
    if missing:
        t = time.monotonic()
        todo = set(missing)
        bar = tqdm(total=len(todo), desc="decontam: pHash", unit="img", disable=not progress)
        for i, (_, _, record) in enumerate(_iter_records(full)):
            if i in todo:
                value = compute_phash(record.get("image"))
                if value is None:
                    unhashable += 1
                else:
                    computed[i] = value
                bar.update(1)
        bar.close()
        positions = sorted(computed)
        for start in range(0, len(positions), _QUERY_BATCH):
            chunk = positions[start : start + _QUERY_BATCH]
            check_images(chunk, [computed[p] for p in chunk])
        seconds["phash"] = round(time.monotonic() - t, 3)

    # the report
    report = _report(cfg, benches, evidence, matched_items, ids, sources, status, n, len(computed), unhashable,
                     datasets)
    shown = [f"  {'removed' if cfg.remove else 'flagged'} {ids[p]}: {_reason(benches, evidence[p])[0]}"
             for p in sorted(evidence)[:show]]

    # pass C: the clean dataset
    result = None
    counts = Counter()
    if cfg.remove:
        t = time.monotonic()
        with DatasetWriter(out, get_spec("pathcap"), config=cfg, resume=resume, overwrite=overwrite, splits=splits,
                           command=command or "pathasst curate decontam", config_ignore=DecontamConfig.RUNTIME_KEYS
                           ) as writer:
            bar = tqdm(total=n, desc="decontam: write", unit="rec", disable=not progress)
            for i, (split, _, record) in enumerate(_iter_records(full)):
                bar.update(1)
                key = keys[i]
                if writer.is_done(key):
                    counts["already_done"] += 1
                    continue
                if status[i] == "noid":
                    with writer.unit(key):
                        writer.reject(key, "invalid record: no id")
                    counts["invalid"] += 1
                elif status[i] == "dupid":
                    with writer.unit(key):
                        writer.reject(ids[i], f"duplicate id: '{ids[i]}' occurs {seen.get(ids[i], 0)} times "
                                      "in the input")
                    counts["duplicate_id"] += 1
                elif i in evidence:
                    reason, names, items = _reason(benches, evidence[i])
                    writer.reject(ids[i], reason, benchmarks=names, evidence=items)
                    counts["removed"] += 1
                else:
                    if i in computed:
                        record = dict(record, phash=computed[i])
                    counts["kept" if writer.add(record, split=split) else "invalid"] += 1
            bar.close()
            result = writer.finalize(_card_text(benches, cfg))
        seconds["write"] = round(time.monotonic() - t, 3)
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_resolved_config(cfg, out / "config.yaml")
    seconds["total"] = round(time.monotonic() - started, 3)

    report["seconds"] = seconds
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / REPORT_MD).write_text(render_markdown(report))
    summary = {
        "out": str(out),
        "inputs": n,
        "remove": cfg.remove,
        "flagged": report["flagged"],
        "benchmarks": {name: {"flagged": b["flagged"]} for name, b in report["benchmarks"].items()},
        "removed": counts["removed"],
        "this_run": dict(counts),
        "seconds": seconds,
    }
    if result is not None:
        summary.update({
            "records": result.records,
            "records_total": result.total_records,
            "rejected_total": result.rejected,
            "reject_reasons": result.reject_reasons,
            "accounted": result.total_records + result.rejected == n,
        })
        if not summary["accounted"]:
            log.warning("accounting: %d input records but %d records + %d ledger lines in %s", n,
                        result.total_records, result.rejected, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["_shown"] = shown
    return summary


def _reason(benches: list[Benchmark], found: dict[int, dict[str, Any]]) -> tuple[str, list[str], list[dict]]:
    """The ledger reason (image evidence first, then text), the benchmark names, the evidence list."""
    items = []
    for bi in sorted(found):
        for kind in ("image", "text"):
            if kind in found[bi]:
                items.append({"benchmark": benches[bi].name, "kind": kind, **found[bi][kind]})
    first = next((e for e in items if e["kind"] == "image"), items[0])
    where = f"{first['benchmark']} {first['benchmark_split']}/{first['benchmark_id']}"
    if first["kind"] == "image":
        reason = f"benchmark image: phash distance {first['distance']} to {where}"
    else:
        words = len(first["ngram"].split())
        reason = f"benchmark text: {words}-gram \"{first['ngram']}\" in {where} ({first['column']})"
    return reason, [benches[bi].name for bi in sorted(found)], items


def _report(cfg, benches, evidence, matched_items, ids, sources, status, n, computed, unhashable, datasets):
    per_source_records = Counter(s for s, st in zip(sources, status) if st == "ok")

    def tally(positions_kinds) -> dict[str, Any]:
        totals = Counter()
        by_source: dict[str, Counter] = defaultdict(Counter)
        for pos, kinds in positions_kinds:
            for key in ("total", *kinds, *(["both"] if len(kinds) == 2 else [])):
                totals[key] += 1
                by_source[sources[pos]][key] += 1
        flagged = {k: totals.get(k, 0) for k in ("total", "image", "text", "both")}
        return flagged, {s: {k: c.get(k, 0) for k in ("total", "image", "text", "both")}
                         for s, c in sorted(by_source.items())}

    report: dict[str, Any] = {
        "settings": {"max_distance": cfg.max_distance, "ngram": cfg.ngram, "fields": list(cfg.fields),
                     "remove": cfg.remove, "words": "NFKC, case-folded, \\w+ tokens"},
        "training": {"inputs": [str(d) for d in datasets], "records": n,
                     "records_per_source": dict(sorted(per_source_records.items())),
                     "phash_computed": computed, "unhashable": unhashable},
        "benchmarks": {},
    }
    for bi, bench in enumerate(benches):
        hits = [(p, [k for k in ("image", "text") if k in found[bi]]) for p, found in sorted(evidence.items())
                if bi in found]
        flagged, per_source = tally(hits)
        examples = []
        for p, kinds in hits[: cfg.max_examples]:
            example = {"id": ids[p], "source": sources[p]}
            for kind in kinds:
                example[kind] = evidence[p][bi][kind]
            examples.append(example)
        report["benchmarks"][bench.name] = {
            "ref": bench.ref,
            "splits": bench.splits,
            "id_column": bench.id_column,
            "image_columns": bench.image_columns,
            "text_columns": bench.text_columns,
            "text_columns_detail": bench.text_detail,
            "images_hashed": bench.images_hashed,
            "images_unreadable": bench.images_unreadable,
            "ngrams": bench.ngrams,
            "flagged": flagged,
            "per_source": per_source,
            "benchmark_items_matched": len(matched_items.get(bi, ())),
            "examples": examples,
        }
    flagged, per_source = tally(
        (p, sorted({k for found in f.values() for k in found}, key=("image", "text").index))
        for p, f in evidence.items()
    )
    report["flagged"] = flagged
    report["per_source"] = {s: {"records": per_source_records.get(s, 0), **per_source.get(s, {"total": 0, "image": 0,
                                                                                               "text": 0, "both": 0})}
                            for s in sorted(set(per_source_records) | set(per_source))}
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a page a person reads: settings, totals per source, one section per benchmark."""
    s = report["settings"]
    lines = [
        "# Contamination report",
        "",
        f"Training records: {report['training']['records']} ({', '.join(report['training']['inputs'])}). "
        f"A record is contaminated when its image is within pHash distance {s['max_distance']} of a benchmark "
        f"image, or one of its fields ({', '.join(s['fields'])}) shares {s['ngram']} consecutive words with a "
        "benchmark text. " + ("Contaminated records were removed (see rejects.jsonl)." if s["remove"]
                              else "Report only: nothing was removed (remove=false)."),
        "",
        f"**Contaminated: {report['flagged']['total']}** (image {report['flagged']['image']}, text "
        f"{report['flagged']['text']}, both {report['flagged']['both']}).",
        "",
        "| source | records | contaminated | image | text |",
        "|---|---:|---:|---:|---:|",
    ]
    for source, c in report["per_source"].items():
        lines.append(f"| {source} | {c['records']} | {c['total']} | {c['image']} | {c['text']} |")
    for name, b in report["benchmarks"].items():
        f = b["flagged"]
        lines += [
            "",
            f"## {name}",
            "",
            f"Splits: {', '.join(f'{k} ({v})' for k, v in b['splits'].items())}. Images hashed: {b['images_hashed']}"
            + (f" ({b['images_unreadable']} unreadable)" if b["images_unreadable"] else "")
            + f" from {', '.join(b['image_columns']) or 'no image column'}. Text columns: "
            + (", ".join(f"{c} ({d['long_enough']} of {d['texts']} texts long enough)"
                         for c, d in b["text_columns_detail"].items()) or "none")
            + f"; {b['ngrams']} n-grams.",
            "",
            f"Contaminated training records: **{f['total']}** (image {f['image']}, text {f['text']}, both "
            f"{f['both']}), matching {b['benchmark_items_matched']} benchmark items.",
        ]
        if b["per_source"]:
            lines += ["", "| source | contaminated | image | text |", "|---|---:|---:|---:|"]
            lines += [f"| {src} | {c['total']} | {c['image']} | {c['text']} |" for src, c in b["per_source"].items()]
        if b["examples"]:
            lines += ["", "| training id | source | evidence |", "|---|---|---|"]
            for ex in b["examples"]:
                parts = []
                if "image" in ex:
                    e = ex["image"]
                    parts.append(f"image: distance {e['distance']} to {e['benchmark_split']}/{e['benchmark_id']}")
                if "text" in ex:
                    e = ex["text"]
                    gram = e["ngram"].replace("|", "\\|")
                    parts.append(f"text: \"{gram}\" ({e['field']}) in {e['benchmark_split']}/{e['benchmark_id']} "
                                 f"{e['column']}")
                lines.append(f"| {ex['id']} | {ex['source']} | {'; '.join(parts)} |")
    return "\n".join(lines) + "\n"


def _card_text(benches: list[Benchmark], cfg: DecontamConfig) -> str:
    names = ", ".join(f"`{b.name}`" for b in benches)
    return (
        "# PathCap (decontaminated)\n\n"
        f"Records that overlap the benchmarks {names} were removed: images within pHash distance "
        f"{cfg.max_distance} of a benchmark image, or {', '.join(cfg.fields)} sharing {cfg.ngram} consecutive "
        "words with a benchmark text. Each removed record is listed in `rejects.jsonl` with the benchmark and "
        "the evidence; `contamination_report.md` summarises them per benchmark and per source.\n\n"
        "```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\")\n```\n"
    )


if __name__ == "__main__":  # python -m pathasst.dataset_builders.curate.decontam DATASET... --benchmarks B --out DIR
    from pathasst.cli import main as _main

    sys.exit(_main(["curate", "decontam", *sys.argv[1:]]))
