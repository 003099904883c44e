"""The pure retry policy: retryable statuses, server-demanded waits, the cap, backoff bounds."""

from __future__ import annotations

import email.utils
import time

import pytest

from ipychat.net import retry
from ipychat.net.retry import backoff_delay, decide_error, decide_response, retry_after

NOW = 1_700_000_000.0


def decide(status: int, headers: dict[str, str] | None = None, **kw: object) -> retry.RetryDecision:
    options: dict[str, object] = {"retries_taken": 0, "max_retries": 3, "rand": lambda: 0.0}
    options.update(kw)
    return decide_response(status, headers or {}, now=NOW, **options)  # type: ignore[arg-type]


# ----- which statuses retry ------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_retryable_statuses(status: int) -> None:
    assert decide(status).retry


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 418])
def test_client_errors_are_not_retried(status: int) -> None:
    assert not decide(status).retry


def test_x_should_retry_true_retries_a_400() -> None:
    assert decide(400, {"x-should-retry": "true"}).retry


def test_x_should_retry_false_stops_a_503() -> None:
    assert not decide(503, {"x-should-retry": "false"}).retry


def test_x_should_retry_is_case_insensitive_in_value() -> None:
    assert not decide(503, {"x-should-retry": "FALSE"}).retry


def test_max_retries_is_respected() -> None:
    assert decide(503, retries_taken=2, max_retries=3).retry
    assert not decide(503, retries_taken=3, max_retries=3).retry
    assert not decide(503, retries_taken=0, max_retries=0).retry
    assert not decide(400, {"x-should-retry": "true"}, retries_taken=3).retry


def test_decide_error_retries_until_the_limit() -> None:
    assert decide_error("timeout", retries_taken=0, max_retries=2, rand=lambda: 0.0).retry
    assert not decide_error("timeout", retries_taken=2, max_retries=2).retry


# ----- server-demanded waits -----------------------------------------------------------------


def test_retry_after_ms_is_preferred() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "30"}
    assert retry_after(headers) == 1.5
    decision = decide(429, headers)
    assert decision.retry and decision.delay == 1.5 and decision.server_wait == 1.5


def test_retry_after_seconds() -> None:
    assert decide(429, {"retry-after": "7"}).delay == 7.0


def test_retry_after_fractional_seconds() -> None:
    assert decide(503, {"retry-after": "0.25"}).delay == 0.25


def test_retry_after_http_date() -> None:
    date = email.utils.formatdate(NOW + 20, usegmt=True)
    assert retry_after({"retry-after": date}, now=NOW) == pytest.approx(20.0)
    assert decide(503, {"retry-after": date}).delay == pytest.approx(20.0)


def test_bad_retry_after_ms_falls_back_to_retry_after() -> None:
    assert retry_after({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0


def test_garbage_retry_after_means_backoff() -> None:
    assert retry_after({"retry-after": "whenever"}) is None
    assert decide(429, {"retry-after": "whenever"}).delay == 0.5


def test_zero_or_past_retry_after_means_backoff() -> None:
    assert decide(429, {"retry-after": "0"}).delay == 0.5
    past = email.utils.formatdate(NOW - 100, usegmt=True)
    assert decide(429, {"retry-after": past}).delay == 0.5


def test_demand_up_to_the_cap_is_obeyed() -> None:
    decision = decide(429, {"retry-after": "60"}, max_wait=60.0)
    assert decision.retry and decision.delay == 60.0


def test_demand_over_the_cap_fails_at_once() -> None:
    decision = decide(429, {"retry-after": "3600"}, max_wait=60.0)
    assert not decision.retry and decision.too_long and decision.server_wait == 3600.0


def test_demand_over_the_cap_wins_over_x_should_retry() -> None:
    # retrying before the server's time would disobey it; waiting an hour helps nobody
    assert not decide(429, {"retry-after-ms": "90000", "x-should-retry": "true"}).retry


def test_headers_are_looked_up_case_insensitively_via_httpx() -> None:
    import httpx

    headers = httpx.Headers({"Retry-After-Ms": "250"})
    assert retry_after(headers) == 0.25


# ----- backoff -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "base"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (50, 8.0)]
)
def test_backoff_formula_bounds(k: int, base: float) -> None:
    assert backoff_delay(k, rand=lambda: 0.0) == base
    assert backoff_delay(k, rand=lambda: 0.999999) == pytest.approx(base * 0.75, rel=1e-5)
    for _ in range(100):
        assert base * 0.75 <= backoff_delay(k) <= base


def test_backoff_does_not_overflow() -> None:
    assert backoff_delay(10**6, rand=lambda: 0.0) == 8.0


def test_backoff_used_when_no_header() -> None:
    assert decide(503, retries_taken=2, rand=lambda: 0.5).delay == pytest.approx(2.0 * 0.875)


# ----- messages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0 s"),
        (0, "0 s"),
        (5, "5 s"),
        (89, "89 s"),
        (90, "2 min"),  # from 90 s on, minutes
        (120, "2 min"),
        (3000, "50 min"),
        (3600, "1 h"),
        (5400, "1.5 h"),
        (7200, "2 h"),
        (360_216, "100.1 h"),  # 100 h 3.6 min
    ],
)
def test_format_wait(seconds: float, text: str) -> None:
    assert retry.format_wait(seconds) == text


