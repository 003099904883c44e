"""`MapJob`: one map, planned in its constructor (nothing sent), executed on the session
loop, its rows written as replies come back; `ipychat.map.job` has the entry points that
run one, `ipychat.map.batch` drives one through the Batch API instead."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ChatError, OfflineCacheMiss
from ipychat.core.types import CacheMode, Reply, Usage
from ipychat.engine.ledger import LedgerRow, max_tokens_within
from ipychat.engine.prepare import RequestOptions, structured_kind, typed_options
from ipychat.map.answers import Answers
from ipychat.map.counting import Recount, may_count_later
from ipychat.map.dispatch import CACHE_BATCH, Counters, Dispatcher, SendOptions
from ipychat.map.frame import CUT, Frame, MapProgress, MapResult, MapSummary
from ipychat.map.options import MapOptions
from ipychat.map.plan import (
    CachedRequest,
    MapRequest,
    RowRequest,
    default_reply_cap,
    plan_requests,
    totals,
)
from ipychat.map.scores import missing_note, score_request
from ipychat.map.template import compile_template

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine

__all__ = ["MapJob"]


# What a cached reply's `usage` may hold (the fields of Usage).
_USAGE_FIELDS = frozenset(Usage.__dataclass_fields__)


# ----- the job ------------------------------------------------------------------------------


class MapJob(Answers):
    """One map: planned in the constructor (nothing sent), executed on the session loop.

    `execute()` is the online run. Another engine (ipychat.map.batch sends the requests
    through the Batch API) drives a job through this interface instead:

    - what was asked: `options` (the MapOptions it was built with), and resolved with the
      engine's settings: `plan`, `max_cost`, `outputs`, `json`, `base_system` (the system
      prompt before --json added its rule), `fill_null`, `error_column`, `cache_mode`,
      `allow_secrets`, `frame_name`, `template_text`, `limit` (None: every row);
    - `to_send`: the MapRequests the cache does not answer;
    - on the session loop: `start()` first (counters, queues, cache hits written), then
      `spend(reply)` for a reply's cost, `answer(request, text)` for a reply's text,
      `fail(request, error)` for a request given up, and `send_queued()` to send online
      what is still queued (the JSON re-asks);
    - from any thread: `progress()`, `result(interrupted=...)`.
    """

    def __init__(
        self,
        engine: Engine,
        df: Any,
        template: str,
        options: MapOptions,
        *,
        count_later: bool = False,
    ) -> None:
        """Plan the map of `template` over `df` with `options` (checked when they were
        built): nothing is sent; `plan` says what `execute()` would send. `count_later`:
        a run that `execute()`s at once may count its prompts while it sends, when nothing
        needs its exact total first (`ipychat.map.plan`, "counted later")."""
        self.engine = engine
        self.options = options
        self.allow_secrets = options.allow_secrets
        self.outputs = list(options.outputs)
        self.json = options.json
        self.error_column = options.error_column
        self.inplace = options.inplace
        self.frame = Frame(df, options.name or "the DataFrame")
        self.cache_mode: CacheMode = options.cache
        self.concurrency = options.concurrency
        self.local = engine.is_local
        self.retries = engine.settings.max_retries if options.retries is None else options.retries
        self.max_cost = options.max_cost
        self.model: str = options.model or engine.model
        # No cap chosen: the map's own small one (see MAP_MAX_TOKENS), so that its bound
        # is near what it will cost; a reply cut there is marked in the error column.
        self.spec = options.spec
        columns = len(self.outputs) if self.json or self.spec is not None else 1
        self.default_cap = default_reply_cap(engine, options.max_tokens, columns)
        self.max_tokens = options.max_tokens if options.max_tokens is not None else self.default_cap
        self.rpm, self.tpm = options.rpm, options.tpm
        self.pace = options.pace
        self.cache_batch = options.cache_batch
        self.temperature = options.temperature
        self._set_system(options.system)
        self.fill_null = options.fill_null
        self.template = compile_template(template, self.frame.columns, self.frame.name)
        limit = options.limit
        self.n = len(self.frame) if limit is None else min(limit, len(self.frame))
        self._set_rows()
        self.counters = Counters()
        typed = self.spec is not None  # its schema is counted anyway
        caps = self.max_cost, self.rpm, self.tpm
        self._set_plan(count_later and may_count_later(engine, self.model, typed, *caps))
        self._recount: Recount | None = None
        self._dispatcher = self._new_dispatcher()

    def _set_system(self, system: str | None) -> None:
        """The system prompt (with --json or a spec, its rule added) and the body's extra
        fields (a spec's fragment for the endpoint's kind, `engine.prepare.typed_options`)."""
        base_system = system if system is not None else self.engine.settings.system
        self.base_system: str = base_system or ""
        self.extra: dict[str, Any] | None = None
        self.system = base_system
        self.parsed = [None] * len(self.frame)
        self.typed_note = None
        self.salt = ""
        self.row_options = RequestOptions(
            self.model, base_system, self.temperature, self.max_tokens, None, self.allow_secrets
        )
        self.scores: list[dict[str, float] | None] = [None] * len(self.frame)
        self.score_fields: dict[str, Any] | None = None
        self.score_note: str | None = None
        self.logprobs_missing = False
        if self.spec is not None:
            self.kind = structured_kind(self.engine)
            self.salt = self.spec.digest()
            typed = typed_options(self.row_options, self.spec, self.kind, None)
            self.system, self.extra = typed.system, dict(typed.extra or {})
            if self.options.scores:  # the fields are in the body, so in the cache key too
                self.score_fields, self.score_note = score_request(self.engine, self.kind)
                self.extra.update(self.score_fields or {})
        if self.json:
            keys = ", ".join(self.outputs)
            rule = f"Reply with only a JSON object with the keys: {keys}."
            self.system = f"{base_system}\n\n{rule}" if base_system else rule
            self.extra = {"response_format": {"type": "json_object"}}

    def _set_rows(self) -> None:
        """Per row: values of each output, and the error (None: fine). Rows not processed
        (past --limit) keep what the frame had."""
        n = self.n
        self.values: dict[str, list[Any]] = {
            col: (self.frame.existing(col) or [None] * len(self.frame)) for col in self.outputs
        }
        for col in self.outputs:
            self.values[col][:n] = [None] * n
        previous = self.frame.existing(self.error_column)
        self.had_error_column = previous is not None
        self.errors: list[str | None] = previous or [None] * len(self.frame)
        self.errors[:n] = [None] * n
        self.finished = [False] * n

    def _set_plan(self, count_later: bool = False) -> None:
        """Plan the rows (nothing sent): cache hits, requests to send, rows finished early."""
        engine = self.engine
        request = RowRequest(
            model=self.model,
            system=self.system,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            extra=self.extra,
            allow_secrets=self.allow_secrets,
            default_cap=self.default_cap,
            salt=self.salt,
            schema_tokens=self.spec.schema_tokens(self.model, self.kind) if self.spec else 0,
            count_later=count_later,
        )
        planned = plan_requests(
            engine,
            self.frame,
            self.template,
            self.n,
            fill_null=self.fill_null,
            cache_mode=self.cache_mode,
            request=request,
        )
        for i, error in planned.row_errors.items():
            self.errors[i] = error
            self.finished[i] = True
        self.plan, self.skipped = planned.plan, planned.skipped
        # The local model answers whatever model a map names: its plan says so, once.
        note = engine.local_note(self.model)
        if note:
            self.plan = dataclasses.replace(self.plan, note=note)
        self.hits, self.to_send = planned.hits, planned.to_send

    def check_budget(self) -> None:
        """Refuse a run whose upper bound exceeds --max-cost or the session budget, before
        anything is sent; the refusal names the lever that fits (--max-tokens N first)."""
        if not self.to_send or self.engine.settings.offline:
            return  # nothing will be sent, nothing spent
        self.engine.usage.check(
            self.plan.cost_high, max_cost=self.max_cost, what="This map", fit=self._fit
        )

    def _fit(self, limit: float) -> str | None:
        """What brings the map's bound under `limit` dollars: `--max-tokens N` (the largest
        reply cap that does), else `--limit N` (the most rows that do at this cap)."""
        price = self.engine.price(self.model)  # the endpoint's provider's price
        if price is None or not self.to_send:
            return None
        wanted = max(job.prepared.estimate.max_completion_tokens for job in self.to_send)
        prompts = sum(job.prepared.estimate.prompt_tokens for job in self.to_send)
        n = max_tokens_within(limit, prompts, len(self.to_send), price.input, price.output)
        if 1 <= n < wanted:
            return f"--max-tokens {n}"
        by_row = {i: job for job in self.to_send for i in job.rows}
        seen: set[int] = set()
        total = 0.0
        for i in range(self.n):  # --limit N keeps the first N rows
            job = by_row.get(i)
            if job is None or id(job) in seen:
                continue  # cached, skipped, or a duplicate of a row before it: free
            seen.add(id(job))
            total += job.prepared.estimate.cost_high or 0.0
            if total > limit + 1e-12:
                return f"--limit {i}" if i >= 1 else None
        return None

    # ----- the interface (see the class docstring) ------------------------------------------

    @property
    def frame_name(self) -> str:
        return self.frame.name

    @property
    def template_text(self) -> str:
        return self.template.text

    @property
    def limit(self) -> int | None:
        return self.n if self.n < len(self.frame) else None

    @property
    def abort(self) -> ChatError | None:
        """What stopped the run (key, model, a long wait), or None."""
        return self._dispatcher.abort

    def start(self) -> None:
        """Ready to run (session loop): counters and queues reset, cache hits written."""
        self._reset()
        self._apply_hits()

    def _reset(self) -> None:
        self.counters = Counters(total=sum(len(job.rows) for job in self.to_send))
        self._dispatcher = self._new_dispatcher()

    def _new_dispatcher(self) -> Dispatcher:
        sending = SendOptions(
            model=self.model,
            rpm=self.rpm,
            tpm=self.tpm,
            concurrency=self.concurrency,
            local=self.local,
            retries=self.retries,
            cache_mode=self.cache_mode,
            pace=self.pace,
            cache_batch=self.cache_batch or CACHE_BATCH,
        )
        return Dispatcher(self, self.engine, self.to_send, sending)

    def _apply_hits(self) -> None:
        """The cache hits: their ledger rows and savings, in bulk, then their rows written."""
        if not self.hits:
            return
        engine = self.engine
        # The rows of a map share a model and mostly a few token counts: each distinct
        # (model, usage) is priced once.
        priced: dict[tuple[Any, ...], tuple[dict[str, Any], float | None]] = {}
        ledger: list[dict[str, Any]] = []
        savings: list[float | None] = []
        for job, hit in self.hits:
            raw = hit.get("usage")
            if not isinstance(raw, dict) or not raw.keys() <= _USAGE_FIELDS:
                fields, saved = self._priced(job, hit)  # no usage, or one Usage(**) refuses
            else:
                get = raw.get  # one tuple a hit, not one per item
                seen = (
                    job.model,
                    hit.get("model"),
                    get("prompt_tokens"),
                    get("completion_tokens"),
                    get("cached_tokens"),
                    get("estimated"),
                )
                try:
                    fields, saved = priced[seen]
                except KeyError:
                    fields, saved = priced[seen] = self._priced(job, hit)
                except TypeError:  # an unhashable value in a usage: priced on its own
                    fields, saved = self._priced(job, hit)
            savings.append(saved)
            ledger.append({"time": time.time(), **fields})
        if engine.cache is not None:
            engine.cache.record_hits(savings)
        engine.usage.record_many(LedgerRow.many({}, ledger))
        if self.json or self.spec is not None:
            for job, hit in self.hits:
                text, reason = str(hit.get("text", "")), hit.get("finish_reason")
                self._answered(
                    job, text, cached=True, finish_reason=reason, logprobs=hit.get("logprobs")
                )
            return
        # Plain text: each row gets the reply (what `_answered` does, without its per-row
        # calls: a cached map of 10,000 rows spends its time here).
        values, errors, finished = self.values[self.outputs[0]], self.errors, self.finished
        for job, hit in self.hits:
            text = str(hit.get("text", ""))
            if self.default_cap is not None and hit.get("finish_reason") == "length":
                # Cut at the map's own cap: the note goes with it (the slow path knows how).
                self._answered(job, text, cached=True, finish_reason="length")
                continue
            for i in job.rows:
                values[i] = text
                errors[i] = None
                finished[i] = True

    def _priced(
        self, job: MapRequest | CachedRequest, hit: dict[str, Any]
    ) -> tuple[dict[str, Any], float | None]:
        """A cache hit's ledger fields (but its time) and what it saved: the Exchange the
        engine makes of a cache entry (its one place), as the ledger records it."""
        exchange = self.engine.from_cache(hit, key=job.key, request_model=job.model, label="map")
        fields = vars(exchange.ledger_row()).copy()
        del fields["time"]
        return fields, exchange.reply.saved

    def spend(self, reply: Reply) -> None:
        """Count a reply's cost in the progress and the summary."""
        if self._recount is not None:  # sent with byte bounds: does this need the counts?
            self._recount.check(reply, getattr(self._dispatcher, "limiter", None))
        if reply.cost is None:
            self.counters.cost_known = False
        else:
            self.counters.cost += reply.cost

    def answer(
        self,
        request: MapRequest,
        text: str,
        finish_reason: str | None = None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> None:
        """A reply to `request` (not from the cache): its rows are written (or re-asked).
        `finish_reason` "length" marks a reply cut at the map's default cap; `logprobs` (the
        reply's token log probabilities, when asked for) give a --scores map its scores."""
        self._answered(request, text, cached=False, finish_reason=finish_reason, logprobs=logprobs)

    def fail(self, request: MapRequest, error: ChatError) -> None:
        """`request` is given up: `error` goes into its rows' error column (unless the
        endpoint refused a typed map's fields: then it is asked again in the prompt)."""
        if not self._fell_back(request, error):
            self._fail(request, error)

    async def send_queued(self) -> None:
        """Send online what is queued (session loop): the re-asks of invalid JSON replies."""
        if self._dispatcher.ready:
            await self._dispatcher.run()

    async def execute(self) -> None:
        engine = self.engine
        self._reset()
        high = self.plan.cost_high if self.to_send else 0.0
        held = (
            engine.usage.reserve(high, what="This map", fit=self._fit)
            if self.to_send and not engine.settings.offline
            else 0.0
        )
        # Sent with byte bounds (plan.counting: the encoding was loading), counted if needed.
        recount = self._recount = (
            Recount(engine, self.to_send, self._counted) if self.plan.counting else None
        )
        try:
            self._apply_hits()
            if engine.settings.offline:
                for job in self.to_send:
                    self._fail(job, OfflineCacheMiss("Offline mode: this row is not in the cache."))
            else:
                self._dispatcher.ready.extend(self.to_send)
            if self._dispatcher.ready:
                await self._dispatcher.run()
            if recount is not None:
                await recount.finish()
        finally:
            if recount is not None:
                recount.cancel()  # interrupted: the plan keeps its bounds ("counting")
                self._recount = None  # it holds `_counted`, a method of this job: no cycle
            engine.usage.settle(held, None)

    def _counted(self) -> None:
        """The exact counts are in place of the bounds (`ipychat.map.counting`)."""
        self.plan = totals(self.plan, self.to_send)
        self._dispatcher.recounted()

    def _fail(self, job: MapRequest, exc: ChatError) -> None:
        message = str(exc)
        if job.failures:
            after = f" (after {job.failures} {'retry' if job.failures == 1 else 'retries'})"
            # Inside the sentence: "… try again later (after 2 retries)." not "later. (after"
            stop = message[-1:] if message.endswith((".", "!", "?")) else ""
            message = message.removesuffix(stop) + after + stop
        for i in job.rows:
            self._finish(i, {}, message)

    def _finish(
        self,
        i: int,
        values: dict[str, Any],
        error: str | None,
        *,
        cached: bool = False,
        failed: bool | None = None,
    ) -> None:
        """Row `i` is done: its values, and its error column (`failed` False: a note)."""
        for col, value in values.items():
            self.values[col][i] = value
        self.errors[i] = error
        if not self.finished[i]:
            self.finished[i] = True
            if not cached:
                self.counters.done += 1
                if error is not None if failed is None else failed:
                    self.counters.errors += 1

    # ----- reading the state (any thread) ---------------------------------------------------

    def progress(self) -> MapProgress:
        c = self.counters
        now = time.monotonic()
        rate = eta = None
        if c.first_send is not None and c.done:
            elapsed = max(1e-9, now - c.first_send)
            rate = c.done / elapsed
            eta = (c.total - c.done) / rate
        return MapProgress(
            done=c.done,
            total=c.total,
            errors=c.errors,
            cost=c.cost if c.cost_known else None,
            elapsed=now - c.started,
            rate=rate,
            eta=eta,
        )

    def result(self, *, interrupted: bool = False) -> MapResult:
        columns: dict[str, Any] = dict(self.values)
        if self.spec is not None:
            columns = self._typed_columns(self.errors)
        notes = ("skipped:", CUT)
        failed = sum(1 for error in self.errors[: self.n] if error and not error.startswith(notes))
        cut = sum(1 for error in self.errors[: self.n] if error and error.startswith(CUT))
        if failed or cut or self.skipped or self.had_error_column:
            columns[self.error_column] = self.errors
        frame = self.frame.write(
            columns, inplace=self.inplace, json_columns=set(self.outputs) if self.json else set()
        )
        c = self.counters
        pending = self.n - sum(self.finished)
        summary = MapSummary(
            rows=self.n,
            sent=c.done - c.errors,
            cached=self.plan.cached,
            failed=failed,
            skipped=self.skipped,
            duplicates=self.plan.duplicates,
            cost=c.cost if c.cost_known else None,
            elapsed=time.monotonic() - c.started,
            requests=c.requests,
            rate_limited=c.rate_limited,
            outputs=tuple(self.outputs),
            error_column=self.error_column,
            interrupted=interrupted,
            pending=pending,
            cut=cut,
            default_cap=self.default_cap,
            note=self._note(),
        )
        return MapResult(frame, summary, self.plan)

    def _note(self) -> str | None:
        """The summary's note: the endpoint's fall-back, why a --scores map has no scores."""
        scores = self.score_note
        if scores is None and self.logprobs_missing:
            scores = missing_note(self.engine.host)
        notes = [note for note in (self.typed_note, scores) if note]
        return " ".join(notes) or None
