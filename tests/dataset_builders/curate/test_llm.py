"""The LLM path of caption splitting/refining: prompts, validation, faithfulness and every fallback.

A scripted backend plays the model (its answers are exactly what a model could write), so that each
failure the issue lists is a test: invalid JSON, repetition, truncation, timeout, unfaithful
answers, empty and 50,000-character captions, unbalanced parentheses, non-Latin scripts; the
endpoint path runs against the local OpenAI-compatible server (answers, malformed bodies, stalls,
a port where nothing listens).
"""

from __future__ import annotations

import json
import socket

import pytest

from pathasst.dataset_builders.curate.captions import split_caption
from pathasst.dataset_builders.curate.llm import (
    AnswerRejected,
    BackendTimeout,
    Generation,
    LLMCaptioner,
    LLMSettings,
    is_repetitive,
    load_prompt,
    parse_refine_answer,
    parse_split_answer,
    refine_answer,
    split_answer,
    truncate_caption,
    unfaithful_words,
)
from pathasst.errors import InputError

CAPTION = "Renal biopsy. (A) Glomerulus with crescent. (B) Tubular necrosis. Scale bars, 50 µm."
GOOD = json.dumps({"shared_prefix": "Renal biopsy.", "shared_suffix": "Scale bars, 50 µm.",
                   "panels": [{"label": "A", "subcaption": "Glomerulus with crescent."},
                              {"label": "B", "subcaption": "Tubular necrosis."}]})


class Scripted:
    """A backend that answers from a list (a Generation, an exception to raise, or a callable)."""

    name = "scripted"
    prompt_versions = {"split": "1"}

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def generate(self, messages, *, max_new_tokens, timeout_s, schema=None, tag=""):
        self.calls.append({"messages": messages, "max_new_tokens": max_new_tokens, "tag": tag})
        item = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(item, Exception):
            raise item
        if callable(item):
            return item(messages)
        if isinstance(item, str):
            return Generation(item, "stop", 0.01)
        return item


def captioner(*answers, **settings) -> LLMCaptioner:
    return LLMCaptioner(LLMSettings(model="scripted", **settings), backend=Scripted(*answers))


# --- prompts and answers --------------------------------------------------------------------


def test_prompt_templates_are_versioned_data_and_take_any_caption():
    for task in ("split", "refine"):
        template = load_prompt(task)
        assert template.tag == f"{task}-v{template.version}"
        messages = template.messages("Braces {A} and {caption} stay as they are.")
        assert [m["role"] for m in messages] == ["system", "user"]
        assert "Braces {A} and {caption} stay as they are." in messages[1]["content"]
        assert template.schema["type"] == "object"


def test_split_answer_round_trips_through_the_validator():
    result = split_caption(CAPTION)
    parsed = parse_split_answer(split_answer(result), CAPTION)
    assert parsed.panels == result.panels
    assert (parsed.shared_prefix, parsed.shared_suffix) == (result.shared_prefix, result.shared_suffix)
    assert parsed.markers_found == ("A", "B")
    assert parse_refine_answer(refine_answer("Renal biopsy, H&E ×400."), "Renal biopsy, H and E x400.") == \
        "Renal biopsy, H&E ×400."


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("Sure! Here are the panels: A and B", "invalid_json"),
    ('{"shared_prefix": "", "shared_suffix": "", "panels": [{"label": "A", "subcaption": "x"}]', "invalid_json"),
    ('{"shared_prefix": "", "panels": [{"label": "A", "subcaption": "Tubular necrosis."}]}', "schema"),
    ('{"shared_prefix": "", "shared_suffix": "", "panels": []}', "schema"),
    ('{"shared_prefix": "", "shared_suffix": "", "panels": [{"label": "A", "subcaption": 3}]}', "schema"),
    ('{"shared_prefix": "", "shared_suffix": "", "panels": [{"label": "A", "subcaption": "Tubular necrosis."}],'
     ' "confidence": 0.9}', "schema"),
    ('{"shared_prefix": "", "shared_suffix": "", "panels": [{"label": "A", "subcaption": "Acute rejection."}]}',
     "unfaithful"),
    ('{"shared_prefix": "", "shared_suffix": "", "panels": [{"label": "A", "subcaption": ""}]}', "empty"),
    (json.dumps({"shared_prefix": "", "shared_suffix": "",
                 "panels": [{"label": "A", "subcaption": "Tubular necrosis."}] * 12}), "repetition"),
])
def test_bad_split_answers_are_rejected_with_their_reason(text, reason):
    with pytest.raises(AnswerRejected) as info:
        parse_split_answer(text, CAPTION)
    assert info.value.reason == reason


