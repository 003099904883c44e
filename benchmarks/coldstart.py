"""The first %%chatmap of a fresh kernel beside the second, and beside raw aiohttp.

    python benchmarks/coldstart.py [--rows 2000] [--latency 0.2] [--runs 5] [--gap 0 1]

Each run is a fresh Python process (a new kernel) talking to one FakeOpenAIServer (spawned
in its own process, latency-bound: no limits). In the process: IPython's InteractiveShell,
`%load_ext ipychat`, `--gap` seconds (the user typing the next cell; 0 is the worst case:
a notebook run top to bottom; each gap given is a table of its own, 0 and 1 by default),
then `%%chatmap df1 -o out --concurrency 64` and the same on `df2` (other prompts, so
nothing is cached), each timed as the whole cell.

- `ipychat`: as shipped (`%load_ext` loads the first-use imports itself, then the
  tokenizer in a background thread when no map runs, ipychat.notebook.warmup; a map that
  starts before the tokenizer is loaded sends with byte bounds, ipychat.map.counting);
- `ipychat, no warm-up`: the same with the warm-up left out, for comparison;
- `aiohttp gather+Semaphore(64)`: the same rows by hand, first batch with the
  ClientSession created inside the clock, second batch on the same session: the floor.

Printed: medians over `--runs` processes (the kinds interleaved, each round starting with
the next) of the `%load_ext` time,
the first and the second map, first − second (the cold penalty), and T_ideal =
rows / 64 × latency. Goal (issue 14, item 5): the first map as quick as a later one, i.e.
a cold penalty under 3% of T_ideal. `%load_ext` is shown beside the run without the
warm-up: it pays there the imports a first map would pay (~0.3 s), and starts the thread
without waiting for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipychat.testing import FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("ipychat", "ipychat, no warm-up", "aiohttp gather+Semaphore(64)")
KEY = "sk-bench-" + "0" * 40
MAX_TOKENS = 8
CONCURRENCY = 64


def texts(tag: str, n: int) -> list[str]:
    return [f"{tag} row {i}: say something short" for i in range(n)]


def ipychat_child(rows: int, gap: float, warm_up: bool) -> dict[str, float]:
    import pandas as pd
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    shell.user_ns["df1"] = pd.DataFrame({"text": texts("first", rows)})
    shell.user_ns["df2"] = pd.DataFrame({"text": texts("second", rows)})
    if not warm_up:
        import ipychat.notebook.warmup

        ipychat.notebook.warmup.start = lambda session: None  # type: ignore[assignment,return-value]
    start = time.perf_counter()
    shell.run_line_magic("load_ext", "ipychat")
    times = {"load_ext": time.perf_counter() - start}
    time.sleep(gap)
    line = f"-o out --concurrency {CONCURRENCY} --max-tokens {MAX_TOKENS}"
    for name in ("df1", "df2"):
        start = time.perf_counter()
        with capture_output():
            shell.run_cell_magic("chatmap", f"{name} {line}", "{text}")
        times[name] = time.perf_counter() - start
        assert shell.user_ns[name]["out"].notna().all(), f"{name}: rows missing"
    return times


async def _aiohttp_batch(session: object, url: str, prompts: list[str]) -> None:
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    gate = asyncio.Semaphore(CONCURRENCY)
    headers = {"Authorization": f"Bearer {KEY}"}

    async def one(prompt: str) -> str:
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
        }
        async with gate, session.post(url, json=body, headers=headers) as response:
            response.raise_for_status()
            data = await response.json()
            return str(data["choices"][0]["message"]["content"])

    replies = await asyncio.gather(*(one(p) for p in prompts))
    assert all(replies)


def aiohttp_child(base_url: str, rows: int, gap: float) -> dict[str, float]:
    import aiohttp

    url = f"{base_url}/chat/completions"
    time.sleep(gap)

    async def main() -> dict[str, float]:
        start = time.perf_counter()
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            await _aiohttp_batch(session, url, texts("first", rows))
            first = time.perf_counter() - start
            start = time.perf_counter()
            await _aiohttp_batch(session, url, texts("second", rows))
            return {"load_ext": 0.0, "df1": first, "df2": time.perf_counter() - start}

    return asyncio.run(main())


def run_child(kind: str, base_url: str, rows: int, gap: float) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": KEY,
        "IPYCHAT_CACHE_DIR": tempfile.mkdtemp(prefix="ipychat-bench-cold-"),
    }
    command = [sys.executable, __file__, "--child", kind, base_url]
    command += ["--rows", str(rows), "--gap", str(gap)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gap", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "BASE_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, base_url = args.child
        gap = args.gap[0]
        if kind.startswith("aiohttp"):
            result = aiohttp_child(base_url, args.rows, gap)
        else:
            result = ipychat_child(args.rows, gap, warm_up=kind == "ipychat")
        print(json.dumps(result))
        return

    with FakeOpenAIServer.spawn(latency=args.latency) as server:
        for gap in args.gap:
            table(args, server.base_url, gap)


def table(args: argparse.Namespace, base_url: str, gap: float) -> None:
    """The kinds at one gap: `--runs` fresh processes each, medians."""
    ideal = args.rows / CONCURRENCY * args.latency
    print(
        f"{args.rows:,} rows, {args.latency * 1000:.0f} ms latency, {CONCURRENCY} in flight, "
        f"{gap:g} s between %load_ext and the first map; T_ideal {ideal:.2f} s; "
        f"medians of {args.runs} fresh processes per kind (the machine may be shared)"
    )
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for i in range(args.runs):
        # Interleaved, and each round starts with the next kind: a burst of load
        # elsewhere, or going first after a pause, falls on every kind alike.
        for kind in KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]:
            results[kind].append(run_child(kind, base_url, args.rows, gap))
    header = f"{'kind':<32}{'load_ext s':>11}{'first s':>9}{'second s':>10}{'first−second':>14}"
    print(header + f"{'E first':>9}{'E second':>10}")
    penalty: dict[str, float] = {}
    for kind in KINDS:
        runs = results[kind]
        load = statistics.median(r["load_ext"] for r in runs)
        first = statistics.median(r["df1"] for r in runs)
        second = statistics.median(r["df2"] for r in runs)
        penalty[kind] = statistics.median(r["df1"] - r["df2"] for r in runs)
        print(
            f"{kind:<32}{load:>11.3f}{first:>9.2f}{second:>10.2f}{penalty[kind]:>+14.2f}"
            f"{ideal / first:>9.2f}{ideal / second:>10.2f}"
        )
    within = penalty["ipychat"] < 0.03 * ideal
    print(
        f"cold penalty (first − second, median): ipychat {penalty['ipychat']:+.2f} s, without "
        f"the warm-up {penalty['ipychat, no warm-up']:+.2f} s, raw aiohttp "
        f"{penalty['aiohttp gather+Semaphore(64)']:+.2f} s; goal (< 3% of T_ideal = "
        f"{0.03 * ideal:.2f} s): {'met' if within else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
