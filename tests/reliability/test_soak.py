"""The soak: a 10,000-row %%chatmap against a server that fails 10% of requests at random
(statuses, resets, hangs, broken bodies, 429s) with random latency.

Checked: every row ends answered or with its error recorded; no row is sent again after it
succeeded (counted per prompt on the server's own log); memory stays flat (RSS after 2,000
rows against the end) and its peak is reported; the ledger adds up to the server's count.
The server runs in a child process, so the memory measured is the kernel side's alone.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
from _support import (
    Tally,
    is_one_line,
    make_session,
    peak_rss_mb,
    prompt_of,
    rss_mb,
    run_cell,
    shell_on,
    succeeded,
)

from ipychat.session import reset_session
from ipychat.testing import FakeOpenAIServer, Fault

pytestmark = pytest.mark.slow

ROWS = 10_000
FAULT_RATE = 0.10
FAULTS = [
    Fault.status(500),
    Fault.status(502),
    Fault.status(503),
    Fault.status(429, headers={"retry-after-ms": "50"}),
    Fault.reset(),
    Fault.reset_mid_stream(),
    Fault.hang(),
    Fault.truncate(),
    Fault.malformed_json(),
    Fault.error_mid_stream(),
]
# Growth allowed between the RSS after 2,000 rows and at the end: the ledger keeps a row per
# request (about 11,000 small dataclasses, a few MB) and the frame gains its column.
RSS_TOLERANCE_MB = 40.0


def test_soak_10000_rows_with_random_faults(tmp_path: Path, tally: Tally) -> None:
    server = FakeOpenAIServer.spawn(
        fault_rate=FAULT_RATE, faults=FAULTS, seed=20240610, latency=(0.0, 0.02)
    )
    session = make_session(server.base_url, tmp_path / "cache", max_retries=3, reply_timeout=1.0)
    samples: list[tuple[int, float]] = []
    done = threading.Event()

    def sample() -> None:  # RSS against rows answered (one ledger row each), 20 times a second
        while not done.wait(0.05):
            samples.append((sum(1 for r in session.usage.rows if r.outcome == "ok"), rss_mb()))

    try:
        with shell_on(session) as shell:
            frame = pd.DataFrame({"text": [f"review number {i}" for i in range(ROWS)]})
            shell.user_ns["reviews"] = frame
            sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
            started = time.monotonic()
            sampler.start()
            try:
                shown = run_cell(
                    shell, "chatmap", "reviews -o label --max-tokens 5", "Classify {text}"
                )
            finally:
                done.set()
                sampler.join()
            elapsed = time.monotonic() - started
            end_rss = rss_mb()
            out = shell.user_ns["reviews"]
        requests = server.requests
        stats = server.stats()
    finally:
        session.close()
        reset_session(None)
        server.stop()

    # Every row ends answered or with its error recorded; answers belong to their own row.
    errors = out["_error"] if "_error" in out else pd.Series([None] * ROWS, index=out.index)
    answered = out["label"].notna() & errors.isna()
    failed = errors.notna() & out["label"].isna()
    lost = int(ROWS - answered.sum() - failed.sum())
    tally.rows_checked += ROWS
    tally.rows_lost += lost
    assert lost == 0
    for i in range(ROWS):
        if answered.iat[i]:
            label = out["label"].iat[i]
            assert f"Echo: Classify review number {i}".startswith(label), (i, label)
    assert all(is_one_line(str(e)) for e in errors.dropna())
    assert f"Done: {ROWS:,} rows in " in shown

    # No row is sent again after it succeeded: per prompt, one whole reply at most, and it
    # is the last request of that prompt.
    chat = [r for r in requests if r.path.endswith("/chat/completions")]
    by_prompt: defaultdict[str, list[bool]] = defaultdict(list)
    for r in sorted(chat, key=lambda r: r.time):
        by_prompt[prompt_of(r)].append(succeeded(r))
    duplicates = sum(max(0, sum(ok) - 1) for ok in by_prompt.values())
    resent = sum(1 for ok in by_prompt.values() if True in ok and ok.index(True) != len(ok) - 1)
    tally.duplicates += duplicates + resent
    assert duplicates == 0 and resent == 0
    assert sum(1 for ok in by_prompt.values() if any(ok)) == int(answered.sum())
    assert len(by_prompt) == ROWS

    # The ledger adds up to the server's own count: one row per request the server saw.
    ledger = [r for r in session.usage.rows if not r.cached]
    outcomes = Counter(r.outcome for r in ledger)
    assert len(ledger) == stats.chat == len(chat)
    assert outcomes["ok"] == sum(1 for r in chat if succeeded(r))

    # Memory stays flat: RSS once 2,000 rows are answered against the end.
    at_2000 = next((rss for n, rss in samples if n >= 2_000), None)
    assert at_2000 is not None, samples[-5:]
    growth = end_rss - at_2000
    peak = peak_rss_mb()
    error_kinds = Counter(str(e).split(" (")[0][:60] for e in errors.dropna())
    tally.soak.update(
        {
            "rows": (
                f"{ROWS:,} in {elapsed:.1f} s ({ROWS / elapsed:,.0f} rows/s): "
                f"{int(answered.sum()):,} answered, {int(failed.sum())} with a recorded error "
                f"{dict(error_kinds) if error_kinds else ''}"
            ),
            "server": (
                f"{stats.chat:,} requests, {stats.faults:,} faults injected "
                f"({FAULT_RATE:.0%} of {len(FAULTS)} kinds), {stats.no_response} unanswered"
            ),
            "ledger": f"{len(ledger):,} rows = server {stats.chat:,} requests; ok {outcomes['ok']:,}",
            "memory": (
                f"peak RSS {peak:.0f} MB; RSS {at_2000:.0f} MB after 2,000 rows → "
                f"{end_rss:.0f} MB at the end ({growth:+.1f} MB, tolerance {RSS_TOLERANCE_MB:.0f})"
            ),
        }
    )
    assert growth < RSS_TOLERANCE_MB, f"RSS grew {growth:.1f} MB after row 2,000"
