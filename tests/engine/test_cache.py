"""ipychat.engine.cache: JSON-only storage, pickle refusal, LRU, clearing, sharing, and failing safe.

Every test uses its own tmp_path directory, never the user's ~/.cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import sqlite3
import stat
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import diskcache
import pytest

from ipychat.engine.cache import (
    CacheStats,
    CacheWarning,
    JSONOnlyDisk,
    ResponseCache,
    default_cache_dir,
)

MODE_RAW, MODE_BINARY, MODE_PICKLE = 1, 2, 4  # diskcache.core's storage modes


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


def rows(directory: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(directory / "cache.db") as con:
        return con.execute(
            "SELECT key, raw, mode, filename, value, tag, store_time FROM Cache ORDER BY rowid"
        ).fetchall()


@pytest.fixture
def cache(tmp_path: Path) -> ResponseCache:
    rc = ResponseCache(tmp_path / "cache")
    yield rc
    rc.close()


# ----- the basics --------------------------------------------------------------------------


def test_miss_set_hit_round_trip(cache: ResponseCache) -> None:
    assert cache.get(key(1)) is None
    cache.set(key(1), reply("Bonjour ☀ {braces}"))
    hit = cache.get(key(1))
    assert hit is not None
    assert hit["text"] == "Bonjour ☀ {braces}"
    assert hit["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "cached_tokens": 0}
    assert abs(hit["created"] - time.time()) < 60  # filled in by set
    assert cache.get(key(2)) is None
    cache.set(key(1), reply("replaced"))
    assert cache.get(key(1))["text"] == "replaced"  # type: ignore[index]


@pytest.mark.parametrize("created", [None, "yesterday", float("nan"), -5, 10**400, 1e300])
def test_a_missing_or_absurd_created_time_becomes_now(cache: ResponseCache, created: Any) -> None:
    cache.set(key(1), reply(created=created))
    assert abs(cache.get(key(1))["created"] - time.time()) < 60  # type: ignore[index]
    assert cache.clear(older_than_days=1) == 0


def test_get_many_returns_only_hits_and_counts_every_row(cache: ResponseCache) -> None:
    for i in range(1200):  # more than one SELECT chunk
        cache.set(key(i), reply(f"r{i}"))
    wanted = [key(i) for i in range(1100, 1300)] + [key(1100)]  # a duplicate row
    found = cache.get_many(wanted)
    assert set(found) == {key(i) for i in range(1100, 1200)}
    assert found[key(1150)]["text"] == "r1150"
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (101, 100)


def test_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(tmp_path / "from-env"))
    assert ResponseCache().directory == tmp_path / "from-env"
    monkeypatch.delenv("IPYCHAT_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "ipychat"


def test_keys_and_values_are_checked(cache: ResponseCache) -> None:
    with pytest.raises(TypeError):
        cache.get(("not", "a", "str"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cache.set(key(1), {"no": "text"})
    with pytest.raises(TypeError):
        cache.set(b"bytes key", reply())  # type: ignore[arg-type]
    # A value JSON cannot encode is a bug upstream; it must not cost the user the reply.
    with pytest.warns(CacheWarning, match="not plain JSON"):
        cache.set(key(2), reply(extra=object()))
    assert cache.get(key(2)) is None
    assert not cache.disabled


# ----- JSON only, never pickle -------------------------------------------------------------


def test_values_are_stored_as_json(cache: ResponseCache) -> None:
    small = reply("short")
    large = reply("".join(f"{i:x}" for i in range(40_000)))  # > 32 KiB even compressed
    cache.set(key("small"), small)
    cache.set(key("large"), large)
    stored = {row[0]: row for row in rows(cache.directory)}
    assert set(stored) == {key("small"), key("large")}
    for k, raw, mode, _filename, _value, tag, _ in stored.values():
        assert isinstance(k, str) and raw == 1  # the key is native text, not a pickle
        assert mode in (MODE_RAW, MODE_BINARY)
        assert tag == "gpt-4o-mini"  # the requested model, for clear(model=)

    _, _, mode, filename, value, _, _ = stored[key("small")]
    assert mode == MODE_RAW and filename is None
    assert value.startswith(b"{")  # readable JSON right in the row
    assert json.loads(value)["text"] == "short"

    _, _, mode, filename, value, _, _ = stored[key("large")]
    assert mode == MODE_BINARY and value is None
    data = (cache.directory / filename).read_bytes()
    assert not data.startswith(b"\x80")  # no pickle protocol header
    assert json.loads(zlib.decompress(data))["text"] == large["text"]
    assert cache.get(key("large"))["text"] == large["text"]  # type: ignore[index]


def test_the_disk_refuses_to_pickle(tmp_path: Path) -> None:
    disk = JSONOnlyDisk(str(tmp_path))
    with pytest.raises(TypeError):
        disk.put(("tuple", "key"))  # diskcache would pickle it
    with pytest.raises(TypeError):
        disk.store({1, 2}, False)  # so would this


class Exploit:
    """Unpickling this runs code: it creates `marker` (padded to land in a file if asked)."""

    def __init__(self, marker: Path, pad: int = 0) -> None:
        self.marker, self.pad = marker, pad

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()  # {'x' * self.pad}",))


@pytest.mark.parametrize("pad", [0, 100_000], ids=["in-database", "in-file"])
def test_a_planted_pickle_is_refused_and_never_run(tmp_path: Path, pad: int) -> None:
    directory, marker = tmp_path / "cache", tmp_path / "pwned"
    with diskcache.Cache(str(directory)) as plain:  # default Disk: pickles
        plain.set(key("evil"), Exploit(marker, pad))
    assert [row[2] for row in rows(directory)] == [MODE_PICKLE]

    cache = ResponseCache(directory)
    with pytest.warns(CacheWarning, match="did not write") as caught:
        assert cache.get(key("evil")) is None
        assert cache.get_many([key("evil")]) == {}
        assert cache.get(key("evil")) is None
    assert len([w for w in caught if w.category is CacheWarning]) == 1
    assert not marker.exists()
    assert not cache.disabled

    cache.set(key("evil"), reply("clean"))  # the next reply replaces the planted row
    assert cache.get(key("evil"))["text"] == "clean"  # type: ignore[index]
    assert [row[2] for row in rows(directory)] == [MODE_RAW]
    cache.close()

    # Control: the payload was live; plain diskcache would have run it.
    with diskcache.Cache(str(tmp_path / "control")) as plain:
        plain.set("k", Exploit(marker, pad))
        plain.get("k")
    assert marker.exists()


@pytest.mark.parametrize(
    "planted",
    [b"\x78\x9c garbage", b"{not json", b'{"no_text": 1}', b"[1, 2]", 42, "plain text"],
)
def test_foreign_values_are_misses(tmp_path: Path, planted: object) -> None:
    directory = tmp_path / "cache"
    with diskcache.Cache(str(directory)) as plain:
        plain.set(key("x"), planted)
    cache = ResponseCache(directory)
    with pytest.warns(CacheWarning, match="did not write"):
        assert cache.get(key("x")) is None
    assert not cache.disabled
    cache.close()


def test_a_decompression_bomb_is_a_miss(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    with diskcache.Cache(str(directory)) as plain:
        plain.set(key("bomb"), zlib.compress(b" " * (65 << 20), 9))  # ~65 KB -> 65 MiB
    cache = ResponseCache(directory)
    with pytest.warns(CacheWarning, match="larger than any reply"):
        assert cache.get(key("bomb")) is None
    cache.close()


def test_pickled_keys_of_others_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    with diskcache.Cache(str(directory)) as plain:
        plain.set(("tuple", "key"), "x")  # raw = 0: the key is a pickle
    cache = ResponseCache(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(key("x")) is None
        assert cache.stats().entries == 1
        assert cache.clear() == 1
    cache.close()


# ----- the directory -----------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_new_directory_is_private(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen it
    try:
        cache = ResponseCache(tmp_path / "a" / "cache")
        cache.set(key(1), reply())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "cache").stat().st_mode) == 0o700
    cache.close()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_an_open_existing_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(0o755)
    cache = ResponseCache(directory)
    assert not cache.disabled
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    cache.close()


# ----- eviction and clearing ---------------------------------------------------------------


def test_least_recently_used_entries_are_evicted(tmp_path: Path) -> None:
    # Random hex compresses to ~half: each entry is a ~50 KB file; 3 MB holds ~60 of them.
    cache = ResponseCache(tmp_path / "cache", size_limit=3_000_000)

    def big(i: int) -> dict[str, Any]:
        return reply(os.urandom(50_000).hex())

    for i in range(40):
        cache.set(key(i), big(i))
    assert cache.stats().entries == 40  # below the limit: nothing evicted yet
    for i in (0, 5):  # read two old entries: now they are recently used
        assert cache.get(key(i)) is not None
    for i in range(40, 75):
        cache.set(key(i), big(i))

    stats = cache.stats()
    assert stats.entries < 75  # something went
    assert stats.size_bytes <= 3_000_000 + 60_000  # at most one write over the limit
    present = {i for i in range(75) if cache.get(key(i)) is not None}
    assert {0, 5} <= present  # read recently: kept
    assert 1 not in present  # oldest untouched: gone first
    assert set(range(60, 75)) <= present  # newest: kept
    evicted = set(range(75)) - present
    assert max(evicted) < min(present - {0, 5})  # strictly oldest-first among untouched
    cache.close()


def test_clear_all_by_age_by_model(cache: ResponseCache) -> None:
    day = 86400.0
    now = time.time()
    cache.set(key("old-a"), reply(created=now - 10 * day, request_model="a"))
    cache.set(key("old-b"), reply(created=now - 10 * day, request_model="b"))
    cache.set(key("mid-a"), reply(created=now - 3 * day, request_model="a"))
    cache.set(key("new-a"), reply(request_model="a"))
    cache.set(key("new-m"), {"text": "t", "model": "m"})  # no request_model: model is the tag
    with pytest.raises(ValueError):
        cache.clear(older_than_days=-1)

    assert cache.clear(older_than_days=5, model="b") == 1
    assert cache.get(key("old-b")) is None and cache.get(key("old-a")) is not None
    assert cache.clear(older_than_days=5) == 1  # old-a
    assert cache.clear(older_than_days=5) == 0
    assert cache.clear(model="m") == 1
    assert cache.clear(model="a") == 2
    assert cache.stats().entries == 0

    for i in range(250):  # more than one delete batch
        cache.set(key(i), reply(created=now - 2 * day))
    assert cache.clear(older_than_days=1) == 250
    for i in range(5):
        cache.set(key(i), reply())
    assert cache.clear() == 5
    assert cache.stats().entries == 0


def test_clear_removes_files_of_large_entries(cache: ResponseCache) -> None:
    cache.set(key("large"), reply(os.urandom(60_000).hex(), created=time.time() - 86400 * 9))
    files = [p for p in cache.directory.rglob("*.val")]
    assert len(files) == 1
    assert cache.clear(older_than_days=7) == 1
    assert not files[0].exists()


def test_stats_count_this_process(cache: ResponseCache) -> None:
    empty = cache.stats()
    assert isinstance(empty, CacheStats)
    assert (empty.entries, empty.hits, empty.misses, empty.writes, empty.saved) == (0, 0, 0, 0, 0)
    cache.set(key(1), reply())
    cache.set(key(2), reply())
    cache.get(key(1))
    cache.get(key(1))
    cache.get(key(3))
    cache.record_hit(0.25)
    cache.record_hit(None)  # unknown price: counts nothing
    cache.record_hit(0.5)
    stats = cache.stats()
    assert (stats.entries, stats.hits, stats.misses, stats.writes) == (2, 2, 1, 2)
    assert stats.saved == pytest.approx(0.75)
    assert stats.size_bytes > 0
    assert stats.directory == str(cache.directory) and not stats.disabled
    # Another process's view (a second handle) shares entries, not counters.
    other = ResponseCache(cache.directory)
    assert other.stats().entries == 2 and other.stats().hits == 0
    other.close()


def test_close_then_use_again(cache: ResponseCache) -> None:
    cache.set(key(1), reply())
    cache.close()
    cache.close()
    assert cache.get(key(1)) is not None


# ----- sharing: processes, threads, fork -----------------------------------------------------


def _process_worker(directory: str, me: int, other: int, barrier: Any, results: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cache = ResponseCache(directory)
            barrier.wait(60)
            seen = 0
            for i in range(500):
                cache.set(key((me, i)), reply(f"{me}/{i}"))
                seen += cache.get(key((other, i))) is not None
            barrier.wait(60)  # both have written everything
            found = cache.get_many([key((w, i)) for w in (me, other) for i in range(500)])
            right = all(
                found[key((w, i))]["text"] == f"{w}/{i}" for (w, i) in [(me, 7), (other, 9)]
            )
            cache.close()
            results.put((me, "ok", len(found), right, seen, [str(w.message) for w in caught]))
        except BaseException as exc:
            results.put((me, "error", repr(exc), False, 0, [str(w.message) for w in caught]))


@pytest.mark.slow
def test_two_processes_write_and_read_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    directory = str(tmp_path / "cache")
    procs = [
        ctx.Process(target=_process_worker, args=(directory, me, 1 - me, barrier, results))
        for me in (0, 1)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = sorted(results.get(timeout=180) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    for me, status, found, right, _seen, caught in outcomes:
        assert status == "ok", (me, found, caught)
        assert (found, right, caught) == (1000, True, [])
    cache = ResponseCache(directory)
    assert cache.stats().entries == 1000
    cache.close()


def test_many_threads_share_one_cache(cache: ResponseCache) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(150):
                cache.set(key((t, i)), reply(f"{t}/{i}"))
                assert cache.get(key((t, i)))["text"] == f"{t}/{i}"  # type: ignore[index]
                cache.get(key(((t + 1) % 8, i)))  # maybe not written yet: either is fine
            cache.get_many([key((t, i)) for i in range(150)])
        except BaseException as exc:
            errors.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert errors == []
    assert not cache.disabled
    stats = cache.stats()
    assert stats.entries == 8 * 150 and stats.writes == 8 * 150
    assert stats.hits >= 8 * 150 * 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(cache: ResponseCache) -> None:
    cache.set(key("parent"), reply("from parent"))
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads alive
        child = ctx.Process(target=_forked_child, args=(cache,))
        child.start()
    child.join(60)
    assert child.exitcode == 0
    assert cache.get(key("child"))["text"] == "from child"  # type: ignore[index]


def _forked_child(cache: ResponseCache) -> None:
    assert cache.get(key("parent"))["text"] == "from parent"  # type: ignore[index]
    cache.set(key("child"), reply("from child"))
    assert not cache.disabled


def test_opening_waits_out_another_kernel_opening_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # diskcache creates its tag index without retrying a lock; two kernels starting on a
    # fresh directory at once made one of them give up (seen 1 in 60 runs of the test below).
    create = diskcache.Cache.create_tag_index
    calls = []

    def busy_once(self: diskcache.Cache) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        create(self)

    monkeypatch.setattr(diskcache.Cache, "create_tag_index", busy_once)
    cache = ResponseCache(tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.set(key(1), reply())
        assert cache.get(key(1)) is not None
    assert len(calls) == 2
    cache.close()


def test_lock_contention_skips_a_write_and_keeps_the_cache(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache", timeout=0.05)
    cache.set(key(1), reply("before"))
    other = sqlite3.connect(tmp_path / "cache" / "cache.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another kernel holds the write lock
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cache.set(key(2), reply("skipped"))  # gives up after the timeout, quietly
            assert cache.get(key(1))["text"] == "before"  # type: ignore[index]  # WAL: reads go on
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not cache.disabled
    assert cache.get(key(2)) is None
    cache.set(key(2), reply("after"))
    assert cache.get(key(2))["text"] == "after"  # type: ignore[index]
    cache.close()


# ----- failing safe ------------------------------------------------------------------------


def exercise(cache: ResponseCache) -> None:
    """Everything a session does; none of it may raise."""
    assert cache.get(key(1)) is None
    assert cache.get_many([key(1), key(2)]) == {}
    cache.set(key(1), reply())
    assert cache.get(key(1)) is None
    cache.record_hit(0.1)
    assert cache.clear() == 0
    assert cache.clear(older_than_days=1, model="m") == 0
    stats = cache.stats()
    assert stats.disabled and stats.entries == 0
    cache.close()


def one_warning(caught: list[warnings.WarningMessage], directory: Path) -> str:
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1, messages
    message = messages[0]
    assert str(directory) in message and "\n" not in message
    assert "without a cache" in message and "IPYCHAT_CACHE_DIR" in message
    return message


def test_garbage_in_a_fresh_database_file(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / "cache.db").write_bytes(b"this is not a database " * 500)
    cache = ResponseCache(directory)
    with pytest.warns(CacheWarning) as caught:
        assert cache.disabled
        exercise(cache)
        exercise(cache)
    assert "not a database" in one_warning(caught.list, directory)


def test_a_working_cache_whose_database_was_overwritten(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    good = ResponseCache(directory)
    for i in range(50):
        good.set(key(i), reply())
    good.close()
    with open(directory / "cache.db", "r+b") as db:
        db.write(os.urandom(4096))  # the header and first page
    for extra in ("cache.db-wal", "cache.db-shm"):
        (directory / extra).unlink(missing_ok=True)
    cache = ResponseCache(directory)
    with pytest.warns(CacheWarning) as caught:
        exercise(cache)
    one_warning(caught.list, directory)


def test_a_file_where_the_directory_should_be(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.write_text("I am a file")
    cache = ResponseCache(path)
    with pytest.warns(CacheWarning) as caught:
        exercise(cache)
    one_warning(caught.list, path)
    assert path.read_text() == "I am a file"


def test_a_directory_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "cache"
    cache = ResponseCache(path)
    with pytest.warns(CacheWarning) as caught:
        exercise(cache)
    one_warning(caught.list, path)


def test_a_database_error_at_run_time_disables_once(
    cache: ResponseCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.set(key(1), reply())
    assert cache.get(key(1)) is not None

    def broken(self: object) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(diskcache.Cache, "_sql", property(broken))
    with pytest.warns(CacheWarning) as caught:
        assert cache.get(key(1)) is None
        assert cache.disabled
        exercise(cache)
    assert "malformed" in one_warning(caught.list, cache.directory)


def test_set_many_writes_every_entry_in_one_go(cache: ResponseCache) -> None:
    cache.set_many([(key(i), reply(f"r{i}", request_model="m")) for i in range(100)])
    assert cache.stats().entries == 100 and cache.stats().writes == 100
    assert cache.get(key(42))["text"] == "r42"
    cache.set_many([])  # nothing to do is fine
    with pytest.raises(TypeError):
        cache.set_many([(key(1), {"no": "text"})])
    assert cache.clear(model="m") == 100


# ----- rows naming files outside the cache (issue 15, item 2) ------------------------------


def _big(text: str = "planted") -> dict[str, Any]:
    """A reply large enough to be stored as a value file (diskcache: 32 KiB and up)."""
    return reply(text + " " + os.urandom(40_000).hex())


def _point_row_at(directory: Path, filename: str) -> None:
    """What someone who could write cache.db would do: make a row name another file."""
    with sqlite3.connect(directory / "cache.db") as con:
        con.execute("UPDATE Cache SET filename = ?, mode = ?", (filename, MODE_BINARY))


def _outside(tmp_path: Path) -> Path:
    """A file outside the cache that holds a valid reply, in its own folder."""
    folder = tmp_path / "elsewhere" / "private"
    folder.mkdir(parents=True)
    target = folder / "secret.val"
    target.write_bytes(json.dumps({"text": "served from outside the cache"}).encode())
    return target


def _hostile_names(cache_dir: Path, target: Path) -> dict[str, str]:
    """Row file names that lead out of the cache, planted next to a real entry's file."""
    (real,) = [p for p in cache_dir.rglob("*.val")]
    rel = real.relative_to(cache_dir)
    link = rel.parent / ("0" * 28 + ".val")  # a valid-looking name that is a symlink
    (cache_dir / link).symlink_to(target)
    linked_dir = cache_dir / "ee"  # a valid-looking folder that is a symlink
    linked_dir.symlink_to(target.parent, target_is_directory=True)
    (target.parent / "ff").mkdir()
    (target.parent / "ff" / ("1" * 28 + ".val")).write_bytes(target.read_bytes())
    return {
        "absolute": str(target),
        "dotdot": os.path.join("..", "elsewhere", "private", "secret.val"),
        "deep dotdot": os.path.join(
            rel.parent, "..", "..", "..", "elsewhere", "private", "secret.val"
        ),
        "symlinked file": str(link),
        "symlinked folder": os.path.join("ee", "ff", "1" * 28 + ".val"),
    }


