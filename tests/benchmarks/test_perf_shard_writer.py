"""The shard-writer benchmark runs end to end on a tiny input and reports what it promises.

Only the shape of the report is checked, never a speed: the machines are shared and noisy.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image

from pathasst.benchmarks.perf import shard_writer


@pytest.mark.slow  # four fresh interpreters importing datasets: ~5-15 s
def test_benchmark_tiny_run_writes_json(tmp_path, capsys):
    out_json = tmp_path / "result.json"
    rc = shard_writer.main([
        "--records", "300", "--sizes", "100,300", "--pool-size", "256",
        "--out-dir", str(tmp_path / "work"), "--json", str(out_json),
    ])
    assert rc == 0
    result = json.loads(out_json.read_text())

    assert {"date", "machine", "records", "sizes", "images", "runs", "results", "ratios"} <= set(result)
    assert result["records"] == 300
    assert result["sizes"] == [100, 300]
    assert {"cpus", "datasets", "pyarrow"} <= set(result["machine"])
    assert result["images"]["width"] == result["images"]["height"] == 256
    assert result["images"]["mean_jpeg_bytes"] > 10_000  # realistic JPEGs, not blank tiles

    assert {(r["contender"], r["records"]) for r in result["runs"]} == {
        (c, n) for c in ("writer", "datasets") for n in (100, 300)
    }
    for run in result["runs"]:
        for key in ("seconds", "records_per_s", "peak_rss_mib", "rss_growth_mib", "peak_anon_mib",
                    "output_bytes", "rows_loaded", "ids_match"):
            assert key in run, (run["contender"], key)
        assert run["rows_loaded"] == run["records"]
        assert run["ids_match"] is True
        assert run["image_size"] == [256, 256]
        assert run["output_bytes"] > run["records"] * 10_000

    writer, datasets_ = result["results"]["writer"], result["results"]["datasets"]
    assert writer["rows_loaded"] == datasets_["rows_loaded"] == 300
    assert writer["rejected"] == 0
    assert sum(writer["splits"].values()) == 300
    assert sum(1 for n in writer["splits"].values() if n) >= 2  # groups spread over the splits

    for key in ("records_per_s_writer_over_datasets", "peak_rss_writer_over_datasets",
                "writer_peak_rss_largest_over_smallest", "datasets_peak_rss_largest_over_smallest"):
        assert isinstance(result["ratios"][key], float), key

    printed = capsys.readouterr().out
    assert "records/s   writer / datasets" in printed
    assert "writer   peak RSS @300 / @100" in printed


def test_records_fit_the_pathcap_contract(tmp_path):
    import pickle

    from pathasst.records import get_spec, record_errors

    pool = shard_writer.build_tile_pool(4, progress=False)
    pool_file = tmp_path / "pool.pkl"
    pool_file.write_bytes(pickle.dumps(pool))
    records = list(shard_writer.gen_records(100, str(pool_file)))
    spec = get_spec("pathcap")
    assert [e for r in records for e in record_errors(spec, r)] == []
    assert len({r["id"] for r in records}) == 100
    assert len({r["caption"] for r in records}) == 100
    assert {r["source"] for r in records} == {"pubmed", "book", "web", "private"}
    # four tiles, but no two records share image bytes (Parquet could not dedupe them) ...
    assert len({r["image"]["bytes"] for r in records}) == 100
    # ... and every image still decodes to the tile's pixels
    tiles = [np.asarray(Image.open(io.BytesIO(t["jpeg"]))) for t in pool]
    for i in (0, 1, 5, 99):
        pixels = np.asarray(Image.open(io.BytesIO(records[i]["image"]["bytes"])))
        assert pixels.shape == (256, 256, 3)
        assert np.array_equal(pixels, tiles[i % 4])


def test_sizes_argument_is_checked():
    with pytest.raises(SystemExit):
        shard_writer.parse_args(["--sizes", "a,b"])
    assert shard_writer.parse_args(["--sizes", "300, 100"]).sizes == [100, 300]
