"""`pathasst curate dedup` and the near-duplicate index it runs on.

The images are real tissue: the four quadrants of scikit-image's IHC micrograph of colonic glands
and of its H&E re-staining (``pathasst.testing.images.tissue_tile``), plus three of scikit-image's
other pictures. The planted duplicates are what a corpus really holds: the same figure re-encoded at
JPEG quality 40, resized, cropped by a few pixels, and byte-identical copies under other ids. The
same tissue region in another stain (10-14 pHash bits away) is a different figure and must stay.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathasst.cli import main
from pathasst.dataset_builders.curate.dedup import (
    DedupConfig,
    caption_key,
    decide,
    dedup_datasets,
    normalized_words,
)
from pathasst.dataset_builders.curate.near_duplicates import (
    NearDuplicateIndex,
    brute_force_pairs,
    parse_hashes,
    plan_search,
)
from pathasst.images import image_phash
from pathasst.records import get_spec
from pathasst.testing.images import tissue_tile
from pathasst.writer import DatasetWriter

LONG_CAPTION = "Colonic mucosa with crowded tubular glands and cytokeratin positive epithelium, immunoperoxidase."


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _record(rid: str, image: bytes, caption: str, *, source: str = "pubmed", phash: bool = True) -> dict:
    size = Image.open(io.BytesIO(image)).size
    source_id = {"pubmed": f"PMC{abs(hash(rid)) % 10**6}", "book": "ab" * 32 + "#p3", "web": "https://example.org/a",
                 "private": "lab/1"}[source]
    return {
        "id": rid, "image": image, "caption": caption, "caption_raw": caption, "source": source,
        "source_id": source_id, "figure_id": rid, "license": "CC BY 4.0", "width": size[0], "height": size[1],
        "phash": image_phash(image) if phash else None,
    }


@pytest.fixture(scope="module")
def tiles() -> dict[str, Image.Image]:
    import skimage.data as skdata

    out = {}
    for stain in ("ihc", "he"):
        whole = tissue_tile(512, stain=stain)
        for q, (x, y) in enumerate(((0, 0), (256, 0), (0, 256), (256, 256))):
            out[f"{stain}{q}"] = whole.crop((x, y, x + 256, y + 256))
    for name in ("astronaut", "coffee", "chelsea"):
        out[name] = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((256, 256))
    return out


def _write(folder: Path, records: list[dict]) -> Path:
    with DatasetWriter(folder, get_spec("pathcap")) as writer:
        for record in records:
            assert writer.add(record), record["id"]
        writer.finalize()
    return folder


# What each removed record must say: id -> (kind, the kept copy it names)
EXPECTED_REMOVED = {
    "ihc0-q40": ("image", "ihc0"),        # re-encoded at JPEG quality 40
    "ihc0-small": ("image", "ihc0"),      # resized to 180x180
    "ihc0-crop": ("image", "ihc0"),       # 3 pixels cropped off each side
    "ihc0-copy": ("image", "ihc0"),       # the same bytes under another id and source
    "he2-recap": ("caption", "ihc1"),     # another figure, same long caption up to case and punctuation
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiles) -> dict:
    root = tmp_path_factory.mktemp("dedup")
    ihc0 = tiles["ihc0"]
    first = [
        _record("ihc0", _png(ihc0), LONG_CAPTION),
        _record("ihc0-q40", _jpeg(ihc0, 40), "Same figure, JPEG quality 40."),
        _record("ihc0-small", _jpeg(ihc0.resize((180, 180))), LONG_CAPTION + " (thumbnail)", phash=False),
        _record("ihc0-crop", _jpeg(ihc0.crop((3, 3, 253, 253))), "Cropped copy.", source="book"),
        _record("ihc0-copy", _png(ihc0), LONG_CAPTION, source="web"),
        _record("ihc1", _jpeg(tiles["ihc1"]), LONG_CAPTION.replace("Colonic", "Rectal")),
        _record("he2-recap", _jpeg(tiles["he2"]), "RECTAL mucosa with crowded tubular glands and cytokeratin-positive "
                "epithelium (immunoperoxidase)", source="book"),
        # the same tissue re-stained: 10-14 bits away, a different figure
        _record("he0", _jpeg(tiles["he0"]), "The same region stained with H&E.", phash=False),
        # a short generic caption shared by distinct figures: not a duplicate
        _record("ihc2", _jpeg(tiles["ihc2"]), "H&E, x400."),
        _record("ihc3", _jpeg(tiles["ihc3"]), "H&E, ×400"),
        _record("astronaut", _jpeg(tiles["astronaut"]), "Not pathology at all, a photograph.", source="private"),
    ]
    second = [
        _record("coffee", _jpeg(tiles["coffee"]), "A cup of coffee.", source="web"),
        _record("chelsea", _jpeg(tiles["chelsea"]), "A cat.", source="web"),
        _record("he1", _jpeg(tiles["he1"]), "Another H&E quadrant.", source="book"),
        # the same record in both inputs: the second occurrence is a duplicate id
        first[0] | {},
    ]
    a = _write(root / "a", first)
    b = _write(root / "b", second)
    return {"root": root, "inputs": [a, b], "n": len(first) + len(second)}


def _ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def _kept_ids(out: Path) -> set[str]:
    from datasets import load_dataset

    ds = load_dataset(str(out))
    return {rid for split in ds.values() for rid in split["id"]}


@pytest.fixture(scope="module")
def dedup_run(corpus) -> tuple[Path, str]:
    """`pathasst curate dedup A B --out OUT`, run once through the CLI entry point."""
    import contextlib

    out = corpus["root"] / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["curate", "dedup", *map(str, corpus["inputs"]), "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, buf.getvalue()


def test_cli_removes_planted_duplicates_keeps_distinct_tiles(corpus, dedup_run):
    out, printed = dedup_run
    ledger = _ledger(out)
    by_id = {line["id"]: line for line in ledger}

    # every planted duplicate is in the ledger naming the copy it duplicates, and nothing else is
    for rid, (kind, kept) in EXPECTED_REMOVED.items():
        line = by_id[rid]
        assert line["duplicate_of"] == kept, line
        if kind == "image":
            assert line["reason"] == f"duplicate image: phash distance {line['distance']} to {kept}"
            assert 0 <= line["distance"] <= 6
        else:
            assert line["reason"] == f"duplicate caption: same normalised caption as {kept}"
    assert by_id["ihc0"]["reason"].startswith("duplicate id: 'ihc0' occurs 2 times")
    assert set(by_id) == set(EXPECTED_REMOVED) | {"ihc0"}

    kept = _kept_ids(out)
    assert kept == {"ihc0", "ihc1", "he0", "ihc2", "ihc3", "astronaut", "coffee", "chelsea", "he1"}
    # inputs = records + rejects
    assert len(kept) + len(ledger) == corpus["n"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounted"] is True
    assert summary["inputs"] == corpus["n"]
    assert summary["removed"] == {"duplicate image": 4, "duplicate caption": 1, "duplicate id": 1, "invalid record": 0}
    assert summary["groups"]["count"] == 2
    assert summary["groups"]["size_histogram"] == {"2": 1, "5": 1}
    assert summary["phash_computed"] == 2  # the records written without a pHash
    assert summary["settings"]["max_distance"] == 6

    # the printout names what was removed and why, then one summary line
    assert "removed ihc0-q40: duplicate image: phash distance" in printed
    assert "removed he2-recap: duplicate caption: same normalised caption as ihc1" in printed
    assert printed.strip().splitlines()[-1].startswith(f"{corpus['n']} records in, 9 kept, 6 to the ledger")


def test_computed_phash_is_written_and_rerun_resumes(corpus, dedup_run, tiles):
    from datasets import load_dataset

    out, _ = dedup_run
    ds = load_dataset(str(out)).remove_columns("image")
    rows = {r["id"]: r for split in ds.values() for r in split}
    assert rows["he0"]["phash"] == image_phash(_jpeg(tiles["he0"]))  # written without one, computed here
    assert all(len(r["phash"]) == 16 for r in rows.values())

    again = dedup_datasets([str(p) for p in corpus["inputs"]], out, DedupConfig(), progress=False)
    assert again["this_run"]["already_done"] == corpus["n"]
    assert again["records_total"] + again["rejected_total"] == corpus["n"]


def test_the_same_tissue_in_another_stain_is_not_a_duplicate(tiles):
    for q in range(4):
        d = bin(int(image_phash(_jpeg(tiles[f"ihc{q}"])), 16) ^ int(image_phash(_jpeg(tiles[f"he{q}"])), 16)).count("1")
        assert d > 6, (q, d)


# --- the keep rule -------------------------------------------------------------------------------


def _decide(records: list[dict], max_distance: int = 6, min_words: int = 3):
    """Run the decision on plain dicts (hash, area, caption, source, id); returns {id: (kind, kept id)}."""
    from pathasst.dataset_builders.curate.dedup import SOURCE_PRIORITY

    ids = [r["id"] for r in records]
    id_order = np.empty(len(ids), dtype=np.int64)
    id_order[np.argsort(np.array(ids, dtype=str), kind="stable")] = np.arange(len(ids))
    removed, stats = decide(
        [r["hash"] for r in records], [r.get("area", 100) for r in records],
        [len(r.get("caption") or "") for r in records], [SOURCE_PRIORITY[r.get("source", "pubmed")] for r in records],
        id_order, [caption_key(r.get("caption"), min_words) for r in records], [True] * len(records), max_distance,
    )
    return {ids[p]: (d.kind, ids[d.kept], d.distance) for p, d in removed.items()}, stats


H = "f0f0f0f0f0f0f0f0"


def _flip(h: str, bits: int) -> str:
    return f"{int(h, 16) ^ ((1 << bits) - 1):016x}"


@pytest.mark.parametrize("winner,loser,why", [
    ({"id": "z", "area": 400, "caption": "", "source": "private"}, {"id": "a", "area": 100, "caption": "long caption"},
     "larger image first"),
    ({"id": "z", "caption": "a longer caption", "source": "private"}, {"id": "a", "caption": "short"},
     "then the longer caption"),
    ({"id": "z", "caption": "same", "source": "pubmed"}, {"id": "a", "caption": "same", "source": "book"},
     "then source priority"),
    ({"id": "a", "caption": "same", "source": "web"}, {"id": "b", "caption": "same", "source": "web"},
     "then the smaller id"),
])
def test_keep_rule(winner, loser, why):
    for order in ([winner, loser], [loser, winner]):  # whatever the input order
        recs = [dict(r, hash=H) for r in order]
        removed, _ = _decide(recs)
        assert removed == {loser["id"]: ("image", winner["id"], 0)}, why


def test_keep_rule_is_deterministic_under_shuffles():
    rng = np.random.default_rng(3)
    recs = [{"id": f"r{i:02d}", "hash": _flip(H, int(rng.integers(0, 4))), "area": int(rng.choice([100, 400])),
             "caption": "x" * int(rng.integers(0, 5)), "source": str(rng.choice(["pubmed", "book", "web"]))}
            for i in range(30)]
    first, _ = _decide(recs)
    for seed in range(5):
        shuffled = [recs[i] for i in np.random.default_rng(seed).permutation(len(recs))]
        assert _decide(shuffled)[0] == first


def test_chain_keeps_both_far_ends():
    # a ~ b ~ c with a and c 8 bits apart: b goes (duplicate of the better a), c stays
    recs = [{"id": "a", "hash": H, "area": 900}, {"id": "b", "hash": _flip(H, 4), "area": 400},
            {"id": "c", "hash": _flip(H, 8), "area": 100}]
    removed, stats = _decide(recs)
    assert removed == {"b": ("image", "a", 4)}
    assert stats["groups"]["size_histogram"] == {"3": 1}
    assert stats["groups"]["kept_per_group_histogram"] == {"2": 1}


def test_caption_duplicates_need_enough_words():
    recs = [{"id": "a", "hash": "0000000000000000", "caption": "H&E, x400."},
            {"id": "b", "hash": "ffffffffffffffff", "caption": "h&e x400"}]
    assert _decide(recs, min_words=8)[0] == {}
    assert _decide(recs, min_words=3)[0] == {"b": ("caption", "a", None)}
    assert normalized_words("H&E stain, ×400.") == ["h", "e", "stain", "400"]


# --- the index against brute force --------------------------------------------------------------


def _random_hashes(rng, n: int, clusters: int, max_flip: int) -> np.ndarray:
    """Random 64-bit hashes with planted clusters: copies of a few hashes with up to max_flip bits changed."""
    values = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for _ in range(clusters):
        centre = values[rng.integers(0, n)]
        members = rng.choice(n, size=int(rng.integers(2, 8)), replace=False)
        for m in members:
            flips = rng.choice(64, size=int(rng.integers(0, max_flip + 1)), replace=False)
            values[m] = centre ^ np.bitwise_or.reduce(np.left_shift(np.uint64(1), flips.astype(np.uint64)),
                                                      initial=np.uint64(0))
    return values


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("strategy", ["auto", "flat", "multihash"])
def test_index_finds_exactly_the_pairs_brute_force_finds(seed, strategy):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 3000))
    k = (0, 1, 3, 6, 8, 10)[seed]  # multi-hash layouts with 0, 1 and 2 flipped bits per block
    values = _random_hashes(rng, n, clusters=n // 20, max_flip=k + 3)
    index = NearDuplicateIndex(k, strategy=strategy)
    half = n // 2  # added in two calls, as hex strings and as integers
    index.add(range(half), [f"{int(v):016x}" for v in values[:half]])
    index.add(range(half, n), values[half:])
    got = index.pairs()
    want = brute_force_pairs(values, k)
    assert len(want) > 0
    assert list(got) == list(want)

    queries = _random_hashes(rng, 40, clusters=0, max_flip=0)
    queries[:20] = values[rng.choice(n, 20)] ^ np.uint64(1)
    hits = index.query(queries)
    expected = sorted((q, int(i), int(d)) for q in range(len(queries)) for i, d in enumerate(
        np.bitwise_count(values ^ queries[q])) if d <= k)
    assert sorted(zip(hits.left.tolist(), hits.right.tolist(), hits.distance.tolist())) == expected


def test_index_collapses_identical_hashes():
    index = NearDuplicateIndex(2)
    index.add([f"x{i}" for i in range(500)], ["00000000000000ff"] * 500)
    index.add(["y"], ["00000000000000fe"])
    graph = index.hash_graph()
    assert len(graph.values) == 2 and list(graph.distance) == [1]
    assert len(index.pairs()) == 500 * 499 // 2 + 500


def test_plan_is_exact_and_sensible():
    assert plan_search(1000, 6).strategy == "flat"
    big = plan_search(1_000_000, 6)
    assert big.strategy == "multihash" and big.nflip == 6 // big.nhash and big.b * big.nhash <= 64
    with pytest.raises(ValueError, match="16 hex"):
        parse_hashes(["abc"])
    with pytest.raises(ValueError, match="16 hex"):
        parse_hashes(["zz" * 8])


def test_benchmark_runs_and_reports_what_it_promises(tmp_path, capsys):
    """benchmarks/perf/dedup.py on tiny sizes: the report's shape, exactness and recall, never a speed."""
    from pathasst.benchmarks.perf import dedup as bench

    out = tmp_path / "bench.json"
    assert bench.main(["--sizes", "3000,6000,12000", "--brute", "2000", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["exact_at_brute_size"] is True and result["recall_planted"] is True
    assert {(r["contender"], r["n"]) for r in result["runs"]} == {
        ("brute-numpy", 2000), ("brute-faiss", 2000), ("index", 2000), ("index", 3000), ("index", 6000),
        ("index", 12000)}
    assert {"exponent", "speedup_at_largest", "brute_extrapolated_seconds"} <= set(result["ratios"])
    for run in result["runs"]:
        assert run["planted_found"] == run["planted"] > 0 and run["peak_rss_mib"] > 0
    assert "scaling exponent of the index" in capsys.readouterr().out
