"""Pacing parallel requests under per-minute limits that servers enforce over seconds.

Pure: no I/O, no sleeping, no clock of its own (every method takes `now`), no third-party
imports, so every rule is testable on a fake clock. `%%chatmap` asks `wait()` how long the
next request must wait, sleeps that long, `take()`s it, and reports what the server said
with `accepted()` or `refused()`.

How servers enforce their limits (the facts this model is built on):

- Limits are quoted per minute (requests, RPM; tokens, TPM) but enforced over much
  shorter windows. OpenAI's rate-limit guide
  (https://platform.openai.com/docs/guides/rate-limits): they "can be quantized, meaning
  they are enforced over shorter periods of time (e.g. 60,000 requests/minute may be
  enforced as 1,000 requests/second)"; short bursts get 429s "even when you are
  technically below the rate limit per minute". Azure OpenAI
  (https://learn.microsoft.com/azure/ai-services/openai/how-to/quota) evaluates the rate
  "over a small period of time, typically 1 or 10 seconds". So a minute's capacity is
  never available at once unless the server has shown it is.
- Refused requests are charged: "unsuccessful requests contribute to your per-minute
  limit, so continuously resending a request won't work" (OpenAI). A 429 storm digs the
  hole deeper; the only way out is to send less.
- A request is charged on arrival: 1 request and its prompt's tokens plus `max_tokens`.
- The `x-ratelimit-limit-*` / `-remaining-*` / `-reset-*` headers, when a server sends
  them, report the per-minute limit and what is left of it, never the window enforced: a
  full "remaining" does not mean a burst is welcome. Many servers (vLLM, llama.cpp,
  LiteLLM proxies, gateways) send no such header at all, only a 429, with or without
  `retry-after`.

The model, per dimension (requests, tokens), each with a per-minute limit that is the
lowest of this map's `--rpm`/`--tpm` (caps for this map only), the server's
`x-ratelimit-limit-*`, or, with neither, a rate found from 429s:

1. A steady pace: requests are spaced evenly at `PACE` (a little under the limit) × limit
   / 60 per second (a GCRA schedule, `_Pace`), so a window of any length sees at most its
   share. No burst past the 1 s window's share is assumed. The one exception is the head
   start (3): under a limit told, before any 429, that share goes at once.
2. `gain` multiplies that pace. 429s lower it (× `DECREASE`, or mildly for an isolated
   episode) once they are a real share of the answers (`LOSS_TOLERANCE`: a flaky
   server's stray 429s are no limit's doing), at once near a pace that met 429s before;
   once per episode (429s with no answer in between: the way is still shut, which the
   pauses handle) unless they go on for as long as the window's feedback takes; and
   success brings it back (`RECOVER`, then `CREEP`, slower by as much as that window is
   longer). A repeated episode while we had more to send lowers it to the rate the
   server accepted of ours lately (`Dim.kept`): what another client sharing the quota
   leaves us. So that client, or a limit lower than told, costs a few 429s, not a storm
   (in `tests/map/test_ratelimit.simulate`, another client at 60% of the limit: 4-6% of
   requests answered 429 in 1 s and 10 s windows; by × DECREASE steps, 8-35%). Without
   any known limit, many 429s at once (`FOUND_LOSS`) set one (`found`): the rate at which
   the server accepted what went out in the second before the first of them; it is
   lowered on later episodes and raised slowly while none comes (AIMD).
3. A burst is grown only as the server proves it, and only under a limit told (by the
   headers, or a cap when there are none), never past a minute's worth of it (the
   headers' bucket, and our own sends of the last minute), never above a cap, never under
   a rate found from 429s (a guess). The documented windows (`WINDOWS`: 1 s, then 10 s)
   are hypotheses, tested in turn: the share of the smallest window not yet disproved
   (limit × window / 60) is never exceeded but by a gentle test (past the share, at
   `TEST_GAIN` × the pace, at most `TEST_ALLOW` of it); a test accepted past `PROOF` of
   the share (a margin for where our count of the server's window may be off) shows the
   window is longer, so a test lasts about (PROOF - 1) × the window. When nothing in the
   window was sent near its edge (`EDGE`), the server counts it as we do, and the proof
   is one request past the share (tokens: `MEASURED_PROOF`, once an answer's usage
   measured how the server counts them). A 429 ends testing for `PROBE_QUIET` seconds (no
   window is longer than a minute), the sends meanwhile kept within the windows' shares
   and the burst not grown again (another client may be using the share). Below the share
   the gain grows × `GROWTH` per accepted request sent at it, up to `MAX_GAIN`; once the
   1 s window is disproved it is `MAX_GAIN` at once, the 10 s window's share bounding the
   burst (to a window, its share sent at once is the same as spread over it). So a 1 s
   window costs one refused test a minute, a 10 s window is filled, then tested, and a
   minute-long one is used as a minute's capacity, bounded by what the headers say is
   left of it. (A server counting fixed windows, not sliding ones, may let a test through
   across a window's boundary: the burst that follows then meets a 429, and bursts stop.)
   The head start: the 1 s window's first test starts with its share sent at once (to a
   1 s window that is the same as the share spread over the second, and no longer
   window's share is smaller) and goes as far past it as the proof needs (one request
   when counted exactly; else one request at a time, each once the last was accepted):
   a 1 s window refuses that one request, and a longer one is shown within a round trip
   or a few. The first 429 ends it for good (`Dim.fresh`): another client may be there.
4. A 429 is never refunded (the server charged it). Every sender waits: the server's
   `retry-after` when given; after a burst met the window, until the windows' shares
   have room again (the overshoot is ours: it leaves the window as it came); else a
   backoff that doubles while 429s go on, one request at a time (`blocked`) until one
   gets through.
5. With headers, each answer re-anchors a per-minute bucket (`Bucket`) on what remained:
   the remainder now is the reported one, plus the refill since that request was sent,
   minus what we sent since (each `Ticket` keeps its charge). No send may overdraw it, so
   another client's use of the quota, which the remainder shows, bounds ours; what its
   use does to the short windows, which no header shows, the 429s teach (2). An answer's
   `usage` shows how the server counts a prompt's tokens against our count: their ratio
   (`scale`) scales our token charges.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ipychat.core.types import RateLimitInfo
from ipychat.map.pacing import (
    ARRIVAL_SKEW,
    BACKOFF_FIRST,
    BACKOFF_MAX,
    CATCH_UP,
    CEILING_MARGIN,
    CREEP,
    DECREASE,
    DECREASE_ISOLATED,
    FOUND_LOSS,
    FOUND_MARGIN,
    FOUND_MIN,
    FOUND_QUIET,
    FOUND_RAISE,
    FOUND_SPAN,
    GROWTH,
    LOSS_SPAN,
    LOSS_TOLERANCE,
    MAX_GAIN,
    MIN_GAIN,
    PACE,
    PROBE_QUIET,
    RECOVER,
    REPEATED,
    TEST_GAIN,
    WINDOWS,
    Bucket,
    Dim,
    Ticket,
)

# The pacing constants the tests and benchmarks read from here, re-exported.
__all__ = ["FOUND_MARGIN", "PACE", "PROBE_QUIET", "TEST_GAIN", "RateLimiter", "Ticket"]

_MAX_TICKETS = 4096  # tickets kept for anchoring (bounded memory)


@dataclass
class RateLimiter:
    """Pacing state for one endpoint and model (see the module docstring).

    What the server taught (its limits, its windows, `scale`, the gain, the anchored
    buckets) outlives a map; the caps given to a map (`begin`) apply to that map only.
    """

    rpm: float | None = None
    tpm: float | None = None
    now: float = 0.0
    gain: float = field(init=False, default=1.0)
    paused_until: float = field(init=False, default=0.0)
    blocked: bool = field(init=False, default=False)  # after a bare 429: one at a time
    answered: bool = field(init=False, default=False)  # any response seen, headers or not
    headers_seen: bool = field(init=False, default=False)
    requests: Dim = field(init=False, default_factory=lambda: Dim("requests"))
    tokens: Dim = field(init=False, default_factory=lambda: Dim("tokens"))
    _seq: int = field(init=False, default=0)
    _tickets: deque[Ticket] = field(init=False, default_factory=deque)
    _charged: dict[str, float] = field(  # the running total of our charges, per dimension
        init=False, default_factory=lambda: {"requests": 0.0, "tokens": 0.0}
    )
    _anchored: int = field(init=False, default=0)  # the last reading's ticket (seq; 0: none)
    _event_at: float = field(init=False, default=-math.inf)  # the last 429 event seen
    _raised_at: float = field(init=False, default=-math.inf)  # the gain's last change
    _gain_stamp: float = field(init=False, default=0.0)
    _backoffs: int = field(init=False, default=0)  # 429 events since the last success
    _ceiling: float = field(init=False, default=1.0)  # the gain the last 429 event came at
    _decreased_at: float = field(init=False, default=-math.inf)
    _settle_until: float = field(init=False, default=-math.inf)  # a burst's aftermath
    _answered_since: bool = field(init=False, default=True)  # since the last 429 event
    _slowed: bool = field(init=False, default=False)  # in this 429 episode
    _slowed_at: float = field(init=False, default=-math.inf)
    _episode: Ticket | None = field(init=False, default=None)  # its first refused request
    _outcomes: deque[bool] = field(  # the last answers: accepted (True) or a 429
        init=False, default_factory=lambda: deque(maxlen=LOSS_SPAN)
    )

    def __post_init__(self) -> None:
        self.begin(self.rpm, self.tpm, self.now)
        self._gain_stamp = self.now

    @property
    def _dims(self) -> tuple[Dim, Dim]:
        return self.requests, self.tokens

    # ----- limits ---------------------------------------------------------------------------

    def begin(self, rpm: float | None, tpm: float | None, now: float) -> None:
        """A map starts: its caps (None: none) replace the last map's; nothing else does."""
        for value, name in ((rpm, "rpm"), (tpm, "tpm")):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, not {value!r}")
        self.rpm, self.tpm = rpm, tpm
        self.requests.cap, self.tokens.cap = rpm, tpm
        self.blocked = False
        for dim in self._dims:
            dim.forget_accepted()

    @property
    def limited(self) -> bool:
        """True when some limit is known (given, learnt from headers or found)."""
        return self.requests.limit is not None or self.tokens.limit is not None

    @property
    def token_limit(self) -> float | None:
        return self.tokens.limit

    def max_rate(self, tokens_per_request: float) -> float | None:
        """Requests per second the pacing may reach (None: no known limit)."""
        rates = []
        rate = self.requests.rate(self.gain)
        if rate is not None:
            rates.append(rate)
        rate = self.tokens.rate(self.gain)
        if rate is not None and tokens_per_request > 0:
            rates.append(rate / (tokens_per_request * self.tokens.scale))
        return min(rates) if rates else None

    def head_start(self, tokens_per_request: float, now: float) -> float:
        """Requests the 1 s window's share holds while it may go at once (`Dim.heading`;
        0: not now): the requests in flight must have room for them."""
        counts = []
        for dim, per in ((self.requests, 1.0), (self.tokens, tokens_per_request)):
            if dim.limit is None:
                continue
            if not dim.heading(now):
                return 0.0
            counts.append(dim.share(0) / max(per * dim.scale, 1e-9))
        return min(counts, default=0.0)

    def too_large(self, tokens: float) -> bool:
        """True when one request needs more tokens than the whole per-minute limit."""
        limit = self.tokens.limit
        return limit is not None and tokens * self.tokens.scale > limit

    # ----- pacing ---------------------------------------------------------------------------

    def wait(self, tokens: float, now: float) -> float:
        """Seconds before a request of `tokens` (prompt + max_tokens) may be sent."""
        # Past the pace, or right after a burst met a window's edge: the windows' shares
        # bound what goes out (their charges leave as they came).
        bursting = self.gain > 1.0 or now < self._settle_until
        return max(
            self.paused_until - now,
            self.requests.wait(1.0, bursting, now),
            self.tokens.wait(tokens, bursting, now),
            0.0,
        )

    def take(self, tokens: float, now: float) -> Ticket:
        """Charge a request that is being sent now."""
        self._seq += 1
        paced = self.requests.paced(now) or self.tokens.paced(now)
        held = paced or 0.0 <= now - self.paused_until <= CATCH_UP
        charged = {
            "requests": self.requests.take(1.0, self.gain, now),
            "tokens": self.tokens.take(tokens, self.gain, now),
        }
        beyond = {dim.name: (dim.level, dim.beyond(now), dim.proof(now)) for dim in self._dims}
        total = self._charged
        total["requests"] += charged["requests"]
        total["tokens"] += charged["tokens"]
        ticket = Ticket(
            self._seq,
            now,
            tokens,
            charged,
            through=dict(total),
            probe=self.blocked,
            paced=paced,
            held=held,
            beyond=beyond,
        )
        self._tickets.append(ticket)
        if len(self._tickets) > _MAX_TICKETS:
            self._tickets.popleft()
        return ticket

    def pause(self, seconds: float, now: float) -> None:
        """One shared pause: nothing is sent before `now + seconds` (pauses never add up)."""
        self.paused_until = max(self.paused_until, now + max(0.0, seconds))

    # ----- what the server said -------------------------------------------------------------

    def accepted(
        self,
        ticket: Ticket,
        info: RateLimitInfo | None,
        now: float,
        server_tokens: float | None = None,
    ) -> None:
        """The request of `ticket` was answered: its `x-ratelimit-*` headers (if any), and
        `server_tokens`, its charge as the server counts (its prompt tokens, from `usage`,
        plus max_tokens), when it told."""
        self.answered = True
        self._outcomes.append(True)
        for dim in self._dims:
            dim.accept(ticket.charged[dim.name], now)
        if ticket.sent >= self._event_at:
            self._answered_since = True
        self._learn(ticket, info, now)
        if server_tokens is not None and ticket.tokens > 0 and server_tokens > 0:
            self.tokens.measure(server_tokens / ticket.tokens)
        for dim in self._dims:
            # Accepted past the share of the window under test: the window is longer.
            level, beyond, proof = ticket.beyond[dim.name]
            if level == 0 and dim.heading(now):
                dim.head_ok = max(dim.head_ok, beyond * dim.share(0))
            if level == dim.level and dim.testing(now) and beyond > proof:
                dim.level += 1
                if level == 0 and self.gain < MAX_GAIN:
                    # The next documented window (10 s) is what bounds the burst now: to a
                    # window, its share sent at once is the same as spread over it.
                    self._set_gain(MAX_GAIN, now)
        if ticket.sent >= self._event_at:  # sent after the last 429: the way is open
            self.blocked = False
            self._backoffs = 0
            self._recover(ticket, now)

    def refused(
        self,
        ticket: Ticket,
        info: RateLimitInfo | None,
        retry_after: float | None,
        now: float,
    ) -> None:
        """The request of `ticket` got a 429 (charged all the same: nothing is refunded)."""
        self.answered = True
        self._outcomes.append(False)
        self._learn(ticket, info, now)
        for dim in self._dims:
            dim.fresh = False
        # A new congestion event: not an echo of the last one (sent before it was seen),
        # not a probe of a blocked way. An episode: 429s with no answer in between (the
        # way is still shut, which the pauses see to, not news about the pace).
        event = ticket.sent >= self._event_at and not ticket.probe
        if event:
            self._event_at = now
            if self._answered_since:  # a new episode; its first 429 tells the most
                self._slowed = False
                self._episode = ticket
            self._answered_since = False
        # One slow-down per episode (not in a burst's aftermath): at once when a burst or
        # a test met the window's edge, or the pace is back where 429s came before; else
        # once 429s are a real share of the answers (a few stray ones are no limit's doing:
        # slowing down for each would spiral down).
        near = self._ceiling < 1.0 and self.gain >= self._ceiling * CEILING_MARGIN
        tolerance = LOSS_TOLERANCE if self.limited else FOUND_LOSS
        sure = self._bursting(ticket, now) or near or self._loss() > tolerance
        again = self._slowed and event and now - self._slowed_at > self._feedback()
        if sure and (not self._slowed or again) and now >= self._settle_until:
            self._slow_down(ticket, retry_after, now)
            self._slowed = True
            self._slowed_at = now
        if retry_after is not None and retry_after >= 0:
            self.pause(retry_after, now)
            return
        if now < self._settle_until:
            # A burst met the window's edge: what it overshot is ours, and leaves the window
            # as it came; the windows' shares hold the sends back until then (`wait`).
            return
        self.blocked = True
        if event or ticket.probe:  # the way is still shut: wait longer
            self._backoffs += 1
        self.pause(min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** max(0, self._backoffs - 1)), now)

    def failed(self, ticket: Ticket, now: float) -> None:
        """Another error: it says nothing about the limits."""
        self.answered = True

    def _bursting(self, ticket: Ticket, now: float) -> bool:
        """Whether `ticket` went past the pace: a burst, or a window's test."""
        return self.gain > 1.0 or any(
            dim.testing(now) and ticket.beyond[dim.name][1] > PACE for dim in self._dims
        )

    def _loss(self) -> float:
        """The share of 429s among the last LOSS_SPAN answers (fewer count as accepted)."""
        return self._outcomes.count(False) / max(LOSS_SPAN, len(self._outcomes))

    def _slow_down(self, ticket: Ticket, retry_after: float | None, now: float) -> None:
        """One 429 episode: lower the pace (see the module docstring, 2 and 3)."""
        found = self.requests.found
        bursting = self._bursting(ticket, now)
        first = self._episode or ticket  # what went out before it was all accepted
        if not self.limited:
            # No limit known: the first 429 sets one from what the server was accepting.
            estimate = self._found_estimate(first, retry_after)
            if estimate is not None:
                self.requests.found = estimate
        elif bursting:
            # A test or a burst met the window's edge: no more of them for a while. Their
            # charges leave the window as they came, the refused ones last: the 429s of
            # that aftermath are not news.
            for dim in self._dims:
                dim.quiet_until = now + PROBE_QUIET
                window = WINDOWS[dim.level] if dim.level < len(WINDOWS) else 60.0
                dim.bounded_until = now + window + 1.0
            self._set_gain(1.0, now)
            self._settle_until = now + max(1.0, 2.0 * (retry_after or 0.0))
        elif found is not None and self.requests.limit == found:
            estimate = self._found_estimate(first, retry_after)
            self.requests.found = max(found * DECREASE, estimate or 0.0)
        else:
            self._ceiling = self.gain
            repeated = now - self._decreased_at < REPEATED
            self._decreased_at = now
            gain = self.gain * (DECREASE if repeated else DECREASE_ISOLATED)
            if repeated and ticket.held:  # 429s go on while we had more to send: down
                # to what the server accepted of ours lately
                kept = [k for d in self._dims if (k := d.kept(now)) is not None]
                if kept and min(kept) < gain:
                    gain = min(kept)
                    self._ceiling = gain / CEILING_MARGIN
            self._set_gain(max(MIN_GAIN, gain), now)

    def _found_estimate(self, ticket: Ticket, retry_after: float | None) -> float | None:
        """A per-minute rate from a 429: what went out in the second before the refused
        request (all accepted: the server refuses in order) over the time it covers until
        the server has room again (its retry-after; without one, a whole second: no
        documented window is shorter). None when too few went out to tell."""
        since = ticket.sent - FOUND_SPAN
        before = [t.sent for t in self._tickets if t.seq < ticket.seq and t.sent >= since]
        if len(before) < FOUND_MIN:
            return None
        covered = ticket.sent - min(before)
        span = covered + retry_after if retry_after is not None else max(covered, FOUND_SPAN)
        return len(before) / max(span, 1e-3) * 60.0 * FOUND_MARGIN

    def _set_gain(self, gain: float, now: float) -> None:
        self.gain = gain
        self._raised_at = now
        self._gain_stamp = now

    def _recover(self, ticket: Ticket, now: float) -> None:
        """After a success: back towards the steady pace, or a step of a proven burst."""
        elapsed = max(0.0, now - self._gain_stamp)
        self._gain_stamp = now
        if self.gain < 1.0:
            # Quickly to just under the gain the last 429 came at, then slowly on.
            target = min(1.0, self._ceiling * CEILING_MARGIN)
            if self.gain < target:
                self.gain = target - (target - self.gain) * math.exp(-RECOVER * elapsed)
            self.gain = min(1.0, self.gain + CREEP * elapsed / self._feedback())
            return
        found = self.requests.found
        quiet = now - self._slowed_at
        if found is not None and self.requests.limit == found and quiet > FOUND_QUIET:
            self.requests.found = found * (1.0 + FOUND_RAISE * min(elapsed, 1.0))
        # A burst grows only on proof: a request sent on the pace's schedule at the
        # current gain was accepted (a slow trickle proves nothing).
        if ticket.paced and ticket.sent >= self._raised_at and self._may_burst(now):
            self.gain = min(MAX_GAIN, self.gain * GROWTH)
            self._raised_at = now

    def _feedback(self) -> float:
        """Seconds a pace too fast may go on before its 429s show: the window tested."""
        levels = [d.level for d in self._dims if d.limit is not None]
        return WINDOWS[min(min(levels, default=0), len(WINDOWS) - 1)]

    def _may_burst(self, now: float) -> bool:
        """Whether the gain may grow past 1: only under the server's own limits, and while
        testing the 1 s window or once it is shown to be longer (then the share of the
        next unproven window bounds the burst; at 1 s, only the even pace has the margin
        that timing jitter needs); not while testing is quiet after a burst met a 429:
        another client may use the share (a burst back to it as the window refilled was a
        storm: 27% 429s, a third of a 10 s window's share used by another, in `simulate`)."""
        dims = [d for d in self._dims if d.limit is not None]
        return bool(dims) and all(
            d.may_burst and now >= d.quiet_until and (d.level or d.testing(now)) for d in dims
        )

    # ----- learning from the headers --------------------------------------------------------

    def _learn(self, ticket: Ticket, info: RateLimitInfo | None, now: float) -> None:
        if info is None:
            return
        self.headers_seen = True
        readings = {
            "requests": (info.limit_requests, info.remaining_requests),
            "tokens": (info.limit_tokens, info.remaining_tokens),
        }
        for dim in self._dims:
            limit, _ = readings[dim.name]
            if limit is not None and limit > 0:
                dim.server = float(limit)
                if dim.minute is None:
                    dim.minute = Bucket(float(limit), float(limit), now)
                dim.minute.limit = float(limit)
        if ticket.seq <= self._anchored:
            return  # older than what we already know: only its limits are news
        for dim in self._dims:
            _, remaining = readings[dim.name]
            if dim.minute is None or remaining is None:
                continue
            refill = max(0.0, now - ticket.sent - ARRIVAL_SKEW) * dim.minute.rate
            level = min(dim.minute.limit, remaining + refill)
            since = self._charged[dim.name] - ticket.through[dim.name]
            dim.minute.level = level - since
            dim.minute.stamp = now
        self._anchored = ticket.seq
        while self._tickets and self._tickets[0].seq < ticket.seq:
            self._tickets.popleft()
