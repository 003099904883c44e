"""One contract per named provider: `configure(endpoint=NAME)` against the FakeOpenAIServer
flavour that reproduces that provider's documented differences (cited in
ipychat/testing/flavours.py and ipychat/core/providers.py).

The provider's base URL is pointed at the flavour's loopback URL for the test (a test-only
override of the table's row; Azure's comes from AZURE_OPENAI_ENDPOINT as it does for users):
nothing leaves this machine. Everything else is what a user gets: the provider's key
variable, its default model, its quirks, its prices. Each provider is checked for: a reply
and its usage, a stream and its usage, the provider's error body shown as one line, a 429
honoured (its retry-after read; retried once and answered), and a price shown, or "unknown"
for a model its price table does not list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import MappingProxyType

import pytest

from ipychat import errors
from ipychat.core import format as fmt
from ipychat.core import providers
from ipychat.engine.cache import ResponseCache
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer, Fault

NAMES = providers.names()
LOCAL = {name for name in NAMES if providers.PROVIDERS[name].local}


def key_of(name: str) -> str:
    return f"{name}-test-" + "q" * 16  # built at run time: no key-shaped literal in the repo


@pytest.fixture(params=NAMES)
def provider(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> Iterator[tuple[str, FakeOpenAIServer, ChatSession]]:
    """(name, the flavour's server, a session at `%chat endpoint NAME`)."""
    name: str = request.param
    spec = providers.PROVIDERS[name]
    # A cloud provider's fake demands the provider's own key: a request without it is a 401.
    require = None if spec.local else key_of(name)
    with FakeOpenAIServer(flavour=name, require_key=require) as server:
        if name == "azure":
            monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        else:
            moved = dataclasses.replace(spec, url=server.base_url)
            monkeypatch.setattr(
                providers, "PROVIDERS", MappingProxyType({**providers.PROVIDERS, name: moved})
            )
        if require:
            monkeypatch.setenv(spec.key_vars[-1], require)  # GOOGLE_API_KEY for Gemini too
        session = ChatSession(
            Settings(model=server.flavour.models[0], max_retries=0),
            cache=ResponseCache(tmp_path / "cache"),
        )
        try:
            session.configure(endpoint=name)
            yield name, server, session
        finally:
            session.close()


def test_ask_reads_the_reply_and_its_usage(
    provider: tuple[str, FakeOpenAIServer, ChatSession],
) -> None:
    name, server, session = provider
    reply = session.ask("hi")
    assert reply.text == "Echo: hi"
    assert reply.usage is not None and not reply.usage.estimated
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (8, 2)
    sent = server.chat_requests[-1]
    assert sent.path.startswith(server.base_url.removeprefix(server.url))
    assert sent.body["max_tokens"] == 1024  # always sent (Anthropic's native API needs it)
    footer = fmt.footer(reply)
    if name in LOCAL:
        assert reply.cost == 0 and "$0.00" in footer
    else:  # the flavour's first model is in the provider's price table
        assert reply.cost is not None and reply.cost > 0 and "$" in footer, footer


def test_stream_reads_the_deltas_and_the_usage(
    provider: tuple[str, FakeOpenAIServer, ChatSession],
) -> None:
    name, server, session = provider
    stream = session.stream("hi")
    assert "".join(stream) == "Echo: hi"
    reply = stream.reply
    assert reply is not None and reply.usage is not None
    sent = server.chat_requests[-1].body
    assert sent["stream"] is True
    # Mistral refuses stream_options (and sends usage unasked): never asked there.
    assert ("stream_options" in sent) is (name != "mistral")
    if name == "lmstudio":  # LM Studio sends no usage in streams: counted here, shown ≈
        assert reply.usage.estimated and "≈" in fmt.footer(reply)
    else:
        assert not reply.usage.estimated and reply.usage.completion_tokens == 2


def test_the_providers_error_is_one_line_with_its_message(
    provider: tuple[str, FakeOpenAIServer, ChatSession],
) -> None:
    _, server, session = provider
    server.script(Fault.status(400, message="The prompt is not acceptable here."))
    with pytest.raises(errors.BadRequestError) as info:
        session.ask("hi")
    message = str(info.value)
    assert "(HTTP 400): The prompt is not acceptable here;" in message
    assert "\n" not in message and "{" not in message  # the body's text, not its JSON
    assert key_of(server.flavour.name) not in message


def test_a_429_is_honoured(provider: tuple[str, FakeOpenAIServer, ChatSession]) -> None:
    name, server, session = provider
    # Without retries: a RateLimitError carrying the server's retry-after.
    server.script(Fault.status(429, headers={"retry-after": "7"}, message="Slow down."))
    with pytest.raises(errors.RateLimitError) as info:
        session.ask("first")
    assert info.value.retry_after == 7
    assert ("Rate limit exceeded" if name == "mistral" else "(HTTP 429): Slow down;") in str(
        info.value
    )
    # With one retry: the wait it asks for is taken, then the answer comes.
    session.configure(max_retries=1)
    server.reset_log()
    server.script(Fault.status(429, headers={"retry-after-ms": "20"}))
    reply = session.ask("second")
    assert reply.text == "Echo: second" and len(server.chat_requests) == 2


def test_a_model_the_price_table_lacks_is_unknown_never_free(
    provider: tuple[str, FakeOpenAIServer, ChatSession],
) -> None:
    name, _, session = provider
    if name in LOCAL:  # local servers cost nothing whatever they serve
        assert session.engine.price("whatever-model") is not None
        return
    reply = session.ask("hi", model="no-such-model-xyz")
    assert reply.cost is None and "unknown" in fmt.footer(reply)
    assert "cost unknown" in fmt.estimate_line(
        session.engine.estimate([{"role": "user", "content": "hi"}], model="no-such-model-xyz")
    )


@pytest.mark.parametrize("name", ["lmstudio", "anthropic"])
def test_a_json_map_works_where_json_object_is_refused_or_ignored(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    # LM Studio answers response_format json_object with a 400; Anthropic ignores it. The
    # map's rule in the system prompt asks for JSON; the field is not sent to either.
    import pandas as pd

    spec = providers.PROVIDERS[name]
    with FakeOpenAIServer(flavour=name, reply='{"label": "positive"}') as server:
        moved = dataclasses.replace(spec, url=server.base_url)
        monkeypatch.setattr(
            providers, "PROVIDERS", MappingProxyType({**providers.PROVIDERS, name: moved})
        )
        for var in spec.key_vars:
            monkeypatch.setenv(var, key_of(name))
        session = ChatSession(Settings(model=server.flavour.models[0]), cache=False)
        try:
            session.configure(endpoint=name)
            df = pd.DataFrame({"review": ["great", "lovely"]})
            out = session.map(df, "Classify: {review}", ["label"], json=True)
        finally:
            session.close()
        bodies = [r.body for r in server.chat_requests]
    assert list(out["label"]) == ["positive", "positive"]
    assert "_error" not in out or out["_error"].isna().all()  # the column only when a row failed
    assert bodies and all("response_format" not in b for b in bodies)
    assert all("Reply with only a JSON object" in b["messages"][0]["content"] for b in bodies)
