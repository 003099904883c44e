"""%%chatmap --batch: a map's rows sent through the provider's Batch API (half the price, a
separate rate-limit pool, results within 24 h).

```
run(session, df, template, output, ...)   plan with chatmap's MapJob (template, nulls,
  │                                       dedupe, cache hits), then on the session loop:
  └── _BatchRun.execute()
        ├── cache hits written, as in an online map
        ├── attach to the registry's uncollected job with the same fingerprint, or submit:
        │     JSONL parts (≤ 50,000 requests, ≤ 200 MB each) → POST /files → POST /batches
        ├── poll GET /batches/{id} until every part is terminal (progress: request_counts)
        └── collect: output and error files joined by custom_id → cache, ledger (at the
              batch price), rows; a row with no line gets its batch's reason in `_error`
resume(session, id, df)   the same, attached to a given job (after a kernel restart)
collect(session, id)      no frame: wait, then put the replies in the cache and the ledger
cancel(session, id)       POST /batches/{id}/cancel for each part still running
jobs(session)             every job in the registry, newest first, statuses refreshed
```

Why a registry on disk: a batch outlives the kernel. Each job is one JSON file in
`<cache dir>/batches/` (0700, files 0600): its batch and file ids, the custom_id → (rows,
cache key, part) mapping, the template and the resolved options, and the fingerprint (the
sha256 of the sorted cache keys it sends). Re-running a cell plans the same keys, finds the
job by fingerprint and attaches instead of paying twice; after a restart `resume` re-plans
the stored template over the frame and joins by cache key, so row order does not matter.
Results are joined by cache key too, which is also how they reach the cache: once a batch
is collected, the same cell (batch or not) is answered from the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipychat.core import pricing
from ipychat.core.errors import (
    BudgetExceeded,
    ChatError,
    ConfigError,
    Interrupted,
    OfflineCacheMiss,
)
from ipychat.core.pricing import format_usd
from ipychat.core.settings import TICK
from ipychat.core.types import Reply, Usage
from ipychat.engine.ledger import LedgerRow
from ipychat.map.job import (
    MapAborted,
    MapInterrupted,
    MapJob,
    MapPlan,
    MapRequest,
    MapResult,
    format_seconds,
    guarded,
    wait_on_loop,
)

if TYPE_CHECKING:
    from ipychat.session import ChatSession

__all__ = [
    "BatchJob",
    "BatchPlan",
    "BatchProgress",
    "BatchResult",
    "arun",
    "cancel",
    "collect",
    "jobs",
    "plan",
    "resume",
    "run",
]

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
# OpenAI's limits per batch input file; a map above either is split into several batches.
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
# Batches take minutes to hours: poll soon (small ones finish fast), then less and less often.
FIRST_POLL = 1.0
MAX_POLL = 30.0
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")
THREAD = "batch"  # the ledger's thread column for replies that came through a batch
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


# ----- the registry --------------------------------------------------------------------------


@dataclass
class Part:
    """One input file and the provider batch made from it."""

    requests: int
    bytes: int
    file_id: str | None = None
    batch_id: str | None = None
    status: str = "unsubmitted"
    counts: dict[str, int] = field(default_factory=dict)  # total, completed, failed
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = field(default_factory=list)  # why a batch failed validation

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def update(self, batch: dict[str, Any]) -> None:
        self.batch_id = str(batch.get("id") or self.batch_id or "") or None
        self.status = str(batch.get("status") or self.status)
        counts = batch.get("request_counts") or {}
        self.counts = {k: int(counts.get(k) or 0) for k in ("total", "completed", "failed")}
        self.output_file_id = batch.get("output_file_id") or self.output_file_id
        self.error_file_id = batch.get("error_file_id") or self.error_file_id
        errors = (batch.get("errors") or {}).get("data") or []
        self.errors = [_batch_error(e) for e in errors if isinstance(e, dict)][:5]


@dataclass
class RequestRef:
    """What a custom_id stands for: the rows it answers, its cache key, its part."""

    rows: list[int]
    key: str
    part: int


@dataclass
class BatchJob:
    """One `%%chatmap --batch` submission: one or more provider batches, saved on disk."""

    id: str
    fingerprint: str
    created: float
    endpoint: str
    host: str
    frame: str
    template: str
    outputs: list[str]
    options: dict[str, Any]  # the resolved map options: re-planning gives the same keys
    requests: dict[str, RequestRef]
    parts: list[Part]
    state: str = "submitted"  # submitted | collected
    answered: int = 0  # after collection: requests answered, and failed
    failed: int = 0

    @property
    def batch_ids(self) -> list[str]:
        return [p.batch_id for p in self.parts if p.batch_id]

    @property
    def model(self) -> str:
        return str(self.options.get("model") or "")

    @property
    def finished(self) -> bool:
        """Nothing more will happen at the provider (unsubmitted parts never will)."""
        return all(p.terminal or p.batch_id is None for p in self.parts)

    @property
    def status(self) -> str:
        """The least advanced status of its parts, or the terminal ones (`completed`,
        `expired`, `completed+expired` …)."""
        running = [p.status for p in self.parts if p.status in ACTIVE]
        if running:
            return min(running, key=ACTIVE.index)
        done = sorted({p.status for p in self.parts}, key=lambda s: (s != "completed", s))
        return "+".join(done)

    def counts(self) -> tuple[int, int]:
        """(requests finished, of which failed), as the provider counts them."""
        completed = sum(p.counts.get("completed", 0) for p in self.parts)
        failed = sum(p.counts.get("failed", 0) for p in self.parts)
        return completed + failed, failed

    def line(self) -> str:
        """`bm_1a2b3c4d5e · in_progress · 612/788 requests · 3 failed · batch_abc · reviews ·
        gpt-4o-mini · 4 min ago`"""
        done, failed = self.counts()
        if self.state == "collected":
            state = (
                f"collected ({self.status}) · {self.answered:,} answered · {self.failed:,} failed"
            )
        else:
            state = f"{self.status} · {done:,}/{len(self.requests):,} requests · {failed:,} failed"
        ids = self.batch_ids
        shown = ids[0] + (f" (+{len(ids) - 1})" if len(ids) > 1 else "") if ids else "not submitted"
        age = _ago(time.time() - self.created)
        return f"{self.id} · {state} · {shown} · {self.frame} · {self.model} · {age}"

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchJob:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        data["requests"] = {cid: RequestRef(**ref) for cid, ref in data["requests"].items()}
        data["parts"] = [Part(**part) for part in data["parts"]]
        return cls(**data)


class Registry:
    """The jobs of one cache directory: `<dir>/<job id>.json`, written atomically.

    Only in a directory nobody else can change (`ipychat.core.files`, as the cache): a job
    file steers which batch is downloaded and which rows and cache keys its replies fill.
    Files are read without following links and must be regular files (a FIFO would hang).
    """

    _MAX_JOB = 256 << 20  # bytes: a job file of 50,000 requests x several parts is ~10 MB

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def of(cls, session: ChatSession) -> Registry:
        from ipychat.engine.cache import default_cache_dir

        cache = session.cache
        return cls((cache.directory if cache is not None else default_cache_dir()) / "batches")

    def _root(self) -> Path:
        """The checked folder (symlinks resolved); ConfigError in one line if not safe."""
        from ipychat.core.files import UnsafeDirectory, private_directory, private_subdirectory

        try:
            return private_subdirectory(
                private_directory(self.directory.parent), self.directory.name
            )
        except UnsafeDirectory as exc:
            raise ConfigError(f"Batch jobs are kept with the cache, and {exc}") from None

    def _read(self, root: Path, name: str) -> BatchJob:
        from ipychat.core.files import read_private

        return BatchJob.from_dict(json.loads(read_private(root, name, self._MAX_JOB)))

    def save(self, job: BatchJob) -> None:
        from ipychat.core.files import write_replace

        # Batch ids and templates are private to the user, like the cached replies; a
        # reader (another kernel) never sees half a file.
        data = json.dumps(job.to_dict(), ensure_ascii=False, separators=(",", ":"))
        write_replace(self._root(), f"{job.id}.json", data.encode("utf-8"))

    def all(self, prefix: str = "") -> list[BatchJob]:
        root = self._root()
        found: list[BatchJob] = []
        for path in root.glob(f"{prefix}*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                found.append(self._read(root, path.name))
        return sorted(found, key=lambda job: job.created, reverse=True)

    def load(self, ident: str) -> BatchJob:
        """A job by its id (bm_…) or by the id of one of its provider batches."""
        if ident and set(ident) <= _ID_CHARS:
            root = self._root()
            try:
                return self._read(root, f"{ident}.json")
            except FileNotFoundError:
                pass
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise ConfigError(
                    f"Batch {ident} in {self.directory} cannot be read ({exc}); delete "
                    f"{ident}.json there if you do not need it."
                ) from None
            for job in self.all():
                if ident in job.batch_ids:
                    return job
        raise ConfigError(f"No batch {ident!r} in {self.directory}: %chat batches lists them.")

    def attachable(self, fingerprint: str) -> BatchJob | None:
        """The newest uncollected job that sends exactly these requests."""
        candidates = self.all(f"bm_{fingerprint[:8]}")
        return next(
            (j for j in candidates if j.fingerprint == fingerprint and j.state != "collected"),
            None,
        )


# ----- plan, progress, result ----------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """The dry run of a batch map: the map's plan, and how it would be submitted."""

    plan: MapPlan
    files: int
    bytes: int

    def line(self) -> str:
        p = self.plan
        if not p.send:
            return p.line()
        cost = p.cost_batch if p.cost_batch is not None else p.cost_high
        return (
            f"{p.line()} · Batch API: {p.send:,} requests in {self.files} "
            f"file{'s' if self.files != 1 else ''} ({_size(self.bytes)}), up to "
            f"{format_usd(cost)}, results within 24 h"
        )

    def __str__(self) -> str:
        return self.line()

    def _repr_markdown_(self) -> str:
        return f"`{self.line()}`"


