"""The one record of a request (ipychat.engine.exchange) on its own: the cache entry it
writes, the reply a cache entry replays as, and the ledger row it makes. No server: the
engine's end-to-end path is in test_engine.py; here each field is pinned."""

from __future__ import annotations

import time

import pytest

from ipychat.core.pricedata import ModelPrice
from ipychat.core.types import Reply, Usage
from ipychat.engine.exchange import Exchange, Progress

# $2 per 1M prompt tokens, $0.50 per 1M cached ones, $8 per 1M completion tokens.
PRICE = ModelPrice(model="gpt-test", input=2.0, output=8.0, cached_input=0.5)
USAGE = Usage(prompt_tokens=1_000, completion_tokens=200, cached_tokens=400, estimated=False)
# (600 × 2 + 400 × 0.5 + 200 × 8) / 1M
USAGE_COST = 0.003


def _reply(**changes: object) -> Reply:
    fields: dict[str, object] = {
        "text": "Bonjour",
        "model": "gpt-test-2024",
        "usage": USAGE,
        "cost": USAGE_COST,
        "latency": 0.25,
        "finish_reason": "stop",
        "thread": "french",
        "time_to_first_token": 0.05,
        "retries": 2,
    }
    return Reply(**{**fields, **changes})  # type: ignore[arg-type]


def _exchange(reply: Reply, **changes: object) -> Exchange:
    fields: dict[str, object] = {
        "key": "k1",
        "request_model": "gpt-test",
        "host": "api.example.test",
        "prompt_tokens": 990,
    }
    return Exchange(reply, **{**fields, **changes})  # type: ignore[arg-type]


def test_a_reply_becomes_the_cache_entry_schema() -> None:
    before = time.time()
    entry = _exchange(_reply()).to_cache()
    created = entry.pop("created")
    assert before <= created <= time.time()
    assert entry == {
        "text": "Bonjour",
        "model": "gpt-test-2024",
        "request_model": "gpt-test",
        "finish_reason": "stop",
        "usage": {
            "prompt_tokens": 1_000,
            "completion_tokens": 200,
            "cached_tokens": 400,
            "estimated": False,
        },
        "cost": USAGE_COST,
        "host": "api.example.test",
    }
    estimated = _exchange(_reply(usage=Usage(prompt_tokens=5, estimated=True))).to_cache()
    assert estimated["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "estimated": True,
    }
    assert _exchange(_reply(usage=None)).to_cache()["usage"] is None


def test_a_cache_entry_replays_as_a_free_reply_that_says_what_it_saved() -> None:
    entry = _exchange(_reply()).to_cache()
    replayed = Exchange.from_cache(
        entry,
        key="k1",
        request_model="gpt-test",
        host="api.example.test",
        model="gpt-test (label)",
        price=PRICE,
        label="french",
        latency=0.001,
        dropped_turns=3,
        masked="1 e-mail",
    )
    assert replayed.cached and replayed.reply.cached
    assert (replayed.key, replayed.request_model, replayed.host) == (
        "k1",
        "gpt-test",
        "api.example.test",
    )
    assert (replayed.prompt_tokens, replayed.outcome, replayed.error, replayed.store) == (
        0,
        "ok",
        None,
        False,
    )
    assert replayed.reply == Reply(
        text="Bonjour",
        model="gpt-test (label)",  # the answering model's label, not the stored name
        usage=USAGE,
        cost=0.0,
        cached=True,
        saved=pytest.approx(USAGE_COST),  # type: ignore[arg-type]
        latency=0.001,
        finish_reason="stop",
        thread="french",
        dropped_turns=3,
    )
    assert replayed.reply.extra == {"masked": "1 e-mail"}


def test_an_entry_without_usage_nor_price_replays_with_nothing_saved() -> None:
    minimal = {"text": "hi"}  # only `text` is required: older or hand-written entries
    replayed = Exchange.from_cache(
        minimal, key="k", request_model="m", host="h", model="m", price=PRICE, label="main"
    )
    reply = replayed.reply
    assert (reply.text, reply.usage, reply.saved, reply.finish_reason) == ("hi", None, None, None)
    assert reply.cost == 0.0 and reply.extra == {} and reply.dropped_turns == 0
    assert reply.latency == 0.0
    unpriced = Exchange.from_cache(
        {"text": "hi", "usage": USAGE.__dict__},
        key="k",
        request_model="m",
        host="h",
        model="m",
        price=None,
        label="main",
    )
    assert unpriced.reply.usage == USAGE and unpriced.reply.saved is None


def test_the_ledger_row_of_a_sent_reply() -> None:
    before = time.time()
    row = _exchange(_reply()).ledger_row()
    assert before <= row.time <= time.time()
    assert (row.thread, row.model, row.host) == ("french", "gpt-test-2024", "api.example.test")
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (1_000, 200, 400)
    assert row.cost == USAGE_COST and row.saved is None and not row.cached
    assert not row.estimated and row.latency == 0.25 and row.time_to_first_token == 0.05
    assert row.retries == 2 and row.outcome == "ok" and row.error is None
    # The Batch API path records the model it asked for.
    assert _exchange(_reply()).ledger_row(model="gpt-test").model == "gpt-test"


def test_the_ledger_row_without_usage_counts_the_estimate() -> None:
    row = _exchange(_reply(usage=None)).ledger_row()
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (990, 0, 0)
    assert row.estimated


def test_an_error_costs_nothing_in_the_ledger_an_interruption_what_it_cost() -> None:
    failed = _exchange(_reply(), outcome="error", error="HTTP 500").ledger_row()
    assert failed.cost == 0.0 and failed.outcome == "error" and failed.error == "HTTP 500"
    stopped = _exchange(_reply(), outcome="interrupted").ledger_row()
    assert stopped.cost == USAGE_COST and stopped.outcome == "interrupted"


def test_a_cached_replay_is_recorded_as_cached_with_what_it_saved() -> None:
    replayed = Exchange.from_cache(
        _exchange(_reply()).to_cache(),
        key="k1",
        request_model="gpt-test",
        host="api.example.test",
        model="gpt-test-2024",
        price=PRICE,
        label="french",
    )
    row = replayed.ledger_row()
    assert row.cached and row.cost == 0.0 and row.saved == pytest.approx(USAGE_COST)


def test_progress_is_the_text_so_far() -> None:
    before = time.monotonic()
    progress = Progress()
    assert before <= progress.started <= time.monotonic()
    assert progress.text == "" and progress.first_token is None and progress.reply is None
    progress.parts += ["Bon", "jour"]
    assert progress.text == "Bonjour"
    assert Progress().parts == [] and Progress().parts is not Progress().parts
