"""The dataset writer every stage uses: records in, a Hub-ready dataset folder out.

Layout of an output folder (DESIGN.md §4)::

    OUT/
      README.md                              dataset card: `configs:` + `dataset_info:`
      data/<split>-NNNNN-of-NNNNN.parquet     shards, images embedded
      rejects.jsonl                          one line per input not turned into output
      config.yaml                            the resolved config, secrets redacted
      .pathasst/manifest.json                the commit point: shards, ledger lengths, config hash
      .pathasst/units.jsonl                  the input units already committed (for resume)
      .pathasst/lock                         held while a run writes here

Why by hand: ``datasets`` writes Parquet from a finished ``Dataset`` (``to_parquet``) or through its
Arrow cache (``from_generator``), which holds a whole copy on disk first and cannot resume a killed
run. We stream with pyarrow's ``ParquetWriter`` into temporary part files and commit them
atomically (write, fsync, rename, then the manifest), so a ``kill -9`` loses at most the uncommitted
part, which the rerun redoes: no duplicate, no loss. The card is rendered with the ``datasets``
classes that ``push_to_hub`` itself uses, so ``load_dataset(folder)`` reads the folder as the Hub will.

Units: an input that yields several records (a PDF yields its figures) is written inside
``with writer.unit(key):``; its records and rejections commit together or not at all, and
``writer.is_done(key)`` tells a resumed stage to skip it. ``add``/``reject`` outside a unit are a
unit of their own, keyed by the record id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from pathasst.errors import OutputError, RecordError
from pathasst.records import DatasetSpec, image_to_bytes, record_errors

STATE_DIR = ".pathasst"
MANIFEST = "manifest.json"
UNITS = "units.jsonl"
REJECTS = "rejects.jsonl"
CONFIG = "config.yaml"
DEFAULT_SPLITS: dict[str, float] = {"train": 0.9, "validation": 0.05, "test": 0.05}
# The column options (no compression, plain encoding for embedded image bytes), content-defined
# chunking (a regenerated dataset deduplicates well on upload) and the page index are `datasets`'
# own Parquet choices, taken from its ParquetWriter. Row groups differ on purpose: `datasets` 5 cuts
# them at 100 MB, which with one open part per split and the encode/Arrow copies measured 620 MiB of
# heap in benchmarks/perf/shard_writer.py; 100 rows (or 32 MB) keeps the writer's memory flat and
# small, and lets the Hub viewer and streaming read a few images without pulling a whole group.
ROWS_PER_GROUP = 100
MAX_GROUP_BYTES = 32 << 20


def assign_split(group: str, ratios: Mapping[str, float], salt: str = "pathasst") -> str:
    """Split for a group, from a stable hash: the same group always lands in the same split.

    Args:
        group: the record's group (article, book, site, collection).
        ratios: split name to fraction; fractions are normalised, zeros never receive a group.
        salt: change it to draw a different, equally stable partition.
    """
    total = sum(ratios.values())
    if total <= 0:
        raise ValueError("split ratios must sum to a positive number")
    digest = hashlib.sha256(f"{salt}\x00{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    acc = 0.0
    name = next(iter(ratios))
    for name, ratio in ratios.items():
        acc += ratio / total
        if u < acc:
            return name
    return name


@dataclasses.dataclass
class WriteSummary:
    """What a finished writer reports: counts per split, rejections by reason, shard files."""

    out_dir: str
    dataset: str
    records: dict[str, int]
    rejected: int
    reject_reasons: dict[str, int]
    units: int
    shards: list[str]
    bytes: int
    seconds: float

    @property
    def total_records(self) -> int:
        return sum(self.records.values())

    def report(self) -> dict[str, Any]:
        """The part of a stage's ``summary.json`` every stage shares."""
        return {
            "out": self.out_dir,
            "records": self.records,
            "rejected": self.rejected,
            "reject_reasons": self.reject_reasons,
            "inputs_done": self.units,
            "shards": len(self.shards),
            "seconds": self.seconds,
        }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _append_lines(path: Path, lines: list[str]) -> int:
    """Append lines durably; return the file's new length (what the manifest records)."""
    with open(path, "a") as fh:
        if lines:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        return fh.tell()


def _truncate_to(path: Path, length: int) -> None:
    """Cut a ledger back to its last committed length (drops lines of an uncommitted unit)."""
    if path.exists() and path.stat().st_size != length:
        with open(path, "r+b") as fh:
            fh.truncate(length)


