"""A local OpenAI-compatible chat server for tests and benchmarks: loopback only, misbehaviour on script.

It answers ``POST /v1/chat/completions`` (and ``GET /v1/models``) the way vLLM, TGI or llama.cpp's
server do, built on :class:`~pathasst.testing.http_server.LocalHTTPServer`, so the real ``openai``
client runs against it unchanged. A *responder* (a function of the request's JSON) writes the answers;
scripted behaviours queued with :meth:`OpenAITestServer.queue` play first, one per request:

========================  ==========================================================
``rate_limited(s)``       429 with ``Retry-After: s``
``server_error(500)``     a 5xx
``stall(s)``              no answer for ``s`` seconds (a client timeout)
``malformed_json()``      200 with a body that is not JSON
``truncated(text)``       200, ``finish_reason: "length"``
``answer(text)``          200 with this content (e.g. one that breaks the expected schema)
``tool_call(name, args)`` 200 with one function call
``unauthorized()``        401
========================  ==========================================================

``latency`` delays every answer (benchmarks); ``api_key`` makes every request without
``Authorization: Bearer <api_key>`` a 401. Every request is logged (:attr:`OpenAITestServer.requests`,
:meth:`OpenAITestServer.chat_requests`).

Example::

    with OpenAITestServer(lambda req: "hello") as server:
        server.queue(rate_limited(1), server_error(500))
        ep = ChatEndpoint(EndpointConfig(base_url=server.base_url, model="m"))
        ep.complete([{"role": "user", "content": "hi"}])   # 429, 500, then "hello"
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any, Callable, Mapping, Union

from pathasst.testing.http_server import (
    LocalHTTPServer,
    RecordedRequest,
    Response,
    Scripted,
    json_response,
    server_error,
    too_many_requests,
)

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

# what a responder may return: the content text, or a dict with any of
# content / tool_calls / finish_reason / prompt_tokens / completion_tokens
Answer = Union[str, Mapping[str, Any], None]
Responder = Callable[[dict[str, Any]], Answer]


def count_tokens(text: str) -> int:
    """The server's token count: whitespace-separated words (good enough for accounting tests)."""
    return len(text.split())


def _prompt_text(request: Mapping[str, Any]) -> str:
    parts = []
    for message in request.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return "\n".join(parts)


_ids = itertools.count(1)


def completion_body(request: Mapping[str, Any], answer: Answer, *, finish_reason: str | None = None) -> dict[str, Any]:
    """The JSON body of a chat completion answering ``request`` with ``answer``."""
    spec = {"content": answer} if isinstance(answer, str) or answer is None else dict(answer)
    content = spec.get("content")
    tool_calls = spec.get("tool_calls") or None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": call.get("id") or f"call_{next(_ids)}", "type": "function",
             "function": {"name": call["name"],
                          "arguments": call["arguments"] if isinstance(call["arguments"], str)
                          else json.dumps(call["arguments"])}}
            for call in tool_calls
        ]
    reason = finish_reason or spec.get("finish_reason") or ("tool_calls" if tool_calls else "stop")
    completion_text = (content or "") + "".join(json.dumps(c) for c in (tool_calls or []))
    prompt_tokens = spec.get("prompt_tokens", count_tokens(_prompt_text(request)))
    completion_tokens = spec.get("completion_tokens", count_tokens(completion_text))
    return {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(request.get("model", "test-model")),
        "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


# --- scripted behaviours ------------------------------------------------------------------------

def rate_limited(retry_after: float | str = 1) -> Response:
    """A 429 with ``Retry-After`` (seconds, or an HTTP date)."""
    status, headers, _ = too_many_requests(retry_after)
    return json_response({"error": {"message": "rate limited", "type": "rate_limit_error"}}, status, headers)


def stall(seconds: float) -> Scripted:
    """No answer for ``seconds`` (a client with a shorter timeout gives up and retries)."""
    return Scripted(lambda req: json_response(completion_body(req.json(), "late answer")), delay=seconds)


def malformed_json() -> Response:
    """A 200 whose JSON body is cut off."""
    return 200, {"Content-Type": "application/json"}, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess'


def answer(content: Answer, finish_reason: str | None = None) -> Callable[[RecordedRequest], Response]:
    """A 200 with this content (a schema-breaking answer, a fixed reply)."""
    return lambda req: json_response(completion_body(req.json(), content, finish_reason=finish_reason))


def truncated(content: str = '{"question": "What does the') -> Callable[[RecordedRequest], Response]:
    """A 200 cut at the token limit: ``finish_reason: "length"``."""
    return answer(content, finish_reason="length")


def tool_call(name: str, arguments: Mapping[str, Any] | str, content: str | None = None) -> Callable[[RecordedRequest], Response]:
    """A 200 whose assistant message calls one function."""
    return answer({"content": content, "tool_calls": [{"name": name, "arguments": arguments}]})


def unauthorized() -> Response:
    return json_response({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                    "code": "invalid_api_key"}}, 401)


