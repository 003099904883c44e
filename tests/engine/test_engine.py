"""The engine on its own (no session, no loop thread): one request pipeline returning one
record, the cache entry schema it writes and reads back, the ledger row it builds, and the
layering that keeps the map package on the engine and off the session."""

from __future__ import annotations

import ast
import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipychat.core.errors import ChatError, OfflineCacheMiss
from ipychat.core.types import Reply, Usage
from ipychat.engine.cache import ResponseCache
from ipychat.engine.engine import Engine
from ipychat.engine.exchange import Exchange
from ipychat.engine.prepare import RequestOptions
from ipychat.session import Settings
from ipychat.testing import FakeOpenAIServer, Fault

KEY = "sk-test-" + "e" * 20
PACKAGE = Path(__file__).resolve().parents[2] / "ipychat"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def make_engine(server: FakeOpenAIServer, tmp_path: Path, **settings: Any) -> Engine:
    settings = {"model": "gpt-4o-mini", **settings}
    return Engine(
        Settings(base_url=server.base_url, api_key=KEY, **settings),
        cache=ResponseCache(tmp_path / "cache"),
    )


def run(engine: Engine, coro: Any) -> Any:
    """Run `coro` on a fresh loop, then close the client there (it lives on that loop)."""

    async def go() -> Any:
        try:
            return await coro
        finally:
            client = engine.take_client()
            if client is not None:
                await client.aclose()

    return asyncio.run(go())


def test_a_request_is_one_exchange_then_a_cached_one(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    engine = make_engine(server, tmp_path)
    prepared = engine.prepare_one("hello", RequestOptions(max_tokens=20), label="main")
    sent = run(engine, engine.request(prepared))
    assert isinstance(sent, Exchange) and not sent.cached and sent.store
    assert sent.reply.text == "Echo: hello" and sent.reply.thread == "main"
    assert sent.key == engine.cache_key(prepared.body) and sent.request_model == "gpt-4o-mini"
    assert engine.cache is not None
    stored = engine.cache.get(sent.key)
    assert stored is not None and stored["text"] == "Echo: hello"
    assert stored["request_model"] == "gpt-4o-mini" and stored["host"] == engine.host

    again = run(engine, engine.request(prepared))
    assert again.cached and again.reply.cost == 0.0 and again.reply.text == sent.reply.text
    assert again.reply.usage == sent.reply.usage
    assert again.reply.saved is not None and math.isclose(again.reply.saved, sent.reply.cost)
    assert len(server.chat_requests) == 1
    rows = list(engine.usage)
    assert [(r.cached, r.outcome, r.thread) for r in rows] == [
        (False, "ok", "main"),
        (True, "ok", "main"),
    ]
    engine.close_cache()


def test_a_deferred_cache_write_is_handed_back(server: FakeOpenAIServer, tmp_path: Path) -> None:
    # %%chatmap writes its rows' entries in batches: the engine hands the entry back and
    # writes nothing itself.
    engine = make_engine(server, tmp_path)
    prepared = engine.prepare_one("row", RequestOptions(max_tokens=20))
    exchange = run(engine, engine.request(prepared, write_cache=False))
    assert exchange.store and engine.cache is not None and engine.cache.get(exchange.key) is None
    engine.cache.set(exchange.key, exchange.to_cache())
    assert run(engine, engine.request(prepared)).cached
    engine.close_cache()


def test_cache_off_neither_reads_nor_asks_to_store(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    engine = make_engine(server, tmp_path)
    prepared = engine.prepare_one("x", RequestOptions(max_tokens=5))
    first = run(engine, engine.request(prepared, cache="off"))
    assert not first.store and engine.cache is not None and engine.cache.get(first.key) is None
    engine.close_cache()


def test_a_failure_is_in_the_ledger_at_no_cost(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        server.script(Fault.status(400))
        engine = make_engine(server, tmp_path)
        prepared = engine.prepare_one("bad", RequestOptions(max_tokens=5))
        with pytest.raises(ChatError):
            run(engine, engine.request(prepared, max_retries=0))
    (row,) = list(engine.usage)
    assert row.outcome == "error" and row.cost == 0.0 and row.error
    assert row.prompt_tokens == prepared.estimate.prompt_tokens and row.estimated
    engine.close_cache()


def test_offline_sends_nothing(server: FakeOpenAIServer, tmp_path: Path) -> None:
    engine = make_engine(server, tmp_path, offline=True)
    prepared = engine.prepare_one("not cached", RequestOptions(max_tokens=5))
    with pytest.raises(OfflineCacheMiss):
        run(engine, engine.request(prepared))
    assert server.chat_requests == [] and list(engine.usage) == []
    engine.close_cache()


def test_the_cache_entry_schema_round_trips() -> None:
    usage = Usage(prompt_tokens=12, completion_tokens=3, cached_tokens=2, estimated=False)
    reply = Reply(text="hi", model="gpt-4o-2024", usage=usage, cost=0.5, finish_reason="stop")
    entry = Exchange(reply, "k" * 64, "gpt-4o", "api.example:443").to_cache()
    assert set(entry) == {
        "text",
        "model",
        "request_model",
        "finish_reason",
        "usage",
        "cost",
        "created",
        "host",
    }
    assert entry["request_model"] == "gpt-4o" and entry["model"] == "gpt-4o-2024"
    back = Exchange.from_cache(
        entry,
        key="k" * 64,
        request_model="gpt-4o",
        host="api.example:443",
        model=entry["model"],
        price=None,
        label="t",
    )
    assert back.cached and back.reply.usage == usage and back.reply.finish_reason == "stop"
    assert back.reply.cost == 0.0 and back.reply.saved is None  # no price: saving unknown


def test_the_ledger_row_of_each_outcome() -> None:
    reply = Reply(text="", model="m", thread="map", cost=0.25, latency=1.5, retries=2)
    failed = Exchange(reply, "k", "m", "h", prompt_tokens=7, outcome="error", error="boom")
    row = failed.ledger_row()
    assert (row.thread, row.model, row.host, row.outcome, row.error) == (
        "map",
        "m",
        "h",
        "error",
        "boom",
    )
    assert row.cost == 0.0 and row.prompt_tokens == 7 and row.estimated  # no usage: ours
    assert row.latency == 1.5 and row.retries == 2
    ok = Exchange(reply, "k", "asked", "h").ledger_row(model="asked")
    assert ok.cost == 0.25 and ok.model == "asked" and ok.outcome == "ok"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top, under TYPE_CHECKING or in a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("package", ["engine", "map"])
def test_the_engine_and_the_map_never_import_the_session(package: str) -> None:
    above = ("ipychat.session", "ipychat.streaming", "ipychat.notebook")
    wrong = {
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in (PACKAGE / package).rglob("*.py")
        for name in _imports(path)
        if name.startswith(above)
    }
    assert not wrong, sorted(wrong)
