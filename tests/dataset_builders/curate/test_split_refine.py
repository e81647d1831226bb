"""`pathasst curate split` and `pathasst curate refine` end to end on PathCap folders made here.

The input holds figure records (as `extract` writes them) and subfigure records (as `curate
detect` writes them: bbox, panel letter, parent figure_id, the parent's caption), in two splits,
with an empty caption and a caption that is nothing but boilerplate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathasst.cli import main
from pathasst.records import get_spec
from pathasst.testing.images import make_image
from pathasst.writer import DatasetWriter

COMPOUND = "Renal biopsy. (A) Glomerulus with crescent. (B) Tubular necrosis. Scale bars, 50 µm."


def _record(rid: str, caption: str, source_id: str, *, label: str | None = None, sub: bool = False,
            figure_id: str | None = None, meta: dict | None = None) -> dict:
    figure_id = figure_id or rid
    record = {
        "id": rid, "image": make_image("RGB", (32, 24), seed=len(rid)), "caption": caption,
        "caption_raw": f"Figure 1. {caption}", "source": "pubmed", "source_id": source_id, "figure_id": figure_id,
        "license": "CC BY 4.0", "width": 32, "height": 24, "subfigure_label": None, "bbox": None, "meta": None,
    }
    if sub:
        record["subfigure_label"] = label
        record["bbox"] = [0.0, 0.0, 32.0, 24.0]
        record["meta"] = json.dumps({**(meta or {}), "subfigure": {"parent_id": figure_id, "index": 1}})
    elif meta:
        record["meta"] = json.dumps(meta)
    return record


def _inputs() -> list[dict]:
    return [
        _record("PMC1/F1", COMPOUND, "PMC1", meta={"doi": "10.1/x"}),
        _record("PMC2/F1", "Benign nevus with H and E stain, x100 [4].", "PMC2"),
        _record("PMC3/F1", "", "PMC3"),
        _record("PMC4/F1", "See text for details.", "PMC4"),
        _record("PMC5/F2", "Hepatitis B/C infection (p < 0.05) in type B cells.", "PMC5"),
        _record("PMC1/F1/a", COMPOUND, "PMC1", label="a", sub=True, figure_id="PMC1/F1"),
        _record("PMC1/F1/B", COMPOUND, "PMC1", label="B", sub=True, figure_id="PMC1/F1"),
        _record("PMC1/F1/3", COMPOUND, "PMC1", label=None, sub=True, figure_id="PMC1/F1"),
        _record("PMC1/F1/D", COMPOUND, "PMC1", label="D", sub=True, figure_id="PMC1/F1"),
        _record("PMC2/F1/A", "Benign nevus with H and E stain, x100 [4].", "PMC2", label="A", sub=True,
                figure_id="PMC2/F1"),
        _record("PMC6/F1/A", "(A) Low power; (B) high power.", "PMC6", label="A", sub=True, figure_id="PMC6/F1",
                meta={"split": {"match": "label"}}),  # split before: passes through
    ]


@pytest.fixture(scope="module")
def pathcap(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pathcap") / "in"
    with DatasetWriter(out, get_spec("pathcap"), splits={"train": 0.5, "test": 0.5}) as writer:
        for record in _inputs():
            assert writer.add(record)
        writer.finalize()
    return out


def _read(folder: Path) -> dict[str, tuple[dict, str]]:
    import pyarrow.parquet as pq

    rows = {}
    for path in sorted((folder / "data").glob("*.parquet")):
        split = path.name.split("-", 1)[0]
        for row in pq.read_table(path).to_pylist():
            assert row["id"] not in rows, f"duplicate {row['id']}"
            rows[row["id"]] = (row, split)
    return rows


def _rejects(folder: Path) -> dict[str, str]:
    path = folder / "rejects.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {line["id"]: line["reason"] for line in lines}


def _split(pathcap: Path, out: Path, *extra: str) -> int:
    return main(["curate", "split", str(pathcap), "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def split_out(pathcap, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split") / "out"
    assert _split(pathcap, out) == 0
    return out


# --- split --------------------------------------------------------------------------------------


def test_split_accounts_for_every_input_and_keeps_splits(pathcap, split_out):
    inputs, outputs, rejects = _read(pathcap), _read(split_out), _rejects(split_out)
    assert set(outputs) | set(rejects) == set(inputs)
    assert not set(outputs) & set(rejects)
    assert rejects == {"PMC3/F1": "empty caption: nothing to split"}
    for rid, (row, split) in outputs.items():
        assert split == inputs[rid][1], rid  # a record stays in its split
        assert row["caption_raw"] == inputs[rid][0]["caption_raw"]
        assert row["image"] == inputs[rid][0]["image"]
    summary = json.loads((split_out / "summary.json").read_text())
    assert summary["accounted"] is True
    assert summary["inputs"] == len(inputs) == summary["records_total"] + summary["rejected_total"]


def test_split_figure_records_gain_meta_split(split_out):
    rows = _read(split_out)
    row = rows["PMC1/F1"][0]
    assert row["caption"] == COMPOUND  # figure captions are not rewritten
    meta = json.loads(row["meta"])
    assert meta["doi"] == "10.1/x"  # what was in meta stays
    assert meta["split"] == {
        "shared_prefix": "Renal biopsy.",
        "shared_suffix": "Scale bars, 50 µm.",
        "panels": [{"label": "A", "subcaption": "Glomerulus with crescent."},
                   {"label": "B", "subcaption": "Tubular necrosis."}],
        "markers": ["(A)", "(B)"],
        "distributed": False,
        "rules": meta["split"]["rules"],
    }
    plain = json.loads(rows["PMC5/F2"][0]["meta"])["split"]
    assert plain["panels"] == [{"label": None, "subcaption": "Hepatitis B/C infection (p < 0.05) in type B cells."}]
    assert plain["markers"] == []


@pytest.mark.parametrize("rid, caption, match", [
    ("PMC1/F1/a", "Glomerulus with crescent.", "label"),  # detector letter 'a', caption '(A)'
    ("PMC1/F1/B", "Tubular necrosis.", "label"),
    ("PMC1/F1/3", COMPOUND, "no_label"),
    ("PMC1/F1/D", COMPOUND, "label_not_found"),
    ("PMC2/F1/A", "Benign nevus with H and E stain, x100 [4].", "no_markers"),
])
def test_split_subfigure_records_take_their_panels_subcaption(split_out, rid, caption, match):
    row = _read(split_out)[rid][0]
    assert row["caption"] == caption
    assert row["caption_raw"].startswith("Figure 1. ")
    meta = json.loads(row["meta"])
    assert meta["split"]["match"] == match
    assert meta["subfigure"]["parent_id"] == row["figure_id"]
    if match == "label":
        assert meta["split"]["panel"].casefold() == row["subfigure_label"].casefold()
        assert meta["split"]["shared_prefix"] == "Renal biopsy."
        assert meta["split"]["shared_suffix"] == "Scale bars, 50 µm."
    else:
        assert meta["split"]["panel"] is None


def test_split_passes_already_split_subfigures_through(pathcap, split_out):
    assert _read(split_out)["PMC6/F1/A"][0] == _read(pathcap)["PMC6/F1/A"][0]


def test_split_prints_a_summary(pathcap, tmp_path, capsys):
    assert _split(pathcap, tmp_path / "o") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("11 records in, 10 written (1 figures split into panels, 3 without markers; "
                           "5 subfigures, 2 given their panel's sub-caption, 1 already split), 1 to the ledger")
    assert "empty caption: 1" in line


def test_split_distribute_gives_full_subcaptions(pathcap, tmp_path):
    out = tmp_path / "o"
    assert _split(pathcap, out, "distribute=true") == 0
    rows = _read(out)
    assert rows["PMC1/F1/a"][0]["caption"] == "Renal biopsy. Glomerulus with crescent. Scale bars, 50 µm."
    split = json.loads(rows["PMC1/F1"][0]["meta"])["split"]
    assert split["distributed"] is True
    assert split["panels"][1]["subcaption"] == "Renal biopsy. Tubular necrosis. Scale bars, 50 µm."


def test_split_output_loads_with_datasets(split_out):
    from datasets import load_dataset

    ds = load_dataset(str(split_out))
    assert sum(len(part) for part in ds.values()) == 10
    assert set(ds["train"].column_names) == set(get_spec("pathcap").features)


def test_split_resumes_after_an_interrupted_run(pathcap, split_out, tmp_path, monkeypatch):
    from pathasst.dataset_builders.curate import split as split_mod

    real, calls = split_mod.split_record, {"n": 0}

    def flaky(record, cfg):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(record, cfg)

    out = tmp_path / "o"
    monkeypatch.setattr(split_mod, "split_record", flaky)
    assert _split(pathcap, out) == 130  # interrupted; finished records were committed
    committed = set(_read(out)) | set(_rejects(out))
    assert 0 < len(committed) < 11
    monkeypatch.setattr(split_mod, "split_record", real)
    assert _split(pathcap, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["already_done"] == len(committed)
    assert {k: v[0] for k, v in _read(out).items()} == {k: v[0] for k, v in _read(split_out).items()}
    assert _rejects(out) == _rejects(split_out)
    # a third run finds everything done and changes nothing
    assert _split(pathcap, out) == 0
    assert json.loads((out / "summary.json").read_text())["this_run"] == {"already_done": 11}
    assert len(_read(out)) == 10


def test_split_with_other_settings_needs_resume_or_overwrite(pathcap, tmp_path, capsys):
    out = tmp_path / "o"
    assert _split(pathcap, out) == 0
    assert _split(pathcap, out, "distribute=true") == 3
    assert "different config" in capsys.readouterr().err
    assert _split(pathcap, out, "distribute=true", "--overwrite") == 0


def test_split_shards_are_disjoint_and_cover_everything(pathcap, tmp_path):
    seen = []
    for k in (1, 2):
        out = tmp_path / f"s{k}"
        assert _split(pathcap, out, "--shard", f"{k}/2") == 0
        seen.append(set(_read(out)) | set(_rejects(out)))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(_read(pathcap))


def test_duplicate_ids_across_inputs_go_to_the_ledger(pathcap, tmp_path):
    out = tmp_path / "o"
    assert main(["curate", "split", str(pathcap), str(pathcap), "--out", str(out), "--no-progress"]) == 0
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    duplicates = [r for r in rejects if r["reason"].startswith("duplicate id")]
    assert len(duplicates) == 11
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == 22 and summary["accounted"] is True


@pytest.mark.parametrize("args, code, message", [
    (["missing-folder"], 2, "not found"),
    (["{empty}"], 2, "no data/*.parquet"),
    (["{pathcap}", "distribute=maybe"], 2, "distribute"),
    (["{pathcap}", "colour=red"], 2, "colour"),
    (["{pathcap}", "--shard", "3/2"], 2, "shard"),
])
def test_split_bad_input_says_why(pathcap, tmp_path, capsys, args, code, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(pathcap=pathcap, empty=tmp_path / "empty") for a in args]
    assert main(["curate", "split", *args, "--out", str(tmp_path / "o"), "--no-progress"]) == code
    assert message in capsys.readouterr().err


# --- refine -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refine_out(split_out, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refine") / "out"
    assert main(["curate", "refine", str(split_out), "--out", str(out), "--no-progress"]) == 0
    return out


def test_refine_rewrites_captions_and_keeps_caption_raw(split_out, refine_out):
    before, after, rejects = _read(split_out), _read(refine_out), _rejects(refine_out)
    assert set(after) | set(rejects) == set(before)
    assert rejects == {"PMC4/F1": "empty after refining: nothing descriptive left"}
    row = after["PMC2/F1"][0]
    assert row["caption"] == "Benign nevus with H&E stain, ×100."
    assert row["caption_raw"] == before["PMC2/F1"][0]["caption_raw"]
    assert json.loads(row["meta"])["refine"]["changed"] is True
    assert json.loads(after["PMC1/F1/a"][0]["meta"])["refine"]["changed"] is False
    for rid, (row, split) in after.items():
        assert split == before[rid][1]
        assert row["caption_raw"] == before[rid][0]["caption_raw"]


def test_refine_refines_the_split_panels_too(refine_out):
    split = json.loads(_read(refine_out)["PMC1/F1"][0]["meta"])["split"]
    assert split["panels"] == [{"label": "A", "subcaption": "Glomerulus with crescent."},
                               {"label": "B", "subcaption": "Tubular necrosis."}]


def test_refine_ledgers_empty_captions(pathcap, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["curate", "refine", str(pathcap), "--out", str(out), "--no-progress"]) == 0
    rejects = _rejects(out)
    assert rejects["PMC3/F1"] == "empty caption: nothing to refine"
    assert rejects["PMC4/F1"].startswith("empty after refining")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("11 records in, 9 written (") and "2 to the ledger" in line
    assert json.loads((out / "summary.json").read_text())["accounted"] is True


def test_refine_resumes(split_out, refine_out, tmp_path):
    out = tmp_path / "o"
    assert main(["curate", "refine", str(split_out), "--out", str(out), "--no-progress", "--shard", "1/2"]) == 0
    first = set(_read(out)) | set(_rejects(out))
    assert main(["curate", "refine", str(split_out), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert {k: v[0] for k, v in _read(out).items()} == {k: v[0] for k, v in _read(refine_out).items()}
    assert json.loads((out / "summary.json").read_text())["this_run"]["already_done"] == len(first)
