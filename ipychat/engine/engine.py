"""The request engine: settings, endpoint, client and cache, estimates, prepare, request.

No threads, no events, no views: `ipychat.session.ChatSession` adds those on top, and
%%chatmap (`ipychat.map`) drives the engine directly. Every coroutine here runs on the
caller's loop (the session's loop thread, in a kernel).

A request goes: prepare (render messages, check them at the `Gate`, trim history by
tokens, estimate; nothing is sent if any of that fails) → `request`: cache → budget →
client → reconcile usage and cost → ledger and cache (`ipychat.engine.send`), returning
one `Exchange`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ipychat.core import pricing, providers, tokens
from ipychat.core.errors import ConfigError, ContextLengthError
from ipychat.core.hygiene import Cleaned, check_sendable
from ipychat.core.keys import Secret, cache_key
from ipychat.core.messages import build_messages, trim_history
from ipychat.core.settings import (
    LOCAL_CONTEXT_WINDOW,
    LOCAL_MODEL,
    Endpoint,
    Settings,
    check_model,
)
from ipychat.core.types import CacheMode, Estimate
from ipychat.engine.endpoint import Router
from ipychat.engine.exchange import CachedReply, Exchange, Progress
from ipychat.engine.ledger import Ledger
from ipychat.engine.prepare import Estimator, Gate, Prepared, RequestOptions, build_body

if TYPE_CHECKING:
    import httpx

    from ipychat.engine.cache import ResponseCache
    from ipychat.net.client import ChatClient

__all__ = ["CacheMode", "Engine"]

# The settings a client is made with: changing one makes a new client.
_CONNECTION = frozenset({"base_url", "api_key", "connect_timeout", "read_timeout", "reply_timeout",
                         "max_retries", "azure_api_version", "key_origins"})  # fmt: skip

_DEFAULTS = RequestOptions()  # every option from the settings (frozen: safe to share)


class Engine:
    """One kernel's request engine (see the module docstring).

    `retire(client)` is called with a client that is replaced or dropped (a setting of the
    connection changed): the owner of the loop closes it there.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        cache: ResponseCache | bool | None = True,
        retire: Callable[[ChatClient], None] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.settings.validate()
        self.usage = Ledger.kept_beside(cache, log_prompts=lambda: self.settings.log_prompts)
        self.prices = pricing.PriceTable()
        self.router = Router(self.settings)
        self.gate = Gate()
        self._transport = transport
        self._retire = retire or (lambda client: None)
        self._cache_arg = cache
        self._cache: ResponseCache | None = None
        self._cache_opened = False
        self._client: ChatClient | None = None
        self._client_key: Secret | None = None  # the key the client was made with
        self._noted_models: set[str] = set()  # asked of the local model, said once
        self._lock = threading.RLock()

    # ----- settings ------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change settings (validated as a whole first: a bad value changes nothing)."""
        if "endpoint" in changes:  # configure(endpoint="anthropic"), as %chat endpoint
            changes["base_url"] = changes.pop("endpoint")
        unknown = set(changes) - set(Settings.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"Unknown setting {sorted(unknown)[0]!r}: see %chat? for the settings."
            )
        if isinstance(changes.get("api_key"), str):
            changes["api_key"] = Secret(changes["api_key"])
        if isinstance(changes.get("key_origins"), list):
            changes["key_origins"] = tuple(changes["key_origins"])
        if isinstance(changes.get("model"), str):
            changes["model"] = check_model(changes["model"])
        if isinstance(changes.get("system"), str):  # said now, not at every request after
            check_sendable(changes["system"], "The system prompt")
        candidate = replace(self.settings, **changes)
        candidate.validate()
        with self._lock:
            self.settings = candidate
            if "api_key" in changes:
                self.router.scope_key(candidate)
            if _CONNECTION & set(changes):
                self.drop_client()

    def set_budget(self, usd: float | None) -> None:
        """Set (or with None remove) the spend budget."""
        if usd is not None and not 0 < usd < float("inf"):
            raise ConfigError(
                "The budget must be a positive number of dollars, e.g. %chat budget 5 "
                "(%chat budget off removes it)."
            )
        self.usage.budget = usd

    @property
    def redactions(self) -> Any:
        """What the `redact` setting masked so far, by kind (a Counter)."""
        return self.gate.redactions

    # ----- endpoint ------------------------------------------------------------------------

    def endpoint(self) -> Endpoint:
        """Where requests go (`ipychat.engine.endpoint` says in which order)."""
        return self.router.endpoint(self.settings)

    def key_note(self) -> str:
        """One line when the key set with %chat key stays behind at this endpoint, else ""."""
        return self.router.key_note(self.settings)

    @property
    def is_local(self) -> bool:
        """True when requests go to the embedded llama.cpp server (free, one at a time)."""
        return self.endpoint().kind == "local"

    @property
    def base_url(self) -> str:
        """The endpoint's URL as the cache and the ledger know it (stable across kernels)."""
        return self.endpoint().url

    @property
    def host(self) -> str:
        return self.router.host(self.settings)

    def cache_key(self, body: dict[str, Any], salt: str = "") -> str:
        """The cache key of a request body on this endpoint. The endpoint is its URL plus
        Azure's api-version (a query parameter the body does not carry; it can change replies);
        `salt` is what else decides a reply's use (a typed reply's `OutputSpec.digest`)."""
        version = self.settings.azure_api_version
        endpoint = f"{self.base_url}?api-version={version}" if version else self.base_url
        return cache_key(f"{endpoint}#output={salt}" if salt else endpoint, body)

    @property
    def model(self) -> str:
        """The default model: the setting, else the endpoint's own default."""
        if self.settings.model:
            return self.settings.model
        endpoint = self.endpoint()
        return LOCAL_MODEL if endpoint.kind == "local" else endpoint.default_model

    def model_label(self, model: str | None = None, answered: str | None = None) -> str:
        """The model that answers (or answered) a request for `model`, as footers, the
        ledger and the cache name it: the embedded GGUF model whatever was asked (llama.cpp
        answers every name with it and echoes the name back), else the server's own name
        for it (`answered`, the response's `model`), else `model`."""
        if self.is_local:
            from ipychat.engine import local

            # local://NAME.gguf#sha256=…: the file name, without the content digest.
            return local.model_label(self.endpoint().url.removeprefix("local://").split("#")[0])
        return answered or model or self.model

    def local_note(self, model: str) -> str | None:
        """Once per engine and model name: that the local model answers a request naming
        another model (a footer or the map's plan says so; None otherwise)."""
        if not self.is_local or model in (LOCAL_MODEL, self.model_label(model)):
            return None
        with self._lock:
            if model in self._noted_models:
                return None
            self._noted_models.add(model)
        return (
            f"{model} was not used: the local model answers every request "
            f"(set OPENAI_API_KEY or %chat endpoint URL to use {model})"
        )

    # ----- client and cache ------------------------------------------------------------------

    async def client(self) -> ChatClient:
        """The client for the current endpoint, starting the local server if it is the one."""
        endpoint = self.endpoint()
        if endpoint.kind == "local":
            from ipychat.engine import local

            # Starting takes seconds: do it off the loop so other tasks keep running.
            server = await asyncio.to_thread(local.get_server)
            # The server's own per-start key, never the user's (OPENAI_API_KEY is not for it).
            url, key = server.base_url, server.api_key
        else:  # the key meant for this endpoint only (a provider's: its own variable)
            url, key = self.router.connection(self.settings, endpoint)
        with self._lock:
            if self._client is None or self._client.base_url != url or self._client_key != key:
                self.drop_client()
                self._client_key = key
                self._client = self._new_client(url, key, endpoint.provider)
            return self._client

    def _new_client(self, url: str, key: Secret | None, provider: str) -> ChatClient:
        from ipychat.net.client import ChatClient, Timeouts

        s = self.settings
        return ChatClient(
            url,
            # Only the key meant for this endpoint; without one, the client takes
            # OPENAI_API_KEY where that key is for (OpenAI, OPENAI_BASE_URL).
            api_key=key,
            key_origins=s.key_origins,
            azure_api_version=s.azure_api_version,
            timeouts=Timeouts(
                connect=s.connect_timeout, read=s.read_timeout, reply=s.reply_timeout
            ),
            max_retries=s.max_retries,
            transport=self._transport,
            provider=provider or None,
        )

    @property
    def current_client(self) -> ChatClient | None:
        """The client made so far (None before the first request, or after a change)."""
        return self._client

    def drop_client(self) -> None:
        """Forget the client (the next request makes a new one); `retire` closes it."""
        client, self._client = self._client, None
        if client is not None:
            self._retire(client)

    def take_client(self) -> ChatClient | None:
        """Hand the client over to be closed by the caller (closing the engine)."""
        with self._lock:
            client, self._client = self._client, None
        return client

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache, opened on first use; None when disabled or unusable."""
        if not self._cache_opened:
            self._cache_opened = True
            if isinstance(self._cache_arg, bool):
                if self._cache_arg:
                    from ipychat.engine.stores.counted import open_cache

                    self._cache = open_cache()
            else:
                self._cache = self._cache_arg
        return self._cache

    @property
    def cache_opened(self) -> bool:
        """True once the cache was asked for (and opened, if it is on)."""
        return self._cache_opened

    def close_cache(self) -> None:
        """Close the cache and the usage record (its queue written); the next use opens them."""
        self.usage.close()  # its queue written to ledger.db
        if self._cache is not None:
            self._cache.close()
        self._cache, self._cache_opened = None, False

    # ----- estimates -------------------------------------------------------------------------

    def price(self, model: str) -> pricing.ModelPrice | None:
        """`model`'s price at this endpoint, from its provider's prices (local: free; None:
        unknown, never $0)."""
        free, provider = self.endpoint().prices
        return self.prices.lookup(model, is_local=free, provider=provider)

    def context_window(self, model: str) -> int:
        endpoint = self.endpoint()
        if endpoint.kind == "local":
            return LOCAL_CONTEXT_WINDOW
        return self.prices.context_window(model, provider=endpoint.prices[1])

    def count(
        self, messages: Sequence[dict[str, Any]], model: str | None = None
    ) -> tokens.TokenCount:
        """Prompt tokens by OpenAI's tokenizer (offline): approximate (≈) for other models and
        at providers whose tokenizer is not OpenAI's (`core.providers.approximate_tokens`)."""
        counted = tokens.count_messages(messages, model or self.model)
        if counted.approximate or not providers.approximate_tokens(self.endpoint().spec):
            return counted
        return replace(counted, approximate=True)

    def max_tokens(self, model: str, max_tokens: int | None) -> int:
        """The reply cap of a request: asked, else the setting, else what the model allows
        (at most half its context window)."""
        if max_tokens is not None:
            return max_tokens
        return self.settings.max_tokens or min(
            self.prices.max_output_tokens(model, provider=self.endpoint().prices[1]),
            self.context_window(model) // 2,
        )

    def estimate(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
    ) -> Estimate:
        """What sending `messages` as they are would cost (tokens, cost range, window)."""
        return self.estimator(model or self.model, max_tokens)(messages)

    def estimator(self, model: str, max_tokens: int | None) -> Estimator:
        """`estimate` for many message lists to one model: its price, context window and reply
        cap are resolved once (each resolution reads the endpoint from the environment, and
        %%chatmap estimates thousands of rows)."""
        wanted, window = self.max_tokens(model, max_tokens), self.context_window(model)
        approximate = providers.approximate_tokens(self.endpoint().spec)  # ≈ at non-OpenAI
        return Estimator(model, wanted, self.price(model), window, approximate)

    # ----- preparing a request ---------------------------------------------------------------

    def body(self, messages: list[dict[str, Any]], options: RequestOptions) -> dict[str, Any]:
        """The one body builder: `messages` with the options, settings filling the gaps."""
        model = check_model(options.model) or self.model
        temperature = options.temperature
        body = build_body(
            messages,
            model,
            temperature if temperature is not None else self.settings.temperature,
            self.max_tokens(model, options.max_tokens),
            options.extra,
        )
        return providers.adapt_body(self.endpoint().spec, body)  # the provider's quirks

    def outgoing(
        self,
        prompt: str,
        options: RequestOptions,
        history: Sequence[dict[str, Any]] = (),
        *,
        threaded: bool = True,
    ) -> Cleaned:
        """The messages of a request (system prompt, `history`, prompt) as they may leave
        the kernel: a credential-shaped text is refused unless allowed; `redact` masks."""
        system = options.system if options.system is not None else self.settings.system
        return self.gate.clean(
            build_messages(system, list(history), prompt),
            allow_secrets=options.allow_secrets,
            redact=self.settings.redact,
            threaded=threaded,
        )

    def fit_turn(
        self, cleaned: Cleaned, options: RequestOptions, *, label: str, max_cost: float | None
    ) -> Prepared:
        """A conversation turn (`outgoing` with its thread's history) trimmed to fit the
        context window, oldest turns first; `Prepared.thread` is for the caller to set."""
        messages = cleaned.messages
        prompt = messages[-1]["content"]
        model = check_model(options.model) or self.model
        wanted = self.max_tokens(model, options.max_tokens)
        window = self.context_window(model)
        limit = self.settings.max_input_tokens
        if limit is not None:
            own = self.count(build_messages(None, [], prompt), model).tokens
            if own > limit:
                raise ContextLengthError(
                    f"The prompt has {own:,} tokens, over max_input_tokens {limit:,}. Shorten it "
                    "or raise the limit with %config ChatMagics.max_input_tokens."
                )
        budget = min(window - wanted, limit) if limit is not None else window - wanted
        if budget <= 0:
            raise ContextLengthError(
                f"max_tokens {wanted:,} leaves no room for the prompt in the {window:,}-token "
                f"context of {model}. Lower --max-tokens."
            )
        messages, dropped = trim_history(messages, budget, lambda m: self.count(m, model).tokens)
        body = self.body(messages, options)
        estimate = self.estimate(messages, model=model, max_tokens=wanted)
        return Prepared(prompt, None, body, estimate, dropped, max_cost, label, cleaned.note)

    def prepare_one(
        self, prompt: str, options: RequestOptions = _DEFAULTS, *, label: str = "map"
    ) -> Prepared:
        """A request outside any thread (no history), e.g. one row of %%chatmap. No
        trimming: a prompt that does not fit the context window raises ContextLengthError."""
        cleaned = self.outgoing(prompt, options, threaded=False)
        body = self.body(cleaned.messages, options)
        return self.prepare_body(
            cleaned.messages[-1]["content"], body, label=label, masked=cleaned.note
        )

    def one_body(self, prompt: str, options: RequestOptions = _DEFAULTS) -> dict[str, Any]:
        """The body `prepare_one` sends for a prompt already cleaned (`clean_prompt`); the
        system prompt is checked and cleaned here, nothing is counted (%%chatmap builds one,
        then its rows' bodies from it)."""
        head = self.outgoing("", options, threaded=False).messages[:-1]
        return self.body([*head, {"role": "user", "content": prompt}], options)

    def clean_prompt(self, prompt: str, allow_secrets: bool) -> tuple[str, str]:
        """A map row's prompt as it may leave the kernel (the `Gate`), and what was masked."""
        cleaned = self.gate.clean(
            [{"role": "user", "content": prompt}],
            allow_secrets=allow_secrets,
            redact=self.settings.redact,
            threaded=False,
        )
        return cleaned.messages[0]["content"], cleaned.note

    def prepare_body(
        self,
        prompt: str,
        body: dict[str, Any],
        *,
        label: str = "map",
        masked: str = "",
        estimator: Estimator | None = None,
    ) -> Prepared:
        """`prepare_one` for a body built around the cleaned `prompt` (`one_body`):
        estimated (by `estimator`, made by `self.estimator` for the body's model and
        max_tokens, when many bodies share them), and checked to fit the context window
        (ContextLengthError if not)."""
        model, wanted = body["model"], body["max_tokens"]
        estimate = (estimator or self.estimator(model, wanted))(body["messages"])
        window = estimate.context_window
        if estimate.prompt_tokens + wanted > window:
            raise ContextLengthError(
                f"A prompt of {estimate.prompt_tokens:,} tokens plus {wanted:,} reply tokens does "
                f"not fit the {window:,}-token context of {model}. Shorten it or lower max_tokens."
            )
        return Prepared(
            prompt=prompt, thread=None, body=body, estimate=estimate, label=label, masked=masked
        )

    # ----- sending ---------------------------------------------------------------------------

    def from_cache(
        self,
        entry: CachedReply | dict[str, Any],
        *,
        key: str,
        request_model: str,
        label: str,
        latency: float = 0.0,
        prepared: Prepared | None = None,
    ) -> Exchange:
        """A cache entry for a request naming `request_model`, as the Exchange it replays
        (the one place a cache hit becomes a Reply)."""
        return Exchange.from_cache(
            entry,
            key=key,
            request_model=request_model,
            host=self.host,
            model=self.model_label(request_model, entry.get("model")),
            price=self.price(request_model),
            label=label,
            latency=latency,
            dropped_turns=prepared.dropped_turns if prepared else 0,
            masked=prepared.masked if prepared else "",
        )

    async def request(
        self,
        prepared: Prepared,
        progress: Progress | None = None,
        *,
        stream: bool = False,
        cache: CacheMode = "use",
        on_delta: Callable[[str], None] | None = None,
        reserve: bool = True,
        max_retries: int | None = None,
        write_cache: bool = True,
        key: str | None = None,
    ) -> Exchange:
        """Send a prepared request through cache, budget, client and ledger.

        `reserve=False` is for callers that reserved the budget of a whole batch up front
        (%%chatmap); `max_retries` overrides the client's (0: the caller retries). With
        `write_cache=False` the caller stores `exchange.to_cache()` when `exchange.store`
        (in batches: `ResponseCache.set_many`). A cancel records what arrived (ledger,
        `progress.reply`) before CancelledError propagates; a ChatError is in the ledger.
        `key` is `cache_key(prepared.body)` when the caller has it already (%%chatmap's plan
        keyed every row at once).
        """
        from ipychat.engine import send

        return await send.request(
            self,
            prepared,
            progress or Progress(),
            send.Sending(stream, cache, on_delta, reserve, max_retries, write_cache, key),
        )
