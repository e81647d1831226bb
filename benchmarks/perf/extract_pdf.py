"""Benchmark: `pathasst extract pdf` against the raw pymupdf parse of the same pages, and the
quality of its two methods (geometry, layout model) on generated books with ground truth.

Speed (side by side in one run, on one generated book):

* ``raw``:     ``page.get_text("dict")`` + ``page.get_image_info()`` for every page: the floor
  (DESIGN.md §8: "a few hundred pages per second per core").
* ``extract``: ``SOURCE.extract_unit`` on the book (find, pair, render/extract and encode every
  figure, in memory), and ``run_extract`` (the same plus the dataset writer: Parquet, card, ledger),
  which is what ``pathasst extract pdf book.pdf --out DIR`` runs.

The ratio ``extract time / raw time`` is printed (target: no more than 4). Both run in this one
process on one core, so pages/s are also pages/s per core; CPU seconds are printed beside wall
seconds because the machines are shared.

Quality (``--quality``): the sample book of ``pathasst.testing.pdfs`` plus :func:`quality_pages`
(captions beside and over several blocks, label variants, two columns, a ruled table, icons, a
figure without caption and a caption without figure, a caption on the previous page, ligatures),
each method scored against the ground truth: figure recall (figures found, captioned or not),
pair recall and caption-pairing precision (records whose caption is the figure's own).

Memory (``--memory N``): peak resident memory of ``run_extract`` (what ``pathasst extract pdf``
runs) on one generated book of about ``N`` figures, in a fresh process each: ``whole`` (the PDF's
records held until the PDF ends, as before streaming: ``extract_unit``, then one writer unit) and
``streamed`` (``extract_chunks``: pieces of a few pages written as they come).

    python -m pathasst.benchmarks.perf.extract_pdf                    # 200 pages, quality too
    python -m pathasst.benchmarks.perf.extract_pdf --pages 50 --repeat 1 --json out.json
    python -m pathasst.benchmarks.perf.extract_pdf --no-speed --no-quality --memory 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

A4 = (595.0, 842.0)
M = 56.0  # the factory's page margin
HEADER = "CHAPTER 6  Liver, Gallbladder and Biliary Tract"

# --- the quality set -------------------------------------------------------------------------


@dataclasses.dataclass
class ExpectedFigure:
    """A figure an extractor must find: page (1-based), box in points (x0, y0, x1, y1), and its
    caption as printed (None: the ledger must report it as a figure without a caption)."""

    page: int
    bbox: tuple[float, float, float, float]
    caption: Optional[str]
    kind: str = "raster"
    name: str = ""


@dataclasses.dataclass
class QualityCase:
    path: Path
    figures: list[ExpectedFigure]
    orphan_captions: list[tuple[int, str]]  # (page, caption start) the ledger must report


def _fit(text: str, x0: float, y0: float, x1: float, fontsize: float = 9.0) -> tuple[float, float, float, float]:
    """The smallest rect at (x0, y0) of width x1 - x0 that holds ``text`` (pymupdf's insert_textbox)."""
    import pymupdf

    h = fontsize * 1.3
    while h < 400:
        probe = pymupdf.open()
        ok = probe.new_page(width=A4[0], height=A4[1]).insert_textbox(
            pymupdf.Rect(x0, y0, x1, y0 + h), text, fontsize=fontsize, fontname="helv") >= 0
        probe.close()
        if ok:
            return (x0, y0, x1, y0 + h)
        h += 1.0
    raise ValueError(f"text does not fit: {text[:40]!r}")


def quality_pages() -> tuple[list[Any], dict[str, str], list[tuple[int, str]], dict]:
    """Pages the factory's sample book lacks, as factory specs, plus what the truth must say
    beyond them.

    Returns:
        ``(pages, caption_overrides, orphan_captions, edits)``: captions by figure id where the
        factory's truth is incomplete (a caption continued in a second text block, a caption on
        the previous page, a caption set in a ligature font afterwards), the captions without a
        figure (page index, start), and what :func:`build_quality_book` draws after the factory
        (a ruled table, icons, the ligature caption).
    """
    from pathasst.testing.pdfs import Figure, Page, Text

    w = A4[0] - 2 * M
    col = (w - 18) / 2
    pages: list[Page] = []
    overrides: dict[str, str] = {}
    orphans: list[tuple[int, str]] = []
    edits: dict[str, Any] = {}

    # 0: captions beside their figures, right and left
    cap_r = "Figure 6.1: Hepatic steatosis. Large fat droplets displace the nuclei of hepatocytes to the periphery (H&E, x200)."
    cap_l = "Fig. 6.2. Mallory-Denk bodies in alcoholic hepatitis appear as ropy eosinophilic inclusions (H&E, x400)."
    pages.append(Page(
        figures=[Figure((M, 110, 340, 300), cap_r, caption_rect=_fit(cap_r, 352, 110, M + w), seed=11, figure_id="beside-right"),
                 Figure((255, 330, M + w, 520), cap_l, caption_rect=_fit(cap_l, M, 330, 243), seed=12, figure_id="beside-left")],
        texts=[Text((M, 545, M + w, 780), None, seed=11)],
    ))
    # 1: a caption run over two text blocks; a label alone on its line
    cap_a = "Figure 8.2: Hepatocellular carcinoma with a trabecular growth pattern; the trabeculae are more than three cells thick."
    cont = "The tumour cells resemble hepatocytes and may produce bile; vascular invasion is common (H&E, x100)."
    rect_a = _fit(cap_a, M, 338, M + w)
    rect_c = _fit(cont, M, rect_a[3] + 1, M + w)
    cap_b = "FIGURE 8.3\nCholangiocarcinoma: malignant glands set in a dense desmoplastic stroma (H&E, x200)."
    pages.append(Page(
        figures=[Figure((M, 90, M + w, 330), cap_a, caption_rect=rect_a, seed=13, figure_id="two-blocks"),
                 Figure((M, 460, 300, 640), cap_b, caption_rect=_fit(cap_b, M, 648, 300), seed=14, figure_id="label-alone")],
        texts=[Text(rect_c, cont, 9), Text((318, 460, M + w, 780), None, 10, seed=14)],
    ))
    overrides["two-blocks"] = cap_a + "\n" + cont
    # 2: "Plate 7" and "Figure 3 (continued)"
    pages.append(Page(figures=[
        Figure((M, 80, M + w, 400), "Plate 7 Cirrhosis of the liver: regenerative nodules surrounded by fibrous septa (trichrome).",
               seed=15, figure_id="plate"),
        Figure((M, 470, M + w, 720), "Figure 3 (continued) Cirrhosis at higher power: bridging fibrosis links portal tracts.",
               seed=16, figure_id="continued"),
    ]))
    # 3: two columns, caption below in the left one and above in the right one
    left, right = M, M + col + 18
    pages.append(Page(
        figures=[Figure((left, 80, left + col, 250), "Fig. 9. Barrett oesophagus with intestinal metaplasia and goblet cells (H&E, x200).",
                        caption_fontsize=8, seed=17, figure_id="col-left"),
                 Figure((right, 460, right + col, 620), "Fig. 10. Squamous cell carcinoma of the oesophagus with keratin pearls (H&E, x100).",
                        "above", caption_fontsize=8, seed=18, figure_id="col-right-above")],
        texts=[Text((left, 300, left + col, 780), None, 9, seed=17),
               Text((right, 80, right + col, 395), None, 9, seed=18),
               Text((right, 640, right + col, 780), None, 9, seed=19)],
    ))
    # 4: a vector chart with its caption above, a photo with its caption below
    pages.append(Page(
        figures=[Figure((96, 130, 499, 310), "Figure 13.1: Five-year survival by stage, drawn as vector graphics.", "above",
                        kind="vector", seed=19, figure_id="vector-above"),
                 Figure((M, 370, M + w, 570), "Figure 13.2: Metastatic carcinoma in a lymph node (H&E, x40).", seed=20,
                        figure_id="stacked")],
        texts=[Text((M, 610, M + w, 780), None, seed=20)],
    ))
    # 5: a figure without caption, a ruled table, icons in the margin, a caption without figure
    orphan = "Figure 14.9: This caption lost its figure when the page was made up."
    pages.append(Page(
        figures=[Figure((M, 70, 300, 250), None, seed=21, figure_id="uncaptioned")],
        texts=[Text((312, 70, M + w, 250), None, 10, seed=21),
               Text((M, 270, M + w, 400), None, 10, seed=22),
               Text(_fit("Table 2.1: Grading of dysplasia in Barrett oesophagus.", M, 418, M + w), "Table 2.1: Grading of dysplasia in Barrett oesophagus.", 9),
               Text((M, 560, M + w, 690), None, 10, seed=23),
               Text(_fit(orphan, M, 700, M + w), orphan, 9)],
    ))
    orphans.append((len(pages) - 1, "Figure 14.9"))
    edits["table"] = (len(pages) - 1, (M, 440, M + w, 540))
    edits["icons"] = (len(pages) - 1, [(541, 300, 555, 314), (541, 600, 555, 614), (M, 500 + 60, M + 12, 572)])
    # 6-7: a full-page figure whose caption ends the previous page
    prev_cap = "Figure 15.1 (overleaf): Hodgkin lymphoma with Reed-Sternberg cells in a mixed inflammatory background (H&E, x400)."
    pages.append(Page(texts=[Text((M, 70, M + w, 690), None, seed=24), Text(_fit(prev_cap, M, 705, M + w), prev_cap, 9)]))
    pages.append(Page(figures=[Figure((M, 70, M + w, 772), None, seed=25, figure_id="facing-previous")]))
    overrides["facing-previous"] = prev_cap
    # 8: a caption set in a font with ligature glyphs (drawn after the factory)
    pages.append(Page(figures=[Figure((M, 100, M + w, 400), None, seed=26, figure_id="ligatures")],
                      texts=[Text((M, 460, M + w, 780), None, seed=26)]))
    lig = "Figure 16.1: Dense \ufb01brosis with \ufb02attened epithelium and a \ufb01ne \ufb02uid layer (trichrome, x100)."
    edits["ligature"] = (len(pages) - 1, (M, 408, M + w, 440), lig)
    overrides["ligatures"] = lig.replace("\ufb01", "fi").replace("\ufb02", "fl")
    # 9: the body text right under a figure opens with "Figure 17.1 shows": a sentence, not a caption
    ref = "Figure 17.1 shows tight granulomas with multinucleated giant cells and no central necrosis; " \
          "stains for organisms were negative."
    pages.append(Page(
        figures=[Figure((M, 150, M + w, 400), "Figure 17.1: Sarcoidosis: non-caseating granulomas in a lymph node (H&E, x100).",
                        "above", seed=27, figure_id="body-reference")],
        texts=[Text(_fit(ref, M, 410, M + w, 10), ref, 10), Text((M, 470, M + w, 780), None, seed=27)],
    ))
    # 10: a 1x3 compound figure without panel letters; two separate figures side by side
    pages.append(Page(
        figures=[Figure((M, 80, M + w, 230), "Figure 18.1: Three stages of healing: granulation tissue, fibrosis and scar.",
                        kind="compound", grid=(1, 3), panel_labels=[], seed=28, figure_id="compound-1x3"),
                 Figure((left, 330, left + col, 480), "Fig. 18.2. Keloid: thick hyalinised collagen bundles.", seed=29,
                        figure_id="side-left"),
                 Figure((right, 330, right + col, 480), "Fig. 18.3. Hypertrophic scar with parallel collagen.", seed=30,
                        figure_id="side-right")],
        texts=[Text((M, 560, M + w, 780), None, seed=30)],
    ))
    return pages, overrides, orphans, edits


def _apply_edits(path: Path, edits: dict, first_page: int) -> None:
    """What the factory cannot draw: a ruled table, icons, a caption in a font with ligatures."""
    import pymupdf

    from pathasst.testing.images import tissue_tile, to_bytes

    doc = pymupdf.open(path)
    if "table" in edits:
        index, (x0, y0, x1, y1) = edits["table"]
        page = doc[first_page + index]
        rows, cols = 5, 3
        for r in range(rows + 1):
            y = y0 + r * (y1 - y0) / rows
            page.draw_line((x0, y), (x1, y), width=0.6)
        for c in range(cols + 1):
            x = x0 + c * (x1 - x0) / cols
            page.draw_line((x, y0), (x, y1), width=0.6)
        cells = [("Grade", "Nuclei", "Architecture"), ("None", "Basal", "Preserved"), ("Indefinite", "Enlarged", "Mild"),
                 ("Low", "Stratified", "Crowded"), ("High", "Atypical", "Complex")]
        for r, row in enumerate(cells):
            for c, text in enumerate(row):
                page.insert_text((x0 + c * (x1 - x0) / cols + 4, y0 + r * (y1 - y0) / rows + 14), text, fontsize=9)
    if "icons" in edits:
        index, boxes = edits["icons"]
        icon = to_bytes(tissue_tile(16, 3), "PNG")
        for box in boxes:
            doc[first_page + index].insert_image(pymupdf.Rect(box), stream=icon)
    if "ligature" in edits:
        index, rect, text = edits["ligature"]
        page = doc[first_page + index]
        font = pymupdf.Font("cjk")  # pymupdf's built-in fallback font has the ligature glyphs
        page.insert_font(fontname="lig", fontbuffer=font.buffer)
        if page.insert_textbox(pymupdf.Rect(rect), text, fontsize=9, fontname="lig") < 0:
            raise ValueError("ligature caption does not fit")
    try:
        doc.subset_fonts()
    except Exception:  # noqa: BLE001 - only makes the file smaller
        pass
    tmp = path.with_suffix(".tmp.pdf")
    doc.save(tmp, garbage=3, deflate=True)
    doc.close()
    tmp.replace(path)


def build_quality_book(path: str | Path, with_sample: bool = True) -> QualityCase:
    """The sample book (7 pages) followed by :func:`quality_pages` (11 pages), running heads,
    page numbers and a logo on every page; returns what an extractor must find in it."""
    from pathasst.testing.pdfs import make_pdf, sample_book_pages

    path = Path(path)
    sample = sample_book_pages() if with_sample else []
    extra, overrides, orphans, edits = quality_pages()
    pages = sample + extra
    for i, page in enumerate(pages[len(sample):], len(sample)):
        page.header, page.footer, page.logo = HEADER, str(201 + i), True
    truth = make_pdf(path, pages)
    _apply_edits(path, edits, len(sample))
    figures = []
    for f in truth.figures:
        caption = overrides.get(f.figure_id, f.caption)
        figures.append(ExpectedFigure(f.page_number, tuple(f.bbox), caption, f.kind, f.figure_id))
    return QualityCase(path, figures, [(len(sample) + i + 1, start) for i, start in orphans])


def _clean(text: Optional[str]) -> str:
    from pathasst.dataset_builders.extract.common import clean_text

    return clean_text(text or "")


def score(case: QualityCase, records: Sequence[dict], rejects: Sequence[tuple], tol: float = 4.0) -> dict[str, Any]:
    """Match records and ``no caption`` ledger lines to the expected figures.

    A figure is *found* when a record or a ``no caption`` line has its page and a box within
    ``tol`` points on every side. A record's pair is *right* when its ``caption_raw`` is the
    figure's caption (whitespace and ligatures normalised). Precision counts every record: one that
    matches no figure, or carries another figure's caption, is wrong.
    """
    def box_of(xywh):
        return (xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3])

    def near(a, b):
        return all(abs(x - y) <= tol for x, y in zip(a, b))

    found, right, details = 0, 0, []
    used = set()
    for exp in case.figures:
        rec = next((r for k, r in enumerate(records) if k not in used and r["page"] == exp.page
                    and near(box_of(r["page_bbox"]), exp.bbox)), None)
        if rec is not None:
            used.add(records.index(rec))
        led = next((x for x in rejects if x[2].get("page") == exp.page and "page_bbox" in x[2]
                    and near(box_of(x[2]["page_bbox"]), exp.bbox)), None)
        is_found = rec is not None or led is not None
        ok = (rec is not None and exp.caption is not None and _clean(rec["caption_raw"]) == _clean(exp.caption)) or (
            rec is None and exp.caption is None and led is not None and led[1].startswith("no caption"))
        found += is_found
        right += ok
        details.append({"figure": exp.name, "page": exp.page, "found": is_found, "right": ok,
                        "got": (rec["caption_raw"][:60] if rec else (led[1][:60] if led else None))})
    n_records = len(records)
    correct_records = sum(1 for d, exp in zip(details, case.figures) if d["right"] and exp.caption is not None)
    orphans_reported = sum(
        1 for page, start in case.orphan_captions
        if any(x[1].startswith("no figure") and x[2].get("page") == page and start in x[1] for x in rejects))
    captioned = sum(1 for f in case.figures if f.caption is not None)
    return {
        "figures": len(case.figures),
        "captioned": captioned,
        "records": n_records,
        "figure_recall": found / len(case.figures),
        "pair_recall": correct_records / max(captioned, 1),
        "pair_precision": correct_records / n_records if n_records else 0.0,
        "accounted": right / len(case.figures),
        "orphan_captions_reported": f"{orphans_reported}/{len(case.orphan_captions)}",
        "details": details,
    }


