"""The real compound-figure set of the subfigure detector's evaluation: its data file and its
conversion to COCO and PathSubfig.

The real documents are fetched by the benchmark, never by the tests (offline); a generated PDF with
a compound figure (whose panel boxes the generator knows) stands in for one, annotated in the data
file's format, so every step up to the detector runs.
"""

import hashlib
import json

import pytest
import yaml

from pathasst.benchmarks.perf import subfig_real as sr


def test_the_shipped_annotations_load_and_every_box_lies_inside_its_figure():
    ann = sr.load_annotations()
    figures = ann["figures"]
    compound = [f for f in figures if f["kind"] == "compound"]
    assert 25 <= len(compound) <= 40 and any(f["kind"] == "single" for f in figures)
    assert all(len(f["panels"]) >= 2 for f in compound)
    assert len({f["id"] for f in figures}) == len(figures)
    for doc in ann["documents"].values():
        assert len(doc["sha256"]) == 64 and doc["package"].startswith("r-cran-") and doc["path"].endswith(".pdf")
    for f in figures:
        x0, y0, x1, y1 = f["clip"]
        assert f["page"] >= 1 and f["document"] in ann["documents"]
        for p in f["panels"]:
            bx0, by0, bx1, by1 = p["box"]
            assert x0 <= bx0 < bx1 <= x1 and y0 <= by0 < by1 <= y1, (f["id"], p["box"])
    # the header states the rule and the method, and the units
    text = sr.default_labels().read_text()
    assert "What a panel is" in text and "Method:" in text and "PDF points" in text


def _labels_for(truth, tmp_path, dpi=100):
    """The data file's format for the generated document: one compound figure, one box per panel."""
    pdf = truth.path
    fig = truth.figures[0]
    clip = [fig.bbox[0] - 3, fig.bbox[1] - 3, fig.bbox[2] + 3, fig.bbox[3] + 3]
    data = {
        "dpi": dpi,
        "documents": [{"name": "book", "package": "none", "version": "0", "path": "book.pdf",
                       "sha256": hashlib.sha256(pdf.read_bytes()).hexdigest()}],
        "figures": [{"document": "book", "page": fig.page_number, "label": fig.label, "kind": "compound",
                     "layout": "grid", "clip": clip,
                     "panels": [{"box": list(p.bbox), "letter": p.label} for p in fig.panels]}],
    }
    path = tmp_path / "labels.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


def test_conversion_to_coco_and_pathsubfig_keeps_every_box(pdf_factory, tmp_path):
    truth = pdf_factory([pdf_factory.compound_figure_page(grid=(2, 3))])
    labels, data = _labels_for(truth, tmp_path)
    ann = sr.load_annotations(labels)
    n_in = sum(len(f["panels"]) for f in ann["figures"])
    assert n_in == 6
    coco = sr.write_coco(ann, {"book": truth.path}, tmp_path / "real")
    assert (coco["images"], coco["boxes"], coco["skipped"]) == (1, n_in, [])
    written = json.loads((tmp_path / "real" / "real.json").read_text())
    assert len(written["annotations"]) == n_in
    assert {a["letter"] for a in written["annotations"]} == set("ABCDEF")
    image = written["images"][0]
    # boxes land on the rendered pixels: the first panel starts 3 pt (at 100 dpi: 4.17 px) inside the clip
    first = written["annotations"][0]["bbox"]
    assert first[:2] == pytest.approx([3 * 100 / 72, 3 * 100 / 72], abs=0.02)
    for a in written["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"] and w > 0 and h > 0
    built = sr.build_dataset(coco["coco"], tmp_path / "pathsubfig", tmp_path / "yolo")
    assert sum(built.records.values()) == 1 and built.rejected == 0
    assert built.objects == {"subfigure": n_in, "panel_label": 0}
    labels_out = [line for p in (tmp_path / "yolo" / "labels").rglob("*.txt") for line in p.read_text().splitlines()]
    assert len(labels_out) == n_in
    # the evaluation's data.yaml puts every image of the export in its test split
    y = yaml.safe_load(sr.eval_yaml(tmp_path / "yolo", tmp_path / "eval" / "real.yaml").read_text())
    assert sorted(y["test"]) == ["images/test", "images/train", "images/val"]


def test_a_missing_document_is_skipped_by_name(pdf_factory, tmp_path):
    truth = pdf_factory([pdf_factory.compound_figure_page()])
    labels, _ = _labels_for(truth, tmp_path)
    coco = sr.write_coco(sr.load_annotations(labels), {}, tmp_path / "real")
    assert coco["images"] == 0 and coco["skipped"][0][1] == "document book not available"


@pytest.mark.parametrize("change, message", [
    (lambda f: f["panels"][0].update(box=[0, 0, 5000, 10]), "not inside the figure's clip"),
    (lambda f: f["panels"][0].update(box=[100, 100, 90, 120]), "zero or negative size"),
    (lambda f: f.update(document="other"), "document 'other' is not in 'documents'"),
    (lambda f: f.pop("clip"), "lacks clip"),
    (lambda f: f.update(kind="single"), "kind 'single' with 6 panels"),
])
def test_bad_annotations_are_refused_naming_the_figure_and_the_key(pdf_factory, tmp_path, change, message):
    truth = pdf_factory([pdf_factory.compound_figure_page(grid=(2, 3))])
    labels, data = _labels_for(truth, tmp_path)
    change(data["figures"][0])
    labels.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="figures\\[0\\]") as err:
        sr.load_annotations(labels)
    assert message in str(err.value)


def test_to_pixels_maps_points_to_the_rendered_clip():
    assert sr.to_pixels([110, 220, 146, 256], [100, 200, 300, 400], 144, (400, 400)) == [20, 40, 72, 72]
    assert sr.to_pixels([90, 190, 146, 256], [100, 200, 300, 400], 72, (200, 200)) == [0, 0, 46, 56]  # clamped
