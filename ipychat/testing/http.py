"""A small HTTP/1.1 server core on asyncio streams, for `ipychat.testing`'s fake server.

Why hand-written: `http.server` runs a thread per request (the fake server must sustain
64+ slow requests in flight without becoming the bottleneck of a client benchmark), and
aiohttp.web or uvicorn would make the public package depend on a web framework for its
test helper. OpenAI clients send little HTTP, so the parser is small:

- a request line and headers ended by CRLF CRLF (leading empty lines are skipped; no
  obsolete line folding, no bare-LF lines);
- a body framed by `Content-Length` or `Transfer-Encoding: chunked` (both at once is
  refused, as request smuggling defences do); `Expect: 100-continue` is answered;
- persistent connections: HTTP/1.1 keeps the connection unless `Connection: close`,
  HTTP/1.0 closes it unless `Connection: keep-alive`; pipelined requests are answered
  in order because the next request is read only after the previous response.

Responses are either fixed-length (`Exchange.respond`) or streamed (`Exchange.start_stream`,
chunked on HTTP/1.1, close-delimited on HTTP/1.0). `Exchange.abort` and `Exchange.hold`
are the deliberate failures the fault injector needs: a TCP reset, or a request that is
never answered until the client gives up or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["BadRequest", "Exchange", "HTTPServerCore", "Request", "read_request"]

log = logging.getLogger("ipychat.testing")

MAX_HEAD = 64 * 1024  # bytes of request line + headers (also the StreamReader limit)
MAX_BODY = 64 * 1024 * 1024

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_HEX = b"0123456789abcdefABCDEF"


class BadRequest(Exception):
    """The bytes on the wire are not a request we accept; answered with `status`, then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """One parsed request. Header names are lower-cased; repeated headers joined by ", "."""

    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    """The next request on a connection, or None when the client closed it between requests.

    Raises `BadRequest` for malformed input, `asyncio.IncompleteReadError` or
    `ConnectionError` when the client goes away in the middle of a request.
    """
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise BadRequest(400, "incomplete request head") from None
            return None
        except asyncio.LimitOverrunError:
            raise BadRequest(431, "request head too large") from None
        head = head.lstrip(b"\r\n")  # RFC 9112 2.2: ignore empty lines before a request
        if head:
            break
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(400, "malformed request line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505, f"unsupported protocol version {version!r}")
    if not method.isalpha() or not target.startswith("/"):
        raise BadRequest(400, "malformed request line")
    headers = _parse_headers(lines[1:])
    path, _, query = target.partition("?")
    request = Request(method.upper(), path, query, version, headers, b"")

    te, cl = headers.get("transfer-encoding"), headers.get("content-length")
    if te is not None:
        if cl is not None:
            raise BadRequest(400, "both Transfer-Encoding and Content-Length")
        if te.strip().lower() != "chunked":
            raise BadRequest(501, f"unsupported Transfer-Encoding {te!r}")
        _send_continue(request, writer)
        request.body = await _read_chunked(reader)
    elif cl is not None:
        if not (cl.isascii() and cl.isdigit()):
            raise BadRequest(400, "malformed Content-Length")
        length = int(cl)
        if length > MAX_BODY:
            raise BadRequest(413, "request body too large")
        if length:
            _send_continue(request, writer)
            request.body = await reader.readexactly(length)
    return request


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    """Header lines as a dict: names lower-cased, repeats joined by ", " (a repeated
    Content-Length must agree with itself; obsolete line folding is refused)."""
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, raw = line.partition(b":")
        if not sep or not name or name[:1] in b" \t" or name[-1:] in b" \t":
            raise BadRequest(400, "malformed header line")
        key = name.decode("latin-1").lower()
        value = raw.strip(b" \t").decode("latin-1")
        if key not in headers:
            headers[key] = value
        elif key == "content-length":
            if headers[key] != value:
                raise BadRequest(400, "conflicting Content-Length headers")
        else:
            headers[key] = f"{headers[key]}, {value}"
    return headers


def _send_continue(request: Request, writer: asyncio.StreamWriter) -> None:
    # curl sends `Expect: 100-continue` for bodies over 1 KiB and waits a second without it.
    if (
        request.version == "HTTP/1.1"
        and request.headers.get("expect", "").lower() == "100-continue"
    ):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not size_text or size_text.strip(_HEX):
            raise BadRequest(400, "malformed chunk size")
        size = int(size_text, 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # skip trailer fields
                pass
            return b"".join(parts)
        total += size
        if total > MAX_BODY:
            raise BadRequest(413, "request body too large")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise BadRequest(400, "malformed chunk")


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """Status line and headers of a response, ending with the blank line."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


class Exchange:
    """The response side of one request.

    Writes are buffered and sent on `flush`/`drain`, so a burst of SSE events costs one
    `send()` call, not one per event. `keep_alive` turns False whenever the response
    cannot be followed by another one on the same connection.
    """

    def __init__(
        self,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request_id: str,
    ) -> None:
        self.request = request
        self.request_id = request_id
        self.keep_alive = request.keep_alive
        self.started = False  # the status line was written
        self._reader = reader
        self._writer = writer
        self._chunked = False
        self._pending: list[bytes] = []

    def _connection_headers(self) -> list[tuple[str, str]]:
        if not self.keep_alive:
            return [("connection", "close")]
        if self.request.version == "HTTP/1.0":
            return [("connection", "keep-alive")]
        return []

    async def respond(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """A complete fixed-length response."""
        self.send_head(status, headers, len(body))
        self._pending.append(body)
        await self.drain()

    def send_head(self, status: int, headers: Iterable[tuple[str, str]], length: int) -> None:
        """The head of a fixed-length response; the body follows with `write_raw`."""
        all_headers = [*headers, ("content-length", str(length)), *self._connection_headers()]
        self._pending.append(response_head(status, all_headers))
        self.started = True

    def start_stream(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """The head of a streamed response: chunked on HTTP/1.1, ended by close on 1.0."""
        all_headers = list(headers)
        if self.request.version == "HTTP/1.1":
            self._chunked = True
            all_headers.append(("transfer-encoding", "chunked"))
        else:
            self.keep_alive = False
        all_headers.extend(self._connection_headers())
        self._pending.append(response_head(status, all_headers))
        self.started = True

    def write(self, data: bytes) -> None:
        """Body bytes of a stream (one HTTP chunk each); buffered until `flush`/`drain`."""
        if not data:
            return  # an empty chunk would end a chunked body
        if self._chunked:
            self._pending.append(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._pending.append(data)

    def write_raw(self, data: bytes) -> None:
        """Bytes exactly as given (the body of a fixed-length response)."""
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._writer.write(data)

    async def drain(self) -> None:
        self.flush()
        await self._writer.drain()

    async def end_stream(self) -> None:
        """The clean end of a streamed body."""
        if self._chunked:
            self._pending.append(b"0\r\n\r\n")
        await self.drain()

    def abort(self, *, reset: bool) -> None:
        """Close the connection now, dropping unsent bytes.

        `reset=True` sends a TCP RST (SO_LINGER 0), which the client sees as ECONNRESET;
        otherwise what was already flushed is delivered, followed by a plain FIN.
        """
        self.keep_alive = False
        self._pending.clear()
        transport = self._writer.transport
        if reset:
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def hold(self) -> None:
        """Never answer: wait until the client closes the connection (or the server stops)."""
        await self.drain()
        self.keep_alive = False
        while await self._reader.read(65536):
            pass


Handler = Callable[[Request, Exchange], Awaitable[None]]


class HTTPServerCore:
    """Accepts connections and feeds their requests, one at a time, to `handler`."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._ids = itertools.count(1)
        self._id_prefix = f"req_{os.urandom(4).hex()}"
        self.connections = 0  # accepted so far

    def next_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):08d}"

    async def open(self, host: str, port: int) -> int:
        """Start listening; returns the bound port (a free one when `port` is 0)."""
        self._server = await asyncio.start_server(
            self._on_connect, host, port, limit=MAX_HEAD, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        with contextlib.suppress(OSError):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not self._closing:
                try:
                    request = await read_request(reader, writer)
                except BadRequest as exc:
                    await self._reject(writer, exc)
                    break
                if request is None:
                    break
                exchange = Exchange(request, reader, writer, self.next_request_id())
                try:
                    await self._handler(request, exchange)
                except (ConnectionError, asyncio.IncompleteReadError):
                    raise
                except Exception:
                    log.exception(
                        "fake server: handler failed on %s %s", request.method, request.path
                    )
                    if not exchange.started:
                        await self._reject(
                            writer, BadRequest(500, "internal error in the fake server")
                        )
                    break
                if not exchange.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            # `close()` cancels us. End normally: Python 3.11's StreamReaderProtocol calls
            # `task.exception()` on the finished task, which raises for a cancelled one.
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _reject(self, writer: asyncio.StreamWriter, exc: BadRequest) -> None:
        error = {"message": exc.message, "type": "invalid_request_error", "param": None}
        body = json.dumps({"error": {**error, "code": None}}).encode()
        head = [
            ("content-type", "application/json"),
            ("x-request-id", self.next_request_id()),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        writer.write(response_head(exc.status, head) + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def close(self) -> None:
        """Stop listening and drop every connection, including ones held open on purpose."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for writer in list(self._writers):
            writer.transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