def run_quality(methods: Sequence[str], folder: Path) -> dict[str, Any]:
    from pathasst.dataset_builders.extract.pdf import SOURCE, PdfConfig

    case = build_quality_book(folder / "quality_book.pdf")
    out = {}
    for method in methods:
        cfg = PdfConfig(method=method)
        unit = next(iter(SOURCE.iter_units([str(case.path)], cfg)))
        t0 = time.perf_counter()
        result = SOURCE.extract_unit(unit, cfg)
        seconds = time.perf_counter() - t0
        out[method] = score(case, result.records, result.rejects) | {"seconds": round(seconds, 2)}
    return out


# --- the speed benchmark ---------------------------------------------------------------------


def build_perf_book(path: str | Path, n_pages: int = 200) -> int:
    """A book of ``n_pages`` pages cycling through the factory's page builders, every figure with
    its own image (seeds differ), running head, page number and logo on every page."""
    from pathasst.testing import pdfs

    builders = [
        lambda s: [pdfs.caption_below_page(seed=s)],
        lambda s: [pdfs.caption_above_page(seed=s)],
        lambda s: [pdfs.vector_figure_page(seed=s)],
        lambda s: [pdfs.two_column_page(seed=s)],
        lambda s: [pdfs.compound_figure_page(seed=s)],
        lambda s: pdfs.facing_caption_pages(seed=s),
    ]
    pages: list[Any] = []
    k = 0
    while len(pages) < n_pages:
        pages.extend(builders[k % len(builders)](100 + 7 * k))
        k += 1
    if len(pages) > n_pages:  # never cut a facing pair in two: replace it with a one-page layout
        pages = pages[:n_pages - 1] + [pdfs.caption_below_page(seed=99)]
    for i, page in enumerate(pages):
        page.header, page.footer, page.logo = HEADER, str(i + 1), True
    pdfs.make_pdf(path, pages)
    return len(pages)


