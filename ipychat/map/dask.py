"""A map over a Dask DataFrame: each partition mapped on the workers by the same engine.

```
map_dask(host, ddf, template, output, make_host=..., **options)       on the caller
  ├── MapOptions.of(output, **options)   every option checked once, nothing sent
  ├── WorkerSpec                         what a worker needs to map a partition, picklable:
  │                                      the settings (no key), the cache (a Redis store
  │                                      pickles as its URL; a directory as its path), the
  │                                      template and options, the shared pace
  └── ddf.map_partitions(map_partition, spec, meta=...)     lazy: a Dask DataFrame with
        │                                the output columns and `_error` (dtypes in `meta`)
        ▼                                on a worker, when computed
      map_partition(part, spec)          ipychat.map.job.run on the worker's own host (an
                                         engine and a loop, made once per worker process by
                                         `spec.make_host`): the same plan, cache read,
                                         pacing, retries and `_error` as in a kernel
```

Dask schedules, retries and moves the partitions; nothing here talks to a worker
("Dask retries tasks whose worker died", https://distributed.dask.org/en/stable/
killed.html). A partition whose worker dies is mapped again elsewhere: the rows answered
before are read back from the shared cache (written reply by reply, `cache_batch=1`), so
no answered row is sent twice. A global failure on a worker (key, model, quota) fails the
partition, and `compute()` raises it as a `ChatError` in one line.

The workers share the caller's cache: a Redis cache (`IPYCHAT_CACHE_URL`) is shared by
every machine; a cache directory by the workers of this machine (a LocalCluster). With a
Redis cache the workers also share one pace (`sharedpace.RedisPace` on the same server),
so together they stay within the endpoint's limits; `pace=RedisPace(url)` names another
server, `pace=False` lets each worker pace alone. A key set with `%chat key` stays in
this kernel (a `Secret` never pickles): workers send the key in their own environment
(OPENAI_API_KEY), as the Dask docs advise for credentials.

The dry run (and the plan line before `%%chatmap ddf` runs) plans the first partition
only and says so: how many rows the frame has is not known without reading it all.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ChatError, ConfigError
from ipychat.core.pricing import format_usd
from ipychat.core.settings import LOCAL, Settings
from ipychat.map.options import MapOptions
from ipychat.map.plan import MapPlan

if TYPE_CHECKING:
    from ipychat.engine.cache import ResponseCache
    from ipychat.map.host import Host

__all__ = [
    "CacheSpec",
    "DaskPlan",
    "WorkerSpec",
    "is_dask_frame",
    "map_dask",
    "map_partition",
    "plan_dask",
    "workers",
]

MakeHost = Callable[[Settings, "ResponseCache | bool"], "Host"]


def is_dask_frame(df: Any) -> bool:
    """True for a `dask.dataframe.DataFrame` (without importing dask when it is not one)."""
    return type(df).__module__.startswith("dask.") and type(df).__name__ == "DataFrame"


# ----- what a worker needs ---------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSpec:
    """The caller's cache as a worker opens it: "off", "directory" (`value`: its path) or
    "store" (`value`: a `CacheStore` that pickles, the Redis one)."""

    kind: str
    value: Any = None

    @classmethod
    def of(cls, cache: ResponseCache | None) -> CacheSpec:
        if cache is None:
            return cls("off")
        store = getattr(cache, "store", None)
        if store is not None:
            return cls("store", store)
        return cls("directory", str(cache.directory))

    def open(self) -> ResponseCache | bool:
        if self.kind == "off":
            return False
        if self.kind == "store":
            from ipychat.engine.stores.counted import StoreCache

            return StoreCache(self.value)
        from ipychat.engine.cache import ResponseCache

        return ResponseCache(self.value)

    @property
    def redis(self) -> Any:
        """A Redis cache's `RedisTarget` (the shared pace goes to the same server), or None."""
        return getattr(self.value, "target", None) if self.kind == "store" else None


@dataclass(frozen=True)
class WorkerSpec:
    """A map as a worker runs it on one partition (see the module docstring)."""

    make_host: MakeHost
    settings: Settings
    cache: CacheSpec
    template: str
    options: MapOptions
    dtypes: tuple[tuple[str, str], ...]  # the new columns and their dtypes, as in `meta`

    def host_key(self) -> bytes:
        return pickle.dumps((self.make_host, self.settings, self.cache))


# One host (engine, loop, cache connection) per worker process and thread, made on the
# first partition and reused by the next ones: a partition must not pay for a new
# connection pool, nor the pace learnt by the last one be lost.
_HOSTS: dict[tuple[bytes, int], Any] = {}
_HOSTS_LOCK = threading.Lock()


