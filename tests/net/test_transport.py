"""The trimmed aiohttp transport and its way out: the stock httpx_aiohttp transport.

`ipychat.net.transport` subclasses httpx_aiohttp's `AiohttpTransport` and leans on its private
names (`AIOHTTP_EXC_MAP`, `self.client`, `get_client`). pyproject.toml bounds httpx-aiohttp
below its next minor release, but an install may ignore that; a release that renames them
must cost a warning and some CPU, never every request. These tests take the names away
(or rename them through the installed httpx_aiohttp's own source, the way a later release
would) and send real requests to a FakeOpenAIServer on loopback.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx_aiohttp
import httpx_aiohttp.transport as stock_module
import pytest

from ipychat.core.errors import APIConnectionError
from ipychat.net import transport as _transport
from ipychat.net.client import ChatClient
from ipychat.testing import FakeOpenAIServer

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "ping pong"}]}
ECHO = "Echo: ping pong"


@pytest.fixture(autouse=True)
def _fresh_transport_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No warning remembered from another test; the lean class rebuilt around each test's
    httpx_aiohttp (it is cached, and some tests swap the library's module)."""
    monkeypatch.delenv(_transport.STOCK_TRANSPORT_ENV, raising=False)
    monkeypatch.setattr(_transport, "_warned", set())
    _transport.lean_aiohttp_transport.cache_clear()
    yield
    _transport.lean_aiohttp_transport.cache_clear()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as s:
        yield s


def _ask(base_url: str, times: int = 2, **options: Any) -> list[str]:
    """`times` chat requests through one ChatClient with its default transport."""

    async def main() -> list[str]:
        client = ChatClient(base_url, max_retries=0, **options)
        try:
            return [(await client.chat(BODY)).text for _ in range(times)]
        finally:
            await client.aclose()

    return asyncio.run(main())


def _transport_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, _transport.TransportWarning)]


