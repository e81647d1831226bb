"""`pathasst build pathcap`: curated folders -> the released PathCap dataset.

Two curated folders (a PubMed one and a book one, as two sources' pipelines would leave them) hold
planted cases, one per rule: a caption too short, a non-pathology score, a record without a score,
a non-commercial licence, the same image in both sources (the larger copy must win), and a leak of a
benchmark image and of a benchmark caption. The benchmark is a plain Parquet folder, as a downloaded
Hub benchmark looks.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from pathasst.cli import main
from pathasst.images import image_phash
from pathasst.records import get_spec
from pathasst.testing.images import tissue_tile
from pathasst.writer import DatasetWriter

LEAKED_CAPTION = ("Photomicrograph of a renal biopsy showing crescentic glomerulonephritis with fibrinoid necrosis "
                  "of the glomerular tuft and a cellular crescent")


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _record(rid: str, image: bytes, caption: str, source: str, *, score: float | None = 0.9,
            noncommercial: bool = False, doc: str = "1") -> dict:
    size = Image.open(io.BytesIO(image)).size
    source_id = {"pubmed": f"PMC{doc}", "book": "ab" * 32 + f"#p{doc}"}[source]
    return {
        "id": rid, "image": image, "caption": caption, "caption_raw": "Figure 1. " + caption, "source": source,
        "source_id": source_id, "figure_id": rid, "license": "CC BY-NC 4.0" if noncommercial else "CC BY 4.0",
        "noncommercial": noncommercial, "width": size[0], "height": size[1], "phash": image_phash(image),
        "pathology_score": score,
    }


def _folder(path: Path, records: list[dict]) -> Path:
    with DatasetWriter(path, get_spec("pathcap")) as writer:
        for record in records:
            assert writer.add(record), record["id"]
        writer.finalize()
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    from datasets import Dataset, Features, Image as ImageFeature, Value

    root = tmp_path_factory.mktemp("build_pathcap")
    shared = tissue_tile(256, seed=40)
    leaked = tissue_tile(256, seed=41, stain="ihc")
    pubmed = [
        _record(f"pm-{i}", _jpeg(tissue_tile(160, seed=i)), f"Colonic adenoma number {i} with low grade dysplasia "
                "of the crypt epithelium.", "pubmed", doc=str(i))
        for i in range(12)
    ] + [
        _record("pm-short", _jpeg(tissue_tile(160, seed=50)), "H&E.", "pubmed"),
        _record("pm-chart", _jpeg(tissue_tile(160, seed=51)), "Kaplan-Meier survival curves of both cohorts.",
                "pubmed", score=0.1),
        _record("pm-noscore", _jpeg(tissue_tile(160, seed=52)), "Lymph node with metastatic carcinoma deposits.",
                "pubmed", score=None),
        _record("pm-nc", _jpeg(tissue_tile(160, seed=53)), "Hepatocellular carcinoma, trabecular pattern.",
                "pubmed", noncommercial=True),
        _record("pm-dup-small", _jpeg(shared.resize((128, 128))), "Granuloma with giant cells in the lung.", "pubmed"),
        _record("pm-leak-image", _jpeg(leaked.resize((200, 200)), 70), "Immunostain of colonic glands.", "pubmed"),
    ]
    book = [
        _record(f"bk-{i}", _jpeg(tissue_tile(160, seed=100 + i)), f"Renal cortex example {i} showing normal "
                "glomeruli and tubules.", "book", doc=str(i % 3))
        for i in range(6)
    ] + [
        _record("bk-dup-large", _jpeg(shared), "Granulomatous inflammation, lung.", "book"),
        _record("bk-leak-caption", _jpeg(tissue_tile(160, seed=120)), LEAKED_CAPTION + ".", "book"),
    ]
    bench = root / "bench"
    (bench / "data").mkdir(parents=True)
    Dataset.from_dict(
        {"id": ["b1", "b2"], "image": [_jpeg(leaked), _jpeg(tissue_tile(256, seed=42))],
         "caption": [LEAKED_CAPTION, "Unrelated caption about a skin biopsy."]},
        features=Features({"id": Value("string"), "image": ImageFeature(), "caption": Value("string")}),
    ).to_parquet(str(bench / "data" / "test-00000-of-00001.parquet"))
    return {
        "root": root,
        "inputs": [_folder(root / "curated-pubmed", pubmed), _folder(root / "curated-book", book)],
        "bench": bench,
        "n": len(pubmed) + len(book),
    }


# a third of the documents in each split, so that the group rule is tested on every split
SPLITS = ("splits.train=0.34", "splits.validation=0.33", "splits.test=0.33")


def _build(setup, out: Path, *extra: str, bench: bool = True) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    args = ["build", "pathcap", *map(str, setup["inputs"]), *SPLITS, *extra, "--out", str(out), "--no-progress"]
    if bench:
        args += ["--benchmarks", str(setup["bench"])]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(args)
    return rc, stdout.getvalue(), stderr.getvalue()


def _ledger(out: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines() if line.strip()]
    by_id = {item["id"]: item for item in lines}
    assert len(by_id) == len(lines), "one ledger line per input"
    return by_id


@pytest.fixture(scope="module")
def built(setup) -> tuple[Path, str]:
    out = setup["root"] / "PathCap"
    rc, stdout, stderr = _build(setup, out)
    assert rc == 0, stderr
    return out, stdout


def test_every_rule_removes_exactly_its_case_and_says_why(setup, built):
    from datasets import load_dataset

    out, stdout = built
    ledger = _ledger(out)
    assert set(ledger) == {"pm-short", "pm-chart", "pm-dup-small", "pm-leak-image", "bk-leak-caption"}
    assert ledger["pm-short"]["stage"] == "filter" and "caption too short" in ledger["pm-short"]["reason"]
    assert ledger["pm-chart"]["stage"] == "filter" and "not pathology" in ledger["pm-chart"]["reason"]
    assert ledger["pm-dup-small"]["stage"] == "dedup" and ledger["pm-dup-small"]["duplicate_of"] == "bk-dup-large"
    assert ledger["pm-leak-image"]["stage"] == "decontam" and "benchmark image" in ledger["pm-leak-image"]["reason"]
    assert ledger["bk-leak-caption"]["stage"] == "decontam" and "bench" in ledger["bk-leak-caption"]["benchmarks"]

    ds = load_dataset(str(out))
    released = {r for split in ds.values() for r in split["id"]}
    assert "pm-noscore" in released and "pm-nc" in released and "bk-dup-large" in released
    assert len(released) + len(ledger) == setup["n"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounted"] and summary["inputs"] == setup["n"]
    assert f"{setup['n']} records in, {len(released)} released" in stdout
    assert (out / "contamination_report.md").is_file()


def test_splits_follow_the_document_groups(built):
    from datasets import load_dataset

    from pathasst.records import pathcap_group

    out, _ = built
    ds = load_dataset(str(out))
    seen: dict[str, str] = {}
    assert len(ds) >= 2, "the group rule is only tested when groups land in several splits"
    for split, part in ds.items():
        for record in part.remove_columns("image"):
            group = pathcap_group(record)
            assert seen.setdefault(group, split) == split, f"{group} spans two splits"


def test_card_reports_counts_from_the_shards(setup, built):
    out, _ = built
    card = (out / "README.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    stats = summary["statistics"]
    assert f"{stats['records']} records from" in card
    assert f"| pubmed | {stats['by_source']['pubmed']} |" in card
    assert "| CC BY-NC 4.0 | 1 |" in card
    assert "decontamination against 1 benchmark(s) (bench)" in card
    assert str(setup["root"]) not in card  # no path of this machine in a published card
    assert "| dedup | " in card and "| decontam | " in card
    # the stage copies are gone once the build is done: one copy of the data stays
    assert not any((out / ".pathasst" / "build").glob("*/data/*.parquet"))


def test_exclude_noncommercial_and_reject_missing_scores(setup, tmp_path):
    out = tmp_path / "commercial"
    rc, _, stderr = _build(setup, out, "noncommercial=exclude", "missing_score=reject")
    assert rc == 0, stderr
    ledger = _ledger(out)
    assert "noncommercial licence" in ledger["pm-nc"]["reason"]
    assert "no pathology_score" in ledger["pm-noscore"]["reason"]
    assert "excluded non-commercial records" in (out / "README.md").read_text()


def test_no_benchmarks_is_an_error_unless_decontamination_is_switched_off(setup, tmp_path):
    rc, _, stderr = _build(setup, tmp_path / "x", bench=False)
    assert rc == 2 and "no --benchmarks given" in stderr
    assert not (tmp_path / "x").exists()
    out = tmp_path / "unchecked"
    rc, _, stderr = _build(setup, out, "decontam.enabled=false", bench=False)
    assert rc == 0, stderr
    assert "decontamination: **not run**" in (out / "README.md").read_text()
    assert "bk-leak-caption" not in _ledger(out)


def test_rerun_resumes_without_redoing_finished_stages(setup, tmp_path, monkeypatch):
    from pathasst.dataset_builders.build import pathcap as build

    out = tmp_path / "resumed"
    calls = {"n": 0}
    real = build._finish_stage

    def crash_after_dedup(folder, summary):
        done = real(folder, summary)
        calls["n"] += 1
        if folder.name == "dedup":
            raise KeyboardInterrupt
        return done

    monkeypatch.setattr(build, "_finish_stage", crash_after_dedup)
    rc, _, _ = _build(setup, out)
    assert rc == 130 and calls["n"] == 2
    monkeypatch.setattr(build, "_finish_stage", real)
    started = []
    import pathasst.dataset_builders.curate.dedup as dedup

    monkeypatch.setattr(dedup, "dedup_datasets", lambda *a, **k: started.append(a) or pytest.fail("dedup re-run"))
    rc, stdout, stderr = _build(setup, out)
    assert rc == 0, stderr
    assert not started
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounted"] and summary["records_total"] + summary["rejected_total"] == setup["n"]


def test_bad_input_and_bad_settings_name_the_problem(setup, tmp_path):
    rc, _, stderr = _build(setup, tmp_path / "y", "noncommercial=maybe")
    assert rc == 2 and "noncommercial" in stderr and "include, exclude" in stderr
    stdout, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
        rc = main(["build", "pathcap", str(tmp_path / "missing"), "--out", str(tmp_path / "z"),
                   "--benchmarks", str(setup["bench"])])
    assert rc == 2 and f"DATASET not found: {tmp_path / 'missing'}" in err.getvalue()
