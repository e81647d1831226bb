"""The real-document PDF quality benchmark: its data file, its scoring, and a run on a local document.

The real documents are fetched by the benchmark, never by the tests (offline); here a generated book
stands in for one, labelled in the data file's format, so every code path but the download runs.
"""

import hashlib
import json

import yaml

from pathasst.benchmarks.perf import extract_quality as q


def test_the_shipped_labels_are_complete_and_say_where_each_document_comes_from():
    docs = q.load_labels(q.default_labels())
    assert {"tuning", "tuning_2", "tuning_3", "tuning_4", "tuning_5"} <= {d["set"] for d in docs} <= {
        "tuning", "tuning_2", "tuning_3", "tuning_4", "tuning_5", "tuning_6", "held_out", "held_out_4"}
    assert sum(len(d["figures"]) for d in docs if d["set"].startswith("tuning")) >= 430
    assert sum(len(d["figures"]) for d in docs if d["set"] == "tuning_4") >= 140
    assert sum(len(d["figures"]) for d in docs if d["set"] == "tuning_5") >= 150
    assert sum(len(d["figures"]) for d in docs if d["set"] == "tuning_6") >= 190
    assert sum(len(d["figures"]) for d in docs if d["set"] == "held_out_4") >= 160
    assert all(f["side"] in ("below", "right", "above") for d in docs for f in d["figures"])
    for doc in docs:
        assert len(doc["sha256"]) == 64 and doc["package"] and doc["version"] and doc["path"].endswith(".pdf")
        numbers = [f["label"].split()[-1] for f in doc["figures"]]
        assert len(set(numbers)) == len(numbers), f"{doc['name']}: a figure labelled twice"
        assert all(f["page"] >= 1 and f["caption"] for f in doc["figures"])


def test_matching_needs_page_label_and_the_opening_words():
    fig = {"page": 3, "label": "Figure 2", "caption": "Survival curves from a case-control sample"}
    rec = {"page": 3, "figure_label": "Figure 2", "caption_raw": "Figure 2: Survival curves from a\ncase-control"}
    assert q.matches(rec, fig)
    assert q.matches(dict(rec, caption_raw="FIGURE 2.  survival  curves from a"), fig)  # case, spacing
    assert not q.matches(dict(rec, page=4), fig)
    assert not q.matches(dict(rec, figure_label="Figure 3"), fig)
    assert not q.matches(dict(rec, caption_raw="Figure 2: Hazard ratios by age"), fig)
    sided = dict(fig, side="below")  # the right text paired with the figure below it is a wrong pair
    assert q.matches(dict(rec, meta='{"caption_pairing": "below"}'), sided)
    assert not q.matches(dict(rec, meta='{"caption_pairing": "above"}'), sided)
    result = q.score([rec, dict(rec, figure_label="Figure 9", caption_raw="Figure 9: Other")], [fig])
    assert (result["found"], result["good"], result["records"]) == (1, 1, 2) and result["wrong"][0]["label"] == "Figure 9"


def test_a_run_scores_local_documents_and_reports_missing_ones(pdf_factory, tmp_path, capsys):
    truth = pdf_factory([pdf_factory.caption_below_page(), pdf_factory.vector_figure_page()])
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "book.pdf").write_bytes(truth.path.read_bytes())
    figures = [{"page": i + 1, "label": f.caption.split(":")[0], "caption": f.caption.split(":", 1)[1].strip()}
               for i, f in enumerate(truth.figures)]
    labels = {"documents": [
        {"name": "book", "set": "held_out", "package": "none", "version": "0", "path": "book.pdf",
         "sha256": hashlib.sha256(truth.path.read_bytes()).hexdigest(), "figures": figures},
        {"name": "absent", "set": "held_out", "package": "r-cran-none", "version": "1", "path": "x.pdf",
         "sha256": "0" * 64, "figures": figures[:1]},
    ]}
    path = tmp_path / "labels.yaml"
    path.write_text(yaml.safe_dump(labels))
    out = tmp_path / "res.json"
    assert q.main(["--labels", str(path), "--docs", str(cache), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    total = res["totals"]["held_out"]["geometry"]
    assert total["figure_recall"] == 1.0 and total["pairing_precision"] == 1.0 and total["figures"] == 2
    assert "absent" in res["skipped"] and "--fetch" in res["skipped"]["absent"]  # reported, never counted
    assert "| held_out | geometry | 1 | 2 | 1.0 (2/2)" in capsys.readouterr().out

    (cache / "book.pdf").write_bytes(truth.path.read_bytes() + b"\n%changed")  # not the labelled file
    assert q.main(["--labels", str(path), "--docs", str(cache)]) == 1
    assert "sha256" in capsys.readouterr().out
