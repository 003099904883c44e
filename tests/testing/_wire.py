"""What the tests of FakeOpenAIServer share: the request they send, httpx helpers and raw
HTTP/1.1 helpers for the exchanges a library would hide."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import httpx

from ipychat.testing import FakeOpenAIServer

BODY: dict[str, Any] = {
    "model": "gpt-test",
    "messages": [{"role": "user", "content": "hello big world"}],
}
ECHO = "Echo: hello big world"


# One client for the whole run (building one per request costs 60 ms of TLS setup);
# conftest.py closes it at the end.
HTTP = httpx.Client(timeout=5)


def post(server: FakeOpenAIServer, body: Any = None, **kw: Any) -> httpx.Response:
    body = BODY if body is None else body
    if isinstance(body, bytes):
        kw["content"] = body
    else:
        kw["json"] = body
    return HTTP.post(server.base_url + "/chat/completions", **kw)


def get(url: str) -> httpx.Response:
    return HTTP.get(url)


def stream_body(**extra: Any) -> dict[str, Any]:
    return {**BODY, "stream": True, **extra}


def sse_data(payload: bytes) -> list[str]:
    """The `data:` values of an event stream, in order."""
    return [e[6:] for e in payload.decode().split("\n\n") if e.startswith("data: ")]


def deltas(events: list[str]) -> str:
    text = ""
    for e in events:
        if e != "[DONE]":
            for choice in json.loads(e).get("choices", []):
                text += choice["delta"].get("content") or ""
    return text


# ----- raw HTTP ------------------------------------------------------------------------------


def raw_request(
    body: Any = None,
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    version: str = "HTTP/1.1",
    headers: dict[str, str] | None = None,
) -> bytes:
    data = b"" if method == "GET" else json.dumps(BODY if body is None else body).encode()
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in {"Connection": "close", **(headers or {})}.items()]
    if data:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def exchange(server: FakeOpenAIServer, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything received until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(payload)
        received = []
        while data := sock.recv(65536):
            received.append(data)
    return b"".join(received)


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body, and whether its terminating chunk arrived."""
    out: list[bytes] = []
    rest = body
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return b"".join(out), False
        size = int(line, 16)
        if size == 0:
            return b"".join(out), True
        out.append(rest[:size])
        if len(rest) < size + 2:
            return b"".join(out), False
        rest = rest[size + 2 :]


def server_threads() -> int:
    return sum(t.name == "FakeOpenAIServer" for t in threading.enumerate())
