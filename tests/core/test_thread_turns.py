"""Turns of a thread that remember their cell, a Reply as a cell's result, the footer of a
re-run cell (issue 18, items 1 and 2)."""

from __future__ import annotations

import json

from ipychat.core.format import compare_line, footer
from ipychat.core.messages import Thread
from ipychat.core.types import Reply, Usage


def three_turns() -> Thread:
    thread = Thread("main")
    thread.add_turn("q1", "a1", "cell-1", {"model": "m1"})
    thread.add_turn("q2", "a2", "cell-2")
    thread.add_turn("q3", "a3")  # from a terminal: no cell
    return thread


def test_a_turn_knows_its_cell_and_the_history_before_it() -> None:
    thread = three_turns()
    assert thread.turns == 3 and thread.cells == ["cell-1", "cell-2", None]
    assert thread.turn_of("cell-2") == 1 and thread.turn_of("cell-9") is None
    assert thread.turn_of(None) is None  # turns without a cell are never replaced
    assert [m["content"] for m in thread.history_before(1)] == ["q1", "a1"]
    assert thread.history_before(0) == []
    assert len(thread.history_before(None)) == 6  # a new turn sees every turn
    assert thread.record_of(0) == {"model": "m1"} and thread.record_of(2) is None


def test_replacing_a_turn_keeps_the_later_ones_with_new_message_dicts() -> None:
    thread = three_turns()
    old_reply = thread.messages[1]
    thread.replace_turn(0, "q1 again", "a1 again", {"model": "m2"})
    assert [m["content"] for m in thread.messages] == [
        "q1 again",
        "a1 again",
        "q2",
        "a2",
        "q3",
        "a3",
    ]
    assert thread.messages[1] is not old_reply  # the panel keys footers by the dict
    assert thread.cells == ["cell-1", "cell-2", None]
    assert thread.record_of(0) == {"model": "m2"}
    thread.clear()
    assert thread.messages == [] and thread.cells == [] and thread.records == []


def test_a_thread_made_from_messages_alone_has_no_cells() -> None:
    thread = Thread(
        "t", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    )
    assert thread.turn_of("x") is None and thread.cell_of(0) is None
    assert thread.add_turn("q2", "a2", "x") == 1
    assert thread.cells == [None, "x"] and thread.turn_of("x") == 1


def reply(**changes: object) -> Reply:
    base = dict(
        text="Paris has $5 coffee.",
        model="gpt-4o-mini",
        usage=Usage(12, 5),
        cost=0.00012,
        latency=1.25,
        cache_key="k" * 64,
        thread="geo",
        turn=2,
        cell="c-2",
    )
    base.update(changes)
    return Reply(**base)  # type: ignore[arg-type]


def test_the_reply_is_a_result_with_markdown_text_and_metadata() -> None:
    data, metadata = reply()._repr_mimebundle_()
    assert set(data) == {"text/markdown", "text/plain"}
    assert data["text/plain"].startswith("Paris has $5 coffee.\n\n[gpt-4o-mini · 12 → 5 tokens")
    assert data["text/plain"].endswith("thread geo (2 turns)]")  # turn 2, none after it
    assert "Paris has" in data["text/markdown"] and "<sub>`gpt-4o-mini" in data["text/markdown"]
    record = metadata["ipychat"]
    assert record == {
        "model": "gpt-4o-mini",
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 5,
            "cached_tokens": 0,
            "estimated": False,
        },
        "cost": 0.00012,
        "cached": False,
        "cache_key": "k" * 64,
        "thread": "geo",
        "turn": 2,
        "cell": "c-2",
    }
    json.dumps(metadata)  # saved in the notebook as it is


def test_a_verbatim_reply_adds_html_and_keeps_the_rest() -> None:
    data, _ = reply(text="<b>x</b>", extra={"shown_as": "text"})._repr_mimebundle_()
    assert "<pre>&lt;b&gt;x&lt;/b&gt;</pre>" in data["text/html"]
    assert "text/markdown" in data and data["text/plain"].startswith("<b>x</b>")


def test_the_footer_of_a_replaced_turn_says_so() -> None:
    assert "replaced" not in footer(reply())
    line = footer(reply(replaced=True, later_turns=0), turns=2)
    assert line.endswith("thread geo (2 turns) · replaced turn 2")
    line = footer(reply(replaced=True, later_turns=1))
    assert "replaced turn 2 · 1 later turn was answered with the old text" in line
    line = footer(reply(replaced=True, later_turns=3))
    assert "3 later turns were answered with the old text" in line


def test_a_comparison_line_has_tokens_cost_and_time() -> None:
    assert compare_line(reply()) == "12 → 5 tokens · $0.00012 · 1.2 s"
    assert "cached (saved" in compare_line(reply(cached=True, saved=0.001))
