"""What a Dask worker runs: one partition mapped (or filtered) by `ipychat.map.job`, and
its usage and progress sent back to the kernel.

```
map_partition(part, spec, partition_info)    on a worker, when the frame is computed
  ├── _host(spec)            an engine and a loop per worker process and thread, made once
  ├── job.run / run_filter   the same plan, cache, pacing, retries and `_error` as a kernel
  └── Report.tick()          every REPORT_EVERY seconds and at the end: the ledger rows of
                             the requests since the last report, and the partition's
                             progress, as one event on the map's topic
                             (`Worker.log_event`; the kernel subscribes: `map.daskwatch`)
```

Events are the cluster's own channel ("Worker.log_event ... Client.subscribe_topic",
https://distributed.dask.org/en/stable/api.html#distributed.Client.subscribe_topic): one
event per report, a few a second per worker however many rows, never one per row. Without
a `distributed` worker (Dask's local scheduler runs the partitions in the kernel's own
process) the report goes straight to the kernel's watch (`LOCAL_WATCHES`).

The kernel stops a map whose spend reached its budget with `Client.run(stop, topic,
reason)` on every worker: the next report of each partition raises the reason (the
partition's requests in flight are cancelled, what was answered is cached and reported),
and a partition that starts afterwards raises it before sending anything.
"""

from __future__ import annotations

import atexit
import contextlib
import pickle
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import BudgetExceeded, ChatError
from ipychat.core.settings import Settings
from ipychat.map.options import MapOptions

if TYPE_CHECKING:
    from ipychat.engine.cache import ResponseCache
    from ipychat.engine.ledger import Ledger
    from ipychat.map.frame import MapProgress
    from ipychat.map.host import Host

__all__ = [
    "LOCAL_WATCHES",
    "REPORT_EVERY",
    "CacheSpec",
    "MakeHost",
    "Report",
    "WorkerSpec",
    "filter_partition",
    "map_partition",
    "stop",
]

MakeHost = Callable[[Settings, "ResponseCache | bool"], "Host"]

# Seconds between a partition's reports (its spend and progress) to the kernel.
REPORT_EVERY = 0.5


@dataclass(frozen=True)
class CacheSpec:
    """The caller's cache as a worker opens it: "off", "directory" (`value`: its path) or
    "store" (`value`: a `CacheStore` that pickles, the Redis one)."""

    kind: str
    value: Any = None

    @classmethod
    def of(cls, cache: ResponseCache | None) -> CacheSpec:
        if cache is None:
            return cls("off")
        store = getattr(cache, "store", None)
        if store is not None:
            return cls("store", store)
        return cls("directory", str(cache.directory))

    def open(self) -> ResponseCache | bool:
        if self.kind == "off":
            return False
        if self.kind == "store":
            from ipychat.engine.stores.counted import StoreCache

            return StoreCache(self.value)
        from ipychat.engine.cache import ResponseCache

        return ResponseCache(self.value)

    @property
    def redis(self) -> Any:
        """A Redis cache's `RedisTarget` (the shared pace goes to the same server), or None."""
        return getattr(self.value, "target", None) if self.kind == "store" else None


@dataclass(frozen=True)
class WorkerSpec:
    """A map as a worker runs it on one partition (see `ipychat.map.dask`)."""

    make_host: MakeHost
    settings: Settings
    cache: CacheSpec
    template: str
    options: MapOptions
    dtypes: tuple[tuple[str, Any], ...]  # the new columns and their dtypes, as in `meta`
    topic: str = ""  # where reports go (the kernel's `MapWatch`); "": not reported
    decision: str | None = None  # a filter: the column kept for its answers, if any

    def host_key(self) -> bytes:
        return pickle.dumps((self.make_host, self.settings, self.cache))


# One host (engine, loop, cache connection) per worker process and thread, made on the
# first partition and reused by the next ones: a partition must not pay for a new
# connection pool, nor the pace learnt by the last one be lost.
_HOSTS: dict[tuple[bytes, int], Any] = {}
_HOSTS_LOCK = threading.Lock()


def _host(spec: WorkerSpec) -> Host:
    key = (spec.host_key(), threading.get_ident())
    with _HOSTS_LOCK:
        host = _HOSTS.get(key)
        if host is None:
            host = _HOSTS[key] = spec.make_host(spec.settings, spec.cache.open())
            if len(_HOSTS) == 1:
                atexit.register(_exit_quickly, spec.options.model or spec.settings.model)
            # The kernel records the rows this worker reports (in its ledger, and its
            # ledger.db): written here too, a shared cache folder would count them twice.
            host.engine.usage.close()
            host.engine.usage.store = None
    return host


def _exit_quickly(model: str | None) -> None:
    """At this process's exit: leave its heap to the OS instead of collecting it.

    Why `cluster.close()` waited 4 s and then killed the workers: a worker process that
    mapped exits through the interpreter's finalization, whose last garbage collection
    walks the whole heap (pandas, dask, distributed: ~1 s on an idle core here) and then
    frees the token encoding's tables (tiktoken's o200k_base: ~0.25 s). On a loaded
    machine (two cores, four workers, the fake server and Redis) that passed the nanny's
    4 s ("Worker process still alive after 4.0 seconds, killing", distributed/nanny.py).
    This handler (registered after `ipychat.lifetime`'s, so run before it closes the
    hosts, which freezing does not hinder) moves every object to the permanent generation
    (`gc.freeze`: the final collection skips them) and keeps the encoding alive (one
    reference never released), so finalization takes ~0.15 s; the OS reclaims the memory.
    """
    import ctypes
    import gc

    from ipychat.core.tokens import encoding_for

    with contextlib.suppress(Exception):
        encoding, _ = encoding_for(model or "")
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(encoding))
    gc.freeze()


