"""The evaluation benchmark runs end to end on tiny sizes and reports what it promises (never a speed)."""

import json

from pathasst.benchmarks.perf import bench_eval


def test_bench_eval_tiny_run(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = bench_eval.main(["--n", "3000", "--full-n", "1500", "--dim", "32", "--chunk", "256", "--vqa-items", "300",
                          "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["contender"] for r in res["runs"]] == ["chunked", "full", "chunked"]
    assert [r["n"] for r in res["runs"]] == [1500, 1500, 3000]
    assert res["ratios"]["ranks_equal_at_full_n"] is True
    assert res["vqa"]["equal"] is True and res["vqa"]["items"] == 300
    assert all(0 <= r["recall@1"] <= r["recall@10"] <= 1 for r in res["runs"])
    assert "full matrix / chunked" in capsys.readouterr().out
