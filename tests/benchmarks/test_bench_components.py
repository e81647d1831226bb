"""`pathasst bench run` on the pipeline-component tasks: caption_split_f1, pdf_pairing, subfig_map.

Each runner must score exactly as the project's own evaluation of that component does (the
split-quality benchmark, the PDF quality benchmark, the detector's evaluate), write the same
results JSON and details JSONL as the other kinds, and pass `bench validate`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from pathasst.benchmarks import metrics as M
from pathasst.cli import main


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _records(out: Path) -> dict:
    return {r["metric"]: r for r in _results(out)["records"]}


def _details(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]


def _check_cis(recs: dict) -> None:
    for r in recs.values():
        assert 0.0 <= r["value"] <= 1.0
        if r["ci_low"] is not None:
            assert r["ci_low"] - 1e-9 <= r["value"] <= r["ci_high"] + 1e-9


# --- caption_split_f1 ------------------------------------------------------------------------------


def test_caption_split_rules_on_the_shipped_real_captions_as_split_quality_scores(tmp_path, capsys):
    from pathasst.benchmarks.perf import split_quality as sq

    out = tmp_path / "run"
    assert main(["bench", "run", "--task", "caption_split_f1", "--model", "rules", "--out", str(out),
                 "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("95% CI") == 3 and "pathasst:real_compound_captions" in printed
    recs = _records(out)
    heldout = sq.load_heldout()
    reference = sq.evaluate(None, heldout)["rules"]["panel"]  # the split-quality benchmark's own numbers
    assert recs["subcaption_precision"]["value"] == pytest.approx(reference["precision"], abs=5e-5)
    assert recs["subcaption_recall"]["value"] == pytest.approx(reference["recall"], abs=5e-5)
    assert recs["subcaption_f1"]["value"] == pytest.approx(reference["f1"], abs=5e-5)
    assert all(r["n"] == len(heldout) for r in recs.values())
    _check_cis(recs)
    rec = recs["subcaption_f1"]
    assert rec["dataset_id"] == "pathasst:real_compound_captions" and rec["dataset_revision"].startswith("sha256:")
    assert rec["model_id"] == "rules" and rec["model_revision"].startswith("pathasst-")
    details = _details(out)
    assert [d["id"] for d in details] == [h["id"] for h in heldout]
    # the details hold every count the metric sums: nothing is lost between the two files
    tp, pred = sum(d["tp"] for d in details), sum(d["pred"] for d in details)
    assert recs["subcaption_precision"]["value"] == pytest.approx(tp / pred)
    assert main(["bench", "validate", str(out / "results.json")]) == 0
    assert "warning" not in capsys.readouterr().out  # a packaged file with its sha256: nothing unpinned


def _split_folder(root: Path, rows: list[dict]) -> Path:
    from datasets import Dataset, Features, List, Value

    feats = Features({"id": Value("string"), "caption": Value("string"),
                      "sub_captions": List({"label": Value("string"), "text": Value("string")})})
    (root / "data").mkdir(parents=True)
    Dataset.from_list(rows, features=feats).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


_ROWS = [
    {"id": "c1", "caption": "Colon biopsy. (A) Normal mucosa. (B) Adenoma with dysplasia. Scale bar 50 um.",
     "sub_captions": [{"label": "A", "text": "Normal mucosa."}, {"label": "B", "text": "Adenoma with dysplasia."}]},
    {"id": "c2", "caption": "Lymph node. A, Follicles. B, Sinus histiocytosis.",
     "sub_captions": [{"label": "A", "text": "Follicles."}, {"label": "B", "text": "Sinus histiocytosis."}]},
    {"id": "c3", "caption": "Liver. (a) Steatosis (b) Fibrosis in portal tracts",
     "sub_captions": [{"label": "a", "text": "Steatosis"}, {"label": "b", "text": "Cirrhosis with nodules"}]},
]


def test_caption_split_llm_endpoint_scored_alone_with_fallbacks_counted(tmp_path):
    from pathasst.dataset_builders.curate.captions import split_caption
    from pathasst.dataset_builders.curate.llm import split_answer
    from pathasst.testing.openai_server import OpenAITestServer

    folder = _split_folder(tmp_path / "split_local", _ROWS)

    def responder(request):
        text = "\n".join(str(m.get("content")) for m in request["messages"])
        if _ROWS[1]["caption"] in text:
            return "I cannot split this caption."  # fails the answer checks: the rules take over
        caption = next(r["caption"] for r in _ROWS if r["caption"] in text)
        return split_answer(split_caption(caption))

    out = tmp_path / "run"
    with OpenAITestServer(responder) as server:
        assert main(["bench", "run", "--task", "caption_split_f1", "--model", "endpoint:splitter", "--base-url",
                     server.base_url, "--dataset", str(folder), "--out", str(out), "--bootstrap", "100"]) == 0
    res = _results(out)
    counts = res["run"]["counts"]
    assert counts["llm_stats"]["calls"] == 3 and counts["llm_stats"]["accepted"] == 2
    details = {d["id"]: d for d in _details(out)}
    assert details["c2"]["status"] == "fallback" and details["c2"]["prediction"] == []  # wrong, not the rules'
    assert details["c1"]["status"] == "llm" and details["c1"]["score"] == 1.0
    # model alone: c1 2/2, c2 none predicted (2 gold), c3 1 of 2 right (b's text differs)
    recs = _records(out)
    assert recs["subcaption_precision"]["value"] == pytest.approx(3 / 4)
    assert recs["subcaption_recall"]["value"] == pytest.approx(3 / 6)
    assert recs["subcaption_f1"]["value"] == pytest.approx(M.prf(3, 4, 6)["f1"], abs=5e-5)
    # with the rules' fallback (what curate split keeps) c2 is split by the rules and right
    assert counts["with_rules_fallback"]["panel"]["recall"] == pytest.approx(5 / 6, abs=1e-4)
    rec = recs["subcaption_f1"]
    assert rec["model_id"] == "endpoint:splitter" and rec["dataset_id"] == "local:split_local"
    assert main(["bench", "validate", str(out / "results.json")]) == 0


@pytest.mark.slow  # up to 1024 generated tokens on CPU: ~10 s
def test_caption_split_model_folder_runs_through_the_captioner(tmp_path):
    """A (random, tiny) causal LM folder loads as curate split loads it; its answer fails the checks,
    so the model alone scores nothing, and the rules' fallback is reported beside."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .conftest import CHAT_TEMPLATE, _word_tokenizer

    tok = _word_tokenizer(["(", ")", "a", "b", "panel", "{", "}", '"', "label", "subcaption"])
    tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path / "splitter"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "run"
    assert main(["bench", "run", "--task", "caption_split_f1", "--model", str(folder), "--limit", "1",
                 "--out", str(out), "--bootstrap", "20"]) == 0
    res = _results(out)
    counts = res["run"]["counts"]
    assert counts["captions"] == 1 and counts["llm_stats"]["calls"] == 1 and counts["llm_stats"]["accepted"] == 0
    assert all(d["status"] == "fallback" and d["prediction"] == [] for d in _details(out))
    assert _records(out)["subcaption_recall"]["value"] == 0.0
    assert counts["with_rules_fallback"]["panel"]["recall"] > 0  # the rules' split of the same captions
    assert res["records"][0]["model_id"] == "splitter" and res["records"][0]["model_revision"].startswith("sha256:")


