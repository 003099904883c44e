"""The rules of the fake OpenAI server, free of I/O: no sockets, no event loop.

What `ipychat.testing.FakeOpenAIServer` (through `ipychat.testing.server`) and its Batch API
(`ipychat.testing.batchapi`) both follow:

- OpenAI's error bodies and messages (`error_body`, `Reject`, `ERROR_MESSAGES`, ...) and
  what makes a chat request invalid (`validate_chat`);
- token accounting: the prompt tokens of a chat request (`count_prompt_tokens`), a reply cut
  at `max_tokens` (`truncate`), the default echo reply and the stream's deltas (`split_deltas`);
- the rpm/tpm rate limiter (`RateLimiter`: a sliding `_Window` per limit that decides,
  a per-minute `_Bucket` per limit that the `x-ratelimit-*` headers report) and its 429s;
  the comment above `_Bucket` says which documented behaviour each option models.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ipychat.testing.images import ImageRejected, check_parts, image_tokens, sent_images

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "requests",
}
ERROR_MESSAGES = {
    429: "Rate limit reached (injected by the fake server). Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}
BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_LIMITS_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."


def format_duration(seconds: float) -> str:
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


def count_prompt_tokens(
    messages: list[Any], count: Callable[[str], int], model: str = "gpt-4o"
) -> int:
    """OpenAI's chat accounting (the cookbook's formula): 3 per message, the tokens of each
    string field (role, content, name), 1 more for a name, and 3 to prime the reply; each
    image as `ipychat.testing.images.image_tokens` bills it for `model`."""
    total = 3 + sum(image_tokens(image, model) for image in sent_images({"messages": messages}))
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


def echo(body: Mapping[str, Any]) -> str:
    """The default reply: deterministic, derived from the prompt, easy to assert on."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "Echo: " + _content_text(message.get("content"))
    return "Echo: "


def truncate(text: str, limit: int, count: Callable[[str], int]) -> tuple[str, bool]:
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


def split_deltas(text: str, chunk_chars: int | None) -> list[str]:
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


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class Reject(Exception):
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
        self.body = error_body(message, type_, code, param)
        self.headers = list(headers)


