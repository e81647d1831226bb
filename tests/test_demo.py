"""`pathasst demo` as a new user runs it: a run folder with a loadable dataset and a summary."""

import json


from pathasst.cli import main
from pathasst.demo import STAGES


def test_demo_writes_run_folder_with_dataset_ledger_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"[1/{len(STAGES)}] sample" in printed and f"Run folder: {out}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [s.name for s in STAGES]
    extract = next(s for s in summary["stages"] if s["name"] == "extract")
    assert extract["inputs"] == 11
    assert sum(extract["records"].values()) == 7 and extract["rejected"] == 4
    assert extract["reject_reasons"] == {"truncated image": 1, "not an image": 1, "missing caption": 1,
                                          "duplicate id": 1}
    ledger = [json.loads(line) for line in (out / "pathcap" / "rejects.jsonl").read_text().splitlines()]
    assert {item["id"] for item in ledger} == {
        "private:skimage-ihc/broken-truncated-file", "private:skimage-ihc/broken-not-an-image",
        "private:skimage-ihc/broken-empty-caption", "private:skimage-ihc/ihc-stroma#row11"}

    from datasets import load_dataset

    ds = load_dataset(str(out / "pathcap"))
    rows = [r for split in ds.values() for r in split]
    assert len(rows) == 7
    overview = next(r for r in rows if r["id"] == "skimage-ihc/ihc-overview")
    assert overview["image"].size == (512, 512) and "FHL2" in overview["caption"]
    assert all(len(r["phash"]) == 16 for r in rows)
    assert len({r["phash"] for r in rows}) == 7  # different crops, different hashes
    assert "| extract |" in (out / "summary.md").read_text()

    pdf = next(s for s in summary["stages"] if s["name"] == "extract-pdf")
    assert pdf["figures_printed"] == 7 and pdf["captions_paired_exactly"] == 7 and pdf["rejected"] == 0
    subfig = next(s for s in summary["stages"] if s["name"] == "subfig")
    assert sum(subfig["figures"].values()) == 24 and subfig["boxes"]["subfigure"] >= 24
    assert (out / "subfig_yolo" / "data.yaml").exists()
    # the atlas repeats six of the collection's crops: cross-source dedup finds them; the demo
    # benchmark re-uses the stroma crop: decontamination removes it
    pathcap = next(s for s in summary["stages"] if s["name"] == "pathcap")
    assert pathcap["refined"] == 14 and pathcap["duplicates_removed"] == 6 and pathcap["benchmark_leaks_removed"] == 1
    assert sum(pathcap["records"].values()) == 7 and pathcap["rejected"] == 7
    assert "contaminat" in (out / "PathCap" / "contamination_report.md").read_text()
    verify = next(s for s in summary["stages"] if s["name"] == "verify")
    assert set(verify) >= {"pathcap", "pathcap_pdf", "subfig", "PathCap"}


def test_demo_refuses_to_overwrite_a_run_unless_asked(tmp_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(out)]) == 3
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    assert main(["demo", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()
