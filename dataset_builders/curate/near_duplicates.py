"""Near-duplicate search over 64-bit perceptual hashes: every pair within a Hamming distance.

Shared by ``curate dedup`` (all pairs inside a corpus) and ``curate decontam`` (training hashes
queried against benchmark hashes). The search is exact: it returns every pair at distance
``<= max_distance``, never an approximation.

Engine: faiss (``faiss-cpu``), two of its binary indexes, chosen per call by a cost estimate:

- ``IndexBinaryMultiHash``: multi-index hashing (Norouzi et al., 2012). The 64 bits are cut into
  ``nhash`` blocks of ``b`` bits, each block keyed in its own hash table. By the pigeonhole
  principle two hashes within distance ``r`` agree to within ``r // nhash`` bits on at least one
  block, so probing every key within ``nflip = r // nhash`` flipped bits of each query block finds
  every candidate; faiss then checks the full 64-bit distance. For r = 6 at 250k-1M hashes the
  cheapest layout is 3 blocks of 21 bits, 2 flips (696 probes per query).
- ``IndexBinaryFlat``: exhaustive SIMD popcount. Cheaper than probing below ~20k hashes (a typical
  benchmark index, queried by millions of training hashes).

Measured (``benchmarks/perf/dedup.py``, 2 cores): all pairs within 6 bits among 1,000,000 hashes in
98 s and 493 MiB peak RSS, 5.6x faster than faiss' brute force and 50x faster than numpy's at that
size; time grows as N^1.6 over 250k-1M (the 21-bit blocks fill up as N grows).

Why faiss: it is maintained (Meta, monthly releases, manylinux wheels for CPython 3.10+ with only
numpy as a dependency), its binary indexes do Hamming range search in C++ with OpenMP, and it
already holds both the multi-index-hashing and the brute-force strategies, so the choice between
them is a parameter, not a second implementation. The BK-tree packages on PyPI are pure Python
(a 1M-hash BK-tree query at radius 6 visits a large part of the tree); ``imagededup`` uses a
BK-tree or brute force underneath.

Identical hashes are collapsed before searching: a corpus with 10,000 copies of one blank panel
costs one index entry, not 50 million candidate pairs (:meth:`NearDuplicateIndex.hash_graph`).

Hashes are accepted as 16-hex-character strings (``pathasst.images.image_phash``), Python ints, or
a ``uint64`` numpy array.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterable, Optional, Sequence

import numpy as np

BITS = 64
DEFAULT_MAX_DISTANCE = 6
# Cost model of one query, in microseconds, measured with faiss-cpu 1.15 on one core (see
# benchmarks/perf/dedup.py): a multi-hash probe (an unordered_map lookup), a candidate (inserted in
# faiss' shortlist set, then a 64-bit popcount), a brute-force comparison (SIMD popcount).
_COST_PROBE_US = 0.06
_COST_CANDIDATE_US = 0.32
_COST_FLAT_US = 0.00055
_QUERY_BATCH = 65_536


def parse_hashes(hashes: Any) -> np.ndarray:
    """Hashes as a ``uint64`` array.

    Args:
        hashes: 16-hex-character strings, Python ints, or an integer numpy array.

    Raises:
        ValueError: a hash that is not 16 hex characters (64 bits), naming it.
    """
    if isinstance(hashes, np.ndarray) and hashes.dtype.kind in "ui":
        return hashes.astype(np.uint64, copy=False).ravel()
    items = list(hashes)
    if not items:
        return np.zeros(0, dtype=np.uint64)
    if all(isinstance(h, str) for h in items):
        bad = next((h for h in items if len(h) != 16), None)
        if bad is None:
            try:
                return np.frombuffer(bytes.fromhex("".join(items)), dtype=">u8").astype(np.uint64)
            except ValueError:
                bad = next(h for h in items if not _is_hex(h))
        raise ValueError(f"not a 64-bit hash (16 hex characters): {bad!r}")
    out = np.empty(len(items), dtype=np.uint64)
    for i, h in enumerate(items):
        value = int(h, 16) if isinstance(h, str) else int(h)
        if not 0 <= value < 1 << BITS or (isinstance(h, str) and len(h) != 16):
            raise ValueError(f"not a 64-bit hash (16 hex characters): {h!r}")
        out[i] = value
    return out


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def is_hash(text: Any) -> bool:
    """True for a 64-bit hash as :func:`pathasst.images.image_phash` writes it (16 hex characters)."""
    return isinstance(text, str) and len(text) == 16 and _is_hex(text)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance of two ``uint64`` arrays (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _faiss():
    # faiss' loader reports at INFO level every SIMD build it tries before the one this CPU runs
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def _codes(values: np.ndarray) -> np.ndarray:
    """faiss binary codes: 8 bytes per hash (any fixed byte order works for Hamming distance)."""
    return np.ascontiguousarray(values, dtype=np.uint64).view(np.uint8).reshape(-1, 8)


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """How one search runs: ``flat`` (brute force) or ``multihash`` with its block layout.

    Attributes:
        strategy: ``flat`` or ``multihash``.
        nhash: number of blocks (multihash only).
        b: bits per block.
        nflip: bits flipped per probed block (``max_distance // nhash``).
        cost_us: estimated microseconds per query.
    """

    strategy: str
    nhash: int = 0
    b: int = 0
    nflip: int = 0
    cost_us: float = 0.0

    def describe(self) -> str:
        if self.strategy == "flat":
            return "faiss IndexBinaryFlat (brute force)"
        return f"faiss IndexBinaryMultiHash ({self.nhash} blocks of {self.b} bits, {self.nflip} flips)"


def plan_search(n_indexed: int, max_distance: int, strategy: str = "auto") -> SearchPlan:
    """The cheapest exact plan for querying ``n_indexed`` hashes at ``max_distance``.

    Args:
        n_indexed: hashes in the index.
        max_distance: largest Hamming distance returned.
        strategy: ``auto`` (cheapest by the cost model), ``flat`` or ``multihash``.
    """
    if strategy not in ("auto", "flat", "multihash"):
        raise ValueError(f"strategy must be auto, flat or multihash (got {strategy!r})")
    flat = SearchPlan("flat", cost_us=n_indexed * _COST_FLAT_US)
    best: Optional[SearchPlan] = None
    for nhash in range(1, 9):
        b = BITS // nhash
        nflip = max_distance // nhash
        if b > 32 and nflip > 2:  # 64-bit keys flipped 3+ ways: tens of thousands of probes
            continue
        probes = nhash * sum(math.comb(b, i) for i in range(nflip + 1))
        candidates = probes * n_indexed / 2.0**b
        cost = probes * _COST_PROBE_US + candidates * _COST_CANDIDATE_US
        if best is None or cost < best.cost_us:
            best = SearchPlan("multihash", nhash, b, nflip, cost)
    assert best is not None
    if strategy == "flat" or (strategy == "auto" and flat.cost_us <= best.cost_us):
        return flat
    return best


@dataclasses.dataclass
class HashGraph:
    """Near-duplicate structure over the distinct hash values of an index.

    Attributes:
        values: the distinct hash values (``uint64``), sorted.
        inverse: for every added item, the position of its hash in ``values``.
        u, v, distance: pairs of distinct values (``u < v``) within the distance; identical
            hashes are not listed (they share an entry of ``values``).
        plan: how the search ran.
    """

    values: np.ndarray
    inverse: np.ndarray
    u: np.ndarray
    v: np.ndarray
    distance: np.ndarray
    plan: SearchPlan


@dataclasses.dataclass
class Matches:
    """Flat arrays of matches: ``left[i]`` and ``right[i]`` are at Hamming ``distance[i]``."""

    left: np.ndarray
    right: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return len(self.distance)

    def __iter__(self):
        return iter(zip(self.left.tolist(), self.right.tolist(), self.distance.tolist()))


class NearDuplicateIndex:
    """Exact Hamming near-duplicate search over 64-bit hashes (faiss binary indexes).

    Example::

        index = NearDuplicateIndex(max_distance=6)
        index.add(["a", "b", "c"], ["c3c3...", "c3c1...", "0f0f..."])
        index.pairs()                      # Matches: every pair of ids within distance 6
        index.query(["c3c2..."])           # Matches: query position -> id, distance

    Args:
        max_distance: the default distance of :meth:`pairs` and :meth:`query` (each accepts another).
        strategy: ``auto`` (cheapest exact plan for the size, see :func:`plan_search`), ``flat`` or
            ``multihash`` (to force one, e.g. in tests).
        threads: OpenMP threads faiss may use (default: faiss' own default, all cores).
    """

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE, *, strategy: str = "auto",
                 threads: Optional[int] = None):
        if not 0 <= int(max_distance) < BITS:
            raise ValueError(f"max_distance must be in [0, {BITS - 1}] (got {max_distance})")
        plan_search(1, int(max_distance), strategy)  # validates the strategy name
        self.max_distance = int(max_distance)
        self.strategy = strategy
        self.threads = threads
        self._ids: list[Any] = []
        self._id_array: Optional[np.ndarray] = None
        self._chunks: list[np.ndarray] = []
        self._hashes: Optional[np.ndarray] = None
        self._cache: dict[tuple, Any] = {}
        self.last_plan: Optional[SearchPlan] = None

    # --- building ----------------------------------------------------------------------------

    def add(self, ids: Optional[Iterable[Any]], hashes: Any) -> None:
        """Add items. ``ids`` may be None: items are then named by their position (0, 1, ...)."""
        values = parse_hashes(hashes)
        if ids is None:
            start = len(self)
            ids = range(start, start + len(values))
        ids = list(ids)
        if len(ids) != len(values):
            raise ValueError(f"{len(ids)} ids for {len(values)} hashes")
        self._ids.extend(ids)
        self._chunks.append(values)
        self._hashes = None
        self._id_array = None
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def hashes(self) -> np.ndarray:
        """Every added hash in insertion order (``uint64``)."""
        if self._hashes is None:
            self._hashes = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.uint64)
            self._chunks = [self._hashes]
        return self._hashes

    @property
    def ids(self) -> np.ndarray:
        """Every added id in insertion order (an object array unless all ids are ints)."""
        if self._id_array is None:
            if all(isinstance(i, (int, np.integer)) for i in self._ids):
                self._id_array = np.asarray(self._ids, dtype=np.int64)
            else:
                arr = np.empty(len(self._ids), dtype=object)
                arr[:] = self._ids
                self._id_array = arr
        return self._id_array

    def _unique(self) -> tuple[np.ndarray, np.ndarray]:
        key = ("unique",)
        if key not in self._cache:
            values, inverse = np.unique(self.hashes, return_inverse=True)
            self._cache[key] = (values, inverse.ravel())
        return self._cache[key]

    def _faiss_index(self, plan: SearchPlan):
        """The faiss index over the distinct hash values for ``plan`` (built once per layout)."""
        faiss = _faiss()
        key = ("index", plan.strategy, plan.nhash, plan.b)
        index = self._cache.get(key)
        if index is None:
            values, _ = self._unique()
            if plan.strategy == "flat":
                index = faiss.IndexBinaryFlat(BITS)
            else:
                index = faiss.IndexBinaryMultiHash(BITS, plan.nhash, plan.b)
            index.add(_codes(values))
            self._cache[key] = index
        if plan.strategy == "multihash":
            index.nflip = plan.nflip
        return index

    # --- searching ---------------------------------------------------------------------------

    def _search(self, queries: np.ndarray, max_distance: int, progress: Any = None):
        """Range search of ``queries`` in the distinct values: (query pos, value pos, distance)."""
        faiss = _faiss()
        values, _ = self._unique()
        plan = plan_search(len(values), max_distance, self.strategy)
        self.last_plan = plan
        if len(values) == 0 or len(queries) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        index = self._faiss_index(plan)
        threads = faiss.omp_get_max_threads()
        if self.threads:
            faiss.omp_set_num_threads(self.threads)
        qs, vs, ds = [], [], []
        try:
            codes = _codes(queries)
            for start in range(0, len(codes), _QUERY_BATCH):
                batch = codes[start : start + _QUERY_BATCH]
                # faiss' binary range search returns distances strictly below the radius
                lims, dist, labels = index.range_search(batch, max_distance + 1)
                counts = np.diff(lims).astype(np.int64)
                qs.append(np.repeat(np.arange(start, start + len(batch), dtype=np.int64), counts))
                vs.append(labels.astype(np.int64))
                ds.append(dist.astype(np.int64))
                if progress is not None:
                    progress(len(batch))
        finally:
            if self.threads:
                faiss.omp_set_num_threads(threads)
        return np.concatenate(qs), np.concatenate(vs), np.concatenate(ds)

    def hash_graph(self, max_distance: Optional[int] = None, progress: Any = None) -> HashGraph:
        """Pairs of distinct hash values within ``max_distance`` (see :class:`HashGraph`).

        This is what a deduplicator needs at scale: identical hashes are one node, so a large
        group of identical images never expands into a quadratic list of pairs.
        """
        r = self.max_distance if max_distance is None else int(max_distance)
        values, inverse = self._unique()
        q, v, d = self._search(values, r, progress)
        keep = q < v
        return HashGraph(values, inverse, q[keep], v[keep], d[keep], self.last_plan)

    def pairs(self, max_distance: Optional[int] = None) -> Matches:
        """Every pair of added items within ``max_distance``, each once, as ids.

        ``left`` was added before ``right``; pairs are sorted by (left, right) insertion position.
        Items with identical hashes are paired too (distance 0): with many copies of one hash the
        result grows quadratically, which :meth:`hash_graph` avoids.
        """
        graph = self.hash_graph(max_distance)
        order, starts = _members(graph.inverse, len(graph.values))
        sizes = np.diff(starts)
        left, right, dist = [], [], []
        for value in np.nonzero(sizes > 1)[0].tolist():  # identical hashes: every pair inside a group
            group = order[starts[value] : starts[value + 1]]
            a, b = np.triu_indices(len(group), k=1)
            left.append(group[a])
            right.append(group[b])
            dist.append(np.zeros(len(a), dtype=np.int64))
        for u, v, d in zip(graph.u.tolist(), graph.v.tolist(), graph.distance.tolist()):
            a, b = np.meshgrid(order[starts[u] : starts[u + 1]], order[starts[v] : starts[v + 1]], indexing="ij")
            left.append(a.ravel())
            right.append(b.ravel())
            dist.append(np.full(a.size, d, dtype=np.int64))
        ids = self.ids
        if not left:
            empty = np.zeros(0, dtype=np.int64)
            return Matches(ids[empty], ids[empty], empty)
        left_pos, right_pos, dist_all = np.concatenate(left), np.concatenate(right), np.concatenate(dist)
        lo, hi = np.minimum(left_pos, right_pos), np.maximum(left_pos, right_pos)
        order = np.lexsort((hi, lo))
        return Matches(ids[lo[order]], ids[hi[order]], dist_all[order])

    def query(self, hashes: Any, max_distance: Optional[int] = None, progress: Any = None) -> Matches:
        """Every added item within ``max_distance`` of each query hash.

        Returns:
            :class:`Matches` with ``left`` = position of the query in ``hashes``, ``right`` = the
            matching item's id, sorted by (query position, distance).
        """
        r = self.max_distance if max_distance is None else int(max_distance)
        queries = parse_hashes(hashes)
        q, v, d = self._search(queries, r, progress)
        values, inverse = self._unique()
        # expand each matching distinct value to the items that carry it
        order, starts = _members(inverse, len(values))
        counts = starts[v + 1] - starts[v]
        q_all = np.repeat(q, counts)
        d_all = np.repeat(d, counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        items = order[np.repeat(starts[v], counts) + offsets]
        sort = np.lexsort((items, d_all, q_all))
        return Matches(q_all[sort], self.ids[items[sort]], d_all[sort])


def brute_force_pairs(hashes: Sequence[Any] | np.ndarray, max_distance: int, block: int = 256) -> Matches:
    """All pairs ``i < j`` within ``max_distance`` by comparing every pair (numpy popcount).

    The reference the index is tested against, and the baseline of the benchmark. Positions, not ids.
    """
    values = parse_hashes(hashes)
    left, right, dist = [], [], []
    for start in range(0, len(values), block):
        chunk = values[start : start + block]
        d = np.bitwise_count(np.bitwise_xor(chunk[:, None], values[None, :]))
        i, j = np.nonzero(d <= max_distance)
        i = i + start
        keep = i < j
        left.append(i[keep])
        right.append(j[keep])
        dist.append(d[i[keep] - start, j[keep]].astype(np.int64))
    if not left:
        empty = np.zeros(0, dtype=np.int64)
        return Matches(empty, empty, empty)
    left_all, right_all, dist_all = np.concatenate(left), np.concatenate(right), np.concatenate(dist)
    order = np.lexsort((right_all, left_all))
    return Matches(left_all[order].astype(np.int64), right_all[order].astype(np.int64), dist_all[order])


def _members(inverse: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """Items grouped by distinct value: value ``k`` is carried by ``order[starts[k]:starts[k + 1]]``."""
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(n_values + 1))
    return order, starts
