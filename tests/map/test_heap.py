"""A map and Python's cycle collector (ipychat.map.heap, ipychat.map.dispatch).

A run keeps the collector off the heap that existed when it started (gc.freeze, undone
when it ends), and a finished run leaves no cyclic garbage behind: its rows are freed
by reference counting, not by the next full collection.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pandas as pd
import pytest

from ipychat.map import dispatch, heap
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


def test_an_error_in_the_run_still_unfreezes() -> None:
    with pytest.raises(KeyError), heap.frozen_heap():
        raise KeyError("boom")
    assert gc.get_freeze_count() == 0


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
