"""The client's direct path (`ChatClient._direct`, the lean transport's `send_direct`): a
non-streamed chat sent without httpx's Request and Response models.

Each test runs the same request both ways against FakeOpenAIServer over real loopback
sockets: "direct" (the default for a non-streamed chat on ipychat's own transport) and
"general" (`_attempt`: httpx.Request → handle_async_request → httpx.Response, what the
path replaced, chosen here by taking `send_direct` off the transport class). What reaches
the wire, what comes back, and every failure must be the same.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest

from ipychat.core.errors import ChatError
from ipychat.net import transport as _transport
from ipychat.net.client import ChatClient, Timeouts
from ipychat.net.requests import RequestBuilder
from ipychat.testing import FakeOpenAIServer, Fault

KEY = "sk-direct-" + "d" * 24
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "ping ☀ pong"}],
        "max_tokens": 16, "temperature": 0.5}  # fmt: skip
PATHS = ["direct", "general"]


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(_transport.STOCK_TRANSPORT_ENV, raising=False)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as s:
        yield s


def choose(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "general":  # no send_direct: the client takes `_attempt`, as before
        monkeypatch.setattr(_transport.lean_aiohttp_transport(), "send_direct", None)


def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every httpx.Request the client builds (the direct path builds one only to name a
    failure)."""
    made: list[str] = []
    original = RequestBuilder.build

    def counting(self: RequestBuilder, method: str, *args: Any, **kwargs: Any) -> Any:
        made.append(method)
        return original(self, method, *args, **kwargs)

    monkeypatch.setattr(RequestBuilder, "build", counting)
    return made


def ask(base_url: str, times: int = 1, **options: Any) -> list[Any]:
    """`times` non-streamed chats through one client: each Completion, or the ChatError."""

    async def main() -> list[Any]:
        client = ChatClient(base_url, api_key=KEY, sleep=_no_sleep, **options)
        out: list[Any] = []
        try:
            for _ in range(times):
                try:
                    out.append(await client.chat(BODY))
                except ChatError as exc:
                    out.append(exc)
        finally:
            await client.aclose()
        return out

    return asyncio.run(main())


async def _no_sleep(delay: float) -> None:
    return None


def wire(server: FakeOpenAIServer) -> list[tuple[Any, ...]]:
    return [
        (r.method, r.path, r.query, {k.lower(): v for k, v in r.headers.items()}, r.body)
        for r in server.chat_requests
    ]


@pytest.mark.parametrize("azure", [False, True], ids=["openai", "azure"])
def test_the_same_request_reaches_the_wire(
    azure: bool, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"azure_api_version": "2024-10-21"} if azure else {}
    seen = {}
    for path in PATHS:
        with monkeypatch.context() as m:
            choose(path, m)
            made = builds(m)
            [completion] = ask(server.base_url, **options)
        assert completion.text == "Echo: ping ☀ pong" and completion.usage is not None
        assert len(made) == (0 if path == "direct" else 1)
        [seen[path]] = wire(server)
        server.reset_log()
    assert seen["direct"] == seen["general"]
    method, _, query, headers, body = seen["direct"]
    assert method == "POST" and body == BODY
    assert headers["content-length"] and headers["content-type"] == "application/json"
    assert (query == "api-version=2024-10-21") is azure
    assert (headers.get("api-key") == KEY) is azure
    assert (headers.get("authorization") == f"Bearer {KEY}") is not azure


def test_the_same_completion_comes_back(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = {}
    for path in PATHS:
        with monkeypatch.context() as m:
            choose(path, m)
            [completion] = ask(server.base_url)
        got[path] = {
            k: v for k, v in vars(completion).items() if k not in ("latency", "request_id")
        }
    assert got["direct"] == got["general"]
    assert got["direct"]["rate_limit"] is None and got["direct"]["finish_reason"]


FAULTS: list[tuple[str, list[Any]]] = [
    ("503 then ok", [Fault.status(503, headers={"retry-after-ms": "40"})]),
    ("401", [Fault.status(401)]),
    ("400", [Fault.status(400)]),
    ("404", [Fault.status(404)]),
    ("429 for two hours", [Fault.status(429, headers={"retry-after": "7200"})]),
    ("429 then ok", [Fault.status(429, headers={"retry-after-ms": "10"})]),
    ("resets", ["reset", "reset", "reset"]),
    ("reset then ok", ["reset"]),
    ("cut body", [Fault.truncate(), Fault.truncate(), Fault.truncate()]),
    ("malformed body", [Fault.malformed_json()] * 3),
    ("empty reply", [Fault.empty_reply()]),
]


@pytest.mark.parametrize(("name", "faults"), FAULTS, ids=[f[0] for f in FAULTS])
def test_every_failure_is_the_same(
    name: str, faults: list[Any], server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = {}
    for path in PATHS:
        server.script(*faults)
        with monkeypatch.context() as m:
            choose(path, m)
            [outcome] = ask(server.base_url, max_retries=2)
        outcomes[path] = describe(outcome), [r.status for r in server.chat_requests]
        server.reset_log()
    assert outcomes["direct"] == outcomes["general"]


def describe(outcome: Any) -> tuple[str, str, Any]:
    if isinstance(outcome, ChatError):
        return type(outcome).__name__, re.sub(r"\d\d:\d\d", "HH:MM", str(outcome)), None
    return "ok", outcome.text, outcome.retries


@pytest.mark.parametrize("path", PATHS)
def test_the_reply_timeout_cuts_a_slow_reply_off_the_same_way(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `reply` bounds a non-streamed completion: aiohttp's sock_read on the direct path too.
    choose(path, monkeypatch)
    with FakeOpenAIServer(latency=2.0) as server:
        [outcome] = ask(server.base_url, max_retries=0, timeouts=Timeouts(read=0.2, reply=0.3))
    assert isinstance(outcome, ChatError)
    assert type(outcome).__name__ == "APITimeoutError"
    assert "sent nothing for 0.3 s (read timeout)" in str(outcome)


@pytest.mark.parametrize("path", PATHS)
def test_a_closed_port_is_the_same_one_line_error(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    choose(path, monkeypatch)
    [outcome] = ask(f"http://127.0.0.1:{port}/v1", max_retries=0)
    assert type(outcome).__name__ == "APIConnectionError"
    assert "not reachable" in str(outcome) and "\n" not in str(outcome)


def test_the_stock_transport_never_takes_the_direct_path(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_transport.STOCK_TRANSPORT_ENV, "1")
    made = builds(monkeypatch)
    [completion] = ask(server.base_url, times=1)
    assert completion.text == "Echo: ping ☀ pong" and made == ["POST"]
