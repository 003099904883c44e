"""`FakeOpenAIServer`: the public face of the fake OpenAI-compatible server.

The whole story (what it speaks, how it misbehaves, its rate limits) is the docstring of
`ipychat.testing`. This class checks its options into one frozen `ServerOptions` and hands
them to a backend (`ipychat.testing.process`: a thread of this process, or a child) that
runs the engine (`ipychat.testing.server`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ipychat.testing.batchapi import BatchAPI
from ipychat.testing.faults import Fault, FaultSpec
from ipychat.testing.flavours import Flavour
from ipychat.testing.flavours import flavour as find_flavour
from ipychat.testing.options import BatchOptions, ReplyFunc, ServerOptions, approx_tokens
from ipychat.testing.process import ProcessBackend, ThreadBackend
from ipychat.testing.records import RecordedRequest, ServerStats

__all__ = ["FakeOpenAIServer"]


class FakeOpenAIServer:
    """A loopback OpenAI-compatible server; see the module docstring for the whole story.

    Options (all keyword-only):

    - `reply`: the reply text, or a callable `(request_body) -> str | Fault` (may be
      async; runs on the server's loop, so it must not block). Default: `"Echo: "` + the
      last user message.
    - `flavour`: a provider's OpenAI-compatible endpoint, with its documented differences
      (`"openai"`, the default, `"anthropic"`, `"gemini"`, `"mistral"`, `"groq"`,
      `"openrouter"`, `"together"`, `"azure"`, `"ollama"`, `"vllm"`, `"lmstudio"`; see
      `ipychat.testing.flavours`): where it lives (`base_url`), its model names, error
      shapes, rate-limit headers, stream usage. The options below override it.
    - `models`: ids listed by `GET /v1/models` (default: the flavour's).
    - `latency`: seconds before the first byte of each chat reply, or `(low, high)` for a
      seeded uniform draw. Auth, validation and rate-limit rejections are immediate.
    - `tokens_per_second`: streaming pace (None: all chunks at once); `chunk_chars`:
      characters per delta (default: one word per delta).
    - `include_usage_chunk`: honour `stream_options.include_usage` (default the flavour's,
      True for OpenAI; False imitates servers such as llama.cpp or LM Studio that never send
      the usage chunk).
    - `count_tokens`: token counter for `usage`, `max_tokens` and tpm (default `approx_tokens`).
    - `require_key`: answer 401 unless `Authorization: Bearer <key>` or `api-key: <key>`.
    - `rpm`, `tpm`, `assumed_max_tokens`: rate limits, see the module docstring; how they
      are enforced: `window` (seconds: 1, the default, 10 or 60), `charge_refused` (a 429
      counts against the limit, default True), `ratelimit_headers` (OpenAI's
      `x-ratelimit-*` on every answer, default the flavour's, True for OpenAI; False imitates vLLM, llama.cpp or a
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
        flavour: str | Flavour = "openai",
        models: Sequence[str] | None = None,
        latency: float | tuple[float, float] = 0.0,
        tokens_per_second: float | None = None,
        chunk_chars: int | None = None,
        include_usage_chunk: bool | None = None,
        count_tokens: Callable[[str], int] | None = None,
        require_key: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        assumed_max_tokens: int = 16,
        window: float = 1.0,
        charge_refused: bool = True,
        ratelimit_headers: bool | None = None,
        retry_after: bool = True,
        faults: Sequence[FaultSpec] = (),
        fault_rate: float = 0.0,
        seed: int | None = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        process: bool = False,
        batch: BatchOptions | Mapping[str, Any] | None = None,
    ) -> None:
        imitated = find_flavour(flavour)  # what it imitates, unless an option says otherwise
        if ratelimit_headers is None:
            ratelimit_headers = imitated.ratelimit_headers
        if include_usage_chunk is None:
            include_usage_chunk = imitated.usage_chunk
        self._options = ServerOptions(
            reply=reply, models=tuple(imitated.models if models is None else models),
            latency=latency, tokens_per_second=tokens_per_second, chunk_chars=chunk_chars,
            include_usage_chunk=include_usage_chunk, count_tokens=count_tokens or approx_tokens,
            require_key=require_key, rpm=rpm, tpm=tpm, assumed_max_tokens=assumed_max_tokens,
            window=window, charge_refused=charge_refused, ratelimit_headers=ratelimit_headers,
            retry_after=retry_after,
            faults=tuple(f for f in (Fault.parse(s) for s in faults) if f is not None),
            fault_rate=fault_rate, seed=seed, host=host, port=port, batch=BatchOptions.of(batch),
            flavour=imitated,
        )  # fmt: skip
        self._backend: ThreadBackend | ProcessBackend = (
            ProcessBackend(self._options) if process else ThreadBackend(self._options)
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
        """What an OpenAI client wants as its base URL: `http://127.0.0.1:PORT/v1` (the
        flavour's prefix instead of /v1, e.g. Gemini's /v1beta/openai)."""
        return self.url + self._options.flavour.prefix

    @property
    def flavour(self) -> Flavour:
        """The provider it imitates (`ipychat.testing.flavours`): name, models, quirks."""
        return self._options.flavour

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
        if not isinstance(self._backend, ThreadBackend):
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
