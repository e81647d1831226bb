"""PathInstruct records as the inputs of transformers' ``apply_chat_template(messages, tools=...)``.

The dataset stores what Arrow can hold in one schema: content as lists of ``{"type", "text"}``
parts, tool-call arguments and tool schemas as JSON strings, and null for the keys a message does
not use. :func:`chat_inputs` turns a record back into the plain structures chat templates read:
content as a string (the image part becomes ``image_token``, or a content list is kept for
multimodal processors), ``tool_calls[].function.arguments`` as a dict, ``tools`` as dicts, and no
null keys.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


def chat_inputs(record: Mapping[str, Any], *, image_token: str | None = None,
                keep_content_lists: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(messages, tools)`` of a PathInstruct record, ready for ``apply_chat_template``.

    Args:
        record: a PathInstruct record (as written, or as ``load_dataset`` returns it).
        image_token: text standing for the image in text-only templates (``"<image>"``); None drops it.
        keep_content_lists: keep ``[{"type": "image"}, {"type": "text", "text": ...}]`` content, as
            multimodal processors (LLaVA's) expect.
    """
    messages = []
    for message in record["messages"]:
        parts = message.get("content") or []
        if keep_content_lists:
            content: Any = [{"type": p["type"], **({"text": p["text"]} if p["type"] == "text" else {})} for p in parts]
        else:
            pieces = []
            for part in parts:
                if part["type"] == "image":
                    if image_token:
                        pieces.append(image_token)
                else:
                    pieces.append(part.get("text") or "")
            content = "\n".join(pieces)
        out: dict[str, Any] = {"role": message["role"], "content": content}
        if message.get("tool_calls"):
            out["tool_calls"] = [
                {"id": call.get("id"), "type": call.get("type") or "function",
                 "function": {"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])}}
                for call in message["tool_calls"]
            ]
        for key in ("name", "tool_call_id"):
            if message.get(key):
                out[key] = message[key]
        messages.append(out)
    tools = [json.loads(t) for t in record.get("tools") or []]
    return messages, tools
