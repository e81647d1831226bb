"""`pathasst build subfig`: Labelme, COCO and synthetic sources into PathSubfig, the YOLO export,
resume, and every kind of bad input ending as a record or a ledger line."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pathasst.cli import main
from pathasst.dataset_builders.build.subfig import SubfigConfig, build_subfig, category_for


# --- helpers -----------------------------------------------------------------------------------


def _labelme(path: Path, shapes: list, *, image_path: str | None = None, image_data: bytes | None = None,
             size: tuple[int, int] | None = None) -> Path:
    doc = {
        "version": "5.4.1", "flags": {},
        "shapes": [{"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}
                   for label, kind, points in shapes],
        "imagePath": image_path,
        "imageData": base64.b64encode(image_data).decode() if image_data else None,
    }
    if size:
        doc["imageWidth"], doc["imageHeight"] = size
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _rect(label, x0, y0, x1, y1):
    return (label, "rectangle", [[x0, y0], [x1, y1]])


def _records(out: Path) -> dict[str, dict]:
    rows = {}
    for file in sorted((out / "data").glob("*.parquet")):
        split = file.name.split("-", 1)[0]
        for row in pq.read_table(file).to_pylist():
            rows[row["image_id"]] = row | {"split": split}
    return rows


def _ledger(out: Path) -> list[dict]:
    path = out / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _objects(row) -> list[tuple[str, list[float]]]:
    return [(o["category"], [round(v, 2) for v in o["bbox"]]) for o in row["objects"]]


def _build(out: Path, **kwargs):
    return build_subfig(SubfigConfig(**kwargs), out, progress=False)


@pytest.fixture
def pool_dir(tmp_path):
    from pathasst.testing.images import tissue_tile

    folder = tmp_path / "pool"
    folder.mkdir()
    for i in range(10):
        tissue_tile(160, seed=i, stain="he" if i % 2 else "ihc").save(folder / f"tile-{i}.jpg")
    return folder


# --- sources ----------------------------------------------------------------------------------


def test_labelme_rectangles_polygons_and_embedded_image_data(tmp_path, image_factory):
    root = tmp_path / "labelme"
    image_factory.write("../labelme/imgs/a.png", image_factory(size=(200, 100), seed=1))
    _labelme(root / "ann" / "a.json", [
        _rect("subfigure", 95, 90, 5, 5),  # dragged bottom-right to top-left
        ("panel", "polygon", [[110, 10], [190, 20], [150, 95]]),
        _rect("A", 8, 8, 20, 22),
        _rect("(b)", 112, 8, 130, 22),
    ], image_path="../imgs/a.png", size=(200, 100))
    embedded = image_factory(size=(120, 80), seed=2)
    _labelme(root / "b.json", [_rect("Subfigure", 0, 0, 60, 80), ("label", "polygon", [[2, 2], [12, 2], [12, 14], [2, 14]])],
             image_path="gone/b.png", image_data=embedded)
    image_factory.write("../labelme/c.png", image_factory(size=(50, 40), seed=3))
    _labelme(root / "c.json", [_rect("sub-figure label", 1, 1, 9, 9), _rect("image", 0, 0, 50, 40)],
             image_path="..\\elsewhere\\c.png")  # a Windows path: found by its name beside the JSON

    summary = _build(tmp_path / "out", labelme=[str(root)])
    rows = _records(tmp_path / "out")
    assert set(rows) == {"labelme/labelme/ann/a", "labelme/labelme/b", "labelme/labelme/c"}
    a = rows["labelme/labelme/ann/a"]
    assert (a["width"], a["height"], a["origin"]) == (200, 100, "annotated")
    assert _objects(a) == [
        ("subfigure", [5, 5, 90, 85]), ("subfigure", [110, 10, 80, 85]),
        ("panel_label", [8, 8, 12, 14]), ("panel_label", [112, 8, 18, 14]),
    ]
    b = rows["labelme/labelme/b"]
    assert b["image"]["bytes"] == embedded and (b["width"], b["height"]) == (120, 80)
    assert _objects(b) == [("subfigure", [0, 0, 60, 80]), ("panel_label", [2, 2, 10, 12])]
    assert _objects(rows["labelme/labelme/c"]) == [("panel_label", [1, 1, 8, 8]), ("subfigure", [0, 0, 50, 40])]
    assert summary.rejected == 0 and summary.objects == {"subfigure": 4, "panel_label": 4}


def test_coco_with_categories_by_name_and_polygon_only_annotations(tmp_path, image_factory):
    image_factory.write("../coco/images/p1.jpg", image_factory(size=(300, 200), seed=4, fmt="JPEG"))
    image_factory.write("../coco/images/p2.png", image_factory(size=(100, 100), seed=5))
    coco = {
        "images": [{"id": 1, "file_name": "p1.jpg", "width": 300, "height": 200},
                   {"id": 2, "file_name": "p2.png", "width": 100, "height": 100}],
        "categories": [{"id": 7, "name": "subfigure"}, {"id": 9, "name": "Panel Label"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 150, 200]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [150.5, 0, 149.5, 200]},
            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [4, 4, 16, 18]},
            {"id": 4, "image_id": 2, "category_id": 7, "segmentation": [[10, 10, 90, 10, 90, 80, 10, 80]]},
        ],
    }
    (tmp_path / "coco").mkdir(exist_ok=True)
    (tmp_path / "coco" / "train.json").write_text(json.dumps(coco))
    summary = _build(tmp_path / "out", coco=[str(tmp_path / "coco" / "train.json")])
    rows = _records(tmp_path / "out")
    assert _objects(rows["coco/coco/train/p1.jpg"]) == [
        ("subfigure", [0, 0, 150, 200]), ("subfigure", [150.5, 0, 149.5, 200]), ("panel_label", [4, 4, 16, 18])]
    assert _objects(rows["coco/coco/train/p2.png"]) == [("subfigure", [10, 10, 80, 70])]
    assert summary.rejected == 0
    # the same file with its images elsewhere: --coco-images
    moved = tmp_path / "elsewhere"
    (tmp_path / "coco" / "images").rename(moved)
    _build(tmp_path / "out2", coco=[str(tmp_path / "coco" / "train.json")], coco_images=str(moved))
    assert len(_records(tmp_path / "out2")) == 2


def test_mixed_sources_end_to_end_with_yolo_export(tmp_path, image_factory, pool_dir):
    import datasets

    image_factory.write("../lm/fig.png", image_factory(size=(160, 120), seed=6))
    _labelme(tmp_path / "lm" / "fig.json", [_rect("subfigure", 0, 0, 80, 120), _rect("a", 2, 2, 12, 14)],
             image_path="fig.png", size=(160, 120))
    image_factory.write("../cc/one.png", image_factory(size=(90, 90), seed=7))
    (tmp_path / "cc" / "c.json").write_text(json.dumps({
        "images": [{"id": 3, "file_name": "one.png", "width": 90, "height": 90}],
        "categories": [{"id": 1, "name": "panel"}],
        "annotations": [{"image_id": 3, "category_id": 1, "bbox": [5, 5, 40, 80]}],
    }))
    out, yolo = tmp_path / "out", tmp_path / "yolo"
    rc = main(["build", "subfig", "--out", str(out), "--labelme", str(tmp_path / "lm"), "--coco",
               str(tmp_path / "cc" / "c.json"), "--synthetic", "24", "--images", str(pool_dir), "--seed", "5",
               "--yolo-export", str(yolo), "min_width=300", "max_width=500"])
    assert rc == 0
    ds = datasets.load_dataset(str(out))
    rows = {r["image_id"]: r for split in ds.values() for r in split}
    assert len(rows) == 26
    assert {r["origin"] for r in rows.values()} == {"annotated", "synthetic"}
    assert _objects(rows["labelme/lm/fig"]) == [("subfigure", [0, 0, 80, 120]), ("panel_label", [2, 2, 10, 12])]
    assert _objects(rows["coco/cc/c/one.png"]) == [("subfigure", [5, 5, 40, 80])]
    written = _records(out)
    for image_id, row in rows.items():  # objects round-trip through Parquet and load_dataset
        assert _objects(row) == _objects(written[image_id])
        assert row["image"].size == (row["width"], row["height"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records_by_origin"] == {"annotated": 2, "synthetic": 24}
    assert summary["objects"]["subfigure"] == sum(
        o["category"] == "subfigure" for r in rows.values() for o in r["objects"])

    # YOLO: same splits as the dataset, one label line per object, normalised, readable names
    data = yaml.safe_load((yolo / "data.yaml").read_text())
    assert data["names"] == {0: "subfigure", 1: "panel_label"}
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    yolo_split = {"train": "train", "validation": "val", "test": "test"}
    for image_id, row in written.items():
        stem = image_id.replace("/", "_")
        images = list((yolo / "images" / yolo_split[row["split"]]).glob(stem + ".*"))
        assert len(images) == 1 and images[0].read_bytes() == row["image"]["bytes"]
        lines = (yolo / "labels" / yolo_split[row["split"]] / f"{stem}.txt").read_text().splitlines()
        assert len(lines) == len(row["objects"])
        for line, obj in zip(lines, row["objects"]):
            cls, *vals = line.split()
            assert int(cls) == ("subfigure", "panel_label").index(obj["category"])
            assert all(0.0 <= float(v) <= 1.0 for v in vals)
            x, y, w, h = obj["bbox"]
            assert float(vals[0]) == pytest.approx((x + w / 2) / row["width"], abs=1e-5)
            assert float(vals[3]) == pytest.approx(h / row["height"], abs=1e-5)
    assert sum(1 for _ in yolo.glob("images/*/*")) == 26


@pytest.mark.slow  # a fresh interpreter importing ultralytics (and torch): ~3 s
def test_ultralytics_reads_the_yolo_export(tmp_path, pool_dir):
    # In a subprocess: importing ultralytics replaces PIL.Image.open for the whole process (it then
    # answers an unidentifiable file by trying to install pi-heif), which would leak into other tests.
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("ultralytics") is None:  # not importorskip: that imports it here
        pytest.skip("ultralytics is not installed (extra: detect)")
    _build(tmp_path / "out", synthetic=12, images=str(pool_dir), yolo_export=str(tmp_path / "yolo"),
           min_width=300, max_width=400)
    script = (
        "import json, sys\n"
        "from ultralytics.data.dataset import YOLODataset\n"
        "from ultralytics.data.utils import check_det_dataset\n"
        "data = check_det_dataset(sys.argv[1], autodownload=False)\n"
        "ds = YOLODataset(img_path=data['train'], data=data, task='detect', imgsz=320, augment=False)\n"
        "print(json.dumps({'nc': data['nc'], 'images': len(ds.labels),"
        " 'boxes': sum(len(lab['cls']) for lab in ds.labels)}))\n"
    )
    env = dict(os.environ, YOLO_CONFIG_DIR=str(tmp_path / "ycfg"), YOLO_OFFLINE="1", YOLO_AUTOINSTALL="False")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "yolo" / "data.yaml")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [r for r in _records(tmp_path / "out").values() if r["split"] == "train"]
    assert result == {"nc": 2, "images": len(rows), "boxes": sum(len(r["objects"]) for r in rows)}


def test_same_seed_same_dataset_and_processes_do_not_change_it(tmp_path, pool_dir):
    _build(tmp_path / "a", synthetic=10, images=str(pool_dir), seed=3, min_width=300, max_width=400)
    _build(tmp_path / "b", synthetic=10, images=str(pool_dir), seed=3, min_width=300, max_width=400, num_proc=2)
    _build(tmp_path / "c", synthetic=10, images=str(pool_dir), seed=4, min_width=300, max_width=400)
    a, b, c = (_records(tmp_path / n) for n in "abc")
    assert sorted(a) == [f"synth-3-{i}" for i in range(10)]
    assert a == b
    assert [r["image"]["bytes"] for r in a.values()] != [r["image"]["bytes"] for r in c.values()]


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path, pool_dir, monkeypatch):
    from pathasst.dataset_builders.build import compound

    real = compound.CompoundFigureGenerator.record

    def flaky(self, index):
        if index == 7:
            raise KeyboardInterrupt
        return real(self, index)

    args = ["build", "subfig", "--out", str(tmp_path / "out"), "--synthetic", "12", "--images", str(pool_dir),
            "min_width=300", "max_width=400"]
    monkeypatch.setattr(compound.CompoundFigureGenerator, "record", flaky)
    assert main(args) == 130
    assert 0 < len(_records(tmp_path / "out")) <= 7
    monkeypatch.setattr(compound.CompoundFigureGenerator, "record", real)
    assert main(args) == 0
    rows = _records(tmp_path / "out")
    assert sorted(rows, key=lambda k: int(k.rsplit("-", 1)[1])) == [f"synth-0-{i}" for i in range(12)]
    assert _ledger(tmp_path / "out") == []
    fresh = tmp_path / "fresh"
    _build(fresh, synthetic=12, images=str(pool_dir), min_width=300, max_width=400)
    assert {k: r["image"]["bytes"] for k, r in rows.items()} == {
        k: r["image"]["bytes"] for k, r in _records(fresh).items()}
    assert main(args) == 0  # a finished folder: nothing redone
    assert len(_records(tmp_path / "out")) == 12
    # settings that do not change the dataset need no --resume
    assert main(args + ["--num-proc", "2", "--yolo-export", str(tmp_path / "yolo")]) == 0
    assert len(list((tmp_path / "yolo").glob("labels/*/*.txt"))) == 12


# --- bad input --------------------------------------------------------------------------------


def test_bad_images_each_give_one_ledger_line_and_odd_modes_are_kept(tmp_path, image_factory):
    root = tmp_path / "lm"
    boxes = [_rect("subfigure", 0, 0, 40, 30)]
    cases = {
        "truncated": image_factory.truncated("JPEG", size=(96, 72)),
        "garbage": b"this is not an image at all",
        "dot": image_factory(size=(1, 1)),
        "bomb": image_factory.huge_header(30_000, 30_000),
        "gray": image_factory("L", size=(64, 48)),
        "cmyk": image_factory("CMYK", size=(64, 48), fmt="JPEG"),
        "deep": image_factory("I;16", size=(64, 48)),
    }
    for name, data in cases.items():
        image_factory.write(f"../lm/{name}.img", data)
        _labelme(root / f"{name}.json", boxes, image_path=f"{name}.img")
    _labelme(root / "missing.json", boxes, image_path="nowhere.png")
    summary = _build(tmp_path / "out", labelme=[str(root)])
    rows = _records(tmp_path / "out")
    assert set(rows) == {"labelme/lm/gray", "labelme/lm/cmyk", "labelme/lm/deep"}
    for row in rows.values():
        assert _objects(row) == [("subfigure", [0, 0, 40, 30])]
    from PIL import Image
    import io

    modes = {k.rsplit("/", 1)[1]: Image.open(io.BytesIO(r["image"]["bytes"])).mode for k, r in rows.items()}
    assert modes == {"gray": "L", "cmyk": "RGB", "deep": "L"}
    ledger = {line["id"].rsplit("/", 1)[1]: line for line in _ledger(tmp_path / "out")}
    assert set(ledger) == {"truncated", "garbage", "dot", "bomb", "missing"}
    assert ledger["truncated"]["reason"].startswith(("truncated image", "corrupt image"))
    assert ledger["garbage"]["reason"].startswith("not an image")
    assert ledger["dot"]["reason"].startswith("image too small: 1x1")
    assert ledger["bomb"]["reason"].startswith("image too large")
    assert ledger["missing"]["reason"].startswith("missing image: nowhere.png")
    assert all(line["file"].endswith(".json") for line in ledger.values())
    assert summary.inputs_done == len(rows) + len(ledger) == 8


def test_gigantic_images_are_downscaled_with_their_boxes(tmp_path, image_factory):
    image_factory.write("../lm/big.jpg", image_factory(size=(2400, 1600), seed=8, fmt="JPEG"))
    _labelme(tmp_path / "lm" / "big.json", [_rect("subfigure", 0, 0, 1200, 1600), _rect("B", 1210, 20, 1290, 120)],
             image_path="big.jpg", size=(2400, 1600))
    _build(tmp_path / "out", labelme=[str(tmp_path / "lm")], max_side=600)
    (row,) = _records(tmp_path / "out").values()
    assert (row["width"], row["height"]) == (600, 400)
    assert _objects(row) == [("subfigure", [0, 0, 300, 400]), ("panel_label", [302.5, 5, 20, 25])]


def test_bad_boxes_are_rejected_or_clipped_and_never_silently(tmp_path, image_factory):
    image_factory.write("../lm/f.png", image_factory(size=(100, 80), seed=9))
    _labelme(tmp_path / "lm" / "f.json", [
        _rect("subfigure", 0, 0, 50, 80),          # 0: kept
        _rect("subfigure", 60, -10, 120, 70),      # 1: clipped to (60, 0)-(100, 70), noted
        _rect("subfigure", 150, 10, 190, 40),      # 2: entirely outside: rejected
        _rect("subfigure", 30, 30, 30, 60),        # 3: zero width: rejected
        _rect("scale bar", 5, 70, 40, 75),         # 4: unknown label: rejected
        ("subfigure", "circle", [[50, 40], [60, 40]]),  # 5: unsupported shape: rejected
        ("subfigure", "polygon", [[1, 1], [2, "x"], [3, 3]]),  # 6: malformed: rejected
    ], image_path="f.png", size=(100, 80))
    (tmp_path / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "lm/f.png", "width": 100, "height": 80}],
        "categories": [{"id": 1, "name": "subfigure"}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, -5, 20]},
                        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80]},
                        {"id": 12, "image_id": 1, "category_id": 4, "bbox": [0, 0, 10, 10]},
                        {"id": 13, "image_id": 99, "category_id": 1, "bbox": [0, 0, 10, 10]}],
    }))
    summary = _build(tmp_path / "out", labelme=[str(tmp_path / "lm")], coco=[str(tmp_path / "coco.json")])
    rows = _records(tmp_path / "out")
    assert _objects(rows["labelme/lm/f"]) == [("subfigure", [0, 0, 50, 80]), ("subfigure", [60, 0, 40, 70])]
    ledger = {line["id"]: line for line in _ledger(tmp_path / "out")}
    lm = {k.rsplit("#", 1)[1]: v for k, v in ledger.items() if k.startswith("labelme/lm/f#")}
    assert set(lm) == {"2", "3", "4", "5", "6"}
    assert lm["2"]["reason"].startswith("box outside the image")
    assert lm["3"]["reason"].startswith("invalid box: zero or negative size")
    assert lm["4"]["reason"].startswith("unknown label: 'scale bar'") and "--label-map" in lm["4"]["reason"]
    assert lm["5"]["reason"].startswith("unsupported shape: 'circle'")
    assert lm["6"]["reason"].startswith("invalid box")
    for line in lm.values():
        assert line["file"].endswith("f.json") and "box" in line
    coco = {k: v for k, v in ledger.items() if k.startswith("coco/")}
    assert coco[f"coco/{tmp_path.name}/coco/lm/f.png#0"]["box"] == [10, 10, -5, 20]
    assert coco[f"coco/{tmp_path.name}/coco/lm/f.png#0"]["reason"].startswith("invalid box: zero or negative")
    assert coco[f"coco/{tmp_path.name}/coco/lm/f.png#2"]["reason"].startswith("unknown label: category_id 4")
    assert any(k.endswith("#3") and "not in 'images'" in v["reason"] for k, v in ledger.items())
    notes = [json.loads(line) for line in (tmp_path / "out" / "notes.jsonl").read_text().splitlines()]
    assert [(n["id"], n["kept_bbox"]) for n in notes] == [("labelme/lm/f#1", [60, 0, 40, 70])]
    assert summary.boxes_clipped == 1
    # label_map rescues the unknown label
    _build(tmp_path / "out2", labelme=[str(tmp_path / "lm")], label_map={"Scale Bar": "panel_label"})
    assert ("panel_label", [5, 70, 35, 5]) in _objects(_records(tmp_path / "out2")["labelme/lm/f"])


def test_empty_and_broken_annotation_files(tmp_path, image_factory):
    image_factory.write("../lm/x.png", image_factory(size=(40, 40)))
    (tmp_path / "lm").mkdir(exist_ok=True)
    (tmp_path / "lm" / "zero.json").write_text("")
    (tmp_path / "lm" / "broken.json").write_text('{"shapes": [')
    (tmp_path / "lm" / "other.json").write_text('{"hello": 1}')
    _labelme(tmp_path / "lm" / "noshapes.json", [], image_path="x.png")
    _labelme(tmp_path / "lm" / "allbad.json", [_rect("subfigure", 5, 5, 5, 9)], image_path="x.png")
    _labelme(tmp_path / "lm" / "mismatch.json", [_rect("subfigure", 0, 0, 9, 9)], image_path="x.png", size=(80, 40))
    (tmp_path / "empty_coco.json").write_text("")
    (tmp_path / "no_images.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    summary = _build(tmp_path / "out", labelme=[str(tmp_path / "lm")],
                     coco=[str(tmp_path / "empty_coco.json"), str(tmp_path / "no_images.json")])
    assert summary.records == {"train": 0, "validation": 0, "test": 0}
    reasons = {line["id"].rsplit("/", 1)[1]: line["reason"] for line in _ledger(tmp_path / "out")
               if "#" not in line["id"]}
    assert reasons["zero"].startswith("empty annotation file")
    assert reasons["broken"].startswith("bad annotation file: not JSON")
    assert reasons["other"].startswith("bad annotation file: not Labelme JSON")
    assert reasons["noshapes"].startswith("empty annotation: no boxes")
    assert reasons["allbad"].startswith("no usable boxes")
    assert reasons["mismatch"].startswith("size mismatch: the annotation says 80x40, the image is 40x40")
    assert reasons["empty_coco"].startswith("empty annotation file")
    assert reasons["no_images"].startswith("empty annotation file: no images")


def test_pool_problems_are_ledgered_once_even_on_resume(tmp_path, image_factory, pool_dir):
    image_factory.write("../pool/bad.png", b"\x89PNG\r\n\x1a\nbroken")
    args = dict(synthetic=3, images=str(pool_dir), min_width=300, max_width=400)
    _build(tmp_path / "out", **args)
    _build(tmp_path / "out", **args)
    assert [line["id"] for line in _ledger(tmp_path / "out")] == ["pool:bad.png"]
    assert len(_records(tmp_path / "out")) == 3


def test_same_input_twice_is_a_ledger_line_not_a_silent_skip(tmp_path, image_factory):
    for parent in ("one", "two"):
        image_factory.write(f"../{parent}/ann/x.png", image_factory(size=(40, 40)))
        _labelme(tmp_path / parent / "ann" / "x.json", [_rect("subfigure", 0, 0, 40, 40)], image_path="x.png")
    _build(tmp_path / "out", labelme=[str(tmp_path / "one" / "ann"), str(tmp_path / "two" / "ann")])
    assert list(_records(tmp_path / "out")) == ["labelme/ann/x"]
    (line,) = _ledger(tmp_path / "out")
    assert line["reason"].startswith("duplicate input")


# --- command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv, code, message", [
    ([], 2, "nothing to build"),
    (["--synthetic", "3"], 2, "needs --images"),
    (["--labelme", "does/not/exist"], 2, "not found: does/not/exist"),
    (["--synthetic", "-1", "--images", "."], 2, "synthetic must be >= 0"),
    (["--labelme", ".", "--label-map", "fig=panels"], 2, "categories are subfigure, panel_label"),
    (["--labelme", ".", "--label-map", "fig"], 2, "expected NAME=CATEGORY"),
    (["--labelme", ".", "stray"], 2, "unexpected argument 'stray'"),
])
def test_cli_errors_are_one_clear_line(tmp_path, capsys, monkeypatch, argv, code, message):
    monkeypatch.chdir(tmp_path)
    assert main(["build", "subfig", "--out", str(tmp_path / "out"), *argv]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_yolo_export_refuses_a_foreign_folder(tmp_path, capsys, pool_dir):
    foreign = tmp_path / "yolo"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    rc = main(["build", "subfig", "--out", str(tmp_path / "out"), "--synthetic", "2", "--images", str(pool_dir),
               "--yolo-export", str(foreign)])
    assert rc == 3 and "not empty" in capsys.readouterr().err
    assert (foreign / "precious.txt").read_text() == "keep me" and not (tmp_path / "out").exists()


def test_category_rule():
    assert category_for("Sub-Figure") == category_for("panel") == category_for("IMAGE") == "subfigure"
    for label in ("label", "Panel_Label", "A", "b", "(c)", "D.", "letter"):
        assert category_for(label) == "panel_label", label
    assert category_for("scale bar") is None and category_for("AB") is None and category_for(None) is None
    assert category_for("AB", {"ab": "panel_label"}) == "panel_label"
