"""The caption rules: golden cases stored as data, faithfulness, hostile inputs, the benchmark.

The golden cases (``dataset_builders/curate/data/caption_cases.yaml``) are synthetic captions
written by hand from the patterns of pathology figure captions; each is checked exactly.
"""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from pathasst.dataset_builders.curate.captions import (
    NORMALISATION_OUTPUTS,
    Panel,
    SplitResult,
    refine_caption,
    refine_split,
    split_caption,
    unsupported_words,
    words,
)


def _cases() -> dict:
    text = resources.files("pathasst.dataset_builders.curate").joinpath("data/caption_cases.yaml").read_text("utf-8")
    return yaml.safe_load(text)


CASES = _cases()
SPLIT_CASES = CASES["split"]
REFINE_CASES = CASES["refine"]


def test_golden_file_is_marked_synthetic_and_large_enough():
    text = resources.files("pathasst.dataset_builders.curate").joinpath("data/caption_cases.yaml").read_text("utf-8")
    assert "SYNTHETIC" in text.split("version:")[0]
    assert len(SPLIT_CASES) >= 60
    ids = [c["id"] for c in SPLIT_CASES] + [f"refine:{c['id']}" for c in REFINE_CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"


@pytest.mark.parametrize("case", SPLIT_CASES, ids=[c["id"] for c in SPLIT_CASES])
def test_split_golden(case):
    result = split_caption(case["caption"], distribute=case.get("distribute", False))
    assert result.shared_prefix == case.get("prefix", "")
    assert result.shared_suffix == case.get("suffix", "")
    assert [[p.label, p.subcaption] for p in result.panels] == [list(p) for p in case["panels"]]
    if "markers" in case:
        assert list(result.markers_found) == case["markers"]
    if "figure_label" in case:
        assert result.figure_label == case["figure_label"]
    if case["panels"] and case["panels"][0][0] is None and len(case["panels"]) == 1:
        assert result.markers_found == ()


@pytest.mark.parametrize("case", REFINE_CASES, ids=[c["id"] for c in REFINE_CASES])
def test_refine_golden(case):
    assert refine_caption(case["caption"]) == case["expected"]


# --- faithfulness: rules rearrange and remove, they never add -----------------------------------


def _generated(n: int = 2000):
    from pathasst.benchmarks.perf.captions import make_corpus

    return make_corpus(n, seed=7)


ALL_CAPTIONS = [c["caption"] for c in SPLIT_CASES] + [c["caption"] for c in REFINE_CASES]


def test_refine_never_adds_a_word():
    captions = ALL_CAPTIONS + [c for c, _ in _generated()]
    for caption in captions:
        refined = refine_caption(caption)
        assert unsupported_words(refined, caption) == [], (caption, refined)
        # and what the table may add is only ever the table's own outputs
        assert set(words(refined)) <= set(words(caption)) | set(words(" ".join(NORMALISATION_OUTPUTS)))


def test_split_uses_only_words_of_the_caption():
    for caption in ALL_CAPTIONS + [c for c, _ in _generated()]:
        result = split_caption(caption, distribute=True)
        parts = [result.shared_prefix, result.shared_suffix, *(p.subcaption for p in result.panels)]
        assert unsupported_words(" ".join(parts), caption, allowed=()) == [], caption


def test_generated_captions_give_the_labels_they_were_made_with():
    corpus = _generated()
    exact = sum([p.label for p in split_caption(c).panels] == labels for c, labels in corpus)
    assert exact / len(corpus) >= 0.98


def test_unsupported_words_sees_an_added_fact():
    assert unsupported_words("Carcinoma, ×400.", "Carcinoma x400") == []
    assert unsupported_words("Metastatic carcinoma.", "Carcinoma.") == ["metastatic"]


# --- structure and API ----------------------------------------------------------------------------


def test_distribute_is_prefix_sub_suffix():
    caption = "Renal biopsy. (A) Glomerulus. (B) Tubules. Scale bars, 50 µm."
    plain = split_caption(caption)
    full = split_caption(caption, distribute=True)
    assert full.distributed and not plain.distributed
    assert full.shared_prefix == plain.shared_prefix and full.shared_suffix == plain.shared_suffix
    for p, f in zip(plain.panels, full.panels):
        assert f.subcaption == " ".join(x for x in (plain.shared_prefix, p.subcaption, plain.shared_suffix) if x)
    assert plain.distribute() == full
    assert full.distribute() is full


def test_result_to_dict_and_panel_lookup():
    result = split_caption("(A) Low power. (B) High power. H&E.")
    assert result.to_dict() == {
        "shared_prefix": "", "shared_suffix": "H&E.",
        "panels": [{"label": "A", "subcaption": "Low power."}, {"label": "B", "subcaption": "High power."}],
        "markers": ["(A)", "(B)"],
    }
    assert result.panel("b") == Panel("B", "High power.")  # detector letters are compared case-insensitively
    assert result.panel("(a)") == Panel("A", "Low power.")
    assert result.panel("C") is None and result.panel(None) is None
    assert result.labels == ["A", "B"]


@pytest.mark.parametrize("value", [None, "", "   ", "\n\t"])
def test_empty_captions_give_no_panels(value):
    result = split_caption(value)
    assert result == SplitResult("", "", [], (), None, False)
    assert refine_caption(value) == ""


@pytest.mark.parametrize("caption", [
    "(A) 肿瘤细胞 (B) 坏死",
    "(A) Опухоль с некрозом. (B) Иммуногистохимия.",
    "(A) ورم خبيث. (B) نخر.",
    "(A) 腫瘍 🔬 (B) 壊死 ✓",
    "Ελληνικό κείμενο χωρίς δείκτες.",
    "(A) Tumour\u00a0cells\u200b. (B) Stroma\ufeff.",
])
def test_non_latin_scripts_are_split_without_loss(caption):
    result = split_caption(caption)
    assert result.panels
    joined = " ".join([result.shared_prefix, *(p.subcaption for p in result.panels), result.shared_suffix])
    assert unsupported_words(joined, caption, allowed=()) == []
    refine_caption(caption)


def test_unbalanced_parentheses():
    assert split_caption("(A) Tumour ((B) necrosis").labels == ["A", "B"]
    assert split_caption("(A) Tumour) (B) necrosis)").labels == ["A", "B"]
    assert split_caption(")))(((").labels == [None]
    assert refine_caption("Tumour (see text for details") == "Tumour (see text for details"


# --- hostile inputs: linear time -------------------------------------------------------------------


def _adversarial():
    from pathasst.benchmarks.perf.captions import adversarial_captions

    return adversarial_captions(50_000)


ADVERSARIAL = _adversarial()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_50000_character_captions_finish_fast(name):
    """Each would take minutes with a backtracking rule (a ``(...)+$`` over a long run of
    separators took 9 s here before it became a loop); linear rules take well under a second."""
    text = ADVERSARIAL[name]
    assert len(text) >= 50_000
    result = split_caption(text)
    assert result.panels
    refine_caption(text)


@pytest.mark.timeout(20)
def test_long_real_shaped_caption_is_split_in_full():
    body = " ".join(f"({chr(65 + i % 12)}) Glomerulus number {i} with mesangial expansion." for i in range(1200))
    caption = "Renal biopsy. " + body + " Scale bars, 50 µm."
    assert len(caption) > 50_000
    result = split_caption(caption)
    assert result.labels == list("ABCDEFGHIJKL")  # later repeats of A-L are back-references, not panels
    assert result.shared_prefix == "Renal biopsy."


# --- refine_split -------------------------------------------------------------------------------


def test_refine_split_refines_every_part():
    result = refine_split(split_caption("Figure 1. Biopsy [3]. (A) H and E, x100. (B) PAS (see text). Bar, 50 um."))
    assert result.shared_prefix == "Biopsy."
    assert [p.subcaption for p in result.panels] == ["H&E, ×100.", "PAS."]
    assert result.shared_suffix == "Bar, 50 um."


# --- benchmark -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_benchmark_splitter_section_reports_what_it_promises(tmp_path, capsys):
    from pathasst.benchmarks.perf import captions as bench

    out = tmp_path / "captions.json"
    assert bench.main(["--sections", "splitter", "--captions", "300", "--repeat", "1", "--procs", "2",
                       "--long-chars", "5000", "--json", str(out)]) == 0
    import json

    result = json.loads(out.read_text())["splitter"]
    for key in ("split_per_s_one_core", "split_per_s_per_core", "split_per_s_total", "refine_per_s_one_core",
                "worst_long_split_s", "generated_labels_exact", "captions_with_added_words"):
        assert key in result
    assert result["captions"] == 300 and result["procs"] == 2
    assert result["captions_with_added_words"] == 0
    assert "per core" in capsys.readouterr().out
