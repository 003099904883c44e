"""Spans of time for the persistent ledger: `--since 7d` and the budget periods.

Pure: no clock of its own (every function takes `now`, seconds since the epoch), local time
for calendar periods (a "day" is the user's day, not UTC's). Errors are one-line
`ChatError`s saying what to type instead.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from ipychat.core.errors import ChatError

__all__ = ["PERIODS", "check_period", "parse_since", "period_name", "period_start", "this_period"]

PERIODS = ("day", "week", "month")
_UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([mhdw])")
_SINCE_HELP = "--since takes a duration such as 30m, 12h, 7d or 2w, or a date such as 2026-11-01"


def check_period(period: str) -> str:
    """`period` as stored (day | week | month), or a one-line ChatError."""
    word = period.strip().lower() if isinstance(period, str) else period
    if word not in PERIODS:
        raise ChatError(
            f"--per takes day, week or month, not {period!r}: e.g. %chat budget 20 --per month."
        )
    return str(word)


def period_name(period: str) -> str:
    """How a refusal names a period's budget: "daily", "weekly", "monthly"."""
    return {"day": "daily", "week": "weekly", "month": "monthly"}[period]


def this_period(period: str) -> str:
    """The current `period` in a sentence: "today", "this week", "this month"."""
    return "today" if period == "day" else f"this {period}"


def period_start(period: str, now: float) -> float:
    """The start of the current `period` in local time (midnight; Monday; the 1st)."""
    local = datetime.fromtimestamp(now).astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start = midnight
    elif period == "week":
        start = midnight - timedelta(days=midnight.weekday())
    elif period == "month":
        start = midnight.replace(day=1)
    else:
        check_period(period)
        raise AssertionError  # pragma: no cover (check_period raised)
    # Across a DST change the naive arithmetic keeps the old offset: re-resolve it.
    return start.replace(tzinfo=None).astimezone().timestamp()


def parse_since(text: str, now: float) -> float:
    """`--since`'s value as seconds since the epoch: a duration back from `now` ("7d",
    "12h", "30m", "2w") or a local date or time ("2026-11-01", "2026-11-01T09:00")."""
    value = text.strip() if isinstance(text, str) else ""
    match = _DURATION.fullmatch(value.lower())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ChatError(f"{_SINCE_HELP}; not {text!r}.") from None
    # A date without a zone is the user's local time: that is how a naive datetime's
    # timestamp() reads it (https://docs.python.org/3/library/datetime.html#datetime.datetime.timestamp).
    if when.timestamp() > now:
        raise ChatError(f"--since {text} is in the future: give a past date or a duration.")
    return when.timestamp()
