"""%%chatmap throughput against FakeOpenAIServer, beside what people write by hand.

Three scenarios, each against a server spawned in a child process (so this process's CPU
time is the mapper's alone):

  (a) latency-bound: 2,000 rows, 200 ms latency, no limits, concurrency 64
  (b) RPM-bound:     3,000 rows at 6,000 requests per minute
  (c) TPM-bound:     1,000 rows of ~500-token prompts at 200,000 tokens per minute

and four mappers on the same rows:

  ipychat     session.map(df, template, ...): in (a) with concurrency=64; in (b) and (c)
              with no --rpm/--tpm: the limits are learnt from the x-ratelimit-* headers
  httpx       asyncio.gather + Semaphore(64), httpx.AsyncClient, per-request retries
              obeying retry-after (what people write by hand)
  aiohttp     the same with a raw aiohttp.ClientSession (the practical limit of this machine)
  sequential  df.apply with httpx.Client, one row after the other: a sample of rows is
              timed and the time extrapolated to all rows (said so in the output)

For each: wall time, E = T_ideal / T_observed, the share of requests answered 429, CPU
seconds of this process, and rows lost. T_ideal: (a) rows / 64 × latency; (b) and (c)
the rate limit's own pace (rows / rpm, or the server's token charges / tpm) plus one
latency. The rate limiter of the fake server starts with a full bucket (OpenAI's model),
which would let 3,000 requests through at once; to measure the limit rather than the
burst, the bucket is drained before each mapper runs, as after a minute of sustained use.

Run: python benchmarks/chatmap.py            (the issue's sizes; about 12 minutes)
     python benchmarks/chatmap.py --small    (CI-sized: seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pandas as pd

from ipychat import tokens
from ipychat.cache import ResponseCache
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer, approx_tokens

MODEL = "gpt-4o-mini"
KEY = "sk-bench"
HAND_CONCURRENCY = 64
HAND_RETRIES = 20  # generous: a hand-written mapper that gives up loses rows
_WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this "
    "be or had not but what all when there can who been one their more if will would about "
    "out so up into than them only other new some could time these two may then first any "
    "like now over such our man me even most made after also did many before must through "
    "years where much your way well down should because each just those people how too "
    "little state good very make world still own see men work long get here between both "
    "life being under never day same another know while last might us great old year off "
    "come since against go came right used take three review product service delivery "
    "quality price recommend excellent terrible average customer support experience"
)
WORDS = _WORDS.split()


@dataclass
class Outcome:
    mapper: str
    seconds: float
    cpu: float
    ideal: float
    requests: int
    rate_limited: int
    lost: int
    note: str = ""


def body(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }


def server_charge(prompt: str, max_tokens: int) -> int:
    """What the fake server charges a request (its formula: 3 + per message 3 + fields)."""
    return 3 + 3 + approx_tokens("user") + approx_tokens(prompt) + max_tokens


def retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        return float(value) / 1000
    value = headers.get("retry-after")
    return float(value) if value else None


def backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


# ----- the mappers -----------------------------------------------------------------------


async def httpx_mapper(base_url: str, prompts: list[str], max_tokens: int) -> list[str | None]:
    sem = asyncio.Semaphore(HAND_CONCURRENCY)
    limits = httpx.Limits(max_connections=HAND_CONCURRENCY)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:

        async def one(prompt: str) -> str | None:
            async with sem:
                for attempt in range(HAND_RETRIES + 1):
                    try:
                        r = await client.post(
                            base_url + "/chat/completions", json=body(prompt, max_tokens)
                        )
                    except httpx.TransportError:
                        await asyncio.sleep(backoff(attempt))
                        continue
                    if r.status_code == 200:
                        try:
                            return str(r.json()["choices"][0]["message"]["content"])
                        except ValueError:
                            await asyncio.sleep(backoff(attempt))
                            continue
                    if r.status_code == 429 or r.status_code >= 500:
                        await asyncio.sleep(retry_after(r.headers) or backoff(attempt))
                        continue
                    return None
                return None

        return list(await asyncio.gather(*(one(p) for p in prompts)))


async def aiohttp_mapper(base_url: str, prompts: list[str], max_tokens: int) -> list[str | None]:
    sem = asyncio.Semaphore(HAND_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=HAND_CONCURRENCY)
    headers = {"Authorization": f"Bearer {KEY}"}
    url = base_url + "/chat/completions"
    async with aiohttp.ClientSession(connector=connector, headers=headers) as client:

        async def one(prompt: str) -> str | None:
            async with sem:
                for attempt in range(HAND_RETRIES + 1):
                    try:
                        async with client.post(url, json=body(prompt, max_tokens)) as r:
                            if r.status == 200:
                                data = await r.json()
                                return str(data["choices"][0]["message"]["content"])
                            wait = retry_after(r.headers)
                            if r.status != 429 and r.status < 500:
                                return None
                    except (aiohttp.ClientError, ValueError):
                        wait = None
                    await asyncio.sleep(wait or backoff(attempt))
                return None

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def sequential_mapper(base_url: str, df: pd.DataFrame, max_tokens: int) -> pd.Series:
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:

        def one(row: pd.Series) -> str | None:
            for attempt in range(HAND_RETRIES + 1):
                try:
                    r = client.post(
                        base_url + "/chat/completions", json=body(row["text"], max_tokens)
                    )
                except httpx.TransportError:
                    time.sleep(backoff(attempt))
                    continue
                if r.status_code == 200:
                    return str(r.json()["choices"][0]["message"]["content"])
                if r.status_code == 429 or r.status_code >= 500:
                    time.sleep(retry_after(r.headers) or backoff(attempt))
                    continue
                return None
            return None

        return df.apply(one, axis=1)


# ----- running ---------------------------------------------------------------------------


@dataclass
class Drained:
    """What the server's buckets held when the last drain request arrived."""

    sent: float  # time.monotonic() when it was sent
    requests: int
    tokens: int

    def level(self, now: float, per_minute: int, remaining: int) -> float:
        return min(per_minute, remaining + (now - self.sent) * per_minute / 60)


