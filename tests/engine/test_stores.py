"""ipychat.engine.stores: one contract, two backends (diskcache and a real redis-server).

The contract tests run against both (`store` is parametrised); Redis tests talk to a real
`redis-server` on 127.0.0.1 (random port, a password, no persistence) that the fixtures
start and stop. The contract itself is the docstring of ipychat/engine/stores/base.py.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import EXECUTABLE, RedisServer, free_port

from ipychat.engine.cache import CacheWarning
from ipychat.engine.stores import CacheStore, CacheURLError, open_store
from ipychat.engine.stores.disk import DiskStore
from ipychat.engine.stores.redis import RedisStore, parse_redis_url

MakeStore = Callable[[], CacheStore]


def key(name: object) -> str:
    return hashlib.sha256(str(name).encode()).hexdigest()


def reply(text: str = "hello", **fields: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "text": text,
        "model": "gpt-4o-mini-2024-07-18",
        "request_model": "gpt-4o-mini",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "cached_tokens": 0},
        "cost": 0.000012,
        "host": "api.openai.com",
    }
    value.update(fields)
    return value


def cache_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]


# ----- the servers and the stores ----------------------------------------------------------


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis_server.client()
    client.flushall()  # every test starts from an empty server
    client.close()
    return redis_server.url


@pytest.fixture(params=["disk", pytest.param("redis", marks=pytest.mark.redis)])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """A factory of clients of one store: each call is a new client on the same data."""
    if request.param == "disk":
        target = str(tmp_path / "cache")
    else:
        target = request.getfixturevalue("redis_url")
    made: list[CacheStore] = []

    def factory() -> CacheStore:
        made.append(open_store(target))
        return made[-1]

    yield factory
    for store in made:
        store.close()


@pytest.fixture
def store(make: MakeStore) -> CacheStore:
    return make()


# ----- the contract, on both backends ------------------------------------------------------


def test_round_trip(store: CacheStore) -> None:
    assert isinstance(store, CacheStore)
    assert store.get_many([key(1)]) == {}
    store.set_many([(key(1), reply("Bonjour ☀ {braces}")), (key(2), reply("two"))])
    found = store.get_many([key(1), key(2)])
    assert found[key(1)]["text"] == "Bonjour ☀ {braces}"
    assert found[key(1)]["usage"] == reply()["usage"]
    assert abs(found[key(1)]["created"] - time.time()) < 60  # filled in by the write
    assert found[key(2)]["text"] == "two"
    found[key(2)]["text"] = "changed by the caller"  # a fresh dict, not the store's own
    assert store.get_many([key(2)])[key(2)]["text"] == "two"
    store.set_many([(key(1), reply("replaced", created=1_000.5))])
    again = store.get_many([key(1)])[key(1)]
    assert (again["text"], again["created"]) == ("replaced", 1_000.5)  # a valid time is kept
    assert not store.disabled


def test_large_value_round_trip(store: CacheStore) -> None:
    text = "".join(f"line {i}: {'é' * (i % 7)}\n" for i in range(5_000))  # ~60 KB, compressed
    store.set_many([(key("big"), reply(text))])
    assert store.get_many([key("big")])[key("big")]["text"] == text


def test_batch_read_in_order_with_misses(store: CacheStore) -> None:
    store.set_many([(key(i), reply(f"r{i}")) for i in range(2_500)])  # more than a batch
    wanted = [key(2_400), key("miss"), key(7), key(1_200), key(7), key("other miss")]
    found = store.get_many(wanted)
    assert list(found) == [key(2_400), key(7), key(1_200)]  # asked order, misses left out
    assert [v["text"] for v in found.values()] == ["r2400", "r7", "r1200"]
    everything = store.get_many(key(i) for i in range(2_500))
    assert [v["text"] for v in everything.values()] == [f"r{i}" for i in range(2_500)]


def test_values_are_json_objects_only(store: CacheStore) -> None:
    with pytest.raises(TypeError, match="dict with a str 'text'"):
        store.set_many([(key(1), {"no": "text"})])
    with pytest.raises(TypeError, match="dict with a str 'text'"):
        store.set_many([(key(1), "just text")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="keys are str"):
        store.set_many([(b"0" * 64, reply())])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="sha256 hex"):
        store.get_many(["not a key"])
    with pytest.raises(ValueError, match="sha256 hex"):
        store.set_many([(key(1).upper(), reply(""))])  # checked even when not stored
    for bad in (reply(extra={1, 2}), reply(score=math.nan), reply(blob=b"bytes")):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            store.set_many([(key("fine"), reply("fine")), (key("bad"), bad)])
        messages = cache_warnings(record)
        assert len(messages) <= 1  # one warning per store, not one per bad value
        assert store.get_many([key("fine"), key("bad")]) == {}  # the batch is not written
    assert store.stats().entries == 0
    # Empty or failed replies are not stored (a fault, not an answer).
    store.set_many([(key(1), reply("  \n")), (key(2), reply("x", finish_reason="error"))])
    assert store.get_many([key(1), key(2)]) == {}
    assert not store.disabled


def test_non_json_value_warns_once(make: MakeStore) -> None:
    store = make()
    with pytest.warns(CacheWarning, match="not cached because it is not plain JSON"):
        store.set_many([(key(1), reply(extra=object()))])
    assert store.get_many([key(1)]) == {}


def test_delete(store: CacheStore) -> None:
    store.set_many([(key(i), reply(f"r{i}")) for i in range(5)])
    assert store.delete([key(1), key(3), key(3), key("absent")]) == 2
    assert list(store.get_many(key(i) for i in range(5))) == [key(0), key(2), key(4)]
    assert store.delete([]) == 0


def test_clear_by_filter(store: CacheStore) -> None:
    day = 86400.0
    now = time.time()
    store.set_many(
        [
            (key("old mini"), reply(created=now - 10 * day)),
            (key("new mini"), reply(created=now)),
            (key("old 4o"), reply(request_model="gpt-4o", created=now - 10 * day)),
            (key("new 4o"), reply(request_model="gpt-4o", created=now)),
            (key("answered by"), {"text": "t", "model": "gpt-4o", "created": now}),
        ]
    )
    with pytest.raises(ValueError, match="0 or more"):
        store.clear(older_than_days=math.nan)
    assert store.clear(model="gpt-4o", older_than_days=5) == 1
    assert key("old 4o") not in store.get_many([key("old 4o")])
    assert store.clear(older_than_days=5) == 1  # old mini
    assert store.clear(model="gpt-4o") == 2  # the request's model, else the one that answered
    assert list(store.get_many([key("new mini"), key("new 4o")])) == [key("new mini")]
    store.set_many([(key(i), reply()) for i in range(3)])
    assert store.clear() == 4
    assert store.stats().entries == 0


def test_stats(store: CacheStore) -> None:
    empty = store.stats()
    assert (empty.entries, empty.disabled) == (0, False)
    store.set_many([(key(i), reply("x" * 100)) for i in range(10)])
    stats = store.stats()
    assert stats.backend == store.backend in ("disk", "redis")
    assert stats.location == store.location
    assert stats.entries == 10
    assert stats.size_bytes >= 10 * 100
    if store.backend == "redis":  # the values' bytes (disk: its files, SQLite pages and all)
        assert empty.size_bytes == 0
        assert stats.size_bytes < 10 * 2_000


def test_two_clients_see_each_others_writes(make: MakeStore) -> None:
    first, second = make(), make()
    assert second.get_many([key(1)]) == {}
    first.set_many([(key(1), reply("from the first"))])
    assert second.get_many([key(1)])[key(1)]["text"] == "from the first"
    second.set_many([(key(2), reply("from the second"))])
    assert first.get_many([key(2)])[key(2)]["text"] == "from the second"
    assert second.delete([key(1)]) == 1
    assert first.get_many([key(1)]) == {}
    assert first.stats().entries == second.stats().entries == 1


def test_close_then_use_again(store: CacheStore) -> None:
    store.set_many([(key(1), reply())])
    store.close()
    assert store.get_many([key(1)])[key(1)]["text"] == "hello"  # reopened on use
    store.close()
    store.close()  # twice: harmless


@pytest.fixture(params=["disk", "redis"])
def unusable(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[CacheStore, str]:
    """A store that cannot work, and what its one warning must say."""
    if request.param == "disk":
        folder = tmp_path / "shared"
        folder.mkdir()
        folder.chmod(0o777)  # others could plant replies: refused
        return open_store(str(folder)), "can be written by everyone"
    password = "hunter2-" + "x" * 8
    return open_store(f"redis://:{password}@127.0.0.1:{free_port()}/0"), "cannot be reached"


def test_unusable_store_warns_once_and_does_nothing(unusable: tuple[CacheStore, str]) -> None:
    store, why = unusable
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        store.set_many([(key(1), reply())])
        assert store.get_many([key(1)]) == {}
        assert store.delete([key(1)]) == 0
        assert store.clear() == 0
        stats = store.stats()
        assert store.disabled
    messages = cache_warnings(record)
    assert len(messages) == 1, messages
    assert "\n" not in messages[0]
    assert "carrying on without a cache" in messages[0]
    assert why in messages[0]
    assert "hunter2" not in messages[0] + repr(store) + str(stats)
    assert (stats.entries, stats.disabled) == (0, True)
    # Bugs still raise when the store is off.
    with pytest.raises(TypeError):
        store.set_many([(key(1), {"no": "text"})])
    store.close()


# ----- Redis only ---------------------------------------------------------------------------


@pytest.mark.redis
def test_ttl_expiry(redis_server: RedisServer, redis_url: str) -> None:
    store = RedisStore(redis_url + "?ttl=1")
    assert store.stats().ttl == 1
    store.set_many([(key(1), reply())])
    raw = redis_server.client()
    assert 0 < raw.pttl(f"ipychat:{key(1)}") <= 1_000  # SET ... EX 1
    assert store.get_many([key(1)])[key(1)]["text"] == "hello"
    deadline = time.monotonic() + 10
    while store.get_many([key(1)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.get_many([key(1)]) == {}  # expired
    assert raw.exists(f"ipychat:{key(1)}") == 0
    no_ttl = RedisStore(redis_url)
    no_ttl.set_many([(key(2), reply())])
    assert raw.ttl(f"ipychat:{key(2)}") == -1  # no expiry unless asked
    raw.close()
    store.close()
    no_ttl.close()


@pytest.mark.redis
def test_prefix_namespaces_and_others_keys_are_left_alone(
    redis_server: RedisServer, redis_url: str
) -> None:
    ours, theirs = RedisStore(redis_url), RedisStore(redis_url + "?prefix=team-b:")
    raw = redis_server.client()
    foreign = {  # keys of other programs in the same database, some with our prefix
        "session:42": b"x",
        "ipychat:settings": b"{}",
        f"ipychat:{key(9)}:lock": b"1",
        f"ipychat:{key(9)[:63]}": b"{}",
        f"other:{key(9)}": b"{}",
        "ipychat:" + "z" * 64: b"{}",  # our length, not our shape
    }
    raw.mset(foreign)
    ours.set_many([(key(1), reply("ours"))])
    theirs.set_many([(key(1), reply("theirs"))])
    assert ours.get_many([key(1)])[key(1)]["text"] == "ours"
    assert theirs.get_many([key(1)])[key(1)]["text"] == "theirs"
    assert ours.stats().entries == theirs.stats().entries == 1
    assert ours.clear(model="gpt-4o-mini") == 1
    assert ours.clear() == 0
    assert theirs.get_many([key(1)])[key(1)]["text"] == "theirs"
    assert theirs.clear() == 1
    assert sorted(raw.keys()) == sorted(name.encode() for name in foreign)
    raw.close()
    ours.close()
    theirs.close()


@pytest.mark.redis
def test_a_value_ipychat_did_not_write_is_a_miss(redis_server: RedisServer, redis_url: str) -> None:
    import pickle

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("touch /tmp/ipychat-pwned",))

    raw = redis_server.client()
    planted = {
        key("pickle"): pickle.dumps(Exploit()),
        key("text"): b"plain text",
        key("list"): b"[1, 2]",
        key("no text"): b'{"model": "x"}',
        key("bomb"): zlib.compress(b" " * (65 << 20), 9),
        key("empty"): b'{"text": "  "}',  # an empty reply is a miss, and no warning
    }
    raw.mset({f"ipychat:{name}": value for name, value in planted.items()})
    store = RedisStore(redis_url)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.get_many(planted) == {}
        assert store.clear(older_than_days=0) == 0  # a filter never takes what it cannot read
    messages = cache_warnings(record)
    assert len(messages) == 1 and "did not write" in messages[0], messages
    assert not os.path.exists("/tmp/ipychat-pwned")
    store.set_many([(key("text"), reply("clean"))])  # the next reply replaces it
    assert store.get_many([key("text")])[key("text")]["text"] == "clean"
    assert store.clear() == len(planted)  # ours by name: clear() takes them all
    raw.close()
    store.close()


@pytest.mark.redis
def test_wrong_password_is_one_line_without_the_password(redis_server: RedisServer) -> None:
    wrong = "wrong-" + "p" * 12
    store = open_store(f"redis://:{wrong}@127.0.0.1:{redis_server.port}/0")
    with pytest.warns(CacheWarning) as record:
        assert store.get_many([key(1)]) == {}
    (message,) = cache_warnings(record.list)
    assert "refused the login" in message and "\n" not in message
    assert wrong not in message + repr(store) + store.location + str(store.stats())
    assert redis_server.password not in message


@pytest.mark.redis
def test_server_gone_mid_session(tmp_path: Path) -> None:
    if not os.path.exists(EXECUTABLE):
        pytest.skip("redis-server is not installed (apt install redis-server)")
    server = RedisServer(tmp_path).start()
    try:
        store = RedisStore(server.url, timeout=3)
        store.set_many([(key(1), reply())])
        assert store.get_many([key(1)])
    finally:
        server.stop()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.get_many([key(1)]) == {}
        store.set_many([(key(2), reply())])
        assert store.stats().disabled
    (message,) = cache_warnings(record)
    assert "carrying on without a cache" in message and "\n" not in message
    assert server.password not in message + repr(store)


@pytest.mark.redis
def test_full_server_refuses_writes_but_serves_reads(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url)
    store.set_many([(key(1), reply())])
    raw = redis_server.client()
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", 1)  # below what it uses: every write is refused
    try:
        with pytest.warns(CacheWarning, match="is full and refuses new entries"):
            store.set_many([(key(2), reply())])
        assert store.get_many([key(1), key(2)]).keys() == {key(1)}
        assert not store.disabled
    finally:
        raw.config_set("maxmemory", 0)
        raw.close()
        store.close()


@pytest.mark.redis
def test_tls(tmp_path: Path) -> None:
    if not os.path.exists(EXECUTABLE):
        pytest.skip("redis-server is not installed (apt install redis-server)")
    server = RedisServer(tmp_path, tls=True).start()
    try:
        store = open_store(f"{server.url}?ca={server.ca_file}")
        store.set_many([(key(1), reply("over TLS"))])
        assert store.get_many([key(1)])[key(1)]["text"] == "over TLS"
        store.close()
        untrusted = open_store(server.url)  # the system CAs do not know this certificate
        with pytest.warns(CacheWarning, match="cannot be reached.*(?i:certificate)"):
            assert untrusted.get_many([key(1)]) == {}
        plain = open_store(server.url.replace("rediss://", "redis://"))
        with pytest.warns(CacheWarning, match="carrying on without a cache"):
            assert plain.get_many([key(1)]) == {}
    finally:
        server.stop()


# ----- URLs and choosing a store ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", dict(host="localhost", port=6379, db=0, tls=False, ttl=None)),
        ("REDIS://h:7000/3", dict(host="h", port=7000, db=3)),
        ("rediss://cache.example:6380/1", dict(tls=True, port=6380, db=1)),
        ("redis://u:p%2F%40%23w@[::1]:1/0", dict(host="::1", username="u", password="p/@#w")),
        ("redis://:pw@h/?ttl=90", dict(password="pw", ttl=90, db=0)),
        ("redis://h?ttl=30m", dict(ttl=1800)),
        ("redis://h?ttl=7d&prefix=team:a", dict(ttl=7 * 86400, prefix="team:a")),
        ("rediss://h?ca=/etc/ca.pem", dict(ca_certs="/etc/ca.pem")),
    ],
)
def test_good_urls(url: str, expected: dict[str, Any]) -> None:
    target = parse_redis_url(url)
    for name, value in expected.items():
        assert getattr(target, name) == value, name


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://:SECRETPW@h:99999/0", "port"),
        ("redis://:SECRETPW@h:0/0", "port"),
        ("redis://:SECRETPW@/0", "no host"),
        ("redis://:SECRET/PW@h/0", "%2F"),
        ("redis://:SECRET#PW@h/0", "%23"),
        ("redis://:SECRET?PW@h/0", "%3F"),
        ("redis://:SECRETPW@h/x", "database"),
        ("redis://:SECRETPW@h/0?ttl=0", "ttl"),
        ("redis://:SECRETPW@h/0?ttl=soon", "ttl"),
        ("redis://:SECRETPW@h/0?ttl=1&ttl=2", "twice"),
        ("redis://:SECRETPW@h/0?prefix=", "prefix"),
        ("redis://:SECRETPW@h/0?db=2", "unknown option 'db'"),
        ("redis://:SECRETPW@h/0?ca=/x", "unknown option 'ca'"),
        ("redis://:SECRETPW@[::1/0", "not a URL"),
        ("memcached://:SECRETPW@h", "not in memcached://"),
    ],
)
def test_bad_urls_are_one_line_without_the_password(url: str, why: str) -> None:
    with pytest.raises(CacheURLError) as caught:
        open_store(url)
    message = str(caught.value)
    assert why in message
    assert "\n" not in message and "SECRET" not in message and "PW" not in message
    # No chained exception (urllib's, say) to carry the URL into a traceback.
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_password_is_never_shown() -> None:
    store = RedisStore("redis://alice:s3cr3t-pw@127.0.0.1:1/2?ttl=1h&prefix=p:")
    target = parse_redis_url("redis://alice:s3cr3t-pw@127.0.0.1:1/2?ttl=1h&prefix=p:")
    with pytest.warns(CacheWarning) as record:  # nothing listens on port 1
        stats = store.stats()
    shown = repr(store) + store.location + repr(target) + target.url + str(stats)
    assert "s3cr3t" not in shown + str(record.list[0].message)
    assert store.location == "redis://alice:***@127.0.0.1:1/2?prefix=p:&ttl=3600"


def test_open_store_chooses_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPYCHAT_CACHE_URL", raising=False)
    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(tmp_path / "default"))
    assert isinstance(open_store(), DiskStore)
    assert open_store().location == str(tmp_path / "default")
    assert open_store(tmp_path / "a").location == str(tmp_path / "a")
    assert open_store(f"file://{tmp_path}/b").location == str(tmp_path / "b")
    monkeypatch.setenv("IPYCHAT_CACHE_URL", "redis://:pw@cache.internal:6380/4")
    chosen = open_store()
    assert isinstance(chosen, RedisStore)
    assert chosen.location == "redis://:***@cache.internal:6380/4"
    assert isinstance(open_store(tmp_path / "c"), DiskStore)  # given beats the environment
    monkeypatch.setenv("IPYCHAT_CACHE_URL", "   ")
    assert isinstance(open_store(), DiskStore)


def test_a_password_in_a_server_error_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis's own error for a disabled command quotes its arguments ("ERR unknown command
    'AUTH', with args beginning with: 'the password'", src/server.c processCommand), so
    what a server answers is masked before it is shown."""
    import redis

    password = "quoted-" + "q" * 10

    def ping(self: redis.Redis) -> bool:
        raise redis.ResponseError(
            f"unknown command 'AUTH', with args beginning with: '{password}' "
        )

    monkeypatch.setattr(redis.Redis, "ping", ping)
    store = RedisStore(f"redis://:{password}@127.0.0.1:6379/0")
    with pytest.warns(CacheWarning) as record:
        assert store.get_many([key(1)]) == {}
    (message,) = cache_warnings(record.list)
    assert password not in message
    assert "with args beginning with: '***'" in message


def test_disk_size_limit_evicts(tmp_path: Path) -> None:
    store = open_store(tmp_path / "cache", size_limit=1_000_000)
    for i in range(40):  # random hex compresses to ~half: ~50 KB files, 2 MB in all
        store.set_many([(key(i), reply(os.urandom(50_000).hex()))])
    stats = store.stats()
    assert stats.entries < 40  # past the limit: the least recently used went
    assert stats.size_bytes <= 1_000_000 + 60_000
    assert key(39) in store.get_many([key(39)])
    store.close()
