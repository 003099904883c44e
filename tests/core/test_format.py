"""ipychat.core.format on its own: the footer under a reply in each of its states, a
comparison's figures, the estimate lines, `%chat usage`'s table and totals, and the endpoint
lines, each asserted whole (they are what the user reads). Each pins behaviour a mutation of
the module showed unpinned (`python tools/mutation.py core.format`)."""

from __future__ import annotations

from typing import Any

import pytest

from ipychat.core import providers
from ipychat.core.format import (
    compare_line,
    estimate_line,
    estimate_text,
    footer,
    footer_markdown,
    named_endpoints,
    plural,
    provider_line,
    replaced_lines,
    streaming_footer,
    usage_markdown,
)
from ipychat.core.types import Estimate, Reply, Usage
from ipychat.engine.ledger import ModelSummary

USAGE = Usage(prompt_tokens=412, completion_tokens=96)


def _reply(**changes: Any) -> Reply:
    base: dict[str, Any] = {
        "text": "hi",
        "model": "gpt-4o-mini",
        "usage": USAGE,
        "cost": 0.00012,
        "latency": 1.84,
    }
    return Reply(**{**base, **changes})


def _estimate(**changes: Any) -> Estimate:
    base: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": 3,
        "prompt_tokens": 412,
        "max_completion_tokens": 1024,
        "approximate": False,
        "cost_low": 0.00006,
        "cost_high": 0.00068,
    }
    return Estimate(**{**base, **changes})


def test_plural_counts_with_thousands_and_irregular_plurals() -> None:
    assert plural(1, "turn") == "1 turn"
    assert plural(0, "turn") == "0 turns"
    assert plural(2, "turn") == "2 turns"
    assert plural(1200, "reply", "replies") == "1,200 replies"
    assert plural(1, "reply", "replies") == "1 reply"


# ---------------------------------------------------------------------------------------------
# The footer
# ---------------------------------------------------------------------------------------------


def test_a_plain_footer() -> None:
    assert footer(_reply()) == "gpt-4o-mini · 412 → 96 tokens · $0.00012 · 1.8 s · thread main"


def test_a_footer_without_usage_or_price_says_unknown() -> None:
    line = footer(_reply(usage=None, cost=None, latency=0.04))
    assert line == "gpt-4o-mini · ? → ? tokens · unknown · 0.0 s · thread main"


def test_estimated_token_counts_are_marked() -> None:
    usage = Usage(prompt_tokens=1500, completion_tokens=3, estimated=True)
    assert footer(_reply(usage=usage)).startswith("gpt-4o-mini · ≈1,500 → ≈3 tokens · ")


def test_a_cached_reply_says_what_it_saved_and_no_latency() -> None:
    line = footer(_reply(cached=True, saved=0.0004, latency=3.0, thread="t"))
    assert line == "gpt-4o-mini · 412 → 96 tokens · cached (saved $0.0004) · thread t"


@pytest.mark.parametrize(
    ("changes", "turns", "tail"),
    [
        ({}, 4, "thread main (4 turns)"),
        ({}, 1, "thread main (1 turn)"),
        ({}, 0, "thread main (0 turns)"),
        ({"turn": 3}, None, "thread main (3 turns)"),
        ({"turn": 1}, None, "thread main (1 turn)"),
        ({"turn": 2, "later_turns": 3}, None, "thread main (5 turns)"),
        ({"turn": 2}, 7, "thread main (7 turns)"),  # a count given wins
    ],
)
def test_the_thread_and_its_turns(changes: dict[str, Any], turns: int | None, tail: str) -> None:
    assert footer(_reply(**changes), turns=turns).endswith(" · 1.8 s · " + tail)


def test_everything_a_footer_can_say_in_its_order() -> None:
    reply = _reply(
        turn=2,
        replaced=True,
        later_turns=1,
        dropped_turns=3,
        extra={"masked": "2 e-mail addresses masked", "note": "the local model answered"},
        finish_reason="length",
    )
    assert footer(reply).split(" · ") == [
        "gpt-4o-mini",
        "412 → 96 tokens",
        "$0.00012",
        "1.8 s",
        "thread main (3 turns)",
        "replaced turn 2",
        "1 later turn was answered with the old text",
        "3 early turns left out to fit the context",
        "2 e-mail addresses masked",
        "the local model answered",
        "cut at max tokens",
    ]


