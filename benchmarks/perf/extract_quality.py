"""Benchmark: figure recall and caption-pairing precision of `extract pdf` on REAL documents.

The generated quality book of :mod:`pathasst.benchmarks.perf.extract_pdf` knows its ground truth
exactly but was written by us; this benchmark scores the extractor on typeset documents nobody here
wrote: the R package vignettes listed in ``benchmarks/data/pdf_quality_real.yaml`` (vector plots,
multi-panel figures, captions below and beside their figures, clipped drawings, rotated axis titles),
each with its captioned figures labelled (page, label, opening words of the caption).

Metrics, per set (``tuning``: the documents the extractor was improved on; ``held_out``: scored once,
never used to change the code) and per method (``geometry``, ``layout``):

* **figure recall**: labelled figures for which a record exists on the labelled page with the
  labelled figure label, a caption that opens with the labelled words, paired on the labelled side
  of its figure (a caption between two figures paired with the lower one is a wrong pair);
* **pairing precision**: records that are such a match, over all records (a record whose caption is
  not its figure's own, or a figure that is not labelled, counts against it).

The documents are not in the repository. ``--docs DIR`` is where they are cached (default
``$PATHASST_CACHE/pdf-quality`` or ``~/.cache/pathasst/pdf-quality``); ``--fetch`` downloads the
missing ones by package name and version from the distribution's package repository (``apt-get download``, then
``dpkg-deb -x``) and checks each PDF's sha256 against the data file. Without ``--fetch`` a missing
document is reported and skipped, never silently counted.

    python -m pathasst.benchmarks.perf.extract_quality --fetch
    python -m pathasst.benchmarks.perf.extract_quality --methods geometry,layout --json out.json

:func:`score` (with :func:`matches`) is the one scoring function of this check: ``pathasst bench
run --task pdf_pairing`` calls it too, so keep its signature and returned keys.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence
from pathasst.inputs import cache_root, file_sha256

METHODS = ("geometry", "layout")
MATCH_WORDS = 4  # opening words of the caption that must match (after the label)


def default_labels() -> Path:
    return Path(str(resources.files("pathasst.benchmarks"))) / "data" / "pdf_quality_real.yaml"


def default_cache() -> Path:
    return cache_root() / "pdf-quality"


def load_labels(path: Path) -> list[dict[str, Any]]:
    """The documents of the data file, each with ``name, set, package, version, path, sha256, figures``."""
    import yaml

    docs = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["documents"]
    for doc in docs:
        missing = {"name", "set", "package", "version", "path", "sha256", "figures"} - set(doc)
        if missing:
            raise ValueError(f"{path}: document {doc.get('name', '?')} lacks {', '.join(sorted(missing))}")
    return docs



def fetch(doc: dict[str, Any], cache: Path) -> Path:
    """Download ``doc``'s package from the distribution's package repository and copy its PDF into ``cache``.

    Raises:
        RuntimeError: apt-get or dpkg-deb missing or failing, or a PDF whose sha256 differs.
    """
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"--fetch needs {tool} (a Debian-based machine); place {doc['name']}.pdf in {cache} instead")
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"{doc['package']}={doc['version']}"
        run = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"apt-get download {spec} failed: {run.stderr.strip()[:300]}")
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True, capture_output=True)
        source = Path(tmp) / "x" / doc["path"]
        cache.mkdir(parents=True, exist_ok=True)
        target = cache / f"{doc['name']}.pdf"
        shutil.copyfile(source, target)
    return target


def obtain(doc: dict[str, Any], cache: Path, allow_fetch: bool) -> tuple[Optional[Path], Optional[str]]:
    """The document's PDF, or None and why it is not there."""
    path = cache / f"{doc['name']}.pdf"
    if not path.is_file():
        if not allow_fetch:
            return None, f"not in {cache} (run with --fetch, or copy {doc['path']} of {doc['package']} {doc['version']})"
        try:
            path = fetch(doc, cache)
        except Exception as exc:  # noqa: BLE001 - one unobtainable document is reported, the rest run
            return None, str(exc)
    digest = file_sha256(path)
    if digest != doc["sha256"]:
        return None, f"{path}: sha256 {digest[:12]}... is not the labelled document's {doc['sha256'][:12]}..."
    return path, None


def _norm(text: str) -> str:
    """Case-folded words of ``text``: NFKC, ligatures expanded, letters and digits only.

    Text layers differ in what they make of a glyph (a lost ``fi``, a control character for ``ff``):
    words are compared, and a word broken that way simply does not match.
    """
    from pathasst.dataset_builders.extract.common import expand_ligatures

    text = expand_ligatures(unicodedata.normalize("NFKC", text or "")).lower()
    return " ".join(re.findall(r"[^\W_]+", text))


def matches(record: dict[str, Any], figure: dict[str, Any]) -> bool:
    """Is ``record`` the labelled ``figure``: same page, same label, caption opening with its words,
    and (when the label gives it) the caption paired on its labelled side of the figure?"""
    if record.get("page") != figure["page"]:
        return False
    if figure.get("side"):
        meta = json.loads(record.get("meta") or "{}")
        if meta.get("caption_pairing") != figure["side"]:
            return False  # the right caption text on the wrong figure (the next one down, say)
    if _norm(record.get("figure_label") or "") != _norm(figure["label"]):
        return False
    words = _norm(figure["caption"]).split()[:MATCH_WORDS]
    caption = _norm(record.get("caption_raw") or "")
    label = _norm(figure["label"])
    body = caption[len(label):].strip() if caption.startswith(label) else caption
    return body.split()[: len(words)] == words


