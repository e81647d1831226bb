"""``pathasst serve``: PathAsst behind an OpenAI-compatible HTTP API.

Endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions`` (text and ``image_url`` parts with
``data:`` URLs, ``tools`` / ``tool_choice``, ``stream=true`` as server-sent events, ``max_tokens``
(or ``max_completion_tokens``), ``temperature``, ``top_p``, ``seed``), on 127.0.0.1 by default. The
official ``openai`` client works against it unchanged.

Tools follow OpenAI semantics: the server renders the ``tools`` the client sends into the prompt and
returns the model's calls as ``message.tool_calls`` (``finish_reason: "tool_calls"``); the client
runs them and sends ``role: "tool"`` messages back (``pathasst chat --tools`` is the runtime that
runs them locally). With ``tools`` and ``stream=true`` the reply is generated whole first and then
sent as chunks, because a tool call can only be recognised once its block is complete.

Bad requests get OpenAI-style error objects (``{"error": {"message", "type", "param", "code"}}``)
and the server stays up: malformed JSON (400), an unknown model (404), an image part that is not
an image or not a ``data:`` URL (400; the server never fetches URLs), a prompt longer than the
context (400, ``context_length_exceeded``), a body over ``--max-body-mb`` (413). Huge images are
resized by the processor to the vision tower's input; decompression bombs are refused
(:func:`pathasst.images.load_rgb`).

Why the standard library's ``ThreadingHTTPServer`` rather than FastAPI/uvicorn: one model on one
device generates one reply at a time anyway (:class:`~pathasst.trainers.assistant.Assistant` holds
a lock), so an async stack would add two dependencies and no throughput; SSE is a few lines. For
production throughput, serve the exported folder with vLLM or TGI, which batch requests.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from pathasst.errors import InputError

logger = logging.getLogger(__name__)

MAX_BODY_MB = 64
ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(Exception):
    """An error reply: HTTP status and the OpenAI error object's fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def decode_image_url(url: str, where: str) -> Any:
    """A PIL image from a ``data:image/...;base64,...`` URL; :class:`APIError` (400) otherwise."""
    from pathasst.images import ImageRejected, load_rgb

    if not isinstance(url, str) or not url.startswith("data:"):
        raise APIError(400, f"{where}: only data: URLs are accepted (data:image/png;base64,...); the server does not "
                            "fetch URLs", param=where, code="invalid_image_url")
    head, sep, payload = url.partition(",")
    if not sep or ";base64" not in head:
        raise APIError(400, f"{where}: a data: URL must be base64-encoded", param=where, code="invalid_image_url")
    try:
        raw = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{where}: the base64 payload does not decode", param=where,
                       code="invalid_image_url") from None
    try:
        return load_rgb(raw)
    except ImageRejected as exc:
        raise APIError(400, f"{where}: not a usable image ({exc.reason})", param=where, code="invalid_image") from None
    except OSError as exc:
        raise APIError(400, f"{where}: not a usable image ({exc})", param=where, code="invalid_image") from None


