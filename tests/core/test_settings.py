"""ipychat.core.settings on its own: URLs and origins (what a key is scoped to), loopback
hosts, model names, every refusal of `Settings.validate` word for word, the environment
it reads, and the resolved `Endpoint`. Each pins behaviour a mutation of the module showed
unpinned (`python tools/mutation.py core.settings`)."""

from __future__ import annotations

from typing import Any

import pytest

from ipychat.core.errors import ConfigError
from ipychat.core.keys import Secret
from ipychat.core.settings import (
    DEFAULT_MODEL,
    LOCAL,
    Endpoint,
    Settings,
    check_endpoint,
    check_model,
    check_url,
    is_loopback,
    key_origins_from_env,
    origin,
)

EXAMPLE = "use one like https://api.openai.com/v1 or http://localhost:8000/v1."


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IPYCHAT_MODEL", "IPYCHAT_OFFLINE", "IPYCHAT_KEY_ORIGINS"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------------------------
# URLs and origins
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com:443"),
        ("HTTPS://API.OpenAI.com/v1/", "https://api.openai.com:443"),
        ("http://localhost:8000/v1", "http://localhost:8000"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com:8443/x", "https://example.com:8443"),
        ("http://[::1]:9000/v1", "http://[::1]:9000"),
        ("https://[2001:db8::1]/v1", "https://[2001:db8::1]:443"),
    ],
)
def test_origin_is_scheme_host_and_port_with_the_default_port(url: str, expected: str) -> None:
    assert origin(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/v1", f"'ftp://example.com/v1' is not an endpoint URL: {EXAMPLE}"),
        ("example.com/v1", f"'example.com/v1' is not an endpoint URL: {EXAMPLE}"),
        ("http://", f"'http://' is not an endpoint URL: {EXAMPLE}"),
        ("http://:80/v1", f"'http://:80/v1' is not an endpoint URL: {EXAMPLE}"),
        (
            "http://[::1",
            f"'http://[::1' is not a valid endpoint URL (Invalid IPv6 URL): {EXAMPLE}",
        ),
        (
            "http://localhost:70000/v1",
            "'http://localhost:70000/v1' is not a valid endpoint URL (Port out of range "
            f"0-65535): {EXAMPLE}",
        ),
        (
            "http://localhost:0/v1",
            f"'http://localhost:0/v1' has port 0, which no server listens on: {EXAMPLE}",
        ),
        (
            "http://local host/v1",
            f"The endpoint URL 'http://local host/v1' holds spaces or control characters: {EXAMPLE}",
        ),
        (
            "http://localhost/v1\x01",
            "The endpoint URL 'http://localhost/v1\\x01' holds spaces or control characters: "
            f"{EXAMPLE}",
        ),
        (
            "http://localhost/v1\x7f",
            "The endpoint URL 'http://localhost/v1\\x7f' holds spaces or control characters: "
            f"{EXAMPLE}",
        ),
        *(
            (
                url,
                f"The endpoint URL {url!r} has a ?query or #fragment: paths are added after it, "
                f"so leave them out ({EXAMPLE[:-1]}; Azure's api-version is azure_api_version).",
            )
            for url in (
                "http://localhost/v1?x=1",
                "http://localhost/v1#top",
                "http://localhost/v1?",
                "http://localhost/v1#",
            )
        ),
    ],
)
def test_check_url_refuses_in_one_line_that_says_what_to_use(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_url(url)
    assert str(caught.value) == message


def test_check_url_names_what_the_url_is_for() -> None:
    with pytest.raises(ConfigError) as caught:
        check_url("ftp://x", "proxy")
    assert str(caught.value) == f"'ftp://x' is not an proxy URL: {EXAMPLE}"


@pytest.mark.parametrize(
    "url",
    [
        "http://user:" + "hunter2" + "@localhost:8000/v1",
        "https://token@example.com/v1",
    ],
)
def test_a_url_with_a_user_or_password_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_url(url)
    assert str(caught.value) == (
        "The endpoint URL holds a user name or password (user:secret@host): leave it out, and "
        "give the key with %chat key or OPENAI_API_KEY."
    )
    assert "hunter2" not in str(caught.value) and "token" not in str(caught.value)


def test_an_at_sign_in_the_path_is_no_user_name() -> None:
    check_url("http://localhost:8000/v1/@models")  # the @ is after the host: accepted
    check_url("http://localhost:8000/a@b/c")
    check_url("http://localhost:8000/v1/x://a@b")  # only the first "://" ends the scheme
    assert origin("http://localhost:8000/@x") == "http://localhost:8000"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("api.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("[::1]", True),
        ("::1", True),
        ("notlocalhost", False),
        ("localhost.example.com", False),
        ("localhostX", False),
        ("128.0.0.1", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback_knows_the_hosts_that_never_leave_the_machine(
    host: str, loopback: bool
) -> None:
    assert is_loopback(host) is loopback


# ---------------------------------------------------------------------------------------------
# Model names
# ---------------------------------------------------------------------------------------------


def test_check_model_strips_white_space_and_keeps_none() -> None:
    assert check_model("  gpt-4o-mini\n") == "gpt-4o-mini"
    assert check_model("openai/gpt-4o-mini") == "openai/gpt-4o-mini"
    assert check_model(None) is None


@pytest.mark.parametrize("model", ["", "   ", "\t\n", 3])
def test_an_empty_model_name_is_refused(model: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        check_model(model)
    assert str(caught.value) == "The model name is empty: pass a model such as gpt-4o-mini."


@pytest.mark.parametrize("model", ["gpt 4o", "gpt-4o\tmini", "gpt-4o\x00", "gpt\u200b4o"])
def test_a_model_name_with_spaces_or_control_characters_is_refused(model: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_model(model)
    assert str(caught.value) == (
        f"The model name {model.strip()!r} holds spaces or control characters: pass a model id "
        "such as gpt-4o-mini (%chat models lists them)."
    )


def test_a_key_given_as_the_model_name_is_refused_without_showing_it() -> None:
    key = "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vX7zB9dF2hJ4lN6"
    with pytest.raises(ConfigError) as caught:
        check_model(key)
    message = str(caught.value)
    assert message.startswith("The model name looks like ")
    assert message.endswith(": a key goes in %chat key, not in the model name.")
    assert key not in message


# ---------------------------------------------------------------------------------------------
# Settings.validate
# ---------------------------------------------------------------------------------------------


def test_the_defaults_are_valid() -> None:
    s = Settings()
    s.validate()
    assert s.model is None and s.max_tokens == 1024 and s.max_retries == 3
    assert s.offline is False and s.key_origins == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"temperature": -0.1}, "temperature must be between 0 and 2, not -0.1."),
        ({"temperature": 2.01}, "temperature must be between 0 and 2, not 2.01."),
        ({"max_tokens": 0}, "max_tokens must be a positive whole number, not 0."),
        ({"max_tokens": 1.5}, "max_tokens must be a positive whole number, not 1.5."),
        ({"max_input_tokens": -3}, "max_input_tokens must be a positive whole number, not -3."),
        ({"max_input_tokens": "9"}, "max_input_tokens must be a positive whole number, not '9'."),
        (
            {"connect_timeout": 0},
            "connect_timeout must be a positive number of seconds, not 0.",
        ),
        (
            {"read_timeout": float("inf")},
            "read_timeout must be a positive number of seconds, not inf.",
        ),
        (
            {"reply_timeout": True},
            "reply_timeout must be a positive number of seconds, not True.",
        ),
        (
            {"reply_timeout": "60"},
            "reply_timeout must be a positive number of seconds, not '60'.",
        ),
        ({"redact": 1}, "redact is True or False, not 1."),
        ({"log_prompts": "yes"}, "log_prompts is True or False, not 'yes'."),
        ({"max_retries": -1}, "max_retries must be a whole number from 0 to 20, not -1."),
        ({"max_retries": 21}, "max_retries must be a whole number from 0 to 20, not 21."),
        ({"max_retries": True}, "max_retries must be a whole number from 0 to 20, not True."),
        ({"max_retries": 2.0}, "max_retries must be a whole number from 0 to 20, not 2.0."),
        ({"base_url": 8000}, "The endpoint is a URL, not 8000."),
        ({"base_url": "ftp://x"}, f"'ftp://x' is not an endpoint URL: {EXAMPLE}"),
        *(
            (
                {"azure_api_version": version},
                "azure_api_version is a version such as 2024-10-21 or 2024-08-01-preview, "
                f"not {version!r}.",
            )
            for version in ("", "-2024", "2024 10", "2024/10", "a" * 65, 20241021)
        ),
        (
            {"structured": "json"},
            "structured must be auto, openai, llama.cpp, vllm, vllm-guided, prompt; not 'json'.",
        ),
        ({"key_origins": ["http://x"]}, "key_origins is a tuple of endpoint URLs."),
        (
            {"key_origins": ("http://localhost:1/", "gopher://x")},
            f"'gopher://x' is not an endpoint URL: {EXAMPLE}",
        ),
        (
            {"model": "gpt 4o"},
            "The model name 'gpt 4o' holds spaces or control characters: pass a model id such "
            "as gpt-4o-mini (%chat models lists them).",
        ),
    ],
)
def test_every_refusal_of_validate_is_one_line(changes: dict[str, Any], message: str) -> None:
    s = Settings(**changes)
    with pytest.raises(ConfigError) as caught:
        s.validate()
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature": 0},
        {"temperature": 2},
        {"max_tokens": 1, "max_input_tokens": 1},
        {"max_tokens": None, "max_input_tokens": None},
        {"connect_timeout": 0.001, "read_timeout": 5, "reply_timeout": 1e9},
        {"redact": True, "log_prompts": True},
        {"max_retries": 0},
        {"max_retries": 20},
        {"base_url": LOCAL},
        {"base_url": "anthropic"},
        {"base_url": "Ollama"},
        {"base_url": "http://localhost:8000/v1"},
        {"azure_api_version": "2024-10-21"},
        {"azure_api_version": "2024-08-01-preview"},
        {"azure_api_version": "a" * 64},
        {"structured": "auto"},
        *(
            {"structured": kind}
            for kind in ("openai", "llama.cpp", "vllm", "vllm-guided", "prompt")
        ),
        {"key_origins": ("http://localhost:8000", "https://example.com/v1")},
    ],
)
def test_the_bounds_and_names_validate_accepts(changes: dict[str, Any]) -> None:
    Settings(**changes).validate()


