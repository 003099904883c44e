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
run_filter(session, df, template, ...)   a yes/no map (`filter=True`), then the rows
                                         answered yes (`map.typed.filter_rows`)
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipychat.core import foreground
from ipychat.core.errors import ChatError, ConfigError
from ipychat.core.runner import wait_async
from ipychat.core.settings import TICK
from ipychat.map.dispatch import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
from ipychat.map.dispatch import MAX_CONCURRENCY as MAX_CONCURRENCY
from ipychat.map.dispatch import SLOW_START as SLOW_START
from ipychat.map.dispatch import guarded, wait_on_loop
from ipychat.map.frame import (
    Frame,
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
from ipychat.map.typed import filter_rows

if TYPE_CHECKING:
    from ipychat.map.host import Host

__all__ = [
    "FilterResult",
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
    "filter_frame",
    "format_seconds",
    "guarded",
    "map_frame",
    "plan",
    "run",
    "run_filter",
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

    Typed replies (`ipychat.map.options`, `ipychat.core.structured`): `schema` (a Pydantic
    model class or a JSON-schema dict; leave `output` out: one column per field, named
    after it) or `choices` (labels; `output` is a categorical of exactly those). Each reply
    is constrained where the endpoint can, parsed and validated; one that does not fit is
    asked again once, then the row's error says why; `summary.note` says when the endpoint
    refused the structured-output fields and the map asked in the prompt instead.

    `on_plan(plan)` is called after the check and before anything is sent; `progress` is
    called from this thread about four times a second. Ctrl-C raises MapInterrupted with
    the rows finished so far in `.result`; a global failure (key, model, a long wait
    demanded by the server) raises MapAborted, also with `.result`.
    """
    with foreground.busy():  # no encoding built by the warm-up meanwhile (map.counting)
        mapper = _checked_job(session, df, template, output, on_plan, options)
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


def _checked_job(
    session: Host,
    df: Any,
    template: str,
    output: str | Sequence[str],
    on_plan: Callable[[MapPlan], None] | None,
    options: dict[str, Any],
) -> MapJob:
    """`run`'s and `arun`'s job, planned and past the budget check, its plan shown."""
    mapper = MapJob(
        session.engine, df, template, MapOptions.of(output, **options), count_later=True
    )
    mapper.check_budget()
    if on_plan is not None:
        on_plan(mapper.plan)
    return mapper


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
    with foreground.busy():  # no encoding built by the warm-up meanwhile (map.counting)
        mapper = _checked_job(session, df, template, output, on_plan, options)
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


# ----- filter --------------------------------------------------------------------------------


@dataclass
class FilterResult:
    """What `run_filter` returns: the kept rows, and the yes/no map behind them (`result`:
    every row with its decision and `_error`)."""

    frame: Any  # the rows answered yes (index and order kept)
    result: MapResult
    kept: int
    dropped: int  # answered no
    unanswered: int  # failed or skipped: not kept (their reason is in result.frame's _error)

    def line(self) -> str:
        """`Kept 3 of 5 rows (2 answered no, 0 without an answer)`"""
        total = self.kept + self.dropped + self.unanswered
        return (
            f"Kept {self.kept:,} of {total:,} row{'' if total == 1 else 's'} "
            f"({self.dropped:,} answered no, {self.unanswered:,} without an answer)"
        )


def _decision_column(df: Any, decision: str | None, options: dict[str, Any]) -> str:
    """Where the decisions go: `decision`, else a name no column of `df` has. `df` is checked
    first: anything but a DataFrame is the map's one-line error, not an AttributeError."""
    frame = Frame(df, options.get("name") or "the DataFrame")
    if decision is not None:
        return decision
    taken = {str(c) for c in frame.columns} | {options.get("error_column", "_error")}
    name = "_keep"
    while name in taken:
        name = "_" + name
    return name


def run_filter(
    session: Host,
    df: Any,
    template: str,
    *,
    decision: str | None = None,
    **options: Any,
) -> FilterResult:
    """Ask `template` of every row as a yes/no question and keep the rows answered yes; the
    options are `run`'s (`progress`, `on_plan` too). `decision` names a column for the
    answers (a nullable boolean) in the kept rows; without it they are not added. A row
    without an answer (failed, skipped) is not kept; `result.frame` has every row."""
    if options.get("inplace"):
        raise ConfigError("A filter returns the kept rows as a new frame: leave out inplace.")
    column = _decision_column(df, decision, options)
    result = run(session, df, template, column, filter=True, **options)
    return _filtered(df, result, column, keep_column=decision is not None)


def _filtered(df: Any, result: MapResult, column: str, *, keep_column: bool) -> FilterResult:
    mapped = result.frame
    polars = type(mapped).__module__.split(".")[0] == "polars"
    answers = (mapped.get_column(column) if polars else mapped[column]).to_list()
    # True, False, or a missing answer (None, pandas' NA): only a real bool is a decision
    decisions = [bool(a) if type(a).__name__ in ("bool", "bool_") else None for a in answers]
    kept = filter_rows(mapped, decisions)
    drop = [] if keep_column else [column]
    error_column = result.summary.error_column
    if error_column in mapped.columns and error_column not in df.columns:
        drop.append(error_column)
    if drop:
        kept = kept.drop(drop) if polars else kept.drop(columns=drop)
    yes = sum(1 for d in decisions if d is True)
    no = sum(1 for d in decisions if d is False)
    return FilterResult(kept, result, yes, no, result.summary.rows - yes - no)


def filter_frame(
    session: Host,
    df: Any,
    template: str,
    *,
    decision: str | None = None,
    dry_run: bool = False,
    **options: Any,
) -> Any:
    """`ChatSession.filter`: the kept rows, or the MapPlan of a dry run."""
    if dry_run:
        column = _decision_column(df, decision, options)
        return plan(session, df, template, column, filter=True, **options)
    return run_filter(session, df, template, decision=decision, **options).frame
