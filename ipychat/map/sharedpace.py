"""One quota across processes: a pace that every worker of a map takes its turn from.

Each kernel (or Dask worker) paces its own requests (`ipychat.map.ratelimit`), learning the
endpoint's per-minute limits from its `x-ratelimit-*` headers or the map's `rpm`/`tpm`.
Alone, two workers would each assume the whole quota and together send twice the limit.
A `SharedPace` is the turn they all take before sending: `RedisPace` keeps it in Redis
(the cache's server, or any other), as a GCRA schedule per endpoint and model.

GCRA (the "generic cell rate algorithm", a token bucket kept as one timestamp: the
theoretical arrival time, TAT): a request of cost `c` under a limit of `L` per minute goes
at `max(TAT, now)` and moves `TAT` to that time + `c × 60 / L`. Each request reserves its
slot in one call and sleeps until it comes (no polling, no herd of waiters racing for the
same turn, no slack lost between turns). Both dimensions (requests, tokens) are reserved
together, at the later of their times, in one Lua script that Redis runs atomically
("Redis guarantees the script's atomic execution",
https://redis.io/docs/latest/develop/interactive/programmability/eval-intro/), on the
server's clock (`TIME`, https://redis.io/docs/latest/commands/time/), so the workers'
clocks need not agree. Keys expire a minute after their last slot (SET ... PX).

The pace runs at `HEADROOM` of the limit, without bursts: servers enforce per-minute
limits over windows as short as a second (see `ipychat.map.ratelimit`), and requests
leaving different processes at an even pace still arrive with some jitter. A 429 that
comes anyway moves every schedule past the wait it asks for (`refused`): servers count
refused requests, so a full window stays full while anyone keeps sending.

A process that knows no limit yet (the first answers teach it: `x-ratelimit-*` headers,
or 429s) sends without asking Redis, so an unlimited map pays no round trip per request.
Whatever limit one process knows (a header, a cap, or one found from 429s) it publishes
with each reservation, for `PUBLISHED_FOR` seconds; the others look it up at most every
`CHECK_EVERY` seconds, so the first limit any of them learns puts every worker on the
shared pace within that time; a 429's pause, seen there too, holds them all back. A
limit only borrowed is not published again: once no process that knows it sends (a
map's own `rpm` cap ended), the next map is not held to it.
What each sent unpaced in the last `UNPACED_WINDOW` seconds took slots of the window:
its first reservation moves the schedule past them.

A request whose process woke late for its slot (by more than `LATE`: a loaded machine,
a stalled loop) takes a new slot once instead of going at once: late requests arrive on
top of the next window's own slots, and a 1-second window then refuses them (on a loaded
2-core machine, 4 workers: 4 % of requests answered 429 without it, 0.6 % with it). A
429 holds everyone back for the wait it asks for; the slots reserved past that stand.

A Redis that is down or refuses the password turns the shared pace off with one warning
(`PaceWarning`); each worker then paces alone and the server's 429s slow it down.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import warnings
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ipychat.engine.stores.redis import RedisTarget

__all__ = ["HEADROOM", "PaceWarning", "RedisPace", "SharedPace", "late_turns"]

# The share of the limit the shared pace uses (see the module docstring).
HEADROOM = 0.97
DEFAULT_PREFIX = "ipychat-pace:"
# A request that wakes this much after its slot (a busy CPU, a stalled loop) takes a new
# one, once: sent now, it would land in the next window on top of that window's own slots.
LATE = 0.05
_CONNECTIONS = 4  # to Redis, per worker and loop: a turn is one short script
# Seconds between look-ups of a limit another process published, while this one knows none.
CHECK_EVERY = 0.1
# Requests sent unpaced this recently still count in the window (see the module docstring).
UNPACED_WINDOW = 2.0
# How long a limit stays published after the last turn of a process that knew it.
PUBLISHED_FOR = 2.0

# KEYS: the requests and tokens schedules, the published limits; ARGV: rpm, tpm (0: no
# limit), this request's tokens, this process's requests sent unpaced lately, the headroom,
# how long to publish the limits (ms; 0: borrowed, not published again).
# Returns the seconds until the reserved slot (a string: Lua numbers are cut to integers
# in a reply).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local start = now
local limits = {}
for i = 1, 2 do
  limits[i] = tonumber(ARGV[i]) * tonumber(ARGV[5])
  if limits[i] > 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat > start then start = tat end
  end
end
-- The requests this process sent before it knew a limit took their slots already.
if limits[1] > 0 then start = start + tonumber(ARGV[4]) * 60 / limits[1] end
for i = 1, 2 do
  if limits[i] > 0 then
    local cost = 1
    if i == 2 then cost = tonumber(ARGV[3]) end
    local tat = start + cost * 60 / limits[i]
    redis.call('SET', KEYS[i], tostring(tat), 'PX', 60000 + math.ceil((tat - now) * 1000))
  end
end
if tonumber(ARGV[6]) > 0 then
  redis.call('SET', KEYS[3], ARGV[1] .. ' ' .. ARGV[2], 'PX', tonumber(ARGV[6]))
end
return tostring(start - now)
"""

