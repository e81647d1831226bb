"""`pathasst train subfig`: the YOLO subfigure detector over ultralytics' own loop, offline.

The network guard (tests/conftest.py) fails any test that tries a non-loopback connection, so
every training test here also checks that ultralytics fetched no font, weights or dataset.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml

from pathasst.errors import ConfigError, InputError, OutputError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                                reason="ultralytics is not installed (extra: detect)")


@pytest.fixture(scope="module", autouse=True)
def _yolo_config_dir(tmp_path_factory):
    # Read by ultralytics at its first import in this process: keep its settings and fonts out of $HOME.
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path_factory.getbasetemp() / "ultralytics-config"))


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    from pathasst.trainers.subfig import toy_yolo_dataset

    return toy_yolo_dataset(tmp_path_factory.mktemp("toy") / "yolo", {"train": 8, "val": 4})


def _config(*overrides: str):
    from pathasst.trainers.registry import load_family_config
    from pathasst.trainers.subfig import SubfigConfig

    return load_family_config(SubfigConfig, "subfig", list(overrides))


# --- config: the shared keys mapped onto ultralytics ------------------------------------------


def test_recipes_load_and_tiny_is_an_inline_architecture(toy_data):
    tiny = _config("--recipe", "tiny", f"data={toy_data}")
    assert tiny.model["head"][-1][2] == "Detect" and tiny.imgsz == 128
    full = _config("--recipe", "yolov8m", f"data={toy_data}")
    assert full.model == "yolov8m.yaml" and full.mixed_precision == "fp16" and full.epochs == 300
    assert full.batch_size * full.grad_accum_steps == 64


def test_shared_keys_map_onto_ultralytics_arguments(toy_data, tmp_path):
    from pathasst.trainers.subfig import resolve_data, ultralytics_args

    cfg = _config(f"data={toy_data}", f"output_dir={tmp_path / 'run'}", "epochs=50", "max_steps=3",
                  "batch_size=4", "grad_accum_steps=2", "schedule=cosine", "lr=0.003", "adam_betas=[0.8,0.99]",
                  "seed=7", "warmup_steps=2", "ultralytics.mosaic=0.25")
    data = resolve_data(cfg.data, tmp_path / "run")
    args = ultralytics_args(cfg, data, tmp_path / "run")
    # 8 train images / batch 4 = 2 batches per epoch; 3 steps x 2 accumulated batches -> 3 epochs
    assert args["epochs"] == 3
    assert args["nbs"] == 8 and args["batch"] == 4
    assert args["lr0"] == 0.003 and args["momentum"] == 0.8 and args["seed"] == 7
    assert args["cos_lr"] is True and args["amp"] is False and args["workers"] == 0
    assert args["warmup_epochs"] == pytest.approx(2.0)  # 2 steps x 2 batches / 2 batches per epoch
    assert args["save_dir"] == str(tmp_path / "run") and args["mosaic"] == 0.25
    constant = _config(f"data={toy_data}", "schedule=constant")
    assert ultralytics_args(constant, data, tmp_path / "run")["lrf"] == 1.0
    with pytest.raises(ConfigError, match="warmup_steps and ultralytics.warmup_epochs"):
        _config("--recipe", "tiny", f"data={toy_data}", "warmup_steps=5")


@pytest.mark.parametrize("override, message", [
    ("mixed_precision=bf16", "bf16"),
    ("gradient_checkpointing=true", "gradient_checkpointing"),
    ("ultralytics.epochs=3", "top-level key"),
    ("ultralytics.lr0=0.1", "lr="),
    ("model=yolov8m", "bare name"),
    ("model=nowhere/yolov8m.pt", "not found"),
    ("model=https://example.org/w.pt", "URLs"),
    ("pretrained=missing.pt", "not found"),
    ("imgsz=16", "imgsz"),
])
def test_bad_settings_fail_before_any_work(override, message, toy_data):
    with pytest.raises(ConfigError, match=message):
        _config("--recipe", "tiny", f"data={toy_data}", override)


def test_unknown_ultralytics_argument_is_named_with_a_suggestion(toy_data, tmp_path):
    from pathasst.trainers.subfig import main

    with pytest.raises(ConfigError, match="mosiac.*did you mean mosaic"):
        main(["--recipe", "tiny", f"data={toy_data}", f"output_dir={tmp_path}", "ultralytics.mosiac=0"])
    assert not (tmp_path / "weights").exists()


# --- data ---------------------------------------------------------------------------------------


def test_relative_data_path_resolves_against_the_yaml_not_the_cwd(toy_data, tmp_path, monkeypatch):
    from pathasst.trainers.subfig import resolve_data

    monkeypatch.chdir(tmp_path)  # ultralytics would read `path: .` from here
    data = resolve_data(str(toy_data), tmp_path / "work")
    written = yaml.safe_load(data.yaml_path.read_text())
    assert Path(written["path"]) == toy_data.parent.resolve()
    assert data.count_images("train") == 8 and data.count_images("val") == 4
    assert data.names == {0: "subfigure", 1: "panel_label"}


@pytest.mark.parametrize("content, message", [
    ("train: images/train\nnames: [subfigure]\n", "'val:' is missing"),
    ("train: images/train\nval: images/nope\nnames: [subfigure]\n", "val images not found"),
    ("train: images/train\nval: images/val\n", "'names' is missing"),
])
def test_broken_data_yaml_is_a_clear_error(content, message, toy_data, tmp_path):
    from pathasst.trainers.subfig import resolve_data

    bad = toy_data.parent / f"bad-{abs(hash(content))}.yaml"
    bad.write_text(content)
    with pytest.raises(InputError, match=message):
        resolve_data(str(bad), tmp_path)


def test_data_must_be_local(tmp_path):
    from pathasst.trainers.subfig import resolve_data

    with pytest.raises(InputError, match="not found"):
        resolve_data("owner/dataset", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither data.yaml"):
        resolve_data(str(tmp_path / "empty"), tmp_path)


def _pathsubfig(folder: Path) -> Path:
    """A PathSubfig dataset folder written with the project's writer (a train split only)."""
    from pathasst.records import get_spec
    from pathasst.testing.images import to_bytes
    from pathasst.trainers.subfig import toy_compound_figure
    from pathasst.writer import DatasetWriter

    with DatasetWriter(folder, get_spec("pathsubfig"), splits={"train": 1.0}) as writer:
        for i, layout in enumerate([(1, 2), (2, 2), (1, 1)]):
            img, boxes = toy_compound_figure(layout, seed=i)
            objects = [{"bbox": b, "category": "subfigure"} for b in boxes]
            objects.append({"bbox": [2.0, 2.0, 10.0, 12.0], "category": "panel_label"})
            objects.append({"bbox": [180.0, 150.0, 40.0, 40.0], "category": "subfigure"})  # half outside: clipped
            writer.add({"image_id": f"fig/{i}", "image": to_bytes(img), "width": img.width, "height": img.height,
                        "objects": objects, "origin": "synthetic"})
        writer.finalize()
    return folder


