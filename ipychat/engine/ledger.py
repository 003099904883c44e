"""The usage ledger: one row per request (cached ones too), summaries, alerts and the budget.

Thread-safe: rows are appended from the session's loop thread and read from the
notebook's main thread. pandas is imported only by `to_frame`.

The newest rows of this session stay in memory (`rows`); past `fold_at` of them the oldest
half are folded into running totals (`ipychat.engine.ledgerfold`), so that a map of a million
rows does not keep a million rows in the kernel, while every total, summary, alert and budget
stays what the rows say. With a `store`
(`ipychat.engine.ledgerdb.LedgerStore`, which the engine gives it) each row is also written
through to the persistent record in the cache directory, which `history` and
`to_frame(all=True)` read (and `to_frame()`
and `plot()`, for this session's rows, once some were folded), and which holds the persistent budgets (`%chat budget 20 --per
month`): checked by `reserve` and `check` beside the session's budget, against what every
kernel spent in the period.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import BudgetExceeded, ChatError, ConfigError
from ipychat.core.periods import (
    PERIODS,
    check_period,
    period_name,
    period_start,
    this_period,
)
from ipychat.core.pricing import format_usd, format_usd_bound, round_up_usd
from ipychat.engine.ledgerfold import Folded, alert_latency, percentile, summary_latency

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ipychat.engine.ledgerdb import LedgerStore

__all__ = ["Fit", "Ledger", "LedgerRow", "ModelSummary", "max_tokens_within"]

# `fit(limit)`: the smaller request that would cost at most `limit` dollars, as the flag that
# asks for it ("--max-tokens 40"), or None when there is none.
Fit = Callable[[float], "str | None"]


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


_FIELDS = tuple(f.name for f in fields(LedgerRow))
_DEFAULTS = {f.name: f.default for f in fields(LedgerRow) if f.default is not MISSING}

# Rows kept in memory before the oldest half are folded into totals: ~13 MB of rows at most,
# and the views that read the newest rows (the error alert's last 50) always find them.
FOLD_AT = 20_000


@dataclass
class Ledger:
    """Every request of the session, the spend so far and the money in flight.

    `rows` holds the newest requests (all of them until `fold_at`); `len(ledger)` counts
    every request, iterating yields the rows kept."""

    budget: float | None = None
    rows: list[LedgerRow] = field(default_factory=list)
    store: LedgerStore | None = None  # the persistent record rows are written through to
    fold_at: int = FOLD_AT
    _folded: Folded = field(default_factory=Folded, repr=False)
    _reserved: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _alerted: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def kept_beside(cls, cache: object, *, log_prompts: Callable[[], bool]) -> Ledger:
        """A session's ledger, written through to ledger.db in `cache`'s folder (the
        default cache folder for another cache; none under IPYCHAT_LEDGER=off)."""
        from ipychat.engine.ledgerdb import open_store

        return cls(store=open_store(cache, log_prompts))

    def __iter__(self) -> Iterator[LedgerRow]:
        return iter(list(self.rows))

    def __len__(self) -> int:
        return self._folded.count + len(self.rows)

    @property
    def folded(self) -> int:
        """How many of the oldest requests are kept as totals only (not in `rows`)."""
        return self._folded.count

    @property
    def spent(self) -> float:
        return sum((r.cost for r in list(self.rows) if r.cost), self._folded.spent)

    @property
    def saved(self) -> float:
        return sum((r.saved for r in list(self.rows) if r.cached and r.saved), self._folded.saved)

    def reserve(
        self,
        upper_bound: float | None,
        *,
        max_cost: float | None = None,
        what: str = "This request",
        fit: Fit | None = None,
    ) -> float:
        """Hold `upper_bound` dollars against the budget before sending, or refuse.

        Holding the worst case for every request in flight is what keeps a budget from being
        overrun by parallel or streaming requests. Returns the amount held (release it with
        `settle`). An unknown cost (None) under a budget is refused: it cannot be bounded.
        `what` names the work in the refusal; `fit(limit)` names the smaller request that
        would fit under `limit` dollars (e.g. "--max-tokens 40"), when there is one.
        """
        with self._lock:
            refused = self._refusal(upper_bound, max_cost, what, fit)
            if refused is not None:
                raise BudgetExceeded(refused)
            hold = upper_bound or 0.0
            self._reserved += hold
            return hold

    def check(
        self,
        upper_bound: float | None,
        *,
        max_cost: float | None = None,
        what: str = "This request",
        fit: Fit | None = None,
    ) -> None:
        """Refuse as `reserve` would, without holding anything (a map's check before its
        plan is shown)."""
        with self._lock:
            refused = self._refusal(upper_bound, max_cost, what, fit)
        if refused is not None:
            raise BudgetExceeded(refused)

    def _refusal(
        self, upper_bound: float | None, max_cost: float | None, what: str, fit: Fit | None
    ) -> str | None:
        """Why `upper_bound` may not be spent, with the lever that fits, or None."""
        if max_cost is not None and (upper_bound is None or upper_bound > max_cost + 1e-12):
            if upper_bound is None:
                return (
                    f"{what} has no known price, so it cannot be kept under --max-cost. Set "
                    "its price with %chat price MODEL INPUT OUTPUT, or drop --max-cost."
                )
            lever = fit(max_cost) if fit is not None else None
            fix = f"{lever} fits" if lever else "shorten the prompt"
            return (
                f"{what} may cost up to {format_usd_bound(upper_bound)}, over --max-cost "
                f"{format_usd(max_cost)}: {fix}, or raise it to --max-cost "
                f"{round_up_usd(upper_bound)}."
            )
        periodic = self._period_refusal(upper_bound, what, fit)
        if periodic is not None or self.budget is None:
            return periodic
        if upper_bound is None:
            return (
                "Budget: the cost of this model is unknown, so it cannot be kept under the "
                "budget. Set its price with %chat price MODEL INPUT OUTPUT, or remove the "
                "budget with %chat budget off."
            )
        spent = self.spent
        if spent + self._reserved + upper_bound <= self.budget + 1e-12:
            return None
        in_flight = f" ({format_usd(self._reserved)} in flight)" if self._reserved else ""
        room = self.budget - spent - self._reserved
        lever = fit(room) if fit is not None and room > 0 else None
        need = round_up_usd(spent + self._reserved + upper_bound)
        fix = f"{lever} fits, or raise the budget" if lever else "Raise it"
        return (
            f"Budget: spent {format_usd(spent)} of {format_usd(self.budget)}{in_flight}; "
            f"{what[:1].lower()}{what[1:]} may cost up to {format_usd_bound(upper_bound)}. "
            f"{fix[:1].upper()}{fix[1:]} with %chat budget {need}."
        )

    def _period_refusal(self, upper_bound: float | None, what: str, fit: Fit | None) -> str | None:
        """Why a persistent budget (day, week, month: every kernel's spend) refuses
        `upper_bound`, or None."""
        for period, limit, spent in self.periods():
            if upper_bound is None:
                return (
                    f"Budget: the cost of this model is unknown, so it cannot be kept under the "
                    f"{period_name(period)} budget. Set its price with %chat price MODEL INPUT "
                    f"OUTPUT, or remove the budget with %chat budget off --per {period}."
                )
            if spent + self._reserved + upper_bound <= limit + 1e-12:
                continue
            in_flight = f" ({format_usd(self._reserved)} in flight)" if self._reserved else ""
            room = limit - spent - self._reserved
            lever = fit(room) if fit is not None and room > 0 else None
            need = round_up_usd(spent + self._reserved + upper_bound)
            fix = f"{lever} fits, or raise the budget" if lever else "Raise it"
            return (
                f"Budget: every kernel spent {format_usd(spent)} {this_period(period)} of the "
                f"{period_name(period)} budget of {format_usd(limit)}{in_flight}; "
                f"{what[:1].lower()}{what[1:]} may cost up to {format_usd_bound(upper_bound)}. "
                f"{fix[:1].upper()}{fix[1:]} with %chat budget {need} --per {period}."
            )
        return None

    def periods(self) -> list[tuple[str, float, float]]:
        """The persistent budgets as (period, limit, spent so far in it by every kernel),
        day first; empty without a store (or while it is off: it warned)."""
        if self.store is None:
            return []
        try:
            budgets = self.store.budgets()
            if not budgets:
                return []
            now, out = time.time(), []
            for period in PERIODS:
                if period in budgets:
                    start = period_start(period, now)
                    # This session's own rows from memory (written or still queued), the
                    # rest from the record: each row counted once.
                    own = self._folded.spent_since(start) + sum(
                        r.cost for r in list(self.rows) if r.cost and r.time >= start
                    )
                    out.append((period, budgets[period], own + self.store.spent_by_others(start)))
            return out
        except ChatError:  # the record is off: it said so once
            return []

    def set_period_budget(self, period: str, usd: float | None) -> None:
        """Set (None: remove) a persistent budget: every kernel's spend in the current day,
        week or month, checked before sending from any kernel using this cache directory."""
        period = check_period(period)
        if usd is not None and not 0 < usd < float("inf"):
            raise ConfigError(
                f"The budget must be a positive number of dollars, e.g. %chat budget 20 --per "
                f"{period} (%chat budget off --per {period} removes it)."
            )
        if self.store is None:
            raise ConfigError(
                "This session keeps no persistent record, so it has no persistent budget: "
                "%chat budget USD sets this session's."
            )
        self.store.set_budget(period, usd)

    def history(self, since: float | None = None, notebook: str | None = None) -> Ledger:
        """The persistent record (every kernel's rows) since `since`, of `notebook` (a path,
        or its end: "analysis.ipynb"), as a Ledger of its own to summarise or plot."""
        rows = self._recorded(since, notebook)
        return Ledger(rows=LedgerRow.many({}, ({k: r[k] for k in _FIELDS} for r in rows)))

    def _recorded(self, since: float | None, notebook: str | None) -> list[dict[str, Any]]:
        if self.store is None:
            raise ChatError("This session keeps no persistent record: %chat usage shows it.")
        rows = self.store.rows(since)
        if notebook is not None:
            rows = [r for r in rows if _same_notebook(r["notebook"], notebook)]
        return rows

    def settle(self, held: float, row: LedgerRow | None, *, prompt: str | None = None) -> None:
        """Release a reservation and record what the request really cost. `prompt` goes to
        the persistent record only when the `log_prompts` setting is on."""
        with self._lock:
            self._reserved = max(0.0, self._reserved - held)
            if row is not None:
                self.rows.append(row)
                if len(self.rows) > self.fold_at:
                    self._fold()
        if row is not None and self.store is not None:
            self.store.append((row,), prompt)

    def close(self) -> None:
        """Write the rows queued for the persistent record and close it (it reopens)."""
        if self.store is not None:
            self.store.close()

    def record(self, row: LedgerRow, *, prompt: str | None = None) -> None:
        self.settle(0.0, row, prompt=prompt)

    def record_many(self, rows: Iterable[LedgerRow]) -> None:
        """`record` for many rows at once (one lock, one extend, one queueing)."""
        rows = list(rows)
        with self._lock:
            self.rows.extend(rows)
            if len(self.rows) > self.fold_at:
                self._fold()
        if self.store is not None:
            self.store.append(rows)

    def _fold(self) -> None:
        """Fold the oldest rows into the totals, keeping the newest `fold_at // 2` (under
        the lock: the views read totals and rows together)."""
        keep = self.fold_at // 2
        old = self.rows[: len(self.rows) - keep]
        self._folded.fold(old)
        del self.rows[: len(old)]

    def summary(self) -> list[ModelSummary]:
        with self._lock:
            rows, folded = list(self.rows), self._folded.models
        by_model: dict[str, list[LedgerRow]] = {model: [] for model in folded}
        for row in rows:
            by_model.setdefault(row.model, []).append(row)
        out = []
        for model, rows in by_model.items():
            old = folded.get(model)
            latencies = sorted(r.latency for r in rows if summary_latency(r))
            costs = [r.cost for r in rows]
            if old is not None:
                latencies = sorted([*old.latencies, *latencies])
            unpriced = any(c is None for c in costs) or (old is not None and old.unpriced)
            out.append(
                ModelSummary(
                    model=model,
                    requests=len(rows) + (old.requests if old else 0),
                    cached=sum((r.cached for r in rows), old.cached if old else 0),
                    errors=sum((r.outcome == "error" for r in rows), old.errors if old else 0),
                    prompt_tokens=sum(
                        (r.prompt_tokens for r in rows), old.prompt_tokens if old else 0
                    ),
                    completion_tokens=sum(
                        (r.completion_tokens for r in rows), old.completion_tokens if old else 0
                    ),
                    cost=None
                    if unpriced
                    else sum((c or 0.0 for c in costs), old.cost if old else 0),
                    saved=sum((r.saved or 0.0 for r in rows if r.cached), old.saved if old else 0),
                    p50_latency=percentile(latencies, 50),
                    p95_latency=percentile(latencies, 95),
                )
            )
        return out

    def alerts(self) -> list[str]:
        """One-line warnings that are new since the last call (each shown once per state)."""
        with self._lock:
            rows, folded = list(self.rows), self._folded.latencies
        found: dict[str, str] = {}
        recent = [r for r in rows[-50:] if not r.cached]
        if len(recent) >= 10:
            rate = sum(r.outcome == "error" for r in recent) / len(recent)
            if rate > 0.2:
                found["errors"] = (
                    f"{rate:.0%} of the last {len(recent)} requests failed: check %chat usage "
                    "and the endpoint."
                )
        latencies = [*folded, *(r.latency for r in rows if alert_latency(r))]
        if len(latencies) >= 20:
            median = statistics.median(latencies)
            p95_recent = percentile(sorted(latencies[-20:]), 95)
            if median > 0 and p95_recent is not None and p95_recent > 2 * median:
                found["latency"] = (
                    f"Latency is up: p95 of the last 20 requests is {p95_recent:.1f} s against "
                    f"a session median of {median:.1f} s."
                )
        if self.budget:
            spent = self.spent
            if spent >= 0.8 * self.budget:
                found["budget"] = (
                    f"Spent {format_usd(spent)} of the {format_usd(self.budget)} budget "
                    f"({spent / self.budget:.0%}); raise it with %chat budget USD."
                )
        new = [msg for key, msg in found.items() if key not in self._alerted]
        self._alerted = set(found)  # an alert shows again only after its condition cleared
        return new

    def plot(self) -> Figure:
        """`%chat usage --plot`: cumulative spend over time against the budget, and the
        latency of each model's requests, as a matplotlib Figure (imported only here)."""
        from ipychat.engine.ledgerplot import plot

        return plot(self._session_rows(), self.budget)

    def _session_rows(self) -> list[LedgerRow]:
        """Every row of this session: the kept ones, or, once some were folded, all of them
        from the persistent record (when there is none, the kept rows: the newest)."""
        with self._lock:
            rows, folded = list(self.rows), self._folded.count
        if not folded or self.store is None:
            return rows
        try:
            recorded = self.store.rows(session=self.store.session)
        except ChatError:  # the record is off: it said so once
            return rows
        return LedgerRow.many({}, ({k: r[k] for k in _FIELDS} for r in recorded))

    def to_frame(
        self, all: bool = False, *, since: float | None = None, notebook: str | None = None
    ) -> Any:
        """Every row of this session as a pandas DataFrame (time as datetimes; once the
        oldest rows were folded, read back from the persistent record, or without one only
        the newest `fold_at // 2` or more). With
        `all=True` (or `since`/`notebook`): the persistent record of every kernel, with its
        notebook, kernel, session and prompt (None unless `log_prompts`) columns."""
        import pandas as pd

        if all or since is not None or notebook is not None:
            rows = self._recorded(since, notebook)
            frame = pd.DataFrame(rows, columns=list(self.store.columns if self.store else ()))
        else:
            frame = pd.DataFrame(
                [asdict(r) for r in self._session_rows()],
                columns=list(LedgerRow.__dataclass_fields__),
            )
        frame["time"] = pd.to_datetime(frame["time"], unit="s")
        return frame


def _same_notebook(recorded: str | None, wanted: str) -> bool:
    """`--notebook analysis.ipynb` matches /home/me/work/analysis.ipynb (a path's end, at a
    folder boundary) as well as the whole path."""
    if not recorded:
        return False
    wanted = wanted.rstrip("/")
    return recorded == wanted or recorded.endswith("/" + wanted.lstrip("/"))


def max_tokens_within(
    limit: float, prompt_tokens: int, requests: int, input_price: float, output_price: float
) -> int:
    """The largest max_tokens per request that keeps the upper bound of `requests` requests
    holding `prompt_tokens` in all under `limit` dollars (prices in USD per 1M tokens, as
    `pricing.estimate_cost_range` bounds them); 0 when even the prompts alone do not fit."""
    if requests < 1:
        return 0
    room = limit * 1_000_000 - prompt_tokens * input_price
    if room <= 0:
        return 0
    if output_price <= 0:
        return 1_000_000_000  # free replies: any size fits
    n = math.floor(room / (requests * output_price))
    # Floating-point noise must never suggest a bound that does not fit.
    while n > 0 and prompt_tokens * input_price + requests * n * output_price > limit * 1e6:
        n -= 1
    return max(n, 0)
