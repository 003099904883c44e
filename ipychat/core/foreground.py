"""Whether a map is running in this process now: background work waits for a quiet moment.

A map that starts in a fresh kernel, before the background warm-up (ipychat.notebook.
warmup) has built the model's encoding, sends with byte bounds instead of token counts
(ipychat.map.counting). Building the encoding then would cost the map ~0.5 s of CPU (~0.3 s
of it one call that holds the GIL) for nothing it needs, so `%%chatmap` runs inside
`busy()` and the warm-up builds it in `wait_idle()`'s quiet moment instead: no map running,
none for IDLE_AFTER seconds (the next cell of a notebook run top to bottom may be another
map). Only background work waits: whatever needs the encoding loads it at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Final

__all__ = ["IDLE_AFTER", "busy", "wait_idle"]

IDLE_AFTER: Final = 1.0

_running = 0
_ended = float("-inf")  # time.monotonic() when the last `busy()` block ended
_changed = threading.Condition()


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Within the block, `wait_idle()` waits (blocks may nest and run in several threads)."""
    global _running, _ended
    with _changed:
        _running += 1
    try:
        yield
    finally:
        with _changed:
            _running -= 1
            _ended = time.monotonic()
            _changed.notify_all()


def wait_idle(quiet: float | None = None) -> None:
    """Return once no `busy()` block runs and none has for `quiet` seconds (IDLE_AFTER),
    counted from this call at the earliest: in a fresh kernel no map has run yet, and the
    next cell may be the first one."""
    called = time.monotonic()
    with _changed:
        while True:
            if _running:
                _changed.wait()
                continue
            quiet_since = max(_ended, called)
            left = quiet_since + (IDLE_AFTER if quiet is None else quiet) - time.monotonic()
            if left <= 0:
                return
            _changed.wait(left)