# A process that knows no limit: the one another published ("rpm tpm", or ""), and the
# seconds a 429's pause still holds everyone back, as "limits|seconds".
_LOOKUP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
return (redis.call('GET', KEYS[3]) or '') .. '|' .. tostring(math.max(0, tat - now))
"""

# A 429: both schedules move past now + ARGV[1] seconds.
_REFUSED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local after = now + tonumber(ARGV[1])
for i = 1, 2 do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < after then
    redis.call('SET', KEYS[i], tostring(after), 'PX', 60000 + math.ceil(tonumber(ARGV[1]) * 1000))
  end
end
return '0'
"""


class PaceWarning(UserWarning):
    """The shared pace cannot be used (its Redis is unreachable): workers pace alone."""


@runtime_checkable
class SharedPace(Protocol):
    """The turn every sender of a quota takes before a request (see the module docstring).
    `scope` names the quota (the endpoint and the model)."""

    async def acquire(
        self, scope: str, tokens: float, rpm: float | None, tpm: float | None
    ) -> None: ...

    async def refused(self, scope: str, wait: float) -> None: ...


class RedisPace:
    """A `SharedPace` in Redis: `url` as for the cache (`redis://[:password@]host:port/db`),
    or a cache store's `RedisStore.target`. Pickles as its target (a Dask worker connects
    on first use)."""

    def __init__(
        self, url: str | RedisTarget, *, prefix: str = DEFAULT_PREFIX, timeout: float = 5.0
    ) -> None:
        from ipychat.engine.stores.redis import parse_redis_url

        # A bad URL: CacheURLError, in one line without the password, before anything runs.
        self._target = parse_redis_url(url) if isinstance(url, str) else url
        self._prefix = prefix
        self._timeout = timeout
        self._clients: dict[int, Any] = {}  # one asyncio client per event loop
        self._scripts: dict[tuple[int, str], Any] = {}  # per client: its scripts, registered
        self._broken = False
        self.late = 0  # turns taken again because this process woke late (LATE)
        # Per scope: when the pause the last 429 this process saw asked for ends (monotonic).
        self._paused_until: dict[str, float] = {}
        # Per scope, while this process knows no limit (see the module docstring): when
        # the next look-up is due and the limits another one published (None: none), and
        # what it sent unpaced.
        self._published: dict[str, tuple[float, tuple[float | None, float | None] | None]] = {}
        self._unpaced: dict[str, deque[float]] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self._target, self._prefix, self._timeout))

    def __repr__(self) -> str:
        return f"RedisPace({self._target.url!r})"

    @property
    def disabled(self) -> bool:
        return self._broken

    def keys(self, scope: str) -> tuple[str, str, str]:
        """The Redis keys of `scope`: its requests and tokens schedules, and the limits
        published by the processes that know them."""
        name = self._prefix + hashlib.sha256(scope.encode("utf-8")).hexdigest()[:32]
        return f"{name}:requests", f"{name}:tokens", f"{name}:limits"

    async def acquire(
        self, scope: str, tokens: float, rpm: float | None, tpm: float | None
    ) -> None:
        """Reserve this request's slot under `rpm`/`tpm` and wait for it. With neither
        known here, under the limits another process published; with none published yet,
        the request goes at once, without a round trip to Redis (see the module docstring)."""
        if self._broken:
            return
        publish = PUBLISHED_FOR * 1000  # this process's own limits: the others may borrow
        if rpm is None and tpm is None:
            published = await self._lookup(scope)
            if published is None:
                sent = self._unpaced.setdefault(scope, deque())
                now = time.monotonic()
                sent.append(now)
                while sent[0] < now - UNPACED_WINDOW:
                    sent.popleft()
                return
            (rpm, tpm), publish = published, 0
        recent = time.monotonic() - UNPACED_WINDOW
        unpaced = sum(1 for t in self._unpaced.pop(scope, ()) if t >= recent)
        args = [rpm or 0, tpm or 0, max(0.0, tokens), unpaced, HEADROOM, publish]
        late_again = False
        while True:
            wait = float(await self._call(_RESERVE, scope, args))
            args[3] = 0  # counted once
            due = time.monotonic() + wait
            if wait > 0:
                await asyncio.sleep(wait)
            if not late_again and time.monotonic() - due > LATE:
                late_again = True  # see the module docstring
                self.late += 1
                continue
            # A 429 seen here while this slot waited asks everyone to hold back until
            # `_paused_until`: a slot that comes before then takes a new one (after the
            # pause, where `_REFUSED` moved the schedule); a later one stands. (Taking new
            # slots for all the waiting requests wasted theirs: one 429 cost a worker as
            # many slots as it had requests waiting, 2-4 % of a loaded 4-worker map.)
            if self._paused_until.get(scope, -math.inf) <= time.monotonic():
                return

    async def _lookup(self, scope: str) -> tuple[float | None, float | None] | None:
        """The limits another process published for `scope` (None: none now), looked up at
        most every CHECK_EVERY seconds; a 429's pause, seen there or here, waited out."""
        now = time.monotonic()
        due, published = self._published.get(scope, (-math.inf, None))
        if now >= due:
            # Due again in CHECK_EVERY, from now: the requests that come while this one
            # waits for Redis go as the last look-up said, without a look-up of their own.
            self._published[scope] = (now + CHECK_EVERY, published)
            reply = str(await self._call(_LOOKUP, scope, []))
            limits, _, pause = reply.partition("|")
            published = None
            if limits:
                rpm, tpm = (float(x) or None for x in limits.split())
                published = (rpm, tpm)
            self._published[scope] = (now + CHECK_EVERY, published)
            if published is None and pause and float(pause) > 0:
                await asyncio.sleep(float(pause))
        paused = self._paused_until.get(scope, -math.inf) - time.monotonic()
        if published is None and paused > 0:
            await asyncio.sleep(paused)
        return published

    async def refused(self, scope: str, wait: float) -> None:
        """The server answered 429, asking to wait `wait` seconds: nobody sends before."""
        until = time.monotonic() + max(0.0, wait)
        self._paused_until[scope] = max(self._paused_until.get(scope, -math.inf), until)
        if not self._broken and wait > 0:
            await self._call(_REFUSED, scope, [wait])

    async def _call(self, source: str, scope: str, args: list[float]) -> Any:
        from redis.exceptions import RedisError

        try:
            client = self._client()
            script = self._scripts.get((id(client), source))
            if script is None:  # registered once: registering hashes the source
                script = self._scripts[id(client), source] = client.register_script(source)
            reply = await script(keys=list(self.keys(scope)), args=args)
        except (RedisError, OSError) as exc:
            if not self._broken:
                self._broken = True
                warnings.warn(
                    f"ipychat: the shared pace at {self._target.url} cannot be used "
                    f"({type(exc).__name__}: {exc}); each worker paces alone.",
                    PaceWarning,
                    stacklevel=3,
                )
            return "0|0" if source is _LOOKUP else 0.0
        return reply.decode() if isinstance(reply, bytes) else reply

    def _client(self) -> Any:
        import redis.asyncio

        loop = id(asyncio.get_running_loop())
        client = self._clients.get(loop)
        if client is None:
            t = self._target
            # A blocking pool: a map has dozens of requests taking their turn at once, and
            # a plain pool refuses the one past its size (MaxConnectionsError).
            tls: dict[str, Any] = {"ssl_ca_certs": t.ca_certs} if t.tls else {}
            pool = redis.asyncio.BlockingConnectionPool(
                host=t.host,
                port=t.port,
                db=t.db,
                username=t.username,
                password=t.password,
                connection_class=(
                    redis.asyncio.SSLConnection if t.tls else redis.asyncio.Connection
                ),
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                client_name="ipychat-pace",
                max_connections=_CONNECTIONS,
                # Waiting for a free connection is not Redis failing (its sockets time out
                # on their own): on a loaded machine a stalled loop waited past 5 s ("No
                # connection available") and turned the shared pace off for good.
                timeout=None,
                **tls,
            )
            client = self._clients[loop] = redis.asyncio.Redis(connection_pool=pool)
        return client


# The paces unpickled in this process, by target: every partition a worker maps takes its
# turns through one (its connections, the limits published, a 429's pause), not a new one
# per task.
_REOPENED: dict[tuple[Any, ...], RedisPace] = {}


def _reopen(target: RedisTarget, prefix: str, timeout: float) -> RedisPace:
    """A `RedisPace` unpickled: this process's one on the same target (`__reduce__`)."""
    key = (target, prefix, timeout)
    pace = _REOPENED.get(key)
    if pace is None:
        pace = _REOPENED[key] = RedisPace(target, prefix=prefix, timeout=timeout)
    return pace


def late_turns() -> int:
    """Turns the paces of this process (a Dask worker's) took again because it woke late
    for them: each cost the quota one slot (`benchmarks/scale.py` reports them)."""
    return sum(pace.late for pace in _REOPENED.values())
