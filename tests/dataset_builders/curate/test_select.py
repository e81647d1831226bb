"""`pathasst curate select`: score a PathCap folder, keep what passes, ledger the rest, resume.

The selector is a random-initialised tiny ConvNeXt (timm ``test_convnext``) exported in timm's Hub
layout: the mechanics (scores, threshold, ledger, accounting, resume, bad images) do not depend on
how well it was trained, and every kept score is checked against the model's own output. The
images are real: scikit-image's IHC micrograph (tissue tiles) and its other shipped pictures.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("torchvision")
skdata = pytest.importorskip("skimage.data")

import numpy as np  # noqa: E402
from pathasst.trainers import selector as sel  # noqa: E402
from PIL import Image  # noqa: E402

from pathasst.cli import main  # noqa: E402
from pathasst.records import get_spec  # noqa: E402
from pathasst.testing.images import make_huge_image_header, make_image, make_truncated_image, tissue_tile, to_bytes  # noqa: E402
from pathasst.writer import DatasetWriter  # noqa: E402

BAD_REASONS = {  # record id -> what its ledger line must say
    "bad-1x1": "image too small: 1x1",
    "bad-garbage": "not an image",
    "bad-truncated": "truncated image",
    "bad-huge": "image too large",
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core runner its spin-waits
    cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _record(rid: str, image: bytes, source_id: str) -> dict:
    return {
        "id": rid, "image": image, "caption": f"Caption of {rid}.", "caption_raw": f"Figure 1. Caption of {rid}.",
        "source": "pubmed", "source_id": source_id, "figure_id": f"{source_id}/F1", "license": "CC BY 4.0",
        "width": 64, "height": 64,
    }


def _inputs() -> list[dict]:
    recs = []
    for i in range(8):
        tile = tissue_tile(128, seed=i, stain="he" if i % 2 else "ihc")
        recs.append(_record(f"tissue-{i}", to_bytes(tile, "JPEG"), f"PMC{100 + i}"))
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket", "camera", "page", "text", "moon")):
        buf = io.BytesIO()
        Image.fromarray(getattr(skdata, name)()).save(buf, format="PNG")
        recs.append(_record(f"picture-{name}", buf.getvalue(), f"PMC{200 + i}"))
    # convertible oddities: scored like any image
    recs.append(_record("odd-grey", to_bytes(tissue_tile(96, seed=20).convert("L"), "PNG"), "PMC300"))
    recs.append(_record("odd-cmyk", to_bytes(tissue_tile(96, seed=21).convert("CMYK"), "JPEG"), "PMC301"))
    recs.append(_record("odd-16bit", make_image("I;16", (96, 80), seed=2), "PMC302"))
    recs.append(_record("odd-rgba", make_image("RGBA", (96, 80), seed=3), "PMC303"))
    big = io.BytesIO()
    tissue_tile(512).resize((4000, 3000)).save(big, format="JPEG", quality=80)
    recs.append(_record("odd-big", big.getvalue(), "PMC304"))  # decoded downscaled, never at full size
    # unusable: each one ledger line with its reason
    recs.append(_record("bad-1x1", make_image("RGB", (1, 1)), "PMC400"))
    recs.append(_record("bad-garbage", b"<html>not an image</html>", "PMC401"))
    recs.append(_record("bad-truncated", make_truncated_image(), "PMC402"))
    recs.append(_record("bad-huge", make_huge_image_header(), "PMC403"))
    return recs


@pytest.fixture(scope="module")
def pathcap(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pathcap") / "in"
    with DatasetWriter(out, get_spec("pathcap"), splits={"train": 0.7, "test": 0.3}) as writer:
        for record in _inputs():
            assert writer.add(record)
        writer.finalize()
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    cfg = sel.SelectorConfig(data=".", model="test_convnext", image_size=64, output_dir=".")
    torch.manual_seed(0)
    model = sel.create_selector_model(cfg, ["non_pathology", "pathology"]).eval()
    with torch.no_grad():  # spread the scores: a fresh head gives everything about 0.5
        model.get_classifier().weight.mul_(40)
    return sel.save_selector(model.state_dict(), model, tmp_path_factory.mktemp("model") / "selector", ["pathology"])


@pytest.fixture(scope="module")
def expected_scores(pathcap, model_dir) -> dict[str, float]:
    """The selector's own score of every decodable input image, computed outside the command."""
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    selector = sel.Selector.load(str(model_dir), device="cpu")
    ds = load_dataset(str(pathcap)).cast_column("image", ImageFeature(decode=False))
    scores = {}
    for split in ds:
        for row in ds[split]:
            if row["id"].startswith("bad-"):
                continue
            scores[row["id"]] = float(selector.score([selector.decode(row["image"])])[0])
    return scores


