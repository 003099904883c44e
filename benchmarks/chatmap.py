"""%%chatmap under rate limits as providers enforce them, beside what people write by hand.

A matrix of cells, each run against a FakeOpenAIServer spawned in a child process (so this
process's CPU time is the mapper's alone), a fresh server (a fresh quota) for every run:

  limited cells   window 1 s / 10 s / 60 s  ×  RPM-bound / TPM-bound  ×  headers on / off
                  RPM-bound: 1,500 rows at 6,000 RPM, 100 ms latency
                  TPM-bound: 600 rows at 120,000 TPM, max_tokens 64, 100 ms latency
                  The server enforces its limits as OpenAI and Azure document them
                  (ipychat.testing.rules): limit × window / 60 within any `window` seconds,
                  refused requests charged. "headers on": OpenAI's x-ratelimit-* headers
                  and retry-after on a 429; "headers off": neither (vLLM, llama.cpp,
                  gateways): a bare 429.
  latency-bound   2,000 rows, 200 ms latency, no limits, 64 in flight; "cold" is the first
                  map of a fresh process (run in a subprocess), started straight after
                  `%load_ext ipychat` (not timed: benchmarks/coldstart.py times it),
                  "warm" the second one there.

and in each cell, on the same rows against the same server settings:

  ipychat     %%chatmap's engine (session.map). Headers on: no limits given (learnt from
              the headers). Headers off: told the limits (--rpm / --tpm), as oaib is; one
              more row per cell, "no limits given", shows what pacing from 429s alone
              (AIMD) does there (in the 1 s windows), and claims no goal. Latency-bound: through the real
              %%chatmap magic in an IPython shell, --concurrency 64.
  aiohttp     what people write by hand: asyncio.gather + Semaphore(64) over a raw
              aiohttp.ClientSession, each request retried up to 3 times on a 429 or 5xx,
              after the server's retry-after, else an exponential backoff.
  oaib        oaib.Batch (PyPI), told the true limits (rpm, tpm; a limit the server does
              not have is given as 1,000,000), when installed (`pip install oaib`).

Columns: E = T_ideal / T_measured, where T_ideal is the limit's own sustained pace: rows /
(RPM / 60), or the tokens the server charges / (TPM / 60), plus one latency (in a 10 s or
60 s window a client may do better by bursting, once the server has shown it may:
E > 1); latency-bound: rows / 64 × latency. Then the share of requests answered 429, the
rows lost (never answered), CPU time of the mapper's process per row, and wall time.

Goals (issue 14): every limited cell E >= 0.97, fewer than 0.5% of the requests answered
429, 0 rows lost, ahead of every peer (a peer that lost rows is behind); latency-bound
within 3% of raw aiohttp, cold and warm, with CPU per row at most 2× raw aiohttp's.

Run: python benchmarks/chatmap.py            (the issue's sizes; about 10 minutes)
     python benchmarks/chatmap.py --quick    (a smoke run: a few minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pandas as pd

from ipychat.engine.cache import ResponseCache
from ipychat.notebook import warmup
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer, approx_tokens

MODEL = "gpt-4o-mini"
KEY = "sk-bench"
HAND_CONCURRENCY = 64
HAND_RETRIES = 3  # "a few": a hand-written mapper that gives up loses the row
NO_LIMIT = 1_000_000  # what oaib is told for a limit the server does not have
LATENCY = 0.1  # limited cells
_WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this "
    "be or had not but what all when there can who been one their more if will would about "
    "out so up into than them only other new some could time these two may then first any "
    "like now over such our man me even most made after also did many before must through "
    "review product service delivery quality price recommend excellent terrible average"
)
WORDS = _WORDS.split()


@dataclass(frozen=True)
class Cell:
    bound: str  # "rpm" | "tpm" | "latency"
    window: float = 0.0
    headers: bool = True
    cold: bool = False  # latency-bound: the first map of a fresh process

    @property
    def label(self) -> str:
        if self.bound == "latency":
            return f"latency-bound, {'cold' if self.cold else 'warm'}"
        return f"{self.window:g} s  {self.bound.upper()}  headers {'on' if self.headers else 'off'}"


@dataclass
class Outcome:
    cell: Cell
    mapper: str
    rows: int
    seconds: float
    cpu: float
    ideal: float
    requests: int
    rate_limited: int
    lost: int
    goal: bool = True  # False: shown, no goal claimed (ipychat without limits, headers off)

    @property
    def e(self) -> float:
        return self.ideal / self.seconds if self.seconds > 0 else 0.0

    @property
    def share(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0


@dataclass
class Workload:
    prompts: list[str]
    max_tokens: int
    server: dict[str, Any]
    ideal: float
    limits: dict[str, int | None] = field(default_factory=dict)


def text_of(n_tokens: int, rng: random.Random) -> str:
    """About `n_tokens` tokens as the server counts them (4 characters each)."""
    words: list[str] = []
    size = 0
    while size < n_tokens * 4:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def server_charge(prompt: str, max_tokens: int) -> int:
    """What the fake server charges a request (3 + per message 3 + its fields, + max_tokens)."""
    return 3 + 3 + approx_tokens("user") + approx_tokens(prompt) + max_tokens


def body(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }


def workload(cell: Cell, args: argparse.Namespace, salt: str) -> Workload:
    """The rows of a cell (unique per run: `salt`) and the server's settings for it."""
    rng = random.Random(f"{cell}:{salt}")
    if cell.bound == "rpm":
        n = args.rpm_rows
        prompts = [f"Classify review {salt}-{i}: {text_of(12, rng)}" for i in range(n)]
        server = {"latency": LATENCY, "rpm": args.rpm}
        ideal = n / (args.rpm / 60) + LATENCY
        limits: dict[str, int | None] = {"rpm": args.rpm, "tpm": None}
        return Workload(prompts, 16, server, ideal, limits)
    if cell.bound == "tpm":
        n = args.tpm_rows
        prompts = [f"Summarise {salt}-{i}: {text_of(6, rng)}" for i in range(n)]
        server = {"latency": LATENCY, "tpm": args.tpm}
        charged = sum(server_charge(p, args.tpm_max_tokens) for p in prompts)
        ideal = charged / (args.tpm / 60) + LATENCY
        limits = {"rpm": None, "tpm": args.tpm}
        return Workload(prompts, args.tpm_max_tokens, server, ideal, limits)
    n = args.latency_rows
    prompts = [f"Classify review {salt}-{i}: {text_of(12, rng)}" for i in range(n)]
    ideal = n / HAND_CONCURRENCY * args.latency
    return Workload(prompts, 16, {"latency": args.latency}, ideal)


