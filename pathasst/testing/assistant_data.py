"""Small PathCap and PathInstruct folders for PathAsst tests, benchmarks and smoke runs.

Written through the public formats (:class:`pathasst.writer.DatasetWriter` with the ``pathcap`` and
``pathinstruct`` specs), so the trainer reads them exactly as it reads the real datasets. Images are
crops of scikit-image's real IHC micrograph (``tissue_tile``), as photographed or re-stained as H&E.

The PathInstruct folder holds description, multi-turn conversation and tool dialogues. In a tool
dialogue the assistant calls ``ihc_quantify`` and the tool result is the tool's real output **on
that record's image** (the tool runs here), and the final answer quotes its numbers: the model is
taught to answer from the result, never from text written in advance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _text(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]


def _msg(role: str, content: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "tool_calls": extra.get("tool_calls"), "name": extra.get("name"),
            "tool_call_id": extra.get("tool_call_id")}


def write_pathcap(folder: str | Path, n: int = 8, *, size: int = 64) -> Path:
    """A PathCap folder of ``n`` image-caption pairs (all in the train split)."""
    from pathasst.records import get_spec
    from pathasst.testing.images import tissue_tile
    from pathasst.writer import DatasetWriter

    captions = [
        "Immunohistochemistry of colonic mucosa: DAB-positive epithelial cells lining the glands, hematoxylin counterstain.",
        "H&E section of colon showing crypts with goblet cells in the lamina propria.",
        "Colonic glands with brown DAB staining of epithelial nuclei.",
        "Normal colonic mucosa, hematoxylin and eosin.",
    ]
    folder = Path(folder)
    with DatasetWriter(folder, get_spec("pathcap"), splits={"train": 1.0}, overwrite=True) as writer:
        for i in range(n):
            stain = "ihc" if i % 2 == 0 else "he"
            img = tissue_tile(size, seed=i, stain=stain)
            caption = captions[i % len(captions)]
            writer.add({"id": f"cap-{i}", "image": img, "caption": caption, "caption_raw": caption,
                        "source": "private", "source_id": f"lab/{i}", "figure_id": f"fig-{i}", "license": "CC0",
                        "width": size, "height": size})
        writer.finalize()
    return folder


def ihc_tool_dialogue(record_id: str, image: Any, request: str) -> dict[str, Any]:
    """One tool dialogue: the request, the ``ihc_quantify`` call, its real result, an answer quoting it."""
    from pathasst.tools import get, openai_schema

    tool = get("ihc_quantify")
    result = tool.run(image)
    call_id = f"call_{record_id}"
    answer = (f"The IHC measurement gives a DAB-positive area of {result['dab_positive_fraction'] * 100:.1f}% of the "
              f"tissue, and {result['positive_nuclei']} of {result['nuclei_count']} nuclei are positive "
              f"({result['positive_nuclei_fraction'] * 100:.1f}%).")
    call = {"id": call_id, "type": "function", "function": {"name": "ihc_quantify", "arguments": "{}"}}
    return {
        "messages": [
            _msg("user", [{"type": "image", "text": None}, {"type": "text", "text": request}]),
            _msg("assistant", [], tool_calls=[call]),
            _msg("tool", _text(json.dumps(result, sort_keys=True)), name="ihc_quantify", tool_call_id=call_id),
            _msg("assistant", _text(answer)),
        ],
        "tools": [json.dumps(openai_schema(tool), sort_keys=True)],
        "result": result,
    }


def write_pathinstruct(folder: str | Path, n: int = 8, *, size: int = 64) -> Path:
    """A PathInstruct folder of ``n`` dialogues: every other one an IHC tool dialogue."""
    from pathasst.records import get_spec
    from pathasst.testing.images import tissue_tile
    from pathasst.writer import DatasetWriter

    requests = ["What fraction of the nuclei are positive in this IHC stain?",
                "Quantify the DAB staining in this image.",
                "How much of the tissue is DAB-positive?"]
    folder = Path(folder)
    with DatasetWriter(folder, get_spec("pathinstruct"), splits={"train": 1.0}, overwrite=True) as writer:
        for i in range(n):
            rid = f"inst-{i}"
            if i % 2 == 0:
                img = tissue_tile(size, seed=100 + i, stain="ihc")
                d = ihc_tool_dialogue(rid, img, requests[(i // 2) % len(requests)])
                record = {"messages": d["messages"], "tools": d["tools"], "task_type": "tool"}
            elif i % 4 == 1:
                img = tissue_tile(size, seed=100 + i, stain="he")
                record = {"messages": [
                    _msg("user", [{"type": "image", "text": None}, {"type": "text", "text": "Describe the image."}]),
                    _msg("assistant", _text("Colonic mucosa with regular crypts, hematoxylin and eosin.")),
                    _msg("user", _text("Is there dysplasia?")),
                    _msg("assistant", _text("No: the crypts are regular and the nuclei are basal.")),
                ], "tools": [], "task_type": "conversation"}
            else:
                img = tissue_tile(size, seed=100 + i, stain="ihc")
                record = {"messages": [
                    _msg("user", [{"type": "image", "text": None}, {"type": "text", "text": "What stain is this?"}]),
                    _msg("assistant", _text("An immunohistochemical stain: brown DAB with a blue hematoxylin "
                                            "counterstain.")),
                ], "tools": [], "task_type": "description"}
            writer.add({"id": rid, "image": img, "figure_id": f"fig-{i}", "generator": "test-fixture", **record})
        writer.finalize()
    return folder


__all__ = ["ihc_tool_dialogue", "save_tiny_assistant", "write_pathcap", "write_pathinstruct"]


def save_tiny_assistant(folder: str | Path, *, seed: int = 0) -> Path:
    """An untrained ``tiny`` PathAsst (two-layer CLIP tower, two-layer Llama) saved as a model folder:
    what the chat command, the server and the agent tests load. Its answers are noise."""
    from pathasst.trainers.pathasst import DEFAULT_CAPTION_PROMPTS, PathAsstConfig, build_assistant

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # data is required by the training config and not read by build_assistant
    cfg = PathAsstConfig(data=str(folder.parent), vision_tower="tiny", language_model="tiny", seed=seed)
    texts = list(DEFAULT_CAPTION_PROMPTS) + ["Colonic glands with DAB-positive nuclei.", "ihc_quantify",
                                             '{"name": "ihc_quantify", "arguments": {}}']
    model, processor, facts = build_assistant(cfg, texts)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "pathasst.json").write_text(json.dumps({"format": 1, "family": "pathasst", "stage": 0, "build": facts}))
    return folder
