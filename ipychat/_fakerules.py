"""The rules of the fake OpenAI server, free of I/O: no sockets, no event loop.

What `ipychat.testing.FakeOpenAIServer` (through `ipychat._fakeopenai`) and its Batch API
(`ipychat._fakebatch`) both follow:

- OpenAI's error bodies and messages (`_error_body`, `_Reject`, `_ERROR_MESSAGES`, ...);
- token accounting: the prompt tokens of a chat request (`_prompt_tokens`), a reply cut
  at `max_tokens` (`_truncate`), the default echo reply and the stream's deltas (`_split`);
- the rpm/tpm rate limiter (`_RateLimiter`, two `_Bucket`s) with its `x-ratelimit-*`
  headers and 429s, whose behaviour the `ipychat.testing` docstring describes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "requests",
}
_ERROR_MESSAGES = {
    429: "Rate limit reached (injected by the fake server). Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_LIMITS_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."


def _format_duration(seconds: float) -> str:
    """OpenAI's reset format: '20ms' under a second, else like '1s', '8.5s', '6m0s', '1h0m0s'."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _prompt_tokens(messages: list[Any], count: Callable[[str], int]) -> int:
    """OpenAI's chat accounting (the cookbook's formula): 3 per message, the tokens of each
    string field (role, content, name), 1 more for a name, and 3 to prime the reply."""
    total = 3
    for message in messages:
        total += 3
        if not isinstance(message, dict):
            continue
        for key, value in message.items():
            text = _content_text(value) if key == "content" else value
            if isinstance(text, str) and text:
                total += count(text)
            if key == "name":
                total += 1
    return total


def _echo(body: Mapping[str, Any]) -> str:
    """The default reply: deterministic, derived from the prompt, easy to assert on."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "Echo: " + _content_text(message.get("content"))
    return "Echo: "


def _truncate(text: str, limit: int, count: Callable[[str], int]) -> tuple[str, bool]:
    """The longest prefix of `text` within `limit` tokens (binary search over characters,
    so it works with any counter), and whether anything was cut."""
    if count(text) <= limit:
        return text, False
    low, high = 0, len(text)  # count(text[:low]) <= limit < count(text[:high])
    while high - low > 1:
        mid = (low + high) // 2
        if count(text[:mid]) <= limit:
            low = mid
        else:
            high = mid
    return text[:low], True


def _split(text: str, chunk_chars: int | None) -> list[str]:
    """Stream deltas: fixed-size slices, or words with their leading whitespace."""
    if not text:
        return []
    if chunk_chars:
        return [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]
    pieces = re.findall(r"\s*\S+", text)
    rest = text[sum(map(len, pieces)) :]
    if rest and pieces:
        pieces[-1] += rest
    return pieces or [text]


@dataclass
class _Bucket:
    """A continuously refilling budget: holds up to `limit`, gains limit/60 per second."""

    limit: int
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(float(self.limit), self.level + (now - self.stamp) * self.limit / 60.0)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 when it is now)."""
        deficit = amount - self.level
        return 0.0 if deficit <= 1e-9 else deficit * 60.0 / self.limit

    def headers(self, name: str) -> list[tuple[str, str]]:
        until_full = (self.limit - self.level) * 60.0 / self.limit
        return [
            (f"x-ratelimit-limit-{name}", str(self.limit)),
            (f"x-ratelimit-remaining-{name}", str(max(0, int(self.level + 1e-9)))),
            (f"x-ratelimit-reset-{name}", _format_duration(until_full)),
        ]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Reject(Exception):
    """An OpenAI-shaped error answer, raised wherever a request is found wanting."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = _error_body(message, type_, code, param)
        self.headers = list(headers)


class _RateLimiter:
    """OpenAI-style rpm/tpm limits, charged on arrival; runs on the server's loop only."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float]) -> None:
        now = clock()
        self.clock = clock
        self.requests = _Bucket(rpm, rpm, now) if rpm else None
        self.tokens = _Bucket(tpm, tpm, now) if tpm else None

    def headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.requests:
            out += self.requests.headers("requests")
        if self.tokens:
            out += self.tokens.headers("tokens")
        return out

    def take(self, tokens: int, model: str) -> list[tuple[str, str]]:
        """Charge one request of `tokens` tokens and return the `x-ratelimit-*` headers;
        raise a 429 when it does not fit now (a refused request is not charged)."""
        now = self.clock()
        for bucket in (self.requests, self.tokens):
            if bucket:
                bucket.refill(now)
        if self.tokens and tokens > self.tokens.limit:  # waiting cannot help
            message = (
                f"Request too large for {model} in organization org-fake on tokens per min "
                f"(TPM): Limit {self.tokens.limit}, Requested {tokens}. The input or output "
                f"tokens must be reduced in order to run successfully. {_LIMITS_URL}"
            )
            extra = [("x-should-retry", "false")]
            raise _Reject(
                429, message, "tokens", "rate_limit_exceeded", None, self.headers() + extra
            )
        wait_r = self.requests.wait_for(1) if self.requests else 0.0
        wait_t = self.tokens.wait_for(tokens) if self.tokens else 0.0
        if wait_r or wait_t:
            kind, bucket, asked = (
                ("requests", self.requests, 1) if wait_r else ("tokens", self.tokens, tokens)
            )
            assert bucket is not None
            wait = max(wait_r, wait_t)  # until both fit
            message = (
                f"Rate limit reached for {model} in organization org-fake on {kind} per min "
                f"({'RPM' if kind == 'requests' else 'TPM'}): Limit {bucket.limit}, "
                f"Used {round(bucket.limit - bucket.level)}, Requested {asked}. "
                f"Please try again in {_format_duration(wait)}. {_LIMITS_URL}"
            )
            extra = [
                ("retry-after-ms", str(math.ceil(wait * 1000))),
                ("retry-after", str(math.ceil(wait))),
            ]
            raise _Reject(429, message, kind, "rate_limit_exceeded", None, self.headers() + extra)
        if self.requests:
            self.requests.level -= 1
        if self.tokens:
            self.tokens.level -= tokens
        return self.headers()
