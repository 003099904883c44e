"""The pacing arithmetic of ipychat.ratelimit: exact waits, anchoring, scale, shared pause."""

from __future__ import annotations

import pytest

from ipychat.ratelimit import ARRIVAL_SKEW, Bucket, RateLimiter
from ipychat.types import RateLimitInfo


def test_bucket_waits_for_the_exact_deficit() -> None:
    bucket = Bucket(limit=600, level=0.0, stamp=0.0)  # 10 per second
    assert bucket.wait(1, 0.0) == pytest.approx(0.1)
    assert bucket.wait(1, 0.05) == pytest.approx(0.05)
    assert bucket.wait(1, 0.1) == 0.0
    assert bucket.wait(5, 100.0) == 0.0 and bucket.level == 600  # never above the limit


def test_unknown_limits_never_wait() -> None:
    limiter = RateLimiter(now=0.0)
    assert not limiter.limited
    assert limiter.wait(10_000, 0.0) == 0.0
    limiter.take(10_000, 0.0)
    assert limiter.max_rate(100) is None


def test_given_limits_start_from_an_empty_bucket_and_pace_at_the_limit() -> None:
    limiter = RateLimiter(rpm=60, tpm=6_000, now=0.0)  # 1 request/s, 100 tokens/s
    assert limiter.wait(50, 0.0) == pytest.approx(1.0)  # the request bucket binds
    assert limiter.wait(300, 0.0) == pytest.approx(3.0)  # the token bucket binds
    limiter.take(300, 3.0)
    assert limiter.wait(300, 3.0) == pytest.approx(3.0)
    assert limiter.max_rate(300) == pytest.approx(1 / 3)


def test_a_request_larger_than_the_token_limit_is_flagged() -> None:
    limiter = RateLimiter(tpm=1_000, now=0.0)
    assert limiter.too_large(1_001) and not limiter.too_large(1_000)


def test_pause_is_shared_and_does_not_add_up() -> None:
    limiter = RateLimiter(now=0.0)
    limiter.pause(2.0, now=1.0)
    limiter.pause(0.5, now=1.2)  # a second 429 during the pause: no longer than the first
    assert limiter.wait(1, 1.5) == pytest.approx(1.5)
    assert limiter.wait(1, 3.0) == 0.0


def test_headers_teach_the_limits_and_anchor_the_level() -> None:
    limiter = RateLimiter(now=0.0)
    first = limiter.take(100, 0.0)
    second = limiter.take(100, 0.0)
    third = limiter.take(100, 0.0)
    info = RateLimitInfo(
        limit_requests=600, remaining_requests=50, limit_tokens=60_000, remaining_tokens=5_000
    )
    limiter.observe(first, info, now=1.0)
    assert limiter.requests is not None and limiter.tokens is not None
    refill = 1.0 - ARRIVAL_SKEW
    # What remained after `first`, plus the refill since, minus what was sent after it.
    assert limiter.requests.level == pytest.approx(50 + refill * 10 - 2)
    assert limiter.tokens.level == pytest.approx(5_000 + refill * 1_000 - 200)
    assert limiter.answered and limiter.headers_seen
    # A reading older than the anchor changes nothing but the limits.
    level = limiter.requests.level
    limiter.observe(second, RateLimitInfo(limit_requests=300, remaining_requests=0), now=1.0)
    assert limiter.requests.limit == 300 and limiter.requests.level <= level
    limiter.observe(third, info, now=1.0)
    assert limiter.requests.level == pytest.approx(min(300, 50 + refill * 10))


def test_user_caps_apply_when_below_the_server_limits() -> None:
    limiter = RateLimiter(rpm=100, now=0.0)
    ticket = limiter.take(1, 0.0)
    limiter.observe(ticket, RateLimitInfo(limit_requests=10_000, remaining_requests=9_999), 0.0)
    assert limiter.requests is not None and limiter.requests.limit == 100
    assert limiter.requests.level <= 100


def test_refund_gives_back_a_refused_request() -> None:
    limiter = RateLimiter(rpm=60, tpm=6_000, now=0.0)
    ticket = limiter.take(100, 10.0)
    assert limiter.tokens is not None and limiter.requests is not None
    before = (limiter.requests.level, limiter.tokens.level)
    limiter.refund(ticket, 10.0)
    limiter.refund(ticket, 10.0)  # twice is once
    assert limiter.requests.level == pytest.approx(before[0] + 1)
    assert limiter.tokens.level == pytest.approx(before[1] + 100)


def test_token_scale_learns_the_servers_count() -> None:
    """The server charges 1.25× our count: after a few anchors we charge the same."""
    tpm, rate = 60_000.0, 1_000.0  # tokens per minute, per second
    server = 20_000.0  # the server's bucket level, far from full
    limiter = RateLimiter(now=0.0)
    now = 0.0
    for _ in range(30):
        ticket = limiter.take(400, now)
        server -= 400 * 1.25
        info = RateLimitInfo(limit_tokens=int(tpm), remaining_tokens=int(server))
        limiter.observe(ticket, info, now)
        now += 0.3
        server += 0.3 * rate
    assert limiter.token_scale == pytest.approx(1.25, rel=0.02)
    assert limiter.max_rate(400) == pytest.approx(rate / 500, rel=0.02)


def test_set_limits_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rpm=0, now=0.0)
