"""`pathasst curate align DATASET... --out DIR`: give every detected panel its own sub-caption.

Reads the subfigure-level PathCap folder written by ``pathasst curate detect`` (optionally after
``curate split`` and ``curate refine``) and writes subfigure-level PathCap records whose
``caption`` describes their panel only.

Records are grouped by their parent ``figure_id``. For each group the parent caption is split
into ``shared_prefix``, ``shared_suffix`` and ``[{label, subcaption}]``:

- from ``meta.split`` when it holds the figure-level panels (``curate split`` ran on the figures
  before ``curate detect``, which copies the parent's meta into every subfigure; ``curate refine``
  keeps it in step with the refined caption);
- else with :func:`pathasst.dataset_builders.curate.captions.split_caption` on the parent caption:
  the ``caption`` of a subfigure record that was not split yet (``curate detect`` gives every
  subfigure the parent's caption), or of one ``curate split`` could not match; failing both
  (every subfigure already carries its sub-caption), the ``caption_raw`` of the group.

Each subfigure record (``bbox`` set) is then paired with one sub-caption:

1. **by letter**: its ``subfigure_label`` against the panel labels, case-insensitively (ranges such
   as ``(B–D)`` are already expanded by the splitter; a label named twice gets both texts);
2. **by reading order**, for the subfigures without a letter: they are sorted top to bottom, then
   left to right (a panel joins a row when its vertical centre lies within ``row_tolerance`` times
   the height of the row's first panel from that panel's centre) and paired in order with the
   sub-captions no letter took, in the splitter's order, **only when both counts agree**; such
   records say ``meta.align.method = "reading_order"`` and take the sub-caption's label as
   ``subfigure_label``.

An aligned record gets ``subfigure_label`` (the letter matched or assigned), ``caption`` = its
sub-caption with the shared prefix and suffix distributed into it (``distribute=false`` leaves
them out), ``caption_raw`` untouched (the parent's caption as found), and ``meta.align``
(``method``, ``panel``, ``shared_prefix``, ``shared_suffix``, ``distributed``, ``source`` of the
split, ``rules``). Whole figures (no ``bbox``: one panel, or parents kept by ``keep_parents``) and
records already aligned (``meta.align`` present) pass through unchanged.

The ledger (``rejects.jsonl``):

- ``unmatched panel: ...``: a subfigure record with no sub-caption for its letter, a letter taken
  twice, or no letter while the counts disagree (or the caption names no panels) - one line per
  such *input record*, keyed by its id;
- ``unmatched sub-caption: ...``: a sub-caption that no panel took - an *extra* line, keyed
  ``<figure_id>#<label>`` (``<figure_id>#<n>`` for an unlabelled one, n its 1-based position),
  that stands for no input record;
- records without id, repeated ids, and records the writer refuses, as in every stage.

**Accounting rule**: inputs = records written + ledger lines - ``unmatched sub-caption`` lines
(that is: inputs = records + rejects + the documented extra ledger lines). ``summary.json``
states the rule and checks it (``accounted``).

The unit of resumption is the parent ``figure_id``: all records and ledger lines of one figure
commit together, and rerunning the same command continues a killed run. Records keep the split
(train/validation/test) they came from. ``summary.json`` and a one-line summary report what was
done. This module imports only the standard library at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pathasst.dataset_builders.curate.split import (
    add_common_arguments,
    command_line,
    dump_meta,
    load_meta,
    parse_common,
    summary_line,
)

log = logging.getLogger(__name__)

STAGE = "align"
UNMATCHED_PANEL = "unmatched panel"
UNMATCHED_SUBCAPTION = "unmatched sub-caption"
ACCOUNTING_RULE = ("inputs = records written + ledger lines - 'unmatched sub-caption' lines "
                   "(each unmatched sub-caption is an extra ledger line keyed <figure_id>#<label>)")


@dataclasses.dataclass
class AlignConfig:
    """Settings of ``curate align`` (``key=value`` on the command line or a ``--recipe`` YAML).

    Attributes:
        distribute: copy the shared prefix and suffix into every sub-caption (the default), so that
            each caption reads as a full caption of its panel.
        row_tolerance: reading order: a panel joins a row when its vertical centre is within this
            fraction of the row's first panel's height from that panel's centre.
        shard: ``K/N``: process only the figures whose ``figure_id`` hashes to the K-th of N parts.
        inputs: the input dataset folders (filled in from the command line).
        rules_version: version of the splitting rules (filled in; part of the config hash).
    """

    distribute: bool = True
    row_tolerance: float = 0.5
    shard: Optional[str] = None
    inputs: list[str] = dataclasses.field(default_factory=list)
    rules_version: str = ""

    def __post_init__(self) -> None:
        from pathasst.inputs import parse_shard

        parse_shard(self.shard)
        if not 0 <= float(self.row_tolerance) <= 10:
            raise ValueError(f"row_tolerance must be between 0 and 10 (got {self.row_tolerance})")


# --------------------------------------------------------------------------------------------
# the pure part: one figure's records and its caption


@dataclasses.dataclass(frozen=True)
class SubCaption:
    """One entry of a parent caption's split: its label (None: unlabelled) and its text."""

    label: Optional[str]
    text: str
    position: int  # 1-based, in the splitter's order

    @property
    def key(self) -> str:
        return self.label if self.label is not None else str(self.position)


