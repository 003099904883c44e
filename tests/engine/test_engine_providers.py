"""Named providers in the engine: where requests go, which key goes with them, the body as
the provider takes it, its prices, and token counts shown as approximate (≈).

Nothing here sends a request: the engine is asked what it would do (endpoint, connection,
body, estimate); the contract tests (tests/session/test_provider_contract.py) send them."""

from __future__ import annotations

import asyncio

import pytest

from ipychat.core import format as fmt
from ipychat.core.errors import ConfigError, NoAPIKeyError
from ipychat.core.keys import Secret
from ipychat.core.settings import Settings
from ipychat.engine.engine import Engine
from ipychat.engine.prepare import RequestOptions

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def key(tag: str) -> str:
    return f"{tag}-" + "k" * 16  # built at run time: no key-shaped literal in the repo


def engine(endpoint: str, **settings: object) -> Engine:
    return Engine(Settings(base_url=endpoint, **settings), cache=False)  # type: ignore[arg-type]


def test_a_name_resolves_to_the_providers_documented_url() -> None:
    for name, url, model in [
        ("anthropic", "https://api.anthropic.com/v1", "claude-haiku-4-5"),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta/openai", "gemini-2.5-flash"),
        ("groq", "https://api.groq.com/openai/v1", "llama-3.3-70b-versatile"),
        ("ollama", "http://localhost:11434/v1", "llama3.2"),
    ]:
        e = engine(name)
        endpoint = e.endpoint()
        assert (endpoint.kind, endpoint.url, endpoint.provider) == ("provider", url, name)
        assert e.model == model  # the provider's default when no model is set
    assert engine("groq", model="qwen/qwen3-32b").model == "qwen/qwen3-32b"  # a set one wins
    assert engine("vllm").model == "gpt-4o-mini"  # no default of its own: ipychat's


def test_configure_endpoint_is_the_same_setting_and_is_checked() -> None:
    e = engine("https://api.openai.com/v1")
    e.configure(endpoint="Mistral")
    assert e.endpoint().provider == "mistral" and e.host == "api.mistral.ai"
    with pytest.raises(ConfigError, match="not an endpoint URL or a named endpoint"):
        e.configure(endpoint="mistrall", temperature=0.5)
    assert e.endpoint().provider == "mistral" and e.settings.temperature is None  # unchanged


def test_a_named_provider_reads_only_its_own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", key("anthropic"))
    monkeypatch.setenv("OPENAI_API_KEY", key("openai"))
    e = engine("anthropic")
    url, sent = e.router.connection(e.settings, e.endpoint())
    assert url == "https://api.anthropic.com/v1"
    assert sent is not None and sent.reveal() == key("anthropic")
    # Groq's key is GROQ_API_KEY: neither Anthropic's nor OpenAI's is sent there.
    g = engine("groq")
    with pytest.raises(NoAPIKeyError, match=r"^No API key for groq: set GROQ_API_KEY \(or run"):
        g.router.connection(g.settings, g.endpoint())


def test_a_provider_key_never_leaves_for_another_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", key("anthropic"))
    # Another endpoint: Anthropic's key stays home (and no error: that endpoint's own rules).
    for url in ("https://llm.example.com/v1", "http://127.0.0.1:9/v1"):
        e = engine(url)
        assert e.router.connection(e.settings, e.endpoint()) == (url, None)
    # Anthropic's URL given by hand is Anthropic's origin: its key goes there.
    e = engine("https://api.anthropic.com/v1")
    _, sent = e.router.connection(e.settings, e.endpoint())
    assert e.endpoint().kind == "custom" and sent is not None


def test_a_key_set_for_another_endpoint_is_not_sent_to_a_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", key("gemini"))
    e = engine("https://api.openai.com/v1")
    e.configure(api_key=key("pasted"))  # %chat key, for OpenAI
    e.configure(endpoint="gemini")
    _, sent = e.router.connection(e.settings, e.endpoint())
    assert sent is not None and sent.reveal() == key("gemini")
    assert "is not sent here" in e.key_note()
    # Pasted while at Gemini, it is Gemini's (and wins over the variable).
    e.configure(api_key=key("pasted2"))
    _, sent = e.router.connection(e.settings, e.endpoint())
    assert isinstance(sent, Secret) and sent.reveal() == key("pasted2")


