"""Settings of the session and the endpoint they resolve to: plain data, validated.

The session takes a `Settings`; the magics mirror its fields as traitlets. Pure: no I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from math import inf
from urllib.parse import urlsplit

from ipychat.core import providers
from ipychat.core.errors import ConfigError
from ipychat.core.keys import Secret, find_keys
from ipychat.core.structured import ENDPOINT_KINDS

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODEL",
    "LOCAL",
    "OPENAI_URL",
    "TICK",
    "Endpoint",
    "Settings",
    "check_endpoint",
    "check_model",
    "check_url",
    "is_loopback",
    "key_origins_from_env",
    "origin",
]

DEFAULT_MODEL = "gpt-4o-mini"
LOCAL = "local"  # the endpoint name (and model name) of the embedded llama.cpp server
LOCAL_MODEL = "local"
LOCAL_CONTEXT_WINDOW = 2048  # the n_ctx the embedded server starts with (engine/local.py)
OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_MAX_TOKENS = 1024
# How often a caller waiting on the loop thread ticks (refreshes the progress display), s.
TICK = 0.25
_API_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
_USERINFO = (
    "The endpoint URL holds a user name or password (user:secret@host): leave it out, and give "
    "the key with %chat key or OPENAI_API_KEY."
)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def key_origins_from_env() -> tuple[str, ...]:
    """IPYCHAT_KEY_ORIGINS: comma-separated endpoint URLs the user allows the key to go to."""
    found: list[str] = []
    for item in os.environ.get("IPYCHAT_KEY_ORIGINS", "").split(","):
        item = item.strip()
        if item:
            try:
                found.append(origin(item))
            except ConfigError:
                continue  # a typo must not break every request; a refusal names the origin
    return tuple(found)


def check_url(url: str, what: str = "endpoint") -> None:
    """Refuse what is not an http(s) URL with a host and a valid port, in one line.

    urllib raises a bare ValueError for `http://[::1` and for a port beyond 65535 the first
    time `.port` is read: both are said here, before the URL is stored.
    """
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:  # said without the URL: a password
        raise ConfigError(_USERINFO)
    example = "use one like https://api.openai.com/v1 or http://localhost:8000/v1."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{url!r} is not a valid {what} URL ({exc}): {example}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or not parts.hostname:
        raise ConfigError(f"{url!r} is not an {what} URL: {example}")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ConfigError(f"The {what} URL {url!r} holds spaces or control characters: {example}")
    if port == 0:
        raise ConfigError(f"{url!r} has port 0, which no server listens on: {example}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(
            f"The {what} URL {url!r} has a ?query or #fragment: paths are added after it, so "
            f"leave them out ({example[:-1]}; Azure's api-version is azure_api_version)."
        )


def origin(url: str) -> str:
    """`scheme://host:port` of an http(s) URL, lower-case, with the scheme's default port:
    what a key is scoped to (as browsers and HTTP clients scope credentials)."""
    check_url(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}:{port}"


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1: traffic that never leaves this machine."""
    import ipaddress

    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_model(model: str | None) -> str | None:
    """A model name as sent: white space around it dropped; empty or inner white space or
    control characters refused (a name never has them; `-m ' '` is a slip)."""
    if model is None:
        return None
    if not isinstance(model, str) or not model.strip():
        raise ConfigError("The model name is empty: pass a model such as gpt-4o-mini.")
    name = model.strip()
    found = find_keys(name)
    if found:  # the model name is sent in every request body, and shown in every footer
        raise ConfigError(
            f"The model name looks like {found[0].kind} ({found[0].shown}): a key goes in "
            "%chat key, not in the model name."
        )
    if any(c.isspace() or not c.isprintable() for c in name):
        raise ConfigError(
            f"The model name {name!r} holds spaces or control characters: pass a model id such "
            "as gpt-4o-mini (%chat models lists them)."
        )
    return name


