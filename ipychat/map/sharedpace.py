"""One quota across processes: a pace that every worker of a map takes its turn from.

Each kernel (or Dask worker) paces its own requests (`ipychat.map.ratelimit`), learning the
endpoint's per-minute limits from its `x-ratelimit-*` headers or the map's `rpm`/`tpm`.
Alone, two workers would each assume the whole quota and together send twice the limit.
A `SharedPace` is the turn they all take before sending: `RedisPace` keeps it in Redis
(the cache's server, or any other), as a GCRA schedule per endpoint and model.

GCRA (the "generic cell rate algorithm", a token bucket kept as one timestamp: the
theoretical arrival time, TAT): a request of cost `c` under a limit of `L` per minute may
go at `now` if `TAT - now <= burst`; it then moves `TAT` to `max(TAT, now) + c × 60 / L`.
Both dimensions (requests, tokens) are checked and moved together, in one Lua script that
Redis runs atomically ("Redis guarantees the script's atomic execution",
https://redis.io/docs/latest/develop/interactive/programmability/eval-intro/), on the
server's clock (`TIME`, https://redis.io/docs/latest/commands/time/), so the workers'
clocks need not agree. Keys expire a minute after their last use (PEXPIRE).

The pace runs at `HEADROOM` of the limit with no burst: servers enforce per-minute limits
over windows as short as a second (see `ipychat.map.ratelimit`), and requests leaving
different machines at an even pace still arrive with some jitter.

A Redis that is down or refuses the password turns the shared pace off with one warning
(`PaceWarning`); each worker then paces alone and the server's 429s slow it down.
"""

from __future__ import annotations

import asyncio
import hashlib
import warnings
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ipychat.engine.stores.redis import RedisTarget

__all__ = ["HEADROOM", "PaceWarning", "RedisPace", "SharedPace"]

# The share of the limit the shared pace uses (see the module docstring).
HEADROOM = 0.97
DEFAULT_PREFIX = "ipychat-pace:"

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local burst = tonumber(ARGV[4])
local wait = 0
local tats = {}
for i = 1, 2 do
  local limit = tonumber(ARGV[i])
  if limit > 0 then
    local cost = 1
    if i == 2 then cost = tonumber(ARGV[3]) end
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    if tat - now - burst > wait then wait = tat - now - burst end
    tats[i] = tat + cost * 60 / limit
  end
end
if wait > 0 then return tostring(wait) end
for i = 1, 2 do
  if tats[i] then
    redis.call('SET', KEYS[i], tostring(tats[i]), 'PX', 60000 + math.ceil((tats[i] - now) * 1000))
  end
end
return '0'
"""


class PaceWarning(UserWarning):
    """The shared pace cannot be used (its Redis is unreachable): workers pace alone."""


@runtime_checkable
class SharedPace(Protocol):
    """The turn every sender of a quota takes before a request (see the module docstring)."""

    async def acquire(
        self, scope: str, tokens: float, rpm: float | None, tpm: float | None
    ) -> None: ...


class RedisPace:
    """A `SharedPace` in Redis: `url` as for the cache (`redis://[:password@]host:port/db`).

    Pickles as its URL (a Dask worker connects on first use). `scope` names the quota:
    the endpoint and the model (one key per dimension under `prefix`).
    """

    def __init__(
        self, url: str | RedisTarget, *, prefix: str = DEFAULT_PREFIX, timeout: float = 5.0
    ) -> None:
        from ipychat.engine.stores.redis import parse_redis_url

        # A bad URL: CacheURLError, at once. A target: a cache store's (`RedisStore.target`).
        self._target = parse_redis_url(url) if isinstance(url, str) else url
        self._prefix = prefix
        self._timeout = timeout
        self._clients: dict[int, Any] = {}  # one asyncio client per event loop
        self._broken = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self._target, self._prefix, self._timeout))

    def __repr__(self) -> str:
        return f"RedisPace({self._target.url!r})"

    @property
    def disabled(self) -> bool:
        return self._broken

    def keys(self, scope: str) -> tuple[str, str]:
        """The Redis keys of `scope`'s requests and tokens schedules."""
        digest = hashlib.sha256(scope.encode("utf-8")).hexdigest()[:32]
        return f"{self._prefix}{digest}:requests", f"{self._prefix}{digest}:tokens"

    async def acquire(
        self, scope: str, tokens: float, rpm: float | None, tpm: float | None
    ) -> None:
        """Wait for this request's turn under `rpm`/`tpm` (None: that limit is unknown)."""
        if self._broken or (rpm is None and tpm is None):
            return
        args = [(rpm or 0) * HEADROOM, (tpm or 0) * HEADROOM, max(0.0, tokens), 0.0]
        while True:
            wait = await self._turn(scope, args)
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _turn(self, scope: str, args: list[float]) -> float:
        from redis.exceptions import RedisError

        try:
            script = self._script()
            reply = await script(keys=list(self.keys(scope)), args=args)
        except (RedisError, OSError) as exc:
            self._broken = True
            warnings.warn(
                f"ipychat: the shared pace at {self._target.url} cannot be used "
                f"({type(exc).__name__}: {exc}); each worker paces alone.",
                PaceWarning,
                stacklevel=2,
            )
            return 0.0
        return float(reply)

    def _script(self) -> Any:
        import redis.asyncio

        loop = id(asyncio.get_running_loop())
        script = self._clients.get(loop)
        if script is None:
            t = self._target
            client = redis.asyncio.Redis(
                host=t.host,
                port=t.port,
                db=t.db,
                username=t.username,
                password=t.password,
                ssl=t.tls,
                ssl_ca_certs=t.ca_certs,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                client_name="ipychat-pace",
            )
            script = self._clients[loop] = client.register_script(_SCRIPT)
        return script


def _reopen(url: RedisTarget, prefix: str, timeout: float) -> RedisPace:
    return RedisPace(url, prefix=prefix, timeout=timeout)
