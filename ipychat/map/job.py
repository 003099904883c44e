"""%%chatmap's engine: one prompt per DataFrame row, sent in parallel at the server's pace.

The only module besides `Ledger.to_frame` that imports pandas (and polars, when the frame
is one), through `ipychat.map.frame`. `ChatSession.map`/`amap` and the `%%chatmap` magic
delegate here; `ipychat.map.batch` drives a `MapJob` through its documented interface.

```
run(session, df, template, ...)          sync: plan, then execute on the session's loop
                                         (any `map.host.Host`: an engine and its loop)
  ├── MapOptions.of(output, **options)   every option checked once (map/options.py)
  ├── MapJob.__init__ (map/mapper.py)    plan (caller's thread, nothing sent):
  │     └── plan.plan_requests           template compiled once, nulls, dedupe, checks
  │                                      per unique prompt, one batched cache read
  │                                      (get_many), estimates for the misses → MapPlan
  ├── MapJob.execute()                   on the loop: budget held for the whole run,
  │     └── dispatch.Dispatcher          concurrency window + rate limiter + shared 429
  │                                      pause + row retries; replies come back to the job
  └── MapJob.result()                    frame.Frame.write: outputs by row position
                                         (order, index kept), `_error`, MapSummary
```

Rows never abort a run: a row's failure (after `retries`) lands in the `_error` column,
and a 429 is never a row's failure (the row waits its turn, however often it comes).
What stops a run is global: an interrupt, a wrong key or model, an exhausted quota, a
server asking to wait longer than a minute, or an outage: no answer for MAX_OUTAGE seconds
(10 min; set `ipychat.map.dispatch.MAX_OUTAGE` to change it) while the server refuses or fails
everything. The rows finished by then are written and cached, so running the same map
again sends only what is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ChatError
from ipychat.core.runner import wait_async
from ipychat.core.settings import TICK
from ipychat.map.dispatch import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
from ipychat.map.dispatch import MAX_CONCURRENCY as MAX_CONCURRENCY
from ipychat.map.dispatch import SLOW_START as SLOW_START
from ipychat.map.dispatch import guarded, wait_on_loop
from ipychat.map.frame import (
    MapAborted,
    MapInterrupted,
    MapProgress,
    MapResult,
    MapSummary,
    format_seconds,
)
from ipychat.map.mapper import MapJob
from ipychat.map.options import MapOptions
from ipychat.map.plan import MapPlan, MapRequest
from ipychat.map.template import RowTemplate, compile_template

if TYPE_CHECKING:
    from ipychat.map.host import Host

__all__ = [
    "MapAborted",
    "MapInterrupted",
    "MapJob",
    "MapOptions",
    "MapPlan",
    "MapProgress",
    "MapRequest",
    "MapResult",
    "MapSummary",
    "RowTemplate",
    "amap_frame",
    "arun",
    "compile_template",
    "format_seconds",
    "guarded",
    "map_frame",
    "plan",
    "run",
    "wait_on_loop",
]


def _sentence(text: str) -> str:
    """`text` ending as a sentence, so that another can follow it ("… %chat key. Stopped")."""
    return text if text.endswith((".", "!", "?")) else text + "."


# ----- entry points --------------------------------------------------------------------------


def _interrupted(mapper: MapJob) -> MapInterrupted:
    result = mapper.result(interrupted=True)
    c = mapper.counters
    message = (
        f"Interrupted: {c.done:,} of {c.total:,} row{'' if c.total == 1 else 's'} written; "
        "re-run the cell to finish "
        "(finished rows are cached)."
    )
    return MapInterrupted(message, result)


def _aborted(mapper: MapJob, cause: ChatError) -> MapAborted:
    result = mapper.result()
    c = mapper.counters
    message = (
        f"{_sentence(str(cause))} Stopped after {c.done:,} of {c.total:,} "
        f"row{'' if c.total == 1 else 's'}; the finished ones are written "
        "and cached, re-run to finish."
    )
    return MapAborted(message, result, cause)


def plan(
    session: Host,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    progress: Callable[[MapProgress], None] | None = None,
    on_plan: Callable[[MapPlan], None] | None = None,
    **options: Any,
) -> MapPlan:
    """The dry run: what `run` would send and what it may cost; nothing is sent (so
    `progress` and `on_plan`, which `run` takes, are not called)."""
    del progress, on_plan
    return MapJob(session.engine, df, template, MapOptions.of(output, **options)).plan


def map_frame(
    session: Host,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    dry_run: bool = False,
    **options: Any,
) -> Any:
    """`ChatSession.map`: the DataFrame with the replies, or the MapPlan of a dry run."""
    if dry_run:
        return plan(session, df, template, output, **options)
    return run(session, df, template, output, **options).frame


async def amap_frame(
    session: Host,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    dry_run: bool = False,
    **options: Any,
) -> Any:
    """`ChatSession.amap`."""
    if dry_run:
        return plan(session, df, template, output, **options)
    return (await arun(session, df, template, output, **options)).frame


def run(
    session: Host,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    progress: Callable[[MapProgress], None] | None = None,
    on_plan: Callable[[MapPlan], None] | None = None,
    **options: Any,
) -> MapResult:
    """Map `template` over the rows of `df` and wait; `ChatSession.map` is this, `.frame`.

    `output`: the column for the replies, or with `json=True` a list of columns, one per
    key of the JSON object each reply must be. Options (None: the session's setting):
    `model`, `system`, `temperature`, `max_tokens`; `concurrency` (requests in flight;
    default: a few until the server answers, then what its limits and the latency call
    for), `rpm`/`tpm` (caps; default: learnt from the x-ratelimit-* headers), `retries`
    (per row, on 5xx and network errors), `max_cost` (USD: refuse before sending if the
    upper bound is above), `cache` ("use" | "refresh" | "off"), `limit` (first N rows),
    `fill_null` (text sent for nulls; default: skip those rows), `inplace` (write into a
    pandas `df`), `error_column` ("_error"), `name` (the frame's name in messages),
    `allow_secrets` (send rows holding credential-shaped text; default: the map is
    refused before anything is sent).

    `on_plan(plan)` is called after the check and before anything is sent; `progress` is
    called from this thread about four times a second. Ctrl-C raises MapInterrupted with
    the rows finished so far in `.result`; a global failure (key, model, a long wait
    demanded by the server) raises MapAborted, also with `.result`.
    """
    mapper = MapJob(session.engine, df, template, MapOptions.of(output, **options))
    mapper.check_budget()
    if on_plan is not None:
        on_plan(mapper.plan)
    try:
        wait_on_loop(
            session.runner,
            mapper.execute(),
            lambda: progress(mapper.progress()) if progress else None,
        )
    except KeyboardInterrupt:
        raise _interrupted(mapper) from None
    if progress is not None:
        progress(mapper.progress())
    if mapper.abort is not None:
        raise _aborted(mapper, mapper.abort)
    return mapper.result()


async def arun(
    session: Host,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    progress: Callable[[MapProgress], None] | None = None,
    on_plan: Callable[[MapPlan], None] | None = None,
    **options: Any,
) -> MapResult:
    """`run` for code that awaits; the requests still go from the session's own loop."""
    mapper = MapJob(session.engine, df, template, MapOptions.of(output, **options))
    mapper.check_budget()
    if on_plan is not None:
        on_plan(mapper.plan)
    tick = (lambda: progress(mapper.progress())) if progress is not None else None
    try:
        await wait_async(session.runner, mapper.execute(), tick=tick, every=TICK)
    except asyncio.CancelledError:
        raise _interrupted(mapper) from None
    if progress is not None:
        progress(mapper.progress())
    if mapper.abort is not None:
        raise _aborted(mapper, mapper.abort)
    return mapper.result()
