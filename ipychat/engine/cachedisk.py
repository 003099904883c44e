"""The disk cache's storage layer: diskcache made JSON-only, its files private, its SQL.

`ipychat.engine.cache.ResponseCache` is the handle sessions use; this module is what it
stores with. With `ipychat.engine.cache`, the only modules that import diskcache.

Layout of a row (diskcache's `Cache` table): `key` = sha256 hex, `value` = JSON bytes
(zlib-compressed above 4 KiB; files above 32 KiB), `tag` = the model name `clear(model=)`
matches, `store_time` = the entry's `created` time (so age is a column, not a decode),
`access_time` = last read, which drives least-recently-used eviction.

What a row of `cache.db` names is not trusted: a value file is read, and deleted by
eviction or `clear`, only if its name is one diskcache generates (`ab/cd/<28 hex>.val`)
and it is a regular file reached without following a link. Anything else is a miss that
deletes nothing. `cache.db` and value files are 0600, folders 0700, whatever the umask.

Reads bypass `Cache.get`: under LRU it opens a write transaction per hit (3-5x the cost of
a read, and it makes readers in every kernel queue for the write lock). The cache SELECTs
directly and writes read times in batches, or with the next write. That uses diskcache's
`_sql` and `_con` (the per-thread connection), unchanged since diskcache 4; the schema is
its own.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import time
import zlib
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, MODE_TEXT, UNKNOWN

from ipychat.core.files import UnsafeDirectory, UnsafeEntry, read_private, remove_private, write_new
from ipychat.engine.cacheentry import MAX_VALUE, UntrustedEntry, decode

__all__ = [
    "SELECT_MANY",
    "SELECT_ONE",
    "JSONOnlyDisk",
    "Row",
    "delete_where",
    "is_lock_contention",
    "private_database",
    "write_rows",
    "write_touches",
]

# json.dumps with options builds an encoder per call; one, shared (encode keeps no state).
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_COMPRESS_FROM = 4096  # bytes of JSON; smaller replies stay readable in the database
# The only value-file names diskcache's `Disk.filename` makes: 2 + 2 + 28 hex digits.
_VALUE_FILE = re.compile(
    r"[0-9a-f]{{2}}{0}[0-9a-f]{{2}}{0}[0-9a-f]{{28}}\.val".format(re.escape(os.sep))
)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

SELECT_ONE = "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
SELECT_MANY = "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN ({})"
_TOUCH = "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1"
# `write_rows`: the statements of diskcache's `Cache.set` (`_row_insert`, `_row_update`),
# with `store_time` the entry's `created` (not a second UPDATE) and no expiry.
_EXISTING = "SELECT key, rowid, filename, size FROM Cache WHERE raw = 1 AND key IN ({})"
_ONE = "SELECT rowid, filename FROM Cache WHERE key = ? AND raw = 1"
_INSERT_INTO = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag,"
    " size, mode, filename, value) VALUES "
)
_VALUES = "(?, 1, ?, NULL, ?, 0, ?, ?, ?, ?, ?)"
_INSERT = _INSERT_INTO + _VALUES
# `_bulk` inserts a batch in multi-row INSERTs of up to this many rows (8 parameters each:
# under SQLite's oldest limit of 999). Inside its savepoint one statement per row costs
# ~20 µs more a row than one per batch: every statement that fires diskcache's triggers
# opens a statement journal, and under a savepoint each one copies the pages it touches
# (measured: 64-row batches of %%chatmap replies, ~40 µs a row by executemany, ~21 µs so).
_ROWS_PER_INSERT = 100
_UPDATE = (
    "UPDATE Cache SET store_time = ?, expire_time = NULL, access_time = ?, access_count = 0,"
    " tag = ?, size = ?, mode = ?, filename = ?, value = ? WHERE rowid = ?"
)
_CHUNK = 500  # keys per SELECT (SQLite allows 32,766 parameters since 3.32)

# One row for `write_rows`: key, JSON object, tag (the model name) and `created`.
Row = tuple[str, dict[str, Any], "str | None", float]


class JSONOnlyDisk(diskcache.Disk):
    """diskcache serialization that reads and writes JSON objects and nothing else.

    diskcache's default `Disk` pickles whatever is not str/bytes/int/float and unpickles
    MODE_PICKLE rows on read, so a row planted by anyone who can write the directory would
    run code. Here keys must be str (stored natively, never pickled), values are JSON bytes,
    and a pickled key or value is refused before `pickle` is ever reached.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"cache keys are str (sha256 hex), not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:  # the key itself is a pickle: something else wrote this row
            raise UntrustedEntry("pickled key")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, Any, Any]:
        if read or not isinstance(value, dict):
            raise TypeError("the ipychat cache stores JSON objects only")
        data = _JSON.encode(value)
        raw = data.encode("utf-8")
        if len(raw) >= _COMPRESS_FROM:
            raw = zlib.compress(raw, 1)  # level 1: most of the gain for text, little CPU
        # A MODE_RAW blob in SQLite, or a MODE_BINARY file from `disk_min_file_size` up, as
        # `Disk.store` does for bytes, but written 0600 (folders 0700) whatever the umask.
        if len(raw) < self.min_file_size:
            return 0, MODE_RAW, None, sqlite3.Binary(raw)
        filename, _ = self.filename(key, raw)
        write_new(Path(self._directory), filename, raw)
        return len(raw), MODE_BINARY, filename, None

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> dict[str, Any]:
        # Only the modes that cannot hold a pickle; everything else (MODE_PICKLE) is refused
        # here, so `Disk.fetch` never gets the chance to call pickle.load.
        if read or mode not in (MODE_RAW, MODE_BINARY, MODE_TEXT):
            raise UntrustedEntry(f"stored in diskcache mode {mode}, not JSON")
        if mode == MODE_RAW:  # in the row itself, no file
            return decode(super().fetch(mode, filename, value, False))
        if not isinstance(filename, str) or not _VALUE_FILE.fullmatch(filename):
            raise UntrustedEntry("its file is not one the cache names")
        try:  # no link, no FIFO, nothing outside the directory; size-capped
            return decode(read_private(Path(self._directory), filename, MAX_VALUE))
        except UnsafeEntry as exc:
            raise UntrustedEntry(str(exc)) from None

    def remove(self, file_path: Any) -> None:
        # diskcache calls this for every row it evicts, culls or clears. Its own version
        # deletes `directory/filename` and then every emptied folder above it, whatever the
        # row says; here only a value file the cache itself names, and its two folders.
        if isinstance(file_path, str) and _VALUE_FILE.fullmatch(file_path):
            remove_private(Path(self._directory), file_path, prune=2)


