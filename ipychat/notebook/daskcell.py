"""`%%chatmap DF` and `%%chatfilter DF` when DF is a Dask DataFrame: the rows are asked on
the cluster's workers.

The plan line comes first (partitions, workers, the first partition planned: see
`ipychat.map.dask`), then the map runs: the result is persisted (on the cluster's workers
with a `distributed.Client`, else in this process) while a progress bar (a text line in a
terminal) shows the rows the workers reported, their errors and their spend
(`ipychat.map.daskwatch`). The persisted frame is bound to DF (or --into), so the notebook
holds a Dask DataFrame whose new columns are computed, as a pandas DataFrame's would be
written; a filter's kept rows are the cell's result (or go to --into). A row's failure is in
DF["_error"], as for pandas; re-running the cell resumes from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipychat.notebook.display import show_markdown

__all__ = ["filter_dask_cell", "map_dask_cell", "run_dask_cell"]

# How long the cell waits, after the frame is computed, for the workers' last reports (they
# travel through the scheduler: usually within a few milliseconds).
SETTLE = 5.0


def map_dask_cell(
    session: Any,
    args: Any,
    df: Any,
    cell: str,
    options: dict[str, Any],
    view: Any,
    store: Callable[[Any, Any], None],
) -> bool:
    """`%%chatmap`'s turn for a Dask DataFrame (False: `df` is not one); `store(args,
    frame)` binds the persisted frame to DF or --into, as for any map."""
    from ipychat.map.dask import is_dask_frame

    if not is_dask_frame(df):
        return False
    persisted = run_dask_cell(session, args, df, cell, options, view)
    if persisted is not None:
        store(args, persisted)
    return True


def _where() -> str:
    from ipychat.map.dask import workers

    count = workers()
    return f"{count} worker{'' if count == 1 else 's'}" if count else "Dask's local scheduler"


def _spend(watch: Any) -> str:
    from ipychat.core.pricing import format_usd

    return (
        f"{format_usd(watch.cost)} ({watch.requests:,} request"
        f"{'' if watch.requests == 1 else 's'}, {watch.cached:,} cached)"
    )


def run_dask_cell(
    session: Any, args: Any, df: Any, cell: str, options: dict[str, Any], view: Any
) -> Any:
    """Map `df` for the magic; the persisted frame, or None for --dry-run (the plan shown)."""
    if args.batch:
        session.map(df, cell, args.output, batch=True)  # refused, in one line
    options = {**options, "allow_secrets": args.allow_secrets}
    if args.dry_run:
        view.plan(session.map(df, cell, args.output, dry_run=True, **options))
        return None
    watches: list[Any] = []
    result = session.map(
        df, cell, args.output, on_plan=view.plan, on_watch=watches.append, **options
    )
    persisted = _persist(result, watches[0], view)
    error_column = "_error"
    failed = int(persisted[error_column].count().compute())  # count(): non-null values
    rows = len(persisted)
    target = args.into or args.df
    line = (
        f"Done: {rows:,} row{'' if rows == 1 else 's'} on {_where()} "
        f"({persisted.npartitions:,} partitions), {failed:,} failed · {_spend(watches[0])} · "
        f"column {args.output if isinstance(args.output, str) else ', '.join(args.output)} "
        f"in {target} (persisted)"
    )
    if failed:
        line += f" · see {target}[{error_column!r}]; re-run the cell to retry only those rows."
    show_markdown(line, notebook=view.notebook)
    return persisted


def filter_dask_cell(
    session: Any, args: Any, df: Any, cell: str, options: dict[str, Any], view: Any
) -> tuple[bool, Any]:
    """`%%chatfilter`'s turn for a Dask DataFrame: (False, None) when `df` is not one, else
    (True, the persisted kept rows or None for --dry-run and --into)."""
    from ipychat.map.dask import is_dask_frame

    if not is_dask_frame(df):
        return False, None
    options = {**options, "allow_secrets": args.allow_secrets}
    if args.dry_run:
        view.plan(session.filter(df, cell, decision=args.decision, dry_run=True, **options))
        return True, None
    watches: list[Any] = []
    kept = session.filter(
        df, cell, decision=args.decision, on_plan=view.plan, on_watch=watches.append, **options
    )
    persisted = _persist(kept, watches[0], view)
    count = len(persisted)
    asked = watches[0].progress().done
    line = (
        f"Kept {count:,} of {asked:,} row{'' if asked == 1 else 's'} on {_where()} "
        f"({persisted.npartitions:,} partitions; without an answer: "
        f"{watches[0].progress().errors:,}, not kept) · {_spend(watches[0])}"
    )
    if args.into is not None:
        line += f" · written to {args.into} (persisted)"
    show_markdown(line, notebook=view.notebook)
    return True, persisted


def _persist(frame: Any, watch: Any, view: Any) -> Any:
    """`frame.persist()`, waited for with the workers' progress on `view`; Ctrl-C cancels
    the partitions still running."""
    from ipychat.map.dask import workers

    if workers() is None:
        persisted = frame.persist()
    else:
        from distributed import default_client, wait

        client = default_client()
        persisted = client.persist(frame)
        try:
            while True:
                try:
                    wait(persisted, timeout=0.25)
                    break
                except TimeoutError:
                    view.update(watch.progress())
        except BaseException:
            client.cancel(persisted)
            view.finish(False)
            raise
    watch.settled(SETTLE)
    progress = watch.progress()
    view.update(progress)
    view.finish(progress.errors == 0)
    return persisted
