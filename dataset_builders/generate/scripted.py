"""A deterministic stand-in for a chat model that answers the generation prompts from the caption.

Used with :class:`pathasst.testing.openai_server.OpenAITestServer` by the tests, the benchmark and
anyone who wants to try ``generate instruct`` end to end without a model: it reads the request the
way a model would (the ``Task:``, ``Caption:``, ``Tool:``, ``Arguments:`` and ``Tool result:`` lines
of the templates) and answers with JSON that satisfies each template's schema and only restates
the caption, so every gate can pass. It is not a language model and makes no claim to be one: the
point is that the client, the cache, the gates and the writer do real work against a real HTTP
server.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content or "")


def request_fields(request: Mapping[str, Any]) -> dict[str, str]:
    """``Task``, ``Caption``, ``Tool``, ... of the last user message that states a task."""
    for message in reversed(request.get("messages", [])):
        text = _content(message)
        if message.get("role") == "user" and "Task:" in text:
            fields = {}
            for line in text.splitlines():
                key, sep, value = line.partition(":")
                if sep and key.strip():
                    fields.setdefault(key.strip(), value.strip())
            return fields
    return {}


def _first_sentence(caption: str) -> str:
    parts = re.split(r"(?<=[.;])\s+", caption.strip())
    return parts[0] if parts else caption


def _tool_result(tool: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    if tool == "pathclip_zero_shot":
        labels = list(arguments.get("labels") or ["lesion", "normal tissue"])
        share = round(1 / len(labels), 4)
        probs = {label: share for label in labels}
        probs[labels[0]] = round(1 - share * (len(labels) - 1), 4)
        return {"probabilities": probs, "label": labels[0], "model": str(arguments.get("model", ""))}
    if tool == "pathology_selector":
        return {"pathology_score": 0.97, "is_pathology": True, "probabilities": {"pathology": 0.97, "other": 0.03}}
    if tool == "subfigure_detect":
        return {"count": 2, "panels": [{"bbox": [0, 0, 100, 100], "confidence": 0.91},
                                       {"bbox": [110, 0, 100, 100], "confidence": 0.88}]}
    return {"dab_positive_fraction": 0.25, "tissue_fraction": 0.8, "nuclei_count": 120, "positive_nuclei": 30,
            "positive_nuclei_fraction": 0.25, "thresholds": {}}


_REQUESTS = {
    "pathclip_zero_shot": ("Which of the candidate classes fits this image best?", {"labels": ["lesion", "normal tissue"]}),
    "pathology_selector": ("Is this a micrograph of tissue, or some other kind of picture?", {}),
    "subfigure_detect": ("How many separate panels does this figure contain?", {}),
    "ihc_quantify": ("Could you quantify how much of the tissue is stained brown in this image?", {}),
}


def answer(request: Mapping[str, Any]) -> str:
    """The JSON answer to one generation request (see the module docstring)."""
    fields = request_fields(request)
    task = fields.get("Task", "")
    caption = fields.get("Caption", "")
    first = _first_sentence(caption)
    if task == "description":
        out: dict[str, Any] = {"instruction": "Describe the findings in this image.", "answer": f"The image shows: {caption}"}
    elif task == "conversation":
        out = {"turns": [
            {"question": "What does this image show?", "answer": f"It shows: {caption}"},
            {"question": "Which single feature would you point out first?", "answer": f"First, {first}"},
        ]}
    elif task == "reasoning":
        out = {"question": "What do the visible features add up to?",
               "reasoning": f"Looking at the image step by step: {caption}",
               "answer": first}
    elif task == "tool_none":
        out = {"question": "How would you summarise the appearance of this tissue?", "answer": f"In short: {caption}"}
    elif task == "tool_request":
        text, args = _REQUESTS.get(fields.get("Tool", ""), ("Please analyse this image with the tool.", {}))
        out = {"request": text, "arguments": args}
    elif task == "tool_result":
        try:
            arguments = json.loads(fields.get("Arguments", "{}"))
        except ValueError:
            arguments = {}
        out = {"result": _tool_result(fields.get("Tool", ""), arguments)}
    elif task == "tool_answer":
        try:
            result = json.loads(fields.get("Tool result", "{}"))
        except ValueError:
            result = {}
        values = ", ".join(f"{k} = {v}" for k, v in result.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool))
        out = {"answer": f"The tool returned {values or 'its result'}. {first}"}
    else:
        out = {"error": f"unknown task {task!r}"}
    return json.dumps(out, ensure_ascii=False)
