"""Typed maps end to end: `session.map(schema=/choices=)` and `session.filter` against
FakeOpenAIServer over real sockets, through the one pipeline (plan, cache, dispatch, ledger).

The fake answers each row with the JSON a model constrained by the request would give (its
`reply` callable reads the row's prompt); what was sent is asserted on its request log.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Callable
from typing import Any

import pandas as pd
import polars as pl
import pytest
from pydantic import BaseModel

from ipychat.core.errors import ConfigError
from ipychat.core.structured import output_spec
from ipychat.engine.cache import ResponseCache
from ipychat.map import job as chatmap
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer, Fault

KEY = "sk-test-" + "t" * 20
LABELS = ["positive", "negative", "neutral"]


def row_text(body: dict[str, Any]) -> str:
    """The row's own prompt: the first user message (a re-ask appends more after it)."""
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def answering(table: dict[str, Any]) -> Callable[[dict[str, Any]], str]:
    """A reply callable: the answer for the row whose prompt ends with a key of `table`
    (a dict or list is sent as JSON, a str as it is)."""

    def reply(body: dict[str, Any]) -> str:
        prompt = row_text(body)
        for key, answer in table.items():
            if prompt.endswith(key):
                return answer if isinstance(answer, str) else json.dumps(answer)
        raise AssertionError(f"no answer for {prompt!r}")

    return reply


class Tier(str, enum.Enum):
    gold = "gold"
    silver = "silver"


class Invoice(BaseModel):
    number: str
    total: float
    items: int
    paid: bool
    issued: dt.date
    due: dt.datetime
    tier: Tier
    tags: list[str]
    note: str | None


INVOICES = {
    "A": {
        "number": "A-1",
        "total": 12.5,
        "items": 3,
        "paid": True,
        "issued": "2024-03-01",
        "due": "2024-03-31T12:00:00",
        "tier": "gold",
        "tags": ["x", "y"],
        "note": None,
    },
    "B": {
        "number": "B-2",
        "total": 7.0,
        "items": 1,
        "paid": False,
        "issued": "2024-04-02",
        "due": "2024-05-01T09:30:00",
        "tier": "silver",
        "tags": [],
        "note": "late",
    },
}


# ----- schema: one typed column per field ----------------------------------------------------


def test_every_dtype_of_a_schema_end_to_end_on_pandas(make_session) -> None:
    with FakeOpenAIServer(reply=answering(INVOICES)) as server:
        session = make_session(server)
        df = pd.DataFrame({"text": ["invoice A", "invoice B"]}, index=[7, 3])
        out = session.map(df, "Extract from: {text}", schema=Invoice)
    assert list(out.columns) == ["text", *Invoice.model_fields]
    assert list(out.index) == [7, 3] and "_error" not in out
    assert str(out["number"].dtype) == "string" and out["number"].tolist() == ["A-1", "B-2"]
    assert str(out["total"].dtype) == "Float64" and out["total"].tolist() == [12.5, 7.0]
    assert str(out["items"].dtype) == "Int64" and out["items"].tolist() == [3, 1]
    assert str(out["paid"].dtype) == "boolean" and out["paid"].tolist() == [True, False]
    assert out["issued"].dtype.kind == "M"
    assert out["issued"].tolist() == [pd.Timestamp("2024-03-01"), pd.Timestamp("2024-04-02")]
    assert out["due"].tolist() == [
        pd.Timestamp("2024-03-31 12:00"),
        pd.Timestamp("2024-05-01 09:30"),
    ]
    assert isinstance(out["tier"].dtype, pd.CategoricalDtype)
    assert list(out["tier"].cat.categories) == ["gold", "silver"]
    assert out["tags"].tolist() == [["x", "y"], []]
    # A nullable field answered null is NA, and no error: null is an answer the schema allows.
    assert str(out["note"].dtype) == "string"
    assert out["note"].isna().tolist() == [True, False]


