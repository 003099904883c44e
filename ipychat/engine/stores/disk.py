"""The default store: the private diskcache directory of `ipychat.engine.cache`.

All of the storage (JSON-only SQLite rows and value files, 0600/0700 whatever the umask,
the directory checks, least-recently-used eviction at `size_limit`, read times written in
batches) is `ResponseCache`'s; this class is the `CacheStore` face of it. Size policy:
`size_limit` bytes (default 1 GiB), least recently used first; no time-to-live (clear old
entries with `clear(older_than_days=)`). Processes on one machine share the directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ipychat.engine.cache import DEFAULT_SIZE_LIMIT, ResponseCache
from ipychat.engine.stores.base import StoreStats, check_age, check_entry, check_keys

__all__ = ["DiskStore"]


class DiskStore:
    """A `CacheStore` in a private directory (`$IPYCHAT_CACHE_DIR`, else ~/.cache/ipychat)."""

    backend = "disk"

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        timeout: float = 10.0,
    ) -> None:
        self._cache = ResponseCache(directory, size_limit=size_limit, timeout=timeout)

    def __repr__(self) -> str:
        return f"DiskStore({self.location!r}, {'disabled' if self.disabled else 'usable'})"

    @property
    def location(self) -> str:
        return str(self._cache.directory)

    @property
    def disabled(self) -> bool:
        return self._cache.disabled

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = check_keys(keys)
        found = self._cache.get_many(wanted)
        # In the order asked (SQLite answers in its own order).
        return {key: found[key] for key in dict.fromkeys(wanted) if key in found}

    def set_many(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        rows = []
        for key, value in items:
            check_entry(value)
            rows.append((key, dict(value)))
        check_keys(key for key, _ in rows)
        self._cache.set_many(rows)

    def delete(self, keys: Iterable[str]) -> int:
        return self._cache.delete(check_keys(keys))

    def clear(self, *, older_than_days: float | None = None, model: str | None = None) -> int:
        check_age(older_than_days)
        return self._cache.clear(older_than_days=older_than_days, model=model)

    def stats(self) -> StoreStats:
        st = self._cache.stats()
        return StoreStats(
            backend=self.backend,
            location=self.location,
            entries=st.entries,
            size_bytes=st.size_bytes,
            disabled=st.disabled,
        )

    def close(self) -> None:
        self._cache.close()
