"""`pathasst curate align` on a subfigure-level PathCap folder made here (as `curate detect` writes it:
bbox in the parent's pixels, panel letter or None, parent figure_id, the parent's caption)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathasst.cli import main
from pathasst.dataset_builders.curate.align import AlignConfig, align_figure, reading_order
from pathasst.records import get_spec
from pathasst.testing.images import make_image
from pathasst.writer import DatasetWriter

RENAL = "Renal biopsy. (A) Glomerulus with crescent. (B) Tubular necrosis. Scale bars, 50 µm."
GRID = "Breast carcinoma, H&E. (A) Tumour nests. (B) Desmoplastic stroma. (C) Necrosis. (D) Mitoses."
TWO = "(A) Low power view. (B) High power view."


def _sub(figure_id: str, index: int, caption: str, *, label: str | None = None, bbox=(0, 0, 32, 24),
         meta: dict | None = None) -> dict:
    return {
        "id": f"{figure_id}/{label or index}", "image": make_image("RGB", (16, 12), seed=index),
        "caption": caption, "caption_raw": f"Figure 1. {caption}", "source": "pubmed",
        "source_id": figure_id.split("/")[0], "figure_id": figure_id, "license": "CC BY 4.0",
        "width": 16, "height": 12, "subfigure_label": label, "bbox": None if bbox is None else [float(v) for v in bbox],
        "meta": json.dumps({**(meta or {}), "subfigure": {"parent_id": figure_id, "index": index}}),
    }


def _whole(figure_id: str, caption: str) -> dict:
    record = _sub(figure_id, 1, caption, bbox=None)
    record.update(id=figure_id, meta=None)
    return record


def _inputs() -> list[dict]:
    return [
        # letters (the detector's 'a' against the caption's '(A)')
        _sub("PMC1/F1", 1, RENAL, label="a", bbox=(0, 0, 50, 50)),
        _sub("PMC1/F1", 2, RENAL, label="B", bbox=(60, 0, 50, 50)),
        # a 2x2 grid without letters, rows slightly uneven, listed out of order
        _sub("PMC2/F1", 1, GRID, bbox=(56, 58, 50, 50)),  # bottom right: D
        _sub("PMC2/F1", 2, GRID, bbox=(0, 4, 50, 50)),  # top left: A
        _sub("PMC2/F1", 3, GRID, bbox=(0, 60, 50, 52)),  # bottom left: C
        _sub("PMC2/F1", 4, GRID, bbox=(55, 0, 50, 50)),  # top right: B
        # three panels without letters, two sub-captions: counts disagree
        _sub("PMC3/F1", 1, TWO, bbox=(0, 0, 30, 30)),
        _sub("PMC3/F1", 2, TWO, bbox=(40, 0, 30, 30)),
        _sub("PMC3/F1", 3, TWO, bbox=(80, 0, 30, 30)),
        # letters that do not all match: C has no sub-caption, B no panel
        _sub("PMC4/F1", 1, TWO, label="A", bbox=(0, 0, 30, 30)),
        _sub("PMC4/F1", 2, TWO, label="C", bbox=(40, 0, 30, 30)),
        # one letter read, the other panel takes what is left by reading order
        _sub("PMC5/F1", 1, TWO, label="A", bbox=(0, 0, 30, 30)),
        _sub("PMC5/F1", 2, TWO, bbox=(40, 0, 30, 30)),
        # whole figures pass through
        _whole("PMC6/F1", "Melanoma in situ."),
        _whole("PMC7/F2", RENAL),
        # split before detect: meta.split (refined panels) is used rather than the caption
        _sub("PMC8/F1", 1, TWO, label="A", bbox=(0, 0, 30, 30), meta={"split": {
            "shared_prefix": "Liver.", "shared_suffix": "", "distributed": False, "markers": ["(A)", "(B)"],
            "panels": [{"label": "A", "subcaption": "Low power."}, {"label": "B", "subcaption": "High power."}]}}),
        _sub("PMC8/F1", 2, TWO, label="B", bbox=(40, 0, 30, 30), meta={"split": {
            "shared_prefix": "Liver.", "shared_suffix": "", "distributed": False, "markers": ["(A)", "(B)"],
            "panels": [{"label": "A", "subcaption": "Low power."}, {"label": "B", "subcaption": "High power."}]}}),
        # a caption that names no panels
        _sub("PMC9/F1", 1, "Chronic gastritis.", bbox=(0, 0, 30, 30)),
        _sub("PMC9/F1", 2, "Chronic gastritis.", bbox=(40, 0, 30, 30)),
    ]


@pytest.fixture(scope="module")
def detected(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("detected") / "in"
    with DatasetWriter(out, get_spec("pathcap"), splits={"train": 0.5, "test": 0.5}) as writer:
        for record in _inputs():
            with writer.unit(record["id"]):
                assert writer.add(record)
        writer.finalize()
    return out


def _align(folder: Path, out: Path, *extra: str) -> int:
    return main(["curate", "align", str(folder), "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def aligned(detected, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aligned") / "out"
    assert _align(detected, out) == 0
    return out


def _read(folder: Path) -> dict[str, tuple[dict, str]]:
    import pyarrow.parquet as pq

    rows = {}
    for path in sorted((folder / "data").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            assert row["id"] not in rows
            rows[row["id"]] = (row, path.name.split("-", 1)[0])
    return rows


def _rejects(folder: Path) -> dict[str, str]:
    path = folder / "rejects.jsonl"
    return {line["id"]: line["reason"] for line in map(json.loads, path.read_text().splitlines())}


def test_letters_match_case_insensitively_with_shared_parts_distributed(aligned):
    rows = _read(aligned)
    a, b = rows["PMC1/F1/a"][0], rows["PMC1/F1/B"][0]
    assert a["caption"] == "Renal biopsy. Glomerulus with crescent. Scale bars, 50 µm."
    assert b["caption"] == "Renal biopsy. Tubular necrosis. Scale bars, 50 µm."
    assert (a["subfigure_label"], b["subfigure_label"]) == ("a", "B")
    assert a["caption_raw"] == f"Figure 1. {RENAL}"
    meta = json.loads(a["meta"])
    assert meta["align"]["method"] == "label" and meta["align"]["panel"] == "A"
    assert meta["align"]["shared_prefix"] == "Renal biopsy." and meta["align"]["distributed"] is True
    assert meta["subfigure"]["parent_id"] == "PMC1/F1"  # what meta held stays


def test_reading_order_fallback_on_a_2x2_grid(aligned):
    rows = _read(aligned)
    expected = {"PMC2/F1/1": ("D", "Mitoses."), "PMC2/F1/2": ("A", "Tumour nests."),
                "PMC2/F1/3": ("C", "Necrosis."), "PMC2/F1/4": ("B", "Desmoplastic stroma.")}
    for rid, (label, text) in expected.items():
        row = rows[rid][0]
        assert row["subfigure_label"] == label, rid
        assert row["caption"] == f"Breast carcinoma, H&E. {text}"
        assert json.loads(row["meta"])["align"]["method"] == "reading_order"
    # one letter read: the other panel takes the sub-caption left over
    assert rows["PMC5/F1/2"][0]["subfigure_label"] == "B"
    assert rows["PMC5/F1/2"][0]["caption"] == "High power view."
    assert json.loads(rows["PMC5/F1/A"][0]["meta"])["align"]["method"] == "label"


def test_reading_order_rows_tolerate_uneven_tops():
    boxes = [[56, 58, 50, 50], [0, 4, 50, 50], [0, 60, 50, 52], [55, 0, 50, 50]]
    assert reading_order(boxes) == [1, 3, 2, 0]
    assert reading_order([[0, 0, 10, 100], [20, 60, 10, 10]], row_tolerance=0.1) == [0, 1]
    assert reading_order([[20, 0, 10, 10], [0, 30, 10, 10]], row_tolerance=0.5) == [0, 1]  # two rows


def test_mismatches_go_to_the_ledger(aligned):
    rows, rejects = _read(aligned), _rejects(aligned)
    for rid in ("PMC3/F1/1", "PMC3/F1/2", "PMC3/F1/3"):
        assert rid not in rows
        assert rejects[rid].startswith("unmatched panel: no letter") and "3 panels" in rejects[rid]
    assert rejects["PMC3/F1#A"].startswith("unmatched sub-caption:")
    assert rejects["PMC3/F1#B"].startswith("unmatched sub-caption:")
    assert rejects["PMC4/F1/C"].startswith("unmatched panel: no sub-caption for letter 'C'")
    assert rejects["PMC4/F1#B"].startswith("unmatched sub-caption: no panel for 'B'")
    assert rows["PMC4/F1/A"][0]["caption"] == "Low power view."
    assert rejects["PMC9/F1/1"] == "unmatched panel: the parent caption names no panels"


def test_whole_figures_pass_through_and_meta_split_is_used(detected, aligned):
    inputs, rows = _read(detected), _read(aligned)
    for rid in ("PMC6/F1", "PMC7/F2"):
        assert rows[rid] == inputs[rid]
    assert rows["PMC8/F1/A"][0]["caption"] == "Liver. Low power."
    assert json.loads(rows["PMC8/F1/B"][0]["meta"])["align"]["source"] == "meta.split"


def test_accounting_and_splits(detected, aligned):
    inputs, rows, rejects = _read(detected), _read(aligned), _rejects(aligned)
    extra = {k for k in rejects if "#" in k}
    assert extra == {"PMC3/F1#A", "PMC3/F1#B", "PMC4/F1#B"}
    assert set(rows) | (set(rejects) - extra) == set(inputs)
    assert not set(rows) & set(rejects)
    for rid, (_, split) in rows.items():
        assert split == inputs[rid][1]
    summary = json.loads((aligned / "summary.json").read_text())
    assert summary["accounted"] is True and summary["extra_ledger_lines"] == 3
    assert summary["inputs"] == summary["records_total"] + summary["rejected_total"] - 3 == len(inputs)
    assert "unmatched sub-caption" in summary["accounting_rule"]


def test_align_figure_distribute_false_and_already_aligned():
    rows = [_sub("X/F1", 1, TWO, label="b", bbox=(0, 0, 5, 5)), _sub("X/F1", 2, "x", bbox=(9, 0, 5, 5),
                                                                      meta={"align": {"method": "label"}})]
    rows[0]["caption"] = "Stomach. " + TWO
    result = align_figure("X/F1", rows, AlignConfig(distribute=False))
    assert [r["caption"] for _, r in result.records] == ["High power view.", "x"]
    assert result.counts == {"already_aligned": 1, "label": 1, "unmatched_subcaptions": 1}


def test_end_to_end_cli_summary_and_load_dataset(detected, tmp_path, capsys):
    from datasets import load_dataset

    out = tmp_path / "o"
    assert _align(detected, out) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("19 records in, 13 written (6 subfigures matched by letter, 5 by reading order, "
                           "2 whole figures passed through), 9 to the ledger")
    assert "unmatched panel: 6" in line and "unmatched sub-caption: 3" in line
    assert line.endswith("3 of the ledger lines are unmatched sub-captions (inputs = records + ledger lines - those)")
    ds = load_dataset(str(out))
    assert sum(len(part) for part in ds.values()) == 13
    assert set(next(iter(ds.values())).column_names) == set(get_spec("pathcap").features)
    assert _align(detected, out) == 0  # a rerun finds everything done
    assert "19 already done" in capsys.readouterr().out


def test_resumes_after_an_interrupted_run(detected, aligned, tmp_path, monkeypatch):
    from pathasst.dataset_builders.curate import align as align_mod

    out = tmp_path / "o"
    real, calls = align_mod.align_figure, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(align_mod, "align_figure", flaky)
    assert _align(detected, out) == 130  # interrupted: finished figures were committed
    done = set(_read(out))
    assert 0 < len(done) < 13
    monkeypatch.setattr(align_mod, "align_figure", real)
    assert _align(detected, out) == 0
    assert _read(out) == _read(aligned)
    assert _rejects(out) == _rejects(aligned)
    assert json.loads((out / "summary.json").read_text())["accounted"] is True