def test_an_api_key_given_as_text_becomes_a_secret() -> None:
    token = "sk-" + "x" * 40
    s = Settings(api_key=token)  # type: ignore[arg-type]
    assert isinstance(s.api_key, Secret)
    assert token not in repr(s)
    assert s.api_key.reveal() == token


# ---------------------------------------------------------------------------------------------
# The environment
# ---------------------------------------------------------------------------------------------


def test_the_model_and_offline_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPYCHAT_MODEL", "gpt-4.1")
    assert Settings().model == "gpt-4.1"
    monkeypatch.setenv("IPYCHAT_MODEL", "")
    assert Settings().model is None
    for value, offline in [
        ("1", True),
        (" TRUE ", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("no", False),
        ("", False),
        ("truthy", False),
    ]:
        monkeypatch.setenv("IPYCHAT_OFFLINE", value)
        assert Settings().offline is offline, value


def test_key_origins_from_the_environment_skip_typos(monkeypatch: pytest.MonkeyPatch) -> None:
    assert key_origins_from_env() == ()
    monkeypatch.setenv(
        "IPYCHAT_KEY_ORIGINS", " http://LOCALHOST:8000/v1 ,, not a url, https://example.com/x,"
    )
    assert key_origins_from_env() == ("http://localhost:8000", "https://example.com:443")
    assert Settings().key_origins == ("http://localhost:8000", "https://example.com:443")
    monkeypatch.setenv("IPYCHAT_KEY_ORIGINS", "http://a.example:1,http://b.example:2")
    assert key_origins_from_env() == ("http://a.example:1", "http://b.example:2")


# ---------------------------------------------------------------------------------------------
# check_endpoint and Endpoint
# ---------------------------------------------------------------------------------------------


def test_check_endpoint_gives_a_misspelt_name_the_list() -> None:
    with pytest.raises(ConfigError) as caught:
        check_endpoint("antropic")
    assert str(caught.value) == (
        "'antropic' is not an endpoint URL or a named endpoint: use local, anthropic, gemini, "
        "mistral, groq, openrouter, together, azure, ollama, vllm, lmstudio, or a URL such as "
        "http://localhost:8000/v1."
    )
    # A word with a slash or a scheme is taken as a URL and gets the URL's refusal.
    for url in ("localhost/v1", "antropic://x"):
        with pytest.raises(ConfigError) as caught:
            check_endpoint(url)
        assert str(caught.value) == f"{url!r} is not an endpoint URL: {EXAMPLE}"
    check_endpoint("http://localhost:8000/v1")


def test_check_endpoint_takes_a_providers_name() -> None:
    # As its docstring says: `%chat endpoint anthropic` names a provider, which is no URL.
    check_endpoint("anthropic")
    check_endpoint(" Groq ")


def test_an_endpoint_knows_its_provider_default_model_and_prices() -> None:
    plain = Endpoint("custom", "http://localhost:8000/v1")
    assert plain.spec is None
    assert plain.default_model == DEFAULT_MODEL
    assert plain.prices == (False, None)
    anthropic = Endpoint("provider", "https://api.anthropic.com/v1", "anthropic")
    assert anthropic.spec is not None and anthropic.spec.name == "anthropic"
    assert anthropic.default_model == "claude-haiku-4-5"
    assert anthropic.prices == (False, "anthropic")
    azure = Endpoint("provider", "https://x.openai.azure.com", "azure")
    assert azure.default_model == DEFAULT_MODEL  # Azure names no model of its own
    assert Endpoint("provider", "http://localhost:11434/v1", "ollama").prices == (True, None)
    assert Endpoint("local", LOCAL).prices == (True, None)
    assert Endpoint("openai", "https://api.openai.com/v1").prices == (False, None)
