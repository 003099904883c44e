"""One dimension of the pacing model of `ipychat.map.ratelimit` (requests or tokens): its
constants, the per-minute `Bucket`, the steady pace, what was sent in each short window,
`Dim`, which decides when the next send may go, and the `Ticket` of a request sent. Pure:
time is passed in, nothing waits. The model and its sources are explained in
`ipychat.map.ratelimit`'s docstring."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Bucket", "Dim", "Ticket"]

# The steady pace: this fraction of the per-minute limit. Evenly spaced at it, the requests
# of any window of W seconds span W / PACE: arrivals may bunch by W × (1 / PACE - 1)
# (10 ms in a 1 s window, at any rate; a loopback or a LAN moves arrivals by far less)
# before a window holds more than its share.
PACE = 0.99
# On a 429 event at or below the limit, the gain is multiplied by DECREASE when the last
# event was less than REPEATED seconds ago (another client, a lower limit: the 429s go on),
# by DECREASE_ISOLATED otherwise (a stall bunched our requests: once is not a trend), never
# below MIN_GAIN. Then it recovers: quickly (RECOVER: the share of the gap closed per
# second, as e^-RECOVER·t) to CEILING_MARGIN × the gain the 429 came at, then by CREEP per
# second up to 1.
DECREASE = 0.8
DECREASE_ISOLATED = 0.95
REPEATED = 10.0
MIN_GAIN = 0.02
RECOVER = 1.0
CEILING_MARGIN = 0.95
CREEP = 0.01
# Bursts (see the module docstring, 3): the documented windows tested in turn, the test's
# allowance and pace, the proof, the growth below the share, and the quiet after a 429.
# A test goes at the test's pace from the window's share on, so it takes (PROOF - 1) ×
# the window / TEST_GAIN: the proof of a window is what is accepted past its share, beyond
# what our count may differ from the server's: its window ends ARRIVAL_SKEW earlier than
# ours (a request or two past the 1 s share), and our token counts are scaled estimates.
WINDOWS = (1.0, 10.0)
TEST_ALLOW = 1.25
TEST_GAIN = 1.25
PROOF = (1.03, 1.02)  # per window of WINDOWS
# A test whose window holds nothing sent near its edge (sent more than EDGE before the
# window's start: a network's arrival jitter) is counted by the server as by us, so its
# proof is any request past the share when we count as the server does: requests, or
# tokens once an answer's `usage` measured `scale` (to within MEASURED_PROOF). The head
# start's test and a 10 s window's test in a map's first seconds are such: each is shown
# one request past the share, and the head start sends that far at once.
EDGE = 0.1
MEASURED_PROOF = 1.01
# ×4 per round trip while a window is tested past the head start (after a 429, once
# testing resumes); once the 1 s window is disproved the gain is MAX_GAIN at once, the
# 10 s share bounding the burst. Bursts that fast are safe only because each request of
# one is written before the next is stamped (map.dispatch): with a burst's writes lagging
# their stamps, the window's refill ten seconds later met them (25-98 429s of 1,500 in
# the 10 s RPM cell against FakeOpenAIServer; 1-2 with it).
GROWTH = 4.0
MAX_GAIN = 64.0
PROBE_QUIET = 60.0
# Without a retry-after, the shared pause after a 429: BACKOFF_FIRST, doubling while 429s
# follow each other, up to BACKOFF_MAX.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 8.0
# A limit found from 429s (no headers, no caps): this fraction of the rate at which the
# server accepted what went out in the FOUND_SPAN seconds before a refusal (if at least
# FOUND_MIN did; see `_found_estimate`); on each later 429 event, the larger of that and
# DECREASE × the last; raised by FOUND_RAISE per second of sending once FOUND_QUIET
# passed since the last slow-down.
FOUND_MARGIN = 0.9
FOUND_SPAN = 1.0
FOUND_MIN = 10
FOUND_RAISE = 0.02
FOUND_QUIET = 5.0
# A 429 slows the pace only once 429s are more than LOSS_TOLERANCE of the last LOSS_SPAN
# answers (or at once, past the pace): stray ones from a flaky server are not a limit.
# With no limit known, a rate is found from 429s only past FOUND_LOSS: a server that says
# nothing may be flaky (a few 429s) rather than limiting (many at once).
LOSS_TOLERANCE = 0.05
FOUND_LOSS = 0.15
LOSS_SPAN = 50
# Learning `scale` (the server's token count against ours): weight of the history,
# plausible range.
SCALE_DECAY = 0.8
SCALE_RANGE = (0.2, 5.0)
# A sender woken this late keeps to the schedule; later, the time is lost (never a burst).
CATCH_UP = 0.010
# The server charged a request when it arrived, a little after we sent it; counting the
# refill from our send time would be optimistic by that much. Anchors assume this delay.
ARRIVAL_SKEW = 0.010


@dataclass
class Bucket:
    """Holds up to `limit` units, refilling continuously at limit/60 per second: the
    per-minute budget as the server's headers report it."""

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
class _Pace:
    """An even schedule (GCRA): the next unit may go at `due`; each charge of `amount`
    at `rate` units per second moves it on by amount / rate."""

    due: float = -math.inf

    def wait(self, now: float) -> float:
        return max(0.0, self.due - now)

    def busy(self, now: float) -> bool:
        """Whether a send now follows the schedule (rather than an idle spell)."""
        return now - self.due <= CATCH_UP

    def take(self, amount: float, rate: float, now: float) -> None:
        # A sender woken a little late keeps to the schedule; after an idle spell the
        # schedule starts again from now (no credit: an idle spell is not a burst).
        start = self.due if self.busy(now) else now
        self.due = start + amount / rate