def test_local_servers_need_no_key_and_cost_nothing() -> None:
    for name in ("ollama", "vllm", "lmstudio"):
        e = engine(name)
        assert e.router.connection(e.settings, e.endpoint())[1] is None
        price = e.price(e.model)
        assert price is not None and price.input == 0 and price.output == 0


def test_azure_without_its_endpoint_variable_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    e = engine("azure")
    assert e.endpoint().kind == "none"
    with pytest.raises(ConfigError, match="needs AZURE_OPENAI_ENDPOINT"):
        asyncio.run(e.client())
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", key("azure"))
    endpoint = e.endpoint()
    assert endpoint.url == "https://res.openai.azure.com/openai/v1"

    async def made() -> tuple[str, bool]:
        client = await e.client()
        try:
            return client.base_url, client.has_key
        finally:
            e.take_client()
            await client.aclose()

    assert asyncio.run(made()) == ("https://res.openai.azure.com/openai/v1", True)


def test_prices_come_from_the_providers_section() -> None:
    groq_model = "llama-3.3-70b-versatile"  # only hosts serve it: priced only by its host
    assert engine("https://api.openai.com/v1").price(groq_model) is None
    price = engine("groq").price(groq_model)
    assert price is not None and price.provider == "groq" and price.input > 0
    claude = engine("anthropic").price("claude-haiku-4-5")
    assert claude is not None and claude.provider == "anthropic"
    gemini = engine("gemini").price("gemini-2.5-flash")
    assert gemini is not None and gemini.provider == "gemini"
    together = engine("together").price("meta-llama/Llama-3.3-70B-Instruct-Turbo")
    assert together is not None and together.provider == "together"
    # An unknown model stays unknown at every provider: never $0.
    for name in ("anthropic", "groq", "together", "openrouter"):
        e = engine(name)
        assert e.price("no-such-model-xyz") is None
        estimate = e.estimate(MESSAGES, model="no-such-model-xyz")
        assert estimate.cost_high is None
        assert "cost unknown" in fmt.estimate_line(estimate)


def test_token_counts_are_approximate_where_the_tokenizer_is_not_openais(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gpt-4o-mini is counted exactly by tiktoken at OpenAI (and Azure, which serves it);
    # asked of Groq or Anthropic the name is the same but the counts are not OpenAI's.
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    exact = engine("https://api.openai.com/v1").estimate(MESSAGES, model="gpt-4o-mini")
    assert not exact.approximate and "≈" not in fmt.estimate_line(exact)
    assert not engine("azure").estimate(MESSAGES, model="gpt-4o-mini").approximate
    for name in ("anthropic", "groq", "ollama"):
        estimate = engine(name).estimate(MESSAGES, model="gpt-4o-mini")
        assert estimate.approximate, name
        assert f"≈{estimate.prompt_tokens:,} tokens" in fmt.estimate_line(estimate)
        assert "≈" in fmt.streaming_footer("m", estimate, 3)


def test_the_body_is_built_as_the_provider_takes_it() -> None:
    options = RequestOptions(temperature=1.8, extra={"seed": 5, "stop": ["\n"]})
    body = engine("anthropic").body(list(MESSAGES), options)
    assert body["temperature"] == 1.0 and "seed" not in body and body["stop"] == ["\n"]
    assert body["max_tokens"] == 1024  # always sent
    body = engine("mistral").body(list(MESSAGES), options)
    assert body["random_seed"] == 5 and "seed" not in body and body["temperature"] == 1.8
    # Precision: OpenAI's body is untouched.
    body = engine("https://api.openai.com/v1").body(list(MESSAGES), options)
    assert body["seed"] == 5 and body["temperature"] == 1.8
    with pytest.raises(ConfigError, match="groq refuses logprobs"):
        engine("groq").body(list(MESSAGES), RequestOptions(extra={"logprobs": True}))
