"""A typed reply of one request (`ChatSession.ask(schema=...)`, `%%chat --schema`): the spec
added to the request, the reply parsed, and asked again once when it does not fit.

The same `OutputSpec` a typed map uses (`ipychat.core.structured`), through the same
pipeline: `engine.prepare.typed_options` puts its rule in the system prompt and its fragment
in the body; `with_spec` marks the prepared request (the spec, the cache-key salt, the tokens
a schema sent outside the messages adds to the estimate); `checked` parses the reply and makes
the one repair request through `Engine.request` (cache, budget, ledger as any request).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from ipychat.core.errors import ChatError
from ipychat.core.pricing import estimate_cost_range
from ipychat.core.structured import EndpointKind, InvalidReply, OutputSpec
from ipychat.core.types import CacheMode, Reply
from ipychat.engine.prepare import fall_back, format_refused, structured_kind

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine
    from ipychat.engine.prepare import Prepared

_log = logging.getLogger("ipychat")

__all__ = ["add_prompt_tokens", "checked", "sent", "with_spec"]


def add_prompt_tokens(engine: Engine, prepared: Prepared, extra: int) -> Prepared:
    """`prepared` with `extra` prompt tokens in its estimate (tokens and cost): a schema sent
    in `response_format` is billed as input, outside the messages."""
    if not extra:
        return prepared
    e = prepared.estimate
    prompt = e.prompt_tokens + extra
    low, high, batch = estimate_cost_range(prompt, e.max_completion_tokens, engine.price(e.model))
    estimate = replace(e, prompt_tokens=prompt, cost_low=low, cost_high=high, cost_batch=batch)
    return replace(prepared, estimate=estimate)


def with_spec(engine: Engine, prepared: Prepared, spec: OutputSpec, kind: EndpointKind) -> Prepared:
    """`prepared` (built with `typed_options(..., spec, kind, ...)`) marked as typed."""
    marked = add_prompt_tokens(engine, prepared, spec.schema_tokens(prepared.estimate.model, kind))
    marked.output = spec
    marked.cache_salt = spec.digest()
    return marked


async def checked(engine: Engine, prepared: Prepared, reply: Reply, cache: CacheMode) -> Reply:
    """`reply` with its parsed `value`; a reply that does not fit is asked again once (one-off:
    the bad reply and what is wrong appended), and raises InvalidReply if that does not fit
    either. An interrupted reply is returned as it is."""
    spec = prepared.output
    assert spec is not None
    parsed = spec.parse(reply.text)
    if parsed.ok:
        return replace(reply, value=parsed.value)
    if reply.interrupted or parsed.error is None:
        return reply
    repair = spec.repair_messages(reply.text, parsed.error)
    body = {**prepared.body, "messages": [*prepared.body["messages"], *repair]}
    again = engine.prepare_body(prepared.prompt, body, label=prepared.label)
    again.cache_salt = prepared.cache_salt
    second = (await engine.request(again, cache=cache)).reply
    parsed = spec.parse(second.text)
    if not parsed.ok:
        raise InvalidReply(
            f"The reply does not fit: {parsed.error} (also when asked again).",
            reply=second,
            error=parsed.error or "",
        )
    return replace(second, value=parsed.value, thread=reply.thread)


async def sent(
    engine: Engine,
    prepared: Prepared,
    send: Callable[[Prepared], Awaitable[Reply]],
    again: Callable[[], Prepared],
    cache: CacheMode,
) -> Reply:
    """`send(prepared)`, and for a typed request its reply `checked`. An endpoint that refuses
    the structured-output fields is remembered (`fall_back`, a one-line warning) and the
    request is prepared `again` (now asked in the prompt) and sent once more."""
    try:
        reply = await send(prepared)
    except ChatError as exc:
        if prepared.output is None or not format_refused(exc):
            raise
        _log.warning("%s", fall_back(engine, structured_kind(engine)))
        prepared = again()
        reply = await send(prepared)
    if prepared.output is None:
        return reply
    typed = await checked(engine, prepared, reply, cache)
    thread = prepared.thread
    if typed.text != reply.text and thread is not None and reply.turn:
        # The thread remembers the repaired reply in the turn this one answered (a re-run
        # cell's turn may be anywhere in the thread): the next turns build on it.
        thread.messages[2 * reply.turn - 1] = {"role": "assistant", "content": typed.text}
        typed = replace(
            typed,
            turn=reply.turn,
            cell=reply.cell,
            replaced=reply.replaced,
            later_turns=reply.later_turns,
        )
    return typed
