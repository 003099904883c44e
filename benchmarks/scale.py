"""Past one kernel: the Dask map beside the single-kernel map, and Parquet out of core.

Three parts, each against a FakeOpenAIServer spawned in a child process (a fresh one, a
fresh quota, per run), with a real redis-server (random port) as the shared cache and pace:

  rate-limited   ROWS_LIMITED rows, RPM_LIMIT enforced over 1-second windows (refused
                 requests count, as at OpenAI), 100 ms latency, headers on. The single
                 kernel (session.map on pandas), cold (its first map: imports, the
                 tokenizer, the connections) and warm (as after %load_ext and a first
                 map), beside a Dask map on a LocalCluster of 4 worker processes that
                 share one pace through Redis. E = T_ideal / T, T_ideal = rows / (RPM /
                 60) + one latency; the share of requests answered 429; rows lost (not
                 answered); from the server's log: seconds from the call to the first
                 request ("start"), from the last request to the return ("tail"), and
                 the steady E between them.
  unlimited      ROWS_FREE rows, no limits, zero latency: rows per second of the single
                 kernel and of Dask maps on 1, 2 and 4 worker processes, and CPU seconds
                 per row (the mapping processes: the kernel, or the workers and the kernel).
  out-of-core    --parquet-rows rows (default 1,000,000) of Parquet, mapped into Parquet
                 parts (session.map(path, …, to=…)) against a zero-latency server, in a
                 child process: its peak RSS beside the data's size, and rows per second.

Dask runs are warm: each cluster maps a few rows first (worker start-up, imports and
connections are not the map's). Every map starts with an empty cache (its own prefix).

Goals (issue 19): rate-limited with 4 workers E >= 0.95, < 1% of requests 429, 0 rows
lost; unlimited: rows/s grow with workers (the ceiling: this machine's 2 cores, shared
with the fake server and Redis); out-of-core: 1,000,000 rows with peak RSS under 1 GB.

Run: python benchmarks/scale.py             (about 15 minutes, most of it out-of-core)
     python benchmarks/scale.py --quick     (smaller sizes: a few minutes)
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engine"))  # the real redis-server the tests start

import pandas as pd  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from ipychat.engine.stores.counted import StoreCache  # noqa: E402
from ipychat.engine.stores.redis import RedisStore  # noqa: E402
from ipychat.map.sharedpace import HEADROOM, late_turns  # noqa: E402
from ipychat.session import ChatSession, Settings  # noqa: E402
from ipychat.testing import FakeOpenAIServer  # noqa: E402

MODEL = "gpt-4o-mini"
RPM_LIMIT = 6_000
LATENCY = 0.1


def frame(rows: int, tag: str) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{tag} review number {i}" for i in range(rows)]})


def session(fake: FakeOpenAIServer, url: str, prefix: str) -> ChatSession:
    store = RedisStore(f"{url}?prefix={prefix}:")
    return ChatSession(Settings(base_url=fake.base_url, model=MODEL), cache=StoreCache(store))


class Cluster:
    """A LocalCluster of `n` worker processes (one thread each) and its client."""

    def __init__(self, n: int) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            processes=True, n_workers=n, threads_per_worker=1, dashboard_address=None
        )
        self.client = Client(self.cluster)

    def cpu(self) -> float:
        return sum(self.client.run(time.process_time).values())

    def late(self) -> int:
        """The workers' shared-pace turns taken again after a late wake-up, so far."""
        return sum(self.client.run(late_turns).values())

    def close(self) -> float:
        """Close; the seconds it took (a worker its nanny had to kill: 4 s and more)."""
        started = time.perf_counter()
        self.client.close()
        self.cluster.close()
        return time.perf_counter() - started


def dask_map(chat: ChatSession, df: pd.DataFrame, partitions: int) -> pd.DataFrame:
    import dask.dataframe as dd

    return chat.map(dd.from_pandas(df, npartitions=partitions), "Sum up: {text}", "s").compute()


