"""The retry policy of the client, as pure functions: what to retry and how long to wait.

Pure: no I/O, no sleeping, no third-party imports; the clock and the random source are
arguments, so every rule is testable without waiting. The rules follow openai-python's
`_base_client.py`:

- retry 408 (request timeout), 409 (lock conflict), 429 (rate limit), every 5xx, and
  connection errors and timeouts (the client decides which exceptions those are);
- a server's `x-should-retry: true|false` overrides the status rules (it knows better,
  e.g. a 400 caused by a transient overload, or a 503 that will not heal);
- the delay is the server's own demand from `retry-after-ms`, else `retry-after` (seconds,
  fractional allowed, or an HTTP date), obeyed up to `max_wait`; a longer demand is not
  retried at all (waiting an hour inside a notebook cell helps nobody, and retrying early
  would disobey the server), so the caller fails at once and says when to come back;
- otherwise exponential backoff with jitter: `min(0.5 * 2**k, 8) * (1 - 0.25 * U)`, where
  `k` is the number of retries already taken and `U` is uniform in [0, 1).
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_WAIT",
    "INITIAL_DELAY",
    "MAX_BACKOFF",
    "RetryDecision",
    "backoff_delay",
    "decide_error",
    "decide_response",
    "format_retry_time",
    "format_wait",
    "retry_after",
]

DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_WAIT = 60.0  # longest server-demanded wait we sit through (seconds)
INITIAL_DELAY = 0.5
MAX_BACKOFF = 8.0

_RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class RetryDecision:
    """What to do after one failed attempt.

    `delay` is meaningful only when `retry` is True. `server_wait` is what the server
    asked for (seconds), if it said anything; `too_long` marks a demand above the cap,
    which is why `retry` is False although the status is retryable.
    """

    retry: bool
    delay: float = 0.0
    reason: str = ""
    server_wait: float | None = None
    too_long: bool = False


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None when it did not say (or said nonsense).

    `headers` must look names up case-insensitively (httpx.Headers does) or be lower-case.
    """
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isnan(seconds):
            continue
        return seconds
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        when = email.utils.mktime_tz(parsed)
    except (TypeError, ValueError, OverflowError):
        return None
    return float(when - (time.time() if now is None else now))


def backoff_delay(retries_taken: int, *, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: 0.5 s, 1 s, 2 s, 4 s, 8 s, 8 s... minus up to 25%."""
    base = min(INITIAL_DELAY * 2.0 ** min(retries_taken, 64), MAX_BACKOFF)
    return max(base * (1.0 - 0.25 * rand()), 0.0)


def _status_retryable(status: int) -> bool:
    return status in _RETRY_STATUSES or status >= 500


def decide_response(
    status: int,
    headers: Mapping[str, str],
    *,
    retries_taken: int,
    max_retries: int,
    max_wait: float = DEFAULT_MAX_WAIT,
    rand: Callable[[], float] = random.random,
    now: float | None = None,
) -> RetryDecision:
    """Whether and when to retry after an error response with `status` and `headers`."""
    reason = f"HTTP {status}"
    wait = retry_after(headers, now=now)
    if wait is not None and wait > max_wait:
        return RetryDecision(False, reason=reason, server_wait=wait, too_long=True)
    override = (headers.get("x-should-retry") or "").strip().lower()
    if override == "true":
        wanted = True
    elif override == "false":
        wanted = False
    else:
        wanted = _status_retryable(status)
    if not wanted or retries_taken >= max_retries:
        return RetryDecision(False, reason=reason, server_wait=wait)
    if wait is not None and wait > 0:
        return RetryDecision(True, delay=wait, reason=reason, server_wait=wait)
    return RetryDecision(True, delay=backoff_delay(retries_taken, rand=rand), reason=reason)


def decide_error(
    reason: str,
    *,
    retries_taken: int,
    max_retries: int,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """Whether and when to retry after a connection error or timeout (always retryable)."""
    if retries_taken >= max_retries:
        return RetryDecision(False, reason=reason)
    return RetryDecision(True, delay=backoff_delay(retries_taken, rand=rand), reason=reason)


def format_wait(seconds: float) -> str:
    """A wait as people say it: '45 s', '12 min', '1 h', '1.5 h'."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours = f"{seconds / 3600:.1f}".removesuffix(".0")
    return f"{hours} h"


def format_retry_time(seconds: float, *, now: float | None = None) -> str:
    """The local clock time `seconds` from now: '14:05', or '2025-03-02 14:05' if not today."""
    start = time.time() if now is None else now
    target = start + max(seconds, 0.0)
    when = time.localtime(target)
    # Round up to the next minute: "after 14:05" must not be a minute too early.
    if when.tm_sec:
        when = time.localtime(target + 60 - when.tm_sec)
    if time.strftime("%Y-%m-%d", when) == time.strftime("%Y-%m-%d", time.localtime(start)):
        return time.strftime("%H:%M", when)
    return time.strftime("%Y-%m-%d %H:%M", when)
