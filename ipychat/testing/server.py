"""The protocol engine of `ipychat.testing.FakeOpenAIServer`: the OpenAI imitation.

`Engine` receives every parsed request from the HTTP core (`ipychat.testing.http`), routes it
(`/v1/chat/completions` and Azure's deployment path, `/v1/models`, the Files and Batch API
of `ipychat.testing.batchapi`, the `/_fake/` control API), applies auth, validation, the rate
limiter and the fault script, keeps the request log and the counters, and writes the chat
answers: a JSON completion or an SSE stream, paced, cut or broken as the fault asks. The
rules it applies (errors, token accounting, rate limits) are in `ipychat.testing.rules`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipychat.testing.batchapi import BatchAPI
from ipychat.testing.faults import FAULT_KINDS, Fault
from ipychat.testing.http import Exchange, HTTPServerCore, Request
from ipychat.testing.options import ServerOptions
from ipychat.testing.records import RecordedRequest, ServerStats, mask
from ipychat.testing.rules import (
    BAD_JSON,
    ERROR_MESSAGES,
    ERROR_TYPES,
    NO_KEY,
    RateLimiter,
    Reject,
    count_prompt_tokens,
    dumps,
    echo,
    error_body,
    logprobs_of,
    split_deltas,
    truncate,
    validate_chat,
)

__all__ = ["Engine"]

# Kinds that need the reply text: they send part of it before failing.
_CONTENT_KINDS = frozenset(FAULT_KINDS) - {"status", "reset"}
_AZURE_CHAT = re.compile(r"/openai/deployments/([^/]+)/chat/completions")


@dataclass
class _Turn:
    """One chat request on its way to an answer."""

    ex: Exchange
    rec: RecordedRequest
    body: dict[str, Any]
    model: str
    headers: list[tuple[str, str]]  # x-ratelimit-*, sent with every answer
    fault: Fault | None = None
    text: str = ""
    finish: str = "stop"
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        return self.fault.kind if self.fault else None

    @property
    def error_message(self) -> str:
        return (self.fault.message if self.fault else None) or ERROR_MESSAGES[500]

    def cut_at(self, n_pieces: int) -> int:
        """How many content pieces go out before the fault strikes."""
        if self.fault is None or self.fault.kind == "empty_reply":
            return n_pieces
        after = self.fault.after
        return min(n_pieces, after if after is not None else max(1, n_pieces // 2))


class Engine:
    """The OpenAI imitation: routes requests, applies auth, limits and faults, keeps the log.

    Runs on one event loop; the log, the script and the counters are shared with the
    controlling thread under `_lock`.
    """

    def __init__(self, options: ServerOptions) -> None:
        self.o = options
        self.core = HTTPServerCore(self.handle)
        self._lock = threading.Lock()
        self._log: list[RecordedRequest] = []
        self._script: deque[Fault | None] = deque()
        # Separate generators, so turning on random latency does not change the faults drawn.
        self._fault_rng = random.Random(options.seed)
        self._latency_rng = random.Random(f"latency:{options.seed}")
        self._limiter = None
        if options.rpm or options.tpm:
            self._limiter = RateLimiter(
                options.rpm,
                options.tpm,
                time.monotonic,
                window=options.window,
                charge_refused=options.charge_refused,
                headers=options.ratelimit_headers,
                retry_after=options.retry_after,
            )
        self._counts: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._connections_before = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self.batch = BatchAPI(options)  # /v1/files and /v1/batches

    # ---- state shared with the controlling thread -------------------------------------
    def enqueue(self, faults: Sequence[Fault | None]) -> None:
        with self._lock:
            self._script.extend(faults)

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()
            self._counts.clear()
            self._by_status.clear()
            self._connections_before = self.core.connections
            # A handler still finishing the reply the client has already read is not "in
            # flight" for the next test: counting it made stats() racy right after a reset.
            self._max_in_flight = 0

    def stats(self) -> ServerStats:
        with self._lock:
            c = self._counts
            return ServerStats(
                total=c["total"],
                chat=c["chat"],
                by_status=dict(self._by_status),
                rate_limited=c["rate_limited"],
                faults=c["faults"],
                no_response=c["no_response"],
                connections=self.core.connections - self._connections_before,
                max_in_flight=self._max_in_flight,
            )

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _record(self, rec: RecordedRequest, status: int | None) -> None:
        rec.status = status
        with self._lock:
            if status is None:
                self._counts["no_response"] += 1
            else:
                self._by_status[status] += 1

    async def _json(
        self,
        ex: Exchange,
        rec: RecordedRequest | None,
        status: int,
        obj: Any,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if rec is not None:
            self._record(rec, status)
        await ex.respond(status, self._head(ex, "application/json", headers), dumps(obj))

    def _head(
        self, ex: Exchange, content_type: str, extra: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        """The headers of an answer: its type, its request id, the flavour's, `extra`."""
        return [("content-type", content_type), ("x-request-id", ex.request_id),
                *self.o.flavour.headers, *extra]  # fmt: skip

    def _error(self, status: int, body: dict[str, Any]) -> Any:
        """An OpenAI-shaped error body in the flavour's shape."""
        return self.o.flavour.error(status, body["error"])

    # ---- routing -----------------------------------------------------------------------
    async def handle(self, request: Request, ex: Exchange) -> None:
        if request.path.startswith("/_fake/"):
            await self._admin(request, ex)
            return
        try:
            body = json.loads(request.body) if request.body else None
        except ValueError:
            body = None
        rec = RecordedRequest(
            request.method, request.path, request.headers, body, time.monotonic(),
            ex.request_id, request.query,
        )  # fmt: skip
        with self._lock:
            self._log.append(rec)
            self._counts["total"] += 1
        try:
            await self._route(request, ex, rec)
        except Reject as reject:
            body = self._error(reject.status, reject.body)
            await self._json(ex, rec, reject.status, body, reject.headers)

    def _canonical(self, path: str) -> str:
        """The path as OpenAI spells it: the flavour's prefix (e.g. /v1beta/openai) -> /v1."""
        prefix = self.o.flavour.prefix
        if prefix != "/v1" and (path == prefix or path.startswith(prefix + "/")):
            return "/v1" + path[len(prefix) :]
        return path

    async def _route(self, request: Request, ex: Exchange, rec: RecordedRequest) -> None:
        path = self._canonical(request.path)
        azure = _AZURE_CHAT.fullmatch(path)
        if path == "/v1/chat/completions" or azure:
            if request.method != "POST":
                raise Reject(405, f"Method {request.method} not allowed; use POST.")
            self._count("chat")
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            try:
                await self._chat(request, ex, rec, azure.group(1) if azure else None)
            finally:
                self._in_flight -= 1
        elif path == "/v1/models" and request.method == "GET":
            self._check_key(request.headers)
            models = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                      for m in self.o.models]  # fmt: skip
            await self._json(ex, rec, 200, {"object": "list", "data": models})
        elif self.batch.handles(path):
            self._check_key(request.headers)
            status, out = await self.batch.handle(
                request.method, path, request.body, request.headers
            )
            if isinstance(out, bytes):  # a file's content
                self._record(rec, status)
                await ex.respond(status, self._head(ex, "application/octet-stream"), out)
            else:
                await self._json(ex, rec, status, out)
        else:
            raise Reject(404, f"Invalid URL ({request.method} {request.path})")

    def _check_key(self, headers: Mapping[str, str]) -> None:
        """OpenAI's 401 when `require_key` is set and neither header presents it."""
        if self.o.require_key is None:
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else ""
        given = [bearer, headers.get("api-key", "").strip()]
        if self.o.require_key in given:
            return
        key = next((g for g in given if g), None)
        if key is None:
            raise Reject(401, NO_KEY)
        message = (
            f"Incorrect API key provided: {mask(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        raise Reject(401, message, code="invalid_api_key")

    async def _admin(self, request: Request, ex: Exchange) -> None:
        """The control API a spawned server is driven through (and handy from curl)."""
        route = (request.method, request.path)
        if route == ("GET", "/_fake/stats"):
            await self._json(ex, None, 200, self.stats().to_dict())
        elif route == ("GET", "/_fake/requests"):
            await self._json(ex, None, 200, [r.to_dict() for r in self.requests()])
        elif route == ("POST", "/_fake/reset"):
            self.reset_log()
            await self._json(ex, None, 200, {"ok": True})
        elif route == ("POST", "/_fake/script"):
            self.enqueue([Fault.parse(s) for s in json.loads(request.body or b"[]")])
            await self._json(ex, None, 200, {"ok": True})
        else:
            await self._json(ex, None, 404, error_body("unknown admin endpoint", "not_found"))

    # ---- chat completions --------------------------------------------------------------
    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.o.fault_rate and self._fault_rng.random() < self.o.fault_rate:
            return self._fault_rng.choice(self.o.faults)
        return None

    def _latency(self) -> float:
        latency = self.o.latency
        return self._latency_rng.uniform(*latency) if isinstance(latency, tuple) else latency

    async def _reply(self, turn: _Turn) -> str | Fault:
        reply = self.o.reply
        if reply is None:
            return echo(turn.body)
        if isinstance(reply, str):
            return reply
        try:
            result = reply(turn.body)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, (str, Fault)):
                raise TypeError(f"it returned {type(result).__name__}, not str or Fault")
        except Exception as exc:
            message = f"The fake server's reply callable failed: {type(exc).__name__}: {exc}"
            raise Reject(500, message, "server_error", headers=turn.headers) from exc
        return result

    async def _chat(
        self, request: Request, ex: Exchange, rec: RecordedRequest, deployment: str | None
    ) -> None:
        o = self.o
        self._check_key(request.headers)
        body = rec.body
        if not isinstance(body, dict):
            raise Reject(400, BAD_JSON)
        model, max_tokens = validate_chat(body, deployment)
        o.flavour.check(body, model, o.models)
        prompt_tokens = count_prompt_tokens(body["messages"], o.count_tokens, model)
        headers: list[tuple[str, str]] = []
        if self._limiter is not None:
            charge = prompt_tokens + (
                max_tokens if max_tokens is not None else o.assumed_max_tokens
            )
            try:
                headers = self._limiter.take(charge, model)
            except Reject:
                self._count("rate_limited")
                raise

        turn = _Turn(ex, rec, body, model, headers, fault=self._next_fault())
        if turn.fault is None or turn.fault.kind in _CONTENT_KINDS:
            produced = await self._reply(turn)
            if isinstance(produced, Fault):
                turn.fault = turn.fault or produced
            else:
                turn.text = produced
        fault = rec.fault = turn.fault
        if fault is not None:
            self._count("faults")

        delay = self._latency()
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None and fault.kind == "status":
            await self._status_fault(turn, fault)
            return
        if fault is not None and fault.kind == "reset":
            self._record(rec, None)
            ex.abort(reset=True)
            return
        if fault is not None and fault.kind == "hang" and fault.after is None:
            self._record(rec, None)
            await ex.hold()
            return
        if turn.kind == "empty_reply":
            turn.text = ""
        if max_tokens is not None:
            turn.text, cut = truncate(turn.text, max_tokens, o.count_tokens)
            turn.finish = "length" if cut else "stop"
        turn.usage = o.flavour.usage(prompt_tokens, o.count_tokens(turn.text) if turn.text else 0)
        await (self._stream(turn) if body.get("stream") is True else self._complete(turn))

    async def _status_fault(self, turn: _Turn, fault: Fault) -> None:
        code = fault.code or 500
        headers = [*turn.headers, *fault.headers.items()]
        if isinstance(fault.body, str):
            self._record(turn.rec, code)
            head = self._head(turn.ex, "text/plain", headers)
            await turn.ex.respond(code, head, fault.body.encode())
            return
        body: Any = fault.body
        if body is None:
            message = fault.message or ERROR_MESSAGES.get(code) or f"Injected HTTP {code}."
            type_ = ERROR_TYPES.get(
                code, "server_error" if code >= 500 else "invalid_request_error"
            )
            body = self._error(
                code, error_body(message, type_, "rate_limit_exceeded" if code == 429 else None)
            )
        await self._json(turn.ex, turn.rec, code, body, headers)

    async def _complete(self, turn: _Turn) -> None:
        """A non-streamed reply; the partial fault kinds cut the JSON body in half."""
        ex, kind = turn.ex, turn.kind
        if kind == "error_mid_stream":  # nothing is "mid" here: a plain 500
            error = self._error(500, error_body(turn.error_message, "server_error"))
            await self._json(ex, turn.rec, 500, error, turn.headers)
            return
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": turn.text, "refusal": None},
            "logprobs": logprobs_of(turn.body, turn.text, self.o.logprobs),
            "finish_reason": turn.finish,
        }
        data = dumps({
            "id": f"chatcmpl-{ex.request_id[4:]}", "object": "chat.completion",
            "created": int(time.time()), "model": turn.model, "choices": [choice],
            "usage": turn.usage, "system_fingerprint": "fp_fake",
        })  # fmt: skip
        head = self._head(ex, "application/json", turn.headers)
        self._record(turn.rec, 200)
        if kind == "truncate":  # a well-framed body that is cut JSON, then a clean close
            ex.keep_alive = False
            await ex.respond(200, head, data[: len(data) // 2])
        elif kind == "malformed_json":  # a trailing comma: every JSON parser refuses it
            await ex.respond(200, head, data[:-1] + b",}")
        elif kind in ("reset_mid_stream", "hang"):  # Content-Length promises more than comes
            ex.send_head(200, head, len(data))
            ex.write_raw(data[: len(data) // 2])
            await ex.drain()
            if kind == "hang":
                await ex.hold()
            else:
                ex.abort(reset=False)
        else:
            await ex.respond(200, head, data)

    async def _stream(self, turn: _Turn) -> None:
        """An SSE reply: a role chunk, content deltas (paced by tokens_per_second), a
        finish_reason chunk, the usage chunk if asked for and enabled, then [DONE]."""
        o, ex, kind = self.o, turn.ex, turn.kind
        asked = turn.body.get("stream_options")
        with_usage = isinstance(asked, dict) and asked.get("include_usage") is True
        with_usage = with_usage and o.include_usage_chunk
        cid = f"chatcmpl-{ex.request_id[4:]}"
        base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": turn.model, "system_fingerprint": "fp_fake"}  # fmt: skip

        def event(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            chunk: dict[str, Any] = {**base, "choices": [choice]}
            if with_usage:
                chunk["usage"] = None
            return b"data: " + dumps({**chunk, **extra}) + b"\n\n"

        self._open_stream(turn)
        ex.write(event({"role": "assistant", "content": "", "refusal": None}))
        pieces = split_deltas(turn.text, o.chunk_chars)
        cut = turn.cut_at(len(pieces))
        await self._send(ex, [event({"content": p}) for p in pieces[:cut]], pieces[:cut])
        if kind == "malformed_json":  # one broken line, then the stream goes on
            ex.write(b'data: {"id": "%b", "choices": [{"delta": {"con\n\n' % cid.encode())
            await self._send(ex, [event({"content": p}) for p in pieces[cut:]], pieces[cut:])
        elif kind is not None and kind != "empty_reply":
            await self._break_stream(turn)
            return
        ex.write(event({}, turn.finish, **o.flavour.finish_extras(turn.usage, ex.request_id)))
        if with_usage:
            ex.write(b"data: " + dumps({**base, "choices": [], "usage": turn.usage}) + b"\n\n")
        ex.write(b"data: [DONE]\n\n")
        await ex.end_stream()

    def _open_stream(self, turn: _Turn) -> None:
        """The head of an SSE answer, and what a flavour sends before the first chunk."""
        ex, flavour = turn.ex, self.o.flavour
        self._record(turn.rec, 200)
        head = self._head(ex, "text/event-stream; charset=utf-8",
                          [("cache-control", "no-cache"), *turn.headers])  # fmt: skip
        ex.start_stream(200, head)
        for block in flavour.stream_preamble():
            ex.write(block)

    async def _send(self, ex: Exchange, events: list[bytes], pieces: list[str]) -> None:
        """Write content events, paced at tokens_per_second (each piece's tokens)."""
        o = self.o
        loop = asyncio.get_running_loop()
        due = loop.time()
        for data, piece in zip(events, pieces, strict=True):
            if o.tokens_per_second:  # flush what is written, then wait for the next token
                await ex.drain()
                due += max(1, o.count_tokens(piece)) / o.tokens_per_second
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
            ex.write(data)

    async def _break_stream(self, turn: _Turn) -> None:
        """The end of a stream a fault breaks (after the pieces sent before it)."""
        ex, kind = turn.ex, turn.kind
        if kind == "reset_mid_stream":
            await ex.drain()
            ex.abort(reset=False)
        elif kind == "hang":
            await ex.hold()
        elif kind == "truncate":
            ex.keep_alive = False
            await ex.end_stream()
        elif kind == "error_mid_stream":
            error = self._error(500, error_body(turn.error_message, "server_error"))
            ex.write(b"data: " + dumps(error) + b"\n\n")
            await ex.end_stream()
