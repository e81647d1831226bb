"""Benchmark: ``pathasst extract pmc`` speed, JATS parsing without images against full extraction.

One run generates N OA packages shaped like PMC's (an ``.nxml`` padded to a realistic size, K
figure JPEGs cut from scikit-image's real IHC micrograph, a ``.gif`` thumbnail per figure), then
measures four contenders on the same packages, one after the other in this process (median of
``--repeat`` rounds, contenders interleaved in each round):

* ``xml``:   the article XML already in memory -> safe parse, ids/journal/licence, every ``<fig>``.
* ``parse``: the package on disk -> open the .tar.gz, check every member, read and parse the XML,
  resolve every graphic to its member. No image is read. (**target: >= 200 articles/s per core**)
* ``full``:  ``extract_unit`` on each package: the above, plus reading, decoding, normalising and
  perceptual-hashing every figure image, and building the PathCap records (nothing written).
* ``cli``:   ``run_extract`` into a fresh dataset folder (what ``pathasst extract pmc DIR --out``
  does): ``full`` plus validation, Parquet shards, the ledger and the card.

Everything runs in one process (``num_proc=1``), so articles/s is per core. CPU seconds are
reported beside wall seconds: on a shared machine the CPU rate is the steadier one.

    python -m pathasst.benchmarks.perf.extract_pmc                          # 200 articles, 4 figures
    python -m pathasst.benchmarks.perf.extract_pmc --articles 500 --repeat 3 --json out.json

See benchmarks/perf/README.md for the results measured so far.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import shutil
import statistics
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

CONTENDERS = ("xml", "parse", "full", "cli")
TARGET_PARSE_PER_S = 200.0

_SECTION_WORDS = (
    "The biopsy showed chronic active gastritis with intestinal metaplasia and lymphoid follicles. "
    "Immunohistochemistry for CD20 and CD3 highlighted the B- and T-cell compartments, and Ki-67 "
    "labelled most germinal-centre cells. Helicobacter organisms were identified on Giemsa stain. "
)


def _padding(kb: float, seed: int) -> str:
    """Body sections with inline markup and citations, about ``kb`` kilobytes of XML."""
    parts, size, i = [], 0, 0
    while size < kb * 1024:
        para = (f'<p>{_SECTION_WORDS}<italic>H. pylori</italic> density was graded {i % 4} '
                f'<xref ref-type="bibr" rid="B{1 + (i + seed) % 2}">{1 + (i + seed) % 2}</xref>; '
                f"see <xref ref-type=\"fig\" rid=\"F1\">Figure 1</xref>. 10<sup>{i % 6}</sup> cells/mm&#178;.</p>")
        if i % 5 == 0:
            para = f'<sec id="x{seed}-{i}"><title>Cohort {i}</title>{para}</sec>'
        parts.append(para)
        size += len(para)
        i += 1
    return "".join(parts)


def build_corpus(folder: Path, articles: int, figures: int, body_kb: float, image_size: int,
                 pool_size: int = 16) -> dict[str, Any]:
    """Write ``articles`` OA packages under ``folder``; return what they hold."""
    from PIL import Image

    from pathasst.testing.images import tissue_tile, to_bytes
    from pathasst.testing.jats import default_figures, make_jats_article

    folder.mkdir(parents=True, exist_ok=True)
    pool = [to_bytes(tissue_tile(image_size, seed), "JPEG", quality=90) for seed in range(pool_size)]
    thumbs = []
    for data in pool:
        thumb = Image.open(io.BytesIO(data)).convert("RGB")
        thumb.thumbnail((100, 100))
        thumbs.append(to_bytes(thumb, "GIF"))
    licenses = ("CC BY 4.0", "CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc-nd/4.0/", "CC0 1.0")
    xml_bytes, package_bytes = [], []
    for n in range(articles):
        pmcid = f"PMC{8_000_000 + n}"
        figs = default_figures(figures)
        xml = make_jats_article(pmcid, figs, licenses[n % len(licenses)])
        xml = xml.replace("</body>", _padding(body_kb, n) + "</body>")
        files = {f"jtp-{n}.nxml": xml.encode("utf-8")}
        for i, fig in enumerate(figs):
            files[fig.graphic_file] = pool[(n * figures + i) % pool_size]
            files[fig.graphic + ".gif"] = thumbs[(n * figures + i) % pool_size]
        path = folder / f"{pmcid}.tar.gz"
        with gzip.GzipFile(path, "wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{pmcid}/{name}")
                info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
                tar.addfile(info, io.BytesIO(data))
        xml_bytes.append(len(files[f"jtp-{n}.nxml"]))
        package_bytes.append(path.stat().st_size)
    return {
        "articles": articles,
        "figures_per_article": figures,
        "xml_kb_mean": round(statistics.mean(xml_bytes) / 1024, 1),
        "package_kb_mean": round(statistics.mean(package_bytes) / 1024, 1),
        "image_px": image_size,
        "image_kb_mean": round(statistics.mean(len(p) for p in pool) / 1024, 1),
    }


# --- contenders ------------------------------------------------------------------------------


def _xml_only(packages: list[Path], xml_texts: list[bytes], cfg: Any) -> dict[str, Any]:
    from pathasst.dataset_builders.extract import pmc

    figures = 0
    for data in xml_texts:
        root, _ = pmc.parse_xml(data)
        pmc.article_meta(root)
        figures += sum(1 for _ in pmc.iter_figures(root))
    return {"figures": figures}


def _parse(packages: list[Path], xml_texts: list[bytes], cfg: Any) -> dict[str, Any]:
    from pathasst.dataset_builders.extract import pmc

    figures = 0
    for path in packages:
        with tarfile.open(path, "r:*") as tar:
            members, texts = pmc.scan_package(tar, cfg, path.name)
            files = pmc._TarFiles(tar, members)
            for name, data in texts.items():
                root, _ = pmc.parse_xml(data)
                pmc.article_meta(root)
                for fig in pmc.iter_figures(root):
                    pmc.resolve_graphic(fig.graphics[0], os.path.dirname(name), files)
                    figures += 1
    return {"figures": figures}


def _full(packages: list[Path], xml_texts: list[bytes], cfg: Any) -> dict[str, Any]:
    from pathasst.dataset_builders.extract import pmc

    records = rejects = 0
    for unit in pmc.iter_units([str(p) for p in packages], cfg):
        result = pmc.extract_unit(unit, cfg)
        records += len(result.records)
        rejects += len(result.rejects)
    return {"records": records, "rejected": rejects}


def _cli(packages: list[Path], xml_texts: list[bytes], cfg: Any, out: Path) -> dict[str, Any]:
    from pathasst.dataset_builders.extract import pmc
    from pathasst.dataset_builders.extract.common import run_extract

    if out.exists():
        shutil.rmtree(out)
    summary = run_extract(pmc.SOURCE, cfg, [str(packages[0].parent)], str(out), progress=False)
    return {"records": summary.total_records, "rejected": summary.rejected}


def _measure(fn: Callable[[], dict[str, Any]]) -> tuple[float, float, dict[str, Any]]:
    wall, cpu = time.perf_counter(), time.process_time()
    info = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, info


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pathasst.dataset_builders.extract import pmc

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-pmc-"))
    try:
        corpus = build_corpus(work / "packages", args.articles, args.figures, args.body_kb, args.image_size)
        packages = sorted((work / "packages").glob("*.tar.gz"))
        xml_texts = []
        for path in packages:
            with tarfile.open(path, "r:*") as tar:
                xml_texts.extend(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".nxml"))
        cfg = pmc.PmcConfig(work_dir=str(work / "cache"))
        calls = {
            "xml": lambda: _xml_only(packages, xml_texts, cfg),
            "parse": lambda: _parse(packages, xml_texts, cfg),
            "full": lambda: _full(packages, xml_texts, cfg),
            "cli": lambda: _cli(packages, xml_texts, cfg, work / "out"),
        }
        # warm-up on a few packages: imports (datasets, pyarrow, imagehash) are not what we measure
        _full(packages[:2], xml_texts[:2], cfg)
        _cli(packages[:1], xml_texts[:1], cfg, work / "warm")
        samples: dict[str, list[tuple[float, float, dict[str, Any]]]] = {c: [] for c in CONTENDERS}
        for _ in range(args.repeat):
            for name in CONTENDERS:
                samples[name].append(_measure(calls[name]))
        runs = {}
        for name in CONTENDERS:
            wall = statistics.median(s[0] for s in samples[name])
            cpu = statistics.median(s[1] for s in samples[name])
            runs[name] = {
                "articles": args.articles,
                "seconds": round(wall, 4),
                "cpu_seconds": round(cpu, 4),
                "articles_per_s": round(args.articles / wall, 1),
                "articles_per_cpu_s": round(args.articles / cpu, 1) if cpu > 0 else None,
                "figures_per_s": round(args.articles * args.figures / wall, 1),
                **samples[name][-1][2],
            }
        ratios = {
            "xml_over_parse": round(runs["xml"]["articles_per_s"] / runs["parse"]["articles_per_s"], 2),
            "parse_over_full": round(runs["parse"]["articles_per_s"] / runs["full"]["articles_per_s"], 2),
            "full_over_cli": round(runs["full"]["articles_per_s"] / runs["cli"]["articles_per_s"], 2),
        }
        import datasets
        import PIL

        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "pillow": PIL.__version__,
                "datasets": datasets.__version__,
            },
            "corpus": corpus,
            "repeat": args.repeat,
            "runs": runs,
            "ratios": ratios,
            "target_parse_articles_per_s": TARGET_PARSE_PER_S,
        }
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any]) -> str:
    corpus = result["corpus"]
    lines = [
        f"{corpus['articles']} articles, {corpus['figures_per_article']} figures each; XML {corpus['xml_kb_mean']} KB, "
        f"package {corpus['package_kb_mean']} KB, figure JPEG {corpus['image_px']} px {corpus['image_kb_mean']} KB "
        f"(means); median of {result['repeat']} round(s), one process",
        "",
        "contender  seconds  cpu s  articles/s  articles/cpu-s  figures/s  records",
        "---------  -------  -----  ----------  --------------  ---------  -------",
    ]
    for name, run in result["runs"].items():
        lines.append(
            f"{name:<9}  {run['seconds']:7.2f}  {run['cpu_seconds']:5.2f}  {run['articles_per_s']:10,.1f}  "
            f"{run['articles_per_cpu_s'] or 0:14,.1f}  {run['figures_per_s']:9,.1f}  {run.get('records', '-')!s:>7}"
        )
    parse = result["runs"]["parse"]["articles_per_s"]
    ratios = result["ratios"]
    lines += [
        "",
        "ratios (measured side by side in this run):",
        f"  articles/s   xml / parse     {ratios['xml_over_parse']:.2f}   (cost of opening and checking the package)",
        f"  articles/s   parse / full    {ratios['parse_over_full']:.2f}   (cost of the images)",
        f"  articles/s   full / cli      {ratios['full_over_cli']:.2f}   (cost of writing the dataset)",
        f"  JATS parsing without images: {parse:,.1f} articles/s per core "
        f"({'meets' if parse >= result['target_parse_articles_per_s'] else 'BELOW'} the target of "
        f"{result['target_parse_articles_per_s']:.0f})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=200, help="packages to generate (default 200)")
    parser.add_argument("--figures", type=int, default=4, help="figures per article (default 4)")
    parser.add_argument("--body-kb", type=float, default=60.0,
                        help="body text added to each article XML, in KB (default 60: PMC articles are ~50-150 KB)")
    parser.add_argument("--image-size", type=int, default=1024, help="figure side in pixels (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--work-dir", help="keep the packages and outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.articles < 1 or args.figures < 1 or args.repeat < 1:
        parser.error("--articles, --figures and --repeat must be >= 1")
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