def test_format_retry_time_rounds_up_to_the_minute() -> None:
    now = time.mktime((2025, 3, 2, 13, 4, 30, 0, 0, -1))
    assert retry.format_retry_time(3600, now=now) == "14:05"
    assert retry.format_retry_time(60 * 60 * 24, now=now) == "2025-03-03 13:05"


def test_format_retry_time_at_an_exact_minute_is_that_minute() -> None:
    now = time.mktime((2025, 3, 2, 13, 4, 0, 0, 0, -1))
    assert retry.format_retry_time(0, now=now) == "13:04"
    assert retry.format_retry_time(-30, now=now) == "13:04"  # never in the past
    assert retry.format_retry_time(600, now=now) == "13:14"


def test_format_retry_time_defaults_to_the_clock() -> None:
    expected = time.strftime("%H:%M", time.localtime(time.time() + 120))
    later = time.strftime("%H:%M", time.localtime(time.time() + 180))
    assert retry.format_retry_time(120) in (expected, later)


def test_retry_after_http_date_defaults_to_the_clock() -> None:
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after({"retry-after": date}) == pytest.approx(30.0, abs=2.0)


def test_nan_retry_after_ms_falls_back_to_retry_after() -> None:
    assert retry_after({"retry-after-ms": "nan", "retry-after": "3"}) == 3.0


# ----- whole decisions: the fields callers read (delay to sleep, reason and the server's
# demand for the error message), pinned ----------------------------------------------------


def test_backoff_decision_in_full() -> None:
    assert decide(503) == retry.RetryDecision(True, delay=0.5, reason="HTTP 503")
    assert decide(503, rand=lambda: 0.5, retries_taken=1) == retry.RetryDecision(
        True, delay=0.875, reason="HTTP 503"
    )


def test_refusal_decision_in_full() -> None:
    assert decide(400) == retry.RetryDecision(False, reason="HTTP 400")
    assert decide(429, {"retry-after": "2"}, retries_taken=3) == retry.RetryDecision(
        False, reason="HTTP 429", server_wait=2.0
    )


def test_server_demand_decision_in_full() -> None:
    assert decide(429, {"retry-after-ms": "250"}) == retry.RetryDecision(
        True, delay=0.25, reason="HTTP 429", server_wait=0.25
    )
    assert decide(429, {"retry-after": "120"}) == retry.RetryDecision(
        False, reason="HTTP 429", server_wait=120.0, too_long=True
    )


def test_decide_error_in_full() -> None:
    assert decide_error("timeout", retries_taken=1, max_retries=3, rand=lambda: 0.5) == (
        retry.RetryDecision(True, delay=0.875, reason="timeout")
    )
    assert decide_error("timeout", retries_taken=3, max_retries=3) == retry.RetryDecision(
        False, reason="timeout"
    )
