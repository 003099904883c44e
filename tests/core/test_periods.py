"""--since and the budget periods: durations, dates, calendar starts in local time, and
one-line errors that say what to type."""

from __future__ import annotations

from datetime import datetime

import pytest

from ipychat.core.errors import ChatError
from ipychat.core.periods import check_period, parse_since, period_start

# A Wednesday afternoon, local time (the periods are the user's days, weeks, months).
NOW = datetime(2026, 11, 18, 15, 30, 12).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("12h", 43200), ("7d", 7 * 86400), ("2w", 14 * 86400), (" 1.5H ", 5400)],
)
def test_since_takes_a_duration_back_from_now(text: str, seconds: float) -> None:
    assert parse_since(text, NOW) == pytest.approx(NOW - seconds)


def test_since_takes_a_local_date_or_time() -> None:
    assert parse_since("2026-11-01", NOW) == datetime(2026, 11, 1).timestamp()
    assert parse_since("2026-11-17T09:00", NOW) == datetime(2026, 11, 17, 9).timestamp()


@pytest.mark.parametrize("text", ["", "7", "d7", "7 days", "yesterday", "2026-13-01", "-3d"])
def test_since_refuses_anything_else_in_one_line(text: str) -> None:
    with pytest.raises(ChatError) as refused:
        parse_since(text, NOW)
    message = str(refused.value)
    assert message.startswith("--since takes a duration such as 30m, 12h, 7d or 2w")
    assert "\n" not in message and repr(text) in message


def test_since_refuses_a_future_date() -> None:
    with pytest.raises(ChatError, match=r"^--since 2026-12-01 is in the future"):
        parse_since("2026-12-01", NOW)


def test_periods_start_at_local_midnight_monday_and_the_first() -> None:
    assert period_start("day", NOW) == datetime(2026, 11, 18).timestamp()
    assert period_start("week", NOW) == datetime(2026, 11, 16).timestamp()  # a Monday
    assert period_start("month", NOW) == datetime(2026, 11, 1).timestamp()
    monday = datetime(2026, 11, 16, 0, 0, 1).timestamp()
    assert period_start("week", monday) == datetime(2026, 11, 16).timestamp()


def test_period_words() -> None:
    assert check_period(" Month ") == "month"
    with pytest.raises(ChatError, match=r"^--per takes day, week or month, not 'monthly': e\.g\."):
        check_period("monthly")