# ----- the mappers -------------------------------------------------------------------------


def retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        return float(value) / 1000
    value = headers.get("retry-after")
    return float(value) if value else None


def backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


async def aiohttp_mapper(base_url: str, prompts: list[str], max_tokens: int) -> list[str | None]:
    """asyncio.gather + Semaphore(64), a raw aiohttp session, a few retries per request."""
    sem = asyncio.Semaphore(HAND_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=HAND_CONCURRENCY)
    headers = {"Authorization": f"Bearer {KEY}"}
    url = base_url + "/chat/completions"
    async with aiohttp.ClientSession(connector=connector, headers=headers) as client:

        async def one(prompt: str) -> str | None:
            async with sem:
                for attempt in range(HAND_RETRIES + 1):
                    wait: float | None = None
                    try:
                        async with client.post(url, json=body(prompt, max_tokens)) as r:
                            if r.status == 200:
                                data = await r.json()
                                return str(data["choices"][0]["message"]["content"])
                            if r.status != 429 and r.status < 500:
                                return None
                            wait = retry_after(r.headers)
                    except (aiohttp.ClientError, ValueError):
                        pass
                    if attempt < HAND_RETRIES:
                        await asyncio.sleep(wait if wait is not None else backoff(attempt))
                return None

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def oaib_available() -> bool:
    try:
        import oaib  # noqa: F401
    except ImportError:
        return False
    return True


async def oaib_mapper(
    base_url: str, prompts: list[str], max_tokens: int, rpm: int | None, tpm: int | None
) -> list[str | None]:
    """oaib.Batch told the true limits; its rows come back in a DataFrame (lost ones not)."""
    from oaib import Batch

    fd, log = tempfile.mkstemp(prefix="oaib-", suffix=".txt")
    os.close(fd)
    handler = signal.getsignal(signal.SIGINT)
    try:
        batch = Batch(
            rpm=rpm or NO_LIMIT,
            tpm=tpm or NO_LIMIT,
            loglevel=0,
            logdir=log,
            api_key=KEY,
            base_url=base_url,
        )
        for i, prompt in enumerate(prompts):
            await batch.add(
                "chat.completions.create",
                metadata={"row": i},
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
            )
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Run took ..."
            out = await batch.run()
        await batch.client.close()  # oaib leaves its client open
    finally:
        signal.signal(signal.SIGINT, handler)  # oaib installs its own
        os.unlink(log)
    answers: list[str | None] = [None] * len(prompts)
    if len(out):
        for row, result in zip(out["row"], out["result"], strict=True):
            answers[int(row)] = str(result["choices"][0]["message"]["content"])
    return answers