def test_every_dtype_of_a_schema_on_polars(make_session) -> None:
    with FakeOpenAIServer(reply=answering(INVOICES)) as server:
        session = make_session(server)
        df = pl.DataFrame({"text": ["invoice A", "invoice B"]})
        out = session.map(df, "Extract from: {text}", schema=Invoice)
    schema = out.schema
    assert schema["number"] == pl.String and schema["total"] == pl.Float64
    assert schema["items"] == pl.Int64 and schema["paid"] == pl.Boolean
    assert schema["issued"] == pl.Date and schema["due"] == pl.Datetime("us")
    assert schema["tier"] == pl.Enum(["gold", "silver"])
    assert schema["tags"] == pl.List(pl.String)
    assert out["issued"].to_list() == [dt.date(2024, 3, 1), dt.date(2024, 4, 2)]
    assert out["note"].to_list() == [None, "late"]


def test_a_json_schema_dict_with_a_nested_object_is_flattened(make_session) -> None:
    schema = {
        "title": "Person",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": ["integer", "null"]}},
                "required": ["city", "zip"],
            },
        },
        "required": ["name", "address"],
    }
    answers = {"1": {"name": "Ann", "address": {"city": "Oslo", "zip": None}}}
    with FakeOpenAIServer(reply=answering(answers)) as server:
        session = make_session(server)
        out = session.map(pd.DataFrame({"t": ["p1"]}), "Who: {t}", schema=schema)
        sent = server.chat_requests[0].body
    assert sent["response_format"]["json_schema"]["name"] == "Person"
    assert list(out.columns) == ["t", "name", "address.city", "address.zip"]
    assert out.loc[0, "address.city"] == "Oslo" and pd.isna(out.loc[0, "address.zip"])
    assert str(out["address.zip"].dtype) == "Int64"


def test_a_reply_that_does_not_fit_is_asked_again_once_then_the_row_says_why(
    make_session,
) -> None:
    good = {"name": "Bo", "age": 40}

    class Person(BaseModel):
        name: str
        age: int

    answers = {"fixed": "Sure! Here it is: {name: Bo}", "never": '{"name": "X", "age": "old"}'}

    def reply(body: dict[str, Any]) -> str:
        repaired = body["messages"][-1]["content"].startswith("That reply does not fit")
        if repaired and row_text(body).endswith("fixed"):
            return json.dumps(good)
        return answering(answers)(body)

    with FakeOpenAIServer(reply=reply) as server:
        session = make_session(server)
        df = pd.DataFrame({"t": ["fixed", "never"]})
        out = session.map(df, "Person: {t}", schema=Person)
        requests = server.chat_requests
    assert len(requests) == 4  # each row: the ask and one re-ask, no more
    reask = next(r.body for r in requests[2:] if row_text(r.body).endswith("fixed"))
    assert reask["messages"][-2] == {"role": "assistant", "content": answers["fixed"]}
    assert "fields: name, age" in reask["messages"][-1]["content"]
    assert "response_format" in reask  # the re-ask is constrained as the ask was
    assert out.loc[0, "name"] == "Bo" and out.loc[0, "age"] == 40
    assert pd.isna(out.loc[0, "_error"])
    assert pd.isna(out.loc[1, "age"])
    assert out.loc[1, "_error"].startswith("age: Input should be a valid integer")
    assert out.loc[1, "_error"].endswith("(also when asked again).")


def test_output_names_and_json_are_refused_with_a_schema(make_session) -> None:
    with FakeOpenAIServer() as server:
        session = make_session(server)
        df = pd.DataFrame({"t": ["a"]})
        with pytest.raises(ConfigError, match="the columns are its fields"):
            session.map(df, "{t}", "out", schema=Invoice)
        with pytest.raises(ConfigError, match="--json and --schema"):
            session.map(df, "{t}", schema=Invoice, json=True)
        with pytest.raises(ConfigError, match="Give exactly one of schema, choices"):
            session.map(df, "{t}", schema=Invoice, choices=LABELS)
        assert server.chat_requests == []


# ----- choices -------------------------------------------------------------------------------


