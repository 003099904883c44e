"""ResponseCache.set_many's bulk write (ipychat.engine.cachedisk.write_rows): the rows it
writes are the rows diskcache's own `Cache.set` writes, in a handful of statements.

The reference is diskcache itself: the same entries stored with `Cache.set(key, value,
tag=...)` (diskcache 5.6, diskcache/core.py `Cache.set`, `_row_insert`, `_row_update`,
`_cull`) into another directory, then compared column by column and read back through a
plain `diskcache.Cache`, so caches written before and after this change read the same.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import diskcache
import pytest

from ipychat.engine.cache import JSONOnlyDisk, ResponseCache


def key(name: object) -> str:
    return hashlib.sha256(str(name).encode()).hexdigest()


def reply(text: str, **fields: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "text": text,
        "model": "gpt-4o-mini-2024-07-18",
        "request_model": "gpt-4o-mini",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        "created": 1_700_000_000.5,
    }
    value.update(fields)
    return value


def big(text: str, rng: random.Random | None = None) -> dict[str, Any]:
    """Large enough for a value file (diskcache's disk_min_file_size: 32 KiB)."""
    noise = rng.randbytes(40_000) if rng is not None else os.urandom(40_000)
    return reply(text + " " + noise.hex())


def table(directory: Path) -> dict[str, tuple[Any, ...]]:
    """Every row of the Cache table by key, without what differs by nature (rowid, the
    random value-file name, access_time)."""
    with sqlite3.connect(directory / "cache.db") as con:
        found = con.execute(
            "SELECT key, raw, store_time, expire_time, access_count, tag, size, mode,"
            " filename IS NULL, value FROM Cache"
        ).fetchall()
    return {row[0]: row[1:] for row in found}


def settings(directory: Path) -> dict[str, Any]:
    """diskcache's running count and size (kept by its triggers)."""
    with sqlite3.connect(directory / "cache.db") as con:
        return dict(con.execute("SELECT key, value FROM Settings WHERE key IN ('count', 'size')"))


def value_files(directory: Path) -> set[str]:
    return {p.name for p in directory.rglob("*.val")}


def diskcache_reference(directory: Path, items: list[tuple[str, dict[str, Any]]]) -> None:
    """What set_many stored before the bulk write: `Cache.set` per entry, then the entry's
    `created` as its store_time."""
    plain = diskcache.Cache(
        str(directory), disk=JSONOnlyDisk, eviction_policy="least-recently-used", tag_index=True
    )
    for k, value in items:
        plain.set(k, value, tag=value["request_model"])
        plain._sql("UPDATE Cache SET store_time = ? WHERE key = ?", (value["created"], k))
    plain.close()


def test_the_rows_are_those_diskcache_set_writes(tmp_path: Path) -> None:
    first = [(key(i), reply(f"r{i}")) for i in range(40)] + [(key("big"), big("large"))]
    second = [(key(i), reply(f"again {i}", created=1_700_000_100.0)) for i in range(30, 50)]
    cache = ResponseCache(tmp_path / "bulk")
    cache.set_many(first)
    cache.set_many(second)  # ten replace entries of the first batch, ten are new
    cache.close()
    diskcache_reference(tmp_path / "ref", first + second)

    assert table(tmp_path / "bulk") == table(tmp_path / "ref")
    assert settings(tmp_path / "bulk") == settings(tmp_path / "ref")
    assert len(value_files(tmp_path / "bulk")) == 1

    plain = diskcache.Cache(str(tmp_path / "bulk"), disk=JSONOnlyDisk)
    try:
        assert plain.get(key(3)) == reply("r3")
        assert plain.get(key(35)) == reply("again 35", created=1_700_000_100.0)
        assert plain.get(key("big"))["text"].startswith("large ")
        assert len(plain) == 51
    finally:
        plain.close()


def test_a_batch_is_a_few_statements_not_five_a_row(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    cache.set(key("warm"), reply("opens the database"))
    statements: list[str] = []
    con = cache._db()._con  # type: ignore[union-attr]
    con.set_trace_callback(statements.append)
    cache.set_many([(key(i), reply(f"r{i}")) for i in range(64)])
    con.set_trace_callback(None)
    # One multi-row INSERT for the batch (traced again for each run of diskcache's triggers
    # it fires), plus BEGIN, one SELECT of the keys already there, a savepoint, size checks
    # and COMMIT. Row by row (Cache.set) it was a SELECT, the INSERT, three for eviction and
    # an UPDATE per row; an INSERT per row under the savepoint cost twice the CPU of one per
    # batch (each opens a statement journal that copies the pages it touches).
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(set(inserts)) == 1
    assert inserts[0].count("),(") == 63
    assert len(statements) - len(inserts) <= 12, statements[:20]
    assert cache.get_many([key(i) for i in range(64)])[key(63)]["text"] == "r63"
    cache.close()


def test_a_batch_larger_than_one_insert_matches_diskcache_set_row_for_row(tmp_path: Path) -> None:
    # 250 rows: three multi-row INSERTs (100, 100, 50), with updates of existing keys
    # among them; the rowids too must follow the order the rows were given in.
    rng = random.Random(14)
    first = [(key(i), reply(f"r{i}")) for i in range(30)]
    second = [(key(i), reply(f"b{i}", created=1_700_000_000.0 + i)) for i in range(20, 270)]
    rng.shuffle(second)
    cache = ResponseCache(tmp_path / "bulk")
    cache.set_many(first)
    cache.set_many(second)
    cache.close()
    diskcache_reference(tmp_path / "ref", first + second)

    assert table(tmp_path / "bulk") == table(tmp_path / "ref")
    assert settings(tmp_path / "bulk") == settings(tmp_path / "ref") == {"count": 270, "size": 0}

    def keys_by_rowid(directory: Path) -> list[str]:
        with sqlite3.connect(directory / "cache.db") as con:
            return [k for (k,) in con.execute("SELECT key FROM Cache ORDER BY rowid")]

    assert keys_by_rowid(tmp_path / "bulk") == keys_by_rowid(tmp_path / "ref")
    plain = diskcache.Cache(str(tmp_path / "bulk"), disk=JSONOnlyDisk)
    try:
        assert len(plain) == 270
        for k, value in second:
            assert plain.get(k) == value
    finally:
        plain.close()


def test_a_key_given_twice_in_one_batch_keeps_its_last_value(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    cache.set_many([(key(1), big("first")), (key(1), big("second")), (key(2), reply("x"))])
    assert cache.get(key(1))["text"].startswith("second ")  # type: ignore[index]
    assert cache.stats().entries == 2
    assert len(value_files(tmp_path / "c")) == 1  # the first value never reached the disk
    cache.close()


def test_replacing_a_large_entry_deletes_its_old_file(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    cache.set_many([(key(1), big("old"))])
    old = value_files(tmp_path / "c")
    cache.set_many([(key(1), big("new"))])
    now = value_files(tmp_path / "c")
    assert len(old) == len(now) == 1 and old != now
    assert cache.get(key(1))["text"].startswith("new ")  # type: ignore[index]
    cache.close()


def test_eviction_evicts_what_diskcache_set_would(tmp_path: Path) -> None:
    """diskcache culls `cull_limit` (10) entries, least recently used first, after each
    write that finds the cache over its size limit: coarse, but its own semantics."""
    rng = random.Random(7)
    batches = [
        [(key(f"{b}-{i}"), big(f"{b}-{i}", rng)) for i in range(n)]
        for b, n in enumerate([4, 3, 12, 2, 5])
    ]
    limit = 400_000  # about seven of these entries
    cache = ResponseCache(tmp_path / "bulk", size_limit=limit)
    reference = diskcache.Cache(
        str(tmp_path / "ref"),
        disk=JSONOnlyDisk,
        eviction_policy="least-recently-used",
        size_limit=limit,
    )
    for batch in batches:
        cache.set_many(batch)
        for k, value in batch:
            reference.set(k, value, tag=value["request_model"])
        assert set(table(tmp_path / "bulk")) == set(table(tmp_path / "ref"))
    reference.close()
    assert 0 < cache.stats().entries < sum(map(len, batches))  # some went, not all
    with sqlite3.connect(tmp_path / "bulk" / "cache.db") as con:
        named = {Path(f).name for (f,) in con.execute("SELECT filename FROM Cache") if f}
    assert value_files(tmp_path / "bulk") == named  # no file left behind by an evicted entry
    cache.close()


def test_a_write_that_cannot_take_the_lock_leaves_no_value_file(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c", timeout=0.05)
    cache.set(key("warm"), reply("opens the database"))
    other = sqlite3.connect(tmp_path / "c" / "cache.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another kernel holds the write lock
    try:
        cache.set_many([(key(1), big("waits")), (key(2), reply("small"))])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert value_files(tmp_path / "c") == set()  # the stored file was taken back
    assert cache.get(key(1)) is None and not cache.disabled  # skipped, cache still on
    cache.set_many([(key(1), big("later"))])
    assert cache.get(key(1))["text"].startswith("later ")  # type: ignore[index]
    cache.close()


@pytest.mark.parametrize("bad", [float("nan"), object()])
def test_a_value_json_cannot_encode_writes_nothing_of_its_batch(tmp_path: Path, bad: Any) -> None:
    cache = ResponseCache(tmp_path / "c")
    with pytest.warns(Warning, match="not plain JSON"):
        cache.set_many([(key(1), big("fine")), (key(2), reply("bad", extra=bad))])
    assert cache.stats().entries == 0
    assert value_files(tmp_path / "c") == set()
    cache.close()


def test_store_time_is_created_and_access_time_is_now(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    before = time.time()
    cache.set_many([(key(1), reply("x", created=1_600_000_000.0))])
    with sqlite3.connect(tmp_path / "c" / "cache.db") as con:
        ((stored, accessed),) = con.execute("SELECT store_time, access_time FROM Cache")
    assert stored == 1_600_000_000.0
    assert before <= accessed <= time.time()
    assert cache.clear(older_than_days=1) == 1  # age is read from store_time
    cache.close()
