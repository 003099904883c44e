"""The named providers: `%chat endpoint anthropic` and the table behind it.

One row per provider is the single source of truth for everything ipychat does differently
there: where its OpenAI-compatible API lives, which environment variable holds its key, the
model asked for when none is set, under which name its prices are in `data/prices.json`, and
its request quirks. Each row cites the provider's documentation; each quirk is applied in one
place of the request pipeline:

- `adapt_body` (called by `Engine.body`, so chat, panel, map and batch alike): fields the
  provider ignores are left out, fields it names differently are renamed, fields it refuses
  are a one-line error before anything is sent, a response_format type it refuses is left
  out (the prompt asks for the format too), a temperature above its range is capped as the
  provider itself would cap it;
- `stream_usage` (read by `net/requests.RequestBuilder`): whether a stream may ask for its
  usage chunk (`stream_options`), or the provider refuses the field and sends usage unasked;
- `approximate_tokens` (read by `Engine.count`): the provider's models do not use OpenAI's
  tokenizer, so every local count is shown as approximate (≈).

What the client reads back (usage shapes, error bodies, keep-alive comments, Groq's
`x_groq`) needs no row: `net/replies` and `net/failures` read every shape the flavours of
`ipychat.testing.flavours` reproduce.

Where a key may go: a provider's key variable is read only when requests go to that
provider's own origin (`key_for`), never to another endpoint.

Pure: reads the environment, nothing else.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from ipychat.core.errors import ConfigError, NoAPIKeyError
from ipychat.core.keys import Secret

__all__ = [
    "PROVIDERS",
    "Provider",
    "adapt_body",
    "approximate_tokens",
    "base_url",
    "find",
    "for_url",
    "key_for",
    "key_var",
    "missing_key",
    "names",
    "stream_usage",
]


@dataclass(frozen=True)
class Provider:
    """One provider's OpenAI-compatible endpoint and how it differs from OpenAI's."""

    name: str
    url: str  # the base URL requests are sent under (Azure's is built from the environment)
    docs: str  # where the URL, the key variable and the quirks come from
    key_vars: tuple[str, ...] = ()  # the first one set is the key; () for a local server
    model: str | None = None  # asked for when no model is set (None: ipychat's default)
    prices: str | None = None  # its section in data/prices.json (None: a local server, $0)
    local: bool = False  # a server on this machine: no key, no price
    ignored: tuple[str, ...] = ()  # fields it accepts and ignores: left out
    renamed: tuple[tuple[str, str], ...] = ()  # (OpenAI's name, the provider's)
    refused: tuple[str, ...] = ()  # fields it answers with an error: refused here first
    max_temperature: float | None = None  # it caps a higher temperature to this
    # response_format types it takes (None: all); another is left out, and the reply is
    # asked for by the prompt alone (%%chatmap --json says "Reply with only a JSON object")
    formats: tuple[str, ...] | None = None
    stream_usage: bool = True  # a stream may ask for its usage chunk (stream_options)
    approximate_tokens: bool = True  # its tokenizer is not OpenAI's


_AZURE_ENDPOINT = "AZURE_OPENAI_ENDPOINT"
# The fields https://platform.claude.com/docs/en/api/openai-sdk lists as "Ignored".
_ANTHROPIC_IGNORED = ("response_format", "seed", "logprobs", "top_logprobs", "logit_bias",
                      "presence_penalty", "frequency_penalty", "service_tier", "store",
                      "prediction", "metadata", "user", "modalities", "audio",
                      "reasoning_effort")  # fmt: skip

PROVIDERS: Final[Mapping[str, Provider]] = MappingProxyType(
    {
        p.name: p
        for p in (
            # https://platform.claude.com/docs/en/api/openai-sdk: base URL
            # https://api.anthropic.com/v1/, the key ANTHROPIC_API_KEY; "response_format",
            # "seed", "logprobs", "presence_penalty", ... "Ignored"; temperature "Between 0
            # and 1 (inclusive). Values greater than 1 are capped at 1"; max_tokens "Fully
            # supported" (ipychat always sends it); stream_options "Fully supported".
            Provider(
                "anthropic",
                "https://api.anthropic.com/v1",
                "https://platform.claude.com/docs/en/api/openai-sdk",
                key_vars=("ANTHROPIC_API_KEY",),
                model="claude-haiku-4-5",
                prices="anthropic",
                ignored=_ANTHROPIC_IGNORED,
                max_temperature=1.0,
            ),
            # https://ai.google.dev/gemini-api/docs/openai: base URL
            # https://generativelanguage.googleapis.com/v1beta/openai/, the key GEMINI_API_KEY
            # (Google's SDK also reads GOOGLE_API_KEY: https://ai.google.dev/gemini-api/docs/api-key).
            Provider(
                "gemini",
                "https://generativelanguage.googleapis.com/v1beta/openai",
                "https://ai.google.dev/gemini-api/docs/openai",
                key_vars=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
                model="gemini-2.5-flash",
                prices="gemini",
            ),
            # https://docs.mistral.ai/api/: base URL https://api.mistral.ai/v1, the key
            # MISTRAL_API_KEY; its seed is `random_seed`, its cap `max_tokens`; a field it
            # does not know is a 422 "Extra inputs are not permitted" (max_completion_tokens:
            # https://github.com/editor-code-assistant/eca/issues/231), stream_options too
            # (https://github.com/dnakov/anon-kode/issues/53): a stream's usage comes in its
            # last chunk unasked (https://github.com/mistralai/client-python/issues/40).
            Provider(
                "mistral",
                "https://api.mistral.ai/v1",
                "https://docs.mistral.ai/api/",
                key_vars=("MISTRAL_API_KEY",),
                model="mistral-small-latest",
                prices="mistral",
                renamed=(("seed", "random_seed"), ("max_completion_tokens", "max_tokens")),
                stream_usage=False,
            ),
            # https://console.groq.com/docs/openai: base URL https://api.groq.com/openai/v1,
            # the key GROQ_API_KEY; "logprobs, logit_bias, top_logprobs, messages[].name"
            # are "not supported and will result in a 400 error if they are supplied".
            Provider(
                "groq",
                "https://api.groq.com/openai/v1",
                "https://console.groq.com/docs/openai",
                key_vars=("GROQ_API_KEY",),
                model="llama-3.3-70b-versatile",
                prices="groq",
                refused=("logprobs", "logit_bias", "top_logprobs"),
            ),
            # https://openrouter.ai/docs/quickstart: base URL https://openrouter.ai/api/v1,
            # the key OPENROUTER_API_KEY; models as vendor/model, so an OpenAI model keeps
            # OpenAI's tokenizer (core/tokens reads the name past the vendor).
            Provider(
                "openrouter",
                "https://openrouter.ai/api/v1",
                "https://openrouter.ai/docs/quickstart",
                key_vars=("OPENROUTER_API_KEY",),
                model="openai/gpt-4o-mini",
                prices="openrouter",
                approximate_tokens=False,
            ),
            # https://docs.together.ai/docs/openai-api-compatibility: base URL
            # https://api.together.xyz/v1, the key TOGETHER_API_KEY.
            Provider(
                "together",
                "https://api.together.xyz/v1",
                "https://docs.together.ai/docs/openai-api-compatibility",
                key_vars=("TOGETHER_API_KEY",),
                model="meta-llama/Llama-3.3-70B-Instruct-Turbo",
                prices="together",
            ),
            # https://learn.microsoft.com/azure/ai-foundry/openai/api-version-lifecycle: the
            # v1 API at https://RESOURCE.openai.azure.com/openai/v1/ takes OpenAI's client
            # with AZURE_OPENAI_API_KEY and no api-version; the model is the deployment's
            # name. OpenAI's models, OpenAI's tokenizer.
            Provider(
                "azure",
                "",
                "https://learn.microsoft.com/azure/ai-foundry/openai/api-version-lifecycle",
                key_vars=("AZURE_OPENAI_API_KEY",),
                prices="azure",
                approximate_tokens=False,
            ),
            # https://github.com/ollama/ollama/blob/main/docs/openai.md: base URL
            # http://localhost:11434/v1, "api_key='ollama', # required, but unused".
            Provider(
                "ollama",
                "http://localhost:11434/v1",
                "https://github.com/ollama/ollama/blob/main/docs/openai.md",
                model="llama3.2",
                local=True,
            ),
            # https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html: `vllm
            # serve` listens on http://localhost:8000/v1, a key only if started with --api-key.
            Provider(
                "vllm",
                "http://localhost:8000/v1",
                "https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html",
                local=True,
            ),
            # https://lmstudio.ai/docs/api/openai-api: base URL http://localhost:1234/v1;
            # response_format json_object is a 400 "'response_format.type' must be
            # 'json_schema' or 'text'" (https://github.com/Zazza/sd-ai/issues/2); a stream
            # sends no usage even when asked
            # (https://github.com/lmstudio-ai/lmstudio-bug-tracker/issues/713): the reply's
            # tokens are counted here then, and shown as estimated (≈).
            Provider(
                "lmstudio",
                "http://localhost:1234/v1",
                "https://lmstudio.ai/docs/api/openai-api",
                local=True,
                formats=("json_schema", "text"),
            ),
        )
    }
)


def names() -> list[str]:
    """The provider names `%chat endpoint` takes, in the table's order."""
    return list(PROVIDERS)


