"""The contract every cache backend keeps (`CacheStore`), and the checks they share.

A store keeps cache entries: JSON objects keyed by the sha256 hex of
`ipychat.core.keys.cache_key`. It knows nothing of requests, prices or hit counters; the
response cache above it does. The contract, for every backend alike (tests/engine/
test_stores.py runs one suite against each):

- Keys are 64 lowercase hex digits. A key that is not a str raises TypeError, one of
  another shape ValueError: both are bugs of the caller, never the user's input.
- Values are JSON objects with a str `text` (the entry schema, `CachedReply`); anything
  else raises TypeError. A value JSON cannot encode (NaN, a set, an object) is a bug too,
  but it must not break a cell: that batch is not stored, with one `CacheWarning`. An
  empty or failed reply (`cacheable()` false) is silently not stored, and one found in a
  store reads as a miss. A stored value ipychat did not write (not JSON, not a reply)
  reads as a miss with one warning. Nothing is ever unpickled.
- `get_many(keys)` returns the hits by key, in the order the keys were first given;
  misses are left out. `set_many(items)` writes a batch in one round trip (one SQLite
  transaction; one Redis pipeline) and replaces existing entries. An entry keeps its
  `created` time if it has a valid one, else gets the time of the write.
- `delete(keys)` and `clear(older_than_days=, model=)` return how many entries went.
  `clear()` with no filter removes every entry of this store and nothing else (a Redis
  database shared with other programs keeps their keys). `model` matches the entry's
  `request_model`, else its `model`; `older_than_days` compares `created`.
- `stats()` counts entries and bytes as every client of the store sees them.
- Storage trouble never raises: an unusable store (an unsafe directory, a Redis server
  that is down or refuses the password) warns once, in one line that says why and what to
  do, and then does nothing (`disabled`): reads miss, writes are dropped, counts are 0,
  and the session runs uncached until the kernel restarts.
- `location`, `repr()` and every message name the store without its password.
- Thread-safe; after `fork` a child opens its own connections. `close()` releases them;
  the next call opens them again.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ipychat.core.errors import ConfigError
from ipychat.engine.cache import CacheWarning

__all__ = [
    "CacheStore",
    "CacheURLError",
    "StoreStats",
    "check_age",
    "check_entry",
    "check_keys",
    "entry_created",
    "entry_model",
    "warn",
]

KEY_SHAPE = re.compile(r"[0-9a-f]{64}")
_PACKAGE = str(Path(__file__).resolve().parent)


class CacheURLError(ConfigError, ValueError):
    """`IPYCHAT_CACHE_URL` (or a URL given to `open_store`) is not one ipychat can use."""


@dataclass(frozen=True)
class StoreStats:
    """What a store holds, as every client sees it (hits and savings are counted above)."""

    backend: str  # "disk" or "redis"
    location: str  # the directory, or the URL without its password
    entries: int
    size_bytes: int  # disk: its files (SQLite pages and all); Redis: the values' bytes
    disabled: bool = False
    ttl: int | None = None  # seconds an entry lives after its write (Redis); None: no expiry


@runtime_checkable
class CacheStore(Protocol):
    """A cache backend (the module docstring is its contract)."""

    @property
    def backend(self) -> str: ...

    @property
    def location(self) -> str: ...

    @property
    def disabled(self) -> bool: ...

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]: ...

    def set_many(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> None: ...

    def delete(self, keys: Iterable[str]) -> int: ...

    def clear(self, *, older_than_days: float | None = None, model: str | None = None) -> int: ...

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...


def check_keys(keys: Iterable[str]) -> list[str]:
    """`keys` as a list, each checked (see the module docstring)."""
    keys = list(keys)
    for key in keys:
        if type(key) is not str:
            raise TypeError(
                f"cache keys are str (ipychat.core.keys.cache_key), not {type(key).__name__}"
            )
        if not KEY_SHAPE.fullmatch(key):
            raise ValueError("cache keys are sha256 hex digests (ipychat.core.keys.cache_key)")
    return keys


def check_entry(value: object) -> None:
    """TypeError unless `value` is a JSON object with a str `text` (a bug, not user input)."""
    if not isinstance(value, Mapping) or not isinstance(value.get("text"), str):
        raise TypeError("a cache value is a dict with a str 'text'")


def check_age(older_than_days: float | None) -> None:
    if older_than_days is not None and not older_than_days >= 0:  # also refuses NaN
        raise ValueError(f"older_than_days must be 0 or more, not {older_than_days}")


def entry_created(value: Mapping[str, Any], now: float) -> float:
    """The entry's `created` time, or `now` for a missing or impossible one (NaN, 1e400…)."""
    created = value.get("created")
    if isinstance(created, (int, float)) and math.isfinite(created) and 0 <= created < 1e11:
        return float(created)
    return now


def entry_model(value: Mapping[str, Any]) -> str | None:
    """The model `clear(model=)` matches: the one the request asked for, else the one that
    answered."""
    tag = value.get("request_model") or value.get("model")
    return tag if isinstance(tag, str) else None


def warn(message: str) -> None:
    """A `CacheWarning`, attributed to the first caller outside this package."""
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, CacheWarning, stacklevel=level)
