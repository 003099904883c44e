"""A map's prompts counted later: while the encoding loads, a map sends with byte bounds
(`ipychat.map.plan`, "counted later"), and counts exactly only where the count matters.

In a fresh kernel `%load_ext` loads the encoding in the background (ipychat.notebook.
warmup): ~0.5 s of CPU, ~0.3 s of it one call that holds the GIL. A first map that starts
before it is done would wait for it, and a map that loaded it while sending would pay it
in its own time (on a busy machine CPU is what a map's time is made of). So a map that
nothing obliges to know its exact total before sending (`may_count_later`) sends with each
prompt's byte bound for its tokens (never fewer than its count), and the warm-up does not
build the encoding while it runs (`ipychat.core.foreground`). The bound stands where nothing reads it:
pacing without a token limit charges nothing that matters, the server's `usage` gives the
ledger its counts. Where the count does matter, `Recount` counts (loading the encoding):

- a token limit becomes known (learnt from the headers or a 429): the rate limiter's
  charges (`MapRequest.tokens`) must be the prompts' tokens, not their bytes (a bound
  only errs slow: never a 429 for it);
- a reply comes without the server's usage: the ledger's prompt tokens are our estimate.

Then every request not counted yet is counted in a worker thread (the session loop keeps
sending) and its estimate and charge are put in place, on the loop. The rows answered before
that keep what they were charged; a ledger row written before it (a server without usage)
holds the bound, marked estimated. The plan printed before the run said "up to".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ipychat.core.errors import ChatError
from ipychat.map.dispatch import session_limiter

if TYPE_CHECKING:
    from ipychat.core.types import Estimate, Reply
    from ipychat.engine.engine import Engine
    from ipychat.engine.prepare import Estimator
    from ipychat.map.plan import MapRequest
    from ipychat.map.ratelimit import RateLimiter

__all__ = ["Recount", "count_exactly", "may_count_later"]

_log = logging.getLogger("ipychat")


def may_count_later(
    engine: Engine,
    model: str,
    typed: bool,
    max_cost: float | None,
    rpm: float | None,
    tpm: float | None,
) -> bool:
    """True when nothing needs a map's exact total before it sends: no --max-cost and no
    budget (a bound could refuse a map that fits: count, then check), no --rpm/--tpm and
    no token limit learnt for `model` (pacing charges), not `typed` (its schema is counted
    anyway, so the encoding is loaded before the rows are)."""
    usage = engine.usage
    if max_cost is not None or usage.budget is not None or usage.periods():
        return False
    if typed or rpm is not None or tpm is not None:
        return False
    limiter = session_limiter(engine, model)
    return limiter is None or limiter.token_limit is None


class Recount:
    """The exact counts of a running map's byte-bounded requests, made once something
    needs them (`check`, from the replies), then `done()` (on the loop, e.g. the plan's
    totals and the dispatcher's charges updated)."""

    def __init__(self, engine: Engine, to_send: list[MapRequest], done: Callable[[], None]):
        self.engine, self.to_send, self._done = engine, to_send, done
        self._needed = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    def check(self, reply: Reply, limiter: RateLimiter | None) -> None:
        """After a reply (on the loop): count now if the reply or the pacing needs it."""
        if self._needed.is_set():
            return
        no_usage = reply.usage is None or reply.usage.estimated
        if (no_usage and not reply.cached) or (limiter is not None and limiter.token_limit):
            self._needed.set()

    async def finish(self) -> None:
        """At the map's end: wait for a count under way (its thread is not left running),
        drop one never needed."""
        if self._needed.is_set():
            await self._task
        self.cancel()

    def cancel(self) -> None:
        if not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        try:
            await self._needed.wait()
        except asyncio.CancelledError:
            # Never needed. The cancelled task keeps the error, its traceback this frame,
            # and the frame `self`, which holds the task: a cycle that kept the map's whole
            # plan alive until a full collection. Without `self` here, it is freed at once.
            del self
            raise
        if await count_exactly(self.engine, self.to_send):
            self._done()


async def count_exactly(engine: Engine, to_send: list[MapRequest]) -> bool:
    """Count the requests of `to_send` estimated by a byte bound, and put the counts in
    place (on the calling loop); True when there were any. If the encoding cannot be
    loaded (a broken install), the bounds stay, marked counted: the map goes on."""
    pending = [job for job in to_send if not job.counted]
    if not pending:
        return False
    estimators: dict[tuple[str, int], Estimator] = {}
    for job in pending:  # resolved here: each reads the endpoint (one or two a map)
        key = (job.model, int(job.body["max_tokens"]))
        if key not in estimators:
            estimators[key] = engine.estimator(*key)

    def count() -> list[Estimate]:
        return [
            estimators[job.model, int(job.body["max_tokens"])](job.body["messages"])
            for job in pending
        ]

    try:
        estimates = await asyncio.to_thread(count)
    except ChatError:  # the encoding is missing or corrupted: the bounds are safe to keep
        _log.debug("ipychat: a map's prompts could not be counted", exc_info=True)
        estimates = [job.prepared.estimate for job in pending]
    for job, estimate in zip(pending, estimates, strict=True):
        job.prepared.estimate = estimate
        job.tokens = estimate.prompt_tokens + estimate.max_completion_tokens
        job.counted = True
    return True