def find(name: str | None) -> Provider | None:
    """The provider named `name` (any case), or None."""
    return PROVIDERS.get(name.strip().lower()) if isinstance(name, str) else None


def for_url(url: str) -> Provider | None:
    """The hosted provider whose API `url` is under (same scheme, host and port; Azure's when
    AZURE_OPENAI_ENDPOINT names it), so `%chat endpoint https://api.groq.com/openai/v1`
    gets Groq's quirks and prices too. Local servers are never guessed from a port."""
    here = _origin(url)
    return None if here is None else _by_origin().get(here)


# (the table it was built from, AZURE_OPENAI_ENDPOINT then, {origin: provider}): every
# request asks `for_url`, several times, so the providers' origins are worked out once.
_ORIGINS: tuple[Mapping[str, Provider], str | None, dict[str, Provider]] | None = None


def _by_origin() -> dict[str, Provider]:
    global _ORIGINS
    azure = os.environ.get(_AZURE_ENDPOINT)
    if _ORIGINS is None or _ORIGINS[0] is not PROVIDERS or _ORIGINS[1] != azure:
        table: dict[str, Provider] = {}
        for provider in PROVIDERS.values():
            if provider.local:
                continue
            try:
                origin = _origin(base_url(provider))
            except ConfigError:  # Azure without AZURE_OPENAI_ENDPOINT: nowhere yet
                continue
            if origin is not None:
                table.setdefault(origin, provider)  # the first in the table's order wins
        _ORIGINS = (PROVIDERS, azure, table)
    return _ORIGINS[2]


