"""What a cache entry is, whatever stores it: the value format and the cache's report types.

A value is a JSON object with a str `text` (the schema is `ipychat.engine.exchange.
CachedReply`), stored as UTF-8 JSON bytes, zlib-compressed when large; never pickle, so a
tampered entry cannot run code. `decode` turns stored bytes back into a reply and refuses
anything else (`UntrustedEntry`); `cacheable` says which replies may be stored at all.
Shared by the disk cache (`ipychat.engine.cache`, `ipychat.engine.cachedisk`) and the
Redis store (`ipychat.engine.stores.redis`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_VALUE", "CacheStats", "CacheWarning", "UntrustedEntry", "cacheable", "decode"]

MAX_VALUE = 64 << 20  # a decompressed value larger than this is a zip bomb, not a reply


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


def decode(data: Any) -> dict[str, Any]:
    """A stored value back to a reply dict; `UntrustedEntry` for anything else."""
    try:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, bytes):
            raise UntrustedEntry(f"a {type(data).__name__}, not JSON")
        if data[:1] != b"{":  # compressed (our JSON always starts with "{")
            inflate = zlib.decompressobj()
            data = inflate.decompress(data, MAX_VALUE)
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
