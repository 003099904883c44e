"""Reading the body of a 2xx reply for `ipychat.net.client.ChatClient`.

- `ReplyReader.read_json`: a JSON document (an `error` object in a 200 becomes `APIError`).
- `ReplyReader.read_completion`: a non-streamed chat completion → `Completion`.
- `ReplyReader.read_stream`: an SSE stream (`ipychat.net.sse`) → `Completion`, calling
  `on_delta` for each piece of text as it arrives.

A body that fails before anything was given out raises `Dropped`, which the client's
retry loop treats as a dropped connection (safe to retry: nothing reached the caller).
So does a completion whose JSON breaks off or does not parse (`_meant_as_json`); only a
body that is no JSON at all (an HTML page) gets the "check the base URL" error.
Once text was given out, a failure is a `StreamError`: retrying would say it twice.

Part of the client's network boundary (docs/architecture.md): used only by `ipychat.net.client`, and
like the client it imports httpx.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ipychat.core.errors import APIError, StreamError
from ipychat.core.keys import Secret
from ipychat.core.labelscores import trim_logprobs
from ipychat.core.types import Completion, RateLimitInfo, Usage
from ipychat.net.failures import body_snippet, clean_cause, server_message_of, short_cause
from ipychat.net.sse import SSEDecoder
from ipychat.net.transport import aclose_iterator, body_chunks, is_transport_error, read_body


class Dropped(Exception):
    """Internal: the transport failed while reading a body, before any content was given out.

    Raised inside an attempt so the retry loop treats it like a failed connection.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


@dataclass
class Attempt:
    """What the body readers need to know about the attempt that produced a 2xx response."""

    started: float
    retries: int
    model: str
    request_id: str | None
    rate_limit: RateLimitInfo | None
    headers: Mapping[str, str]


