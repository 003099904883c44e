"""ChatClient against FakeOpenAIServer over real loopback sockets, default aiohttp transport.

These prove what MockTransport cannot: HTTP framing, SSE as it arrives on a socket,
timeouts that really fire (connect and read, between chunks of a stream), resets, the
connection pool limit, and what reaches the wire (headers, query, body).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from ipychat.core.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthError,
    BadRequestError,
    NotFoundError,
    RateLimitError,
    ServerError,
    StreamError,
)
from ipychat.core.keys import mask
from ipychat.net.client import ChatClient, Timeouts
from ipychat.testing import FakeOpenAIServer, Fault

T = TypeVar("T")
CANARY = "sk-canary-" + "k3Y" * 14
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "ping pong"}]}
ECHO = "Echo: ping pong"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as s:
        yield s


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client_for(server: FakeOpenAIServer, **kw: Any) -> tuple[ChatClient, Sleeps]:
    sleeps = Sleeps()
    options: dict[str, Any] = {"api_key": CANARY, "sleep": sleeps, "rand": lambda: 0.0}
    options.update(kw)
    return ChatClient(options.pop("base_url", server.base_url), **options), sleeps


async def using(client: ChatClient, coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro`, then close the client in the same loop (aiohttp wants that)."""
    try:
        return await coro
    finally:
        await client.aclose()


def chat(client: ChatClient, **kw: Any) -> Any:
    return run(using(client, client.chat(BODY, **kw)))


# ----- the protocol --------------------------------------------------------------------------


def test_non_streamed_reply(server: FakeOpenAIServer) -> None:
    client, _ = client_for(server)
    completion = chat(client)
    assert completion.text == ECHO
    assert completion.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.request_id and completion.request_id.startswith("req")
    [request] = server.chat_requests
    assert request.headers["authorization"] == f"Bearer {CANARY}"
    assert request.body == BODY


def test_streamed_reply_with_usage_chunk(server: FakeOpenAIServer) -> None:
    client, _ = client_for(server)
    seen: list[str] = []
    completion = chat(client, stream=True, on_delta=seen.append)
    assert "".join(seen) == completion.text == ECHO
    assert len(seen) > 1
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.time_to_first_token is not None
    body = server.chat_requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_server_without_usage_chunk() -> None:
    with FakeOpenAIServer(include_usage_chunk=False) as server:
        client, _ = client_for(server)
        completion = chat(client, stream=True)
    assert completion.text == ECHO and completion.usage is None


def test_models(server: FakeOpenAIServer) -> None:
    client, _ = client_for(server)
    assert run(using(client, client.models())) == ["fake-model"]


def test_azure_header_and_query(server: FakeOpenAIServer) -> None:
    url = server.url + "/openai/deployments/my-gpt"
    client, _ = client_for(server, base_url=url, azure_api_version="2024-10-21")
    assert chat(client).text == ECHO
    [request] = server.chat_requests
    assert request.path == "/openai/deployments/my-gpt/chat/completions"
    assert request.query == "api-version=2024-10-21"
    assert request.headers["api-key"] == CANARY
    assert "authorization" not in request.headers


def test_no_key_local_server_sends_no_auth(server: FakeOpenAIServer) -> None:
    client = ChatClient(server.base_url)
    assert chat(client).text == ECHO
    assert "authorization" not in server.chat_requests[0].headers


def test_rate_limit_headers_are_exposed() -> None:
    with FakeOpenAIServer(rpm=1000, tpm=100_000) as server:
        client, _ = client_for(server)
        completion = chat(client)
    info = completion.rate_limit
    assert info is not None and client.last_rate_limit == info
    assert info.limit_requests == 1000 and info.limit_tokens == 100_000
    assert info.remaining_requests is not None and info.remaining_requests < 1000


# ----- faults and retries --------------------------------------------------------------------


def test_503_then_success_is_retried(server: FakeOpenAIServer) -> None:
    server.script(Fault.status(503, headers={"retry-after-ms": "40"}))
    client, sleeps = client_for(server)
    completion = chat(client)
    assert completion.text == ECHO and completion.retries == 1
    assert sleeps.delays == [0.04]
    assert [r.status for r in server.chat_requests] == [503, 200]


def test_real_sleep_between_retries(server: FakeOpenAIServer) -> None:
    server.script(Fault.status(429, headers={"retry-after-ms": "150"}))
    client = ChatClient(server.base_url, api_key=CANARY)
    started = time.perf_counter()
    assert chat(client).retries == 1
    assert time.perf_counter() - started >= 0.15


