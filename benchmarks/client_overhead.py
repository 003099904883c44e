"""What ipychat's ChatClient costs on top of the wire, beside raw aiohttp and raw httpx.

All clients talk, in one run, to the same FakeOpenAIServer spawned in a child process
(so its CPU is not counted), at 1 and at 64 requests in flight, streamed and not:

- `ipychat`: ChatClient, as the session uses it;
- `aiohttp`: a raw aiohttp.ClientSession with a hand-written SSE reader: the floor;
- `httpx`: httpx.AsyncClient with its default (httpcore) transport;
- `httpx-aio`: httpx.AsyncClient over httpx_aiohttp's transport, i.e. what ipychat
  would cost without its own trims (it bypasses AsyncClient.send and streamlines the
  transport, see ipychat/net/client.py).

For each it prints the wall time, the client process's CPU time per request
(`time.process_time`), and both as ratios to raw aiohttp. The clients run `--rounds`
times, interleaved, and the table shows medians: the machine is shared,
and one burst of load elsewhere should not decide a ratio. Plain httpx runs once (it is
several times off, and slow), and so does httpx-aio.

Goal (issue 2): at 64 in flight, ipychat within 5% of raw aiohttp's wall time and within
1.5x its CPU per request.

    python benchmarks/client_overhead.py                 # the full run, under 2 minutes
    python benchmarks/client_overhead.py --n64 300 --n1 50 --rounds 1 --clients ipychat,aiohttp

Each measured batch runs in a fresh event loop after a short warm-up (connections
opened, code paths hot), so the figures are steady-state per-request costs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import httpx

from ipychat.net.client import ChatClient
from ipychat.testing import FakeOpenAIServer

REPLY = " ".join(f"word{i}" for i in range(20))  # 20 deltas when streamed
BODY = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "Say twenty words, please."}],
    "max_tokens": 100,
}
KEY = "sk-bench-" + "0" * 40

# One request: (streamed?) -> reply text. Each client kind builds one per batch.
Send = Callable[[bool], Awaitable[str]]


@dataclass
class Result:
    client: str
    concurrency: int
    stream: bool
    requests: int
    wall: float
    cpu: float

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.requests * 1000


# ----- the three clients ---------------------------------------------------------------------


class IpychatClient:
    def __init__(self, base_url: str, limit: int) -> None:
        self.client = ChatClient(base_url, api_key=KEY, max_connections=limit)

    async def send(self, stream: bool) -> str:
        return (await self.client.chat(BODY, stream=stream)).text

    async def close(self) -> None:
        await self.client.aclose()


def _sse_text(lines: list[bytes]) -> str:
    """What a hand-written SSE reader does: data lines -> JSON -> content deltas."""
    parts = []
    for line in lines:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        for choice in chunk.get("choices") or ():
            text = choice["delta"].get("content")
            if text:
                parts.append(text)
    return "".join(parts)


class AiohttpClient:
    def __init__(self, base_url: str, limit: int) -> None:
        self.url = base_url + "/chat/completions"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit),
            headers={"Authorization": f"Bearer {KEY}"},
        )

    async def send(self, stream: bool) -> str:
        body = (
            {**BODY, "stream": True, "stream_options": {"include_usage": True}} if stream else BODY
        )
        async with self.session.post(self.url, json=body) as response:
            response.raise_for_status()
            if stream:
                return _sse_text([line async for line in response.content])
            data = json.loads(await response.read())
            return str(data["choices"][0]["message"]["content"])

    async def close(self) -> None:
        await self.session.close()


class HttpxClient:
    """httpx.AsyncClient with its default (httpcore) transport."""

    def __init__(self, base_url: str, limit: int) -> None:
        self.url = base_url + "/chat/completions"
        self.client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {KEY}"},
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            timeout=httpx.Timeout(60.0),
        )

    async def send(self, stream: bool) -> str:
        if stream:
            body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
            async with self.client.stream("POST", self.url, json=body) as response:
                response.raise_for_status()
                lines = [line.encode() async for line in response.aiter_lines()]
            return _sse_text(lines)
        response = await self.client.post(self.url, json=BODY)
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    async def close(self) -> None:
        await self.client.aclose()


class HttpxAiohttpClient(HttpxClient):
    """httpx.AsyncClient over httpx_aiohttp's transport: the floor under ipychat's own code."""

    def __init__(self, base_url: str, limit: int) -> None:
        from httpx_aiohttp import AiohttpTransport

        self.url = base_url + "/chat/completions"
        limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        self.client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {KEY}"},
            transport=AiohttpTransport(limits=limits),
            timeout=httpx.Timeout(60.0),
        )


# References that are far from ipychat's figures: one round is enough to show it.
ONCE = frozenset({"httpx", "httpx-aio"})

CLIENTS: dict[str, Any] = {
    "ipychat": IpychatClient,
    "aiohttp": AiohttpClient,
    "httpx": HttpxClient,
    "httpx-aio": HttpxAiohttpClient,
}


# ----- measuring -----------------------------------------------------------------------------


async def _batch(
    send: Callable[[bool], Awaitable[str]], n: int, concurrency: int, stream: bool
) -> None:
    """n requests, `concurrency` in flight at all times (a worker pool, as a mapper runs)."""
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            text = await send(stream)
            if text != REPLY:
                raise AssertionError(f"wrong reply: {text[:60]!r}")

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))


async def _measure(kind: str, base_url: str, n: int, concurrency: int, stream: bool) -> Result:
    client = CLIENTS[kind](base_url, concurrency)
    try:
        await _batch(client.send, min(n, 2 * concurrency), concurrency, stream)  # warm-up
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await _batch(client.send, n, concurrency, stream)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        await client.close()
    return Result(kind, concurrency, stream, n, wall, cpu)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _table(results: list[Result]) -> str:
    """One row per (in flight, mode, client): medians over the rounds it ran."""
    groups: dict[tuple[int, bool, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.concurrency, r.stream, r.client), []).append(r)
    rows = {
        key: (
            _median([r.wall for r in rs]),
            _median([r.cpu_ms for r in rs]),
            len(rs),
            rs[0].requests,
        )
        for key, rs in groups.items()
    }
    head = (
        f"{'in flight':>9} {'mode':<7} {'client':<10} {'requests':>8} {'rounds':>6} "
        f"{'wall s':>7} {'CPU ms/req':>10} {'wall/aiohttp':>12} {'CPU/aiohttp':>11}"
    )
    lines = [head, "-" * len(head)]
    for (concurrency, stream, client), (wall, cpu_ms, rounds, n) in rows.items():
        ref = rows.get((concurrency, stream, "aiohttp"))
        wall_ratio = f"{wall / ref[0]:.3f}" if ref else "-"
        cpu_ratio = f"{cpu_ms / ref[1]:.2f}" if ref and ref[1] else "-"
        mode = "stream" if stream else "whole"
        lines.append(
            f"{concurrency:>9} {mode:<7} {client:<10} {n:>8} {rounds:>6} {wall:>7.2f} "
            f"{cpu_ms:>10.3f} {wall_ratio:>12} {cpu_ratio:>11}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n1", type=int, default=200, help="requests at 1 in flight")
    parser.add_argument("--n64", type=int, default=1000, help="requests at 64 in flight")
    parser.add_argument("--concurrency", type=int, default=64, help="the 'many' case")
    parser.add_argument("--latency1", type=float, default=0.005, help="server latency, 1 in flight")
    parser.add_argument("--latency64", type=float, default=0.2, help="server latency, many")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per case (the table shows medians)"
    )
    parser.add_argument("--clients", default="ipychat,aiohttp,httpx,httpx-aio")
    parser.add_argument("--modes", default="whole,stream")
    args = parser.parse_args(argv)
    kinds = [k for k in args.clients.split(",") if k]
    modes = [m == "stream" for m in args.modes.split(",") if m]
    if unknown := set(kinds) - set(CLIENTS):
        parser.error(f"unknown clients: {sorted(unknown)}")

    cases = [(1, args.n1, args.latency1), (args.concurrency, args.n64, args.latency64)]
    results: list[Result] = []
    started = time.perf_counter()
    for concurrency, n, latency in cases:
        server = FakeOpenAIServer.spawn(reply=REPLY, latency=latency)
        try:
            # Rounds interleave the clients, so a burst of load elsewhere on the machine
            # hits all of them alike; the references far off the mark run once.
            for round_ in range(args.rounds):
                for stream in modes:
                    for kind in kinds:
                        if round_ and kind in ONCE:
                            continue
                        result = asyncio.run(
                            _measure(kind, server.base_url, n, concurrency, stream)
                        )
                        results.append(result)
                        print(
                            f"  {kind:<10} {concurrency:>3} in flight, "
                            f"{'stream' if stream else 'whole':<6} round {round_ + 1}: "
                            f"{result.wall:6.2f} s, {result.cpu_ms:6.3f} ms CPU/request",
                            file=sys.stderr,
                        )
        finally:
            server.stop()
    print()
    print(
        f"ChatClient overhead: FakeOpenAIServer in a child process; latency "
        f"{args.latency1 * 1000:g} ms at 1 in flight, {args.latency64 * 1000:g} ms at "
        f"{args.concurrency}; streamed replies have {len(REPLY.split())} deltas"
    )
    print(_table(results))
    ideal = args.n64 / args.concurrency * args.latency64
    print(
        f"\nideal wall at {args.concurrency} in flight: {ideal:.2f} s; "
        f"whole run {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