def ipychat_session(base_url: str) -> ChatSession:
    """As in a notebook where ipychat is loaded: the session, its cache, and what
    `%load_ext` warms (the tokenizer, the client's modules and their TLS contexts) are
    there before the clock starts (the latency-bound cold cell measures a fresh one). Without
    the warm-up, the first cell run in this process would pay ~0.3 s of imports that a
    notebook's first map does not."""
    session = ChatSession(
        Settings(base_url=base_url, api_key=KEY, model=MODEL),
        cache=ResponseCache(tempfile.mkdtemp(prefix="ipychat-bench-")),
    )
    assert session.cache is not None
    session.cache.stats()
    warmup.warm(session)
    return session


# ----- running a cell ----------------------------------------------------------------------


def measure(
    cell: Cell,
    mapper: str,
    work: Workload,
    run: Callable[[str], list[str | None]] | None,
    *,
    goal: bool = True,
    server_options: dict[str, Any],
    prepare: Callable[[str], Callable[[str], list[str | None]]] | None = None,
) -> Outcome:
    """One mapper on a fresh server: wall time, this process's CPU time, what the server saw.
    `prepare(url)`, when given, runs before the clock starts and returns what to time
    (ipychat's session and its warm-up: what a notebook has before its map cell runs)."""
    with FakeOpenAIServer.spawn(**server_options) as server:
        url = server.base_url
        if prepare is not None:
            run = prepare(url)
        assert run is not None
        cpu0, t0 = time.process_time(), time.perf_counter()
        answers = run(url)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        stats = server.stats()
    lost = sum(1 for a in answers if not a)
    return Outcome(
        cell, mapper, len(answers), seconds, cpu, work.ideal, stats.chat, stats.rate_limited,
        lost, goal,
    )  # fmt: skip


def limited_cell(cell: Cell, args: argparse.Namespace) -> list[Outcome]:
    work = workload(cell, args, "a")
    options = {
        **work.server,
        "window": cell.window,
        "ratelimit_headers": cell.headers,
        "retry_after": cell.headers,
    }
    rpm, tpm = work.limits["rpm"], work.limits["tpm"]
    outcomes: list[Outcome] = []

    def ipychat_run(given: bool) -> Callable[[str], Callable[[str], list[str | None]]]:
        def prepare(url: str) -> Callable[[str], list[str | None]]:
            session = ipychat_session(url)  # before the clock, as %load_ext is
            return lambda _url: go(session)

        def go(session: ChatSession) -> list[str | None]:
            try:
                caps = {"rpm": rpm, "tpm": tpm} if given else {}
                frame = session.map(
                    pd.DataFrame({"text": work.prompts}),
                    "{text}",
                    "out",
                    max_tokens=work.max_tokens,
                    cache=False,
                    **caps,
                )
                return [None if v is None or v != v else str(v) for v in frame["out"].tolist()]
            finally:
                session.close()

        return prepare

    if "ipychat" in args.mappers:
        outcomes.append(
            measure(
                cell,
                "ipychat",
                work,
                None,
                server_options=options,
                prepare=ipychat_run(not cell.headers),
            )
        )
        report(outcomes[-1], given=not cell.headers)
        if not cell.headers and args.aimd and cell.window == 1:
            outcomes.append(
                measure(
                    cell,
                    "ipychat, no limits given",
                    work,
                    None,
                    goal=False,
                    server_options=options,
                    prepare=ipychat_run(False),
                )
            )
            report(outcomes[-1])
    if "aiohttp" in args.mappers:
        outcomes.append(
            measure(
                cell,
                "aiohttp",
                work,
                lambda url: asyncio.run(aiohttp_mapper(url, work.prompts, work.max_tokens)),
                server_options=options,
            )
        )
        report(outcomes[-1])
    if "oaib" in args.mappers and oaib_available():
        outcomes.append(
            measure(
                cell,
                "oaib",
                work,
                lambda url: asyncio.run(oaib_mapper(url, work.prompts, work.max_tokens, rpm, tpm)),
                server_options=options,
            )
        )
        report(outcomes[-1])
    return outcomes


