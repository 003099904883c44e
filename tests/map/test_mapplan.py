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
from ipychat.core.errors import SecretInPromptError, TemplateError
from ipychat.core.keys import cache_key
from ipychat.engine.cache import ResponseCache
from ipychat.engine.ledger import Ledger, LedgerRow
from ipychat.engine.prepare import RequestOptions
from ipychat.map import job as chatmap
from ipychat.map.frame import Frame
from ipychat.map.plan import (
    MAP_MAX_TOKENS,
    CachedRequest,
    MapPlan,
    Planned,
    RowRequest,
    RowShape,
    default_reply_cap,
    plan_requests,
    request_key,
)
from ipychat.map.template import compile_template
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


# ----- planning, unit by unit (no server: nothing is sent while planning) --------------------


@pytest.fixture
def offline_session(tmp_path) -> Iterator[ChatSession]:
    """A session on a closed port: planning counts, keys and reads the cache, never sends."""
    session = ChatSession(
        Settings(base_url="http://127.0.0.1:9/v1", api_key=KEY, model="gpt-4o-mini"),
        cache=ResponseCache(tmp_path / "cache"),
    )
    yield session
    session.close()
    reset_session(None)


def plan_rows(
    session: ChatSession,
    df: pd.DataFrame,
    template: str = "{text}",
    *,
    n: int | None = None,
    fill_null: str | None = None,
    cache_mode: str = "use",
    **request: Any,
) -> Planned:
    table = Frame(df, "df")
    row_template = compile_template(template, table.columns, "df")
    return plan_requests(
        session.engine,
        table,
        row_template,
        len(df) if n is None else n,
        fill_null=fill_null,
        cache_mode=cache_mode,
        request=RowRequest(**{"model": "gpt-4o-mini", "max_tokens": 10, **request}),
    )


def reference(session: ChatSession, prompt: str, **options: Any) -> Any:
    """The request `Engine.prepare_one` prepares for one row (what planning must equal)."""
    request = RequestOptions(**{"model": "gpt-4o-mini", "max_tokens": 10, **options})
    return session.engine.prepare_one(prompt, request, label="map")


def test_duplicates_share_a_request_and_the_plan_adds_up(offline_session: ChatSession) -> None:
    session = offline_session
    texts = ["a", "b", "a", "c", "a", "b"]
    planned = plan_rows(session, frame(texts))
    assert [(job.prompt, job.rows) for job in planned.to_send] == [
        ("a", [0, 2, 4]),
        ("b", [1, 5]),
        ("c", [3]),
    ]
    refs = [reference(session, p) for p in ("a", "b", "c")]
    for job, ref in zip(planned.to_send, refs, strict=True):
        assert job.body == ref.body and job.model == "gpt-4o-mini"
        assert job.key == request_key(session.engine, ref.body)
        assert job.tokens == ref.estimate.prompt_tokens + ref.estimate.max_completion_tokens
        assert (job.reask, job.failures, job.limited) == (False, 0, 0)
        assert job.prepared.estimate == ref.estimate
    plan = planned.plan
    estimates = [r.estimate for r in refs]
    assert (plan.rows, plan.cached, plan.send, plan.send_rows) == (6, 0, 3, 6)
    assert (plan.duplicates, plan.skipped, plan.invalid, plan.null_columns) == (3, 0, 0, ())
    assert plan.prompt_tokens == sum(e.prompt_tokens for e in estimates)
    assert plan.completion_tokens == 30
    assert plan.cost_low == pytest.approx(sum(e.cost_low or 0 for e in estimates))
    assert plan.cost_high == pytest.approx(sum(e.cost_high or 0 for e in estimates))
    assert plan.cost_batch == pytest.approx(sum(e.cost_batch or 0 for e in estimates))
    assert plan.cost_low is not None and plan.cost_high is not None and plan.cost_batch
    assert 0 < plan.cost_low < plan.cost_high and plan.cost_batch < plan.cost_high
    assert (plan.model, plan.approximate, plan.offline) == ("gpt-4o-mini", False, False)
    assert (plan.first_prompt, plan.default_cap, plan.note) == ("a", None, None)
    assert (planned.hits, planned.skipped, planned.row_errors) == ([], 0, {})


