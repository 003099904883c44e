"""Ctrl-C at random points of a stream and of a map, 30 times each with a fixed seed.

A timer thread calls `_thread.interrupt_main()` (what a kernel interrupt does to the main
thread) at a random moment. Half the rounds go through the Python API, half through the
magics. After every round: the loop thread is alive and answers, no task is left on the
session's loop, the connections to the server stay bounded, the next request works, and
what finished before the interrupt is kept (a stream's partial reply in the thread, a map's
finished rows in the frame and the cache, never sent again).
"""

from __future__ import annotations

import _thread
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _support import (
    Tally,
    ipychat_threads,
    loop_responsive,
    loop_tasks,
    make_session,
    open_connections,
    prompt_of,
    run_cell,
    shell_on,
    succeeded,
    wait_for,
)
from IPython.core.error import UsageError

from ipychat.core.errors import Interrupted
from ipychat.core.types import Reply
from ipychat.map.job import MAX_CONCURRENCY, MapInterrupted
from ipychat.session import ChatSession, reset_session
from ipychat.testing import FakeOpenAIServer

pytestmark = [
    pytest.mark.slow,
    # A simulated Ctrl-C can land inside a garbage-collector callback, where Python reports
    # and drops it ("Exception ignored in ... KeyboardInterrupt"): that round then simply
    # completes. A real Ctrl-C does the same; it is not a failure of ipychat.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

ROUNDS = 30
SEED = 10_2024
LONG = " ".join(f"word{i}" for i in range(60))
MAP_ROWS = 150


def interrupt_after(delay: float, op: Callable[[], Any]) -> tuple[str, Any]:
    """Run `op` with a KeyboardInterrupt scheduled `delay` seconds in; how it ended."""
    timer = threading.Timer(delay, _thread.interrupt_main)
    try:
        try:
            timer.start()
            value = op()
        finally:
            timer.cancel()
            timer.join()
            time.sleep(0.002)  # a KeyboardInterrupt still pending lands here, not in pytest
        return "completed", value
    except (Interrupted, UsageError) as exc:
        return "interrupted", exc
    except KeyboardInterrupt as exc:  # before anything was sent, or after it all finished
        return "keyboard", exc


def loops() -> int:
    """Loop threads of ipychat sessions in this process (other tests' sessions included)."""
    return ipychat_threads().count("ipychat-loop")


def check_clean(
    session: ChatSession, server: FakeOpenAIServer, tally: Tally, where: str, baseline: int
) -> int:
    """The invariants after a round; returns the open connections (for the record)."""
    tally.leak_checks += 1
    problems = []
    if not loop_responsive(session):
        problems.append("loop thread does not answer")
    if loops() != baseline:  # an interrupt must never start (or strand) another loop thread
        problems.append(f"{loops()} loop threads, not {baseline}")
    if not wait_for(lambda: not loop_tasks(session), timeout=3):
        problems.append(f"tasks left {loop_tasks(session)}")
    connections = open_connections(server.port)
    if connections > MAX_CONCURRENCY:  # the pool's own bound (a map's): more would be a leak
        problems.append(f"{connections} connections")
    if problems:
        tally.leaks.append(f"{where}: {'; '.join(problems)}")
    assert not problems, problems
    return connections


@pytest.fixture
def slow_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(tokens_per_second=300, latency=(0.0, 0.03)) as s:
        yield s


def test_interrupt_a_stream_at_random_points(
    slow_server: FakeOpenAIServer, tmp_path: Path, tally: Tally
) -> None:
    server = slow_server
    session = make_session(server.base_url, tmp_path / "cache", read_timeout=5.0)
    rng = random.Random(SEED)
    outcomes: list[str] = []
    assert loop_responsive(session)
    baseline = loops()
    connections: list[int] = []
    try:
        with shell_on(session) as shell:
            for i in range(ROUNDS):
                prompt = f"round {i}: {LONG}"
                parts: list[str] = []
                via_magic = i % 2 == 1

                def api(prompt: str = prompt, parts: list[str] = parts) -> Reply:
                    with session.stream(prompt, cache=False) as stream:
                        for delta in stream:
                            parts.append(delta)
                    assert stream.reply is not None
                    return stream.reply

                def magic(prompt: str = prompt) -> str:
                    return run_cell(shell, "chat", "--no-cache", prompt)

                before = len(session.usage.rows)
                how, value = interrupt_after(rng.uniform(0.0, 0.3), magic if via_magic else api)
                outcomes.append(how)
                tally.interrupts[f"stream {how}"] += 1
                if how == "interrupted":
                    assert "Interrupted" in str(value) and "\n" not in str(value)
                    row = session.usage.rows[-1]
                    assert len(session.usage.rows) == before + 1 and row.outcome == "interrupted"
                    last = session.threads["main"].messages[-1]
                    assert last["role"] == "assistant"
                    # The partial reply is kept: in the thread, and in the exception's reply.
                    if not via_magic:
                        assert isinstance(value, Interrupted)
                        kept = value.reply.text if isinstance(value.reply, Reply) else ""
                        assert kept.startswith("".join(parts))
                        assert last["content"] == kept
                    assert f"Echo: {prompt}".startswith(last["content"])
                elif how == "completed":
                    assert session.threads["main"].messages[-1]["content"] == f"Echo: {prompt}"
                connections.append(
                    check_clean(session, server, tally, f"stream round {i}", baseline)
                )
                assert session.ask(f"ping {i}", cache=False).text == f"Echo: ping {i}"
    finally:
        session.close()
        reset_session(None)
    closed = wait_for(lambda: open_connections(server.port) == 0, timeout=3)
    gone = wait_for(lambda: loops() == baseline - 1, timeout=3)
    tally.leak_checks += 1
    if not (closed and gone):
        tally.leaks.append(f"stream: after close connections={not closed} thread={not gone}")
    tally.interrupts["stream connections max"] = max(connections)
    assert closed and gone
    assert outcomes.count("interrupted") >= ROUNDS // 3, outcomes


def test_interrupt_a_map_at_random_points(tmp_path: Path, tally: Tally) -> None:
    rng = random.Random(SEED + 1)
    connections: list[int] = []
    with FakeOpenAIServer(latency=(0.01, 0.05)) as server:
        session = make_session(server.base_url, tmp_path / "cache")
        try:
            with shell_on(session) as shell:
                # How long an uninterrupted map takes: the interrupts land anywhere in it.
                started = time.monotonic()
                session.map(pd.DataFrame({"text": range(MAP_ROWS)}), "Warm {text}", "out")
                duration = time.monotonic() - started
                baseline = loops()
                for i in range(ROUNDS):
                    frame = pd.DataFrame({"text": [f"r{i}-{j}" for j in range(MAP_ROWS)]})
                    via_magic = i % 2 == 1
                    shell.user_ns["df"] = frame

                    def api(frame: pd.DataFrame = frame) -> pd.DataFrame:
                        return session.map(frame, "Label {text}", "out")

                    def magic() -> pd.DataFrame:
                        run_cell(shell, "chatmap", "df -o out", "Label {text}")
                        return shell.user_ns["df"]

                    server.reset_log()
                    how, value = interrupt_after(
                        rng.uniform(0.0, duration * 0.6), magic if via_magic else api
                    )
                    tally.interrupts[f"map {how}"] += 1
                    kept: set[str] = set()
                    if how == "interrupted":
                        assert "Interrupted:" in str(value) and "rows written" in str(value)
                        partial = (
                            shell.user_ns["df"]
                            if via_magic
                            else value.result.frame
                            if isinstance(value, MapInterrupted)
                            else None
                        )
                        assert partial is not None
                        done = (
                            partial["out"].notna() if "out" in partial else partial["text"].isna()
                        )
                        for text, out in zip(
                            partial["text"][done], partial["out"][done], strict=True
                        ):
                            assert out == f"Echo: Label {text}"
                            kept.add(f"Label {text}")
                    connections.append(
                        check_clean(session, server, tally, f"map round {i}", baseline)
                    )
                    # Re-running finishes the map and sends only what was not kept.
                    first = len(server.chat_requests)
                    final = session.map(frame, "Label {text}", "out")
                    assert final["out"].notna().all() and "_error" not in final
                    again = {prompt_of(r) for r in server.chat_requests[first:]}
                    resent = kept & again
                    tally.rows_checked += MAP_ROWS
                    tally.duplicates += len(resent)
                    assert not resent, sorted(resent)[:5]
                    # A kept row got exactly one whole reply from the server. (A row cut by
                    # the interrupt on its way back was never received, so it is asked again.)
                    answers = Counter(prompt_of(r) for r in server.chat_requests if succeeded(r))
                    assert all(answers[p] == 1 for p in kept)
        finally:
            session.close()
            reset_session(None)
        closed = wait_for(lambda: open_connections(server.port) == 0, timeout=3)
        gone = wait_for(lambda: loops() == baseline - 1, timeout=3)
    tally.leak_checks += 1
    if not (closed and gone):
        tally.leaks.append(f"map: after close connections={not closed} thread={not gone}")
    tally.interrupts["map connections max"] = max(connections)  # keep-alive, pool of 256
    assert closed and gone
    assert tally.interrupts["map interrupted"] >= ROUNDS // 3