def test_one_dropped_turn_and_an_interruption() -> None:
    line = footer(_reply(dropped_turns=1, interrupted=True, finish_reason="length"))
    # Interrupted wins over the finish reason: the reply stopped because the user stopped it.
    assert line.endswith(" · thread main · 1 early turn left out to fit the context · interrupted")


def test_empty_extras_add_nothing() -> None:
    assert footer(_reply(extra={"masked": "", "note": None})) == footer(_reply())
    assert footer(_reply(finish_reason="stop")) == footer(_reply())


def test_replaced_lines() -> None:
    assert replaced_lines(_reply(turn=2)) == []
    assert replaced_lines(_reply(turn=2, replaced=True)) == ["replaced turn 2"]
    assert replaced_lines(_reply(turn=1, replaced=True, later_turns=2)) == [
        "replaced turn 1",
        "2 later turns were answered with the old text",
    ]


def test_footer_markdown_is_a_code_span_in_small_print() -> None:
    assert footer_markdown("a · $1") == "<sub>`a · $1`</sub>"


def test_compare_line() -> None:
    assert compare_line(_reply()) == "412 → 96 tokens · $0.00012 · 1.8 s"
    assert compare_line(_reply(cached=True, saved=0.5)) == "412 → 96 tokens · cached (saved $0.50)"
    assert compare_line(_reply(finish_reason="length", usage=None)) == (
        "? → ? tokens · $0.00012 · 1.8 s · cut at max tokens"
    )


# ---------------------------------------------------------------------------------------------
# Estimates
# ---------------------------------------------------------------------------------------------


def test_streaming_footer() -> None:
    assert streaming_footer("gpt-4o-mini", _estimate(), 31) == (
        "gpt-4o-mini · 412 → 31… tokens · ≤ $0.00068 · streaming"
    )
    line = streaming_footer("m", _estimate(approximate=True, cost_high=None), 2)
    assert line == "m · ≈412 → ≈2… tokens · ≤ unknown · streaming"


def test_estimate_line() -> None:
    assert estimate_line(_estimate()) == (
        "would send 3 messages · 412 tokens · up to 1,024 reply tokens · $0.00006–$0.00068"
    )
    line = estimate_line(
        _estimate(messages=1, cost_high=None, context_window=128_000, prompt_tokens=1280)
    )
    assert line == (
        "would send 1 message · 1,280 tokens (1% of 128k context) · up to 1,024 reply tokens · "
        "cost unknown (no price for this model: %chat price MODEL INPUT OUTPUT)"
    )
    assert "context" not in estimate_line(_estimate(context_window=0))
    # A short prompt in a long window is "<1%" of it, never "0%" (as in the panel).
    line = estimate_line(_estimate(prompt_tokens=412, context_window=128_000))
    assert "412 tokens (<1% of 128k context)" in line
    assert estimate_line(_estimate(approximate=True)).startswith(
        "would send 3 messages · ≈412 tokens ·"
    )


def test_estimate_text() -> None:
    assert estimate_text(_estimate(), history=False) == "412 tokens · $0.00006–$0.00068"
    text = estimate_text(
        _estimate(prompt_tokens=600, context_window=128_000, approximate=True), history=True
    )
    assert text == "≈600 tokens with history · <1% of 128k · $0.00006–$0.00068"
    text = estimate_text(_estimate(prompt_tokens=640, context_window=1000), history=False)
    assert text == "640 tokens · 64% of 1k · $0.00006–$0.00068"
    text = estimate_text(_estimate(prompt_tokens=6, context_window=1000), history=False)
    assert text == "6 tokens · 1% of 1k · $0.00006–$0.00068"
    # Exactly half a percent rounds (half to even) to "0%": a prompt is never 0% of the window.
    text = estimate_text(_estimate(prompt_tokens=5, context_window=1000), history=False)
    assert text == "5 tokens · <1% of 1k · $0.00006–$0.00068"
    assert estimate_text(_estimate(cost_high=None, context_window=0), history=False) == (
        "412 tokens · cost unknown (set it with %chat price MODEL INPUT OUTPUT)"
    )


# ---------------------------------------------------------------------------------------------
# %chat usage
# ---------------------------------------------------------------------------------------------