def test_rpm_limit_429_with_retry_after_ms_is_obeyed() -> None:
    # 600 RPM enforced per second: 10 requests fit in a second. Of 12 sent at once, 2 get a
    # 429 whose retry-after-ms is the exact time until the window has room again (the
    # first charges leave it after 1 s; the refusals are charged too, and counted in it).
    with FakeOpenAIServer(rpm=600) as server:
        client = ChatClient(server.base_url, api_key=CANARY)

        async def burst() -> list[Any]:
            return list(await asyncio.gather(*(client.chat(BODY) for _ in range(12))))

        started = time.perf_counter()
        completions = run(using(client, burst()))
        elapsed = time.perf_counter() - started
        statuses = [r.status for r in server.chat_requests]
    assert all(c.text == ECHO for c in completions)
    assert statuses.count(200) == 12
    assert sum(c.retries for c in completions) == statuses.count(429) >= 2
    assert 0.9 <= elapsed < 4.0  # the server's exact wait, not a guess


def test_retry_after_too_long_fails_at_once(server: FakeOpenAIServer) -> None:
    server.script(Fault.status(429, headers={"retry-after": "7200"}))
    client, sleeps = client_for(server)
    with pytest.raises(
        RateLimitError, match=r"asked to wait 2 h; try again after (\d{4}-\d\d-\d\d )?\d\d:\d\d"
    ):
        chat(client)
    assert len(server.chat_requests) == 1 and sleeps.delays == []


def test_x_should_retry_from_the_server(server: FakeOpenAIServer) -> None:
    server.script(Fault.status(400, headers={"x-should-retry": "true"}))
    client, _ = client_for(server)
    assert chat(client).retries == 1
    server.reset_log()
    server.script(Fault.status(503, headers={"x-should-retry": "false"}))
    client, _ = client_for(server)
    with pytest.raises(ServerError, match="overloaded"):
        chat(client)
    assert len(server.chat_requests) == 1


def test_connection_reset_is_retried(server: FakeOpenAIServer) -> None:
    server.script("reset", "reset")
    client, sleeps = client_for(server)
    completion = chat(client)
    assert completion.text == ECHO and completion.retries == 2
    assert sleeps.delays == [0.5, 1.0]


def test_resets_exhaust_the_retries(server: FakeOpenAIServer) -> None:
    server.script("reset", "reset", "reset")
    client, _ = client_for(server, max_retries=2)
    with pytest.raises(APIConnectionError, match=r"127\.0\.0\.1:\d+.*after 2 retries") as info:
        chat(client)
    assert not isinstance(info.value, APITimeoutError)
    assert len(server.chat_requests) == 3


def test_stream_reset_after_content_is_not_retried(server: FakeOpenAIServer) -> None:
    server.script(Fault.reset_mid_stream(after=1))
    client, sleeps = client_for(server)
    seen: list[str] = []
    with pytest.raises(StreamError, match="after 5 characters"):  # "Echo:"
        chat(client, stream=True, on_delta=seen.append)
    assert seen == ["Echo:"]
    assert len(server.chat_requests) == 1 and sleeps.delays == []


def test_stream_reset_before_content_is_retried(server: FakeOpenAIServer) -> None:
    server.script(Fault.reset_mid_stream(after=0))
    client, _ = client_for(server)
    completion = chat(client, stream=True)
    assert completion.text == ECHO and completion.retries == 1


def test_truncated_stream_is_an_error(server: FakeOpenAIServer) -> None:
    server.script(Fault.truncate(after=1))
    client, _ = client_for(server)
    with pytest.raises(StreamError, match=r"stream ended before \[DONE\] after 5 characters"):
        chat(client, stream=True)
    assert len(server.chat_requests) == 1


def test_malformed_stream_chunk(server: FakeOpenAIServer) -> None:
    server.script(Fault.malformed_json(after=1))
    client, _ = client_for(server)
    with pytest.raises(StreamError, match="malformed chunk"):
        chat(client, stream=True)


def test_a_malformed_or_cut_json_body_is_retried(server: FakeOpenAIServer) -> None:
    # A 200 whose JSON breaks off is a dropped reply, not a wrong base URL: nothing was
    # given out yet, so it is retried like a dropped connection.
    server.script(Fault.malformed_json(), Fault.truncate())
    client, sleeps = client_for(server)
    completion = chat(client)
    assert completion.text == ECHO and completion.retries == 2
    assert len(server.chat_requests) == 3 and sleeps.delays == [0.5, 1.0]


