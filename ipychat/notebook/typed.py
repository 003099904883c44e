"""Send what was typed, not what the kernel has heard of it so far.

A browser syncs a textarea's keystrokes to the kernel one message at a time: while one is
unanswered, ipywidgets holds what comes next and sends it once the kernel is idle again
(its `msg_throttle`). A click on a button is a message of another widget, sent at once. So
a click right after typing can reach the kernel before the last keystrokes: the panel's
Send then read "Tell me about" of "Tell me about the panel". `TypedPrompt.then` waits,
after such a click, until the textarea has been quiet for SETTLE seconds (SETTLE_MAX at
most). A value set by code (not by a browser's message) is taken as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SETTLE", "SETTLE_MAX", "TypedPrompt"]

SETTLE = 0.3
SETTLE_MAX = 2.0


class TypedPrompt:
    """When the browser last synced `textarea`'s value (call `seen` on each change)."""

    def __init__(self, textarea: Any) -> None:
        self._textarea = textarea
        self._typed_at = float("-inf")

    def seen(self) -> None:
        # A value set from a browser's message is under ipywidgets' property lock.
        if "value" in getattr(self._textarea, "_property_lock", {}):
            self._typed_at = time.monotonic()

    def then(
        self,
        send: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
        guard: Callable[[Callable[[], None]], None],
    ) -> None:
        """`send()` now if the prompt is quiet, else on `loop` once it is (see the module)."""
        clicked = time.monotonic()

        def when_quiet() -> None:
            now = time.monotonic()
            if now - self._typed_at < SETTLE and now - clicked < SETTLE_MAX:
                loop.call_later(SETTLE / 3, guard, when_quiet)
            else:
                send()

        if clicked - self._typed_at >= SETTLE:
            send()
        else:
            loop.call_soon_threadsafe(guard, when_quiet)
