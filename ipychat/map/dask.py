"""A map over a Dask DataFrame: each partition mapped on the workers by the same engine.

```
map_dask(host, ddf, template, output, make_host=..., **options)       on the caller
filter_dask(host, ddf, template, decision=..., make_host=..., **options)
  ├── MapOptions.of(output, **options)   every option checked once, nothing sent
  ├── the first partition planned        with a budget, max_cost or a plan to show: read
  │                                      once, and put back into the frame as read
  ├── MapWatch (map/daskwatch.py)        the workers' reports: their ledger rows into this
  │                                      session's ledger, progress, the budget's stop
  ├── WorkerSpec (map/daskworker.py)     what a worker needs to map a partition, picklable:
  │                                      the settings (no key), the cache (a Redis store
  │                                      pickles as its URL; a directory as its path), the
  │                                      template and options, the shared pace, the topic
  └── ddf.map_partitions(map_partition, spec, meta=...)     lazy: a Dask DataFrame with
        │                                the output columns and `_error` (dtypes in `meta`:
        │                                text, --json objects, typed columns as in a kernel)
        ▼                                on a worker, when computed
      map_partition(part, spec)          ipychat.map.job.run on the worker's own host (an
      filter_partition(part, spec)       engine and a loop, made once per worker process by
                                         `spec.make_host`): the same plan, cache read,
                                         pacing, retries and `_error` as in a kernel
```

Dask schedules, retries and moves the partitions; nothing here talks to a worker
("Dask retries tasks whose worker died", https://distributed.dask.org/en/stable/
killed.html). A partition whose worker dies is mapped again elsewhere: the rows whose
replies were written are read back from the shared cache, so they are not sent twice.
A worker writes each reply as it comes (`WORKER_CACHE_BATCH`), so a worker killed mid-map
costs only what it had in flight: no row answered and written is sent twice.
`cache_batch=N` writes N at a time instead (one pipelined round trip to Redis each, less
CPU per row), at the price of up to N - 1 answered replies sent again after a kill.
A global failure on a worker (key, model, quota) fails the partition, and `compute()`
raises it as a `ChatError` in one line.

The workers share the caller's cache: a Redis cache (`IPYCHAT_CACHE_URL`) is shared by
every machine; a cache directory by the workers of this machine (a LocalCluster). With a
Redis cache the workers also share one pace (`sharedpace.RedisPace` on the same server),
so together they stay within the endpoint's limits; `pace=RedisPace(url)` names another
server, `pace=False` lets each worker pace alone. A key set with `%chat key` stays in
this kernel (a `Secret` never pickles): workers send the key in their own environment
(OPENAI_API_KEY), as the Dask docs advise for credentials.

The dry run (and the plan line before `%%chatmap ddf` runs) plans the first partition
only and says so: how many rows the frame has is not known without reading it all.

Typed maps: `choices=` gives a category of exactly the labels, `schema=` one column per
field (`a.b` for nested ones) of its nullable dtype (Int64, Float64, boolean, string,
category, object for lists), as in a kernel (`ipychat.map.typed`), but for datetimes: a
Dask column has one dtype for every partition, so datetimes are `datetime64[us]`, and a
value with a UTC offset is converted to UTC (a kernel's map keeps the offsets of a column
whose values all have one).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ConfigError
from ipychat.core.pricing import format_usd
from ipychat.core.settings import LOCAL, Settings
from ipychat.map.daskwatch import MapWatch
from ipychat.map.daskworker import (
    CacheSpec,
    MakeHost,
    WorkerSpec,
    filter_partition,
    map_partition,
)
from ipychat.map.options import MapOptions
from ipychat.map.plan import MapPlan

if TYPE_CHECKING:
    from ipychat.map.host import Host

__all__ = [
    "WORKER_CACHE_BATCH",
    "CacheSpec",
    "DaskPlan",
    "WorkerSpec",
    "filter_dask",
    "is_dask_frame",
    "map_dask",
    "map_partition",
    "plan_dask",
    "workers",
]


# Replies a worker writes to the cache at once, unless the map says (see the module
# docstring): one, so that a killed worker never costs an answered row twice. Batches of 16
# save CPU (a 2-core machine's unlimited map spent a quarter of a worker's time writing
# replies one by one), and `cache_batch=16` asks for them.
WORKER_CACHE_BATCH = 1


def is_dask_frame(df: Any) -> bool:
    """True for a `dask.dataframe.DataFrame` (without importing dask when it is not one)."""
    return type(df).__module__.startswith("dask.") and type(df).__name__ == "DataFrame"


# ----- the caller's side ----------------------------------------------------------------------


def workers() -> int | None:
    """Workers of the default `distributed.Client`, or None (no cluster: Dask's local
    scheduler runs the partitions in this process)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        client = default_client()
    except ValueError:  # "No clients found"
        return None
    return len(client.nthreads())


