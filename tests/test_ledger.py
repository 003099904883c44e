"""The usage ledger: reservations keep budgets, summaries and alerts."""

from __future__ import annotations

import contextlib
import threading

import pytest

from ipychat.errors import BudgetExceeded
from ipychat.ledger import Ledger, LedgerRow


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
        match=r"spent \$0.5 of \$1 \(\$0.3 in flight\); this request may cost up to \$0.3",
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
