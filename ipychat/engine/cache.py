"""The persistent response cache: replies on disk, keyed by `ipychat.core.keys.cache_key`.

With `cachedisk`, the only modules that import diskcache. Keys are the sha256 hex strings
of `cache_key` (stored natively as SQLite text); values are JSON objects, never pickle, so
a tampered cache file cannot run code. One `ResponseCache` per process: threads and asyncio tasks
share it; processes (several kernels) share the directory, and SQLite in WAL mode does
the locking between them.

Nothing here raises into a cell. An unusable directory or database, or a storage error at
run time, emits one `CacheWarning` and the cache becomes a no-op (`disabled`); a single
unreadable entry is a miss. So does a directory someone else could change (not ours,
group/world-writable, or inside a folder another user controls; see `ipychat.core.files`):
the cache is then off with a one-line warning saying why and how to fix it, and chats and
maps run uncached. `cache.db` and value files are 0600, folders 0700, whatever the umask.

The storage itself (the JSON-only diskcache `Disk`, the layout of a row, which value
files are trusted, the SQL that bypasses `Cache.get`) is `ipychat.engine.cachedisk`; the
value format and the report types, shared with the Redis store, `ipychat.engine.cacheentry`.
Every name is importable from here as before.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import MODE_RAW

from ipychat.core.files import UnsafeDirectory, private_directory
from ipychat.engine.cachedisk import (
    SELECT_MANY,
    SELECT_ONE,
    JSONOnlyDisk,
    Row,
    delete_where,
    is_lock_contention,
    private_database,
    write_rows,
    write_touches,
)
from ipychat.engine.cacheentry import CacheStats, CacheWarning, UntrustedEntry, cacheable, decode
from ipychat.engine.exchange import CachedReply  # the schema of a value (re-exported)

__all__ = [
    "DEFAULT_SIZE_LIMIT",
    "CacheStats",
    "CacheWarning",
    "CachedReply",
    "JSONOnlyDisk",
    "ResponseCache",
    "UntrustedEntry",
    "cacheable",
    "decode",
    "default_cache_dir",
]

DEFAULT_SIZE_LIMIT = 1 << 30
ENV_CACHE_DIR = "IPYCHAT_CACHE_DIR"

_TOUCH_BATCH = 512  # read-time updates are written in batches of this many...
_TOUCH_EVERY = 5.0  # ...or after this many seconds, or with the next write
_CHUNK = 500  # keys per SELECT in get_many (SQLite allows 32,766 parameters since 3.32)


def default_cache_dir() -> Path:
    """`$IPYCHAT_CACHE_DIR`, else `~/.cache/ipychat`."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "ipychat").expanduser()


def _check_key(key: object) -> None:
    if type(key) is not str:
        raise TypeError(
            f"cache keys are str (ipychat.core.keys.cache_key), not {type(key).__name__}"
        )


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
            rows = cache._sql(SELECT_ONE, (key,)).fetchall()
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
                sql = SELECT_MANY.format(",".join("?" * len(chunk)))
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
        rows: list[Row] = []
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
            # One write transaction, pending read times first (`write_rows`).
            write_rows(cache, rows, pending)
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
            return delete_where(cache, where, params)
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
                removed += delete_where(cache, where, chunk)
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
                if not is_lock_contention(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _open_once(self) -> diskcache.Cache:
        # Ours alone, nobody else can change it (UnsafeDirectory otherwise); from here on
        # the resolved path, so a symlink swapped after the check changes nothing.
        path = private_directory(self._directory)
        if os.name == "posix" and os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o700)  # ours, only readable by others: replies can be private
        private_database(path)
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
            # JSON in the row (most replies): what JSONOnlyDisk.fetch does, minus two calls.
            if mode == MODE_RAW and type(value) is bytes:
                reply: dict[str, Any] = decode(value)
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
                write_touches(cache, pending)
        except Exception as exc:  # read times are advisory: losing a batch is harmless
            if not is_lock_contention(exc):
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """A storage error at run time: skip on lock contention, otherwise disable."""
        if not is_lock_contention(exc):
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


def _warn(message: str) -> None:
    """Warn, attributed to the first caller outside this module (the session's line)."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the frame that called _warn
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, CacheWarning, stacklevel=level)
