"""Planning a %%chatmap (ipychat.map.plan): what every row shares is worked out once, and a
cached re-run is served without counting its rows, with the same results as the per-row
`Engine.prepare_one` it replaces (the reference the tests compare with)."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from ipychat.core import tokens
from ipychat.core.errors import SecretInPromptError
from ipychat.engine.cache import ResponseCache
from ipychat.engine.ledger import Ledger, LedgerRow
from ipychat.engine.prepare import RequestOptions
from ipychat.map import job as chatmap
from ipychat.map.plan import RowShape, request_key
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer

KEY = "sk-test-" + "k" * 20
# Prompts whose JSON text needs every kind of escape, and some that need none.
TRICKY = [
    "",
    "plain",
    'quotes " and \\ backslashes \\"',
    "new\nlines\tand\rcontrol \x00 \x1f chars",
    "unicode: héllo 東京 🚀 \u2028 \u2029",
    "braces {like} {{this}}",
    "</script><!-- html -->",
]


@pytest.fixture
def make_session(tmp_path) -> Iterator[Any]:
    made: list[ChatSession] = []

    def make(server: FakeOpenAIServer, **settings: Any) -> ChatSession:
        settings = {"model": "gpt-4o-mini", **settings}
        s = ChatSession(
            Settings(base_url=server.base_url, api_key=KEY, **settings),
            cache=ResponseCache(tmp_path / f"cache{len(made)}"),
        )
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
    reset_session(None)


def frame(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": texts})


OPTIONS: list[dict[str, Any]] = [
    {"model": "gpt-4o-mini", "system": None, "temperature": None, "max_tokens": None},
    {"model": "gpt-4o", "system": "Be brief.", "temperature": 0.3, "max_tokens": 20},
    {
        "model": "my-own-model",
        "system": 'A "quoted" system\nprompt',
        "temperature": 0.0,
        "max_tokens": 5,
        "extra": {"response_format": {"type": "json_object"}},
    },
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("azure", [None, "2024-10-21"])
def test_row_bodies_and_keys_are_those_of_prepare_one(
    make_session: Any, options: dict[str, Any], azure: str | None
) -> None:
    with FakeOpenAIServer() as server:
        session = make_session(server, azure_api_version=azure)
        engine, request = session.engine, RequestOptions(**options)
        shape = RowShape.probe(engine, request)
        assert shape is not None and shape._key_parts is not None  # the fast keys are in use
        expected = [engine.prepare_one(p, request, label="map").body for p in TRICKY]
        bodies = [shape.body(p) for p in TRICKY]
        assert [list(b.items()) for b in bodies] == [list(b.items()) for b in expected]
        assert shape.keys(TRICKY) == [request_key(engine, body) for body in expected]


def test_keys_that_are_not_the_sessions_fall_back_to_it(make_session: Any) -> None:
    # If the cache key ever stops being sha256 of that JSON, every row must get the real one.
    with FakeOpenAIServer() as server:
        engine = make_session(server).engine
        real = engine.cache_key
        engine.cache_key = lambda body: "other-" + real(body)  # type: ignore[method-assign]
        shape = RowShape.probe(engine, RequestOptions(model="gpt-4o-mini", max_tokens=5))
        assert shape is not None
        prompts = [f"row {i}" for i in range(10)]
        assert shape.keys(prompts) == [engine.cache_key(shape.body(p)) for p in prompts]


def test_keys_checked_on_sampled_rows_fall_back_for_every_row(
    make_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key function that agrees on the first row but not on the last (say it folded case):
    # the sampled rows catch it, and no row keeps a key the session would not use.
    with FakeOpenAIServer() as server:
        engine = make_session(server).engine
        real = engine.cache_key

        def folded(body: dict[str, Any]) -> str:
            folded_body = {
                **body,
                "messages": [{**m, "content": m["content"].lower()} for m in body["messages"]],
            }
            return real(folded_body)

        engine.cache_key = folded  # type: ignore[method-assign]
        shape = RowShape.probe(engine, RequestOptions(model="gpt-4o-mini", max_tokens=5))
        assert shape is not None and shape._key_parts is not None
        prompts = ["lower", "Upper"]
        assert shape.keys(prompts) == [folded(shape.body(p)) for p in prompts]


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", "llama-3-8b"])
@pytest.mark.parametrize("text", [*TRICKY, "word " * 500, "東京" * 300, "🚀" * 100, "a1!" * 200])
def test_the_bound_never_undercounts(model: str, text: str) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    bound = tokens.count_messages_bound(messages)
    assert bound is not None and bound >= tokens.count_messages(messages, model).tokens
    named, plain = [{"role": "user", "content": text}], [{"role": "user", "content": text}]
    named[0]["name"] = "ann"
    assert tokens.count_messages_bound(named) == tokens.count_messages_bound(plain) + 3 + 1
    assert tokens.count_messages_bound([{"role": "user", "content": [{"type": "text"}]}]) is None


def _cache_reply(session: ChatSession, body: dict[str, Any], text: str) -> None:
    assert session.cache is not None
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "cached_tokens": 0}
    session.cache.set(request_key(session.engine, body), {"text": text, "usage": usage})


def test_a_cached_row_too_long_for_the_context_is_refused_as_if_not_cached(
    make_session: Any,
) -> None:
    # An unknown model has an 8,192-token window: 9,000 words do not fit, whatever the cache
    # holds for them (say, from a server with a longer context).
    with FakeOpenAIServer() as server:
        session = make_session(server, model="my-own-model")
        long, short = "word " * 9000, "short one"
        for prompt in (long, short):
            body = session.engine.one_body(prompt, RequestOptions("my-own-model", max_tokens=10))
            _cache_reply(session, body, f"cached: {prompt[:9]}")
        result = chatmap.run(session, frame([long, short]), "{text}", "out", max_tokens=10)
        assert "does not fit the 8,192-token context" in result.frame["_error"][0]
        assert result.frame["out"][1] == "cached: short one"
        assert (result.plan.invalid, result.plan.cached, result.plan.send) == (1, 1, 0)
        assert server.chat_requests == []


def test_a_cached_row_over_the_bound_but_within_the_window_is_served(make_session: Any) -> None:
    # 2,000 × "東京" is 12,000 UTF-8 bytes (over the 8,192-token window by the bound) but
    # ~2,000 tokens: counted exactly, it fits, and the cache serves it.
    with FakeOpenAIServer() as server:
        session = make_session(server, model="my-own-model")
        prompt = "東京" * 2000
        body = session.engine.one_body(prompt, RequestOptions("my-own-model", max_tokens=10))
        _cache_reply(session, body, "cached")
        result = chatmap.run(session, frame([prompt]), "{text}", "out", max_tokens=10)
        assert result.frame["out"][0] == "cached" and result.plan.cached == 1
        assert server.chat_requests == []


def test_a_cached_replay_writes_what_the_first_run_did(make_session: Any) -> None:
    with FakeOpenAIServer() as server:
        session = make_session(server)
        texts = ["a", "b", "a", "c c c", "d"]  # a duplicate shares its reply
        first = chatmap.run(session, frame(texts), "Say {text}", "out")
        sent = list(session.usage)
        again = chatmap.run(session, frame(texts), "Say {text}", "out")
        assert again.frame.equals(first.frame)
        assert (again.plan.cached, again.plan.send, again.plan.duplicates) == (5, 0, 1)
        assert len(server.chat_requests) == 4
        hits = list(session.usage)[len(sent) :]
        assert len(hits) == 4  # one per unique request, as when they were sent
        for hit in hits:
            assert (hit.thread, hit.model, hit.host) == ("map", "gpt-4o-mini", session.host)
            assert (hit.cost, hit.cached, hit.estimated, hit.outcome) == (0.0, True, False, "ok")
        # What each hit saved is what it cost when it was sent (rows sent in any order).
        paid = sorted((r.prompt_tokens, r.completion_tokens, r.cost) for r in sent)
        saved = sorted((r.prompt_tokens, r.completion_tokens, r.saved) for r in hits)
        assert [p[:2] for p in paid] == [s[:2] for s in saved]
        assert [s[2] for s in saved] == pytest.approx([p[2] for p in paid])
        assert session.cache is not None
        assert session.cache.stats().saved == pytest.approx(sum(h.saved or 0 for h in hits))


def test_every_prompt_is_checked_for_secrets_whatever_the_cache_holds(
    make_session: Any,
) -> None:
    key = "AKIA" + "Q" * 16  # built at run time: never a secret in the repository
    texts = [f"row {i}" for i in range(50)] + [f"my key is {key}"]
    with FakeOpenAIServer() as server:
        session = make_session(server)
        with session.allowing_secrets():
            chatmap.run(session, frame(texts), "{text}", "out", allow_secrets=True)
        assert len(server.chat_requests) == 51
        server.reset_log()
        # Every row is cached now; the one holding a key still refuses the map.
        with pytest.raises(SecretInPromptError, match="AWS access key"):
            chatmap.run(session, frame(texts), "{text}", "out")
        # Nor can a key hide across the template and a value: the whole prompt is checked.
        token = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=30))
        with pytest.raises(SecretInPromptError, match="bearer token"):
            chatmap.run(session, frame(["fine", token]), "Authorization: Bearer {text}", "out")
        assert server.chat_requests == []


def test_ledger_rows_built_in_bulk_are_the_rows_built_one_by_one() -> None:
    common = {"thread": "map", "host": "h:1", "cost": 0.0, "cached": True}
    each = [
        {"time": 1.5, "model": "m", "prompt_tokens": 3, "saved": None, "estimated": True},
        {"time": 2.5, "model": "n", "completion_tokens": 7, "saved": 0.25},
    ]
    rows = LedgerRow.many(common, each)
    assert rows == [LedgerRow(**common, **fields) for fields in each]
    assert [hash(r) for r in rows] == [hash(LedgerRow(**common, **f)) for f in each]
    with pytest.raises(TypeError, match="unknown \\['colour'\\]"):
        LedgerRow.many(common, [{"time": 1.0, "model": "m", "colour": "red"}])
    with pytest.raises(TypeError, match="missing \\['time'\\]"):
        LedgerRow.many(common, [{"model": "m"}])
    with pytest.raises(AttributeError):
        rows[0].cost = 1.0  # type: ignore[misc]
    ledger = Ledger()
    ledger.record_many(rows)
    assert list(ledger) == rows and ledger.saved == 0.25


def test_record_hits_adds_up_as_record_hit_does(tmp_path) -> None:
    one, many = ResponseCache(tmp_path / "a"), ResponseCache(tmp_path / "b")
    savings = [0.1, None, float("nan"), -1.0, 0.2, 1e-9]
    for saved in savings:
        one.record_hit(saved)
    many.record_hits(savings)
    assert many.stats().saved == one.stats().saved == 0.1 + 0.2 + 1e-9
