"""Export a PathInstruct folder in LLaVA's JSON conversation format, for LLaVA-style trainers.

LLaVA's ``train.py`` reads a JSON list of ``{"id", "image", "conversations": [{"from": "human" |
"gpt", "value"}]}`` with the image file relative to its ``--image_folder`` and the ``<image>`` token
in the first human turn. Images are written once each (named by the hash of their bytes) to
``<FILE stem>_images/`` beside FILE, and ``image`` is relative to FILE's folder: pass that folder as
``--image_folder``.

LLaVA has no tool roles, so tool dialogues are written the way Hermes-style chat templates render
them: the assistant's call as ``<tool_call>{"name", "arguments"}</tool_call>`` in a gpt turn and the
tool's result as ``<tool_response>...</tool_response>`` in a human turn (turns still alternate); the
offered tool schemas go in an extra ``tools`` key. Every entry also carries ``split`` and ``task_type``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

IMAGE_TOKEN = "<image>"


def _ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    return ".png"


def _text_of(message: Mapping[str, Any]) -> str:
    return "\n".join(p.get("text") or "" for p in message.get("content") or [] if p.get("type") == "text").strip()


def to_llava(record: Mapping[str, Any], image: str | None) -> dict[str, Any]:
    """One PathInstruct record as a LLaVA conversation (``image``: its path, or None)."""
    turns: list[dict[str, str]] = []
    placed = image is None
    for message in record["messages"]:
        role = message["role"]
        if role == "system":
            continue
        if role == "assistant" and message.get("tool_calls"):
            calls = [json.dumps({"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])},
                                ensure_ascii=False) for c in message["tool_calls"]]
            value = "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)
            text = _text_of(message)
            turns.append({"from": "gpt", "value": f"{text}\n{value}" if text else value})
            continue
        if role == "tool":
            turns.append({"from": "human", "value": f"<tool_response>\n{_text_of(message)}\n</tool_response>"})
            continue
        value = _text_of(message)
        if role == "user" and not placed:
            value = f"{IMAGE_TOKEN}\n{value}"
            placed = True
        turns.append({"from": "human" if role == "user" else "gpt", "value": value})
    entry: dict[str, Any] = {"id": record["id"]}
    if image is not None:
        entry["image"] = image
    entry["conversations"] = turns
    entry["task_type"] = record.get("task_type")
    if record.get("tools"):
        entry["tools"] = [json.loads(t) for t in record["tools"]]
    return entry


def export_llava(folder: str | os.PathLike, file: str | os.PathLike) -> dict[str, Any]:
    """Write every record of the PathInstruct ``folder`` to ``file`` in LLaVA's format.

    Returns:
        ``{"file", "images_dir", "entries", "images"}``.
    """
    import pyarrow.parquet as pq

    from pathasst.dataset_builders.curate.split import input_shards

    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    images_dir = file.parent / f"{file.stem}_images"
    images_dir.mkdir(exist_ok=True)
    entries, written = [], set()
    for path, split in input_shards(folder):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            for record in batch.to_pylist():
                image = record.get("image") or {}
                rel = None
                if image.get("bytes"):
                    data = image["bytes"]
                    name = hashlib.sha256(data).hexdigest()[:20] + _ext(data)
                    if name not in written:
                        (images_dir / name).write_bytes(data)
                        written.add(name)
                    rel = f"{images_dir.name}/{name}"
                entries.append({**to_llava(record, rel), "split": split})
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(entries, ensure_ascii=False, indent=1))
    tmp.replace(file)
    return {"file": str(file), "images_dir": str(images_dir), "entries": len(entries), "images": len(written)}
