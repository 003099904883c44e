"""FakeOpenAIServer observed from outside with httpx: lifecycle, endpoints, token counting,
keys, pacing and the request log."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import httpx
import pytest
from _wire import (
    BODY,
    ECHO,
    HTTP,
    deltas,
    get,
    post,
    server_threads,
    sse_data,
    stream_body,
)

from ipychat.testing import FakeOpenAIServer, Fault, ServerStats, approx_tokens

# ----- lifecycle -----------------------------------------------------------------------------


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