class _OpenPart:
    """One split's uncommitted part file: rows go in row groups, the file commits on close."""

    def __init__(self, tmp_path: Path, features, schema):
        import pyarrow.parquet as pq
        from datasets import config as ds_config
        from datasets.arrow_writer import get_parquet_column_options

        self.tmp_path = tmp_path
        self.features = features
        self.writer = pq.ParquetWriter(
            tmp_path,
            schema,
            use_content_defined_chunking=ds_config.DEFAULT_CDC_OPTIONS,
            write_page_index=True,
            **get_parquet_column_options(features, schema),
        )
        self.writer.add_key_value_metadata(
            {"content_defined_chunking": json.dumps(ds_config.DEFAULT_CDC_OPTIONS)}
        )
        self.rows: list[dict[str, Any]] = []  # validated records with embedded images, not yet encoded
        self.row_bytes = 0
        self.num_records = 0
        self.num_bytes = 0  # uncompressed arrow bytes, what dataset_info reports

    def flush_group(self, schema) -> None:
        import pyarrow as pa

        if not self.rows:
            return
        # one batch encode per row group: encoding record by record costs ~3x as much
        batch = self.features.encode_batch({name: [r.get(name) for r in self.rows] for name in self.features})
        table = pa.Table.from_pydict(batch, schema=schema)
        self.writer.write_table(table)
        self.num_bytes += table.nbytes
        self.rows, self.row_bytes = [], 0

    def close(self, schema) -> None:
        self.flush_group(schema)
        self.writer.close()
        with open(self.tmp_path, "rb") as fh:
            os.fsync(fh.fileno())

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()