def test_nulls_skip_their_rows_or_are_filled(offline_session: ChatSession) -> None:
    df = pd.DataFrame(
        {
            "text": ["x", None, "y", None, "x", "z"],
            "tag": ["t", "u", None, None, "t", "v"],
        }
    )
    planned = plan_rows(offline_session, df, "{text}/{tag}")
    hint = "(use --fill-null TEXT to send it)"
    assert planned.row_errors == {
        1: f"skipped: null in text {hint}",
        2: f"skipped: null in tag {hint}",
        3: f"skipped: null in text, tag {hint}",
    }
    assert planned.skipped == 3 and planned.plan.skipped == 3
    assert planned.plan.null_columns == ("text", "tag")  # in order of first null, once each
    assert [(job.prompt, job.rows) for job in planned.to_send] == [("x/t", [0, 4]), ("z/v", [5])]
    assert (planned.plan.duplicates, planned.plan.send_rows) == (1, 3)
    filled = plan_rows(offline_session, df, "{text}/{tag}", fill_null="-")
    assert filled.row_errors == {} and filled.skipped == 0 and filled.plan.null_columns == ()
    prompts = [(job.prompt, job.rows) for job in filled.to_send]
    assert prompts == [("x/t", [0, 4]), ("-/u", [1]), ("y/-", [2]), ("-/-", [3]), ("z/v", [5])]


def test_a_skipped_row_does_not_join_the_rows_of_its_prompt(
    offline_session: ChatSession,
) -> None:
    # Row 0 is skipped (null tag) though its text renders like row 2's once filled: only the
    # rows without a null share the prompt ...
    df = pd.DataFrame({"text": ["a", "a", "a"], "tag": [None, "t", "t"]})
    planned = plan_rows(offline_session, df, "{text}{tag}")
    assert [(job.prompt, job.rows) for job in planned.to_send] == [("at", [1, 2])]
    # ... and a skipped row first in line does not stop the next one from being planned.
    df = pd.DataFrame({"text": ["a", "a"], "tag": [None, "None"]})
    planned = plan_rows(offline_session, df, "{text}{tag}")
    assert [(job.prompt, job.rows) for job in planned.to_send] == [("aNone", [1])]
    assert planned.plan.duplicates == 0


def test_only_the_first_n_rows_are_planned(offline_session: ChatSession) -> None:
    planned = plan_rows(offline_session, frame(["a", "b", "c", None]), n=2)  # type: ignore[list-item]
    assert [job.rows for job in planned.to_send] == [[0], [1]]
    assert (planned.plan.rows, planned.skipped) == (2, 0)
    none = plan_rows(offline_session, frame(["a", "b"]), n=0)
    assert none.plan.rows == 0 and none.plan.duplicates == 0 and none.plan.first_prompt is None
    assert (none.plan.cost_low, none.plan.cost_high, none.plan.cost_batch) == (0, 0, 0)


def test_cell_values_become_text_and_one_that_cannot_refuses_the_map(
    offline_session: ChatSession,
) -> None:
    df = pd.DataFrame({"text": pd.Series([1, 2.5, True, "s"], dtype=object)})
    planned = plan_rows(offline_session, df)
    assert [job.prompt for job in planned.to_send] == ["1", "2.5", "True", "s"]

    class Broken:
        def __str__(self) -> str:
            raise ValueError("no")

    bad = pd.DataFrame({"text": pd.Series(["fine", Broken()], dtype=object)})
    with pytest.raises(TemplateError) as info:
        plan_rows(offline_session, bad)
    assert str(info.value) == (
        "A value in column 'text' could not be turned into text (ValueError): fix or drop "
        "it before mapping."
    )