@pytest.mark.parametrize(
    "how", ["absolute", "dotdot", "deep dotdot", "symlinked file", "symlinked folder"]
)
def test_a_row_naming_a_file_outside_is_a_miss_and_clear_deletes_nothing_outside(
    tmp_path: Path, how: str
) -> None:
    cache_dir = tmp_path / "cache"
    cache = ResponseCache(cache_dir)
    cache.set(key(1), _big())
    target = _outside(tmp_path)
    name = _hostile_names(cache_dir, target)[how]
    before = {p: p.read_bytes() for p in (tmp_path / "elsewhere").rglob("*") if p.is_file()}
    _point_row_at(cache_dir, name)
    with pytest.warns(CacheWarning, match="did not write"):
        assert cache.get(key(1)) is None  # a miss, not the planted text
    assert cache.get_many([key(1)]) == {}
    assert cache.clear() == 1  # the row goes; the file it named stays
    after = {p: p.read_bytes() for p in (tmp_path / "elsewhere").rglob("*") if p.is_file()}
    assert after == before and target.parent.is_dir()
    cache.close()


@pytest.mark.parametrize("clear", ["all", "older", "model", "evict"])
def test_no_way_of_clearing_follows_a_planted_row_out(tmp_path: Path, clear: str) -> None:
    cache_dir = tmp_path / "cache"
    cache = ResponseCache(cache_dir, size_limit=200_000)
    cache.set(key(1), _big() | {"created": time.time() - 10 * 86400, "request_model": "m"})
    target = _outside(tmp_path)
    _point_row_at(cache_dir, str(target))
    if clear == "all":
        assert cache.clear() == 1
    elif clear == "older":
        assert cache.clear(older_than_days=1) == 1
    elif clear == "model":
        assert cache.clear(model="m") == 1
    else:  # eviction: writing past size_limit culls the least recently used row
        for i in range(2, 12):
            cache.set(key(i), _big(f"r{i}"))
        assert cache.get(key(1)) is None
    assert target.is_file() and target.parent.is_dir()
    cache.close()