def is_lock_contention(exc: BaseException) -> bool:
    """Lock contention between processes: skip this read or write, keep the cache."""
    if isinstance(exc, diskcache.Timeout):
        return True
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc) for word in ("locked", "busy")
    )


def write_touches(cache: diskcache.Cache, pending: dict[str, float]) -> None:
    """Write read times (`key: when`) inside the caller's transaction."""
    if pending:
        cache._con.executemany(_TOUCH, [(when, key) for key, when in pending.items()])


def write_rows(cache: diskcache.Cache, rows: list[Row], pending: dict[str, float]) -> None:
    """Store `rows` in one write transaction, exactly as as many `Cache.set(key, value,
    tag=tag)` calls would (with `store_time` set to `created`), in a handful of statements
    instead of five or six per row (a %%chatmap writes its rows in batches of 64 or so).

    What `Cache.set` does is kept: values go through `cache.disk.store` (JSON; a value file
    from 32 KiB up), a key already stored is updated in place (its old value file deleted
    after the commit), new keys are inserted (diskcache's triggers keep its count and size
    in `Settings`), and eviction is the same (`_bulk`). `pending` read times
    (`write_touches`) go first, so that eviction sees which entries were used recently.
    A key given twice keeps its last value. Value files written for a transaction that
    fails are deleted. Raises what `Disk.store` raises for a value JSON cannot encode
    (TypeError or ValueError) before anything is written.
    """
    last = {key: (value, tag, created) for key, value, tag, created in rows}
    disk = cache.disk
    stored: list[Stored] = []
    try:
        for key, (value, tag, created) in last.items():
            stored.append((key, tag, created, disk.store(value, False, key=key)))
        now = time.time()
        with cache._transact() as (sql, cleanup):
            write_touches(cache, pending)
            if not _bulk(cache, sql, cleanup, now, stored):
                for row in stored:  # over the size limit: row by row, as Cache.set
                    _one(cache, sql, cleanup, now, row)
    except BaseException:
        _remove_files(disk, stored)
        raise


# A row as `write_rows` writes it: key, tag, created, and `Disk.store`'s
# (size, mode, filename, value).
Stored = tuple[str, "str | None", float, tuple[Any, Any, Any, Any]]