def test_cut_json_bodies_exhaust_the_retries(server: FakeOpenAIServer) -> None:
    server.script("truncate", "truncate", "truncate")
    client, _ = client_for(server, max_retries=2)
    with pytest.raises(APIConnectionError, match=r"ended early .*after 2 retries") as info:
        chat(client)
    assert "base URL" not in str(info.value)
    assert len(server.chat_requests) == 3


def test_a_web_page_in_a_200_names_the_base_url(server: FakeOpenAIServer) -> None:
    server.script(Fault.status(200, body="<html><body>Welcome to nginx!</body></html>"))
    client, sleeps = client_for(server)
    with pytest.raises(APIError, match=r"not JSON \(<html>.*check that the base URL"):
        chat(client)
    assert len(server.chat_requests) == 1 and sleeps.delays == []


def test_error_mid_stream(server: FakeOpenAIServer) -> None:
    server.script(Fault.error_mid_stream(after=1, message="Model crashed, sorry"))
    client, _ = client_for(server)
    with pytest.raises(StreamError, match="Model crashed, sorry"):
        chat(client, stream=True)


def test_status_errors_carry_the_server_message(server: FakeOpenAIServer) -> None:
    client, _ = client_for(server, base_url=server.url + "/wrong")
    with pytest.raises(NotFoundError, match=r"Invalid URL .*check the model name"):
        chat(client)
    server.script(Fault.status(400, message="Invalid 'temperature': 7"))
    client, _ = client_for(server)
    with pytest.raises(BadRequestError, match="Invalid 'temperature': 7"):
        chat(client)


def test_key_pool_rotates_on_429(server: FakeOpenAIServer) -> None:
    server.script(Fault.status(429, headers={"retry-after": "30"}))
    keys = ["sk-first-" + "a" * 20, "sk-second-" + "b" * 20]
    client, sleeps = client_for(server, api_key=None, api_keys=keys)
    assert chat(client).retries == 1 and sleeps.delays == []
    sent = [r.headers["authorization"] for r in server.chat_requests]
    assert sent == [f"Bearer {keys[0]}", f"Bearer {keys[1]}"]


# ----- timeouts ------------------------------------------------------------------------------


def test_connect_to_a_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        client = ChatClient(f"http://127.0.0.1:{port}/v1", max_retries=1, sleep=Sleeps())
        started = time.perf_counter()
        with pytest.raises(APIConnectionError) as info:
            chat(client)
    assert not isinstance(info.value, APITimeoutError)
    # One line in our words: where, why, what to do; not aiohttp's "Cannot connect to host
    # 127.0.0.1:PORT ssl:default [Connect call failed (...)]".
    assert str(info.value) == (
        f"The server at http://127.0.0.1:{port}/v1 is not reachable (connection refused, "
        "after 1 retry): check that it is running and the network, or set another URL with "
        "%chat endpoint URL"
    )
    assert time.perf_counter() - started < 2


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full, so a new connection attempt just hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(listener.getsockname())
            fillers.append(s)
        yield listener.getsockname()[1]
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_connect_timeout() -> None:
    with full_backlog() as port:
        timeouts = Timeouts(connect=0.3)
        client = ChatClient(f"http://127.0.0.1:{port}/v1", timeouts=timeouts, max_retries=0)
        started = time.perf_counter()
        with pytest.raises(APITimeoutError, match=r"Timed out connecting to 127\.0\.0\.1"):
            chat(client)
        assert time.perf_counter() - started < 2


def test_hanging_server_times_out_within_the_read_timeout(server: FakeOpenAIServer) -> None:
    server.script("hang")
    client, _ = client_for(server, timeouts=Timeouts(read=0.3, reply=0.3), max_retries=0)
    started = time.perf_counter()
    with pytest.raises(APITimeoutError, match=r"sent nothing for 0\.3 s"):
        chat(client)
    assert 0.25 <= time.perf_counter() - started < 1.5


def test_stream_read_timeout_is_between_chunks(server: FakeOpenAIServer) -> None:
    # 12 chunks 0.1 s apart: 1.2 s in all, never 0.4 s of silence, so no timeout fires.
    with FakeOpenAIServer(reply="a b c d e f g h i j k l", tokens_per_second=10) as slow:
        client, _ = client_for(slow, timeouts=Timeouts(read=0.4), max_retries=0)
        started = time.perf_counter()
        assert chat(client, stream=True).text == "a b c d e f g h i j k l"
        assert time.perf_counter() - started > 0.8