def test_a_fifo_named_by_a_row_is_a_miss_not_a_hang(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = ResponseCache(cache_dir)
    cache.set(key(1), _big())
    (real,) = [p for p in cache_dir.rglob("*.val")]
    real.unlink()
    os.mkfifo(real)  # a valid name, inside the cache: still not a file to read
    outside_fifo = tmp_path / "fifo"
    os.mkfifo(outside_fifo)
    for name in (str(real.relative_to(cache_dir)), str(outside_fifo)):
        _point_row_at(cache_dir, name)
        result: list[Any] = []

        def read(into: list[Any] = result) -> None:
            into.append(cache.get(key(1)))

        reader = threading.Thread(target=read, daemon=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheWarning)
            reader.start()
            reader.join(5)
        if reader.is_alive():  # unblock the reader before failing
            os.close(os.open(name if os.path.isabs(name) else cache_dir / name, os.O_WRONLY))
            pytest.fail(f"reading a row naming the FIFO {name} hangs")
        assert result == [None]
    assert cache.clear() == 1
    assert stat.S_ISFIFO(os.lstat(outside_fifo).st_mode)
    cache.close()


def test_a_value_file_too_large_for_any_reply_is_not_read(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = ResponseCache(cache_dir)
    cache.set(key(1), _big())
    (real,) = [p for p in cache_dir.rglob("*.val")]
    with open(real, "r+b") as f:
        f.truncate(65 << 20)  # sparse: larger than the 64 MiB cap, costs no disk
    with pytest.warns(CacheWarning, match="larger than"):
        assert cache.get(key(1)) is None
    cache.close()


def test_large_entries_still_round_trip_and_clear_their_folders(cache: ResponseCache) -> None:
    big = _big("mine")
    cache.set(key(1), big)
    assert cache.get(key(1)) == big | {"created": cache.get(key(1))["created"]}
    (real,) = [p for p in cache.directory.rglob("*.val")]
    assert cache.clear() == 1
    assert not real.exists() and not real.parent.exists() and not real.parent.parent.exists()
    assert cache.directory.is_dir()


# ----- whose directory (issue 15, item 3) ----------------------------------------------------

NOBODY = 65534


def _foreign(path: Path, mode: int = 0o755) -> Path:
    """A folder that belongs to another user (chown needs root; otherwise use `/`'s owner)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    else:  # pragma: no cover - the suite runs as root in CI; a non-root run uses root's /
        return Path("/")
    path.chmod(mode)
    return path


def _refused(cache: ResponseCache, *needles: str) -> str:
    with pytest.warns(CacheWarning) as caught:
        assert cache.disabled
        cache.set(key(1), reply())
        assert cache.get(key(1)) is None and cache.get_many([key(1)]) == {}
        assert cache.clear() == 0
    messages = [str(w.message) for w in caught.list if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1, messages
    (message,) = messages
    assert "\n" not in message and "without a cache" in message
    for needle in needles:
        assert needle in message
    assert cache.stats().disabled
    return message


needs_posix = pytest.mark.skipif(os.name != "posix", reason="POSIX owners and modes")


def _shared_group() -> int:
    """A group of ours that has other members too (root may use nobody's group)."""
    import grp
    import pwd

    candidates = [NOBODY] if os.geteuid() == 0 else os.getgroups()
    for gid in candidates:
        members = {p.pw_uid for p in pwd.getpwall() if p.pw_gid == gid}
        with contextlib.suppress(KeyError):
            members |= {pwd.getpwnam(n).pw_uid for n in grp.getgrgid(gid).gr_mem}
        if members - {os.geteuid()}:
            return gid
    pytest.fail("this test needs a group with other members (or root)")


@needs_posix
def test_group_writable_is_fine_when_the_group_is_only_us(tmp_path: Path) -> None:
    # Ubuntu's default umask 002 with user private groups: every folder a user makes is
    # group-writable, by a group whose only member is that user (Debian's OpenSSH allows it).
    import grp
    import pwd

    gid = os.getegid()
    others = {p.pw_uid for p in pwd.getpwall() if p.pw_gid == gid} - {os.geteuid()}
    if others or set(grp.getgrgid(gid).gr_mem) - {pwd.getpwuid(os.geteuid()).pw_name}:
        pytest.fail("this test needs our primary group to be private (root's is)")
    path = tmp_path / "cache"
    path.mkdir()
    path.chmod(0o775)
    cache = ResponseCache(path)
    cache.set(key(1), reply())
    assert not cache.disabled and cache.get(key(1)) is not None
    cache.close()


@needs_posix
def test_a_directory_of_another_user_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    other = _foreign(tmp_path / "theirs", 0o777)
    planted = ResponseCache(other)  # what they wrote there (as root we can, to plant)
    if os.geteuid() == 0:
        os.chown(other, os.geteuid(), os.geteuid())
        other.chmod(0o700)
        planted.set(key(1), reply("planted reply"))
        planted.close()
        os.chown(other, NOBODY, NOBODY)
        other.chmod(0o777)
    before = sorted(p.name for p in other.iterdir())
    message = _refused(ResponseCache(other), str(other), "belongs to", "IPYCHAT_CACHE_DIR")
    assert "chmod" not in message  # not ours: the fix is another folder
    assert sorted(p.name for p in other.iterdir()) == before  # nothing written or read


@needs_posix
@pytest.mark.parametrize(
    "mode, who", [(0o777, "everyone"), (0o770, "its group"), (0o720, "its group")]
)
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    path = tmp_path / "cache"
    path.mkdir()
    os.chown(path, -1, _shared_group())
    path.chmod(mode)
    _refused(ResponseCache(path), str(path), who, f"chmod 700 {path}")
    assert stat.S_IMODE(path.stat().st_mode) == mode  # refused, not silently "fixed"
    assert not (path / "cache.db").exists()


@needs_posix
def test_a_symlink_to_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    other = _foreign(tmp_path / "theirs", 0o777)
    link = tmp_path / "home" / ".cache" / "ipychat"
    link.parent.mkdir(parents=True)
    link.symlink_to(other, target_is_directory=True)
    _refused(ResponseCache(link), str(link), str(other.resolve()), "belongs to")


@needs_posix
def test_ipychat_cache_dir_pointing_at_another_users_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _foreign(tmp_path / "theirs", 0o755)
    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(other))
    _refused(ResponseCache(), str(other), "belongs to")


@needs_posix
def test_a_directory_inside_a_folder_another_user_controls_is_refused(tmp_path: Path) -> None:
    theirs = _foreign(tmp_path / "theirs", 0o755)
    if theirs == Path("/"):  # pragma: no cover - not root: no folder of another user to test
        pytest.fail("this test needs root to make a folder of another user")
    mine = theirs / "mine"
    mine.mkdir(mode=0o700)  # root made it; it stays ours, its parent is theirs
    _refused(ResponseCache(mine), str(mine), f"inside {theirs}")


@needs_posix
def test_folders_above_everyone_can_write_are_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    _refused(ResponseCache(shared / "mine"), f"inside {shared}", "everyone can write")
    shared.chmod(0o1777)  # sticky, like /tmp: nobody else can rename or delete our folder
    cache = ResponseCache(shared / "mine")
    cache.set(key(1), reply())
    assert cache.get(key(1)) is not None
    cache.close()


@needs_posix
def test_group_writable_folders_above_are_accepted(tmp_path: Path) -> None:
    # Jupyter's docker-stacks images make $HOME group-writable (fix-permissions): refusing
    # that would turn the cache off for most hosted notebooks.
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o2775)
    cache = ResponseCache(home / ".cache" / "ipychat")
    cache.set(key(1), reply())
    assert not cache.disabled and cache.get(key(1)) is not None
    cache.close()


@needs_posix
@pytest.mark.parametrize("what", ["symlink", "foreign"])
def test_a_database_file_that_is_a_link_or_not_ours_is_refused(tmp_path: Path, what: str) -> None:
    path = tmp_path / "cache"
    path.mkdir(mode=0o700)
    db = path / "cache.db"
    elsewhere = tmp_path / "elsewhere.db"
    elsewhere.write_bytes(b"")
    if what == "symlink":
        db.symlink_to(elsewhere)
        _refused(ResponseCache(path), "symbolic link")
    else:
        if os.geteuid() != 0:  # pragma: no cover
            pytest.fail("this test needs root to make a file of another user")
        db.write_bytes(b"")
        os.chown(db, NOBODY, NOBODY)
        _refused(ResponseCache(path), "belongs to another user")
    assert elsewhere.read_bytes() == b""


@needs_posix
@pytest.mark.parametrize("umask", [0, 0o022, 0o277])
def test_everything_created_is_0600_and_folders_0700_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    old = os.umask(umask)
    try:
        cache = ResponseCache(tmp_path / "new" / "cache")
        cache.set(key(1), reply())
        cache.set(key(2), _big())  # a value file, in two new folders
        assert cache.get(key(2)) is not None
        modes = {p: p.lstat().st_mode for p in (tmp_path / "new").rglob("*")}
    finally:
        os.umask(old)
        with contextlib.suppress(NameError):
            cache.close()
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    files = {p.name for p, mode in modes.items() if stat.S_ISREG(mode)}
    assert {"cache.db", "cache.db-wal", "cache.db-shm"} <= files
    assert any(name.endswith(".val") for name in files)
    for path, mode in modes.items():
        wanted = 0o700 if stat.S_ISDIR(mode) else 0o600
        assert stat.S_IMODE(mode) == wanted, (path, oct(mode))


@needs_posix
def test_a_database_an_older_version_left_readable_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    cache = ResponseCache(path)
    cache.set(key(1), reply())
    cache.close()
    for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
        if (path / name).exists():
            (path / name).chmod(0o644)
    cache = ResponseCache(path)
    assert cache.get(key(1)) is not None
    assert stat.S_IMODE((path / "cache.db").stat().st_mode) == 0o600
    cache.close()


@needs_posix
def test_chat_and_map_run_uncached_when_the_directory_is_refused(fake: Any, tmp_path: Path) -> None:
    import pandas as pd

    from ipychat.session import ChatSession, Settings

    path = tmp_path / "cache"
    path.mkdir()
    path.chmod(0o777)
    session = ChatSession(
        Settings(base_url=fake.base_url, api_key="sk-test-" + "c" * 20, model="gpt-4o-mini"),
        cache=ResponseCache(path),
    )
    try:
        # The usage record refuses the folder as well (on its writer thread, so its one
        # warning comes at a later request or at close): both say so once, nothing breaks.
        with pytest.warns(Warning) as seen:
            first = session.ask("hello")
            again = session.ask("hello")
            assert first.text and again.text == first.text and not again.cached
            frame = session.map(pd.DataFrame({"t": ["a", "b"]}), "Say {t}", "out")
            assert frame["out"].notna().all()
            assert len(fake.chat_requests) == 4  # nothing was cached, nothing was refused
            session.close()
    finally:
        session.close()
    said = sorted((type(w.message).__name__, str(w.message)) for w in seen)
    assert [kind for kind, _ in said] == ["CacheWarning", "LedgerWarning"], said
    assert "without a cache" in said[0][1] and "usage in memory only" in said[1][1]
    assert not (path / "cache.db").exists() and not (path / "ledger.db").exists()


# ----- what may be cached (issue 15, item 11) -----------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        reply(""),
        reply("   \n"),
        reply("partial", finish_reason="error"),
        reply("", finish_reason="content_filter"),
    ],
)
def test_empty_or_errored_replies_are_never_stored(
    cache: ResponseCache, bad: dict[str, Any]
) -> None:
    cache.set(key("bad"), bad)
    cache.set_many([(key("bad2"), bad), (key("good"), reply("fine"))])
    assert cache.get(key("bad")) is None and cache.get(key("bad2")) is None
    assert cache.stats().entries == 1 and cache.stats().writes == 1
    assert cache.get(key("good"))["text"] == "fine"