def _bulk(cache: diskcache.Cache, sql: Any, cleanup: Any, now: float, stored: list[Stored]) -> bool:
    """All of `stored` in two executemany, if that evicts nothing; else False, nothing
    written (a savepoint is rolled back) and the caller goes row by row.

    `Cache.set` culls after each row: expired entries, then `cull_limit` entries by the
    eviction policy if the cache is then over its size limit. When the cache is under the
    limit after every row of the batch, that is nothing (ipychat sets no expiry); the peak
    is the size at the end plus what updates shrank on the way.
    """
    existing = _existing(sql, [row[0] for row in stored])
    inserts, updates, shrunk, old_files = [], [], 0, []
    for key, tag, created, (size, mode, filename, value) in stored:
        found = existing.get(key)
        if found is None:
            inserts.append((key, created, now, tag, size, mode, filename, value))
        else:
            rowid, old_filename, old_size = found
            old_files.append(old_filename)
            shrunk += max(0, (old_size or 0) - size)
            updates.append((created, now, tag, size, mode, filename, value, rowid))
    sql("SAVEPOINT ipychat_bulk")
    _insert_many(cache._con, inserts)
    if updates:
        cache._con.executemany(_UPDATE, updates)
    if cache.volume() + shrunk >= cache.size_limit:
        sql("ROLLBACK TO ipychat_bulk")
        sql("RELEASE ipychat_bulk")
        return False
    sql("RELEASE ipychat_bulk")
    for name in old_files:
        cleanup(name)
    cache._cull(now, sql, cleanup)  # expired entries (another writer's), as `set` does
    return True


def _insert_many(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """INSERT `rows` (`_VALUES`' parameters) in order, `_ROWS_PER_INSERT` per statement:
    the same rows, rowids and trigger effects as one INSERT each, for one statement
    journal per chunk instead of one per row."""
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        statement = _INSERT_INTO + ",".join([_VALUES] * len(chunk))
        con.execute(statement, [field for row in chunk for field in row])


def _one(cache: diskcache.Cache, sql: Any, cleanup: Any, now: float, row: Stored) -> None:
    """One row as `Cache.set` writes it (diskcache 5.6: SELECT, UPDATE or INSERT, cull)."""
    key, tag, created, (size, mode, filename, value) = row
    found = sql(_ONE, (key,)).fetchall()
    if found:
        ((rowid, old_filename),) = found
        cleanup(old_filename)
        sql(_UPDATE, (created, now, tag, size, mode, filename, value, rowid))
    else:
        sql(_INSERT, (key, created, now, tag, size, mode, filename, value))
    cache._cull(now, sql, cleanup)


def _existing(sql: Any, keys: list[str]) -> dict[str, tuple[int, str | None, int | None]]:
    """{key: (rowid, filename, size)} of the `keys` already stored."""
    found: dict[str, tuple[int, str | None, int | None]] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        for key, rowid, filename, size in sql(_EXISTING.format(",".join("?" * len(chunk))), chunk):
            found[key] = (rowid, filename, size)
    return found


def _remove_files(disk: diskcache.Disk, stored: list[Stored]) -> None:
    """Delete the value files `write_rows` wrote for a write that did not happen."""
    for *_, (_, _, filename, _) in stored:
        if filename is not None:
            disk.remove(filename)


def delete_where(cache: diskcache.Cache, where: str, params: list[Any]) -> int:
    """Delete matching rows in batches, like diskcache's own clear: short write locks."""
    select = f"SELECT rowid, filename FROM Cache WHERE {where} LIMIT 100"
    removed = 0
    while True:
        with cache.transact(retry=True):
            rows = cache._sql(select, params).fetchall()
            if rows:
                marks = ",".join("?" * len(rows))
                cache._sql(f"DELETE FROM Cache WHERE rowid IN ({marks})", [r[0] for r in rows])
        if not rows:
            return removed
        for _, filename in rows:  # files go after the commit, as in diskcache
            if filename is not None:
                cache.disk.remove(filename)
        removed += len(rows)


def private_database(directory: Path, database: str = "cache.db") -> None:
    """Create `database` (`cache.db`; the ledger's `ledger.db`) 0600 before SQLite does (its
    -wal and -shm files then get the same mode), and tighten the ones an older version left
    readable. A database that is a link, not a file, or someone else's is refused: the rows
    it holds steer reads and deletes."""
    me = os.geteuid() if os.name == "posix" else None
    for name in (database, f"{database}-wal", f"{database}-shm"):
        path = directory / name
        flags = os.O_RDWR | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        if name == database:
            flags |= os.O_CREAT
        elif not os.path.lexists(path):
            continue
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if os.path.islink(path):
                raise UnsafeDirectory(f"{path} is a symbolic link; delete it.") from None
            raise exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeDirectory(f"{path} is not a regular file; delete it.")
            if me is not None and st.st_uid != me:
                raise UnsafeDirectory(
                    f"{path} belongs to another user (uid {st.st_uid}); delete it."
                )
            if me is not None and stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
