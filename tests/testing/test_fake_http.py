"""FakeOpenAIServer's HTTP/1.1 core, over raw sockets: keep-alive, pipelining, HTTP/1.0,
chunked bodies, malformed requests."""

from __future__ import annotations

import json
import socket

import pytest
from _wire import (
    BODY,
    ECHO,
    deltas,
    exchange,
    raw_request,
    split_response,
    sse_data,
    stream_body,
)

from ipychat.testing import FakeOpenAIServer

# ----- HTTP/1.1 details ----------------------------------------------------------------------


def test_keep_alive_and_pipelining(server: FakeOpenAIServer) -> None:
    keep = raw_request(headers={"Connection": "keep-alive"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(keep + keep + raw_request())  # three pipelined requests, the last closes
        received = b""
        while data := sock.recv(65536):
            received += data
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert received.count(ECHO.encode()) == 3
    assert server.stats().connections == 1


def test_connection_close_and_http_1_0(server: FakeOpenAIServer) -> None:
    status, headers, _ = split_response(exchange(server, raw_request()))
    assert status == 200 and headers["connection"] == "close"
    data = exchange(server, raw_request(stream_body(), version="HTTP/1.0", headers={}))
    status, headers, body = split_response(data)
    assert status == 200 and "transfer-encoding" not in headers  # close-delimited
    assert deltas(sse_data(body)) == ECHO and sse_data(body)[-1] == "[DONE]"


def test_chunked_request_body_and_expect_continue(server: FakeOpenAIServer) -> None:
    data = json.dumps(BODY).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    )
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (data[:10], data[10:])) + b"0\r\n\r\n"
    received = exchange(server, head + chunks)
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert server.chat_requests[0].body == BODY


@pytest.mark.parametrize(
    "payload",
    [
        b"NONSENSE\r\n\r\n",
        b"POST /v1/chat/completions HTTP/2.0\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\n folded: header\r\n\r\n",
    ],
)
def test_malformed_http_gets_an_error_and_a_close(server: FakeOpenAIServer, payload: bytes) -> None:
    status, headers, body = split_response(exchange(server, payload))
    assert 400 <= status < 600 and headers["connection"] == "close"
    assert "x-request-id" in headers and json.loads(body)["error"]["message"]