class ReplyReader:
    """The body readers of one client: they name its host and base URL in errors and
    redact its keys from anything a server sent."""

    __slots__ = ("_keys", "base_url", "host")

    def __init__(self, host: str, base_url: str, keys: Sequence[Secret]) -> None:
        self.host = host
        self.base_url = base_url
        self._keys = keys

    async def read_json(
        self, response: httpx.Response, attempt: Attempt, *, retry_cut: bool = False
    ) -> Any:
        """The body as JSON. With `retry_cut`, a body that was meant to be JSON but does not
        parse (it ended early, or broke off) raises `Dropped`: the connection or a proxy
        cut the reply, and nothing was given out, so it is retried like a dropped connection.
        A body that is no JSON at all (an HTML page) is an error naming the base URL."""
        try:
            body = await read_body(response, attempt.headers)
        except Exception as exc:
            if is_transport_error(exc):
                raise Dropped(exc) from exc
            raise
        return self.parse_json(body, response.status_code, attempt, retry_cut=retry_cut)

    def parse_json(
        self, body: bytes, status: int, attempt: Attempt, *, retry_cut: bool = False
    ) -> Any:
        """`read_json` for a body read already."""
        try:
            data = json.loads(body)
        except ValueError:
            if retry_cut and _meant_as_json(body, attempt.headers):
                cut = httpx.RemoteProtocolError("the reply ended early or is not valid JSON")
                raise Dropped(cut) from None
            raise APIError(
                f"{self.host} answered HTTP {status} with something that is not "
                f"JSON ({body_snippet(body, self._keys)}); check that the base URL "
                f"({self.base_url}) points at an OpenAI-compatible API",
                request_id=attempt.request_id,
            ) from None
        if isinstance(data, dict) and data.get("error"):
            message = server_message_of(body, self._keys)
            raise APIError(
                f"{self.host} reported an error: {message}", request_id=attempt.request_id
            )
        return data

    async def read_completion(self, response: httpx.Response, attempt: Attempt) -> Completion:
        return self.completion(await self.read_json(response, attempt, retry_cut=True), attempt)

    def completion_of(self, body: bytes, status: int, attempt: Attempt) -> Completion:
        """`read_completion` for a body read already (the client's direct path)."""
        return self.completion(self.parse_json(body, status, attempt, retry_cut=True), attempt)

    def completion(self, data: Any, attempt: Attempt) -> Completion:
        """A chat completion's JSON → `Completion`."""
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list):
            raise APIError(
                f"{self.host} answered without `choices`; check that the base URL "
                f"({self.base_url}) points at an OpenAI-compatible chat API",
                request_id=attempt.request_id,
            )
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = first.get("message") or {}
        latency = time.perf_counter() - attempt.started
        return Completion(
            text=str(message.get("content") or ""),
            model=str(data.get("model") or attempt.model),
            finish_reason=first.get("finish_reason"),
            usage=Usage.from_api(data.get("usage")),
            request_id=attempt.request_id or data.get("id"),
            retries=attempt.retries,
            latency=latency,
            rate_limit=attempt.rate_limit,
            logprobs=trim_logprobs(first.get("logprobs")),
        )

    async def read_stream(
        self,
        response: httpx.Response,
        attempt: Attempt,
        on_delta: Callable[[str], None] | None,
    ) -> Completion:
        decoder = SSEDecoder()
        stream = _StreamState(attempt.model)
        chunks = body_chunks(response, attempt.headers)
        try:
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    if not is_transport_error(exc):
                        raise
                    if not stream.parts:
                        raise Dropped(exc) from exc  # nothing given out yet: safe to retry
                    raise self._stream_error(
                        f"the connection broke ({short_cause(exc, self._keys)})", stream, attempt
                    ) from clean_cause(exc, self._keys)
                for event in decoder.feed(chunk):
                    if self._on_event(event.data, stream, attempt, on_delta):
                        return self._finish_stream(stream, attempt)
        finally:
            # Closed here rather than by the garbage collector's async-generator hook,
            # which would schedule a task per stream.
            await aclose_iterator(chunks)
        for event in decoder.flush():
            if self._on_event(event.data, stream, attempt, on_delta):
                return self._finish_stream(stream, attempt)
        if not stream.parts:
            # Cut before any content was given out: as harmless to retry as a dropped
            # connection (nothing reached the caller, so nothing is said twice).
            raise Dropped(httpx.RemoteProtocolError("the stream ended before [DONE]"))
        raise self._stream_error("the stream ended before [DONE]", stream, attempt)

    def _on_event(
        self,
        data: str,
        stream: _StreamState,
        attempt: Attempt,
        on_delta: Callable[[str], None] | None,
    ) -> bool:
        """Apply one SSE event to `stream`; True when it was the final `[DONE]`."""
        if data == "[DONE]":
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            snippet = body_snippet(data.encode(), self._keys)
            raise self._stream_error(
                f"a malformed chunk arrived ({snippet})", stream, attempt
            ) from None
        if not isinstance(chunk, dict):
            raise self._stream_error("a chunk that is not a JSON object arrived", stream, attempt)
        if chunk.get("error"):
            message = server_message_of(data.encode(), self._keys)
            raise self._stream_error(f"the server sent an error: {message}", stream, attempt)
        # Runs once per token: plain lookups, nothing allocated that is not kept.
        model = chunk.get("model")
        if model and model != stream.model:
            stream.model = str(model)
        usage = chunk.get("usage")
        if usage:
            stream.usage = Usage.from_api(usage)
        elif stream.usage is None:
            stream.usage = _groq_usage(chunk)
        for choice in chunk.get("choices") or ():
            if type(choice) is not dict or choice.get("index", 0):
                continue  # n > 1 is not supported: the text is choice 0's
            reason = choice.get("finish_reason")
            if reason:
                stream.finish_reason = str(reason)
            delta = choice.get("delta")
            text = delta.get("content") if type(delta) is dict else None
            if text:
                if stream.first_token is None:
                    stream.first_token = time.perf_counter() - attempt.started
                stream.parts.append(text)
                if on_delta is not None:
                    on_delta(text)
        return False

    def _finish_stream(self, stream: _StreamState, attempt: Attempt) -> Completion:
        return Completion(
            text="".join(stream.parts),
            model=stream.model,
            finish_reason=stream.finish_reason,
            usage=stream.usage,
            request_id=attempt.request_id,
            retries=attempt.retries,
            latency=time.perf_counter() - attempt.started,
            time_to_first_token=stream.first_token,
            rate_limit=attempt.rate_limit,
        )

    def _stream_error(self, what: str, stream: _StreamState, attempt: Attempt) -> StreamError:
        return StreamError(
            f"The stream from {self.host} broke: {what} after {stream.chars():,} characters; "
            "the reply is incomplete, try again",
            request_id=attempt.request_id,
        )


def _groq_usage(chunk: Mapping[str, Any]) -> Usage | None:
    """Groq's own copy of a stream's usage, in the finish chunk's `x_groq.usage`
    (https://console.groq.com/docs/openai; on the wire in
    https://github.com/vercel/ai/issues/1651). A standard usage chunk, when Groq sends one
    for `include_usage`, comes after it and replaces it."""
    extra = chunk.get("x_groq")
    usage = extra.get("usage") if type(extra) is dict else None
    return Usage.from_api(usage) if type(usage) is dict else None


def _meant_as_json(body: bytes, headers: Mapping[str, str]) -> bool:
    """True when a body that does not parse was still meant to be JSON: it starts like
    JSON, or is labelled JSON and is not a markup page (some proxies label those JSON)."""
    start = body.lstrip()[:1]
    if start in (b"{", b"["):
        return True
    mime = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return (mime == "application/json" or mime.endswith("+json")) and start != b"<"


@dataclass
class _StreamState:
    """What a stream has told us so far."""

    model: str
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    first_token: float | None = None

    def chars(self) -> int:
        return sum(len(part) for part in self.parts)


def rate_limit_of(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """The x-ratelimit-* state of a response; None when it sent none."""
    # Most local servers send no x-ratelimit-* headers: skip the parse for them.
    if any(name.startswith("x-ratelimit-") for name in headers):
        return RateLimitInfo.from_headers(headers)
    return None
