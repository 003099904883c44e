"""FakeOpenAIServer, observed from outside: httpx for well-formed exchanges, raw sockets
where a fault breaks HTTP itself (a reset, a hang, a cut body) and a library would hide it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

import ipychat
from ipychat.core.types import RateLimitInfo, _duration
from ipychat.testing import FakeOpenAIServer, Fault, RecordedRequest, ServerStats, approx_tokens

BODY: dict[str, Any] = {
    "model": "gpt-test",
    "messages": [{"role": "user", "content": "hello big world"}],
}
ECHO = "Echo: hello big world"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as s:
        yield s


@pytest.fixture(scope="module", autouse=True)
def _http() -> Iterator[None]:
    """One HTTP client for the module: building one per request costs 60 ms of TLS setup."""
    global HTTP
    with httpx.Client(timeout=5) as HTTP:
        yield


HTTP: httpx.Client


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


# ----- lifecycle -----------------------------------------------------------------------------


def server_threads() -> int:
    return sum(t.name == "FakeOpenAIServer" for t in threading.enumerate())


def test_context_manager_gives_a_loopback_base_url_and_cleans_up() -> None:
    before = server_threads()
    with FakeOpenAIServer() as server:
        assert server.running and server_threads() == before + 1
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert post(server).status_code == 200
    assert not server.running and server_threads() == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    server.stop()  # twice is harmless
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        server.start()


def test_not_started_server_says_so() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeOpenAIServer().base_url


def test_two_servers_get_different_ports() -> None:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        assert a.port != b.port


def test_usable_from_async_code() -> None:
    async def main() -> str:
        async with (
            FakeOpenAIServer(reply="async ok") as server,
            httpx.AsyncClient(base_url=server.base_url) as client,
        ):
            r = await client.post("/chat/completions", json=BODY)
        return str(r.json()["choices"][0]["message"]["content"])

    assert asyncio.run(main()) == "async ok"


# ----- endpoints -----------------------------------------------------------------------------


def test_non_streamed_reply_has_openai_shape(server: FakeOpenAIServer) -> None:
    r = post(server)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"].startswith("req_")
    data = r.json()
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert data["model"] == "gpt-test" and isinstance(data["created"], int)
    [choice] = data["choices"]
    assert choice["message"] == {"role": "assistant", "content": ECHO, "refusal": None}
    assert choice["finish_reason"] == "stop"
    # 3 per message + "user" (1) + "hello big world" (4) + 3 priming the reply.
    assert data["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": approx_tokens(ECHO),
        "total_tokens": 11 + approx_tokens(ECHO),
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_default_reply_echoes_the_last_user_message_even_in_parts(server: FakeOpenAIServer) -> None:
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": parts},
    ]
    r = post(server, {"model": "m", "messages": messages})
    assert r.json()["choices"][0]["message"]["content"] == "Echo: look"


def test_reply_options() -> None:
    seen: list[dict[str, Any]] = []

    def reply(body: dict[str, Any]) -> str:
        seen.append(body)
        return f"{len(body['messages'])} messages"

    async def slow_reply(body: dict[str, Any]) -> str:
        await asyncio.sleep(0.01)
        return "awaited"

    def broken(body: dict[str, Any]) -> str:
        raise ValueError("no idea")

    for option, expected in (("fixed", "fixed"), (reply, "1 messages"), (slow_reply, "awaited")):
        with FakeOpenAIServer(reply=option) as server:
            assert post(server).json()["choices"][0]["message"]["content"] == expected
    assert seen == [BODY]
    with FakeOpenAIServer(reply=lambda body: Fault.status(418)) as server:
        assert post(server).status_code == 418
        assert server.chat_requests[0].fault == Fault.status(418)
    with FakeOpenAIServer(reply=broken) as server:
        r = post(server)
        assert r.status_code == 500 and "ValueError: no idea" in r.json()["error"]["message"]


def test_streamed_reply_with_usage_chunk(server: FakeOpenAIServer) -> None:
    r = post(server, stream_body(stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["transfer-encoding"] == "chunked" and "x-request-id" in r.headers
    events = sse_data(r.content)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert deltas(events) == ECHO
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]] == [
        "Echo:",
        " hello",
        " big",
        " world",
    ]
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["choices"][0]["delta"] == {}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 11 + approx_tokens(ECHO)


def test_stream_without_usage_chunk() -> None:
    with FakeOpenAIServer() as server:  # not asked for
        events = sse_data(post(server, stream_body()).content)
        assert all("usage" not in json.loads(e) for e in events[:-1])
    with FakeOpenAIServer(include_usage_chunk=False) as server:  # llama.cpp: asked, never sent
        events = sse_data(post(server, stream_body(stream_options={"include_usage": True})).content)
        assert events[-1] == "[DONE]" and deltas(events) == ECHO
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"
        assert all(json.loads(e)["choices"] for e in events[:-1])


def test_chunk_chars_splits_deltas() -> None:
    with FakeOpenAIServer(reply="abcdefghij", chunk_chars=4) as server:
        events = sse_data(post(server, stream_body()).content)
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert contents == ["abcd", "efgh", "ij"]


def test_models_endpoint() -> None:
    with FakeOpenAIServer(models=["a", "b"]) as server:
        r = get(server.base_url + "/models")
    assert r.status_code == 200 and "x-request-id" in r.headers
    assert r.json() == {
        "object": "list",
        "data": [
            {"id": "a", "object": "model", "created": 0, "owned_by": "fake"},
            {"id": "b", "object": "model", "created": 0, "owned_by": "fake"},
        ],
    }


def test_unknown_path_wrong_method_and_bad_bodies(server: FakeOpenAIServer) -> None:
    r = HTTP.post(server.base_url + "/completions", json=BODY)
    assert r.status_code == 404 and "x-request-id" in r.headers
    assert r.json()["error"]["message"] == "Invalid URL (POST /v1/completions)"
    assert get(server.base_url + "/chat/completions").status_code == 405
    r = post(server, b"{not json")
    assert r.status_code == 400 and "x-request-id" in r.headers
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["type"] == "invalid_request_error"
    assert "could not parse the JSON body" in error["message"]
    assert post(server, b"[1, 2]").status_code == 400
    assert post(server, {"model": "m"}).json()["error"]["param"] == "messages"
    assert "model" in post(server, {"messages": BODY["messages"]}).json()["error"]["message"]
    assert post(server, {**BODY, "max_tokens": 0}).status_code == 400
    assert [r.status for r in server.requests] == [404, 405, 400, 400, 400, 400, 400]


def test_azure_deployment_path(server: FakeOpenAIServer) -> None:
    url = server.url + "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21"
    r = HTTP.post(url, json={"messages": BODY["messages"]})
    assert r.status_code == 200 and r.json()["model"] == "my-gpt"
    assert server.chat_requests[0].query == "api-version=2024-10-21"


# ----- max_tokens and token counting ---------------------------------------------------------


def test_max_tokens_truncates_with_finish_reason_length(server: FakeOpenAIServer) -> None:
    data = post(server, {**BODY, "max_tokens": 3}).json()
    assert data["choices"][0]["message"]["content"] == ECHO[:12]  # 3 tokens of 4 characters
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    data = post(server, {**BODY, "max_completion_tokens": 2, "max_tokens": 50}).json()
    assert data["choices"][0]["message"]["content"] == ECHO[:8]  # max_completion_tokens wins
    data = post(server, {**BODY, "max_tokens": 100}).json()
    assert data["choices"][0]["finish_reason"] == "stop"  # enough room: not cut
    events = sse_data(post(server, stream_body(max_tokens=3)).content)
    assert deltas(events) == ECHO[:12]
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_custom_token_counter() -> None:
    def words(text: str) -> int:
        return len(text.split())

    with FakeOpenAIServer(count_tokens=words) as server:
        data = post(server, {**BODY, "max_tokens": 2}).json()
    assert data["choices"][0]["message"]["content"].strip() == "Echo: hello"
    assert data["usage"]["prompt_tokens"] == 3 + 3 + 1 + 3
    assert data["usage"]["completion_tokens"] == 2


# ----- keys ----------------------------------------------------------------------------------

KEY = "sk-proj-rightkey0000000000000000"


def test_require_key() -> None:
    with FakeOpenAIServer(require_key=KEY) as server:
        r = post(server)
        assert r.status_code == 401 and "didn't provide an API key" in r.json()["error"]["message"]
        wrong = "sk-wrong-0000000000000000000abcd"
        r = post(server, headers={"Authorization": f"Bearer {wrong}"})
        error = r.json()["error"]
        assert r.status_code == 401 and error["code"] == "invalid_api_key"
        assert error["message"].startswith("Incorrect API key provided: sk-...abcd.")
        assert wrong not in r.text
        assert post(server, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert post(server, headers={"api-key": KEY}).status_code == 200  # Azure style
        assert get(server.base_url + "/models").status_code == 401
        assert server.api_key == KEY


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


# ----- rate limits ---------------------------------------------------------------------------
# The limiter's rules on a fake clock (exact), then its answers on the wire.


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(rpm: int | None = None, tpm: int | None = None, **options: Any) -> Any:
    from ipychat.testing.rules import _RateLimiter

    clock = Clock()
    return _RateLimiter(rpm, tpm, clock, **options), clock


def outcome(lim: Any, tokens: int = 10) -> int | float:
    """200, or the retry-after of the 429 in seconds."""
    from ipychat.testing.rules import _Reject

    try:
        lim.take(tokens, "gpt-test")
    except _Reject as reject:
        assert reject.status == 429
        return int(dict(reject.headers)["retry-after-ms"]) / 1000
    return 200


@pytest.mark.parametrize("window", [1, 10, 60])
def test_a_window_holds_its_share_of_the_minute_not_the_whole_minute(window: int) -> None:
    # 6,000 RPM: 100 requests in a 1 s window, 1,000 in 10 s, 6,000 in 60 s (OpenAI:
    # "60,000 requests/minute may be enforced as 1,000 requests/second").
    lim, clock = limiter(rpm=6000, window=window, charge_refused=False)
    capacity = 100 * window
    assert [outcome(lim) for _ in range(capacity)] == [200] * capacity
    assert outcome(lim) == pytest.approx(window)  # full: room when the first charge leaves
    clock.now += window / 2
    assert outcome(lim) == pytest.approx(window / 2)
    clock.now += window / 2  # the first `capacity` charges leave the window together
    assert [outcome(lim) for _ in range(capacity)] == [200] * capacity
    assert outcome(lim) != 200


def test_steady_pacing_at_the_limit_is_never_refused_and_a_little_more_is() -> None:
    lim, clock = limiter(rpm=6000)  # 100 per second, over any 1 s
    for i in range(1000):
        clock.now = 1000.0 + i / 100
        assert outcome(lim) == 200
    refused = 0
    for i in range(1000):
        clock.now = 1010.0 + i / 101
        refused += outcome(lim) != 200
    assert refused > 0


def test_refused_requests_are_charged_unless_switched_off() -> None:
    # OpenAI: "unsuccessful requests contribute to your per-minute limit".
    for charged in (True, False):
        lim, clock = limiter(rpm=600, charge_refused=charged)  # 10 per second
        assert [outcome(lim) for _ in range(10)] == [200] * 10
        clock.now += 0.5
        assert [outcome(lim) for _ in range(4)] != [200] * 4  # hammering a full window
        clock.now += 0.5  # the first ten leave the window; the four refusals do not yet
        accepted = sum(outcome(lim) == 200 for _ in range(10))
        assert accepted == (6 if charged else 10)


def test_tokens_are_charged_prompt_plus_max_tokens_over_the_window() -> None:
    lim, clock = limiter(tpm=120_000)  # 2,000 tokens in any second
    assert outcome(lim, 1_000) == 200 and outcome(lim, 1_000) == 200
    assert outcome(lim, 1) == pytest.approx(1.0)
    clock.now += 1.0
    # A request larger than a window's share waits for as long as the limit needs for it
    # (here 2.5 s): it is not refused for ever.
    assert outcome(lim, 5_000) != 200  # the refused 1 and 5,000 of a second ago are charged
    clock.now += 2.5
    assert outcome(lim, 5_000) == 200


def test_the_headers_report_the_minute_and_never_the_window() -> None:
    lim, _ = limiter(rpm=6000, tpm=1_200_000)  # 100 requests, 20,000 tokens per second
    for _ in range(99):
        lim.take(100, "gpt-test")
    headers = dict(lim.take(100, "gpt-test"))
    assert RateLimitInfo.from_headers(headers) == RateLimitInfo(
        limit_requests=6000,
        limit_tokens=1_200_000,
        remaining_requests=5900,  # the window is full, yet the minute's view shows room
        remaining_tokens=1_190_000,
        reset_requests=1.0,  # 100 requests at 100 per second
        reset_tokens=0.5,  # 10,000 tokens at 20,000 per second
    )
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert headers["x-ratelimit-reset-tokens"] == "500ms"
    assert outcome(lim) != 200  # refused, and charged: 101 used
    assert dict(lim.headers())["x-ratelimit-reset-requests"] == "1.01s"


def test_rpm_limit_on_the_wire() -> None:
    with FakeOpenAIServer(rpm=600, window=10) as server:  # 100 per 10 s: no timing at play
        remaining = [post(server).headers["x-ratelimit-remaining-requests"] for _ in range(100)]
        # What is left of the minute (refilling at 10 per second while the test runs).
        assert remaining[:2] == ["599", "598"] and 500 <= int(remaining[-1]) <= 505
        r = post(server)
        assert r.status_code == 429
        assert r.json()["error"] == {
            "message": r.json()["error"]["message"],
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
        message = r.json()["error"]["message"]
        assert re.fullmatch(
            r"Rate limit reached for gpt-test in organization org-fake on requests per min "
            r"\(RPM\): Limit 600, Used (9\d|10[01]), Requested 1\. Please try again in "
            r"\d\.\d+s\. Visit https://platform\.openai\.com/account/rate-limits to learn more\.",
            message,
        )
        assert message.endswith(
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        wait_ms = int(r.headers["retry-after-ms"])  # the first charge leaves the window
        assert 8_000 < wait_ms <= 10_000 and r.headers["retry-after"] == "10"
        info = RateLimitInfo.from_headers(r.headers)
        assert info is not None and info.limit_requests == 600
        assert info.remaining_requests is not None and 495 <= info.remaining_requests <= 505
        assert info.reset_requests is not None and 9.5 < info.reset_requests <= 10.1
        assert info.limit_tokens is None  # no tpm set: no token headers
        stats = server.stats()
        assert stats.rate_limited == 1 and stats.by_status == {200: 100, 429: 1}


def test_a_server_without_ratelimit_headers() -> None:
    # vLLM, llama.cpp's server and many gateways: no x-ratelimit-*; a 429 with retry-after
    # or a bare one.
    for retry_after in (True, False):
        with FakeOpenAIServer(
            rpm=60, window=60, ratelimit_headers=False, retry_after=retry_after
        ) as server:
            ok = post(server)
            assert ok.status_code == 200
            assert not [h for h in ok.headers if h.startswith("x-ratelimit")]
            statuses = [post(server).status_code for _ in range(60)]
            assert statuses.count(200) == 59 and statuses[-1] == 429
            r = post(server)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
            assert not [h for h in r.headers if h.startswith("x-ratelimit")]
            assert ("retry-after" in r.headers) is retry_after
            assert ("retry-after-ms" in r.headers) is retry_after
            assert ("Please try again in" in r.json()["error"]["message"]) is retry_after


def test_tpm_limit_on_the_wire_and_a_refund_when_asked() -> None:
    # prompt = 3 + 3 + "user" 1 + "hello big world" 4 = 11 tokens; 6,000 TPM: 100 per 1 s.
    for charged in (True, False):
        with FakeOpenAIServer(tpm=6000, charge_refused=charged) as server:
            r = post(server, {**BODY, "max_tokens": 5979})  # 5,990: takes 59.9 s of the limit
            assert r.status_code == 200 and r.headers["x-ratelimit-remaining-tokens"] == "10"
            info = RateLimitInfo.from_headers(r.headers)
            assert info is not None and info.reset_tokens is not None
            assert 59.8 < info.reset_tokens <= 59.9  # 5,990 tokens at 100/s
            r = post(server, {**BODY, "max_tokens": 69})  # 80 tokens in the same second
            assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
            assert "on tokens per min (TPM): Limit 6000" in r.json()["error"]["message"]
            wait_ms = int(r.headers["retry-after-ms"])  # when the 5,990 leave the window
            assert 800 < wait_ms <= 1000 and r.headers["retry-after"] == "1"
            remaining = r.headers["x-ratelimit-remaining-tokens"]
            assert remaining == ("0" if charged else "10")
            time.sleep(wait_ms / 1000)  # it counts the refused 80 too, when they are charged
            assert post(server, {**BODY, "max_tokens": 69}).status_code == 200


def test_tpm_charge_without_max_tokens_and_too_large_requests() -> None:
    with FakeOpenAIServer(tpm=100) as server:
        r = post(server)  # 11 prompt + assumed_max_tokens 16
        assert r.headers["x-ratelimit-remaining-tokens"] == str(100 - 27)
        r = post(server, {**BODY, "max_tokens": 200})
        assert r.status_code == 429 and r.headers["x-should-retry"] == "false"
        assert "retry-after-ms" not in r.headers
        assert "Request too large" in r.json()["error"]["message"]
        assert r.headers["x-ratelimit-remaining-tokens"] == str(100 - 27)  # not charged
    with FakeOpenAIServer(tpm=100, assumed_max_tokens=50) as server:
        assert post(server).headers["x-ratelimit-remaining-tokens"] == str(100 - 61)


def test_window_must_be_a_sensible_number_of_seconds() -> None:
    for window in (0, -1, 61, float("nan")):
        with pytest.raises(ValueError, match="window must be in seconds"):
            FakeOpenAIServer(rpm=10, window=window)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.02, "20ms"), (0.0201, "21ms"), (1, "1s"), (8.64, "8.64s"), (360, "6m0s"),
     (61.5, "1m1.5s"), (3600, "1h0m0s")],
)  # fmt: skip
def test_reset_durations_use_openai_format(seconds: float, text: str) -> None:
    from ipychat.testing.rules import _format_duration

    assert _format_duration(seconds) == text
    parsed = _duration(text)  # what ipychat.core.types reads back: rounded up, never early
    assert parsed is not None and seconds - 1e-9 <= parsed < seconds + 0.001


# ----- pacing --------------------------------------------------------------------------------


def test_latency_is_observed() -> None:
    with FakeOpenAIServer(latency=0.15) as server:
        started = time.perf_counter()
        assert post(server).status_code == 200
        assert 0.15 <= time.perf_counter() - started < 1.0
        server.script(503)
        started = time.perf_counter()
        assert post(server).status_code == 503  # faults wait too
        assert time.perf_counter() - started >= 0.15
    with FakeOpenAIServer(latency=0.15, require_key=KEY) as server:
        started = time.perf_counter()
        assert post(server).status_code == 401  # rejections are immediate
        assert time.perf_counter() - started < 0.15
    with FakeOpenAIServer(latency=(0.05, 0.1)) as server:
        started = time.perf_counter()
        post(server)
        assert 0.05 <= time.perf_counter() - started < 1.0


def test_tokens_per_second_paces_the_stream() -> None:
    with FakeOpenAIServer(reply="a b c d e f g", tokens_per_second=40) as server:
        arrivals: list[float] = []
        with HTTP.stream("POST", server.base_url + "/chat/completions", json=stream_body()) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                    arrivals.append(time.perf_counter())
    assert len(arrivals) == 7
    assert arrivals[-1] - arrivals[0] >= 6 / 40 - 0.01  # 6 gaps of 1 token at 40/s


# ----- the request log -----------------------------------------------------------------------


def test_request_log(server: FakeOpenAIServer) -> None:
    started = time.monotonic()
    post(
        server, headers={"Authorization": "Bearer sk-secret-0000000000000000zzzz", "X-Trace": "t1"}
    )
    get(server.base_url + "/models")
    server.script(Fault.status(500))
    post(server, {**BODY, "temperature": 0.5})
    log = server.requests
    assert [(r.method, r.path, r.status) for r in log] == [
        ("POST", "/v1/chat/completions", 200),
        ("GET", "/v1/models", 200),
        ("POST", "/v1/chat/completions", 500),
    ]
    assert log[0].body == BODY and log[1].body is None and log[2].body["temperature"] == 0.5
    assert log[0].headers["x-trace"] == "t1"
    assert log[0].headers["authorization"] == "Bearer sk-secret-0000000000000000zzzz"
    assert "sk-secret" not in repr(log[0])
    assert started <= log[0].time <= log[1].time <= log[2].time <= time.monotonic()
    assert log[0].fault is None and log[2].fault == Fault.status(500)
    assert log[0].request_id != log[2].request_id
    assert [r.path for r in server.chat_requests] == ["/v1/chat/completions"] * 2
    stats = server.stats()
    assert (stats.total, stats.chat, stats.by_status) == (3, 2, {200: 2, 500: 1})
    server.reset_log()
    assert server.requests == [] and server.stats() == ServerStats()


def test_log_is_consistent_under_concurrency() -> None:
    async def burst(base_url: str) -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.post(base_url + "/chat/completions", json=BODY) as r:
                    await r.read()
                    return r.status

            return list(await asyncio.gather(*(one() for _ in range(50))))

    with FakeOpenAIServer(latency=0.1) as server:
        started = time.perf_counter()
        assert asyncio.run(burst(server.base_url)) == [200] * 50
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0  # 50 slow requests overlap: one event loop, no queueing
        assert len(server.chat_requests) == 50 and server.stats().max_in_flight == 50
        assert len({r.request_id for r in server.requests}) == 50


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


# ----- a server in a child process -----------------------------------------------------------


def test_spawned_server_has_the_same_api_and_goes_away() -> None:
    # A 60 s window: 100 requests at once pass (a 1 s window would allow 1.7 per second).
    server = FakeOpenAIServer.spawn(reply="from the child", rpm=100, window=60)
    try:
        assert server.pid is not None and server.pid != os.getpid() and server.running
        r = post(server)
        assert r.json()["choices"][0]["message"]["content"] == "from the child"
        assert r.headers["x-ratelimit-limit-requests"] == "100"
        server.script(Fault.status(503, headers={"retry-after": "1"}), "hang")
        assert post(server).status_code == 503
        with pytest.raises(httpx.ReadTimeout):
            post(server, timeout=0.2)
        log = server.requests
        assert [r.status for r in log] == [200, 503, None]
        assert isinstance(log[1], RecordedRequest) and log[1].fault == Fault.status(
            503, headers={"retry-after": "1"}
        )
        assert log[0].body == BODY
        stats = server.stats()
        assert stats.by_status == {200: 1, 503: 1} and stats.faults == 2 and stats.no_response == 1
        server.reset_log()
        assert server.requests == [] and server.stats().total == 0
        post(server)
    finally:
        pid, port = server.pid, server.port
        started = time.perf_counter()
        server.stop()
    assert time.perf_counter() - started < 3
    assert len(server.requests) == 1 and server.stats().total == 1  # the log outlives the child
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_spawn_refuses_unpicklable_options() -> None:
    with pytest.raises(TypeError, match="picklable"):
        FakeOpenAIServer(reply=lambda body: "x", process=True)


# ----- command line and pytest plugin --------------------------------------------------------


def project_env() -> dict[str, str]:
    root = str(Path(ipychat.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def test_command_line_server() -> None:
    command = [sys.executable, "-m", "ipychat.testing", "--port", "0", "--reply", "pong"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=project_env()) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
            r = HTTP.post(base_url + "/chat/completions", json=BODY)
            assert r.json()["choices"][0]["message"]["content"] == "pong"
            proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, exit code 0
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_pytest_plugin(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    (tmp_path / "test_uses_plugin.py").write_text(
        textwrap.dedent(
            """
            import os

            import httpx
            import pytest

            BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            SERVERS = []


            @pytest.mark.fake_openai(reply="from the marker")
            def test_marker(fake_openai):
                SERVERS.append(fake_openai)
                r = httpx.post(fake_openai.base_url + "/chat/completions", json=BODY)
                assert r.json()["choices"][0]["message"]["content"] == "from the marker"


            def test_factory(fake_openai_factory):
                a, b = fake_openai_factory(), fake_openai_factory(require_key="sk-abc-12345678")
                SERVERS.extend([a, b])
                assert a.running and b.api_key == "sk-abc-12345678" and a.port != b.port


            def test_env(fake_openai_env):
                SERVERS.append(fake_openai_env)
                assert os.environ["OPENAI_BASE_URL"] == fake_openai_env.base_url
                assert os.environ["OPENAI_API_KEY"] == fake_openai_env.api_key


            def test_every_server_was_stopped():
                assert len(SERVERS) == 4 and not any(s.running for s in SERVERS)
            """
        )
    )
    # Autoloading the machine's other plugins costs seconds; load just this one by name.
    env = {**project_env(), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "ipychat.testing.pytest_plugin",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_pytest_plugin_entry_point_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(ipychat.__file__).resolve().parent.parent / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not running from a source checkout")
    project = tomllib.loads(pyproject.read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"ipychat": "ipychat.testing.pytest_plugin"}
    installed = [
        ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "ipychat"
    ]
    assert all(ep.value == "ipychat.testing.pytest_plugin" for ep in installed)
