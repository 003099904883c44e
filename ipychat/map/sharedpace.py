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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ipychat.engine.stores.redis import RedisTarget

__all__ = ["HEADROOM", "PaceWarning", "RedisPace", "SharedPace"]

# The share of the limit the shared pace uses (see the module docstring).
HEADROOM = 0.97
DEFAULT_PREFIX = "ipychat-pace:"
# A request that wakes this much after its slot (a busy CPU, a stalled loop) takes a new
# one, once: sent now, it would land in the next window on top of that window's own slots.
LATE = 0.05
_CONNECTIONS = 4  # to Redis, per worker and loop: a turn is one short script

# KEYS: the requests and tokens schedules; ARGV: rpm, tpm (0: no limit), this request's
# tokens. Returns the seconds until the reserved slot (a string: Lua numbers are cut to
# integers in a reply).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local start = now
local limits = {}
-- The first paced request: the requests sent before any limit was known (KEYS[3]) took
-- their slots of the window already.
if tonumber(ARGV[1]) > 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  start = now + tonumber(redis.call('GET', KEYS[3]) or '0') * 60 / tonumber(ARGV[1])
end
for i = 1, 2 do
  limits[i] = tonumber(ARGV[i])
  if limits[i] > 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat > start then start = tat end
  end
end
for i = 1, 2 do
  if limits[i] > 0 then
    local cost = 1
    if i == 2 then cost = tonumber(ARGV[3]) end
    local tat = start + cost * 60 / limits[i]
    redis.call('SET', KEYS[i], tostring(tat), 'PX', 60000 + math.ceil((tat - now) * 1000))
  end
end
return tostring(start - now)
"""

# A request sent before any limit is known: counted for a window's time (see _RESERVE).
_UNPACED = """
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], 2000)
return '0'
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
        self._broken = False
        # Per scope: when the pause the last 429 this process saw asked for ends (monotonic).
        self._paused_until: dict[str, float] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self._target, self._prefix, self._timeout))

    def __repr__(self) -> str:
        return f"RedisPace({self._target.url!r})"

    @property
    def disabled(self) -> bool:
        return self._broken

    def keys(self, scope: str) -> tuple[str, str, str]:
        """The Redis keys of `scope`: its requests and tokens schedules, and the count of
        requests sent before a limit was known."""
        name = self._prefix + hashlib.sha256(scope.encode("utf-8")).hexdigest()[:32]
        return f"{name}:requests", f"{name}:tokens", f"{name}:unpaced"

    async def acquire(
        self, scope: str, tokens: float, rpm: float | None, tpm: float | None
    ) -> None:
        """Reserve this request's slot under `rpm`/`tpm` and wait for it. With neither
        known yet (the first answers teach them), the request goes at once, counted."""
        if self._broken:
            return
        if rpm is None and tpm is None:
            await self._call(_UNPACED, scope, [])
            return
        args = [(rpm or 0) * HEADROOM, (tpm or 0) * HEADROOM, max(0.0, tokens)]
        late_again = False
        while True:
            wait = await self._call(_RESERVE, scope, args)
            due = time.monotonic() + wait
            if wait > 0:
                await asyncio.sleep(wait)
            if not late_again and time.monotonic() - due > LATE:
                late_again = True  # see the module docstring
                continue
            # A 429 seen here while this slot waited asks everyone to hold back until
            # `_paused_until`: a slot that comes before then takes a new one (after the
            # pause, where `_REFUSED` moved the schedule); a later one stands. (Taking new
            # slots for all the waiting requests wasted theirs: one 429 cost a worker as
            # many slots as it had requests waiting, 2-4 % of a loaded 4-worker map.)
            if self._paused_until.get(scope, -math.inf) <= time.monotonic():
                return

    async def refused(self, scope: str, wait: float) -> None:
        """The server answered 429, asking to wait `wait` seconds: nobody sends before."""
        until = time.monotonic() + max(0.0, wait)
        self._paused_until[scope] = max(self._paused_until.get(scope, -math.inf), until)
        if not self._broken and wait > 0:
            await self._call(_REFUSED, scope, [wait])

    async def _call(self, source: str, scope: str, args: list[float]) -> float:
        from redis.exceptions import RedisError

        try:
            script = self._client().register_script(source)
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
            return 0.0
        return float(reply)

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


def _reopen(target: RedisTarget, prefix: str, timeout: float) -> RedisPace:
    """A `RedisPace` unpickled: a fresh one on the same target (`RedisPace.__reduce__`)."""
    return RedisPace(target, prefix=prefix, timeout=timeout)
