"""Input references every stage accepts: local paths that must exist, or Hub dataset ids.

Checked before any work starts, so a typo costs one line of error, not an hour of compute.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from pathasst.errors import InputError

# owner/name as the Hub spells repository ids (optionally @revision)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class DataRef:
    """Where a dataset comes from: ``kind`` is ``local`` (an existing path) or ``hub`` (a repo id)."""

    kind: Literal["local", "hub"]
    value: str

    @property
    def path(self) -> Path:
        return Path(self.value)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The project's cache folder: ``cache_dir``, else ``$PATHASST_CACHE``, else ``~/.cache/pathasst``."""
    return Path(cache_dir or os.environ.get("PATHASST_CACHE") or "~/.cache/pathasst").expanduser()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in 1 MiB pieces (inputs of any size, flat memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def require_paths(paths: Iterable[str | Path], what: str = "input") -> list[Path]:
    """Return the paths, or raise one :class:`InputError` that lists every missing one."""
    paths = [Path(p).expanduser() for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"{what} not found: {', '.join(missing)}")
    return paths


def data_ref(value: str, key: str = "data") -> DataRef:
    """Classify a ``data=`` value: an existing local path wins; else it must look like a Hub id.

    Raises:
        InputError: neither an existing path nor a Hub id (``owner/name``); names ``key``.
    """
    path = Path(value).expanduser()
    if path.exists():
        return DataRef("local", str(path))
    looks_local = value.startswith((".", "/", "~")) or value.count("/") != 1 or path.suffix in (".parquet", ".jsonl", ".json")
    if looks_local or not _HUB_ID.match(value):
        raise InputError(f"{key}={value}: no such file or folder (and not a Hub dataset id like owner/name)")
    return DataRef("hub", value)


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """``"K/N"`` (1-based K) as ``(k, n)`` with 0-based k; None for the whole input.

    Raises:
        ValueError: not of the form K/N with 1 <= K <= N.
    """
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match or not (1 <= int(match[1]) <= int(match[2])):
        raise ValueError(f"shard must be K/N with 1 <= K <= N, e.g. 2/8 (got {value!r})")
    return int(match[1]) - 1, int(match[2])


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Stable assignment of an input to one of N shards by the hash of its key: N workers on N
    machines, each given ``--shard K/N``, process disjoint parts that together cover everything."""
    if shard is None:
        return True
    k, n = shard
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n == k


# `<split>-00000-of-00003.parquet`, the names DatasetWriter.finalize gives and the Hub uses
_SHARD_NAME = re.compile(r"^(?P<split>[\w.]+?)-\d{5}-of-\d{5}\.parquet$")


def local_parquet_files(folder: str | Path) -> dict[str, list[str]] | None:
    """``{split: [shard paths]}`` of a local dataset folder written in the Hub layout, else None."""
    files = sorted(Path(folder).glob("data/*.parquet"))
    by_split: dict[str, list[str]] = {}
    for path in files:
        match = _SHARD_NAME.match(path.name)
        if match is None:
            return None  # not our layout: let datasets resolve it
        by_split.setdefault(match["split"], []).append(str(path))
    return by_split or None


def load_dataset_fresh(value: str, **kwargs):
    """``datasets.load_dataset(value, **kwargs)`` that never returns a stale copy of a local folder.

    ``load_dataset(folder)`` on a folder with a dataset card caches its Arrow copy under a hash of
    the card's ``dataset_info`` and ``configs`` only: rebuild the folder with different records of
    the same sizes (a rerun with ``--overwrite``, a fixed caption of the same length) and it returns
    the old records (measured with datasets 5.2). The packaged ``parquet`` loader given the shard
    files hashes their modification times as well, so local folders in the Hub layout are loaded
    that way; Hub ids and other layouts go to ``load_dataset`` unchanged (a Hub revision pins them).
    """
    from datasets import load_dataset

    path = Path(value).expanduser()
    files = local_parquet_files(path) if path.is_dir() else None
    if files is None:
        return load_dataset(value, **kwargs)
    return load_dataset("parquet", data_files=files, **kwargs)