def measure(run: Any, cluster: Cluster | None) -> tuple[Any, float, float]:
    """The result, wall seconds and CPU seconds (this process, and the workers if any)."""
    cpu0 = time.process_time() + (cluster.cpu() if cluster else 0.0)
    started = time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    cpu = time.process_time() + (cluster.cpu() if cluster else 0.0) - cpu0
    return result, wall, cpu


def warm_kernel(chat: ChatSession, fake: Any) -> None:
    """As a notebook's kernel is when it maps: `%load_ext`'s warm-up (tokenizer, client
    modules), and one small map on this server (the client's connections, the limits learnt
    from the headers), then its requests out of the server's window and log."""
    from ipychat.notebook import warmup

    warmup.warm(chat)
    chat.map(frame(8, "warm"), "Sum up: {text}", "s")
    time.sleep(1.5)
    fake.reset_log()


def timeline(fake: Any, started: float, ended: float) -> tuple[float, float, float, int]:
    """From the server's log: seconds from the map's start to its first request, from its
    last request to the map's end, the steady rate between them (requests/s), and the most
    requests that arrived within one second (the server's window)."""
    times = sorted(r.time for r in fake.chat_requests)
    if len(times) < 2:
        return 0.0, 0.0, 0.0, len(times)
    steady = (len(times) - 1) / (times[-1] - times[0])
    peak = max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))
    return times[0] - started, ended - times[-1], steady, peak


