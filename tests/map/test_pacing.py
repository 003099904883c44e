"""One dimension of the pacing model (ipychat.map.pacing) on its own: the minute's bucket,
the even schedule, the windows of what was sent, and `Dim`'s limit, rate and wait, each
pinned with figures worked out by hand from the module's docstrings and constants.

tests/map/test_ratelimit.py drives the same classes through `RateLimiter` and a simulated
server; this file pins each rule where it is written (`python tools/mutation.py map.pacing
--tests tests/map/test_pacing.py --tests tests/map/test_ratelimit.py`)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ipychat.map.pacing import (
    ARRIVAL_SKEW,
    CATCH_UP,
    PACE,
    TEST_ALLOW,
    TEST_GAIN,
    WINDOWS,
    Bucket,
    Dim,
    _Pace,
    _Sent,
)

approx = pytest.approx

# ----- Bucket: the minute as the headers report it ------------------------------------------


def test_a_bucket_refills_at_its_limit_a_minute_from_its_stamp_only_forwards() -> None:
    bucket = Bucket(limit=120.0, level=10.0, stamp=100.0)
    assert bucket.rate == 2.0
    bucket.refill(99.0)  # an older reading changes nothing
    assert (bucket.level, bucket.stamp) == (10.0, 100.0)
    bucket.refill(100.0)
    assert (bucket.level, bucket.stamp) == (10.0, 100.0)
    bucket.refill(105.0)
    assert (bucket.level, bucket.stamp) == (20.0, 105.0)
    bucket.refill(1000.0)  # never past the limit
    assert (bucket.level, bucket.stamp) == (120.0, 1000.0)


@pytest.mark.parametrize(
    ("amount", "now", "expected"),
    [
        (25.0, 0.0, 7.5),  # (25 - 10) / 2 a second
        (10.0, 0.0, 0.0),  # exactly what is there
        (10.0 + 1e-10, 0.0, 0.0),  # a float hair is no wait
        (10.0 + 2**-30, 0.0, 0.0),  # (under 1e-9)
        (10.5, 0.0, 0.25),
        (500.0, 0.0, 55.0),  # more than the bucket: waits for a full one, (120 - 10) / 2
        (25.0, 5.0, 2.5),  # refilled to 20 first
    ],
)
def test_a_bucket_waits_for_its_deficit_at_its_rate(
    amount: float, now: float, expected: float
) -> None:
    bucket = Bucket(limit=120.0, level=10.0, stamp=0.0)
    assert bucket.wait(amount, now) == approx(expected)


def test_a_deficit_of_exactly_the_tolerance_is_no_wait() -> None:
    assert Bucket(limit=120.0, level=0.0, stamp=0.0).wait(1e-9, 0.0) == 0.0
    assert Bucket(limit=120.0, level=0.0, stamp=0.0).wait(2e-9, 0.0) == 1e-9


# ----- the even schedule --------------------------------------------------------------------


def test_the_schedule_moves_on_by_each_charge_and_restarts_after_an_idle_spell() -> None:
    pace = _Pace()
    assert pace.wait(0.0) == 0.0 and not pace.busy(0.0)  # nothing scheduled yet
    pace.take(1.0, 4.0, 5.0)  # 1 unit at 4 a second: the next at 5.25
    assert pace.due == 5.25
    assert pace.wait(5.0) == 0.25 and pace.wait(5.25) == 0.0 and pace.wait(9.0) == 0.0
    assert pace.busy(5.0) and pace.busy(5.255)  # early, or woken a little late
    assert not pace.busy(5.27)  # later than CATCH_UP: an idle spell
    pace.take(2.0, 4.0, 5.255)  # keeps to the schedule: 5.25 + 0.5
    assert pace.due == 5.75
    pace.take(1.0, 4.0, 7.0)  # after an idle spell: from now, no credit
    assert pace.due == 7.25


def test_catching_up_ends_exactly_at_catch_up() -> None:
    assert _Pace(due=0.0).busy(CATCH_UP)
    assert not _Pace(due=0.0).busy(CATCH_UP + 1e-9)
    assert _Pace(due=3.0).busy(3.0 + CATCH_UP / 2) and not _Pace(due=3.0).busy(3.0 + CATCH_UP * 2)


# ----- what was sent in a window ------------------------------------------------------------


def test_a_window_forgets_a_charge_as_the_server_would() -> None:
    sent = _Sent(1.0)
    assert sent.expire(0.0) == 0.0 and sent.frees_at() == -math.inf
    sent.add(2.0, 10.0)
    sent.add(3.0, 10.5)
    assert sent.total == 5.0 and list(sent.log) == [(10.0, 2.0), (10.5, 3.0)]
    # The server counted a charge ARRIVAL_SKEW after we sent it: it leaves that much later.
    assert sent.frees_at() == 10.0 + 1.0 + ARRIVAL_SKEW
    assert sent.expire(11.0) == 5.0
    assert sent.expire(11.0 + ARRIVAL_SKEW / 2) == 5.0
    # At the very time `frees_at` names, the charge has left (never a wait for nothing).
    assert sent.expire(sent.frees_at()) == 3.0
    assert list(sent.log) == [(10.5, 3.0)]
    assert sent.frees_at() == 10.5 + 1.0 + ARRIVAL_SKEW
    assert sent.expire(20.0) == 0.0 and sent.frees_at() == -math.inf


def test_a_charge_exactly_at_the_windows_edge_has_left() -> None:
    sent = _Sent(1.0)
    edge = 2.0 - 1.0 - ARRIVAL_SKEW + 1e-9  # as `expire` works it out for now = 2
    sent.add(1.0, edge)
    assert sent.expire(2.0) == 0.0


def test_an_empty_window_sums_to_exactly_zero() -> None:
    sent = _Sent(10.0)
    sent.add(0.1, 0.0)
    sent.add(0.2, 0.0)
    assert 0.1 + 0.2 - 0.1 - 0.2 != 0.0  # float sums drift...
    assert sent.expire(100.0) == 0.0 and sent.total == 0.0  # ...an empty window does not


# ----- Dim: the limit, bursts, the rate -------------------------------------------------------


def test_the_limit_is_the_lowest_known_and_none_without_one() -> None:
    assert Dim("requests").limit is None
    assert Dim("requests", cap=100.0, server=50.0, found=70.0).limit == 50.0
    assert Dim("requests", cap=40.0, server=50.0).limit == 40.0
    assert Dim("requests", found=30.0).limit == 30.0
    assert Dim("requests", cap=10.0).limit == 10.0


@pytest.mark.parametrize(
    ("cap", "server", "found", "may"),
    [
        (None, None, None, False),  # no limit at all
        (None, 100.0, None, True),  # the server's
        (100.0, None, None, True),  # a cap, the server tells none
        (None, 100.0, 50.0, False),  # a rate found from 429s is a guess
        (100.0, 100.0, None, True),
        (200.0, 100.0, None, True),
        (50.0, 100.0, None, False),  # never past a cap below the server's limit
    ],
)
def test_who_may_burst(
    cap: float | None, server: float | None, found: float | None, may: bool
) -> None:
    assert Dim("requests", cap=cap, server=server, found=found).may_burst is may


def test_a_window_is_tested_in_turn_and_not_during_the_quiet() -> None:
    dim = Dim("requests", server=600.0)
    assert dim.testing(0.0)
    dim.level = 1
    assert dim.testing(0.0)
    dim.level = len(WINDOWS)  # every window shown longer
    assert not dim.testing(0.0)
    dim.level, dim.quiet_until = 0, 5.0
    assert not dim.testing(4.9) and dim.testing(5.0)
    assert not Dim("requests", found=600.0).testing(0.0)


def test_a_windows_share_and_whether_a_send_goes_past_it() -> None:
    dim = Dim("requests", server=600.0)
    assert (dim.share(0), dim.share(1)) == (10.0, 100.0)
    dim.sent[0].add(9.0, 0.0)
    assert not dim.in_test(0.0)
    dim.sent[0].add(1.0, 0.0)
    assert dim.in_test(0.0)  # at the share: the test's pace from here
    dim.quiet_until = 1.0
    assert not dim.in_test(0.0)  # no test during the quiet
    dim.quiet_until, dim.level = -math.inf, 1  # the 10 s window: nothing of its 100 yet
    assert not dim.in_test(0.0)
    dim.sent[1].add(99.0, 0.0)
    assert not dim.in_test(0.0)
    dim.sent[1].add(1.0, 0.0)
    assert dim.in_test(0.0)


def test_the_rate_is_the_pace_of_the_limit_times_the_gain() -> None:
    assert Dim("requests").rate(1.0) is None
    dim = Dim("requests", server=600.0)
    assert dim.rate(1.0) == approx(10.0 * PACE)
    assert dim.rate(0.5) == approx(5.0 * PACE)
    assert dim.rate(2.0) == approx(20.0 * PACE)  # a burst
    assert dim.rate(2.0, 0.0) == approx(20.0 * PACE)  # no window test past its share
    dim.sent[0].add(10.0, 0.0)
    assert dim.rate(2.0, 0.0) == approx(10.0 * PACE * TEST_GAIN)  # gently past the share
    assert dim.rate(1.0, 0.0) == approx(10.0 * PACE)  # under the test's gain: as asked
    # Under a rate guessed from 429s, never past it.
    assert Dim("requests", found=600.0).rate(2.0) == approx(10.0 * PACE)
    assert Dim("requests", found=600.0).rate(0.5) == approx(5.0 * PACE)


# ----- Dim.wait -------------------------------------------------------------------------------


def test_without_a_limit_nothing_waits() -> None:
    dim = Dim("requests")
    dim.sent[0].add(1000.0, 0.0)
    assert dim.wait(1.0, True, 0.0) == 0.0


def test_the_wait_is_the_schedules() -> None:
    dim = Dim("requests", server=600.0, fresh=False)  # past the head start
    dim.take(1.0, 1.0, 0.0)
    assert dim.wait(1.0, False, 0.0) == approx(1 / (10.0 * PACE))
    assert dim.wait(1.0, False, 0.05) == approx(1 / (10.0 * PACE) - 0.05)


def test_the_minutes_bucket_holds_back_a_charge_it_cannot_cover_at_the_pace() -> None:
    dim = Dim("tokens", server=600.0, scale=2.0)
    dim.minute = Bucket(limit=600.0, level=0.0, stamp=0.0)
    # 3 of ours are 6 of the server's; the bucket must hold 6 / PACE, at 10 a second.
    assert dim.wait(3.0, False, 0.0) == approx(6.0 / PACE / 10.0)
    dim.minute = Bucket(limit=600.0, level=100.0, stamp=0.0)
    assert dim.wait(3.0, False, 0.0) == 0.0


def _filled(used: float, at: float = 0.0, **fields: Any) -> Dim:
    # Shares: 10 a second, 100 in 10 s; past the head start (a 429 was seen) unless told.
    dim = Dim("requests", server=600.0, **{"fresh": False, **fields})
    dim.sent[0].add(used, at)
    return dim


def test_a_window_under_test_allows_its_share_times_test_allow() -> None:
    assert TEST_ALLOW * 10.0 == 12.5
    # Testing the 1 s window: up to 12.5 in it.
    assert _filled(11.5).wait(1.0, False, 0.5) == 0.0
    assert _filled(12.0).wait(1.0, False, 0.5) == approx(1.0 + ARRIVAL_SKEW - 0.5)
    # Not testing (the quiet after a 429): its share, 10, no more.
    assert _filled(9.0, quiet_until=10.0).wait(1.0, False, 0.5) == 0.0
    assert _filled(9.5, quiet_until=10.0).wait(1.0, False, 0.5) == approx(0.51)


def test_bursting_or_after_a_burst_met_a_429_the_shares_lose_the_paces_margin() -> None:
    quiet = {"quiet_until": 10.0}
    assert _filled(9.0, **quiet).wait(1.0, False, 0.0) == 0.0  # 10 of 10
    assert _filled(9.0, **quiet).wait(1.0, True, 0.0) == approx(1.0 + ARRIVAL_SKEW)  # of 10 × PACE
    bounded = {"quiet_until": 10.0, "bounded_until": 5.0}
    assert _filled(9.0, **bounded).wait(1.0, False, 0.0) == approx(1.0 + ARRIVAL_SKEW)
    assert _filled(9.0, **bounded).wait(1.0, False, 0.5) == approx(0.51)
    late = _filled(9.0, at=5.0, **bounded)  # bounded no more at 5
    assert late.wait(1.0, False, 5.0) == 0.0


def test_a_charge_larger_than_a_windows_allowance_is_not_held_back_by_it() -> None:
    quiet = {"quiet_until": 10.0}
    # Exactly the allowance: it waits for the window to empty.
    assert _filled(0.5, **quiet).wait(10.0, False, 0.0) == approx(1.0 + ARRIVAL_SKEW)
    # More than it: it could never fit, so that window does not hold it (the caller
    # decides whether such a request may go at all).
    assert _filled(0.5, **quiet).wait(10.5, False, 0.0) == 0.0


def test_only_the_windows_not_yet_proven_longer_are_kept_to() -> None:
    dim = _filled(12.0)
    dim.level = 1  # the 1 s window was shown longer: it no longer holds a send back
    assert dim.wait(1.0, False, 0.5) == 0.0
    dim.level = len(WINDOWS)
    assert dim.wait(1.0, False, 0.5) == 0.0


def test_the_ten_second_window_is_kept_to_its_share_while_the_first_is_tested() -> None:
    dim = Dim("requests", server=600.0)
    dim.sent[1].add(99.5, -5.0)  # out of the 1 s window, within the 10 s one
    # The 1 s window is the one under test; the 10 s one allows its share, not 1.25 × it.
    assert dim.wait(1.0, False, 0.0) == approx(-5.0 + 10.0 + ARRIVAL_SKEW)
    assert dim.wait(0.5, False, 0.0) == 0.0
    dim.level = 1  # now the 10 s window is under test: 125 of it
    assert dim.wait(1.0, False, 0.0) == 0.0


def test_never_past_the_minutes_limit() -> None:
    dim = Dim("requests", server=600.0, level=len(WINDOWS))
    dim.sent_minute.add(599.5, -30.0)
    assert dim.wait(0.5, False, 0.0) == 0.0
    assert dim.wait(1.0, False, 0.0) == approx(-30.0 + 60.0 + ARRIVAL_SKEW)
    assert dim.wait(1.0, True, 0.0) == approx(-30.0 + 60.0 + ARRIVAL_SKEW)
    assert dim.wait(601.0, False, 0.0) == 0.0  # more than a minute's worth: not held here
    bursting = Dim("requests", server=600.0, level=len(WINDOWS))
    bursting.sent_minute.add(600.0 * PACE, -30.0)  # one more is within 600, not 600 × PACE
    assert bursting.wait(1.0, False, 0.0) == 0.0
    assert bursting.wait(1.0, True, 0.0) == approx(30.0 + ARRIVAL_SKEW)


def test_the_minutes_limit_at_another_time_and_a_charge_of_all_of_it() -> None:
    dim = Dim("requests", server=600.0, level=len(WINDOWS))
    dim.sent_minute.add(0.5, 100.0)
    assert dim.wait(1.0, False, 130.0) == 0.0
    assert dim.wait(600.0, False, 130.0) == approx(100.0 + 60.0 + ARRIVAL_SKEW - 130.0)
    assert dim.wait(600.5, False, 130.0) == 0.0  # more than the limit: not held here


def test_the_longest_of_the_waits_wins() -> None:
    dim = Dim("requests", server=600.0, quiet_until=10.0)
    dim.sent[0].add(10.0, 0.0)  # the 1 s window frees at 1.01
    dim.pace.due = 3.0  # the schedule says 3
    assert dim.wait(1.0, False, 0.0) == 3.0
    dim.pace.due = 0.5
    assert dim.wait(1.0, False, 0.0) == approx(1.0 + ARRIVAL_SKEW)
    dim.sent_minute.add(595.0, -50.0)  # the minute frees at 10.01
    assert dim.wait(10.0, False, 0.0) == approx(10.0 + ARRIVAL_SKEW)
    dim.minute = Bucket(limit=600.0, level=0.0, stamp=0.0)  # 10 / PACE at 10 a second: 1.02 s
    assert dim.wait(10.0, False, 0.0) == approx(10.0 + ARRIVAL_SKEW)
    assert dim.wait(200.0, False, 0.0) == approx(200.0 / PACE / 10.0)  # 20.4 s


# ----- Dim.take and what reads it ------------------------------------------------------------


def test_taking_charges_the_schedule_the_minute_and_every_window() -> None:
    dim = Dim("tokens", server=600.0, scale=2.0, fresh=False)
    dim.minute = Bucket(limit=600.0, level=100.0, stamp=0.0)
    assert dim.take(3.0, 1.0, 1.0) == 6.0  # the server's units
    assert dim.pace.due == approx(1.0 + 6.0 / (10.0 * PACE))
    assert (dim.minute.level, dim.minute.stamp) == (approx(110.0 - 6.0), 1.0)
    assert [w.total for w in (*dim.sent, dim.sent_minute)] == [6.0, 6.0, 6.0]
    dim.take(1.0, 1.0, 70.0)  # a minute later, the old charge has left every window
    assert [w.total for w in (*dim.sent, dim.sent_minute)] == [2.0, 2.0, 2.0]
    assert dim.minute.level == approx(600.0 - 2.0)


def test_taking_past_the_share_goes_at_the_tests_gain() -> None:
    dim = Dim("requests", server=600.0, fresh=False)
    dim.sent[0].add(10.0, 0.0)
    dim.take(1.0, 2.0, 0.0)
    assert dim.pace.due == approx(1.0 / (10.0 * PACE * TEST_GAIN))


def test_without_a_limit_taking_only_counts() -> None:
    dim = Dim("requests")
    assert dim.take(2.0, 1.0, 0.0) == 2.0
    assert dim.pace.due == -math.inf
    assert [w.total for w in (*dim.sent, dim.sent_minute)] == [2.0, 2.0, 2.0]


def test_paced_is_whether_the_schedule_holds_a_send_back() -> None:
    assert not Dim("requests").paced(0.0)
    dim = Dim("requests", server=600.0, fresh=False)
    assert not dim.paced(0.0)
    dim.take(1.0, 1.0, 0.0)
    assert dim.paced(0.0) and not dim.paced(100.0)
    unlimited = Dim("requests")
    unlimited.pace.due = 5.0
    assert not unlimited.paced(5.0)


def test_beyond_is_the_share_of_the_smallest_unproven_window_sent() -> None:
    assert Dim("requests").beyond(0.0) == 0.0
    dim = Dim("requests", server=600.0)
    dim.sent[0].add(5.0, 0.0)
    dim.sent[1].add(20.0, 0.0)
    assert dim.beyond(0.0) == 0.5
    dim.level = 1
    assert dim.beyond(0.0) == 0.2
    dim.level = len(WINDOWS)
    assert dim.beyond(0.0) == 0.0


def test_a_fresh_dimension_under_a_limit_told_heads_the_first_windows_test() -> None:
    assert Dim("requests", server=600.0).heading(0.0)
    assert Dim("requests", cap=600.0).heading(0.0)  # a cap with no headers: a limit told
    assert not Dim("requests").heading(0.0)  # no limit
    assert not Dim("requests", found=600.0).heading(0.0)  # a guess from 429s
    assert not Dim("requests", server=600.0, fresh=False).heading(0.0)  # a 429 was seen
    assert not Dim("requests", server=600.0, level=1).heading(0.0)  # 1 s shown longer
    assert not Dim("requests", server=600.0, quiet_until=5.0).heading(0.0)


def test_the_head_start_sends_the_share_and_one_test_with_no_pace_owed() -> None:
    dim = Dim("requests", server=600.0)  # a share of 10 a second
    for _ in range(11):
        assert dim.wait(1.0, False, 0.0) == 0.0
        dim.take(1.0, 1.0, 0.0)
    assert dim.pace.due == -math.inf
    assert dim.wait(1.0, False, 0.0) == approx(1.0 + ARRIVAL_SKEW)
    dim.head_ok = 11.0  # the test was accepted: one more may go
    assert dim.wait(1.0, False, 0.0) == 0.0
    # The 10 s window still holds it to its share.
    dim.sent[1].add(89.0, 0.0)
    assert dim.wait(1.0, False, 0.0) == approx(10.0 + ARRIVAL_SKEW)


def test_what_was_accepted_is_kept_only_under_a_limit() -> None:
    # `kept` needs a limit to be a gain: with none known, an answer costs nothing to count
    # (a map with no limit pays no bookkeeping per row), and the span starts at the first
    # answer counted under one.
    free = Dim("requests")
    free.accept(1.0, 5.0)
    assert free.accepted.total == 0.0 and free.accepting_since == math.inf
    told = Dim("requests", cap=6000.0)
    told.accept(1.0, 5.0)
    told.accept(1.0, 5.5)
    assert told.accepted.total == 2.0 and told.accepting_since == 5.0
    assert told.kept(6.0) == pytest.approx(2 / 1.0 / (100 * PACE))
