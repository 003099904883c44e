"""What a request is before it is sent: its options, its body, and the hygiene gate.

`RequestOptions` is the one options object of a request (a %%chat turn, a %%chatmap row);
`build_body` is the one place a request body is assembled from messages and options; the
`Gate` is the one place a request's messages are checked before they may leave the kernel;
an `Estimator` is what sending message lists to one model would cost.

Typed replies (`ipychat.core.structured.OutputSpec`) go through the same pipeline:
`typed_options` adds the spec's rule to the system prompt and its fragment (e.g.
`response_format`) to the body's extra fields, for the endpoint's kind (`structured_kind`);
an endpoint that refuses those fields (HTTP 400/422 naming them, `format_refused`) is
asked in the prompt from then on (`fall_back`), once per engine and endpoint.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ipychat.core import pricing, tokens
from ipychat.core.errors import BadRequestError, ChatError, ConfigError
from ipychat.core.hygiene import Cleaned, clean_messages
from ipychat.core.messages import Content, Thread
from ipychat.core.structured import EndpointKind, OutputSpec, endpoint_kind
from ipychat.core.types import Estimate

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine

__all__ = [
    "Estimator",
    "Gate",
    "Prepared",
    "RequestOptions",
    "allowing_secrets",
    "build_body",
    "fall_back",
    "format_refused",
    "structured_kind",
    "typed_options",
]

# Set by `allowing_secrets()` (e.g. %%chatmap --allow-secrets): prompts that hold something
# shaped like a credential are sent anyway.
_ALLOW_SECRETS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ipychat_allow_secrets", default=False
)


@contextlib.contextmanager
def allowing_secrets(allow: bool = True) -> Iterator[None]:
    """Within the block, prompts shaped like credentials are sent (%%chatmap --allow-secrets)."""
    token = _ALLOW_SECRETS.set(allow)
    try:
        yield
    finally:
        _ALLOW_SECRETS.reset(token)


@dataclass(frozen=True)
class RequestOptions:
    """What a request asks for besides its prompt; None: the setting (or the endpoint's
    default model). `extra` adds body fields such as `response_format`."""

    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    extra: Mapping[str, Any] | None = None
    allow_secrets: bool = False

    def check(self, max_cost: float | None = None) -> None:
        """Refuse values no request can be sent with (ConfigError, saying what fits)."""
        temperature, max_tokens = self.temperature, self.max_tokens
        if temperature is not None and not 0 <= temperature <= 2:
            raise ConfigError(f"temperature must be between 0 and 2, not {temperature}.")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive whole number, not {max_tokens}.")
        if max_cost is not None and not 0 <= max_cost < float("inf"):
            raise ConfigError(f"max cost must be a number of dollars ≥ 0, not {max_cost}.")


@dataclass
class Prepared:
    """A request ready to send: nothing has left the kernel yet."""

    prompt: Content  # text, or text and image parts
    thread: Thread | None  # None: a one-off request (a %%chatmap row) outside any thread
    body: dict[str, Any]
    estimate: Estimate
    dropped_turns: int = 0
    max_cost: float | None = None
    label: str = "main"  # the ledger's thread column
    masked: str = ""  # what the redact setting masked in the prompt ("" when nothing)
    cache_salt: str = ""  # part of the cache key besides the body (a typed reply's spec)
    output: OutputSpec | None = None  # what the reply must be (`engine.typedreply`)
    cell: str | None = None  # the notebook cell it came from: its turn replaces the cell's last


def build_body(
    messages: list[dict[str, Any]],
    model: str,
    temperature: float | None,
    max_tokens: int,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A chat-completions body: model, messages, temperature (when set), max_tokens, then
    `extra` (the key order is part of the cache key, so it never changes)."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    if temperature is not None:
        body["temperature"] = temperature
    body["max_tokens"] = max_tokens
    body.update(extra or {})
    return body


def _texts(content: Any) -> list[str]:
    """A message's texts: its content, or the text parts beside its images."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]


