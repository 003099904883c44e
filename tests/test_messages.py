"""Brace-safe interpolation, value rendering and trimming history by tokens."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from ipychat.errors import ContextLengthError, TemplateError
from ipychat.messages import Thread, build_messages, interpolate, render_value, trim_history


class Obj:
    name = "widget"


NS = {
    "x": "XX",
    "n": 3,
    "obj": Obj(),
    "d": {"k": "v", 1: "one"},
    "items": ["a", "b"],
    "In": ["", "print(1)"],
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("hello {x}", "hello XX"),
        ("{n} apples", "3 apples"),
        ("{obj.name}", "widget"),
        ("{d['k']} {d[1]}", "v one"),
        ('{d["k"]}', "v"),
        ("{items[-1]}", "b"),
        ("{In[1]}", "print(1)"),
        ("{{x}} stays", "{x} stays"),
        ('JSON {"a": {"b": 1}} stays', 'JSON {"a": {"b": 1}} stays'),
        ("function f() { return x; }", "function f() { return x; }"),
        ("\\frac{a}{b} and x^{k}", "\\frac{a}{b} and x^{k}"),
        ("```\nfor k in d: print(f'{k}')\n```", "```\nfor k in d: print(f'{k}')\n```"),
        ("inline `{unknown}` code", "inline `{unknown}` code"),
        ("set() {}", "set() {}"),
        ("{ x }", "{ x }"),  # spaces: not a placeholder
    ],
)
def test_interpolation_replaces_only_known_names(template: str, expected: str) -> None:
    assert interpolate(template, NS).text == expected


def test_unknown_name_is_refused_with_a_suggestion() -> None:
    with pytest.raises(
        TemplateError, match=r"\{dff\} is not defined .*did you mean df\?.*\{\{dff\}\}"
    ):
        interpolate("Summarise {dff}", {"df": 1})


def test_bad_key_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="KeyError"):
        interpolate("{d['missing']}", NS)


def test_spans_mark_substituted_values() -> None:
    result = interpolate("a {x} b {n}", NS)
    assert [result.text[s:e] for s, e in result.spans] == ["XX", "3"]
    assert result.names == ("x", "n")


def test_dataframe_renders_compactly_with_a_cap() -> None:
    df = pd.DataFrame({"a": range(100_000), "b": ["text"] * 100_000})
    text = render_value(df)
    assert re.match(r"DataFrame with 100,000 rows × 2 columns \(a: int64, b: (object|str)\)", text)
    assert "first 10 of 100,000 rows" in text
    assert len(text) < 2_000
    huge = render_value("y" * 50_000, max_chars=1_000)
    assert len(huge) < 1_100 and "characters left out" in huge


def test_series_and_objects_render() -> None:
    assert "Series s of length 3" in render_value(pd.Series([1, 2, 3], name="s"))
    assert render_value([1, 2]) == "[1, 2]"


def _count(messages) -> int:  # one token per word plus 3 per message: easy to reason about
    return sum(3 + len(str(m["content"]).split()) for m in messages)


def test_trim_drops_oldest_turns_and_keeps_system_and_prompt() -> None:
    thread = Thread("t")
    for i in range(5):
        thread.add_turn(f"question {i} " + "w " * 10, f"answer {i} " + "w " * 10)
    messages = build_messages("be brief", thread.messages, "the new prompt")
    kept, dropped = trim_history(messages, 70, _count)
    assert kept[0] == {"role": "system", "content": "be brief"}
    assert kept[-1]["content"] == "the new prompt"
    assert _count(kept) <= 70
    assert dropped == 4 and kept[1]["content"].startswith("question 4")
    untouched, none = trim_history(messages, 10_000, _count)
    assert none == 0 and untouched == messages


def test_prompt_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ContextLengthError, match=r"needs .* tokens but only 5 fit"):
        trim_history(build_messages(None, [], "one two three four five six"), 5, _count)


def test_thread_turns() -> None:
    thread = Thread("main")
    thread.add_turn("q", "a")
    assert thread.turns == 1 and len(thread.messages) == 2
    thread.clear()
    assert thread.turns == 0
