"""FakeOpenAIServer's rate limits: the limiter's rules on a fake clock (exact), then its
answers on the wire."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from _wire import (
    BODY,
    post,
)

from ipychat.core.types import RateLimitInfo, _duration
from ipychat.testing import FakeOpenAIServer

# ----- rate limits ---------------------------------------------------------------------------
# The limiter's rules on a fake clock (exact), then its answers on the wire.


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(rpm: int | None = None, tpm: int | None = None, **options: Any) -> Any:
    from ipychat.testing.rules import RateLimiter

    clock = Clock()
    return RateLimiter(rpm, tpm, clock, **options), clock


def outcome(lim: Any, tokens: int = 10) -> int | float:
    """200, or the retry-after of the 429 in seconds."""
    from ipychat.testing.rules import Reject

    try:
        lim.take(tokens, "gpt-test")
    except Reject as reject:
        assert reject.status == 429
        return int(dict(reject.headers)["retry-after-ms"]) / 1000
    return 200


@pytest.mark.parametrize("window", [1, 10, 60])
def test_a_window_holds_its_share_of_the_minute_not_the_whole_minute(window: int) -> None:
    # 6,000 RPM: 100 requests in a 1 s window, 1,000 in 10 s, 6,000 in 60 s (OpenAI:
    # "60,000 requests/minute may be enforced as 1,000 requests/second").
    lim, clock = limiter(rpm=6000, window=window, charge_refused=False)
    capacity = 100 * window
    assert [outcome(lim) for _ in range(capacity)] == [200] * capacity
    assert outcome(lim) == pytest.approx(window)  # full: room when the first charge leaves
    clock.now += window / 2
    assert outcome(lim) == pytest.approx(window / 2)
    clock.now += window / 2  # the first `capacity` charges leave the window together
    assert [outcome(lim) for _ in range(capacity)] == [200] * capacity
    assert outcome(lim) != 200


def test_steady_pacing_at_the_limit_is_never_refused_and_a_little_more_is() -> None:
    lim, clock = limiter(rpm=6000)  # 100 per second, over any 1 s
    for i in range(1000):
        clock.now = 1000.0 + i / 100
        assert outcome(lim) == 200
    refused = 0
    for i in range(1000):
        clock.now = 1010.0 + i / 101
        refused += outcome(lim) != 200
    assert refused > 0


def test_refused_requests_are_charged_unless_switched_off() -> None:
    # OpenAI: "unsuccessful requests contribute to your per-minute limit".
    for charged in (True, False):
        lim, clock = limiter(rpm=600, charge_refused=charged)  # 10 per second
        assert [outcome(lim) for _ in range(10)] == [200] * 10
        clock.now += 0.5
        assert [outcome(lim) for _ in range(4)] != [200] * 4  # hammering a full window
        clock.now += 0.5  # the first ten leave the window; the four refusals do not yet
        accepted = sum(outcome(lim) == 200 for _ in range(10))
        assert accepted == (6 if charged else 10)


def test_tokens_are_charged_prompt_plus_max_tokens_over_the_window() -> None:
    lim, clock = limiter(tpm=120_000)  # 2,000 tokens in any second
    assert outcome(lim, 1_000) == 200 and outcome(lim, 1_000) == 200
    assert outcome(lim, 1) == pytest.approx(1.0)
    clock.now += 1.0
    # A request larger than a window's share waits for as long as the limit needs for it
    # (here 2.5 s): it is not refused for ever.
    assert outcome(lim, 5_000) != 200  # the refused 1 and 5,000 of a second ago are charged
    clock.now += 2.5
    assert outcome(lim, 5_000) == 200


def test_the_headers_report_the_minute_and_never_the_window() -> None:
    lim, _ = limiter(rpm=6000, tpm=1_200_000)  # 100 requests, 20,000 tokens per second
    for _ in range(99):
        lim.take(100, "gpt-test")
    headers = dict(lim.take(100, "gpt-test"))
    assert RateLimitInfo.from_headers(headers) == RateLimitInfo(
        limit_requests=6000,
        limit_tokens=1_200_000,
        remaining_requests=5900,  # the window is full, yet the minute's view shows room
        remaining_tokens=1_190_000,
        reset_requests=1.0,  # 100 requests at 100 per second
        reset_tokens=0.5,  # 10,000 tokens at 20,000 per second
    )
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert headers["x-ratelimit-reset-tokens"] == "500ms"
    assert outcome(lim) != 200  # refused, and charged: 101 used
    assert dict(lim.headers())["x-ratelimit-reset-requests"] == "1.01s"


def test_rpm_limit_on_the_wire() -> None:
    with FakeOpenAIServer(rpm=600, window=10) as server:  # 100 per 10 s: no timing at play
        remaining = [post(server).headers["x-ratelimit-remaining-requests"] for _ in range(100)]
        # What is left of the minute (refilling at 10 per second while the test runs).
        assert remaining[:2] == ["599", "598"] and 500 <= int(remaining[-1]) <= 505
        r = post(server)
        assert r.status_code == 429
        assert r.json()["error"] == {
            "message": r.json()["error"]["message"],
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
        message = r.json()["error"]["message"]
        assert re.fullmatch(
            r"Rate limit reached for gpt-test in organization org-fake on requests per min "
            r"\(RPM\): Limit 600, Used (9\d|10[01]), Requested 1\. Please try again in "
            r"\d\.\d+s\. Visit https://platform\.openai\.com/account/rate-limits to learn more\.",
            message,
        )
        assert message.endswith(
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        wait_ms = int(r.headers["retry-after-ms"])  # the first charge leaves the window
        assert 8_000 < wait_ms <= 10_000 and r.headers["retry-after"] == "10"
        info = RateLimitInfo.from_headers(r.headers)
        assert info is not None and info.limit_requests == 600
        assert info.remaining_requests is not None and 495 <= info.remaining_requests <= 505
        assert info.reset_requests is not None and 9.5 < info.reset_requests <= 10.1
        assert info.limit_tokens is None  # no tpm set: no token headers
        stats = server.stats()
        assert stats.rate_limited == 1 and stats.by_status == {200: 100, 429: 1}


def test_a_server_without_ratelimit_headers() -> None:
    # vLLM, llama.cpp's server and many gateways: no x-ratelimit-*; a 429 with retry-after
    # or a bare one.
    for retry_after in (True, False):
        with FakeOpenAIServer(
            rpm=60, window=60, ratelimit_headers=False, retry_after=retry_after
        ) as server:
            ok = post(server)
            assert ok.status_code == 200
            assert not [h for h in ok.headers if h.startswith("x-ratelimit")]
            statuses = [post(server).status_code for _ in range(60)]
            assert statuses.count(200) == 59 and statuses[-1] == 429
            r = post(server)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
            assert not [h for h in r.headers if h.startswith("x-ratelimit")]
            assert ("retry-after" in r.headers) is retry_after
            assert ("retry-after-ms" in r.headers) is retry_after
            assert ("Please try again in" in r.json()["error"]["message"]) is retry_after


def test_tpm_limit_on_the_wire_and_a_refund_when_asked() -> None:
    # prompt = 3 + 3 + "user" 1 + "hello big world" 4 = 11 tokens; 6,000 TPM: 100 per 1 s.
    for charged in (True, False):
        with FakeOpenAIServer(tpm=6000, charge_refused=charged) as server:
            r = post(server, {**BODY, "max_tokens": 5979})  # 5,990: takes 59.9 s of the limit
            assert r.status_code == 200 and r.headers["x-ratelimit-remaining-tokens"] == "10"
            info = RateLimitInfo.from_headers(r.headers)
            assert info is not None and info.reset_tokens is not None
            assert 59.8 < info.reset_tokens <= 59.9  # 5,990 tokens at 100/s
            r = post(server, {**BODY, "max_tokens": 69})  # 80 tokens in the same second
            assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
            assert "on tokens per min (TPM): Limit 6000" in r.json()["error"]["message"]
            wait_ms = int(r.headers["retry-after-ms"])  # when the 5,990 leave the window
            assert 800 < wait_ms <= 1000 and r.headers["retry-after"] == "1"
            remaining = r.headers["x-ratelimit-remaining-tokens"]
            assert remaining == ("0" if charged else "10")
            time.sleep(wait_ms / 1000)  # it counts the refused 80 too, when they are charged
            assert post(server, {**BODY, "max_tokens": 69}).status_code == 200


def test_tpm_charge_without_max_tokens_and_too_large_requests() -> None:
    with FakeOpenAIServer(tpm=100) as server:
        r = post(server)  # 11 prompt + assumed_max_tokens 16
        assert r.headers["x-ratelimit-remaining-tokens"] == str(100 - 27)
        r = post(server, {**BODY, "max_tokens": 200})
        assert r.status_code == 429 and r.headers["x-should-retry"] == "false"
        assert "retry-after-ms" not in r.headers
        assert "Request too large" in r.json()["error"]["message"]
        assert r.headers["x-ratelimit-remaining-tokens"] == str(100 - 27)  # not charged
    with FakeOpenAIServer(tpm=100, assumed_max_tokens=50) as server:
        assert post(server).headers["x-ratelimit-remaining-tokens"] == str(100 - 61)


def test_window_must_be_a_sensible_number_of_seconds() -> None:
    for window in (0, -1, 61, float("nan")):
        with pytest.raises(ValueError, match="window must be in seconds"):
            FakeOpenAIServer(rpm=10, window=window)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.02, "20ms"), (0.0201, "21ms"), (1, "1s"), (8.64, "8.64s"), (360, "6m0s"),
     (61.5, "1m1.5s"), (3600, "1h0m0s")],
)  # fmt: skip
def test_reset_durations_use_openai_format(seconds: float, text: str) -> None:
    from ipychat.testing.rules import format_duration

    assert format_duration(seconds) == text
    parsed = _duration(text)  # what ipychat.core.types reads back: rounded up, never early
    assert parsed is not None and seconds - 1e-9 <= parsed < seconds + 0.001
