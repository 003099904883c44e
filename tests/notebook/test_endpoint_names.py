"""`%chat endpoint NAME` through a real InteractiveShell: named providers, listed, shown,
refused when misspelt, and a chat through one (its URL pointed at the loopback flavour)."""

from __future__ import annotations

import dataclasses
import re
from types import MappingProxyType

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.core import providers
from ipychat.session import get_session
from ipychat.testing import FakeOpenAIServer


def line(ip, text: str) -> str:
    with capture_output() as out:
        ip.run_line_magic("chat", text)
    parts = [out.stdout] + [str(v) for o in out.outputs for v in o.data.values()]
    return "\n".join(parts)


def test_endpoint_alone_lists_the_names(ip) -> None:
    shown = line(ip, "endpoint")
    assert "endpoint: http://127.0.0.1:" in shown
    assert "named endpoints: " + ", ".join(providers.names()) + ", local" in shown


def test_endpoint_help_names_every_provider(ip) -> None:
    shown = line(ip, "endpoint --help")
    assert "endpoint [URL|local|NAME] [--send-key]" in shown
    assert all(name in shown for name in providers.names())
    assert "%chat endpoint anthropic" in shown


def test_a_name_sets_the_provider_and_says_what_its_key_is(
    ip, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = line(ip, "endpoint Anthropic")
    session = get_session()
    assert session.settings.base_url == "anthropic"
    assert session.endpoint().url == "https://api.anthropic.com/v1"
    assert "endpoint: anthropic (https://api.anthropic.com/v1)" in shown
    assert "no key: set ANTHROPIC_API_KEY, or run %chat key" in shown
    assert "token counts ≈" in shown
    monkeypatch.setenv("GEMINI_API_KEY", "g-" + "5" * 16)
    shown = line(ip, "endpoint gemini")
    assert "key from GEMINI_API_KEY" in shown and "g-555" not in shown
    shown = line(ip, "endpoint ollama")
    assert "no key needed" in shown and "token counts ≈" in shown
    assert "no key" not in line(ip, "endpoint http://127.0.0.1:9/v1").replace("no key needed", "")


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("endpoint antropic", "not an endpoint URL or a named endpoint: use local, anthropic"),
        ("endpoint groq --send-key", "a named endpoint reads its own key variable"),
        ("endpoint groq mistral", r"%chat endpoint URL\|local\|NAME"),
    ],
)
def test_bad_endpoint_words_are_one_line_and_change_nothing(ip, words: str, message: str) -> None:
    before = get_session().settings.base_url
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("chat", words)
    assert get_session().settings.base_url == before


def test_a_cell_through_a_named_provider(ip, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "groq-test-" + "w" * 16
    with FakeOpenAIServer(flavour="groq", require_key=key) as server:
        moved = dataclasses.replace(providers.PROVIDERS["groq"], url=server.base_url)
        monkeypatch.setattr(
            providers, "PROVIDERS", MappingProxyType({**providers.PROVIDERS, "groq": moved})
        )
        ip.run_line_magic("chat", "endpoint groq")
        with pytest.raises(UsageError, match="No API key for groq: set GROQ_API_KEY"):
            ip.run_cell_magic("chat", "", "hi")
        assert server.chat_requests == []  # nothing sent
        monkeypatch.setenv("GROQ_API_KEY", key)
        ip.run_line_magic("chat", "model llama-3.3-70b-versatile")
        with capture_output() as out:
            ip.run_cell_magic("chat", "--dry-run", "hello there")
            ip.run_cell_magic("chat", "", "hello there")
        shown = out.stdout + "".join(str(v) for o in out.outputs for v in o.data.values())
        assert "would send 1 message · ≈" in shown  # Groq's models: not OpenAI's tokenizer
        assert "Echo: hello there" in shown
        # Priced from Groq's table (the model is not OpenAI's: unknown at OpenAI's prices).
        assert re.search(r"llama-3\.3-70b-versatile · \d+ → \d+ tokens · \$0\.0\d+ ·", shown)
        assert server.chat_requests[-1].headers["authorization"] == f"Bearer {key}"


def test_azure_without_its_endpoint_says_what_to_set(ip, monkeypatch: pytest.MonkeyPatch) -> None:
    shown = line(ip, "endpoint azure")
    assert "endpoint: azure · not set up: set AZURE_OPENAI_ENDPOINT" in shown
    status = line(ip, "")
    assert "endpoint azure (not set up)" in status and "set AZURE_OPENAI_ENDPOINT" in status
    assert "api.openai.com" not in status
    with pytest.raises(UsageError, match="needs AZURE_OPENAI_ENDPOINT"):
        ip.run_cell_magic("chat", "", "hi")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    shown = line(ip, "endpoint")
    assert "endpoint: azure (https://res.openai.azure.com/openai/v1)" in shown
    assert "no key: set AZURE_OPENAI_API_KEY" in shown and "≈" not in shown
