"""The tool-calling runtime of PathAsst: parse a model's tool calls, run the tools, feed results back.

Why here (``pathasst/``) and not under ``trainers/``: the loop is model-agnostic. It talks to a
model only through a ``generate(messages, tools) -> str`` callable and to the tools only through the
shared registry (:mod:`pathasst.tools`), so the chat command, the server, the benchmarks (#8) and
PathInstruct checks (#6) use the same loop without importing torch. The model side (loading a saved
PathAsst folder, generation) lives with the model family in ``trainers/``.

The wire format is the one PathAsst's chat template renders (Hermes/Qwen style, which
transformers' ``apply_chat_template(tools=...)`` conventions map onto): an assistant turn calls a tool
by emitting::

    <tool_call>
    {"name": "ihc_quantify", "arguments": {"dab_threshold": 0.03}}
    </tool_call>

one block per call; results come back as ``tool`` messages (``name``, ``tool_call_id``, JSON
content). Nothing the model writes can crash the loop: unparsable JSON, an unknown tool, arguments
that fail the schema and a tool that raises all become a tool result ``{"error": ...}`` the model
sees on its next step. The number of model calls is capped (``max_steps``), and :class:`AgentResult`
holds the full trace.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.S)

Generate = Callable[[list[dict[str, Any]], Optional[list[dict[str, Any]]]], str]
"""``generate(messages, tools) -> assistant text``: one model call (tools None: none offered)."""


@dataclasses.dataclass
class ToolCall:
    """One call found in a model's text.

    Attributes:
        name: the function name ('' when the block had none).
        arguments: the argument object (None when it could not be parsed).
        raw: the text inside the ``<tool_call>`` block.
        error: why the block could not be used as a call (bad JSON, no name, arguments not an object).
    """

    name: str
    arguments: Optional[dict[str, Any]]
    raw: str
    error: Optional[str] = None


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split assistant text into its plain content and its tool calls.

    A block left open at the end of the text (generation stopped before ``</tool_call>``) is still
    parsed. ``arguments`` given as a JSON string (some models double-encode) are decoded.

    Returns:
        ``(content, calls)``: the text outside the blocks (stripped) and the calls in order.
    """
    calls: list[ToolCall] = []
    for match in _CALL_RE.finditer(text):
        raw = match.group(1).strip()
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            calls.append(ToolCall("", None, raw, f"the tool call is not valid JSON ({exc})"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            calls.append(ToolCall("", None, raw, 'the tool call needs {"name": ..., "arguments": {...}}'))
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as exc:
                calls.append(ToolCall(obj["name"], None, raw, f"the arguments are not valid JSON ({exc})"))
                continue
        if args is None:
            args = {}
        if not isinstance(args, dict):
            calls.append(ToolCall(obj["name"], None, raw, "the arguments must be a JSON object"))
            continue
        calls.append(ToolCall(obj["name"], args, raw))
    content = _CALL_RE.sub("", text).strip()
    return content, calls


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """The text of one call, exactly as the chat template renders it (for scripted models and tests)."""
    return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': name, 'arguments': dict(arguments)}, ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"


@dataclasses.dataclass
class TraceStep:
    """One tool execution of a run.

    Attributes:
        step: the model call (1-based) that asked for it.
        tool: the tool name the model gave.
        arguments: the arguments the model gave (None if unparsable).
        ok: the tool ran and its result passed its schema.
        result: the tool's result when ``ok``.
        error: otherwise, the message the model was sent.
        seconds: time spent validating and running.
        call_id: the ``tool_call_id`` of the result message.
    """

    step: int
    tool: str
    arguments: Optional[dict[str, Any]]
    ok: bool
    result: Optional[dict[str, Any]] = None
    error: Optional[str] = None
    seconds: float = 0.0
    call_id: str = ""


@dataclasses.dataclass
class AgentResult:
    """What :func:`run_agent` returns.

    Attributes:
        answer: the final assistant text (tool-call blocks removed).
        messages: the whole conversation, the input messages first, tool calls and results included.
        trace: every tool execution, in order.
        steps: model calls made.
        stopped: ``answer`` (the model answered without calling a tool) or ``max_steps`` (the cap was
            reached while it still called tools).
        raw: the model's text at every step.
    """

    answer: str
    messages: list[dict[str, Any]]
    trace: list[TraceStep]
    steps: int
    stopped: str
    raw: list[str]

    def trace_dicts(self) -> list[dict[str, Any]]:
        """The trace as JSON-ready dicts."""
        return [dataclasses.asdict(t) for t in self.trace]


def _schema_of(tool: Any) -> dict[str, Any]:
    from pathasst.tools import openai_schema

    return openai_schema(tool)


def _error_payload(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


def run_agent(
    generate: Generate,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Any] = (),
    image: Any = None,
    fixed_arguments: Optional[Mapping[str, Mapping[str, Any]]] = None,
    max_steps: int = 4,
    clock: Callable[[], float] = time.perf_counter,
) -> AgentResult:
    """Run the model, executing the tools it calls, until it answers or ``max_steps`` model calls.

    Args:
        generate: one model call, ``generate(messages, tool_schemas) -> text``.
        messages: the conversation so far (OpenAI-style dicts; content a string or a list of
            ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts).
        tools: the tools offered (:class:`pathasst.tools.Tool` objects or registry names); none
            offered means one plain model call.
        image: the conversation's image (PIL image, path or bytes) the tools run on.
        fixed_arguments: per tool, arguments the runtime sets whatever the model says (e.g. the
            ``model`` folder a selector loads: a model cannot know local paths).
        max_steps: the most model calls; >= 1.

    Returns:
        The answer, the extended conversation and the trace.
    """
    from pathasst.tools import Tool, ToolError, get

    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (got {max_steps})")
    offered: dict[str, Tool] = {}
    for tool in tools:
        tool = get(tool) if isinstance(tool, str) else tool
        offered[tool.name] = tool
    schemas = [_schema_of(t) for t in offered.values()] or None
    fixed = {k: dict(v) for k, v in (fixed_arguments or {}).items()}
    convo = [dict(m) for m in messages]
    trace: list[TraceStep] = []
    raw: list[str] = []
    for step in range(1, max_steps + 1):
        text = generate(convo, schemas)
        raw.append(text)
        content, calls = parse_tool_calls(text) if schemas else (text.strip(), [])
        if not calls:
            convo.append({"role": "assistant", "content": content})
            return AgentResult(content, convo, trace, step, "answer", raw)
        call_dicts = []
        for i, call in enumerate(calls):
            call_dicts.append({"id": f"call_{step}_{i}", "type": "function",
                               "function": {"name": call.name, "arguments": call.arguments if call.arguments is not None
                                            else call.raw}})
        convo.append({"role": "assistant", "content": content, "tool_calls": call_dicts})
        for call, call_dict in zip(calls, call_dicts):
            started = clock()
            entry = TraceStep(step, call.name, call.arguments, False, call_id=call_dict["id"])
            if call.error:
                entry.error = call.error
            elif call.name not in offered:
                entry.error = (f"no tool named {call.name!r} is available; available: "
                               f"{', '.join(offered) or 'none'}")
            else:
                tool = offered[call.name]
                arguments = {**(call.arguments or {}), **fixed.get(call.name, {})}
                try:
                    checked = tool.validate_arguments(arguments)
                    if image is None:
                        raise ToolError(f"tool {tool.name}: there is no image in the conversation to run it on")
                    entry.result = tool.run(image, **checked)
                    entry.ok = True
                except Exception as exc:  # noqa: BLE001 - any failure goes back to the model, never up
                    kind = "" if isinstance(exc, ToolError) else f"{type(exc).__name__}: "
                    entry.error = f"{kind}{exc}"
            entry.seconds = round(clock() - started, 6)
            trace.append(entry)
            payload = json.dumps(entry.result, ensure_ascii=False, sort_keys=True) if entry.ok else _error_payload(
                entry.error or "failed")
            convo.append({"role": "tool", "name": call.name or "unknown", "tool_call_id": call_dict["id"],
                          "content": payload})
    final = parse_tool_calls(raw[-1])[0]
    return AgentResult(final, convo, trace, max_steps, "max_steps", raw)


class ScriptedModel:
    """A stand-in model that replies with fixed texts in turn (or a function of the messages).

    Proves the loop independent of how well a real model generates; also records what it was sent.
    """

    def __init__(self, replies: Sequence[str | Callable[[list[dict[str, Any]]], str]]):
        self.replies = list(replies)
        self.calls: list[tuple[list[dict[str, Any]], Optional[list[dict[str, Any]]]]] = []

    def __call__(self, messages: list[dict[str, Any]], tools: Optional[list[dict[str, Any]]]) -> str:
        self.calls.append(([dict(m) for m in messages], tools))
        if not self.replies:
            raise RuntimeError("the scripted model has no reply left")
        reply = self.replies.pop(0)
        return reply(messages) if callable(reply) else reply


__all__ = [
    "AgentResult",
    "ScriptedModel",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolCall",
    "TraceStep",
    "format_tool_call",
    "parse_tool_calls",
    "run_agent",
]
