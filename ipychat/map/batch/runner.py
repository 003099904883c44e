"""One batch map on the session loop: cache hits written, the job attached to or
submitted (JSONL parts → POST /files → POST /batches), polled until every part is
terminal, then collected: output and error files joined by custom_id → cache, ledger (at
the batch price), rows; a row with no line gets its batch's reason in `_error`."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ipychat.core import pricing
from ipychat.core.errors import ChatError, ConfigError, OfflineCacheMiss
from ipychat.core.types import Reply, Usage
from ipychat.engine.exchange import Exchange
from ipychat.map.batch.jsonl import (
    ENDPOINT,
    MAX_BYTES,
    MAX_REQUESTS,
    fingerprint,
    parse_line,
    request_line,
    split_parts,
)
from ipychat.map.batch.registry import BatchJob, Part, Registry, RequestRef
from ipychat.map.batch.results import BatchProgress, line_error, missing_reason
from ipychat.map.job import MapJob, MapRequest

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine

__all__ = ["COMPLETION_WINDOW", "FIRST_POLL", "MAX_POLL", "THREAD", "BatchOptions", "BatchRun"]

COMPLETION_WINDOW = "24h"
# Batches take minutes to hours: poll soon (small ones finish fast), then less and less often.
FIRST_POLL = 1.0
MAX_POLL = 30.0
THREAD = "batch"  # the ledger's thread column for replies that came through a batch


@dataclass(frozen=True)
class BatchOptions:
    """A batch run's own options: seconds between polls (None: FIRST_POLL growing to
    MAX_POLL), and the most requests and bytes per input file (OpenAI's limits)."""

    poll_interval: float | None = None
    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        poll = self.poll_interval
        if poll is not None and not poll > 0:
            raise ConfigError(f"poll_interval must be a positive number of seconds, not {poll!r}.")
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ConfigError("max_requests and max_bytes must be positive.")


class BatchRun:
    """One batch map (or a collection without a frame when `mapper` is None)."""

    def __init__(
        self, engine: Engine, mapper: MapJob | None, options: BatchOptions | None = None
    ) -> None:
        options = options if options is not None else BatchOptions()
        self.engine = engine
        self.mapper = mapper
        self.registry = Registry.of(engine)
        self.poll_interval = options.poll_interval
        self.max_requests = options.max_requests
        self.max_bytes = options.max_bytes
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
        engine, mapper = self.engine, self.mapper
        if mapper is not None:
            mapper.start()  # JSON re-asks are sent online afterwards (send_queued)
            if not mapper.to_send and job is None:
                await self._reask()
                return
        if engine.settings.offline:
            if mapper is not None:
                for mjob in mapper.to_send:
                    mapper.fail(
                        mjob, OfflineCacheMiss("Offline mode: this row is not in the cache.")
                    )
                return
            raise OfflineCacheMiss("Offline mode: batches are not polled; %chat offline off first.")
        if engine.is_local:
            raise ConfigError("The local model has no Batch API: run the map without --batch.")
        client = await engine.client()
        if job is None:
            job = self.registry.attachable(fingerprint(self._by_key))
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
            engine.usage.settle(held, None)
        await self._reask()

    def _reserve(self) -> float:
        assert self.mapper is not None
        plan = self.mapper.plan
        high = plan.cost_batch if plan.cost_batch is not None else plan.cost_high
        return self.engine.usage.reserve(high)

    def _new_job(self) -> BatchJob:
        mapper = self.mapper
        assert mapper is not None
        engine = self.engine
        lines = {f"row-{mjob.rows[0]}": mjob for mjob in mapper.to_send}
        sizes = {cid: len(request_line(cid, mjob.prepared.body)) + 1 for cid, mjob in lines.items()}
        requests: dict[str, RequestRef] = {}
        parts: list[Part] = []
        for cids in split_parts(list(sizes.items()), self.max_requests, self.max_bytes):
            for cid in cids:
                requests[cid] = RequestRef(list(lines[cid].rows), lines[cid].key, len(parts))
            parts.append(Part(requests=len(cids), bytes=sum(sizes[c] for c in cids)))
        first = mapper.to_send[0].prepared.body
        sent = fingerprint(self._by_key)
        job = BatchJob(
            # The fingerprint's start in the id (and file name): finding the job to attach
            # to reads only its own file, not every job's mapping.
            id=f"bm_{sent[:8]}{secrets.token_hex(2)}",
            fingerprint=sent,
            created=time.time(),
            endpoint=engine.base_url,
            host=engine.host,
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
        if mapper.spec is not None:  # a typed map: re-planned with the same spec on resume
            job.options.update(mapper.spec.as_options())
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
                    request_line(cid, mjob.prepared.body) + b"\n"
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
                    line = parse_line(raw) or {}
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
                self._fail(job, ref, missing_reason(job.parts[ref.part]), record=False)
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
            self._fail(job, ref, line_error(line), record=first and bool(response))
            return False
        assert isinstance(body, dict)
        message = (choices[0] or {}).get("message") or {}
        engine, model = self.engine, job.model
        usage = Usage.from_api(body.get("usage"))
        reply = Reply(
            text=str(message.get("content") or ""),
            model=str(body.get("model") or model),
            usage=usage,
            cost=pricing.cost(usage, _batch_price(engine, model)),
            finish_reason=(choices[0] or {}).get("finish_reason"),
            thread=THREAD,
            saved=0.0,  # nothing saved: sent (the ledger's 0.0)
        )
        exchange = Exchange(reply, ref.key, model, engine.host)
        if first:  # the ledger names the model asked for, as the batch was priced for it
            engine.usage.record(exchange.ledger_row(model=model))
        store = engine.cache if engine.settings.cache else None
        mapper = self.mapper
        if store is not None and (mapper is None or mapper.cache_mode != "off"):
            store.set(ref.key, exchange.to_cache())
        mjob = self._by_key.get(ref.key)
        if mapper is not None and mjob is not None:
            if first:
                mapper.spend(reply)
            mapper.answer(mjob, reply.text, reply.finish_reason)
        return True

    def _fail(self, job: BatchJob, ref: RequestRef, message: str, *, record: bool) -> None:
        if record:
            empty = Reply(text="", model=job.model, thread=THREAD, saved=0.0)
            failed = Exchange(empty, ref.key, job.model, self.engine.host, outcome="error")
            self.engine.usage.record(replace(failed, error=message).ledger_row())
        mjob = self._by_key.get(ref.key)
        if self.mapper is not None and mjob is not None:
            self.mapper.fail(mjob, ChatError(message))

    async def _reask(self) -> None:
        """Replies that were not the JSON asked for are asked again online (few rows)."""
        mapper = self.mapper
        if mapper is not None:
            await mapper.send_queued()


def _batch_price(engine: Engine, model: str) -> pricing.ModelPrice | None:
    """The model's Batch API price; its normal price when the table has no batch price."""
    price = engine.prices.lookup(model, is_local=False)
    if price is None or price.batch_input is None or price.batch_output is None:
        return price
    return replace(price, input=price.batch_input, output=price.batch_output, cached_input=None)
