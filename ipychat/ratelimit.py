"""Request- and token-per-minute pacing for parallel requests, as pure arithmetic.

Pure: no I/O, no sleeping, no clock of its own (every method takes `now`), no third-party
imports. `%%chatmap` asks `wait()` how long the next request must wait, sleeps exactly
that long, and `take()`s it; what the server answers feeds `observe()`.

The model is OpenAI's: a request bucket and a token bucket, each holding up to its
per-minute limit and refilling continuously at limit/60 per second; a request is charged
on arrival 1 request and `prompt tokens + max_tokens` tokens. Where the openai-cookbook's
parallel processor polls its buckets every few milliseconds, `wait()` returns the exact
deficit, so a sender sleeps once per request.

Calibration. The `x-ratelimit-*` headers of a response tell the server's limits and what
remained right after it charged that request. `observe()` re-anchors each bucket on the
newest such reading: the server's level now is that remainder, plus the refill since the
request was sent, minus what we have sent since (each `Ticket` remembers its charge). So
limits need not be given (`rpm`/`tpm` are optional), other clients sharing the quota are
accounted for, and our own errors never accumulate. Two anchors in a row also tell how
many tokens the server charged for the requests in between; their ratio to our count is
`token_scale`, which corrects a tokenizer or accounting that differs from ours (without
it, pacing at the edge of the bucket with a 10% under-count gets every request a 429).

A 429 starts one shared `pause()` (every sender waits, not each on its own) and refunds
the rejected request's charge (the server charges only what it accepts).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ipychat.types import RateLimitInfo

__all__ = ["Bucket", "RateLimiter", "Ticket"]

# Tickets kept for anchoring when the server never sends headers (bounded memory).
_MAX_TICKETS = 4096
# Learning `token_scale`: weight of the history, plausible range, least tokens per sample
# (fewer make a noisy ratio: the server's clock and ours differ by a few milliseconds).
_SCALE_DECAY = 0.8
_SCALE_RANGE = (0.2, 5.0)
_SCALE_MIN_TOKENS = 200.0
# The server charged a request when it arrived, a little after we sent it; counting the
# refill from our send time would be optimistic by that much (at 200k TPM, 5 ms is 17
# tokens: enough for a 429 when pacing at the edge). Anchors assume it arrived this late.
ARRIVAL_SKEW = 0.010


@dataclass
class Bucket:
    """Holds up to `limit` units, refilling continuously at limit/60 per second."""

    limit: float
    level: float
    stamp: float

    @property
    def rate(self) -> float:
        """Units per second."""
        return self.limit / 60.0

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.limit, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0: now). More than the whole bucket waits
        for a full one (the caller decides whether such a request may go at all)."""
        self.refill(now)
        deficit = min(amount, self.limit) - self.level
        return 0.0 if deficit <= 1e-9 else deficit / self.rate


@dataclass
class Ticket:
    """One request as charged: what `observe()` and `refund()` need to know about it."""

    seq: int
    sent: float
    tokens: float  # our count: prompt tokens + max_tokens
    charged: float  # tokens × token_scale at the time: what we took from the token bucket
    refunded: bool = False


@dataclass
class _Anchor:
    seq: int
    sent: float
    tokens_left: float | None  # the server's remaining tokens right after that request


