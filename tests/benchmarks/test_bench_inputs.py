"""Registry, bad inputs and leakage: each failure is one clear message and a non-zero exit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pathasst.benchmarks import metrics as M
from pathasst.benchmarks.registry import all_tasks, get_task, list_tasks, parse_task
from pathasst.cli import main
from pathasst.errors import ConfigError

from .conftest import tile, write_dataset


def test_registry_lists_every_task_of_the_issue(capsys):
    names = set(list_tasks())
    assert {"crc100k", "pcam", "lc25000_lung", "lc25000_colon", "bach", "pannuke", "sicapv2", "zeroshot_folder",
            "pathcap_retrieval", "arch_book", "arch_pubmed", "retrieval_folder", "pathvqa_closed", "pathvqa_open",
            "pmcvqa", "pathmmu", "quiltvqa_closed", "quiltvqa_open", "selector_auroc", "subfig_map",
            "caption_split_f1", "pdf_pairing"} <= names
    for t in all_tasks():
        assert t.task_version.startswith(f"{t.version}+")
        if t.kind == "zeroshot":
            assert {"accuracy", "balanced_accuracy", "weighted_f1"} <= set(t.metrics)
            assert t.templates and all(tpl.count("{}") == 1 for tpl in t.templates)
        # no invented revisions: a null revision always says why
        assert t.dataset["revision"] or t.dataset["revision_note"]
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert "crc100k" in out and "1aurent/NCT-CRC-HE" in out


def test_unknown_task_lists_close_matches(capsys, tmp_path):
    with pytest.raises(ConfigError, match="did you mean crc100k"):
        get_task("crc100")
    assert main(["bench", "run", "--task", "pathvqa", "--model", "x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'pathvqa'" in err and "pathvqa_closed" in err


def test_task_version_changes_when_a_task_is_edited():
    task = get_task("crc100k")
    edited = dict(task.raw)
    edited["classes"] = [dict(c) for c in task.raw["classes"]]
    edited["classes"][0] = {"label": "ADI", "names": ["fat"]}
    assert parse_task(edited, "edited.yaml").task_version != task.task_version
    assert parse_task(dict(task.raw), "same.yaml").task_version == task.task_version


@pytest.mark.parametrize("change, message", [
    ({"kind": "segmentation"}, "kind='segmentation' is not one of"),
    ({"metrics": ["accuracy"]}, "balanced_accuracy missing"),
    ({"dataset": {"id": None, "revision": None, "split": "test"}}, "revision_note"),
    ({"prompts": ["no placeholder"]}, "exactly one '{}'"),
    ({"colour": "red"}, "unknown key(s) colour"),
])
def test_invalid_task_files_name_the_key(change, message):
    data = dict(get_task("crc100k").raw) | change
    with pytest.raises(ConfigError, match="invalid") as err:
        parse_task(data, "bad.yaml")
    assert message in str(err.value)


def test_dataset_missing_a_column(tmp_path, open_clip_dir, capsys):
    folder = write_dataset(tmp_path / "noanswer", {"image": [tile("ADI", 1)], "question": ["is it fat?"]})
    rc = main(["bench", "run", "--task", "pathvqa_closed", "--model", "endpoint:m", "--base-url", "http://127.0.0.1:9/v1",
               "--dataset", str(folder), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "has no column 'answer' (the task's answer column)" in err and "columns present: image, question" in err


def test_nan_embeddings_are_refused(tmp_path, open_clip_dir, image_folder, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan_clip"
    shutil.copytree(open_clip_dir, broken)
    state = load_file(str(broken / "open_clip_model.safetensors"))
    state["visual.proj"][:] = float("nan")
    save_file(state, str(broken / "open_clip_model.safetensors"))
    rc = main(["bench", "run", "--task", "crc100k", "--model", f"local-dir:{broken}", "--dataset", str(image_folder),
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "returned NaN or infinite image embeddings for 12 of 12 inputs" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()
    with pytest.raises(ValueError, match="NaN"):
        M.retrieval_ranks(np.array([[np.nan, 1.0]]), np.array([[1.0, 0.0]]))


def test_label_outside_the_task_classes(tmp_path, open_clip_dir):
    root = tmp_path / "odd"
    (root / "ADI").mkdir(parents=True)
    (root / "KIDNEY").mkdir()
    tile("ADI", 1).save(root / "ADI" / "a.png")
    tile("ADI", 2).save(root / "KIDNEY" / "b.png")
    assert main(["bench", "run", "--task", "crc100k", "--model", f"local-dir:{open_clip_dir}", "--dataset", str(root),
                 "--out", str(tmp_path / "o")]) == 2


def test_wrong_model_family_for_the_task(tmp_path, image_folder, tiny_llava_dir, capsys):
    assert main(["bench", "run", "--task", "crc100k", "--model", str(tiny_llava_dir), "--dataset", str(image_folder),
                 "--out", str(tmp_path / "o")]) == 2
    assert "needs a contrastive image-text model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def valid_results(tmp_path_factory, open_clip_dir):
    """One valid crc100k results file (scored once for every tampering case)."""
    root = tmp_path_factory.mktemp("valid")
    data = root / "data"
    for c, label in enumerate(("ADI", "LYM", "TUM")):
        (data / label).mkdir(parents=True)
        for i in range(3):
            tile(label, 10 * c + i).save(data / label / f"{i}.png")
    out = root / "run"
    assert main(["bench", "run", "--task", "crc100k", "--model", f"local-dir:{open_clip_dir}",
                 "--dataset", str(data), "--out", str(out), "--bootstrap", "50"]) == 0
    return (out / "results.json").read_text()


def test_validate_warns_on_unpinned_dataset_revisions(tmp_path, valid_results, capsys):
    res = json.loads(valid_results)
    path = tmp_path / "results.json"
    for rec in res["records"]:
        rec.update(dataset_id="1aurent/NCT-CRC-HE", dataset_revision=None)  # scored on the Hub copy, latest
    path.write_text(json.dumps(res))
    capsys.readouterr()
    assert main(["bench", "validate", str(path)]) == 0  # a warning, never a failure
    out = capsys.readouterr().out
    assert out.count("no dataset_revision (unpinned)") == 3 and "valid: 3 record(s)" in out
    for rec in res["records"]:
        rec.update(dataset_revision="0" * 40)  # a revision recorded, but the task pins none
    path.write_text(json.dumps(res))
    assert main(["bench", "validate", str(path)]) == 0
    assert capsys.readouterr().out.count("pins no dataset revision") == 3


@pytest.mark.parametrize("tamper, reason", [
    (lambda r: r["records"][0].update(task_version="1+00000000"), "is not the registry's"),
    (lambda r: r["records"][1].update(value=1.3), "is impossible"),
    (lambda r: r["records"][1].update(value=float("nan")), "value is nan"),
    (lambda r: r["records"].append(dict(r["records"][0])), "duplicate"),
    (lambda r: r["records"].pop(2), "missing weighted_f1"),
    (lambda r: r["records"][0].update(ci_low=0.99, ci_high=1.0, value=0.5), "outside its own interval"),
    (lambda r: r["records"][0].update(metric="auroc"), "does not report 'auroc'"),
    (lambda r: r["records"][0].update(dataset_id="someone/else"), "is not the task's dataset 1aurent/NCT-CRC-HE"),
    (lambda r: r["records"][0].pop("seed"), "field 'seed': missing"),
    (lambda r: r["records"][0].update(task_name="crc100"), "did you mean crc100k"),
])
def test_validate_rejects_tampered_submissions(tmp_path, valid_results, capsys, tamper, reason):
    path = tmp_path / "results.json"
    path.write_text(valid_results)
    capsys.readouterr()
    assert main(["bench", "validate", str(path)]) == 0
    res = json.loads(valid_results)
    tamper(res)
    path.write_text(json.dumps(res))
    capsys.readouterr()
    assert main(["bench", "validate", str(path)]) == 4
    err = capsys.readouterr().err
    assert "invalid:" in err and reason in err


def test_bootstrap_classification_stats_match_sklearn():
    from pathasst.benchmarks.runner import _cls_stats

    rng = np.random.default_rng(3)
    for _ in range(20):
        k = int(rng.integers(2, 6))
        y, p = rng.integers(0, k, 50), rng.integers(0, k, 50)
        mine, ref = _cls_stats(y, p, k), M.classification_metrics(y, p)
        for key in ref:
            assert mine[key] == pytest.approx(ref[key], abs=1e-12)


def test_chunked_ranks_equal_full_matrix_ranks():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    assert (M.retrieval_ranks(q, g, chunk=64) == M.retrieval_ranks_full(q, g)).all()


def test_leakage_against_training_data(tmp_path, open_clip_dir, capsys):
    long_caption = ("hematoxylin and eosin section of colonic mucosa showing crowded atypical glands with "
                    "cribriform architecture and dirty necrosis")
    ev = tmp_path / "eval"
    ev.mkdir()
    captions = [long_caption, "adipose tissue with large empty cells", "dense lymphoid infiltrate"]
    with open(ev / "metadata.jsonl", "w") as fh:
        for i, c in enumerate(captions):
            tile(["TUM", "ADI", "LYM"][i], 500 + i, size=64).save(ev / f"e{i}.png")
            fh.write(json.dumps({"file_name": f"e{i}.png", "caption": c}) + "\n")
    from PIL import Image

    leaked_image = Image.open(ev / "e2.png").copy()
    train = write_dataset(tmp_path / "train", {
        "id": ["t0", "t1", "t2"],
        "image": [tile("TUM", 900, size=64), leaked_image, tile("ADI", 901, size=64)],
        "caption": ["Figure 2. " + long_caption + ", as described above.", "unrelated text", "another caption"],
    }, split="train")
    out = tmp_path / "o"
    assert main(["bench", "run", "--task", "retrieval_folder", "--model", f"local-dir:{open_clip_dir}",
                 "--dataset", str(ev), "--out", str(out), "--bootstrap", "20", "--train-data", str(train)]) == 0
    leak = json.loads((out / "results.json").read_text())["run"]["leakage"]
    assert leak["items"] == 3 and leak["train_records"] == 3
    assert leak["by_text"] == 1 and leak["examples"]["text"][0]["eval_id"] == "0"
    assert leak["by_image"] >= 1 and any(e["eval_id"] == "2" and e["distance"] == 0 for e in leak["examples"]["image"])
    assert "near-duplicates of training records" in capsys.readouterr().out


def test_batched_vqa_scoring_equals_one_by_one():
    rng = np.random.default_rng(1)
    vocab = ["yes", "no", "tumor", "benign", "not", "the", "is", "Yes.", "No,", "malignant", "cells", ""]
    preds = [" ".join(rng.choice(vocab, int(rng.integers(0, 6)))) for _ in range(200)]
    answers = [" ".join(rng.choice(vocab[:10], int(rng.integers(1, 4)))) for _ in range(200)]
    metrics = list(M.OPEN_METRICS) + list(M.CLOSED_METRICS)
    batched, single = M.score_vqa(preds, answers, metrics), M.score_vqa_one_by_one(preds, answers, metrics)
    for m in metrics:
        assert np.allclose(batched[m], single[m]), m


@pytest.mark.slow  # timm and a ConvNeXt: ~10 s alone, more on a busy machine
def test_selector_auroc_component(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from pathasst.config import load_config
    from pathasst.trainers import registry
    from pathasst.trainers import selector as sel

    data = tmp_path / "sel"
    for label, colour in (("pathology", "LYM"), ("other", "ADI")):
        (data / label).mkdir(parents=True)
        for i in range(5):
            tile(colour, 700 + i + (10 if label == "other" else 0), size=64).save(data / label / f"{i}.png")
    cfg = load_config(sel.SelectorConfig, registry.recipe_dir("selector") / "tiny.yaml",
                      [f"data={data}", f"output_dir={tmp_path / 'unused'}"])
    torch.manual_seed(0)
    model = sel.create_selector_model(cfg, ["other", "pathology"]).eval()
    folder = sel.save_selector(model.state_dict(), model, tmp_path / "selector", ["pathology"])
    out = tmp_path / "o"
    assert main(["bench", "run", "--task", "selector_auroc", "--model", str(folder), "--dataset", str(data),
                 "--out", str(out), "--bootstrap", "100"]) == 0
    recs = {r["metric"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    details = [json.loads(x) for x in (out / "details.jsonl").read_text().splitlines()]
    y = [d["label"] == "pathology" for d in details]
    assert recs["auroc"]["value"] == pytest.approx(M.auroc(y, [d["score"] for d in details]), abs=1e-5)
    assert set(recs) == {"auroc", "accuracy", "balanced_accuracy", "weighted_f1"}
    # a selector is not a detector: the subfig_map runner names what the folder is
    assert main(["bench", "run", "--task", "subfig_map", "--model", str(folder), "--dataset", str(data),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "not an ultralytics YOLO detector" in capsys.readouterr().err


@pytest.mark.parametrize("task, message", [
    ("crc100k", "cannot load 1aurent/NCT-CRC-HE"),
    ("lc25000_lung", "has no Hub dataset"),
    ("zeroshot_folder", "is generic: pass the folder with --dataset"),
])
def test_without_a_local_copy_offline(task, message, tmp_path, capsys):
    assert main(["bench", "run", "--task", task, "--model", "local-dir:nowhere", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
