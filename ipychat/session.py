"""The kernel-scoped ChatSession: conversation threads, events and the loop, on the engine.

The magics, the panel and plain Python share the one session `get_session()` returns. This
module imports neither IPython nor ipywidgets, so the whole engine runs in a script or CI.

`ChatSession` is a façade over `ipychat.engine.Engine` (settings, endpoint, client, cache,
estimates, prepare, request, ledger). What it adds: named threads and their history, the
events views listen to, and the private loop thread every request runs on. `ask_on_loop`
is the one implementation of a %%chat turn; `ask` waits for it from the calling thread,
`aask` from another loop, `stream` hands its deltas over as they arrive. The DataFrame
operations (`map`, `amap`) come from `ipychat.frames`.

What a session owns (its loop thread, its client) and its closing at exit: `ipychat.lifetime`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ipychat.conversation import Conversations, TurnRecord
from ipychat.core import tokens
from ipychat.core.errors import ChatError
from ipychat.core.messages import Thread, build_messages
from ipychat.core.runner import LoopThread, wait, wait_async
from ipychat.core.settings import Endpoint, Settings, check_model
from ipychat.core.structured import output_spec
from ipychat.core.types import Estimate, Reply
from ipychat.engine import typedreply as typed_reply
from ipychat.engine.engine import CacheMode, Engine
from ipychat.engine.prepare import (
    Prepared,
    RequestOptions,
    allowing_secrets,
    structured_kind,
    typed_options,
)
from ipychat.engine.typedreply import with_spec
from ipychat.frames import FrameOperations
from ipychat.lifetime import Owned, close_at_exit
from ipychat.streaming import Progress, ReplyStream, interrupted

if TYPE_CHECKING:
    from collections import Counter

    import httpx

    from ipychat.compare import Comparison
    from ipychat.core.pricing import PriceTable
    from ipychat.engine.cache import ResponseCache
    from ipychat.engine.ledger import Ledger
    from ipychat.net.client import ChatClient

__all__ = ["ChatSession", "Event", "Settings", "get_session", "reset_session"]

T = TypeVar("T")


@dataclass(frozen=True)
class Event:
    """What listeners (the panel) hear: kind is start | delta | reply | error | settings | threads."""

    kind: str
    thread: str = ""
    text: str = ""
    reply: Reply | None = None


class ChatSession(FrameOperations):
    """The one conversation of a kernel, on the engine (see module docstring)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        cache: ResponseCache | bool | None = True,
    ) -> None:
        # The loop thread and the client, released when the session is collected unclosed
        # (a session made in a function): else aiohttp warns "Unclosed client session" and
        # the loop thread runs on with nobody to stop it.
        self._owned = Owned()
        self.engine = Engine(settings, transport=transport, cache=cache, retire=self._owned.retire)
        self._owned.engine = self.engine
        weakref.finalize(self, self._owned.release)
        # Threads and turns (which turn a re-run cell replaces): ipychat.conversation.
        self.conversations = Conversations(lambda name: self._emit(Event("threads", thread=name)))
        self.last_reply: Reply | None = None
        close_at_exit(self)  # if the owner did not close it
        self._listeners: list[Callable[[Event], None]] = []
        self._lock = threading.RLock()

    # ----- what the engine holds -------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    @property
    def usage(self) -> Ledger:
        return self.engine.usage

    @property
    def prices(self) -> PriceTable:
        return self.engine.prices

    @property
    def redactions(self) -> Counter[str]:
        """What `redact` masked, by kind, so far."""
        return self.engine.gate.redactions

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache, opened on first use; None when disabled or unusable."""
        return self.engine.cache

    @property
    def is_local(self) -> bool:
        """True when requests go to the embedded llama.cpp server (free, one at a time)."""
        return self.engine.is_local

    @property
    def base_url(self) -> str:
        """The endpoint's URL as the cache and the ledger know it (stable across kernels)."""
        return self.engine.base_url

    @property
    def host(self) -> str:
        return self.engine.host

    @property
    def model(self) -> str:
        """The default model: the setting, else the endpoint's own default."""
        return self.engine.model

    def endpoint(self) -> Endpoint:
        """Where requests go (`ipychat.engine.endpoint` says in which order)."""
        return self.engine.endpoint()

    def key_note(self) -> str:
        """One line when the key set with %chat key stays behind at this endpoint, else ""."""
        return self.engine.key_note()

    def cache_key(self, body: dict[str, Any]) -> str:
        """The cache key of a request body on this endpoint."""
        return self.engine.cache_key(body)

    def model_label(self, model: str | None = None, answered: str | None = None) -> str:
        """The model that answers (or answered) a request for `model` (Engine.model_label)."""
        return self.engine.model_label(model, answered)

    def local_note(self, model: str) -> str | None:
        return self.engine.local_note(model)

    async def client(self) -> ChatClient:
        """The client for the current endpoint, starting the local server if it is the one."""
        return await self.engine.client()

    def count(
        self, messages: Sequence[dict[str, Any]], model: str | None = None
    ) -> tokens.TokenCount:
        return self.engine.count(messages, model)

    def allowing_secrets(self, allow: bool = True) -> contextlib.AbstractContextManager[None]:
        """Within the block, prompts shaped like credentials are sent (%%chatmap --allow-secrets)."""
        return allowing_secrets(allow)

    # ----- settings, threads, listeners -------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change settings (validated as a whole first: a bad value changes nothing)."""
        self.engine.configure(**changes)
        self._emit(Event("settings"))

    def set_budget(self, usd: float | None, per: str | None = None) -> None:
        """Set (or with None remove) the spend budget of this session, or with `per` (day,
        week, month) the persistent one every kernel checks (`Ledger.set_period_budget`)."""
        if per is None:
            self.engine.set_budget(usd)
        else:
            self.usage.set_period_budget(per, usd)
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
                logging.getLogger("ipychat").exception("listener failed on %s", event.kind)

    @property
    def threads(self) -> dict[str, Thread]:
        return self.conversations.threads

    @property
    def current_thread(self) -> str:
        return self.conversations.current

    @current_thread.setter
    def current_thread(self, name: str) -> None:
        self.conversations.current = name

    def thread(self, name: str | None = None, *, create: bool = True) -> Thread:
        return self.conversations.thread(name, create=create)

    def switch_thread(self, name: str) -> Thread:
        return self.conversations.switch(name)

    def reset(self, name: str | None = None) -> None:
        """Forget the messages of a thread (the current one by default)."""
        self.conversations.reset(name)

    def restore(self, name: str, turns: list[TurnRecord], *, replace: bool = False) -> Thread:
        """A thread made of `turns` (`%chat import`); see `Conversations.restore`."""
        return self.conversations.restore(name, turns, replace=replace)

    # ----- estimates and preparing -------------------------------------------------------------

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
        if isinstance(prompt_or_messages, str):
            name = thread or self.current_thread
            history = self.threads[name].messages if name in self.threads else []
            messages = build_messages(
                system if system is not None else self.settings.system, history, prompt_or_messages
            )
        else:
            messages = list(prompt_or_messages)
        return self.engine.estimate(messages, model=model, max_tokens=max_tokens)

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
        schema: Any = None,
        choices: Sequence[str] | None = None,
        cell: str | None = None,
    ) -> Prepared:
        """Build, trim and estimate a turn of a thread without sending it (--dry-run).
        `cell`: the notebook cell it comes from; if that cell answered on this thread
        before, the history stops before its turn (ipychat.conversation says why).

        A prompt holding something shaped like a credential is refused (SecretInPromptError)
        unless `allow_secrets`; with the `redact` setting, personal data is masked first.
        `schema`/`choices`: a typed reply (see `ask`), its rule and fragment added.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ChatError("The prompt is empty: write something in the cell below %%chat.")
        options = RequestOptions(
            model=check_model(model) or self.engine.model,
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            allow_secrets=allow_secrets,
        )
        options.check(max_cost)
        spec = output_spec(schema=schema, choices=choices) if schema or choices else None
        if spec is not None:
            kind = structured_kind(self.engine)
            options = typed_options(options, spec, kind, self.settings.system)
        name = thread or self.current_thread
        history = self.conversations.history(name, cell=cell, new=new)
        cleaned = self.engine.outgoing(prompt, options, history)
        the_thread = self.thread(name)  # created only once the prompt may leave
        prepared = self.engine.fit_turn(cleaned, options, label=the_thread.name, max_cost=max_cost)
        prepared.thread, prepared.cell = the_thread, cell
        return with_spec(self.engine, prepared, spec, kind) if spec is not None else prepared

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
    ) -> Reply:
        """Send a prepared request (`Engine.request`) on the session's loop; a turn of a
        thread is remembered there (an interrupted one too, with what arrived) and its
        views hear start, deltas, and the reply or the error."""
        progress = progress or Progress()
        thread = prepared.thread
        if thread is None:  # one-off requests leave no history and tell no view
            sent = self.engine.request(
                prepared, progress, stream=stream, cache=cache, on_delta=on_delta
            )
            done = await sent
            return dataclasses.replace(done.reply, cache_key=done.key)

        def delta(text: str) -> None:
            if on_delta is not None:
                on_delta(text)
            self._emit(Event("delta", thread=thread.name, text=text))

        self._emit(Event("start", thread=thread.name, text=prepared.prompt))
        try:
            exchange = await self.engine.request(
                prepared, progress, stream=stream, cache=cache, on_delta=delta
            )
        except ChatError as exc:  # every view that saw "start" hears how it ended
            self._emit(Event("error", thread=thread.name, text=str(exc)))
            raise
        except asyncio.CancelledError:  # what arrived is kept, marked interrupted
            if progress.reply is not None:
                progress.reply = self._remember(prepared, progress.reply, new)
            raise
        reply = dataclasses.replace(exchange.reply, cache_key=exchange.key)
        return self._remember(prepared, reply, new)

    def _remember(self, prepared: Prepared, reply: Reply, new: bool) -> Reply:
        """The turn into its thread (appended, or in place of its cell's earlier turn)."""
        with self._lock:
            reply = self.conversations.remember(prepared, reply, new=new)
            self.last_reply = reply
        self._emit(Event("reply", thread=reply.thread, text=reply.text, reply=reply))
        return reply

    async def ask_on_loop(
        self,
        prompt: str,
        progress: Progress,
        *,
        stream: bool = False,
        cache: CacheMode | bool = True,
        on_delta: Callable[[str], None] | None = None,
        new: bool = False,
        **options: Any,
    ) -> Reply:
        """The one implementation of `ask`/`aask`/`stream`, run on the session's loop:
        prepare (with `options`, see `prepare`), then `request`. `progress` is what the
        waiting thread reads (the estimate, the deltas, the partial reply after a cancel)."""
        prepared = self.prepare(prompt, new=new, **options)
        progress.estimate = prepared.estimate
        mode: CacheMode = "use" if cache is True else "off" if cache is False else cache

        def send(prepared: Prepared) -> Coroutine[Any, Any, Reply]:
            return self.request(
                prepared, progress, stream=stream, cache=mode, on_delta=on_delta, new=new
            )

        # A typed reply is checked (and repaired once) there; a plain one is sent as it is.
        return await typed_reply.sent(
            self.engine, prepared, send, lambda: self.prepare(prompt, new=new, **options), mode
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
        schema: Any = None,
        choices: Sequence[str] | None = None,
        cell: str | None = None,
    ) -> Reply:
        """Send `prompt` on a thread and wait for the reply. `cache`: True/"use", "refresh"
        (skip the read, store the new reply) or False/"off". Ctrl-C raises Interrupted, whose
        `.reply` holds what arrived. A prompt shaped like a credential is refused unless
        `allow_secrets`.

        A typed reply: `schema` (a Pydantic model class or a JSON-schema dict) or `choices`
        (labels). The reply is constrained where the endpoint can (the `structured` setting)
        and validated always; `reply.value` is the answer (a model instance, a dict, or the
        label as given in `choices`). A reply that does not fit is asked again once; if that
        does not fit either, InvalidReply (its `.reply` is what came back)."""
        progress = Progress()
        coro = self.ask_on_loop(
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
            schema=schema,
            choices=choices,
            cell=cell,
        )
        try:
            return wait(self.runner, coro)
        except KeyboardInterrupt:
            raise interrupted(progress) from None

    async def aask(self, prompt: str, **options: Any) -> Reply:
        """`ask` for code that awaits; the request still runs on the session's own loop."""
        return await wait_async(self.runner, self.ask_on_loop(prompt, Progress(), **options))

    def stream(self, prompt: str, **options: Any) -> ReplyStream:
        """Iterate over the text deltas of a streamed reply; `.reply` is the Reply afterwards."""
        return ReplyStream(self, prompt, options)

    def compare(self, prompt: str, models: Sequence[str], **options: Any) -> Comparison:
        """Send one turn to each of `models` at once and wait for every reply; the thread
        continues with `keep`'s (default the first's). See `ipychat.compare`."""
        from ipychat.compare import compare_on_loop

        return wait(self.runner, compare_on_loop(self, prompt, models, **options))

    def models(self) -> list[str]:
        """The model ids the endpoint lists."""
        return wait(self.runner, self.amodels())

    async def amodels(self) -> list[str]:
        return await (await self.engine.client()).models()

    # ----- the private loop, for views that must not block the kernel ------------------------

    @property
    def runner(self) -> LoopThread:
        """The session's loop thread (what `ipychat.core.runner.wait` waits on)."""
        return self._owned.runner

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The session's own event loop (running in its daemon thread)."""
        return self.runner.loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the session's loop without waiting (the panel, %%chatmap)."""
        return self.runner.submit(coro)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the session's loop and wait; Ctrl-C cancels it, then re-raises."""
        return wait(self.runner, coro)

    def close(self) -> None:
        """Release connections and the loop thread (the session is usable again afterwards)."""
        self._owned.release()
        self.engine.close_cache()


_session: ChatSession | None = None
_session_lock = threading.Lock()


def get_session() -> ChatSession:
    """The one ChatSession of this kernel."""
    global _session
    with _session_lock:
        if _session is None:
            _session = ChatSession()
        return _session


def reset_session(session: ChatSession | None = None) -> ChatSession | None:
    """Close the kernel session and install `session` (tests, `%unload_ext`)."""
    global _session
    with _session_lock:
        old, _session = _session, session
    if old is not None and old is not session:
        old.close()
    return session