def drain(server: FakeOpenAIServer, tpm: bool) -> Drained:
    """Empty the server's rate-limit bucket (see the module docstring)."""

    async def go() -> Drained:
        url = server.base_url + "/chat/completions"
        headers = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), headers=headers
        ) as client:
            sem = asyncio.Semaphore(256)

            async def one(max_tokens: int = 1) -> Drained:
                async with sem:
                    sent = time.monotonic()
                    async with client.post(url, json=body("drain", max_tokens)) as r:
                        await r.read()
                        return Drained(
                            sent,
                            int(r.headers.get("x-ratelimit-remaining-requests", 0)),
                            int(r.headers.get("x-ratelimit-remaining-tokens", 0)),
                        )

            # Until the bucket is empty: it refills while the drain itself runs.
            for _ in range(20):
                last = await one()
                if tpm:
                    if last.tokens < 200:
                        break
                    await one(last.tokens - 20)  # one request charged the rest of the tokens
                    continue
                if last.requests < 3:
                    break
                await asyncio.gather(*(one() for _ in range(last.requests)))
            return last

    return asyncio.run(go())


@dataclass
class Scenario:
    label: str
    title: str
    df: pd.DataFrame
    server: dict[str, Any]
    latency: float
    limit: str | None = None  # "rpm" or "tpm": drained before each mapper
    per_minute: int = 0
    work: int = 0  # requests (rpm) or tokens as the server charges them (tpm)

    def ideal(self, drained: Drained | None, start: float) -> float:
        """The limit's own pace from the level the bucket held at `start`."""
        n = len(self.df)
        if self.limit is None:
            return n / HAND_CONCURRENCY * self.latency
        held = 0.0
        if drained is not None:
            left = drained.requests if self.limit == "rpm" else drained.tokens
            held = drained.level(start, self.per_minute, left)
        return max(0.0, self.work - held) / (self.per_minute / 60) + self.latency


def measure(
    server: FakeOpenAIServer,
    sc: Scenario,
    name: str,
    run: Callable[[], list[str | None] | Awaitable[list[str | None]]],
    *,
    drain_first: bool,
    note: str = "",
    scale: float = 1.0,
) -> Outcome:
    drained = drain(server, sc.limit == "tpm") if drain_first else None
    server.reset_log()
    cpu0, t0, start = time.process_time(), time.perf_counter(), time.monotonic()
    out = run()
    if asyncio.iscoroutine(out):
        out = asyncio.run(out)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stats = server.stats()
    assert isinstance(out, list)
    lost = sum(1 for v in out if not v)
    outcome = Outcome(
        name,
        seconds * scale,
        cpu * scale,
        sc.ideal(drained, start),
        stats.chat,
        stats.rate_limited,
        lost,
        note,
    )
    report(outcome)
    return outcome


