"""The one record of a request: its reply, and what the cache and the ledger keep of it.

`Engine.request` returns an `Exchange`, whether the reply came from the server or from the
cache. The cache entry schema (`CachedReply`, written by `Exchange.to_cache`, read back by
`Exchange.from_cache`) and the ledger row (`Exchange.ledger_row`) are built here only: a
%%chat cell, a %%chatmap row and a Batch API line all go through these three.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ipychat.core import pricing
from ipychat.core.types import Estimate, Reply, Usage
from ipychat.engine.ledger import LedgerRow

__all__ = ["CachedReply", "Exchange", "Progress"]


class CachedReply(TypedDict, total=False):
    """The JSON object stored per key. Only `text` is required; more fields are kept as is.

    `created` (epoch seconds) defaults to the time of `set` and is what
    `clear(older_than_days=)` compares. `clear(model=)` matches `request_model` (the model
    the request asked for) if present, else `model` (the model the server said answered).
    """

    text: str
    model: str
    request_model: str
    finish_reason: str | None
    usage: dict[str, Any] | None  # prompt_tokens, completion_tokens, cached_tokens, estimated
    cost: float | None  # what the reply cost when it was paid for
    created: float
    host: str
    logprobs: list[dict[str, Any]]  # only when the request asked for them (--scores)


@dataclass
class Progress:
    """Mutable state of one request, readable from the waiting thread after a cancel."""

    parts: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    reply: Reply | None = None
    estimate: Estimate | None = None  # set once the request is prepared, before it is sent

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True)
class Exchange:
    """One request as the engine settled it (see the module docstring).

    `store`: a fresh reply the cache should keep; `Engine.request` writes it itself unless
    the caller asked to write it (`write_cache=False`, %%chatmap writes in batches).
    """

    reply: Reply
    key: str  # the request's cache key
    request_model: str  # the model the request named (not the one that answered)
    host: str  # where it went, as the ledger names it (never user:password@)
    prompt_tokens: int = 0  # the estimate's: the ledger's count when the server gave none
    outcome: str = "ok"  # ok | error | interrupted
    error: str | None = None
    store: bool = False

    @property
    def cached(self) -> bool:
        """True when the reply came from the cache (nothing was sent)."""
        return self.reply.cached

    @classmethod
    def from_cache(
        cls,
        entry: CachedReply | dict[str, Any],
        *,
        key: str,
        request_model: str,
        host: str,
        model: str,
        price: pricing.ModelPrice | None,
        label: str,
        latency: float = 0.0,
        dropped_turns: int = 0,
        masked: str = "",
    ) -> Exchange:
        """A cache entry as the reply it replays: free, with what it `saved` at `price`.
        `model` is the answering model's label (`Engine.model_label`)."""
        raw = entry.get("usage")
        usage = Usage(**raw) if raw else None
        extra: dict[str, Any] = {"masked": masked} if masked else {}
        logprobs = entry.get("logprobs")
        if isinstance(logprobs, list):  # a cached --scores reply keeps its scores
            extra["logprobs"] = logprobs
        reply = Reply(
            text=entry["text"],
            model=model,
            usage=usage,
            cost=0.0,
            cached=True,
            saved=pricing.cost(usage, price) if usage else None,
            latency=latency,
            finish_reason=entry.get("finish_reason"),
            thread=label,
            dropped_turns=dropped_turns,
            extra=extra,
        )
        return cls(reply, key, request_model, host)

    def to_cache(self) -> CachedReply:
        """The cache entry of this reply (the schema `from_cache` reads)."""
        reply, usage = self.reply, self.reply.usage
        entry: CachedReply = {
            "text": reply.text,
            "model": reply.model,
            "request_model": self.request_model,  # what `%chat cache clear --model` matches
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
            "host": self.host,
        }
        logprobs = reply.extra.get("logprobs")
        if logprobs is not None:
            entry["logprobs"] = logprobs
        return entry

    def ledger_row(self, *, model: str | None = None) -> LedgerRow:
        """The ledger's row for this request. `model`: the name to record instead of the
        one that answered (the Batch API path records the model it asked for)."""
        reply = self.reply
        usage = reply.usage or Usage(prompt_tokens=self.prompt_tokens, estimated=True)
        return LedgerRow(
            time=time.time(),
            thread=reply.thread,
            model=model or reply.model,  # the model that answered (model_label)
            host=self.host,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost=reply.cost if self.outcome != "error" else 0.0,
            saved=reply.saved,
            cached=reply.cached,
            estimated=usage.estimated,
            latency=reply.latency,
            time_to_first_token=reply.time_to_first_token,
            retries=reply.retries,
            outcome=self.outcome,
            error=self.error,
        )