def test_caption_split_bad_data_is_one_clear_error(tmp_path, capsys):
    from datasets import Dataset

    nocol = tmp_path / "nocol"
    (nocol / "data").mkdir(parents=True)
    Dataset.from_dict({"caption": ["(A) x. (B) y."]}).to_parquet(str(nocol / "data" / "test-00000-of-00001.parquet"))
    assert main(["bench", "run", "--task", "caption_split_f1", "--model", "rules", "--dataset", str(nocol),
                 "--out", str(tmp_path / "o1")]) == 2
    assert "no column 'sub_captions'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"captions": [{"id": "x", "caption": "A caption."}]}))
    assert main(["bench", "run", "--task", "caption_split_f1", "--model", "rules", "--dataset", str(bad),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "not a hand-split captions file" in capsys.readouterr().err
    assert main(["bench", "run", "--task", "caption_split_f1", "--model", "nowhere/model", "--out",
                 str(tmp_path / "o3")]) == 2
    assert "not 'rules', a splitter model folder or an endpoint URL" in capsys.readouterr().err
    assert main(["bench", "run", "--task", "caption_split_f1", "--model", "http://127.0.0.1:9/v1", "--out",
                 str(tmp_path / "o4")]) == 2
    assert "--model endpoint:NAME --base-url http://127.0.0.1:9/v1" in capsys.readouterr().err


# --- pdf_pairing -----------------------------------------------------------------------------------


def _annotate(truth, name: str, sha: bool = True) -> dict:
    figures = []
    for f in truth.figures:
        figures.append({"page": f.page_number, "label": f.label, "caption": f.caption[len(f.label):].lstrip(" :.")})
    doc = {"name": name, "figures": figures}
    if sha:
        doc["sha256"] = hashlib.sha256(truth.path.read_bytes()).hexdigest()
    return doc


@pytest.mark.slow  # two extraction methods over five documents, each twice: ~10 s
def test_pdf_pairing_on_generated_pdfs_as_extract_quality_scores(pdf_factory, tmp_path, capsys):
    from pathasst.benchmarks.perf import extract_quality as q

    docs = {"below": [pdf_factory.caption_below_page()], "above": [pdf_factory.caption_above_page()],
            "twocol": [pdf_factory.two_column_page()], "vector": [pdf_factory.vector_figure_page()],
            "facing": pdf_factory.facing_caption_pages()}
    annotations = []
    for name, pages in docs.items():
        truth = pdf_factory(pages, f"{name}.pdf")
        annotations.append(_annotate(truth, name))
    annotations.append({"name": "absent", "figures": [{"page": 1, "label": "Figure 1", "caption": "Not here"}]})
    (pdf_factory.root / "annotations.yaml").write_text(yaml.safe_dump({"documents": annotations}))
    out = tmp_path / "geo"
    # --model omitted: the task's default method (geometry)
    assert main(["bench", "run", "--task", "pdf_pairing", "--dataset", str(pdf_factory.root), "--out", str(out),
                 "--bootstrap", "100"]) == 0
    recs, res = _records(out), _results(out)
    counts = res["run"]["counts"]
    assert counts["method"] == "geometry" and counts["documents"] == 5 and "absent" in counts["skipped"]
    # the same numbers as extract_quality's score() over the same documents
    totals = {"figures": 0, "found": 0, "records": 0, "good": 0}
    for doc in annotations[:-1]:
        s = q.score(q.extract(pdf_factory.root / f"{doc['name']}.pdf", "geometry"), doc["figures"])
        for k in totals:
            totals[k] += s[k]
    assert recs["pairing_recall"]["value"] == pytest.approx(totals["found"] / totals["figures"])
    assert recs["pairing_precision"]["value"] == pytest.approx(totals["good"] / totals["records"])
    assert totals["found"] >= 4  # the extractor pairs the simple layouts
    details = _details(out)
    figures = [d for d in details if d["kind"] == "figure"]
    assert len(figures) == totals["figures"] and sum(d["score"] for d in figures) == totals["found"]
    assert len([d for d in details if d["kind"] == "record"]) == totals["records"] - totals["good"]
    assert all(r["n"] == 5 for r in recs.values())
    _check_cis(recs)
    assert recs["pairing_recall"]["model_id"] == "extract-pdf:geometry"
    capsys.readouterr()
    assert main(["bench", "validate", str(out / "results.json")]) == 0

    # a document whose bytes are not the annotated ones is skipped with the reason, never scored
    (pdf_factory.root / "below.pdf").write_bytes((pdf_factory.root / "below.pdf").read_bytes() + b"\n%edited")
    out2 = tmp_path / "layout"
    assert main(["bench", "run", "--task", "pdf_pairing", "--model", "layout", "--dataset",
                 str(pdf_factory.root / "annotations.yaml"), "--out", str(out2), "--bootstrap", "50"]) == 0
    counts2 = _results(out2)["run"]["counts"]
    assert "sha256 differs" in counts2["skipped"]["below"] and counts2["documents"] == 4
    assert _records(out2)["pairing_recall"]["model_id"] == "extract-pdf:layout"


def test_pdf_pairing_refuses_what_it_cannot_score(pdf_factory, tmp_path, capsys):
    truth = pdf_factory([pdf_factory.caption_below_page()], "one.pdf")
    assert main(["bench", "run", "--task", "pdf_pairing", "--dataset", str(pdf_factory.root),
                 "--out", str(tmp_path / "o1")]) == 2
    assert "no annotations.yaml" in capsys.readouterr().err
    (pdf_factory.root / "annotations.yaml").write_text(yaml.safe_dump({"documents": [_annotate(truth, "one")]}))
    assert main(["bench", "run", "--task", "pdf_pairing", "--model", "ocr", "--dataset", str(pdf_factory.root),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "geometry, layout" in capsys.readouterr().err
    (pdf_factory.root / "annotations.yaml").write_text(yaml.safe_dump({"documents": [{"name": "one"}]}))
    assert main(["bench", "run", "--task", "pdf_pairing", "--dataset", str(pdf_factory.root),
                 "--out", str(tmp_path / "o3")]) == 2
    assert "needs name and figures" in capsys.readouterr().err


# --- subfig_map ------------------------------------------------------------------------------------

needs_ultralytics = pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                                       reason="ultralytics is not installed (extra: detect)")


@pytest.fixture(scope="module")
def random_detector(tmp_path_factory) -> Path:
    """An untrained tiny YOLO detector (the tiny recipe's architecture) saved as a checkpoint: random
    weights still predict boxes, so mAP and its interval are computed from real matches."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path_factory.getbasetemp() / "ultralytics-config"))
    import torch

    from pathasst.trainers import registry
    from pathasst.ultralytics_offline import import_ultralytics

    ultralytics = import_ultralytics()
    arch = yaml.safe_load((registry.recipe_dir("subfig") / "tiny.yaml").read_text())["model"]
    folder = tmp_path_factory.mktemp("detector")
    (folder / "model.yaml").write_text(yaml.safe_dump(arch))
    torch.manual_seed(0)
    model = ultralytics.YOLO(str(folder / "model.yaml"))
    model.model.names = {0: "subfigure", 1: "panel_label"}
    model.model.args = {"imgsz": 128}
    model.save(str(folder / "best.pt"))
    return folder / "best.pt"


@needs_ultralytics
@pytest.mark.slow  # ultralytics' import and validator: ~15 s on a busy CPU
def test_subfig_map_is_evaluate_with_image_bootstrap(random_detector, tmp_path, capsys):
    from pathasst.trainers.subfig import evaluate, toy_yolo_dataset

    data = toy_yolo_dataset(tmp_path / "yolo", {"train": 2, "val": 2, "test": 6}).parent
    out = tmp_path / "run"
    assert main(["bench", "run", "--task", "subfig_map", "--model", str(random_detector), "--dataset", str(data),
                 "--out", str(out), "--bootstrap", "200"]) == 0
    assert capsys.readouterr().out.count("95% CI") == 2
    recs = _records(out)
    reference = evaluate(random_detector, data, split="test", device="cpu")
    assert recs["map50"]["value"] == pytest.approx(reference["map50"], abs=1e-6)
    assert recs["map50_95"]["value"] == pytest.approx(reference["map50_95"], abs=1e-6)
    assert recs["map50"]["n"] == 6 and recs["map50"]["split"] == "test"
    _check_cis(recs)
    assert recs["map50"]["ci_low"] < recs["map50"]["ci_high"]  # images differ: the interval is not a point
    details = _details(out)
    assert len(details) == 6 and sum(d["label"]["boxes"] for d in details) == reference["instances"]
    assert recs["map50"]["model_revision"].startswith("sha256:")
    assert main(["bench", "validate", str(out / "results.json")]) == 0
    # a split the data lacks is named
    assert main(["bench", "run", "--task", "subfig_map", "--model", str(random_detector), "--dataset", str(data),
                 "--split", "holdout", "--out", str(tmp_path / "o2")]) == 2
    assert "no 'holdout' split" in capsys.readouterr().err


def test_map_of_matches_ultralytics_on_known_matches():
    pytest.importorskip("ultralytics")
    from pathasst.benchmarks.components import map_of

    tp = np.zeros((3, 10), dtype=bool)
    tp[0, :] = True  # a perfect box, the highest confidence
    tp[1, :5] = True  # right at IoU 0.5-0.7 only
    images = [{"tp": tp[:2], "conf": np.array([0.9, 0.8]), "pred_cls": np.zeros(2), "target_cls": np.zeros(2)},
              {"tp": tp[2:], "conf": np.array([0.7]), "pred_cls": np.zeros(1), "target_cls": np.zeros(1)}]
    map50, map50_95 = map_of(images)
    assert 0.0 < map50_95 < map50 < 1.0
    assert map_of(images, np.array([0, 0]))[0] == pytest.approx(1.0, abs=1e-2)  # both matched at IoU 0.5


def test_ratio_bootstrap_resamples_clusters():
    from pathasst.benchmarks.components import ratio_estimates

    num, den = np.array([1.0, 2.0, 0.0]), np.array([2.0, 2.0, 1.0])
    est = ratio_estimates(num, den, n_boot=300, seed=0, n=3)
    assert est.value == pytest.approx(3 / 5) and est.n == 3 and est.ci_low <= est.value <= est.ci_high
    single = ratio_estimates(num[:1], den[:1], n_boot=300, seed=0, n=1)
    assert single.ci_low is None and single.value == 0.5
