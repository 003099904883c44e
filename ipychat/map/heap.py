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
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["frozen_heap"]

_lock = threading.Lock()
_runs = 0  # runs under way (the heap is frozen while > 0)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """While the block runs, collections leave the objects that existed before it alone."""
    global _runs
    with _lock:
        _runs += 1
        if _runs == 1:
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0:
                gc.unfreeze()
