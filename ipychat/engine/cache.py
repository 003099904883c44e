"""The persistent response cache: replies on disk, keyed by `ipychat.core.keys.cache_key`.

The only module that imports diskcache. Keys are the sha256 hex strings of `cache_key`
(stored natively as SQLite text); values are JSON objects, never pickle, so a tampered
cache file cannot run code. One `ResponseCache` per process: threads and asyncio tasks
share it; processes (several kernels) share the directory, and SQLite in WAL mode does
the locking between them.

Nothing here raises into a cell. An unusable directory or database, or a storage error at
run time, emits one `CacheWarning` and the cache becomes a no-op (`disabled`); a single
unreadable entry is a miss. So does a directory someone else could change (not ours,
group/world-writable, or inside a folder another user controls; see `ipychat.core.files`):
the cache is then off with a one-line warning saying why and how to fix it, and chats and
maps run uncached. `cache.db` and value files are 0600, folders 0700, whatever the umask.

What a row of `cache.db` names is not trusted either: a value file is read, and deleted
by eviction or `clear`, only if its name is one diskcache generates (`ab/cd/<28 hex>.val`)
and it is a regular file reached without following a link. Anything else is a miss that
deletes nothing. Empty replies are never stored (an empty reply is a fault, and a cached
one would be replayed forever), and one found in the cache counts as a miss.

Layout of a row (diskcache's `Cache` table): `key` = sha256 hex, `value` = JSON bytes
(zlib-compressed above 4 KiB; files above 32 KiB), `tag` = the model name `clear(model=)`
matches, `store_time` = the entry's `created` time (so age is a column, not a decode),
`access_time` = last read, which drives least-recently-used eviction.

Reads bypass `Cache.get`: under LRU it opens a write transaction per hit (3-5x the cost of
a read, and it makes readers in every kernel queue for the write lock). We SELECT directly
and write read times in batches, or with the next write. That uses diskcache's `_sql` and
`_con` (the per-thread connection), unchanged since diskcache 4; the schema is its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import stat
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, MODE_TEXT, UNKNOWN

from ipychat.core.files import (
    UnsafeDirectory,
    UnsafeEntry,
    private_directory,
    read_private,
    remove_private,
    write_new,
)
from ipychat.engine.exchange import CachedReply  # the schema of a value (re-exported)

__all__ = [
    "DEFAULT_SIZE_LIMIT",
    "CacheStats",
    "CacheWarning",
    "CachedReply",
    "JSONOnlyDisk",
    "ResponseCache",
    "cacheable",
    "default_cache_dir",
]

DEFAULT_SIZE_LIMIT = 1 << 30
ENV_CACHE_DIR = "IPYCHAT_CACHE_DIR"

_COMPRESS_FROM = 4096  # bytes of JSON; smaller replies stay readable in the database
_MAX_VALUE = 64 << 20  # a decompressed value larger than this is a zip bomb, not a reply
_TOUCH_BATCH = 512  # read-time updates are written in batches of this many...
_TOUCH_EVERY = 5.0  # ...or after this many seconds, or with the next write
_CHUNK = 500  # keys per SELECT in get_many (SQLite allows 32,766 parameters since 3.32)
# The only value-file names diskcache's `Disk.filename` makes: 2 + 2 + 28 hex digits.
_VALUE_FILE = re.compile(
    r"[0-9a-f]{{2}}{0}[0-9a-f]{{2}}{0}[0-9a-f]{{28}}\.val".format(re.escape(os.sep))
)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class CacheWarning(UserWarning):
    """The cache could not be used (it is then disabled) or an entry was ignored."""


class UntrustedEntry(Exception):
    """A stored value ipychat will not decode: pickled, not JSON, or not a reply."""


@dataclass(frozen=True)
class CacheStats:
    """What `%chat cache` shows. Counters are this process's; entries and size are on disk."""

    entries: int
    size_bytes: int
    hits: int
    misses: int
    saved: float  # USD the hits of this process saved (as reported via `record_hit`)
    directory: str
    writes: int = 0
    disabled: bool = False
    backend: str = "disk"  # or "redis": then `location` is its URL (no password)
    location: str = ""  # where the entries are: the directory, or the Redis URL


