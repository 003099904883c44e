"""Every typed entry point checks its frame first: anything but a DataFrame is one line
(a ChatError), nothing sent, never an AttributeError from deep inside."""

from __future__ import annotations

from typing import Any

import pytest

from ipychat.core.errors import ChatError
from ipychat.map import job as chatmap
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer

LABELS = ["yes", "no"]

CALLS = {
    "filter": lambda s, df: s.filter(df, "Keep? {x}"),
    "filter with decision": lambda s, df: s.filter(df, "Keep? {x}", decision="keep"),
    "filter dry run": lambda s, df: s.filter(df, "Keep? {x}", dry_run=True),
    "map choices": lambda s, df: s.map(df, "{x}", "out", choices=LABELS),
    "map schema": lambda s, df: s.map(
        df, "{x}", schema={"type": "object", "properties": {"a": {"type": "string"}}}
    ),
    "map choices dry run": lambda s, df: s.map(df, "{x}", "out", choices=LABELS, dry_run=True),
    "run_filter": lambda s, df: chatmap.run_filter(s, df, "Keep? {x}"),
}


@pytest.mark.parametrize("value", [3, [{"x": 1}], "x,y\n1,2", None])
@pytest.mark.parametrize("call", list(CALLS))
def test_not_a_dataframe_is_one_line_and_nothing_is_sent(
    session: ChatSession, fake: FakeOpenAIServer, call: str, value: Any
) -> None:
    with pytest.raises(ChatError) as caught:
        CALLS[call](session, value)
    message = str(caught.value)
    assert f"is a {type(value).__name__}, not a DataFrame" in message
    assert "pandas (or polars) DataFrame" in message and "\n" not in message
    assert fake.chat_requests == []