def test_a_stored_empty_reply_from_an_older_version_is_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    plain = diskcache.Cache(str(path), disk=JSONOnlyDisk)
    plain.set(key("old"), {"text": "", "finish_reason": "stop"})  # as versions before this wrote
    plain.close()
    cache = ResponseCache(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a foreign entry: no warning, just a miss
        assert cache.get(key("old")) is None
        assert cache.get_many([key("old")]) == {}
    cache.set(key("old"), reply("now answered"))
    assert cache.get(key("old"))["text"] == "now answered"
    cache.close()


def _empty_for(word: str) -> Any:
    """A FakeOpenAIServer reply function: an empty reply for prompts holding `word`."""

    def answer(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        return "" if word in prompt else f"Echo: {prompt}"

    return answer


@pytest.mark.parametrize("writer", ["chat", "stream", "map", "batch"])
def test_no_writer_caches_an_empty_reply(tmp_path: Path, writer: str) -> None:
    """An empty reply is sent again next time, on every path that writes the cache."""
    import pandas as pd

    from ipychat.map import batch
    from ipychat.session import ChatSession, Settings, reset_session
    from ipychat.testing import FakeOpenAIServer

    frame = pd.DataFrame({"t": ["blank me", "fine"]})
    with FakeOpenAIServer(reply=_empty_for("blank"), batch={"delay": 0.01}) as server:
        session = ChatSession(
            Settings(base_url=server.base_url, api_key="sk-test-" + "d" * 20, model="gpt-4o-mini"),
            cache=ResponseCache(tmp_path / "cache"),
        )
        try:
            for attempt in range(2):
                server.reset_log()
                if writer in ("chat", "stream"):
                    for prompt in ("blank me", "fine"):
                        session.ask(prompt, stream=writer == "stream", new=True)
                elif writer == "map":
                    session.map(frame, "{t}", "out")
                elif attempt == 0:
                    batch.run(session, frame, "{t}", "out", poll_interval=0.01)
                else:  # after a batch, the same cell is answered from the cache where it can
                    session.map(frame, "{t}", "out")
                sent = [str(r.body["messages"][-1]["content"]) for r in server.chat_requests]
                if attempt == 1:
                    assert sent == ["blank me"], writer  # asked again; "fine" came from the cache
        finally:
            session.close()
            reset_session(None)
