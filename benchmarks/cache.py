"""Replaying a %%chatmap from a warm cache, beside the cold run that filled it.

    python benchmarks/cache.py [--rows 10000] [--latency 0.05] [--concurrency 64]

One run: a cold map of N rows against FakeOpenAIServer (spawned in a child process so its
CPU is not ours), then the same map again, served entirely from the on-disk cache, then the
same again in a fresh session (a new kernel: nothing in memory, everything from disk).
Goal (issue 5): the warm replay above 20,000 rows/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd

from ipychat.cache import ResponseCache
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer

TEMPLATE = "Classify the sentiment of this review as positive, negative or neutral: {review}"


def reviews(n: int) -> pd.DataFrame:
    words = ["great", "awful", "fine", "slow", "tasty", "cold", "friendly", "noisy"]
    text = [
        f"Review {i}: the food was {words[i % 8]} and the service {words[(i * 7) % 8]}."
        for i in range(n)
    ]
    return pd.DataFrame({"review": text})


def timed_map(
    session: ChatSession, df: pd.DataFrame, concurrency: int
) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    out = session.map(df, TEMPLATE, output="sentiment", max_tokens=5, concurrency=concurrency)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    df = reviews(args.rows)
    cache_dir = tempfile.mkdtemp(prefix="ipychat-bench-cache-")
    server = FakeOpenAIServer.spawn(latency=args.latency)
    try:
        settings = Settings(base_url=server.base_url, model="gpt-4o-mini")
        session = ChatSession(settings, cache=ResponseCache(cache_dir))
        cold, first = timed_map(session, df, args.concurrency)
        warm, second = timed_map(session, df, args.concurrency)
        session.close()
        fresh_session = ChatSession(
            Settings(base_url=server.base_url, model="gpt-4o-mini"), cache=ResponseCache(cache_dir)
        )
        fresh, third = timed_map(fresh_session, df, args.concurrency)
        fresh_session.close()
        sent = server.stats().chat
    finally:
        server.stop()

    assert first["sentiment"].notna().all() and second["sentiment"].equals(first["sentiment"])
    assert third["sentiment"].equals(first["sentiment"])
    ideal = args.rows / args.concurrency * args.latency
    print(
        f"{args.rows:,} rows, {args.latency * 1000:.0f} ms latency, concurrency {args.concurrency}"
    )
    print(f"{'run':<34}{'wall s':>9}{'rows/s':>12}")
    print(
        f"{'cold (FakeOpenAIServer)':<34}{cold:>9.2f}{args.rows / cold:>12,.0f}   ideal {ideal:.2f} s"
    )
    print(f"{'warm replay, same session':<34}{warm:>9.2f}{args.rows / warm:>12,.0f}")
    print(f"{'warm replay, fresh session':<34}{fresh:>9.2f}{args.rows / fresh:>12,.0f}")
    print(f"requests the server saw: {sent:,} (the replays sent none)")
    print(
        f"warm replay speed-up over cold: {cold / warm:.0f}x; goal > 20,000 rows/s: "
        f"{'met' if args.rows / max(warm, fresh) > 20_000 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
