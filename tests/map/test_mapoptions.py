"""MapOptions (ipychat.map.options): a map's options, checked once, frozen; and the entry
points that build one (`ChatSession.map`, `ipychat.map.batch`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import pytest

from ipychat.core.errors import ConfigError
from ipychat.map import batch
from ipychat.map.batch import BatchOptions
from ipychat.map.options import MapOptions
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer


def test_defaults_and_normalised_values() -> None:
    options = MapOptions.of("reply")
    assert options.outputs == ("reply",) and options.cache == "use"
    assert options.error_column == "_error" and options.model is None and not options.json
    assert MapOptions.of(["a", "b"], json=True).outputs == ("a", "b")  # a list: a tuple
    assert MapOptions.of("x", cache=True).cache == "use"
    assert MapOptions.of("x", cache=False).cache == "off"
    assert MapOptions.of("x", cache="refresh").cache == "refresh"


def test_frozen_and_round_trips_through_its_keyword_arguments() -> None:
    options = MapOptions.of("out", model="m", limit=3, fill_null="-", allow_secrets=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.limit = 5  # type: ignore[misc]
    assert MapOptions.of(options.outputs, **options.as_dict()) == options
    assert "outputs" not in options.as_dict() and options.as_dict()["limit"] == 3


@pytest.mark.parametrize(
    ("output", "options", "message"),
    [
        ("x", {"cache": "sometimes"}, "cache must be 'use', 'refresh' or 'off', not 'sometimes'."),
        ("x", {"concurrency": 0}, "concurrency must be a positive whole number, not 0."),
        ("x", {"max_tokens": 2.5}, "max_tokens must be a positive whole number, not 2.5."),
        ("x", {"rpm": float("inf")}, "rpm must be a positive number of requests per minute"),
        ("x", {"retries": 21}, "retries must be a whole number from 0 to 20, not 21."),
        ("x", {"limit": -1}, "limit must be a whole number ≥ 0, not -1."),
        ("x", {"max_cost": -0.5}, "max cost must be a number of dollars ≥ 0, not -0.5."),
        ("x", {"temperature": 3}, "temperature must be between 0 and 2, not 3."),
        ("", {}, "Name the output column: -o COLUMN"),
        (["a", "a"], {"json": True}, "An output column is named twice: a, a."),
        (["a", "b"], {}, "Several output columns need --json"),
        ("_error", {}, "'_error' is where row errors go: pick another -o name."),
        ("why", {"error_column": "why"}, "'why' is where row errors go"),
    ],
)
def test_each_bad_option_is_refused_in_one_line(
    output: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        MapOptions.of(output, **options)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_each_bound_is_where_the_messages_say() -> None:
    from ipychat.map.dispatch import MAX_CONCURRENCY

    most = MAX_CONCURRENCY * 4
    fine: list[dict[str, Any]] = [
        {"concurrency": 1, "max_tokens": 1},
        {"concurrency": most},
        {"rpm": 0.5, "tpm": 0.5},  # below one a minute is still a limit
        {"retries": 0},
        {"retries": 20},
        {"limit": 0},
        {"max_cost": 0},
        {"max_cost": 0.5},
        {"temperature": 0},
        {"temperature": 0.5},
        {"temperature": 2},
    ]
    for options in fine:
        assert MapOptions.of("x", **options)
    refused: list[tuple[dict[str, Any], str]] = [
        (
            {"concurrency": most + 1},
            f"concurrency {most + 1} is more than any server will welcome.",
        ),
        (
            {"rpm": 0},
            "rpm must be a positive number of requests per minute, not 0: give the limit "
            "(e.g. --rpm 500), or leave it out to use the server's own.",
        ),
        (
            {"tpm": 0},
            "tpm must be a positive number of tokens per minute, not 0: give the limit "
            "(e.g. --tpm 200000), or leave it out to use the server's own.",
        ),
        ({"retries": 2.0}, "retries must be a whole number from 0 to 20, not 2.0."),
        ({"retries": -1}, "retries must be a whole number from 0 to 20, not -1."),
        ({"limit": 1.5}, "limit must be a whole number ≥ 0, not 1.5."),
        ({"temperature": -0.1}, "temperature must be between 0 and 2, not -0.1."),
        ({"temperature": 2.1}, "temperature must be between 0 and 2, not 2.1."),
    ]
    for options, message in refused:
        with pytest.raises(ConfigError) as info:
            MapOptions.of("x", **options)
        assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        MapOptions.of(["a", "b"])
    assert str(info.value) == (
        "Several output columns need --json: the reply is then a JSON object whose keys fill them."
    )
    assert MapOptions.of().outputs == ("col",)


def test_built_directly_it_is_checked_the_same() -> None:
    with pytest.raises(ConfigError, match="retries must be"):
        MapOptions(outputs=("x",), retries=-1)
    assert MapOptions(outputs="x").outputs == ("x",)  # type: ignore[arg-type]


def test_an_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(
        TypeError, match=r"^map\(\) got an unexpected keyword argument 'concurency'$"
    ):
        MapOptions.of("x", concurency=4)
    with pytest.raises(TypeError, match="'outputs'"):  # the column is the `output` argument
        MapOptions.of("x", outputs=("y",))


def test_batch_options_are_checked_once() -> None:
    assert BatchOptions() == BatchOptions(None, batch.MAX_REQUESTS, batch.MAX_BYTES)
    for bad in ({"poll_interval": 0}, {"max_requests": 0}, {"max_bytes": -1}):
        with pytest.raises(ConfigError):
            BatchOptions(**bad)


@pytest.fixture
def session(tmp_path) -> Any:
    with FakeOpenAIServer() as server:
        s = ChatSession(
            Settings(base_url=server.base_url, api_key="sk-test-" + "k" * 20, model="gpt-4o-mini"),
            cache=False,
        )
        s.server = server  # type: ignore[attr-defined]
        yield s
        s.close()
    reset_session(None)


def test_the_session_api_refuses_before_sending(session: ChatSession) -> None:
    df = pd.DataFrame({"text": ["a", "b"]})
    with pytest.raises(TypeError, match="'bogus'"):
        session.map(df, "{text}", "out", bogus=1)
    with pytest.raises(ConfigError, match="retries must be"):
        session.map(df, "{text}", "out", retries=99)
    with pytest.raises(ConfigError, match="poll_interval must be a positive"):
        session.map(df, "{text}", "out", batch=True, poll_interval=-1)
    assert session.server.requests == []  # type: ignore[attr-defined]


def test_a_batch_dry_run_checks_the_batch_options_as_a_run_does(session: ChatSession) -> None:
    # Before MapOptions/BatchOptions the dry run never built the runner that checked them,
    # so `max_requests=0` was planned (one file per request) instead of refused.
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    with pytest.raises(ConfigError, match="max_requests and max_bytes must be positive"):
        session.map(df, "{text}", "out", batch=True, dry_run=True, max_requests=0)
    plan = session.map(df, "{text}", "out", batch=True, dry_run=True, max_requests=2)
    assert plan.files == 2 and plan.plan.send == 3
    # A dry run takes (and ignores) the callbacks a run takes.
    calls: list[Any] = []
    session.map(df, "{text}", "out", dry_run=True, progress=calls.append, on_plan=calls.append)
    assert calls == [] and session.server.requests == []  # type: ignore[attr-defined]