@dataclass(frozen=True)
class BatchProgress:
    """`batch bm_1a2b · in_progress · 612/788 requests · 3 failed · 4 min 10 s` (the shape
    chatmap's progress displays take: done, total, line())."""

    job: str
    status: str
    done: int
    failed: int
    total: int
    elapsed: float

    @property
    def errors(self) -> int:
        return self.failed

    def line(self) -> str:
        return (
            f"batch {self.job} · {self.status} · {self.done:,}/{self.total:,} requests · "
            f"{self.failed:,} failed · {format_seconds(self.elapsed)}"
        )


@dataclass
class BatchResult(MapResult):
    """A map's result (frame, summary, plan) and the job that answered it."""

    job: BatchJob | None = None
    attached: bool = False  # True when it joined a job submitted earlier


# ----- the engine ----------------------------------------------------------------------------


class _BatchRun:
    """One batch map (or a collection without a frame when `mapper` is None)."""

    def __init__(
        self,
        session: ChatSession,
        mapper: MapJob | None,
        *,
        poll_interval: float | None = None,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if poll_interval is not None and not poll_interval > 0:
            raise ConfigError(
                f"poll_interval must be a positive number of seconds, not {poll_interval!r}."
            )
        if max_requests < 1 or max_bytes < 1:
            raise ConfigError("max_requests and max_bytes must be positive.")
        self.session = session
        self.mapper = mapper
        self.registry = Registry.of(session)
        self.poll_interval = poll_interval
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.job: BatchJob | None = None
        self.attached = False
        self.started = time.monotonic()
        self._by_key: dict[str, MapRequest] = (
            {job.key: job for job in mapper.to_send} if mapper is not None else {}
        )

    # ----- reading the state (any thread) ---------------------------------------------------

    def progress(self) -> BatchProgress | None:
        job = self.job
        if job is None:
            return None
        done, failed = job.counts()
        return BatchProgress(
            job=job.id,
            status=job.status,
            done=done,
            failed=failed,
            total=len(job.requests),
            elapsed=time.monotonic() - self.started,
        )

    # ----- the run (session loop) -----------------------------------------------------------

    async def execute(self, job: BatchJob | None = None, *, wait: bool = True) -> None:
        session, mapper = self.session, self.mapper
        if mapper is not None:
            mapper.start()  # JSON re-asks are sent online afterwards (send_queued)
            if not mapper.to_send and job is None:
                await self._reask()
                return
        if session.settings.offline:
            if mapper is not None:
                for mjob in mapper.to_send:
                    mapper.fail(
                        mjob, OfflineCacheMiss("Offline mode: this row is not in the cache.")
                    )
                return
            raise OfflineCacheMiss("Offline mode: batches are not polled; %chat offline off first.")
        if session.is_local:
            raise ConfigError("The local model has no Batch API: run the map without --batch.")
        client = await session.client()
        if job is None:
            job = self.registry.attachable(_fingerprint(self._by_key))
            self.attached = job is not None
        else:
            self.attached = True
        held = 0.0
        try:
            if job is None:
                held = self._reserve()
                job = self._new_job()
            self.job = job
            await self._submit_missing(client, job)
            if not wait:
                return
            await self._poll(client, job)
            await self._collect(client, job)
        finally:
            session.usage.settle(held, None)
        await self._reask()

    def _reserve(self) -> float:
        assert self.mapper is not None
        plan = self.mapper.plan
        high = plan.cost_batch if plan.cost_batch is not None else plan.cost_high
        return self.session.usage.reserve(high)

    def _new_job(self) -> BatchJob:
        mapper = self.mapper
        assert mapper is not None
        session = self.session
        lines = {f"row-{mjob.rows[0]}": mjob for mjob in mapper.to_send}
        sizes = {cid: len(_line(cid, mjob.prepared.body)) + 1 for cid, mjob in lines.items()}
        requests: dict[str, RequestRef] = {}
        parts: list[Part] = []
        for cids in _split(list(sizes.items()), self.max_requests, self.max_bytes):
            for cid in cids:
                requests[cid] = RequestRef(list(lines[cid].rows), lines[cid].key, len(parts))
            parts.append(Part(requests=len(cids), bytes=sum(sizes[c] for c in cids)))
        first = mapper.to_send[0].prepared.body
        fingerprint = _fingerprint(self._by_key)
        job = BatchJob(
            # The fingerprint's start in the id (and file name): finding the job to attach
            # to reads only its own file, not every job's mapping.
            id=f"bm_{fingerprint[:8]}{secrets.token_hex(2)}",
            fingerprint=fingerprint,
            created=time.time(),
            endpoint=session.base_url,
            host=session.host,
            frame=mapper.frame_name,
            template=mapper.template_text,
            outputs=list(mapper.outputs),
            options={
                "json": mapper.json,
                "model": first["model"],
                "system": mapper.base_system,  # "": none, whatever the settings say then
                "temperature": first.get("temperature"),
                "max_tokens": first.get("max_tokens"),
                "fill_null": mapper.fill_null,
                "limit": mapper.limit,
                "error_column": mapper.error_column,
            },
            requests=requests,
            parts=parts,
        )
        if mapper.allow_secrets:  # the rows were sent on that say-so
            job.options["allow_secrets"] = True
        self.registry.save(job)  # before the upload: a crash leaves a job to attach to
        return job

    async def _submit_missing(self, client: Any, job: BatchJob) -> None:
        """Upload and create every part that has no batch yet (all of a new job; what a
        crash or an error left out of an old one, when this plan can rebuild its lines)."""
        for index, part in enumerate(job.parts):
            if part.batch_id is not None:
                continue
            cids = [cid for cid, ref in job.requests.items() if ref.part == index]
            bodies = [self._by_key.get(job.requests[cid].key) for cid in cids]
            if any(b is None for b in bodies):
                continue  # not this plan's requests: collected as "never submitted"
            if part.file_id is None:
                data = b"".join(
                    _line(cid, mjob.prepared.body) + b"\n"
                    for cid, mjob in zip(cids, bodies, strict=True)
                    if mjob is not None
                )
                name = f"ipychat-{job.id}-{index + 1}of{len(job.parts)}.jsonl"
                part.file_id = str((await client.upload_file(data, filename=name))["id"])
                self.registry.save(job)
            metadata = {"ipychat_job": job.id, "part": f"{index + 1}/{len(job.parts)}"}
            part.update(
                await client.create_batch(
                    part.file_id,
                    endpoint=ENDPOINT,
                    completion_window=COMPLETION_WINDOW,
                    metadata=metadata,
                )
            )
            self.registry.save(job)

    async def _poll(self, client: Any, job: BatchJob) -> None:
        delay = self.poll_interval or FIRST_POLL
        while True:
            changed = False
            for part in job.parts:
                if part.batch_id is not None and not part.terminal:
                    part.update(await client.get_batch(part.batch_id))
                    changed = True
            if changed:
                self.registry.save(job)
            if job.finished:
                return
            await asyncio.sleep(delay)
            if self.poll_interval is None:
                delay = min(delay * 1.5, MAX_POLL)

    async def _collect(self, client: Any, job: BatchJob) -> None:
        """Download every part's output and error files and apply each line by custom_id."""
        first = job.state != "collected"  # the ledger and the summary count a job once
        seen: set[str] = set()
        answered = failed = 0
        for part in job.parts:
            for file_id in (part.output_file_id, part.error_file_id):
                if not file_id:
                    continue
                for raw in (await client.file_content(file_id)).splitlines():
                    line = _json_line(raw) or {}
                    cid = str(line.get("custom_id"))
                    ref = job.requests.get(cid)
                    if ref is None or cid in seen:
                        continue  # not ours, or a duplicate: the first line wins
                    seen.add(cid)
                    ok = self._apply(job, ref, line, first=first)
                    answered += ok
                    failed += not ok
        for cid, ref in job.requests.items():
            if cid not in seen:
                failed += 1
                self._fail(job, ref, _missing(job.parts[ref.part]), record=False)
        if self.mapper is not None:
            known = {ref.key for ref in job.requests.values()}
            for mjob in self.mapper.to_send:
                if mjob.key not in known:
                    message = (
                        f"This row is not part of batch {job.id} (the frame or the options "
                        "changed since it was submitted); re-run the cell to send it."
                    )
                    self.mapper.fail(mjob, ChatError(message))
        if first:
            job.state, job.answered, job.failed = "collected", answered, failed
            self.registry.save(job)

    def _apply(self, job: BatchJob, ref: RequestRef, line: dict[str, Any], *, first: bool) -> bool:
        response = line.get("response") or {}
        body = response.get("body") if isinstance(response, dict) else None
        choices = body.get("choices") if isinstance(body, dict) else None
        if response.get("status_code") != 200 or line.get("error") or not choices:
            # A request that ran and failed is in the ledger (at no cost); one the batch
            # never ran (expired, cancelled) is not a request.
            self._fail(job, ref, _line_error(line), record=first and bool(response))
            return False
        assert isinstance(body, dict)
        message = (choices[0] or {}).get("message") or {}
        session, model = self.session, job.model
        usage = Usage.from_api(body.get("usage"))
        reply = Reply(
            text=str(message.get("content") or ""),
            model=str(body.get("model") or model),
            usage=usage,
            cost=pricing.cost(usage, _batch_price(session, model)),
            finish_reason=(choices[0] or {}).get("finish_reason"),
            thread=THREAD,
        )
        if first:
            session.usage.record(_row(session, model, reply))
        store = session.cache if session.settings.cache else None
        mapper = self.mapper
        if store is not None and (mapper is None or mapper.cache_mode != "off"):
            from ipychat.session import _cache_value

            store.set(ref.key, _cache_value(reply, session.host, model))
        mjob = self._by_key.get(ref.key)
        if mapper is not None and mjob is not None:
            if first:
                mapper.spend(reply)
            mapper.answer(mjob, reply.text, reply.finish_reason)
        return True

    def _fail(self, job: BatchJob, ref: RequestRef, message: str, *, record: bool) -> None:
        if record:
            empty = Reply(text="", model=job.model, thread=THREAD)
            row = _row(self.session, job.model, empty)
            self.session.usage.record(replace(row, outcome="error", error=message, cost=0.0))
        mjob = self._by_key.get(ref.key)
        if self.mapper is not None and mjob is not None:
            self.mapper.fail(mjob, ChatError(message))

    async def _reask(self) -> None:
        """Replies that were not the JSON asked for are asked again online (few rows)."""
        mapper = self.mapper
        if mapper is not None:
            await mapper.send_queued()


# ----- helpers -------------------------------------------------------------------------------


def _line(custom_id: str, body: dict[str, Any]) -> bytes:
    request = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _split(sizes: list[tuple[str, int]], max_requests: int, max_bytes: int) -> Iterator[list[str]]:
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


def _fingerprint(by_key: dict[str, Any]) -> str:
    return hashlib.sha256("\n".join(sorted(by_key)).encode()).hexdigest()


def _json_line(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _batch_error(error: dict[str, Any]) -> str:
    where = f" (line {error['line']})" if error.get("line") else ""
    return f"{error.get('message') or error.get('code') or 'invalid input'}{where}"


def _line_error(line: dict[str, Any]) -> str:
    error = line.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        if code == "batch_expired":
            return "The batch expired before this row was answered; re-run the cell to send it."
        if code == "batch_cancelled":
            return (
                "The batch was cancelled before this row was answered; re-run the cell to send it."
            )
        return f"The batch could not run this row: {str(error.get('message') or code).rstrip('.')}."
    response = line.get("response") or {}
    status = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    detail = (body or {}).get("error") if isinstance(body, dict) else None
    message = str((detail.get("message") if isinstance(detail, dict) else detail) or "")
    if status == 200:
        return "The batch answered this row without a reply; re-run the cell to send it again."
    return f"HTTP {status} in the batch: {message.rstrip('.') or 'no message'}; re-run the cell to retry."


def _missing(part: Part) -> str:
    if part.batch_id is None:
        return "This row's batch file was never submitted; re-run the cell to send it."
    if part.status == "failed":
        why = "; ".join(part.errors) or "no reason given"
        return f"Batch {part.batch_id} failed validation: {why}."
    if part.status == "expired":
        return "The batch expired before this row was answered; re-run the cell to send it."
    if part.status == "cancelled":
        return "The batch was cancelled before this row was answered; re-run the cell to send it."
    return f"Batch {part.batch_id} ({part.status}) returned nothing for this row; re-run the cell."


def _batch_price(session: ChatSession, model: str) -> pricing.ModelPrice | None:
    """The model's Batch API price; its normal price when the table has no batch price."""
    price = session.prices.lookup(model, is_local=False)
    if price is None or price.batch_input is None or price.batch_output is None:
        return price
    return replace(price, input=price.batch_input, output=price.batch_output, cached_input=None)


def _row(session: ChatSession, model: str, reply: Reply) -> LedgerRow:
    usage = reply.usage or Usage(estimated=True)
    return LedgerRow(
        time=time.time(),
        thread=THREAD,
        model=model,
        host=session.host,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cost=reply.cost,
        estimated=usage.estimated,
    )


def _check_endpoint(session: ChatSession, job: BatchJob) -> None:
    if job.endpoint != session.base_url:
        raise ConfigError(
            f"Batch {job.id} was submitted to {job.endpoint}, not {session.base_url}: switch "
            f"with %chat endpoint {job.endpoint} first."
        )


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, seconds):.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


# ----- entry points --------------------------------------------------------------------------

_RUN_OPTIONS = ("poll_interval", "max_requests", "max_bytes")


def _mapper(
    session: ChatSession, df: Any, template: str, output: Any, options: dict[str, Any]
) -> MapJob:
    return MapJob(session, df, template, output, **options)


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    options.pop("batch", None)
    run_options = {k: options.pop(k) for k in _RUN_OPTIONS if k in options}
    return options, run_options


def _check_budget(mapper: MapJob) -> None:
    """--max-cost against the batch price (the price this run will pay)."""
    plan = mapper.plan
    high = (
        (plan.cost_batch if plan.cost_batch is not None else plan.cost_high) if plan.send else 0.0
    )
    limit = mapper.max_cost
    if limit is not None and (high is None or high > limit + 1e-12):
        shown = "an unknown amount" if high is None else format_usd(high)
        raise BudgetExceeded(
            f"This batch may cost up to {shown} ({plan.send:,} requests), over --max-cost "
            f"{format_usd(limit)}. Lower --max-tokens, use --limit N, or raise --max-cost."
        )


def plan(
    session: ChatSession, df: Any, template: str, output: Any = "col", **options: Any
) -> BatchPlan:
    """The dry run of a batch map: the map's plan plus files, size and batch price."""
    options, run_options = _split_options(dict(options))
    for name in ("progress", "on_plan", "on_submit", "wait"):
        options.pop(name, None)
    return _plan(_mapper(session, df, template, output, options), run_options)


def _plan(mapper: MapJob, run_options: dict[str, Any]) -> BatchPlan:
    sizes = [
        (f"row-{mjob.rows[0]}", len(_line(f"row-{mjob.rows[0]}", mjob.prepared.body)) + 1)
        for mjob in mapper.to_send
    ]
    max_requests = run_options.get("max_requests", MAX_REQUESTS)
    groups = list(_split(sizes, max_requests, run_options.get("max_bytes", MAX_BYTES)))
    return BatchPlan(mapper.plan, len(groups), sum(n for _, n in sizes))


def run(
    session: ChatSession,
    df: Any,
    template: str,
    output: Any = "col",
    *,
    wait: bool = True,
    progress: Callable[[BatchProgress], None] | None = None,
    on_plan: Callable[[BatchPlan], None] | None = None,
    on_submit: Callable[[BatchJob, bool], None] | None = None,
    **options: Any,
) -> BatchResult:
    """Map `template` over `df` through the Batch API and wait (see the module docstring).

    Takes chatmap's options, plus `poll_interval` (seconds; default 1 s growing to 30 s),
    `max_requests` and `max_bytes` per file (OpenAI's 50,000 and 200 MB). `wait=False`
    returns once the batch is submitted (its rows pending); running the same map again
    attaches to it. `on_submit(job, attached)` is called from this thread once the job is
    known. Ctrl-C stops waiting, not the batch: MapInterrupted, with `.result`.
    """
    options, run_options = _split_options(dict(options))
    mapper = _mapper(session, df, template, output, options)
    _check_budget(mapper)
    if on_plan is not None:
        on_plan(_plan(mapper, run_options))
    batch_run = _BatchRun(session, mapper, **run_options)
    _drive(session, batch_run, batch_run.execute(wait=wait), progress, on_submit)
    return _result(batch_run)


def resume(
    session: ChatSession,
    ident: str,
    df: Any,
    *,
    inplace: bool = False,
    name: str | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    on_submit: Callable[[BatchJob, bool], None] | None = None,
    **run_options: Any,
) -> BatchResult:
    """Attach to job `ident` (bm_… or a provider batch id), wait, and fill `df` from it:
    the stored template and options are planned over `df` again and joined by cache key."""
    job = Registry.of(session).load(ident)
    _check_endpoint(session, job)
    options = dict(job.options)
    mapper = _mapper(
        session,
        df,
        job.template,
        job.outputs,
        {**options, "inplace": inplace, "name": name or job.frame},
    )
    batch_run = _BatchRun(session, mapper, **run_options)
    _drive(session, batch_run, batch_run.execute(job), progress, on_submit)
    return _result(batch_run)


def collect(
    session: ChatSession,
    ident: str,
    *,
    progress: Callable[[BatchProgress], None] | None = None,
    **run_options: Any,
) -> BatchJob:
    """Without a frame: wait for job `ident`, then put its replies in the cache and the
    ledger; re-running its %%chatmap cell is then answered from the cache."""
    job = Registry.of(session).load(ident)
    _check_endpoint(session, job)
    batch_run = _BatchRun(session, None, **run_options)
    _drive(session, batch_run, batch_run.execute(job), progress, None)
    assert batch_run.job is not None
    return batch_run.job


def cancel(session: ChatSession, ident: str) -> BatchJob:
    """Ask the provider to cancel every part still running; what finished is kept (collect
    it with `resume` or by re-running the cell)."""
    registry = Registry.of(session)
    job = registry.load(ident)
    _check_endpoint(session, job)

    async def go() -> None:
        client = await session.client()
        for part in job.parts:
            if part.batch_id is not None and not part.terminal:
                part.update(await client.get_batch(part.batch_id))
                if part.status in ("validating", "in_progress", "finalizing"):
                    part.update(await client.cancel_batch(part.batch_id))
        registry.save(job)

    session.run(go())
    return job


def jobs(session: ChatSession, *, refresh: bool = True) -> list[BatchJob]:
    """Every job of this cache directory, newest first; running ones on this endpoint are
    asked for their status first (one GET per part)."""
    registry = Registry.of(session)
    found = registry.all()
    live = [
        j
        for j in found
        if refresh and j.state != "collected" and not j.finished and j.endpoint == session.base_url
    ]

    async def go() -> None:
        client = await session.client()
        for job in live:
            for part in job.parts:
                if part.batch_id is not None and not part.terminal:
                    with contextlib.suppress(ChatError):  # else the stored status is shown
                        part.update(await client.get_batch(part.batch_id))
            registry.save(job)

    if live and not session.settings.offline:
        session.run(go())
    return found


async def arun(
    session: ChatSession,
    df: Any,
    template: str,
    output: Any = "col",
    *,
    wait: bool = True,
    progress: Callable[[BatchProgress], None] | None = None,
    on_plan: Callable[[BatchPlan], None] | None = None,
    **options: Any,
) -> BatchResult:
    """`run` for code that awaits; the batch is still driven from the session's own loop."""
    options, run_options = _split_options(dict(options))
    mapper = _mapper(session, df, template, output, options)
    _check_budget(mapper)
    if on_plan is not None:
        on_plan(_plan(mapper, run_options))
    batch_run = _BatchRun(session, mapper, **run_options)
    finished = threading.Event()
    future = session.submit(guarded(batch_run.execute(wait=wait), finished))
    wrapped = asyncio.wrap_future(future)
    try:
        while not (await asyncio.wait({wrapped}, timeout=TICK))[0]:
            _tick(batch_run, progress)
        wrapped.result()
    except asyncio.CancelledError:
        future.cancel()
        await asyncio.to_thread(finished.wait, 5.0)
        raise _interrupted(batch_run) from None
    except ChatError as exc:
        raise _aborted(batch_run, exc) from None
    _tick(batch_run, progress)
    return _result(batch_run)


def map_frame(session: ChatSession, df: Any, template: str, output: Any = "col", *,
              dry_run: bool = False, **options: Any) -> Any:  # fmt: skip
    """`ChatSession.map(..., batch=True)`: the frame, or the BatchPlan of a dry run."""
    if dry_run:
        return plan(session, df, template, output, **options)
    return run(session, df, template, output, **options).frame


async def amap_frame(session: ChatSession, df: Any, template: str, output: Any = "col", *,
                     dry_run: bool = False, **options: Any) -> Any:  # fmt: skip
    """`ChatSession.amap(..., batch=True)`."""
    if dry_run:
        return plan(session, df, template, output, **options)
    return (await arun(session, df, template, output, **options)).frame


def _tick(batch_run: _BatchRun, progress: Callable[[BatchProgress], None] | None) -> None:
    snapshot = batch_run.progress()
    if progress is not None and snapshot is not None:
        progress(snapshot)


def _drive(
    session: ChatSession,
    batch_run: _BatchRun,
    coro: Coroutine[Any, Any, None],
    progress: Callable[[BatchProgress], None] | None,
    on_submit: Callable[[BatchJob, bool], None] | None,
) -> None:
    """Run on the session loop and wait here, ticking the display; Ctrl-C stops waiting."""
    announced = False

    def tick() -> None:
        nonlocal announced
        if not announced and batch_run.job is not None:
            announced = True
            if on_submit is not None:
                on_submit(batch_run.job, batch_run.attached)
        _tick(batch_run, progress)

    try:
        wait_on_loop(session, coro, tick)
    except KeyboardInterrupt:
        raise _interrupted(batch_run) from None
    except ChatError as exc:
        raise _aborted(batch_run, exc) from None
    tick()  # the final state (and the announcement of a job that finished within a tick)


def _result(batch_run: _BatchRun) -> BatchResult:
    assert batch_run.mapper is not None
    result = batch_run.mapper.result()
    return BatchResult(
        result.frame, result.summary, result.plan, job=batch_run.job, attached=batch_run.attached
    )


def _still_running(batch_run: _BatchRun) -> str:
    job = batch_run.job
    if job is None or not job.batch_ids:
        return "Nothing was submitted."
    return (
        f"Batch {job.id} keeps running at the provider: re-run the cell to attach to it, "
        f"%chat batch resume {job.id} DF after a restart, %chat batch cancel {job.id} to stop it."
    )


def _interrupted(batch_run: _BatchRun) -> ChatError:
    message = f"Stopped waiting. {_still_running(batch_run)}"
    if batch_run.mapper is None:
        return Interrupted(message)
    return MapInterrupted(message, batch_run.mapper.result(interrupted=True))


def _aborted(batch_run: _BatchRun, cause: ChatError) -> ChatError:
    job = batch_run.job
    if batch_run.mapper is None or isinstance(cause, MapAborted) or not (job and job.batch_ids):
        return cause  # nothing at the provider yet: the error as it is
    text = str(cause)  # client errors end without a full stop: give it one before the next
    message = (
        f"{text if text.endswith(('.', '!', '?')) else text + '.'} {_still_running(batch_run)}"
    )
    return MapAborted(message, batch_run.mapper.result(), cause)
