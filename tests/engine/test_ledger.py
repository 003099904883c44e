"""The usage ledger: reservations keep budgets, summaries and alerts."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading

import pytest

from ipychat.core.errors import BudgetExceeded
from ipychat.core.pricing import format_usd, format_usd_bound, round_up_usd
from ipychat.engine.ledger import Ledger, LedgerRow, max_tokens_within


def row(cost: float | None = 0.01, **kw) -> LedgerRow:
    base = dict(time=0.0, thread="main", model="m", host="h", prompt_tokens=10, completion_tokens=5)
    base.update(kw)
    return LedgerRow(cost=cost, **base)


def test_reserve_refuses_past_the_budget_and_counts_money_in_flight() -> None:
    ledger = Ledger(budget=1.0)
    ledger.record(row(cost=0.5))
    held = ledger.reserve(0.3)
    with pytest.raises(
        BudgetExceeded,
        match=r"spent \$0.50 of \$1.00 \(\$0.30 in flight\); this request may cost up to "
        r"\$0.30\. Raise it with %chat budget 1.1\.$",
    ):
        ledger.reserve(0.3)
    ledger.settle(held, row(cost=0.1))
    assert ledger.spent == pytest.approx(0.6)
    ledger.reserve(0.4)  # exactly reaches the budget: allowed


def test_unknown_cost_under_a_budget_is_refused_and_max_cost_applies() -> None:
    with pytest.raises(BudgetExceeded, match="cost of this model is unknown"):
        Ledger(budget=5).reserve(None)
    assert Ledger().reserve(None) == 0.0
    with pytest.raises(BudgetExceeded, match="over --max-cost"):
        Ledger().reserve(0.02, max_cost=0.01)


def test_parallel_reservations_never_overrun() -> None:
    ledger = Ledger(budget=1.0)
    granted: list[float] = []

    def worker() -> None:
        for _ in range(50):
            with contextlib.suppress(BudgetExceeded):
                granted.append(ledger.reserve(0.01))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == pytest.approx(1.0)


def test_summary_per_model() -> None:
    ledger = Ledger()
    for latency in (1.0, 2.0, 3.0, 4.0):
        ledger.record(row(model="a", latency=latency))
    ledger.record(row(model="a", cached=True, cost=0.0, saved=0.02))
    ledger.record(row(model="b", cost=None, outcome="error"))
    a, b = ledger.summary()
    assert (a.requests, a.cached, a.errors) == (5, 1, 0)
    assert a.cost == pytest.approx(0.04) and a.saved == pytest.approx(0.02)
    assert a.p50_latency == pytest.approx(2.5) and 3.8 <= a.p95_latency <= 4.0
    assert b.cost is None and b.error_rate == 1.0
    assert ledger.saved == pytest.approx(0.02)


def test_alerts_show_once_per_condition() -> None:
    ledger = Ledger(budget=1.0)
    for _ in range(10):
        ledger.record(row(cost=0.0, outcome="error"))
    ledger.record(row(cost=0.85))
    alerts = ledger.alerts()
    assert any("failed" in a for a in alerts) and any("budget" in a for a in alerts)
    assert ledger.alerts() == []


def test_latency_alert() -> None:
    ledger = Ledger()
    for _ in range(40):
        ledger.record(row(latency=1.0))
    for _ in range(5):
        ledger.record(row(latency=9.0))
    assert any("Latency is up" in a for a in ledger.alerts())


def test_to_frame_has_every_row_and_column() -> None:
    ledger = Ledger()
    ledger.record(row(time=1_700_000_000.0))
    frame = ledger.to_frame()
    assert list(frame.columns) == list(LedgerRow.__dataclass_fields__)
    assert len(frame) == 1 and str(frame["time"].dt.year[0]) == "2023"


def test_money_in_refusals_and_alerts_is_never_in_scientific_notation() -> None:
    # `%chat budget 0.00005` used to answer "spent $0 of $5e-05"; "%chat budget 1" was the
    # advice whatever the shortfall.
    ledger = Ledger(budget=0.00005)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(0.0006156)
    message = str(info.value)
    assert "e-0" not in message
    assert message == (
        "Budget: spent $0.00 of $0.00005; this request may cost up to $0.00062. "
        "Raise it with %chat budget 0.00062."
    )
    ledger.budget = 0.00002
    ledger.record(row(cost=0.000019))
    (alert,) = ledger.alerts()
    assert "e-0" not in alert and "Spent $0.000019 of the $0.00002 budget (95%)" in alert
    with pytest.raises(BudgetExceeded, match=r"over --max-cost \$0.00001: shorten the prompt, "):
        Ledger().reserve(0.0000123, max_cost=0.00001)


@pytest.mark.parametrize(
    ("amount", "typed"),
    [
        (0.0125, "0.013"),
        (0.013, "0.013"),
        (0.0000123, "0.000013"),
        (0.185, "0.19"),
        (1.0, "1.0"),
        (12.3, "13"),
        (1234.0, "1300"),
        (0.0, "0"),
    ],
)
def test_round_up_usd_is_a_number_to_type(amount: float, typed: str) -> None:
    assert round_up_usd(amount) == typed
    assert float(typed) >= amount


def test_upper_bounds_are_rounded_up_not_to_the_cent() -> None:
    # "$0.0011–$0.01" for a bound of $0.0125 read as if it fitted a $0.01 budget.
    from ipychat.core.format import estimate_line
    from ipychat.core.types import Estimate

    assert format_usd_bound(0.0125) == "$0.013" and format_usd(0.0125) == "$0.01"
    assert format_usd_bound(0.3) == "$0.30" and format_usd_bound(2.345) == "$2.35"
    assert format_usd_bound(None) == "unknown"
    line = estimate_line(
        Estimate(
            model="m",
            messages=1,
            prompt_tokens=10,
            max_completion_tokens=100,
            approximate=False,
            cost_low=0.0011,
            cost_high=0.0125,
        )
    )
    assert line.endswith("· $0.0011–$0.013")


def test_refusals_name_the_max_tokens_that_fits_first() -> None:
    # 300 requests of 21 prompt tokens at $0.15/$0.60 per 1M: under $0.01 the replies may
    # hold 50 tokens each ((0.01e6 - 6300 * 0.15) / (300 * 0.6) = 50.3).
    n = max_tokens_within(0.01, 6300, 300, 0.15, 0.60)
    assert n == 50
    assert 6300 * 0.15 + 300 * n * 0.60 <= 0.01e6 < 6300 * 0.15 + 300 * (n + 1) * 0.60
    assert max_tokens_within(0.0001, 6300, 300, 0.15, 0.60) == 0  # prompts alone too dear
    ledger = Ledger(budget=0.01)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(
            0.0125, what="This map", fit=lambda limit: f"--max-tokens {int(limit * 1e4)}"
        )
    assert str(info.value) == (
        "Budget: spent $0.00 of $0.01; this map may cost up to $0.013. --max-tokens 100 fits, "
        "or raise the budget with %chat budget 0.013."
    )
    with pytest.raises(BudgetExceeded) as info:
        Ledger().reserve(0.02, max_cost=0.01, fit=lambda limit: "--max-tokens 7")
    assert str(info.value) == (
        "This request may cost up to $0.02, over --max-cost $0.01: --max-tokens 7 fits, or "
        "raise it to --max-cost 0.020."
    )


# ----- issue 21.9: the usage chart ---------------------------------------------------------------


def test_plot_shows_cumulative_spend_against_the_budget_and_latency_per_model() -> None:
    from datetime import datetime

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ledger = Ledger(budget=0.05)
    start = 1_700_000_000.0
    for offset, model, cost, latency, extra in [
        (0, "gpt-4o-mini", 0.01, 1.0, {}),
        (30, "gpt-4o", 0.02, 2.5, {}),
        (60, "gpt-4o-mini", 0.0, 0.01, {"cached": True}),  # a hit: no latency of its own
        (90, "gpt-4o-mini", 0.004, 1.5, {}),
        (120, "gpt-4o", 0.0, 9.0, {"outcome": "error"}),  # failed: not a latency
    ]:
        ledger.record(row(cost=cost, time=start + offset, model=model, latency=latency, **extra))
    figure = ledger.plot()
    assert isinstance(figure.canvas, FigureCanvasAgg)  # its own Agg canvas, not pyplot's
    spend, latency = figure.axes
    figure.canvas.draw()
    step, budget = spend.get_lines()
    assert list(step.get_ydata()) == pytest.approx([0.0, 0.01, 0.03, 0.03, 0.034, 0.034])
    assert [d.timestamp() for d in step.get_xdata()][1:] == [
        datetime.fromtimestamp(start + s).timestamp() for s in (0, 30, 60, 90, 120)
    ]
    assert list(budget.get_ydata()) == [0.05, 0.05] and budget.get_linestyle() == "--"
    assert spend.get_title() == r"Spent \$0.03 of \$0.05"
    ticks = [t.get_text() for t in spend.get_yticklabels()]
    assert ticks and all(t.startswith(r"\$") and "e-" not in t for t in ticks)
    assert [t.get_text() for t in latency.get_yticklabels()] == ["gpt-4o-mini", "gpt-4o"]
    points = [sorted(c.get_offsets()[:, 0].tolist()) for c in latency.collections]
    assert points == [[1.0, 1.5], [2.5]]


def test_plot_without_requests_or_matplotlib_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipychat.core.errors import ChatError

    with pytest.raises(ChatError, match="No requests yet"):
        Ledger().plot()
    ledger = Ledger()
    ledger.record(row())
    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: import fails
    with pytest.raises(ChatError) as info:
        ledger.plot()
    assert (
        str(info.value) == "Charts need matplotlib, which is not installed: pip install matplotlib"
    )


def test_importing_ipychat_does_not_import_matplotlib() -> None:
    code = (
        "import sys, ipychat, ipychat.notebook.magics, ipychat.notebook.mapmagic, ipychat.session, ipychat.engine.ledger\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