@functools.lru_cache(maxsize=256)
def _origin(url: str) -> str | None:
    parts = urlsplit(url.strip())
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    return f"{parts.scheme.lower()}://{host}:{port}" if host else None


def base_url(provider: Provider) -> str:
    """Where `provider`'s requests go. Azure's is AZURE_OPENAI_ENDPOINT + /openai/v1 (the
    resource's URL as the Azure portal shows it); unset, a ConfigError says what to set."""
    if provider.name != "azure":
        return provider.url
    resource = os.environ.get(_AZURE_ENDPOINT, "").strip().rstrip("/")
    if not resource:
        raise ConfigError(
            f"%chat endpoint azure needs {_AZURE_ENDPOINT}: set it to your resource's URL, "
            "e.g. https://RESOURCE.openai.azure.com (and AZURE_OPENAI_API_KEY)."
        )
    return resource if resource.endswith("/openai/v1") else f"{resource}/openai/v1"


def key_var(provider: Provider) -> str | None:
    """The first of the provider's key variables that is set, or None."""
    return next((name for name in provider.key_vars if os.environ.get(name, "").strip()), None)


def key_for(provider: Provider) -> Secret | None:
    """The provider's key from its environment variable (the first one set), or None."""
    name = key_var(provider)
    return Secret(os.environ[name].strip()) if name else None


def missing_key(provider: Provider) -> NoAPIKeyError:
    """The one-line error for a provider whose key variable is not set."""
    wanted = " or ".join(provider.key_vars)
    return NoAPIKeyError(
        f"No API key for {provider.name}: set {wanted} (or run %chat key to paste one)."
    )


def adapt_body(provider: Provider | None, body: dict[str, Any]) -> dict[str, Any]:
    """`body` as `provider` takes it (see the module docstring); the key order is kept, so
    the cache key of a body is stable. Raises ConfigError for a field the provider refuses."""
    if provider is None:
        return body
    refused = [name for name in provider.refused if name in body]
    if refused:
        raise ConfigError(
            f"{provider.name} refuses {refused[0]} (an error for every request: "
            f"{provider.docs}); leave it out. Nothing was sent."
        )
    renamed = dict(provider.renamed)
    adapted: dict[str, Any] = {}
    for name, value in body.items():
        if name in provider.ignored:
            continue
        name = renamed.get(name, name)
        if name not in adapted:  # max_tokens set and max_completion_tokens too: the first
            adapted[name] = value
    form = adapted.get("response_format")
    formats = provider.formats
    if formats is not None and isinstance(form, Mapping) and form.get("type") not in formats:
        del adapted["response_format"]
    cap = provider.max_temperature
    temperature = adapted.get("temperature")
    if cap is not None and isinstance(temperature, int | float) and temperature > cap:
        adapted["temperature"] = cap
    return adapted


def stream_usage(provider: Provider | None) -> bool:
    """Whether a stream may ask for its usage chunk (`stream_options.include_usage`)."""
    return provider is None or provider.stream_usage


def approximate_tokens(provider: Provider | None) -> bool:
    """Whether token counts for `provider`'s models are approximate (not OpenAI's tokenizer)."""
    return provider is not None and provider.approximate_tokens
