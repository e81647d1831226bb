"""The train_pathclip benchmark runs and reports what it promises (a smoke run, not a timing)."""

import json

import pytest

pytest.importorskip("open_clip")
pytest.importorskip("torchvision")

from pathasst.benchmarks.perf import train_pathclip  # noqa: E402


@pytest.mark.slow
def test_tiny_smoke_run(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--records", "40", "--tile-size", "32", "--steps", "4", "--warmup", "1", "--batch-size", "8",
            "--threads", "1", "--data-images", "64", "--json", str(out)]
    assert train_pathclip.main(argv) == 0
    results = json.loads(out.read_text())
    for kind in ("train", "plain"):
        run = results["runs"][kind][0]
        assert run["samples_per_s"] > 0 and run["timed_steps"] == 3 and run["peak_rss_mib"] > 0
    assert results["ratio_train_over_plain"] > 0
    assert results["data"]["parquet"]["images"] == results["data"]["imagefolder"]["images"] > 0
    assert "train / plain" in capsys.readouterr().out
