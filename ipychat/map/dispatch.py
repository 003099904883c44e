"""%%chatmap's dispatch: the requests of a map sent at the server's pace, on the session loop.

```
Dispatcher.run()                 until the queue is empty or something global stops it
  ├── window                     requests in flight: a few until the server answers, then
  │                              what its limits × latency call for (--concurrency wins);
  │                              one at a time while a bare 429 says the way is shut
  ├── RateLimiter (per endpoint  the steady pace under the limits, a burst only as the
  │   and model, ratelimit.py)   server proves it; wait for the exact time, no polling
  └── _send(request)             engine.request(max_retries=0): retries are decided here
        ├── 429                  never fails the row: it goes back in front, every sender
        │                        waits (retry-after, else a backoff), the pace slows down
        ├── 408/409/5xx/network  the row retried after the server's retry-after, else backoff
        └── key / model / quota  the whole run stops (`abort`), as does an outage: nothing
                                 but 429s and failures for MAX_OUTAGE seconds
```

Replies, failures and costs go to the `sink` (the MapJob), which writes the rows.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ipychat.core.errors import ChatError, RateLimitError
from ipychat.core.runner import guarded as guarded
from ipychat.core.runner import wait
from ipychat.core.settings import TICK
from ipychat.core.types import CacheMode
from ipychat.map.failed import QUOTA_GONE, bug, classify, outage
from ipychat.map.heap import frozen_heap
from ipychat.map.ratelimit import RateLimiter, Ticket
from ipychat.net.retry import DEFAULT_MAX_WAIT, backoff_delay

if TYPE_CHECKING:
    from ipychat.core.runner import LoopThread
    from ipychat.core.types import Reply
    from ipychat.engine.engine import Engine
    from ipychat.engine.exchange import CachedReply
    from ipychat.map.plan import MapRequest
    from ipychat.map.sharedpace import SharedPace

__all__ = [
    "Counters",
    "Dispatcher",
    "SendOptions",
    "Sink",
    "guarded",
    "session_limiter",
    "wait_on_loop",
]

T = TypeVar("T")
# Requests in flight when no limit is known (a latency-bound server: more is faster, and 64
# is where raw aiohttp on 2 cores reaches E = 0.93 in benchmarks/chatmap.py), and the most ever.
DEFAULT_CONCURRENCY = 64
MAX_CONCURRENCY = 256
# Before the first answer nothing is known about limits: a few requests probe, so that a
# drained quota costs a handful of 429s, not a whole window of them.
SLOW_START = 4
# In flight under known limits: the rate they allow × latency, with headroom for jitter.
LATENCY_HEADROOM = 2.0
# A 429 never fails a row: being told to slow down means waiting, however often. What
# stops a run is an outage: no request answered for this many seconds while the server
# keeps refusing (429) or failing (5xx, network). The rows finished by then are kept.
MAX_OUTAGE = 600.0
# Replies are cached in batches: one SQLite transaction per CACHE_BATCH rows, or at least
# every CACHE_FLUSH_EVERY seconds, and always when the run ends (interrupts included).
CACHE_BATCH = 64
CACHE_FLUSH_EVERY = 1.0
# How long every worker sharing a pace waits after a 429 that does not say (a window).
SHARED_PAUSE = 1.0
# How long a request estimated by a byte bound that looks too large for the token limit
# waits for its count before it is looked at again (`recounted` wakes it sooner).
RECOUNT_WAIT = 0.5


@dataclass
class Counters:
    """What a map has done so far (written on the loop, read from any thread)."""

    done: int = 0  # rows finished (answered or failed) among those to send
    total: int = 0
    errors: int = 0
    cost: float = 0.0
    cost_known: bool = True
    requests: int = 0
    rate_limited: int = 0
    started: float = field(default_factory=time.monotonic)
    first_send: float | None = None


# Pacing state per engine, endpoint and model survives between maps: a second map starts
# at the pace the first one learnt (the server's limits, its window, the quota left)
# instead of probing again. A map's own --rpm/--tpm apply to that map only (`begin`).
_LIMITERS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], RateLimiter]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class SendOptions:
    """How a map run sends: the model (with the endpoint, the rate limiter's key), the
    map's own caps and window (None: the server's limits decide), retries per row, and
    what the cache is for ("refresh", "off")."""

    model: str
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None
    local: bool = False  # the embedded llama.cpp server: one request at a time
    retries: int = 0
    cache_mode: CacheMode = "use"
    pace: SharedPace | None = None  # the turn taken with other workers (map/sharedpace)
    cache_batch: int = CACHE_BATCH  # replies per cache write (1: each as it comes)


def session_limiter(engine: Engine, model: str) -> RateLimiter | None:
    """The pacing a session's engine has learnt for `model` on its endpoint (None: no map
    yet)."""
    return _LIMITERS.get(engine, {}).get((engine.base_url, model))


class Sink(Protocol):
    """Where the dispatcher reports (the MapJob)."""

    counters: Counters

    def answer(
        self,
        request: MapRequest,
        text: str,
        finish_reason: str | None = None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> None: ...

    def fail(self, request: MapRequest, error: ChatError) -> None: ...

    def spend(self, reply: Reply) -> None: ...


class Dispatcher:
    """The send queue of one map run: `ready` (front first), `delayed` (retries by due
    time), and `abort` (what stopped the run, if anything)."""

    def __init__(
        self,
        sink: Sink,
        engine: Engine,
        requests: list[MapRequest],
        sending: SendOptions,
    ) -> None:
        # Weak: the MapJob (the sink) holds its dispatcher, and a cycle between them would
        # keep a finished map's rows (plan, requests, bodies) alive until a full collection.
        self._sink = weakref.ref(sink)
        self.engine = engine
        self.requests = requests  # all the run may send (their mean size sizes the window)
        self.model = sending.model
        self.rpm, self.tpm = sending.rpm, sending.tpm
        self.concurrency = sending.concurrency
        self.local = sending.local
        self.retries = sending.retries
        self.cache_mode: CacheMode = sending.cache_mode
        self.pace = sending.pace
        self.cache_batch = sending.cache_batch
        self.ready: deque[MapRequest] = deque()
        self.delayed: list[tuple[float, int, MapRequest]] = []
        self.abort: ChatError | None = None

    @property
    def sink(self) -> Sink:
        sink = self._sink()
        assert sink is not None, "a map's dispatcher outlived its job"
        return sink

    def _limiter(self) -> RateLimiter:
        now = time.monotonic()
        per_session = _LIMITERS.setdefault(self.engine, {})
        key = (self.engine.base_url, self.model)
        limiter = per_session.get(key)
        if limiter is None:
            limiter = per_session[key] = RateLimiter(self.rpm, self.tpm, now)
        else:  # this run's caps replace the last run's (none: the server's own limits)
            limiter.begin(self.rpm, self.tpm, now)
        return limiter

    def _window(self) -> int:
        if self.local:
            return 1  # the embedded llama.cpp server answers one request at a time
        if self.limiter.blocked:
            return 1  # a bare 429: one request sees whether the way is open again
        if self.concurrency is not None:
            return self.concurrency  # the user's window, from the first request on
        if not self.limiter.answered and not self.limiter.limited:
            return SLOW_START
        rate = self.limiter.max_rate(self._mean_tokens)
        if rate is None:
            return DEFAULT_CONCURRENCY
        needed = math.ceil(rate * self._latency * LATENCY_HEADROOM) + 4
        head = self.limiter.head_start(self._mean_tokens, time.monotonic())
        return max(4, min(MAX_CONCURRENCY, max(needed, math.ceil(head) + 2)))

    async def run(self) -> None:
        """Send what is queued until nothing is left or something global stops the run."""
        loop = asyncio.get_running_loop()
        # Where requests go, worked out once for the run, not several times per request;
        # the collector kept off the kernel's heap while it runs (ipychat.map.heap).
        unpin = self.engine.router.pin(self.engine.settings)
        try:
            with frozen_heap():
                await self._run(loop)
        finally:
            unpin()

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self.limiter = self._limiter()
        self._latency = 1.0 if self.limiter.max_rate(1) is None else 0.5
        self._mean_tokens = sum(j.tokens for j in self.requests) / max(1, len(self.requests))
        client = await self.engine.client()
        pool = self.concurrency or (1 if self.local else MAX_CONCURRENCY)
        if getattr(client, "max_connections", None) != pool:
            await client.set_max_connections(pool)
        self._waiter: asyncio.Future[None] = loop.create_future()
        self._inflight = inflight = set[asyncio.Task[None]]()
        self._cache_writes: list[tuple[str, CachedReply]] = []
        self._flush_due = time.monotonic() + CACHE_FLUSH_EVERY
        self._answered_at = time.monotonic()  # the last answer (or the start): outages
        try:
            while self.abort is None and (self.ready or self.delayed or inflight):
                now = time.monotonic()
                while self.delayed and self.delayed[0][0] <= now:
                    self.ready.append(heapq.heappop(self.delayed)[2])
                timeout: float | None = None
                if self.ready and len(inflight) < self._window():
                    job = self.ready[0]
                    too_large = self.limiter.too_large(job.tokens)
                    if too_large and job.counted:
                        self.ready.popleft()
                        self.sink.fail(
                            job, RateLimitError(_too_large(job, self.limiter), status_code=429)
                        )
                        continue
                    # A byte bound too large for the limit: it waits for its count (map.plan).
                    wait = RECOUNT_WAIT if too_large else self.limiter.wait(job.tokens, now)
                    if wait <= 0:
                        self.ready.popleft()
                        ticket = self.limiter.take(job.tokens, now)
                        task = loop.create_task(self._send(job, ticket))
                        inflight.add(task)
                        task.add_done_callback(self._done)
                        if self.limiter.limited and self.ready and len(inflight) < self._window():
                            # More may go now: let this one be written first, so that its
                            # arrival keeps close to its stamp, which the pacing counts the
                            # windows from (a burst written late would meet their refill).
                            await asyncio.sleep(0)
                        continue
                    timeout = wait
                if self.delayed:
                    due = self.delayed[0][0] - now
                    timeout = due if timeout is None else min(timeout, due)
                await self._sleep(loop, timeout)
            if inflight:  # aborted: let what is in flight finish and be written
                await asyncio.gather(*inflight, return_exceptions=True)
        finally:
            # Finished rows are cached however the run ends: before anything below can be
            # cancelled a second time, and again for rows that finish while we wait.
            self._flush_cache()
            try:
                for task in inflight:
                    task.cancel()
                if inflight:
                    await asyncio.gather(*inflight, return_exceptions=True)
            finally:
                self._flush_cache()

    async def _sleep(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        """Until a request finishes or `timeout` passes (the exact deficit: no polling)."""
        if self._waiter.done():
            self._waiter = loop.create_future()
            return
        handle = loop.call_later(timeout, self._wake) if timeout is not None else None
        try:
            await self._waiter
        finally:
            if handle is not None:
                handle.cancel()
            self._waiter = loop.create_future()

    def recounted(self) -> None:
        """The requests estimated by a byte bound are counted now (`ipychat.map.counting`):
        their charges are exact from here on."""
        if self.requests:
            self._mean_tokens = sum(j.tokens for j in self.requests) / len(self.requests)
        if hasattr(self, "_waiter"):
            self._wake()

    def _wake(self) -> None:
        if not self._waiter.done():
            self._waiter.set_result(None)

    def _done(self, task: asyncio.Task[None]) -> None:
        # A done callback, not the task's own `finally`: the dispatcher must see it gone.
        self._inflight.discard(task)
        self._wake()

    async def _send(self, job: MapRequest, ticket: Ticket) -> None:
        counters = self.sink.counters
        counters.requests += 1
        if counters.first_send is None:
            counters.first_send = time.monotonic()
        mode: CacheMode = "off" if self.cache_mode == "off" else "refresh"
        if job.reask and self.cache_mode == "use":
            mode = "use"  # a re-ask may have been answered by an earlier run
        # The shared pace's scope is only worked out when there is one (it reads the endpoint).
        scope = f"{self.engine.base_url} {self.model}" if self.pace is not None else ""
        if self.pace is not None:  # one quota with other workers: wait for our turn
            tokens = self.limiter.tokens
            await self.pace.acquire(
                scope, job.tokens * tokens.scale, self.limiter.requests.limit, tokens.limit
            )
        try:
            exchange = await self.engine.request(
                job.prepared,
                cache=mode,
                reserve=job.reask,
                max_retries=0,
                write_cache=False,
                key=job.key,
            )
        except RateLimitError as exc:
            self._rate_limited(job, ticket, exc, time.monotonic())
            if self.pace is not None:  # every worker waits, not only this one
                await self.pace.refused(scope, exc.retry_after or SHARED_PAUSE)
        except ChatError as exc:
            self.limiter.failed(ticket, time.monotonic())
            self._failed(job, exc)
        except Exception as exc:  # a bug of ours: the run stops, saying so, the row kept
            self.limiter.failed(ticket, time.monotonic())
            self._stop(bug(exc))
            self.ready.appendleft(job)
        else:
            reply = exchange.reply
            if exchange.store:  # written in batches (`_flush_cache`)
                self._cache_writes.append((exchange.key, exchange.to_cache()))
            # the x-ratelimit-* headers of this very response calibrate the limiter
            self._answered_at = now = time.monotonic()
            # Charged a byte bound (map.plan): no ratio of the server's count to ours to learn.
            exact = job.counted and ticket.tokens == job.tokens
            server = _server_tokens(job, reply) if exact else None
            self.limiter.accepted(ticket, reply.extra.get("rate_limit"), now, server)
            if not reply.cached:
                self._latency = 0.8 * self._latency + 0.2 * reply.latency
            self.sink.spend(reply)
            self.sink.answer(job, reply.text, reply.finish_reason, reply.extra.get("logprobs"))
            full = len(self._cache_writes) >= self.cache_batch
            if full or time.monotonic() > self._flush_due:
                self._flush_cache()

    def _flush_cache(self) -> None:
        """Store the replies gathered since the last flush, in one write transaction."""
        writes = self._cache_writes[:]
        self._cache_writes.clear()
        self._flush_due = time.monotonic() + CACHE_FLUSH_EVERY
        store = self.engine.cache
        if writes and store is not None:
            store.set_many(writes)

    def _rate_limited(
        self, job: MapRequest, ticket: Ticket, exc: RateLimitError, now: float
    ) -> None:
        """A 429: the row waits its turn again, whatever it takes (see MAX_OUTAGE)."""
        self.sink.counters.rate_limited += 1
        job.limited += 1
        server = (exc.server_message or "").lower()
        if "too large" in server:  # more tokens than the whole limit: waiting cannot help
            self.limiter.failed(ticket, now)
            self.sink.fail(job, exc)
            return
        self.ready.appendleft(job)  # first in line again
        if any(words in server for words in QUOTA_GONE):  # billing, not pace
            self.limiter.failed(ticket, now)
            self._stop(exc)
            return
        wait = exc.retry_after
        if wait is not None and wait > DEFAULT_MAX_WAIT:
            self._stop(exc)
            return
        # Every sender waits (the server's retry-after, else a backoff) and the pace slows.
        self.limiter.refused(ticket, exc.rate_limit, wait, now)
        self._check_outage(exc, now)

    def _check_outage(self, exc: ChatError, now: float) -> None:
        """Stop the run when nothing but refusals and failures came for MAX_OUTAGE."""
        limit = MAX_OUTAGE  # read at each check: a changed setting applies at once
        if now - self._answered_at > limit:
            self._stop(outage(exc, limit))

    def _failed(self, job: MapRequest, exc: ChatError) -> None:
        kind = classify(exc)
        if kind == "fatal":
            self._stop(exc)
            self.ready.appendleft(job)
            return
        if kind == "retry":
            self._check_outage(exc, time.monotonic())
            if self.abort is not None:  # the run stops: the row is left to a re-run
                self.ready.appendleft(job)
                return
            if job.failures < self.retries:
                # The server's own demand (retry-after-ms / retry-after) wins over the
                # backoff, as in the client; a demand above the cap is not retried (the
                # message says when).
                wait = getattr(exc, "retry_after", None)
                if wait is None or wait <= DEFAULT_MAX_WAIT:
                    job.failures += 1
                    delay = (
                        wait if wait is not None and wait > 0 else backoff_delay(job.failures - 1)
                    )
                    heapq.heappush(self.delayed, (time.monotonic() + delay, id(job), job))
                    return
        self.sink.fail(job, exc)

    def _stop(self, exc: ChatError) -> None:
        if self.abort is None:
            self.abort = exc


def _server_tokens(job: MapRequest, reply: Reply) -> float | None:
    """The request's charge as the server counts it: its prompt tokens (from the answer's
    usage) instead of our estimate, plus max_tokens. None when it did not count."""
    usage = reply.usage
    if usage is None or usage.estimated or reply.cached:
        return None
    return job.tokens - job.prepared.estimate.prompt_tokens + usage.prompt_tokens


def _too_large(job: MapRequest, limiter: RateLimiter) -> str:
    limit = limiter.token_limit or 0
    return (
        f"This row needs {job.tokens:,} tokens (prompt + max_tokens), more than the whole "
        f"limit of {limit:,.0f} tokens per minute; shorten it or lower --max-tokens."
    )


# ----- waiting for the session loop ----------------------------------------------------------


def wait_on_loop(runner: LoopThread, coro: Coroutine[Any, Any, T], tick: Callable[[], None]) -> T:
    """`ipychat.core.runner.wait` with a tick every TICK seconds for the progress display
    (Ctrl-C, or a failing display, cancels the work and waits for its cleanup)."""
    return wait(runner, coro, tick=tick, every=TICK)