def _worker_settings(settings: Settings) -> Settings:
    if settings.base_url == LOCAL:
        raise ConfigError(
            "The embedded local model runs in this kernel, not on Dask workers: give the map "
            "an HTTP endpoint (%chat endpoint URL), e.g. a vLLM server."
        )
    if settings.api_key is not None:
        warnings.warn(
            "ipychat: the key set with %chat key stays in this kernel; the Dask workers send "
            "the OPENAI_API_KEY of their own environment.",
            UserWarning,
            stacklevel=4,
        )
    return dataclasses.replace(settings, api_key=None)


def _client() -> Any:
    """The default `distributed.Client`, or None (Dask's local scheduler)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _meta(
    host: Host, ddf: Any, template: str, options: MapOptions, decision: str | None
) -> tuple[Any, tuple[tuple[str, Any], ...]]:
    """The result's empty frame and the dtypes of its new columns. Text: pandas' "string"
    dtype; --json values: objects (numbers, lists, dicts); typed columns as a kernel's map
    writes them (`map.typed`: the same job run on the empty meta, which sends nothing),
    datetimes in microseconds (a partition's UTC offsets: see `daskworker`); `_error`: string.
    A filter keeps the input's columns, and the decision column (boolean) if asked for."""
    import pandas as pd

    from ipychat.map.mapper import MapJob

    dtypes: tuple[tuple[str, Any], ...]
    if options.filter:
        dtypes = ((decision, pd.BooleanDtype()),) if decision else ()
    else:
        if options.spec is not None:
            typed = MapJob(host.engine, ddf._meta, template, options).result().frame
            new = [c for c in typed.columns if c not in ddf.columns and c != options.error_column]
            dtypes = tuple((c, _unit(typed[c].dtype)) for c in new)
        else:
            text = "object" if options.json else "string"
            dtypes = tuple((name, text) for name in options.outputs)
        dtypes += ((options.error_column, "string"),)
    meta = ddf._meta.copy()
    for name, dtype in dtypes:
        meta[name] = pd.Series([], dtype=dtype, index=meta.index)
    return meta, dtypes


def _unit(dtype: Any) -> Any:
    """An empty typed column's datetimes come in seconds: a reply's, in microseconds."""
    return "datetime64[us]" if str(dtype).startswith("datetime64") else dtype


@dataclass(frozen=True)
class DaskPlan:
    """The dry run of a Dask map: the plan of its first partition, and what it scales to."""

    sample: MapPlan
    partitions: int
    workers: int | None
    shared_pace: bool

    @property
    def estimated_rows(self) -> int:
        return self.sample.rows * self.partitions

    @property
    def request_high(self) -> float:
        """One request's upper bound (the sample's mean), 0 when nothing is sent or unknown."""
        high, send = self.sample.cost_high, self.sample.send
        return high / send if high is not None and send else 0.0

    def line(self) -> str:
        where = (
            f"{self.workers} worker{'' if self.workers == 1 else 's'}"
            if self.workers is not None
            else "Dask's local scheduler"
        )
        parts = [
            f"Dask: {self.partitions:,} partition{'' if self.partitions == 1 else 's'} on {where}",
            f"sampled partition 1 of {self.partitions:,}: {self.sample.line()}",
        ]
        if self.partitions > 1:
            estimate = f"the whole frame: ~{self.estimated_rows:,} rows if partitions are alike"
            if self.sample.cost_high is not None and self.sample.send:
                estimate += f", up to ~{format_usd(self.sample.cost_high * self.partitions)}"
            parts.append(estimate)
        if not self.shared_pace and (self.workers or 0) > 1:
            parts.append("pacing per worker (a Redis cache, or pace=, shares one quota)")
        return " · ".join(parts)

    def __str__(self) -> str:
        return self.line()

    def _repr_markdown_(self) -> str:
        return f"`{self.line()}`"


def plan_dask(host: Host, ddf: Any, template: str, options: MapOptions) -> DaskPlan:
    """The dry run: the first partition planned (read, not sent), scaled in words."""
    return _planned(host, ddf, template, options)[0]


def _planned(host: Host, ddf: Any, template: str, options: MapOptions) -> tuple[DaskPlan, Any]:
    """The dry run's plan, and the first partition it read (a pandas DataFrame)."""
    from ipychat.map.mapper import MapJob

    first = ddf.get_partition(0).compute()
    sample = MapJob(host.engine, first, template, options).plan
    return DaskPlan(sample, ddf.npartitions, workers(), options.pace is not None), first


def _with_first(ddf: Any, first: Any) -> Any:
    """`ddf` with its first partition the frame already read: computing the map does not
    read it again (the divisions are kept: those of `first` are the first division's)."""
    import dask.dataframe as dd

    head = dd.from_pandas(first, npartitions=1, sort=ddf.known_divisions)
    if ddf.npartitions == 1:
        return head
    return dd.concat([head, ddf.partitions[1:]])


def _options(
    host: Host, ddf: Any, output: str | Sequence[str], options: dict[str, Any]
) -> tuple[Any, MapOptions, CacheSpec]:
    """The frame (its first `limit` rows), the options checked, and the cache workers open."""
    if options.get("inplace"):
        raise ConfigError("A Dask DataFrame is not changed in place: use the frame map returns.")
    if options.get("limit") is not None:
        ddf = ddf.head(options["limit"], npartitions=-1, compute=False)
        options = {**options, "limit": None}
    cache = CacheSpec.of(None if options.get("cache") in ("off", False) else host.engine.cache)
    shared = options.pop("pace", None)  # False: each worker paces alone
    opts = MapOptions.of(output, pace=shared or None, **options)
    if shared is None and cache.redis is not None:
        from ipychat.map.sharedpace import RedisPace

        opts = dataclasses.replace(opts, pace=RedisPace(cache.redis))
    return ddf, opts, cache


@dataclass(frozen=True)
class _Launch:
    """What `map_dask` and `filter_dask` share past their options."""

    make_host: MakeHost
    dry_run: bool
    on_plan: Callable[[DaskPlan], None] | None
    on_watch: Callable[[MapWatch], None] | None
    decision: str | None = None


def _launch(
    host: Host, ddf: Any, template: str, opts: MapOptions, cache: CacheSpec, how: _Launch
) -> Any:
    engine = host.engine
    usage = engine.usage
    plan = None
    checked = opts.max_cost is not None or usage.budget is not None
    if how.dry_run or how.on_plan is not None or checked:
        plan, first = _planned(host, ddf, template, opts)
        if how.dry_run:
            return plan
        # max_cost and the budget first against the first partition's bound scaled; then,
        # as the workers report their spend, against what they spent (`MapWatch`).
        high = plan.sample.cost_high
        usage.check(
            high * plan.partitions if high is not None else None,
            max_cost=opts.max_cost,
            what=f"This map (partition 1 of {plan.partitions} planned, scaled)",
        )
        if how.on_plan is not None:
            how.on_plan(plan)
        ddf = _with_first(ddf, first)
    settings = _worker_settings(engine.settings)
    watch = MapWatch(
        usage,
        ddf.npartitions,
        row_high=plan.request_high if plan is not None else 0.0,
        max_cost=opts.max_cost,
    ).start(_client())
    if how.on_watch is not None:
        how.on_watch(watch)
    # Each worker writes its replies as the map says (see the module docstring), and
    # checks no cost of its own: the kernel's watch does, on the spend the workers report.
    batch = opts.cache_batch or WORKER_CACHE_BATCH
    opts = dataclasses.replace(opts, cache_batch=batch, max_cost=None)
    meta, dtypes = _meta(host, ddf, template, opts, how.decision)
    spec = WorkerSpec(
        how.make_host, settings, cache, template, opts, dtypes, watch.topic, how.decision
    )
    work = filter_partition if opts.filter else map_partition
    return ddf.map_partitions(work, spec, meta=meta, align_dataframes=False)


def map_dask(
    host: Host,
    ddf: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    make_host: MakeHost,
    dry_run: bool = False,
    on_plan: Callable[[DaskPlan], None] | None = None,
    on_watch: Callable[[MapWatch], None] | None = None,
    **options: Any,
) -> Any:
    """`session.map(ddf, …)`: a lazy Dask DataFrame with the output columns (typed with
    `schema=`/`choices=`, as in a kernel) and `_error`, or the `DaskPlan` of a dry run.
    `make_host(settings, cache)` makes a worker's host (pickled by reference: a
    module-level function); `on_watch(watch)` gets the map's `MapWatch` (its progress)."""
    if options.get("filter"):
        raise ConfigError("A filter returns the kept rows: use session.filter(ddf, …).")
    ddf, opts, cache = _options(host, ddf, output, options)
    return _launch(host, ddf, template, opts, cache, _Launch(make_host, dry_run, on_plan, on_watch))


def filter_dask(
    host: Host,
    ddf: Any,
    template: str,
    *,
    make_host: MakeHost,
    decision: str | None = None,
    dry_run: bool = False,
    on_plan: Callable[[DaskPlan], None] | None = None,
    on_watch: Callable[[MapWatch], None] | None = None,
    **options: Any,
) -> Any:
    """`session.filter(ddf, …)`: a lazy Dask DataFrame of the rows answered yes (index and
    order kept; `decision`: their answers as a boolean column), or the dry run's plan."""
    if options.get("inplace"):
        raise ConfigError("A filter returns the kept rows as a new frame: leave out inplace.")
    taken = {str(c) for c in ddf.columns} | {options.get("error_column", "_error")}
    column = decision or next(n for n in ("_keep", "__keep", "___keep") if n not in taken)
    ddf, opts, cache = _options(host, ddf, column, {**options, "filter": True})
    how = _Launch(make_host, dry_run, on_plan, on_watch, decision)
    return _launch(host, ddf, template, opts, cache, how)