def test_choices_are_normalised_into_a_categorical_of_exactly_the_labels(make_session) -> None:
    # A server that ignores the constraint (the prompt kind: nothing but the rule is sent).
    answers = {
        "r0": "Positive.",
        "r1": "  NEGATIVE ",
        "r2": "**neutral**",
        "r3": '"positive"',
        "r4": '{"label": "negative"}',
    }
    with FakeOpenAIServer(reply=answering(answers)) as server:
        session = make_session(server, structured="prompt")
        df = pd.DataFrame({"review": list(answers)})
        out = session.map(df, "Review: {review}", "sentiment", choices=LABELS)
        sent = server.chat_requests[0].body
    assert out["sentiment"].tolist() == ["positive", "negative", "neutral", "positive", "negative"]
    assert list(out["sentiment"].cat.categories) == LABELS
    assert "_error" not in out
    assert "response_format" not in sent and "grammar" not in sent
    assert sent["messages"][0]["content"] == output_spec(choices=LABELS).instruction("prompt")


def test_a_sentence_is_not_a_label_even_when_it_names_one(make_session) -> None:
    answers = {"r0": "This review is positive.", "r1": "not positive"}
    with FakeOpenAIServer(reply=answering(answers)) as server:
        session = make_session(server, structured="prompt")
        df = pd.DataFrame({"review": ["r0", "r1"]})
        out = session.map(df, "Review: {review}", "sentiment", choices=LABELS)
        assert len(server.chat_requests) == 4  # asked again once each
    assert out["sentiment"].isna().all()
    assert out["_error"][0] == (
        "'This review is positive.' is not one of the labels: positive, negative, neutral "
        "(also when asked again)."
    )


# ----- what each endpoint kind is sent -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "choices_field", "schema_field"),
    [
        ("openai", "response_format", "response_format"),
        ("llama.cpp", "grammar", "response_format"),
        ("vllm", "structured_outputs", "structured_outputs"),
        ("vllm-guided", "guided_choice", "guided_json"),
        ("prompt", None, None),
    ],
)
def test_the_fragment_sent_per_endpoint_kind(
    make_session, kind: str, choices_field: str | None, schema_field: str | None
) -> None:
    labels = {"r": {"label": "neutral"} if kind == "openai" else "neutral"}
    facts = {"r": INVOICES["A"]}
    with FakeOpenAIServer(reply=answering(labels)) as server:
        session = make_session(server, structured=kind)
        df = pd.DataFrame({"review": ["r"]})
        out = session.map(df, "Review: {review}", "s", choices=LABELS)
        (sent,) = server.chat_requests
    assert out["s"].tolist() == ["neutral"]
    spec = output_spec(choices=LABELS)
    fragment = spec.request_fragment(kind)  # type: ignore[arg-type]
    assert {k: sent.body[k] for k in fragment} == fragment
    assert (choices_field in sent.body) if choices_field else not fragment
    assert sent.body["messages"][0]["content"] == spec.instruction(kind)  # type: ignore[arg-type]
    with FakeOpenAIServer(reply=answering(facts)) as server:
        session = make_session(server, structured=kind)
        session.map(df, "Review: {review}", schema=Invoice)
        (sent,) = server.chat_requests
    fragment = output_spec(schema=Invoice).request_fragment(kind)  # type: ignore[arg-type]
    assert {k: sent.body[k] for k in fragment} == fragment
    assert (schema_field in sent.body) if schema_field else not fragment
    if kind == "openai":
        assert sent.body["response_format"]["type"] == "json_schema"
        assert sent.body["response_format"]["json_schema"]["strict"] is True


def test_auto_is_the_openai_form_for_a_remote_endpoint(make_session) -> None:
    with FakeOpenAIServer(reply=answering({"r": {"label": "neutral"}})) as server:
        session = make_session(server)
        session.map(pd.DataFrame({"review": ["r"]}), "Review: {review}", "s", choices=LABELS)
        (sent,) = server.chat_requests
    assert sent.body["response_format"]["type"] == "json_schema"


# OpenAI's answer to a field it does not know, as its API returns it (e.g. openai-python
# issue #1114, "Unrecognized request argument supplied: ..."): HTTP 400, invalid_request_error.
REFUSED = "Unrecognized request argument supplied: response_format"