class OpenAITestServer:
    """A started-on-enter OpenAI-compatible server on a free loopback port.

    Args:
        responder: request JSON -> answer (content text, or a dict with ``content``,
            ``tool_calls`` ``[{"name", "arguments"}]``, ``finish_reason``, token counts).
            Default: ``"ok"``.
        latency: seconds every answer waits before it is sent (scripted ones too).
        api_key: when set, requests must carry ``Authorization: Bearer <api_key>`` or get a 401.
        model: the model listed by ``/v1/models``.
    """

    def __init__(self, responder: Responder | None = None, *, latency: float = 0.0, api_key: str | None = None,
                 model: str = "test-model"):
        self.responder: Responder = responder or (lambda request: "ok")
        self.latency = latency
        self.api_key = api_key
        self.model = model
        self.http = LocalHTTPServer({CHAT_PATH: self._chat, MODELS_PATH: self._models})

    # --- lifecycle ---

    def start(self) -> "OpenAITestServer":
        from pathasst.testing import http_server

        self.http.start()
        # Without TCP_NODELAY, the status line + headers and the body leave as two small writes and
        # Nagle's algorithm holds the second until the client's delayed ACK: 40+ ms per answer
        # (measured 47 ms vs 1.7 ms per request), which would swamp a latency benchmark.
        self.http._httpd.RequestHandlerClass = type(
            "_NoDelayHandler", (http_server._Handler,), {"disable_nagle_algorithm": True})
        return self

    def stop(self) -> None:
        self.http.stop()

    def __enter__(self) -> "OpenAITestServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The API root to give a client, e.g. ``http://127.0.0.1:40123/v1``."""
        return self.http.url + "/v1"

    # --- scripting and the log ---

    def queue(self, *behaviours: Any) -> None:
        """Answer the next chat requests with these behaviours, one each, before the responder."""
        self.http.queue(CHAT_PATH, *(self._wrap(b) for b in behaviours))

    def pending(self) -> int:
        return self.http.pending(CHAT_PATH)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every HTTP request received, in order."""
        return self.http.requests

    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of every chat request received (retries included), in order."""
        return [r.json() for r in self.http.requests_to(CHAT_PATH)]

    def clear(self) -> None:
        self.http.clear()

    # --- handlers ---

    def _authorized(self, req: RecordedRequest) -> bool:
        return self.api_key is None or req.header("Authorization") == f"Bearer {self.api_key}"

    def _wrap(self, behaviour: Any) -> Any:
        """Delay a queued behaviour by the server's latency; a 401 still wins for a bad key."""
        if isinstance(behaviour, Scripted):
            return Scripted(behaviour.response, delay=behaviour.delay + self.latency,
                            stall_after=behaviour.stall_after, stall=behaviour.stall, drop=behaviour.drop)
        return Scripted(behaviour, delay=self.latency) if self.latency else behaviour

    def _chat(self, req: RecordedRequest) -> Response | Scripted:
        if not self._authorized(req):
            return unauthorized()
        if req.method != "POST":
            return json_response({"error": {"message": "use POST"}}, 405)
        try:
            request = req.json()
        except ValueError:
            return json_response({"error": {"message": "request body is not JSON"}}, 400)

        def respond(_req: RecordedRequest) -> Response:
            return json_response(completion_body(request, self.responder(request)))

        return Scripted(respond, delay=self.latency) if self.latency else respond(req)

    def _models(self, req: RecordedRequest) -> Response:
        if not self._authorized(req):
            return unauthorized()
        return json_response({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "pathasst"}]})


def main(argv: list[str] | None = None) -> int:
    """``python -m pathasst.testing.openai_server [--responder MODULE:FUNCTION] [--latency S]``.

    Serves on 127.0.0.1 until interrupted and prints the base URL; the default responder is the
    scripted model of ``pathasst generate instruct`` (:mod:`pathasst.dataset_builders.generate.scripted`).
    """
    import argparse
    import importlib

    parser = argparse.ArgumentParser(prog="python -m pathasst.testing.openai_server",
                                     description="A local OpenAI-compatible chat server for trying things out.")
    parser.add_argument("--responder", default="pathasst.dataset_builders.generate.scripted:answer",
                        help="MODULE:FUNCTION taking the request JSON and returning the answer")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--api-key", help="require this bearer key")
    args = parser.parse_args(argv)
    module, _, name = args.responder.partition(":")
    responder = getattr(importlib.import_module(module), name)
    with OpenAITestServer(responder, latency=args.latency, api_key=args.api_key) as server:
        print(server.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


__all__ = [
    "CHAT_PATH",
    "OpenAITestServer",
    "answer",
    "completion_body",
    "count_tokens",
    "malformed_json",
    "rate_limited",
    "server_error",
    "stall",
    "tool_call",
    "truncated",
    "unauthorized",
]


if __name__ == "__main__":
    import sys

    sys.exit(main())