def test_a_fenced_answer_and_function_words_are_tolerated():
    fenced = "```json\n" + json.dumps({"shared_prefix": "", "shared_suffix": "", "panels": [
        {"label": "A", "subcaption": "Glomerulus with a crescent"}]}) + "\n```"
    assert parse_split_answer(fenced, CAPTION).panels[0].subcaption == "Glomerulus with a crescent"


def test_faithfulness_in_scripts_without_spaces_and_in_cyrillic():
    zh = "（A）肾小球新月体形成。（B）肾小管坏死。比例尺，50微米。"
    answer = json.dumps({"shared_prefix": "", "shared_suffix": "比例尺，50微米。",
                         "panels": [{"label": "A", "subcaption": "肾小球新月体形成。"},
                                    {"label": "B", "subcaption": "肾小管坏死。"}]}, ensure_ascii=False)
    assert [p.label for p in parse_split_answer(answer, zh).panels] == ["A", "B"]
    assert unfaithful_words("肺癌转移。", zh) == ["肺癌转移"]
    ru = "(А) Клубочек с полулунием. (Б) Некроз канальцев."
    answer = json.dumps({"shared_prefix": "", "shared_suffix": "", "panels": [
        {"label": "А", "subcaption": "Клубочек с полулунием."}, {"label": "Б", "subcaption": "Некроз канальцев."}]},
        ensure_ascii=False)
    assert [p.label for p in parse_split_answer(answer, ru).panels] == ["А", "Б"]
    with pytest.raises(AnswerRejected, match="unfaithful"):
        parse_split_answer(answer.replace("Некроз", "Отёк"), ru)


def test_repetition_detector():
    assert is_repetitive('{"panels": [{"label": "A", "subcaption": "' + "necrosis, " * 30)
    assert is_repetitive("}" * 200)
    assert not is_repetitive(GOOD)
    assert not is_repetitive("(A) Low power. (B) High power. (C) CD20. (D) Ki-67.")


def test_truncate_caption_cuts_at_a_sentence_end():
    text = "First sentence here. " * 10 + "x" * 500
    cut = truncate_caption(text, 120)
    assert len(cut) <= 120 and cut.endswith(".")
    assert truncate_caption("short", 120) == "short"


# --- the captioner: LLM first, rules on failure, every fallback counted ------------------------


def test_a_valid_answer_is_used_and_recorded():
    cap = captioner(GOOD)
    out = cap.split(CAPTION)
    assert out.used_llm and out.info["status"] == "llm" and out.info["prompt"] == load_prompt("split").tag == "split-v2"
    assert [p.subcaption for p in out.value.panels] == ["Glomerulus with crescent.", "Tubular necrosis."]
    assert cap.backend.calls[0]["tag"] == "split-v2"
    distributed = cap.split(CAPTION, distribute=True)  # same caption: the answer is reused, not asked again
    assert len(cap.backend.calls) == 1 and cap.stats["reused"] == 1
    assert distributed.value.panels[0].subcaption == "Renal biopsy. Glomerulus with crescent. Scale bars, 50 µm."
    assert cap.summary()["accepted"] == 1 and cap.summary()["fallbacks_total"] == 0


@pytest.mark.parametrize("answer, reason", [
    ("I cannot help with that.", "invalid_json"),
    (Generation('{"shared_prefix": "Renal biopsy.", "panels": [{"label": "A", "subcaption": "' + "crescent, " * 80,
                "length", 1.0), "repetition"),
    (Generation('{"shared_prefix": "Renal biopsy.", "shared_suffix": "", "panels": [{"label": "A", "subcap',
                "length", 1.0), "truncated"),
    ("{" + '"a": ' * 100, "repetition"),
    (BackendTimeout("generation stopped after 5.0 s"), "timeout"),
    (Generation("", "timeout", 5.0), "timeout"),
    (RuntimeError("CUDA out of memory"), "error"),
    ('{"shared_prefix": "", "shared_suffix": "", "panels": [{"label": "A", "subcaption": "Lupus nephritis."}]}',
     "unfaithful"),
])
def test_every_failure_falls_back_to_the_rules_and_is_counted(answer, reason):
    cap = captioner(answer)
    out = cap.split(CAPTION)
    assert not out.used_llm
    assert out.info["status"] == "fallback" and out.info["reason"] == reason
    assert out.value.panels == split_caption(CAPTION).panels  # the rules' answer
    assert cap.summary()["fallbacks"] == {reason: 1}


def test_fallback_none_gives_no_answer():
    out = captioner("not json", fallback="none").split(CAPTION)
    assert out.value is None and out.info["status"] == "failed" and out.info["reason"] == "invalid_json"


