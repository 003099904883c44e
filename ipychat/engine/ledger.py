"""The usage ledger: one row per request (cached ones too), summaries, alerts and the budget.

Pure and thread-safe: rows are appended from the session's loop thread and read from the
notebook's main thread. pandas is imported only by `to_frame`.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import BudgetExceeded, ChatError
from ipychat.core.pricing import format_usd, format_usd_bound, round_up_usd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
        if self.budget is None:
            return None
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
                    f"Spent {format_usd(spent)} of the {format_usd(self.budget)} budget "
                    f"({spent / self.budget:.0%}); raise it with %chat budget USD."
                )
        new = [msg for key, msg in found.items() if key not in self._alerted]
        self._alerted = set(found)  # an alert shows again only after its condition cleared
        return new

    def plot(self) -> Figure:
        """`%chat usage --plot`: cumulative spend over time against the budget, and the
        latency of each model's requests, as a matplotlib Figure (imported only here)."""
        return _plot(list(self.rows), self.budget)

    def to_frame(self) -> Any:
        """Every row as a pandas DataFrame (time as datetimes)."""
        import pandas as pd

        frame = pd.DataFrame(
            [asdict(r) for r in list(self.rows)], columns=list(LedgerRow.__dataclass_fields__)
        )
        frame["time"] = pd.to_datetime(frame["time"], unit="s")
        return frame


def _plot(rows: list[LedgerRow], budget: float | None) -> Figure:
    if not rows:
        raise ChatError("No requests yet in this session: nothing to plot.")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise ChatError(
            "Charts need matplotlib, which is not installed: pip install matplotlib"
        ) from None
    from datetime import datetime

    # A Figure of its own with the Agg canvas: no pyplot, so no global figure state and
    # no backend switch in the user's session.
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    spend, latency = figure.subplots(1, 2, width_ratios=(3, 2))
    ordered = sorted(rows, key=lambda r: r.time)
    # From nothing spent at the first request, one step up at each request's cost.
    times = [datetime.fromtimestamp(ordered[0].time)]
    total, cumulative = 0.0, [0.0]
    for r in ordered:
        total += r.cost or 0.0
        times.append(datetime.fromtimestamp(r.time))
        cumulative.append(total)
    spend.step(times, cumulative, where="post", label="spent")
    title = f"Spent {format_usd(total)}"
    if budget is not None:
        spend.axhline(budget, color="tab:red", linestyle="--", label=f"budget {_tex(budget)}")
        title += f" of {format_usd(budget)}"
    if any(r.cost is None for r in ordered):
        title += " (some costs unknown)"
    spend.set_title(title.replace("$", r"\$"))  # two "$" would be typeset as math
    spend.set_ylim(bottom=0)
    spend.yaxis.set_major_formatter(FuncFormatter(lambda y, _: _tex(y)))  # never 1e-05
    locator = AutoDateLocator()
    spend.xaxis.set_major_locator(locator)
    spend.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    spend.legend(loc="lower right")
    _plot_latency(latency, ordered)
    return figure


def _plot_latency(axes: Any, ordered: list[LedgerRow]) -> None:
    """Latency per model: requests that went out and came back (not cache hits, not Batch
    API rows), as a box plot with the requests as dots."""
    by_model: dict[str, list[float]] = {}
    for r in ordered:
        if not r.cached and r.outcome == "ok" and r.thread != "batch":
            by_model.setdefault(r.model, []).append(r.latency)
    axes.set_title("Latency per model")
    if by_model:
        models = list(by_model)
        data = [by_model[m] for m in models]
        try:
            axes.boxplot(data, orientation="horizontal", widths=0.5)
        except TypeError:  # matplotlib < 3.10 says it with `vert` (deprecated since)
            axes.boxplot(data, vert=False, widths=0.5)
        for i, model in enumerate(models, start=1):
            axes.scatter(by_model[model], [i] * len(by_model[model]), s=12, alpha=0.6)
        axes.set_yticks(range(1, len(models) + 1), models)
        axes.set_xlabel("seconds")
    else:
        axes.text(0.5, 0.5, "no requests sent yet", ha="center", va="center")
        axes.set_axis_off()


def _tex(amount: float) -> str:
    """Money in a matplotlib text: "$" escaped, or a pair of them is typeset as math."""
    return format_usd(amount).replace("$", r"\$")


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