@dataclass
class RateLimiter:
    """Pacing state for one endpoint and model (see the module docstring).

    `rpm`/`tpm` given by the user are caps (the server's own limits, once known, apply
    when lower). Until the server has told its state, a bucket of a given limit is assumed
    empty: pacing at the limit from the start is always safe, and the first response
    with headers lifts it to the real level (a full bucket then allows a burst).
    """

    rpm: float | None = None
    tpm: float | None = None
    now: float = 0.0
    requests: Bucket | None = field(init=False, default=None)
    tokens: Bucket | None = field(init=False, default=None)
    token_scale: float = field(init=False, default=1.0)
    paused_until: float = field(init=False, default=0.0)
    answered: bool = field(init=False, default=False)  # any response seen, headers or not
    headers_seen: bool = field(init=False, default=False)
    _seq: int = field(init=False, default=0)
    _tickets: deque[Ticket] = field(init=False, default_factory=deque)
    _anchor: _Anchor | None = field(init=False, default=None)
    _scale_num: float = field(init=False, default=0.0)
    _scale_den: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.set_limits(self.rpm, self.tpm, self.now)

    # ----- limits ---------------------------------------------------------------------------

    def set_limits(self, rpm: float | None, tpm: float | None, now: float) -> None:
        """The user's caps (None: none); existing buckets keep their level."""
        for value, name in ((rpm, "rpm"), (tpm, "tpm")):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        self.rpm, self.tpm = rpm, tpm
        self.requests = _capped(self.requests, rpm, now)
        self.tokens = _capped(self.tokens, tpm, now)

    @property
    def limited(self) -> bool:
        """True when some limit is known (given or learnt)."""
        return self.requests is not None or self.tokens is not None

    def max_rate(self, tokens_per_request: float) -> float | None:
        """Requests per second the limits allow in the long run (None: no known limit)."""
        rates = []
        if self.requests is not None:
            rates.append(self.requests.rate)
        if self.tokens is not None and tokens_per_request > 0:
            rates.append(self.tokens.rate / (tokens_per_request * self.token_scale))
        return min(rates) if rates else None

    def too_large(self, tokens: float) -> bool:
        """True when one request needs more tokens than the whole token bucket holds."""
        return self.tokens is not None and tokens * self.token_scale > self.tokens.limit

    # ----- pacing ---------------------------------------------------------------------------

    def wait(self, tokens: float, now: float) -> float:
        """Seconds before a request of `tokens` (prompt + max_tokens) may be sent."""
        wait = max(0.0, self.paused_until - now)
        if self.requests is not None:
            wait = max(wait, self.requests.wait(1.0, now))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait(tokens * self.token_scale, now))
        return wait

    def take(self, tokens: float, now: float) -> Ticket:
        """Charge a request that is being sent now."""
        self._seq += 1
        charged = tokens * self.token_scale
        if self.requests is not None:
            self.requests.refill(now)
            self.requests.level -= 1.0
        if self.tokens is not None:
            self.tokens.refill(now)
            self.tokens.level -= charged
        ticket = Ticket(self._seq, now, tokens, charged)
        self._tickets.append(ticket)
        if len(self._tickets) > _MAX_TICKETS:
            self._tickets.popleft()
        return ticket

    def refund(self, ticket: Ticket, now: float) -> None:
        """The server did not charge this request (it answered 429, or never saw it)."""
        if ticket.refunded:
            return
        ticket.refunded = True
        if self.requests is not None:
            self.requests.refill(now)
            self.requests.level = min(self.requests.limit, self.requests.level + 1.0)
        if self.tokens is not None:
            self.tokens.refill(now)
            self.tokens.level = min(self.tokens.limit, self.tokens.level + ticket.charged)

    def pause(self, seconds: float, now: float) -> None:
        """One shared pause: nothing is sent before `now + seconds` (pauses never add up)."""
        self.paused_until = max(self.paused_until, now + max(0.0, seconds))

    # ----- calibration ----------------------------------------------------------------------

    def observe(self, ticket: Ticket, info: RateLimitInfo | None, now: float) -> None:
        """Learn from the response to `ticket` (call `refund` first if it was refused)."""
        self.answered = True
        if info is None:
            return
        self.headers_seen = True
        rpm = _min(info.limit_requests, self.rpm)
        tpm = _min(info.limit_tokens, self.tpm)
        if self._anchor is not None and ticket.seq <= self._anchor.seq:
            # Older than what we already know: only its limits are news.
            self.requests = _capped(self.requests, rpm, now)
            self.tokens = _capped(self.tokens, tpm, now)
            return
        later = [t for t in self._tickets if t.seq > ticket.seq and not t.refunded]
        if rpm is not None:
            left = info.remaining_requests
            self.requests = _anchored(self.requests, rpm, left, ticket.sent, now, len(later))
        if tpm is not None:
            left_t = info.remaining_tokens
            if left_t is not None:
                self._learn_scale(ticket, float(left_t), tpm)
            spent = sum(t.charged for t in later)
            self.tokens = _anchored(self.tokens, tpm, left_t, ticket.sent, now, spent)
        self._anchor = _Anchor(
            ticket.seq,
            ticket.sent,
            float(info.remaining_tokens) if info.remaining_tokens is not None else None,
        )
        while self._tickets and self._tickets[0].seq <= ticket.seq:
            self._tickets.popleft()

    def _learn_scale(self, ticket: Ticket, left: float, tpm: float) -> None:
        """Tokens the server charged between the last anchor and this one, against ours."""
        anchor = self._anchor
        if anchor is None or anchor.tokens_left is None:
            return
        refilled = anchor.tokens_left + (ticket.sent - anchor.sent) * tpm / 60.0
        if refilled >= tpm * 0.98:
            return  # the server's bucket may have been full: its use is not measurable
        between = [t for t in self._tickets if anchor.seq < t.seq <= ticket.seq and not t.refunded]
        ours = sum(t.tokens for t in between)
        if ours < _SCALE_MIN_TOKENS:
            return
        theirs = refilled - left
        self._scale_num = _SCALE_DECAY * self._scale_num + theirs
        self._scale_den = _SCALE_DECAY * self._scale_den + ours
        if self._scale_den > 0:
            low, high = _SCALE_RANGE
            self.token_scale = min(high, max(low, self._scale_num / self._scale_den))


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _capped(bucket: Bucket | None, limit: float | None, now: float) -> Bucket | None:
    """`bucket` with a new limit (its level kept, within the limit); a new bucket starts empty."""
    if limit is None:
        return bucket
    if bucket is None:
        return Bucket(float(limit), 0.0, now)
    bucket.refill(now)
    bucket.limit = float(limit)
    bucket.level = min(bucket.level, bucket.limit)
    return bucket


def _anchored(
    bucket: Bucket | None,
    limit: float,
    remaining: float | None,
    sent: float,
    now: float,
    spent_since: float,
) -> Bucket:
    """The server's bucket now, from what remained when it charged a request sent at `sent`."""
    bucket = _capped(bucket, limit, now)
    assert bucket is not None
    if remaining is not None and math.isfinite(remaining):
        refill = max(0.0, now - sent - ARRIVAL_SKEW) * bucket.rate
        level = min(bucket.limit, remaining + refill)
        bucket.level = level - spent_since
        bucket.stamp = now
    return bucket
