"""What the persistent ledger (ledger.db) costs a %%chatmap: a cached map with and without it.

    python benchmarks/ledger.py [--rows 2000] [--repeat 15]

One run, on the same rows and the same cache:

1. a map of N rows against FakeOpenAIServer (spawned in a child process) fills a fresh cache;
2. one session on that cache, its ledger's store attached ("with the ledger": rows queued
   for ledger.db, the default) or not ("without": `usage.store = None`, the in-kernel
   ledger only, as before), map by map: each round maps the N rows once each way, every
   row from the cache, the order alternating round by round; the queue is then drained
   (`flush`) and that drain timed on its own: it is the write-behind work the map did not
   wait for;
3. baselines on a scratch database in the same folder, the same N rows: one transaction
   for all of them (what the writer thread does, at `rows_per_write` a transaction) and
   one transaction per row (what writing each row through as it is made would cost).

Columns: wall seconds of `session.map` (median and best of the rounds), process CPU time
per row (the writer thread included: it runs during the map), rows/s. Goal (issue 18):
the ledger must not slow a %%chatmap noticeably: median wall time with the ledger within
5% of without. The machine may be shared: compare within this run, and the CPU ratio
printed beside the verdict (wall times on a loaded machine swing by more than 5%).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from ipychat.engine.cache import ResponseCache
from ipychat.engine.ledger import LedgerRow
from ipychat.engine.ledgerdb import LedgerStore
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer

TEMPLATE = "Classify the sentiment of this review as positive, negative or neutral: {review}"
MODEL = "gpt-4o-mini"
GOAL = 1.05  # with / without, median wall time


def reviews(n: int) -> pd.DataFrame:
    words = ["great", "awful", "fine", "slow", "tasty", "cold", "friendly", "noisy"]
    text = [
        f"Review {i}: the food was {words[i % 8]}, service {words[i * 7 % 8]}." for i in range(n)
    ]
    return pd.DataFrame({"review": text})


def timed_map(session: ChatSession, df: pd.DataFrame) -> tuple[float, float]:
    """(wall s, process CPU s) of one cached `session.map`."""
    cpu, start = time.process_time(), time.perf_counter()
    out = session.map(df, TEMPLATE, output="sentiment", max_tokens=5, concurrency=64)
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    assert out["sentiment"].notna().all()
    return wall, used


def baselines(folder: Path, n: int) -> tuple[float, float]:
    """(one transaction for n rows, one transaction per row) in seconds, on a scratch db."""
    rows = [
        LedgerRow(time=time.time(), thread="map", model=MODEL, host="h", cost=0.0001, cached=True)
        for _ in range(n)
    ]
    store = LedgerStore(folder / "scratch")
    values = [store.row_values(r, None) for r in rows]  # what the writer thread inserts
    store.append(rows[:1])
    store.close()  # made the database and its schema
    db = sqlite3.connect(store.path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    marks = ", ".join("?" * len(values[0]))
    insert = f"INSERT INTO requests ({', '.join(store.columns)}) VALUES ({marks})"
    start = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.executemany(insert, values)
    db.execute("COMMIT")
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for value in values:
        db.execute("BEGIN IMMEDIATE")
        db.execute(insert, value)
        db.execute("COMMIT")
    single = time.perf_counter() - start
    db.close()
    return batched, single


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    n, repeat = args.rows, max(1, args.repeat)
    df = reviews(n)
    folder = Path(tempfile.mkdtemp(prefix="ipychat-bench-ledger-"))
    with FakeOpenAIServer.spawn(latency=0.01) as server:
        settings = {"base_url": server.base_url, "model": MODEL}
        filler = ChatSession(Settings(**settings), cache=ResponseCache(folder))  # type: ignore[arg-type]
        timed_map(filler, df)  # fills the cache (and the ledger)
        filler.close()
        # One session, its ledger's store attached or not, map by map: two sessions would
        # differ by more than the store (which one was made first, what the collector holds).
        session = ChatSession(Settings(**settings), cache=ResponseCache(folder))  # type: ignore[arg-type]
        store = session.usage.store
        assert store is not None
        timed_map(session, df)  # warm: imports, first connections
        store.flush()
        with_ledger: list[tuple[float, float]] = []
        without: list[tuple[float, float]] = []
        drains: list[float] = []
        for round_ in range(repeat):
            order = [(store, with_ledger), (None, without)]
            for attached, times in order if round_ % 2 == 0 else order[::-1]:
                session.usage.store = attached
                times.append(timed_map(session, df))
                start = time.perf_counter()
                assert store.flush()
                if attached is not None:
                    drains.append(time.perf_counter() - start)
        session.usage.store = store
        sent = server.stats().chat
        recorded = sum(1 for r in store.rows() if r["session"] == store.session)
        session.close()
    repeat_with = repeat + 1  # the warm-up map wrote its rows too
    assert recorded == n * repeat_with, recorded  # every row of every map, none lost
    batched, single = baselines(folder, n)

    print(f"{n:,}-row cached map, {repeat} rounds each, same run (requests sent: {sent:,})")
    print(f"{'run':<34}{'wall s':>9}{'best s':>9}{'rows/s':>11}{'CPU µs/row':>12}")

    def line(name: str, runs: list[tuple[float, float]]) -> float:
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        best = min(w for w, _ in runs)
        print(f"{name:<34}{wall:>9.4f}{best:>9.4f}{n / wall:>11,.0f}{cpu / n * 1e6:>12.1f}")
        return wall

    with_wall = line("map, with the SQLite ledger", with_ledger)
    without_wall = line("map, without (in memory only)", without)
    print(
        f"{'drain after the map (flush)':<34}{statistics.median(drains):>9.4f}"
        f"{min(drains):>9.4f}   (write-behind: the map did not wait for it)"
    )
    print("baselines, the same rows into a scratch ledger.db:")
    print(f"  {'one transaction for all':<32}{batched:>9.4f}{n / batched:>20,.0f} rows/s")
    print(f"  {'one transaction per row':<32}{single:>9.4f}{n / single:>20,.0f} rows/s")
    ratio = with_wall / without_wall
    cpu_ratio = statistics.median(c for _, c in with_ledger) / statistics.median(
        c for _, c in without
    )
    verdict = "met" if ratio <= GOAL else "MISSED"
    print(
        f"with / without: {ratio:.3f} (median wall); goal <= {GOAL}: {verdict}; by CPU time "
        f"(the steadier figure on a shared machine): {cpu_ratio:.3f}. Rows recorded: "
        f"{recorded:,} of {n * repeat_with:,}."
    )


if __name__ == "__main__":
    main()
