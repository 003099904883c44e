"""Where cache entries live: a small backend interface and its two implementations.

`open_store()` picks one: `IPYCHAT_CACHE_URL` (`redis://…`, `rediss://…`) if set, else the
private directory `IPYCHAT_CACHE_DIR` (default ~/.cache/ipychat). `CacheStore` (in
`base`) is the contract both keep; `DiskStore` (`disk`, diskcache, the default) and
`RedisStore` (`redis`, needs `pip install 'ipychat[redis]'`) are imported on first use.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from ipychat.engine.stores.base import CacheStore, CacheURLError, StoreStats

if TYPE_CHECKING:
    from ipychat.engine.stores.disk import DiskStore
    from ipychat.engine.stores.redis import RedisStore

__all__ = ["ENV_CACHE_URL", "CacheStore", "CacheURLError", "StoreStats", "open_store"]

ENV_CACHE_URL = "IPYCHAT_CACHE_URL"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def open_store(
    target: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 10.0,
    size_limit: int | None = None,
) -> DiskStore | RedisStore:
    """The store `target` names: a redis:// or rediss:// URL, a file:// URL or a directory.

    None: `$IPYCHAT_CACHE_URL` if set, else the default directory. Opening connects to
    nothing and creates nothing: a store does that on first use, and if it cannot, it
    warns once and runs as a no-op (see `base`). A URL that cannot be right raises
    `CacheURLError` at once, in one line without its password. `timeout`: seconds one
    call may wait (for a lock, or the server). `size_limit`: bytes the disk store keeps
    (default 1 GiB); a Redis server's size is its own `maxmemory`.
    """
    if target is None:
        target = os.environ.get(ENV_CACHE_URL, "").strip() or None
    if isinstance(target, str) and (scheme := _SCHEME.match(target.strip())):
        name = scheme[1].lower()
        if name in ("redis", "rediss"):
            return _redis_store(target, timeout)
        if name != "file":
            from ipychat.engine.stores.redis import FORMAT, redact_url

            raise CacheURLError(
                f"cache URL {redact_url(target)}: ipychat stores its cache in Redis "
                f"({FORMAT}) or in a directory, not in {name}://"
            )
        target = target.strip()[len("file://") :]
    from ipychat.engine.stores.disk import DiskStore

    if size_limit is None:
        return DiskStore(target, timeout=timeout)
    return DiskStore(target, timeout=timeout, size_limit=size_limit)


def _redis_store(url: str, timeout: float) -> RedisStore:
    try:
        from ipychat.engine.stores.redis import RedisStore
    except ImportError as exc:
        if exc.name != "redis":
            raise
        raise CacheURLError(
            "a redis:// cache needs the redis package: pip install 'ipychat[redis]'"
        ) from None
    return RedisStore(url, timeout=timeout)
