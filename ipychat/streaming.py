"""Waiting on a request from the calling thread: its progress, streamed deltas, Ctrl-C.

The request itself runs on the session's loop thread (`ChatSession.ask_on_loop`);
`Progress` (`ipychat.engine.exchange`) is what both threads can read (what arrived so far,
the partial reply after a cancel), `ReplyStream` hands the deltas to the caller's thread
and turns a Ctrl-C into `Interrupted` with the partial reply kept.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import Interrupted
from ipychat.core.messages import Content
from ipychat.core.types import Estimate, Reply
from ipychat.engine.exchange import Progress

if TYPE_CHECKING:
    from ipychat.session import ChatSession

__all__ = ["Progress", "ReplyStream", "interrupted"]


class ReplyStream:
    """Deltas of one streamed request, consumed in the calling thread.

    Ctrl-C while iterating raises Interrupted (partial reply in `.reply`). Used as a context
    manager it also converts a Ctrl-C that lands in the caller's own loop body, and leaving
    the block early cancels the request.
    """

    def __init__(self, session: ChatSession, prompt: Content, options: dict[str, Any]) -> None:
        self._session = session
        self._prompt = prompt
        self._options = options
        self._progress = Progress()
        self._finished = threading.Event()
        self._future: concurrent.futures.Future[Reply] | None = None
        self.reply: Reply | None = None

    @property
    def estimate(self) -> Estimate | None:
        """The request's estimate (prompt tokens, cost range), known before the first delta."""
        return self._progress.estimate

    def __enter__(self) -> ReplyStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            raise self.cancel() from None
        if self._future is not None and not self._future.done():
            self.cancel()

    def __iter__(self) -> Iterator[str]:
        deltas: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        options = dict(self._options)
        cache = options.pop("cache", True)
        new = options.pop("new", False)
        session, progress, finished = self._session, self._progress, self._finished

        async def run() -> Reply:
            try:
                return await session.ask_on_loop(
                    self._prompt,
                    progress,
                    stream=True,
                    cache=cache,
                    on_delta=deltas.put,
                    new=new,
                    **options,
                )
            finally:
                deltas.put(None)
                finished.set()

        self._future = future = session.runner.submit(run())
        try:
            while (item := _get(deltas)) is not None:
                yield item
            self.reply = future.result()
            if self.reply.cached:  # a cache hit has no deltas: hand over the whole text
                yield self.reply.text
        except KeyboardInterrupt:
            raise self.cancel() from None
        finally:
            if not future.done():  # the caller stopped iterating early
                self.cancel()

    def cancel(self) -> Interrupted:
        """Stop the request and wait until what arrived is recorded; returns the error to raise."""
        if self._future is not None:
            self._future.cancel()
            self._finished.wait(5)
        self.reply = self._progress.reply
        return interrupted(self._progress)


def _get(deltas: queue.SimpleQueue[str | None]) -> str | None:
    # A timed wait keeps the main thread responsive to Ctrl-C.
    while True:
        try:
            return deltas.get(timeout=0.1)
        except queue.Empty:
            continue


def interrupted(progress: Progress) -> Interrupted:
    return Interrupted(
        f"Interrupted after {len(progress.text):,} characters; the partial reply is kept."
        if progress.text
        else "Interrupted before the reply started; nothing was received.",
        reply=progress.reply,
    )
