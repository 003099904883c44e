"""`Ledger.plot` (`%chat usage --plot`): spend over time against the budget, and latency per
model, as a matplotlib Figure. matplotlib is imported only when a chart is drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ChatError
from ipychat.core.pricing import format_usd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ipychat.engine.ledger import LedgerRow

__all__ = ["plot"]


def plot(rows: list[LedgerRow], budget: float | None) -> Figure:
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