class IpychatRun:
    """session.map on the rows; the session exists before the clock starts (see `__init__`)."""

    def __init__(
        self, server: FakeOpenAIServer, df: pd.DataFrame, max_tokens: int, concurrency: int | None
    ) -> None:
        # As in a notebook where ipychat is loaded: the session and its cache directory
        # exist, the tokenizer is loaded (a cold first map pays ~0.25 s more, once).
        self.session = ChatSession(
            Settings(base_url=server.base_url, api_key=KEY, model=MODEL),
            cache=ResponseCache(tempfile.mkdtemp(prefix="ipychat-bench-")),
        )
        assert self.session.cache is not None
        self.session.cache.stats()
        tokens.warm([MODEL])
        self.df, self.max_tokens, self.concurrency = df, max_tokens, concurrency

    def __call__(self) -> list[str | None]:
        result = self.session.map(
            self.df, "{text}", "out", max_tokens=self.max_tokens, concurrency=self.concurrency
        )
        return [None if v is None or v != v else str(v) for v in result["out"].tolist()]


def scenario(sc: Scenario, args: argparse.Namespace) -> list[Outcome]:
    prompts = sc.df["text"].tolist()
    mappers, mt = args.mappers, args.max_tokens
    print(f"\n({sc.label}) {sc.title}: T_ideal = {sc.ideal(None, 0):.2f} s", flush=True)
    outcomes = []
    limited = sc.limit is not None
    with FakeOpenAIServer.spawn(**sc.server) as server:
        url = server.base_url
        if "ipychat" in mappers:
            concurrency = None if limited else HAND_CONCURRENCY
            note = "limits learnt from headers" if limited else "concurrency=64"
            mapper = IpychatRun(server, sc.df, mt, concurrency)
            try:
                outcomes.append(
                    measure(server, sc, "ipychat", mapper, drain_first=limited, note=note)
                )
            finally:
                mapper.session.close()
        if "httpx" in mappers:
            outcomes.append(
                measure(
                    server,
                    sc,
                    "httpx gather+Semaphore(64)",
                    lambda: httpx_mapper(url, prompts, mt),
                    drain_first=limited,
                )
            )
        if "aiohttp" in mappers:
            outcomes.append(
                measure(
                    server,
                    sc,
                    "aiohttp gather+Semaphore(64)",
                    lambda: aiohttp_mapper(url, prompts, mt),
                    drain_first=limited,
                )
            )
        if "sequential" in mappers:
            # One request at a time stays far below the limits: no drain, nominal ideal.
            sample = sc.df.head(min(args.sequential_sample, len(sc.df)))
            factor = len(sc.df) / len(sample)
            outcomes.append(
                measure(
                    server,
                    sc,
                    "sequential df.apply",
                    lambda: sequential_mapper(url, sample, mt).tolist(),
                    drain_first=False,
                    note=f"{len(sample)} rows timed, extrapolated ×{factor:.0f}",
                    scale=factor,
                )
            )
    return outcomes


def report(o: Outcome) -> None:
    share = o.rate_limited / o.requests if o.requests else 0.0
    note = f"  [{o.note}]" if o.note else ""
    # A mapper that lost rows did less work than asked: its time is not comparable.
    e = f"E = {o.ideal / o.seconds:5.3f}" if not o.lost else "E =   n/a"
    print(
        f"  {o.mapper:<28} {o.seconds:8.2f} s  ideal {o.ideal:6.2f} s  {e}"
        f"  429s {share:6.1%} ({o.rate_limited}/{o.requests})  CPU {o.cpu:6.2f} s  "
        f"lost {o.lost}{note}",
        flush=True,
    )