# ----- reports to the kernel ---------------------------------------------------------------

# The watches of maps whose partitions run in this very process (Dask's local scheduler):
# topic -> the watch's `receive`.
LOCAL_WATCHES: dict[str, Callable[[dict[str, Any]], None]] = {}
# Maps the kernel stopped (topic -> the reason, raised by their partitions): `stop`.
_STOPPED: dict[str, str] = {}


def stop(topic: str, reason: str) -> None:
    """Stop the map of `topic` in this process (run on every worker by `Client.run`)."""
    _STOPPED[topic] = reason


def _emit(topic: str, message: dict[str, Any]) -> None:
    local = LOCAL_WATCHES.get(topic)
    if local is not None:
        local(message)
        return
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # "No worker found": nobody to report to
        return
    worker.log_event(topic, message)


class Report:
    """One partition's reports: the ledger rows since the last one, and its progress."""

    def __init__(self, spec: WorkerSpec, ledger: Ledger, partition: int) -> None:
        self.topic = spec.topic
        self.ledger = ledger
        self.partition = partition
        self.attempt = uuid.uuid4().hex[:12]  # a retried partition reports anew
        self.sent = len(ledger.rows)
        self.last = 0.0
        self.progress: MapProgress | None = None

    def check(self) -> None:
        """Raise the kernel's reason when it stopped this map."""
        reason = _STOPPED.get(self.topic)
        if reason is not None:
            raise BudgetExceeded(reason)

    def tick(self, progress: MapProgress) -> None:
        """`run`'s progress callback: a report every REPORT_EVERY seconds; the kernel's stop."""
        self.progress = progress
        now = time.monotonic()
        if now - self.last >= REPORT_EVERY:
            self.last = now
            self.send(final=False)
        self.check()

    def send(self, *, final: bool) -> None:
        if not self.topic:
            return
        rows = self.ledger.rows[self.sent :]
        self.sent += len(rows)
        p = self.progress
        message = {
            "partition": self.partition,
            "attempt": self.attempt,
            "done": p.done if p else 0,
            "total": p.total if p else None,
            "errors": p.errors if p else 0,
            # Each row's fields as they are (all plain values): `dataclasses.asdict` deep-
            # copied every value, 5 % of an unlimited map's worker time.
            "rows": [dict(vars(r)) for r in rows],
            "final": final,
        }
        _emit(self.topic, message)
        if final:  # nobody reads a worker's rows once reported: a long-lived worker keeps none
            del self.ledger.rows[: self.sent]
            self.sent = 0


def _run(spec: WorkerSpec, part: Any, partition: int, run: Callable[..., Any]) -> Any:
    """`run(host, part, template, outputs, **options)` with the reports around it; the
    error a Dask task may raise (one line, pickles) for a global failure."""
    from ipychat.map.job import MapAborted

    host = _host(spec)
    report = Report(spec, host.engine.usage, partition)
    report.check()
    options = spec.options
    aborted = ""
    try:
        result = run(
            host, part, spec.template, options.outputs, progress=report.tick, **options.as_dict()
        )
    except MapAborted as exc:
        aborted = str(exc)
    finally:
        report.send(final=True)
    if aborted:
        # Raised outside the `except`: Dask pickles an error with its context (tblib), and
        # a MapAborted (with its partial frame) does not unpickle; this one line does.
        raise ChatError(aborted)
    return result


def _typed(frame: Any, dtypes: tuple[tuple[str, Any], ...]) -> Any:
    """`frame` with the columns of `dtypes` of those dtypes (the meta's: Dask checks none)."""
    import pandas as pd

    for name, dtype in dtypes:  # `_error` too, which a kernel's map adds only if needed
        if name not in frame:
            frame[name] = None
        column = frame[name]
        datetimes = str(dtype).startswith("datetime64")
        if datetimes and getattr(column.dtype, "tz", None) is not None:
            # A partition whose datetimes all had an offset comes back in UTC (see
            # `map.typed`): the meta's naive datetimes hold it as UTC (map.dask says so).
            column = column.dt.tz_convert("UTC").dt.tz_localize(None)
        elif datetimes and column.dtype == object:
            column = pd.to_datetime(column, utc=True).dt.tz_localize(None)  # mixed offsets
        frame[name] = column.astype(dtype)
    return frame


def map_partition(part: Any, spec: WorkerSpec, partition_info: Any = None) -> Any:
    """Map one partition (a pandas DataFrame) on this worker: `ipychat.map.job.run`."""
    from ipychat.map.job import run

    number = int(partition_info["number"]) if partition_info else 0
    result = _run(spec, part, number, run)
    return _typed(result.frame, spec.dtypes)


def filter_partition(part: Any, spec: WorkerSpec, partition_info: Any = None) -> Any:
    """Filter one partition on this worker: `ipychat.map.job.run_filter`, the kept rows."""
    from ipychat.map.job import run_filter

    def run(host: Any, part: Any, template: str, outputs: Any, **options: Any) -> Any:
        del outputs  # the decision column: run_filter names it
        options.pop("filter")
        return run_filter(host, part, template, decision=spec.decision, **options)

    number = int(partition_info["number"]) if partition_info else 0
    result = _run(spec, part, number, run)
    return _typed(result.frame, spec.dtypes)
