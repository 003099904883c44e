"""The ledger's older rows, folded into running totals: memory flat in the number of requests.

A session that maps a million rows would otherwise keep a million `LedgerRow`s (~0.65 KB
each) for as long as the kernel lives. `Ledger` keeps its newest rows as they are and, past
`fold_at` of them, folds the oldest half into a `Folded`: the totals every view of the
session reads (per model: requests, cached, errors, tokens, cost, saved; the spend by
minute for the persistent budgets; the latencies that the p50/p95 and the latency alert
take, as 8-byte floats so that the percentiles stay exact). Each view then adds the rows
still kept to these totals, in the order it always summed them, so a folded ledger shows
what an unfolded one would.

Folding runs in bulk, once every `fold_at // 2` requests, not on each request's path.
"""

from __future__ import annotations

import statistics
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipychat.engine.ledger import LedgerRow

__all__ = ["Folded", "ModelTotals", "alert_latency", "percentile", "summary_latency"]


def percentile(values: list[float], q: float) -> float | None:
    """The `q`th percentile of sorted `values` (None for none)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary_latency(row: LedgerRow) -> bool:
    """A row whose latency the p50/p95 of `%chat usage` take: a request answered on the
    wire. Batch API rows have no request latency of their own: they would drag p50/p95 to 0."""
    return not row.cached and row.outcome == "ok" and row.thread != "batch"


def alert_latency(row: LedgerRow) -> bool:
    """A row whose latency the "latency is up" alert takes."""
    return not row.cached and row.outcome == "ok"


@dataclass
class ModelTotals:
    """One model's folded rows, as `Ledger.summary` adds them up."""

    requests: int = 0
    cached: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    unpriced: bool = False  # a row had no known price: the model's cost is unknown
    saved: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))

    def add(self, row: LedgerRow) -> None:
        self.requests += 1
        self.cached += row.cached
        self.errors += row.outcome == "error"
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens
        if row.cost is None:
            self.unpriced = True
        else:
            self.cost += row.cost or 0.0
        if row.cached:
            self.saved += row.saved or 0.0
        if summary_latency(row):
            self.latencies.append(row.latency)


@dataclass
class Folded:
    """Every row folded so far (see the module docstring)."""

    count: int = 0
    spent: float = 0.0  # the sum of the rows' known costs, in their order
    saved: float = 0.0  # the sum of the cache hits' savings, in their order
    models: dict[str, ModelTotals] = field(default_factory=dict)
    # Spend by minute (the minute's start / 60): the persistent budgets count this session's
    # spend since a local midnight, which falls on a whole minute.
    minutes: dict[int, float] = field(default_factory=dict)
    latencies: array[float] = field(default_factory=lambda: array("d"))  # the alert's, in order

    def fold(self, rows: Iterable[LedgerRow]) -> None:
        for row in rows:
            self.count += 1
            if row.cost:
                self.spent += row.cost
                minute = int(row.time // 60)
                self.minutes[minute] = self.minutes.get(minute, 0.0) + row.cost
            if row.cached and row.saved:
                self.saved += row.saved
            totals = self.models.get(row.model)
            if totals is None:
                totals = self.models[row.model] = ModelTotals()
            totals.add(row)
            if alert_latency(row):
                self.latencies.append(row.latency)

    def spent_since(self, start: float) -> float:
        """The folded spend of the minutes from `start` on (a whole minute: see above)."""
        return sum(cost for minute, cost in self.minutes.items() if minute * 60 >= start)
