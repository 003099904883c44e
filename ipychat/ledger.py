"""The usage ledger: one row per request (cached ones too), summaries, alerts and the budget.

Pure and thread-safe: rows are appended from the session's loop thread and read from the
notebook's main thread. pandas is imported only by `to_frame`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ipychat.errors import BudgetExceeded

__all__ = ["Ledger", "LedgerRow", "ModelSummary"]


@dataclass(frozen=True)
class LedgerRow:
    time: float
    thread: str
    model: str
    host: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float | None = 0.0  # None: the model has no known price
    saved: float | None = 0.0  # what a cache hit would have cost
    cached: bool = False
    estimated: bool = False  # token counts are ours, not the server's
    latency: float = 0.0
    time_to_first_token: float | None = None
    retries: int = 0
    outcome: str = "ok"  # ok | error | interrupted | refused
    error: str | None = None

    @classmethod
    def many(cls, common: Mapping[str, Any], each: Iterable[Mapping[str, Any]]) -> list[LedgerRow]:
        """One row per mapping of `each`, all sharing `common` (the cache hits of a map).

        The same rows as `LedgerRow(**common, **fields)`, built without the frozen
        `__init__`'s one `object.__setattr__` per field: ~5 µs a row, most of a cached
        %%chatmap row's ledger cost. Unknown or missing fields raise TypeError, as there.
        """
        base = {**_DEFAULTS, **common}
        rows = []
        new = object.__new__
        for own in each:
            values = {**base, **own}
            if len(values) != len(_FIELDS):
                unknown = sorted(set(values) - set(_FIELDS))
                missing = sorted(set(_FIELDS) - set(values))
                raise TypeError(f"LedgerRow fields: unknown {unknown}, missing {missing}")
            row = new(cls)
            row.__dict__.update(values)
            rows.append(row)
        return rows


@dataclass(frozen=True)
class ModelSummary:
    model: str
    requests: int
    cached: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    saved: float
    p50_latency: float | None
    p95_latency: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


_FIELDS = tuple(f.name for f in fields(LedgerRow))
_DEFAULTS = {f.name: f.default for f in fields(LedgerRow) if f.default is not MISSING}


@dataclass
class Ledger:
    """Every request of the session, the spend so far and the money in flight."""

    budget: float | None = None
    rows: list[LedgerRow] = field(default_factory=list)
    _reserved: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _alerted: set[str] = field(default_factory=set, repr=False)

    def __iter__(self) -> Iterator[LedgerRow]:
        return iter(list(self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def spent(self) -> float:
        return sum(r.cost for r in self.rows if r.cost)

    @property
    def saved(self) -> float:
        return sum(r.saved for r in self.rows if r.cached and r.saved)

    def reserve(self, upper_bound: float | None, *, max_cost: float | None = None) -> float:
        """Hold `upper_bound` dollars against the budget before sending, or refuse.

        Holding the worst case for every request in flight is what keeps a budget from being
        overrun by parallel or streaming requests. Returns the amount held (release it with
        `settle`). An unknown cost (None) under a budget is refused: it cannot be bounded.
        """
        if max_cost is not None and (upper_bound is None or upper_bound > max_cost):
            shown = "unknown" if upper_bound is None else f"${upper_bound:.6g}"
            raise BudgetExceeded(
                f"This request may cost up to {shown}, over --max-cost ${max_cost:.6g}. "
                "Lower --max-tokens, shorten the prompt, or raise --max-cost."
            )
        with self._lock:
            if self.budget is None:
                hold = upper_bound or 0.0
            elif upper_bound is None:
                raise BudgetExceeded(
                    "Budget: the cost of this model is unknown, so it cannot be kept under the "
                    "budget. Set its price with %chat price MODEL INPUT OUTPUT, or remove the "
                    "budget with %chat budget off."
                )
            else:
                spent = self.spent
                if spent + self._reserved + upper_bound > self.budget + 1e-12:
                    in_flight = f" (${self._reserved:.4g} in flight)" if self._reserved else ""
                    raise BudgetExceeded(
                        f"Budget: spent ${spent:.4g} of ${self.budget:.4g}{in_flight}; this "
                        f"request may cost up to ${upper_bound:.4g}. Raise it with "
                        f"%chat budget {max(self.budget * 2, 1):g}."
                    )
                hold = upper_bound
            self._reserved += hold
            return hold

    def settle(self, held: float, row: LedgerRow | None) -> None:
        """Release a reservation and record what the request really cost."""
        with self._lock:
            self._reserved = max(0.0, self._reserved - held)
            if row is not None:
                self.rows.append(row)

    def record(self, row: LedgerRow) -> None:
        self.settle(0.0, row)

    def record_many(self, rows: Iterable[LedgerRow]) -> None:
        """`record` for many rows at once (one lock, one extend)."""
        rows = list(rows)
        with self._lock:
            self.rows.extend(rows)

    def summary(self) -> list[ModelSummary]:
        by_model: dict[str, list[LedgerRow]] = {}
        for row in list(self.rows):
            by_model.setdefault(row.model, []).append(row)
        out = []
        for model, rows in by_model.items():
            # Batch API rows have no request latency of their own: they would drag p50/p95 to 0.
            latencies = sorted(
                r.latency
                for r in rows
                if not r.cached and r.outcome == "ok" and r.thread != "batch"
            )
            costs = [r.cost for r in rows]
            out.append(
                ModelSummary(
                    model=model,
                    requests=len(rows),
                    cached=sum(r.cached for r in rows),
                    errors=sum(r.outcome == "error" for r in rows),
                    prompt_tokens=sum(r.prompt_tokens for r in rows),
                    completion_tokens=sum(r.completion_tokens for r in rows),
                    cost=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
                    saved=sum(r.saved or 0.0 for r in rows if r.cached),
                    p50_latency=_percentile(latencies, 50),
                    p95_latency=_percentile(latencies, 95),
                )
            )
        return out

    def alerts(self) -> list[str]:
        """One-line warnings that are new since the last call (each shown once per state)."""
        rows = list(self.rows)
        found: dict[str, str] = {}
        recent = [r for r in rows[-50:] if not r.cached]
        if len(recent) >= 10:
            rate = sum(r.outcome == "error" for r in recent) / len(recent)
            if rate > 0.2:
                found["errors"] = (
                    f"{rate:.0%} of the last {len(recent)} requests failed: check %chat usage "
                    "and the endpoint."
                )
        latencies = [r.latency for r in rows if not r.cached and r.outcome == "ok"]
        if len(latencies) >= 20:
            median = statistics.median(latencies)
            p95_recent = _percentile(sorted(latencies[-20:]), 95)
            if median > 0 and p95_recent is not None and p95_recent > 2 * median:
                found["latency"] = (
                    f"Latency is up: p95 of the last 20 requests is {p95_recent:.1f} s against "
                    f"a session median of {median:.1f} s."
                )
        if self.budget:
            spent = self.spent
            if spent >= 0.8 * self.budget:
                found["budget"] = (
                    f"Spent ${spent:.4g} of the ${self.budget:.4g} budget "
                    f"({spent / self.budget:.0%}); raise it with %chat budget USD."
                )
        new = [msg for key, msg in found.items() if key not in self._alerted]
        self._alerted = set(found)  # an alert shows again only after its condition cleared
        return new

    def to_frame(self) -> Any:
        """Every row as a pandas DataFrame (time as datetimes)."""
        import pandas as pd

        frame = pd.DataFrame(
            [asdict(r) for r in list(self.rows)], columns=list(LedgerRow.__dataclass_fields__)
        )
        frame["time"] = pd.to_datetime(frame["time"], unit="s")
        return frame


def now() -> float:
    return time.time()
