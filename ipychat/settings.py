"""Settings of the session and the endpoint they resolve to: plain data, validated.

The session takes a `Settings`; the magics mirror its fields as traitlets. Pure: no I/O.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ipychat.errors import ConfigError
from ipychat.keys import Secret

__all__ = ["DEFAULT_MAX_TOKENS", "DEFAULT_MODEL", "LOCAL", "OPENAI_URL", "Endpoint", "Settings"]

DEFAULT_MODEL = "gpt-4o-mini"
LOCAL = "local"  # the endpoint name (and model name) of the embedded llama.cpp server
LOCAL_MODEL = "local"
LOCAL_CONTEXT_WINDOW = 2048  # the n_ctx the embedded server is started with (local.py)
OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_MAX_TOKENS = 1024
_USERINFO = (
    "The endpoint URL holds a user name or password (user:secret@host): leave it out, and give "
    "the key with %chat key or OPENAI_API_KEY."
)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    """Everything that shapes a request. Validated on every change (`ChatSession.configure`)."""

    model: str | None = field(default_factory=lambda: os.environ.get("IPYCHAT_MODEL") or None)
    base_url: str | None = None  # None: OPENAI_BASE_URL, else OpenAI or local; "local"
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

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):  # a plain str would show in every repr
            self.api_key = Secret(self.api_key)

    def validate(self) -> None:
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigError("The model name is empty: pass a model such as gpt-4o-mini.")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ConfigError(f"temperature must be between 0 and 2, not {self.temperature}.")
        for name in ("max_tokens", "max_input_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive whole number, not {value!r}.")
        for name in ("connect_timeout", "read_timeout", "reply_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a positive number of seconds.")
        if not isinstance(self.redact, bool):
            raise ConfigError(f"redact is True or False, not {self.redact!r}.")
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 20:
            raise ConfigError(
                f"max_retries must be a whole number from 0 to 20, not {self.max_retries!r}."
            )
        if self.base_url is not None and self.base_url != LOCAL:
            parts = urlsplit(self.base_url)
            if "@" in parts.netloc:  # said without the URL: it holds a password
                raise ConfigError(_USERINFO)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    f"{self.base_url!r} is not an endpoint URL: use one like "
                    "https://api.openai.com/v1 or http://localhost:8000/v1."
                )


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint. kind: custom | openai | local | none. For the local server `url`
    is a stable name, not its port, so its cache entries survive a kernel restart."""

    kind: str
    url: str
