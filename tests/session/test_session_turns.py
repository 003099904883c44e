"""Turns that remember their cell, and comparing models, through the session against the
real loopback server (issue 18, items 1 and 6)."""

from __future__ import annotations

import pytest

from ipychat.conversation import TurnRecord
from ipychat.core.errors import ConfigError
from ipychat.core.settings import Settings
from ipychat.session import ChatSession, Event
from ipychat.testing import FakeOpenAIServer, Fault


def sent(fake: FakeOpenAIServer, n: int = -1) -> list[str]:
    """The message texts of the n-th chat request the server received."""
    return [m["content"] for m in fake.chat_requests[n].body["messages"]]


def test_running_a_cell_again_replaces_its_turn(session: ChatSession, fake) -> None:
    for _ in range(3):
        reply = session.ask("what is 2+2?", cell="cell-a")
    thread = session.threads["main"]
    assert thread.turns == 1 and thread.cells == ["cell-a"]
    assert sent(fake) == ["what is 2+2?"]  # never the discarded attempts
    assert reply.turn == 1 and reply.replaced and reply.later_turns == 0 and reply.cell == "cell-a"


def test_the_model_sees_the_turns_before_the_replaced_one_and_later_ones_stay(
    session: ChatSession, fake
) -> None:
    session.ask("one", cell="a")
    session.ask("two", cell="b")
    session.ask("three", cell="c")
    reply = session.ask("two, again", cell="b")
    assert sent(fake) == ["one", "Echo: one", "two, again"]
    assert reply.turn == 2 and reply.replaced and reply.later_turns == 1
    assert [m["content"] for m in session.threads["main"].messages] == [
        "one",
        "Echo: one",
        "two, again",
        "Echo: two, again",
        "three",
        "Echo: three",
    ]
    session.ask("four", cell="d")  # a new cell appends, after every turn
    assert sent(fake) == [
        "one",
        "Echo: one",
        "two, again",
        "Echo: two, again",
        "three",
        "Echo: three",
        "four",
    ]


def test_out_of_order_runs_keep_each_cells_slot(session: ChatSession, fake) -> None:
    session.ask("A", cell="a")
    session.ask("B", cell="b")
    session.ask("A2", cell="a")  # back to the first cell: asked with nothing before it
    assert sent(fake) == ["A2"]
    session.ask("B2", cell="b")  # then the second, after the new first turn
    assert sent(fake) == ["A2", "Echo: A2", "B2"]
    assert session.threads["main"].turns == 2


def test_turns_without_a_cell_append_and_new_starts_over(session: ChatSession, fake) -> None:
    session.ask("x")
    session.ask("x")
    assert session.threads["main"].turns == 2  # a terminal or the panel: no cell, no replace
    session.ask("fresh", cell="a", new=True)
    assert session.threads["main"].turns == 1 and sent(fake) == ["fresh"]
    session.ask("fresh again", cell="a")
    assert session.threads["main"].turns == 1


def test_a_cell_owns_one_turn_per_thread(session: ChatSession, fake) -> None:
    session.ask("in main", cell="a")
    reply = session.ask("in side", cell="a", thread="side")
    assert not reply.replaced and session.threads["main"].turns == 1
    assert session.threads["side"].turns == 1


def test_the_reply_event_carries_the_turn_and_the_cache_key(session: ChatSession, fake) -> None:
    events: list[Event] = []
    session.subscribe(events.append)
    session.ask("one", cell="a")
    session.ask("one more", cell="a")
    replies = [e.reply for e in events if e.kind == "reply"]
    assert [r.turn for r in replies if r] == [1, 1]
    assert replies[-1] is not None and replies[-1].replaced
    assert replies[-1].cache_key and len(replies[-1].cache_key) == 64


def test_a_failed_rerun_leaves_the_old_turn(session: ChatSession, fake) -> None:
    session.ask("keep me", cell="a")
    fake.script(Fault.status(400, message="bad request"))
    with pytest.raises(Exception, match="bad request"):
        session.ask("replace me", cell="a")
    assert [m["content"] for m in session.threads["main"].messages] == ["keep me", "Echo: keep me"]


def test_restore_refuses_a_thread_with_turns_unless_replacing(session: ChatSession) -> None:
    session.restore("old", [TurnRecord("q", "a", "c1")])
    assert session.threads["old"].cells == ["c1"]
    with pytest.raises(ConfigError, match="--force"):
        session.restore("old", [TurnRecord("q2", "a2")])
    session.restore("old", [TurnRecord("q2", "a2")], replace=True)
    assert [m["content"] for m in session.threads["old"].messages] == ["q2", "a2"]


# ----- compare models ---------------------------------------------------------------------------


def test_compare_sends_one_request_per_model_and_keeps_the_first(
    session: ChatSession, fake
) -> None:
    session.ask("before")
    fake.reset_log()
    result = session.compare("which?", ["gpt-4o-mini", "gpt-4.1-mini"], cell="c")
    models = sorted(r.body["model"] for r in fake.chat_requests)
    assert models == ["gpt-4.1-mini", "gpt-4o-mini"]  # one each, nothing more
    for request in fake.chat_requests:  # the same history and prompt for both
        assert [m["content"] for m in request.body["messages"]] == [
            "before",
            "Echo: before",
            "which?",
        ]
    assert result.kept == "gpt-4o-mini" and result.reply is not None
    assert result.reply.turn == 2 and result["gpt-4.1-mini"] is not None
    assert session.threads["main"].turns == 2 and session.threads["main"].cells == [None, "c"]
    assert session.usage.summary() and {s.model for s in session.usage.summary()} >= {
        "gpt-4o-mini",
        "gpt-4.1-mini",
    }
    text = result.text()
    assert "── gpt-4o-mini (kept) ──" in text and "── gpt-4.1-mini ──" in text and "tokens" in text
    data, metadata = result._repr_mimebundle_()
    assert data["text/markdown"].count("<td") == 2
    assert "**gpt-4o-mini (kept)**" in data["text/markdown"]
    saved = metadata["ipychat"]
    assert saved["kept"] == "gpt-4o-mini"
    assert [r["model"] for r in saved["compared"]] == ["gpt-4o-mini", "gpt-4.1-mini"]
    assert all(r["usage"]["completion_tokens"] > 0 for r in saved["compared"])


def test_compare_keep_names_the_model_the_thread_continues_with(session: ChatSession, fake) -> None:
    result = session.compare("which?", ["gpt-4o-mini", "gpt-4.1-mini"], keep="gpt-4.1-mini")
    assert result.reply is not None and result.reply.model == "gpt-4.1-mini"
    record = session.threads["main"].record_of(0)
    assert record is not None and record["model"] == "gpt-4.1-mini"


def test_compare_shows_a_model_that_failed_and_keeps_the_other(tmp_path) -> None:
    def reply(body: dict) -> str | Fault:
        if body["model"] == "gpt-4.1-mini":
            return Fault.status(404, message="The model gpt-4.1-mini does not exist")
        return "fine"

    with FakeOpenAIServer(reply=reply) as fake:
        session = ChatSession(Settings(base_url=fake.base_url, api_key="sk-test"), cache=False)
        try:
            result = session.compare("q", ["gpt-4o-mini", "gpt-4.1-mini"])
        finally:
            session.close()
    assert result.reply is not None and result.reply.text == "fine"
    assert result["gpt-4.1-mini"] is None and "failed:" in result.text()
    assert session.threads["main"].turns == 1