class Gate:
    """Every text the user wrote (system prompt, history, prompt; map rows and their
    --fill-null values are prompts too) passes `ipychat.core.hygiene.clean_messages` here.
    It remembers what `redact` masked (`redactions`, by kind) and the texts sent on an
    explicit --allow-secrets (resent as history, they are not refused again)."""

    def __init__(self) -> None:
        self.redactions: Counter[str] = Counter()
        self._allowed_texts: set[str] = set()
        self._lock = threading.Lock()

    def clean(
        self,
        messages: list[dict[str, Any]],
        *,
        allow_secrets: bool,
        redact: bool,
        threaded: bool = True,
    ) -> Cleaned:
        """`messages` as they may leave the kernel (SecretInPromptError if they may not)."""
        allow = allow_secrets or _ALLOW_SECRETS.get()
        cleaned = clean_messages(
            messages, allow_secrets=allow, redact=redact, allowed=self._allowed_texts
        )
        with self._lock:
            if cleaned.counts:
                self.redactions.update(cleaned.counts)
            if allow and threaded:  # vouched for by the user: later turns resend them
                self._allowed_texts.update(
                    text
                    for m in cleaned.messages
                    if m.get("role") in ("system", "user")
                    for text in _texts(m.get("content"))
                )
        return cleaned


@dataclass(frozen=True)
class Estimator:
    """What sending message lists to `model` would cost, with the model's price, context
    window and reply cap resolved once (`Engine.estimator`): %%chatmap estimates thousands
    of rows, and each resolution reads the endpoint from the environment."""

    model: str
    max_completion_tokens: int
    price: pricing.ModelPrice | None
    context_window: int
    approximate: bool = False  # the endpoint's tokenizer is not OpenAI's: every count ≈
    # Bytes for tokens (`tokens.count_messages_bound`: never fewer than the count), so that
    # nothing waits for the encoding to load; %%chatmap recounts exactly once it is loaded.
    bound: bool = False

    def __call__(self, messages: Sequence[dict[str, Any]]) -> Estimate:
        bound = tokens.count_messages_bound(messages) if self.bound else None
        if bound is None:
            counted = tokens.count_messages(messages, self.model)
        else:  # an upper bound, not a count: "≈" wherever it is shown
            counted = tokens.TokenCount(bound, approximate=True)
        wanted = self.max_completion_tokens
        low, high, batch = pricing.estimate_cost_range(counted.tokens, wanted, self.price)
        return Estimate(
            model=self.model,
            messages=len(messages),
            prompt_tokens=counted.tokens,
            max_completion_tokens=wanted,
            approximate=counted.approximate or self.approximate,
            cost_low=low,
            cost_high=high,
            cost_batch=batch,
            context_window=self.context_window,
        )


# ----- typed replies -------------------------------------------------------------------------

# The endpoints (by engine, then base_url) that refused the structured-output fields: asked in
# the prompt from then on. Weak: an engine that is gone forgets.
_FELL_BACK: weakref.WeakKeyDictionary[Engine, set[str]] = weakref.WeakKeyDictionary()
# What a 400/422 names when the server does not know a structured-output field.
_FORMAT_FIELDS = ("response_format", "json_schema", "grammar", "guided_", "structured_outputs")


def structured_kind(engine: Engine) -> EndpointKind:
    """How this engine's endpoint constrains a typed reply: the `structured` setting ("auto":
    from the endpoint), or "prompt" where the endpoint refused the fields once."""
    url = engine.base_url
    if url in _FELL_BACK.get(engine, ()):
        return "prompt"
    return endpoint_kind(engine.settings.structured, base_url=url, local=engine.is_local)


def typed_options(
    options: RequestOptions, spec: OutputSpec, kind: EndpointKind, system: str | None
) -> RequestOptions:
    """`options` for a reply that must fit `spec` on a `kind` endpoint: its rule after the
    system prompt (`options.system`, else `system`, the setting), its fragment in the body."""
    base = options.system if options.system is not None else system
    rule = spec.instruction(kind)
    extra = {**(options.extra or {}), **spec.request_fragment(kind)}
    return replace(options, system=f"{base}\n\n{rule}" if base else rule, extra=extra)


def format_refused(error: ChatError) -> bool:
    """True when the server refused a request (400/422) because of a structured-output field
    it does not take: its message names the field (OpenAI: "Unrecognized request argument
    supplied: response_format"; pydantic servers: "Extra inputs are not permitted:
    body.guided_json"; llama-cpp-python: "Input should be 'text' or 'json_object'" at
    `response_format.type`)."""
    if not isinstance(error, BadRequestError):
        return False
    said = f"{error.server_message or ''} {error}".lower()
    return any(name in said for name in _FORMAT_FIELDS)


def fall_back(engine: Engine, kind: EndpointKind) -> str:
    """Remember that this engine's endpoint refused the `kind` fields; the one-line note."""
    _FELL_BACK.setdefault(engine, set()).add(engine.base_url)
    return (
        f"{engine.host} refused the {kind} structured-output fields: typed replies are asked "
        "for in the prompt and checked instead (set structured = 'prompt' to start there)."
    )
