"""The kernel session against a real loopback server: ask, stream, threads, context, cache,
estimates, budgets, interrupts."""

from __future__ import annotations

import _thread
import asyncio
import re
import subprocess
import sys
import threading

import pytest

from ipychat.core import pricing, tokens
from ipychat.core.errors import (
    BudgetExceeded,
    ChatError,
    ConfigError,
    ContextLengthError,
    Interrupted,
    OfflineCacheMiss,
)
from ipychat.core.types import Usage
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer


def sent_messages(server: FakeOpenAIServer, index: int = -1) -> list[dict]:
    return server.chat_requests[index].body["messages"]


def test_ask_returns_a_reply_with_usage_and_cost(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    reply = session.ask("What is 2+2?")
    assert reply.text == "Echo: What is 2+2?"
    assert str(reply) == reply.text
    assert reply.model and reply.finish_reason == "stop" and not reply.cached
    assert reply.usage is not None and not reply.usage.estimated
    # the server's own usage wins over our estimate, and the cost follows the price table
    assert reply.cost == pytest.approx(
        pricing.cost(reply.usage, pricing.default_table().lookup("gpt-4o-mini"))
    )
    assert reply.latency > 0
    assert (
        "Echo: What is 2+2?" in reply._repr_markdown_() and "thread main" in reply._repr_markdown_()
    )
    body = fake.chat_requests[0].body
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 1024
    assert "stream" not in body or body["stream"] is False


def test_threads_keep_their_own_context(session: ChatSession, fake: FakeOpenAIServer) -> None:
    session.ask("first")
    session.ask("second")
    assert [m["content"] for m in sent_messages(fake)] == ["first", "Echo: first", "second"]
    session.ask("elsewhere", thread="other")
    assert [m["content"] for m in sent_messages(fake)] == ["elsewhere"]
    session.ask("third", new=True)
    assert [m["content"] for m in sent_messages(fake)] == ["third"]
    assert session.threads["main"].turns == 1 and session.threads["other"].turns == 1


def test_system_prompt_is_sent_first(session: ChatSession, fake: FakeOpenAIServer) -> None:
    session.configure(system="Be brief.")
    session.ask("hi")
    assert sent_messages(fake)[0] == {"role": "system", "content": "Be brief."}
    session.ask("again", system="Be long.")
    assert sent_messages(fake)[0]["content"] == "Be long."


def test_stream_yields_deltas_and_then_the_reply(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    stream = session.stream("tell me a story about streams")
    deltas = list(stream)
    assert len(deltas) > 3
    assert "".join(deltas) == "Echo: tell me a story about streams"
    assert stream.reply is not None and stream.reply.text == "".join(deltas)
    assert stream.estimate is not None and stream.estimate.prompt_tokens > 0
    assert stream.reply.usage is not None and not stream.reply.usage.estimated
    assert fake.chat_requests[0].body["stream"] is True
    assert fake.chat_requests[0].body["stream_options"] == {"include_usage": True}


def test_stream_without_server_usage_counts_locally() -> None:
    with FakeOpenAIServer(include_usage_chunk=False) as server:
        s = ChatSession(Settings(base_url=server.base_url, model="gpt-4o-mini"), cache=False)
        try:
            stream = s.stream("count me")
            text = "".join(stream)
            reply = stream.reply
            assert reply is not None and reply.usage is not None and reply.usage.estimated
            assert reply.usage.completion_tokens == tokens.count_text(text, "gpt-4o-mini")
            assert (
                reply.usage.prompt_tokens
                == s.count([{"role": "user", "content": "count me"}]).tokens
            )
            assert s.usage.rows[-1].estimated
        finally:
            s.close()


def test_cache_hit_is_free_and_sends_nothing(session: ChatSession, fake: FakeOpenAIServer) -> None:
    first = session.ask("cache me", thread="a")
    second = session.ask("cache me", thread="b")  # same messages on a fresh thread: same key
    assert len(fake.chat_requests) == 1
    assert second.cached and second.cost == 0 and second.text == first.text
    assert second.saved == pytest.approx(first.cost)
    assert session.usage.rows[-1].cached and session.usage.saved == pytest.approx(first.cost)
    session.ask("cache me", thread="c", cache="refresh")
    session.ask("cache me", thread="d", cache=False)
    assert len(fake.chat_requests) == 3


def test_offline_mode_serves_from_cache_and_refuses_misses(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    session.ask("known", thread="a")
    session.configure(offline=True)
    assert session.ask("known", thread="b").cached
    with pytest.raises(OfflineCacheMiss, match="not in the cache"):
        session.ask("unknown", thread="c")
    assert len(fake.chat_requests) == 1


def test_estimate_matches_the_token_counter(session: ChatSession) -> None:
    session.ask("earlier turn")
    est = session.estimate("What next?")
    messages = [
        {"role": "user", "content": "earlier turn"},
        {"role": "assistant", "content": "Echo: earlier turn"},
        {"role": "user", "content": "What next?"},
    ]
    assert est.prompt_tokens == tokens.count_messages(messages, "gpt-4o-mini").tokens
    assert est.messages == 3 and not est.approximate and est.max_completion_tokens == 1024
    price = pricing.default_table().lookup("gpt-4o-mini")
    assert est.cost_high == pytest.approx(
        (est.prompt_tokens * price.input + 1024 * price.output) / 1e6
    )
    assert 0 < est.cost_low < est.cost_high
    unknown = session.estimate("hi", model="my-llama")
    assert unknown.approximate and unknown.cost_high is None


def test_history_is_trimmed_by_tokens_to_fit_the_context(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    session.prices.override("tiny", input=1.0, output=1.0, context_window=300)
    session.configure(system="sys")
    for i in range(6):
        session.ask(f"turn {i} " + "word " * 30, model="tiny", max_tokens=50)
    reply = session.ask("last", model="tiny", max_tokens=50)
    sent = sent_messages(fake)
    assert sent[0]["content"] == "sys" and sent[-1]["content"] == "last"
    assert reply.dropped_turns > 0
    assert session.count(sent, "tiny").tokens <= 300 - 50
    assert "left out to fit" in reply._repr_markdown_()


def test_oversized_prompt_is_refused_before_sending(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    session.configure(max_input_tokens=20)
    with pytest.raises(ContextLengthError, match="over max_input_tokens 20"):
        session.ask("word " * 100)
    session.prices.override("small", input=1.0, output=1.0, context_window=100)
    session.configure(max_input_tokens=None)
    with pytest.raises(ContextLengthError, match="needs"):
        session.ask("word " * 200, model="small", max_tokens=10)
    assert fake.chat_requests == []


def test_budget_refuses_before_anything_is_sent(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    session.usage.budget = 0.0001
    with pytest.raises(BudgetExceeded, match=r"Budget: spent \$0.00 of \$0.0001; ") as info:
        session.ask("hello", max_tokens=1000)
    with pytest.raises(BudgetExceeded, match="max-cost"):
        session.ask("hello", max_tokens=10, max_cost=0.0)
    assert fake.chat_requests == []
    assert session.threads["main"].turns == 0
    # The refusal names the levers, exactly: the largest --max-tokens that fits comes first
    # (one more does not fit), then the budget that would let the request through as it is.
    fits = re.search(
        r"--max-tokens (\d+) fits, or raise the budget with %chat budget ([\d.]+)\.$",
        str(info.value),
    )
    assert fits is not None, str(info.value)
    n, budget = int(fits.group(1)), float(fits.group(2))
    with pytest.raises(BudgetExceeded):
        session.ask("hello", max_tokens=n + 1)
    assert session.ask("hello", max_tokens=n).text == "Echo: hello"
    session.usage.budget = budget
    assert session.ask("hello", max_tokens=1000, new=True).text == "Echo: hello"


def test_errors_are_recorded_in_the_ledger() -> None:
    with FakeOpenAIServer(require_key="sk-right-key-000000000000") as server:
        s = ChatSession(
            Settings(base_url=server.base_url, api_key="sk-wrong-key-00000000000"), cache=False
        )
        try:
            with pytest.raises(ChatError, match=r"401|key"):
                s.ask("hi")
            assert s.usage.rows[-1].outcome == "error"
            assert s.threads["main"].turns == 0
        finally:
            s.close()


def test_bad_settings_change_nothing(session: ChatSession) -> None:
    for bad in (
        {"temperature": 5},
        {"max_tokens": 0},
        {"base_url": "ftp://x"},
        {"base_url": "nonsense"},
        {"model": " "},
        {"nope": 1},
    ):
        with pytest.raises(ConfigError):
            session.configure(**bad)
    assert session.settings.temperature is None and session.settings.max_tokens == 1024
    with pytest.raises(ChatError, match="empty"):
        session.ask("   ")
    with pytest.raises(ConfigError, match="No thread named"):
        session.reset("ghost")


def test_aask_works_from_a_running_loop(session: ChatSession) -> None:
    async def main() -> str:
        replies = await asyncio.gather(session.aask("a", thread="x"), session.aask("b", thread="y"))
        return " | ".join(r.text for r in replies)

    assert asyncio.run(main()) == "Echo: a | Echo: b"


def test_interrupt_mid_stream_keeps_the_partial_reply() -> None:
    with FakeOpenAIServer(tokens_per_second=20) as server:
        s = ChatSession(Settings(base_url=server.base_url), cache=False)
        try:
            prompt = "slow " * 40
            got: list[str] = []
            with pytest.raises(Interrupted) as info, s.stream(prompt) as stream:
                for delta in stream:
                    got.append(delta)
                    if len(got) == 2:  # Ctrl-C lands mid-stream, wherever the main thread is
                        threading.Timer(0.05, _thread.interrupt_main).start()
            reply = info.value.reply
            assert reply is not None and reply.interrupted
            # everything that reached the kernel is kept, even deltas not yet consumed
            assert reply.text.startswith("".join(got))
            assert len("".join(got)) > 0 and len(reply.text) < len("Echo: " + prompt)
            assert s.threads["main"].messages[-1]["content"] == reply.text
            assert s.usage.rows[-1].outcome == "interrupted"
            # the loop is healthy: the next request works
            assert s.ask("after").text == "Echo: after"
        finally:
            s.close()


def test_interrupt_while_waiting_for_a_non_streamed_reply() -> None:
    with FakeOpenAIServer(latency=5) as server:
        s = ChatSession(Settings(base_url=server.base_url), cache=False)
        try:
            threading.Timer(0.3, _thread.interrupt_main).start()
            with pytest.raises(Interrupted, match="before the reply started"):
                s.ask("wait")
            assert s.usage.rows[-1].outcome == "interrupted"
        finally:
            s.close()


def test_close_releases_the_loop_thread(session: ChatSession) -> None:
    session.ask("hi")
    session.close()
    assert not session.runner.running
    assert session.ask("again", thread="t2").text == "Echo: again"  # usable again


def test_usage_rows_reconcile_with_server_usage(session: ChatSession) -> None:
    reply = session.ask("reconcile")
    row = session.usage.rows[-1]
    assert (row.prompt_tokens, row.completion_tokens) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert row.cost == pytest.approx(reply.cost)
    frame = session.usage.to_frame()
    assert frame["cost"].sum() == pytest.approx(reply.cost)


def test_cost_with_cached_prompt_tokens() -> None:
    price = pricing.default_table().lookup("gpt-4o-mini")
    usage = Usage(prompt_tokens=1000, completion_tokens=100, cached_tokens=400)
    expected = (600 * price.input + 400 * price.cached_input + 100 * price.output) / 1e6
    assert pricing.cost(usage, price) == pytest.approx(expected)


def test_engine_imports_no_front_end() -> None:
    code = (
        "import sys, ipychat.session; print('IPython' in sys.modules, 'ipywidgets' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_endpoint_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipychat.engine import local

    s = ChatSession(Settings(), cache=False)
    monkeypatch.setattr(local, "available", lambda: False)
    assert s.endpoint().kind == "none" and s.model == "gpt-4o-mini"
    with pytest.raises(ConfigError, match=r"No API key and no endpoint.*ipychat\[local\]"):
        s.ask("hi")
    s.close()
    s.engine.router.local_available = None
    monkeypatch.setattr(local, "available", lambda: True)
    assert s.endpoint().kind == "local" and s.is_local and s.model == "local"
    assert s.host == "local model" and s.base_url.startswith("local://")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-000000000000000")
    assert s.endpoint().kind == "openai" and s.base_url == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1234/v1/")
    assert s.endpoint().kind == "custom" and s.base_url == "http://127.0.0.1:1234/v1"
    s.configure(base_url="local")
    assert s.is_local
    s.configure(base_url="http://example.test/v1", model="m")
    assert s.base_url == "http://example.test/v1" and s.model == "m"


def test_local_endpoint_is_free_and_approximate(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipychat.engine import local

    monkeypatch.setattr(local, "available", lambda: True)
    s = ChatSession(Settings(), cache=False)
    est = s.estimate("How much?")
    assert est.model == "local" and est.approximate and est.cost_high == 0
    assert est.context_window == 2048 and est.max_completion_tokens == 1024


def test_reply_timeout_bounds_a_silent_non_streamed_reply(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    # A non-streamed reply waits for the whole answer, so read_timeout alone never ended it:
    # a server that went silent held the request (every %%chatmap row) for 600 s.
    import time

    from ipychat.core.errors import APITimeoutError
    from ipychat.testing import Fault

    session.configure(read_timeout=0.3, reply_timeout=0.5, max_retries=0)
    fake.script(Fault.hang())
    started = time.monotonic()
    with pytest.raises(APITimeoutError, match=r"sent nothing for 0\.5 s"):
        session.ask("anyone there?", cache=False)
    assert time.monotonic() - started < 5
    assert session.ask("and now?", cache=False).text == "Echo: and now?"
    with pytest.raises(ConfigError, match="reply_timeout"):
        session.configure(reply_timeout=0)


def test_an_endpoint_with_a_password_in_it_is_refused_without_echoing_it(
    session: ChatSession, fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to be accepted, shown back by %chat endpoint, and every request then failed
    # with aiohttp's raw ValueError (an Authorization header plus URL credentials).
    url = f"http://user:hunter2@127.0.0.1:{fake.port}/v1"
    with pytest.raises(ConfigError, match="user name or password") as info:
        session.configure(base_url=url)
    assert "hunter2" not in str(info.value)
    bare = ChatSession(Settings(api_key="sk-x", model="gpt-4o-mini"), cache=False)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    try:
        with pytest.raises(ConfigError, match="user name or password") as info:
            bare.ask("hi")
        assert "hunter2" not in str(info.value)
    finally:
        bare.close()
    assert fake.chat_requests == []


def test_a_key_given_to_settings_as_a_str_is_masked_like_any_other() -> None:
    # Settings(api_key="sk-…") kept the plain str: repr(settings) (and every traceback that
    # shows it) printed the key, and the settings could be pickled with it.
    import pickle

    from ipychat.core.keys import Secret

    key = "sk-plain-" + "k" * 30
    settings = Settings(api_key=key)
    assert isinstance(settings.api_key, Secret) and settings.api_key.reveal() == key
    assert key not in repr(settings) and key not in repr(
        ChatSession(settings, cache=False).settings
    )
    with pytest.raises(TypeError):
        pickle.dumps(settings)


def test_code_draining_on_a_closing_loop_never_starts_another_loop_thread() -> None:
    # A panel callback that ran while its session closed asked for `session.loop` and got a
    # brand-new loop thread that nobody would ever stop (one leaked thread per closed panel).
    import time

    from ipychat.core.runner import LoopThread

    runner = LoopThread(name="test-draining-loop")
    seen: list[asyncio.AbstractEventLoop] = []

    async def busy() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            seen.append(runner.loop)  # cleanup that touches the loop during the drain

    old = runner.loop
    runner.submit(busy())
    time.sleep(0.05)
    runner.stop()
    assert seen == [old]
    assert not [t for t in threading.enumerate() if t.name == "test-draining-loop"]
    assert runner.loop is not old  # used again afterwards: a fresh loop, as documented
    runner.stop()


def test_sessions_left_open_are_closed_at_exit() -> None:
    code = (
        "from ipychat.session import ChatSession, Settings\n"
        "from ipychat.testing import FakeOpenAIServer\n"
        "server = FakeOpenAIServer().start()\n"
        "s = ChatSession(Settings(base_url=server.base_url), cache=False)\n"
        "print(s.ask('hi').text)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "Echo: hi"
    assert "Unclosed" not in done.stderr, done.stderr  # aiohttp's warning at exit


def test_the_ledger_and_the_cost_name_the_model_that_answered() -> None:
    # OpenAI answers a request for an alias with the snapshot that served it: "model: The
    # model used for the chat completion" (https://platform.openai.com/docs/api-reference/
    # chat/object), e.g. gpt-4o-2024-05-13 for gpt-4o. The footer, the ledger and the cost
    # are that model's, not the alias's.
    import json as _json

    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        body = _json.loads(request.content)
        assert body["model"] == "gpt-4o"
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "gpt-4o-2024-05-13",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Paris."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0, "total_tokens": 1},
            },
        )

    s = ChatSession(
        Settings(base_url="https://llm.test/v1", api_key="sk-test-" + "m" * 24),
        transport=httpx.MockTransport(handler),
        cache=False,
    )
    try:
        s.prices.override("gpt-4o", input=2.5, output=10)
        s.prices.override("gpt-4o-2024-05-13", input=5, output=15)
        reply = s.ask("Capital of France?", model="gpt-4o")
        assert reply.model == "gpt-4o-2024-05-13" and reply.cost == pytest.approx(5.0)
        (row,) = s.usage.rows
        assert row.model == "gpt-4o-2024-05-13" and row.cost == pytest.approx(5.0)
    finally:
        s.close()


def test_a_script_using_the_panel_and_sessions_exits_without_aiohttp_warnings() -> None:
    # A session used in a function and dropped unclosed (its panel closed) was collected
    # with its aiohttp session open: "Unclosed client session" on stderr, and its loop
    # thread ran on. The kernel's session and a panel left open at exit must be quiet too.
    code = """
import gc, threading, time
from ipychat.session import ChatSession, Settings, get_session
from ipychat.testing import FakeOpenAIServer
from ipychat.notebook.widget import ChatPanel

server = FakeOpenAIServer().start()
KEY = "sk-test-" + "x" * 24

def ask_in_panel(session, prompt):
    panel = ChatPanel(session)
    panel.prompt.value = prompt
    panel.send.click()
    deadline = time.monotonic() + 20
    while len(session.threads["main"].messages) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    print(session.threads["main"].messages[-1]["content"])
    return panel

def used_and_dropped():
    s = ChatSession(Settings(base_url=server.base_url, api_key=KEY), cache=False)
    ask_in_panel(s, "from the panel").close()
    return s.ask("from code", thread="code").text

print(used_and_dropped())
gc.collect()
time.sleep(0.2)
print("loops", sum(t.name == "ipychat-loop" for t in threading.enumerate()))
kept = get_session()
kept.configure(base_url=server.base_url, api_key=KEY)
left_open = ask_in_panel(kept, "open at exit")
"""
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == [
        "Echo: from the panel",
        "Echo: from code",
        "loops 0",
        "Echo: open at exit",
    ], done.stdout
    assert "Unclosed" not in done.stderr, done.stderr
    assert "ResourceWarning" not in done.stderr, done.stderr


def test_closing_while_a_request_makes_the_client_leaks_nothing() -> None:
    # close() while a task on the loop is still making or using the client (the panel's
    # model list fetched just before %unload_ext): the client that task makes must be closed
    # too, not left for the garbage collector ("Unclosed client session").
    code = """
import gc
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer

server = FakeOpenAIServer(latency=0.05).start()
for _ in range(20):
    s = ChatSession(Settings(base_url=server.base_url, api_key="sk-test-" + "x" * 24), cache=False)
    s.submit(s.amodels())
    s.close()
    gc.collect()
print("done")
"""
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    assert "Unclosed" not in done.stderr, done.stderr
