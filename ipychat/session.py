"""The kernel-scoped ChatSession: settings, threads, client, cache, ledger, private loop.

The magics, the panel and plain Python share the one session `get_session()` returns. This
module imports neither IPython nor ipywidgets, so the whole engine runs in a script or CI.

A request goes: prepare (render messages, trim history by tokens, estimate, budget check;
nothing is sent if any of that fails) → cache → client → reconcile usage and cost → ledger,
cache, thread history, listeners.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ipychat.core import pricing, tokens
from ipychat.core.errors import ChatError, ConfigError, ContextLengthError, OfflineCacheMiss
from ipychat.core.hygiene import Cleaned, check_sendable, clean_messages
from ipychat.core.keys import Secret, cache_key
from ipychat.core.messages import Thread, build_messages, trim_history
from ipychat.core.runner import LoopThread
from ipychat.core.settings import (
    DEFAULT_MODEL,
    LOCAL,
    LOCAL_CONTEXT_WINDOW,
    LOCAL_MODEL,
    OPENAI_URL,
    Endpoint,
    Settings,
    check_model,
    origin,
)
from ipychat.core.types import CacheMode, Completion, Estimate, Reply, Usage
from ipychat.engine.ledger import Ledger, LedgerRow, max_tokens_within
from ipychat.streaming import Progress, ReplyStream, interrupted

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from ipychat.engine.cache import ResponseCache
    from ipychat.net.client import ChatClient

__all__ = ["ChatSession", "Event", "Settings", "get_session", "reset_session"]

T = TypeVar("T")
# Set by `ChatSession.allowing_secrets()` (e.g. %%chatmap --allow-secrets): prompts that hold
# something shaped like a credential are sent anyway.
_ALLOW_SECRETS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ipychat_allow_secrets", default=False
)


@dataclass(frozen=True)
class Event:
    """What listeners (the panel) hear: kind is start | delta | reply | error | settings | threads."""

    kind: str
    thread: str = ""
    text: str = ""
    reply: Reply | None = None


@dataclass
class Prepared:
    """A request ready to send: nothing has left the kernel yet."""

    prompt: str
    thread: Thread | None  # None: a one-off request (a %%chatmap row) outside any thread
    body: dict[str, Any]
    estimate: Estimate
    dropped_turns: int = 0
    max_cost: float | None = None
    label: str = "main"  # the ledger's thread column
    masked: str = ""  # what the redact setting masked in the prompt ("" when nothing)


class ChatSession:
    """The one conversation engine of a kernel (see module docstring)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        cache: ResponseCache | bool | None = True,
    ) -> None:
        self.settings = settings or Settings()
        self.settings.validate()
        self.threads: dict[str, Thread] = {"main": Thread("main")}
        self.current_thread = "main"
        self.usage = Ledger()
        self.prices = pricing.PriceTable()
        self.last_reply: Reply | None = None
        self._transport = transport
        self._cache_arg = cache
        self._cache: ResponseCache | None = None
        self._cache_opened = False
        self._client_key: Secret | None = None  # the key the client was made with
        # The loop thread and the client, released when the session is collected unclosed
        # (a session made in a function): else aiohttp warns "Unclosed client session" and
        # the loop thread runs on with nobody to stop it.
        self._owned = _Owned()
        weakref.finalize(self, self._owned.release)
        self._local_available: bool | None = None
        self._local_memo: tuple[str | None, Path | None] | None = None
        self._runner = self._owned.runner
        _live.add(self)  # closed at exit, if the owner did not (see _close_at_exit)
        self._listeners: list[Callable[[Event], None]] = []
        self._lock = threading.RLock()
        self.redactions: Counter[str] = Counter()  # what `redact` masked, by kind, so far
        # Texts sent on an explicit --allow-secrets: resent as history, they are not refused.
        self._allowed_texts: set[str] = set()
        # The endpoint (origin) the explicit key was given for: it is sent only there.
        self._key_origin: str | None = (
            self._safe_origin() if self.settings.api_key is not None else None
        )
        self._noted_models: set[str] = set()  # asked of the local model, said once (local_note)

    @property
    def _client(self) -> ChatClient | None:
        return self._owned.client

    @_client.setter
    def _client(self, client: ChatClient | None) -> None:
        self._owned.client = client

    # ----- settings, threads, listeners -------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change settings (validated as a whole first: a bad value changes nothing)."""
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
        connection = {
            "base_url",
            "api_key",
            "connect_timeout",
            "read_timeout",
            "reply_timeout",
            "max_retries",
            "azure_api_version",
            "key_origins",
        }
        with self._lock:
            self.settings = candidate
            if changes.get("api_key") is not None:
                self._key_origin = self._safe_origin()
            elif "api_key" in changes:
                self._key_origin = None
            if connection & set(changes):
                self._drop_client()
        self._emit(Event("settings"))

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call `listener(event)` on every request event and change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken view must not break the request
                import logging

                logging.getLogger("ipychat").exception("listener failed on %s", event.kind)

    def thread(self, name: str | None = None, *, create: bool = True) -> Thread:
        name = name or self.current_thread
        if name not in self.threads:
            _check_thread_name(name)
            if not create:
                known = ", ".join(sorted(self.threads))
                raise ConfigError(
                    f"No thread named {name!r}; threads: {known}. Start it with --thread {name}."
                )
            self.threads[name] = Thread(name)
            self._emit(Event("threads", thread=name))
        return self.threads[name]

    def switch_thread(self, name: str) -> Thread:
        thread = self.thread(name)
        self.current_thread = name
        self._emit(Event("threads", thread=name))
        return thread

    def reset(self, name: str | None = None) -> None:
        """Forget the messages of a thread (the current one by default)."""
        self.thread(name, create=False).clear()
        self._emit(Event("threads", thread=name or self.current_thread))

    # ----- endpoint, client, cache ---------------------------------------------------------

    def endpoint(self) -> Endpoint:
        """Where requests go, resolved in this order: an explicit endpoint (`%chat endpoint`,
        "local" included), OPENAI_BASE_URL, OpenAI when a key is set, the embedded local
        model when its extra is installed, else nothing (a request then says how to fix it)."""
        url = self.settings.base_url or os.environ.get("OPENAI_BASE_URL")
        if url == LOCAL:
            return self._local_endpoint()
        if url:
            return Endpoint("custom", url.rstrip("/"))
        has_key = self.settings.api_key is not None or any(
            os.environ.get(name) for name in ("OPENAI_API_KEY", "OPENAI_API_KEYS")
        )
        if has_key:
            return Endpoint("openai", OPENAI_URL)
        if self._local_available is None:
            from ipychat.engine import local

            self._local_available = local.available()
        return self._local_endpoint() if self._local_available else Endpoint("none", OPENAI_URL)

    def _endpoint_origin(self) -> str | None:
        """scheme://host:port of where requests go now (None: the local model, or none)."""
        endpoint = self.endpoint()
        return None if endpoint.kind == "local" else origin(endpoint.url)

    def _safe_origin(self) -> str | None:
        """`_endpoint_origin`, or None while the endpoint is unusable (OPENAI_BASE_URL that
        is not a URL): a key set then goes nowhere, and the request says what is wrong."""
        try:
            return self._endpoint_origin()
        except ConfigError:
            return None

    def _explicit_key(self) -> Secret | None:
        """The key set with %chat key / configure(api_key=...), if it may go where requests
        go now: the endpoint it was given for, or one the user allowed (key_origins)."""
        key = self.settings.api_key
        if key is None:
            return None
        here = self._endpoint_origin()
        if here is not None and (here == self._key_origin or here in self.settings.key_origins):
            return key
        return None

    def key_note(self) -> str:
        """One line when the key set with %chat key stays behind at this endpoint, else ""."""
        if self.settings.api_key is None or self._key_origin is None:
            return ""
        here = self._endpoint_origin()
        if here is None or self._explicit_key() is not None:
            return ""
        home = self._key_origin.split("://", 1)[1]
        return (
            f"the API key set with %chat key is for {home} and is not sent here: run "
            "%chat key to give this endpoint its own, or add --send-key to send that one."
        )

    def _local_endpoint(self) -> Endpoint:
        from ipychat.engine import local

        # Finding the model file reads package metadata: remember it per model setting.
        chosen = os.environ.get("IPYCHAT_LOCAL_MODEL")
        if self._local_memo is None or self._local_memo[0] != chosen:
            self._local_memo = (chosen, local.model_path())
        # Named by content (a remembered sha256), so another file with the same name never
        # shares this one's cache entries.
        return Endpoint("local", local.endpoint_url(self._local_memo[1]))

    @property
    def is_local(self) -> bool:
        """True when requests go to the embedded llama.cpp server (free, one at a time)."""
        return self.endpoint().kind == "local"

    @property
    def base_url(self) -> str:
        """The endpoint's URL as the cache and the ledger know it (stable across kernels)."""
        return self.endpoint().url

    def cache_key(self, body: dict[str, Any]) -> str:
        """The cache key of a request body on this endpoint. The endpoint is its URL plus
        Azure's api-version (a query parameter the body does not carry; it can change replies)."""
        version = self.settings.azure_api_version
        endpoint = f"{self.base_url}?api-version={version}" if version else self.base_url
        return cache_key(endpoint, body)

    @property
    def host(self) -> str:
        endpoint = self.endpoint()
        if endpoint.kind == "local":
            return "local model"
        parts = urlsplit(endpoint.url)  # hostname and port only: never user:password@
        return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or endpoint.url

    @property
    def model(self) -> str:
        """The default model: the setting, else the endpoint's own default."""
        if self.settings.model:
            return self.settings.model
        return LOCAL_MODEL if self.is_local else DEFAULT_MODEL

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
        """Once per session and model name: that the local model answers a request naming
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

    async def client(self) -> ChatClient:
        """The client for the current endpoint, starting the local server if it is the one."""
        endpoint = self.endpoint()
        if endpoint.kind == "none":
            from ipychat.engine.local import NOT_CONFIGURED

            raise ConfigError(NOT_CONFIGURED)
        url, key = endpoint.url, self._explicit_key()
        if endpoint.kind == "local":
            from ipychat.engine import local

            # Starting takes seconds: do it off the loop so other tasks keep running.
            server = await asyncio.to_thread(local.get_server)
            # The server's own per-start key, never the user's (OPENAI_API_KEY is not for it).
            url, key = server.base_url, server.api_key
        with self._lock:
            if self._client is None or self._client.base_url != url or self._client_key != key:
                from ipychat.net.client import ChatClient, Timeouts

                self._drop_client()
                s = self.settings
                self._client_key = key
                self._client = ChatClient(
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
                )
            return self._client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._runner.running:
            self._runner.submit(client.aclose())

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache, opened on first use; None when disabled or unusable."""
        if not self._cache_opened:
            self._cache_opened = True
            if isinstance(self._cache_arg, bool):
                if self._cache_arg:
                    from ipychat.engine.cache import ResponseCache

                    self._cache = ResponseCache()
            else:
                self._cache = self._cache_arg
        return self._cache

    # ----- estimates -------------------------------------------------------------------------

    def _price(self, model: str) -> pricing.ModelPrice | None:
        return self.prices.lookup(model, is_local=self.is_local)

    def _context_window(self, model: str) -> int:
        if self.is_local:
            return LOCAL_CONTEXT_WINDOW
        return self.prices.context_window(model)

    def count(
        self, messages: Sequence[dict[str, Any]], model: str | None = None
    ) -> tokens.TokenCount:
        return tokens.count_messages(messages, model or self.model)

    def estimate(
        self,
        prompt_or_messages: str | Sequence[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        thread: str | None = None,
        system: str | None = None,
    ) -> Estimate:
        """What sending would cost: a prompt is estimated with the thread's history and the
        system prompt, as it would be sent; a message list as it is."""
        model = model or self.model
        if isinstance(prompt_or_messages, str):
            history = (
                self.threads[thread or self.current_thread].messages
                if (thread or self.current_thread) in self.threads
                else []
            )
            messages = build_messages(
                system if system is not None else self.settings.system, history, prompt_or_messages
            )
        else:
            messages = list(prompt_or_messages)
        return self._estimate(messages, model, self._max_tokens(model, max_tokens))

    def _max_tokens(self, model: str, max_tokens: int | None) -> int:
        if max_tokens is not None:
            return max_tokens
        return self.settings.max_tokens or min(
            self.prices.max_output_tokens(model), self._context_window(model) // 2
        )

    def _estimate(
        self, messages: Sequence[dict[str, Any]], model: str, max_tokens: int
    ) -> Estimate:
        counted = self.count(messages, model)
        price = self._price(model)
        low, high, batch = pricing.estimate_cost_range(counted.tokens, max_tokens, price)
        return Estimate(
            model=model,
            messages=len(messages),
            prompt_tokens=counted.tokens,
            max_completion_tokens=max_tokens,
            approximate=counted.approximate,
            cost_low=low,
            cost_high=high,
            cost_batch=batch,
            context_window=self._context_window(model),
        )

    # ----- preparing a request --------------------------------------------------------------

    def prepare(
        self,
        prompt: str,
        *,
        thread: str | None = None,
        model: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        max_cost: float | None = None,
        new: bool = False,
        allow_secrets: bool = False,
    ) -> Prepared:
        """Build, trim and estimate a request without sending it (what --dry-run shows).

        A prompt holding something shaped like a credential is refused (SecretInPromptError)
        unless `allow_secrets`; with the `redact` setting, personal data is masked first.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ChatError("The prompt is empty: write something in the cell below %%chat.")
        model = check_model(model) or self.model
        if temperature is not None and not 0 <= temperature <= 2:
            raise ConfigError(f"temperature must be between 0 and 2, not {temperature}.")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive whole number, not {max_tokens}.")
        if max_cost is not None and not 0 <= max_cost < float("inf"):
            raise ConfigError(f"max cost must be a number of dollars ≥ 0, not {max_cost}.")
        name = thread or self.current_thread
        existing = self.threads.get(name)
        history = [] if new or existing is None else existing.messages
        cleaned = self._outgoing(
            build_messages(system if system is not None else self.settings.system, history, prompt),
            allow_secrets,
        )
        messages = cleaned.messages
        prompt = messages[-1]["content"]
        the_thread = self.thread(name)  # created only once the prompt may leave
        wanted = self._max_tokens(model, max_tokens)
        window = self._context_window(model)
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
        body: dict[str, Any] = {"model": model, "messages": messages}
        temp = temperature if temperature is not None else self.settings.temperature
        if temp is not None:
            body["temperature"] = temp
        body["max_tokens"] = wanted
        return Prepared(
            prompt=prompt,
            thread=the_thread,
            body=body,
            estimate=self._estimate(messages, model, wanted),
            dropped_turns=dropped,
            max_cost=max_cost,
            label=the_thread.name,
            masked=cleaned.note,
        )

    def _outgoing(
        self, messages: list[dict[str, Any]], allow_secrets: bool, *, threaded: bool = True
    ) -> Cleaned:
        """The one place a request's messages are checked before they may leave the kernel:
        every text the user wrote (system prompt, history, prompt; map rows and their
        --fill-null values are prompts too) passes `ipychat.core.hygiene.clean_messages`."""
        allow = allow_secrets or _ALLOW_SECRETS.get()
        cleaned = clean_messages(
            messages,
            allow_secrets=allow,
            redact=self.settings.redact,
            allowed=self._allowed_texts,
        )
        with self._lock:
            if cleaned.counts:
                self.redactions.update(cleaned.counts)
            if allow and threaded:  # vouched for by the user: later turns resend them
                self._allowed_texts.update(
                    m["content"]
                    for m in cleaned.messages
                    if m.get("role") in ("system", "user") and isinstance(m.get("content"), str)
                )
        return cleaned

    @contextlib.contextmanager
    def allowing_secrets(self, allow: bool = True) -> Iterator[None]:
        """Within the block, prompts shaped like credentials are sent (%%chatmap --allow-secrets)."""
        token = _ALLOW_SECRETS.set(allow)
        try:
            yield
        finally:
            _ALLOW_SECRETS.reset(token)

    def prepare_one(
        self,
        prompt: str,
        *,
        model: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        label: str = "map",
        extra: dict[str, Any] | None = None,
        allow_secrets: bool = False,
    ) -> Prepared:
        """A request outside any thread (no history), e.g. one row of %%chatmap.

        `extra` adds body fields such as `response_format`. No trimming: a prompt that does
        not fit the context window raises ContextLengthError. Secrets and redaction as in
        `prepare`.
        """
        model = check_model(model) or self.model
        cleaned = self._outgoing(
            build_messages(system if system is not None else self.settings.system, [], prompt),
            allow_secrets,
            threaded=False,
        )
        body = self._body(cleaned.messages, model, temperature, max_tokens, extra)
        return self.prepare_body(
            cleaned.messages[-1]["content"], body, label=label, masked=cleaned.note
        )

    def one_body(
        self,
        prompt: str,
        *,
        model: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        extra: dict[str, Any] | None = None,
        allow_secrets: bool = False,
    ) -> dict[str, Any]:
        """The body `prepare_one` sends for a prompt already cleaned (`clean_prompt`); the
        system prompt is checked and cleaned here, nothing is counted (%%chatmap builds one,
        then its rows' bodies from it)."""
        model = check_model(model) or self.model
        messages = build_messages(system if system is not None else self.settings.system, [], "")
        head = self._outgoing(messages[:-1], allow_secrets, threaded=False).messages
        return self._body(
            [*head, {"role": "user", "content": prompt}], model, temperature, max_tokens, extra
        )

    def clean_prompt(self, prompt: str, allow_secrets: bool) -> tuple[str, str]:
        """A map row's prompt as it may leave the kernel (`_outgoing`), and what was masked."""
        cleaned = self._outgoing(
            [{"role": "user", "content": prompt}], allow_secrets, threaded=False
        )
        return cleaned.messages[0]["content"], cleaned.note

    def _body(
        self,
        messages: list[dict[str, Any]],
        model: str,
        temperature: float | None,
        max_tokens: int | None,
        extra: dict[str, Any] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": messages}
        temp = temperature if temperature is not None else self.settings.temperature
        if temp is not None:
            body["temperature"] = temp
        body["max_tokens"] = self._max_tokens(model, max_tokens)
        body.update(extra or {})
        return body

    def prepare_body(
        self, prompt: str, body: dict[str, Any], *, label: str = "map", masked: str = ""
    ) -> Prepared:
        """`prepare_one` for a body built around the cleaned `prompt` (`one_body`):
        estimated, and checked to fit the context window (ContextLengthError if not)."""
        model, wanted = body["model"], body["max_tokens"]
        estimate = self._estimate(body["messages"], model, wanted)
        window = self._context_window(model)
        if estimate.prompt_tokens + wanted > window:
            raise ContextLengthError(
                f"A prompt of {estimate.prompt_tokens:,} tokens plus {wanted:,} reply tokens does "
                f"not fit the {window:,}-token context of {model}. Shorten it or lower max_tokens."
            )
        return Prepared(
            prompt=prompt, thread=None, body=body, estimate=estimate, label=label, masked=masked
        )

    # ----- sending ------------------------------------------------------------------------------

    async def request(
        self,
        prepared: Prepared,
        progress: Progress | None = None,
        *,
        stream: bool = False,
        cache: CacheMode = "use",
        on_delta: Callable[[str], None] | None = None,
        new: bool = False,
        reserve: bool = True,
        max_retries: int | None = None,
        cache_writes: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> Reply:
        """Send a prepared request through cache, budget, client and ledger; runs on the loop.

        A threaded request is remembered in its thread (interrupted ones too, with what
        arrived). `reserve=False` is for callers that reserved the budget of a whole batch
        up front (%%chatmap); `max_retries` overrides the client's (0: the caller retries).
        With `cache_writes`, the reply's cache entry is appended there for the caller to
        store in batches (`ResponseCache.set_many`) instead of being written at once.
        """
        thread = prepared.thread
        args = (
            prepared,
            progress,
            stream,
            cache,
            on_delta,
            new,
            reserve,
            max_retries,
            cache_writes,
        )
        if thread is None:
            return await self._request(*args)
        self._emit(Event("start", thread=thread.name, text=prepared.prompt))
        try:
            return await self._request(*args)
        except ChatError as exc:  # every view that saw "start" hears how it ended
            self._emit(Event("error", thread=thread.name, text=str(exc)))
            raise

    async def _request(
        self,
        prepared: Prepared,
        progress: Progress | None,
        stream: bool,
        cache: CacheMode,
        on_delta: Callable[[str], None] | None,
        new: bool,
        reserve: bool,
        max_retries: int | None,
        cache_writes: list[tuple[str, dict[str, Any]]] | None,
    ) -> Reply:
        progress = progress or Progress()
        body, thread, model = prepared.body, prepared.thread, prepared.body["model"]
        key = self.cache_key(body)
        store = self.cache if cache != "off" and self.settings.cache else None
        if store is not None and cache == "use":
            hit = store.get(key)
            if hit is not None:
                return self._finish_cached(prepared, hit, progress, new)
        if self.settings.offline:
            raise OfflineCacheMiss(
                "Offline mode: this request is not in the cache. Run it once online, or turn "
                "offline mode off with %chat offline off (or unset IPYCHAT_OFFLINE)."
            )
        held = (
            self.usage.reserve(
                prepared.estimate.cost_high, max_cost=prepared.max_cost, fit=self._fit(prepared)
            )
            if reserve
            else 0.0
        )

        def delta(text: str) -> None:
            if progress.first_token is None:
                progress.first_token = time.monotonic() - progress.started
            progress.parts.append(text)
            if on_delta is not None:
                on_delta(text)
            if thread is not None:
                self._emit(Event("delta", thread=thread.name, text=text))

        try:
            completion = await (await self.client()).chat(
                body, stream=stream, on_delta=delta, max_retries=max_retries
            )
        except asyncio.CancelledError:
            reply = self._reply(
                prepared, Completion(progress.text, model), progress, interrupted=True
            )
            self.usage.settle(held, self._row(prepared, reply, outcome="interrupted"))
            self._remember(prepared, reply, new)
            progress.reply = reply
            raise
        except ChatError as exc:
            failed = Reply(text="", model=self.model_label(model), thread=prepared.label)
            self.usage.settle(held, self._row(prepared, failed, outcome="error", error=str(exc)))
            raise
        reply = self._reply(prepared, completion, progress)
        self.usage.settle(held, self._row(prepared, reply))
        if store is not None:
            entry = (key, _cache_value(reply, self.host, model))
            if cache_writes is not None:
                cache_writes.append(entry)
            else:
                store.set(*entry)
        self._remember(prepared, reply, new)
        return reply

    def _fit(self, prepared: Prepared) -> Callable[[float], str | None]:
        """For a budget refusal: the --max-tokens that would bring this request under a limit."""

        def fit(limit: float) -> str | None:
            price = self._price(prepared.body["model"])
            estimate = prepared.estimate
            if price is None:
                return None
            n = max_tokens_within(limit, estimate.prompt_tokens, 1, price.input, price.output)
            return f"--max-tokens {n}" if 1 <= n < estimate.max_completion_tokens else None

        return fit

    def _reply(
        self,
        prepared: Prepared,
        completion: Completion,
        progress: Progress,
        *,
        interrupted: bool = False,
    ) -> Reply:
        model = prepared.body["model"]
        usage = completion.usage
        if usage is None:  # llama.cpp streams, interrupted requests: count it ourselves
            usage = Usage(
                prompt_tokens=prepared.estimate.prompt_tokens,
                completion_tokens=tokens.count_text(completion.text, model),
                estimated=True,
            )
        answered = self.model_label(model, completion.model)
        return Reply(
            text=completion.text,
            model=answered,
            usage=usage,
            cost=pricing.cost(usage, self._price(answered) or self._price(model)),
            latency=completion.latency or (time.monotonic() - progress.started),
            finish_reason=completion.finish_reason,
            thread=prepared.label,
            interrupted=interrupted,
            dropped_turns=prepared.dropped_turns,
            time_to_first_token=completion.time_to_first_token or progress.first_token,
            retries=completion.retries,
            extra=_extra(prepared, completion, self.local_note(model)),
        )

    def _finish_cached(
        self, prepared: Prepared, hit: dict[str, Any], progress: Progress, new: bool
    ) -> Reply:
        model = prepared.body["model"]
        usage = Usage(**hit["usage"]) if hit.get("usage") else None
        saved = pricing.cost(usage, self._price(model)) if usage else None
        reply = Reply(
            text=hit["text"],
            model=self.model_label(model, hit.get("model")),
            usage=usage,
            cost=0.0,
            cached=True,
            saved=saved,
            latency=time.monotonic() - progress.started,
            finish_reason=hit.get("finish_reason"),
            thread=prepared.label,
            dropped_turns=prepared.dropped_turns,
            extra={"masked": prepared.masked} if prepared.masked else {},
        )
        if self.cache is not None:
            self.cache.record_hit(saved)
        self.usage.record(self._row(prepared, reply))
        self._remember(prepared, reply, new)
        return reply

    def _row(
        self, prepared: Prepared, reply: Reply, *, outcome: str = "ok", error: str | None = None
    ) -> LedgerRow:
        usage = reply.usage or Usage(prompt_tokens=prepared.estimate.prompt_tokens, estimated=True)
        return LedgerRow(
            time=time.time(),
            thread=prepared.label,
            model=reply.model,  # the model that answered (model_label), not the one named
            host=self.host,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost=reply.cost if outcome != "error" else 0.0,
            saved=reply.saved,
            cached=reply.cached,
            estimated=usage.estimated,
            latency=reply.latency,
            time_to_first_token=reply.time_to_first_token,
            retries=reply.retries,
            outcome=outcome,
            error=error,
        )

    def _remember(self, prepared: Prepared, reply: Reply, new: bool) -> None:
        thread = prepared.thread
        if thread is None:  # one-off requests leave no history
            return
        with self._lock:
            if new:
                thread.clear()
            thread.add_turn(prepared.prompt, reply.text)
            self.last_reply = reply
        self._emit(Event("reply", thread=thread.name, text=reply.text, reply=reply))

    # ----- public request API ------------------------------------------------------------------

    async def _ask(
        self,
        prompt: str,
        progress: Progress,
        *,
        stream: bool,
        cache: CacheMode | bool,
        on_delta: Callable[[str], None] | None,
        new: bool,
        **options: Any,
    ) -> Reply:
        prepared = self.prepare(prompt, new=new, **options)
        progress.estimate = prepared.estimate
        mode: CacheMode = "use" if cache is True else "off" if cache is False else cache
        return await self.request(
            prepared, progress, stream=stream, cache=mode, on_delta=on_delta, new=new
        )

    def ask(
        self,
        prompt: str,
        *,
        thread: str | None = None,
        model: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream: bool = False,
        cache: CacheMode | bool = True,
        max_cost: float | None = None,
        new: bool = False,
        on_delta: Callable[[str], None] | None = None,
        allow_secrets: bool = False,
    ) -> Reply:
        """Send `prompt` on a thread and wait for the reply. `cache`: True/"use", "refresh"
        (skip the read, store the new reply) or False/"off". Ctrl-C raises Interrupted, whose
        `.reply` holds what arrived. A prompt shaped like a credential is refused unless
        `allow_secrets`."""
        progress = Progress()
        coro = self._ask(
            prompt,
            progress,
            stream=stream,
            cache=cache,
            on_delta=on_delta,
            new=new,
            thread=thread,
            model=model,
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            max_cost=max_cost,
            allow_secrets=allow_secrets,
        )
        try:
            return self._runner.run(coro)
        except KeyboardInterrupt:
            raise interrupted(progress) from None

    async def aask(self, prompt: str, **options: Any) -> Reply:
        """`ask` for code that awaits; the request still runs on the session's own loop."""
        progress = Progress()
        stream = options.pop("stream", False)
        cache = options.pop("cache", True)
        on_delta = options.pop("on_delta", None)
        new = options.pop("new", False)
        future = self._runner.submit(
            self._ask(
                prompt, progress, stream=stream, cache=cache, on_delta=on_delta, new=new, **options
            )
        )
        return await asyncio.wrap_future(future)

    def stream(self, prompt: str, **options: Any) -> ReplyStream:
        """Iterate over the text deltas of a streamed reply; `.reply` is the Reply afterwards."""
        return ReplyStream(self, prompt, options)

    def models(self) -> list[str]:
        """The model ids the endpoint lists."""
        return self._runner.run(self.amodels())

    async def amodels(self) -> list[str]:
        return await (await self.client()).models()

    # ----- the private loop, for views that must not block the kernel ------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The session's own event loop (running in its daemon thread)."""
        return self._runner.loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the session's loop without waiting (the panel, %%chatmap)."""
        return self._runner.submit(coro)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the session's loop and wait; Ctrl-C cancels it, then re-raises."""
        return self._runner.run(coro)

    def set_budget(self, usd: float | None) -> None:
        """Set (or with None remove) the spend budget of this session."""
        if usd is not None and not 0 < usd < float("inf"):
            raise ConfigError(
                "The budget must be a positive number of dollars, e.g. %chat budget 5 "
                "(%chat budget off removes it)."
            )
        self.usage.budget = usd
        self._emit(Event("settings"))

    def close(self) -> None:
        """Release connections and the loop thread (the session is usable again afterwards)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._runner.running:
            with contextlib.suppress(Exception):
                self._runner.submit(client.aclose()).result(5)
        self._runner.stop()
        if self._cache is not None:
            self._cache.close()
        self._cache, self._cache_opened = None, False

    def map(
        self,
        df: Any,
        template: str,
        output: str | Sequence[str] = "col",
        *,
        allow_secrets: bool = False,
        batch: bool = False,
        **options: Any,
    ) -> Any:
        """Fill `template`'s {column} placeholders from each row of `df`, send the prompts in
        parallel at the server's pace, and return the DataFrame (pandas or polars, as given)
        with each reply in `output`, failures in `_error`; `dry_run=True` returns the plan.
        Options and behaviour: `ipychat.map.job` (the same as %%chatmap's flags).
        `batch=True` sends the rows through the provider's Batch API: `ipychat.map.batch`."""
        from ipychat.map import job as chatmap

        engine: Any = chatmap
        if batch:
            from ipychat.map import batch as engine
        with self.allowing_secrets(allow_secrets):
            return engine.map_frame(self, df, template, output, **options)

    async def amap(
        self,
        df: Any,
        template: str,
        output: str | Sequence[str] = "col",
        *,
        allow_secrets: bool = False,
        batch: bool = False,
        **options: Any,
    ) -> Any:
        """`map` for code that awaits; the requests still go from the session's own loop."""
        from ipychat.map import job as chatmap

        engine: Any = chatmap
        if batch:
            from ipychat.map import batch as engine
        with self.allowing_secrets(allow_secrets):
            return await engine.amap_frame(self, df, template, output, **options)


def _check_thread_name(name: Any) -> None:
    """A thread's name is shown in cells, the panel and the ledger: printable text only."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > 200
        or not name.isprintable()
        or any(0xD800 <= ord(c) <= 0xDFFF for c in name)
    ):
        raise ConfigError(
            f"{name!r} cannot name a thread: use a short printable name such as 'draft'."
        )


class _Owned:
    """What a session owns and must release even when nobody closes it: its loop thread and
    its client. It holds nothing of the session, so the session's finalizer can use it."""

    def __init__(self) -> None:
        self.runner = LoopThread()
        self.client: ChatClient | None = None

    def release(self) -> None:
        """Close the client on its loop, then stop the loop (from any thread)."""
        if self.runner.in_loop_thread:
            # Collected on the loop's own thread: it cannot wait for itself.
            threading.Thread(target=self.release, name="ipychat-release").start()
            return
        client, self.client = self.client, None
        if client is not None and self.runner.running:
            with contextlib.suppress(Exception):
                self.runner.submit(client.aclose()).result(5)
        self.runner.stop()


def _extra(prepared: Prepared, completion: Completion, note: str | None) -> dict[str, Any]:
    """What a Reply carries beyond the basics: what the redact setting masked, the response's
    x-ratelimit-* headers (which calibrate %%chatmap's limiter), and a note for the footer
    (the local model answered a request naming another model)."""
    extra: dict[str, Any] = {}
    if prepared.masked:
        extra["masked"] = prepared.masked
    if note:
        extra["note"] = note
    if completion.rate_limit is not None:
        extra["rate_limit"] = completion.rate_limit
    return extra


def _cache_value(reply: Reply, host: str, request_model: str) -> dict[str, Any]:
    usage = reply.usage
    return {
        "text": reply.text,
        "model": reply.model,
        "request_model": request_model,  # what `%chat cache clear --model` matches
        "finish_reason": reply.finish_reason,
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_tokens": usage.cached_tokens,
            "estimated": usage.estimated,
        },
        "cost": reply.cost,
        "created": time.time(),
        "host": host,
    }


_session: ChatSession | None = None
_session_lock = threading.Lock()


def get_session() -> ChatSession:
    """The one ChatSession of this kernel."""
    global _session
    with _session_lock:
        if _session is None:
            _session = ChatSession()
        return _session


# Every session still alive at exit is closed while its loop still runs; otherwise aiohttp
# warns about unclosed client sessions when they are collected after the loop is gone.
_live: weakref.WeakSet[ChatSession] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for session in list(_live):
        with contextlib.suppress(Exception):
            session.close()


def reset_session(session: ChatSession | None = None) -> ChatSession | None:
    """Close the kernel session and install `session` (tests, `%unload_ext`)."""
    global _session
    with _session_lock:
        old, _session = _session, session
    if old is not None and old is not session:
        old.close()
    return session