def _select(pathcap: Path, model_dir: Path, out: Path, threshold: float, *extra: str) -> int:
    return main(["curate", "select", str(pathcap), "--model", str(model_dir), "--threshold", str(threshold),
                 "--out", str(out), "--batch-size", "4", "--no-progress", *extra])


def _ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def _kept(out: Path) -> dict[str, dict]:
    """The output as users read it: ``load_dataset(folder)``."""
    from datasets import load_dataset

    ds = load_dataset(str(out))
    return {row["id"]: {**row, "split": split} for split in ds for row in ds[split]}


def _scores(out: Path) -> dict[str, float]:
    """id -> pathology_score of every committed record, straight from the shards (cheap)."""
    import pyarrow.parquet as pq

    table = [pq.read_table(p, columns=["id", "pathology_score"]) for p in sorted((out / "data").glob("*.parquet"))]
    return {rid: score for t in table for rid, score in zip(t["id"].to_pylist(), t["pathology_score"].to_pylist())}


def test_select_keeps_scores_ledgers_and_accounts_for_every_input(pathcap, model_dir, expected_scores, tmp_path,
                                                                  capsys):
    threshold = float(np.median(list(expected_scores.values())))
    out = tmp_path / "selected"
    assert _select(pathcap, model_dir, out, threshold) == 0
    kept, ledger = _kept(out), _ledger(out)
    inputs = {r["id"] for r in _inputs()}
    assert len(kept) + len(ledger) == len(inputs)
    assert set(kept) | {line["id"] for line in ledger} == inputs

    # every kept record carries the selector's score, at or above the threshold, image untouched
    assert kept and all(row["pathology_score"] is not None for row in kept.values())
    originals = {r["id"]: r for r in _inputs()}
    for rid, row in kept.items():
        assert row["pathology_score"] >= threshold
        assert row["pathology_score"] == pytest.approx(expected_scores[rid], abs=1e-6)
        buf = io.BytesIO()
        row["image"].save(buf, format=row["image"].format)
        assert row["caption"] == originals[rid]["caption"]
    # every scored record under the threshold is in the ledger with its score
    scored = {line["id"]: line for line in ledger if "score" in line}
    assert set(scored) == {rid for rid, s in expected_scores.items() if s < threshold}
    for rid, line in scored.items():
        assert line["reason"] == f"not pathology: score {expected_scores[rid]:.3f} < threshold {threshold}"
        assert line["score"] == pytest.approx(expected_scores[rid], abs=1e-5)
    # unusable images: one line each with the reason, no score; convertible ones were scored
    reasons = {line["id"]: line["reason"] for line in ledger if "score" not in line}
    assert set(reasons) == set(BAD_REASONS)
    for rid, start in BAD_REASONS.items():
        assert reasons[rid].startswith(start), reasons[rid]
    assert {"odd-grey", "odd-cmyk", "odd-16bit", "odd-rgba", "odd-big"} <= set(expected_scores)

    # records keep the split they came from
    from datasets import load_dataset

    source = load_dataset(str(pathcap))
    split_of = {rid: split for split in source for rid in source[split]["id"]}  # undecodable images: no rows
    assert all(row["split"] == split_of[rid] for rid, row in kept.items())

    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == len(inputs) and summary["accounted"]
    assert summary["records_total"] == len(kept) and summary["rejected_total"] == len(ledger)
    assert summary["reject_reasons"]["not pathology"] == len(scored)
    assert f"{len(inputs)} records in, {len(kept)} kept" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "pathology_score" in card and "configs:" in card


