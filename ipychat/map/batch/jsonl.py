"""The Batch API's input files: one JSON line per request, split into parts within
OpenAI's limits, and the output files' lines read back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

__all__ = [
    "ENDPOINT",
    "MAX_BYTES",
    "MAX_REQUESTS",
    "fingerprint",
    "parse_line",
    "request_line",
    "split_parts",
]

ENDPOINT = "/v1/chat/completions"
# OpenAI's limits per batch input file; a map above either is split into several batches.
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024


def request_line(custom_id: str, body: dict[str, Any]) -> bytes:
    request = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def split_parts(
    sizes: list[tuple[str, int]], max_requests: int, max_bytes: int
) -> Iterator[list[str]]:
    """Consecutive groups of at most `max_requests` lines and `max_bytes` bytes (a line
    larger than `max_bytes` alone goes in a group of its own: the provider judges it)."""
    group: list[str] = []
    size = 0
    for cid, n in sizes:
        if group and (len(group) >= max_requests or size + n > max_bytes):
            yield group
            group, size = [], 0
        group.append(cid)
        size += n
    if group:
        yield group


def fingerprint(by_key: dict[str, Any]) -> str:
    return hashlib.sha256("\n".join(sorted(by_key)).encode()).hexdigest()


def parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
