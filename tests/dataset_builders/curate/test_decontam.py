"""`pathasst curate decontam`: training records that overlap benchmark images or texts.

Two tiny benchmarks are written in the test as dataset folders (Parquet + nothing else, as a
downloaded Hub benchmark looks): a VQA-style one with images, ids, question, answer and a list of
options in two splits, and a text-only one without an id column. The training set is a PathCap
folder with planted leaks: a benchmark image re-encoded and resized, a caption that copies a
benchmark question, a caption that quotes an option, and near misses that must not be flagged
(stain/magnification boilerplate shared with a benchmark, a 12-word overlap, the same tissue in
another stain).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from pathasst.cli import main
from pathasst.dataset_builders.curate.decontam import DecontamConfig, NgramTable, _TextEntry, decontaminate
from pathasst.dataset_builders.curate.dedup import normalized_words
from pathasst.images import image_phash
from pathasst.records import get_spec
from pathasst.testing.images import tissue_tile
from pathasst.writer import DatasetWriter

QUESTION = ("Which of the following best describes the glandular architecture seen in this colonic biopsy "
            "stained for cytokeratin?")
OPTION = "Back to back crowded glands with cribriform architecture and loss of nuclear polarity throughout"
BOILERPLATE = "hematoxylin and eosin stain, original magnification x400"  # 7 words: never an n-gram of 13
TWELVE = "the lamina propria shows a dense infiltrate of plasma cells and eosinophils"  # 12 words


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _quadrant(stain: str, q: int) -> Image.Image:
    x, y = ((0, 0), (256, 0), (0, 256), (256, 256))[q]
    return tissue_tile(512, stain=stain).crop((x, y, x + 256, y + 256))


def _record(rid: str, image: bytes, caption: str, source: str, *, phash: bool = True, raw: str | None = None) -> dict:
    size = Image.open(io.BytesIO(image)).size
    source_id = {"pubmed": f"PMC{len(rid)}{ord(rid[-1])}", "book": "cd" * 32 + "#p9", "web": "https://example.org/x",
                 "private": "lab/2"}[source]
    return {
        "id": rid, "image": image, "caption": caption, "caption_raw": raw if raw is not None else caption,
        "source": source, "source_id": source_id, "figure_id": rid, "license": "CC BY 4.0", "width": size[0],
        "height": size[1], "phash": image_phash(image) if phash else None,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    from datasets import Dataset, Features, Image as ImageFeature, List, Value

    root = tmp_path_factory.mktemp("decontam")
    # benchmark 1: images + id + question/answer/options, two splits
    vqa = root / "PathVQA-mini"
    features = Features({"qid": Value("string"), "image": ImageFeature(), "question": Value("string"),
                         "answer": Value("string"), "options": List(Value("string"))})
    test_rows = {
        "qid": ["q1", "q2", "q3"],
        "image": [_jpeg(_quadrant("ihc", 0), 75), _jpeg(_quadrant("ihc", 1)), _jpeg(_quadrant("ihc", 2))],
        "question": [QUESTION, "What stain is used? " + BOILERPLATE, "Is this " + TWELVE + "?"],
        "answer": ["cribriform", "H&E", "yes"],
        "options": [[OPTION, "Normal colonic crypts"], ["H&E", "PAS"], ["yes", "no"]],
    }
    val_rows = {"qid": ["v1"], "image": [_jpeg(_quadrant("ihc", 3))], "question": ["Is this benign?"],
                "answer": ["no"], "options": [["yes", "no"]]}
    (vqa / "data").mkdir(parents=True)
    Dataset.from_dict(test_rows, features=features).to_parquet(str(vqa / "data" / "test-00000-of-00001.parquet"))
    Dataset.from_dict(val_rows, features=features).to_parquet(str(vqa / "data" / "validation-00000-of-00001.parquet"))
    # benchmark 2: text only, no id column
    arch = root / "arch-captions"
    (arch / "data").mkdir(parents=True)
    Dataset.from_dict({"caption": [
        "Photomicrograph of a renal biopsy showing crescentic glomerulonephritis with fibrinoid necrosis of the tuft",
        "Short caption.",
    ]}).to_parquet(str(arch / "data" / "test-00000-of-00001.parquet"))

    he = _quadrant("he", 0)  # the benchmark's q1 tissue in another stain: 10 bits away, not a leak
    records = [
        _record("leak-image", _jpeg(_quadrant("ihc", 0).resize((200, 200)), 60), "Colonic biopsy.", "pubmed"),
        _record("leak-image-nohash", _jpeg(_quadrant("ihc", 1), 50), "Another view.", "web", phash=False),
        _record("leak-question", _jpeg(tissue_tile(128, seed=11)),
                "Quiz: " + QUESTION.upper().replace(",", "") + " Answer below.", "book"),
        _record("leak-option", _jpeg(tissue_tile(128, seed=12)), "Carcinoma. " + OPTION + ".", "pubmed"),
        _record("leak-arch-raw", _jpeg(tissue_tile(128, seed=13)), "Renal biopsy (refined caption).", "pubmed",
                raw="Figure 3. Photomicrograph of a renal biopsy showing crescentic glomerulonephritis with "
                    "fibrinoid necrosis of the tuft (arrow)."),
        _record("boilerplate", _jpeg(tissue_tile(128, seed=14)), "Tubular adenoma, " + BOILERPLATE + ".", "pubmed"),
        _record("twelve-words", _jpeg(tissue_tile(128, seed=15)), "Colitis: " + TWELVE + ".", "book"),
        _record("other-stain", _jpeg(he), "The same region in H&E.", "private"),
        _record("clean", _jpeg(tissue_tile(128, seed=16, stain="ihc")), "Normal colonic crypts.", "web"),
    ]
    train = root / "train"
    with DatasetWriter(train, get_spec("pathcap")) as writer:
        for record in records:
            assert writer.add(record)
        writer.finalize()
    return {"root": root, "train": train, "benchmarks": [vqa, arch], "n": len(records)}


FLAGGED = {  # training id -> (benchmark, kind)
    "leak-image": ("PathVQA-mini", "image"),
    "leak-image-nohash": ("PathVQA-mini", "image"),
    "leak-question": ("PathVQA-mini", "text"),
    "leak-option": ("PathVQA-mini", "text"),
    "leak-arch-raw": ("arch-captions", "text"),
}


def _run(setup, out: Path, *extra: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["curate", "decontam", str(setup["train"]), *extra, "--benchmarks",
                   *map(str, setup["benchmarks"]), "--out", str(out), "--no-progress"])
    assert rc == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def removed_run(setup) -> tuple[Path, str]:
    out = setup["root"] / "clean"
    return out, _run(setup, out)


def test_flags_image_and_long_ngram_leaks_only(setup, removed_run):
    out, printed = removed_run
    ledger = {line["id"]: line for line in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert set(ledger) == set(FLAGGED)
    for rid, (bench, kind) in FLAGGED.items():
        line = ledger[rid]
        assert line["benchmarks"] == [bench]
        assert line["reason"].startswith(f"benchmark {kind}: ")
        assert any(e["kind"] == kind and e["benchmark"] == bench for e in line["evidence"])
    assert ledger["leak-image"]["reason"].startswith("benchmark image: phash distance ")
    assert ledger["leak-image"]["reason"].endswith("to PathVQA-mini test/q1")
    assert ledger["leak-image-nohash"]["evidence"][0]["benchmark_id"] == "q2"  # hashed here, from its image
    text = ledger["leak-question"]["evidence"][0]
    assert text["column"] == "question" and text["benchmark_id"] == "q1" and text["field"] == "caption"
    assert len(text["ngram"].split()) == 13 and text["ngram"] in " ".join(normalized_words(QUESTION))
    assert ledger["leak-option"]["evidence"][0]["column"] == "options"
    arch = ledger["leak-arch-raw"]["evidence"][0]
    assert arch["field"] == "caption_raw" and arch["benchmark_id"] == "0"  # no id column: the row number

    from datasets import load_dataset

    kept = {rid for split in load_dataset(str(out)).values() for rid in split["id"]}
    assert kept == {"boilerplate", "twelve-words", "other-stain", "clean"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounted"] and summary["records_total"] + summary["rejected_total"] == setup["n"]
    assert "removed leak-image: benchmark image: phash distance" in printed
    assert printed.strip().splitlines()[-1].startswith(f"{setup['n']} records in, 5 contaminated (image 2, text 3; "
                                                       "PathVQA-mini 4, arch-captions 1); removed 5, kept 4")


def test_report_counts_columns_and_examples(setup, removed_run):
    out, _ = removed_run
    report = json.loads((out / "contamination_report.json").read_text())
    assert report["flagged"] == {"total": 5, "image": 2, "text": 3, "both": 0}
    assert report["settings"]["ngram"] == 13 and report["settings"]["max_distance"] == 6
    vqa = report["benchmarks"]["PathVQA-mini"]
    assert vqa["splits"] == {"test": 3, "validation": 1}
    assert vqa["id_column"] == "qid"
    assert vqa["image_columns"] == ["image"]
    assert vqa["text_columns"] == ["question", "answer", "options"]
    assert vqa["text_columns_detail"]["question"] == {"texts": 4, "long_enough": 2}
    assert vqa["images_hashed"] == 4
    assert vqa["flagged"] == {"total": 4, "image": 2, "text": 2, "both": 0}
    assert vqa["per_source"] == {
        "book": {"total": 1, "image": 0, "text": 1, "both": 0},
        "pubmed": {"total": 2, "image": 1, "text": 1, "both": 0},
        "web": {"total": 1, "image": 1, "text": 0, "both": 0},
    }
    assert vqa["benchmark_items_matched"] == 2  # q1 (image, question, option) and q2 (image)
    assert {e["id"] for e in vqa["examples"]} == {"leak-image", "leak-image-nohash", "leak-question", "leak-option"}
    arch = report["benchmarks"]["arch-captions"]
    assert arch["image_columns"] == [] and arch["text_columns"] == ["caption"] and arch["id_column"] is None
    assert arch["flagged"]["total"] == 1 and arch["examples"][0]["text"]["benchmark_split"] == "test"
    assert report["per_source"]["pubmed"] == {"records": 4, "total": 3, "image": 1, "text": 2, "both": 0}
    assert report["per_source"]["private"] == {"records": 1, "total": 0, "image": 0, "text": 0, "both": 0}
    md = (out / "contamination_report.md").read_text()
    assert "## PathVQA-mini" in md and "## arch-captions" in md and "question (2 of 4 texts long enough)" in md


def test_remove_false_writes_the_report_and_keeps_everything(setup, removed_run):
    out = setup["root"] / "report-only"
    printed = _run(setup, out, "remove=false")
    assert not (out / "data").exists() and not (out / "rejects.jsonl").exists()
    report = json.loads((out / "contamination_report.json").read_text())
    clean = json.loads((removed_run[0] / "contamination_report.json").read_text())
    assert report["flagged"] == clean["flagged"] and report["settings"]["remove"] is False
    assert report["training"]["records"] == setup["n"]
    assert "flagged leak-question: benchmark text: 13-gram" in printed
    assert "report only, nothing removed (remove=false)" in printed
    assert (out / "config.yaml").exists()


def test_ngram_length_is_configurable(setup, tmp_path):
    summary = decontaminate([str(setup["train"])], [str(b) for b in setup["benchmarks"]], tmp_path / "o",
                            DecontamConfig(ngram=12, remove=False, max_distance=12), progress=False)
    # 12 words: the twelve-word overlap now counts; 12 bits: the same tissue in another stain too
    report = json.loads((tmp_path / "o" / "contamination_report.json").read_text())
    ids = {e["id"] for b in report["benchmarks"].values() for e in b["examples"]}
    assert ids == set(FLAGGED) | {"twelve-words", "other-stain"}
    assert summary["flagged"] == {"total": 7, "image": 3, "text": 4, "both": 0}


def test_ngram_table_verifies_words():
    table = NgramTable(3)
    table.add(_TextEntry(0, "a", "test", "question", normalized_words("alpha beta gamma delta")))
    table.freeze()
    assert [e.record_id for _, e in table.matches(normalized_words("x Beta, GAMMA delta y"))[0]] == ["a"]
    assert table.matches(normalized_words("gamma beta alpha")) == {}


def test_missing_benchmark_is_a_clear_error(setup, tmp_path, capsys):
    rc = main(["curate", "decontam", str(setup["train"]), "--benchmarks", str(tmp_path / "nope"),
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc != 0
    assert "nope" in capsys.readouterr().err