def test_rerun_resumes_without_duplicates_and_an_interrupted_run_completes(pathcap, model_dir, expected_scores,
                                                                           tmp_path, monkeypatch):
    threshold = float(np.median(list(expected_scores.values())))
    reference = tmp_path / "reference"
    assert _select(pathcap, model_dir, reference, threshold) == 0

    out = tmp_path / "interrupted"
    calls = {"n": 0}
    original = sel.Selector.score

    def flaky(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(sel.Selector, "score", flaky)
    assert _select(pathcap, model_dir, out, threshold) == 130  # Ctrl-C: finished units are kept
    monkeypatch.setattr(sel.Selector, "score", original)
    partial = len(_ledger(out)) + len(_scores(out))
    assert 8 <= partial < len(_inputs())  # two batches of 4 (and their ledger lines) were committed
    assert _select(pathcap, model_dir, out, threshold) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["already_done"] == partial

    assert _select(pathcap, model_dir, out, threshold) == 0  # a finished folder: nothing is redone
    assert json.loads((out / "summary.json").read_text())["this_run"] == {
        "kept": 0, "rejected": 0, "already_done": len(_inputs())}
    assert _scores(out) == _scores(reference)
    assert sorted(json.dumps(x, sort_keys=True) for x in _ledger(out)) == sorted(
        json.dumps(x, sort_keys=True) for x in _ledger(reference))

    # another threshold is another config: refused unless --resume / --overwrite
    assert _select(pathcap, model_dir, out, 0.99) == 3


def test_duplicate_and_missing_ids_are_ledgered_once_across_resumes(model_dir, tmp_path):
    from datasets import Dataset

    spec = get_spec("pathcap")
    rows = [_record("a", to_bytes(tissue_tile(64, seed=1), "PNG"), "PMC1"),
            _record("a", to_bytes(tissue_tile(64, seed=2), "PNG"), "PMC1"),
            _record("", to_bytes(tissue_tile(64, seed=3), "PNG"), "PMC2"),
            _record("b", to_bytes(tissue_tile(64, seed=4), "PNG"), "PMC3")]
    full = [{name: row.get(name) for name in spec.features} for row in rows]
    for row in full:
        row["image"] = {"bytes": row["image"], "path": None}
    folder = tmp_path / "dups"
    Dataset.from_list(full, features=spec.features).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    out = tmp_path / "out"
    for _ in range(2):
        assert _select(folder, model_dir, out, 0.0) == 0
        ledger = _ledger(out)
        assert sorted(line["reason"].split(":")[0] for line in ledger) == ["duplicate id", "invalid record"]
        assert sorted(_scores(out)) == ["a", "b"]


def test_shards_split_the_records_disjointly_and_completely(pathcap, model_dir, tmp_path, capsys):
    seen = []
    for k in (1, 2):
        out = tmp_path / f"part{k}"
        assert _select(pathcap, model_dir, out, 0.5, "--shard", f"{k}/2") == 0
        ids = set(_scores(out)) | {line["id"] for line in _ledger(out)}
        assert json.loads((out / "summary.json").read_text())["inputs"] == len(ids)
        seen.append(ids)
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {r["id"] for r in _inputs()}
    assert _select(pathcap, model_dir, tmp_path / "bad", 0.5, "--shard", "3/2") == 2
    assert "--shard must be K/N" in capsys.readouterr().err


def test_evaluate_reports_accuracy_and_auroc_on_held_out_labelled_images(model_dir, tmp_path, capsys):
    folder = tmp_path / "held_out"
    for cls, images in (("pathology", [tissue_tile(80, seed=300 + i) for i in range(6)]),
                        ("non_pathology", [Image.fromarray(getattr(skdata, n)()).convert("RGB")
                                           for n in ("astronaut", "coffee", "chelsea", "camera", "page", "coins")])):
        (folder / cls).mkdir(parents=True)
        for i, img in enumerate(images):
            img.save(folder / cls / f"{i}.png")
    (folder / "pathology" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    report = tmp_path / "metrics.json"
    assert main(["curate", "select", str(folder), "--model", str(model_dir), "--evaluate", "--json", str(report),
                 "--no-progress"]) == 0
    metrics = json.loads(report.read_text())
    assert metrics["n"] == 12 and metrics["skipped"] == 1 and metrics["positives"] == 6
    selector = sel.Selector.load(str(model_dir), device="cpu")
    data = sel.load_labelled(str(folder))
    scores, targets = [], []
    for i in range(len(data)):
        if str(data.images[i]).endswith("broken.jpg"):
            continue
        scores.append(float(selector.score([selector.decode(data.images[i])])[0]))
        targets.append(int(data.names[data.labels[i]] == "pathology"))
    assert metrics["auroc"] == pytest.approx(sel.auroc(scores, targets), abs=1e-9)
    assert 0 <= metrics["accuracy"] <= 1 and set(metrics["confusion"]) == {"tp", "fp", "fn", "tn"}
    assert "AUROC" in capsys.readouterr().out
    # --positive names the class scored: the other class's score and targets flip together
    assert main(["curate", "select", str(folder), "--model", str(model_dir), "--evaluate", "--positive",
                 "non_pathology", "--json", str(report), "--no-progress"]) == 0
    flipped = json.loads(report.read_text())
    assert flipped["positive_labels"] == ["non_pathology"] and flipped["positives"] == 6
    assert flipped["auroc"] == pytest.approx(metrics["auroc"], abs=1e-9)


def test_evaluate_a_dataset_needs_a_held_out_split(model_dir, tmp_path, capsys):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["non_pathology", "pathology"])})
    ds = Dataset.from_dict({"image": [tissue_tile(64, seed=1), tissue_tile(64, seed=2).convert("L")],
                            "label": [1, 0]}, features=features)
    ds.to_parquet(str(tmp_path / "only_train" / "data" / "train-00000-of-00001.parquet"))
    assert main(["curate", "select", str(tmp_path / "only_train"), "--model", str(model_dir), "--evaluate"]) == 2
    assert "no 'test' or 'validation' split" in capsys.readouterr().err
    ds.to_parquet(str(tmp_path / "with_test" / "data" / "test-00000-of-00001.parquet"))
    assert main(["curate", "select", str(tmp_path / "with_test"), "--model", str(model_dir), "--evaluate",
                 "--json", str(tmp_path / "m.json"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 2 and metrics["data"].endswith("[test]")


@pytest.mark.parametrize("kind, message", [
    ("open_clip", "open_clip"),
    ("transformers", "transformers config"),
    ("empty", "not a timm image classifier folder"),
    ("missing", "no such folder"),
])
def test_wrong_family_or_missing_model_is_a_clear_error(pathcap, tmp_path, capsys, kind, message):
    model = tmp_path / "model"
    if kind != "missing":
        model.mkdir()
    if kind == "open_clip":
        (model / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 512}}))
        (model / "open_clip_model.safetensors").write_bytes(b"")
    elif kind == "transformers":
        (model / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
        (model / "model.safetensors").write_bytes(b"")
    out = tmp_path / "out"
    assert _select(pathcap, model, out, 0.5) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "data").exists()  # nothing was written


def test_missing_or_foreign_dataset_and_bad_options_are_refused(model_dir, tmp_path, capsys):
    assert _select(tmp_path / "nope", model_dir, tmp_path / "o1", 0.5) == 2
    assert "no such file or folder" in capsys.readouterr().err
    from datasets import Dataset

    foreign = tmp_path / "foreign" / "data" / "train-00000-of-00001.parquet"
    Dataset.from_dict({"text": ["a", "b"]}).to_parquet(str(foreign))
    assert _select(tmp_path / "foreign", model_dir, tmp_path / "o2", 0.5) == 2
    assert "is not a PathCap dataset: no column(s) id, image" in capsys.readouterr().err
    assert _select(tmp_path / "foreign", model_dir, tmp_path / "o3", 1.5) == 2
    assert "--threshold must be a probability" in capsys.readouterr().err
    assert main(["curate", "select", str(tmp_path), "--model", str(model_dir)]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_subcommand_is_listed_and_documented(capsys):
    with pytest.raises(SystemExit):
        main(["curate", "select", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--model", "--threshold", "--out", "--batch-size", "--evaluate", "--positive", "--resume",
                   "--shard"):
        assert option in help_text
