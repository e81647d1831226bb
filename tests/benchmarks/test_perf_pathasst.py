"""The PathAsst benchmark runs and reports what it promises (a smoke run on the tiny tier, not a timing)."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("openai")
pytest.importorskip("skimage")


@pytest.mark.slow
def test_pathasst_benchmark_smoke(tmp_path, capsys):
    from pathasst.benchmarks.perf import pathasst as bench
    from pathasst.trainers.loop import reset_accelerate_state

    out = tmp_path / "bench.json"
    try:
        assert bench.main(["--tier", "tiny", "--new-tokens", "4", "--repeat", "1", "--server-requests", "1",
                           "--server-tokens", "2", "--train-steps", "3", "--train-rounds", "1", "--records", "4",
                           "--stage2-max-length", "4096", "--json", str(out)]) == 0
    finally:
        reset_accelerate_state()
    report = json.loads(out.read_text())
    cache, no_cache = report["generate"]["rows"]
    assert cache["kv_cache"] is True and no_cache["kv_cache"] is False
    assert cache["new_tokens"] == no_cache["new_tokens"] == 4 and cache["ttft_s"] > 0
    assert [r["concurrency"] for r in report["server"]["rows"]] == [1, 4]
    assert all(r["ok"] == r["requests"] and r["errors"] == 0 for r in report["server"]["rows"])
    stages = report["train"]["rows"]
    assert [r["stage"] for r in stages] == [1, 2]
    for r in stages:
        assert r["steps_timed_loop"] == r["steps_timed_plain"] == 1 and r["ratio_loop_to_plain"] > 0
        assert r["cpu_ratio_loop_to_plain"] > 0 and len(r["samples_per_cpu_s_each_loop"]) == 1
    assert "per CPU-second" in capsys.readouterr().out


def test_stage2_needs_stage1():
    from pathasst.benchmarks.perf import pathasst as bench

    with pytest.raises(SystemExit):
        bench.main(["--sections", "train", "--train-stages", "2"])