class _Ledger:
    """The shape `usage_markdown` reads (`ipychat.engine.ledger.Ledger` is the real one),
    with the real ledger's rows."""

    def __init__(self, rows: list[ModelSummary], spent: float, budget: float | None) -> None:
        self.rows, self.spent, self.budget = rows, spent, budget

    def summary(self) -> list[ModelSummary]:
        return self.rows


HEAD = (
    "| model | requests | cached | errors | prompt tokens | completion tokens | cost | "
    "saved by cache | p50 latency | p95 latency |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def test_usage_with_no_requests() -> None:
    assert usage_markdown(_Ledger([], 0.0, None)) == "No requests yet in this session."


def test_usage_table_totals_and_budget() -> None:
    rows = [
        ModelSummary("gpt-4o", 1200, 3, 1, 15000, 2500, 0.5, 0.25, 1.234, 2.5),
        ModelSummary("gpt-4o-mini", 2, 0, 0, 10, 20, 0.25, 0.0, None, None),
    ]
    assert usage_markdown(_Ledger(rows, 0.75, 5.0)).split("\n") == [
        *HEAD.split("\n"),
        "| gpt-4o | 1,200 | 3 | 1 | 15,000 | 2,500 | $0.50 | $0.25 | 1.23 s | 2.50 s |",
        "| gpt-4o-mini | 2 | 0 | 0 | 10 | 20 | $0.25 | $0.00 | – | – |",
        "| **total** | 1,202 | 3 | 1 | 15,010 | 2,520 | $0.75 | $0.25 | | |",
        "",
        "spent $0.75 of $5.00",
    ]


def test_usage_total_is_unknown_when_one_cost_is_and_given_rows_win() -> None:
    known = ModelSummary("a", 1, 0, 0, 1, 1, 0.5, 0.0, None, None)
    unknown = ModelSummary("b", 1, 0, 0, 1, 1, None, 0.0, None, None)
    text = usage_markdown(_Ledger([known], 0.5, None), [known, unknown])
    lines = text.split("\n")
    assert lines[2].startswith("| a |") and lines[3].startswith("| b |")
    assert lines[4] == "| **total** | 2 | 0 | 0 | 2 | 2 | unknown | $0.00 | | |"
    assert lines[-1] == "spent $0.50 (no budget set)"
    # A free model (the local one) costs $0: the total adds it as 0.
    free = ModelSummary("local", 1, 0, 0, 1, 1, 0.0, 0.0, None, None)
    lines = usage_markdown(_Ledger([free, known], 0.5, None)).split("\n")
    assert lines[4] == "| **total** | 2 | 0 | 0 | 2 | 2 | $0.50 | $0.00 | | |"
    # An empty list given is "no requests", not the ledger's rows.
    assert usage_markdown(_Ledger([known], 0.5, None), []) == "No requests yet in this session."


# ---------------------------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------------------------


def test_named_endpoints() -> None:
    assert named_endpoints(["anthropic", "groq"]) == (
        "named endpoints: anthropic, groq, local (%chat endpoint NAME; the README's providers "
        "table says what each needs), or any OpenAI-compatible URL."
    )


def test_provider_line_says_where_the_key_comes_from() -> None:
    anthropic = providers.find("anthropic")
    gemini = providers.find("gemini")
    ollama = providers.find("ollama")
    openrouter = providers.find("openrouter")
    assert anthropic and gemini and ollama and openrouter
    url = "https://api.anthropic.com/v1"
    assert provider_line(anthropic, url, "claude-haiku-4-5", "ANTHROPIC_API_KEY") == (
        f"endpoint: anthropic ({url}) · key from ANTHROPIC_API_KEY · model claude-haiku-4-5"
        " · token counts ≈ (not OpenAI's tokenizer)"
    )
    assert provider_line(gemini, "u", "g", None) == (
        "endpoint: gemini (u) · no key: set GEMINI_API_KEY or GOOGLE_API_KEY, or run %chat key"
        " · model g · token counts ≈ (not OpenAI's tokenizer)"
    )
    assert provider_line(ollama, "u", "llama3.2", "X") == (
        "endpoint: ollama (u) · no key needed · model llama3.2 · token counts ≈ (not OpenAI's "
        "tokenizer)"
    )
    # OpenRouter counts with OpenAI's tokenizer: no "≈" note.
    assert provider_line(openrouter, "u", "m", "OPENROUTER_API_KEY") == (
        "endpoint: openrouter (u) · key from OPENROUTER_API_KEY · model m"
    )
