"""The session's cache on Redis (`IPYCHAT_CACHE_URL`), end to end.

Real parts: a `redis-server` on 127.0.0.1 (tests/engine/redis_server.py, started and
stopped here), `FakeOpenAIServer`, `ChatSession` and a real IPython `InteractiveShell`.
A "second kernel" is a new `ChatSession` (new engine, new cache object, new Redis
connection): all it shares with the first is the server.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from IPython.utils.capture import capture_output
from redis_server import RedisServer, free_port

from ipychat.engine.cache import CacheWarning, ResponseCache
from ipychat.engine.stores import ENV_CACHE_URL
from ipychat.engine.stores.counted import StoreCache
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    client = redis_server.client()
    client.flushall()  # every test starts from an empty server
    client.close()
    monkeypatch.setenv(ENV_CACHE_URL, redis_server.url)
    return redis_server.url


@pytest.fixture
def sessions(fake: FakeOpenAIServer) -> Iterator[list[ChatSession]]:
    """Sessions as kernels make them: the default cache (what the environment says)."""
    made: list[ChatSession] = []
    yield made
    for s in made:
        s.close()


def new_session(made: list[ChatSession], fake: FakeOpenAIServer) -> ChatSession:
    s = ChatSession(Settings(base_url=fake.base_url, api_key="sk-test", model="gpt-4o-mini"))
    made.append(s)
    return s


def our_keys(server: RedisServer) -> int:
    client = server.client()
    try:
        return sum(1 for _ in client.scan_iter(match="ipychat:*"))
    finally:
        client.close()


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"item {i}" for i in range(n)]})


@pytest.mark.redis
def test_a_second_session_is_served_from_redis(
    redis_server: RedisServer,
    redis_url: str,
    fake: FakeOpenAIServer,
    sessions: list[ChatSession],
) -> None:
    first = new_session(sessions, fake)
    assert first.ask("What is 2+2?").text == "Echo: What is 2+2?"
    assert isinstance(first.cache, StoreCache) and our_keys(redis_server) == 1
    first.close()

    second = new_session(sessions, fake)
    reply = second.ask("What is 2+2?")
    assert reply.text == "Echo: What is 2+2?"
    assert len(fake.chat_requests) == 1  # the second session sent nothing
    assert second.cache is not None
    st = second.cache.stats()
    assert (st.backend, st.entries, st.hits, st.misses) == ("redis", 1, 1, 0)
    assert redis_server.password not in st.location
    # Nothing went to the disk cache: the entry exists only on the server.
    assert not (Path(os.environ["IPYCHAT_CACHE_DIR"]) / "cache.db").exists()


@pytest.mark.redis
def test_a_map_rerun_in_another_session_resumes_from_redis(
    redis_server: RedisServer,
    redis_url: str,
    fake: FakeOpenAIServer,
    sessions: list[ChatSession],
) -> None:
    first = new_session(sessions, fake)
    first.map(frame(4), "Say {text}", "out")
    assert len(fake.chat_requests) == 4 and our_keys(redis_server) == 4

    second = new_session(sessions, fake)
    out = second.map(frame(6), "Say {text}", "out")
    assert out["out"].tolist() == [f"Echo: Say item {i}" for i in range(6)]
    assert len(fake.chat_requests) == 6  # rows 0-3 came from Redis, only 4 and 5 were sent
    assert our_keys(redis_server) == 6
    assert second.usage.saved > 0 and sum(row.cached for row in second.usage) == 4


@pytest.fixture
def session(fake: FakeOpenAIServer, redis_url: str) -> Iterator[ChatSession]:
    """Overrides conftest's `session` (its own disk cache) for the `ip` fixture."""
    s = ChatSession(Settings(base_url=fake.base_url, api_key="sk-test", model="gpt-4o-mini"))
    reset_session(s)
    yield s
    reset_session(None)
    s.close()


@pytest.mark.redis
def test_chat_cache_names_the_redis_backend_without_the_password(
    ip, redis_server: RedisServer, fake: FakeOpenAIServer
) -> None:
    with capture_output():
        ip.run_cell_magic("chat", "", "cached question")
        ip.run_cell_magic("chat", "--thread b", "cached question")
    with capture_output() as out:
        ip.run_line_magic("chat", "cache")
    line = out.stdout.strip()
    expected = f"cache redis redis://:***@127.0.0.1:{redis_server.port}/0 · 1 entry · "
    assert line.startswith(expected), line
    assert "this session: 1 hit, 1 miss, saved $" in line
    assert redis_server.password not in out.stdout
    with capture_output() as out:
        ip.run_line_magic("chat", "cache clear")
    assert "removed 1 cached reply" in out.stdout and our_keys(redis_server) == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis://:{password}@127.0.0.1:notaport/0",
        "memcached://:{password}@127.0.0.1:11211",
    ],
)
def test_a_bad_url_warns_once_and_the_session_runs_uncached(
    url: str,
    fake: FakeOpenAIServer,
    sessions: list[ChatSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "pw-" + secrets.token_hex(8)  # made at run time: never a committed secret
    monkeypatch.setenv(ENV_CACHE_URL, url.format(password=password))
    s = new_session(sessions, fake)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert s.ask("hello").text == "Echo: hello"
        assert s.ask("hello", new=True).text == "Echo: hello"
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1, messages
    assert messages[0].startswith("ipychat: carrying on without a cache: cache URL ")
    assert "\n" not in messages[0] and password not in messages[0]
    assert s.cache is None and len(fake.chat_requests) == 2  # uncached: both were sent


def test_without_a_url_the_cache_is_the_disk_cache_as_before(
    fake: FakeOpenAIServer, sessions: list[ChatSession]
) -> None:
    s = new_session(sessions, fake)
    s.ask("hello")
    cache = s.cache
    assert type(cache) is ResponseCache
    assert cache.directory == Path(os.environ["IPYCHAT_CACHE_DIR"])
    st = cache.stats()
    assert (st.backend, st.location, st.entries) == ("disk", str(cache.directory), 1)


@pytest.mark.redis
def test_a_server_that_is_down_warns_once_and_the_reply_still_comes(
    fake: FakeOpenAIServer, sessions: list[ChatSession], monkeypatch: pytest.MonkeyPatch
) -> None:

    password = "pw-" + secrets.token_hex(8)
    monkeypatch.setenv(ENV_CACHE_URL, f"redis://:{password}@127.0.0.1:{free_port()}/0")
    s = new_session(sessions, fake)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert s.ask("hello").text == "Echo: hello"
        assert s.ask("hello", new=True).text == "Echo: hello"
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1 and "cannot be reached" in messages[0], messages
    assert password not in messages[0]
    assert s.cache is not None and s.cache.stats().disabled and len(fake.chat_requests) == 2
