"""The Files and Batch API of `ipychat.testing.FakeOpenAIServer`.

```
POST   /v1/files                  multipart upload (purpose=batch), returns the file object
GET    /v1/files[/{id}[/content]] list, retrieve, download
DELETE /v1/files/{id}
POST   /v1/batches                create from an uploaded file (completion_window 24h)
GET    /v1/batches[/{id}]         list (newest first), retrieve
POST   /v1/batches/{id}/cancel
```

Why a clock, not a background task: a batch's state is a function of the time since it was
created (`validating` for `delay`, `in_progress` for `processing_time` with the request
counts growing linearly, `finalizing` for `delay`, then `completed`), advanced whenever
someone looks at it. Nothing runs between requests, so a test never waits on a worker, the
server stops without orphaned tasks, and the progression is the real one at any speed.

Each line of the input file is answered as `POST /v1/chat/completions` would be: the
server's `reply` option (a str, a callable, or the echo default; a callable returning a
`Fault.status` fails that line with that status), its token counter, `max_tokens`. On top,
`error_rate` fails a seeded fraction of lines with a 500, `expire_after` expires the batch
after that many lines (the rest land in the error file as `batch_expired`), `shuffle`
processes and writes lines in a seeded random order, and a cancel keeps what was done.
Validation failures (a line that is not a request, a wrong url, duplicate custom_ids, more
than `max_requests` lines or `max_bytes` bytes, several models) fail the whole batch with
`errors`, as OpenAI does.
"""

from __future__ import annotations

import email.parser
import email.policy
import inspect
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ipychat.testing import rules
from ipychat.testing.faults import Fault
from ipychat.testing.options import BatchOptions, ServerOptions

__all__ = ["BatchAPI", "BatchOptions"]

ENDPOINTS = ("/v1/chat/completions",)
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")
_DAY = 24 * 3600


def _error(message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}  # fmt: skip


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None}  # fmt: skip


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    started: float  # monotonic time the current phase began
    created_at: int
    status: str = "validating"
    requests: list[dict[str, Any]] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # processing order (indexes of requests)
    done: int = 0  # how many of `order` are processed
    results: list[tuple[int, bool, dict[str, Any]]] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    stamps: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        stamp = self.stamps.get
        total = len(self.requests)
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": self.created_at,
            "in_progress_at": stamp("in_progress"), "expires_at": self.created_at + _DAY,
            "finalizing_at": stamp("finalizing"), "completed_at": stamp("completed"),
            "failed_at": stamp("failed"), "expired_at": stamp("expired"),
            "cancelling_at": stamp("cancelling"), "cancelled_at": stamp("cancelled"),
            "request_counts": {"total": total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }  # fmt: skip


