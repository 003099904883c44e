"""The %%chatmap engine (ipychat.map.job) against FakeOpenAIServer over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from ipychat.core.errors import BudgetExceeded, ConfigError, TemplateError
from ipychat.engine.engine import Engine
from ipychat.map import job as chatmap
from ipychat.map.dispatch import session_limiter
from ipychat.map.job import MapAborted, MapInterrupted, MapPlan, compile_template
from ipychat.map.plan import MAP_MAX_TOKENS
from ipychat.map.ratelimit import RateLimiter
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer, Fault


def frame(n: int, **extra: list[Any]) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"item {i}" for i in range(n)], **extra})


def user_text(body: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


# ----- results ---------------------------------------------------------------------------


def test_order_and_index_are_kept_under_random_latency(make_session) -> None:
    with FakeOpenAIServer(latency=(0.0, 0.05), seed=3) as server:
        session = make_session(server)
        df = frame(120)
        df.index = pd.Index([f"r{(i * 37) % 120}" for i in range(120)], name="key")
        out = session.map(df, "Say {text}", "reply", concurrency=16)
        assert list(out.index) == list(df.index)
        assert out["reply"].tolist() == [f"Echo: Say item {i}" for i in range(120)]
        assert "_error" not in out.columns and "reply" not in df.columns  # a copy
        assert server.stats().max_in_flight > 1


def test_inplace_writes_into_the_frame(session: ChatSession, fake: FakeOpenAIServer) -> None:
    df = frame(5)
    result = chatmap.run(session, df, "{text}", "out", inplace=True)
    assert result.frame is df and df["out"].tolist() == [f"Echo: item {i}" for i in range(5)]
    assert result.summary.sent == 5 and result.summary.failed == 0
    line = result.summary.line("df")
    assert line.startswith("Done: 5 rows in ") and "(5 sent, 0 cached, 0 failed)" in line
    assert "column out added to df" in line


def test_json_fills_several_columns_and_reports_missing_keys(make_session) -> None:
    def reply(body: dict[str, Any]) -> str:
        text = user_text(body)
        if "item 1" in text:
            return json.dumps({"label": "b"})  # no score
        return "```json\n" + json.dumps({"label": "a", "score": len(text), "extra": 1}) + "\n```"

    with FakeOpenAIServer(reply=reply) as server:
        session = make_session(server)
        out = session.map(frame(3), "Rate {text}", ["label", "score"], json=True)
        assert out["label"].tolist() == ["a", "b", "a"]
        assert out["score"][0] == len("Rate item 0") and pd.isna(out["score"][1])
        assert pd.isna(out["_error"][0]) and "no 'score' key" in out["_error"][1]
        body = server.chat_requests[0].body
        assert body["response_format"] == {"type": "json_object"}
        assert "label, score" in body["messages"][0]["content"]  # the keys are asked for


def test_invalid_json_is_asked_again_once_then_recorded(make_session) -> None:
    def reply(body: dict[str, Any]) -> str:
        text = user_text(body)
        if any("item 0" in m["content"] for m in body["messages"]):
            return "not json at all"  # never valid
        if text.startswith("That is not a valid JSON object"):
            return '{"label": "fixed"}'
        return "sure! label=x"  # item 1: invalid, then fixed when asked again

    with FakeOpenAIServer(reply=reply) as server:
        session = make_session(server)
        out = session.map(frame(2), "Rate {text}", "label", json=True)
        assert pd.isna(out["label"][0]) and "not a JSON object" in out["_error"][0]
        assert "even when asked again" in out["_error"][0]
        assert out["label"][1] == "fixed" and pd.isna(out["_error"][1])
        assert len(server.chat_requests) == 4  # two rows, each asked twice
        again = server.chat_requests[-1].body["messages"]
        assert [m["role"] for m in again][-3:] == ["user", "assistant", "user"]


def test_identical_prompts_are_sent_once(session: ChatSession, fake: FakeOpenAIServer) -> None:
    df = pd.DataFrame({"text": ["a", "b", "a", "a", "b", "c"]})
    out = session.map(df, "Say {text}", "out")
    assert out["out"].tolist() == [f"Echo: Say {t}" for t in df["text"]]
    assert len(fake.chat_requests) == 3
    plan = session.map(df, "Say {text}", "out", dry_run=True, cache="off")
    assert plan.send == 3 and plan.duplicates == 3


def test_polars_frames_come_back_as_polars(make_session) -> None:
    import polars as pl

    with FakeOpenAIServer(latency=(0.0, 0.02)) as server:
        session = make_session(server)
        df = pl.DataFrame({"text": [f"item {i}" for i in range(20)], "n": list(range(20))})
        out = session.map(df, "{text} #{n}", "out")
        assert isinstance(out, pl.DataFrame) and "out" not in df.columns
        assert out.get_column("out").to_list() == [f"Echo: item {i} #{i}" for i in range(20)]


# ----- bad input: refused before anything is sent ----------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Classify {txt}", "{txt} is not a column of the DataFrame (did you mean {text}?)"),
        ("{a} and {b}", "{a}, {b} are not columns"),
        ("   ", "The template is empty"),
        ("No placeholder here", "no {column} placeholder"),
    ],
)
def test_bad_templates_name_the_columns(
    session: ChatSession, fake: FakeOpenAIServer, template: str, expected: str
) -> None:
    with pytest.raises(TemplateError) as info:
        session.map(frame(3, stars=[1, 2, 3]), template, "out")
    assert expected in str(info.value)
    if "column" in expected and "placeholder" not in expected:
        assert "Its columns: text, stars" in str(info.value)
    assert fake.chat_requests == []


def test_templates_are_brace_safe() -> None:
    t = compile_template(
        'JSON like {"a": 1}, {{text}}, `{code}`, x^{n} and {review text}: {text}',
        ["text", "review text"],
    )
    assert t.columns == ("review text", "text")
    assert t.render(["R", "T"]) == 'JSON like {"a": 1}, {text}, `{code}`, x^{n} and R: T'


def test_a_non_dataframe_is_refused(session: ChatSession, fake: FakeOpenAIServer) -> None:
    with pytest.raises(TemplateError, match="is a list, not a DataFrame"):
        session.map(["a", "b"], "{text}", "out")
    with pytest.raises(ConfigError, match="need --json"):
        session.map(frame(2), "{text}", ["a", "b"])
    assert fake.chat_requests == []


def test_nulls_are_skipped_and_reported_or_filled(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    df = pd.DataFrame({"text": ["a", None, "c", float("nan")], "k": [1, 2, None, 4]})
    plan = session.map(df, "{text} {k}", "out", dry_run=True)
    assert plan.skipped == 3 and plan.send == 1
    assert "3 skipped (null in text, k; --fill-null TEXT sends them)" in plan.line()
    out = session.map(df, "{text} {k}", "out")
    assert out["out"][0] == "Echo: a 1.0" and pd.isna(out["out"][1])
    assert out["_error"][1].startswith("skipped: null in text")
    filled = session.map(df, "{text} {k}", "out", fill_null="?")
    assert filled["out"].tolist()[1:] == ["Echo: ? 2.0", "Echo: c ?", "Echo: ? 4.0"]


# ----- cost ------------------------------------------------------------------------------


def test_the_plan_counts_tokens_cache_and_cost(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    df = frame(10)
    session.map(df.head(4), "Say {text}", "out", max_tokens=5)
    plan = session.map(df, "Say {text}", "out", max_tokens=5, dry_run=True)
    assert isinstance(plan, MapPlan)
    assert (plan.rows, plan.cached, plan.send) == (10, 4, 6)
    assert plan.completion_tokens == 30 and plan.prompt_tokens > 6 * 3
    assert plan.cost_low is not None and plan.cost_high is not None and plan.cost_batch
    assert plan.cost_low < plan.cost_high
    line = plan.line()
    assert line.startswith("10 rows · 4 cached · 6 to send · ") and "(batch: $" in line
    assert "up to 30 reply tokens · " in line
    assert len(fake.chat_requests) == 4  # the dry run sent nothing


def test_budget_and_max_cost_refuse_before_any_request(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    with pytest.raises(BudgetExceeded, match="over --max-cost"):
        session.map(frame(50), "Say {text}", "out", max_cost=0.000001)
    session.usage.budget = 0.000001
    with pytest.raises(BudgetExceeded, match="Budget"):
        session.map(frame(50), "Say {text}", "out")
    assert fake.chat_requests == []


def test_a_json_reply_cut_at_the_map_default_is_not_asked_again(make_session) -> None:
    # Asked again, it would be cut at the same place: the row says why instead.
    long = '{"label": "' + " ".join(f"w{i}" for i in range(300)) + '"}'
    with FakeOpenAIServer(reply=long) as server:
        session = make_session(server)
        out = session.map(frame(2), "Label {text}", ["label"], json=True)
        assert len(server.chat_requests) == 2  # no re-ask
        assert {r.body["max_tokens"] for r in server.chat_requests} == {MAP_MAX_TOKENS}
        assert out["label"].isna().all()
        for error in out["_error"]:
            assert error.startswith("The reply is not a JSON object (")
            assert (
                f"cut: the reply reached the map's default cap of {MAP_MAX_TOKENS} tokens" in error
            )
        # Several -o columns with --json: the default cap is per column.
        session.map(frame(1), "Two {text}", ["a", "b"], json=True)
        assert server.chat_requests[-1].body["max_tokens"] == 2 * MAP_MAX_TOKENS


# ----- resume, faults, limits ------------------------------------------------------------


def test_an_interrupted_map_resumes_with_only_the_missing_rows(make_session) -> None:
    with FakeOpenAIServer(latency=0.05) as server:
        session = make_session(server)
        df = frame(60)

        def stop(progress: chatmap.MapProgress) -> None:
            if progress.done >= 10:
                raise KeyboardInterrupt

        with pytest.raises(MapInterrupted) as info:
            chatmap.run(session, df, "{text}", "out", concurrency=4, progress=stop)
        result = info.value.result
        done = result.frame["out"].notna().sum()
        assert 10 <= done < 60
        assert str(info.value).startswith(f"Interrupted: {done} of 60 rows written;")
        assert "re-run the cell to finish (finished rows are cached)" in str(info.value)
        written = set(df["text"][result.frame["out"].notna()])
        first = len(server.chat_requests)
        assert first - done <= 4  # the rest were in flight and cancelled
        assert Counter(row.outcome for row in session.usage)["interrupted"] == first - done
        server.reset_log()
        again = chatmap.run(session, df, "{text}", "out")
        assert again.summary.cached == done and again.summary.sent == 60 - done
        assert again.frame["out"].tolist() == [f"Echo: item {i}" for i in range(60)]
        resent = [user_text(r.body) for r in server.chat_requests]
        assert len(resent) == 60 - done and not written & set(resent)


def test_injected_faults_end_with_every_row_done_or_recorded(make_session) -> None:
    faults = [
        Fault.status(429, headers={"retry-after-ms": "20"}),
        Fault.status(500),
        Fault.status(503),
        "reset",
        "malformed_json",
    ]
    with FakeOpenAIServer(fault_rate=0.1, faults=faults, latency=(0.0, 0.02), seed=11) as server:
        session = make_session(server)
        n = 300
        out = session.map(frame(n), "{text}", "out", retries=2)
        answered = out["out"].notna()
        errors = out["_error"].notna() if "_error" in out else pd.Series(False, index=out.index)
        assert (answered ^ errors).all()  # each row: a reply or an error, never both/none
        assert answered.sum() >= n * 0.95
        good = Counter(
            user_text(r.body) for r in server.chat_requests if r.status == 200 and r.fault is None
        )
        assert max(good.values()) == 1 and len(good) == answered.sum()
        assert server.stats().faults > 20


def test_a_429_pauses_everyone_and_the_row_goes_first(make_session) -> None:
    with FakeOpenAIServer(latency=0.01) as server:
        session = make_session(server)
        server.script(Fault.status(429, headers={"retry-after-ms": "300"}))
        result = chatmap.run(session, frame(6), "{text}", "out", concurrency=1)
        times = [r.time for r in server.chat_requests]
        assert times[1] - times[0] >= 0.29  # nothing sent during the pause
        assert [user_text(r.body) for r in server.chat_requests][:2] == ["item 0", "item 0"]
        assert result.summary.rate_limited == 1 and result.summary.failed == 0


@pytest.mark.parametrize(
    ("code", "headers", "low", "high"),
    [
        # Shorter than the backoff's first step (0.375-0.5 s): obeyed, not the backoff.
        (503, {"retry-after-ms": "100"}, 0.09, 0.35),
        (408, {"retry-after": "1.2"}, 1.19, 3.0),  # longer than it: waited in full
    ],
)
def test_a_row_retry_waits_what_the_server_asked(make_session, code, headers, low, high) -> None:
    with FakeOpenAIServer(latency=0.01) as server:
        session = make_session(server)
        server.script(Fault.status(code, headers=headers))
        result = chatmap.run(session, frame(1), "{text}", "out", concurrency=1, retries=2)
        times = [r.time for r in server.chat_requests]
        assert len(times) == 2 and low <= times[1] - times[0] < high
        assert result.summary.failed == 0 and result.frame["out"].tolist() == ["Echo: item 0"]


def test_a_row_retry_demanded_past_the_cap_fails_the_row(make_session) -> None:
    with FakeOpenAIServer(latency=0.01) as server:
        session = make_session(server)
        server.script(Fault.status(503, headers={"retry-after": "3600"}))
        result = chatmap.run(session, frame(2), "{text}", "out", concurrency=1, retries=2)
        assert len(server.chat_requests) == 2  # not retried; the other row goes on
        assert result.summary.failed == 1 and "asked to wait 1 h" in result.frame["_error"][0]


# ----- pacing under rate limits (ipychat.map.ratelimit; the model's own tests: test_ratelimit) --
# 300 rows at 6,000 RPM (100 per second), against a server that enforces it over a window
# of 1, 10 or 60 s as OpenAI and Azure document, refusing (and charging) what goes past.
# Sending the rows as fast as the concurrency allows, as this module did before, had most
# of them refused in a 1 or 10 s window; paced, a few at most are (a window test's 429,
# a loaded machine's stall), and a 60 s window lets them all go at once once proven.


@pytest.mark.parametrize("window", [1, 10, 60])
def test_a_map_paces_under_limits_enforced_per_window(make_session, window: int) -> None:
    with FakeOpenAIServer(rpm=6000, window=window, latency=0.01) as server:
        session = make_session(server)
        result = chatmap.run(session, frame(300), "{text}", "out")
        summary = result.summary
        assert summary.failed == 0 and result.frame["out"].notna().all()
        assert summary.rate_limited <= 9  # 3% of the requests; unpaced: 2/3 of them
        assert server.stats().rate_limited == summary.rate_limited
        limiter = session_limiter(session.engine, "gpt-4o-mini")
        assert limiter is not None and limiter.requests.limit == 6000  # learnt from the headers


def test_a_map_without_headers_is_paced_by_the_limit_given(make_session) -> None:
    # vLLM, llama.cpp, gateways: no x-ratelimit-* header, a bare 429. --rpm tells the limit.
    with FakeOpenAIServer(
        rpm=6000, latency=0.01, ratelimit_headers=False, retry_after=False
    ) as server:
        session = make_session(server)
        result = chatmap.run(session, frame(200), "{text}", "out", rpm=6000)
        assert result.summary.failed == 0 and result.summary.rate_limited <= 6


def test_each_request_of_a_burst_starts_out_before_the_next_is_stamped(
    make_session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The head start sends the 1 s share at once. Stamped all at once and written after,
    # the last of a burst would arrive well after their stamps, and the pacing, which
    # counts the window from the stamps, would send into the server's window before the
    # burst had left it (refused at every refill).
    events: list[str] = []
    real_take = RateLimiter.take

    def take(self: RateLimiter, tokens: float, now: float) -> Any:
        events.append("stamp")
        return real_take(self, tokens, now)

    monkeypatch.setattr(RateLimiter, "take", take)
    with FakeOpenAIServer(latency=0.05) as server:
        session = make_session(server)
        real_request = session.engine.request

        async def request(*args: Any, **options: Any) -> Any:
            events.append("send")
            return await real_request(*args, **options)

        monkeypatch.setattr(session.engine, "request", request)
        result = chatmap.run(session, frame(40), "{text}", "out", rpm=6000)
    assert result.summary.failed == 0
    assert len(server.chat_requests) == 40
    assert events == ["stamp", "send"] * 40  # the 40 went at once (a share is 100)


def test_a_bug_while_sending_stops_the_map_and_says_so_never_a_silent_empty_row(
    make_session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the row's task died with the exception, the row had neither an answer nor an
    # _error, and the map returned as if all was well.
    with FakeOpenAIServer(latency=0.01) as server:
        session = make_session(server)
        real_request = session.engine.request
        calls: list[int] = []

        async def request(*args: Any, **options: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                raise AttributeError("'NoneType' object has no attribute 'x'")
            return await real_request(*args, **options)

        monkeypatch.setattr(session.engine, "request", request)
        with pytest.raises(MapAborted) as caught:
            chatmap.run(session, frame(6), "{text}", "out", concurrency=1)
    message = str(caught.value)
    assert "(AttributeError): this is a bug in ipychat" in message and "\n" not in message
    assert "NoneType" not in message  # its text may quote a request: only its type is said
    assert isinstance(caught.value.cause.__cause__, AttributeError)
    out = caught.value.result.frame["out"].tolist()
    assert out[:2] == ["Echo: item 0", "Echo: item 1"] and "Stopped after 2 of 6" in message


def test_a_429_never_fails_a_row(make_session) -> None:
    # Told to slow down 30 times in a row, the row waits its turn each time.
    with FakeOpenAIServer(latency=0.001) as server:
        session = make_session(server)
        server.script(*[Fault.status(429, headers={"retry-after-ms": "1"})] * 30)
        result = chatmap.run(session, frame(2), "{text}", "out", concurrency=1)
        assert result.summary.failed == 0 and result.summary.rate_limited == 30
        assert result.frame["out"].tolist() == ["Echo: item 0", "Echo: item 1"]


def test_an_outage_longer_than_the_limit_stops_the_map(make_session, monkeypatch) -> None:
    from ipychat.map import dispatch

    monkeypatch.setattr(dispatch, "MAX_OUTAGE", 1.0)  # the setting, 10 min by default
    limited = Fault.status(429, headers={"retry-after-ms": "50"})
    with FakeOpenAIServer(latency=0.001, faults=[limited], fault_rate=1.0) as server:
        session = make_session(server)
        with pytest.raises(MapAborted) as info:
            chatmap.run(session, frame(3), "{text}", "out", concurrency=1)
        message = str(info.value)
        assert message.startswith("No request was answered for 1 s (the outage limit, ")
        assert "ipychat.map.dispatch.MAX_OUTAGE" in message and "HTTP 429" in message
        assert "Stopped after 0 of 3 rows" in message
        assert info.value.result.summary.failed == 0  # left to a re-run, not failed
        assert 10 <= len(server.chat_requests) <= 40


def test_an_exhausted_quota_stops_the_map_at_once(make_session) -> None:
    # OpenAI's insufficient_quota is a 429 too, but about billing: waiting cannot help.
    body = {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing "
            "details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    with FakeOpenAIServer(latency=0.001) as server:
        session = make_session(server)
        server.script(Fault.status(429, body=body))
        with pytest.raises(MapAborted, match="exceeded your current quota"):
            chatmap.run(session, frame(5), "{text}", "out", concurrency=1)
        assert len(server.chat_requests) == 1


@pytest.fixture
def shell(ip: Any) -> Iterator[Any]:
    """The test shell with %%chatmap registered (magics.load does it in the product)."""
    from ipychat.notebook.mapmagic import ChatMapMagics

    if "chatmap" not in ip.magics_manager.magics["cell"]:
        ip.register_magics(ChatMapMagics)
    yield ip


def chatmap_cell(shell: Any, line: str, cell: str) -> str:
    from IPython.utils.capture import capture_output

    with capture_output() as out:
        shell.run_cell_magic("chatmap", line, cell)
    return out.stdout


def test_a_maps_limits_do_not_stick_to_the_next_map(shell: Any, fake: FakeOpenAIServer) -> None:
    # --tpm 20 is below what one row needs: those rows fail, saying so. The next map gives
    # no --tpm: the server's own limits apply, not the last map's.
    shell.user_ns["df"] = frame(3)
    chatmap_cell(shell, "df -o a --tpm 20", "{text}")
    errors = shell.user_ns["df"]["_error"].tolist()
    assert all("more than the whole limit of 20 tokens per minute" in e for e in errors)
    assert fake.chat_requests == []
    shown = chatmap_cell(shell, "df -o b --no-cache", "{text}")
    assert "(3 sent, 0 cached, 0 failed)" in shown
    assert shell.user_ns["df"]["b"].tolist() == ["Echo: item 0", "Echo: item 1", "Echo: item 2"]
    assert len(fake.chat_requests) == 3


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--rpm inf", "rpm must be a positive number of requests per minute, not inf"),
        ("--tpm inf", "tpm must be a positive number of tokens per minute, not inf"),
        ("--rpm nan", "rpm must be a positive number of requests per minute, not nan"),
        ("--rpm 0", "rpm must be a positive number of requests per minute, not 0.0"),
    ],
)
def test_a_limit_that_is_no_number_is_a_one_line_error(
    shell: Any, fake: FakeOpenAIServer, option: str, message: str
) -> None:
    from IPython.core.error import UsageError

    shell.user_ns["df"] = frame(2)
    with pytest.raises(UsageError) as info:
        chatmap_cell(shell, f"df -o x {option}", "{text}")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert "leave it out to use the server's own" in str(info.value)
    assert fake.chat_requests == []


def test_a_wrong_key_stops_the_map_at_once(make_session) -> None:
    with FakeOpenAIServer(require_key="sk-right") as server:
        session = make_session(server)
        with pytest.raises(MapAborted, match="refused the API key") as info:
            session.map(frame(200), "{text}", "out")
        assert len(server.chat_requests) <= chatmap.SLOW_START
        assert "re-run to finish" in str(info.value)
        # The client's sentence ends before the map's begins ("…%chat key Stopped" ran on).
        assert "check OPENAI_API_KEY or run %chat key. Stopped after 0 of 200 rows;" in str(
            info.value
        )


def test_the_local_model_gets_one_request_at_a_time(make_session, monkeypatch) -> None:
    with FakeOpenAIServer(latency=0.01) as server:
        session = make_session(server)
        monkeypatch.setattr(Engine, "is_local", property(lambda self: True))
        out = session.map(frame(12), "{text}", "out")
        assert out["out"].notna().all() and server.stats().max_in_flight == 1


def test_amap_for_code_that_awaits(session: ChatSession, fake: FakeOpenAIServer) -> None:
    async def main() -> Any:
        return await session.amap(frame(5), "{text}", "out")

    out = asyncio.run(main())
    assert out["out"].tolist() == [f"Echo: item {i}" for i in range(5)]


def test_cached_rows_are_free_and_in_the_ledger(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    session.map(frame(8), "{text}", "out")
    spent = session.usage.spent
    result = chatmap.run(session, frame(8), "{text}", "out")
    assert result.summary.cached == 8 and result.summary.sent == 0
    assert len(fake.chat_requests) == 8 and session.usage.spent == spent
    assert sum(row.cached for row in session.usage) == 8
    assert session.usage.saved > 0


def test_limit_maps_the_first_rows_and_keeps_the_rest(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    df = frame(6, out=["old"] * 6)
    out = session.map(df, "{text}", "out", limit=2)
    assert out["out"].tolist() == ["Echo: item 0", "Echo: item 1", "old", "old", "old", "old"]
    assert len(fake.chat_requests) == 2


def test_offline_serves_cached_rows_and_records_the_rest(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    session.map(frame(2), "{text}", "out")
    session.configure(offline=True)
    out = session.map(frame(4), "{text}", "out")
    assert out["out"].tolist()[:2] == ["Echo: item 0", "Echo: item 1"]
    assert out["_error"][2].startswith("Offline mode") and pd.isna(out["out"][3])
    assert len(fake.chat_requests) == 2


def test_every_answered_row_is_cached_when_the_map_ends(make_session) -> None:
    # Replies are cached in batches while requests are still in flight: none may be lost.
    with FakeOpenAIServer(latency=(0.01, 0.1)) as server:
        s = make_session(server)
        s.map(frame(300), "Echo {text}", "out", concurrency=32)
        assert s.cache is not None and s.cache.stats().entries == 300
        sent = len(server.chat_requests)
        s.map(frame(300), "Echo {text}", "again", concurrency=32)
        assert len(server.chat_requests) == sent  # the re-run is served from the cache