def test_a_50000_character_caption_falls_back_or_is_truncated_with_a_record():
    huge = ("(A) Glomerulus with crescent and fibrinoid necrosis of the tuft. " * 800)[:50_000]
    cap = captioner(GOOD)
    out = cap.split(huge)
    assert out.info["reason"] == "too_long" and cap.backend.calls == []  # never sent
    assert out.value.panels  # the rules split it
    cap = captioner(json.dumps({"shared_prefix": "", "shared_suffix": "",
                                "panels": [{"label": "A", "subcaption": "Glomerulus with crescent."}]}),
                    long_caption="truncate", max_prompt_chars=2000)
    out = cap.split(huge)
    assert out.used_llm
    assert out.info["prompt_truncated"]["chars"] == 50_000 and out.info["prompt_truncated"]["sent"] <= 2000
    assert len(cap.backend.calls[0]["messages"][1]["content"]) < 2600


def test_unbalanced_parentheses_do_not_break_either_path():
    caption = "Liver biopsy (H&E. (A) Steatosis (macrovesicular. (B) Fibrosis)) (C) Ballooning"
    ok = json.dumps({"shared_prefix": "Liver biopsy (H&E.", "shared_suffix": "",
                     "panels": [{"label": "A", "subcaption": "Steatosis (macrovesicular."},
                                {"label": "B", "subcaption": "Fibrosis))"}, {"label": "C", "subcaption": "Ballooning"}]})
    assert captioner(ok).split(caption).used_llm
    out = captioner("(A) Steatosis (B) Fibrosis)").split(caption)
    assert out.info["reason"] == "invalid_json" and out.value.panels


def test_refine_path_checks_faithfulness_and_falls_back():
    caption = "Figure 2. Benign nevus (H and E, x100) [4]. See text for details."
    cap = captioner(refine_answer("Benign nevus (H&E, ×100)."))
    out = cap.refine(caption)
    assert out.used_llm and out.value == "Benign nevus (H&E, ×100)."
    out = captioner(refine_answer("Benign compound nevus of the back (H&E).")).refine(caption)
    assert out.info["reason"] == "unfaithful" and out.value == "Benign nevus (H&E, ×100)."


# --- the endpoint path (pathasst.endpoint against the local OpenAI-compatible server) ---------


def endpoint_settings(url, **kw):
    return LLMSettings(model=url, endpoint_model="test-model", timeout_s=kw.pop("timeout_s", 5), max_retries=0, **kw)


def test_endpoint_answers_are_validated_like_local_ones():
    from pathasst.testing.openai_server import OpenAITestServer, malformed_json, stall

    with OpenAITestServer(lambda request: GOOD) as server:
        cap = LLMCaptioner(endpoint_settings(server.base_url, timeout_s=0.5))
        cap.check_available()
        assert cap.split(CAPTION).used_llm
        body = server.chat_requests()[-1]
        assert body["response_format"] == {"type": "json_object"} and body["temperature"] == 0.0
        assert body["messages"][1]["content"].startswith(CAPTION + "\n")
        server.queue(malformed_json())
        assert cap.split(CAPTION + " ").info["reason"] == "error"
        server.queue(stall(2.0))
        assert cap.split(CAPTION + "  ").info["reason"] == "timeout"
    assert cap.summary()["fallbacks"] == {"error": 1, "timeout": 1}


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


def test_an_endpoint_that_is_down_falls_back_or_stops_naming_the_url():
    url = _closed_port_url()
    cap = LLMCaptioner(endpoint_settings(url))
    cap.check_available()  # down: the rules serve every record
    out = cap.split(CAPTION)
    assert out.info["reason"] == "endpoint_down" and out.value.panels == split_caption(CAPTION).panels
    assert cap.summary()["endpoint_down"]
    for settings in (endpoint_settings(url, on_endpoint_down="error"), endpoint_settings(url, fallback="none")):
        with pytest.raises(InputError, match=url.replace(".", r"\.")):
            LLMCaptioner(settings).check_available()


def test_settings_are_checked():
    for bad in ({"long_caption": "drop"}, {"fallback": "maybe"}, {"max_new_tokens": 0}, {"timeout_s": 0},
                {"response_format": "xml"}):
        with pytest.raises(ValueError):
            LLMSettings(**bad).check()


def test_an_endpoint_lost_mid_run_stops_the_stage_when_the_llm_is_the_only_path():
    from pathasst.dataset_builders.curate.llm import LLMUnavailable

    cap = LLMCaptioner(endpoint_settings(_closed_port_url(), on_endpoint_down="error"))
    with pytest.raises(LLMUnavailable, match="only path") as info:
        cap.split(CAPTION)
    assert info.value.exit_code == 5
