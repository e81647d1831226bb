"""`pathasst bench run/leaderboard/validate` end to end on tiny models and local folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathasst.cli import main


def _results(out):
    return json.loads((out / "results.json").read_text())


def _details(out):
    return [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]


def test_zeroshot_open_clip_prints_three_metrics_with_cis(image_folder, open_clip_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["bench", "run", "--task", "crc100k", "--model", f"local-dir:{open_clip_dir}",
               "--dataset", str(image_folder), "--out", str(out), "--bootstrap", "200"])
    assert rc == 0
    printed = capsys.readouterr().out
    for m in ("accuracy", "balanced_accuracy", "weighted_f1"):
        assert m in printed
    assert printed.count("95% CI") == 3
    res = _results(out)
    recs = {r["metric"]: r for r in res["records"]}
    assert set(recs) == {"accuracy", "balanced_accuracy", "weighted_f1"}
    details = _details(out)
    assert len(details) == 12 and {"id", "label", "prediction", "score"} <= set(details[0])
    # the recorded accuracy is the details' accuracy: nothing is lost between the two files
    acc = np.mean([d["label"] == d["prediction"] for d in details])
    assert recs["accuracy"]["value"] == pytest.approx(acc)
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in recs.values())
    assert recs["accuracy"]["n"] == 12 and recs["accuracy"]["dataset_id"].startswith("local:")
    assert recs["accuracy"]["dataset_revision"].startswith("sha256:")
    assert recs["accuracy"]["model_revision"].startswith("sha256:")
    # 3 classes x names x 10 templates were embedded
    assert res["run"]["counts"]["prompts_per_class"]["ADI"] == 3 * 10
    assert main(["bench", "validate", str(out / "results.json")]) == 0


def test_zeroshot_folder_and_hf_clip(image_folder, hf_clip_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["bench", "run", "--task", "zeroshot_folder", "--model", str(hf_clip_dir),
               "--dataset", str(image_folder), "--out", str(out), "--bootstrap", "50"])
    assert rc == 0
    labels = {d["prediction"] for d in _details(out)} | {d["label"] for d in _details(out)}
    assert labels <= {"ADI", "LYM", "TUM"}
    assert len(_results(out)["records"]) == 3


def test_retrieval_folder_both_directions(caption_folder, open_clip_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["bench", "run", "--task", "retrieval_folder", "--model", f"local-dir:{open_clip_dir}",
                 "--dataset", str(caption_folder), "--out", str(out), "--bootstrap", "50"]) == 0
    recs = {r["metric"]: r["value"] for r in _results(out)["records"]}
    assert len(recs) == 8
    # 6 pairs: every correct item is within the top 50, and R@k never decreases with k
    assert recs["i2t_recall@50"] == 1.0 and recs["t2i_recall@50"] == 1.0
    assert recs["i2t_recall@1"] <= recs["i2t_recall@5"] <= recs["i2t_recall@10"]
    ranks = [d["prediction"]["i2t_rank"] for d in _details(out)]
    assert recs["i2t_recall@1"] == pytest.approx(np.mean([r == 1 for r in ranks]))


def test_vqa_closed_and_open_with_tiny_llava(vqa_folder, tiny_llava_dir, tmp_path, capsys):
    for task, n in (("pathvqa_closed", 4), ("pathvqa_open", 3)):
        out = tmp_path / task
        rc = main(["bench", "run", "--task", task, "--model", str(tiny_llava_dir), "--dataset", str(vqa_folder),
                   "--out", str(out), "--bootstrap", "50"])
        details = _details(out)
        assert len(details) == n
        if rc == 0:
            recs = {r["metric"]: r for r in _results(out)["records"]}
            assert all(0 <= r["value"] <= 1 and r["n"] == n for r in recs.values())
        else:  # a random tiny model may answer nothing at all: that is refused with a reason, never scored
            assert rc == 4 and all(d["prediction"] == "" for d in details)
    printed = capsys.readouterr()
    assert "pathvqa_closed" in printed.out and "pathvqa_open" in printed.out


def _server(answer):
    from pathasst.testing.openai_server import OpenAITestServer

    return OpenAITestServer(lambda request: answer(request))


def _question(request):
    content = request["messages"][-1]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    return content[1]["text"]


def test_vqa_closed_through_endpoint_scores_both_rules(vqa_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    # answers "yes" to everything, hedges once: keyword and strict rules must differ by exactly that item
    def answer(req):
        q = _question(req)
        return "yes and no" if "necrosis" in q else "Yes."

    out = tmp_path / "run"
    with _server(answer) as srv:
        rc = main(["bench", "run", "--task", "pathvqa_closed", "--model", "endpoint:test-model",
                   "--base-url", srv.base_url, "--dataset", str(vqa_folder), "--out", str(out), "--bootstrap", "50"])
    assert rc == 0
    recs = {r["metric"]: r["value"] for r in _results(out)["records"]}
    # references yes, no, yes, no: "Yes." right twice; "yes and no" on a "no" item: keyword hit, strict miss
    assert recs["closed_accuracy_keyword"] == pytest.approx(3 / 4)
    assert recs["closed_accuracy_strict"] == pytest.approx(2 / 4)
    assert recs and "Answer with yes or no." in srv.chat_requests()[0]["messages"][-1]["content"][1]["text"]


def test_multiple_choice_parser_and_fallback(mc_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    replies = iter(["(A)", "It is lymphoma", "no idea", "D."])
    out = tmp_path / "run"
    with _server(lambda req: next(replies)) as srv:
        assert main(["bench", "run", "--task", "pmcvqa", "--model", "endpoint:m", "--base-url", srv.base_url,
                     "--dataset", str(mc_folder), "--out", str(out), "--bootstrap", "50"]) == 0
    res = _results(out)
    d = _details(out)
    assert [x["parsed_by"] for x in d] == ["letter", "text", "random", "letter"]
    # refs A, B, B ("lymphoma" as text), D; the fallback draws A from random.Random(42): wrong
    assert res["records"][0]["value"] == pytest.approx(3 / 4)
    assert res["run"]["counts"]["random_fallbacks"] == 1


def test_model_returning_empty_strings_is_refused(vqa_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    out = tmp_path / "run"
    with _server(lambda req: "") as srv:
        rc = main(["bench", "run", "--task", "pathvqa_open", "--model", "endpoint:m", "--base-url", srv.base_url,
                   "--dataset", str(vqa_folder), "--out", str(out)])
    assert rc == 4
    err = capsys.readouterr().err
    assert "empty answer for all 3 items" in err
    assert not (out / "results.json").exists() and len(_details(out)) == 3


def test_leaderboard_and_validate(image_folder, open_clip_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        assert main(["bench", "run", "--task", "crc100k", "--model", f"local-dir:{open_clip_dir}",
                     "--dataset", str(image_folder), "--out", str(runs / name), "--bootstrap", "50",
                     "--limit", "8" if name == "a" else "12"]) == 0
    # b is then tampered: accuracy above 1 must keep it off the board
    res = _results(runs / "b")
    res["records"][0]["value"] = 1.2
    (runs / "b" / "results.json").write_text(json.dumps(res))
    capsys.readouterr()
    board = tmp_path / "board"
    assert main(["bench", "leaderboard", str(runs), "--out", str(board)]) == 0
    md = (board / "leaderboard.md").read_text()
    assert "## crc100k" in md and "Rejected submissions" in md and "1.2 is impossible" in md
    assert (board / "leaderboard.png").stat().st_size > 1000
    html = (board / "leaderboard.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    rows = (board / "leaderboard.csv").read_text().splitlines()
    assert rows[0].startswith("task_name,task_version,model_id") and len(rows) == 1 + 3
    assert main(["bench", "validate", str(runs / "b")]) == 4
    assert "accuracy lies in [0, 1]" in capsys.readouterr().err


@pytest.mark.slow  # three loads of one model, two of them through transformers
def test_pathclip_export_scores_alike_as_open_clip_and_as_clipmodel(image_folder, tmp_path):
    """A PathCLIP export folder (issue #7: both layouts in one folder) read by both adapters gives the
    same predictions: the two formats hold one model."""
    import open_clip
    import torch

    ce = pytest.importorskip("pathasst.trainers.clip_export")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(1)
    model = open_clip.CLIP(**cfg)
    folder = tmp_path / "pathclip"
    pre = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    ce.write_open_clip_folder(ce.open_clip_state_dict(model), cfg, pre, folder)
    ce.write_hf_clip(ce.open_clip_state_dict(model), cfg, pre, folder, vision_tower=False)
    runs = {}
    for name, spec in (("oc", f"local-dir:{folder}"), ("hf", f"hf-clip:{folder}"), ("plain", str(folder))):
        out = tmp_path / name
        assert main(["bench", "run", "--task", "crc100k", "--model", spec, "--dataset", str(image_folder),
                     "--out", str(out), "--bootstrap", "20"]) == 0
        runs[name] = {d["id"]: d for d in _details(out)}
    assert [d["prediction"] for d in runs["oc"].values()] == [d["prediction"] for d in runs["plain"].values()]
    assert [d["prediction"] for d in runs["oc"].values()] == [d["prediction"] for d in runs["hf"].values()]
    for k in runs["oc"]:
        assert runs["oc"][k]["score"] == pytest.approx(runs["hf"][k]["score"], abs=2e-3)
