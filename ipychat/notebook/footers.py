"""The footer of every reply in a session's threads, for the panel to show under it.

Threads keep plain message dicts (they are sent to the API as they are); the Reply each
assistant message came from (model, tokens, cost, time) is remembered here from the
session's "reply" events, once per session, for every panel, including later ones.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, ClassVar

from ipychat.core import format as fmt
from ipychat.core.types import Reply
from ipychat.session import ChatSession, Event

__all__ = ["ReplyFooters"]


class ReplyFooters:
    """Footers of the replies of one session, keyed by the assistant message they belong to
    (`ReplyFooters.of(session)`: one per session)."""

    _by_session: ClassVar[weakref.WeakKeyDictionary[ChatSession, ReplyFooters]] = (
        weakref.WeakKeyDictionary()
    )
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, session: ChatSession) -> None:
        # Weak: the session holds this object (as a listener), and this entry must not keep
        # the session alive in the WeakKeyDictionary.
        self._session = weakref.ref(session)
        self._footers: dict[int, tuple[dict[str, Any], Reply, str]] = {}
        session.subscribe(self._on_event)

    @classmethod
    def of(cls, session: ChatSession) -> ReplyFooters:
        with cls._lock:
            if session not in cls._by_session:
                cls._by_session[session] = cls(session)
            return cls._by_session[session]

    def _on_event(self, event: Event) -> None:
        session = self._session()
        thread = session.threads.get(event.thread) if session is not None else None
        if event.kind != "reply" or event.reply is None or thread is None:
            return
        turn = event.reply.turn  # a re-run cell's reply replaced a turn in the middle
        if 0 < turn <= thread.turns:
            message: dict[str, Any] | None = thread.messages[2 * turn - 1]
        else:
            message = next((m for m in reversed(thread.messages) if m["role"] == "assistant"), None)
        if message is not None:
            footer = fmt.footer(event.reply, turns=thread.turns)
            self._footers[id(message)] = (message, event.reply, footer)

    def get(self, message: dict[str, Any]) -> tuple[Reply, str] | None:
        entry = self._footers.get(id(message))
        # id() values are reused once a message is gone: check it is still the same dict.
        return (entry[1], entry[2]) if entry is not None and entry[0] is message else None
