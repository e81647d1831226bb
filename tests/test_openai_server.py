"""The local OpenAI-compatible test server speaks the protocol the openai client expects."""

from __future__ import annotations

import time

import openai

from pathasst.testing.openai_server import OpenAITestServer, answer, completion_body


def test_models_log_and_usage():
    with OpenAITestServer(lambda req: {"content": "a b c", "finish_reason": "stop"}, model="tiny") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "one two"}])
        assert out.choices[0].message.content == "a b c"
        assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (2, 3)
        srv.queue(answer("scripted"))
        assert client.chat.completions.create(model="tiny", messages=[]).choices[0].message.content == "scripted"
        assert srv.pending() == 0
        assert [r["model"] for r in srv.chat_requests()] == ["tiny", "tiny"]


def test_latency_applies_to_every_answer():
    with OpenAITestServer(latency=0.25) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        start = time.monotonic()
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert time.monotonic() - start >= 0.24


def test_completion_body_tool_calls():
    body = completion_body({"model": "m", "messages": []}, {"content": None, "tool_calls": [{"name": "f", "arguments": {"a": 1}}]})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
