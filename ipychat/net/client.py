"""The async OpenAI-compatible chat client: the one network boundary of ipychat.

Everything that crosses the wire goes through `ChatClient`, which takes an httpx
transport as an argument: unit tests pass `httpx.MockTransport`, protocol tests talk to
`ipychat.testing.FakeOpenAIServer` over real sockets. httpx is imported here and in the
client's private helper modules, which are part of the same boundary and used by
nothing else: `ipychat.net.transport` (the default aiohttp transport, body reading,
network-failure classification), `ipychat.net.failures` (status and connection
errors, server-message extraction, redaction), `ipychat.net.replies` (reading a 2xx
body: JSON, completion, SSE stream) and `ipychat.net.requests` (building each request;
base URL and key settings).

```
ChatClient.chat(body)            one request, retried by the rules of ipychat.net.retry
  └── _call(...)                 the retry loop: build → send → classify → wait → again
        ├── _direct(...)         non-streamed, on ipychat's own transport: straight to
        │                        aiohttp, no httpx Request/Response (else `_attempt`)
        ├── _requests.build(...)  the httpx.Request (ipychat.net.requests)
        ├── _pools.current()     the lazily built transport (connection pool) of the loop
        │                        (ipychat.net.pool)
        ├── _replies.read_json / read_completion / read_stream
        │                        a 2xx body → Completion (ipychat.net.replies; SSE via ipychat.net.sse)
        └── status_failure / transport_failure   failures → ipychat.core.errors, one line each
                                         (ipychat.net.failures)
```

Why the aiohttp transport by default: httpcore's async pool costs about 15 ms of CPU per
request at 64 in flight on a 2-core machine, httpx_aiohttp's transport a fifth of that
(measured by benchmarks/client_overhead.py). httpx's types stay (httpx.Request/Response, any
httpx.AsyncBaseTransport), so the transport remains injectable.

Two trims keep the client within 1.5x of raw aiohttp's CPU per request (measured by
benchmarks/client_overhead.py): requests go straight to `transport.handle_async_request`
rather than through httpx.AsyncClient.send (its cookie jar, auth flow and redirect
machinery are unused here and cost more than the rest of the client together), and
the default transport is a subclass of httpx_aiohttp's with its per-request work
streamlined (`ipychat.net.transport._lean_aiohttp_transport`). Request headers and URLs are built once.

Timeouts with that transport: httpx's `connect`/`read`/`pool` become aiohttp's
`sock_connect`/`sock_read`/`connect`; `sock_read` restarts on every chunk received, so
`read` is the longest silence between two chunks of a stream. `write` is not enforced by
aiohttp (request bodies here are small JSON documents written at once).

Credentials: keys live in `ipychat.core.keys.Secret`, are revealed only while building a
request's headers, and every server message passes through `ipychat.core.keys.redact`
before it reaches an exception or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from ipychat import __version__
from ipychat.core.errors import (
    APIError,
    ConfigError,
    NoAPIKeyError,
    RateLimitError,
)
from ipychat.core.keys import Secret
from ipychat.core.settings import key_origins_from_env
from ipychat.core.types import Completion, RateLimitInfo
from ipychat.net import retry as policy
from ipychat.net.batchapi import BatchCalls
from ipychat.net.failures import (
    Endpoint,
    Failed,
    status_failure,
    transport_failure,
    warn_retry,
)
from ipychat.net.pool import Pools
from ipychat.net.replies import Attempt, Dropped, ReplyReader, rate_limit_of
from ipychat.net.requests import (
    DEFAULT_BASE_URL,
    RequestBuilder,
    Timeouts,
    check_plain_http,
    log_reply,
    log_request,
    normalize_base_url,
    resolve_keys,
)
from ipychat.net.transport import (
    close_response,
    header_dict,
    is_json,
    is_transport_error,
    raw_header_dict,
)

__all__ = ["DEFAULT_BASE_URL", "ChatClient", "Timeouts"]

log = logging.getLogger("ipychat")

OPENAI_HOST = "api.openai.com"
DEFAULT_TIMEOUTS = Timeouts()  # frozen, so safe to share
USER_AGENT = f"ipychat/{__version__}"

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class ChatClient(BatchCalls):
    """An async client for OpenAI-compatible `/chat/completions` and `/models`, plus the
    few `/files` and `/batches` calls of batch mode (`ipychat.map.batch`).

    Create it anywhere; the connection pool (an httpx transport, by default httpx_aiohttp's)
    is built lazily on first use inside the running event loop, and rebuilt if a later
    call runs in another loop. An injected `transport` is used as is and never closed
    by the client: it belongs to the caller. `provider` names a row of
    `ipychat.core.providers` whose quirks apply (else the one the URL is under, if any).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | Secret | None = None,
        api_keys: Sequence[str | Secret] | None = None,
        key_origins: Sequence[str] | None = None,
        azure_api_version: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_retries: int = policy.DEFAULT_MAX_RETRIES,
        max_retry_wait: float = policy.DEFAULT_MAX_WAIT,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        sleep: Sleep | None = None,
        rand: Callable[[], float] = random.random,
        provider: str | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        url = httpx.URL(self.base_url)
        self.host: str = url.netloc.decode("ascii")
        self._is_openai = url.host == OPENAI_HOST
        # Where keys may go: ipychat.net.requests (`key_origins`: endpoints the user allowed
        # beyond a key's own; None reads IPYCHAT_KEY_ORIGINS).
        trusted = tuple(key_origins) if key_origins is not None else key_origins_from_env()
        self._keys, self._withheld = resolve_keys(api_key, api_keys, self.base_url, trusted)
        if self._keys:
            check_plain_http(self.base_url, trusted)
        self._replies = ReplyReader(self.host, self.base_url, self._keys)
        self._key_index = 0
        self.azure_api_version = azure_api_version or None
        self.timeouts = timeouts
        # Two timeout sets: `read` between chunks (streams, /models), `reply` for a whole
        # non-streamed completion. Built once: transports read them per request.
        self._chunk_timeout = timeouts.for_request(stream=True)
        self._reply_timeout = timeouts.for_request(stream=False)
        if max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, not {max_retries}")
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._pools = Pools(transport, max_connections, self.base_url)
        self._requests = RequestBuilder(
            self.base_url,
            self._keys,
            self.azure_api_version,
            {"User-Agent": USER_AGENT, **(headers or {})},
            provider,  # a named provider's request quirks (ipychat.core.providers)
        )
        # Injected so tests can assert the waits the client asked for without waiting.
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._endpoint = Endpoint(
            self.host, self.base_url, self._keys, self._withheld, timeouts, rand
        )
        self.last_rate_limit: RateLimitInfo | None = None

    # ----- public API ---------------------------------------------------------------------

    @property
    def has_key(self) -> bool:
        return bool(self._keys)

    @property
    def max_connections(self) -> int:
        return self._pools.limit

    def __repr__(self) -> str:
        keys = f"{len(self._keys)} keys" if len(self._keys) != 1 else "1 key"
        azure = f", azure_api_version={self.azure_api_version!r}" if self.azure_api_version else ""
        return f"ChatClient(base_url={self.base_url!r}, {keys}{azure})"

    async def chat(
        self,
        body: Mapping[str, Any],
        *,
        stream: bool = False,
        on_delta: Callable[[str], None] | None = None,
        max_retries: int | None = None,
    ) -> Completion:
        """POST /chat/completions and return the whole reply.

        `body` is the OpenAI request without `stream`. With `stream=True` the reply is
        read as SSE, `on_delta(text)` is called on the loop for each content delta, and
        the usage chunk is asked for where the endpoint accepts that (servers that ignore
        it and send no usage elsewhere give `usage=None`; ipychat.net.requests).
        """
        content = self._requests.chat_content(body, stream=stream)
        model = str(body.get("model") or "")

        async def read(response: httpx.Response, attempt: Attempt) -> Completion:
            if stream and not is_json(attempt.headers):
                return await self._replies.read_stream(response, attempt, on_delta)
            completion = await self._replies.read_completion(response, attempt)
            if stream and completion.text and on_delta is not None:
                on_delta(completion.text)  # a server that ignored stream=true
            return completion

        return await self._call(
            "POST",
            "/chat/completions",
            content,
            timeout=self._chunk_timeout if stream else self._reply_timeout,
            model=model,
            read=read,
            max_retries=max_retries,
            direct=not stream,
        )

    async def models(self) -> list[str]:
        """GET /models: the model ids the endpoint offers, sorted."""

        async def read(response: httpx.Response, attempt: Attempt) -> list[str]:
            data = await self._replies.read_json(response, attempt)
            items = data.get("data") if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise APIError(
                    f"{self.host} answered /models without a model list; "
                    "check that the base URL points at an OpenAI-compatible API",
                    request_id=attempt.request_id,
                )
            ids = (item.get("id") if isinstance(item, dict) else item for item in items)
            return sorted(str(i) for i in ids if i)

        return await self._call(
            "GET",
            "/models",
            None,
            timeout=self._chunk_timeout,
            model="",
            read=read,
            max_retries=None,
        )

    async def set_max_connections(self, n: int) -> None:
        """Size the connection pool for `n` requests in flight (applied on the next request).

        With the default transport, a pool of another size is built lazily and the old
        one is closed when its last request finishes. An injected transport keeps its own
        limits (the client cannot resize what it did not build).
        """
        await self._pools.resize(n)

    async def aclose(self) -> None:
        """Close every connection. The client can still be used: it reconnects lazily."""
        await self._pools.aclose()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----- the retry loop -----------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        content: bytes | None,
        *,
        timeout: dict[str, float | None],
        model: str,
        read: Callable[[httpx.Response, Attempt], Awaitable[T]],
        max_retries: int | None,
        content_type: str | None = None,
        direct: bool = False,
    ) -> T:
        limit = self.max_retries if max_retries is None else max_retries
        self._check_key()
        started = time.perf_counter()
        url = self._requests.url(path)
        retries = 0
        keys_tried: set[int] = set()
        while True:
            key_index = self._key_index
            pool = self._pools.current()
            pool.inflight += 1
            try:
                outcome: T | Failed | None = None
                if direct and pool.owned and content is not None:
                    outcome = await self._direct(  # type: ignore[assignment]
                        pool.transport, key_index, content, model, started, retries, limit, read
                    )
                if outcome is None:
                    request = self._requests.build(
                        method, url, content, key_index, timeout, content_type
                    )
                    outcome = await self._attempt(
                        pool.transport, request, path, model, started, retries, limit, read
                    )
            finally:
                pool.inflight -= 1
                if pool.retired and pool.inflight == 0:
                    await self._pools.close_retired(pool)
            if not isinstance(outcome, Failed):
                return outcome
            error, decision = outcome.error, outcome.decision
            if isinstance(error, RateLimitError) and self._next_key(
                key_index, keys_tried, retries, limit
            ):
                retries += 1  # another key of the pool may have quota left: no wait
                continue
            if not decision.retry:
                raise error
            warn_retry(self.host, f"{method} {path}", decision, retries, limit)
            await self._sleep(decision.delay)
            retries += 1

    async def _attempt(
        self,
        transport: httpx.AsyncBaseTransport,
        request: httpx.Request,
        path: str,
        model: str,
        started: float,
        retries: int,
        limit: int,
        read: Callable[[httpx.Response, Attempt], Awaitable[T]],
    ) -> T | Failed:
        """One try: the result of `read`, or how it failed (for the retry loop to judge)."""
        if log.isEnabledFor(logging.DEBUG):
            log_request(request, model, retries)
        try:
            # Straight to the transport, not through httpx.AsyncClient.send: its cookie jar,
            # auth flow and redirect machinery are unused here and cost a third of the
            # client's CPU per request at 64 in flight (benchmarks/client_overhead.py).
            response = await transport.handle_async_request(request)
        except Exception as exc:
            if not is_transport_error(exc):
                raise
            return transport_failure(exc, request, retries, limit, self._endpoint)
        return await self._answered(response, request, header_dict(response), path, model,
                                    started, retries, limit, read)  # fmt: skip

    async def _answered(
        self,
        response: httpx.Response,
        request: httpx.Request,
        headers: dict[str, str],
        path: str,
        model: str,
        started: float,
        retries: int,
        limit: int,
        read: Callable[[httpx.Response, Attempt], Awaitable[T]],
    ) -> T | Failed:
        """The rest of `_attempt` once the response has come: its status, then its body."""
        response.request = request
        try:
            rate_limit = rate_limit_of(headers)
            if rate_limit is not None:
                self.last_rate_limit = rate_limit
            request_id = headers.get("x-request-id")
            status = response.status_code
            if status >= 300:
                return await status_failure(
                    response,
                    headers,
                    path,
                    rate_limit,
                    (retries, limit),
                    self.max_retry_wait,
                    self._endpoint,
                )
            attempt = Attempt(started, retries, model, request_id, rate_limit, headers)
            try:
                result = await read(response, attempt)
            except Dropped as dropped:
                return transport_failure(dropped.cause, request, retries, limit, self._endpoint)
            if log.isEnabledFor(logging.DEBUG):
                log_reply(request.method, path, model, status, request_id, started, retries)
            return result
        finally:
            await close_response(response)

    async def _direct(
        self,
        transport: Any,
        key_index: int,
        content: bytes,
        model: str,
        started: float,
        retries: int,
        limit: int,
        read: Callable[[httpx.Response, Attempt], Awaitable[T]],
    ) -> Completion | T | Failed | None:
        """`_attempt` for a non-streamed chat on ipychat's own transport, without httpx's
        Request and Response models: a tenth of a %%chatmap row's CPU. The same request
        (URL, headers, body, timeouts) and the same outcomes: a status >= 300 or an encoded
        body goes on as in `_attempt`, and the httpx.Request a failure names is built then.
        None: the transport serves through the stock code (the caller takes `_attempt`)."""
        send = getattr(transport, "send_direct", None)
        if send is None:
            return None
        timeout, path = self._reply_timeout, "/chat/completions"

        def request() -> httpx.Request:
            url = self._requests.url(path)
            return self._requests.build("POST", url, content, key_index, timeout)

        if log.isEnabledFor(logging.DEBUG):
            log_request(request(), model, retries)
        try:
            url, headers = self._requests.direct(path, key_index)
            response = await send(url, headers, content, timeout)
        except Exception as exc:
            if not is_transport_error(exc):
                raise
            return transport_failure(exc, request(), retries, limit, self._endpoint)
        if response is None:
            return None
        try:
            got, status = raw_header_dict(response.raw_headers), response.status
            if status >= 300 or got.get("content-encoding", "identity") not in ("", "identity"):
                wrapped = transport.as_httpx(response, request())
                return await self._answered(
                    wrapped, wrapped.request, got, path, model, started, retries, limit, read
                )
            rate_limit = rate_limit_of(got)
            if rate_limit is not None:
                self.last_rate_limit = rate_limit
            attempt = Attempt(started, retries, model, got.get("x-request-id"), rate_limit, got)
            try:
                body = await transport.read_direct(response)
                completion = self._replies.completion_of(body, status, attempt)
            except Exception as exc:  # Dropped: a cut reply (ReplyReader.parse_json)
                cause = exc.cause if isinstance(exc, Dropped) else exc
                if cause is exc and not is_transport_error(exc):
                    raise
                return transport_failure(cause, request(), retries, limit, self._endpoint)
            if log.isEnabledFor(logging.DEBUG):
                log_reply("POST", path, model, status, attempt.request_id, started, retries)
            return completion
        finally:
            response.release()

    def _next_key(self, used: int, tried: set[int], retries: int, limit: int) -> bool:
        """On a 429 with a key pool: move to a key not yet tried by this request.

        The move is shared (the next requests start on the new key too), and only made if
        no concurrent request has already moved on from `used`.
        """
        if len(self._keys) < 2 or retries >= limit:
            return False
        tried.add(used)
        if self._key_index == used:
            self._key_index = (used + 1) % len(self._keys)
        if self._key_index in tried:
            return False
        log.warning(
            "Rate limited by %s; moving to API key %d of %d",
            self.host,
            self._key_index + 1,
            len(self._keys),
        )
        return True

    # ----- requests ------------------------------------------------------------------------

    def _check_key(self) -> None:
        if not self._keys and self._is_openai:
            raise NoAPIKeyError(
                f"No API key for {self.base_url}. Set OPENAI_API_KEY, run %chat key, "
                "or install ipychat[local] for the offline model."
            )


# ----- helpers ------------------------------------------------------------------------------
