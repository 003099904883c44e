"""An incremental Server-Sent Events decoder that works on bytes.

Pure: no I/O, no third-party imports. Feed it the body of a `text/event-stream`
response in chunks of any size (a chunk may end inside a line, inside a CRLF pair or
inside a multi-byte UTF-8 character) and it returns the complete events so far.

It follows the WHATWG event-stream rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- lines end with CRLF, LF or CR;
- lines starting with `:` are comments (servers send them as keep-alives);
- `field: value` with one optional space after the colon; `data` lines of one event are
  joined with "\\n"; `event`, `id` and `retry` are kept; unknown fields are ignored;
- an empty line dispatches the event, an event without `data` is dropped.

Lines are split on bytes and decoded one whole line at a time, so a UTF-8 character
cut by a chunk boundary is never mangled (decoding each chunk on its own would be).
Unlike the browser algorithm, `flush()` at the end of the body also returns an event
whose closing blank line never came, so the caller sees e.g. a final `data: [DONE]`
that a terse server did not terminate, and decides itself what a cut stream means.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "ServerSentEvent"]

_LINE_ENDS = (b"\n", b"\r")
_BOM = "\ufeff"


class ServerSentEvent(NamedTuple):
    """One dispatched event. `data` is the joined `data:` lines of the event.

    A NamedTuple, not a frozen dataclass: a streamed reply makes one per token, and a
    tuple is several times cheaper to create.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns a byte stream into `ServerSentEvent`s; feed chunks, then `flush()` at the end."""

    __slots__ = ("_data", "_event", "_first_line", "_id", "_pending", "_retry", "_skip_lf")

    def __init__(self) -> None:
        # Bytes of the current, still unterminated line (kept as pieces so that a long
        # line arriving in many small chunks is joined once, not once per chunk).
        self._pending: list[bytes] = []
        # The previous chunk ended in CR: a LF at the start of the next one is the
        # second half of that CRLF, not an empty line of its own.
        self._skip_lf = False
        self._first_line = True
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    @property
    def has_pending(self) -> bool:
        """True when bytes of an unfinished line or event are buffered."""
        return bool(self._pending or self._data)

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by `chunk` (often none, sometimes several)."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending.append(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending = []
        lines = chunk.splitlines(keepends=True)
        if not lines[-1].endswith(_LINE_ENDS):
            self._pending.append(lines.pop())
        elif chunk.endswith(b"\r"):
            self._skip_lf = True
        events: list[ServerSentEvent] = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[ServerSentEvent]:
        """At the end of the body: the last line and event, even if unterminated."""
        if self._pending:
            line = b"".join(self._pending)
            self._pending = []
            # A non-empty line never dispatches by itself: only the blank line does.
            self._line(line)
        event = self._dispatch()
        return [] if event is None else [event]

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        # Fast path for the line nearly every event consists of.
        if raw[:5] == b"data:" and not self._first_line:
            data = raw[6:] if raw[5:6] == b" " else raw[5:]
            self._data.append(data.decode("utf-8", "replace"))
            return None
        # "replace" is what the spec's UTF-8 decode does with invalid bytes.
        line = raw.decode("utf-8", "replace")
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, _, value = line.partition(":")
        if value[:1] == " ":  # (a line without a colon has an empty value)
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = None
            return None
        event = ServerSentEvent("\n".join(self._data), self._event, self._id, self._retry)
        self._data = []
        self._event = None
        # `id` and `retry` persist across events, as the spec says.
        return event
