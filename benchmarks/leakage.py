"""`bench run --train-data FOLDER...`: how many evaluation items are near-duplicates of training records.

The same tests and defaults as ``curate decontam`` (its functions are reused, not copied): an image
within pHash Hamming distance 6 of a training image, or a text (caption, question, answer, options)
sharing a 13-word run with a training record's ``caption``/``caption_raw``. The report counts items,
not pairs, and keeps a few examples with both ids as evidence.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

MAX_DISTANCE = 6
NGRAM = 13
_TEXT_ROLES = ("text", "question", "answer", "options")


def leakage_report(task, data, train_refs: list[str], *, max_distance: int = MAX_DISTANCE, ngram: int = NGRAM,
                   examples: int = 5) -> dict[str, Any]:
    """Per-task leakage counts of ``data`` against the training datasets ``train_refs``."""
    from pathasst.dataset_builders.curate.decontam import NgramTable, _TextEntry
    from pathasst.dataset_builders.curate.dedup import compute_phash, iter_batches, normalized_words, open_pathcap
    from pathasst.dataset_builders.curate.near_duplicates import NearDuplicateIndex
    from pathasst.images import image_phash

    # evaluation side: image hashes and an n-gram table of its texts
    img_col = task.columns.get("image")
    eval_hashes: list[str | None] = []
    if img_col:
        for im in data.ds.cast_column(img_col, _undecoded())[img_col]:
            try:
                eval_hashes.append(image_phash(im["bytes"] if im.get("bytes") else im["path"]))
            except Exception:  # noqa: BLE001 - an unreadable image cannot be matched; counted below
                eval_hashes.append(None)
    table = NgramTable(ngram)
    for role in _TEXT_ROLES:
        col = task.columns.get(role)
        if not col:
            continue
        for pos, value in enumerate(data.ds[col]):
            texts = value if isinstance(value, list) else [value]
            for t in texts:
                table.add(_TextEntry(0, data.ids[pos], data.split, col, normalized_words(str(t))))
    table.freeze()

    index = NearDuplicateIndex(max_distance=max_distance)
    by_image: dict[str, dict] = {}
    by_text: dict[str, dict] = {}
    train_records = 0
    for ref in train_refs:
        ds = open_pathcap(ref, what="--train-data")
        ids, hashes = [], []
        for split, batch in iter_batches(ds):
            for k, rid in enumerate(batch["id"]):
                train_records += 1
                ph = (batch.get("phash") or [None] * len(batch["id"]))[k] or compute_phash(batch["image"][k])
                if ph:
                    ids.append(f"{ref}:{rid}")
                    hashes.append(ph)
                for field in ("caption", "caption_raw"):
                    text = (batch.get(field) or [None] * len(batch["id"]))[k]
                    if not text:
                        continue
                    words = normalized_words(text)
                    for hits in table.matches(words, per_benchmark=32).values():
                        for start, entry in hits:
                            by_text.setdefault(entry.record_id, {"eval_id": entry.record_id, "train_id": f"{ref}:{rid}",
                                                                 "column": entry.column, "train_field": field,
                                                                 "ngram": " ".join(words[start:start + ngram])})
        if hashes:
            index.add(ids, hashes)
    valid = [(i, h) for i, h in enumerate(eval_hashes) if h]
    if valid and len(index):
        matches = index.query([h for _, h in valid])
        for q, train_id, dist in matches:
            eid = data.ids[valid[q][0]]
            if eid not in by_image or dist < by_image[eid]["distance"]:
                by_image[eid] = {"eval_id": eid, "train_id": str(train_id), "distance": int(dist)}
    leaked = set(by_image) | set(by_text)
    report = {
        "task": task.name,
        "items": len(data.ds),
        "train_records": train_records,
        "train_data": list(train_refs),
        "near_duplicate_items": len(leaked),
        "by_image": len(by_image),
        "by_text": len(by_text),
        "images_unhashable": int(sum(h is None for h in eval_hashes)),
        "rule": f"pHash Hamming distance <= {max_distance} or a shared {ngram}-word run (as curate decontam)",
        "examples": {"image": sorted(by_image.values(), key=lambda e: e["distance"])[:examples],
                     "text": list(by_text.values())[:examples]},
        "leaked_ids": sorted(leaked),
    }
    return report


def _undecoded():
    from datasets import Image

    return Image(decode=False)
