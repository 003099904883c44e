"""`Engine.request`: one prepared request through cache, budget, client, ledger and cache.

```
request(engine, prepared, progress, sending) → Exchange
  ├── cache read ("use")           a hit → Engine.from_cache → ledger → Exchange (cached)
  ├── offline                      OfflineCacheMiss: nothing is sent
  ├── budget                       Ledger.reserve (unless the caller reserved a whole map)
  ├── client.chat(body)            deltas → Progress (and the caller's on_delta)
  └── reconcile                    usage (the server's, else counted), cost, ledger row,
                                   cache entry (Exchange.to_cache) written or handed back
```
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipychat.core import pricing, tokens
from ipychat.core.errors import ChatError, OfflineCacheMiss
from ipychat.core.types import CacheMode, Completion, Reply, Usage
from ipychat.engine.exchange import Exchange, Progress
from ipychat.engine.ledger import max_tokens_within
from ipychat.engine.prepare import Prepared

if TYPE_CHECKING:
    from ipychat.engine.cache import ResponseCache
    from ipychat.engine.engine import Engine

__all__ = ["Sending", "request"]


@dataclass(frozen=True)
class Sending:
    """How one request is sent (the options of `Engine.request`)."""

    stream: bool = False
    cache: CacheMode = "use"
    on_delta: Callable[[str], None] | None = None
    reserve: bool = True
    max_retries: int | None = None
    write_cache: bool = True
    key: str | None = None  # the body's cache key, when the caller computed it already


async def request(
    engine: Engine, prepared: Prepared, progress: Progress, sending: Sending
) -> Exchange:
    """See `Engine.request`."""
    body = prepared.body
    key = sending.key or engine.cache_key(body, prepared.cache_salt)
    store = engine.cache if sending.cache != "off" and engine.settings.cache else None
    if store is not None and sending.cache == "use":
        hit = store.get(key)
        if hit is not None:
            return _replayed(engine, prepared, key, hit, progress, store)
    if engine.settings.offline:
        raise OfflineCacheMiss(
            "Offline mode: this request is not in the cache. Run it once online, or turn "
            "offline mode off with %chat offline off (or unset IPYCHAT_OFFLINE)."
        )
    held = (
        engine.usage.reserve(
            prepared.estimate.cost_high, max_cost=prepared.max_cost, fit=_fit(engine, prepared)
        )
        if sending.reserve
        else 0.0
    )
    reply = await _sent(engine, prepared, key, progress, sending, held)
    exchange = _exchange(engine, prepared, key, reply, store=store is not None)
    engine.usage.settle(held, exchange.ledger_row(), prompt=prepared.prompt)
    if store is not None and sending.write_cache:
        store.set(key, exchange.to_cache())
    return exchange


def _replayed(
    engine: Engine,
    prepared: Prepared,
    key: str,
    hit: dict[str, Any],
    progress: Progress,
    store: ResponseCache,
) -> Exchange:
    """A cache hit: free, recorded in the ledger with what it saved."""
    exchange = engine.from_cache(
        hit,
        key=key,
        request_model=prepared.body["model"],
        label=prepared.label,
        latency=time.monotonic() - progress.started,
        prepared=prepared,
    )
    store.record_hit(exchange.reply.saved)
    engine.usage.record(exchange.ledger_row(), prompt=prepared.prompt)
    return exchange


async def _sent(
    engine: Engine,
    prepared: Prepared,
    key: str,
    progress: Progress,
    sending: Sending,
    held: float,
) -> Reply:
    """The request on the wire. A failure or a cancel is settled in the ledger here (with
    what arrived); the caller settles a success."""
    body, model = prepared.body, prepared.body["model"]
    on_delta = sending.on_delta

    def delta(text: str) -> None:
        if progress.first_token is None:
            progress.first_token = time.monotonic() - progress.started
        progress.parts.append(text)
        if on_delta is not None:
            on_delta(text)

    def settled(reply: Reply, outcome: str, error: str | None = None) -> None:
        exchange = _exchange(engine, prepared, key, reply, outcome=outcome, error=error)
        engine.usage.settle(held, exchange.ledger_row(), prompt=prepared.prompt)

    try:
        completion = await (await engine.client()).chat(
            body, stream=sending.stream, on_delta=delta, max_retries=sending.max_retries
        )
    except asyncio.CancelledError:
        partial = Completion(progress.text, model)
        progress.reply = _reply(engine, prepared, partial, progress, interrupted=True)
        settled(progress.reply, "interrupted")
        raise
    except ChatError as exc:
        failed = Reply(text="", model=engine.model_label(model), thread=prepared.label)
        settled(failed, "error", str(exc))
        raise
    return _reply(engine, prepared, completion, progress)


def _exchange(
    engine: Engine,
    prepared: Prepared,
    key: str,
    reply: Reply,
    *,
    outcome: str = "ok",
    error: str | None = None,
    store: bool = False,
) -> Exchange:
    return Exchange(
        reply,
        key,
        prepared.body["model"],
        engine.host,
        prepared.estimate.prompt_tokens,
        outcome=outcome,
        error=error,
        store=store,
    )


def _fit(engine: Engine, prepared: Prepared) -> Callable[[float], str | None]:
    """For a budget refusal: the --max-tokens that would bring this request under a limit."""

    def fit(limit: float) -> str | None:
        price = engine.price(prepared.body["model"])
        estimate = prepared.estimate
        if price is None:
            return None
        n = max_tokens_within(limit, estimate.prompt_tokens, 1, price.input, price.output)
        return f"--max-tokens {n}" if 1 <= n < estimate.max_completion_tokens else None

    return fit


def _reply(
    engine: Engine,
    prepared: Prepared,
    completion: Completion,
    progress: Progress,
    *,
    interrupted: bool = False,
) -> Reply:
    """Reconcile: the server's usage (else our count), the cost at the answering model's
    price (else the named model's), latency and time to first token."""
    model = prepared.body["model"]
    usage = completion.usage
    if usage is None:  # llama.cpp streams, interrupted requests: count it ourselves
        usage = Usage(
            prompt_tokens=prepared.estimate.prompt_tokens,
            completion_tokens=tokens.count_text(completion.text, model),
            estimated=True,
        )
    answered = engine.model_label(model, completion.model)
    return Reply(
        text=completion.text,
        model=answered,
        usage=usage,
        cost=pricing.cost(usage, engine.price(answered) or engine.price(model)),
        latency=completion.latency or (time.monotonic() - progress.started),
        finish_reason=completion.finish_reason,
        thread=prepared.label,
        interrupted=interrupted,
        dropped_turns=prepared.dropped_turns,
        time_to_first_token=completion.time_to_first_token or progress.first_token,
        retries=completion.retries,
        extra=_extra(prepared, completion, engine.local_note(model)),
    )


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
