"""What `ipychat.testing.FakeOpenAIServer` remembers: the request log and the counters.

Both travel between a spawned server and its parent as plain dicts (`to_dict`/`from_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ipychat.testing.faults import Fault
from ipychat.testing.images import SentImage, sent_images

__all__ = ["CREDENTIAL_HEADERS", "RecordedRequest", "ServerStats", "mask", "redact_headers"]

# The request headers that carry a key, lower-cased: OpenAI's and most providers'
# `Authorization: Bearer`, Azure's `api-key`, Anthropic's native `x-api-key`, and a proxy's. The fake server is a server: it keeps its own list of
# what it accepts, rather than borrowing the client's (the testing wing depends on
# ipychat's public API only).
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` fit for a repr or a log line: credential values become `***`."""
    return {k: ("***" if k.lower() in CREDENTIAL_HEADERS else v) for k, v in headers.items()}


def mask(key: str) -> str:
    """A key as an error message may quote it: recognisable, useless (`sk-...wxyz`)."""
    return "***" if len(key) <= 8 else f"{key[:3]}...{key[-4:]}"


@dataclass
class RecordedRequest:
    """A request as the server received it; `status` is None while pending or when no
    response was sent (reset, hang). `time` is `time.monotonic()` at arrival (comparable
    across processes on one machine). The repr hides credential headers."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or None (no body or not JSON)
    time: float
    request_id: str
    query: str = ""
    status: int | None = None
    fault: Fault | None = None

    def __repr__(self) -> str:
        fault = f", fault={self.fault.kind!r}" if self.fault else ""
        return (
            f"RecordedRequest({self.method} {self.path}, status={self.status}{fault}, "
            f"headers={redact_headers(self.headers)!r})"
        )

    @property
    def images(self) -> list[SentImage]:
        """The image parts of a chat request, decoded: format, size, detail, sha256."""
        return sent_images(self.body)

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["fault"] = self.fault.to_dict() if self.fault else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordedRequest:
        fault = Fault.parse(data["fault"]) if data.get("fault") else None
        return cls(**{**data, "fault": fault})


@dataclass(frozen=True)
class ServerStats:
    """Counters since start (or the last `reset_log`); admin requests are not counted."""

    total: int = 0  # requests received
    chat: int = 0  # of which chat completions
    by_status: dict[int, int] = field(default_factory=dict)  # responses sent, by status
    rate_limited: int = 0  # 429s from the rpm/tpm limiter (injected 429s are faults)
    faults: int = 0  # injected faults
    no_response: int = 0  # requests answered with a reset or a hang
    connections: int = 0  # TCP connections accepted
    max_in_flight: int = 0  # peak of chat requests being served at once

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerStats:
        by_status = {int(k): int(v) for k, v in data.get("by_status", {}).items()}
        return cls(**{**data, "by_status": by_status})
