"""`session.map(..., choices=..., scores=True)`: each label's probability from the reply's
log probabilities, end to end against FakeOpenAIServer over real sockets.

The fake answers `logprobs: true` requests in OpenAI's shape (`choices[0].logprobs.content[]
.top_logprobs`, https://platform.openai.com/docs/api-reference/chat/object); the test picks
the alternatives at the label's token and their probabilities (`FakeOpenAIServer(logprobs=)`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
import polars as pl
import pytest

from ipychat.core.errors import ConfigError
from ipychat.engine.cache import ResponseCache
from ipychat.map import job as chatmap
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer

KEY = "sk-test-" + "t" * 20
LABELS = ["positive", "negative", "neutral"]
REVIEWS = ["Great food", "Cold soup", "It was fine"]
# Per review: the label the model chose, and the probabilities at the label's first token.
CHOSEN = {"Great food": "positive", "Cold soup": "negative", "It was fine": "neutral"}
PROBABILITIES = {
    "Great food": {"positive": 0.9, "negative": 0.06, "neutral": 0.04},
    "Cold soup": {"negative": 0.7, "neutral": 0.2, "positive": 0.1},
    "It was fine": {"neutral": 0.5, "positive": 0.3, "negative": 0.2},
}


def review_of(body: dict[str, Any]) -> str:
    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return next(r for r in REVIEWS if prompt.endswith(r))


def json_reply(body: dict[str, Any]) -> str:
    """What a model under OpenAI's json_schema answers: {"label": ...}."""
    return json.dumps({"label": CHOSEN[review_of(body)]})


def alternatives(body: dict[str, Any]) -> dict[str, dict[str, float]]:
    """At the chosen label's token, the three labels with the row's probabilities."""
    review = review_of(body)
    return {CHOSEN[review]: PROBABILITIES[review]}


def frame(library: str) -> Any:
    data = {"review": REVIEWS}
    return pl.DataFrame(data) if library == "polars" else pd.DataFrame(data)