def convert_messages(raw: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI request messages as the chat template reads them, and their images in order."""
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages must be a non-empty array", param="messages")
    messages, images = [], []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise APIError(400, f"{where}: needs a role among {', '.join(ROLES)}", param=where)
        role = "system" if m["role"] == "developer" else m["role"]
        content = m.get("content")
        msg: dict[str, Any] = {"role": role}
        if content is None or isinstance(content, str):
            msg["content"] = content or ""
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                pw = f"{where}.content[{j}]"
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind == "image_url":
                    spec = part.get("image_url")
                    url = spec.get("url") if isinstance(spec, Mapping) else spec
                    images.append(decode_image_url(url, pw))
                    parts.append({"type": "image"})
                else:
                    raise APIError(400, f"{pw}: unsupported content part type {kind!r} (text, image_url)", param=pw)
            msg["content"] = parts
        else:
            raise APIError(400, f"{where}.content: a string or an array of parts", param=where)
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for k, call in enumerate(m["tool_calls"]):
                fn = call.get("function") or {} if isinstance(call, Mapping) else {}
                args = fn.get("arguments", "{}")
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except ValueError:
                        raise APIError(400, f"{where}.tool_calls[{k}].function.arguments is not JSON",
                                       param=where) from None
                calls.append({"id": call.get("id"), "type": "function",
                              "function": {"name": fn.get("name", ""), "arguments": args}})
            msg["tool_calls"] = calls
        if role == "tool":
            for key in ("name", "tool_call_id"):
                if m.get(key):
                    msg[key] = m[key]
        messages.append(msg)
    return messages, images


class ChatService:
    """The request logic, apart from HTTP (tested directly and through the server)."""

    def __init__(self, assistant: Any, model_id: Optional[str] = None, default_max_tokens: int = 256) -> None:
        self.assistant = assistant
        self.model_id = model_id or assistant.name
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": self.created,
                                             "owned_by": "pathasst"}]}

    def _request(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise APIError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model != self.model_id:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{self.model_id}'",
                           param="model", code="model_not_found")
        if body.get("n", 1) != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        messages, images = convert_messages(body.get("messages"))
        tools = body.get("tools") or None
        if tools is not None:
            if not isinstance(tools, list) or not all(isinstance(t, Mapping) and t.get("type") == "function"
                                                      and isinstance(t.get("function"), Mapping) for t in tools):
                raise APIError(400, "tools must be an array of {type: function, function: {...}}", param="tools")
        if body.get("tool_choice") == "none":
            tools = None
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or self.default_max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise APIError(400, "max_tokens must be a positive integer", param="max_tokens")
        temperature = body.get("temperature", 0.0)
        top_p = body.get("top_p", 1.0)
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise APIError(400, "temperature must be in [0, 2]", param="temperature")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise APIError(400, "top_p must be in (0, 1]", param="top_p")
        seed = body.get("seed")
        return {"messages": messages, "images": images, "tools": tools, "stream": bool(body.get("stream")),
                "options": {"max_new_tokens": max_tokens, "temperature": float(temperature), "top_p": float(top_p),
                            "seed": seed if isinstance(seed, int) else None}}

    def _generate(self, req: Mapping[str, Any]) -> Any:
        from pathasst.trainers.assistant import PromptTooLong

        try:
            return self.assistant.generate(req["messages"], req["tools"], req["images"], **req["options"])
        except PromptTooLong as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
        except InputError as exc:
            raise APIError(400, str(exc), param="messages") from None

    @staticmethod
    def _message(text: str, tools: Any) -> tuple[dict[str, Any], str]:
        from pathasst.agent import parse_tool_calls

        if tools:
            content, calls = parse_tool_calls(text)
            good = [c for c in calls if c.error is None]
            if good:
                tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                               "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                              for c in good]
                return {"role": "assistant", "content": content or None, "tool_calls": tool_calls}, "tool_calls"
        return {"role": "assistant", "content": text}, ""

    def complete(self, body: Any) -> dict[str, Any]:
        """A ``chat.completion`` object (non-streaming)."""
        req = self._request(body)
        gen = self._generate(req)
        message, reason = self._message(gen.text, req["tools"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": reason or gen.finish_reason,
                         "logprobs": None}],
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                      "total_tokens": gen.prompt_tokens + gen.completion_tokens},
        }

    def stream(self, body: Any) -> Iterator[dict[str, Any]]:
        """``chat.completion.chunk`` objects; request errors are raised before the first chunk."""
        from pathasst.trainers.assistant import PromptTooLong

        req = self._request(body)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: Optional[str] = None) -> dict[str, Any]:
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": self.model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        if req["tools"]:
            gen = self._generate(req)  # whole first: a call is only known once its block is closed
            message, reason = self._message(gen.text, req["tools"])

            def tool_chunks() -> Iterator[dict[str, Any]]:
                yield chunk({"role": "assistant", "content": ""})
                if message.get("content"):
                    yield chunk({"content": message["content"]})
                for i, call in enumerate(message.get("tool_calls") or []):
                    yield chunk({"tool_calls": [{"index": i, **call}]})
                yield chunk({}, reason or gen.finish_reason)

            return tool_chunks()
        try:  # render and check the prompt now, so that errors become HTTP errors, not broken streams
            self.assistant.prepare(req["messages"], None, req["images"], max_new_tokens=req["options"]["max_new_tokens"])
        except PromptTooLong as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
        except InputError as exc:
            raise APIError(400, str(exc), param="messages") from None

        def text_chunks() -> Iterator[dict[str, Any]]:
            stats: dict[str, Any] = {}
            yield chunk({"role": "assistant", "content": ""})
            for piece in self.assistant.stream(req["messages"], None, req["images"], stats=stats, **req["options"]):
                yield chunk({"content": piece})
            yield chunk({}, stats.get("finish_reason", "stop"))

        return text_chunks()


class _Handler(BaseHTTPRequestHandler):
    server: "PathAsstServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, obj: Any) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: APIError) -> None:
        self._send(exc.status, exc.body())

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            self._send(200, self.server.service.models())
        elif path.startswith("/v1/models/"):
            name = path[len("/v1/models/"):]
            models = self.server.service.models()["data"]
            match = [m for m in models if m["id"] == name]
            if match:
                self._send(200, match[0])
            else:
                self._error(APIError(404, f"The model '{name}' does not exist", code="model_not_found"))
        elif path == "/v1/chat/completions":
            self._error(APIError(405, "use POST for /v1/chat/completions"))
        else:
            self._error(APIError(404, f"no route {self.path}", code="not_found"))

    def _read_body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise APIError(411, "a Content-Length header is required")
        if int(length) > self.server.max_body:
            self.close_connection = True
            raise APIError(413, f"the request body is over {self.server.max_body >> 20} MB", code="request_too_large")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path != "/v1/chat/completions":
                raise APIError(404, f"no route {self.path}", code="not_found")
            body = self._read_body()
            service = self.server.service
            if isinstance(body, Mapping) and body.get("stream"):
                chunks = service.stream(body)
                self._stream(chunks)
            else:
                self._send(200, service.complete(body))
        except APIError as exc:
            self._error(exc)
        except Exception as exc:  # noqa: BLE001 - the server stays up; the client gets a 500 object
            logger.exception("request failed")
            self._error(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    def _stream(self, chunks: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for item in chunks:
                self.wfile.write(b"data: " + json.dumps(item, ensure_ascii=False).encode() + b"\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            logger.info("the client closed the stream")
            return
        except Exception as exc:  # noqa: BLE001 - mid-stream: report inside the stream
            logger.exception("stream failed")
            err = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
            self.wfile.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class PathAsstServer(ThreadingHTTPServer):
    """The HTTP server; ``service`` holds the model."""

    daemon_threads = True

    def __init__(self, service: ChatService, host: str = "127.0.0.1", port: int = 8000,
                 max_body_mb: int = MAX_BODY_MB) -> None:
        self.service = service
        self.max_body = max_body_mb << 20
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``pathasst serve`` verb."""
    parser.add_argument("--model", required=True, metavar="DIR", help="PathAsst model folder (training output_dir/model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-id", default=None, help="the model name clients send (default: the folder's name)")
    parser.add_argument("--max-tokens", type=int, default=256, help="default max_tokens of a request")
    parser.add_argument("--max-body-mb", type=int, default=MAX_BODY_MB, help="largest request body accepted")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """``pathasst serve``: load the model and serve until interrupted."""
    from pathasst.errors import OutputError
    from pathasst.trainers.assistant import Assistant

    assistant = Assistant(args.model, device=args.device)
    service = ChatService(assistant, args.model_id, args.max_tokens)
    try:
        server = PathAsstServer(service, args.host, args.port, args.max_body_mb)
    except OSError as exc:
        raise OutputError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    print(f"serving {service.model_id} at {server.url} (OpenAI-compatible; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


__all__ = ["APIError", "ChatService", "PathAsstServer", "add_arguments", "convert_messages", "decode_image_url",
           "run_serve"]
