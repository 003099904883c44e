"""A private asyncio loop in a daemon thread, and waiting on it from sync code.

ipykernel already runs a loop in the main thread, so `asyncio.run` cannot be used there and
nest_asyncio is no answer. The session's client, its connections and its tasks all live on
this loop; the main thread submits coroutines and waits, and a KeyboardInterrupt while it
waits cancels the task and waits for its cleanup (so partial results are recorded and no
connection leaks) before it propagates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["WAKE", "LoopThread", "guarded", "wait", "wait_async"]

T = TypeVar("T")

# How long to wait for a cancelled task to clean up before giving up on it.
_CANCEL_GRACE = 5.0
# How often a waiting thread wakes: for Ctrl-C on every platform, and for its `tick`.
WAKE = 0.1


class LoopThread:
    """Owns one event loop running forever in a daemon thread."""

    def __init__(self, name: str = "ipychat-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping: asyncio.AbstractEventLoop | None = None  # the loop `stop` is draining

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                if self._stopping is not None and _running_loop() is self._stopping:
                    # Code draining on the loop that is shutting down (a view's callback):
                    # it gets that loop, not a new thread that nobody would ever stop.
                    return self._stopping
                self._start()
            assert self._loop is not None
            return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread (which must never wait for it)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for it; Ctrl-C cancels it cleanly, then re-raises."""
        return wait(self, coro)

    async def _drain(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self, last: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Cancel what runs on the loop, then run `last()` on it (closing what those tasks
        may have opened up to the moment they were cancelled), stop it and join the thread.
        Safe to call twice."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            self._stopping = loop
        try:
            self._stop(loop, thread, last)
        finally:
            with self._lock:
                self._stopping = None

    def _stop(
        self,
        loop: asyncio.AbstractEventLoop | None,
        thread: threading.Thread | None,
        last: Callable[[], Coroutine[Any, Any, None]] | None,
    ) -> None:
        if loop is None or loop.is_closed():
            return
        if thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._drain(), loop).result(_CANCEL_GRACE)
            if last is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(last(), loop).result(_CANCEL_GRACE)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_CANCEL_GRACE)
        if not loop.is_running():
            loop.close()


async def guarded(coro: Coroutine[Any, Any, T], finished: threading.Event) -> T:
    """Run `coro` and set `finished` once it and its own cleanup are over."""
    try:
        return await coro
    finally:  # after the coroutine's own except/finally blocks: the state may be read now
        finished.set()


def wait(
    runner: LoopThread,
    coro: Coroutine[Any, Any, T],
    *,
    tick: Callable[[], None] | None = None,
    every: float = WAKE,
) -> T:
    """Run `coro` on `runner`'s loop and wait for it in this thread, calling `tick` every
    `every` seconds (a progress display). The one sync wait: a Ctrl-C (or a failing `tick`)
    cancels the work and waits for its cleanup, so what it recorded is final, then re-raises.
    """
    finished = threading.Event()
    future = runner.submit(guarded(coro, finished))
    try:
        # A timed wait keeps the waiting thread responsive to signals on every platform.
        while True:
            try:
                return future.result(timeout=every)
            except concurrent.futures.TimeoutError:
                if tick is not None:
                    tick()
    except BaseException:
        future.cancel()  # run_coroutine_threadsafe forwards this to the task
        finished.wait(_CANCEL_GRACE)
        raise


async def wait_async(
    runner: LoopThread,
    coro: Coroutine[Any, Any, T],
    *,
    tick: Callable[[], None] | None = None,
    every: float = WAKE,
) -> T:
    """`wait` for code that awaits on another loop (`aask`, `amap`): `coro` still runs on
    `runner`'s loop; cancelling the caller cancels it and waits for its cleanup."""
    finished = threading.Event()
    future = runner.submit(guarded(coro, finished))
    wrapped = asyncio.wrap_future(future)
    try:
        if tick is None:
            return await wrapped
        while not (await asyncio.wait({wrapped}, timeout=every))[0]:
            tick()
        return wrapped.result()
    except asyncio.CancelledError:
        future.cancel()
        await asyncio.to_thread(finished.wait, _CANCEL_GRACE)
        raise


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
