"""The entry points of batch mode: `run`/`arun`, `plan` (the dry run), `resume`, `collect`,
`cancel` and `jobs`, and `map_frame`/`amap_frame` for `ChatSession.map(..., batch=True)`.
Each plans with the map's `MapJob`, then drives a `BatchRun` on the session loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import BudgetExceeded, ChatError, ConfigError, Interrupted
from ipychat.core.pricing import format_usd
from ipychat.core.runner import wait, wait_async
from ipychat.core.settings import TICK
from ipychat.map.batch.jsonl import request_line, split_parts
from ipychat.map.batch.registry import BatchJob, Registry
from ipychat.map.batch.results import BatchPlan, BatchProgress, BatchResult
from ipychat.map.batch.runner import BatchOptions, BatchRun
from ipychat.map.job import MapAborted, MapInterrupted, MapJob, wait_on_loop
from ipychat.map.options import MapOptions

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine
    from ipychat.map.host import Host

__all__ = [
    "amap_frame",
    "arun",
    "cancel",
    "collect",
    "jobs",
    "map_frame",
    "plan",
    "resume",
    "run",
]


def _check_endpoint(engine: Engine, job: BatchJob) -> None:
    if job.endpoint != engine.base_url:
        raise ConfigError(
            f"Batch {job.id} was submitted to {job.endpoint}, not {engine.base_url}: switch "
            f"with %chat endpoint {job.endpoint} first."
        )


_BATCH_OPTIONS = frozenset(f.name for f in fields(BatchOptions))


def _options(output: Any, options: dict[str, Any]) -> tuple[MapOptions, BatchOptions]:
    """The keyword arguments of a batch map: the map's own options and the batch's."""
    own = {k: v for k, v in options.items() if k in _BATCH_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in _BATCH_OPTIONS and k != "batch"}
    return MapOptions.of(output, **rest), BatchOptions(**own)


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
    session: Host,
    df: Any,
    template: str,
    output: Any = "col",
    *,
    wait: bool = True,
    progress: Callable[[BatchProgress], None] | None = None,
    on_plan: Callable[[BatchPlan], None] | None = None,
    on_submit: Callable[[BatchJob, bool], None] | None = None,
    **options: Any,
) -> BatchPlan:
    """The dry run of a batch map: the map's plan plus files, size and batch price (nothing
    is sent, so the callbacks `run` takes are not called)."""
    del wait, progress, on_plan, on_submit
    map_options, batch_options = _options(output, options)
    return _plan(MapJob(session.engine, df, template, map_options), batch_options)


def _plan(mapper: MapJob, options: BatchOptions) -> BatchPlan:
    sizes = [
        (f"row-{mjob.rows[0]}", len(request_line(f"row-{mjob.rows[0]}", mjob.prepared.body)) + 1)
        for mjob in mapper.to_send
    ]
    groups = list(split_parts(sizes, options.max_requests, options.max_bytes))
    return BatchPlan(mapper.plan, len(groups), sum(n for _, n in sizes))


def run(
    session: Host,
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
    map_options, batch_options = _options(output, options)
    mapper = MapJob(session.engine, df, template, map_options)
    _check_budget(mapper)
    if on_plan is not None:
        on_plan(_plan(mapper, batch_options))
    batch_run = BatchRun(session.engine, mapper, batch_options)
    _drive(session, batch_run, batch_run.execute(wait=wait), progress, on_submit)
    return _result(batch_run)


def resume(
    session: Host,
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
    job = Registry.of(session.engine).load(ident)
    _check_endpoint(session.engine, job)
    stored = {**job.options, "inplace": inplace, "name": name or job.frame}
    mapper = MapJob(session.engine, df, job.template, MapOptions.of(job.outputs, **stored))
    batch_run = BatchRun(session.engine, mapper, BatchOptions(**run_options))
    _drive(session, batch_run, batch_run.execute(job), progress, on_submit)
    return _result(batch_run)


def collect(
    session: Host,
    ident: str,
    *,
    progress: Callable[[BatchProgress], None] | None = None,
    **run_options: Any,
) -> BatchJob:
    """Without a frame: wait for job `ident`, then put its replies in the cache and the
    ledger; re-running its %%chatmap cell is then answered from the cache."""
    job = Registry.of(session.engine).load(ident)
    _check_endpoint(session.engine, job)
    batch_run = BatchRun(session.engine, None, BatchOptions(**run_options))
    _drive(session, batch_run, batch_run.execute(job), progress, None)
    assert batch_run.job is not None
    return batch_run.job


def cancel(session: Host, ident: str) -> BatchJob:
    """Ask the provider to cancel every part still running; what finished is kept (collect
    it with `resume` or by re-running the cell)."""
    registry = Registry.of(session.engine)
    job = registry.load(ident)
    _check_endpoint(session.engine, job)

    async def go() -> None:
        client = await session.engine.client()
        for part in job.parts:
            if part.batch_id is not None and not part.terminal:
                part.update(await client.get_batch(part.batch_id))
                if part.status in ("validating", "in_progress", "finalizing"):
                    part.update(await client.cancel_batch(part.batch_id))
        registry.save(job)

    wait(session.runner, go())
    return job


def jobs(session: Host, *, refresh: bool = True) -> list[BatchJob]:
    """Every job of this cache directory, newest first; running ones on this endpoint are
    asked for their status first (one GET per part)."""
    registry = Registry.of(session.engine)
    found = registry.all()
    live = [
        j
        for j in found
        if refresh
        and j.state != "collected"
        and not j.finished
        and j.endpoint == session.engine.base_url
    ]

    async def go() -> None:
        client = await session.engine.client()
        for job in live:
            for part in job.parts:
                if part.batch_id is not None and not part.terminal:
                    with contextlib.suppress(ChatError):  # else the stored status is shown
                        part.update(await client.get_batch(part.batch_id))
            registry.save(job)

    if live and not session.engine.settings.offline:
        wait(session.runner, go())
    return found


async def arun(
    session: Host,
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
    map_options, batch_options = _options(output, options)
    mapper = MapJob(session.engine, df, template, map_options)
    _check_budget(mapper)
    if on_plan is not None:
        on_plan(_plan(mapper, batch_options))
    batch_run = BatchRun(session.engine, mapper, batch_options)
    try:
        await wait_async(
            session.runner,
            batch_run.execute(wait=wait),
            tick=lambda: _tick(batch_run, progress),
            every=TICK,
        )
    except asyncio.CancelledError:
        raise _interrupted(batch_run) from None
    except ChatError as exc:
        raise _aborted(batch_run, exc) from None
    _tick(batch_run, progress)
    return _result(batch_run)


def map_frame(session: Host, df: Any, template: str, output: Any = "col", *,
              dry_run: bool = False, **options: Any) -> Any:  # fmt: skip
    """`ChatSession.map(..., batch=True)`: the frame, or the BatchPlan of a dry run."""
    if dry_run:
        return plan(session, df, template, output, **options)
    return run(session, df, template, output, **options).frame


async def amap_frame(session: Host, df: Any, template: str, output: Any = "col", *,
                     dry_run: bool = False, **options: Any) -> Any:  # fmt: skip
    """`ChatSession.amap(..., batch=True)`."""
    if dry_run:
        return plan(session, df, template, output, **options)
    return (await arun(session, df, template, output, **options)).frame


def _tick(batch_run: BatchRun, progress: Callable[[BatchProgress], None] | None) -> None:
    snapshot = batch_run.progress()
    if progress is not None and snapshot is not None:
        progress(snapshot)


def _drive(
    session: Host,
    batch_run: BatchRun,
    coro: Coroutine[Any, Any, None],
    progress: Callable[[BatchProgress], None] | None,
    on_submit: Callable[[BatchJob, bool], None] | None,
) -> None:
    """Run on the session loop and wait here, ticking the display; Ctrl-C stops waiting."""
    announced = False

    def tick() -> None:
        nonlocal announced
        job = batch_run.job
        # Announced once submitted (a batch id to name) or attached; between the job's
        # making and its upload, a tick would announce a submission that has not happened.
        if not announced and job is not None and (batch_run.attached or job.batch_ids):
            announced = True
            if on_submit is not None:
                on_submit(job, batch_run.attached)
        _tick(batch_run, progress)

    try:
        wait_on_loop(session.runner, coro, tick)
    except KeyboardInterrupt:
        raise _interrupted(batch_run) from None
    except ChatError as exc:
        raise _aborted(batch_run, exc) from None
    tick()  # the final state (and the announcement of a job that finished within a tick)


def _result(batch_run: BatchRun) -> BatchResult:
    assert batch_run.mapper is not None
    result = batch_run.mapper.result()
    return BatchResult(
        result.frame, result.summary, result.plan, job=batch_run.job, attached=batch_run.attached
    )


def _still_running(batch_run: BatchRun) -> str:
    job = batch_run.job
    if job is None or not job.batch_ids:
        return "Nothing was submitted."
    return (
        f"Batch {job.id} keeps running at the provider: re-run the cell to attach to it, "
        f"%chat batch resume {job.id} DF after a restart, %chat batch cancel {job.id} to stop it."
    )


def _interrupted(batch_run: BatchRun) -> ChatError:
    message = f"Stopped waiting. {_still_running(batch_run)}"
    if batch_run.mapper is None:
        return Interrupted(message)
    return MapInterrupted(message, batch_run.mapper.result(interrupted=True))


def _aborted(batch_run: BatchRun, cause: ChatError) -> ChatError:
    job = batch_run.job
    if batch_run.mapper is None or isinstance(cause, MapAborted) or not (job and job.batch_ids):
        return cause  # nothing at the provider yet: the error as it is
    text = str(cause)  # client errors end without a full stop: give it one before the next
    message = (
        f"{text if text.endswith(('.', '!', '?')) else text + '.'} {_still_running(batch_run)}"
    )
    return MapAborted(message, batch_run.mapper.result(), cause)
