"""A session's threads and their turns: which thread is current, what the model sees, and
where a reply goes (appended, or in place of the turn its cell answered before).

The rule for notebook cells (ipykernel sends each cell's id with its execution):

- A turn remembers the cell it came from. Running that cell again on the same thread
  *replaces* its turn in place: the model sees the turns before it (as they are now), and
  the turns after it stay, answered with the old text (the footer says so).
- A cell that has no turn on the thread yet appends one at the end, whatever its place in the
  notebook: the kernel knows the order cells ran in, not where they sit on the page.
- Turns without a cell (a terminal, the panel, `session.ask`) always append.
- `--new` clears the thread first, so the cell's turn becomes turn 1.

So running cells out of order is as if each cell kept its own slot: re-running cell 1 after
cells 2 and 3 re-asks question 1 without 2 and 3, and 2 and 3 keep their answers.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ConfigError
from ipychat.core.messages import Thread, check_thread_name
from ipychat.core.types import Reply

if TYPE_CHECKING:
    from ipychat.engine.prepare import Prepared

__all__ = ["Conversations", "TurnRecord"]


@dataclass(frozen=True)
class TurnRecord:
    """One turn to restore into a thread (`%chat import`)."""

    prompt: str
    reply: str
    cell: str | None = None
    record: dict[str, Any] | None = None  # how the reply was made (`Reply.record()`)


class Conversations:
    """The named threads of one session and the current one's name; `changed(name)` is
    called when a thread appears, is switched to or cleared (the session's "threads" event)."""

    def __init__(self, changed: Callable[[str], None]) -> None:
        self.threads: dict[str, Thread] = {"main": Thread("main")}
        self.current = "main"
        self._changed = changed
        self._lock = threading.RLock()

    def thread(self, name: str | None = None, *, create: bool = True) -> Thread:
        name = name or self.current
        if name not in self.threads:
            check_thread_name(name)
            if not create:
                known = ", ".join(sorted(self.threads))
                raise ConfigError(
                    f"No thread named {name!r}; threads: {known}. Start it with --thread {name}."
                )
            self.threads[name] = Thread(name)
            self._changed(name)
        return self.threads[name]

    def switch(self, name: str) -> Thread:
        thread = self.thread(name)
        self.current = name
        self._changed(name)
        return thread

    def reset(self, name: str | None = None) -> None:
        self.thread(name, create=False).clear()
        self._changed(name or self.current)

    def history(
        self, name: str | None, *, cell: str | None = None, new: bool = False
    ) -> list[dict[str, Any]]:
        """What the model sees before the new turn: nothing with `new`; the turns before the
        cell's own when `cell` answered on this thread before; else the whole thread."""
        existing = self.threads.get(name or self.current)
        if new or existing is None:
            return []
        return existing.history_before(existing.turn_of(cell))

    def remember(self, prepared: Prepared, reply: Reply, *, new: bool) -> Reply:
        """Put a finished (or interrupted) turn into its thread; returns the reply with its
        place there: turn number, cell, and whether it replaced the cell's earlier turn."""
        thread = prepared.thread
        if thread is None:
            return reply
        cell = prepared.cell
        with self._lock:
            if new:
                thread.clear()
            index = thread.turn_of(cell)
            if index is None:
                index = thread.turns
                reply = dataclasses.replace(reply, turn=index + 1, cell=cell)
                thread.add_turn(prepared.prompt, reply.text, cell, reply.record())
                return reply
            later = thread.turns - index - 1
            reply = dataclasses.replace(
                reply, turn=index + 1, cell=cell, replaced=True, later_turns=later
            )
            thread.replace_turn(index, prepared.prompt, reply.text, reply.record())
        return reply

    def restore(self, name: str, turns: Sequence[TurnRecord], *, replace: bool = False) -> Thread:
        """A thread made of `turns` (`%chat import`); an existing non-empty thread is refused
        unless `replace`."""
        with self._lock:
            thread = self.thread(name)
            if thread.messages and not replace:
                raise ConfigError(
                    f"Thread {name!r} already has {thread.turns} turn(s): import into another "
                    f"with --thread NAME, or add --force to replace it."
                )
            thread.clear()
            for turn in turns:
                thread.add_turn(turn.prompt, turn.reply, turn.cell, turn.record)
        self._changed(name)
        return thread
