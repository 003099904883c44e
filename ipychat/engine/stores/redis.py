"""A cache shared by every machine that can reach one Redis server (PyPI `redis`).

    IPYCHAT_CACHE_URL=redis://[[user]:password@]host[:port][/db][?prefix=NAME&ttl=AGE]
    IPYCHAT_CACHE_URL=rediss://...[&ca=/path/to/ca.pem]    (TLS; the host name is checked)

An entry is one Redis string: the key is `prefix` + the sha256 hex key (prefix `ipychat:`
unless given, so several teams or projects can share a database), the value the entry's
JSON (zlib-compressed from 4 KiB, as on disk), read back through the same decoder as the
disk cache, which never unpickles and refuses anything that is not a reply. Batches are
pipelined: `get_many` is one round trip of MGETs, `set_many` one of MSETs (of SET ... EX
with a ttl).

Policy. `ttl` (seconds, or with a unit: `90s`, `30m`, `12h`, `7d`) makes every entry
expire that long after its write (SET ... EX); without it entries live until cleared.
Size is the server's business: give it `maxmemory` and `maxmemory-policy allkeys-lru`
(or `volatile-lru` with a ttl) and Redis evicts least recently used entries as the disk
cache does. A full server with `noeviction` refuses writes: ipychat warns once and keeps
reading. Whoever can write to the database can plant replies: share it only with people
you trust, as you would the cache directory.

A server that is down, or refuses the password, turns the cache off with one warning and
the session runs uncached, as with an unsafe cache directory; so does an error at run
time (a server restarted mid-map: restart the kernel to use the cache again). The
password is never shown: `location`, `repr` and messages print `:***@`.

A store pickles as its URL and timeout (for Dask workers, `ipychat.map.dask`): the copy
connects on first use, so a pickle carries the password but no connection or state.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, OutOfMemoryError, RedisError
from redis.retry import Retry

from ipychat.engine.cache import UntrustedEntry, cacheable, decode
from ipychat.engine.stores.base import (
    CacheURLError,
    StoreStats,
    check_age,
    check_entry,
    check_keys,
    entry_created,
    entry_model,
    warn,
)

__all__ = ["DEFAULT_PREFIX", "RedisStore", "RedisTarget", "parse_redis_url", "redact_url"]

DEFAULT_PREFIX = "ipychat:"
FORMAT = "redis[s]://[[user]:password@]host[:port][/db][?prefix=NAME&ttl=AGE]"
_CHUNK = 1000  # keys per MGET / commands per pipeline round trip
_COMPRESS_FROM = 4096  # bytes of JSON, as the disk cache
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_HEX_KEY = re.compile(rb"[0-9a-f]{64}")
_GLOB = re.compile(r"([*?\[\]\\])")  # special in a SCAN MATCH pattern


def redact_url(url: str) -> str:
    """`url` with whatever sits before its last `@` replaced by `***` (but a user name).

    Used for URLs that did not parse, so it assumes nothing: a password with an unescaped
    `/`, `#` or `@` in it is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon and "/" not in user and "#" not in user else "***"
    return f"{scheme}://{shown}@{host}"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed cache URL. `url` is its display form, without the password."""

    host: str
    port: int = 6379
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    ttl: int | None = None  # seconds
    ca_certs: str | None = None

    @property
    def url(self) -> str:
        user = self.username or ""
        auth = f"{user}:***@" if self.password is not None else f"{user}@" if user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.tls else "redis"
        shown = f"{scheme}://{auth}{host}:{self.port}/{self.db}"
        query = [f"prefix={self.prefix}"] if self.prefix != DEFAULT_PREFIX else []
        if self.ttl is not None:
            query.append(f"ttl={self.ttl}")
        return shown + ("?" + "&".join(query) if query else "")


def parse_redis_url(url: str) -> RedisTarget:
    """`url` as a `RedisTarget`; `CacheURLError` (one line, no password) if it is not one."""

    def bad(problem: str) -> CacheURLError:
        return CacheURLError(f"cache URL {redact_url(url)}: {problem}; expected {FORMAT}")

    try:
        parts = urlsplit(url.strip())
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        raise bad("it is not a URL") from None
    if "@" in parts.path + parts.fragment + parts.query.partition("=")[0]:
        raise bad("a '/', '?' or '#' in the password must be written %2F, %3F or %23")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port is not a number from 1 to 65535") from None
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise bad(f"the scheme is not redis:// or rediss:// ({parts.scheme or 'none'})")
    if parts.fragment or url.rstrip().endswith("#"):
        raise bad("it has a '#'; write one in a password as %23")
    if not parts.hostname:
        raise bad("it names no host")
    if port == 0:
        raise bad("the port is not a number from 1 to 65535")
    db = parts.path.strip("/") or "0"
    if not db.isdigit() or not db.isascii() or int(db) > 100_000:
        raise bad(f"the database is not a number ({parts.path[1:]!r})")
    options = _options(parts.query, parts.scheme.lower() == "rediss", bad)
    return RedisTarget(
        host=parts.hostname,
        port=port or 6379,
        db=int(db),
        tls=parts.scheme.lower() == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        **options,
    )


def _options(query: str, tls: bool, bad: Any) -> dict[str, Any]:
    """The `?prefix=&ttl=&ca=` part of a cache URL."""
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in options:
            raise bad(f"{name} is given twice")
        if name == "prefix":
            if not value or not value.isprintable() or " " in value:
                raise bad("the prefix is empty or has spaces or control characters")
            options[name] = value
        elif name == "ttl":
            match = _AGE.fullmatch(value.strip().lower())
            seconds = float(match[1]) * _UNITS[match[2]] if match else math.nan
            if not 1 <= seconds <= 10 * 365 * 86400:
                raise bad(f"ttl is not an age from 1s to 3650d ({value!r})")
            options[name] = round(seconds)
        elif name == "ca" and tls:
            options["ca_certs"] = os.path.expanduser(value)
        else:
            known = "prefix, ttl, ca (rediss:// only)"
            raise bad(f"unknown option {name!r} (known: {known})")
    return options


def _encode(value: Mapping[str, Any]) -> bytes:
    """JSON bytes of an entry (compressed from 4 KiB); TypeError/ValueError if not JSON."""
    data = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    raw = data.encode("utf-8")
    return zlib.compress(raw, 1) if len(raw) >= _COMPRESS_FROM else raw


class RedisStore:
    """A `CacheStore` on a Redis server (see the module docstring).

    Connects on first use, and checks the server answers (PING) then; `timeout` is how
    long any one call may take before the cache is given up for this session.
    """

    backend = "redis"

    def __init__(self, target: RedisTarget | str, *, timeout: float = 10.0) -> None:
        self._target = parse_redis_url(target) if isinstance(target, str) else target
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._broken: str | None = None
        self._warned: set[str] = set()
        self._names = _GLOB.sub(r"\\\1", self._target.prefix) + "?" * 64  # SCAN MATCH

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as what opens it again (its parsed URL and timeout), never its lock or
        # connection: a Dask worker that unpickles it connects on first use, to the same
        # server, database and prefix. The URL holds the password, as IPYCHAT_CACHE_URL
        # does: it travels wherever the pickle goes (see the module docstring).
        return (_reopen, (self._target, self._timeout))

    def __repr__(self) -> str:
        state = "disabled" if self._broken else "connected" if self._client else "not connected"
        return f"RedisStore({self.location!r}, {state})"

    @property
    def location(self) -> str:
        return self._target.url

    @property
    def ttl(self) -> int | None:
        return self._target.ttl

    @property
    def target(self) -> RedisTarget:
        """The server, database and prefix (with the password: for other connections to the
        same server, e.g. the shared pace of `ipychat.map.sharedpace`)."""
        return self._target

    @property
    def disabled(self) -> bool:
        return self._redis() is None

    # ----- the contract ---------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        unique = list(dict.fromkeys(check_keys(keys)))
        client = self._redis()
        if client is None or not unique:
            return {}
        prefix = self._target.prefix
        try:
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(unique), _CHUNK):
                pipe.mget([prefix + key for key in unique[start : start + _CHUNK]])
            blobs = [blob for chunk in pipe.execute() for blob in chunk]
        except RedisError as exc:
            self._failed(exc)
            return {}
        found: dict[str, dict[str, Any]] = {}
        for key, blob in zip(unique, blobs, strict=True):
            value = self._decode(blob) if blob is not None else None
            if value is not None:
                found[key] = value
        return found

    def set_many(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        now, rows = time.time(), []
        for key, value in items:
            check_entry(value)
            entry = {**value, "created": entry_created(value, now)}
            rows.append((key, entry))
        check_keys(key for key, _ in rows)
        rows = [(key, entry) for key, entry in rows if cacheable(entry)]
        client = self._redis()
        if client is None or not rows:
            return
        try:
            blobs = [(self._target.prefix + key, _encode(value)) for key, value in rows]
        except (TypeError, ValueError) as exc:  # nothing was written
            self._warn_once(
                "json",
                f"ipychat: a reply was not cached because it is not plain JSON ({exc}); "
                "this is a bug, please report it.",
            )
            return
        try:
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(blobs), _CHUNK):
                chunk = blobs[start : start + _CHUNK]
                if self._target.ttl is None:  # one command for the chunk
                    pipe.mset(dict(chunk))
                else:  # MSET sets no expiry: a SET ... EX each
                    for name, blob in chunk:
                        pipe.set(name, blob, ex=self._target.ttl)
            pipe.execute()  # one round trip
        except OutOfMemoryError as exc:
            self._warn_once(
                "full",
                f"ipychat: the Redis cache at {self.location} is full and refuses new "
                f"entries ({self._scrub(exc)}); replies are served from it but not added. "
                "Give the server a maxmemory-policy such as allkeys-lru, or clear old entries.",
            )
        except RedisError as exc:
            self._failed(exc)

    def delete(self, keys: Iterable[str]) -> int:
        names = [self._target.prefix + key for key in dict.fromkeys(check_keys(keys))]
        return self._unlink(names)

    def clear(self, *, older_than_days: float | None = None, model: str | None = None) -> int:
        check_age(older_than_days)
        client = self._redis()
        if client is None:
            return 0
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400.0
        removed = 0
        try:
            for names in self._scan(client):
                if cutoff is not None or model is not None:
                    values = client.mget(names)
                    names = [
                        name
                        for name, blob in zip(names, values, strict=True)
                        if self._matches(blob, cutoff, model)
                    ]
                removed += self._unlink(names)
        except RedisError as exc:
            self._failed(exc)
        return removed

    def stats(self) -> StoreStats:
        entries = size = 0
        client = self._redis()
        if client is not None:
            try:
                for names in self._scan(client):
                    pipe = client.pipeline(transaction=False)
                    for name in names:
                        pipe.strlen(name)
                    lengths = pipe.execute()
                    entries += sum(1 for n in lengths if n)  # 0: expired since the SCAN
                    size += sum(lengths)
            except RedisError as exc:
                self._failed(exc)
                entries = size = 0
        return StoreStats(
            backend=self.backend,
            location=self.location,
            entries=entries,
            size_bytes=size,
            disabled=self._broken is not None,
            ttl=self._target.ttl,
        )

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a dead connection: nothing to save
                client.close()

    # ----- internals ------------------------------------------------------------------------

    def _redis(self) -> redis.Redis | None:
        """The client, connected and checked on first use; None once the cache is off."""
        if self._broken is not None:
            return None
        if self._client is not None:
            return self._client
        with self._lock:
            if self._client is None and self._broken is None:
                t = self._target
                client = redis.Redis(
                    host=t.host,
                    port=t.port,
                    db=t.db,
                    username=t.username,
                    password=t.password,
                    ssl=t.tls,
                    ssl_ca_certs=t.ca_certs,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=min(self._timeout, 5.0),
                    # One quick retry: a connection the server closed while idle reconnects.
                    retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
                    client_name="ipychat",
                )
                try:
                    client.ping()
                except RedisError as exc:
                    with contextlib.suppress(Exception):
                        client.close()
                    self._disable_locked(exc)
                else:
                    self._client = client
            return self._client

    def _scan(self, client: redis.Redis) -> Iterator[list[bytes]]:
        """Our keys (prefix + 64 hex, nothing else of a shared database), in batches."""
        prefix = self._target.prefix.encode("utf-8")
        batch: list[bytes] = []
        for name in client.scan_iter(match=self._names, count=_CHUNK):
            if name.startswith(prefix) and _HEX_KEY.fullmatch(name, len(prefix)):
                batch.append(name)
                if len(batch) >= _CHUNK:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _unlink(self, names: list[Any]) -> int:
        client = self._redis()
        if client is None or not names:
            return 0
        try:
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(names), _CHUNK):
                pipe.unlink(*names[start : start + _CHUNK])
            return int(sum(pipe.execute()))
        except RedisError as exc:
            self._failed(exc)
            return 0

    def _decode(self, blob: bytes) -> dict[str, Any] | None:
        try:
            value = decode(blob)
        except UntrustedEntry as exc:
            self._warn_once(
                "entry",
                f"ipychat: ignored an entry in the Redis cache at {self.location} that "
                f"ipychat did not write ({exc}); it counts as a miss and the next reply "
                "replaces it.",
            )
            return None
        return value if cacheable(value) else None

    @staticmethod
    def _matches(blob: bytes | str | None, cutoff: float | None, model: str | None) -> bool:
        """Whether `clear`'s filter takes this entry (one it cannot read: never)."""
        try:
            value = decode(blob) if blob is not None else None
        except UntrustedEntry:
            return False
        if value is None:
            return False
        if model is not None and entry_model(value) != model:
            return False
        return cutoff is None or entry_created(value, math.inf) < cutoff

    def _scrub(self, exc: BaseException) -> str:
        """`Type: message` on one line, the password (if it is in there at all) masked."""
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        password = self._target.password
        return text.replace(password, "***") if password else text

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._disable_locked(exc)
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _disable_locked(self, exc: BaseException) -> None:
        if self._broken is not None:
            return
        self._broken = reason = self._scrub(exc)
        if isinstance(exc, AuthenticationError):
            what, fix = "refused the login", "Check the user and password in IPYCHAT_CACHE_URL"
        elif self._client is None:
            what, fix = "cannot be reached", "Start the server or fix IPYCHAT_CACHE_URL"
        else:
            what, fix = "failed", "Check the server"
        warn(
            f"ipychat: carrying on without a cache: the Redis server at {self.location} "
            f"{what} ({reason}). {fix}, then restart the kernel."
        )

    def _warn_once(self, what: str, message: str) -> None:
        with self._lock:
            if what in self._warned:
                return
            self._warned.add(what)
        warn(message)


def _reopen(target: RedisTarget, timeout: float) -> RedisStore:
    """A `RedisStore` unpickled: a fresh one on the same target (`RedisStore.__reduce__`)."""
    return RedisStore(target, timeout=timeout)
