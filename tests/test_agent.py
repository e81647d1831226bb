"""The tool-calling runtime (pathasst.agent) with scripted stand-in models: the loop's logic proven
apart from how well a model generates. The IHC tool runs for real on scikit-image's IHC micrograph."""

from __future__ import annotations

import json

import pytest

from pathasst.agent import ScriptedModel, format_tool_call, parse_tool_calls, run_agent
from pathasst.tools import Tool, get

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def ihc_image():
    from PIL import Image

    return Image.fromarray(skdata.immunohistochemistry())


def user(text="How many nuclei are positive?"):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def test_parse_tool_calls_finds_blocks_content_and_bad_ones():
    text = ("Let me measure.\n" + format_tool_call("ihc_quantify", {"dab_threshold": 0.05})
            + "\n<tool_call>\n{not json}\n</tool_call>\n<tool_call>{\"arguments\": {}}</tool_call>"
            + '<tool_call>{"name": "x", "arguments": "{\\"a\\": 1}"}</tool_call>'
            + '<tool_call>{"name": "y", "arguments": [1]}</tool_call>'
            + '<tool_call>{"name": "open", "arguments": {}}')  # left open: generation stopped
    content, calls = parse_tool_calls(text)
    assert content == "Let me measure."
    assert [(c.name, c.arguments, c.error is None) for c in calls] == [
        ("ihc_quantify", {"dab_threshold": 0.05}, True), ("", None, False), ("", None, False),
        ("x", {"a": 1}, True), ("y", None, False), ("open", {}, True)]
    assert "not valid JSON" in calls[1].error and '"name"' in calls[2].error
    assert parse_tool_calls("plain answer") == ("plain answer", [])


def test_the_model_calls_ihc_and_answers_from_the_real_result(ihc_image):
    def answer_from_result(messages):
        result = json.loads(messages[-1]["content"])
        return f"{result['positive_nuclei']} of {result['nuclei_count']} nuclei are positive."

    model = ScriptedModel([format_tool_call("ihc_quantify", {}), answer_from_result])
    out = run_agent(model, user(), tools=["ihc_quantify"], image=ihc_image)
    assert out.stopped == "answer" and out.steps == 2
    [step] = out.trace
    expected = get("ihc_quantify").run(ihc_image)
    assert step.ok and step.tool == "ihc_quantify" and step.result == expected
    assert out.answer == f"{expected['positive_nuclei']} of {expected['nuclei_count']} nuclei are positive."
    assert [m["role"] for m in out.messages] == ["user", "assistant", "tool", "assistant"]
    assert out.messages[2]["tool_call_id"] == out.messages[1]["tool_calls"][0]["id"] == step.call_id
    # the model saw the tool's schema both times
    assert model.calls[0][1][0]["function"]["name"] == "ihc_quantify"


def test_bad_arguments_unknown_tools_and_bad_json_go_back_to_the_model(ihc_image):
    model = ScriptedModel([
        format_tool_call("ihc_quantify", {"dab_threshold": -1}),  # fails the schema (minimum 0)
        format_tool_call("ihc_quantify", {"no_such_arg": 1}),  # additionalProperties: false
        format_tool_call("segment_everything", {}),
        "<tool_call>{oops</tool_call>",
        "I could not measure it.",
    ])
    out = run_agent(model, user(), tools=["ihc_quantify"], image=ihc_image, max_steps=6)
    assert out.stopped == "answer" and out.answer == "I could not measure it."
    errors = [t.error for t in out.trace]
    assert not any(t.ok for t in out.trace)
    assert "dab_threshold" in errors[0] and "no_such_arg" in errors[1]
    assert "no tool named 'segment_everything'" in errors[2] and "not valid JSON" in errors[3]
    tool_msgs = [m for m in out.messages if m["role"] == "tool"]
    assert [json.loads(m["content"])["error"] for m in tool_msgs] == errors


def test_a_tool_that_raises_becomes_an_error_result(ihc_image):
    def boom(image, **kwargs):
        raise RuntimeError("the scanner is offline")

    tool = Tool("flaky", "always fails", {"type": "object", "properties": {}}, {"type": "object"}, boom)
    model = ScriptedModel([format_tool_call("flaky", {}), "Sorry."])
    out = run_agent(model, user(), tools=[tool], image=ihc_image)
    assert out.trace[0].error == "RuntimeError: the scanner is offline" and out.answer == "Sorry."


def test_steps_are_capped_and_the_trace_kept(ihc_image):
    model = ScriptedModel([format_tool_call("ihc_quantify", {})] * 3)
    out = run_agent(model, user(), tools=["ihc_quantify"], image=ihc_image, max_steps=3)
    assert out.stopped == "max_steps" and out.steps == 3 and len(out.trace) == 3 and out.answer == ""
    with pytest.raises(ValueError):
        run_agent(model, user(), max_steps=0)


def test_fixed_arguments_win_and_no_image_is_an_error_result():
    seen = {}

    def record(image, **kwargs):
        seen.update(kwargs)
        return {}

    schema = {"type": "object", "properties": {"model": {"type": "string"}}, "required": ["model"],
              "additionalProperties": False}
    tool = Tool("needs_model", "x", schema, {"type": "object"}, record)
    from PIL import Image

    model = ScriptedModel([format_tool_call("needs_model", {"model": "/etc/passwd"}), "done"])
    out = run_agent(model, user(), tools=[tool], image=Image.new("RGB", (8, 8)),
                    fixed_arguments={"needs_model": {"model": "runs/sel/model"}})
    assert out.trace[0].ok and seen == {"model": "runs/sel/model"}
    model = ScriptedModel([format_tool_call("needs_model", {}), "done"])
    out = run_agent(model, user(), tools=[tool], image=None, fixed_arguments={"needs_model": {"model": "m"}})
    assert "no image in the conversation" in out.trace[0].error


def test_without_tools_tool_blocks_are_plain_text():
    model = ScriptedModel([format_tool_call("ihc_quantify", {})])
    out = run_agent(model, user(), tools=[])
    assert out.stopped == "answer" and out.trace == [] and "<tool_call>" in out.answer
    assert model.calls[0][1] is None
