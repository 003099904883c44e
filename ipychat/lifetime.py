"""What a session owns, and when it is released: when closed, when collected, at exit.

`ChatSession` (ipychat.session) holds an `Owned`: its loop thread and its engine's client,
which must be released even when nobody closes the session (a session made in a function):
else aiohttp warns "Unclosed client session" and the loop thread runs on with nobody to
stop it. `close_at_exit` closes the sessions still alive when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Protocol

from ipychat.core.runner import LoopThread

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine
    from ipychat.net.client import ChatClient

__all__ = ["Closable", "Owned", "close_at_exit"]


class Closable(Protocol):
    def close(self) -> None: ...


class Owned:
    """What a session owns and must release even when nobody closes it: its loop thread and
    its engine's client. It holds nothing of the session, so the session's finalizer can use it."""

    def __init__(self) -> None:
        self.runner = LoopThread()
        self.engine: Engine | None = None

    def retire(self, client: ChatClient) -> None:
        """Close a client the engine replaced, on the loop it lives on."""
        if self.runner.running:
            self.runner.submit(client.aclose())

    def release(self) -> None:
        """Close the client on its loop, then stop the loop (from any thread)."""
        if self.runner.in_loop_thread:
            # Collected on the loop's own thread: it cannot wait for itself.
            threading.Thread(target=self.release, name="ipychat-release").start()
            return
        # The client is taken only after the loop's tasks are cancelled and done: a request
        # still making or using the client when close() began leaves it to be closed here.
        self.runner.stop(last=self._close_client)

    async def _close_client(self) -> None:
        client = self.engine.take_client() if self.engine is not None else None
        if client is not None:
            await client.aclose()


# Every session still alive at exit is closed while its loop still runs; otherwise aiohttp
# warns about unclosed client sessions when they are collected after the loop is gone.
_live: weakref.WeakSet[Closable] = weakref.WeakSet()


def close_at_exit(session: Closable) -> None:
    """Close `session` at exit if it is still alive then (it is not kept alive for it)."""
    _live.add(session)


@atexit.register
def _close_at_exit() -> None:
    for session in list(_live):
        with contextlib.suppress(Exception):
            session.close()
