"""Plain data that crosses module boundaries: usage, rate-limit state, replies, estimates.

Pure: no I/O, no third-party imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CacheMode", "Completion", "Estimate", "RateLimitInfo", "Reply", "Usage"]


# How a request uses the response cache: read and write, write only, or neither.
CacheMode = Literal["use", "refresh", "off"]


@dataclass(frozen=True)
class Usage:
    """Token counts of one request. `estimated` is True when counted locally, not by the server."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_api(cls, data: Mapping[str, Any] | None) -> Usage | None:
        """From an OpenAI `usage` object; None when the server sent none."""
        if not data:
            return None
        details = data.get("prompt_tokens_details") or {}
        return cls(
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
        )


def _duration(value: str | None) -> float | None:
    """OpenAI's reset durations: '1s', '6m0s', '20ms', '1h2m3.5s', or plain seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    total, number = 0.0, ""
    i = 0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if value.startswith("ms", i) else ch
        if unit not in units or not number:
            return None
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return total if not number else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RateLimitInfo:
    """The `x-ratelimit-*` headers of one response (None where absent or unreadable)."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None  # seconds until the request budget is full again
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo | None:
        h = {k.lower(): v for k, v in headers.items()}
        info = cls(
            limit_requests=_int(h.get("x-ratelimit-limit-requests")),
            limit_tokens=_int(h.get("x-ratelimit-limit-tokens")),
            remaining_requests=_int(h.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_int(h.get("x-ratelimit-remaining-tokens")),
            reset_requests=_duration(h.get("x-ratelimit-reset-requests")),
            reset_tokens=_duration(h.get("x-ratelimit-reset-tokens")),
        )
        return None if info == cls() else info


@dataclass(frozen=True)
class Completion:
    """What the client returns for a whole request (streamed or not)."""

    text: str
    model: str
    finish_reason: str | None = None
    usage: Usage | None = None
    request_id: str | None = None
    retries: int = 0
    latency: float = 0.0
    time_to_first_token: float | None = None
    rate_limit: RateLimitInfo | None = None


@dataclass(frozen=True)
class Estimate:
    """What a request would cost before it is sent.

    `cost_low` assumes a one-token reply, `cost_high` the full `max_tokens`; both are None
    when the model has no known price (unknown is never shown as $0).
    """

    model: str
    messages: int
    prompt_tokens: int
    max_completion_tokens: int
    approximate: bool
    cost_low: float | None
    cost_high: float | None
    cost_batch: float | None = None
    context_window: int | None = None

    @property
    def context_share(self) -> float | None:
        if not self.context_window:
            return None
        return self.prompt_tokens / self.context_window


@dataclass(frozen=True)
class Reply:
    """A finished reply as the user sees it; `str(reply)` is the text."""

    text: str
    model: str
    usage: Usage | None = None
    cost: float | None = None
    cached: bool = False
    latency: float = 0.0
    finish_reason: str | None = None
    thread: str = "main"
    interrupted: bool = False
    saved: float | None = None  # money the cache saved on this reply
    dropped_turns: int = 0  # turns left out of the history to fit the context window
    time_to_first_token: float | None = None
    retries: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # A typed reply's answer (ask(schema=...) / choices=): the model instance, dict or label
    value: Any = field(default=None, compare=False)
    cache_key: str | None = None  # the request's key in the response cache
    turn: int = 0  # its place in the thread, from 1; 0 when it is in no thread
    cell: str | None = None  # the notebook cell it answered (None outside a notebook)
    replaced: bool = False  # the cell ran before: this turn replaced the cell's earlier one
    later_turns: int = 0  # when replaced: the turns after it, answered with the old text

    def __str__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        return self._repr_mimebundle_()[0]["text/markdown"]

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """What a notebook shows for a Reply (the result of a %%chat cell): Markdown with the
        footer, a readable text/plain (the text, then the footer in brackets: what
        `%chat import` reads back), and metadata saying how the answer was made."""
        from ipychat.core.format import footer, footer_markdown  # local: keep types import-light
        from ipychat.core.markdown import reply_markdown

        line = footer(self)
        data = {
            "text/markdown": f"{reply_markdown(self.text)}\n\n{footer_markdown(line)}",
            "text/plain": f"{self.text}\n\n[{line}]",
        }
        if self.extra.get("shown_as") == "text":  # %%chat -f text: verbatim, as it streamed
            import html

            data["text/html"] = (
                f"<pre>{html.escape(self.text)}</pre><sub><code>{html.escape(line)}</code></sub>"
            )
        return data, {"ipychat": self.record()}

    def record(self) -> dict[str, Any]:
        """How this reply was made, as JSON (a notebook output's metadata)."""
        usage = self.usage
        return {
            "model": self.model,
            "usage": None
            if usage is None
            else {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cached_tokens": usage.cached_tokens,
                "estimated": usage.estimated,
            },
            "cost": self.cost,
            "cached": self.cached,
            "cache_key": self.cache_key,
            "thread": self.thread,
            "turn": self.turn,
            "cell": self.cell,
        }
