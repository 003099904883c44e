"""The named providers' table (`ipychat.core.providers`): names, URLs, keys, quirks."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from ipychat.core import providers
from ipychat.core.errors import ConfigError, NoAPIKeyError
from ipychat.core.pricing import default_table
from ipychat.core.settings import Settings

NAMES = ["anthropic", "gemini", "mistral", "groq", "openrouter", "together", "azure",
         "ollama", "vllm", "lmstudio"]  # fmt: skip
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def test_the_table_names_the_ten_providers_each_with_its_docs() -> None:
    assert providers.names() == NAMES
    for spec in providers.PROVIDERS.values():
        assert spec.docs.startswith("https://"), spec.name
        if spec.local:  # a server on this machine: no key, no price section
            assert spec.key_vars == () and spec.prices is None
            assert urlsplit(spec.url).hostname == "localhost"
        else:
            assert spec.key_vars and spec.prices, spec.name
            assert spec.name == "azure" or spec.url.startswith("https://")


def test_find_is_case_blind_and_knows_only_the_table() -> None:
    assert providers.find("Anthropic") is providers.PROVIDERS["anthropic"]
    assert providers.find(" groq ") is providers.PROVIDERS["groq"]
    for other in ("openai", "local", "claude", "", None, "https://api.groq.com/openai/v1"):
        assert providers.find(other) is None


def test_a_hosted_provider_is_found_by_its_url_and_no_other() -> None:
    assert providers.for_url("https://api.groq.com/openai/v1").name == "groq"  # type: ignore[union-attr]
    assert providers.for_url("https://API.MISTRAL.AI:443/v1").name == "mistral"  # type: ignore[union-attr]
    # Precision: another host, another scheme or port, OpenAI, or a local server's port.
    for url in ("https://api.openai.com/v1", "http://api.mistral.ai/v1",
                "https://api.mistral.ai:8443/v1", "https://api.mistral.ai.evil.example/v1",
                "http://localhost:11434/v1", "http://localhost:8000/v1", "not a url"):  # fmt: skip
        assert providers.for_url(url) is None, url


def test_azure_lives_where_azure_openai_endpoint_says(monkeypatch: pytest.MonkeyPatch) -> None:
    azure = providers.PROVIDERS["azure"]
    with pytest.raises(ConfigError, match="needs AZURE_OPENAI_ENDPOINT: set it to your resource"):
        providers.base_url(azure)
    assert providers.for_url("https://res.openai.azure.com/openai/v1") is None
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com/")
    assert providers.base_url(azure) == "https://res.openai.azure.com/openai/v1"
    assert providers.for_url("https://res.openai.azure.com/openai/v1") is azure
    assert providers.for_url("https://other.openai.azure.com/openai/v1") is None
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com/openai/v1")
    assert providers.base_url(azure) == "https://res.openai.azure.com/openai/v1"


def test_the_key_comes_from_the_providers_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    gemini = providers.PROVIDERS["gemini"]
    assert providers.key_for(gemini) is None and providers.key_var(gemini) is None
    monkeypatch.setenv("GOOGLE_API_KEY", "g-" + "1" * 12)
    assert providers.key_var(gemini) == "GOOGLE_API_KEY"
    monkeypatch.setenv("GEMINI_API_KEY", "  ge-" + "2" * 12 + " ")
    assert providers.key_var(gemini) == "GEMINI_API_KEY"  # the first one set wins
    key = providers.key_for(gemini)
    assert key is not None and key.reveal() == "ge-" + "2" * 12
    # Another provider's variable is never this one's key.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "a-" + "3" * 12)
    assert providers.key_for(providers.PROVIDERS["groq"]) is None
    error = providers.missing_key(gemini)
    assert isinstance(error, NoAPIKeyError)
    assert str(error) == (
        "No API key for gemini: set GEMINI_API_KEY or GOOGLE_API_KEY "
        "(or run %chat key to paste one)."
    )


def test_anthropic_body_drops_what_it_ignores_and_caps_temperature() -> None:
    body = {**BODY, "temperature": 1.7, "seed": 7, "response_format": {"type": "json_object"},
            "stop": ["x"]}  # fmt: skip
    adapted = providers.adapt_body(providers.PROVIDERS["anthropic"], body)
    assert adapted == {**BODY, "temperature": 1.0, "stop": ["x"]}
    assert list(adapted) == ["model", "messages", "max_tokens", "temperature", "stop"]
    assert body["seed"] == 7  # the caller's body is not changed
    # Within its range, a temperature is sent as asked.
    assert (
        providers.adapt_body(providers.PROVIDERS["anthropic"], {**BODY, "temperature": 0.3})[
            "temperature"
        ]
        == 0.3
    )


def test_mistral_body_uses_mistrals_names() -> None:
    body = {**BODY, "seed": 3, "max_completion_tokens": 9}
    adapted = providers.adapt_body(providers.PROVIDERS["mistral"], body)
    # max_tokens was set first and stays; seed is Mistral's random_seed.
    assert adapted == {**BODY, "random_seed": 3}
    assert providers.adapt_body(providers.PROVIDERS["mistral"], {"max_completion_tokens": 9}) == {
        "max_tokens": 9
    }


def test_groq_refuses_before_sending_what_it_answers_with_a_400() -> None:
    with pytest.raises(ConfigError, match=r"^groq refuses logprobs .* leave it out\. Nothing"):
        providers.adapt_body(providers.PROVIDERS["groq"], {**BODY, "logprobs": True})
    assert providers.adapt_body(providers.PROVIDERS["groq"], {**BODY, "seed": 1}) == {
        **BODY,
        "seed": 1,
    }


def test_lmstudio_leaves_out_only_the_response_format_it_refuses() -> None:
    lmstudio = providers.PROVIDERS["lmstudio"]
    asked = {**BODY, "response_format": {"type": "json_object"}}
    assert providers.adapt_body(lmstudio, asked) == BODY
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert providers.adapt_body(lmstudio, {**BODY, "response_format": schema}) == {
        **BODY,
        "response_format": schema,
    }


@pytest.mark.parametrize("name", [None, *NAMES])
def test_a_plain_body_passes_unchanged_everywhere(name: str | None) -> None:
    # Precision: a body with nothing a provider treats differently is sent as it is.
    body = {**BODY, "temperature": 0.5}
    assert providers.adapt_body(providers.find(name), body) == body


def test_stream_usage_and_tokenizer_flags() -> None:
    assert providers.stream_usage(None) and providers.stream_usage(providers.find("groq"))
    assert not providers.stream_usage(providers.find("mistral"))
    assert not providers.approximate_tokens(None)
    assert not providers.approximate_tokens(providers.find("azure"))  # OpenAI's models
    assert providers.approximate_tokens(providers.find("anthropic"))


def test_settings_take_a_name_and_say_the_names_for_a_typo() -> None:
    Settings(base_url="anthropic").validate()
    Settings(base_url="Groq").validate()
    with pytest.raises(ConfigError) as info:
        Settings(base_url="antropic").validate()
    message = str(info.value)
    assert message.startswith("'antropic' is not an endpoint URL or a named endpoint: use local")
    assert all(name in message for name in NAMES)
    with pytest.raises(ConfigError, match="not an endpoint URL"):
        Settings(base_url="ftp://example.com/v1").validate()


def test_every_hosted_provider_is_priced_and_its_default_model_too() -> None:
    # The price file (tools/update_prices.py, from genai-prices) has a section per provider
    # the table names, and each provider's default model is listed there: a user's first
    # `%chat endpoint NAME` and `%%chat` shows a price, not "unknown".
    table = default_table()
    for spec in providers.PROVIDERS.values():
        if spec.local:
            continue
        assert spec.prices in table.providers(), spec.name
        if spec.model is not None:
            price = table.lookup(spec.model, provider=spec.prices)
            assert price is not None and price.input > 0, spec.name


# ----- pins of the mutation run (issue 22) ---------------------------------------------------


def test_azure_without_its_endpoint_says_what_to_set_word_for_word() -> None:
    with pytest.raises(ConfigError) as info:
        providers.base_url(providers.PROVIDERS["azure"])
    assert str(info.value) == (
        "%chat endpoint azure needs AZURE_OPENAI_ENDPOINT: set it to your resource's URL, "
        "e.g. https://RESOURCE.openai.azure.com (and AZURE_OPENAI_API_KEY)."
    )


def test_only_slashes_and_spaces_are_trimmed_from_the_azure_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    azure = providers.PROVIDERS["azure"]
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", " https://gateway.example.com/AOAIX// ")
    assert providers.base_url(azure) == "https://gateway.example.com/AOAIX/openai/v1"
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "   ")
    with pytest.raises(ConfigError, match="needs AZURE_OPENAI_ENDPOINT"):
        providers.base_url(azure)
    assert providers.for_url("https://api.groq.com/openai/v1") is providers.PROVIDERS["groq"]


def test_for_url_reads_the_table_in_use_in_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The origins are worked out once per table: a table swapped in (a test's, a future
    one) is read afresh, local servers anywhere in it are skipped, Azure without its
    endpoint too, and the first provider of an origin wins."""
    assert providers.for_url("https://api.example.com/v1") is None  # the shipped table, cached
    first = providers.Provider("first", "https://api.example.com/v1", "https://x")
    table = {
        p.name: p
        for p in (
            providers.Provider("box", "http://localhost:9/v1", "https://x", local=True),
            providers.PROVIDERS["azure"],
            first,
            providers.Provider("second", "https://api.example.com/v2", "https://x"),
            providers.Provider("other", "https://other.example.com/v1", "https://x"),
        )
    }
    monkeypatch.setattr(providers, "PROVIDERS", table)
    assert providers.for_url("https://api.example.com/v1") is first
    assert providers.for_url("https://other.example.com/v1") is table["other"]
    assert providers.for_url("http://localhost:9/v1") is None
    assert providers.for_url("https://api.groq.com/openai/v1") is None  # not in this table


def test_a_temperature_at_the_cap_is_sent_as_written() -> None:
    # 1 stays the int 1 (not the cap's 1.0): the body, so its cache key, is unchanged.
    adapted = providers.adapt_body(providers.PROVIDERS["anthropic"], {**BODY, "temperature": 1})
    assert type(adapted["temperature"]) is int and adapted == {**BODY, "temperature": 1}
    capped = providers.adapt_body(providers.PROVIDERS["anthropic"], {**BODY, "temperature": 2})
    assert type(capped["temperature"]) is float and capped["temperature"] == 1.0
