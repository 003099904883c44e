"""Keep Python's cycle collector off the kernel's existing heap while a map runs.

A kernel holds a large heap (IPython, pandas, the user's frames: ~150,000 tracked objects
in benchmarks/chatmap.py's latency cell). A %%chatmap allocates a few dozen objects per
row that live until the run ends (replies, ledger rows, answers), and every ~35,000 of
them make CPython run a full collection, which walks the whole heap: 50-90 ms each, a
fifth of the map's CPU per row on the loop (measured with gc.callbacks in that cell).

`frozen_heap()` moves every object that exists when the run starts into the permanent
generation (`gc.freeze`, Python >= 3.7) and back into the oldest generation when it ends
(`gc.unfreeze`). During the run, collections walk only what the run allocated; nothing
is leaked: cyclic garbage among the older objects is collected as usual once the run is
over (https://docs.python.org/3/library/gc.html#gc.freeze). Both calls move lists, they
do not walk them. Runs that overlap share one freeze, undone when the last one ends.

For as long, the youngest generation collects every `YOUNG_THRESHOLD` net allocations
instead of CPython's 700. A request's objects (aiohttp's request and response, the reply,
the exchange) live for its latency, so with 64 in flight a collection every 700
allocations scans each of them (and the rows' results) once as young, again as middle-
aged: ~140 young and ~12 middle collections per 2,000 rows, ~0.03 ms a row, 6% of the
map's CPU (gc.callbacks, benchmarks/chatmap.py's latency cell). Every 10,000, most of
a finished request's objects are freed by reference counting before any collection sees
them: 3-7 collections per 2,000 rows. What it costs the rest of the kernel while a map
runs: cyclic garbage waits for 10,000 allocations instead of 700 (a few MB at most).
The setting is the process's (`gc.set_threshold`), restored when the last run ends,
unless someone else changed it meanwhile (theirs is kept); a threshold of 0 (automatic
collection off) or one already higher is left as it is.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["YOUNG_THRESHOLD", "frozen_heap"]

YOUNG_THRESHOLD = 10_000  # net allocations between collections of the youngest generation

_lock = threading.Lock()
_runs = 0  # runs under way (the heap is frozen while > 0)
# (the thresholds before the first run, the ones it set) while raised; None otherwise
_raised: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None


@contextmanager
def frozen_heap() -> Iterator[None]:
    """While the block runs, collections leave the objects that existed before it alone."""
    global _runs
    with _lock:
        _runs += 1
        if _runs == 1:
            gc.freeze()
            _raise_young_threshold()
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0:
                _restore_young_threshold()
                gc.unfreeze()


def _raise_young_threshold() -> None:
    """Collect the youngest generation every YOUNG_THRESHOLD allocations (docstring)."""
    global _raised
    before = gc.get_threshold()
    if 0 < before[0] < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, *before[1:])
        _raised = (before, gc.get_threshold())


def _restore_young_threshold() -> None:
    """Put back the thresholds `_raise_young_threshold` found, unless changed since."""
    global _raised
    if _raised is not None:
        before, ours = _raised
        _raised = None
        if gc.get_threshold() == ours:
            gc.set_threshold(*before)
