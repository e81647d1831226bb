"""The generate benchmark runs and reports what it promises (a smoke run, not a timing)."""

import json

from pathasst.benchmarks.perf import generate


def test_generate_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert generate.main(["--concurrency", "1,4", "--latency", "0.02", "--min-records", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["latency_s"] == 0.02
    rows = report["results"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    for row in rows:
        assert row["samples"] == row["records"] * 5 and row["rejected"] == 0
        assert row["requests"] >= row["samples"] and 0 < row["ratio_to_ideal"] <= 1.05
        assert row["ideal_requests_per_s"] == row["concurrency"] / 0.02
    assert "ratio" in capsys.readouterr().out
