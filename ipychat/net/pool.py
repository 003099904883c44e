"""The connection pools of one `ChatClient`: built lazily in the running loop, resized and
closed without breaking a request in flight.

A `Pool` is one httpx transport (its connections) and the loop it belongs to. `Pools` keeps
the client's current pool: it builds one on first use (`ipychat.net.transport`'s default
transport, or the caller's injected one), builds another when a call runs in another loop
or when the connection limit changes, and closes a replaced pool once its last request is
done.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from ipychat.core.errors import ConfigError
from ipychat.net.transport import default_transport

__all__ = ["Pool", "Pools", "check_connections", "close_pool"]

log = logging.getLogger("ipychat")


class Pool:
    """One transport (its connections), the loop it belongs to, and the requests using it.

    A pool is retired (not closed) when the wanted connection limit changes; it closes
    once its last in-flight request is done, so resizing never breaks a request. Only a
    transport the client built itself (`owned`) is ever closed: an injected one belongs
    to the caller.
    """

    __slots__ = ("inflight", "limit", "loop", "owned", "retired", "transport")

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        owned: bool,
    ) -> None:
        self.transport = transport
        self.loop = loop
        self.limit = limit
        self.owned = owned
        self.inflight = 0
        self.retired = False


async def close_pool(pool: Pool) -> None:
    pool.retired = True
    if not pool.owned:
        return
    try:
        await pool.transport.aclose()
    except Exception as exc:  # closing must not turn a finished reply into a failure
        log.debug("closing the HTTP pool failed: %s", type(exc).__name__)


def check_connections(n: int) -> int:
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"max_connections must be a positive integer, not {n!r}")
    return n


class Pools:
    """The pool of the running loop, and the retired pools still finishing requests."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport | None, limit: int, base_url: str
    ) -> None:
        self._transport = transport  # injected: used as is, never closed (the caller's)
        self.limit = check_connections(limit)
        self._base_url = base_url
        self._current: Pool | None = None
        self._retired: list[Pool] = []

    def current(self) -> Pool:
        """The pool of the running loop, built on first use (or after a resize or loop change)."""
        loop = asyncio.get_running_loop()
        pool = self._current
        if pool is not None and pool.loop is loop:
            return pool
        if pool is not None:
            # Another loop: the old pool's connections belong to it and cannot be used here.
            self._current = None
            if pool.owned and not pool.loop.is_closed():
                self._retired.append(pool)
                pool.retired = True
        if self._transport is not None:
            self._current = Pool(self._transport, loop, self.limit, owned=False)
        else:
            transport = default_transport(self.limit, self._base_url)
            self._current = Pool(transport, loop, self.limit, owned=True)
        return self._current

    async def close_retired(self, pool: Pool) -> None:
        """The last request on the retired `pool` is done: close it."""
        if pool in self._retired:
            self._retired.remove(pool)
        await close_pool(pool)

    async def resize(self, n: int) -> None:
        """Applied on the next request: a pool of another size is built lazily, the old one
        closed when its last request finishes. An injected transport keeps its own limits."""
        self.limit = check_connections(n)
        pool = self._current
        if pool is not None and self._transport is None and pool.limit != self.limit:
            self._current = None
            pool.retired = True
            if pool.inflight == 0:
                await close_pool(pool)
            else:
                self._retired.append(pool)

    async def aclose(self) -> None:
        """Close every connection; the next request reconnects lazily."""
        pools = [p for p in (self._current, *self._retired) if p is not None]
        self._current = None
        self._retired = []
        for pool in pools:
            await close_pool(pool)