def _host(spec: WorkerSpec) -> Host:
    key = (spec.host_key(), threading.get_ident())
    with _HOSTS_LOCK:
        host = _HOSTS.get(key)
        if host is None:
            host = _HOSTS[key] = spec.make_host(spec.settings, spec.cache.open())
    return host


def map_partition(part: Any, spec: WorkerSpec) -> Any:
    """Map one partition (a pandas DataFrame) on this worker: `ipychat.map.job.run`."""
    from ipychat.map.job import MapAborted, run

    options = spec.options
    try:
        result = run(_host(spec), part, spec.template, options.outputs, **options.as_dict())
    except MapAborted as exc:
        aborted = str(exc)
    else:
        aborted = ""
    if aborted:
        # Raised outside the `except`: Dask pickles an error with its context (tblib), and
        # a MapAborted (with its partial frame) does not unpickle; this one line does.
        raise ChatError(aborted)
    frame = result.frame
    for name, dtype in spec.dtypes:  # `_error` too, which a kernel's map adds only if needed
        if name not in frame:
            frame[name] = None
        frame[name] = frame[name].astype(dtype)
    return frame


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


def _meta(ddf: Any, options: MapOptions) -> tuple[Any, tuple[tuple[str, str], ...]]:
    """The result's empty frame: the input's columns, then the outputs and the error column
    (text as pandas' "string" dtype; --json values as objects: numbers, lists, dicts)."""
    import pandas as pd

    text = "object" if options.json else "string"
    dtypes = tuple((name, text) for name in options.outputs)
    dtypes += ((options.error_column, "string"),)
    meta = ddf._meta.copy()
    for name, dtype in dtypes:
        meta[name] = pd.Series([], dtype=dtype, index=meta.index)
    return meta, dtypes


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
    from ipychat.map.mapper import MapJob

    first = ddf.get_partition(0).compute()
    sample = MapJob(host.engine, first, template, options).plan
    return DaskPlan(sample, ddf.npartitions, workers(), options.pace is not None)


def map_dask(
    host: Host,
    ddf: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    make_host: MakeHost,
    dry_run: bool = False,
    on_plan: Callable[[DaskPlan], None] | None = None,
    **options: Any,
) -> Any:
    """`session.map(ddf, …)`: a lazy Dask DataFrame with the output columns and `_error`,
    or the `DaskPlan` of a dry run. `make_host(settings, cache)` makes a worker's host
    (pickled by reference: a module-level function)."""
    if options.get("inplace"):
        raise ConfigError("A Dask DataFrame is not changed in place: use the frame map returns.")
    if options.get("limit") is not None:
        ddf = ddf.head(options["limit"], npartitions=-1, compute=False)
        options = {**options, "limit": None}
    engine = host.engine
    cache = CacheSpec.of(None if options.get("cache") in ("off", False) else engine.cache)
    shared = options.pop("pace", None)  # False: each worker paces alone
    opts = MapOptions.of(output, pace=shared or None, **options)
    if opts.schema is not None or opts.choices is not None or opts.filter:
        raise ConfigError(
            "Typed maps (schema=, choices=, filter) do not run on Dask yet: map text (or "
            "--json) columns, or compute() a pandas frame first."
        )
    if shared is None and cache.redis is not None:
        from ipychat.map.sharedpace import RedisPace

        opts = dataclasses.replace(opts, pace=RedisPace(cache.redis))
    budget = engine.usage.budget
    if dry_run or on_plan is not None or opts.max_cost is not None or budget is not None:
        plan = plan_dask(host, ddf, template, opts)
        if dry_run:
            return plan
        # max_cost and the session's budget, against the first partition's bound scaled
        # (the workers' spend is not in this session's ledger: they have their own).
        high = plan.sample.cost_high
        engine.usage.check(
            high * plan.partitions if high is not None else None,
            max_cost=opts.max_cost,
            what=f"This map (partition 1 of {plan.partitions} planned, scaled)",
        )
        if on_plan is not None:
            on_plan(plan)
    settings = _worker_settings(engine.settings)
    # Each worker writes its replies one by one (a killed worker loses none), and checks no
    # cost of its own: the caller checked the whole frame's estimate.
    opts = dataclasses.replace(opts, cache_batch=1, max_cost=None)
    meta, dtypes = _meta(ddf, opts)
    spec = WorkerSpec(make_host, settings, cache, template, opts, dtypes)
    return ddf.map_partitions(map_partition, spec, meta=meta, align_dataframes=False)