def limited(url: str, rows: int, workers: int) -> None:
    print(f"\nRate-limited: {rows:,} rows, {RPM_LIMIT:,} RPM over 1 s windows, {LATENCY} s latency")
    print(
        f"{'':<28}{'E':>7}{'429 share':>11}{'lost':>6}{'wall s':>9}"
        f"{'start s':>9}{'tail s':>8}{'steady E':>10}{'peak 1 s':>10}"
    )
    ideal = rows / (RPM_LIMIT / 60) + LATENCY
    for label in ("single kernel, cold", "single kernel", f"Dask, {workers} workers"):
        cluster = Cluster(workers) if label.startswith("Dask") else None
        try:
            with FakeOpenAIServer.spawn(rpm=RPM_LIMIT, latency=LATENCY, window=1) as fake:
                chat = session(fake, url, f"limited-{label[:4]}-{time.time_ns()}")
                df = frame(rows, "limited")
                if cluster is not None:  # warm: workers started, imported, connected
                    dask_map(chat, frame(workers * 2, "warm"), workers)
                    time.sleep(1.5)  # the warm-up's requests leave the window
                    fake.reset_log()
                    run = lambda chat=chat, df=df: dask_map(chat, df, workers * 4)  # noqa: E731
                else:
                    if not label.endswith("cold"):
                        warm_kernel(chat, fake)
                    run = lambda chat=chat, df=df: chat.map(df, "Sum up: {text}", "s")  # noqa: E731
                late = cluster.late() if cluster is not None else 0
                started = time.monotonic()
                out, wall, _ = measure(run, None)
                start, tail, steady, peak = timeline(fake, started, time.monotonic())
                late = cluster.late() - late if cluster is not None else 0
                stats = fake.stats()
                chat.close()
        finally:
            if cluster is not None:
                closing = cluster.close()
        lost = int(out["s"].isna().sum())
        share = stats.rate_limited / max(1, stats.chat)
        print(
            f"{label:<28}{ideal / wall:>7.3f}{share:>11.2%}{lost:>6}{wall:>9.2f}"
            f"{start:>9.2f}{tail:>8.2f}{steady / (RPM_LIMIT / 60):>10.3f}"
            f"{peak / (RPM_LIMIT / 60):>10.0%}"
        )
    print(
        f"(peak 1 s: the most requests in one second, of the limit's; the shared pace runs at "
        f"{HEADROOM:.0%}. Dask: {late} turns taken again after a late wake-up; the "
        f"{workers}-worker cluster closed in {closing:.1f} s)"
    )


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of another process so far (the server, Redis)."""
    import psutil

    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def unlimited(url: str, rows: int, counts: list[int], redis_pid: int | None) -> None:
    print(f"\nUnlimited, zero latency: {rows:,} rows")
    print(
        f"{'':<28}{'rows/s':>9}{'CPU ms/row':>12}{'wall s':>9}"
        f"{'server ms':>11}{'Redis ms':>10}{'cores busy':>12}"
    )
    with FakeOpenAIServer.spawn() as fake:

        def row(label: str, run: Any, cluster: Cluster | None) -> Any:
            others = process_cpu(fake.pid), process_cpu(redis_pid)
            out, wall, cpu = measure(run, cluster)
            server = process_cpu(fake.pid) - others[0]
            redis = process_cpu(redis_pid) - others[1]
            print(
                f"{label:<28}{rows / wall:>9,.0f}{cpu / rows * 1e3:>12.2f}{wall:>9.2f}"
                f"{server / rows * 1e3:>11.2f}{redis / rows * 1e3:>10.2f}"
                f"{(cpu + server + redis) / wall:>12.2f}"
            )
            return out

        chat = session(fake, url, f"free-single-{time.time_ns()}")
        df = frame(rows, "single")
        chat.map(frame(50, "warm-single"), "Sum up: {text}", "s")
        row("single kernel", lambda: chat.map(df, "Sum up: {text}", "s"), None)
        chat.close()
        for n in counts:
            cluster = Cluster(n)
            try:
                chat = session(fake, url, f"free-{n}-{time.time_ns()}")
                dask_map(chat, frame(n * 2, f"warm-{n}"), n)
                df = frame(rows, f"dask-{n}")
                label = f"Dask, {n} worker{'s' if n > 1 else ''}"
                out = row(label, lambda: dask_map(chat, df, n * 4), cluster)  # noqa: B023
                chat.close()
            finally:
                cluster.close()
            assert out["s"].notna().all()
    print(
        "(CPU ms/row: the mapping processes, the kernel with Dask's scheduler and the "
        "workers; server and Redis ms: theirs per row; cores busy: all of it over the wall "
        f"time, of this machine's {os.cpu_count()})"
    )


def out_of_core(rows: int, batch_rows: int) -> None:
    """In a child process, so that its peak RSS is the map's alone."""
    with tempfile.TemporaryDirectory(prefix="ipychat-scale-") as tmp:
        data = Path(tmp) / "data.parquet"
        write_parquet(data, rows)
        size = data.stat().st_size
        child = subprocess.run(
            [sys.executable, __file__, "--child-out-of-core", str(data), str(batch_rows), tmp],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        report = json.loads(child.stdout.strip().splitlines()[-1])
    in_memory = report["in_memory"]
    print(
        f"\nOut-of-core: {rows:,} rows of Parquet ({size / 1e6:,.1f} MB on disk, "
        f"{in_memory / 1e6:,.0f} MB as one pandas frame with the replies), batches of "
        f"{batch_rows:,} rows"
    )
    print(
        f"peak RSS {report['rss'] / 1e6:,.0f} MB (before the map, after the imports and one "
        f"row: {report['before'] / 1e6:,.0f} MB) · {report['rows'] / report['wall']:,.0f} rows/s · "
        f"{report['wall']:,.1f} s · {report['parts']:,} parts · {report['failed']:,} failed"
    )
    # Bounded memory is flat memory: the RSS as the parts were written, a quarter at a time.
    along = " · ".join(f"{q}%: {mb:,.0f} MB" for q, mb in report["along"])
    print(f"RSS along the map (parts written): {along}; ledger rows kept {report['kept']:,}")


def rss_now() -> int:
    """This process's resident set now, in bytes (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def write_parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for start in range(0, rows, 100_000):
            texts = [f"parquet review number {i}" for i in range(start, min(rows, start + 100_000))]
            writer.write_table(pa.table({"text": texts}))


class RssAlong:
    """RSS samples (every 0.2 s) against the number of parts written so far, in a thread;
    every 2 s it also empties the fake server's request log (`forget`): the server keeps
    every request it answered (~2 KB each), which would grow without bound in its process,
    and hand them all over to this one when it stops (the peak RSS would be the log's)."""

    def __init__(self, directory: Path, forget: Any) -> None:
        self.directory = directory
        self.forget = forget
        self.samples: list[tuple[int, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        last = time.monotonic()
        while not self.done.wait(0.2):
            parts = len(list(self.directory.glob("part-*.parquet")))
            self.samples.append((parts, rss_now()))
            if time.monotonic() - last > 2.0:
                self.forget()
                last = time.monotonic()

    def stop(self, parts: int) -> list[tuple[int, float]]:
        """The highest RSS seen while each quarter of the parts was being written, in MB."""
        self.done.set()
        self.thread.join()
        out = []
        for q in (25, 50, 75, 100):
            upto = [rss for n, rss in self.samples if n <= parts * q // 100]
            out.append((q, max(upto, default=0) / 1e6))
        return out


def child_out_of_core(data: str, batch_rows: int, tmp: str) -> None:
    with FakeOpenAIServer.spawn() as fake:
        from ipychat.engine.cache import ResponseCache

        chat = ChatSession(
            Settings(base_url=fake.base_url, model=MODEL), cache=ResponseCache(Path(tmp) / "c")
        )
        chat.map(pd.DataFrame({"text": ["warm"]}), "Sum up: {text}", "s")  # imports, client
        before = rss_now()
        along = RssAlong(Path(tmp) / "out", fake.reset_log)
        started = time.perf_counter()
        result: Any = chat.map(
            data, "Sum up: {text}", "s", to=Path(tmp) / "out", batch_rows=batch_rows
        )
        wall = time.perf_counter() - started
        marks = along.stop(result.parts)
        kept = len(chat.usage.rows)
        chat.close()
        fake.reset_log()  # nothing to hand over when it stops: see RssAlong
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    sample = pd.read_parquet(Path(tmp) / "out" / "part-00000.parquet")
    in_memory = int(sample.memory_usage(deep=True).sum() * result.rows / max(1, len(sample)))
    print(
        json.dumps(
            {
                "rss": peak,
                "before": before,
                "wall": wall,
                "rows": result.rows,
                "parts": result.parts,
                "failed": result.failed,
                "in_memory": in_memory,
                "along": marks,
                "kept": kept,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes")
    parser.add_argument("--parquet-rows", type=int, default=None)
    parser.add_argument("--only", choices=("limited", "unlimited", "out-of-core"))
    parser.add_argument("--child-out-of-core", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_out_of_core:
        data, batch, tmp = args.child_out_of_core
        child_out_of_core(data, int(batch), tmp)
        return
    quick = args.quick
    parquet_rows = args.parquet_rows or (100_000 if quick else 1_000_000)
    print(f"{os.cpu_count()} CPUs; Dask {__import__('dask').__version__}")
    with tempfile.TemporaryDirectory(prefix="ipychat-redis-") as tmp:
        redis = RedisServer(Path(tmp)).start()
        try:
            if args.only in (None, "limited"):
                limited(redis.url, 1_000 if quick else 3_000, 4)
            if args.only in (None, "unlimited"):
                pid = redis.process.pid if redis.process else None
                unlimited(redis.url, 2_000 if quick else 6_000, [1, 2, 4], pid)
        finally:
            redis.stop()
    if args.only in (None, "out-of-core"):
        out_of_core(parquet_rows, 10_000)


if __name__ == "__main__":
    main()
