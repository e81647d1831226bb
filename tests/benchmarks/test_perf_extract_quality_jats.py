"""The real-article JATS quality benchmark: its data file, its scoring, and a run on a generated article.

The real articles are downloaded by the benchmark, never by the tests (offline); here a generated JATS
article stands in for one, labelled in the data file's format, so every code path but the download runs.
"""

import hashlib
import json
import re

import pytest
import yaml

from pathasst.benchmarks.perf import extract_quality_jats as q
from pathasst.testing.jats import JatsFigure, make_jats_article


def test_the_shipped_labels_are_consistent():
    articles = q.load_labels(q.default_labels())
    assert {a["set"] for a in articles} == {"tuning", "held_out", "held_out_2", "tuning_2", "held_out_3"}
    beyond_plos = [a for a in articles if a["set"] in ("tuning_2", "held_out_3")]
    assert len(beyond_plos) >= 5 and len({a["package"] for a in beyond_plos}) >= 2
    assert not any(a["ids"].get("doi", "").startswith("10.1371/") for a in beyond_plos)  # no PLOS article there
    assert len(articles) >= 15 and sum(len(a["figures"]) for a in articles) >= 60
    assert len({a["name"] for a in articles}) == len(articles)
    assert len({a["package"] for a in articles}) >= 2
    for art in articles:
        assert re.fullmatch(r"[0-9a-f]{64}", art["sha256"]), art["name"]
        assert art["member"].startswith(f"{art['package']}-{art['version']}/"), art["name"]
        assert art["license"] and (art["ids"].get("doi") or art["ids"].get("pmcid"))
        labels = [f["label"] for f in art["figures"] if f["label"] is not None]
        assert len(set(labels)) == len(labels), f"{art['name']}: a figure label twice"
        graphics = [q.placeholder_name(f["graphic"]) for f in art["figures"]]
        negatives = [q.placeholder_name(n["graphic"]) for n in art.get("not_figures") or ()]
        assert len(set(graphics)) == len(graphics) and not set(graphics) & set(negatives), art["name"]
        assert all(n["reason"] for n in art.get("not_figures") or ())
        for fig in art["figures"]:
            assert q._norm(fig["opening"]) and q._norm(fig["closing"]), (art["name"], fig["label"])
            if fig["title"] is not None:  # the opening words are the title's own opening
                assert q._norm(fig["title"]).startswith(q._norm(fig["opening"])) or \
                    q._norm(fig["opening"]).startswith(q._norm(fig["title"])), (art["name"], fig["label"])


def test_load_labels_names_the_article_with_a_bad_entry(tmp_path):
    good = {"name": "a1", "set": "tuning", "package": "p", "version": "1", "member": "p-1/a.xml", "sha256": "0" * 64,
            "ids": {"doi": "10.1/x"}, "license": "CC BY",
            "figures": [{"label": "Figure 1", "title": None, "opening": "A", "closing": "B", "graphic": "g1"}]}
    path = tmp_path / "labels.yaml"
    path.write_text(yaml.safe_dump({"articles": [dict(good, sha256="ABC")]}))
    with pytest.raises(ValueError, match="a1: sha256"):
        q.load_labels(path)
    path.write_text(yaml.safe_dump({"articles": [dict(good, figures=[{"label": "Figure 1"}])]}))
    with pytest.raises(ValueError, match="a1 figure 1 lacks closing, graphic, opening, title"):
        q.load_labels(path)


def test_placeholder_names_follow_the_href_conventions():
    assert q.placeholder_name("info:doi/10.1371/journal.pone.0080518.g001") == "journal.pone.0080518.g001.png"
    assert q.placeholder_name("pone.0046493.g001") == "pone.0046493.g001.jpg"
    assert q.placeholder_name("pone.0000217.e001.jpg") == "pone.0000217.e001.jpg"
    assert q.graphic_hrefs(b'<fig><graphic xlink:href="gr1"/></fig><inline-graphic xlink:href="e1"/><graphic xlink:href="gr1"/>') \
        == ["gr1", "e1"]


def test_caption_matching_needs_the_whole_caption():
    fig = {"opening": "Tubular adenoma", "closing": "(H&E, x200)"}
    assert q.caption_matches("Tubular adenoma.\nLow-grade dysplasia (H&E, ×200).", dict(fig, closing="dysplasia (H&E"))
    assert q.caption_matches("TUBULAR  adenoma. Low-grade dysplasia (H&E, x200).", fig)
    assert not q.caption_matches("Tubular adenoma.", fig)  # truncated: the paragraphs were lost
    assert not q.caption_matches("Low-grade dysplasia (H&E, x200).", fig)  # the title was lost
    assert not q.caption_matches("Villous adenoma. (H&E, x200)", fig)  # another figure's caption


def labelled(article_xml: str, figs, license="CC BY 4.0", **extra):
    data = article_xml.encode("utf-8")
    return dict({
        "name": "generated", "set": "tuning", "package": "none", "version": "0", "member": "none-0/article.nxml",
        "sha256": hashlib.sha256(data).hexdigest(), "ids": {"pmcid": "PMC1234567", "pmid": "31234567",
                                                            "doi": "10.1234/jtp.2024.0042"},
        "license": license,
        "figures": [{"label": f.label, "title": None, "opening": " ".join(f.caption_text.split()[:4]),
                     "closing": " ".join(f.caption_text.split()[-3:]), "graphic": f.graphic} for f in figs],
    }, **extra)