@dataclasses.dataclass
class FigureSplit:
    """A parent caption split for alignment; ``source`` says where the split came from."""

    shared_prefix: str
    shared_suffix: str
    subcaptions: list[SubCaption]
    distributed: bool
    source: str  # meta.split | caption | caption_raw


@dataclasses.dataclass
class Alignment:
    """What alignment made of one figure's records.

    Attributes:
        records: ``(input position, record)`` to write, in input order.
        rejects: ``(input position, id, reason, info)`` for subfigure records left unmatched.
        extra: ``(key, reason, info)`` for sub-captions no panel took (extra ledger lines).
        counts: counter name to count (label, reading_order, passed_through, already_aligned).
    """

    records: list[tuple[int, dict[str, Any]]] = dataclasses.field(default_factory=list)
    rejects: list[tuple[int, str, str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    extra: list[tuple[str, str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        if n:
            self.counts[kind] = self.counts.get(kind, 0) + n


def _join(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def reading_order(boxes: Sequence[Sequence[float]], row_tolerance: float = 0.5) -> list[int]:
    """Indices of COCO ``[x, y, w, h]`` boxes in reading order: rows top to bottom, each row left
    to right. A box joins the current row when its vertical centre lies within ``row_tolerance``
    times the height of the row's first box from that box's centre."""
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][1] + boxes[i][3] / 2, boxes[i][0]))
    rows: list[list[int]] = []
    for i in order:
        cy = boxes[i][1] + boxes[i][3] / 2
        if rows:
            first = boxes[rows[-1][0]]
            if abs(cy - (first[1] + first[3] / 2)) <= row_tolerance * first[3]:
                rows[-1].append(i)
                continue
        rows.append([i])
    return [i for row in rows for i in sorted(row, key=lambda j: (boxes[j][0], boxes[j][1]))]


def _split_from_meta(split: Mapping[str, Any]) -> Optional[FigureSplit]:
    panels = split.get("panels")
    if not isinstance(panels, list) or not panels:
        return None
    if split.get("markers") == []:  # one panel with label None: the caption names no panels
        return FigureSplit(str(split.get("shared_prefix") or ""), str(split.get("shared_suffix") or ""), [],
                           bool(split.get("distributed")), "meta.split")
    subcaptions = []
    for position, panel in enumerate(panels, start=1):
        if not isinstance(panel, Mapping) or not isinstance(panel.get("subcaption"), str):
            return None
        label = panel.get("label")
        subcaptions.append(SubCaption(str(label) if label not in (None, "") else None, panel["subcaption"], position))
    return FigureSplit(str(split.get("shared_prefix") or ""), str(split.get("shared_suffix") or ""),
                       subcaptions, bool(split.get("distributed")), "meta.split")


def split_for_group(rows: Sequence[Mapping[str, Any]], metas: Sequence[Mapping[str, Any]]) -> Optional[FigureSplit]:
    """The parent caption's split for one figure's records (see the module docstring), or None
    when no record holds a caption."""
    from pathasst.dataset_builders.curate.captions import split_caption

    for meta in metas:
        split = meta.get("split")
        if isinstance(split, Mapping):
            found = _split_from_meta(split)
            if found is not None:
                return found
    caption, source = None, "caption"
    for row, meta in zip(rows, metas):  # a caption curate split left whole is the parent's caption
        split = meta.get("split")
        if (row.get("caption") or "").strip() and (not isinstance(split, Mapping) or split.get("match") != "label"):
            caption = row["caption"]
            break
    if caption is None:
        source = "caption_raw"
        caption = next((r["caption_raw"] for r in rows if (r.get("caption_raw") or "").strip()), None)
    if caption is None:
        return None
    result = split_caption(caption)
    if not result.markers_found:  # one panel with label None: the caption names no panels
        return FigureSplit(result.shared_prefix, result.shared_suffix, [], False, source)
    subcaptions = [SubCaption(p.label, p.subcaption, i) for i, p in enumerate(result.panels, start=1)]
    return FigureSplit(result.shared_prefix, result.shared_suffix, subcaptions, False, source)


def align_figure(figure_id: str, rows: Sequence[Mapping[str, Any]], cfg: AlignConfig) -> Alignment:
    """Align one figure's records (all sharing ``figure_id``) with the sub-captions of its caption."""
    from pathasst.dataset_builders.curate.captions import RULES_VERSION

    out = Alignment()
    metas = [load_meta(r) for r in rows]
    subs: list[int] = []
    for i, (row, meta) in enumerate(zip(rows, metas)):
        if row.get("bbox") is None:
            out.records.append((i, dict(row)))
            out.count("passed_through")
        elif isinstance(meta.get("align"), Mapping):
            out.records.append((i, dict(row)))
            out.count("already_aligned")
        else:
            subs.append(i)
    if not subs:
        return out

    split = split_for_group([rows[i] for i in subs], [metas[i] for i in subs])
    if split is None or not split.subcaptions:
        why = "the parent caption is empty" if split is None else "the parent caption names no panels"
        for i in subs:
            out.rejects.append((i, str(rows[i]["id"]), f"{UNMATCHED_PANEL}: {why}",
                                {"figure_id": figure_id, "subfigure_label": rows[i].get("subfigure_label")}))
        out.count("unmatched_panels", len(subs))
        return out

    # sub-captions by label; a label named twice gets both texts
    by_label: dict[str, list[SubCaption]] = {}
    for sc in split.subcaptions:
        if sc.label is not None:
            by_label.setdefault(sc.label.casefold(), []).append(sc)
    taken: set[int] = set()  # positions of the sub-captions given to a panel
    matched: dict[int, tuple[list[SubCaption], str]] = {}  # input position -> (sub-captions, method)
    lettered_by: dict[str, str] = {}
    unlettered: list[int] = []
    labels = [sc.key for sc in split.subcaptions]
    for i in subs:
        raw_label = rows[i].get("subfigure_label")
        key = str(raw_label).strip().strip("()").casefold() if raw_label not in (None, "") else ""
        if not key:
            unlettered.append(i)
            continue
        if key in lettered_by:
            out.rejects.append((i, str(rows[i]["id"]), f"{UNMATCHED_PANEL}: letter '{raw_label}' is already "
                                f"taken by {lettered_by[key]}", {"figure_id": figure_id, "subfigure_label": raw_label}))
            continue
        found = by_label.get(key)
        if not found:
            out.rejects.append((i, str(rows[i]["id"]), f"{UNMATCHED_PANEL}: no sub-caption for letter "
                                f"'{raw_label}' (the caption names {', '.join(labels)})",
                                {"figure_id": figure_id, "subfigure_label": raw_label}))
            continue
        lettered_by[key] = str(rows[i]["id"])
        matched[i] = (found, "label")
        taken.update(sc.position for sc in found)

    if unlettered:
        left = [sc for sc in split.subcaptions if sc.position not in taken]
        if len(left) == len(unlettered):
            boxes = [[float(v) for v in rows[i]["bbox"]] for i in unlettered]
            for j, sc in zip(reading_order(boxes, float(cfg.row_tolerance)), left):
                matched[unlettered[j]] = ([sc], "reading_order")
                taken.add(sc.position)
        else:
            for i in unlettered:
                out.rejects.append((i, str(rows[i]["id"]), f"{UNMATCHED_PANEL}: no letter, and reading order "
                                    f"needs as many panels as sub-captions ({len(unlettered)} panels without "
                                    f"a letter, {len(left)} sub-captions left)", {"figure_id": figure_id}))
    out.count("unmatched_panels", len(out.rejects))

    for sc in split.subcaptions:
        if sc.position not in taken:
            out.extra.append((f"{figure_id}#{sc.key}", f"{UNMATCHED_SUBCAPTION}: no panel for "
                              f"'{sc.label if sc.label is not None else f'sub-caption {sc.position}'}' among the "
                              f"{len(subs)} detected", {"figure_id": figure_id, "label": sc.label,
                                                        "subcaption": sc.text[:300]}))
    out.count("unmatched_subcaptions", len(out.extra))

    for i, (found, method) in matched.items():
        text = _join(*(sc.text for sc in found))
        distributed = cfg.distribute and not split.distributed
        caption = _join(split.shared_prefix, text, split.shared_suffix) if distributed else text
        if not caption:
            out.rejects.append((i, str(rows[i]["id"]), f"{UNMATCHED_PANEL}: the sub-caption of "
                                f"'{found[0].key}' is empty", {"figure_id": figure_id}))
            out.count("unmatched_panels")
            continue
        meta = dict(metas[i])
        meta["align"] = {
            "method": method,
            "panel": found[0].label,
            "shared_prefix": split.shared_prefix,
            "shared_suffix": split.shared_suffix,
            "distributed": cfg.distribute or split.distributed,
            "source": split.source,
            "rules": RULES_VERSION,
        }
        label = found[0].label if method == "reading_order" else rows[i].get("subfigure_label")
        out.records.append((i, {**rows[i], "subfigure_label": label, "caption": caption, "meta": dump_meta(meta)}))
        out.count(method)
    out.records.sort(key=lambda item: item[0])
    out.rejects.sort(key=lambda item: item[0])
    return out


# --------------------------------------------------------------------------------------------
# the stage


def _group_sizes(shards: Sequence[tuple[Path, str]]) -> dict[str, int]:
    """How many rows each ``figure_id`` has (read without the images)."""
    import pyarrow.parquet as pq

    sizes: dict[str, int] = {}
    for path, _ in shards:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=4096, columns=["id", "figure_id"]):
            for rid, fid in zip(batch.column("id").to_pylist(), batch.column("figure_id").to_pylist()):
                key = _group_key(rid, fid)
                sizes[key] = sizes.get(key, 0) + 1
    return sizes


def _group_key(rid: Any, fid: Any) -> str:
    if fid not in (None, ""):
        return str(fid)
    return str(rid) if rid not in (None, "") else ""


def align_dataset(
    datasets: list[str],
    out: str | Path,
    cfg: Optional[AlignConfig] = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: Optional[str] = None,
) -> dict[str, Any]:
    """Run the align stage (see the module docstring) over ``datasets`` into the folder ``out``.

    Rows are streamed; a figure's rows are held in memory until its last one is read (``curate
    detect`` writes them next to each other), then aligned and written as one writer unit.

    Returns:
        The summary (also written to ``out/summary.json``).

    Raises:
        InputError: a missing or non-PathCap input. OutputError: an unusable output folder.
    """
    from tqdm.auto import tqdm

    from pathasst.dataset_builders.curate.captions import RULES_VERSION
    from pathasst.dataset_builders.curate.split import _check_columns, _input_splits, input_shards, iter_rows
    from pathasst.inputs import in_shard, parse_shard
    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    started = time.monotonic()
    cfg = dataclasses.replace(cfg or AlignConfig(), inputs=[str(d) for d in datasets], rules_version=RULES_VERSION)
    shards = [item for dataset in datasets for item in input_shards(dataset)]
    for dataset in datasets:
        _check_columns(input_shards(dataset)[0][0], dataset)
    part = parse_shard(cfg.shard)
    splits, salt = _input_splits(datasets, shards)
    sizes = _group_sizes(shards)
    counts: dict[str, int] = {}
    inputs = 0

    def count(kind: str, n: int = 1) -> None:
        if n:
            counts[kind] = counts.get(kind, 0) + n

    card = (
        "# PathCap (subfigures aligned with their sub-captions)\n\n"
        "Subfigure-level pathology image-caption pairs: each panel found by `pathasst curate detect` carries the "
        "sub-caption of its panel, matched by its letter or, where letters are missing, by reading order "
        "(`meta.align.method`), with the caption's shared prefix and suffix distributed (rules version "
        + RULES_VERSION + "). `caption_raw` is the parent figure's caption as found; `subfigure_label` the panel "
        "letter. Panels and sub-captions that could not be matched are listed in `rejects.jsonl` (an unmatched "
        "sub-caption is an extra line keyed `<figure_id>#<label>`).\n\n"
        "```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\")\n```\n"
    )
    with DatasetWriter(out, get_spec("pathcap"), config=cfg, resume=resume, overwrite=overwrite, splits=splits,
                       split_salt=salt, command=command or f"pathasst curate {STAGE}") as writer:
        pending: dict[str, list[tuple[dict[str, Any], str]]] = {}
        bar = tqdm(total=sum(sizes.values()), desc=f"curate {STAGE}", unit="rec", disable=not progress)

        def flush(fid: str) -> None:
            group = pending.pop(fid)
            if writer.is_done(fid):
                count("already_done", len(group))
                return
            split = group[0][1]  # a unit's records share a split: the figure's
            seen: set[str] = set()
            rows: list[dict[str, Any]] = []
            with writer.unit(fid):
                for row, _ in group:
                    rid = row.get("id")
                    if rid in (None, ""):
                        writer.reject(f"{fid}#noid{len(seen)}", "invalid record: no id", figure_id=fid)
                        count("rejected")
                    elif str(rid) in seen:
                        writer.reject(str(rid), f"duplicate id: '{rid}' occurs more than once in the input")
                        count("rejected")
                    else:
                        seen.add(str(rid))
                        rows.append(row)
                try:
                    result = align_figure(fid, rows, cfg)
                except Exception as exc:  # noqa: BLE001 - one bad figure must not stop the run
                    for row in rows:
                        writer.reject(str(row["id"]), f"align error: {type(exc).__name__}: {str(exc)[:300]}")
                    count("rejected", len(rows))
                    return
                for _, record in result.records:
                    if not writer.add(record, split=split):
                        count("rejected")
                for _, rid, reason, info in result.rejects:
                    writer.reject(rid, reason, **info)
                for key, reason, info in result.extra:
                    writer.reject(key, reason, **info)
                for kind, n in result.counts.items():
                    count(kind, n)

        for row, split in iter_rows(shards):
            bar.update(1)
            fid = _group_key(row.get("id"), row.get("figure_id"))
            if part is not None and not in_shard(fid, part):
                continue
            inputs += 1
            pending.setdefault(fid, []).append((row, split))
            if len(pending[fid]) >= sizes[fid]:
                flush(fid)
        for fid in list(pending):  # cannot happen unless the input changed while read
            flush(fid)
        bar.close()
        result = writer.finalize(card)

    extra = result.reject_reasons.get(UNMATCHED_SUBCAPTION, 0)
    summary = {
        "out": str(out),
        "stage": STAGE,
        "inputs": inputs,
        "this_run": counts,
        "records": result.records,
        "records_total": result.total_records,
        "rejected_total": result.rejected,
        "reject_reasons": result.reject_reasons,
        "extra_ledger_lines": extra,
        "accounting_rule": ACCOUNTING_RULE,
        "seconds": round(time.monotonic() - started, 3),
    }
    summary["accounted"] = result.total_records + result.rejected - extra == inputs
    if not summary["accounted"]:
        log.warning("accounting: %d input records but %d records + %d ledger lines - %d unmatched sub-caption "
                    "lines in %s", inputs, result.total_records, result.rejected, extra, out)
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


# --------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Match the subfigure records of `curate detect` with the sub-captions of their parent's caption: by panel "
        "letter, else by reading order (top to bottom, left to right) when the counts agree. Writes "
        "subfigure-level records with subfigure_label, caption (the sub-caption with the shared prefix/suffix; "
        "distribute=false leaves them out) and caption_raw (the parent's caption). Whole figures pass through. "
        "Unmatched panels and sub-captions go to rejects.jsonl; accounting: " + ACCOUNTING_RULE + ". Rerunning "
        "resumes (unit: the parent figure_id)."
    )
    add_common_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    datasets, cfg = parse_common(args, AlignConfig)
    summary = align_dataset(datasets, args.out, cfg, overwrite=args.overwrite, resume=args.resume,
                            progress=not args.no_progress, command=command_line(STAGE))
    c = summary["this_run"]
    described = (f"{c.get('label', 0)} subfigures matched by letter, {c.get('reading_order', 0)} by reading order, "
                 f"{c.get('passed_through', 0)} whole figures passed through")
    if c.get("already_aligned"):
        described += f", {c['already_aligned']} already aligned"
    print(summary_line(summary, described)
          + f"; {summary['extra_ledger_lines']} of the ledger lines are unmatched sub-captions "
          f"(inputs = records + ledger lines - those)")
    return 0


if __name__ == "__main__":  # python -m pathasst.dataset_builders.curate.align DATASET --out DIR
    from pathasst.cli import main as _main

    sys.exit(_main(["curate", "align", *sys.argv[1:]]))
