"""Where `ipychat.testing.FakeOpenAIServer` runs: a thread of this process, or a child.

`ThreadBackend` serves the engine (`ipychat.testing.server`) from a private event loop in a
daemon thread. `ProcessBackend` starts `_child_main` in a spawned child process (which runs
a `ThreadBackend` there) and drives it over the `/_fake/` control endpoints; the options
go to the child by pickle, so `_child_main` and the user's callables must be module-level.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import pickle
import threading
import urllib.request
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from ipychat.testing.faults import Fault
from ipychat.testing.options import ServerOptions
from ipychat.testing.records import RecordedRequest, ServerStats
from ipychat.testing.server import Engine

__all__ = ["ProcessBackend", "ThreadBackend"]


class ThreadBackend:
    """Serves from a private event loop in a daemon thread of this process."""

    pid: int | None = None

    def __init__(self, options: ServerOptions) -> None:
        self.engine = Engine(options)
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        o = self._options
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                port = loop.run_until_complete(self.engine.core.open(o.host, o.port))
            except BaseException as exc:  # e.g. the port is taken: the caller raises it
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(port)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="FakeOpenAIServer", daemon=True)
        self._thread.start()
        return ready.result(timeout=30)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        if threading.current_thread() is thread:
            raise RuntimeError("FakeOpenAIServer.stop() cannot run on the server's own thread")
        closing = asyncio.run_coroutine_threadsafe(self.engine.core.close(), loop)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            closing.result(timeout=5)  # a stuck close must not hang the caller
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    def script(self, faults: Sequence[Fault | None]) -> None:
        self.engine.enqueue(faults)

    def requests(self) -> list[RecordedRequest]:
        return self.engine.requests()

    def reset_log(self) -> None:
        self.engine.reset_log()

    def stats(self) -> ServerStats:
        return self.engine.stats()


def _child_main(options: ServerOptions, conn: Connection) -> None:
    """Entry point of a spawned server: serve until the parent says stop or goes away."""
    backend = ThreadBackend(options)
    try:
        port = backend.start()
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("port", port))
    try:
        conn.recv()
    except (EOFError, OSError):
        pass  # the parent died: do not outlive it
    finally:
        backend.stop()


class ProcessBackend:
    """Serves from a child process (multiprocessing, spawn); driven over /_fake/ endpoints."""

    def __init__(self, options: ServerOptions) -> None:
        try:
            pickle.dumps(options)
        except Exception as exc:
            raise TypeError(
                "a spawned FakeOpenAIServer needs picklable options; pass module-level "
                f"functions as reply/count_tokens, not lambdas or closures ({exc})"
            ) from None
        self._options = options
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._url = ""
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
        self._final: tuple[list[RecordedRequest], ServerStats] | None = None
        self.pid: int | None = None

    def start(self) -> int:
        ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=_child_main, args=(self._options, child), name="FakeOpenAIServer", daemon=True
        )
        process.start()
        child.close()
        self._process, self._conn, self.pid = process, parent, process.pid
        if not parent.poll(60):
            self.stop()
            raise RuntimeError("the spawned FakeOpenAIServer did not start within 60 s")
        try:
            what, value = parent.recv()
        except EOFError:  # the child died before it could report
            process.join(5)
            what, value = (
                "error",
                (
                    f"the child exited with code {process.exitcode} (a script that starts a "
                    'spawned server needs `if __name__ == "__main__":` around its code)'
                ),
            )
        if what != "port":
            self.stop()
            raise RuntimeError(f"the spawned FakeOpenAIServer failed to start: {value}")
        self._url = f"http://{self._options.host}:{value}"
        return int(value)

    def stop(self) -> None:
        process, conn = self._process, self._conn
        if process is None or conn is None:
            return
        if self._url:  # started: keep the log readable after stop, as in-process
            with contextlib.suppress(OSError):
                self._final = (self.requests(), self.stats())
        with contextlib.suppress(OSError):
            conn.send("stop")
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        conn.close()
        self._process = self._conn = None

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        if self._process is None:
            raise RuntimeError("the spawned FakeOpenAIServer is not running")
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self._url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with self._opener.open(request, timeout=30) as response:
            return json.loads(response.read())

    def script(self, faults: Sequence[Fault | None]) -> None:
        self._call("POST", "/_fake/script", [f.to_dict() if f else None for f in faults])

    def requests(self) -> list[RecordedRequest]:
        if self._final is not None:
            return list(self._final[0])
        return [RecordedRequest.from_dict(d) for d in self._call("GET", "/_fake/requests")]

    def reset_log(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def stats(self) -> ServerStats:
        if self._final is not None:
            return self._final[1]
        return ServerStats.from_dict(self._call("GET", "/_fake/stats"))