def column(df: Any, name: str) -> list[Any]:
    values = df.get_column(name).to_list() if isinstance(df, pl.DataFrame) else list(df[name])
    return [None if v is None or v is pd.NA else v for v in values]


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_scores_are_one_float_column_per_label(make_session, library: str) -> None:
    with FakeOpenAIServer(reply=json_reply, logprobs=alternatives) as server:
        session = make_session(server)
        df = frame(library)
        result = session.map(
            df, "Review: {review}", output="sentiment", choices=LABELS, scores=True
        )
    assert column(result, "sentiment") == ["positive", "negative", "neutral"]
    for label in LABELS:
        name = f"sentiment_score_{label}"
        dtype = result.schema[name] if library == "polars" else result[name].dtype
        assert str(dtype) == "Float64"
        got = column(result, name)
        wanted = [PROBABILITIES[r][label] for r in REVIEWS]
        assert got == pytest.approx(wanted)
    # the wire: asked for, at OpenAI's maximum of alternatives
    body = server.requests[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 20


def test_the_request_carries_logprobs_only_when_scores_are_asked(make_session) -> None:
    with FakeOpenAIServer(reply=json_reply, logprobs=alternatives) as server:
        session = make_session(server)
        plain = session.map(frame("pandas"), "Review: {review}", output="s", choices=LABELS)
        assert all("logprobs" not in r.body and "top_logprobs" not in r.body
                   for r in server.requests)  # fmt: skip
        assert not [c for c in plain.columns if "_score_" in c]
        server.reset_log()
        session.map(frame("pandas"), "Review: {review}", output="s", choices=LABELS, scores=True)
        assert [r.body.get("logprobs") for r in server.requests] == [True] * 3


def test_a_cached_rerun_keeps_the_scores(make_session) -> None:
    with FakeOpenAIServer(reply=json_reply, logprobs=alternatives) as server:
        session = make_session(server)
        first = session.map(
            frame("pandas"), "Review: {review}", output="s", choices=LABELS, scores=True
        )
        sent = len(server.requests)
        again = session.map(
            frame("pandas"), "Review: {review}", output="s", choices=LABELS, scores=True
        )
        assert len(server.requests) == sent  # every row from the cache
    for label in LABELS:
        name = f"s_score_{label}"
        assert column(again, name) == pytest.approx(column(first, name))
        assert all(v is not None for v in column(again, name))


def test_the_cache_key_includes_scores(make_session) -> None:
    with FakeOpenAIServer(reply=json_reply, logprobs=alternatives) as server:
        session = make_session(server)
        session.map(frame("pandas"), "Review: {review}", output="s", choices=LABELS)
        sent = len(server.requests)
        scored = session.map(
            frame("pandas"), "Review: {review}", output="s", choices=LABELS, scores=True
        )
        # the entries cached without log probabilities are not reused for a scores map
        assert len(server.requests) == sent + 3
    assert column(scored, "s_score_positive")[0] == pytest.approx(0.9)


def test_no_logprobs_from_the_server_is_na_and_one_note(make_session) -> None:
    # logprobs=False: a gateway that takes the fields and ignores them
    with FakeOpenAIServer(reply=json_reply, logprobs=False) as server:
        session = make_session(server)
        result = chatmap.run(
            session, frame("pandas"), "Review: {review}", "s", choices=LABELS, scores=True
        )
    assert column(result.frame, "s") == ["positive", "negative", "neutral"]
    for label in LABELS:
        assert column(result.frame, f"s_score_{label}") == [None, None, None]
        assert str(result.frame[f"s_score_{label}"].dtype) == "Float64"
    note = result.summary.note
    assert note is not None and note.count("No per-label scores") == 1
    assert "sent no token log probabilities" in note and "\n" not in note
    assert "_error" not in result.frame.columns  # the rows themselves are fine


def test_the_embedded_kind_is_not_asked_and_says_why(make_session) -> None:
    """A llama.cpp server ranks its top tokens before the label grammar: not asked, NA."""
    with FakeOpenAIServer(reply="positive", logprobs=alternatives) as server:
        session = make_session(server, structured="llama.cpp")
        result = chatmap.run(
            session, frame("pandas"), "Review: {review}", "s", choices=LABELS, scores=True
        )
        assert all("logprobs" not in r.body for r in server.requests)
    assert column(result.frame, "s_score_positive") == [None, None, None]
    assert "before the label grammar" in (result.summary.note or "")


def test_groq_refuses_scores_before_sending(monkeypatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk_" + "x" * 40)
    session = ChatSession(Settings(base_url="groq", model="llama-3.1-8b-instant", cache=False))
    try:
        with pytest.raises(ConfigError) as caught:
            session.map(
                frame("pandas"), "Review: {review}", output="s", choices=LABELS, scores=True
            )
    finally:
        session.close()
    message = str(caught.value)
    assert "groq refuses logprobs" in message and "leave out --scores" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("options", "needs"),
    [
        ({}, "needs choices"),
        ({"schema": {"type": "object", "properties": {"a": {"type": "string"}}}}, "needs choices"),
    ],
)
def test_scores_without_choices_is_refused(make_session, options: dict[str, Any], needs) -> None:
    with FakeOpenAIServer() as server:
        session = make_session(server)
        with pytest.raises(ConfigError, match=needs):
            session.map(frame("pandas"), "Review: {review}", output="s", scores=True, **options)
        assert server.requests == []


def test_a_label_split_into_tokens_and_a_shared_first_token(make_session) -> None:
    """The prompt kind: a bare label; "very good" and "very bad" share "very", so the
    probabilities at the next token split it (the chain rule)."""
    labels = ["very good", "very bad", "fine"]

    def reply(body: dict[str, Any]) -> str:
        return "very good"

    table = {"very": {"very": 0.8, "fine": 0.2}, " good": {" good": 0.75, " bad": 0.25}}
    with FakeOpenAIServer(reply=reply, logprobs=table) as server:
        session = make_session(server, structured="prompt")
        result = session.map(
            pd.DataFrame({"review": ["x"]}), "{review}", output="s", choices=labels, scores=True
        )
    assert column(result, "s_score_very good") == pytest.approx([0.6])
    assert column(result, "s_score_very bad") == pytest.approx([0.2])
    assert column(result, "s_score_fine") == pytest.approx([0.2])
    assert math.isclose(sum(column(result, f"s_score_{x}")[0] for x in labels), 1.0)


def test_scores_survive_the_fallback_to_the_prompt(make_session) -> None:
    """An endpoint that refuses response_format: the rows are asked again in the prompt, and
    still with logprobs (the bare label is then where the scores are read)."""
    from ipychat.testing import Fault

    def reply(body: dict[str, Any]) -> str | Fault:
        if "response_format" in body:
            return Fault.status(400, message="Unrecognized request argument: response_format")
        return CHOSEN[review_of(body)]

    with FakeOpenAIServer(reply=reply, logprobs=alternatives) as server:
        session = make_session(server)
        result = chatmap.run(
            session,
            frame("pandas"),
            "Review: {review}",
            "s",
            choices=LABELS,
            scores=True,
            concurrency=1,
        )
        resent = [r.body for r in server.chat_requests if "response_format" not in r.body]
    assert resent and all(body.get("logprobs") is True for body in resent)
    assert column(result.frame, "s_score_negative") == pytest.approx([0.06, 0.7, 0.2])


def test_a_batch_map_with_scores_resumes_with_them(tmp_path) -> None:
    from ipychat.map import batch

    with FakeOpenAIServer(reply=json_reply, logprobs=alternatives, batch={"delay": 0.05}) as srv:

        def kernel() -> ChatSession:
            settings = Settings(base_url=srv.base_url, api_key=KEY, model="gpt-4o-mini")
            return ChatSession(settings, cache=ResponseCache(tmp_path / "shared"))

        old = kernel()
        df = frame("pandas")
        submitted = batch.run(
            old, df, "Review: {review}", "s", choices=LABELS, scores=True, wait=False,
            poll_interval=0.01,
        ).job  # fmt: skip
        assert submitted is not None
        old.close()  # the kernel dies; the batch goes on at the provider
        new = kernel()
        try:
            result = batch.resume(new, submitted.batch_ids[0], df, poll_interval=0.01)
        finally:
            new.close()
        files = [f for f in srv.batch_api.files.values() if f.purpose == "batch"]
        lines = [json.loads(line) for line in files[0].data.splitlines()]
    assert result.attached
    assert all(line["body"]["logprobs"] is True for line in lines)
    wanted = [PROBABILITIES[r]["positive"] for r in REVIEWS]
    assert column(result.frame, "s_score_positive") == pytest.approx(wanted)