def default_cache_dir() -> Path:
    """`$IPYCHAT_CACHE_DIR`, else `~/.cache/ipychat`."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "ipychat").expanduser()


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
        data = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
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
            return decode(read_private(Path(self._directory), filename, _MAX_VALUE))
        except UnsafeEntry as exc:
            raise UntrustedEntry(str(exc)) from None

    def remove(self, file_path: Any) -> None:
        # diskcache calls this for every row it evicts, culls or clears. Its own version
        # deletes `directory/filename` and then every emptied folder above it, whatever the
        # row says; here only a value file the cache itself names, and its two folders.
        if isinstance(file_path, str) and _VALUE_FILE.fullmatch(file_path):
            remove_private(Path(self._directory), file_path, prune=2)


def decode(data: Any) -> dict[str, Any]:
    """A stored value back to a reply dict; `UntrustedEntry` for anything else."""
    try:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, bytes):
            raise UntrustedEntry(f"a {type(data).__name__}, not JSON")
        if data[:1] != b"{":  # compressed (our JSON always starts with "{")
            inflate = zlib.decompressobj()
            data = inflate.decompress(data, _MAX_VALUE)
            if inflate.unconsumed_tail:
                raise UntrustedEntry("larger than any reply")
        value = json.loads(data.decode("utf-8"))  # str: skips json's encoding sniffing
    except (ValueError, zlib.error, RecursionError) as exc:  # incl. JSON and UTF-8 errors
        raise UntrustedEntry(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        raise UntrustedEntry("not a reply object")
    return value


def cacheable(value: Mapping[str, Any]) -> bool:
    """Whether a reply may be stored (and served): not empty, not an error.

    An empty reply is a fault (a provider hiccup, a filtered or cut reply), and once cached
    it would be replayed forever instead of being asked again.
    """
    text = value.get("text")
    if not isinstance(text, str) or not text.strip():
        return False
    return value.get("finish_reason") not in ("error", "content_filter")


def _check_key(key: object) -> None:
    if type(key) is not str:
        raise TypeError(
            f"cache keys are str (ipychat.core.keys.cache_key), not {type(key).__name__}"
        )


def _transient(exc: BaseException) -> bool:
    """Lock contention between processes: skip this read or write, keep the cache."""
    if isinstance(exc, diskcache.Timeout):
        return True
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc) for word in ("locked", "busy")
    )


_SELECT_ONE = "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
_SELECT_MANY = "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN ({})"
_TOUCH = "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1"
_SET_CREATED = "UPDATE Cache SET store_time = ? WHERE key = ? AND raw = 1"


class ResponseCache:
    """A process's handle on the on-disk reply cache (see the module docstring).

    Opened lazily on first use (so creating one costs nothing). The directory is created
    0700; an existing one of ours that group or others can only read is tightened to 0700
    (replies can be private); one that is not ours, or that others can write to, is not
    used (one warning, then the cache is off; see the module docstring).
    Thread-safe. diskcache connections do not survive `fork`: a forked child notices the
    new pid and opens its own.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        timeout: float = 10.0,
    ) -> None:
        self._directory = Path(directory).expanduser() if directory else default_cache_dir()
        self._size_limit = int(size_limit)
        self._timeout = timeout  # seconds a write waits for another process's write lock
        self._lock = threading.RLock()  # guards opening, disabling, counters, the touch buffer
        self._cache: diskcache.Cache | None = None
        self._pid = 0
        self._broken: str | None = None
        self._warned: set[str] = set()
        self._hits = self._misses = self._writes = 0
        self._saved = 0.0
        self._touched: dict[str, float] = {}
        self._touched_since = 0.0

    def __repr__(self) -> str:
        state = "disabled" if self._broken else "open" if self._cache else "not opened"
        return f"ResponseCache({str(self._directory)!r}, {state})"

    # ----- public API ---------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def disabled(self) -> bool:
        """True when the cache is unusable (it then warned once and does nothing)."""
        return self._db() is None

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached reply for `key`, or None. Reads only: a miss touches nothing on disk."""
        _check_key(key)
        cache = self._db()
        if cache is None:
            return None
        try:
            rows = cache._sql(_SELECT_ONE, (key,)).fetchall()
            value = self._decode(cache, rows[0]) if rows else None
        except Exception as exc:
            self._failed(exc)
            value = None
        with self._lock:
            if value is None:
                self._misses += 1
                return None
            self._hits += 1
        self._touch((key,))
        return value

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The cached replies among `keys`, by key (misses left out), in few SELECTs.

        Hits and misses are counted per key given, duplicates included (rows of a map).
        """
        keys = list(keys)
        for key in keys:
            _check_key(key)
        cache = self._db()
        found: dict[str, dict[str, Any]] = {}
        if cache is None:
            return found
        unique = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                sql = _SELECT_MANY.format(",".join("?" * len(chunk)))
                for key, mode, filename, data in cache._sql(sql, chunk).fetchall():
                    value = self._decode(cache, (mode, filename, data))
                    if value is not None:
                        found[key] = value
        except Exception as exc:
            self._failed(exc)
        hits = sum(1 for key in keys if key in found)
        with self._lock:
            self._hits += hits
            self._misses += len(keys) - hits
        self._touch(found)
        return found

    def set(self, key: str, value: Mapping[str, Any]) -> None:
        """Store `value` (a JSON object with a str `text`) under `key`, replacing any entry.

        Never raises for storage problems (they disable the cache with one warning) nor
        for a value JSON cannot encode (one warning, not stored). Raises TypeError for a
        key that is not a str or a value without a str `text`: those are bugs.
        """
        self.set_many([(key, value)])

    def set_many(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """`set` for many replies in one write transaction (a %%chatmap writes its rows in
        batches: one commit instead of one per row is most of a cached row's CPU)."""
        rows = []
        for key, value in items:
            _check_key(key)
            if not isinstance(value, dict) or not isinstance(value.get("text"), str):
                raise TypeError("a cache value is a dict with a str 'text'")
            if not cacheable(value):
                continue
            value = dict(value)
            created = value.get("created")
            if not isinstance(created, (int, float)) or not 0 <= created < 1e11:  # NaN, 1e400…
                created = value["created"] = time.time()
            tag = value.get("request_model") or value.get("model")
            rows.append((key, value, tag if isinstance(tag, str) else None, float(created)))
        cache = self._db()
        if cache is None or not rows:
            return
        with self._lock:
            pending, self._touched = self._touched, {}
        try:
            # One write transaction: pending read times first, so the eviction that
            # `Cache.set` runs sees which entries were used recently.
            with cache.transact():
                self._write_touches(cache, pending)
                for key, value, tag, created in rows:
                    cache.set(key, value, tag=tag)
                    cache._sql(_SET_CREATED, (created, key))
        except (TypeError, ValueError) as exc:  # from json.dumps: nothing was written
            self._warn_once(
                "json",
                f"ipychat: a reply was not cached because it is not plain JSON ({exc}); "
                "this is a bug, please report it.",
            )
            return
        except Exception as exc:
            self._failed(exc)
            return
        with self._lock:
            self._writes += len(rows)

    def record_hit(self, saved: float | None) -> None:
        """Add the money a served hit saved (None: unknown price). `get` counted the hit."""
        if saved is not None and saved == saved and saved > 0:  # saved == saved: not NaN
            with self._lock:
                self._saved += float(saved)

    def record_hits(self, savings: Iterable[float | None]) -> None:
        """`record_hit` for each of many hits (a map's), under one lock."""
        valid = [float(s) for s in savings if s is not None and s == s and s > 0]
        with self._lock:
            for saved in valid:  # one by one: the same sum as as many `record_hit`s
                self._saved += saved

    def stats(self) -> CacheStats:
        """Entries and bytes on disk (all processes), hits/misses/writes/saved of this one."""
        entries = size = 0
        cache = self._db()
        if cache is not None:
            try:
                entries, size = len(cache), cache.volume()
            except Exception as exc:
                self._failed(exc)
                entries = size = 0
        with self._lock:
            return CacheStats(
                entries=entries,
                size_bytes=size,
                hits=self._hits,
                misses=self._misses,
                saved=self._saved,
                directory=str(self._directory),
                location=str(self._directory),
                writes=self._writes,
                disabled=self._broken is not None,
            )

    def clear(self, *, older_than_days: float | None = None, model: str | None = None) -> int:
        """Remove entries (all; or created more than `older_than_days` ago; or whose model is
        `model`; or both conditions). Returns how many were removed, from every process's view.
        """
        if older_than_days is not None and not older_than_days >= 0:
            raise ValueError(f"older_than_days must be 0 or more, not {older_than_days}")
        cache = self._db()
        if cache is None:
            return 0
        try:
            if older_than_days is None and model is None:
                return int(cache.clear(retry=True))
            if older_than_days is None:
                return int(cache.evict(model, retry=True))
            params: list[Any] = [time.time() - older_than_days * 86400.0]
            where = "store_time < ?"
            if model is not None:
                where, params = where + " AND tag = ?", [*params, model]
            return self._delete_where(cache, where, params)
        except Exception as exc:
            self._failed(exc)
            return 0

    def delete(self, keys: Iterable[str]) -> int:
        """Remove the entries of `keys` (absent ones are ignored); returns how many went."""
        unique = list(dict.fromkeys(keys))
        for key in unique:
            _check_key(key)
        cache = self._db()
        if cache is None:
            return 0
        removed = 0
        try:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                where = "raw = 1 AND key IN ({})".format(",".join("?" * len(chunk)))
                removed += self._delete_where(cache, where, chunk)
        except Exception as exc:
            self._failed(exc)
        return removed

    def close(self) -> None:
        """Write pending read times and close this thread's connection. Reopens on next use."""
        with self._lock:
            cache, self._cache = self._cache, None
        if cache is None or self._pid != os.getpid():
            return
        self._flush_touches(cache)
        with contextlib.suppress(Exception):  # closing a broken database: nothing to protect
            cache.close()

    # ----- internals ----------------------------------------------------------------------

    def _db(self) -> diskcache.Cache | None:
        """The open diskcache, opening it on first use (or in a forked child); None if broken."""
        if self._broken is not None:
            return None
        cache = self._cache
        if cache is not None and self._pid == os.getpid():
            return cache
        if self._pid and self._pid != os.getpid():
            # Forked: the parent's lock may be held by a thread that does not exist here, and
            # its SQLite connections must not be used. Start over; leave the parent's objects.
            self._lock = threading.RLock()
            self._cache, self._touched = None, {}
        with self._lock:
            if self._cache is None and self._broken is None:
                try:
                    self._cache = self._open()
                    self._pid = os.getpid()
                except UnsafeDirectory as exc:
                    self._refuse(str(exc))
                except Exception as exc:
                    self._disable(exc)
            return self._cache

    def _open(self) -> diskcache.Cache:
        """Open, waiting out other processes that are opening (creating) it at the same time.

        diskcache's set-up runs some statements without its lock retry (tag index, pragmas),
        so two kernels starting on a fresh directory can see "database is locked".
        """
        deadline = time.monotonic() + max(self._timeout, 1.0)
        pause = 0.005
        while True:
            try:
                return self._open_once()
            except Exception as exc:
                if not _transient(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _open_once(self) -> diskcache.Cache:
        # Ours alone, nobody else can change it (UnsafeDirectory otherwise); from here on
        # the resolved path, so a symlink swapped after the check changes nothing.
        path = private_directory(self._directory)
        if os.name == "posix" and os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o700)  # ours, only readable by others: replies can be private
        _private_database(path)
        return diskcache.Cache(
            str(path),
            timeout=self._timeout,
            disk=JSONOnlyDisk,
            eviction_policy="least-recently-used",
            size_limit=self._size_limit,
            tag_index=True,  # clear(model=) is an indexed evict(tag)
        )

    def _decode(self, cache: diskcache.Cache, row: Any) -> dict[str, Any] | None:
        mode, filename, value = row
        try:
            if mode == MODE_RAW and type(value) is bytes:  # JSON in the row: most replies
                reply: dict[str, Any] = decode(
                    value
                )  # what JSONOnlyDisk.fetch does, minus two calls
            else:
                reply = cache.disk.fetch(mode, filename, value, False)
            # An empty reply an older version stored: a miss, so the next reply replaces it.
            return reply if cacheable(reply) else None
        except UntrustedEntry as exc:
            self._warn_once(
                "entry",
                f"ipychat: ignored an entry in the cache at {self._directory} that ipychat did "
                f"not write ({exc}); it counts as a miss and the next reply replaces it.",
            )
        except OSError:  # its file was evicted by another process between SELECT and read
            pass
        return None

    def _touch(self, keys: Iterable[str]) -> None:
        """Remember read times; LRU needs them, but a write per read would cost ~80 µs."""
        now = time.time()
        with self._lock:
            if not self._touched:
                self._touched_since = now
            for key in keys:
                self._touched[key] = now
            due = len(self._touched) >= _TOUCH_BATCH or now - self._touched_since >= _TOUCH_EVERY
            cache = self._cache
        if due and cache is not None:
            self._flush_touches(cache)

    def _flush_touches(self, cache: diskcache.Cache) -> None:
        with self._lock:
            pending, self._touched = self._touched, {}
        if not pending:
            return
        try:
            with cache.transact():
                self._write_touches(cache, pending)
        except Exception as exc:  # read times are advisory: losing a batch is harmless
            if not _transient(exc):
                self._failed(exc)

    @staticmethod
    def _write_touches(cache: diskcache.Cache, pending: dict[str, float]) -> None:
        if pending:
            cache._con.executemany(_TOUCH, [(when, key) for key, when in pending.items()])

    def _delete_where(self, cache: diskcache.Cache, where: str, params: list[Any]) -> int:
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

    def _failed(self, exc: BaseException) -> None:
        """A storage error at run time: skip on lock contention, otherwise disable."""
        if not _transient(exc):
            self._disable(exc)

    def _refuse(self, reason: str) -> None:
        """The directory is not safe to use: off for this process, one line saying why."""
        with self._lock:
            if self._broken is not None:
                return
            self._broken = reason
        _warn(f"ipychat: carrying on without a cache: {reason} Then restart the kernel.")

    def _disable(self, exc: BaseException) -> None:
        with self._lock:
            if self._broken is not None:
                return
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            self._broken = reason
            cache, self._cache = self._cache, None
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.close()
        _warn(
            f"ipychat: the response cache at {self._directory} is unusable ({reason}); "
            "carrying on without a cache. To fix it, delete that path or set "
            "IPYCHAT_CACHE_DIR to another directory, then restart the kernel."
        )

    def _warn_once(self, what: str, message: str) -> None:
        with self._lock:
            if what in self._warned:
                return
            self._warned.add(what)
        _warn(message)


def _private_database(directory: Path) -> None:
    """Create `cache.db` 0600 before SQLite does (its -wal and -shm files then get the same
    mode), and tighten the ones an older version left readable. A database that is a link,
    not a file, or someone else's is refused: the rows it holds steer reads and deletes."""
    me = os.geteuid() if os.name == "posix" else None
    for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
        path = directory / name
        flags = os.O_RDWR | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        if name == "cache.db":
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


def _warn(message: str) -> None:
    """Warn, attributed to the first caller outside this module (the session's line)."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the frame that called _warn
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, CacheWarning, stacklevel=level)