def test_stream_that_stalls_after_content_times_out(server: FakeOpenAIServer) -> None:
    server.script(Fault.hang(after=1))
    client, _ = client_for(server, timeouts=Timeouts(read=0.3))
    started = time.perf_counter()
    with pytest.raises(StreamError, match="after 5 characters"):
        chat(client, stream=True)
    assert time.perf_counter() - started < 1.5
    assert len(server.chat_requests) == 1  # content was given out: never retried


def test_stream_that_stalls_before_content_is_retried(server: FakeOpenAIServer) -> None:
    server.script(Fault.hang(after=0))
    client, sleeps = client_for(server, timeouts=Timeouts(read=0.3))
    assert chat(client, stream=True).retries == 1
    assert sleeps.delays == [0.5]


# ----- the connection pool -------------------------------------------------------------------


def test_pool_size_follows_set_max_connections() -> None:
    with FakeOpenAIServer(latency=0.1) as server:
        client = ChatClient(server.base_url, max_connections=4)

        async def burst() -> None:
            await asyncio.gather(*(client.chat(BODY) for _ in range(12)))

        async def main() -> list[int]:
            peaks = []
            for n in (4, 8):
                await client.set_max_connections(n)
                server.reset_log()
                await burst()
                peaks.append(server.stats().max_in_flight)
            await client.aclose()
            return peaks

        assert run(main()) == [4, 8]


def test_resize_while_requests_are_in_flight() -> None:
    with FakeOpenAIServer(latency=0.2) as server:
        client = ChatClient(server.base_url, max_connections=2)

        async def main() -> None:
            first = asyncio.gather(*(client.chat(BODY) for _ in range(2)))
            await asyncio.sleep(0.05)
            await client.set_max_connections(6)  # the old pool closes when they finish
            second = await asyncio.gather(*(client.chat(BODY) for _ in range(6)))
            assert all(c.text == ECHO for c in [*await first, *second])
            await client.aclose()

        run(main())


# The pool of the first loop cannot be closed once that loop is gone; aiohttp says so on GC.
@pytest.mark.filterwarnings("ignore:Unclosed client session:ResourceWarning")
def test_client_survives_a_new_event_loop(server: FakeOpenAIServer) -> None:
    client = ChatClient(server.base_url)
    assert run(client.chat(BODY)).text == ECHO
    assert run(using(client, client.chat(BODY))).text == ECHO  # another asyncio.run


# ----- secrets -------------------------------------------------------------------------------


def all_text(exc: BaseException) -> str:
    parts: list[str] = []
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e)]
        todo += [e.__cause__, e.__context__]
    return "\n".join(parts)


def test_canary_key_never_leaks_over_the_wire(caplog: pytest.LogCaptureFixture) -> None:
    with FakeOpenAIServer(require_key="sk-the-right-one-000000000000") as server:
        client, _ = client_for(server)
        assert CANARY not in repr(client)
        with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as info:
            chat(client)
        assert "check OPENAI_API_KEY or run %chat key" in str(info.value)
        assert mask(CANARY) in str(info.value)  # the server's own masked echo
        server.script("reset", "reset")
        client, _ = client_for(server, api_key="sk-the-right-one-000000000000", max_retries=1)
        with caplog.at_level(logging.DEBUG), pytest.raises(APIConnectionError) as dropped:
            chat(client)
    for text in (all_text(info.value), all_text(dropped.value), caplog.text):
        assert CANARY not in text
        assert "sk-the-right-one-000000000000" not in text


def test_cancelling_a_stream_closes_it_cleanly() -> None:
    # What a kernel interrupt does: cancel the task mid-stream. The connection is dropped
    # (not returned to the pool half-read) and the client keeps working.
    words = " ".join(f"w{i}" for i in range(40))
    with FakeOpenAIServer(reply=words, tokens_per_second=40) as server:
        client = ChatClient(server.base_url)

        async def main() -> tuple[list[str], str]:
            seen: list[str] = []
            first = asyncio.Event()

            def on_delta(text: str) -> None:
                seen.append(text)
                first.set()

            task = asyncio.create_task(client.chat(BODY, stream=True, on_delta=on_delta))
            await first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after = await client.chat(BODY)
            await client.aclose()
            return seen, after.text

        seen, text = run(main())
    assert 1 <= len(seen) < 40
    assert text == words
