"""FakeOpenAIServer's faults, as a raw client sees them: httpx for well-formed exchanges, raw
sockets where a fault breaks HTTP itself (a reset, a hang, a cut body) and a library would
hide it."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from _wire import (
    BODY,
    dechunk,
    deltas,
    exchange,
    post,
    raw_request,
    server_threads,
    split_response,
    sse_data,
    stream_body,
)

from ipychat.testing import FakeOpenAIServer, Fault

# ----- faults, as a raw client sees them -----------------------------------------------------


def test_status_fault_with_headers_and_bodies(server: FakeOpenAIServer) -> None:
    server.script(
        Fault.status(503, headers={"x-should-retry": "false"}),
        Fault.status(429, headers={"retry-after": "2"}),
        Fault.status(400, message="Invalid 'temperature': 7"),
        Fault.status(502, body="<html>bad gateway</html>"),
        Fault.status(500, body={"detail": "custom"}),
        "529",
    )
    r = post(server)
    assert r.status_code == 503 and r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["type"] == "server_error"
    r = post(server)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert post(server).json()["error"]["message"] == "Invalid 'temperature': 7"
    assert post(server).text == "<html>bad gateway</html>"
    assert post(server).json() == {"detail": "custom"}
    r = post(server)
    assert r.status_code == 529 and "x-request-id" in r.headers
    assert post(server).status_code == 200


def test_reset_sends_no_response(server: FakeOpenAIServer) -> None:
    server.script("reset")
    with pytest.raises(ConnectionResetError):
        exchange(server, raw_request())
    [request] = server.requests
    assert request.status is None and request.fault == Fault.reset()


@pytest.mark.parametrize("stream", [False, True])
def test_reset_mid_stream_cuts_the_body(server: FakeOpenAIServer, stream: bool) -> None:
    server.script(Fault.reset_mid_stream(after=1))
    status, headers, body = split_response(
        exchange(server, raw_request(stream_body() if stream else BODY))
    )
    assert status == 200
    if stream:
        payload, complete = dechunk(body)
        assert not complete and deltas(sse_data(payload)) == "Echo:"
    else:
        assert 0 < len(body) < int(headers["content-length"])


def test_hang_never_answers_and_stop_is_quick() -> None:
    before = server_threads()
    server = FakeOpenAIServer().start()
    server.script("hang", "hang")
    with socket.create_connection(("127.0.0.1", server.port), timeout=0.3) as sock:
        sock.sendall(raw_request())
        with pytest.raises(socket.timeout):
            sock.recv(1024)
    # A client that gives up frees its request; one that stays is released by stop().
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
    sock.sendall(raw_request())
    server.wait_for_requests(2)
    started = time.perf_counter()
    server.stop()
    assert time.perf_counter() - started < 1.0
    try:
        assert sock.recv(1024) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert server_threads() == before
    assert [r.status for r in server.requests] == [None, None]
    assert server.stats().no_response == 2


def test_stop_interrupts_requests_waiting_out_their_latency() -> None:
    before = server_threads()
    server = FakeOpenAIServer(latency=30).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw_request())
        server.wait_for_requests(1)
        started = time.perf_counter()
        server.stop()
        assert time.perf_counter() - started < 1.0
        assert sock.recv(1024) == b""
    assert server_threads() == before


def test_hang_after_some_chunks(server: FakeOpenAIServer) -> None:
    server.script(Fault.hang(after=2))
    with socket.create_connection(("127.0.0.1", server.port), timeout=0.3) as sock:
        sock.sendall(raw_request(stream_body()))
        received = b""
        with pytest.raises(socket.timeout):
            while chunk := sock.recv(65536):
                received += chunk
    _, _, body = split_response(received)
    payload, complete = dechunk(body)
    assert not complete and deltas(sse_data(payload)) == "Echo: hello"


def test_truncate_ends_the_stream_cleanly_without_done(server: FakeOpenAIServer) -> None:
    server.script(Fault.truncate(after=2), Fault.truncate())
    # The client asks for keep-alive; `exchange` returning at all shows the server closed.
    status, _, body = split_response(
        exchange(server, raw_request(stream_body(), headers={"Connection": "keep-alive"}))
    )
    payload, complete = dechunk(body)
    assert status == 200 and complete
    events = sse_data(payload)
    assert "[DONE]" not in events and deltas(events) == "Echo: hello"
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events)
    r = post(server)  # non-streamed: a well-framed body that is cut JSON
    assert r.status_code == 200 and r.content.startswith(b'{"id":"chatcmpl-')
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_malformed_json(server: FakeOpenAIServer) -> None:
    server.script("malformed_json", Fault.malformed_json(after=1))
    r = post(server)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        r.json()
    events = sse_data(post(server, stream_body()).content)
    assert events[-1] == "[DONE]"
    bad = [e for e in events if e != "[DONE]" and not _is_json(e)]
    assert len(bad) == 1 and events.index(bad[0]) == 2  # after the role chunk and "Echo:"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_error_mid_stream(server: FakeOpenAIServer) -> None:
    server.script(Fault.error_mid_stream(after=1, message="Model crashed"), "error_mid_stream")
    r = post(server, stream_body())
    events = sse_data(r.content)
    assert r.status_code == 200 and "[DONE]" not in events
    assert deltas(events[:-1]) == "Echo:"
    assert json.loads(events[-1]) == {
        "error": {"message": "Model crashed", "type": "server_error", "param": None, "code": None}
    }
    r = post(server)  # not streamed: a plain 500
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


def test_empty_reply(server: FakeOpenAIServer) -> None:
    server.script("empty_reply", "empty_reply")
    data = post(server).json()
    assert data["choices"][0]["message"]["content"] == ""
    assert data["usage"]["completion_tokens"] == 0
    events = sse_data(post(server, stream_body()).content)
    assert events[-1] == "[DONE]" and deltas(events) == ""


def test_script_applies_in_order_then_normal(server: FakeOpenAIServer) -> None:
    server.script(503, None, "ok", Fault.status(404), "reset")
    statuses: list[int | None] = []
    for _ in range(6):
        try:
            statuses.append(post(server).status_code)
        except httpx.TransportError:
            statuses.append(None)
    assert statuses == [503, 200, 200, 404, None, 200]
    assert [r.status for r in server.chat_requests] == statuses
    assert [r.fault.kind if r.fault else None for r in server.chat_requests] == [
        "status", None, None, "status", "reset", None,
    ]  # fmt: skip
    assert server.stats().faults == 3


def test_fault_shorthands() -> None:
    assert Fault.parse(503) == Fault.parse("503") == Fault.status(503)
    assert Fault.parse("hang") == Fault.hang()
    assert Fault.parse(None) is None and Fault.parse("ok") is None
    assert Fault.parse({"kind": "truncate", "after": 2}) == Fault.truncate(after=2)
    assert Fault.parse(Fault.status(400, headers={"a": "b"}).to_dict()) == Fault.status(
        400, headers={"a": "b"}
    )
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault.parse("explode")
    with pytest.raises(ValueError, match="HTTP code"):
        Fault.status(99)


def outcomes(seed: int) -> list[int | str]:
    with FakeOpenAIServer(fault_rate=0.5, faults=[500, "503", "reset"], seed=seed) as server:
        with httpx.Client(base_url=server.base_url, timeout=5) as client:
            seen: list[int | str] = []
            for _ in range(30):
                try:
                    seen.append(client.post("/chat/completions", json=BODY).status_code)
                except httpx.TransportError:
                    seen.append("reset")
        assert server.stats().faults == 30 - seen.count(200)
    return seen


def test_fault_rate_is_reproducible_with_a_seed() -> None:
    first, again, other = outcomes(7), outcomes(7), outcomes(8)
    assert first == again and first != other
    assert set(first) == {200, 500, 503, "reset"}
    assert 5 <= first.count(200) <= 25
