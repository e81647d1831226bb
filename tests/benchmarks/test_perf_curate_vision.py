"""The curate_vision benchmark runs and reports what it promises (a smoke run, not a timing)."""

import json

import pytest

from pathasst.benchmarks.perf import curate_vision


@pytest.mark.slow
def test_tiny_models_smoke_run(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--images", "8", "--batch-sizes", "1,8", "--models", "tiny", "--detector-images", "8",
            "--detector-models", "tiny", "--epoch-figures", "0", "--repeat", "1", "--json", str(out)]
    assert curate_vision.main(argv) == 0
    text = out.read_text()
    results = json.loads(text)
    assert results and "selector" in text and "detector" in text