def latency_cells(args: argparse.Namespace) -> list[Outcome]:
    """Cold and warm, each mapper in a fresh subprocess: its first map, then its second."""
    outcomes: list[Outcome] = []
    mappers = [m for m in ("ipychat", "aiohttp", "oaib") if m in args.mappers]
    if "oaib" in mappers and not oaib_available():
        mappers.remove("oaib")
    cold, warm = Cell("latency", cold=True), Cell("latency")
    ideal = workload(warm, args, "x").ideal
    for mapper in mappers:
        with FakeOpenAIServer.spawn(latency=args.latency) as server:
            command = [
                sys.executable, __file__, "--child", mapper, "--url", server.base_url,
                "--latency-rows", str(args.latency_rows), "--latency", str(args.latency),
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            stats = server.stats()
        if done.returncode != 0:
            print(f"  {mapper}: the child failed:\n{done.stderr[-2000:]}", flush=True)
            continue
        runs = json.loads(done.stdout.strip().splitlines()[-1])
        for cell, run in zip((cold, warm), runs, strict=True):
            # Both maps in one server: its 429 count is the pair's (none expected here).
            outcomes.append(
                Outcome(
                    cell,
                    mapper,
                    run["rows"],
                    run["seconds"],
                    run["cpu"],
                    ideal,
                    stats.chat,
                    stats.rate_limited,
                    run["lost"],
                )
            )
            report(outcomes[-1])
    return outcomes


def child(args: argparse.Namespace) -> int:
    """In a fresh process: the first (cold) and second (warm) latency-bound map of `mapper`."""
    results = []
    if args.child == "ipychat":
        ipychat_shell(args.url)  # %load_ext, before the clock (the map comes straight after)
    for salt in ("cold", "warm"):
        work = workload(Cell("latency"), args, salt)
        if args.child == "ipychat":
            cpu0, t0 = time.process_time(), time.perf_counter()
            answers = ipychat_magic_map(args.url, work.prompts, salt)
        elif args.child == "aiohttp":
            cpu0, t0 = time.process_time(), time.perf_counter()
            answers = asyncio.run(aiohttp_mapper(args.url, work.prompts, work.max_tokens))
        else:
            cpu0, t0 = time.process_time(), time.perf_counter()
            answers = asyncio.run(
                oaib_mapper(args.url, work.prompts, work.max_tokens, NO_LIMIT, NO_LIMIT)
            )
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        lost = sum(1 for a in answers if not a)
        results.append({"rows": len(answers), "seconds": seconds, "cpu": cpu, "lost": lost})
    print(json.dumps(results))
    return 0


_SHELL: Any = None


def ipychat_shell(url: str) -> Any:
    """A real IPython shell where `%load_ext ipychat` ran, pointed at `url`: what a kernel
    has before its first map cell (the cold cell's clock starts after it)."""
    global _SHELL
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    if _SHELL is None:
        os.environ["OPENAI_API_KEY"] = KEY
        os.environ["IPYCHAT_CACHE_DIR"] = tempfile.mkdtemp(prefix="ipychat-bench-")
        _SHELL = InteractiveShell.instance()
        with capture_output():
            _SHELL.run_line_magic("load_ext", "ipychat")
            _SHELL.run_line_magic("chat", f"endpoint {url}")
            _SHELL.run_line_magic("chat", f"model {MODEL}")
    return _SHELL


def ipychat_magic_map(url: str, prompts: list[str], name: str) -> list[str | None]:
    """%%chatmap in the shell of `ipychat_shell` (the clock includes the magic: planning,
    the check, the progress, writing the frame)."""
    from IPython.utils.capture import capture_output

    shell = ipychat_shell(url)
    frame = pd.DataFrame({"text": prompts})
    shell.user_ns[name] = frame
    with capture_output():
        shell.run_cell_magic("chatmap", f"{name} -o out --concurrency 64 --max-tokens 16", "{text}")
    out = shell.user_ns[name]["out"].tolist()
    return [None if v is None or v != v else str(v) for v in out]


# ----- reporting ---------------------------------------------------------------------------


def report(o: Outcome, *, given: bool = False) -> None:
    mapper = o.mapper + (" (told the limits)" if given else "")
    print(
        f"  {o.cell.label:<27} {mapper:<28} E {o.e:6.3f}  429s {o.share:6.2%} "
        f"({o.rate_limited:>4}/{o.requests:<5})  lost {o.lost:>4}  "
        f"CPU {o.cpu / max(1, o.rows) * 1000:6.2f} ms/row  {o.seconds:6.2f} s"
        + ("" if o.goal else "  [no goal claimed]"),
        flush=True,
    )


def table(outcomes: list[Outcome]) -> str:
    head = (
        f"{'cell':<27} {'mapper':<26} {'E':>6} {'429s':>7} {'lost':>5} {'CPU/row':>10} {'time':>8}"
    )
    lines = [head, "-" * len(head)]
    last = None
    for o in outcomes:
        label = o.cell.label if o.cell != last else ""
        last = o.cell
        lines.append(
            f"{label:<27} {o.mapper:<26} {o.e:6.3f} {o.share:7.2%} {o.lost:5d} "
            f"{o.cpu / max(1, o.rows) * 1000:7.2f} ms {o.seconds:7.2f}s"
            + ("" if o.goal else "  (no goal)")
        )
    return "\n".join(lines)


def verdict(outcomes: list[Outcome]) -> list[str]:
    """The issue's goals, checked against this run."""
    lines = []
    cells: dict[Cell, dict[str, Outcome]] = {}
    for o in outcomes:
        cells.setdefault(o.cell, {})[o.mapper] = o
    for cell, by in cells.items():
        mine = by.get("ipychat")
        if mine is None:
            continue
        peers = {k: o for k, o in by.items() if not k.startswith("ipychat")}
        if cell.bound == "latency":
            hand = peers.get("aiohttp")
            if hand is None:
                continue
            ok_time = mine.seconds <= hand.seconds * 1.03
            cpu_ratio = (mine.cpu / max(1, mine.rows)) / max(1e-9, hand.cpu / max(1, hand.rows))
            lines.append(
                f"{cell.label:<27} time {mine.seconds / hand.seconds - 1:+.1%} vs aiohttp "
                f"(goal <= +3%) {_ok(ok_time)}; CPU/row {cpu_ratio:.2f}× aiohttp's "
                f"(goal <= 2×) {_ok(cpu_ratio <= 2)}"
            )
            continue
        behind = [k for k, o in peers.items() if o.lost == 0 and o.e >= mine.e and mine.lost == 0]
        ok = mine.e >= 0.97 and mine.share < 0.005 and mine.lost == 0 and not behind
        lines.append(
            f"{cell.label:<27} E {mine.e:.3f} (>= 0.97), 429s {mine.share:.2%} (< 0.5%), "
            f"lost {mine.lost}, ahead of {', '.join(peers) or '-'}"
            + (f" except {', '.join(behind)}" if behind else "")
            + f": {_ok(ok)}"
        )
    return lines


def _ok(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer rows")
    p.add_argument("--windows", default="1,10,60", help="seconds, e.g. 1,60")
    p.add_argument("--only", default="rpm,tpm,latency", help="which cells: rpm,tpm,latency")
    p.add_argument("--headers", default="on,off")
    p.add_argument("--mappers", default="ipychat,aiohttp,oaib")
    p.add_argument("--no-aimd", dest="aimd", action="store_false",
                   help="skip the 'headers off, no limits given' rows")  # fmt: skip
    p.add_argument("--rpm", type=int, default=6000)
    p.add_argument("--rpm-rows", type=int, default=1500)
    p.add_argument("--tpm", type=int, default=120_000)
    p.add_argument("--tpm-rows", type=int, default=600)
    p.add_argument("--tpm-max-tokens", type=int, default=64)
    p.add_argument("--latency-rows", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.rpm_rows, args.tpm_rows, args.latency_rows = 300, 120, 500
    args.mappers = args.mappers.split(",")
    only = args.only.split(",")
    windows = [float(w) for w in args.windows.split(",")]
    headers = [h == "on" for h in args.headers.split(",")]
    load = os.getloadavg()
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; fake servers spawned in child processes; "
        f"oaib {'installed' if oaib_available() else 'not installed'}",
        flush=True,
    )
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    for bound in ("rpm", "tpm"):
        if bound not in only:
            continue
        for window in windows:
            for on in headers:
                outcomes += limited_cell(Cell(bound, window, on), args)
    if "latency" in only:
        outcomes += latency_cells(args)
    print(f"\n{table(outcomes)}\n\nGoals:")
    if args.quick or args.rpm_rows != 1500 or args.tpm_rows != 600 or args.latency_rows != 2000:
        print("  (smaller sizes than the issue's: the goals are checked at its sizes only)")
    for line in verdict(outcomes):
        print("  " + line)
    load = os.getloadavg()
    print(
        f"\n{time.perf_counter() - started:.0f} s in all; load average at the end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    lost = sum(o.lost for o in outcomes if o.mapper.startswith("ipychat"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