def test_a_generated_article_scores_perfectly_and_wrong_labels_score_low(tmp_path):
    figs = [
        JatsFigure("F1", "Figure 1", "Tubular adenoma.", ["(A) Low-grade dysplasia. (B) Crypts, H&amp;E."], graphic="gr1"),
        JatsFigure("F2", "Figure 2", "Granuloma.", ["Epithelioid histiocytes <xref ref-type=\"bibr\" rid=\"B1\">1</xref>."],
                   graphic="info:doi/10.1234/journal.jtp.g002"),
        JatsFigure("F3", "Fig. 3", "Mitoses.", ["Atypical forms."], graphic="f3.tif"),
    ]
    xml = make_jats_article("PMC1234567", figs, license="CC BY 4.0")
    xml = xml.replace("</body>", '<table-wrap id="T1"><label>Table 1</label><graphic xlink:href="t001"/></table-wrap></body>')
    cache = tmp_path / "cache"
    (cache / "generated").mkdir(parents=True)
    (cache / "generated" / "article.nxml").write_text(xml, encoding="utf-8")
    art = labelled(xml, figs, not_figures=[{"graphic": "t001", "reason": "table set as an image"}])

    results = q.run([art], cache, allow_fetch=False, progress=lambda *_: None)

    res = results["articles"]["generated"]
    assert res["placeholders"] == 4  # three figures and the table image
    assert (res["found"], res["good"], res["records"], res["label_ok"]) == (3, 3, 3, 3)
    assert res["license_ok"] and res["ids_ok"] and res["negatives_yielded"] == []
    total = results["totals"]["tuning"]
    assert (total["figure_recall"], total["pairing_precision"], total["license_accuracy"], total["id_accuracy"]) == (1, 1, 1, 1)
    assert "| tuning | 1 | 3 | 1.0 (3/3) | 1.0 (3/3) |" in q.report(results)

    # the same records against wrong labels: swapped graphics, another licence, another PMCID
    wrong = dict(art, license="CC BY-NC 4.0", ids=dict(art["ids"], pmcid="PMC7654321"))
    wrong["figures"] = [dict(art["figures"][0], graphic="gr9"), art["figures"][1], dict(art["figures"][2], label="Figure 3")]
    records, _ = q.extract_folder(_staged(tmp_path, cache))
    res = q.score(records, wrong)
    assert (res["found"], res["good"], res["label_ok"]) == (2, 2, 1)
    assert not res["license_ok"] and not res["ids_ok"]
    assert [w["graphic"] for w in res["wrong"]] == ["gr1.jpg"]
    # a record made of a non-figure graphic is counted as such
    table_record = dict(records[0], meta=json.dumps({"graphic": "t001.jpg"}))
    assert q.score([table_record], art)["negatives_yielded"] == ["t001.jpg"]


def _staged(tmp_path, cache):
    folder = tmp_path / "staged"
    q.stage_article(cache / "generated" / "article.nxml", folder)
    return folder


def test_a_missing_or_altered_article_is_skipped_not_counted(tmp_path):
    figs = [JatsFigure("F1", "Figure 1", "Tubular adenoma.", ["Dysplasia."], graphic="gr1")]
    xml = make_jats_article("PMC1234567", figs)
    art = labelled(xml, figs)
    results = q.run([art], tmp_path / "empty", allow_fetch=False, progress=lambda *_: None)
    assert results["totals"] == {} and "run with --fetch" in results["skipped"]["generated"]
    (tmp_path / "c" / "generated").mkdir(parents=True)
    (tmp_path / "c" / "generated" / "article.nxml").write_text(xml + " ", encoding="utf-8")
    results = q.run([art], tmp_path / "c", allow_fetch=False, progress=lambda *_: None)
    assert "sha256" in results["skipped"]["generated"] and results["totals"] == {}
    # the shipped labels with an empty cache and no --fetch: every article skipped, exit 1
    assert q.main(["--docs", str(tmp_path / "empty")]) == 1


def test_main_without_articles_in_the_set_is_a_usage_error(tmp_path, capsys):
    assert q.main(["--set", "no_such_set", "--docs", str(tmp_path)]) == 2
    assert "no labelled article" in capsys.readouterr().err


def test_a_figure_printed_without_a_label_is_labelled_none():
    fig = {"label": None, "title": "Synopsis image", "opening": "Synopsis image", "closing": "of the week",
           "graphic": "info:doi/10.1371/journal.pbio.0000001.g001"}
    art = {"figures": [fig], "license": "CC BY", "ids": {"doi": "10.1371/journal.pbio.0000001"}}
    record = {"figure_label": None, "caption_raw": "Synopsis image\nCover of the week", "license": "CC BY",
              "source_id": "doi:10.1371/journal.pbio.0000001",
              "meta": json.dumps({"graphic": "journal.pbio.0000001.g001.png", "doi": "10.1371/journal.pbio.0000001"})}
    res = q.score([record], art)
    assert (res["found"], res["good"], res["label_ok"], res["license_ok"], res["ids_ok"]) == (1, 1, 1, True, True)
    assert q.score([dict(record, figure_label="Figure 1")], art)["label_ok"] == 0
