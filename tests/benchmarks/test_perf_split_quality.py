"""The split-quality benchmark: the held-out real captions are well formed and attributed, the
metric scores golden cases as it should, and the rules' evaluation runs end to end."""

from __future__ import annotations

import json

import pytest

from pathasst.benchmarks.perf import split_quality as sq
from pathasst.dataset_builders.curate.llm import LLMCaptioner, LLMSettings, Generation, unfaithful_words


def test_heldout_captions_are_attributed_faithful_and_compound():
    items = sq.load_heldout()
    assert len(items) >= 30
    for item in items:
        src = item["source"]
        assert src.get("licence", "").startswith("CC BY"), item["id"]
        assert src.get("found_in") and (src.get("doi") or src.get("journal")), item["id"]
        assert len(item["panels"]) >= 2, item["id"]
        for label, text in item["panels"]:
            assert label and text.strip(), item["id"]
        for text in [item["shared_prefix"], item["shared_suffix"], *(t for _, t in item["panels"])]:
            assert unfaithful_words(text, item["caption"]) == [], (item["id"], text)


def test_metric_golden_cases():
    assert sq.word_f1("Tubular necrosis.", "tubular necrosis") == 1.0
    assert sq.word_f1("a b c d", "a b") == pytest.approx(2 / 3)
    gold = [("A", "Glomerulus with crescent."), ("B", "Tubular necrosis.")]
    perfect = sq.match_panels(gold, gold)
    assert perfect == {"tp": 2, "pred": 2, "gold": 2, "label_tp": 2}
    # right labels, one wrong text; an extra panel; lower-case labels match
    counts = sq.match_panels([("a", "Glomerulus with crescent"), ("b", "Interstitial fibrosis"), ("C", "x")], gold)
    assert counts == {"tp": 1, "pred": 3, "gold": 2, "label_tp": 2}
    assert sq.prf(1, 3, 2) == {"precision": 0.3333, "recall": 0.5, "f1": 0.4}
    assert sq.prf(0, 0, 2)["f1"] == 0.0


def test_eval_rules_and_an_llm_through_the_pipeline_captioner(monkeypatch):
    items = sq.load_heldout()[:3]

    class Echo:  # answers with the hand labels: an oracle, to check the plumbing and the counts
        name, prompt_versions = "oracle", {}

        def generate(self, messages, **kw):
            item = next(i for i in items if messages[1]["content"].startswith(i["caption"] + "\n"))
            return Generation(json.dumps({"shared_prefix": item["shared_prefix"], "shared_suffix": item["shared_suffix"],
                                          "panels": [{"label": l, "subcaption": t} for l, t in item["panels"]]}), "stop")

    monkeypatch.setattr("pathasst.dataset_builders.curate.llm.make_backend", lambda settings: Echo())
    result = sq.evaluate("oracle", items)
    assert 0 <= result["rules"]["panel"]["f1"] <= 1
    assert result["llm"]["panel"]["f1"] == 1.0 and result["llm"]["llm_alone"]["panel"]["f1"] == 1.0
    assert result["llm"]["llm_stats"]["accepted"] == 3
    result.update(threshold=0.8)
    text = sq.report(result)
    assert "rules" in text and "LLM alone" in text


def test_cli_eval_writes_json(tmp_path, capsys):
    assert sq.main(["eval", "--limit", "5", "--json", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rules"]["captions"] == 5 and "panel F1" in capsys.readouterr().out


def test_eval_budget_counts_captions_not_run_and_logs_progress(monkeypatch, tmp_path):
    items = sq.load_heldout()[:3]

    class Slow:  # a right answer that takes 0.2 s: the 0.05 s budget is spent after the first caption
        name, prompt_versions = "slow", {}

        def generate(self, messages, **kw):
            import time

            time.sleep(0.2)
            item = next(i for i in items if messages[1]["content"].startswith(i["caption"] + "\n"))
            return Generation(json.dumps({"shared_prefix": item["shared_prefix"], "shared_suffix": item["shared_suffix"],
                                          "panels": [{"label": l, "subcaption": t} for l, t in item["panels"]]}), "stop")

    monkeypatch.setattr("pathasst.dataset_builders.curate.llm.make_backend", lambda settings: Slow())
    result = sq.evaluate("slow", items, budget_s=0.05, progress=tmp_path / "p.jsonl")
    llm = result["llm"]
    assert llm["not_run"] == 2 and llm["attempted"]["captions"] == 1 and llm["llm_stats"]["calls"] == 1
    assert llm["attempted"]["llm_alone"]["panel"]["f1"] == 1.0
    assert [r["status"] for r in llm["per_caption"]] == ["llm", "not_run", "not_run"]
    # not run: the rules' answer in the pipeline row, nothing in the LLM-alone row
    rules = sq.rules_predictions(items)
    assert llm["panels_pred"] == len(items[0]["panels"]) + sum(len(rules[i["id"]]) for i in items[1:])
    assert llm["llm_alone"]["panels_pred"] == len(items[0]["panels"])
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [row["id"] for row in lines] == [i["id"] for i in items] and lines[0]["seconds"] >= 0.2
    result.update(threshold=0.8)
    assert "1 of 3 captions (2 not run)" in sq.report(result)
