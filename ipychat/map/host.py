"""What the map entry points need of their caller: an engine and a loop to run on.

`ipychat.session.ChatSession` is one (`session.map` passes itself), so the map package
depends on the engine below it, never on the session above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ipychat.core.runner import LoopThread
    from ipychat.engine.engine import Engine

__all__ = ["Host"]


class Host(Protocol):
    """The engine that prepares and sends a map's requests, and the loop thread they run
    on (the caller's thread waits on it with `ipychat.core.runner.wait`)."""

    @property
    def engine(self) -> Engine: ...

    @property
    def runner(self) -> LoopThread: ...