def raw_parse(path: Path) -> int:
    """The floor: what any pymupdf-based extractor must at least do for every page."""
    import pymupdf

    with pymupdf.open(path) as doc:
        for page in doc:
            page.get_text("dict")
            page.get_image_info()
        return doc.page_count


def _timed(fn, *args) -> tuple[float, float, Any]:
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0, value


def run_speed(path: Path, n_pages: int, repeat: int, work: Path, dpi: int = 200) -> dict[str, Any]:
    import pymupdf

    from pathasst.dataset_builders.extract.common import run_extract
    from pathasst.dataset_builders.extract.pdf import SOURCE, PdfConfig, analyse_pdf

    cfg = PdfConfig(dpi=dpi)
    unit = next(iter(SOURCE.iter_units([str(path)], cfg)))

    def analyse_only():
        with pymupdf.open(path) as doc:
            return analyse_pdf(doc, cfg)

    def extract_only():
        return SOURCE.extract_unit(unit, cfg)

    def extract_cli(i=[0]):  # noqa: B006 - a fresh output folder per repetition
        i[0] += 1
        return run_extract(SOURCE, cfg, [str(path)], str(work / f"out{i[0]}"), overwrite=True, progress=False)

    contenders = {"raw": lambda: raw_parse(path), "analyse": analyse_only, "extract_unit": extract_only,
                  "extract_pdf": extract_cli}
    raw_parse(path)  # warm the page cache and pymupdf's font tables for every contender alike
    extract_only()  # and the imports the extractor pays once per process (imagehash, scipy)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    values: dict[str, Any] = {}
    for _ in range(repeat):  # interleaved, so that a busy spell of the machine hits all of them
        for name, fn in contenders.items():
            wall, cpu, values[name] = _timed(fn)
            runs[name].append((wall, cpu))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    rates = {k: {"wall_s": round(w, 3), "cpu_s": round(c, 3), "pages_per_s": round(n_pages / w, 1),
                 "pages_per_cpu_s": round(n_pages / c, 1)} for k, (w, c) in med.items()}
    result = values["extract_unit"]
    ratios = {f"{name} / raw ({kind})": round(med[name][i] / med["raw"][i], 2)
              for name in contenders if name != "raw" for i, kind in ((0, "wall"), (1, "cpu"))}
    n_fig = len(result.records)
    return {
        "pages": n_pages,
        "dpi": dpi,
        "figures": n_fig,
        "rejects": len(result.rejects),
        "records_written": values["extract_pdf"].total_records,
        "repeat": repeat,
        "contenders": rates,
        "ratios": ratios,
        "ms_per_figure_cpu": round(1000 * (med["extract_unit"][1] - med["analyse"][1]) / max(n_fig, 1), 1),
    }


