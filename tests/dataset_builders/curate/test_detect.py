"""`pathasst curate detect`: compound figures split into subfigure records by the YOLO detector.

The panel logic (PDF candidate boxes as evidence, containment, reading order, letters from the
text layer) is tested on its own with given detections; the stage end to end runs a detector
trained here from the tiny recipe on toy compound figures (module fixture).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path

import pytest

has_ultralytics = importlib.util.find_spec("ultralytics") is not None
needs_ultralytics = pytest.mark.skipif(not has_ultralytics, reason="ultralytics is not installed (extra: detect)")


@pytest.fixture(scope="module", autouse=True)
def _yolo_config_dir(tmp_path_factory):
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path_factory.getbasetemp() / "ultralytics-config"))


# --- panels from detections: pure geometry -----------------------------------------------------


def test_confident_detections_become_panels_in_reading_order():
    from pathasst.dataset_builders.curate.detect import choose_panels

    dets = [((110, 90, 190, 150), 0.9), ((10, 10, 95, 80), 0.95), ((110, 8, 190, 82), 0.8), ((12, 92, 96, 152), 0.7)]
    panels = choose_panels(dets, 200, 160, conf=0.4)
    assert [p.box for p in panels] == [(10, 10, 95, 80), (110, 8, 190, 82), (12, 92, 96, 152), (110, 90, 190, 150)]
    assert all(p.evidence == "detector" for p in panels)


def test_boxes_are_clipped_and_small_or_contained_ones_dropped():
    from pathasst.dataset_builders.curate.detect import choose_panels

    dets = [((-5.2, -3, 100.4, 80), 0.9), ((10, 10, 60, 50), 0.8), ((150, 150, 154, 155), 0.9), ((100, 0, 230, 80), 0.6)]
    panels = choose_panels(dets, 200, 160, conf=0.4, min_side=8)
    assert [p.box for p in panels] == [(0, 0, 101, 80), (100, 0, 200, 80)]  # inset and 4-px box gone


def test_pdf_candidates_confirm_weak_detections_and_give_exact_boxes():
    from pathasst.dataset_builders.curate.detect import choose_panels

    candidates = [[10, 10, 80, 60], [110, 10, 80, 60], [10, 90, 80, 60]]  # COCO xywh
    dets = [((12, 11, 91, 72), 0.3), ((108, 9, 188, 69), 0.9), ((150, 100, 190, 150), 0.3)]
    panels = choose_panels(dets, 200, 160, candidates, conf=0.4, candidate_conf=0.2)
    assert [(p.box, p.evidence) for p in panels] == [
        ((10, 10, 90, 70), "detector+pdf"), ((110, 10, 190, 70), "detector+pdf")]
    # a candidate no detection confirms is not a panel; a weak unconfirmed detection is not one either


@pytest.mark.parametrize("text, label", [
    ("A", "A"), ("b", "b"), ("(c)", "c"), ("D.", "D"), ("[e]", "e"), ("iv", "iv"), ("(ii)", "ii"),
    ("AB", None), ("Fig", None), ("1", None), ("", None), ("a)", "a"),
])
def test_panel_letters_are_read_from_short_texts(text, label):
    from pathasst.dataset_builders.curate.detect import label_of

    assert label_of(text) == label


def test_text_spans_label_the_nearest_panel_and_duplicates_are_dropped():
    from pathasst.dataset_builders.curate.detect import Panel, assign_labels, dedupe_labels

    panels = [Panel((10, 10, 90, 70), 0.9), Panel((110, 10, 190, 70), 0.9), Panel((10, 90, 90, 150), 0.9)]
    spans = [("a", (12, 12, 18, 20)), ("(b)", (104, 4, 114, 14)), ("scale bar", (20, 60, 60, 66)),
             ("c", (150, 120, 156, 128))]  # "c" lies in no panel
    assign_labels(panels, spans, "text_layer")
    assert [p.label for p in panels] == ["a", "b", None]
    assert panels[0].label_source == "text_layer"
    panels[2].label = "a"
    dedupe_labels(panels)
    assert [p.label for p in panels] == [None, "b", None]


def test_detect_config_checks_its_values():
    from pathasst.dataset_builders.curate.detect import DetectConfig

    with pytest.raises(ValueError, match="conf"):
        DetectConfig(conf=1.5)
    with pytest.raises(ValueError, match="candidate_conf"):
        DetectConfig(conf=0.3, candidate_conf=0.5)
    with pytest.raises(ValueError, match="ocr"):
        DetectConfig(ocr="paddle")


# --- the stage end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """A tiny-recipe detector trained here on toy compound figures (best.pt of the run)."""
    from pathasst.trainers.subfig import main, toy_yolo_dataset

    root = tmp_path_factory.mktemp("detector")
    data = toy_yolo_dataset(root / "yolo", {"train": 32, "val": 8})
    assert main(["--recipe", "tiny", f"data={data}", f"output_dir={root / 'run'}", "epochs=40"]) == 0
    return root / "run"


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _record(fid: str, image: bytes, width: int, height: int, **extra):
    from pathasst.images import image_phash

    record = {
        "id": fid, "image": image, "caption": f"{fid}: colonic glands, IHC.", "caption_raw": f"Figure 1. {fid}.",
        "source": "book", "source_id": f"{'ab' * 32}#p3", "figure_id": fid, "subfigure_label": None, "bbox": None,
        "page": 3, "license": "CC BY 4.0", "pathology_score": 0.91, "width": width, "height": height,
        "phash": None, "figure_label": "Figure 1",
        "page_bbox": [72.0, 100.0, 96.0, 80.0], "license_url": None, "noncommercial": None, "meta": None,
    }
    record.update(extra)
    if fid != "broken":
        record["phash"] = image_phash(image)
    return record


@pytest.fixture(scope="module")
def pathcap(tmp_path_factory):
    """A PathCap folder: compound figures seen in training, a single panel, a corrupt image, a subfigure."""
    from PIL import Image

    from pathasst.records import get_spec
    from pathasst.trainers.subfig import TOY_LAYOUTS, toy_compound_figure
    from pathasst.writer import DatasetWriter

    folder = tmp_path_factory.mktemp("pathcap") / "in"
    truth = {}
    records = []
    for name, index in (("grid", 3), ("pair", 1), ("single", 0), ("row3", 4), ("lettered", 5)):
        img, boxes = toy_compound_figure(TOY_LAYOUTS[index], seed=index)  # = training figure `index`
        meta = None
        if name == "lettered":
            spans = [{"text": f"({'ABCD'[i]})", "bbox": [b[0] + 2, b[1] + 2, 8, 10]} for i, b in enumerate(boxes)]
            meta = json.dumps({"text_spans": spans, "panel_candidates": boxes, "dpi": 150})
        records.append(_record(name, _png(img), img.width, img.height, meta=meta))
        truth[name] = boxes
    records.append(_record("broken", b"\x89PNG\r\n\x1a\n-truncated-", 10, 10))
    big, boxes = toy_compound_figure(TOY_LAYOUTS[3], seed=3, size=(1920, 1600), gutter=80)  # 10x "grid"
    records.append(_record("big", _png(big), big.width, big.height))
    truth["big"] = boxes
    gray = toy_compound_figure(TOY_LAYOUTS[1], seed=1)[0].convert("L")
    records.append(_record("gray", _png(gray), gray.width, gray.height))
    dot = Image.new("RGB", (1, 1), "white")
    records.append(_record("dot", _png(dot), 1, 1))
    sub_img, _ = toy_compound_figure((1, 1), seed=9, size=(64, 64))
    records.append(_record("old/a", _png(sub_img), 64, 64, figure_id="old", subfigure_label="a",
                           bbox=[0.0, 0.0, 64.0, 64.0]))
    with DatasetWriter(folder, get_spec("pathcap")) as writer:
        for record in records:
            writer.add(record)
        writer.finalize()
    return folder, truth, {r["id"]: r for r in records}


def _rows(folder: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = {}
    for shard in sorted((folder / "data").glob("*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            rows[row["id"]] = row
    return rows


def _iou(a, b) -> float:
    from pathasst.dataset_builders.curate.detect import iou, xywh_to_xyxy

    return iou(xywh_to_xyxy(a), xywh_to_xyxy(b))


@pytest.fixture(scope="module")
def detected(detector, pathcap, tmp_path_factory):
    from pathasst.cli import main

    src, truth, inputs = pathcap
    out = tmp_path_factory.mktemp("detected") / "out"
    code = main(["curate", "detect", str(src), "--model", str(detector / "weights" / "best.pt"), "--out", str(out),
                 "--batch-size", "3"])
    assert code == 0
    return out


@needs_ultralytics
@pytest.mark.slow
def test_compound_figures_become_subfigure_records_inside_their_parent(detected, pathcap):
    from PIL import Image

    _, truth, inputs = pathcap
    rows = _rows(detected)
    grid = sorted((r for r in rows.values() if r["figure_id"] == "grid"), key=lambda r: r["id"])
    assert [r["id"] for r in grid] == ["grid/1", "grid/2", "grid/3", "grid/4"]
    parent = inputs["grid"]
    for row, box in zip(grid, truth["grid"]):
        x, y, w, h = row["bbox"]
        assert 0 <= x and 0 <= y and x + w <= parent["width"] and y + h <= parent["height"]
        assert _iou(row["bbox"], box) > 0.7  # reading order matches the layout's
        crop = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert crop.size == (row["width"], row["height"]) == (int(w), int(h))
        assert row["subfigure_label"] is None and row["pathology_score"] is None
        for key in ("caption", "caption_raw", "source", "source_id", "license", "page", "figure_label"):
            assert row[key] == parent[key]
        meta = json.loads(row["meta"])["subfigure"]
        assert meta["parent_id"] == "grid" and meta["parent_pathology_score"] == pytest.approx(0.91)
        px, py, pw, ph = row["page_bbox"]  # the panel's box on the PDF page, in points
        assert px == pytest.approx(72.0 + x * 96.0 / parent["width"]) and pw == pytest.approx(w * 96.0 / parent["width"])
    assert len([r for r in rows.values() if r["figure_id"] == "row3"]) == 3


@needs_ultralytics
@pytest.mark.slow
def test_large_grayscale_and_one_pixel_figures(detected, pathcap):
    from PIL import Image

    _, truth, _ = pathcap
    rows = _rows(detected)
    big = sorted((r for r in rows.values() if r["figure_id"] == "big"), key=lambda r: r["id"])
    assert len(big) == 4  # seen downscaled, boxes mapped back to the figure's own pixels
    for row, box in zip(big, truth["big"]):
        assert _iou(row["bbox"], box) > 0.7
    gray = [r for r in rows.values() if r["figure_id"] == "gray"]
    assert len(gray) in (1, 2)  # the detector never saw grey figures; whatever it finds, crops stay grey
    for row in gray:
        assert Image.open(io.BytesIO(row["image"]["bytes"])).mode == "L"
    assert rows["dot"]["bbox"] is None  # nothing to split: kept whole


@needs_ultralytics
@pytest.mark.slow
def test_single_panel_stays_whole_and_bad_inputs_are_accounted(detected, pathcap):
    _, _, inputs = pathcap
    rows = _rows(detected)
    single = rows["single"]
    assert single["bbox"] is None and single["image"]["bytes"] == inputs["single"]["image"]
    assert rows["old/a"]["bbox"] == [0.0, 0.0, 64.0, 64.0]  # already a subfigure: passed through
    rejects = [json.loads(line) for line in (detected / "rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == ["broken"] and "image" in rejects[0]["reason"]
    summary = json.loads((detected / "summary.json").read_text())
    assert summary["inputs_done"] == len(inputs) and summary["rejected"] == 1
    assert summary["split"] + summary["whole"] + summary["passed_through"] + summary["rejected"] == len(inputs)


@needs_ultralytics
@pytest.mark.slow
def test_text_layer_letters_and_pdf_candidates_label_and_place_panels(detected, pathcap):
    _, truth, _ = pathcap
    rows = _rows(detected)
    lettered = {r["subfigure_label"]: r for r in rows.values() if r["figure_id"] == "lettered"}
    assert sorted(lettered) == ["A", "B", "C", "D"]
    for letter, box in zip("ABCD", truth["lettered"]):
        row = lettered[letter]
        assert row["id"] == f"lettered/{letter}"
        assert row["bbox"] == box  # confirmed by the PDF candidate: its exact box
        meta = json.loads(row["meta"])
        assert meta["subfigure"]["evidence"] == "detector+pdf" and meta["subfigure"]["label_source"] == "text_layer"
        assert "text_spans" not in meta and meta["dpi"] == 150


@needs_ultralytics
@pytest.mark.slow
def test_output_loads_with_datasets_and_a_rerun_adds_nothing(detected, detector, pathcap):
    import datasets

    from pathasst.cli import main

    before = _rows(detected)
    ds = datasets.load_dataset(str(detected))
    assert sum(len(split) for split in ds.values()) == len(before)
    src = pathcap[0]
    assert main(["curate", "detect", str(src), "--model", str(detector / "weights" / "best.pt"), "--out",
                 str(detected), "--batch-size", "3"]) == 0
    assert _rows(detected).keys() == before.keys()
    assert len((detected / "rejects.jsonl").read_text().splitlines()) == 1


@needs_ultralytics
@pytest.mark.slow
def test_eval_reports_map_on_a_held_out_split(detector, tmp_path, capsys):
    from pathasst.cli import main

    data = detector.parent / "yolo" / "data.yaml"
    assert main(["curate", "detect", "--eval", str(data), "--model", str(detector), "--split", "val",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval_val.json").read_text())
    assert result["split"] == "val" and result["images"] == 8
    assert result["map50"] > 0.5 and 0.0 < result["map50_95"] <= result["map50"]
    assert "mAP50" in capsys.readouterr().err


@needs_ultralytics
def test_wrong_family_model_is_a_clear_error(pathcap, tmp_path, capsys):
    import torch

    from pathasst.cli import main

    src = pathcap[0]
    timm_dir = tmp_path / "selector"
    timm_dir.mkdir()
    (timm_dir / "config.json").write_text(json.dumps({"architecture": "convnext_tiny", "num_classes": 2}))
    (timm_dir / "model.safetensors").write_bytes(b"")
    plain = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    cases = [(timm_dir, "timm model folder"), (plain, "cannot load it as a YOLO checkpoint"),
             (timm_dir / "model.safetensors", "expected an ultralytics .pt"), (tmp_path / "nope.pt", "no such file")]
    for model, message in cases:
        code = main(["curate", "detect", str(src), "--model", str(model), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (model, err)
    assert not (tmp_path / "out").exists()


def test_ocr_reads_letters_in_panel_label_boxes_when_tesseract_is_installed():
    import shutil

    if importlib.util.find_spec("pytesseract") is None or shutil.which("tesseract") is None:
        pytest.skip("OCR is optional: pytesseract and the tesseract program are not installed")
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    from pathasst.dataset_builders.curate.detect import Panel, _ocr_labels, ocr_backend

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"), 18)
    img = Image.new("RGB", (200, 100), "white")
    draw = ImageDraw.Draw(img)
    label_boxes = []
    for (x, y), text in zip([(8, 6), (108, 6)], ["A", "(b)"]):
        draw.text((x, y), text, fill="black", font=font)
        label_boxes.append((draw.textbbox((x, y), text, font=font), 0.9))
    panels = [Panel((5, 5, 95, 95), 0.9), Panel((105, 5, 195, 95), 0.9)]
    _ocr_labels(panels, label_boxes, img, ocr_backend("tesseract"), conf=0.4)
    assert [(p.label, p.label_source) for p in panels] == [("A", "ocr"), ("b", "ocr")]


@needs_ultralytics
@pytest.mark.slow
def test_cmyk_16_bit_and_gigantic_figures_are_detected_or_ledgered(detector, tmp_path):
    """The issue's odd images at this stage: CMYK and 16-bit figures are read (as RGB views) and split
    or kept; a figure declaring more pixels than the limit is a ledger line, never decoded."""
    import numpy as np
    from PIL import Image

    from pathasst.cli import main
    from pathasst.records import get_spec
    from pathasst.testing.images import make_huge_image_header
    from pathasst.trainers.subfig import TOY_LAYOUTS, toy_compound_figure
    from pathasst.writer import DatasetWriter

    grid, boxes = toy_compound_figure(TOY_LAYOUTS[3], seed=3)  # = training figure 3
    buf = io.BytesIO()
    grid.convert("CMYK").save(buf, format="JPEG", quality=95)
    cmyk = buf.getvalue()
    deep = Image.fromarray(np.asarray(grid.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    src, out = tmp_path / "in", tmp_path / "out"
    with DatasetWriter(src, get_spec("pathcap")) as writer:
        writer.add(_record("cmyk", cmyk, grid.width, grid.height))
        writer.add(_record("deep", _png(deep), grid.width, grid.height))
        bomb = _record("bomb", _png(grid), grid.width, grid.height)  # (its phash made from a real image)
        writer.add(dict(bomb, image=make_huge_image_header(30_000, 30_000), width=30_000, height=30_000))
        writer.finalize()
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK" and deep.mode == "I;16"
    assert main(["curate", "detect", str(src), "--model", str(detector / "weights" / "best.pt"), "--out", str(out)]) == 0
    rows = _rows(out)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == ["bomb"] and rejects[0]["reason"].startswith("image too large")
    for fid in ("cmyk", "deep"):
        mine = [r for r in rows.values() if r["figure_id"] == fid]
        assert mine, f"{fid}: neither kept whole nor split"
        for row in mine:
            img = Image.open(io.BytesIO(row["image"]["bytes"]))
            img.load()  # decodable
            if row["bbox"] is not None:
                x, y, w, h = row["bbox"]
                assert 0 <= x and 0 <= y and x + w <= grid.width and y + h <= grid.height
                assert img.mode == "RGB" and img.size == (int(w), int(h))
    cmyk_rows = [r for r in rows.values() if r["figure_id"] == "cmyk"]
    assert len(cmyk_rows) == 4  # the training figure, colours converted: still four panels
    for row, box in zip(sorted(cmyk_rows, key=lambda r: r["id"]), boxes):
        assert _iou(row["bbox"], box) > 0.7
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs_done"] == 3 and summary["rejected"] == 1
