"""`%%chatmap DF` when DF is a Dask DataFrame: the map runs on the cluster's workers.

The plan line comes first (partitions, workers, the first partition planned: see
`ipychat.map.dask`), then the map runs: the result is persisted (on the cluster's workers
with a `distributed.Client`, else in this process) and bound to DF (or --into), so the
notebook holds a Dask DataFrame whose new columns are computed, as a pandas DataFrame's
would be written. A row's failure is in DF["_error"], as for pandas; re-running the cell
resumes from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipychat.notebook.display import show_markdown

__all__ = ["map_dask_cell", "run_dask_cell"]


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


def run_dask_cell(
    session: Any, args: Any, df: Any, cell: str, options: dict[str, Any], view: Any
) -> Any:
    """Map `df` for the magic; the persisted frame, or None for --dry-run (the plan shown)."""
    from ipychat.map.dask import workers

    if args.batch:
        session.map(df, cell, args.output, batch=True)  # refused, in one line
    options = {**options, "allow_secrets": args.allow_secrets}
    if args.dry_run:
        view.plan(session.map(df, cell, args.output, dry_run=True, **options))
        return None
    result = session.map(df, cell, args.output, on_plan=view.plan, **options)
    persisted = _persist(result)
    error_column = "_error"
    failed = int(persisted[error_column].count().compute())  # count(): non-null values
    rows = len(persisted)
    count = workers()
    where = f"{count} worker{'' if count == 1 else 's'}" if count else "Dask's local scheduler"
    target = args.into or args.df
    line = (
        f"Done: {rows:,} row{'' if rows == 1 else 's'} on {where} "
        f"({persisted.npartitions:,} partitions), {failed:,} failed · "
        f"column {args.output if isinstance(args.output, str) else ', '.join(args.output)} "
        f"in {target} (persisted)"
    )
    if failed:
        line += f" · see {target}[{error_column!r}]; re-run the cell to retry only those rows."
    show_markdown(line, notebook=view.notebook)
    return persisted


def _persist(frame: Any) -> Any:
    """`frame.persist()`, waited for; Ctrl-C cancels the partitions still running."""
    from ipychat.map.dask import workers

    if workers() is None:
        return frame.persist()
    from distributed import default_client, wait

    client = default_client()
    persisted = client.persist(frame)
    try:
        wait(persisted)
    except KeyboardInterrupt:
        client.cancel(persisted)
        raise
    return persisted