_MEMORY_RUN = """
import dataclasses, json, resource, sys
from pathasst.dataset_builders.extract.common import run_extract
from pathasst.dataset_builders.extract.pdf import SOURCE, PdfConfig
mode, book, out = sys.argv[1:4]
source = SOURCE if mode == "streamed" else dataclasses.replace(SOURCE, extract_chunks=None)
import pymupdf, PIL.Image, pyarrow  # noqa: E401,F401 - counted in the baseline, not the run
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
s = run_extract(source, PdfConfig(), [book], out, overwrite=True, progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"records": s.total_records, "baseline_mb": round(base, 1), "peak_rss_mb": round(peak, 1)}))
"""


def run_memory(book: Path, work: Path) -> dict[str, Any]:
    """Peak RSS (MiB) of one ``run_extract`` of ``book``, whole and streamed, each in a new process."""
    import subprocess

    res: dict[str, Any] = {"pdf_mb": round(book.stat().st_size / 2**20, 1)}
    for mode in ("whole", "streamed"):
        run = subprocess.run([sys.executable, "-c", _MEMORY_RUN, mode, str(book), str(work / f"mem-{mode}")],
                             capture_output=True, text=True, check=True)
        res[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    data = work / "mem-streamed" / "data"
    res["dataset_mb"] = round(sum(f.stat().st_size for f in data.glob("*.parquet")) / 2**20, 1)
    return res


def report(res: dict[str, Any]) -> str:
    out = []
    if "memory" in res:
        m = res["memory"]
        out.append(f"memory: one PDF of {m['figures']} figures ({m['pages']} pages, {m['pdf_mb']} MB; "
                   f"its records {m['dataset_mb']} MB as Parquet)")
        for mode in ("whole", "streamed"):
            r = m[mode]
            out.append(f"  {mode:<9} peak RSS {r['peak_rss_mb']:>8.1f} MiB  (after imports {r['baseline_mb']:.1f} MiB; "
                       f"{r['records']} records written)")
    if "speed" in res:
        s = res["speed"]
        out.append(f"speed: {s['pages']} pages, {s['figures']} figure records, {s['rejects']} ledger lines, "
                   f"dpi {s['dpi']}, median of {s['repeat']}")
        out.append(f"{'contender':<16}{'wall s':>9}{'cpu s':>9}{'pages/s':>10}{'pages/cpu-s':>13}")
        for name, r in s["contenders"].items():
            out.append(f"{name:<16}{r['wall_s']:>9.3f}{r['cpu_s']:>9.3f}{r['pages_per_s']:>10.1f}{r['pages_per_cpu_s']:>13.1f}")
        out.append("ratios (target: extract_pdf / raw <= 4):")
        for name, v in s["ratios"].items():
            out.append(f"  {name:<34}{v:>6.2f}")
        out.append(f"per figure (extract_unit - analyse, cpu): {s['ms_per_figure_cpu']} ms")
    if "quality" in res:
        out.append("quality on the generated book (sample book + quality pages):")
        out.append(f"{'method':<10}{'figures':>8}{'records':>8}{'fig recall':>11}{'pair recall':>12}"
                   f"{'pair precision':>15}{'accounted':>10}{'orphans':>8}{'seconds':>8}")
        for method, q in res["quality"].items():
            out.append(f"{method:<10}{q['figures']:>8}{q['records']:>8}{q['figure_recall']:>11.3f}{q['pair_recall']:>12.3f}"
                       f"{q['pair_precision']:>15.3f}{q['accounted']:>10.3f}{q['orphan_captions_reported']:>8}"
                       f"{q['seconds']:>8.2f}")
        for method, q in res["quality"].items():
            missed = [d for d in q["details"] if not d["right"]]
            for d in missed:
                out.append(f"  {method}: {d['figure']} (page {d['page']}): found={d['found']} got={d['got']!r}")
    return "\n".join(out)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=200, help="pages of the generated book (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; medians are reported (default 3)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed benchmark")
    p.add_argument("--no-quality", action="store_true", help="skip the quality comparison")
    p.add_argument("--dpi", type=int, default=200, help="render dpi of the extractor in the speed run (default 200)")
    p.add_argument("--methods", default="geometry,layout", help="methods to score (default geometry,layout)")
    p.add_argument("--out-dir", type=Path, help="keep the books and outputs here (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.add_argument("--memory", type=int, default=0, metavar="N",
                   help="also measure peak memory on one book of about N figures (0: skip)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    import pymupdf

    with tempfile.TemporaryDirectory(prefix="bench-extract-pdf-") as tmp:
        work = args.out_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        res: dict[str, Any] = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "pymupdf": pymupdf.__version__,
                        "platform": platform.platform()},
        }
        if not args.no_speed:
            book = work / "perf_book.pdf"
            t0 = time.perf_counter()
            n = build_perf_book(book, args.pages)
            print(f"built {book.name}: {n} pages, {book.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
            res["speed"] = run_speed(book, n, max(1, args.repeat), work, dpi=args.dpi)
        if not args.no_quality:
            res["quality"] = run_quality([m for m in args.methods.split(",") if m], work)
        if args.memory:
            book = work / "memory_book.pdf"
            n = build_perf_book(book, max(14, -(-args.memory * 14 // 12)))  # 12 figures per 14 pages
            res["memory"] = {"pages": n, **run_memory(book, work)}
            res["memory"]["figures"] = res["memory"]["streamed"]["records"]
    print(report(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