def test_a_server_that_refuses_response_format_falls_back_to_the_prompt_once(
    make_session, caplog: pytest.LogCaptureFixture
) -> None:
    def reply(body: dict[str, Any]) -> str | Fault:
        if "response_format" in body:
            return Fault.status(400, message=REFUSED)
        return answering({"r0": "positive", "r1": "negative", "r2": "neutral"})(body)

    with FakeOpenAIServer(reply=reply) as server:
        session = make_session(server)
        df = pd.DataFrame({"review": ["r0", "r1", "r2"]})
        result = chatmap.run(session, df, "Review: {review}", "s", choices=LABELS, concurrency=1)
        statuses = [r.status for r in server.chat_requests]
        server.reset_log()
        again = session.map(df, "Again, review: {review}", "s", choices=LABELS)
        later = server.chat_requests
    assert result.frame["s"].tolist() == ["positive", "negative", "neutral"]  # no row lost
    assert "_error" not in result.frame
    assert statuses.count(400) == 1 and statuses.count(200) == 3  # refused once, not per row
    note = result.summary.note
    assert note is not None and "refused the openai structured-output fields" in note
    assert note in result.summary.line() and note in caplog.text
    # The endpoint is remembered: the next map asks in the prompt from the start.
    assert again["s"].tolist() == ["positive", "negative", "neutral"]
    assert all(r.status == 200 and "response_format" not in r.body for r in later)


def test_a_400_about_something_else_is_the_rows_error_not_a_fallback(make_session) -> None:
    def reply(body: dict[str, Any]) -> Fault:
        return Fault.status(400, message="Invalid 'messages[1].content': string too long.")

    with FakeOpenAIServer(reply=reply) as server:
        session = make_session(server)
        out = session.map(pd.DataFrame({"review": ["r0"]}), "Review: {review}", "s", choices=LABELS)
        assert len(server.chat_requests) == 1
        assert "response_format" in server.chat_requests[0].body
    assert "string too long" in out["_error"][0]


# ----- filter --------------------------------------------------------------------------------

FOOD = {"pasta": {"answer": True}, "waiter": {"answer": False}, "curry": {"answer": True}}


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_filter_keeps_the_rows_answered_yes(make_session, library: str) -> None:
    data = {"review": ["the pasta", "the waiter", "the curry"], "stars": [5, 1, 4]}
    df = pd.DataFrame(data, index=[10, 11, 12]) if library == "pandas" else pl.DataFrame(data)
    with FakeOpenAIServer(reply=answering(FOOD)) as server:
        session = make_session(server)
        kept = session.filter(df, "Is this review about food? {review}")
        with_column = session.filter(df, "Is this review about food? {review}", decision="food")
        assert len(server.chat_requests) == 3  # the second filter is answered by the cache
        sent = server.chat_requests[0].body
    assert sent["response_format"]["json_schema"]["schema"]["properties"] == {
        "answer": {"type": "boolean"}
    }
    if library == "pandas":
        assert list(kept.index) == [10, 12] and list(kept.columns) == ["review", "stars"]
        assert with_column["food"].tolist() == [True, True]
        assert str(with_column["food"].dtype) == "boolean"
    else:
        assert kept["review"].to_list() == ["the pasta", "the curry"]
        assert kept.columns == ["review", "stars"]
        assert with_column["food"].to_list() == [True, True]


def test_a_row_without_an_answer_is_not_kept_and_counted(make_session) -> None:
    answers = {**FOOD, "menu": "maybe"}
    with FakeOpenAIServer(reply=answering(answers)) as server:
        session = make_session(server, structured="prompt")
        df = pd.DataFrame({"review": ["the pasta", "the waiter", "the menu", None]})
        found = chatmap.run_filter(session, df, "Food? {review}")
    assert found.frame["review"].tolist() == ["the pasta"]
    assert (found.kept, found.dropped, found.unanswered) == (1, 1, 2)
    assert found.line() == "Kept 1 of 4 rows (1 answered no, 2 without an answer)"
    errors = found.result.frame["_error"]
    assert errors[2] == "'maybe' is not yes or no (also when asked again)."
    assert errors[3].startswith("skipped: null in review")


# ----- cache, dry run, resume ----------------------------------------------------------------


