"""A map started while the model's encoding is still loading (a fresh kernel: `%load_ext`
loads it in the background) sends at once with byte bounds, and counts exactly where the
count matters (ipychat.map.plan "counted later", ipychat.map.counting).

"Still loading" is made real: the test empties the loaded encodings and holds the very
lock `tokens.get_encoding` takes to load one, so anything that needs the encoding waits
until the test lets go. The server is a real FakeOpenAIServer on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest

from ipychat.core import foreground, tokens
from ipychat.core.errors import BudgetExceeded
from ipychat.engine.prepare import RequestOptions
from ipychat.map import job as chatmap
from ipychat.map.dispatch import wait_on_loop
from ipychat.map.mapper import MapJob
from ipychat.map.options import MapOptions
from ipychat.map.ratelimit import RateLimiter
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer

ENCODING = tokens.encoding_name_for("gpt-4o-mini")[0]
MAX_TOKENS = 16


@pytest.fixture
def loading(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Lock]:
    """As in a fresh kernel whose warm-up is building the encoding: nothing is loaded, and
    a load waits on the lock (held; the test releases it to let the load finish)."""
    monkeypatch.setattr(tokens, "_encodings", {})
    tokens.clear_cache()
    lock = tokens._load_locks[ENCODING]
    lock.acquire()
    try:
        yield lock
    finally:
        if lock.locked():
            lock.release()


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"text": [f"row {i}: a prompt of a few words, ünïcode too" for i in range(n)]}
    )


def _exact(session: ChatSession, prompt: str) -> int:
    """The prompt tokens of a map row's request, counted with the loaded encoding."""
    body = session.engine.one_body(prompt, RequestOptions("gpt-4o-mini", max_tokens=MAX_TOKENS))
    return tokens.count_messages(body["messages"], "gpt-4o-mini").tokens


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["result"] = target()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, out


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_map_sends_while_the_encoding_loads_and_never_waits_for_it(
    loading: threading.Lock, make_session: Callable[..., ChatSession], fake: FakeOpenAIServer
) -> None:
    session = make_session(fake)
    df = _frame(20)
    thread, out = _in_thread(
        lambda: chatmap.run(session, df, "{text}", "out", max_tokens=MAX_TOKENS, cache="off")
    )
    thread.join(30)
    # Done, every row answered, and the encoding never loaded: the lock is still ours.
    assert not thread.is_alive() and "error" not in out
    assert loading.locked() and ENCODING not in tokens._encodings
    assert len(fake.chat_requests) == 20
    result = out["result"]
    assert result.frame["out"].notna().all()
    plan = result.plan
    assert plan.counting and plan.send == 20
    assert "up to" in plan.line() and "(counting)" in plan.line()
    loading.release()
    exact = sum(_exact(session, t) for t in df["text"])
    # A bound, never below the count (the ü and ï are two bytes each, one token at most).
    assert plan.prompt_tokens >= exact
    # The ledger took the server's usage, not the bound.
    rows = session.usage.rows[-20:]
    assert all(not row.estimated for row in rows)