def verdict(results: dict[str, list[Outcome]]) -> list[str]:
    """The issue's goals, checked against this run."""
    lines = []
    by = {k: {o.mapper.split()[0]: o for o in v} for k, v in results.items()}
    a = by.get("a", {})
    if "ipychat" in a and "aiohttp" in a:
        ratio = a["ipychat"].seconds / a["aiohttp"].seconds - 1
        ok = ratio <= 0.05
        lines.append(f"(a) ipychat vs raw aiohttp: {ratio:+.1%} time (goal: within 5%) {_ok(ok)}")
    for k in ("b", "c"):
        o = by.get(k, {}).get("ipychat")
        if o is not None:
            e, share = o.ideal / o.seconds, o.rate_limited / max(1, o.requests)
            ok = e >= 0.95 and share < 0.01
            lines.append(
                f"({k}) ipychat E = {e:.3f}, 429s {share:.2%} (goal: E >= 0.95, < 1%) {_ok(ok)}"
            )
    for k, mappers in by.items():
        mine = mappers.get("ipychat")
        if mine is None:
            continue
        lost = mine.lost
        beaten = [
            name
            for name, o in mappers.items()
            if name != "ipychat" and (o.lost > 0 or o.seconds >= mine.seconds * 0.98)
        ]
        lines.append(
            f"({k}) ipychat lost {lost} rows; ahead of or level with: {', '.join(beaten) or '-'}"
        )
    return lines


def _ok(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def text_of(tokens: int, rng: random.Random) -> str:
    """About `tokens` tokens as the server counts them (4 characters each)."""
    words: list[str] = []
    size = 0
    while size < tokens * 4:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows-a", type=int, default=2000)
    p.add_argument("--rows-b", type=int, default=3000)
    p.add_argument("--rows-c", type=int, default=1000)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--rpm", type=int, default=6000)
    p.add_argument("--tpm", type=int, default=200_000)
    p.add_argument("--prompt-tokens", type=int, default=500, help="(c): tokens per prompt")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--sequential-sample", type=int, default=20)
    p.add_argument("--only", default="abc", help="scenarios to run, e.g. ab")
    p.add_argument("--mappers", default="ipychat,httpx,aiohttp,sequential")
    p.add_argument("--small", action="store_true", help="CI sizes: 200/600/60 rows")
    args = p.parse_args(argv)
    if args.small:
        args.rows_a, args.rows_b, args.rows_c = 200, 600, 60
        args.sequential_sample = 5
    args.mappers = args.mappers.split(",")
    rng = random.Random(6)
    latency = args.latency
    results: dict[str, list[Outcome]] = {}
    print(f"Python {sys.version.split()[0]}, fake server spawned in a child process")

    if "a" in args.only:
        n = args.rows_a
        df = pd.DataFrame({"text": [f"Classify review {i}: {text_of(20, rng)}" for i in range(n)]})
        title = f"latency-bound, {n:,} rows, {latency * 1000:.0f} ms, no limits, concurrency 64"
        sc = Scenario("a", title, df, {"latency": latency}, latency)
        results["a"] = scenario(sc, args)
    if "b" in args.only:
        n = args.rows_b
        df = pd.DataFrame({"text": [f"Classify review {i}: {text_of(20, rng)}" for i in range(n)]})
        title = f"RPM-bound, {n:,} rows at {args.rpm:,} RPM, {latency * 1000:.0f} ms"
        server = {"latency": latency, "rpm": args.rpm}
        sc = Scenario("b", title, df, server, latency, "rpm", args.rpm, n)
        results["b"] = scenario(sc, args)
    if "c" in args.only:
        n = args.rows_c
        texts = [f"Summarise review {i}: {text_of(args.prompt_tokens, rng)}" for i in range(n)]
        df = pd.DataFrame({"text": texts})
        charges = sum(server_charge(t, args.max_tokens) for t in texts)
        title = (
            f"TPM-bound, {n:,} rows of ~{args.prompt_tokens} tokens at {args.tpm:,} TPM "
            f"({charges:,} tokens charged), {latency * 1000:.0f} ms"
        )
        server = {"latency": latency, "tpm": args.tpm}
        sc = Scenario("c", title, df, server, latency, "tpm", args.tpm, charges)
        results["c"] = scenario(sc, args)
    print("\nGoals:")
    defaults = p.parse_args([])
    if any(getattr(args, k) != getattr(defaults, k) for k in ("rows_a", "rows_b", "rows_c")):
        # Fixed costs (one probe round trip, a few probe 429s) weigh more in small runs.
        print("  (smaller sizes than the issue's: the goals are checked at its sizes only)")
    for line in verdict(results):
        print("  " + line)
    print("\n" + json.dumps({k: [o.__dict__ for o in v] for k, v in results.items()}))
    lost = sum(o.lost for v in results.values() for o in v if o.mapper == "ipychat")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