def test_pathsubfig_folder_is_exported_to_the_yolo_layout(tmp_path):
    from pathasst.trainers.subfig import resolve_data

    src = _pathsubfig(tmp_path / "subfig")
    data = resolve_data(str(src), tmp_path / "run")
    export = tmp_path / "run" / "yolo_data"
    labels = sorted((export / "labels" / "train").glob("*.txt"))
    assert len(labels) == 3 and data.count_images("train") == 3
    lines = [line.split() for line in labels[0].read_text().splitlines()]
    assert {line[0] for line in lines} == {"0", "1"}
    assert all(0.0 <= float(v) <= 1.0 for line in lines for v in line[1:])
    # no validation split: validation falls back to train, with the data.yaml saying so
    assert data.splits["val"] == data.splits["train"]
    first = json.loads((export / "export.json").read_text())
    resolve_data(str(src), tmp_path / "run")  # unchanged source: the export is reused
    assert json.loads((export / "export.json").read_text()) == first


# --- training, offline ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(toy_data, tmp_path_factory):
    from pathasst.cli import main

    out = tmp_path_factory.mktemp("subfig-run") / "run"
    code = main(["train", "subfig", "--recipe", "tiny", f"data={toy_data}", f"output_dir={out}"])
    assert code == 0
    return out


@pytest.mark.slow
def test_tiny_recipe_trains_offline_and_best_pt_loads_with_ultralytics(trained_run):
    from ultralytics import YOLO

    for name in ("weights/best.pt", "weights/last.pt", "config.yaml", "train_summary.json", "results.csv",
                 "model.yaml", "data.yaml"):
        assert (trained_run / name).is_file(), name
    model = YOLO(str(trained_run / "weights" / "best.pt"))
    assert model.task == "detect" and model.names == {0: "subfigure", 1: "panel_label"}
    summary = json.loads((trained_run / "train_summary.json").read_text())
    assert summary["epochs_done"] == 2 and summary["images"] == {"train": 8, "val": 4}
    val = summary["metrics"]["val"]
    assert set(val) >= {"map50", "map50_95", "precision", "recall", "per_class", "images"}
    assert 0.0 <= summary["map50_95"] <= summary["map50"] <= 1.0 and val["images"] == 4
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["model"]["backbone"] and config["ultralytics_args"]["amp"] is False
    assert config["ultralytics_args"]["epochs"] == 2


@pytest.mark.slow
def test_finished_run_is_not_trained_again_and_never_refuses_it(trained_run, toy_data):
    from pathasst.trainers.subfig import main

    best = trained_run / "weights" / "best.pt"
    before = best.stat().st_mtime_ns
    assert main(["--recipe", "tiny", f"data={toy_data}", f"output_dir={trained_run}"]) == 0
    assert best.stat().st_mtime_ns == before
    with pytest.raises(OutputError, match="already holds a run"):
        main(["--recipe", "tiny", f"data={toy_data}", f"output_dir={trained_run}", "resume=never"])


@pytest.mark.slow
def test_evaluate_reports_map_on_a_held_out_split(trained_run, toy_data):
    from pathasst.trainers.subfig import evaluate

    result = evaluate(trained_run, toy_data, split="val")
    assert result["split"] == "val" and result["images"] == 4 and result["imgsz"] == 128
    assert 0.0 <= result["map50_95"] <= result["map50"] <= 1.0
    with pytest.raises(InputError, match="no 'test' split"):
        evaluate(trained_run, toy_data, split="test")


@pytest.mark.slow
def test_interrupted_run_resumes_from_last_pt(toy_data, tmp_path):
    from pathasst.trainers.subfig import checkpoint_state, main, train

    out = tmp_path / "run"
    cfg = _config("--recipe", "tiny", f"data={toy_data}", f"output_dir={out}", "epochs=3", "val=false")

    def stop_after_first_epoch(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt  # a kill after last.pt of epoch 1 was written

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks={"on_fit_epoch_end": stop_after_first_epoch})
    state = checkpoint_state(out / "weights" / "last.pt")
    assert state["resumable"] and state["epoch"] == 0
    assert main(["--recipe", "tiny", f"data={toy_data}", f"output_dir={out}", "epochs=3", "val=false"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(out / "weights" / "last.pt")
    assert summary["epochs"] == 3 and summary["epochs_done"] == 3
    assert checkpoint_state(out / "weights" / "last.pt")["epoch"] == -1  # finished: optimizer stripped
