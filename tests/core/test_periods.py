"""--since and the budget periods: durations, dates, calendar starts in local time, and
one-line errors that say what to type."""

from __future__ import annotations

from datetime import datetime

import pytest

from ipychat.core.errors import ChatError
from ipychat.core.periods import (
    PERIODS,
    check_period,
    parse_since,
    period_name,
    period_start,
    this_period,
)

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


def test_period_names_in_sentences() -> None:
    assert [period_name(p) for p in PERIODS] == ["daily", "weekly", "monthly"]
    assert [this_period(p) for p in PERIODS] == ["today", "this week", "this month"]


@pytest.mark.parametrize("period", [None, 3, "year"])
def test_a_period_that_is_no_word_is_refused_in_one_line(period: object) -> None:
    with pytest.raises(ChatError, match=rf"^--per takes day, week or month, not {period!r}:"):
        check_period(period)  # type: ignore[arg-type]
    with pytest.raises(ChatError, match=rf"not {period!r}:"):
        period_start(period, NOW)  # type: ignore[arg-type]


def test_since_refuses_a_value_that_is_no_text() -> None:
    with pytest.raises(ChatError, match=r"^--since takes a duration .*; not None\.$"):
        parse_since(None, NOW)  # type: ignore[arg-type]


def test_since_takes_the_present_instant_and_a_zoned_time() -> None:
    assert parse_since("2026-11-18T15:30:12", NOW) == NOW  # now itself is not the future
    zoned = datetime(2026, 11, 2, 9).astimezone()
    assert parse_since(zoned.isoformat(), NOW) == zoned.timestamp()


def test_periods_start_on_the_whole_second_even_when_now_has_a_fraction() -> None:
    now = datetime(2026, 11, 18, 15, 30, 12, 654321).timestamp()
    assert period_start("day", now) == datetime(2026, 11, 18).timestamp()
    assert period_start("month", now) == datetime(2026, 11, 1).timestamp()
