"""A map and Python's cycle collector (ipychat.map.heap, ipychat.map.dispatch).

A run keeps the collector off the heap that existed when it started (gc.freeze, undone
when it ends), and a finished run leaves no cyclic garbage behind: its rows are freed
by reference counting, not by the next full collection.
"""

from __future__ import annotations

import gc
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pytest

from ipychat.core import tokens
from ipychat.map import counting, dispatch, heap
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer


def rows(n: int, tag: str) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{tag} {i}" for i in range(n)]})


def test_runs_freeze_the_heap_once_and_the_last_one_out_unfreezes_it() -> None:
    assert gc.get_freeze_count() == 0
    with heap.frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with heap.frozen_heap():  # an overlapping run: no second freeze
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen  # still frozen for the first run
    assert gc.get_freeze_count() == 0


def test_a_run_collects_the_young_generation_less_often_and_restores_it() -> None:
    before = gc.get_threshold()
    assert 0 < before[0] < heap.YOUNG_THRESHOLD
    with heap.frozen_heap():
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *before[1:])
        with heap.frozen_heap():  # an overlapping run changes nothing more
            assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *before[1:])
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD  # the first run still goes on
    assert gc.get_threshold() == before


def test_a_threshold_set_during_a_run_or_collection_off_is_left_alone() -> None:
    before = gc.get_threshold()
    try:
        with heap.frozen_heap():
            gc.set_threshold(500, 5, 5)  # the user's own, set while the map ran
        assert gc.get_threshold() == (500, 5, 5)
        gc.set_threshold(0, 5, 5)  # automatic collection off: not switched back on
        with heap.frozen_heap():
            assert gc.get_threshold() == (0, 5, 5)
        assert gc.get_threshold() == (0, 5, 5)
        gc.set_threshold(50_000, 10, 10)  # already higher: not lowered
        with heap.frozen_heap():
            assert gc.get_threshold() == (50_000, 10, 10)
        assert gc.get_threshold() == (50_000, 10, 10)
    finally:
        gc.set_threshold(*before)


def test_an_error_in_the_run_still_unfreezes() -> None:
    before = gc.get_threshold()
    with pytest.raises(KeyError), heap.frozen_heap():
        raise KeyError("boom")
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_runs_in_two_threads_share_one_freeze() -> None:
    inside = threading.Barrier(3)  # the two runs and this test
    leave = threading.Event()

    def run() -> None:
        with heap.frozen_heap():
            inside.wait(5)
            leave.wait(5)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait(5)
    assert gc.get_freeze_count() > 0
    leave.set()
    for t in threads:
        t.join(5)
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_from_before_a_run_is_collected_after_it() -> None:
    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle only the collector can free
    with heap.frozen_heap():
        del a, b
        assert gc.collect() == 0  # frozen: left alone while the run goes on
    assert gc.collect() >= 2  # collected once the run is over: nothing leaks


def test_a_map_runs_with_the_heap_frozen_and_leaves_no_cycles(
    make_session: Callable[..., ChatSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    @contextmanager
    def spying() -> Iterator[None]:
        with heap.frozen_heap():
            seen.append(gc.get_freeze_count())
            yield

    monkeypatch.setattr(dispatch, "frozen_heap", spying)
    with FakeOpenAIServer() as server:
        session = make_session(server)
        session.map(rows(5, "warm up"), "Say {text}", "out")  # imports, client, encodings
        gc.collect()
        out = session.map(rows(200, "row"), "Say {text}", "out")
        assert out["out"].notna().all()
        # Before: the job and its dispatcher held each other, so the run's 200 requests,
        # their bodies and estimates (~6 objects a row) waited for a full collection.
        unreachable = gc.collect()
    assert unreachable < 50, unreachable
    assert len(seen) == 2 and all(n > 0 for n in seen)
    assert gc.get_freeze_count() == 0


def test_a_map_sent_while_the_encoding_loads_leaves_no_cycles(
    make_session: Callable[..., ChatSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sent with byte bounds (the encoding still loading: ipychat.map.counting), the exact
    # count never needed (the replies carry usage), so the Recount's task is cancelled.
    # Its job held it and it held the job (`_counted`), and the cancelled task's traceback
    # held it: the whole plan waited for a full collection. The collector is off during the
    # map, so no automatic collection can hide such a cycle; all must go by refcount.
    made: list[int] = []
    real_init = counting.Recount.__init__

    def counted_init(self: counting.Recount, *args: Any) -> None:
        made.append(1)
        real_init(self, *args)

    monkeypatch.setattr(counting.Recount, "__init__", counted_init)
    with FakeOpenAIServer() as server:
        session = make_session(server)
        session.map(rows(5, "warm up"), "Say {text}", "out")  # imports, client
        monkeypatch.setattr(tokens, "_encodings", {})
        tokens.clear_cache()
        lock = tokens._load_locks[tokens.encoding_name_for("gpt-4o-mini")[0]]
        lock.acquire()  # as in a fresh kernel whose warm-up is building the encoding
        gc.collect()
        made.clear()
        gc.disable()
        try:
            out = session.map(rows(200, "row"), "Say {text}", "out")
            # What only a collection would free (an earlier test's session may join it).
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            garbage = Counter(type(o).__name__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            lock.release()
    assert out["out"].notna().all()
    assert made == [1]  # sent with byte bounds: this map had a Recount
    of_the_map = {k: garbage[k] for k in ("MapJob", "MapRequest", "Recount", "Task")}
    assert not any(of_the_map.values()), garbage.most_common(12)