def test_cached_rows_are_hits_and_need_no_estimate(offline_session: ChatSession) -> None:
    session = offline_session
    hit = reference(session, "b").body
    _cache_reply(session, hit, "cached b")
    planned = plan_rows(session, frame(["a", "b", "b"]))
    ((job, entry),) = planned.hits
    assert isinstance(job, CachedRequest) and entry["text"] == "cached b"
    assert (job.key, job.prompt, job.rows, job.reask) == (
        request_key(session.engine, hit),
        "b",
        [1, 2],
        False,
    )
    assert job.body == hit and job.model == "gpt-4o-mini"
    assert [j.prompt for j in planned.to_send] == ["a"]
    plan = planned.plan
    assert (plan.cached, plan.send, plan.send_rows, plan.duplicates) == (2, 1, 1, 1)
    assert plan.prompt_tokens == reference(session, "a").estimate.prompt_tokens
    # Not read from the cache when it is refreshed or off, nor when the setting is off.
    for mode in ("refresh", "off"):
        assert plan_rows(session, frame(["b"]), cache_mode=mode).hits == []
    session.settings.cache = False
    assert plan_rows(session, frame(["b"])).hits == []


def test_rows_too_long_are_row_errors_not_a_refusal(offline_session: ChatSession) -> None:
    long = "word " * 9000  # over the 8,192-token window of a model the table does not know
    planned = plan_rows(offline_session, frame([long, "ok", long]), model="my-own-model")
    message = planned.row_errors[0]
    assert "does not fit the 8,192-token context of my-own-model" in message
    assert planned.row_errors == {0: message, 2: message}
    assert planned.plan.invalid == 2 and [j.prompt for j in planned.to_send] == ["ok"]
    assert planned.plan.duplicates == 0  # the two long rows are invalid, not duplicates


