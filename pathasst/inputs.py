"""Input references every stage accepts: local paths that must exist, or Hub dataset ids.

Checked before any work starts, so a typo costs one line of error, not an hour of compute.
"""

from __future__ import annotations

import hashlib
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
