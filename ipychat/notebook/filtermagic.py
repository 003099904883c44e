"""`%%chatfilter`: keep the rows of a DataFrame for which the model answers yes.

A view over the same engine as `%%chatmap` (`ipychat.map.job` with `filter=True`): the cell
is a yes/no question with {column} placeholders, asked of every row in parallel, the answer
constrained to yes or no where the server can and checked always. The kept rows are the
cell's result, or go to `--into VAR`; DF itself is never changed. A row whose answer failed
is not kept, and the summary line says so and how to retry it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, argument_group, magic_arguments

from ipychat.notebook.magicargs import check_variable, help_layout, parse_line, user_errors
from ipychat.notebook.mapmagic import frame_named, run_options, say_masked
from ipychat.notebook.progress import ProgressView
from ipychat.notebook.typedargs import dry_run_note

if TYPE_CHECKING:
    from ipychat.session import ChatSession

__all__ = ["ChatFilterMagics", "filter_line"]

_ANSWER = "_keep"  # the decision column while the map runs, when --decision names none


@magics_class
class ChatFilterMagics(Magics):
    """`%%chatfilter`: a yes/no question per row; the rows answered yes are kept."""

    def __init__(
        self, shell: Any = None, session: ChatSession | None = None, **kwargs: Any
    ) -> None:
        from ipychat.session import get_session

        self.session = session or get_session()  # the one %%chat and %%chatmap use
        super().__init__(shell=shell, **kwargs)

    @magic_arguments(name="%%chatfilter")
    @help_layout(
        "%(prog)s DF [--into VAR] [--decision COL] [OPTIONS]  (the question is the rest of "
        "the cell)",
        """
        %%chatfilter reviews --into food_reviews
        Is this review about the food? {text}

        %%chatfilter tickets --decision urgent --limit 50 --dry-run
        Does this support ticket report an outage? {subject}: {body}
        """,
    )
    @argument_group("What to filter")
    @argument("df", metavar="DF", help="The DataFrame (a notebook variable) whose rows are asked.")
    @argument(
        "--into",
        metavar="VAR",
        help="Store the kept rows in VAR (default: they are the cell's result, in Out and _).",
    )
    @argument(
        "--decision",
        metavar="COL",
        help="Keep each row's answer (True/False) in column COL of DF, so the dropped rows "
        "can be looked at too.",
    )
    @argument("--limit", type=int, metavar="N", help="Only ask of the first N rows.")
    @argument(
        "--fill-null", metavar="TEXT", help="Send TEXT for null values (default: skip those rows)."
    )
    @run_options
    @cell_magic("chatfilter")
    def chatfilter(self, line: str, cell: str) -> Any:
        """Ask the cell, a yes/no question filled from each row of DF ({column} placeholders),
        of every row, and keep the rows answered yes, in their order and with their index.

        The answer is constrained to yes or no where the server can, and checked always. The
        plan (rows, cached rows, tokens, cost) is shown before anything is sent; re-running the
        cell answers from the cache. DF is left as it is, but for --decision's column.
        """
        args = parse_line(self.chatfilter, line, "%%chatfilter")
        if args is None:
            return None
        check_variable(args.into, "--into")
        if args.decision is not None and not args.decision.strip():
            raise UsageError("--decision needs a column name.")
        namespace = self.shell.user_ns if self.shell is not None else {}
        df = frame_named(args.df, namespace)
        session = self.session
        before = session.redactions.copy()
        try:
            with user_errors(), session.allowing_secrets(args.allow_secrets):
                return self._filter(args, df, cell)
        finally:
            say_masked(self.shell, session.redactions - before)

    def _filter(self, args: Any, df: Any, cell: str) -> Any:
        from ipychat.map import job as chatmap
        from ipychat.notebook.display import in_notebook, show_markdown

        notebook = in_notebook(self.shell)
        column = args.decision or _ANSWER
        options: dict[str, Any] = {
            "filter": True,
            "model": args.model,
            "system": args.system,
            "temperature": args.temperature,
            "max_tokens": args.max_tokens,
            "concurrency": args.concurrency,
            "rpm": args.rpm,
            "tpm": args.tpm,
            "retries": args.retries,
            "max_cost": args.max_cost,
            "cache": "off" if args.no_cache else "refresh" if args.refresh else "use",
            "limit": args.limit,
            "fill_null": args.fill_null,
            "name": args.df,
        }
        view = ProgressView(notebook=notebook)
        if args.dry_run:
            view.plan(chatmap.plan(self.session, df, cell, column, **options))
            note = dry_run_note(self.session, options)
            if note is not None:
                show_markdown(note, notebook=notebook)
            return None
        try:
            result = chatmap.run(
                self.session,
                df,
                cell,
                column,
                inplace=False,
                progress=view.update,
                on_plan=view.plan,
                **options,
            )
        except (chatmap.MapInterrupted, chatmap.MapAborted):
            view.finish(False)
            raise
        view.finish(result.summary.failed == 0)
        kept, line = self._kept(args, df, result)
        show_markdown(line, notebook=notebook)
        if args.into is None:
            return kept
        if self.shell is not None:
            self.shell.user_ns[args.into] = kept
        from IPython.display import display

        display(kept.head())
        return None

    def _kept(self, args: Any, df: Any, result: Any) -> tuple[Any, str]:
        """The kept rows (DF's columns only) and the summary line; --decision's column is
        written into DF too (pandas in place, polars rebound)."""
        from ipychat.map.typed import filter_rows

        frame, column = result.frame, args.decision or _ANSWER
        decisions = list(frame[column])
        kept = filter_rows(df, decisions)
        if args.decision is not None:
            kept = filter_rows(_with_column(df, frame, column), decisions)
            if self.shell is not None:
                self.shell.user_ns[args.df] = _with_column(df, frame, column, inplace=True)
        errors = list(frame[result.summary.error_column]) if result.summary.failed else []
        line = filter_line(
            args.df,
            decisions,
            errors,
            summary=result.summary,
            into=args.into,
            decision=args.decision,
        )
        return kept, line


def _with_column(df: Any, frame: Any, column: str, *, inplace: bool = False) -> Any:
    """DF with the decision column of the map's frame added (a pandas frame in place when
    asked; a polars frame is immutable, so a new one)."""
    if type(df).__module__.split(".")[0] == "polars":
        return df.with_columns(frame[column])
    target = df if inplace else df.copy()
    target[column] = (
        frame[column].to_numpy() if hasattr(frame[column], "to_numpy") else frame[column]
    )
    return target


def filter_line(
    name: str,
    decisions: list[Any],
    errors: list[Any],
    *,
    summary: Any,
    into: str | None,
    decision: str | None,
) -> str:
    """`Kept 3 of 5 rows of reviews (2 dropped, 0 failed) in 1.2 s (5 sent, 0 cached) · $0.00 ·
    written to food_reviews`, and where a failed row's error is and how to retry it."""
    from ipychat.core.pricing import format_usd

    yes = sum(1 for d in decisions if d is True)
    no = sum(1 for d in decisions if d is False)
    failed = sum(1 for e in errors if isinstance(e, str))
    rows = len(decisions)
    text = (
        f"Kept {yes:,} of {rows:,} row{'' if rows == 1 else 's'} of {name} ({no:,} dropped, "
        f"{failed:,} failed"
        + (f", {summary.skipped:,} skipped" if summary.skipped else "")
        + f") in {summary.elapsed:.1f} s ({summary.sent:,} sent, {summary.cached:,} cached) · "
        f"{format_usd(summary.cost)}"
    )
    if into is not None:
        text += f" · written to {into}"
    if decision is not None:
        text += f" · answers in {name}[{decision!r}]"
    if failed:
        first = next(e for e in errors if isinstance(e, str))
        text += (
            f" · {failed:,} failed row{'' if failed == 1 else 's'} not kept (first: {first}); "
            "re-run the cell to retry only those rows."
        )
    return text
