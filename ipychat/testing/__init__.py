"""A fake OpenAI-compatible server on 127.0.0.1, for tests, notebooks and benchmarks.

Why a real server and not a mock transport: it exercises everything between your code and
the wire (sockets, connection pools, HTTP framing, SSE parsing, timeouts, retries), and it
works with any client (ipychat, the openai SDK, httpx, aiohttp, curl). It speaks the
protocol of `POST /v1/chat/completions` (streaming and not, with `usage` and the
`stream_options.include_usage` chunk), `GET /v1/models` and the Files and Batch API
(`ipychat.testing.batchapi`), and can misbehave on purpose:
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

In pytest, the `fake_openai` fixture (installed with ipychat, see `ipychat.testing.pytest_plugin`)
yields a started server; `@pytest.mark.fake_openai(latency=0.1)` passes options.

The server runs its own asyncio event loop in a daemon thread, so it serves while sync
code (a test, a notebook cell) blocks on it and while async code awaits it. For
benchmarks, `FakeOpenAIServer.spawn(...)` runs it in a child process instead, so that
the client's CPU time is measured without the server's; the API is the same. Callables
given to a spawned server (`reply`, `count_tokens`) must be picklable (module-level
functions), and a script that spawns needs the usual `if __name__ == "__main__":` guard.
From a shell: `python -m ipychat.testing --port 8000 --latency 0.2` prints its base URL.

Rate limits follow what OpenAI and Azure document (`ipychat.testing.rules` cites the
sources, option by option). `rpm` and `tpm` are per-minute limits enforced over a short
`window`: within any `window` seconds (default 1, the worst case documented; 10 and 60
are the others) at most limit × window / 60 is accepted, so a burst is refused even when
the minute's total is far below the limit. A request is charged when it arrives, before
any work: 1 request and `prompt tokens + max_tokens` tokens (`max_completion_tokens` wins
over `max_tokens`; a request that sets neither is charged `assumed_max_tokens`, default
16), and a refused request is charged too (`charge_refused=False` refunds it): hammering a
full window keeps it full. Every answer carries OpenAI's `x-ratelimit-limit-*`,
`-remaining-*` and `-reset-*` headers, which report the per-minute limit (a bucket of a
minute's capacity refilling at limit/60 per second, reset as a duration like `20ms`,
`1s`, `6m0s`), never the window. A refused request gets OpenAI's 429 (`code`
`rate_limit_exceeded`, `type` `requests` or `tokens`, "Rate limit reached for MODEL in
organization org-fake on requests per min (RPM): Limit 6000, Used 120, Requested 1.
Please try again in 10ms. ...") with `retry-after-ms`/`retry-after`: the time until the
window has room for it. `ratelimit_headers=False` sends no `x-ratelimit-*` header at all
(vLLM, llama.cpp, many gateways), `retry_after=False` no retry-after and no "try again
in". A request larger than the whole tpm limit gets a 429 with `x-should-retry: false`.

Faults apply to chat requests that got past auth, validation and the rate limiter (so a
limiter 429 does not use up a scripted fault): first the `script()` queue, one entry per
request, then a seeded draw with probability `fault_rate`. `latency` delays every chat
answer, faults included, but not 400/401/429 rejections, which OpenAI also sends at once.

This module is the public surface; the machinery is private: `ipychat.testing.server` (the
protocol engine), `ipychat.testing.rules` (errors, token accounting, rate limits),
`ipychat.testing.process` (the thread or child process it runs in), `ipychat.testing.http` (the
HTTP/1.1 core) and `ipychat.testing.batchapi` (the Files and Batch API).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from ipychat.core.keys import redact_headers
from ipychat.testing.batchapi import BatchAPI, BatchOptions

if TYPE_CHECKING:
    from ipychat.testing.process import _ProcessBackend, _ThreadBackend

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


@dataclass(frozen=True)
class _Options:
    """A server's checked options, as its engine (`ipychat.testing.server`) and a spawned
    child (`ipychat.testing.process`, by pickle) receive them."""

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
    window: float = 1.0
    charge_refused: bool = True
    ratelimit_headers: bool = True
    retry_after: bool = True


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
    - `rpm`, `tpm`, `assumed_max_tokens`: rate limits, see the module docstring; how they
      are enforced: `window` (seconds: 1, the default, 10 or 60), `charge_refused` (a 429
      counts against the limit, default True), `ratelimit_headers` (OpenAI's
      `x-ratelimit-*` on every answer, default True; False imitates vLLM, llama.cpp or a
      gateway) and `retry_after` (`retry-after-ms`/`retry-after` on a limiter 429, default
      True).
    - `faults`, `fault_rate`, `seed`: each chat request fails with probability
      `fault_rate` with a fault drawn from `faults` (default 500, 503, reset); `seed` makes
      the draws (and random latency) reproducible. `script()` queues faults in order.
    - `host`, `port`: where to listen (default 127.0.0.1 and a free port).
    - `process`: serve from a child process (see `spawn`).
    - `batch`: the Files and Batch API's behaviour, a `BatchOptions` or its fields as a dict
      (processing delay, shuffled output, per-line errors, expiry; see `ipychat.testing.batchapi`).
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
        window: float = 1.0,
        charge_refused: bool = True,
        ratelimit_headers: bool = True,
        retry_after: bool = True,
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
        if not 0 < window <= 60:
            raise ValueError(
                f"window must be in seconds, more than 0 and at most 60, not {window!r}"
            )
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
            window=float(window),
            charge_refused=charge_refused,
            ratelimit_headers=ratelimit_headers,
            retry_after=retry_after,
        )
        # Imported here, not at the top: the engine's modules import this one's types.
        from ipychat.testing.process import _ProcessBackend, _ThreadBackend

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
        from ipychat.testing.process import _ThreadBackend

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
    parser.add_argument("--window", type=float, default=1.0, help="seconds: 1, 10 or 60")
    parser.add_argument("--refund-refused", action="store_true", help="429s are not charged")
    parser.add_argument("--no-ratelimit-headers", action="store_true", help="like vLLM")
    parser.add_argument("--no-retry-after", action="store_true")
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
        window=args.window,
        charge_refused=not args.refund_refused,
        ratelimit_headers=not args.no_ratelimit_headers,
        retry_after=not args.no_retry_after,
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