def test_the_cache_key_changes_with_the_schema(make_session) -> None:
    def schema(minimum: int) -> dict[str, Any]:
        # `minimum` is validated on the client, not sent (strict schemas drop it): only
        # the spec's digest in the key tells the two apart.
        return {
            "title": "Count",
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": minimum}},
            "required": ["n"],
        }

    with FakeOpenAIServer(reply=answering({"x": {"n": 5}})) as server:
        session = make_session(server)
        df = pd.DataFrame({"t": ["x"]})
        first = session.map(df, "Count {t}", schema=schema(0))
        again = session.map(df, "Count {t}", schema=schema(0))
        changed = session.map(df, "Count {t}", schema=schema(1))
        bodies = [r.body for r in server.chat_requests]
    assert first["n"].tolist() == again["n"].tolist() == changed["n"].tolist() == [5]
    assert len(bodies) == 2  # the same schema is cached; the changed one is asked anew
    assert bodies[0] == bodies[1]  # the same request on the wire, yet not the same answer


def test_the_dry_run_counts_the_schema_and_the_rule(make_session) -> None:
    with FakeOpenAIServer() as server:
        session = make_session(server)
        df = pd.DataFrame({"t": ["a", "b", "c"]})
        plain = session.map(df, "Extract from: {t}", dry_run=True)
        typed = session.map(df, "Extract from: {t}", schema=Invoice, dry_run=True)
        assert server.chat_requests == []
    spec = output_spec(schema=Invoice)
    model = "gpt-4o-mini"
    rule = [{"role": "system", "content": spec.instruction("openai")}]
    one = session.count([{"role": "user", "content": "Extract from: a"}], model).tokens
    with_rule = session.count([*rule, {"role": "user", "content": "Extract from: a"}], model)
    per_row = with_rule.tokens - one + spec.schema_tokens(model, "openai")
    assert spec.schema_tokens(model, "openai") > 50  # the schema itself is counted
    assert typed.prompt_tokens - plain.prompt_tokens == 3 * per_row
    assert typed.cost_high is not None and plain.cost_high is not None
    assert typed.cost_high > plain.cost_high


def test_an_interrupted_typed_map_resumes_with_only_the_missing_rows(make_session) -> None:
    answers = {f"row {i}": {"label": LABELS[i % 3]} for i in range(40)}
    with FakeOpenAIServer(reply=answering(answers), latency=0.05) as server:
        session = make_session(server)
        df = pd.DataFrame({"t": list(answers)})

        def stop(progress: chatmap.MapProgress) -> None:
            if progress.done >= 8:
                raise KeyboardInterrupt

        with pytest.raises(chatmap.MapInterrupted) as info:
            chatmap.run(session, df, "Text: {t}", "s", choices=LABELS, concurrency=4, progress=stop)
        done = int(info.value.result.frame["s"].notna().sum())
        assert 8 <= done < 40
        server.reset_log()
        again = chatmap.run(session, df, "Text: {t}", "s", choices=LABELS)
        assert len(server.chat_requests) == 40 - done
    assert again.summary.cached == done
    assert again.frame["s"].tolist() == [LABELS[i % 3] for i in range(40)]
    assert isinstance(again.frame["s"].dtype, pd.CategoricalDtype)


# ----- the Batch API -------------------------------------------------------------------------


def test_a_typed_batch_map_sends_the_fragment_and_resumes_after_a_restart(tmp_path) -> None:
    from ipychat.map import batch

    answers = {"invoice A": INVOICES["A"], "invoice B": INVOICES["B"]}
    with FakeOpenAIServer(reply=answering(answers), batch={"delay": 0.05}) as server:

        def kernel() -> ChatSession:
            settings = Settings(base_url=server.base_url, api_key=KEY, model="gpt-4o-mini")
            return ChatSession(settings, cache=ResponseCache(tmp_path / "shared"))

        old = kernel()
        df = pd.DataFrame({"text": list(answers)})
        submitted = batch.run(
            old, df, "Extract from: {text}", schema=Invoice, wait=False, poll_interval=0.01
        ).job
        assert submitted is not None
        old.close()  # the kernel dies; the batch goes on at the provider
        new = kernel()
        try:
            result = batch.resume(new, submitted.batch_ids[0], df, poll_interval=0.01)
        finally:
            new.close()
        files = [f for f in server.batch_api.files.values() if f.purpose == "batch"]
        lines = [json.loads(line) for line in files[0].data.splitlines()]
    assert result.attached
    fragment = output_spec(schema=Invoice).request_fragment("openai")
    assert all(line["body"]["response_format"] == fragment["response_format"] for line in lines)
    out = result.frame
    assert out["number"].tolist() == ["A-1", "B-2"] and str(out["items"].dtype) == "Int64"
    assert isinstance(out["tier"].dtype, pd.CategoricalDtype)