def test_without_a_row_shape_each_prompt_goes_through_prepare_one(
    offline_session: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = offline_session
    engine = session.engine
    seen: list[tuple[RequestOptions, str]] = []  # (options, label) of each prepare_one
    real = engine.prepare_one

    def prepare_one(prompt: str, options: RequestOptions, *, label: str) -> Any:
        seen.append((options, label))
        return real(prompt, options, label=label)

    _cache_reply(session, reference(session, "b", system="S").body, "cached b")
    monkeypatch.setattr(RowShape, "probe", classmethod(lambda cls, *a, **k: None))
    monkeypatch.setattr(engine, "prepare_one", prepare_one)
    long = "word " * 9000
    planned = plan_rows(
        session, frame(["a", "b", long, "a"]), model="my-own-model", system="S", temperature=0.5
    )
    assert seen[0] == (
        RequestOptions(
            model="my-own-model", system="S", temperature=0.5, max_tokens=10, extra=None
        ),
        "map",
    )
    assert len(seen) == 3  # once per unique prompt
    assert planned.row_errors.keys() == {2} and planned.plan.invalid == 1
    assert [(j.prompt, j.rows) for j in planned.to_send] == [("a", [0, 3]), ("b", [1])]
    body = real(
        "a",
        RequestOptions(model="my-own-model", system="S", temperature=0.5, max_tokens=10),
        label="map",
    ).body
    assert planned.to_send[0].body == body
    assert planned.to_send[0].key == request_key(engine, body)
    assert planned.plan.cached == 0  # "b" was cached for gpt-4o-mini, not my-own-model
    # The cache is read for them all at once, and allow_secrets goes along when given.
    again = plan_rows(session, frame(["b"]), system="S")
    assert [job.rows for job, _ in again.hits] == [[0]] and again.to_send == []
    seen.clear()
    plan_rows(session, frame(["c"]), allow_secrets=True)
    assert seen[0][0].allow_secrets is True
    seen.clear()
    plan_rows(session, frame(["d"]), allow_secrets=False)
    assert seen[0][0].allow_secrets is False


def test_the_default_reply_cap(offline_session: ChatSession) -> None:
    engine = offline_session.engine
    assert default_reply_cap(engine, None, 1) == MAP_MAX_TOKENS == 32
    assert default_reply_cap(engine, None, 3) == 96
    assert default_reply_cap(engine, None, 0) == 32  # at least one column's worth
    assert default_reply_cap(engine, 5, 1) is None  # chosen for the map
    engine.settings.max_tokens = None
    assert default_reply_cap(engine, None, 2) == 64
    engine.settings.max_tokens = 200  # chosen for the session
    assert default_reply_cap(engine, None, 1) is None


def test_request_key_is_the_engines_own(
    offline_session: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key of the endpoint's URL and the body (core.keys.cache_key) ...
    engine = offline_session.engine
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert request_key(engine, body) == cache_key("http://127.0.0.1:9/v1", body)
    # ... and whatever the engine's own cache_key says, when that differs.
    monkeypatch.setattr(engine, "cache_key", lambda body: "own:" + body["model"])
    assert request_key(engine, body) == "own:m"


# ----- the plan line -------------------------------------------------------------------------


def a_plan(**fields: Any) -> MapPlan:
    base: dict[str, Any] = {
        "rows": 10,
        "cached": 2,
        "send": 8,
        "send_rows": 8,
        "duplicates": 0,
        "skipped": 0,
        "null_columns": (),
        "invalid": 0,
        "prompt_tokens": 1234,
        "completion_tokens": 256,
        "cost_low": 0.0012,
        "cost_high": 0.0034,
        "cost_batch": None,
        "model": "gpt-4o-mini",
    }
    return MapPlan(**{**base, **fields})


def test_the_plan_line() -> None:
    plan = a_plan()
    line = "10 rows · 2 cached · 8 to send · 1,234 prompt tokens · up to 256 reply tokens · "
    assert plan.line() == line + "$0.0012–$0.0034"
    assert str(plan) == plan.line() and plan._repr_markdown_() == f"`{plan.line()}`"
    assert a_plan(rows=1).line().startswith("1 row · ")
    assert a_plan(cost_batch=0.0017).line().endswith("$0.0012–$0.0034 (batch: $0.0017)")
    assert a_plan(approximate=True).line().count("≈1,234 prompt tokens") == 1


def test_the_plan_line_names_what_is_not_sent() -> None:
    one = a_plan(duplicates=1).line()
    assert " · 8 to send · 1 duplicate row shares a reply · 1,234" in one
    many = a_plan(duplicates=3).line()
    assert " · 3 duplicate rows share a reply · " in many
    skipped = a_plan(skipped=2, null_columns=("text", "tag")).line()
    assert " · 2 skipped (null in text, tag; --fill-null TEXT sends them) · " in skipped
    assert " · 4 too long for the context window · " in a_plan(invalid=4).line()
    plain = a_plan().line()
    for absent in ("duplicate", "skipped", "too long", "offline", "default", "by default"):
        assert absent not in plain


def test_the_plan_line_cost() -> None:
    assert a_plan(send=0).line().endswith(" · up to 256 reply tokens · $0.00")
    unknown = a_plan(cost_high=None, model="mine").line()
    assert unknown.endswith(" · cost unknown (no price for mine: %chat price MODEL IN OUT)")
    # Nothing to send costs nothing, whatever a price would say.
    assert a_plan(send=0, cost_high=None).line().endswith(" · $0.00")


def test_the_plan_line_notes() -> None:
    capped = a_plan(default_cap=32).line()
    assert "up to 256 reply tokens (32 per reply by default; --max-tokens N for longer)" in capped
    assert "by default" not in a_plan(default_cap=32, send=0).line()
    assert a_plan(offline=True).line().endswith(" · offline: uncached rows will fail")
    assert "offline" not in a_plan(offline=True, send=0).line()
    noted = a_plan(offline=True, note="the local model answers").line()
    assert noted.endswith(" · offline: uncached rows will fail · the local model answers")


# ----- what every row shares ------------------------------------------------------------------


def test_a_prompt_surely_fits_or_is_counted(offline_session: ChatSession) -> None:
    shape = RowShape.probe(
        offline_session.engine,
        RequestOptions(
            model="my-own-model", system=None, temperature=None, max_tokens=10, extra=None
        ),
    )
    assert shape is not None
    room = 8192 - 10
    fixed = tokens.count_messages_bound([{"role": "user", "content": ""}])
    assert fixed is not None
    ascii_fit = (room - fixed) // 4
    assert shape.fits("a" * ascii_fit)  # 4 bytes a character at most: fits unencoded
    # Over that, the UTF-8 length decides: ASCII is 1 byte a character ...
    assert shape.fits("a" * (ascii_fit + 1)) and shape.fits("a" * (room - fixed))
    assert not shape.fits("a" * (room - fixed + 1))
    # ... and "東" 3 bytes.
    assert shape.fits("東" * ((room - fixed) // 3)) and not shape.fits(
        "東" * ((room - fixed) // 3 + 1)
    )
    shape._fixed = None  # a message the bound cannot count: never surely fits
    assert not shape.fits("a")


def test_a_body_with_something_after_the_prompt_has_no_row_shape(
    offline_session: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = offline_session.engine
    real = engine.one_body

    def one_body(prompt: str, options: RequestOptions) -> dict[str, Any]:
        body = real(prompt, options)
        return {**body, "messages": [*body["messages"], {"role": "user", "content": "P.S."}]}

    monkeypatch.setattr(engine, "one_body", one_body)
    options = RequestOptions(model="m", system=None, temperature=None, max_tokens=5, extra=None)
    assert RowShape.probe(engine, options) is None
    monkeypatch.setattr(engine, "one_body", lambda prompt, options: {"model": "m"})
    assert RowShape.probe(engine, options) is None


def test_keys_are_checked_on_every_4096th_row(
    offline_session: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key function that differs from the fast key only on row 4,096: the sample catches it.
    session = offline_session
    shape = RowShape.probe(
        session.engine,
        RequestOptions(
            model="gpt-4o-mini", system=None, temperature=None, max_tokens=5, extra=None
        ),
    )
    assert shape is not None
    prompts = [f"row {i}" for i in range(5000)]
    real = session.engine.cache_key
    odd = shape.body("row 4096")

    def key(body: dict[str, Any]) -> str:
        return "odd" if body == odd else real(body)

    monkeypatch.setattr(session.engine, "cache_key", key)
    keys = shape.keys(prompts)
    assert keys[4096] == "odd" and keys[0] == real(shape.body("row 0"))
    assert shape._key_parts is None  # the slow, sure way from then on


def test_the_azure_api_version_is_part_of_the_fast_key(offline_session: ChatSession) -> None:
    session = offline_session
    session.settings.azure_api_version = "2024-10-21"
    shape = RowShape.probe(
        session.engine,
        RequestOptions(
            model="gpt-4o-mini", system=None, temperature=None, max_tokens=5, extra=None
        ),
    )
    assert shape is not None and shape._key_parts is not None
    prefix, suffix = shape._key_parts
    assert '"endpoint":"http://127.0.0.1:9/v1?api-version=2024-10-21"' in prefix
    assert suffix.endswith("}}") and shape.keys(["x"]) == [
        session.engine.cache_key(shape.body("x"))
    ]


# ----- what the mutation run showed unpinned (tests/mutation/README.md, map.plan) ------------


def test_allow_secrets_reaches_the_system_prompt_and_every_row(
    offline_session: ChatSession,
) -> None:
    key = "AKIA" + "Q" * 16  # built at run time: never a secret in the repository
    df = frame(["a", f"my key is {key}"])
    with pytest.raises(SecretInPromptError, match="AWS access key"):
        plan_rows(offline_session, frame(["a"]), system=f"use {key}")
    with pytest.raises(SecretInPromptError, match="AWS access key"):
        plan_rows(offline_session, df)
    with pytest.raises(SecretInPromptError, match="AWS access key"):  # the default: refused
        RowShape.probe(
            offline_session.engine,
            RequestOptions(model="m", system=key, temperature=None, max_tokens=5, extra=None),
        )
    planned = plan_rows(offline_session, df, system=f"use {key}", allow_secrets=True)
    assert [job.prompt for job in planned.to_send] == ["a", f"my key is {key}"]
    assert planned.to_send[0].body["messages"][0] == {"role": "system", "content": f"use {key}"}
    # No row to send (all skipped): the system prompt is not even looked at.
    none = plan_rows(offline_session, frame([None]), system=f"use {key}")  # type: ignore[list-item]
    assert none.to_send == [] and none.skipped == 1


def test_what_redaction_masked_goes_with_each_request(tmp_path) -> None:
    session = ChatSession(
        Settings(base_url="http://127.0.0.1:9/v1", api_key=KEY, model="gpt-4o-mini", redact=True),
        cache=False,
    )
    try:
        planned = plan_rows(session, frame(["write to ann@example.com", "plain"]))
        masked, plain = planned.to_send
        assert "ann@example.com" not in masked.prompt and masked.prepared.masked
        assert masked.prepared.label == "map" and plain.prepared.masked == ""
        shape = RowShape.probe(
            session.engine,
            RequestOptions(
                model="gpt-4o-mini", system=None, temperature=None, max_tokens=5, extra=None
            ),
        )
        assert shape is not None
        prepared = shape.prepare("x", "masked 1 e-mail address")
        assert (prepared.label, prepared.masked, prepared.prompt) == (
            "map",
            "masked 1 e-mail address",
            "x",
        )
    finally:
        session.close()


def test_each_row_too_long_counts(offline_session: ChatSession, monkeypatch: Any) -> None:
    longs = ["word " * 9000, "more " * 9000, "and more " * 5000]
    for probe in (True, False):
        if not probe:  # ... also when each row goes through prepare_one
            monkeypatch.setattr(RowShape, "probe", classmethod(lambda cls, *a, **k: None))
        planned = plan_rows(offline_session, frame([*longs, "ok"]), model="my-own-model")
        assert planned.plan.invalid == 3 and sorted(planned.row_errors) == [0, 1, 2]
        assert all("does not fit the 8,192-token" in e for e in planned.row_errors.values())
        assert [job.prompt for job in planned.to_send] == ["ok"]


def test_the_plan_carries_the_default_cap_and_what_is_approximate(
    offline_session: ChatSession,
) -> None:
    plan = plan_rows(offline_session, frame(["a"]), default_cap=32).plan
    assert plan.default_cap == 32 and plan.approximate is False
    assert plan_rows(offline_session, frame(["a"]), model="my-own-model").plan.approximate
    offline_session.settings.offline = True
    assert plan_rows(offline_session, frame(["a"])).plan.offline is True


def test_a_cache_that_is_off_is_not_read_without_a_row_shape(
    offline_session: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RowShape, "probe", classmethod(lambda cls, *a, **k: None))
    planned = plan_rows(offline_session, frame(["a"]), cache_mode="off")
    assert planned.hits == [] and [job.prompt for job in planned.to_send] == ["a"]


def test_keys_check_a_sample_not_every_row(
    offline_session: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The point of the fast keys: one sha256 a row, `request_key` on rows 0, 4,096 and last.
    session = offline_session
    shape = RowShape.probe(
        session.engine,
        RequestOptions(
            model="gpt-4o-mini", system=None, temperature=None, max_tokens=5, extra=None
        ),
    )
    assert shape is not None and shape.keys([]) == []
    checked: list[str] = []
    real = session.engine.cache_key

    def key(body: dict[str, Any]) -> str:
        checked.append(body["messages"][-1]["content"])
        return real(body)

    monkeypatch.setattr(session.engine, "cache_key", key)
    prompts = [f"row {i}" for i in range(5000)]
    assert shape.keys(prompts) == [real(shape.body(p)) for p in prompts]
    assert sorted(checked) == ["row 0", "row 4096", "row 4999"]


def test_the_room_is_the_models_own_context_window(offline_session: ChatSession) -> None:
    shape = RowShape.probe(
        offline_session.engine,
        RequestOptions(
            model="gpt-4o-mini", system=None, temperature=None, max_tokens=10, extra=None
        ),
    )
    assert shape is not None
    window = offline_session.engine.prices.context_window("gpt-4o-mini")
    assert window > 8192 and shape._room == window - 10
    assert shape.fits("a" * 20_000)  # over an unknown model's 8,192 tokens
