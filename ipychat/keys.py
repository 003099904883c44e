"""Secrets and keys: the masking holder for API keys, redaction, and pure cache keys.

Nothing here does I/O. The API key lives only inside `Secret`; everything that could
print it (`repr`, `str`, logging, exception text) sees the mask instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Secret", "cache_key", "canonical_json", "mask", "redact", "redact_headers"]

# Header names whose values are credentials, lower-cased.
SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})

# Shapes of common credentials, so text from a server or a traceback is cleaned even of
# keys this process never held (e.g. a key echoed back inside an error message).
_KEY_SHAPES = re.compile(r"(sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}|Bearer\s+[A-Za-z0-9_\-\.=]{8,})")


def mask(value: str) -> str:
    """A recognisable but useless form of a key: `sk-...wxyz` (last four characters only)."""
    if len(value) <= 8:
        return "***"
    return f"{value[:3]}...{value[-4:]}"


class Secret:
    """Holds a credential; `repr`/`str`/format never show it. Call `.reveal()` at the wire."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("an API key must be a non-empty string")
        self._value = value.strip()

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({mask(self._value)!r})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:  # never pickle a key into a cache or a notebook
        raise TypeError("a Secret cannot be pickled")


def redact(text: str, secrets: Iterable[Secret | str | None] = ()) -> str:
    """`text` with every given secret and every key-shaped string replaced by a mask."""
    for secret in secrets:
        if secret is None:
            continue
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value:
            text = text.replace(value, mask(value))
    return _KEY_SHAPES.sub(
        lambda m: mask(m.group(0)) if not m.group(0).startswith("Bearer") else "Bearer ***", text
    )


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` fit for a log line: credential headers replaced by `***`."""
    return {k: ("***" if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, unicode kept, floats as JSON writes them."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def cache_key(endpoint: str, request: Mapping[str, Any]) -> str:
    """sha256 of what determines a reply: the endpoint and the request body.

    `request` is the JSON body as sent (model, messages after trimming, sampling
    parameters, response format). Fields that do not change the reply (`stream`,
    `stream_options`, `user`) are dropped, so a streamed and a non-streamed request
    share an entry. Credentials never reach this function: they live in headers.
    """
    body = {k: v for k, v in request.items() if k not in _NOT_IN_KEY}
    payload = canonical_json({"endpoint": endpoint.rstrip("/"), "request": body})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_NOT_IN_KEY = frozenset({"stream", "stream_options", "user"})