def test_rows_past_the_limit_keep_what_the_frame_had(make_session) -> None:
    answers = {f"r{i}": {"label": LABELS[i % 3]} for i in range(4)}
    with FakeOpenAIServer(reply=answering(answers)) as server:
        session = make_session(server)
        df = pd.DataFrame({"t": list(answers), "s": ["x", None, "old", "positive"]})
        out = session.map(df, "Text: {t}", "s", choices=LABELS, limit=2)
        assert len(server.chat_requests) == 2
        fits = pd.DataFrame({"t": list(answers), "s": [None, None, "neutral", None]})
        typed = session.map(fits, "Text: {t}", "s", choices=LABELS, limit=2)
        frame_pl = pl.DataFrame({"t": list(answers), "s": ["x", None, "y", None]})
        polars = session.map(frame_pl, "Text: {t}", "s", choices=LABELS, limit=2)
        fits_pl = pl.DataFrame({"t": list(answers), "s": [None, None, "neutral", None]})
        enum_pl = session.map(fits_pl, "Text: {t}", "s", choices=LABELS, limit=2)
    # "old" is no label: the column keeps it as it was rather than typing it away.
    assert out["s"].tolist() == ["positive", "negative", "old", "positive"]
    assert df["s"].tolist()[2:] == ["old", "positive"]  # the caller's frame is not written
    # Every old value is a label (or null): the column stays categorical.
    assert typed["s"].tolist()[:3] == ["positive", "negative", "neutral"]
    assert pd.isna(typed["s"][3]) and list(typed["s"].cat.categories) == LABELS
    assert polars["s"].to_list() == ["positive", "negative", "y", None]
    assert enum_pl["s"].to_list() == ["positive", "negative", "neutral", None]
    assert enum_pl.schema["s"] == pl.Enum(LABELS)


def test_duplicate_rows_share_one_typed_request(make_session) -> None:
    answers = {"same": {"label": "negative"}, "other": {"label": "neutral"}}
    with FakeOpenAIServer(reply=answering(answers)) as server:
        session = make_session(server)
        df = pd.DataFrame({"t": ["same", "other", "same", "same"]})
        out = session.map(df, "Text: {t}", "s", choices=LABELS)
        assert len(server.chat_requests) == 2
    assert out["s"].tolist() == ["negative", "neutral", "negative", "negative"]


def test_max_cost_and_the_filters_dry_run_count_the_schema(make_session) -> None:
    with FakeOpenAIServer() as server:
        session = make_session(server)
        df = pd.DataFrame({"t": [f"row {i}" for i in range(20)]})
        plain = session.map(df, "Extract from: {t}", max_tokens=40, dry_run=True)
        typed = session.map(df, "Extract from: {t}", schema=Invoice, max_tokens=40, dry_run=True)
        between = (plain.cost_high + typed.cost_high) / 2
        session.map(df, "Extract from: {t}", max_tokens=40, max_cost=between, dry_run=True)
        with pytest.raises(Exception, match="This map may cost up to"):
            session.map(df, "Extract from: {t}", schema=Invoice, max_tokens=40, max_cost=between)
        filtered = session.filter(df, "Is {t} odd?", dry_run=True)
        assert server.chat_requests == []
    asked = session.map(df, "Is {t} odd?", "x", dry_run=True)
    rule = session.count(
        [{"role": "system", "content": output_spec(filter=True).instruction("openai")}]
    ).tokens
    assert filtered.prompt_tokens > asked.prompt_tokens + 20 * (rule - 3)
