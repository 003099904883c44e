"""A fake OpenAI-compatible server on 127.0.0.1, for tests, notebooks and benchmarks.

Why a real server and not a mock transport: it exercises everything between your code and
the wire (sockets, connection pools, HTTP framing, SSE parsing, timeouts, retries), and it
works with any client (ipychat, the openai SDK, httpx, aiohttp, curl). It speaks the
protocol of `POST /v1/chat/completions` (streaming and not, with `usage` and the
`stream_options.include_usage` chunk), `GET /v1/models` and the Files and Batch API
(`ipychat._fakebatch`), and can misbehave on purpose:
latency and token pacing, OpenAI-style rpm/tpm limits with `x-ratelimit-*` headers and
429s, and scripted or random faults (any status, connection reset, hang, truncated or
malformed streams, an error payload mid-stream). It records every request it receives.

Example::

    import httpx
    from ipychat.testing import FakeOpenAIServer, Fault

    with FakeOpenAIServer(reply="Hello!", rpm=600, latency=0.05) as server:
        server.script(Fault.status(503), "reset")  # the next two chat requests fail
        for _ in range(3):
            try:
                r = httpx.post(
                    server.base_url + "/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                )
            except httpx.TransportError:
                continue  # the "reset"
        assert r.json()["choices"][0]["message"]["content"] == "Hello!"
        assert [rq.status for rq in server.chat_requests] == [503, None, 200]

In pytest, the `fake_openai` fixture (installed with ipychat, see `ipychat.pytest_plugin`)
yields a started server; `@pytest.mark.fake_openai(latency=0.1)` passes options.

The server runs its own asyncio event loop in a daemon thread, so it serves while sync
code (a test, a notebook cell) blocks on it and while async code awaits it. For
benchmarks, `FakeOpenAIServer.spawn(...)` runs it in a child process instead, so that
the client's CPU time is measured without the server's; the API is the same. Callables
given to a spawned server (`reply`, `count_tokens`) must be picklable (module-level
functions), and a script that spawns needs the usual `if __name__ == "__main__":` guard.
From a shell: `python -m ipychat.testing --port 8000 --latency 0.2` prints its base URL.

Rate limits follow OpenAI's published behaviour: a request-per-minute and a token-per-
minute bucket, each holding up to its per-minute limit and refilling continuously at
limit/60 per second. A request is charged when it arrives, before any work: 1 request and
`prompt tokens + max_tokens` tokens (`max_completion_tokens` wins over `max_tokens`; a
request that sets neither is charged `assumed_max_tokens`, default 16). A request that
does not fit gets a 429 whose `retry-after-ms` is the exact time until it would fit; a
request larger than the whole tpm limit gets a 429 with `x-should-retry: false`.

Faults apply to chat requests that got past auth, validation and the rate limiter (so a
limiter 429 does not use up a scripted fault): first the `script()` queue, one entry per
request, then a seeded draw with probability `fault_rate`. `latency` delays every chat
answer, faults included, but not 400/401/429 rejections, which OpenAI also sends at once.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import math
import multiprocessing
import pickle
import random
import re
import signal
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeAlias

from ipychat._fakebatch import BatchAPI, BatchOptions
from ipychat._fakehttp import Exchange, HTTPServerCore, Request
from ipychat.keys import mask, redact_headers

__all__ = [
    "BatchOptions",
    "FakeOpenAIServer",
    "Fault",
    "FaultSpec",
    "RecordedRequest",
    "ServerStats",
    "approx_tokens",
    "main",
]

FAULT_KINDS = (
    "status",  # an HTTP error status (any code), OpenAI error body, optional headers
    "reset",  # TCP reset instead of a response
    "reset_mid_stream",  # part of the body, then the connection closes (body incomplete)
    "hang",  # never answer (or stop after `after` chunks) until the client or server quits
    "truncate",  # the stream ends cleanly but without finish_reason and [DONE]
    "malformed_json",  # a body, or one `data:` line, that is not JSON
    "error_mid_stream",  # `data: {"error": ...}` after some content, then the end
    "empty_reply",  # a valid reply with empty content
)
# Kinds that need the reply text: they send part of it before failing.
_CONTENT_KINDS = frozenset(FAULT_KINDS) - {"status", "reset"}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "requests",
}
_ERROR_MESSAGES = {
    429: "Rate limit reached (injected by the fake server). Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_AZURE_CHAT = re.compile(r"/openai/deployments/([^/]+)/chat/completions")
_LIMITS_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."


@dataclass(frozen=True)
class Fault:
    """One injected failure: a `kind` from FAULT_KINDS plus its parameters.

    `after` is how many content chunks of a stream are sent before the fault strikes
    (default: half of them, at least one); for a non-streamed reply the partial kinds cut
    the body in half. Build faults with the class methods, or let `Fault.parse` read the
    shorthands `503`, `"503"`, `"reset"`, `"hang"`, ... (`None`/`"ok"` mean no fault).
    """

    kind: str
    code: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    body: str | dict[str, Any] | None = field(default=None, hash=False)
    message: str | None = None
    after: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {FAULT_KINDS}")
        if self.kind == "status" and not (isinstance(self.code, int) and 200 <= self.code <= 599):
            raise ValueError(f"a status fault needs an HTTP code in 200..599, got {self.code!r}")
        if self.after is not None and self.after < 0:
            raise ValueError("Fault.after must be >= 0")
        object.__setattr__(self, "headers", dict(self.headers))

    @classmethod
    def status(
        cls,
        code: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: str | dict[str, Any] | None = None,
        message: str | None = None,
    ) -> Fault:
        """Answer with `code`. `body` replaces OpenAI's error JSON (a str is sent verbatim)."""
        return cls("status", code=code, headers=headers or {}, body=body, message=message)

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def reset_mid_stream(cls, after: int | None = None) -> Fault:
        return cls("reset_mid_stream", after=after)

    @classmethod
    def hang(cls, after: int | None = None) -> Fault:
        """Never answer; with `after`, stall a stream after that many content chunks."""
        return cls("hang", after=after)

    @classmethod
    def truncate(cls, after: int | None = None) -> Fault:
        return cls("truncate", after=after)

    @classmethod
    def malformed_json(cls, after: int | None = None) -> Fault:
        return cls("malformed_json", after=after)

    @classmethod
    def error_mid_stream(cls, after: int | None = None, message: str | None = None) -> Fault:
        return cls("error_mid_stream", after=after, message=message)

    @classmethod
    def empty_reply(cls) -> Fault:
        return cls("empty_reply")

    @classmethod
    def parse(cls, spec: FaultSpec) -> Fault | None:
        """A Fault from a shorthand; None for `None`/`"ok"` (a normal reply)."""
        if spec is None or isinstance(spec, Fault):
            return spec
        if isinstance(spec, bool):
            raise TypeError(f"not a fault: {spec!r}")
        if isinstance(spec, int):
            return cls.status(spec)
        if isinstance(spec, str):
            if spec == "ok":
                return None
            return cls.status(int(spec)) if spec.isdigit() else cls(spec)
        if isinstance(spec, Mapping):
            return cls(**spec)
        raise TypeError(f"not a fault: {spec!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


FaultSpec: TypeAlias = "Fault | str | int | Mapping[str, Any] | None"
ReplyFunc: TypeAlias = "Callable[[dict[str, Any]], str | Fault | Awaitable[str | Fault]]"


@dataclass
class RecordedRequest:
    """A request as the server received it; `status` is None while pending or when no
    response was sent (reset, hang). `time` is `time.monotonic()` at arrival (comparable
    across processes on one machine). The repr hides credential headers."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or None (no body or not JSON)
    time: float
    request_id: str
    query: str = ""
    status: int | None = None
    fault: Fault | None = None

    def __repr__(self) -> str:
        fault = f", fault={self.fault.kind!r}" if self.fault else ""
        return (
            f"RecordedRequest({self.method} {self.path}, status={self.status}{fault}, "
            f"headers={redact_headers(self.headers)!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["fault"] = self.fault.to_dict() if self.fault else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordedRequest:
        fault = Fault.parse(data["fault"]) if data.get("fault") else None
        return cls(**{**data, "fault": fault})


@dataclass(frozen=True)
class ServerStats:
    """Counters since start (or the last `reset_log`); admin requests are not counted."""

    total: int = 0  # requests received
    chat: int = 0  # of which chat completions
    by_status: dict[int, int] = field(default_factory=dict)  # responses sent, by status
    rate_limited: int = 0  # 429s from the rpm/tpm limiter (injected 429s are faults)
    faults: int = 0  # injected faults
    no_response: int = 0  # requests answered with a reset or a hang
    connections: int = 0  # TCP connections accepted
    max_in_flight: int = 0  # peak of chat requests being served at once

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerStats:
        by_status = {int(k): int(v) for k, v in data.get("by_status", {}).items()}
        return cls(**{**data, "by_status": by_status})


def approx_tokens(text: str) -> int:
    """The default token counter: ceil(len/4), the usual rule of thumb; cheap and stable."""
    return (len(text) + 3) // 4


def _format_duration(seconds: float) -> str:
    """OpenAI's reset format: '20ms' under a second, else like '1s', '8.5s', '6m0s', '1h0m0s'."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _prompt_tokens(messages: list[Any], count: Callable[[str], int]) -> int:
    """OpenAI's chat accounting (the cookbook's formula): 3 per message, the tokens of each
    string field (role, content, name), 1 more for a name, and 3 to prime the reply."""
    total = 3
    for message in messages:
        total += 3
        if not isinstance(message, dict):
            continue
        for key, value in message.items():
            text = _content_text(value) if key == "content" else value
            if isinstance(text, str) and text:
                total += count(text)
            if key == "name":
                total += 1
    return total


def _echo(body: Mapping[str, Any]) -> str:
    """The default reply: deterministic, derived from the prompt, easy to assert on."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "Echo: " + _content_text(message.get("content"))
    return "Echo: "


def _truncate(text: str, limit: int, count: Callable[[str], int]) -> tuple[str, bool]:
    """The longest prefix of `text` within `limit` tokens (binary search over characters,
    so it works with any counter), and whether anything was cut."""
    if count(text) <= limit:
        return text, False
    low, high = 0, len(text)  # count(text[:low]) <= limit < count(text[:high])
    while high - low > 1:
        mid = (low + high) // 2
        if count(text[:mid]) <= limit:
            low = mid
        else:
            high = mid
    return text[:low], True


def _split(text: str, chunk_chars: int | None) -> list[str]:
    """Stream deltas: fixed-size slices, or words with their leading whitespace."""
    if not text:
        return []
    if chunk_chars:
        return [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]
    pieces = re.findall(r"\s*\S+", text)
    rest = text[sum(map(len, pieces)) :]
    if rest and pieces:
        pieces[-1] += rest
    return pieces or [text]


@dataclass
class _Bucket:
    """A continuously refilling budget: holds up to `limit`, gains limit/60 per second."""

    limit: int
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(float(self.limit), self.level + (now - self.stamp) * self.limit / 60.0)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 when it is now)."""
        deficit = amount - self.level
        return 0.0 if deficit <= 1e-9 else deficit * 60.0 / self.limit

    def headers(self, name: str) -> list[tuple[str, str]]:
        until_full = (self.limit - self.level) * 60.0 / self.limit
        return [
            (f"x-ratelimit-limit-{name}", str(self.limit)),
            (f"x-ratelimit-remaining-{name}", str(max(0, int(self.level + 1e-9)))),
            (f"x-ratelimit-reset-{name}", _format_duration(until_full)),
        ]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Reject(Exception):
    """An OpenAI-shaped error answer, raised wherever a request is found wanting."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = _error_body(message, type_, code, param)
        self.headers = list(headers)


class _RateLimiter:
    """OpenAI-style rpm/tpm limits, charged on arrival; runs on the server's loop only."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float]) -> None:
        now = clock()
        self.clock = clock
        self.requests = _Bucket(rpm, rpm, now) if rpm else None
        self.tokens = _Bucket(tpm, tpm, now) if tpm else None

    def headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.requests:
            out += self.requests.headers("requests")
        if self.tokens:
            out += self.tokens.headers("tokens")
        return out

    def take(self, tokens: int, model: str) -> list[tuple[str, str]]:
        """Charge one request of `tokens` tokens and return the `x-ratelimit-*` headers;
        raise a 429 when it does not fit now (a refused request is not charged)."""
        now = self.clock()
        for bucket in (self.requests, self.tokens):
            if bucket:
                bucket.refill(now)
        if self.tokens and tokens > self.tokens.limit:  # waiting cannot help
            message = (
                f"Request too large for {model} in organization org-fake on tokens per min "
                f"(TPM): Limit {self.tokens.limit}, Requested {tokens}. The input or output "
                f"tokens must be reduced in order to run successfully. {_LIMITS_URL}"
            )
            extra = [("x-should-retry", "false")]
            raise _Reject(
                429, message, "tokens", "rate_limit_exceeded", None, self.headers() + extra
            )
        wait_r = self.requests.wait_for(1) if self.requests else 0.0
        wait_t = self.tokens.wait_for(tokens) if self.tokens else 0.0
        if wait_r or wait_t:
            kind, bucket, asked = (
                ("requests", self.requests, 1) if wait_r else ("tokens", self.tokens, tokens)
            )
            assert bucket is not None
            wait = max(wait_r, wait_t)  # until both fit
            message = (
                f"Rate limit reached for {model} in organization org-fake on {kind} per min "
                f"({'RPM' if kind == 'requests' else 'TPM'}): Limit {bucket.limit}, "
                f"Used {round(bucket.limit - bucket.level)}, Requested {asked}. "
                f"Please try again in {_format_duration(wait)}. {_LIMITS_URL}"
            )
            extra = [
                ("retry-after-ms", str(math.ceil(wait * 1000))),
                ("retry-after", str(math.ceil(wait))),
            ]
            raise _Reject(429, message, kind, "rate_limit_exceeded", None, self.headers() + extra)
        if self.requests:
            self.requests.level -= 1
        if self.tokens:
            self.tokens.level -= tokens
        return self.headers()


@dataclass(frozen=True)
class _Options:
    reply: str | ReplyFunc | None
    models: tuple[str, ...]
    latency: float | tuple[float, float]
    tokens_per_second: float | None
    chunk_chars: int | None
    include_usage_chunk: bool
    count_tokens: Callable[[str], int]
    require_key: str | None
    rpm: int | None
    tpm: int | None
    assumed_max_tokens: int
    faults: tuple[Fault, ...]
    fault_rate: float
    seed: int | None
    host: str
    port: int
    batch: BatchOptions = field(default_factory=BatchOptions)


@dataclass
class _Turn:
    """One chat request on its way to an answer."""

    ex: Exchange
    rec: RecordedRequest
    body: dict[str, Any]
    model: str
    headers: list[tuple[str, str]]  # x-ratelimit-*, sent with every answer
    fault: Fault | None = None
    text: str = ""
    finish: str = "stop"
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        return self.fault.kind if self.fault else None

    @property
    def error_message(self) -> str:
        return (self.fault.message if self.fault else None) or _ERROR_MESSAGES[500]

    def cut_at(self, n_pieces: int) -> int:
        """How many content pieces go out before the fault strikes."""
        if self.fault is None or self.fault.kind == "empty_reply":
            return n_pieces
        after = self.fault.after
        return min(n_pieces, after if after is not None else max(1, n_pieces // 2))


class _Engine:
    """The OpenAI imitation: routes requests, applies auth, limits and faults, keeps the log.

    Runs on one event loop; the log, the script and the counters are shared with the
    controlling thread under `_lock`.
    """

    def __init__(self, options: _Options) -> None:
        self.o = options
        self.core = HTTPServerCore(self.handle)
        self._lock = threading.Lock()
        self._log: list[RecordedRequest] = []
        self._script: deque[Fault | None] = deque()
        # Separate generators, so turning on random latency does not change the faults drawn.
        self._fault_rng = random.Random(options.seed)
        self._latency_rng = random.Random(f"latency:{options.seed}")
        self._limiter = None
        if options.rpm or options.tpm:
            self._limiter = _RateLimiter(options.rpm, options.tpm, time.monotonic)
        self._counts: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._connections_before = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self.batch = BatchAPI(self, options.batch)  # /v1/files and /v1/batches (_fakebatch)

    # ---- state shared with the controlling thread -------------------------------------
    def enqueue(self, faults: Sequence[Fault | None]) -> None:
        with self._lock:
            self._script.extend(faults)

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()
            self._counts.clear()
            self._by_status.clear()
            self._connections_before = self.core.connections
            self._max_in_flight = self._in_flight

    def stats(self) -> ServerStats:
        with self._lock:
            c = self._counts
            return ServerStats(
                total=c["total"],
                chat=c["chat"],
                by_status=dict(self._by_status),
                rate_limited=c["rate_limited"],
                faults=c["faults"],
                no_response=c["no_response"],
                connections=self.core.connections - self._connections_before,
                max_in_flight=self._max_in_flight,
            )

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _record(self, rec: RecordedRequest, status: int | None) -> None:
        rec.status = status
        with self._lock:
            if status is None:
                self._counts["no_response"] += 1
            else:
                self._by_status[status] += 1

    async def _json(
        self,
        ex: Exchange,
        rec: RecordedRequest | None,
        status: int,
        obj: Any,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if rec is not None:
            self._record(rec, status)
        head = [("content-type", "application/json"), ("x-request-id", ex.request_id), *headers]
        await ex.respond(status, head, _dumps(obj))

    # ---- routing -----------------------------------------------------------------------
    async def handle(self, request: Request, ex: Exchange) -> None:
        if request.path.startswith("/_fake/"):
            await self._admin(request, ex)
            return
        try:
            body = json.loads(request.body) if request.body else None
        except ValueError:
            body = None
        rec = RecordedRequest(
            request.method, request.path, request.headers, body, time.monotonic(),
            ex.request_id, request.query,
        )  # fmt: skip
        with self._lock:
            self._log.append(rec)
            self._counts["total"] += 1
        try:
            await self._route(request, ex, rec)
        except _Reject as reject:
            await self._json(ex, rec, reject.status, reject.body, reject.headers)

    async def _route(self, request: Request, ex: Exchange, rec: RecordedRequest) -> None:
        azure = _AZURE_CHAT.fullmatch(request.path)
        if request.path == "/v1/chat/completions" or azure:
            if request.method != "POST":
                raise _Reject(405, f"Method {request.method} not allowed; use POST.")
            self._count("chat")
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            try:
                await self._chat(request, ex, rec, azure.group(1) if azure else None)
            finally:
                self._in_flight -= 1
        elif request.path == "/v1/models" and request.method == "GET":
            self._check_key(request.headers)
            models = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                      for m in self.o.models]  # fmt: skip
            await self._json(ex, rec, 200, {"object": "list", "data": models})
        elif self.batch.handles(request.path):
            self._check_key(request.headers)
            status, out = await self.batch.handle(
                request.method, request.path, request.body, request.headers
            )
            if isinstance(out, bytes):  # a file's content
                self._record(rec, status)
                head = [
                    ("content-type", "application/octet-stream"),
                    ("x-request-id", ex.request_id),
                ]
                await ex.respond(status, head, out)
            else:
                await self._json(ex, rec, status, out)
        else:
            raise _Reject(404, f"Invalid URL ({request.method} {request.path})")

    def _check_key(self, headers: Mapping[str, str]) -> None:
        """OpenAI's 401 when `require_key` is set and neither header presents it."""
        if self.o.require_key is None:
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else ""
        given = [bearer, headers.get("api-key", "").strip()]
        if self.o.require_key in given:
            return
        key = next((g for g in given if g), None)
        if key is None:
            raise _Reject(401, _NO_KEY)
        message = (
            f"Incorrect API key provided: {mask(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        raise _Reject(401, message, code="invalid_api_key")

    async def _admin(self, request: Request, ex: Exchange) -> None:
        """The control API a spawned server is driven through (and handy from curl)."""
        route = (request.method, request.path)
        if route == ("GET", "/_fake/stats"):
            await self._json(ex, None, 200, self.stats().to_dict())
        elif route == ("GET", "/_fake/requests"):
            await self._json(ex, None, 200, [r.to_dict() for r in self.requests()])
        elif route == ("POST", "/_fake/reset"):
            self.reset_log()
            await self._json(ex, None, 200, {"ok": True})
        elif route == ("POST", "/_fake/script"):
            self.enqueue([Fault.parse(s) for s in json.loads(request.body or b"[]")])
            await self._json(ex, None, 200, {"ok": True})
        else:
            await self._json(ex, None, 404, _error_body("unknown admin endpoint", "not_found"))

    # ---- chat completions --------------------------------------------------------------
    @staticmethod
    def _validate(body: dict[str, Any], deployment: str | None) -> tuple[str, int | None]:
        """The model and max_tokens of a request, or OpenAI's 400."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            message = (
                "Missing required parameter: 'messages'." if not messages else "Invalid 'messages'."
            )
            raise _Reject(400, message, code="invalid_value", param="messages")
        model = body.get("model") or deployment  # Azure names the model in the path
        if not isinstance(model, str):
            raise _Reject(400, "You must provide a model parameter.")
        param = (
            "max_completion_tokens"
            if body.get("max_completion_tokens") is not None
            else "max_tokens"
        )
        max_tokens = body.get(param)
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            message = f"Invalid '{param}': expected an integer >= 1, got {max_tokens!r}."
            raise _Reject(400, message, code="invalid_value", param=param)
        return model, max_tokens

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.o.fault_rate and self._fault_rng.random() < self.o.fault_rate:
            return self._fault_rng.choice(self.o.faults)
        return None

    def _latency(self) -> float:
        latency = self.o.latency
        return self._latency_rng.uniform(*latency) if isinstance(latency, tuple) else latency

    async def _reply(self, turn: _Turn) -> str | Fault:
        reply = self.o.reply
        if reply is None:
            return _echo(turn.body)
        if isinstance(reply, str):
            return reply
        try:
            result = reply(turn.body)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, (str, Fault)):
                raise TypeError(f"it returned {type(result).__name__}, not str or Fault")
        except Exception as exc:
            message = f"The fake server's reply callable failed: {type(exc).__name__}: {exc}"
            raise _Reject(500, message, "server_error", headers=turn.headers) from exc
        return result

    async def _chat(
        self, request: Request, ex: Exchange, rec: RecordedRequest, deployment: str | None
    ) -> None:
        o = self.o
        self._check_key(request.headers)
        body = rec.body
        if not isinstance(body, dict):
            raise _Reject(400, _BAD_JSON)
        model, max_tokens = self._validate(body, deployment)
        prompt_tokens = _prompt_tokens(body["messages"], o.count_tokens)
        headers: list[tuple[str, str]] = []
        if self._limiter is not None:
            charge = prompt_tokens + (
                max_tokens if max_tokens is not None else o.assumed_max_tokens
            )
            try:
                headers = self._limiter.take(charge, model)
            except _Reject:
                self._count("rate_limited")
                raise

        turn = _Turn(ex, rec, body, model, headers, fault=self._next_fault())
        if turn.fault is None or turn.fault.kind in _CONTENT_KINDS:
            produced = await self._reply(turn)
            if isinstance(produced, Fault):
                turn.fault = turn.fault or produced
            else:
                turn.text = produced
        fault = rec.fault = turn.fault
        if fault is not None:
            self._count("faults")

        delay = self._latency()
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None and fault.kind == "status":
            await self._status_fault(turn, fault)
            return
        if fault is not None and fault.kind == "reset":
            self._record(rec, None)
            ex.abort(reset=True)
            return
        if fault is not None and fault.kind == "hang" and fault.after is None:
            self._record(rec, None)
            await ex.hold()
            return
        if turn.kind == "empty_reply":
            turn.text = ""
        if max_tokens is not None:
            turn.text, cut = _truncate(turn.text, max_tokens, o.count_tokens)
            turn.finish = "length" if cut else "stop"
        completion_tokens = o.count_tokens(turn.text) if turn.text else 0
        turn.usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        await (self._stream(turn) if body.get("stream") is True else self._complete(turn))

    async def _status_fault(self, turn: _Turn, fault: Fault) -> None:
        code = fault.code or 500
        headers = [*turn.headers, *fault.headers.items()]
        if isinstance(fault.body, str):
            self._record(turn.rec, code)
            head = [("content-type", "text/plain"), ("x-request-id", turn.ex.request_id), *headers]
            await turn.ex.respond(code, head, fault.body.encode())
            return
        body: dict[str, Any] | None = fault.body
        if body is None:
            message = fault.message or _ERROR_MESSAGES.get(code) or f"Injected HTTP {code}."
            type_ = _ERROR_TYPES.get(
                code, "server_error" if code >= 500 else "invalid_request_error"
            )
            body = _error_body(message, type_, "rate_limit_exceeded" if code == 429 else None)
        await self._json(turn.ex, turn.rec, code, body, headers)

    async def _complete(self, turn: _Turn) -> None:
        """A non-streamed reply; the partial fault kinds cut the JSON body in half."""
        ex, kind = turn.ex, turn.kind
        if kind == "error_mid_stream":  # nothing is "mid" here: a plain 500
            error = _error_body(turn.error_message, "server_error")
            await self._json(ex, turn.rec, 500, error, turn.headers)
            return
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": turn.text, "refusal": None},
            "logprobs": None,
            "finish_reason": turn.finish,
        }
        data = _dumps({
            "id": f"chatcmpl-{ex.request_id[4:]}", "object": "chat.completion",
            "created": int(time.time()), "model": turn.model, "choices": [choice],
            "usage": turn.usage, "system_fingerprint": "fp_fake",
        })  # fmt: skip
        head = [
            ("content-type", "application/json"),
            ("x-request-id", ex.request_id),
            *turn.headers,
        ]
        self._record(turn.rec, 200)
        if kind == "truncate":  # a well-framed body that is cut JSON, then a clean close
            ex.keep_alive = False
            await ex.respond(200, head, data[: len(data) // 2])
        elif kind == "malformed_json":  # a trailing comma: every JSON parser refuses it
            await ex.respond(200, head, data[:-1] + b",}")
        elif kind in ("reset_mid_stream", "hang"):  # Content-Length promises more than comes
            ex.send_head(200, head, len(data))
            ex.write_raw(data[: len(data) // 2])
            await ex.drain()
            if kind == "hang":
                await ex.hold()
            else:
                ex.abort(reset=False)
        else:
            await ex.respond(200, head, data)

    async def _stream(self, turn: _Turn) -> None:
        """An SSE reply: a role chunk, content deltas (paced by tokens_per_second), a
        finish_reason chunk, the usage chunk if asked for and enabled, then [DONE]."""
        o, ex, kind = self.o, turn.ex, turn.kind
        asked = turn.body.get("stream_options")
        with_usage = isinstance(asked, dict) and asked.get("include_usage") is True
        with_usage = with_usage and o.include_usage_chunk
        cid = f"chatcmpl-{ex.request_id[4:]}"
        base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": turn.model, "system_fingerprint": "fp_fake"}  # fmt: skip

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            chunk: dict[str, Any] = {**base, "choices": [choice]}
            if with_usage:
                chunk["usage"] = None
            return b"data: " + _dumps(chunk) + b"\n\n"

        loop = asyncio.get_running_loop()
        due = loop.time()

        async def send(pieces: list[str]) -> None:
            nonlocal due
            for piece in pieces:
                if o.tokens_per_second:  # flush what is written, then wait for the next token
                    await ex.drain()
                    due += max(1, o.count_tokens(piece)) / o.tokens_per_second
                    if due > loop.time():
                        await asyncio.sleep(due - loop.time())
                ex.write(event({"content": piece}))

        self._record(turn.rec, 200)
        head = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
                ("x-request-id", ex.request_id), *turn.headers]  # fmt: skip
        ex.start_stream(200, head)
        ex.write(event({"role": "assistant", "content": "", "refusal": None}))
        pieces = _split(turn.text, o.chunk_chars)
        cut = turn.cut_at(len(pieces))
        await send(pieces[:cut])
        if kind == "malformed_json":  # one broken line, then the stream goes on
            ex.write(b'data: {"id": "%b", "choices": [{"delta": {"con\n\n' % cid.encode())
            await send(pieces[cut:])
        elif kind == "reset_mid_stream":
            await ex.drain()
            ex.abort(reset=False)
            return
        elif kind == "hang":
            await ex.hold()
            return
        elif kind == "truncate":
            ex.keep_alive = False
            await ex.end_stream()
            return
        elif kind == "error_mid_stream":
            ex.write(b"data: " + _dumps(_error_body(turn.error_message, "server_error")) + b"\n\n")
            await ex.end_stream()
            return
        ex.write(event({}, turn.finish))
        if with_usage:
            ex.write(b"data: " + _dumps({**base, "choices": [], "usage": turn.usage}) + b"\n\n")
        ex.write(b"data: [DONE]\n\n")
        await ex.end_stream()


class _ThreadBackend:
    """Serves from a private event loop in a daemon thread of this process."""

    pid: int | None = None

    def __init__(self, options: _Options) -> None:
        self.engine = _Engine(options)
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        o = self._options
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                port = loop.run_until_complete(self.engine.core.open(o.host, o.port))
            except BaseException as exc:  # e.g. the port is taken: the caller raises it
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(port)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="FakeOpenAIServer", daemon=True)
        self._thread.start()
        return ready.result(timeout=30)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        if threading.current_thread() is thread:
            raise RuntimeError("FakeOpenAIServer.stop() cannot run on the server's own thread")
        closing = asyncio.run_coroutine_threadsafe(self.engine.core.close(), loop)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            closing.result(timeout=5)  # a stuck close must not hang the caller
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    def script(self, faults: Sequence[Fault | None]) -> None:
        self.engine.enqueue(faults)

    def requests(self) -> list[RecordedRequest]:
        return self.engine.requests()

    def reset_log(self) -> None:
        self.engine.reset_log()

    def stats(self) -> ServerStats:
        return self.engine.stats()


def _child_main(options: _Options, conn: Connection) -> None:
    """Entry point of a spawned server: serve until the parent says stop or goes away."""
    backend = _ThreadBackend(options)
    try:
        port = backend.start()
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("port", port))
    try:
        conn.recv()
    except (EOFError, OSError):
        pass  # the parent died: do not outlive it
    finally:
        backend.stop()


class _ProcessBackend:
    """Serves from a child process (multiprocessing, spawn); driven over /_fake/ endpoints."""

    def __init__(self, options: _Options) -> None:
        try:
            pickle.dumps(options)
        except Exception as exc:
            raise TypeError(
                "a spawned FakeOpenAIServer needs picklable options; pass module-level "
                f"functions as reply/count_tokens, not lambdas or closures ({exc})"
            ) from None
        self._options = options
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._url = ""
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
        self._final: tuple[list[RecordedRequest], ServerStats] | None = None
        self.pid: int | None = None

    def start(self) -> int:
        ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=_child_main, args=(self._options, child), name="FakeOpenAIServer", daemon=True
        )
        process.start()
        child.close()
        self._process, self._conn, self.pid = process, parent, process.pid
        if not parent.poll(60):
            self.stop()
            raise RuntimeError("the spawned FakeOpenAIServer did not start within 60 s")
        try:
            what, value = parent.recv()
        except EOFError:  # the child died before it could report
            process.join(5)
            what, value = "error", f"the child exited with code {process.exitcode}"
        if what != "port":
            self.stop()
            raise RuntimeError(f"the spawned FakeOpenAIServer failed to start: {value}")
        self._url = f"http://{self._options.host}:{value}"
        return int(value)

    def stop(self) -> None:
        process, conn = self._process, self._conn
        if process is None or conn is None:
            return
        with contextlib.suppress(OSError):  # keep the log readable after stop, as in-process
            self._final = (self.requests(), self.stats())
        with contextlib.suppress(OSError):
            conn.send("stop")
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        conn.close()
        self._process = self._conn = None

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        if self._process is None:
            raise RuntimeError("the spawned FakeOpenAIServer is not running")
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self._url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with self._opener.open(request, timeout=30) as response:
            return json.loads(response.read())

    def script(self, faults: Sequence[Fault | None]) -> None:
        self._call("POST", "/_fake/script", [f.to_dict() if f else None for f in faults])

    def requests(self) -> list[RecordedRequest]:
        if self._final is not None:
            return list(self._final[0])
        return [RecordedRequest.from_dict(d) for d in self._call("GET", "/_fake/requests")]

    def reset_log(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def stats(self) -> ServerStats:
        if self._final is not None:
            return self._final[1]
        return ServerStats.from_dict(self._call("GET", "/_fake/stats"))


_DEFAULT_FAULTS = (Fault.status(500), Fault.status(503), Fault.reset())


class FakeOpenAIServer:
    """A loopback OpenAI-compatible server; see the module docstring for the whole story.

    Options (all keyword-only):

    - `reply`: the reply text, or a callable `(request_body) -> str | Fault` (may be
      async; runs on the server's loop, so it must not block). Default: `"Echo: "` + the
      last user message.
    - `models`: ids listed by `GET /v1/models`.
    - `latency`: seconds before the first byte of each chat reply, or `(low, high)` for a
      seeded uniform draw. Auth, validation and rate-limit rejections are immediate.
    - `tokens_per_second`: streaming pace (None: all chunks at once); `chunk_chars`:
      characters per delta (default: one word per delta).
    - `include_usage_chunk`: honour `stream_options.include_usage` (False imitates
      servers such as llama.cpp that never send the usage chunk).
    - `count_tokens`: token counter for `usage`, `max_tokens` and tpm (default `approx_tokens`).
    - `require_key`: answer 401 unless `Authorization: Bearer <key>` or `api-key: <key>`.
    - `rpm`, `tpm`, `assumed_max_tokens`: rate limits, see the module docstring.
    - `faults`, `fault_rate`, `seed`: each chat request fails with probability
      `fault_rate` with a fault drawn from `faults` (default 500, 503, reset); `seed` makes
      the draws (and random latency) reproducible. `script()` queues faults in order.
    - `host`, `port`: where to listen (default 127.0.0.1 and a free port).
    - `process`: serve from a child process (see `spawn`).
    - `batch`: the Files and Batch API's behaviour, a `BatchOptions` or its fields as a dict
      (processing delay, shuffled output, per-line errors, expiry; see `ipychat._fakebatch`).
    """

    def __init__(
        self,
        *,
        reply: str | ReplyFunc | None = None,
        models: Sequence[str] = ("fake-model",),
        latency: float | tuple[float, float] = 0.0,
        tokens_per_second: float | None = None,
        chunk_chars: int | None = None,
        include_usage_chunk: bool = True,
        count_tokens: Callable[[str], int] | None = None,
        require_key: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        assumed_max_tokens: int = 16,
        faults: Sequence[FaultSpec] = (),
        fault_rate: float = 0.0,
        seed: int | None = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        process: bool = False,
        batch: BatchOptions | Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(latency, (tuple, list)):
            low, high = latency
            if not 0 <= low <= high:
                raise ValueError(f"latency range must satisfy 0 <= low <= high, got {latency!r}")
            latency = (float(low), float(high))
        elif latency < 0:
            raise ValueError("latency must be >= 0")
        if tokens_per_second is not None and tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be > 0 (or None for no pacing)")
        if chunk_chars is not None and chunk_chars < 1:
            raise ValueError("chunk_chars must be >= 1")
        for name, limit in (("rpm", rpm), ("tpm", tpm)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be >= 1 (or None for no limit)")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        parsed = tuple(f for f in (Fault.parse(s) for s in faults) if f is not None)
        self._options = _Options(
            reply=reply,
            models=tuple(models),
            latency=latency,
            tokens_per_second=tokens_per_second,
            chunk_chars=chunk_chars,
            include_usage_chunk=include_usage_chunk,
            count_tokens=count_tokens or approx_tokens,
            require_key=require_key,
            rpm=rpm,
            tpm=tpm,
            assumed_max_tokens=assumed_max_tokens,
            faults=parsed or _DEFAULT_FAULTS,
            fault_rate=fault_rate,
            seed=seed,
            host=host,
            port=port,
            batch=BatchOptions.of(batch),
        )
        self._backend: _ThreadBackend | _ProcessBackend = (
            _ProcessBackend(self._options) if process else _ThreadBackend(self._options)
        )
        self._state = "new"  # -> "running" -> "stopped"
        self._state_lock = threading.Lock()
        self._port: int | None = None

    @classmethod
    def spawn(cls, **options: Any) -> FakeOpenAIServer:
        """A started server in a child process, for benchmarks that measure client CPU."""
        return cls(process=True, **options).start()

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        """Start serving (a no-op when already running); returns self."""
        with self._state_lock:
            if self._state == "running":
                return self
            if self._state == "stopped":
                raise RuntimeError(
                    "a stopped FakeOpenAIServer cannot be restarted; create a new one"
                )
            self._port = self._backend.start()
            self._state = "running"
        return self

    def stop(self) -> None:
        """Close every connection (hung ones included) and the thread or process; idempotent."""
        with self._state_lock:
            if self._state == "running":
                self._backend.stop()
            self._state = "stopped"

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeOpenAIServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(
                "the FakeOpenAIServer is not started: use `with FakeOpenAIServer() as s`"
            )
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. `http://127.0.0.1:PORT`."""
        return f"http://{self._options.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client wants as its base URL: `http://127.0.0.1:PORT/v1`."""
        return self.url + "/v1"

    @property
    def api_key(self) -> str:
        """A key this server accepts (the required one, or a placeholder)."""
        return self._options.require_key or "sk-fake-key"

    @property
    def pid(self) -> int | None:
        """The child's process id when spawned, else None."""
        return self._backend.pid

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"<FakeOpenAIServer {where} {self._state}{' (process)' if self.pid else ''}>"

    # ---- control and inspection --------------------------------------------------------
    def script(self, *faults: FaultSpec) -> None:
        """Queue one entry per coming chat request that passes auth, validation and rate
        limits: a Fault or shorthand, or None/"ok" for a normal reply."""
        self._backend.script([Fault.parse(f) for f in faults])

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received (admin endpoints excluded), oldest first."""
        return self._backend.requests()

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The requests to a chat completions path (OpenAI's or Azure's)."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def reset_log(self) -> None:
        """Forget the recorded requests and zero the stats (limits and script are kept)."""
        self._backend.reset_log()

    def stats(self) -> ServerStats:
        return self._backend.stats()

    @property
    def batch_api(self) -> BatchAPI:
        """The fake Files and Batch API's state (files, batches); in-process servers only."""
        if not isinstance(self._backend, _ThreadBackend):
            raise RuntimeError("batch_api is not available on a spawned server")
        return self._backend.engine.batch

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until `count` requests were received (e.g. before stopping a hung one)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.requests
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(seen)} of {count} requests arrived within {timeout} s")
            time.sleep(0.005)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ipychat.testing`: serve until interrupted; prints the base URL first."""
    parser = argparse.ArgumentParser(prog="python -m ipychat.testing", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--reply", default=None, help="fixed reply (default: echo the prompt)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before the first byte")
    parser.add_argument("--tokens-per-second", type=float, default=None)
    parser.add_argument("--rpm", type=int, default=None)
    parser.add_argument("--tpm", type=int, default=None)
    parser.add_argument("--require-key", default=None)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default="", help="comma-separated, e.g. 500,503,reset,hang")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-usage-chunk", action="store_true", help="imitate llama.cpp")
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        reply=args.reply,
        latency=args.latency,
        tokens_per_second=args.tokens_per_second,
        rpm=args.rpm,
        tpm=args.tpm,
        require_key=args.require_key,
        fault_rate=args.fault_rate,
        faults=[f.strip() for f in args.faults.split(",") if f.strip()],
        seed=args.seed,
        include_usage_chunk=not args.no_usage_chunk,
        host=args.host,
        port=args.port,
    ).start()
    # Handlers set before the URL is printed: whoever reads it may signal us at once.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(server.base_url, flush=True)
    try:
        while not stop.wait(0.2):  # a timed wait: signal handlers run between waits
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
