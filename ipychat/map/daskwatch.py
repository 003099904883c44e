"""The kernel's side of a Dask map's reports: the workers' spend in this session's ledger,
their progress, and the budget.

Each partition reports a few times a second (`ipychat.map.daskworker.Report`) on the
map's topic; the watch subscribes to it (`Client.subscribe_topic`: the handler runs on the
client's event loop) and

- records every reported ledger row (tokens, cost, cached) in the session's ledger, through
  `Ledger.record_many`: `%chat usage`, the budget and ledger.db see a Dask map's requests as
  they see a kernel's;
- keeps each partition's progress (a retried partition's new attempt replaces the old
  one's counts; what the old one spent stays spent), summed in `progress()`;
- stops the map (`Client.run(daskworker.stop, …)` on every worker) once the session's
  budget, a persistent budget or the map's `max_cost` has no room left for one more
  request's upper bound. The workers learn it at their next report: what is in flight
  then is cancelled, so a map overruns its budget by at most what its workers answer in
  about one report interval (`REPORT_EVERY`) plus the requests they had in flight.

The watch stays subscribed while the client lives (a frame may be computed again, later,
or through a frame derived from it); only the last `KEEP` maps' watches are kept.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import BudgetExceeded
from ipychat.map.daskworker import LOCAL_WATCHES, stop
from ipychat.map.frame import MapProgress

if TYPE_CHECKING:
    from ipychat.engine.ledger import Ledger

__all__ = ["KEEP", "MapWatch"]

KEEP = 64

# The watches still subscribed, oldest first (see the module docstring).
_LIVE: OrderedDict[str, MapWatch] = OrderedDict()


@dataclass
class _Partition:
    attempt: str
    done: int
    total: int | None
    errors: int
    final: bool


class MapWatch:
    """One Dask map's reports (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        partitions: int,
        *,
        row_high: float = 0.0,
        max_cost: float | None = None,
    ) -> None:
        self.topic = f"ipychat-map-{uuid.uuid4().hex}"
        self.ledger = ledger
        self.partitions = partitions
        self.row_high = row_high  # one request's upper bound: the room a next request needs
        self.max_cost = max_cost
        self.cost = 0.0
        self.requests = 0
        self.cached = 0
        self.stopped: str | None = None
        self._parts: dict[int, _Partition] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._client: Any = None
        self._started = time.monotonic()

    # ----- subscribing ------------------------------------------------------------------

    def start(self, client: Any) -> MapWatch:
        """Listen on `client` (a `distributed.Client`), or in this process when None."""
        self._client = client
        LOCAL_WATCHES[self.topic] = self.receive
        if client is not None:
            client.subscribe_topic(self.topic, self._event)
        live = _LIVE
        live[self.topic] = self
        while len(live) > KEEP:
            live.popitem(last=False)[1].close()
        return self

    def close(self) -> None:
        LOCAL_WATCHES.pop(self.topic, None)
        if self._client is not None and self._client.status == "running":
            self._client.unsubscribe_topic(self.topic)

    def _event(self, event: tuple[float, dict[str, Any]]) -> None:
        self.receive(event[1])

    # ----- a report ---------------------------------------------------------------------

    def receive(self, message: dict[str, Any]) -> None:
        from ipychat.engine.ledger import LedgerRow

        rows = LedgerRow.many({}, message["rows"])
        if rows:
            self.ledger.record_many(rows)
        with self._lock:
            self.cost += sum(r.cost for r in rows if r.cost)
            self.requests += len(rows)
            self.cached += sum(1 for r in rows if r.cached)
            if not self._parts:
                self._started = time.monotonic()  # the rate counts from the first report
            # The latest attempt's counts: a retried (or recomputed) partition starts over.
            self._parts[int(message["partition"])] = _Partition(
                message["attempt"],
                int(message["done"]),
                message["total"],
                int(message["errors"]),
                bool(message["final"]),
            )
            self._changed.notify_all()
        if rows:
            self._check_budget()

    def _check_budget(self) -> None:
        if self.stopped is not None:
            return
        reason = None
        if self.max_cost is not None and self.cost + self.row_high > self.max_cost + 1e-12:
            reason = (
                f"max_cost: the workers spent {self.cost:.4f} USD of this map's "
                f"{self.max_cost:.4f}; the map stopped sending (answered rows are cached: "
                "re-run with a higher max_cost to finish)."
            )
        else:
            try:
                self.ledger.check(self.row_high, what="The Dask map's next request")
            except BudgetExceeded as exc:
                reason = (
                    f"{exc} The Dask map stopped sending (answered rows are cached: "
                    "re-run to finish)."
                )
        if reason is None:
            return
        self.stopped = reason
        stop(self.topic, reason)  # this process (Dask's local scheduler)
        if self._client is not None:
            # Not from the client's loop, where this handler runs (a sync `run` would wait
            # on the loop it blocks).
            threading.Thread(
                target=self._client.run,
                args=(stop, self.topic, reason),
                name="ipychat-dask-stop",
                daemon=True,
            ).start()

    # ----- what the kernel shows --------------------------------------------------------

    def progress(self, estimated_rows: int | None = None) -> MapProgress:
        """The partitions' progress summed; partitions not heard of yet count as the
        reported ones' mean (or `estimated_rows` over all partitions before any report)."""
        with self._lock:
            parts = list(self._parts.values())
            cost = self.cost
        known = [p.total for p in parts if p.total is not None]
        if known:
            total = sum(known) + round(sum(known) / len(known) * (self.partitions - len(known)))
        else:
            total = estimated_rows or 0
        done = sum(p.done for p in parts)
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if done and elapsed > 0 else None
        eta = (total - done) / rate if rate else None
        errors = sum(p.errors for p in parts)
        return MapProgress(done, max(total, done), errors, cost, elapsed, rate, eta)

    def settled(self, timeout: float) -> bool:
        """Wait until every partition's last report came (True), at most `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(1 for p in self._parts.values() if p.final) < self.partitions:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True
