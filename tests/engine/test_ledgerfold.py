"""The ledger folds its older rows into totals: memory flat in the number of requests, and
every view (summary, `%chat usage`, spent/saved, alerts, budgets, to_frame, plot's rows)
the same as an unfolded ledger of the same rows shows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ipychat.core.errors import BudgetExceeded
from ipychat.core.format import usage_markdown
from ipychat.engine.ledger import Ledger, LedgerRow
from ipychat.engine.ledgerdb import LedgerStore

MODELS = ("gpt-4o-mini", "gpt-4o", "local-unpriced")


def mixed_rows(n: int, start: float) -> list[LedgerRow]:
    """Rows of every kind the views treat apart: three models (one with no known price),
    cache hits, errors, interruptions, Batch API rows, latencies that vary, over minutes."""
    rows = []
    for i in range(n):
        model = MODELS[i % 3]
        cached = i % 5 == 0
        outcome = "error" if i % 11 == 0 else "interrupted" if i % 13 == 0 else "ok"
        cost = None if model == "local-unpriced" else (0.0 if cached else 0.0001 * (i % 7 + 1))
        rows.append(
            LedgerRow(
                time=start + i * 7.3,  # ~70 rows cross several minutes
                thread="batch" if i % 17 == 0 else f"t{i % 4}",
                model=model,
                host="127.0.0.1:8000",
                prompt_tokens=10 + i % 9,
                completion_tokens=3 + i % 5,
                cost=cost,
                saved=0.0002 * (i % 3) if cached else 0.0,
                cached=cached,
                latency=0.05 + (i * 37 % 100) / 250,
                outcome=outcome,
            )
        )
    return rows


def test_the_ledger_keeps_a_bounded_number_of_rows_however_many_it_records() -> None:
    ledger = Ledger(fold_at=10)
    for row in mixed_rows(1_000, 0.0):
        ledger.record(row)
    ledger.record_many(mixed_rows(500, 10_000.0))
    assert len(ledger.rows) <= 10 and len(ledger) == 1_500
    assert ledger.folded == 1_500 - len(ledger.rows)
    assert ledger.rows[-1].time == 10_000.0 + 499 * 7.3  # the newest are the ones kept


def test_folding_changes_no_total_summary_or_alert() -> None:
    rows = mixed_rows(997, 1_000_000.0)
    folded, reference = Ledger(budget=10.0, fold_at=16), Ledger(budget=10.0, fold_at=10**9)
    for i, row in enumerate(rows):
        for ledger in (folded, reference):
            ledger.record(row) if i % 3 else ledger.record_many([row])
        if i % 97 == 0:  # alerts compared as they are raised, along the way
            assert folded.alerts() == reference.alerts()
    assert folded.folded > 900 and reference.folded == 0
    assert len(folded) == len(reference) == 997
    assert folded.summary() == reference.summary()
    assert folded.spent == reference.spent and folded.saved == reference.saved
    assert usage_markdown(folded) == usage_markdown(reference)
    # The same budget refusal, to the cent, from the totals as from the rows.
    with pytest.raises(BudgetExceeded) as one:
        folded.reserve(9.99)
    with pytest.raises(BudgetExceeded) as other:
        reference.reserve(9.99)
    assert str(one.value) == str(other.value)


def test_a_latency_alert_still_fires_on_folded_history() -> None:
    """The session median comes from folded latencies; the recent p95 from the kept rows."""
    base = dict(thread="main", model="m", host="h", cost=0.0)
    calm = [LedgerRow(time=float(i), latency=1.0, **base) for i in range(200)]
    slow = [LedgerRow(time=300.0 + i, latency=5.0, **base) for i in range(20)]
    folded, reference = Ledger(fold_at=30), Ledger()
    for ledger in (folded, reference):
        ledger.record_many(calm)
        ledger.record_many(slow)
    assert folded.folded >= 190
    (alert,) = folded.alerts()
    assert alert == reference.alerts()[0] and "Latency is up" in alert


def test_budgets_frames_and_plots_of_a_folded_session_come_from_the_record(tmp_path: Path) -> None:
    now = time.time()
    rows = mixed_rows(300, now - 300 * 7.3)
    store = LedgerStore(tmp_path / "cache", rows_per_write=50, interval=0.01)
    folded, reference = Ledger(store=store, fold_at=20), Ledger()
    try:
        folded.set_period_budget("month", 100.0)
        for row in rows:
            folded.record(row)
            reference.record(row)
        other = LedgerStore(tmp_path / "cache")  # another kernel's spend counts too
        other.append([mixed_rows(2, now)[1]])  # $0.0002
        other.close()
        assert folded.folded >= 280
        (period,) = folded.periods()
        own = sum(r.cost for r in rows if r.cost and r.time >= _month_start(now))
        assert period[0] == "month" and period[2] == pytest.approx(own + 0.0002, rel=1e-9)
        frame, expected = folded.to_frame(), reference.to_frame()
        assert len(frame) == 300 and frame.drop(columns="time").equals(
            expected.drop(columns="time")
        )
        assert folded._session_rows() == reference.rows  # what plot() draws
    finally:
        store.close()


def test_without_a_record_the_frame_holds_the_rows_kept() -> None:
    ledger = Ledger(fold_at=10)
    ledger.record_many(mixed_rows(100, 0.0))
    assert len(ledger.to_frame()) == len(ledger.rows) <= 10 and len(ledger) == 100


def _month_start(now: float) -> float:
    from ipychat.core.periods import period_start

    return period_start("month", now)