@dataclass
class _Sent:
    """Our own charges within one of the documented windows, oldest first, and their sum."""

    seconds: float
    log: deque[tuple[float, float]] = field(default_factory=deque)
    total: float = 0.0

    # A charge leaves the server's window ARRIVAL_SKEW after it leaves ours: the server
    # counted it when it arrived, a little after we sent it.

    def expire(self, now: float) -> float:
        # (a hair early: `frees_at` must not name a time at which nothing leaves)
        while self.log and self.log[0][0] <= now - self.seconds - ARRIVAL_SKEW + 1e-9:
            self.total -= self.log.popleft()[1]
        if not self.log:
            self.total = 0.0  # no drift from float sums
        return self.total

    def add(self, amount: float, now: float) -> None:
        self.log.append((now, amount))
        self.total += amount

    def compact(self, now: float) -> bool:
        """Whether nothing in the window was sent near its start (see EDGE)."""
        return not self.log or self.log[0][0] > now - self.seconds + EDGE

    def frees_at(self) -> float:
        """When the oldest charge leaves the window."""
        return self.log[0][0] + self.seconds + ARRIVAL_SKEW if self.log else -math.inf


@dataclass
class Dim:
    """One limited quantity: requests or tokens (see the module docstring)."""

    name: str
    cap: float | None = None  # this map's --rpm/--tpm
    server: float | None = None  # x-ratelimit-limit-*
    found: float | None = None  # a per-minute rate found from 429s (requests only)
    scale: float = 1.0  # the server's units per unit of ours (tokens: another tokenizer)
    measured: bool = False  # `scale` was measured from an answer's usage (tokens)
    pace: _Pace = field(default_factory=_Pace)
    minute: Bucket | None = None  # anchored on x-ratelimit-remaining-*
    sent: tuple[_Sent, ...] = field(default_factory=lambda: tuple(_Sent(w) for w in WINDOWS))
    sent_minute: _Sent = field(default_factory=lambda: _Sent(60.0))
    level: int = 0  # WINDOWS[level]: the smallest window not shown to be longer
    quiet_until: float = -math.inf  # no window test before (a test met a 429)
    bounded_until: float = -math.inf  # the shares bound the sends until (a burst met a 429)
    fresh: bool = True  # no 429 seen yet: the 1 s window's test may start with its share
    head_ok: float = 0.0  # what the head start's test has had accepted past the share
    # What the server accepted of ours in the longest documented window, since when (`kept`)
    accepted: _Sent = field(default_factory=lambda: _Sent(WINDOWS[-1]))
    accepting_since: float = math.inf

    @property
    def limit(self) -> float | None:
        """The lowest of the cap, the server's limit and a rate found (None: none known)."""
        limit = self.cap
        for value in (self.server, self.found):
            if value is not None and (limit is None or value < limit):
                limit = value
        return limit

    @property
    def may_burst(self) -> bool:
        """Whether bursts may be tested: under a limit told (the server's, or a cap when the
        server tells none; never past a cap it is below), not a rate guessed from 429s."""
        if self.found is not None or self.limit is None:
            return False
        return self.server is None or self.cap is None or self.cap >= self.server

    def testing(self, now: float) -> bool:
        """Whether the window WINDOWS[level] may be tested now."""
        return self.may_burst and self.level < len(WINDOWS) and now >= self.quiet_until

    def share(self, i: int) -> float:
        """What the server allows within WINDOWS[i] if that is its window."""
        limit = self.limit
        assert limit is not None
        return limit * WINDOWS[i] / 60.0

    def heading(self, now: float) -> bool:
        """Whether the 1 s window is under test: its share goes at once, then the test."""
        return self.fresh and self.level == 0 and self.testing(now)

    def proof(self, now: float) -> float:
        """How far past the share of the window under test (× share) a test sent now must
        go, once accepted, to show the window is longer (PROOF, EDGE)."""
        if self.level >= len(WINDOWS):
            return math.inf
        if self.sent[self.level].compact(now):
            if self.name == "requests":
                return 1.0  # counted exactly: one request past the share
            if self.measured:
                return MEASURED_PROOF
        return PROOF[self.level]

    def in_test(self, now: float) -> bool:
        """Whether sending now goes past the tested window's share (gently)."""
        if not self.testing(now):
            return False
        return self.sent[self.level].expire(now) >= self.share(self.level)

    def rate(self, gain: float, now: float | None = None) -> float | None:
        """Server units per second we pace at (now: within a window test, if one is on)."""
        limit = self.limit
        if limit is None:
            return None
        if not self.may_burst:
            gain = min(gain, 1.0)
        elif now is not None and self.in_test(now):
            gain = min(gain, TEST_GAIN)
        return limit / 60.0 * PACE * gain

    def wait(self, amount: float, bursting: bool, now: float) -> float:
        if self.limit is None:
            return 0.0
        charged = amount * self.scale
        test = self.testing(now)
        head = self.heading(now)
        wait = self.pace.wait(now)  # none while heading: the pace is not charged then (`take`)
        if self.minute is not None:
            wait = max(wait, self.minute.wait(charged / PACE, now))
        # Unproven windows: never past their share but by the test of the smallest. Even
        # paced, a window may hold one request more than the pace's share (its charge can
        # be a good part of a second's tokens). Less the pace's margin while bursting (no
        # even spacing absorbs a stall then), and for a window's length after a burst met
        # a 429 (its overshoot, the refused requests included, holds its place as long).
        margin = PACE if bursting or now < self.bounded_until else 1.0
        for i in range(self.level, len(WINDOWS)):
            if head and i == 0:  # the share, and its test as far as a proof needs
                reach = self.proof(now)
                reach = reach if reach < PROOF[0] else 1.0  # else one request at a time
                allowed = max(self.share(i) * reach, self.head_ok) + charged
            else:
                allowed = self.share(i) * (TEST_ALLOW if test and i == self.level else margin)
            used = self.sent[i].expire(now)
            if charged <= allowed and used + charged > allowed:
                wait = max(wait, self.sent[i].frees_at() - now)
        # And never past the minute's limit (the headers' bucket also counts others' use).
        allowed = (self.limit or 0.0) * margin
        if charged <= allowed and self.sent_minute.expire(now) + charged > allowed:
            wait = max(wait, self.sent_minute.frees_at() - now)
        return wait

    def kept(self, now: float) -> float | None:
        """The gain at which we sent what the server accepted of ours lately (the last
        10 s, or since the first answer, a second at least): what a quota shared with
        another client leaves us. None without a limit."""
        limit = self.limit
        if limit is None:
            return None
        span = min(self.accepted.seconds, max(1.0, now - self.accepting_since))
        return self.accepted.expire(now) / span / (limit / 60.0 * PACE)

    def forget_accepted(self) -> None:
        """A map starts: what `kept` measures is from its own answers."""
        self.accepted = _Sent(WINDOWS[-1])
        self.accepting_since = math.inf

    def accept(self, charged: float, now: float) -> None:
        """The server accepted a request of ours charged `charged` (see `kept`)."""
        if self.limit is None:
            return  # nothing to keep to (a map with no limit: no cost per row)
        self.accepting_since = min(self.accepting_since, now)
        self.accepted.expire(now)
        self.accepted.add(charged, now)

    def measure(self, ratio: float) -> None:
        """An answer's charge as the server counts it, over ours: learn `scale` from it."""
        ratio = min(SCALE_RANGE[1], max(SCALE_RANGE[0], ratio))
        if self.measured:
            self.scale += (ratio - self.scale) * (1.0 - SCALE_DECAY)
        else:  # the first measure replaces the guess (1.0): it is all we know
            self.scale, self.measured = ratio, True

    def paced(self, now: float) -> bool:
        """Whether this dimension's pace is what holds a send back now."""
        return self.limit is not None and self.pace.busy(now)

    def beyond(self, now: float) -> float:
        """How far past the smallest unproven window's share our sends now are (× share)."""
        if self.limit is None or self.level >= len(WINDOWS):
            return 0.0
        return self.sent[self.level].expire(now) / self.share(self.level)

    def take(self, amount: float, gain: float, now: float) -> float:
        """Charge `amount` of ours; returns what it is in the server's units."""
        charged = amount * self.scale
        if self.testing(now) and self.sent[self.level].expire(now) + charged > self.share(
            self.level
        ):  # the request that goes past the share is the test's: the next waits its pace
            gain = min(gain, TEST_GAIN)
        rate = self.rate(gain)  # (past the share already: the line above)
        if rate is not None and not self.heading(now):
            self.pace.take(charged, rate, now)
        if self.minute is not None:
            self.minute.refill(now)
            self.minute.level -= charged
        for window in (*self.sent, self.sent_minute):
            window.expire(now)
            window.add(charged, now)
        return charged


@dataclass
class Ticket:
    """One request as charged: what `accepted()` and `refused()` need to know about it."""

    seq: int
    sent: float
    tokens: float  # our count: prompt tokens + max_tokens
    charged: dict[str, float]  # per dimension, in the server's units at the time
    # Per dimension: all our charges so far, this one's included (what went out after a
    # ticket is the running total less its own: `_learn` needs it for every answer).
    through: dict[str, float] = field(default_factory=dict)
    probe: bool = False  # sent alone after a bare 429, to see whether the way is open
    paced: bool = False  # sent on the pace's schedule (not after an idle spell)
    held: bool = False  # paced, or sent as a pause ended: we had more to send than went
    # Per dimension: the smallest unproven window then, how far past its share our sends
    # were with this one (see Dim.beyond), and how far a proof needed (Dim.proof).
    beyond: dict[str, tuple[int, float, float]] = field(default_factory=dict)
