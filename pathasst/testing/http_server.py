"""A local HTTP server for download, retry and API-client tests: loopback only, failures on script.

The real download and API code runs against it unchanged (DESIGN.md §8): routes serve fixed bytes
or call a function; queued responses play first, one per request, to simulate a 429 with
Retry-After, 5xx errors, slow answers (client timeouts), answers that stall mid-body, and dropped
connections. Every request is logged. ``Range: bytes=`` requests on fixed 200 routes get 206
answers, so resumable downloads can be tested too.

Example::

    with LocalHTTPServer({"/file.bin": (200, {}, data)}) as server:
        server.queue("/file.bin", too_many_requests(retry_after=1), server_error(503))
        download(server.url_for("/file.bin"))  # sees 429, then 503, then the file
        assert [r.path for r in server.requests] == ["/file.bin"] * 3
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, Union
from urllib.parse import parse_qs, urlsplit

Response = tuple[int, Mapping[str, str], Union[bytes, str]]


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it.

    Attributes:
        method: ``GET``, ``POST``, ...
        path: the request target as sent, query string included.
        headers: header names as sent, with their values.
        body: the request body (chunked bodies are decoded).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def url_path(self) -> str:
        """The path without its query string."""
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header's value, looked up case-insensitively as HTTP requires."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return default

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass
class Scripted:
    """A response with misbehaviour attached.

    Attributes:
        response: a ``(status, headers, body)`` tuple or a callable(request) returning one.
        delay: seconds to wait before the status line (a client with a shorter timeout gives up).
        stall_after: send the headers and this many body bytes, then wait ``stall`` seconds
            before the rest (a read timeout in the middle of a download).
        stall: see ``stall_after``.
        drop: close the connection without answering.
    """

    response: Response | Callable[[RecordedRequest], Response] = (200, {}, b"")
    delay: float = 0.0
    stall_after: int | None = None
    stall: float = 0.0
    drop: bool = False


RouteValue = Union[Response, Callable[[RecordedRequest], Union[Response, Scripted]], Scripted, bytes, str]


def too_many_requests(retry_after: float | str = 1, body: bytes | str = b"rate limited") -> Response:
    """A 429 with ``Retry-After`` (seconds, or an HTTP date string)."""
    value = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
    return 429, {"Retry-After": value, "Content-Type": "text/plain"}, body


def server_error(status: int = 500, body: bytes | str = b"server error") -> Response:
    return status, {"Content-Type": "text/plain"}, body


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


def slow(seconds: float, response: Response = (200, {}, b"")) -> Scripted:
    """Answer after ``seconds``: a client with a shorter timeout sees a timeout."""
    return Scripted(response, delay=seconds)


def stalled(response: Response, after_bytes: int, seconds: float) -> Scripted:
    """Send ``after_bytes`` of the body, then stop for ``seconds``: a read timeout mid-download."""
    return Scripted(response, stall_after=after_bytes, stall=seconds)


def dropped() -> Scripted:
    """Close the connection without answering (the client sees a connection reset or EOF)."""
    return Scripted(drop=True)


def _normalise(value: Any) -> Response | Scripted | Callable[..., Any]:
    if isinstance(value, (bytes, str)):
        return 200, {}, value
    return value


_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def _apply_range(req: RecordedRequest, status: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    spec = req.header("Range")
    if not spec or status != 200 or req.method not in ("GET", "HEAD"):
        return status, headers, body
    if any(k.lower() == "content-range" for k in headers):
        return status, headers, body  # the route answers ranges itself
    found = _RANGE_RE.fullmatch(spec.strip())
    if not found or not (found[1] or found[2]):
        return status, headers, body  # malformed or multi-range: a server may ignore Range
    size = len(body)
    if found[1]:
        start = int(found[1])
        end = min(int(found[2]), size - 1) if found[2] else size - 1
    else:  # suffix range: the last N bytes
        start, end = max(0, size - int(found[2])), size - 1
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    if start >= size or start > end:
        return 416, {**headers, "Content-Range": f"bytes */{size}"}, b""
    return 206, {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}, body[start : end + 1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck in a scripted delay must not block shutdown
    owner: "LocalHTTPServer"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers: clients reuse connections
    server_version = "pathasst-test/1"
    timeout = 30  # idle keep-alive connections end instead of holding a thread forever
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet in test output
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        owner = self.server.owner
        req = RecordedRequest(self.command, self.path, dict(self.headers.items()), self._read_body())
        owner._record(req)
        action = owner._next_action(req)
        if callable(action) and not isinstance(action, Scripted):
            action = _normalise(action(req))  # a route function may answer with a Scripted too
        script = action if isinstance(action, Scripted) else Scripted(action)
        try:
            if script.drop:
                self.close_connection = True
                return
            if script.delay and owner._stopping.wait(script.delay):
                self.close_connection = True
                return
            response = _normalise(script.response(req) if callable(script.response) else script.response)
            status, headers, body = response
            body = body.encode() if isinstance(body, str) else bytes(body)
            headers = dict(headers)
            if owner.ranges:
                status, headers, body = _apply_range(req, status, headers, body)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, str(value))
            if not any(k.lower() == "content-length" for k in headers):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "HEAD" or status in (204, 304) or not body:
                return
            if script.stall_after is not None:
                self.wfile.write(body[: script.stall_after])
                self.wfile.flush()
                if owner._stopping.wait(script.stall):
                    self.close_connection = True
                    return
                body = body[script.stall_after :]
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the client gave up (its timeout): what the test wanted

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle


class LocalHTTPServer:
    """A threaded HTTP/1.1 server on a free loopback port.

    Args:
        routes: path -> answer. An answer is ``(status, headers, body)``, bytes or str (200), a
            :class:`Scripted`, or a callable(:class:`RecordedRequest`) returning either. A path
            with a query string matches exactly; otherwise the path alone is matched.
        host: a loopback address (``127.0.0.1`` or ``::1``); anything else is refused.
        ranges: answer ``Range`` requests on fixed 200 answers with 206 slices.

    Attributes:
        routes: the routing table; may be changed while the server runs.
        requests: every request received, in order.
    """

    def __init__(self, routes: Mapping[str, RouteValue] | None = None, *, host: str = "127.0.0.1", ranges: bool = True):
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"LocalHTTPServer binds loopback addresses only, not {host!r}")
        self.host = host
        self.routes: dict[str, RouteValue] = dict(routes or {})
        self.ranges = ranges
        self.requests: list[RecordedRequest] = []
        self._queues: dict[str, collections.deque] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> "LocalHTTPServer":
        if self._httpd is not None:
            return self

        class Server(_Server):
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        self._stopping.clear()
        httpd = Server((self.host, 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="LocalHTTPServer")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a scripted delay
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> "LocalHTTPServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- addresses ---

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:40123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + (path if path.startswith("/") else "/" + path)

    # --- scripting ---

    def queue(self, path: str, *responses: RouteValue) -> None:
        """Answer the next requests to ``path`` with ``responses``, one each, before the route.

        ``path`` matches as for routes (with its query string exactly, or the path alone).
        """
        with self._lock:
            self._queues.setdefault(path, collections.deque()).extend(_normalise(r) for r in responses)

    def pending(self, path: str) -> int:
        """How many queued responses for ``path`` are still unplayed."""
        with self._lock:
            return len(self._queues.get(path, ()))

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Logged requests whose path (query string ignored) is ``path``."""
        with self._lock:
            return [r for r in self.requests if r.url_path == path]

    def clear(self) -> None:
        """Forget logged requests and queued responses (routes stay)."""
        with self._lock:
            self.requests.clear()
            self._queues.clear()

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _next_action(self, req: RecordedRequest) -> Any:
        with self._lock:
            for key in (req.path, req.url_path):
                pending = self._queues.get(key)
                if pending:
                    return pending.popleft()
        for key in (req.path, req.url_path):
            if key in self.routes:
                return _normalise(self.routes[key])
        return 404, {"Content-Type": "text/plain"}, f"no route for {req.url_path}".encode()


__all__ = [
    "LocalHTTPServer",
    "RecordedRequest",
    "Scripted",
    "dropped",
    "json_response",
    "server_error",
    "slow",
    "stalled",
    "too_many_requests",
]