@dataclass
class Settings:
    """Everything that shapes a request. Validated on every change (`ChatSession.configure`)."""

    model: str | None = field(default_factory=lambda: os.environ.get("IPYCHAT_MODEL") or None)
    # None: OPENAI_BASE_URL, else OpenAI or local; "local"; a provider's name ("anthropic")
    base_url: str | None = None
    api_key: Secret | None = None  # None: OPENAI_API_KEY
    system: str | None = None
    temperature: float | None = None  # None: the server's default
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    max_input_tokens: int | None = None  # None: the model's context window
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # the longest silence within a streamed reply
    reply_timeout: float = 600.0  # a whole non-streamed reply (%%chatmap rows, --no-stream)
    max_retries: int = 3
    azure_api_version: str | None = None
    cache: bool = True
    offline: bool = field(default_factory=lambda: _env_flag("IPYCHAT_OFFLINE"))
    redact: bool = False  # mask e-mail addresses, phone and card numbers in prompts
    # How the endpoint constrains typed replies (schema=, choices=, filter): "auto" picks
    # from the endpoint (`core.structured.endpoint_kind`), else openai | llama.cpp | vllm |
    # vllm-guided | prompt (no constraint: the schema goes into the prompt).
    structured: str = "auto"
    log_prompts: bool = False  # keep prompts in the persistent usage record (ledger.db)
    # Endpoints (scheme://host:port) the user allows the API key to go to beyond its own:
    # OPENAI_API_KEY goes only to OpenAI or OPENAI_BASE_URL, a %chat key only to the
    # endpoint it was given for, and a key never crosses plain http to another machine
    # unless its endpoint is listed here (%chat endpoint URL --send-key, IPYCHAT_KEY_ORIGINS).
    key_origins: tuple[str, ...] = field(default_factory=key_origins_from_env)

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):  # a plain str would show in every repr
            self.api_key = Secret(self.api_key)

    def validate(self) -> None:
        check_model(self.model)
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ConfigError(f"temperature must be between 0 and 2, not {self.temperature}.")
        for name in ("max_tokens", "max_input_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive whole number, not {value!r}.")
        for name in ("connect_timeout", "read_timeout", "reply_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < inf:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}.")
        for name in ("redact", "log_prompts"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} is True or False, not {getattr(self, name)!r}.")
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or not 0 <= self.max_retries <= 20
        ):
            raise ConfigError(
                f"max_retries must be a whole number from 0 to 20, not {self.max_retries!r}."
            )
        if self.base_url is not None and self.base_url != LOCAL:
            if not isinstance(self.base_url, str):
                raise ConfigError(f"The endpoint is a URL, not {self.base_url!r}.")
            check_endpoint(self.base_url)  # a URL, or a provider's name
        version = self.azure_api_version
        if version is not None and not (isinstance(version, str) and _API_VERSION.match(version)):
            raise ConfigError(
                f"azure_api_version is a version such as 2024-10-21 or 2024-08-01-preview, "
                f"not {version!r}."
            )
        if self.structured != "auto" and self.structured not in ENDPOINT_KINDS:
            raise ConfigError(
                f"structured must be auto, {', '.join(ENDPOINT_KINDS)}; not {self.structured!r}."
            )
        if not isinstance(self.key_origins, tuple):
            raise ConfigError("key_origins is a tuple of endpoint URLs.")
        for url in self.key_origins:
            check_url(url)


def check_endpoint(url: str) -> None:
    """An endpoint as `%chat endpoint` takes it: a URL, or a provider's name (said so when
    the word is not a URL: a misspelt name gets the list, not a URL lecture)."""
    if "://" not in url and "/" not in url:
        if providers.find(url) is not None:
            return
        raise ConfigError(
            f"{url!r} is not an endpoint URL or a named endpoint: use local, "
            f"{', '.join(providers.names())}, or a URL such as http://localhost:8000/v1."
        )
    check_url(url)


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint. kind: custom | provider (named: %chat endpoint anthropic) |
    openai | local | none. For the local server `url` is a stable name, not its port, so its
    cache entries survive a kernel restart. `provider`: the named provider requests go to
    ("" for none), by name or by its URL (`ipychat.core.providers`)."""

    kind: str
    url: str
    provider: str = ""

    @property
    def spec(self) -> providers.Provider | None:
        """The provider's row of `ipychat.core.providers` (None: not a named provider)."""
        return providers.find(self.provider) if self.provider else None

    @property
    def default_model(self) -> str:
        """The model asked for when none is set: the provider's, else ipychat's default."""
        spec = self.spec
        return (spec.model if spec else None) or DEFAULT_MODEL

    @property
    def prices(self) -> tuple[bool, str | None]:
        """(free, price provider) for `PriceTable.lookup`: the embedded model and local
        servers cost 0; a provider's models are priced from its section of the table."""
        spec = self.spec
        free = self.kind == "local" or (spec is not None and spec.local)
        return free, spec.prices if spec else None
