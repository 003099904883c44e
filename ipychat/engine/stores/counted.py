"""The session's response cache on a `CacheStore` (today: Redis, `IPYCHAT_CACHE_URL`).

`StoreCache` is a `ResponseCache` whose entries live in a store instead of the private
directory: the engine, the map, the Batch API and `%chat cache` call the same methods
(`get_many`, `set_many`, `record_hits`, `stats`, `clear`, `directory`) and see the same
counters, which stay here (hits, misses and savings are this process's; the store only
keeps entries). `directory` stays the default cache folder: what needs a local folder
(the Batch API registry, the local model's log) keeps using it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ipychat.engine.cache import CacheStats, ResponseCache, cacheable
from ipychat.engine.stores import ENV_CACHE_URL, open_store
from ipychat.engine.stores.base import CacheStore, CacheURLError, warn

__all__ = ["StoreCache", "open_cache"]


def open_cache() -> ResponseCache | None:
    """The session's cache: on the Redis server `IPYCHAT_CACHE_URL` names, if it is set,
    else in the private directory exactly as without stores. A URL ipychat cannot use:
    one warning, and the session runs uncached (as with an unsafe cache directory)."""
    if not os.environ.get(ENV_CACHE_URL, "").strip():
        return ResponseCache()
    try:
        store = open_store()
    except CacheURLError as exc:
        warn(f"ipychat: carrying on without a cache: {exc}")
        return None
    if store.backend == "disk":  # a file:// URL: a directory, as IPYCHAT_CACHE_DIR
        return ResponseCache(store.location)
    return StoreCache(store)


class StoreCache(ResponseCache):
    """A `ResponseCache` that reads and writes `store` (every storage method goes there)."""

    def __init__(self, store: CacheStore) -> None:
        super().__init__()  # the default directory: `directory` for what needs a folder
        self._store = store

    def __repr__(self) -> str:
        return f"StoreCache({self._store!r})"

    @property
    def store(self) -> CacheStore:
        return self._store

    @property
    def disabled(self) -> bool:
        return self._store.disabled

    def get(self, key: str) -> dict[str, Any] | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """As `ResponseCache.get_many`: hits and misses counted per key given."""
        keys = list(keys)
        found = self._store.get_many(keys)
        hits = sum(1 for key in keys if key in found)
        with self._lock:
            self._hits += hits
            self._misses += len(keys) - hits
        return found

    def set_many(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        rows = list(items)
        self._store.set_many(rows)
        if not self._store.disabled:  # a store that failed on this write dropped it
            with self._lock:
                self._writes += sum(1 for _, value in rows if cacheable(value))

    def delete(self, keys: Iterable[str]) -> int:
        return self._store.delete(keys)

    def clear(self, *, older_than_days: float | None = None, model: str | None = None) -> int:
        return self._store.clear(older_than_days=older_than_days, model=model)

    def stats(self) -> CacheStats:
        """Entries and bytes as every client of the store sees them; counters of this one."""
        st = self._store.stats()
        with self._lock:
            return CacheStats(
                entries=st.entries,
                size_bytes=st.size_bytes,
                hits=self._hits,
                misses=self._misses,
                saved=self._saved,
                directory=str(self.directory),
                writes=self._writes,
                disabled=st.disabled,
                backend=st.backend,
                location=st.location,
            )

    def close(self) -> None:
        self._store.close()