def validate_chat(body: dict[str, Any], deployment: str | None) -> tuple[str, int | None]:
    """The model and max_tokens of a chat request's JSON body, or OpenAI's 400 (`Reject`).

    `deployment` is Azure's model, named in the path (`/openai/deployments/{name}/...`)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        message = (
            "Missing required parameter: 'messages'." if not messages else "Invalid 'messages'."
        )
        raise Reject(400, message, code="invalid_value", param="messages")
    model = body.get("model") or deployment
    if not isinstance(model, str):
        raise Reject(400, "You must provide a model parameter.")
    try:
        check_parts(messages)
    except ImageRejected as exc:
        raise Reject(400, str(exc), code=exc.code, param=exc.param) from None
    param = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = body.get(param)
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        message = f"Invalid '{param}': expected an integer >= 1, got {max_tokens!r}."
        raise Reject(400, message, code="invalid_value", param=param)
    return model, max_tokens


# ----- log probabilities ---------------------------------------------------------------------
#
# OpenAI's chat completions take `logprobs: true` and `top_logprobs` (an integer 0 to 20)
# and answer with `choices[0].logprobs = {"content": [{token, logprob, bytes, top_logprobs:
# [{token, logprob, bytes}, ...]}, ...], "refusal": null}`; a token outside the top 20 has
# logprob -9999.0 (https://platform.openai.com/docs/api-reference/chat/create and
# https://platform.openai.com/docs/api-reference/chat/object). The fake splits a reply into
# word-like tokens (a leading space kept with its word, as BPE tokenisers do); the test says
# which alternatives a token has (`FakeOpenAIServer(logprobs=...)`).

Alternatives = Mapping[str, Mapping[str, float]]
_TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")


def logprobs_of(
    body: Mapping[str, Any],
    text: str,
    alternatives: Alternatives | Callable[[dict[str, Any]], Alternatives] | bool | None,
) -> dict[str, Any] | None:
    """`choices[0].logprobs` for a reply `text`: None unless the request has `logprobs: true`.
    `alternatives` maps a reply token to {token: probability} at its position (default: the
    token alone, probability 1); a callable takes the request body and returns that map;
    False imitates a server that ignores the fields (None, always)."""
    if body.get("logprobs") is not True or alternatives is False:
        return None
    top = body.get("top_logprobs", 0)
    if type(top) is not int or not 0 <= top <= 20:
        message = f"Invalid 'top_logprobs': expected an integer from 0 to 20, got {top!r}."
        raise Reject(400, message, code="invalid_value", param="top_logprobs")
    try:
        table = alternatives(dict(body)) if callable(alternatives) else alternatives or {}
        assert isinstance(table, Mapping)
    except Exception as exc:
        message = f"The fake server's logprobs callable failed: {type(exc).__name__}: {exc}"
        raise Reject(500, message, "server_error") from exc

    def entry(token: str, probability: float) -> dict[str, Any]:
        logprob = math.log(probability) if probability > 0 else -9999.0
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = []
    for token in _TOKEN.findall(text):
        options = table.get(token) or {token: 1.0}
        ranked = sorted(options.items(), key=lambda item: -item[1])[:top]
        own = entry(token, options.get(token, 0.0))
        content.append({**own, "top_logprobs": [entry(t, p) for t, p in ranked if p > 0]})
    return {"content": content, "refusal": None}


# ----- rate limits ---------------------------------------------------------------------------
#
# What providers document, and which option of the fake models it (`ipychat.testing`
# names the options; their defaults are the strictest documented behaviour):
#
# - Per-minute limits enforced over short windows. OpenAI's rate-limit guide
#   (https://platform.openai.com/docs/guides/rate-limits): limits "can be quantized,
#   meaning they are enforced over shorter periods of time (e.g. 60,000 requests/minute may
#   be enforced as 1,000 requests/second)", so short bursts get 429s "even when you are
#   technically below the rate limit per minute"; its help article on 429s
#   (https://help.openai.com/en/articles/5955604) gives "1 request per second for a 60 RPM
#   limit". Azure OpenAI (https://learn.microsoft.com/azure/ai-services/openai/how-to/quota)
#   evaluates the rate "over a small period of time, typically 1 or 10 seconds": a 600-RPM
#   deployment watched per second refuses the 11th request within a second.
#   → `window` (1, 10 or 60 s; default 1 s, the worst case documented): within any `window`
#   seconds at most limit × window / 60 is accepted (a sliding window, stricter than fixed
#   ones: pacing that passes it passes those too). A request larger than that fits in a
#   window as long as the time the limit needs to allow it (e.g. 20 s for 1 of 3 RPM).
# - Refused requests are charged. OpenAI's help article: "As unsuccessful requests
#   contribute to your per-minute limit, continuously resending a request won't work."
#   → `charge_refused` (default on): a 429 is charged like an accepted request.
# - The charge is made on arrival: 1 request, and the prompt's tokens plus `max_tokens`
#   (OpenAI's guide: prompt + max_tokens; Azure: an estimate of the prompt's tokens plus
#   max_tokens, added when the request is received).
# - The headers. OpenAI sends `x-ratelimit-limit-*` (the per-minute limit),
#   `x-ratelimit-remaining-*` (what is left of it) and `x-ratelimit-reset-*` (the time
#   until it is whole again, as a duration: "1s", "6m0s", "20ms"): a bucket of one minute's
#   capacity refilling at limit/60 per second, which never shows a shorter window it
#   enforces (with a 60 s window, what the window leaves, when that is less).
#   A 429 says which limit it hit (`type` "requests" or "tokens", `code`
#   "rate_limit_exceeded", the limit in the message) and when to come back
#   (`retry-after-ms`, `retry-after`). → `ratelimit_headers`, `retry_after` (both on).
# - Servers without those headers (vLLM, llama.cpp's server, LiteLLM proxies, gateways)
#   answer a bare 429, with or without retry-after → `ratelimit_headers=False`, and
#   `retry_after` on or off.


@dataclass
class _Bucket:
    """The per-minute view the headers report: holds up to `limit`, gains limit/60 per
    second, is charged for every request the server counts (never below empty)."""

    limit: int
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(float(self.limit), self.level + (now - self.stamp) * self.limit / 60.0)
        self.stamp = now

    def charge(self, amount: float) -> None:
        self.level = max(0.0, self.level - amount)

    def headers(self, name: str, left: float) -> list[tuple[str, str]]:
        until_full = (self.limit - self.level) * 60.0 / self.limit
        return [
            (f"x-ratelimit-limit-{name}", str(self.limit)),
            (f"x-ratelimit-remaining-{name}", str(max(0, int(left + 1e-9)))),
            (f"x-ratelimit-reset-{name}", format_duration(until_full)),
        ]


class _Window:
    """What the server enforces: the charges of the last seconds, against a sliding window.

    A charge of `amount` fits when the charges within the last `span` seconds plus it stay
    within limit × span / 60, where span is the window, or the time the limit needs to
    allow that amount if longer (so a request above the window's capacity can still pass,
    as often as the per-minute limit allows).
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        # The charges of the last minute (the longest span a check may need), and those of
        # the window with their sum (the common check), oldest first: (time, amount).
        self.log: deque[tuple[float, float]] = deque()
        self.recent: deque[tuple[float, float]] = deque()
        self.in_window = 0.0
        self.in_minute = 0.0  # the sum of `log`

    def _span(self, amount: float) -> float:
        return max(self.window, amount * 60.0 / self.limit)

    def _expire(self, now: float) -> None:
        while self.recent and self.recent[0][0] <= now - self.window:
            self.in_window -= self.recent.popleft()[1]
        keep = max(self.window, 60.0)
        while self.log and self.log[0][0] <= now - keep:
            self.in_minute -= self.log.popleft()[1]

    def _inside(self, now: float, span: float) -> list[tuple[float, float]]:
        return [(t, a) for t, a in self.log if t > now - span]

    def fits(self, amount: float, now: float) -> bool:
        self._expire(now)
        span = self._span(amount)
        inside = self._inside(now, span) if span != self.window else ()
        used = sum(a for _, a in inside) if span != self.window else self.in_window
        return used + amount <= self.limit * span / 60.0 + 1e-9

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` fits: until enough of the oldest charges leave the span."""
        span = self._span(amount)
        room = self.limit * span / 60.0 - amount  # >= 0: the span holds the amount
        inside = self._inside(now, span)
        used = sum(a for _, a in inside)
        wait = 0.0
        for when, charged in inside:
            if used <= room + 1e-9:
                break
            used -= charged
            wait = when + span - now  # when that charge leaves the span
        return max(0.0, wait)

    def charge(self, amount: float, now: float) -> None:
        self._expire(now)
        self.log.append((now, amount))
        self.recent.append((now, amount))
        self.in_window += amount
        self.in_minute += amount

    def minute_left(self, now: float) -> float:
        """The limit less what was charged within the last minute."""
        self._expire(now)
        return self.limit - self.in_minute


class RateLimiter:
    """OpenAI-style rpm/tpm limits, charged on arrival; runs on the server's loop only.

    `window`, `charge_refused`, `headers` and `retry_after` are the options of
    `ipychat.testing.FakeOpenAIServer`; the comment above says what each one models.
    """

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        clock: Callable[[], float],
        *,
        window: float = 1.0,
        charge_refused: bool = True,
        headers: bool = True,
        retry_after: bool = True,
    ) -> None:
        now = clock()
        self.clock = clock
        self.charge_refused = charge_refused
        self.send_headers = headers
        self.send_retry_after = retry_after
        self.limits = {"requests": rpm, "tokens": tpm}
        self.minute = {k: _Bucket(v, v, now) for k, v in self.limits.items() if v}
        self.windows = {k: _Window(v, window) for k, v in self.limits.items() if v}

    def headers(self) -> list[tuple[str, str]]:
        if not self.send_headers:
            return []
        out: list[tuple[str, str]] = []
        for name, bucket in self.minute.items():
            left = bucket.level
            window = self.windows[name]
            if window.window >= 60:  # the minute's own window decides: it is what is left
                left = min(left, window.minute_left(self.clock()))
            out += bucket.headers(name, left)
        return out

    def _charge(self, amounts: Mapping[str, float], now: float) -> None:
        for name, amount in amounts.items():
            if name in self.windows:
                self.windows[name].charge(amount, now)
                self.minute[name].charge(amount)

    def take(self, tokens: int, model: str) -> list[tuple[str, str]]:
        """Charge one request of `tokens` tokens and return the headers for its answer;
        raise a 429 when it does not fit now (charged all the same, if `charge_refused`)."""
        now = self.clock()
        for bucket in self.minute.values():
            bucket.refill(now)
        tpm = self.limits["tokens"]
        if tpm and tokens > tpm:  # waiting cannot help: refused before any accounting
            message = (
                f"Request too large for {model} in organization org-fake on tokens per min "
                f"(TPM): Limit {tpm}, Requested {tokens}. The input or output tokens must be "
                f"reduced in order to run successfully. {_LIMITS_URL}"
            )
            extra = [("x-should-retry", "false")]
            raise Reject(
                429, message, "tokens", "rate_limit_exceeded", None, self.headers() + extra
            )
        amounts = {"requests": 1.0, "tokens": float(tokens)}
        over = [n for n, w in self.windows.items() if not w.fits(amounts[n], now)]
        if not over:
            self._charge(amounts, now)
            return self.headers()
        if self.charge_refused:
            self._charge(amounts, now)
        wait = max(w.wait_for(amounts[n], now) for n, w in self.windows.items())
        raise self._refusal(over[0], amounts[over[0]], wait, model)

    def _refusal(self, kind: str, asked: float, wait: float, model: str) -> Reject:
        limit = self.limits[kind]
        assert limit is not None
        used = round(limit - self.minute[kind].level)
        unit = "RPM" if kind == "requests" else "TPM"
        message = (
            f"Rate limit reached for {model} in organization org-fake on {kind} per min "
            f"({unit}): Limit {limit}, Used {used}, Requested {asked:.0f}."
        )
        extra: list[tuple[str, str]] = []
        if self.send_retry_after:
            message += f" Please try again in {format_duration(wait)}."
            extra = [
                ("retry-after-ms", str(math.ceil(wait * 1000))),
                ("retry-after", str(math.ceil(wait))),
            ]
        message += f" {_LIMITS_URL}"
        return Reject(429, message, kind, "rate_limit_exceeded", None, self.headers() + extra)
