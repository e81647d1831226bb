"""ChatEndpoint against the local OpenAI-compatible server: retries, Retry-After, errors, cache, budget."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from pathasst.endpoint import (
    Budget,
    BudgetExceeded,
    ChatEndpoint,
    EndpointAuthError,
    EndpointConfig,
    EndpointResponseError,
    EndpointUnreachable,
    ResponseCache,
)
from pathasst.testing.openai_server import (
    OpenAITestServer,
    malformed_json,
    rate_limited,
    server_error,
    stall,
    tool_call,
    truncated,
)

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def server():
    with OpenAITestServer(lambda req: "reply to " + req["messages"][-1]["content"]) as srv:
        yield srv


def endpoint(server, cache=None, budget=None, **kw) -> ChatEndpoint:
    cfg = EndpointConfig(base_url=server.base_url, model="m", **{"max_retries": 3, "timeout_s": 5, **kw})
    return ChatEndpoint(cfg, cache=cache, budget=budget)


def test_success_and_usage(server):
    ep = endpoint(server)
    done = ep.complete(HELLO, template_version="t@1")
    assert done.text == "reply to hello there"
    assert done.finish_reason == "stop" and not done.cached and done.model == "m"
    assert (done.prompt_tokens, done.completion_tokens) == (2, 4)
    body = server.chat_requests()[0]
    assert body["model"] == "m" and body["messages"] == HELLO and body["max_tokens"] == 1024
    assert ep.usage.requests == 1 and ep.usage.tokens == 6


def test_429_honours_retry_after(server):
    server.queue(rate_limited(1.2))
    ep = endpoint(server)
    start = time.monotonic()
    done = ep.complete(HELLO)
    elapsed = time.monotonic() - start
    # the client's own first backoff is <= 0.5 s: waiting >= 1.2 s means it read Retry-After
    assert elapsed >= 1.15, elapsed
    assert elapsed < 3
    assert done.retries == 1 and ep.usage.retries == 1
    assert len(server.chat_requests()) == 2


def test_500_is_retried_then_gives_up(server):
    server.queue(server_error(500))
    ep = endpoint(server)
    assert ep.complete(HELLO).text == "reply to hello there"
    server.queue(*[server_error(503)] * 2)
    with pytest.raises(EndpointResponseError, match=r"HTTP 503 after 1 retries") as info:
        endpoint(server, max_retries=1).complete([{"role": "user", "content": "other"}])
    assert server.base_url in str(info.value)


def test_timeout_is_retried(server):
    server.queue(stall(3))
    ep = endpoint(server, timeout_s=0.4)
    start = time.monotonic()
    assert ep.complete(HELLO).text == "reply to hello there"
    assert time.monotonic() - start < 2.5
    assert ep.usage.retries == 1


def test_timeout_every_time_is_unreachable(server):
    server.queue(stall(3), stall(3))
    with pytest.raises(EndpointUnreachable, match="no answer within timeout_s=0.3"):
        endpoint(server, timeout_s=0.3, max_retries=1).complete(HELLO)


def test_malformed_json_and_truncated(server):
    server.queue(malformed_json())
    ep = endpoint(server)
    with pytest.raises(EndpointResponseError, match="malformed answer"):
        ep.complete(HELLO)
    assert ep.usage.failed == 1
    server.queue(truncated('{"q": "cut'))
    done = ep.complete(HELLO)
    assert done.finish_reason == "length" and done.text == '{"q": "cut'


def test_tool_calls_are_returned(server):
    server.queue(tool_call("ihc_quantify", {"stain": "dab"}))
    done = endpoint(server).complete(HELLO, tools=[{"type": "function", "function": {"name": "ihc_quantify"}}])
    assert done.finish_reason == "tool_calls" and done.text is None
    assert done.tool_calls[0]["function"] == {"name": "ihc_quantify", "arguments": '{"stain": "dab"}'}
    assert server.chat_requests()[0]["tools"][0]["function"]["name"] == "ihc_quantify"


def test_rejected_key_names_url_and_variable(monkeypatch):
    monkeypatch.setenv("PATHASST_TEST_KEY", "wrong")
    with OpenAITestServer(api_key="right") as srv:
        ep = ChatEndpoint(EndpointConfig(base_url=srv.base_url, model="m", api_key_env="PATHASST_TEST_KEY"))
        with pytest.raises(EndpointAuthError) as info:
            ep.complete(HELLO)
        assert srv.base_url in str(info.value) and "PATHASST_TEST_KEY" in str(info.value)
        assert "wrong" not in str(info.value)
        assert len(srv.chat_requests()) == 1  # a 401 is not retried
        monkeypatch.setenv("PATHASST_TEST_KEY", "right")
        assert ChatEndpoint(EndpointConfig(base_url=srv.base_url, model="m", api_key_env="PATHASST_TEST_KEY")).complete(HELLO).text == "ok"
        assert srv.requests[-1].header("Authorization") == "Bearer right"


def test_unreachable_names_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(EndpointUnreachable, match=f"endpoint {url} is unreachable"):
        ChatEndpoint(EndpointConfig(base_url=url, model="m", max_retries=0)).complete(HELLO)


def test_cache_never_pays_twice(server, tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    ep = endpoint(server, cache=cache)
    first = ep.complete(HELLO, template_version="t@1")
    again = endpoint(server, cache=ResponseCache(tmp_path / "cache.sqlite")).complete(HELLO, template_version="t@1")
    assert again.cached and again.text == first.text and len(server.chat_requests()) == 1
    # a new template version, temperature or model is a new request
    ep.complete(HELLO, template_version="t@2")
    ep.complete(HELLO, template_version="t@1", temperature=0.9)
    assert len(server.chat_requests()) == 3
    assert len(cache) == 3


def test_budget_caps(server, tmp_path):
    ep = endpoint(server, cache=ResponseCache(tmp_path / "c.sqlite"), budget=Budget(max_requests=2))
    ep.complete(HELLO)
    ep.complete([{"role": "user", "content": "second"}])
    with pytest.raises(BudgetExceeded, match="max_requests=2"):
        ep.complete([{"role": "user", "content": "third"}])
    assert ep.complete(HELLO).cached  # answers already paid for are still served
    priced = endpoint(server, budget=Budget(max_cost=0.01, price_prompt_per_1k=1.0, price_completion_per_1k=2.0))
    priced.complete(HELLO)  # 2 prompt + 4 completion tokens = 0.002 + 0.008
    assert priced.usage.cost == pytest.approx(0.01)
    with pytest.raises(BudgetExceeded, match="cost budget"):
        priced.complete([{"role": "user", "content": "more"}])
    tokens = endpoint(server, budget=Budget(max_tokens=5))
    tokens.complete(HELLO)
    with pytest.raises(BudgetExceeded, match="token budget"):
        tokens.complete(HELLO)


def test_async_concurrency_limit(tmp_path):
    with OpenAITestServer(lambda req: "x", latency=0.2) as srv:
        ep = ChatEndpoint(EndpointConfig(base_url=srv.base_url, model="m", concurrency=4))

        async def run():
            try:
                return await asyncio.gather(*[ep.acomplete([{"role": "user", "content": str(i)}]) for i in range(8)])
            finally:
                await ep.aclose()

        start = time.monotonic()
        answers = asyncio.run(run())
        elapsed = time.monotonic() - start
    assert [a.text for a in answers] == ["x"] * 8
    assert 0.38 < elapsed < 1.2, elapsed  # two waves of four, not eight at once nor one by one


def test_config_checks():
    with pytest.raises(Exception, match="base_url is not set"):
        ChatEndpoint(EndpointConfig(model="m"))
    with pytest.raises(ValueError, match="concurrency"):
        EndpointConfig(base_url="x", model="m", concurrency=0)


def test_azure_style_deployment(monkeypatch):
    monkeypatch.setenv("AZURE_KEY_FOR_TEST", "k")
    with OpenAITestServer(lambda req: "from azure") as srv:
        srv.http.routes["/openai/deployments/dep1/chat/completions"] = srv._chat
        cfg = EndpointConfig(base_url=srv.http.url, model="dep1", api_version="2024-06-01",
                             api_key_env="AZURE_KEY_FOR_TEST")
        assert ChatEndpoint(cfg).complete(HELLO).text == "from azure"
        req = srv.requests[-1]
    assert req.url_path == "/openai/deployments/dep1/chat/completions"
    assert req.query["api-version"] == ["2024-06-01"] and req.header("api-key") == "k"
