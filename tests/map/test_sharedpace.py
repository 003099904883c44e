"""The shared pace (ipychat.map.sharedpace.RedisPace) on a real redis-server: slots of one
schedule for every process, a 429 seen by one holds back all, a Redis that is down warns
once and paces nobody."""

from __future__ import annotations

import asyncio
import pickle
import time
from typing import Any

import pytest

from ipychat.engine.stores.base import CacheURLError
from ipychat.map.sharedpace import (
    CHECK_EVERY,
    HEADROOM,
    PUBLISHED_FOR,
    PaceWarning,
    RedisPace,
)

pytestmark = pytest.mark.redis


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_two_paces_share_one_schedule(redis_server: Any) -> None:
    # Two RedisPace objects stand for two workers: between them, the slots of 600 RPM
    # (10 a second, at HEADROOM) are handed out in turn, never two at once.
    a = RedisPace(redis_server.url, prefix="t1:")
    b = pickle.loads(pickle.dumps(a))  # as a Dask worker gets it

    async def take(pace: RedisPace) -> float:
        await pace.acquire("http://x gpt", 10, rpm=600, tpm=None)
        return time.monotonic()

    async def main() -> list[float]:
        return list(await asyncio.gather(*(take(p) for p in (a, b) * 4)))

    times = sorted(run(main()))
    step = 60 / (600 * HEADROOM)
    # Lower bounds prove the pacing (alone, each pace would give 4 slots in 3 steps);
    # the upper ones only leave room for a loaded machine's late wake-ups.
    assert 7 * step * 0.97 <= times[-1] - times[0] < 7 * step + 1.0


def test_tokens_are_paced_too(redis_server: Any) -> None:
    pace = RedisPace(redis_server.url, prefix="t2:")

    async def main() -> float:
        started = time.monotonic()
        for _ in range(3):  # 600 tokens each under 60,000 TPM: 0.6 s apiece (+ headroom)
            await pace.acquire("scope", 600, rpm=None, tpm=60_000)
        return time.monotonic() - started

    assert 2 * 0.6 / HEADROOM * 0.97 <= run(main()) < 2 * 0.6 / HEADROOM + 1.0


def test_a_refusal_holds_back_every_worker(redis_server: Any) -> None:
    a = RedisPace(redis_server.url, prefix="t3:")
    b = RedisPace(redis_server.url, prefix="t3:")

    async def main() -> float:
        await a.acquire("scope", 1, rpm=6000, tpm=None)
        await a.refused("scope", 0.5)  # worker a saw a 429 asking for half a second
        started = time.monotonic()
        await b.acquire("scope", 1, rpm=6000, tpm=None)
        return time.monotonic() - started

    assert 0.45 <= run(main()) < 1.5


def test_requests_sent_before_the_limit_was_known_count(redis_server: Any) -> None:
    pace = RedisPace(redis_server.url, prefix="t4:")

    async def main() -> float:
        for _ in range(5):  # the first answers have not told the limit yet
            await pace.acquire("scope", 1, rpm=None, tpm=None)
        started = time.monotonic()
        await pace.acquire("scope", 1, rpm=600, tpm=None)  # now it is known: 0.1 s a slot
        return time.monotonic() - started

    step = 60 / (600 * HEADROOM)
    assert 5 * step * 0.97 <= run(main()) < 5 * step + 1.0


def test_a_redis_that_is_down_warns_once_and_paces_nobody(redis_server: Any) -> None:
    port = redis_server.port
    pace = RedisPace(f"redis://127.0.0.1:{port + 1 if port < 65535 else port - 1}/0")

    async def main() -> float:
        started = time.monotonic()
        for _ in range(3):
            await pace.acquire("scope", 1, rpm=60, tpm=None)  # 1 a second, were it up
        return time.monotonic() - started

    with pytest.warns(PaceWarning, match="cannot be used") as warned:
        assert run(main()) < 1.0
    assert len(warned) == 1 and pace.disabled


def test_a_bad_url_is_refused_at_once_without_its_password() -> None:
    with pytest.raises(CacheURLError) as caught:
        RedisPace("redis://:hunter2secret@127.0.0.1:99999/0")
    assert "hunter2secret" not in str(caught.value) and "port" in str(caught.value)


def test_map_options_take_a_shared_pace_and_a_cache_batch(redis_server: Any) -> None:
    from ipychat.core.errors import ConfigError
    from ipychat.map.options import MapOptions

    pace = RedisPace(redis_server.url)
    assert MapOptions.of("x", pace=pace, cache_batch=1).pace is pace
    with pytest.raises(ConfigError, match="pace is a shared pace such as"):
        MapOptions.of("x", pace="redis://127.0.0.1:6379/0")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="cache_batch must be a positive whole number"):
            MapOptions.of("x", cache_batch=bad)


def test_a_refusal_costs_its_pause_not_the_slots_reserved_past_it(redis_server: Any) -> None:
    # Eight requests take their turns at 600 RPM (a slot every ~0.1 s); a 429 after the
    # first asks for 10 ms. The slots reserved after that pause stand: the eight still
    # span about seven steps. (Before, every waiting request took a new slot after the
    # 429: the span doubled, one 429 costing as many slots as there were requests waiting.)
    pace = RedisPace(redis_server.url, prefix="t7:")

    async def take() -> float:
        await pace.acquire("scope", 1, rpm=600, tpm=None)
        return time.monotonic()

    async def main() -> list[float]:
        tasks = [asyncio.ensure_future(take()) for _ in range(8)]
        await asyncio.sleep(0.05)
        await pace.refused("scope", 0.01)
        return list(await asyncio.gather(*tasks))

    times = sorted(run(main()))
    step = 60 / (600 * HEADROOM)
    assert 7 * step * 0.97 <= times[-1] - times[0] < 10 * step