class DatasetWriter:
    """Stream records into a resumable, Hub-ready dataset folder (see the module docstring).

    Args:
        out_dir: the dataset folder to write.
        spec: the record contract (``pathasst.records.get_spec('pathcap')``).
        config: the resolved config of the stage; its hash guards against mixing two configs in
            one folder, and it is written (secrets redacted) as ``config.yaml``.
        resume: continue a run whose config differs from the one that started the folder.
        overwrite: delete what an earlier run wrote here and start afresh.
        splits: split name to fraction, assigned per group by :func:`assign_split`.
        max_shard_bytes: a part is committed once its rows reach this many Arrow bytes.
        max_shard_records: or once it holds this many records.
        command: how the run was started, shown to a second run that finds the folder locked.
        config_ignore: top-level config keys that do not change the output (worker counts,
            timeouts): left out of the hash, so a rerun may change them without ``--resume``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        spec: DatasetSpec,
        *,
        config: Any = None,
        resume: bool = False,
        overwrite: bool = False,
        splits: Mapping[str, float] | None = None,
        split_salt: str = "pathasst",
        max_shard_bytes: int = 500 << 20,
        max_shard_records: int | None = None,
        command: str | None = None,
        config_ignore: Iterable[str] = (),
    ):
        from pathasst.config import config_hash

        self.out = Path(out_dir)
        self.spec = spec
        self.splits = dict(splits or DEFAULT_SPLITS)
        self.split_salt = split_salt
        self.max_shard_bytes = max_shard_bytes
        self.max_shard_records = max_shard_records
        self.config = config
        self.config_hash = config_hash(config, ignore=config_ignore) if config is not None else "none"
        self.command = command or " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])
        self.schema = spec.features.arrow_schema
        self._start = time.monotonic()
        self._lock_fh = None
        self._parts: dict[str, _OpenPart] = {}
        # per split (None: units without rows): ledger lines waiting for that split's commit
        self._pending: dict[str | None, dict[str, list[str]]] = {}
        self._unit: dict[str, Any] | None = None
        self._closed = False

        self._prepare_folder(resume=resume, overwrite=overwrite)

    # --- opening: checks, lock, recovery ---------------------------------------------------

    @property
    def state(self) -> Path:
        return self.out / STATE_DIR

    def _prepare_folder(self, resume: bool, overwrite: bool) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "data").mkdir(exist_ok=True)
            self.state.mkdir(exist_ok=True)
            probe = self.state / f".probe-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"cannot write to output folder {self.out}: {exc.strerror or exc}") from None
        self._acquire_lock()
        try:
            manifest_path = self.state / MANIFEST
            if manifest_path.exists() and overwrite:
                self._wipe()
            elif not manifest_path.exists():
                foreign = [p.name for p in self.out.iterdir() if p.name not in (STATE_DIR, "data")]
                foreign += [f"data/{p.name}" for p in (self.out / "data").iterdir()]
                if foreign and not overwrite:
                    raise OutputError(
                        f"output folder {self.out} is not empty and holds no pathasst run "
                        f"({', '.join(sorted(foreign)[:5])}); choose another --out or pass --overwrite"
                    )
                if foreign and overwrite:
                    self._wipe()
            if (self.state / MANIFEST).exists():
                self.manifest = json.loads((self.state / MANIFEST).read_text())
                self._check_compatible(resume)
                self._recover()
            else:
                self.manifest = self._new_manifest()
                _atomic_write_text(self.state / MANIFEST, json.dumps(self.manifest, indent=1))
            self._load_done()
            if self.config is not None:
                from pathasst.config import write_resolved_config

                write_resolved_config(self.config, self.out / CONFIG)
        except BaseException:
            self._release_lock()
            raise

    def _new_manifest(self) -> dict[str, Any]:
        return {
            "format": 1,
            "dataset": self.spec.name,
            "config_hash": self.config_hash,
            "splits": self.splits,
            "split_salt": self.split_salt,
            "status": "running",
            "shards": [],
            "next_part": 0,
            "rejects_bytes": 0,
            "units_bytes": 0,
            "history": [{"event": "start", "command": self.command, "time": time.time()}],
        }

    def _check_compatible(self, resume: bool) -> None:
        m = self.manifest
        if m.get("dataset") != self.spec.name:
            raise OutputError(
                f"output folder {self.out} holds a '{m.get('dataset')}' dataset, not '{self.spec.name}'; "
                "choose another --out or pass --overwrite"
            )
        if m.get("splits") != self.splits or m.get("split_salt") != self.split_salt:
            raise OutputError(
                f"output folder {self.out} was split as {m.get('splits')} (salt {m.get('split_salt')!r}); "
                f"this run asks for {self.splits} (salt {self.split_salt!r}); pass --overwrite to start afresh"
            )
        if m.get("config_hash") != self.config_hash:
            if not resume:
                raise OutputError(
                    f"output folder {self.out} was written with a different config "
                    f"(hash {m.get('config_hash')}, now {self.config_hash}); pass --resume to continue it "
                    "with the new config or --overwrite to start afresh"
                )
            m["history"].append({"event": "config-change", "from": m["config_hash"], "to": self.config_hash})
            m["config_hash"] = self.config_hash
        m["history"].append({"event": "resume", "command": self.command, "time": time.time()})

    def _recover(self) -> None:
        """Bring the folder back to its last commit: finish renames, drop uncommitted bytes."""
        m = self.manifest
        if m.get("status") == "finalizing":
            self._apply_renames(m["renames"])
            self._finish_finalize_manifest()
        known = {s["file"] for s in m["shards"]}
        for path in (self.out / "data").iterdir():
            rel = f"data/{path.name}"
            if rel not in known:  # a part written after the last commit, or its temporary file
                path.unlink()
        for shard in m["shards"]:
            if not (self.out / shard["file"]).exists():
                raise OutputError(
                    f"{self.out}: committed shard {shard['file']} is missing; the folder was changed by "
                    "hand. Pass --overwrite to rebuild it."
                )
        _truncate_to(self.out / REJECTS, m["rejects_bytes"])
        _truncate_to(self.state / UNITS, m["units_bytes"])
        m["status"] = "running"

    def _load_done(self) -> None:
        import pyarrow.parquet as pq

        self._done_units: set[str] = set()
        self._record_keys: set[str] = set()
        self._records_per_split: Counter[str] = Counter()
        self._reject_reasons: Counter[str] = Counter()
        self._rejected = 0
        units = self.state / UNITS
        if units.exists():
            with open(units) as fh:
                self._done_units.update(json.loads(line)["unit"] for line in fh if line.strip())
        rejects = self.out / REJECTS
        if rejects.exists():
            with open(rejects) as fh:
                for line in fh:
                    if line.strip():
                        item = json.loads(line)
                        self._rejected += 1
                        self._reject_reasons[_reason_kind(item.get("reason", ""))] += 1
        for shard in self.manifest["shards"]:
            keys = pq.read_table(self.out / shard["file"], columns=[self.spec.key]).column(0).to_pylist()
            self._record_keys.update(keys)
            self._records_per_split[shard["split"]] += shard["num_records"]

    def _acquire_lock(self) -> None:
        path = self.state / "lock"
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                other = json.loads(fh.read() or "{}")
            except json.JSONDecodeError:
                other = {}
            fh.close()
            raise OutputError(
                f"output folder {self.out} is in use by another run (pid {other.get('pid', '?')} on "
                f"{other.get('host', '?')}, started {other.get('started', '?')}: {other.get('command', '?')}); "
                "wait for it to finish or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": self.command,
        }))
        fh.flush()
        self._lock_fh = fh

    def _release_lock(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _wipe(self) -> None:
        """Remove everything in the folder except the lock we hold."""
        for path in self.out.iterdir():
            if path.name == STATE_DIR:
                for sub in path.iterdir():
                    if sub.name != "lock":
                        shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        (self.out / "data").mkdir(exist_ok=True)

    # --- writing ---------------------------------------------------------------------------

    def is_done(self, key: str) -> bool:
        """True when the unit or record ``key`` was committed by this or an earlier run."""
        return key in self._done_units

    @contextlib.contextmanager
    def unit(self, key: str) -> Iterator["DatasetWriter"]:
        """Group the records and rejections of one input so they commit together."""
        if self._unit is not None:
            raise RuntimeError("writer units do not nest")
        self._unit = {"key": str(key), "rows": [], "rejects": [], "ids": set(), "split": None}
        try:
            yield self
        except BaseException:
            self._unit = None
            raise
        unit, self._unit = self._unit, None
        self._commit_unit(unit)

    def add(self, record: Mapping[str, Any], split: str | None = None) -> bool:
        """Add one record; returns False when it went to the ledger instead (invalid, duplicate).

        Args:
            record: a record of this writer's contract; images may be paths, bytes or PIL images.
            split: force a split (benchmark data with given splits); default: hash of its group.
        """
        if self._unit is None:
            key = str(record.get(self.spec.key, "")) if isinstance(record, Mapping) else ""
            with self.unit(key):
                return self.add(record, split)
        key = record.get(self.spec.key) if isinstance(record, Mapping) else None
        errors = record_errors(self.spec, record)
        if errors:
            self.reject(str(key), "invalid record: " + "; ".join(errors))
            return False
        unit = self._unit
        if key in self._record_keys or key in unit["ids"]:
            self.reject(str(key), f"duplicate {self.spec.key}")
            return False
        if split is not None and split not in self.splits:
            raise RecordError(f"record '{key}': split '{split}' is not one of {', '.join(self.splits)}")
        if split is not None and unit["split"] not in (None, split):
            raise RecordError(
                f"record '{key}': split '{split}' differs from split '{unit['split']}' of the other records "
                f"of unit '{unit['key']}'; the records of one input share a split"
            )
        if unit["split"] is None:
            # the unit is one input, hence one group: its first record decides the split
            unit["split"] = split or assign_split(self.spec.group_of(record), self.splits, self.split_salt)
        try:
            row = self._embed_images(self.spec.features, record)
        except OSError as exc:
            self.reject(str(key), f"cannot read image: {exc}")
            return False
        unit["ids"].add(key)
        unit["rows"].append(row)
        return True

    def reject(self, key: str, reason: str, **info: Any) -> None:
        """Send one input to ``rejects.jsonl`` with its reason (and any extra JSON-able fields)."""
        if self._unit is None:
            with self.unit(str(key)):
                return self.reject(key, reason, **info)
        line = json.dumps({"id": str(key), "reason": reason, **info}, ensure_ascii=False, default=str)
        self._unit["rejects"].append((line, reason))

    def _embed_images(self, features, record):
        from datasets import Image

        out = dict(record)
        for name, feature in features.items():
            if isinstance(feature, Image) and out.get(name) is not None:
                out[name] = image_to_bytes(out[name])
        return out

    def _commit_unit(self, unit: dict[str, Any]) -> None:
        # All rows of a unit are in one split, so a split's part commits on its own together with
        # the units it holds.
        split = unit["split"] if unit["rows"] else None
        pending = self._pending.setdefault(split, {"units": [], "rejects": []})
        part = None
        if split is not None:
            part = self._parts.get(split) or self._open_part(split)
        for row in unit["rows"]:
            part.rows.append(row)
            part.row_bytes += _row_size(row)
            part.num_records += 1
            if len(part.rows) >= ROWS_PER_GROUP or part.row_bytes >= MAX_GROUP_BYTES:
                self._guard_io(part.flush_group, self.schema)
            self._record_keys.add(row[self.spec.key])
            self._records_per_split[split] += 1
        for line, reason in unit["rejects"]:
            pending["rejects"].append(line)
            self._rejected += 1
            self._reject_reasons[_reason_kind(reason)] += 1
        pending["units"].append(json.dumps({"unit": unit["key"], "records": len(unit["rows"])}))
        self._done_units.add(unit["key"])
        if part is not None and self._part_full(part):
            self.commit(split)

    def _part_full(self, part: _OpenPart) -> bool:
        if self.max_shard_records is not None and part.num_records >= self.max_shard_records:
            return True
        return part.num_bytes + part.row_bytes >= self.max_shard_bytes

    def _open_part(self, split: str) -> _OpenPart:
        n = self.manifest["next_part"]
        self.manifest["next_part"] = n + 1
        tmp = self.out / "data" / f"{split}-p{n:06d}.parquet.tmp"
        part = self._guard_io(_OpenPart, tmp, self.spec.features, self.schema)
        self._parts[split] = part
        return part

    def _guard_io(self, fn, *args):
        """Run a write; on a full disk (or any OS error) drop uncommitted parts and say what is safe."""
        try:
            return fn(*args)
        except OSError as exc:
            for part in self._parts.values():
                part.abort()
            self._parts.clear()
            self._pending.clear()
            what = "disk full" if exc.errno == errno.ENOSPC else f"write failed ({exc.strerror or exc})"
            committed = sum(s["num_records"] for s in self.manifest["shards"])
            raise OutputError(
                f"{what} while writing to {self.out}: the {committed} records committed before are safe "
                "and nothing half-written was kept; free space and rerun the same command to resume"
            ) from None

    def commit(self, split: str | None = None) -> None:
        """Make units durable: close part files, then append the ledgers, then write the manifest.

        Args:
            split: commit only this split's part (it is full); default: every open part.
        """
        splits = [split] if split is not None else list(self._parts)
        new_shards = []
        for name in splits:
            part = self._parts[name]  # stays listed until renamed, so a failure aborts it too
            self._guard_io(part.close, self.schema)
            final = part.tmp_path.with_name(part.tmp_path.name[: -len(".tmp")])
            self._guard_io(os.replace, part.tmp_path, final)
            del self._parts[name]
            new_shards.append({
                "file": f"data/{final.name}",
                "split": name,
                "num_records": part.num_records,
                "num_bytes": part.num_bytes,
            })
        # units that wrote no row (all rejected) ride along with any commit
        committing = [self._pending.pop(name, None) for name in [*splits, None]]
        committing = [p for p in committing if p]
        if not new_shards and not committing:
            return
        rejects = [line for p in committing for line in p["rejects"]]
        units = [line for p in committing for line in p["units"]]
        rejects_bytes = self._guard_io(_append_lines, self.out / REJECTS, rejects)
        units_bytes = self._guard_io(_append_lines, self.state / UNITS, units)
        self.manifest["shards"].extend(new_shards)
        self.manifest["rejects_bytes"] = rejects_bytes
        self.manifest["units_bytes"] = units_bytes
        self._guard_io(_fsync_dir, self.out / "data")
        self._guard_io(_atomic_write_text, self.state / MANIFEST, json.dumps(self.manifest, indent=1))

    # --- finishing -------------------------------------------------------------------------

    def finalize(self, card_text: str = "") -> WriteSummary:
        """Commit, give shards their final names, write the dataset card; release the folder."""
        self.commit()
        if not self.manifest["shards"]:
            # A run that kept nothing (every input rejected, a budget stop before the first record)
            # must still load: one empty shard of the first split, with the schema, gives
            # load_dataset an empty split with the right features (without any shard it would take
            # summary.json or the ledger for the data).
            self._open_part(next(iter(self.splits)))
            self.commit()
        m = self.manifest
        by_split: dict[str, list[dict]] = {}
        for shard in m["shards"]:
            by_split.setdefault(shard["split"], []).append(shard)
        renames = []
        for split, shards in by_split.items():
            for i, shard in enumerate(shards):
                target = f"data/{split}-{i:05d}-of-{len(shards):05d}.parquet"
                renames.append([shard["file"], target])
                shard["file"] = target
        m["status"] = "finalizing"
        m["renames"] = renames
        self._guard_io(_atomic_write_text, self.state / MANIFEST, json.dumps(m, indent=1))
        self._apply_renames(renames)
        self._write_card(by_split, card_text)
        self._finish_finalize_manifest()
        summary = self.summary()
        self.close()
        return summary

    def _apply_renames(self, renames: list[list[str]]) -> None:
        for src, dst in renames:
            if src != dst and (self.out / src).exists():
                os.replace(self.out / src, self.out / dst)
        _fsync_dir(self.out / "data")

    def _finish_finalize_manifest(self) -> None:
        self.manifest["status"] = "finalized"
        self.manifest.pop("renames", None)
        self.manifest["history"].append({"event": "finalize", "time": time.time()})
        _atomic_write_text(self.state / MANIFEST, json.dumps(self.manifest, indent=1))

    def _write_card(self, by_split: dict[str, list[dict]], card_text: str) -> None:
        from datasets import DatasetInfo, SplitDict, SplitInfo
        from datasets.info import DatasetInfosDict
        from datasets.utils.metadata import MetadataConfigs
        from huggingface_hub import DatasetCard, DatasetCardData

        splits = SplitDict()
        for split in self.splits:
            shards = by_split.get(split, [])
            if shards:
                splits.add(SplitInfo(
                    name=split,
                    num_bytes=sum(s["num_bytes"] for s in shards),
                    num_examples=sum(s["num_records"] for s in shards),
                ))
        info = DatasetInfo(
            description=self.spec.description,
            features=self.spec.features,
            splits=splits,
            download_size=sum((self.out / s["file"]).stat().st_size for s in self.manifest["shards"]),
            dataset_size=sum(s["num_bytes"] for s in self.manifest["shards"]),
        )
        data_files = [
            {"split": split, "path": f"data/{split}-*"} for split in self.splits if by_split.get(split)
        ]
        card_data = DatasetCardData()
        if data_files:
            MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card_data)
            DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
        body = card_text or _default_card_body(self.spec, self.summary())
        card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")
        _atomic_write_text(self.out / "README.md", str(card))

    def summary(self) -> WriteSummary:
        return WriteSummary(
            out_dir=str(self.out),
            dataset=self.spec.name,
            records={s: self._records_per_split.get(s, 0) for s in self.splits},
            rejected=self._rejected,
            reject_reasons=dict(self._reject_reasons.most_common()),
            units=len(self._done_units),
            shards=[s["file"] for s in self.manifest["shards"]],
            bytes=sum((self.out / s["file"]).stat().st_size for s in self.manifest["shards"]
                      if (self.out / s["file"]).exists()),
            seconds=round(time.monotonic() - self._start, 3),
        )

    def close(self) -> None:
        """Commit what was added (so an interrupted run keeps it) and release the folder."""
        if self._closed:
            return
        try:
            if self._parts or self._pending:
                self.commit()
        finally:
            self._closed = True
            self._release_lock()

    def abort(self) -> None:
        """Drop what is uncommitted and release the folder (after an error mid-write)."""
        for part in self._parts.values():
            part.abort()
        self._parts.clear()
        self._closed = True
        self._release_lock()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()  # a clean stop or Ctrl-C keeps every finished unit
        else:
            self.abort()


def _row_size(row: Mapping[str, Any]) -> int:
    size = 0
    for value in row.values():
        if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
            size += len(value["bytes"])
        elif isinstance(value, (str, bytes)):
            size += len(value)
        else:
            size += 16
    return size


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: the text before the first colon ('invalid record', ...)."""
    return reason.split(":", 1)[0].strip()[:80]


def _default_card_body(spec: DatasetSpec, summary: WriteSummary) -> str:
    counts = ", ".join(f"{k}: {v}" for k, v in summary.records.items() if v)
    return (
        f"# {spec.name}\n\n{spec.description}\n\n"
        f"Records: {counts or 'none'}. Inputs rejected: {summary.rejected} (see `rejects.jsonl`).\n\n"
        "```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\")\n```\n"
    )
