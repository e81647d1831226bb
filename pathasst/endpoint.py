"""One OpenAI-compatible chat client for every part of pathasst that talks to a language model.

Hosted OpenAI, Azure-style deployments and local servers (vLLM, TGI, llama.cpp's server, this
project's ``pathasst serve``) all speak ``/v1/chat/completions``; :class:`ChatEndpoint` talks to them
through the ``openai`` package, which already implements what a client at scale needs and which we
do not re-implement:

* retries with exponential backoff and jitter on 408/409/429/5xx, timeouts and dropped connections,
  honouring ``Retry-After`` / ``retry-after-ms`` (up to two minutes): :attr:`EndpointConfig.max_retries`;
* connection pooling, sync and async clients.

What this module adds:

* the API key comes from the environment only (:attr:`EndpointConfig.api_key_env`), never from a
  recipe or the command line, and never reaches a log;
* :class:`ResponseCache`: a persistent SQLite cache keyed by (model, template version, prompt
  hash), so a rerun or a resumed run never pays for the same request twice;
* :class:`Budget`: caps on paid requests, tokens and cost (per-1K-token prices) that stop a run
  cleanly with :class:`BudgetExceeded`;
* :class:`Usage`: token, cost, retry and cache-hit accounting for run summaries;
* errors that name the base URL: :class:`EndpointUnreachable` (connection refused, DNS, timeouts
  after every retry), :class:`EndpointAuthError` (401/403: the key from ``api_key_env`` was
  rejected), :class:`EndpointResponseError` (an answer that is not a chat completion).

Example::

    cfg = EndpointConfig(base_url="http://127.0.0.1:8000/v1", model="my-model")
    with ChatEndpoint(cfg, cache=ResponseCache("cache.sqlite")) as ep:
        done = ep.complete([{"role": "user", "content": "Hello"}], template_version="hello@1")
        print(done.text, done.cached, ep.usage.as_dict())
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pathasst.errors import ConfigError, PathasstError

log = logging.getLogger(__name__)

# A placeholder sent when the key variable is unset: local servers ignore the key, but the openai
# client refuses to start without one. A server that wants a key answers 401, and the error then
# says which variable to set.
_NO_KEY = "no-key-set"


class EndpointError(PathasstError):
    """A request to a chat endpoint failed; the message names the base URL.

    Exit code 5: the input and the output were fine, the model server was not.
    """

    exit_code = 5

    def __init__(self, message: str, base_url: str = ""):
        super().__init__(message)
        self.base_url = base_url


class EndpointUnreachable(EndpointError):
    """The endpoint cannot be reached (refused, unknown host, timed out after every retry)."""


class EndpointAuthError(EndpointError):
    """The endpoint rejected the API key (HTTP 401/403)."""


class EndpointResponseError(EndpointError):
    """The endpoint answered, but not with a usable chat completion (malformed body, 4xx, 5xx after retries).

    Attributes:
        status: the HTTP status, when there was one.
    """

    def __init__(self, message: str, base_url: str = "", status: int | None = None):
        super().__init__(message, base_url)
        self.status = status


class BudgetExceeded(PathasstError):
    """A budget cap (requests, tokens, cost) is reached; no further paid request is sent."""

    exit_code = 6


@dataclasses.dataclass
class EndpointConfig:
    """Where and how to call a chat model.

    Attributes:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``;
            for Azure (``api_version`` set) the resource endpoint ``https://NAME.openai.azure.com``.
        model: the model name (for Azure: the deployment name).
        api_key_env: the environment variable holding the API key (the key itself is never configured).
        timeout_s: seconds one HTTP attempt may take before it is retried.
        max_retries: retries on 429, 5xx, timeouts and connection errors (the openai client's backoff).
        concurrency: requests in flight at once (async use).
        temperature: sampling temperature.
        max_tokens: completion token limit per request.
        api_version: set it to talk to an Azure OpenAI deployment (``AzureOpenAI``), e.g. ``2024-06-01``.
        extra_headers: headers sent with every request (gateways, org ids); never secrets.
        seed: sampling seed sent to servers that honour it; None leaves it out.
    """

    base_url: str = ""
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 5
    concurrency: int = 8
    temperature: float = 0.2
    max_tokens: int = 1024
    api_version: str = ""
    extra_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")

    def check(self) -> None:
        """Raise :class:`ConfigError` unless ``base_url`` and ``model`` are set."""
        if not self.base_url:
            raise ConfigError("endpoint.base_url is not set: give the server's API root, e.g. endpoint.base_url=http://127.0.0.1:8000/v1")
        if not self.model:
            raise ConfigError("endpoint.model is not set: give the model (or Azure deployment) name, e.g. endpoint.model=NAME")


@dataclasses.dataclass
class Completion:
    """One chat completion.

    Attributes:
        text: the assistant's text (None when it only called tools).
        tool_calls: ``[{"id", "type": "function", "function": {"name", "arguments"}}]``, arguments
            as the JSON string the model wrote.
        finish_reason: ``stop``, ``length`` (truncated), ``tool_calls``, ...
        prompt_tokens: as the server counted them (0 when it does not report usage).
        completion_tokens: idem.
        cached: True when the answer came from the :class:`ResponseCache` (nothing was paid).
        model: the model that answered, as the server named it.
        retries: retries the client made for this answer (0 for cached answers).
    """

    text: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    model: str
    retries: int = 0

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("cached")
        data.pop("retries")
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Completion":
        return cls(**json.loads(text), cached=True, retries=0)


@dataclasses.dataclass
class Usage:
    """What a :class:`ChatEndpoint` spent; costs use the :class:`Budget` prices."""

    requests: int = 0  # paid requests that returned
    failed: int = 0  # paid requests that ended in an error
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tokens": self.tokens, "cost": round(self.cost, 6)}


@dataclasses.dataclass
class Budget:
    """Spending caps; 0 means no cap. Prices are per 1000 tokens, in any currency.

    A cap stops new paid requests; requests already in flight finish (so tokens and cost may pass
    their caps by at most ``concurrency - 1`` answers; the request cap is exact).
    """

    max_requests: int = 0
    max_tokens: int = 0
    max_cost: float = 0.0
    price_prompt_per_1k: float = 0.0
    price_completion_per_1k: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_tokens", "max_cost", "price_prompt_per_1k", "price_completion_per_1k"):
            if getattr(self, name) < 0:
                raise ValueError(f"budget.{name} must be 0 or more, got {getattr(self, name)}")

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1000 * self.price_prompt_per_1k + completion_tokens / 1000 * self.price_completion_per_1k

    def exceeded(self, usage: Usage, started: int) -> str | None:
        """Which cap forbids one more request, given the usage and the paid requests started so far."""
        if self.max_requests and started >= self.max_requests:
            return f"request budget reached ({started} of max_requests={self.max_requests})"
        if self.max_tokens and usage.tokens >= self.max_tokens:
            return f"token budget reached ({usage.tokens} of max_tokens={self.max_tokens})"
        if self.max_cost and usage.cost >= self.max_cost:
            return f"cost budget reached ({usage.cost:.4f} of max_cost={self.max_cost})"
        return None


class ResponseCache:
    """Chat completions on disk, keyed by (model, template version, prompt hash).

    The prompt hash covers everything sent that shapes the answer (messages, tools, response format,
    temperature, token limit, seed), so a changed prompt or setting is a new request, while a rerun
    of the same work reads every answer back for free. SQLite (WAL) makes writes atomic: a killed
    run loses at most the answers still in flight.

    Args:
        path: the database file (created with its folder).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: every commit is atomic and survives a killed process; only a power loss
            # may drop the last answers (they are paid again then). FULL would fsync each answer,
            # which measured 5.8 ms per request on the event loop, a third of the run at 160 req/s.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (model TEXT NOT NULL, template TEXT NOT NULL, "
                "prompt_hash TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL, "
                "PRIMARY KEY (model, template, prompt_hash))"
            )
            self._db.commit()
        except sqlite3.Error as exc:
            raise PathasstError(f"response cache {self.path}: cannot open it ({exc})") from None

    @staticmethod
    def prompt_hash(payload: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, model: str, template: str, prompt_hash: str) -> Completion | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response FROM responses WHERE model=? AND template=? AND prompt_hash=?",
                (model, template, prompt_hash),
            ).fetchone()
        return Completion.from_json(row[0]) if row else None

    def put(self, model: str, template: str, prompt_hash: str, completion: Completion) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (model, template, prompt_hash, completion.to_json(), time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# The request goes through the client's public `post` (retries, Retry-After, auth, Azure routing
# all apply) rather than `chat.completions.create`: our request is already the wire JSON, and
# create()'s per-request TypedDict transform of it measured ~3 ms of CPU per request, 15% of the
# generator's time at 32 requests in flight on 2 cores. The raw-response header makes `post`
# return the raw response, whose `retries_taken` feeds the retry count.
_RAW = {"headers": {"X-Stainless-Raw-Response": "true"}}


def _completion_type():
    from openai.types.chat import ChatCompletion

    return ChatCompletion


class ChatEndpoint:
    """Sync and async chat completions against one OpenAI-compatible endpoint.

    Args:
        cfg: where and how to call.
        cache: answers already paid for; None sends every request.
        budget: spending caps checked before each paid request; None: no caps.
    """

    def __init__(self, cfg: EndpointConfig, cache: ResponseCache | None = None, budget: Budget | None = None):
        cfg.check()
        self.cfg = cfg
        self.cache = cache
        self.budget = budget or Budget()
        self.usage = Usage()
        self._started = 0  # paid requests started: the request cap counts these
        self._lock = threading.Lock()
        self._client = None
        self._aclient = None
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop = None

    # --- clients ---------------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        key = os.environ.get(self.cfg.api_key_env) or _NO_KEY
        kwargs: dict[str, Any] = {
            "api_key": key,
            "timeout": self.cfg.timeout_s,
            "max_retries": self.cfg.max_retries,
            "default_headers": dict(self.cfg.extra_headers) or None,
        }
        if self.cfg.api_version:
            kwargs.update(azure_endpoint=self.cfg.base_url, api_version=self.cfg.api_version)
        else:
            kwargs["base_url"] = self.cfg.base_url
        return kwargs

    @property
    def client(self):
        if self._client is None:
            import openai

            cls = openai.AzureOpenAI if self.cfg.api_version else openai.OpenAI
            self._client = cls(**self._client_kwargs())
        return self._client

    @property
    def aclient(self):
        if self._aclient is None:
            import openai

            cls = openai.AsyncAzureOpenAI if self.cfg.api_version else openai.AsyncOpenAI
            self._aclient = cls(**self._client_kwargs())
        return self._aclient

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.close()
            self._aclient = None
        self.close()

    def __enter__(self) -> "ChatEndpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- requests --------------------------------------------------------------------------

    def _request(self, messages, response_format, tools, params: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": list(messages),
            "temperature": params.pop("temperature", self.cfg.temperature),
            "max_tokens": params.pop("max_tokens", self.cfg.max_tokens),
        }
        seed = params.pop("seed", self.cfg.seed)
        if seed is not None:
            request["seed"] = seed
        if response_format is not None:
            request["response_format"] = response_format
        if tools:
            request["tools"] = list(tools)
        request.update(params)
        return request

    def _cached(self, request: dict[str, Any], template_version: str) -> tuple[str, Completion | None]:
        prompt_hash = ResponseCache.prompt_hash(request)
        if self.cache is None:
            return prompt_hash, None
        hit = self.cache.get(self.cfg.model, template_version, prompt_hash)
        if hit is not None:
            with self._lock:
                self.usage.cache_hits += 1
        return prompt_hash, hit

    def _reserve(self) -> None:
        with self._lock:
            reason = self.budget.exceeded(self.usage, self._started)
            if reason:
                raise BudgetExceeded(reason)
            self._started += 1

    def _account(self, completion: Completion | None) -> None:
        with self._lock:
            if completion is None:
                self.usage.failed += 1
                return
            self.usage.requests += 1
            self.usage.prompt_tokens += completion.prompt_tokens
            self.usage.completion_tokens += completion.completion_tokens
            self.usage.retries += completion.retries
            self.usage.cost += self.budget.cost_of(completion.prompt_tokens, completion.completion_tokens)

    def complete(self, messages: Sequence[Mapping[str, Any]], *, response_format: Mapping[str, Any] | None = None,
                 tools: Sequence[Mapping[str, Any]] | None = None, template_version: str = "",
                 **params: Any) -> Completion:
        """One chat completion, from the cache when this exact request was answered before.

        Args:
            messages: OpenAI chat messages.
            response_format: e.g. ``{"type": "json_object"}``.
            tools: OpenAI function-tool schemas.
            template_version: the prompt template's ``name@version``: part of the cache key.
            **params: other request fields (``temperature``, ``max_tokens``, ``seed``, ``stop``, ...).

        Raises:
            BudgetExceeded: a cap forbids a paid request (cached answers are still served).
            EndpointUnreachable, EndpointAuthError, EndpointResponseError: see the module docstring.
        """
        request = self._request(messages, response_format, tools, dict(params))
        prompt_hash, hit = self._cached(request, template_version)
        if hit is not None:
            return hit
        self._reserve()
        completion = None
        try:
            raw = self.client.post("/chat/completions", cast_to=_completion_type(), body=request, options=_RAW)
            completion = self._parse(raw, raw.parse())
        except Exception as exc:
            self._account(None)
            raise self._translate(exc) from None
        self._account(completion)
        if self.cache is not None:
            self.cache.put(self.cfg.model, template_version, prompt_hash, completion)
        return completion

    async def acomplete(self, messages: Sequence[Mapping[str, Any]], *, response_format: Mapping[str, Any] | None = None,
                        tools: Sequence[Mapping[str, Any]] | None = None, template_version: str = "",
                        **params: Any) -> Completion:
        """The async twin of :meth:`complete`; at most ``cfg.concurrency`` requests are in flight."""
        request = self._request(messages, response_format, tools, dict(params))
        prompt_hash, hit = self._cached(request, template_version)
        if hit is not None:
            return hit
        async with self._semaphore():
            self._reserve()
            try:
                raw = await self.aclient.post("/chat/completions", cast_to=_completion_type(), body=request,
                                              options=_RAW)
                completion = self._parse(raw, raw.parse())
            except Exception as exc:
                self._account(None)
                raise self._translate(exc) from None
        self._account(completion)
        if self.cache is not None:
            self.cache.put(self.cfg.model, template_version, prompt_hash, completion)
        return completion

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
            self._sem_loop = loop
        return self._sem

    # --- answers and errors ----------------------------------------------------------------

    def _parse(self, raw: Any, response: Any) -> Completion:
        where = f"endpoint {self.cfg.base_url}"
        if isinstance(response, (str, bytes)) or not getattr(response, "choices", None):
            raise EndpointResponseError(f"{where} answered without choices: {str(response)[:200]!r}", self.cfg.base_url)
        choice = response.choices[0]
        message = choice.message
        calls = []
        for call in message.tool_calls or []:
            fn = getattr(call, "function", None)
            if fn is None:
                continue
            calls.append({"id": call.id, "type": "function",
                          "function": {"name": fn.name, "arguments": fn.arguments or "{}"}})
        usage = getattr(response, "usage", None)
        return Completion(
            text=message.content,
            tool_calls=calls,
            finish_reason=str(choice.finish_reason or "stop"),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cached=False,
            model=str(getattr(response, "model", "") or self.cfg.model),
            retries=int(getattr(raw, "retries_taken", 0) or 0),
        )

    def _translate(self, exc: Exception) -> Exception:
        import openai

        url = self.cfg.base_url
        if isinstance(exc, (EndpointError, BudgetExceeded)):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return EndpointUnreachable(
                f"endpoint {url}: no answer within timeout_s={self.cfg.timeout_s:g} after "
                f"{self.cfg.max_retries} retries", url)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return EndpointUnreachable(f"endpoint {url} is unreachable: {cause}", url)
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            have = "set" if os.environ.get(self.cfg.api_key_env) else "NOT set"
            return EndpointAuthError(
                f"endpoint {url} rejected the API key (HTTP {exc.status_code}); the key comes from the "
                f"environment variable {self.cfg.api_key_env}, which is {have}", url)
        if isinstance(exc, openai.APIStatusError):
            body = exc.response.text[:200] if exc.response is not None else ""
            retried = f" after {self.cfg.max_retries} retries" if exc.status_code == 429 or exc.status_code >= 500 else ""
            return EndpointResponseError(f"endpoint {url}: HTTP {exc.status_code}{retried}: {body!r}", url, exc.status_code)
        if isinstance(exc, (openai.APIError, ValueError, TypeError, AttributeError)):
            # a 200 whose body is not a chat completion (invalid JSON, missing fields)
            return EndpointResponseError(f"endpoint {url}: malformed answer ({type(exc).__name__}: {str(exc)[:200]})", url)
        return exc


__all__ = [
    "Budget",
    "BudgetExceeded",
    "ChatEndpoint",
    "Completion",
    "EndpointAuthError",
    "EndpointConfig",
    "EndpointError",
    "EndpointResponseError",
    "EndpointUnreachable",
    "ResponseCache",
    "Usage",
]
