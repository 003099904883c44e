"""`%%chatmap --choices ... --scores`, through a real InteractiveShell (with `%load_ext
ipychat`) against the loopback FakeOpenAIServer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.testing import FakeOpenAIServer

LABELS = "positive,negative,neutral"


@pytest.fixture
def shell(ip: Any) -> Iterator[Any]:
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["great pasta", "rude waiter"]})
    yield ip


def run(shell: Any, line: str) -> str:
    with capture_output() as out:
        shell.run_cell_magic("chatmap", line, "Review: {text}")
    return out.stdout + "".join(str(v) for o in out.outputs for v in o.data.values())


def test_scores_write_a_probability_column_per_label(shell: Any) -> None:
    def reply(body: dict[str, Any]) -> str:
        pasta = "pasta" in body["messages"][-1]["content"]
        return json.dumps({"label": "positive" if pasta else "negative"})

    table = {
        "positive": {"positive": 0.8, "neutral": 0.15, "negative": 0.05},
        "negative": {"negative": 0.6, "neutral": 0.4},
    }
    with FakeOpenAIServer(reply=reply, logprobs=table) as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        run(shell, f"reviews -o mood --choices {LABELS} --scores")
        sent = server.chat_requests[0].body
    out = shell.user_ns["reviews"]
    assert out["mood"].tolist() == ["positive", "negative"]
    assert out["mood_score_positive"].tolist() == pytest.approx([0.8, 0.0])
    assert out["mood_score_negative"].tolist() == pytest.approx([0.05, 0.6])
    assert out["mood_score_neutral"].tolist() == pytest.approx([0.15, 0.4])
    assert str(out["mood_score_neutral"].dtype) == "Float64"
    assert sent["logprobs"] is True and sent["top_logprobs"] == 20


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("reviews -o s --scores", "--scores gives each label's probability: it needs --choices"),
        ("reviews -o s --json --scores", "it needs --choices"),
    ],
)
def test_scores_without_choices_is_one_line(
    shell: Any, fake: FakeOpenAIServer, line: str, message: str
) -> None:
    with pytest.raises(UsageError) as info:
        run(shell, line)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert fake.chat_requests == []


def test_groq_refuses_scores_in_one_line_before_sending(
    shell: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk_" + "k" * 40)
    shell.run_line_magic("chat", "endpoint groq")
    with pytest.raises(UsageError) as info:
        run(shell, f"reviews -o s --choices {LABELS} --scores")
    message = str(info.value)
    assert "groq refuses logprobs" in message and "leave out --scores" in message
    assert "\n" not in message