def score(records: Sequence[dict[str, Any]], figures: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Figure recall and pairing precision of one document's records against its labels."""
    found = set()
    good = 0
    wrong = []
    for record in records:
        hit = next((i for i, fig in enumerate(figures) if matches(record, fig)), None)
        if hit is None:
            wrong.append({"page": record.get("page"), "label": record.get("figure_label"),
                          "caption": (record.get("caption_raw") or "")[:80]})
        else:
            good += 1
            found.add(hit)
    missed = [fig for i, fig in enumerate(figures) if i not in found]
    return {"figures": len(figures), "found": len(found), "records": len(records), "good": good,
            "missed": missed, "wrong": wrong}


def extract(path: Path, method: str) -> list[dict[str, Any]]:
    """The records ``extract pdf`` makes of one document (in memory, no dataset folder)."""
    from pathasst.config import load_config
    from pathasst.dataset_builders.extract.pdf import SOURCE

    cfg = load_config(SOURCE.config, None, [f"method={method}", "license=unknown"])
    unit = next(iter(SOURCE.iter_units([str(path)], cfg)))
    return list(SOURCE.extract_unit(unit, cfg).records)


def _ratio(num: int, den: int) -> Optional[float]:
    return round(num / den, 4) if den else None


def run(docs: Sequence[dict[str, Any]], cache: Path, methods: Sequence[str], allow_fetch: bool,
        progress=print) -> dict[str, Any]:
    """Score every method on every obtainable document; totals per set and method."""
    results: dict[str, Any] = {"documents": {}, "skipped": {}, "totals": {}}
    paths = {}
    for doc in docs:
        path, why = obtain(doc, cache, allow_fetch)
        if path is None:
            results["skipped"][doc["name"]] = why
            progress(f"  skipped {doc['name']}: {why}")
        else:
            paths[doc["name"]] = path
    for method in methods:
        for doc in docs:
            if doc["name"] not in paths:
                continue
            started = time.perf_counter()
            res = score(extract(paths[doc["name"]], method), doc["figures"])
            res["seconds"] = round(time.perf_counter() - started, 2)
            results["documents"].setdefault(doc["name"], {"set": doc["set"]})[method] = res
            total = results["totals"].setdefault(doc["set"], {}).setdefault(
                method, {"documents": 0, "figures": 0, "found": 0, "records": 0, "good": 0, "seconds": 0.0})
            total["documents"] += 1
            for key in ("figures", "found", "records", "good"):
                total[key] += res[key]
            total["seconds"] = round(total["seconds"] + res["seconds"], 2)
            progress(f"  {method:9s} {doc['name']}: {res['found']}/{res['figures']} figures, "
                     f"{res['good']}/{res['records']} records right")
    for per_method in results["totals"].values():
        for total in per_method.values():
            total["figure_recall"] = _ratio(total["found"], total["figures"])
            total["pairing_precision"] = _ratio(total["good"], total["records"])
    return results


def report(results: dict[str, Any]) -> str:
    lines = ["", "| set | method | documents | figures | figure recall | pairing precision | seconds |",
             "|---|---|---|---|---|---|---|"]
    for split, per_method in sorted(results["totals"].items(), key=lambda kv: (kv[0] == "held_out", kv[0])):
        for method, t in per_method.items():
            lines.append(f"| {split} | {method} | {t['documents']} | {t['figures']} | {t['figure_recall']} "
                         f"({t['found']}/{t['figures']}) | {t['pairing_precision']} ({t['good']}/{t['records']}) "
                         f"| {t['seconds']} |")
    misses = [(name, method, fig) for name, doc in results["documents"].items() for method, res in doc.items()
              if method != "set" for fig in res["missed"]]
    if misses:
        lines += ["", "Missed figures:"]
        lines += [f"  {method}: {name} p{fig['page']} {fig['label']}: {fig['caption']}" for name, method, fig in misses]
    wrong = [(name, method, rec) for name, doc in results["documents"].items() for method, res in doc.items()
             if method != "set" for rec in res["wrong"]]
    if wrong:
        lines += ["", "Records that match no labelled figure:"]
        lines += [f"  {method}: {name} p{rec['page']} {rec['label']}: {rec['caption']}" for name, method, rec in wrong]
    if results["skipped"]:
        lines += ["", f"Skipped {len(results['skipped'])} document(s): see above."]
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pathasst.benchmarks.perf.extract_quality",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=None, help="the labelled documents (YAML)")
    parser.add_argument("--docs", type=Path, default=None, help="cache folder of the PDFs")
    parser.add_argument("--fetch", action="store_true", help="download missing documents (apt-get download)")
    parser.add_argument("--methods", default="geometry", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--set", default="tuning,tuning_2,tuning_3,tuning_4,tuning_5,tuning_6,held_out", help="which sets of documents to score")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    sets = {s.strip() for s in args.set.split(",")}
    docs = [d for d in load_labels(args.labels or default_labels()) if d["set"] in sets]
    results = run(docs, args.docs or default_cache(), methods, args.fetch)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    if not results["documents"]:
        print("no document could be scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