def _count_stock_requests(cls: type, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each request that `cls.handle_async_request` (the stock code) serves."""
    served: list[str] = []
    original = cls.handle_async_request

    async def counting(self: Any, request: httpx.Request) -> httpx.Response:
        served.append(str(request.url))
        return await original(self, request)  # type: ignore[no-any-return]

    monkeypatch.setattr(cls, "handle_async_request", counting)
    return served


def _released_as(
    monkeypatch: pytest.MonkeyPatch, renames: dict[str, str], note: str
) -> types.ModuleType:
    """httpx_aiohttp's transport module as a later release might ship it: the installed
    module's own source with `renames` applied (a real, working transport), installed
    where ipychat imports it from. Each rename must apply, so this fails loudly if the
    installed source no longer has the old names."""
    source = inspect.getsource(stock_module)
    for old, new in renames.items():
        assert old in source, f"the installed httpx_aiohttp has no {old!r} to rename"
        source = source.replace(old, new)
    module = types.ModuleType(stock_module.__name__)
    module.__file__ = f"<httpx_aiohttp.transport, {note}>"
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, stock_module.__name__, module)
    monkeypatch.setattr(httpx_aiohttp, "AiohttpTransport", module.AiohttpTransport)
    return module


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----- the trimmed transport, as shipped ------------------------------------------------------


def test_the_trimmed_transport_serves_quietly(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Precision: with the installed httpx_aiohttp nothing falls back and nothing warns.
    served = _count_stock_requests(stock_module.AiohttpTransport, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _ask(server.base_url) == [ECHO, ECHO]
    assert _transport_warnings(caught) == []
    assert served == []
    transport = _transport.default_transport(4, server.base_url)
    assert type(transport) is not stock_module.AiohttpTransport


# ----- falling back once, with a warning -------------------------------------------------------


def test_a_missing_exception_map_falls_back_to_the_stock_transport_once(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stock code reads AIOHTTP_EXC_MAP only when aiohttp raises, so its requests work.
    monkeypatch.delattr(stock_module, "AIOHTTP_EXC_MAP")
    served = _count_stock_requests(stock_module.AiohttpTransport, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _ask(server.base_url) == [ECHO, ECHO]
        assert _ask(server.base_url) == [ECHO, ECHO]  # a second client: no second warning
    assert len(served) == 4
    [message] = _transport_warnings(caught)
    assert "AIOHTTP_EXC_MAP is missing or changed" in message
    assert "stock AiohttpTransport" in message
    assert "httpx-aiohttp<0.3" in message and "IPYCHAT_STOCK_TRANSPORT=1" in message
    assert "\n" not in message


def test_a_changed_exception_map_falls_back_too(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stock_module, "AIOHTTP_EXC_MAP", {"ClientError": "ReadError"})
    served = _count_stock_requests(stock_module.AiohttpTransport, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _ask(server.base_url, times=1) == [ECHO]
    assert len(served) == 1
    assert len(_transport_warnings(caught)) == 1


@pytest.mark.parametrize(
    ("renames", "problem"),
    [
        ({"self.client": "self._session"}, "AiohttpTransport has no .client"),
        (
            {"def get_client": "def _new_session", "self.get_client()": "self._new_session()"},
            "AiohttpTransport.get_client is missing",
        ),
    ],
    ids=["client", "get_client"],
)
def test_a_release_that_renames_client_or_get_client_still_answers(
    renames: dict[str, str],
    problem: str,
    server: FakeOpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The failure: the subclass reads self.client / get_client on every request,
    # so a release that renamed them would fail the first request and every later one.
    module = _released_as(monkeypatch, renames, note=f"renamed: {', '.join(renames)}")
    served = _count_stock_requests(module.AiohttpTransport, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _ask(server.base_url, times=3) == [ECHO, ECHO, ECHO]
    assert len(served) == 3
    [message] = _transport_warnings(caught)
    assert problem in message

    # Failures still come out as ipychat's one-line errors through the stock mapping.
    with pytest.raises(APIConnectionError, match="not reachable"):
        _ask(f"http://127.0.0.1:{_closed_port()}/v1", times=1)


def test_a_shape_the_check_cannot_see_falls_back_at_request_time(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The names are all there, but get_client now wants an argument: the TypeError comes
    # while the request is prepared (nothing sent), and the stock code takes over.
    module = _released_as(
        monkeypatch,
        {
            "def get_client(self)": "def get_client(self, limits: httpx.Limits)",
            "self.get_client()": "self.get_client(self.limits)",
        },
        note="get_client takes the limits",
    )
    served = _count_stock_requests(module.AiohttpTransport, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _ask(server.base_url, times=2) == [ECHO, ECHO]
    assert len(served) == 2
    [message] = _transport_warnings(caught)
    assert "TypeError" in message and "get_client()" in message
    assert server.stats().chat == 2  # each request reached the server once


# ----- the switch ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_the_environment_switch_chooses_the_stock_transport(
    value: str, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_transport.STOCK_TRANSPORT_ENV, value)
    transport = _transport.default_transport(4, server.base_url)
    assert type(transport) is stock_module.AiohttpTransport
    assert transport.limits.max_connections == 4
    served = _count_stock_requests(stock_module.AiohttpTransport, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _ask(server.base_url) == [ECHO, ECHO]
    assert len(served) == 2
    assert _transport_warnings(caught) == []


@pytest.mark.parametrize("value", ["0", "", "false", "no", "off"])
def test_the_switch_off_keeps_the_trimmed_transport(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_transport.STOCK_TRANSPORT_ENV, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transport = _transport.default_transport(4, "http://127.0.0.1:9/v1")
    assert type(transport) is _transport.lean_aiohttp_transport()
    assert _transport_warnings(caught) == []


def test_a_switch_value_not_understood_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_transport.STOCK_TRANSPORT_ENV, "stock")
    make: Callable[[], Any] = lambda: _transport.default_transport(4, "http://127.0.0.1:9/v1")  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = make(), make()
    assert type(first) is type(second) is _transport.lean_aiohttp_transport()
    assert _transport_warnings(caught) == [
        "IPYCHAT_STOCK_TRANSPORT='stock' is neither 1 nor 0: using ipychat's transport."
    ]