class BatchAPI:
    """The /v1/files and /v1/batches routes of one fake server (runs on its loop only)."""

    def __init__(self, server: ServerOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server  # the reply, token counter and models its lines are answered with
        self.options: BatchOptions = server.batch
        self.clock = clock
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random(f"batch:{self.options.seed}")

    @staticmethod
    def handles(path: str) -> bool:
        return path.split("/")[1:3] in (["v1", "files"], ["v1", "batches"])

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}{self._rng.getrandbits(32):08x}"

    async def handle(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Any]:
        """(status, JSON object) or (status, bytes) for a file's content."""
        parts = path.strip("/").split("/")[1:]  # without "v1"
        route = (method, *(p if i % 2 == 0 else "{id}" for i, p in enumerate(parts)))
        ident = parts[1] if len(parts) > 1 else ""
        if route == ("POST", "files"):
            return self._upload(body, headers.get("content-type", ""))
        if route == ("GET", "files"):
            data = [f.to_dict() for f in reversed(self.files.values())]
            return 200, {"object": "list", "data": data, "has_more": False}
        if route == ("POST", "batches"):
            return self._create(body)
        if route == ("GET", "batches"):
            for batch in self.batches.values():
                await self._advance(batch)
            data = [b.to_dict() for b in reversed(self.batches.values())]
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            return 200, {"object": "list", "data": data, "first_id": first, "last_id": last,
                         "has_more": False}  # fmt: skip
        if parts[0] == "files" and ident not in self.files:
            return 404, _error(f"No such File object: {ident}", param="id")
        if parts[0] == "batches" and ident not in self.batches:
            return 404, _error(f"No batch found with id '{ident}'.", param="id")
        if route == ("GET", "files", "{id}"):
            return 200, self.files[ident].to_dict()
        if route == ("GET", "files", "{id}", "content"):
            return 200, self.files[ident].data
        if route == ("DELETE", "files", "{id}"):
            del self.files[ident]
            return 200, {"id": ident, "object": "file", "deleted": True}
        if route == ("GET", "batches", "{id}"):
            batch = self.batches[ident]
            await self._advance(batch)
            return 200, batch.to_dict()
        if route == ("POST", "batches", "{id}", "cancel"):
            return await self._cancel(self.batches[ident])
        return 404, _error(f"Invalid URL ({method} {path})")

    # ----- files ----------------------------------------------------------------------------

    def _upload(self, body: bytes, content_type: str) -> tuple[int, Any]:
        if not content_type.startswith("multipart/form-data"):
            return 400, _error("Uploads are multipart/form-data with `file` and `purpose`.")
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = (part.get_filename(), payload)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            return 400, _error("Missing required parameter: 'file'.", param="file")
        if purpose not in ("batch", "fine-tune", "assistants", "vision", "user_data"):
            return 400, _error(f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        filename, data = fields["file"]
        return 200, self._store(filename or "upload", purpose, data).to_dict()

    def _store(self, filename: str, purpose: str, data: bytes) -> _File:
        file = _File(self._id("file-"), filename, purpose, data, int(time.time()))
        self.files[file.id] = file
        return file

    # ----- batches --------------------------------------------------------------------------

    def _create(self, body: bytes) -> tuple[int, Any]:
        try:
            data = json.loads(body)
        except ValueError:
            return 400, _error("We could not parse the JSON body of your request.")
        if not isinstance(data, dict):
            return 400, _error("The body must be a JSON object.")
        file = self.files.get(str(data.get("input_file_id")))
        if file is None:
            return 404, _error(
                f"No such File object: {data.get('input_file_id')}", param="input_file_id"
            )
        if file.purpose != "batch":
            return 400, _error("The input file's purpose must be 'batch'.", param="input_file_id")
        if data.get("endpoint") not in ENDPOINTS:
            return 400, _error(f"Invalid 'endpoint': {data.get('endpoint')!r}.", param="endpoint")
        if data.get("completion_window") != "24h":
            return 400, _error("completion_window must be '24h'.", param="completion_window")
        batch = _Batch(
            id=self._id("batch_"),
            input_file_id=file.id,
            endpoint=data["endpoint"],
            completion_window="24h",
            metadata=data.get("metadata"),
            started=self.clock(),
            created_at=int(time.time()),
        )
        self.batches[batch.id] = batch
        return 200, batch.to_dict()

    async def _cancel(self, batch: _Batch) -> tuple[int, Any]:
        await self._advance(batch)
        if batch.status not in ("validating", "in_progress", "finalizing"):
            return 400, _error(f"Cannot cancel a batch with status '{batch.status}'.")
        self._enter(batch, "cancelling", self.clock())
        return 200, batch.to_dict()

    def _enter(self, batch: _Batch, status: str, at: float) -> None:
        batch.status, batch.started = status, at
        batch.stamps[status] = int(time.time())

    async def _advance(self, batch: _Batch) -> None:
        """Bring the batch to where the clock says it is (see the module docstring)."""
        o, now = self.options, self.clock()
        processing = o.delay if o.processing_time is None else o.processing_time
        if batch.status == "validating" and now >= batch.started + o.delay:
            problems = self._validate(batch)
            if problems:
                batch.errors = problems
                self._enter(batch, "failed", now)
                return
            self._enter(batch, "in_progress", batch.started + o.delay)
        if batch.status == "in_progress":
            total = len(batch.requests)
            elapsed = now - batch.started
            target = total if elapsed >= processing else math.floor(total * elapsed / processing)
            expiring = o.expire_after is not None and o.expire_after < total
            if expiring:
                target = min(target, o.expire_after or 0)
            await self._process(batch, target)
            if expiring and batch.done >= (o.expire_after or 0):
                self._finish(batch, "expired", now)
            elif batch.done == total:
                self._enter(batch, "finalizing", batch.started + processing)
        if batch.status == "finalizing" and now >= batch.started + o.delay:
            self._finish(batch, "completed", now)
        if batch.status == "cancelling" and now >= batch.started + o.delay:
            self._finish(batch, "cancelled", now)

    def _validate(self, batch: _Batch) -> list[dict[str, Any]]:
        o = self.options
        data = self.files[batch.input_file_id].data
        if len(data) > o.max_bytes:
            message = f"The input file is {len(data):,} bytes, over the {o.max_bytes:,} limit."
            return [{"code": "file_too_large", "message": message, "param": None, "line": None}]
        problems: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[str] = set()
        lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
        for number, line in enumerate(lines, 1):
            problem = _line_problem(line, batch.endpoint, seen, models)
            if problem:
                problems.append({"code": "invalid_request", "message": problem, "param": None,
                                 "line": number})  # fmt: skip
            else:
                batch.requests.append(json.loads(line))
        if len(lines) > o.max_requests:
            message = f"The batch has {len(lines):,} requests, over the {o.max_requests:,} limit."
            problems.insert(0, {"code": "too_many_requests", "message": message, "param": None,
                                "line": None})  # fmt: skip
        if len(models) > 1:
            message = f"A batch must use one model; it names {len(models)}."
            problems.append({"code": "mismatched_model", "message": message, "param": "model",
                             "line": None})  # fmt: skip
        if not lines:
            problems.append({"code": "empty_file", "message": "The input file is empty.",
                             "param": None, "line": None})  # fmt: skip
        batch.order = list(range(len(batch.requests)))
        if o.shuffle:
            random.Random(f"{o.seed}:{batch.id}").shuffle(batch.order)
        return problems[:10]

    async def _process(self, batch: _Batch, target: int) -> None:
        rate = self.options.error_rate
        while batch.done < target:
            index = batch.order[batch.done]
            # One draw per line, seeded by the line: a seed fails the same lines in any order.
            failing = rate and random.Random(f"{self.options.seed}:{index}").random() < rate
            request = batch.requests[index]
            status, body = (
                (500, _server_error()) if failing else await self._complete(request["body"])
            )
            ok = status == 200
            line = {
                "id": self._id("batch_req_"),
                "custom_id": request["custom_id"],
                "response": {"status_code": status, "request_id": self._id("req_"), "body": body},
                "error": None,
            }
            batch.results.append((index, ok, line))
            batch.done += 1
            batch.completed += ok
            batch.failed += not ok

    async def _complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """What POST /v1/chat/completions would answer for one line (no faults, no limits)."""
        o = self.server
        try:
            model, max_tokens = rules.validate_chat(body, None)
        except rules.Reject as reject:
            return reject.status, reject.body
        produced: Any = o.reply
        if produced is None:
            produced = rules.echo(body)
        elif not isinstance(produced, str):
            produced = produced(body)
            if inspect.isawaitable(produced):
                produced = await produced
        if isinstance(produced, Fault):
            code = produced.code if produced.kind == "status" and produced.code else 500
            message = produced.message or rules.ERROR_MESSAGES.get(code) or f"Injected HTTP {code}."
            return code, _error(message)
        text, finish = str(produced), "stop"
        if max_tokens is not None:
            text, cut = rules.truncate(text, max_tokens, o.count_tokens)
            finish = "length" if cut else "stop"
        prompt = rules.count_prompt_tokens(body["messages"], o.count_tokens, model)
        completion = o.count_tokens(text) if text else 0
        try:
            logprobs = rules.logprobs_of(body, text, o.logprobs)
        except rules.Reject as reject:
            return reject.status, reject.body
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                  "logprobs": logprobs, "finish_reason": finish}  # fmt: skip
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip
        return 200, {"id": self._id("chatcmpl-"), "object": "chat.completion",
                     "created": int(time.time()), "model": model, "choices": [choice],
                     "usage": usage, "system_fingerprint": "fp_fake"}  # fmt: skip

    def _finish(self, batch: _Batch, status: str, now: float) -> None:
        """Write the output and error files (what was done, and the undone as errors)."""
        results = list(batch.results)
        if not self.options.shuffle:
            results.sort(key=lambda r: r[0])
        output = [line for _, ok, line in results if ok]
        errors = [line for _, ok, line in results if not ok]
        if status in ("expired", "cancelled"):
            code = "batch_expired" if status == "expired" else "batch_cancelled"
            message = (
                "This request could not be executed before the completion window expired."
                if status == "expired"
                else "This request was not executed because the batch was cancelled."
            )
            for index in batch.order[batch.done :]:
                errors.append({"id": self._id("batch_req_"),
                               "custom_id": batch.requests[index]["custom_id"], "response": None,
                               "error": {"code": code, "message": message}})  # fmt: skip
        if output:
            batch.output_file_id = self._store(f"{batch.id}_output.jsonl", "batch_output",
                                               _jsonl(output)).id  # fmt: skip
        if errors:
            batch.error_file_id = self._store(f"{batch.id}_error.jsonl", "batch_output",
                                              _jsonl(errors)).id  # fmt: skip
        self._enter(batch, status, now)


def _line_problem(line: str, endpoint: str, seen: set[str], models: set[str]) -> str | None:
    try:
        request = json.loads(line)
    except ValueError:
        return "This line is not valid JSON."
    if not isinstance(request, dict):
        return "Each line must be a JSON object."
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "Each request needs a custom_id string."
    if custom_id in seen:
        return f"The custom_id {custom_id!r} is used more than once."
    seen.add(custom_id)
    if request.get("method") != "POST":
        return "The method must be POST."
    if request.get("url") != endpoint:
        return f"The url {request.get('url')!r} does not match the batch endpoint {endpoint}."
    body = request.get("body")
    if not isinstance(body, dict):
        return "Each request needs a body object."
    models.add(str(body.get("model")))
    return None


def _server_error() -> dict[str, Any]:
    return {"error": {"message": "The server had an error processing your request.",
                      "type": "server_error", "param": None, "code": None}}  # fmt: skip


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        for line in lines
    )