def test_a_request_woken_late_takes_a_new_slot(redis_server: Any) -> None:
    # Slots every ~0.1 s (600 RPM): five requests, then the watched one (~0.5 s), then
    # twelve more (~0.6 s to ~1.7 s). The loop then stalls for a second, as a busy
    # process does: the watched request wakes ~0.5 s after its slot. Sent then, it would
    # land on top of the next window's slots; it takes a new slot, after the twelve.
    # (Before, it went at once, at ~1.0 s.)
    pace = RedisPace(redis_server.url, prefix="t8:")

    async def take() -> float:
        await pace.acquire("scope", 1, rpm=600, tpm=None)
        return time.monotonic()

    async def main() -> float:
        started = time.monotonic()
        ahead = [asyncio.ensure_future(take()) for _ in range(5)]
        await asyncio.sleep(0.05)
        watched = asyncio.ensure_future(take())
        await asyncio.sleep(0.05)
        behind = [asyncio.ensure_future(take()) for _ in range(12)]
        await asyncio.sleep(0.05)
        time.sleep(1.0)  # the stall (blocking on purpose)
        went = await watched
        await asyncio.gather(*ahead, *behind)
        return went - started

    assert run(main()) >= 1.5


def script_calls(redis_server: Any) -> int:
    """Scripts the server ran since the last CONFIG RESETSTAT (every pace call is one)."""
    stats = redis_server.client().info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha"))


def test_unpaced_requests_ask_redis_nothing_until_a_limit_is_known(redis_server: Any) -> None:
    # Worker a knows no limit (an unlimited server, or no answer yet): a hundred requests
    # cost it one look-up, not a round trip each (before: 100 scripts, one per request).
    # Then worker b learns 600 RPM (a header): within CHECK_EVERY, a paces under it too.
    a = RedisPace(redis_server.url, prefix="t9:")
    b = RedisPace(redis_server.url, prefix="t9:")

    async def unpaced() -> float:
        started = time.monotonic()
        for _ in range(100):
            await a.acquire("scope", 1, rpm=None, tpm=None)
        return time.monotonic() - started

    redis_server.client().config_resetstat()
    elapsed = run(unpaced())
    assert elapsed < CHECK_EVERY  # the test's premise: all within one look-up's time
    assert script_calls(redis_server) == 1

    # Worker c (no request of its own yet, so no unpaced ones to count) looks up the
    # limit b published and takes its turns: four requests span three slots.
    c = RedisPace(redis_server.url, prefix="t9:")

    async def b_learns_then_c_paces() -> list[float]:
        await b.acquire("scope", 1, rpm=600, tpm=None)  # b's first answer told it
        times = []
        for _ in range(4):
            await c.acquire("scope", 1, rpm=None, tpm=None)  # c knows none itself
            times.append(time.monotonic())
        return times

    times = run(b_learns_then_c_paces())
    step = 60 / (600 * HEADROOM)
    assert 3 * step * 0.97 <= times[-1] - times[0] < 3 * step + 1.0


def test_a_limit_ends_with_the_turns_of_those_who_know_it(redis_server: Any) -> None:
    # Worker b caps its map at 600 RPM (or learnt it); worker c borrows that limit. Once b
    # stops sending, the limit is gone PUBLISHED_FOR later, though c kept taking turns
    # under it (a borrower does not publish it again): a next map is not held to a cap
    # that only the last one had. (Before: c's turns kept it published for good.)
    b = RedisPace(redis_server.url, prefix="t11:")
    c = RedisPace(redis_server.url, prefix="t11:")
    step = 60 / (600 * HEADROOM)

    async def main() -> float:
        await b.acquire("scope", 1, rpm=600, tpm=None)
        deadline = time.monotonic() + PUBLISHED_FOR + 2 * CHECK_EVERY
        while time.monotonic() < deadline:  # c goes on, under the borrowed limit
            await c.acquire("scope", 1, rpm=None, tpm=None)
        await asyncio.sleep(step * 30)  # the turns c reserved have passed
        started = time.monotonic()
        for _ in range(5):
            await c.acquire("scope", 1, rpm=None, tpm=None)
        return time.monotonic() - started

    assert run(main()) < 2 * step  # five requests at once: no limit known any more


def test_a_429_holds_back_a_worker_that_knows_no_limit(redis_server: Any) -> None:
    # Worker a got a bare 429 asking for half a second; worker b has seen no limit at all.
    # Its next look-up finds the pause and waits it out (before: it sent at once).
    a = RedisPace(redis_server.url, prefix="t10:")
    b = RedisPace(redis_server.url, prefix="t10:")

    async def main() -> float:
        await a.refused("scope", 0.5)
        started = time.monotonic()
        await b.acquire("scope", 1, rpm=None, tpm=None)
        return time.monotonic() - started

    assert 0.45 <= run(main()) < 1.5