def test_counts_become_exact_once_a_token_limit_is_known(
    loading: threading.Lock,
    make_session: Callable[..., ChatSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server sends OpenAI's x-ratelimit-* headers: the first reply teaches a token limit,
    # and from then on the rate limiter's charges must be tokens, not bytes.
    learnt: list[tuple[float, float | None]] = []  # (charged, the server's count) per reply
    real_accepted = RateLimiter.accepted

    def accepted(self: RateLimiter, ticket: Any, info: Any, now: float, server: Any = None) -> None:
        learnt.append((ticket.tokens, server))
        real_accepted(self, ticket, info, now, server)

    monkeypatch.setattr(RateLimiter, "accepted", accepted)
    with FakeOpenAIServer(tpm=10_000_000, rpm=1_000_000, latency=0.05) as server:
        session = make_session(server)
        options = MapOptions.of("out", max_tokens=MAX_TOKENS, cache="off", concurrency=4)
        mapper = MapJob(session.engine, _frame(40), "{text}", options, count_later=True)
        assert mapper.plan.counting and not any(job.counted for job in mapper.to_send)
        bounds = {job.key: job.tokens for job in mapper.to_send}
        thread, out = _in_thread(
            lambda: wait_on_loop(session.runner, mapper.execute(), lambda: None)
        )
        # Sent before the encoding is loaded (the lock is still held here).
        assert _until(lambda: len(server.chat_requests) >= 1), out
        assert loading.locked() and ENCODING not in tokens._encodings
        loading.release()
        thread.join(30)
        assert not thread.is_alive() and "error" not in out
    assert all(job.counted for job in mapper.to_send)
    for job in mapper.to_send:
        exact = tokens.count_messages(job.body["messages"], "gpt-4o-mini").tokens
        assert job.prepared.estimate.prompt_tokens == exact
        assert job.tokens == exact + MAX_TOKENS < bounds[job.key]
    plan = mapper.plan
    assert not plan.counting
    assert plan.prompt_tokens == sum(job.prepared.estimate.prompt_tokens for job in mapper.to_send)
    # The limiter learns how the server counts against our count from exact charges only:
    # a reply to a request charged its bytes teaches it nothing.
    charged = {job.tokens for job in mapper.to_send}
    assert any(server is None for _, server in learnt)  # the first, charged a bound
    assert all(tokens_ in charged for tokens_, server in learnt if server is not None)


@pytest.mark.parametrize(
    "why",
    ["max_cost", "budget", "tpm", "schema"],
)
def test_a_map_that_needs_its_exact_total_first_waits_for_the_encoding(
    why: str,
    loading: threading.Lock,
    make_session: Callable[..., ChatSession],
    fake: FakeOpenAIServer,
) -> None:
    session = make_session(fake)
    options: dict[str, Any] = {"max_tokens": MAX_TOKENS, "cache": "off"}
    if why == "max_cost":
        options["max_cost"] = 1.0  # a bound could refuse a map that fits
    elif why == "budget":
        session.engine.usage.budget = 5.0
    elif why == "tpm":
        options["tpm"] = 1_000_000  # pacing charges must be tokens
    else:
        options["choices"] = ["yes", "no"]  # a typed map counts its schema anyway
    if why != "schema":
        options["output"] = "out"
    df = _frame(5)
    thread, out = _in_thread(lambda: chatmap.run(session, df, "{text}", **options))
    time.sleep(0.5)
    assert fake.chat_requests == [] and thread.is_alive()  # waiting for the count
    loading.release()
    thread.join(30)
    assert not thread.is_alive() and "error" not in out
    plan = out["result"].plan
    assert not plan.counting and len(fake.chat_requests) >= 5  # typed: a re-ask each
    if why != "schema":
        assert plan.prompt_tokens == sum(_exact(session, t) for t in df["text"])


def test_a_max_cost_the_bound_would_break_is_not_refused(
    monkeypatch: pytest.MonkeyPatch,
    make_session: Callable[..., ChatSession],
    fake: FakeOpenAIServer,
) -> None:
    # --max-cost between the exact total and the bound's: counted first, the map fits.
    monkeypatch.setattr(tokens, "_encodings", {})
    session = make_session(fake)
    df = _frame(5)
    options = MapOptions.of("out", max_tokens=1, cache="off")
    bounded = MapJob(session.engine, df, "{text}", options, count_later=True).plan
    assert bounded.counting and ENCODING not in tokens._encodings
    exact = chatmap.plan(session, df, "{text}", "out", max_tokens=1, cache="off")
    assert exact.cost_high is not None and bounded.cost_high is not None
    assert bounded.cost_high > exact.cost_high * 1.5
    limit = (exact.cost_high + bounded.cost_high) / 2
    tokens._encodings.clear()  # loading again, as in a fresh kernel
    result = chatmap.run(session, df, "{text}", "out", max_tokens=1, max_cost=limit, cache="off")
    assert result.frame["out"].notna().all() and not result.plan.counting
    with pytest.raises(BudgetExceeded):  # the check is real: just under the exact total
        chatmap.run(session, df, "{text}", "out", max_tokens=1, max_cost=exact.cost_high * 0.99)


def test_a_prompt_whose_bound_does_not_fit_the_context_is_counted_not_refused(
    monkeypatch: pytest.MonkeyPatch,
    make_session: Callable[..., ChatSession],
    fake: FakeOpenAIServer,
) -> None:
    monkeypatch.setattr(tokens, "_encodings", {})  # not loaded yet (it loads when asked)
    session = make_session(fake)
    window = session.engine.context_window("gpt-4o-mini")
    # " hello" is one token of six bytes: the bound is six times the count.
    long = " hello" * (window // 3)
    assert len(long.encode()) > window > window // 3 + MAX_TOKENS + 100
    df = pd.DataFrame({"text": ["short one", long]})
    mapper = MapJob(
        session.engine, df, "{text}", MapOptions.of("out", max_tokens=MAX_TOKENS), count_later=True
    )
    assert mapper.errors == [None, None]  # not refused for its bound
    by_rows = {tuple(job.rows): job for job in mapper.to_send}
    assert not by_rows[(0,)].counted  # the short one sent on its bound
    assert by_rows[(1,)].counted  # the long one counted (the encoding loaded for it)
    exact = tokens.count_messages(by_rows[(1,)].body["messages"], "gpt-4o-mini").tokens
    assert by_rows[(1,)].prepared.estimate.prompt_tokens == exact < window


def test_the_warm_up_does_not_build_an_encoding_while_a_map_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(foreground, "IDLE_AFTER", 0.2)
    started: list[float] = []
    real_load = tokens._load
    monkeypatch.setattr(
        tokens, "_load", lambda name: started.append(time.monotonic()) or real_load(name)
    )
    with foreground.busy():
        thread, out = _in_thread(lambda: tokens.warm(["gpt-4o-mini"], when_idle=True))
        time.sleep(0.3)
        assert thread.is_alive() and started == []
        ended = time.monotonic()
    thread.join(30)
    assert not thread.is_alive() and "error" not in out
    assert ENCODING in tokens._encodings
    assert started[0] - ended >= 0.2  # and not within IDLE_AFTER of the map's end
    # Loading on demand is never held up by a running map.
    monkeypatch.setattr(tokens, "_encodings", {})
    with foreground.busy():
        assert tokens.count_text("hello", "gpt-4o-mini") == 1


def test_the_warm_up_waits_a_quiet_moment_even_before_any_map_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh kernel: no map has run, and the next cell (a notebook run top to bottom) may be
    # the first one. Building the encoding at once would compete with it for the GIL.
    monkeypatch.setattr(foreground, "_ended", float("-inf"))
    monkeypatch.setattr(foreground, "IDLE_AFTER", 0.3)
    thread, out = _in_thread(lambda: foreground.wait_idle() or time.monotonic())
    time.sleep(0.1)
    assert thread.is_alive()  # no map yet, but no quiet moment either
    with foreground.busy():  # the first map starts before the quiet moment came
        time.sleep(0.3)
        assert thread.is_alive()
        ended = time.monotonic()
    thread.join(30)
    assert not thread.is_alive() and "error" not in out
    assert out["result"] - ended >= 0.3  # a quiet moment after the map, as after any map
