"""The DataFrame operations of a session: `map` and `amap` (what %%chatmap runs), typed with
`schema=` or `choices=`, and `filter` (what %%chatfilter runs).

A mixin of `ChatSession`, kept apart so the session's conversation code and the frame
operations each stay readable; both call down into `ipychat.map`. Nothing here holds state:
every method works through the session it is mixed into.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ConfigError
from ipychat.engine.prepare import allowing_secrets

if TYPE_CHECKING:
    from ipychat.core.runner import LoopThread
    from ipychat.core.settings import Settings
    from ipychat.engine.cache import ResponseCache

__all__ = ["FrameOperations", "WorkerHost"]


class WorkerHost:
    """A Dask worker's host (`ipychat.map.dask`): the caller's settings and cache on an
    engine of this process, with its own loop and connections, as a session holds them
    (`ipychat.lifetime.Owned`) but without a conversation; closed at exit."""

    def __init__(self, settings: Settings, cache: ResponseCache | bool) -> None:
        from ipychat.engine.engine import Engine
        from ipychat.lifetime import Owned, close_at_exit

        self._owned = Owned()
        self.engine = Engine(settings, cache=cache, retire=self._owned.retire)
        self._owned.engine = self.engine
        close_at_exit(self)

    @property
    def runner(self) -> LoopThread:
        return self._owned.runner

    def close(self) -> None:
        self._owned.release()
        self.engine.close_cache()


class FrameOperations:
    """`ChatSession`'s DataFrame operations (see the module docstring)."""

    def map(
        self,
        df: Any,
        template: str,
        output: str | Sequence[str] = "col",
        *,
        allow_secrets: bool = False,
        batch: bool = False,
        **options: Any,
    ) -> Any:
        """Fill `template`'s {column} placeholders from each row of `df`, send the prompts in
        parallel at the server's pace, and return the DataFrame (pandas or polars, as given)
        with each reply in `output`, failures in `_error`; `dry_run=True` returns the plan.
        Options and behaviour: `ipychat.map.job` (the same as %%chatmap's flags).
        `batch=True` sends the rows through the provider's Batch API: `ipychat.map.batch`.

        Typed replies (constrained where the endpoint can, see the `structured` setting;
        validated always; a reply that does not fit is asked again once, then the row's
        `_error` says what was wrong):

        - `schema=Model` (a Pydantic model class) or `schema={...}` (a JSON schema whose root
          is an object): one column per field, named after it (`parent.child` for nested
          objects), of the field's dtype: Int64, Float64, boolean, string, datetime64,
          category for an enum, object for a list (polars: the matching dtypes);
        - `choices=["positive", "negative"]`: `output` is a categorical column whose
          categories are exactly the labels (a reply is matched ignoring case, spaces,
          quotes and a final period; anything else is an error, never a wrong label).

        The schema or label list is part of every row's cache key, and the tokens it adds
        to each request are in the dry run's estimate.

        A Dask DataFrame gives a Dask DataFrame, mapped on the workers when computed
        (`ipychat.map.dask`; `dry_run=True` plans its first partition). Parquet bigger
        than memory (a path or glob, a pyarrow dataset, a polars LazyFrame) is mapped batch
        by batch into Parquet parts in `to=` (`ipychat.map.stream`), resuming where a
        stopped run left off."""
        from ipychat.map import job as chatmap
        from ipychat.map.dask import is_dask_frame
        from ipychat.map.stream import is_stream_source, map_to_parquet

        if is_dask_frame(df):
            return self._map_dask(df, template, output, allow_secrets, batch, options)
        if is_stream_source(df) or "to" in options:
            host: Any = self
            with allowing_secrets(allow_secrets):
                return map_to_parquet(host, df, template, output, **options)

        mapper: Any = chatmap
        if batch:
            from ipychat.map import batch as mapper
        with allowing_secrets(allow_secrets):
            return mapper.map_frame(self, df, template, output, **options)

    async def amap(
        self,
        df: Any,
        template: str,
        output: str | Sequence[str] = "col",
        *,
        allow_secrets: bool = False,
        batch: bool = False,
        **options: Any,
    ) -> Any:
        """`map` for code that awaits; the requests still go from the session's own loop.
        A Dask DataFrame: as `map` (nothing is sent until it is computed)."""
        from ipychat.map import job as chatmap
        from ipychat.map.dask import is_dask_frame

        if is_dask_frame(df):
            return self._map_dask(df, template, output, allow_secrets, batch, options)

        mapper: Any = chatmap
        if batch:
            from ipychat.map import batch as mapper
        with allowing_secrets(allow_secrets):
            return await mapper.amap_frame(self, df, template, output, **options)

    def _map_dask(
        self,
        ddf: Any,
        template: str,
        output: str | Sequence[str],
        allow_secrets: bool,
        batch: bool,
        options: dict[str, Any],
    ) -> Any:
        from ipychat.map.dask import map_dask

        if batch:
            raise ConfigError(
                "The Batch API takes one file of rows, not a Dask DataFrame: map it without "
                "batch=True, or compute() a pandas frame first."
            )
        host: Any = self
        with allowing_secrets(allow_secrets):
            return map_dask(
                host,
                ddf,
                template,
                output,
                make_host=WorkerHost,
                allow_secrets=allow_secrets,
                **options,
            )

    def filter(
        self,
        df: Any,
        template: str,
        *,
        decision: str | None = None,
        allow_secrets: bool = False,
        **options: Any,
    ) -> Any:
        """The rows of `df` for which the model answers yes to `template` (a yes/no question
        with {column} placeholders), index and order kept; `dry_run=True` returns the plan.

        Each row's answer is constrained to yes/no where the endpoint can and validated
        always; a row whose answer is missing (failed, skipped for a null) is not kept.
        `decision="col"` adds the answers as a boolean column of the kept rows. Options
        are `map`'s (model, system, cache, limit, max_cost, ...). Counts and every row's
        decision and error: `ipychat.map.job.run_filter`."""
        from ipychat.map import job as chatmap
        from ipychat.map.dask import filter_dask, is_dask_frame

        host: Any = self  # a ChatSession: its engine and loop (`ipychat.map.host.Host`)
        with allowing_secrets(allow_secrets):
            if is_dask_frame(df):  # the kept rows, lazily, filtered on the workers
                return filter_dask(
                    host,
                    df,
                    template,
                    decision=decision,
                    make_host=WorkerHost,
                    allow_secrets=allow_secrets,
                    **options,
                )
            return chatmap.filter_frame(host, df, template, decision=decision, **options)
