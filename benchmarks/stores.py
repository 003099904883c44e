"""Reading and writing a batch of cache entries: the disk store beside the Redis store.

    python benchmarks/stores.py [--keys 10000] [--repeat 7] [--url redis://...]

One run, the same 10,000 entries (reply-shaped JSON, ~400 bytes) in both stores:

- `set_many` of all of them (disk: one SQLite transaction; Redis: pipelined SET);
- `get_many` of all of them, warm (the median and best of `--repeat`), and from a new
  client (the first call: opening the database / connecting and PING);
- baselines in the same run: `ResponseCache.get_many` (what the disk store wraps) and
  redis-py's own pipelined MGET of the same keys without decoding (the floor of Redis).

Without `--url` a private `redis-server` is started on 127.0.0.1 (random port, a
password, no persistence) and stopped at the end, so Redis is on loopback: over a network
add one round trip per `get_many` (its MGETs go in one pipeline). Times are wall seconds
with the process CPU time beside them; on a shared machine the CPU time is steadier.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engine"))  # the real redis-server the tests start

import redis  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from ipychat.engine.cache import ResponseCache  # noqa: E402
from ipychat.engine.stores import CacheStore, open_store  # noqa: E402
from ipychat.engine.stores.redis import parse_redis_url  # noqa: E402


def entries(n: int) -> list[tuple[str, dict[str, Any]]]:
    now = time.time()
    return [
        (
            hashlib.sha256(f"row {i}".encode()).hexdigest(),
            {
                "text": f"Row {i}: positive. The review praises the food and the service.",
                "model": "gpt-4o-mini-2024-07-18",
                "request_model": "gpt-4o-mini",
                "finish_reason": "stop",
                "usage": {"prompt_tokens": 31, "completion_tokens": 12, "cached_tokens": 0},
                "cost": 0.0000118,
                "created": now,
                "host": "api.openai.com",
            },
        )
        for i in range(n)
    ]


def clock(run: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def repeat(times: int, run: Callable[[], object]) -> list[tuple[float, float]]:
    return [clock(run) for _ in range(times)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--url", help="an existing Redis (its database is NOT emptied)")
    args = parser.parse_args()
    n, items = args.keys, entries(args.keys)
    keys = [key for key, _ in items]

    with tempfile.TemporaryDirectory(prefix="ipychat-stores-") as tmp:
        server = None
        url = args.url
        if url is None:
            (Path(tmp) / "redis").mkdir()
            server = RedisServer(Path(tmp) / "redis").start()
            url = server.url
        try:
            rows = run_all(Path(tmp) / "disk", f"{url}?prefix=ipychat-bench:", items, keys, args)
        finally:
            if server is not None:
                server.stop()

    print(
        f"{n:,} entries of ~{len(str(items[0][1]))} bytes; Redis on {'loopback' if server else 'the given URL'}"
    )
    print(f"{'':<40}{'wall s':>9}{'keys/s':>12}{'best keys/s':>13}{'CPU µs/key':>12}")
    for name, runs in rows:
        walls = [w for w, _ in runs]
        mid, best = statistics.median(walls), min(walls)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:<40}{mid:>9.4f}{n / mid:>12,.0f}{n / best:>13,.0f}{cpu / n * 1e6:>12.1f}")


def run_all(
    directory: Path, url: str, items: list[tuple[str, dict[str, Any]]], keys: list[str], args: Any
) -> list[tuple[str, list[tuple[float, float]]]]:
    rows: list[tuple[str, list[tuple[float, float]]]] = []
    for name, target in (("disk", str(directory)), ("redis", url)):
        store: CacheStore = open_store(target)
        store.clear()
        rows.append((f"{name}: set_many", [clock(lambda s=store: s.set_many(items))]))
        got = store.get_many(keys)
        assert len(got) == len(keys), f"{name}: {len(got)} of {len(keys)} read back"
        rows.append(
            (f"{name}: get_many, warm", repeat(args.repeat, lambda s=store: s.get_many(keys)))
        )
        store.close()
        fresh = []
        for _ in range(args.repeat):
            new = open_store(target)
            fresh.append(clock(lambda s=new: s.get_many(keys)))
            new.close()
        rows.append((f"{name}: get_many, new client", fresh))

    cache = ResponseCache(directory)
    rows.append(
        ("baseline: ResponseCache.get_many", repeat(args.repeat, lambda: cache.get_many(keys)))
    )
    cache.close()
    target = parse_redis_url(url)
    client = redis.Redis(
        host=target.host,
        port=target.port,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        ssl_ca_certs=target.ca_certs,
    )
    prefix = target.prefix

    def raw_mget() -> None:
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(keys), 1000):
            pipe.mget([prefix + key for key in keys[start : start + 1000]])
        pipe.execute()

    rows.append(("baseline: redis-py MGET, no decoding", repeat(args.repeat, raw_mget)))
    client.close()
    for target_name in (url, str(directory)):
        done = open_store(target_name)
        done.clear()
        done.close()
    return rows


if __name__ == "__main__":
    main()
