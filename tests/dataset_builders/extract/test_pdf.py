"""`pathasst extract pdf` on generated PDFs whose ground truth is known (pathasst.testing.pdfs).

End to end through the CLI, then `datasets.load_dataset` on the output folder: every figure found
on its page with its box, paired with its own caption, every input accounted for (records +
ledger), resumable, identical with several processes, splittable with --shard.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

pymupdf = pytest.importorskip("pymupdf")

from pathasst.benchmarks.perf import extract_pdf as bench  # noqa: E402
from pathasst.cli import main  # noqa: E402
from pathasst.dataset_builders.extract.common import clean_text  # noqa: E402
from pathasst.dataset_builders.extract.pdf import SOURCE, PdfConfig  # noqa: E402
from pathasst.errors import InputError  # noqa: E402

TOL = 3.0  # points: "the figure box within a few points"


# --- helpers ---------------------------------------------------------------------------------


def extract(inputs, out: Path, *extra: str) -> dict:
    rc = main(["extract", "pdf", *map(str, inputs), "--out", str(out), *extra])
    assert rc == 0
    return json.loads((out / "summary.json").read_text())


def load_records(out: Path, tmp_path: Path) -> list[dict]:
    """Every row of every split, as ``datasets.load_dataset`` reads the folder (images as bytes)."""
    import datasets

    dd = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    rows = []
    for split in dd.values():
        split = split.cast_column("image", datasets.Image(decode=False))
        rows.extend(split)
    return sorted(rows, key=lambda r: r["id"])


def ledger(out: Path) -> list[dict]:
    path = out / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def box(xywh) -> tuple:
    return (xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3])


def near(a, b, tol: float = TOL) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def encrypted_copy(src: Path, dest: Path) -> Path:
    doc = pymupdf.open(src)
    doc.save(dest, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="reader", owner_pw="owner")
    doc.close()
    return dest


def text_only_pdf(pdf_factory, name: str = "text.pdf") -> Path:
    p = pdf_factory.Page(texts=[pdf_factory.Text((56, 70, 539, 780), None, seed=5)], header="Preface", footer="ix",
                         logo=True)
    return pdf_factory([p, p], name).path


def corrupt_embedded_image(path: Path, page: int = 0) -> None:
    """Keep the first image's JPEG header and drop two thirds of its data (a truncated stream)."""
    doc = pymupdf.open(path)
    xref = doc[page].get_image_info(xrefs=True)[0]["xref"]
    raw = doc.xref_stream_raw(xref)
    doc.update_stream(xref, raw[: len(raw) // 3], compress=0)
    doc.xref_set_key(xref, "Filter", "/DCTDecode")
    tmp = path.with_suffix(".tmp")
    doc.save(tmp)
    doc.close()
    tmp.replace(path)


# --- the sample book end to end --------------------------------------------------------------


@pytest.fixture(scope="module")
def book_run(tmp_path_factory):
    """The factory's sample book through the CLI once; shared by the checks below."""
    from pathasst.testing.pdfs import make_pdf, sample_book_pages

    tmp = tmp_path_factory.mktemp("book")
    truth = make_pdf(tmp / "book.pdf", sample_book_pages())
    out = tmp / "caps"
    summary = extract([truth.path], out)
    return truth, out, summary, load_records(out, tmp), tmp


def test_sample_book_pairs_match_ground_truth(book_run):
    truth, out, summary, rows, _ = book_run
    digest = sha256(truth.path)
    assert len(rows) == len(truth.figures) == 6
    assert ledger(out) == []  # every figure found and captioned: nothing to explain
    for fig in truth.figures:
        row = next(r for r in rows if r["page"] == fig.page_number)
        assert near(box(row["page_bbox"]), fig.bbox), (fig.figure_id, row["page_bbox"], fig.bbox)
        assert clean_text(row["caption_raw"]) == clean_text(fig.caption)
        assert row["figure_label"] == fig.label
        assert row["source"] == "book" and row["source_id"] == f"{digest}#p{fig.page_number}"
        assert row["id"] == row["figure_id"] and row["figure_id"].startswith(f"{digest[:16]}/p{fig.page_number}/f")
        assert row["license"] == "unknown" and row["noncommercial"] is None
        meta = json.loads(row["meta"])
        assert meta["file"] == "book.pdf" and meta["dpi"] > 0 and "licen" in meta["license_note"]
        assert meta["caption_pairing"] in ("below", "above", "facing-next")
        assert row["image"]["bytes"] and row["width"] > 0 and len(row["phash"]) == 16


def test_sample_book_layouts_are_recognised(book_run):
    truth, _, _, rows, _ = book_run
    by_label = {r["figure_label"]: r for r in rows}
    meta = {label: json.loads(r["meta"]) for label, r in by_label.items()}
    assert meta["FIGURE 12-4"]["caption_pairing"] == "above"
    assert meta["Figure 7.3"]["caption_pairing"] == "facing-next" and meta["Figure 7.3"]["caption_page"] == 7
    assert by_label["Figure 7.3"]["page"] == 6
    # vector drawing: rendered at the configured dpi, box grown over its tick labels
    vec = by_label["Figure 3.1"]
    assert meta["Figure 3.1"]["pixels"] == "rendered" and meta["Figure 3.1"]["dpi"] == 200
    assert abs(vec["width"] - vec["page_bbox"][2] * 200 / 72) <= 2
    # compound figure: one record, each placed image kept as a candidate panel
    comp = truth.figure("p5-f1")
    panels = meta["Figure 5"]["panels_pt"]
    assert len(panels) == len(comp.panels) == 4
    for got, want in zip(sorted(map(box, panels)), sorted(p.bbox for p in comp.panels)):
        assert near(got, want, 1.0)
    w, h = by_label["Figure 5"]["width"], by_label["Figure 5"]["height"]
    for x, y, pw, ph in meta["Figure 5"]["panel_candidates"]:  # the same panels in the record's pixels
        assert 0 <= x and 0 <= y and x + pw <= w + 1 and y + ph <= h + 1
    # the panel letters of the text layer, for the subfigure stage (curate detect)
    letters = {s["text"]: s["bbox"] for s in meta["Figure 5"]["text_spans"]}
    assert set(letters) == {p.label for p in comp.panels} == {"A", "B", "C", "D"}
    x, y, _, _ = letters["D"]
    assert x > w / 2 and y > h / 2  # D sits in the bottom-right panel, in the image's pixels
    # a single placed image shown as stored is the embedded file itself, byte for byte
    single = by_label["Figure 2.5"]
    assert meta["Figure 2.5"]["pixels"] == "embedded"
    with pymupdf.open(truth.path) as doc:
        assert single["image"]["bytes"] == doc.extract_image(meta["Figure 2.5"]["xref"])["image"]


def test_running_heads_logos_are_not_figures_or_captions(book_run):
    truth, _, _, rows, _ = book_run
    assert truth.decoys and all(d.kind == "logo" for d in truth.decoys)
    for decoy in truth.decoys:
        assert not any(r["page"] == decoy.page_index + 1 and near(box(r["page_bbox"]), decoy.bbox, 10) for r in rows)
    heads = {t.text for t in truth.texts if t.role in ("header", "footer")}
    assert not any(line.strip() in heads for r in rows for line in r["caption_raw"].splitlines())
    assert not any(t.text in r["caption_raw"] for r in rows for t in truth.texts if t.role == "header")


def test_resume_adds_nothing_twice(book_run, tmp_path):
    truth, out, first, rows, _ = book_run
    again = extract([truth.path], out)
    assert again["records"] == first["records"] and again["rejected"] == first["rejected"] == 0
    rows2 = load_records(out, tmp_path)
    assert [r["id"] for r in rows2] == [r["id"] for r in rows] and len({r["id"] for r in rows2}) == len(rows2)


# --- the quality book: the layouts the factory's sample lacks --------------------------------


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    case = bench.build_quality_book(tmp / "quality.pdf")
    out = tmp / "caps"
    extract([case.path], out)
    return case, out, load_records(out, tmp), ledger(out)


def test_quality_book_every_figure_found_and_paired(quality_run):
    case, _, rows, rejects = quality_run
    scores = bench.score(case, rows, [(x["id"], x["reason"], x) for x in rejects], tol=TOL)
    wrong = [d for d in scores["details"] if not d["right"]]
    assert wrong == []
    assert scores["figure_recall"] == scores["pair_precision"] == scores["pair_recall"] == 1.0
    assert len(rows) == sum(f.caption is not None for f in case.figures)  # no stray records (table, icons)


def test_quality_book_captions_beside_over_blocks_and_facing(quality_run):
    case, _, rows, _ = quality_run
    got = {json.loads(r["meta"])["caption_pairing"] for r in rows}
    assert {"below", "above", "left", "right", "facing-next", "facing-previous"} <= got

    def row_for(name):
        exp = next(f for f in case.figures if f.name == name)
        return next(r for r in rows if r["page"] == exp.page and near(box(r["page_bbox"]), exp.bbox))

    assert json.loads(row_for("beside-right")["meta"])["caption_pairing"] == "right"
    assert json.loads(row_for("beside-left")["meta"])["caption_pairing"] == "left"
    two = row_for("two-blocks")
    assert two["caption"].endswith("vascular invasion is common (H&E, x100).")  # the second text block
    assert two["caption_raw"].count("\n") >= 1  # line breaks as printed
    assert json.loads(row_for("facing-previous")["meta"])["caption_pairing"] == "facing-previous"
    assert row_for("plate")["figure_label"] == "Plate 7"
    cont = row_for("continued")
    assert cont["figure_label"] == "Figure 3" and json.loads(cont["meta"])["continued"] is True
    assert row_for("label-alone")["figure_label"] == "FIGURE 8.3"
    lig = row_for("ligatures")
    assert "fibrosis with flattened" in lig["caption_raw"] and "\ufb01" not in lig["caption_raw"]
    assert row_for("body-reference")["caption"].startswith("Sarcoidosis")
    comp = json.loads(row_for("compound-1x3")["meta"])
    assert comp["kind"] == "compound" and len(comp["panel_candidates"]) == 3 and "text_spans" not in comp


def test_quality_book_ledger_explains_what_produced_nothing(quality_run):
    case, _, rows, rejects = quality_run
    reasons = [x["reason"] for x in rejects]
    kinds = sorted(r.split(":", 1)[0] for r in reasons)
    assert kinds == ["no caption", "no figure", "table"], reasons  # the ruled table is seen, and said to be one
    uncaptioned = next(f for f in case.figures if f.caption is None)
    line = next(x for x in rejects if x["reason"].startswith("no caption"))
    assert line["page"] == uncaptioned.page and near(box(line["page_bbox"]), uncaptioned.bbox)
    orphan_page, orphan_start = case.orphan_captions[0]
    line = next(x for x in rejects if x["reason"].startswith("no figure"))
    assert line["page"] == orphan_page and orphan_start in line["reason"] and line["id"].endswith("/c2")
    assert "Table 2.1" in next(r for r in reasons if r.startswith("table"))
    # inputs = records + rejects: every figure, figure caption and drawn table of the book is accounted
    assert len(rows) + len(rejects) == len(case.figures) + len(case.orphan_captions) + 1


# --- bad input, accounting, scale ------------------------------------------------------------


def test_bad_pdfs_are_ledger_lines_and_the_run_goes_on(pdf_factory, tmp_path):
    folder = tmp_path / "in"
    good = pdf_factory([pdf_factory.caption_below_page(), pdf_factory.vector_figure_page()], "good.pdf")
    folder.mkdir()
    shutil.copy(good.path, folder / "good.pdf")
    (folder / "nested").mkdir()
    shutil.copy(good.path, folder / "nested" / "same bytes.PDF")
    encrypted_copy(good.path, folder / "locked.pdf")
    (folder / "garbage.pdf").write_bytes(b"%PDF-1.7\nthis is not a pdf at all\n")
    (folder / "empty.pdf").write_bytes(b"")
    data = good.path.read_bytes()
    (folder / "truncated.pdf").write_bytes(data[: len(data) // 20])
    shutil.copy(text_only_pdf(pdf_factory), folder / "text.pdf")
    (folder / "notes.txt").write_text("not an input: only *.pdf files are read from a folder")

    out = tmp_path / "caps"
    summary = extract([folder], out)
    rows = load_records(out, tmp_path)
    rejects = ledger(out)
    by_file = {x["file"]: x for x in rejects}
    assert len(rows) == 2 and {r["figure_label"] for r in rows} == {"Figure 2.5", "Figure 3.1"}
    assert by_file["locked.pdf"]["reason"].startswith("encrypted: locked.pdf needs a password")
    assert by_file["garbage.pdf"]["reason"].startswith("corrupt pdf")
    assert by_file["empty.pdf"]["reason"].startswith("corrupt pdf")
    assert by_file["truncated.pdf"]["reason"].startswith("corrupt pdf")
    assert by_file["text.pdf"]["reason"].startswith("no figures: text.pdf has 2 page(s)")
    assert by_file["same bytes.PDF"]["reason"].startswith("duplicate: same bytes as good.pdf")
    # inputs = records + rejects: seven PDFs in, one gave records, six are explained
    assert summary["inputs_done"] == 7 and len(rejects) == 6
    assert {r["source_id"].split("#")[0] for r in rows} == {sha256(good.path)}


def test_a_bad_embedded_image_costs_only_its_figure(pdf_factory, tmp_path):
    truth = pdf_factory([pdf_factory.caption_below_page(seed=1),
                         pdf_factory.caption_below_page("Figure 2.6: Gastric ulcer base with granulation tissue.", seed=2)])
    corrupt_embedded_image(truth.path, page=0)
    out = tmp_path / "caps"
    extract([truth.path], out)
    rows, rejects = load_records(out, tmp_path), ledger(out)
    assert [r["figure_label"] for r in rows] == ["Figure 2.6"]
    assert len(rejects) == 1 and rejects[0]["reason"].startswith("truncated image") and rejects[0]["page"] == 1


def test_truncated_pdf_keeps_what_it_can(pdf_factory, tmp_path):
    truth = pdf_factory.sample_book()
    data = truth.path.read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(data[: len(data) // 2])
    result = SOURCE.extract_unit(next(iter(SOURCE.iter_units([str(cut)], PdfConfig()))), PdfConfig())
    assert result.records or result.rejects  # accounted either way
    for rec in result.records:  # what was recovered is right, and says the file was repaired
        fig = next(f for f in truth.figures if f.page_number == rec["page"])
        assert near(box(rec["page_bbox"]), fig.bbox) and "repaired" in json.loads(rec["meta"])
    assert all(r[1].split(":")[0] in ("damaged page", "corrupt page", "no caption", "no figure", "corrupt pdf")
               for r in result.rejects)


@pytest.mark.slow  # two worker processes import pymupdf (and its layout model): a few seconds
def test_num_proc_2_gives_the_same_records(pdf_factory, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, pages in enumerate(([pdf_factory.caption_below_page(seed=1)], [pdf_factory.compound_figure_page(seed=2)],
                               [pdf_factory.vector_figure_page(seed=3)], pdf_factory.facing_caption_pages(seed=4))):
        shutil.copy(pdf_factory(pages, f"b{i}.pdf").path, folder / f"b{i}.pdf")
    shutil.copy(text_only_pdf(pdf_factory), folder / "text.pdf")
    one, two = tmp_path / "one", tmp_path / "two"
    extract([folder], one)
    extract([folder], two, "--num-proc", "2")

    def key(rows):
        return sorted((r["id"], r["caption_raw"], tuple(r["page_bbox"]), r["phash"], r["image"]["bytes"]) for r in rows)

    assert key(load_records(one, tmp_path)) == key(load_records(two, tmp_path))
    assert sorted(x["id"] for x in ledger(one)) == sorted(x["id"] for x in ledger(two))


def test_shards_cover_all_pdfs_disjointly(pdf_factory, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        page = pdf_factory.caption_below_page(f"Figure {i + 1}.1: Specimen number {i + 1} (H&E).", seed=10 + i)
        shutil.copy(pdf_factory([page], f"b{i}.pdf").path, folder / f"b{i}.pdf")
    whole, s1, s2 = tmp_path / "whole", tmp_path / "s1", tmp_path / "s2"
    extract([folder], whole)
    extract([folder], s1, "--shard", "1/2")
    extract([folder], s2, "--shard", "2/2")
    books = [{r["source_id"].split("#")[0] for r in load_records(o, tmp_path)} for o in (whole, s1, s2)]
    assert len(books[0]) == 6 and books[1] and books[2]
    assert books[1] | books[2] == books[0] and not books[1] & books[2]


# --- settings ----------------------------------------------------------------------------------


def test_licence_given_stated_or_unknown(pdf_factory, tmp_path):
    truth = pdf_factory([pdf_factory.caption_below_page()], "a.pdf")
    cfg = PdfConfig(license="CC BY 4.0")
    rec = SOURCE.extract_unit(next(iter(SOURCE.iter_units([str(truth.path)], cfg))), cfg).records[0]
    assert (rec["license"], rec["noncommercial"]) == ("CC BY 4.0", False) and "license_note" not in json.loads(rec["meta"])
    # a Creative Commons licence in the PDF's XMP metadata wins over the default
    doc = pymupdf.open(truth.path)
    doc.set_xml_metadata('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                         '<rdf:Description xmlns:cc="http://creativecommons.org/ns#" '
                         'cc:license="https://creativecommons.org/licenses/by-nc/4.0/"/></rdf:RDF></x:xmpmeta>')
    stated = tmp_path / "stated.pdf"
    doc.save(stated)
    rec = SOURCE.extract_unit(next(iter(SOURCE.iter_units([str(stated)], cfg))), cfg).records[0]
    assert (rec["license"], rec["noncommercial"]) == ("CC BY-NC 4.0", True)


def test_render_mode_dpi_and_max_side(pdf_factory):
    truth = pdf_factory([pdf_factory.caption_below_page()])
    fig = truth.figures[0]
    cfg = PdfConfig(pixels="render", dpi=100)
    rec = SOURCE.extract_unit(next(iter(SOURCE.iter_units([str(truth.path)], cfg))), cfg).records[0]
    meta = json.loads(rec["meta"])
    assert meta["pixels"] == "rendered" and meta["dpi"] == 100
    assert abs(rec["width"] - (fig.bbox[2] - fig.bbox[0]) * 100 / 72) <= 2
    cfg = PdfConfig(pixels="render", dpi=600, max_side=512)  # never renders more than it keeps
    rec = SOURCE.extract_unit(next(iter(SOURCE.iter_units([str(truth.path)], cfg))), cfg).records[0]
    assert max(rec["width"], rec["height"]) <= 512 and json.loads(rec["meta"])["dpi"] < 600


def test_small_figures_and_label_only_captions(pdf_factory):
    page = pdf_factory.Page(figures=[
        pdf_factory.Figure((56, 100, 86, 130), "Figure 1: A thumbnail smaller than min_figure_side.", seed=1,
                           caption_rect=(56, 138, 400, 156)),
        pdf_factory.Figure((56, 300, 539, 500), "Figure 2.", seed=2),
    ])
    truth = pdf_factory([page])
    result = SOURCE.extract_unit(next(iter(SOURCE.iter_units([str(truth.path)], PdfConfig()))), PdfConfig())
    reasons = sorted(r[1] for r in result.rejects)
    assert not result.records
    assert reasons[0].startswith("empty caption") and reasons[1].startswith("no figure: caption 'Figure 1")
    small = SOURCE.extract_unit(next(iter(SOURCE.iter_units([str(truth.path)], PdfConfig(min_figure_side=20)))),
                                PdfConfig(min_figure_side=20))
    assert [r["figure_label"] for r in small.records] == ["Figure 1"]


def test_units_keys_and_config_checks(pdf_factory, tmp_path):
    truth = pdf_factory([pdf_factory.caption_below_page()], "one.pdf")
    units = list(SOURCE.iter_units([str(truth.path.parent)], PdfConfig()))
    assert [u.key for u in units] == [f"pdf:{sha256(truth.path)}"] and units[0].label == "one.pdf"
    with pytest.raises(InputError, match="not found"):
        list(SOURCE.iter_units([str(tmp_path / "missing.pdf")], PdfConfig()))
    for bad in ({"method": "ocr"}, {"dpi": 10}, {"header_footer_margin": 0.7}, {"pixels": "xref"}):
        with pytest.raises(ValueError):
            PdfConfig(**bad)
    assert main(["extract", "pdf", str(truth.path), "--out", str(tmp_path / "o"), "method=ocr"]) != 0


# --- the layout model and the method comparison ----------------------------------------------


@pytest.mark.slow  # loads pymupdf's layout model (ONNX) and runs it on every page: ~10 s
def test_geometry_beats_layout_on_the_quality_book(tmp_path):
    scores = bench.run_quality(["geometry", "layout"], tmp_path)
    geo, lay = scores["geometry"], scores["layout"]
    assert geo["figure_recall"] >= 0.95 and geo["pair_precision"] >= 0.95
    assert lay["records"] > 0 and lay["figure_recall"] > 0.5  # the layout path works end to end
    assert (geo["figure_recall"], geo["pair_precision"], geo["pair_recall"]) >= (
        lay["figure_recall"], lay["pair_precision"], lay["pair_recall"])  # why geometry is the default
    assert PdfConfig().method == "geometry"


@pytest.mark.slow
def test_layout_method_through_the_cli(pdf_factory, tmp_path):
    truth = pdf_factory([pdf_factory.caption_below_page(), pdf_factory.vector_figure_page()])
    out = tmp_path / "caps"
    extract([truth.path], out, "method=layout")
    rows = load_records(out, tmp_path)
    assert {r["figure_label"] for r in rows} == {"Figure 2.5", "Figure 3.1"}
    assert all(json.loads(r["meta"])["method"] == "layout" for r in rows)


@pytest.mark.slow
def test_speed_benchmark_runs_and_reports(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert bench.main(["--pages", "14", "--repeat", "1", "--no-quality", "--out-dir", str(tmp_path / "w"),
                       "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())["speed"]
    assert res["pages"] == 14 and res["figures"] == 12 and res["records_written"] == 12
    assert {"raw", "analyse", "extract_unit", "extract_pdf"} <= set(res["contenders"])
    assert "extract_pdf / raw (cpu)" in res["ratios"] and "ratios" in capsys.readouterr().out


@pytest.mark.slow  # two fresh processes extract a 14-page book
def test_memory_benchmark_runs_both_ways(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert bench.main(["--no-speed", "--no-quality", "--memory", "12", "--out-dir", str(tmp_path / "w"),
                       "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())["memory"]
    assert res["figures"] == res["whole"]["records"] == res["streamed"]["records"] == 12 and res["pages"] == 14
    assert all(res[m]["peak_rss_mb"] >= res[m]["baseline_mb"] > 0 for m in ("whole", "streamed"))
    assert "streamed  peak RSS" in capsys.readouterr().out


def test_rotated_pages_are_read_as_shown(pdf_factory, tmp_path):
    truth = pdf_factory([pdf_factory.caption_below_page(), pdf_factory.vector_figure_page()])
    doc = pymupdf.open(truth.path)
    for page in doc:
        page.set_rotation(90)  # a landscape spread stored as rotated portrait pages
    rotated = tmp_path / "rotated.pdf"
    doc.save(rotated)
    cfg = PdfConfig()
    result = SOURCE.extract_unit(next(iter(SOURCE.iter_units([str(rotated)], cfg))), cfg)
    assert [r["figure_label"] for r in result.records] == ["Figure 2.5", "Figure 3.1"] and not result.rejects
    for rec, fig in zip(result.records, truth.figures):
        w_pt, h_pt = fig.bbox[2] - fig.bbox[0], fig.bbox[3] - fig.bbox[1]
        assert abs(rec["page_bbox"][2] - h_pt) < TOL and abs(rec["page_bbox"][3] - w_pt) < TOL  # turned as shown
        assert rec["height"] > rec["width"]  # and the pixels turned with it


# --- real-document layouts (causes of the misses on the tuning_3 vignettes) -----------------------


def _run(truth, cfg: PdfConfig | None = None):
    """Extract one PDF in memory: a factory's ``PdfTruth`` or a path."""
    cfg = cfg or PdfConfig()
    path = getattr(truth, "path", truth)
    return SOURCE.extract_unit(next(iter(SOURCE.iter_units([str(path)], cfg))), cfg)


def _one_record_covering(result, fig, side: str = "below") -> dict:
    assert [r["figure_label"] for r in result.records] == [fig.label], result.rejects
    assert not [r for r in result.rejects if r[1].startswith(("no caption", "no figure"))], result.rejects
    rec = result.records[0]
    got = box(rec["page_bbox"])
    assert got[0] <= fig.bbox[0] + TOL and got[1] <= fig.bbox[1] + TOL
    assert got[2] >= fig.bbox[2] - TOL and got[3] >= fig.bbox[3] - TOL, (got, fig.bbox)
    assert json.loads(rec["meta"])["caption_pairing"] == side
    assert clean_text(rec["caption_raw"]) == clean_text(fig.caption)
    return rec


def _body(pdf_factory, y0: float, y1: float, seed: int = 3):
    # the body in Times, as LaTeX documents set it; the plots label in Helvetica
    return pdf_factory.Text((56, y0, 539, y1), None, fontname="tiro", seed=seed)


def _alone_on_a_page(pdf_factory, fig, body_from: float) -> dict:
    """``fig`` on a page of its own with body text from ``body_from`` down: one record, covering it."""
    truth = pdf_factory([pdf_factory.Page(figures=[fig], texts=[_body(pdf_factory, body_from, 700)])])
    return _one_record_covering(_run(truth), truth.figures[0])


def test_axis_title_in_the_plots_font_a_line_below_the_ticks(pdf_factory):
    # paper2JSS: "data in log scale" set larger than the body and 12 points under the tick labels
    fig = pdf_factory.Figure((200, 120, 400, 300), "Figure 4: CDF plot to compare the fit of four distributions.",
                             kind="vector", axis_title="data in log scale", axis_title_size=10.6, axis_title_gap=12)
    _alone_on_a_page(pdf_factory, fig, body_from=400)


def test_a_row_of_numbers_is_tick_labels_not_body_text(pdf_factory):
    # twinstim: a map's x axis "4100 4200 ... 4600" set as one line across the plot
    fig = pdf_factory.Figure((150, 120, 330, 300), "Figure 6: Epidemic proportion by district.", kind="vector",
                             tick_row=True)
    _alone_on_a_page(pdf_factory, fig, body_from=400)


def test_subcaptions_under_a_row_of_plots_and_one_caption(pdf_factory):
    # twinSIR, hhh4_spacetime, monitoringCounts: "(a) ..." under each plot, the caption under all
    fig = pdf_factory.Figure((90, 110, 505, 330), "Figure 4: Diagnostic plots for the twinSIR model formulated in "
                             "Equation 4.", kind="row", grid=(1, 2),
                             subcaptions=["(a) Epidemic proportion.", "(b) Transformed residuals."],
                             caption_rect=(110, 345, 500, 366), caption_fontsize=10.9)
    truth = pdf_factory([pdf_factory.Page(figures=[fig], texts=[_body(pdf_factory, 400, 700)])])
    rec = _one_record_covering(_run(truth), truth.figures[0])
    assert json.loads(rec["meta"])["kind"] == "vector"


def test_a_row_of_narrow_panels_under_one_caption(pdf_factory):
    # monitoringCounts p24, hhh4_spacetime p14: five narrow plots, axis titles nearly as wide as each
    fig = pdf_factory.Figure((90, 110, 505, 320), "Figure 12: Monthly proportions in five age groups.", kind="row",
                             grid=(1, 5), panel_gap=14, axis_title="Time (months)", axis_title_size=9.5,
                             axis_title_gap=4)
    _alone_on_a_page(pdf_factory, fig, body_from=420)


def test_two_figures_side_by_side_keep_their_own_captions(pdf_factory):
    # the row rule must not join figures that each have a caption of their own
    figs = [pdf_factory.Figure((60, 110, 280, 300), "Figure 1: The left one.", kind="vector", seed=1),
            pdf_factory.Figure((315, 110, 535, 300), "Figure 2: The right one.", kind="vector", seed=2)]
    truth = pdf_factory([pdf_factory.Page(figures=figs, texts=[_body(pdf_factory, 420, 700)])])
    result = _run(truth)
    assert sorted(r["figure_label"] for r in result.records) == ["Figure 1", "Figure 2"]
    for rec, fig in zip(sorted(result.records, key=lambda r: r["figure_label"]), truth.figures):
        assert near(box(rec["page_bbox"]), fig.bbox, 6.0)


def test_sideways_caption_is_below_its_figure_as_read(pdf_factory):
    # constparty: a sideways float, the caption set bottom to top at the right of the page
    fig = pdf_factory.Figure((120, 100, 440, 740), "Figure 2: A tree of the Titanic data.", "sideways", seed=4)
    truth = pdf_factory([pdf_factory.Page(figures=[fig])])
    rec = _one_record_covering(_run(truth), truth.figures[0], side="below")
    assert json.loads(rec["meta"])["caption_bbox"][0] > 440  # on the page it is at the right


# --- real-document layouts (causes of the misses on the tuning_4 vignettes) -----------------------


def test_a_page_that_is_nearly_all_plot_still_knows_the_body_font(pdf_factory):
    # bit-performance: a page holding one plot and its caption; the plot's Helvetica labels outnumber
    # the caption's Times, and its legend line sits two and a half lines under the tick labels. The
    # body's font is the document's (the text pages before), so the legend is the plot's labelling.
    legend = "l='logical'  b='bit'  w='bitwhich'        % of max(R) in all scenarios"
    fig = pdf_factory.Figure((120, 200, 480, 440), "Figure 1: Timings relative to R.", kind="vector",
                             axis_title=legend, axis_title_size=12, axis_title_gap=20, caption_font="tiro",
                             caption_fontsize=10, caption_rect=(72, 490, 523, 512))
    truth = pdf_factory([pdf_factory.Page(texts=[_body(pdf_factory, 80, 760)]), pdf_factory.Page(figures=[fig])])
    _one_record_covering(_run(truth), truth.figures[0])


def test_a_caption_line_split_by_inline_math_stays_one_caption(pdf_factory):
    # partial-residuals: "... model y ~ x" | "1 + x2 + x3, with / moderately correlated predictors." the
    # subscript starts a text block of its own; left out, its lines stood between caption and figure
    fig = pdf_factory.Figure((90, 150, 500, 330), "Figure 5: Predictor effect displays with partial residuals for the "
                             "individual predictors in the incorrect model y ~ x 1 + x2 + x3, with moderately "
                             "correlated predictors.", kind="vector", caption_position="above",
                             caption_break="1 + x2", caption_font="tiro", caption_fontsize=10,
                             caption_rect=(90, 80, 420, 140))
    truth = pdf_factory([pdf_factory.Page(figures=[fig], texts=[_body(pdf_factory, 420, 700)])])
    import pymupdf

    with pymupdf.open(truth.path) as doc:  # the fixture does split the caption in two blocks
        blocks = [b for b in doc[0].get_text("dict")["blocks"] if b["bbox"][3] < 145 and b.get("lines")]
    assert len(blocks) == 2
    _one_record_covering(_run(truth), truth.figures[0], side="above")


def test_points_drawn_as_characters_do_not_make_a_plot_a_text_frame(pdf_factory):
    # jss15: Geweke plots with pch = "+": rows of "+" cover the plot; it is a figure, not a sidebar
    fig = pdf_factory.Figure((120, 120, 470, 330), "Figure 4: Geweke diagnostics of the chains.", kind="vector",
                             text_markers=True)
    _alone_on_a_page(pdf_factory, fig, body_from=420)


def test_small_multiples_narrower_than_the_figure_minimum_are_one_figure(pdf_factory):
    # mcmc demo: a 5 x 5 matrix of autocorrelation plots, each under 40 points wide
    fig = pdf_factory.Figure((150, 200, 441, 392), "Figure 2: Autocorrelation plot of MCMC output.", kind="row",
                             grid=(4, 5), panel_gap=4)  # each plot's drawing about 25 x 23 points
    _alone_on_a_page(pdf_factory, fig, body_from=460)
    alone = pdf_factory.Figure((180, 250, 235, 295), None, kind="vector")  # one such plot alone is a decoration
    result = _run(pdf_factory([pdf_factory.Page(figures=[alone], texts=[_body(pdf_factory, 460, 700)])]))
    assert not result.records and not [r for r in result.rejects if r[1].startswith("no caption")]


def test_a_number_alone_under_a_plot_is_its_axis_title_not_body_text(pdf_factory):
    # tikzDevice: the plot typeset in the body's own font and size, its x-axis title "1" a line and
    # a half under the tick labels; as body text it stood between the plot and its caption
    fig = pdf_factory.Figure((150, 120, 400, 300), "Figure 2: Output from tikz().", kind="vector", axis_title="1",
                             axis_title_size=10, axis_title_gap=10)
    body = pdf_factory.Text((56, 420, 539, 700), None, fontname="helv", seed=3)  # the plot's font and size
    truth = pdf_factory([pdf_factory.Page(figures=[fig], texts=[body])])
    result = _run(truth)
    _one_record_covering(result, truth.figures[0])


def test_a_caption_across_wide_white_is_still_its_figures(pdf_factory):
    # spacetime jss816: the plot exported with empty space under it, its caption 105 points down
    fig = pdf_factory.Figure((150, 120, 440, 260), "Figure 11: EOFs of space-time interpolations of wind.",
                             kind="vector", caption_rect=(80, 370, 520, 392))
    truth = pdf_factory([pdf_factory.Page(figures=[fig], texts=[_body(pdf_factory, 420, 700)])])
    rec = _one_record_covering(_run(truth), truth.figures[0])
    assert json.loads(rec["meta"])["caption_distance"] > PdfConfig().caption_max_distance
    # with a paragraph printed in the white, the two stay apart
    gap_text = pdf_factory.Text((56, 300, 539, 340), None, fontname="tiro", seed=5)
    result = _run(pdf_factory([pdf_factory.Page(figures=[fig], texts=[gap_text, _body(pdf_factory, 420, 700)])]))
    assert not result.records


# --- a big PDF is written in pieces (memory flat per PDF) ------------------------------------------


def _units(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ".pathasst" / "units.jsonl").read_text().splitlines()]


@pytest.mark.slow  # the sample book four times through the CLI: ~30 s
def test_a_pdf_is_written_in_pieces_with_facing_pairs_intact(pdf_factory, tmp_path, monkeypatch):
    from pathasst.dataset_builders.extract import pdf as pdf_mod

    truth = pdf_factory.sample_book()
    whole = tmp_path / "whole"
    extract([truth.path], whole)
    monkeypatch.setattr(pdf_mod, "CHUNK_FIGURES", 2)
    pieces = list(pdf_mod.extract_chunks(next(iter(SOURCE.iter_units([str(truth.path)], PdfConfig()))), PdfConfig()))
    assert len(pieces) >= 3 and all(not p.rejects for p in pieces[:-1])  # ledger lines come last
    assert all(len(p.records) <= 2 + 2 for p in pieces)  # two, plus the figures of the page that crossed it
    pages = [{r["page"] for r in p.records} for p in pieces]
    assert all(max(a) < min(b) for a, b in zip(pages, pages[1:]) if a and b)  # whole pages, in order
    split = tmp_path / "split"
    extract([truth.path], split)
    for one in (1, 2):  # in this process, and through the spool of worker processes
        out = split if one == 1 else tmp_path / "split2"
        if one == 2:
            extract([truth.path], out, "--num-proc", "2")
        units = _units(out)
        key = f"pdf:{sha256(truth.path)}"
        assert [u["unit"] for u in units] == [f"{key}#part{k}" for k in range(len(units) - 1)] + [key]
        assert sum(u["records"] for u in units) == len(load_records(whole, tmp_path))

    def rows(folder):
        return sorted((r["id"], r["caption_raw"], r["meta"], r["image"]["bytes"]) for r in load_records(folder, tmp_path))

    assert rows(split) == rows(whole) == rows(tmp_path / "split2")  # facing pairs across pieces too
    assert any('"facing-' in r[2] for r in rows(split))
    assert sorted(x["id"] for x in ledger(split)) == sorted(x["id"] for x in ledger(whole))


def test_an_interrupted_pdf_resumes_without_writing_a_piece_twice(pdf_factory, tmp_path, monkeypatch):
    from pathasst.dataset_builders.extract import pdf as pdf_mod

    truth = pdf_factory.sample_book()
    monkeypatch.setattr(pdf_mod, "CHUNK_FIGURES", 2)
    real, calls = pdf_mod._record, []

    def stop_at_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C part way through the PDF
        return real(*args, **kwargs)

    monkeypatch.setattr(pdf_mod, "_record", stop_at_the_fifth)
    out = tmp_path / "caps"
    assert main(["extract", "pdf", str(truth.path), "--out", str(out)]) != 0
    done = _units(out)
    assert done and all("#part" in u["unit"] for u in done)  # the pieces before the stop were kept
    monkeypatch.setattr(pdf_mod, "_record", real)
    extract([truth.path], out)
    ids = [r["id"] for r in load_records(out, tmp_path)]
    whole = tmp_path / "whole"
    extract([truth.path], whole)
    assert sorted(ids) == sorted(r["id"] for r in load_records(whole, tmp_path)) and len(set(ids)) == len(ids)
    assert not [x for x in ledger(out) if "duplicate" in x["reason"]]


def test_rendered_figures_are_kept_as_encoded_and_hashed_from_their_pixels(pdf_factory):
    # figure_record(decoded=...): no second decode, and the same record as decoding would give
    from pathasst.images import image_phash, normalize_image

    truth = pdf_factory([pdf_factory.vector_figure_page(), pdf_factory.compound_figure_page()])
    result = _run(truth)
    assert len(result.records) == 2
    for rec in result.records:
        meta = json.loads(rec["meta"])
        assert meta["pixels"] == "rendered"
        again = normalize_image(rec["image"], with_phash=True)
        assert (again.width, again.height) == (rec["width"], rec["height"]) and again.bytes_ == rec["image"]
        if again.format == "PNG":  # lossless: the very pixels the hash was taken from
            assert rec["phash"] == image_phash(rec["image"])


def test_a_heat_maps_colour_key_is_part_of_its_figure(pdf_factory):
    # seriation p15: two image plots, each with its colour key 15.5 points to the right (a 100 x 1
    # gradient image stretched into a strip, a frame, ticks, numbers); the key, alone too narrow
    # for a figure, was dropped, and its lowest number, hanging below the image, then stood
    # between the figure and its caption as printed text
    fig = pdf_factory.Figure((120, 130, 262, 272), "Figure 2: Matrix shading of the distance matrix for the iris data, before and after.",
                             colour_key=True, caption_rect=(120, 293, 507, 310))
    second = pdf_factory.Figure((336, 130, 478, 272), None, colour_key=True, seed=5)
    truth = pdf_factory([pdf_factory.Page(figures=[fig, second], texts=[_body(pdf_factory, 330, 700)])])
    rec = _one_record_covering(_run(truth), truth.figures[0])
    assert box(rec["page_bbox"])[2] >= truth.figures[1].bbox[2] - TOL  # both plots and both keys
    # a strip farther off than two group gaps is not the image's: it does not join
    far = pdf_factory.Figure((120, 130, 262, 272), "Figure 2: Matrix shading of the distance matrix.",
                             colour_key=True, colour_key_gap=40, caption_rect=(120, 293, 290, 330))
    rec = _run(pdf_factory([pdf_factory.Page(figures=[far], texts=[_body(pdf_factory, 330, 700)])])).records
    assert [box(r["page_bbox"])[2] for r in rec] == [pytest.approx(262, abs=1)]


def test_a_plot_on_a_white_canvas_owns_the_text_on_it(pdf_factory):
    # tikzDevice p20: the plot's device paints a white background, and a credit line sits on it
    # 26 points under the axis in the body's font: as body text it stood between the plot and
    # its caption, and a code listing alone on the facing page took the caption instead
    fig = pdf_factory.Figure((150, 150, 450, 400), "Figure 6: Result of an example with fonts.", kind="vector",
                             canvas_note="Some rights reserved, cc-by-sa")
    _alone_on_a_page(pdf_factory, fig, body_from=470)


def test_a_caption_line_broken_by_a_lowered_letter_stays_one_caption(pdf_factory):
    # tikzDevice p20: "Figure 6: Result of X" "E" "LaTeX example", the E of the XeLaTeX logo set
    # lower as a block of its own and the rest another block starting where the E ends
    fig = pdf_factory.Figure((150, 150, 450, 400), "Figure 6: Result of X E LaTeX example.",
                             kind="vector", caption_break="E LaTeX")
    _alone_on_a_page(pdf_factory, fig, body_from=470)


def test_clustering_many_boxes_on_a_grid_gives_the_pairwise_components():
    # a heat map drawn as 262,756 vector cells (HilbertVis) took 494 s pairwise; above
    # _CLUSTER_EXACT_MAX boxes the components come from an occupancy grid: the same components
    import numpy as np

    from pathasst.dataset_builders.extract import pdf as pdf_mod

    rng = np.random.default_rng(0)
    corners = rng.integers(0, 400, size=(600, 2)) * 1.0
    sizes = rng.integers(1, 12, size=(600, 2)) * 1.0
    boxes = [tuple(b) for b in np.hstack([corners, corners + sizes])]
    tol = 3.25  # integer corners: no gap is within a grid cell of the tolerance
    exact = sorted(sorted(g) for g in pdf_mod._cluster(boxes, tol))
    grid = sorted(sorted(g) for g in pdf_mod._cluster_on_grid(np.asarray(boxes), tol))
    assert grid == exact and 1 < len(exact) < 600
    # and the switch: a cell grid of 60 x 60 touching cells (3,600 paths) is one cluster
    cells = [(x * 2.0, y * 2.0, x * 2.0 + 2.0, y * 2.0 + 2.0) for x in range(60) for y in range(60)]
    assert len(cells) > pdf_mod._CLUSTER_EXACT_MAX
    assert [len(g) for g in pdf_mod._cluster(cells, 8.0)] == [3600]


CODE = "> plotRanges(ir)\n+ xlim <- c(min(start(x)), max(end(x)))\n+ bins <- disjointBins(x)\n+ plot.new()\n> reduce(ir)"


def test_a_flat_plot_and_its_short_caption_set_flush_left(pdf_factory):
    # IRangesOverview p4: one row of ranges over an axis (130 x 39 points, under the 40-point
    # minimum on its short side), its short caption set flush left at a fixed indent, sharing 14
    # points of the plot's width, and a shaded code chunk right under the caption
    fig = pdf_factory.Figure((245, 93, 376, 130), "Figure 1: Plot of original ranges", kind="vector",
                             caption_rect=(136, 160, 300, 176))
    code = pdf_factory.Text((56, 195, 480, 262), CODE, fontname="cour", fontsize=8, shade=(0.94, 0.94, 0.94))
    truth = pdf_factory([pdf_factory.Page(figures=[fig], texts=[code, _body(pdf_factory, 300, 700)])])
    result = _run(truth)
    _one_record_covering(result, truth.figures[0])
    assert not [r for r in result.rejects if r[1].startswith("no caption")]  # the code chunk is no figure


def test_a_caption_between_two_stacked_images_is_the_upper_ones(pdf_factory):
    # savR p4: two images stacked, Figure 2's caption 24 points under its image and 19 over the
    # next, Figure 3's caption under the second: the nearest pair first left Figure 3 alone
    upper = pdf_factory.Figure((225, 54, 387, 313), "Figure 2: Corrected intensity plot: cycle 1, base A.",
                               caption_rect=(182, 337, 432, 353), seed=1)
    lower = pdf_factory.Figure((180, 369, 432, 556), "Figure 3: Quality heatmap: lane 1, read 1.",
                               caption_rect=(206, 580, 407, 596), seed=2)
    truth = pdf_factory([pdf_factory.Page(figures=[upper, lower], texts=[_body(pdf_factory, 620, 780)])])
    result = _run(truth)
    got = {r["figure_label"]: box(r["page_bbox"]) for r in result.records}
    assert set(got) == {"Figure 2", "Figure 3"}, result.rejects
    assert got["Figure 2"][1] == pytest.approx(54, abs=1) and got["Figure 3"][1] == pytest.approx(369, abs=1)


def test_a_caption_title_then_its_description_in_another_face(pdf_factory):
    # LatexStyle2 p9: "Figure 3: Small figure" in bold, then at the caption's own leading the
    # description, a line in which inline code in a smaller monospaced face outweighs the words
    fig = pdf_factory.Figure((180, 90, 385, 298), "Figure 3: Small figure", kind="vector",
                             caption_rect=(136, 306, 420, 321), caption_fontsize=8)
    rest = pdf_factory.Text((136, 316.5, 420, 332), "plot(cars) smallfig envir", fontname="cour", fontsize=6.4)
    truth = pdf_factory([pdf_factory.Page(figures=[fig], texts=[rest, _body(pdf_factory, 360, 700)])])
    rec = _run(truth).records
    assert [r["figure_label"] for r in rec] == ["Figure 3"]
    assert clean_text(rec[0]["caption_raw"]) == "Figure 3: Small figure plot(cars) smallfig envir"


def _with_words(truth, words, tmp_path, name="edited.pdf"):
    """The factory's PDF with ``words`` ((x, baseline, text, size, font)) written on its first
    page, each a text object of its own, as a typesetter writes a justified line word by word."""
    import pymupdf

    with pymupdf.open(truth.path) as doc:
        for x, y, text, size, font in words:
            doc[0].insert_text((x, y), text, fontsize=size, fontname=font)
        out = tmp_path / name
        doc.save(out)
    return out


def test_a_caption_beside_a_plot_set_high_with_justified_words(pdf_factory, tmp_path):
    # earth-varmod p10 and earth-notes p35: a page set high (no running head) whose caption, in the
    # right margin beside the plot, starts inside the top band, level with the top of the plot's
    # device rather than its ink, in a narrow justified column whose spaces stretch past an em
    fig = pdf_factory.Figure((120, 52, 290, 205), None, kind="vector")
    truth = pdf_factory([pdf_factory.Page(figures=[fig], texts=[_body(pdf_factory, 260, 700)])])
    import pymupdf

    words, x = [(311, 43, "Figure 2: Data", 12, "tiro")], 311.0
    for word in ("Cumulative", "Distribution", "plot"):  # 13 points between words: 1.1 em
        words.append((x, 57, word, 12, "tiro"))
        x += pymupdf.get_text_length(word, "tiro", 12) + 13
    words.append((311, 71, "with info.", 12, "tiro"))
    result = _run(_with_words(truth, words, tmp_path))
    assert [r["figure_label"] for r in result.records] == ["Figure 2"], result.rejects
    assert clean_text(result.records[0]["caption_raw"]) == "Figure 2: Data Cumulative Distribution plot with info."
    assert json.loads(result.records[0]["meta"])["caption_pairing"] == "right"
