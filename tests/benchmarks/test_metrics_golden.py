"""Every metric against its golden cases (benchmarks/metrics_golden/*.yaml), within each case's tolerance."""

import random
from importlib import resources

import numpy as np
import pytest
import yaml

from pathasst.benchmarks import metrics as M


def _cases():
    root = resources.files("pathasst.benchmarks.metrics_golden")
    for f in sorted(p for p in root.iterdir() if p.name.endswith(".yaml")):
        for case in yaml.safe_load(f.read_text()):
            yield pytest.param(case, id=f"{f.name[:-5]}:{case['name']}")


def _compute(case):
    kind, inp = case["metric"], case["inputs"]
    if kind == "classification":
        return M.classification_metrics(inp["y_true"], inp["y_pred"])
    if kind == "auroc":
        return {"auroc": M.auroc(inp["y_true"], inp["scores"])}
    if kind == "retrieval":
        q, g = np.array(inp["queries"]), np.array(inp["gallery"])
        ranks = M.retrieval_ranks(q, g, chunk=2)  # chunk smaller than N: the chunking is exercised
        assert ranks.tolist() == M.retrieval_ranks_full(q, g).tolist()
        rec = M.recall_at_k(ranks, (1, 5))
        return {"ranks": ranks.tolist(), "recall@1": rec[1], "recall@5": rec[5]}
    if kind == "vqa":
        scores = M.score_vqa([inp["prediction"]], [inp["answer"]], list(case["expected"]))
        return {k: float(v[0]) for k, v in scores.items()}
    if kind == "choice":
        parsed = M.parse_choice(inp["response"], inp["options"], random.Random(42))
        return {"letter": parsed.letter, "method": parsed.method}
    if kind == "answer_letter":
        return {"letter": M.answer_letter(inp["answer"], inp["options"])}
    if kind == "bootstrap_mean":
        scores = np.array([1.0] * inp["ones"] + [0.0] * inp["zeros"])
        est = M.mean_ci(scores, n_boot=inp["n_boot"], seed=inp["seed"])
        return {"value": est.value, "stderr": est.stderr, "ci_low": est.ci_low, "ci_high": est.ci_high}
    raise AssertionError(f"golden case of unknown metric kind {kind}")


@pytest.mark.parametrize("case", list(_cases()))
def test_golden(case):
    got = _compute(case)
    tol = case.get("tol", 0)
    for key, want in case["expected"].items():
        have = got[key]
        if isinstance(want, (int, float)) and not isinstance(want, bool):
            assert have == pytest.approx(want, abs=tol), f"{key}: got {have}, expected {want} ± {tol}"
        else:
            assert have == want, f"{key}: got {have!r}, expected {want!r}"


def test_golden_files_cover_every_metric_family():
    kinds = {c.values[0]["metric"] for c in _cases()}
    assert {"classification", "auroc", "retrieval", "vqa", "choice", "bootstrap_mean"} <= kinds
