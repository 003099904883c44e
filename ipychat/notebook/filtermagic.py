"""`%%chatfilter`: keep the rows of a DataFrame for which the model answers yes.

A view over the same engine as `%%chatmap` (`ipychat.map.job` with `filter=True`): the cell
is a yes/no question with {column} placeholders, asked of every row in parallel, the answer
constrained to yes or no where the server can and checked always (`ipychat.map.job.
run_filter`, what `session.filter` runs). The kept rows are the cell's result, or go to
`--into VAR`; DF itself is never changed. A row whose answer failed is not kept, and the
summary line says so, quotes the first error and says how to retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, argument_group, magic_arguments

from ipychat.notebook.daskcell import filter_dask_cell
from ipychat.notebook.magicargs import check_variable, help_layout, parse_line, user_errors
from ipychat.notebook.mapmagic import frame_named, run_options, run_values, say_masked
from ipychat.notebook.progress import ProgressView
from ipychat.notebook.typedargs import dry_run_note

if TYPE_CHECKING:
    from ipychat.session import ChatSession

__all__ = ["ChatFilterMagics", "filter_line"]


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
        help="Keep the answers as a boolean column COL of the kept rows (default: not added).",
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
        cell answers from the cache. DF is left as it is; a row that failed is not kept.
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
        from ipychat.map.frame import Frame
        from ipychat.notebook.display import in_notebook, show_markdown

        notebook = in_notebook(self.shell)
        options = run_values(args)
        view = ProgressView(notebook=notebook)
        dask, kept = filter_dask_cell(self.session, args, df, cell, options, view)
        if dask:  # asked on the cluster's workers
            return self._kept(args, kept)
        Frame(df, args.df)  # not a DataFrame: the map's own one-line error, before planning
        if args.dry_run:
            view.plan(chatmap.filter_frame(self.session, df, cell, dry_run=True, **options))
            note = dry_run_note(self.session, {**options, "filter": True})
            if note is not None:
                show_markdown(note, notebook=notebook)
            return None
        try:
            outcome = chatmap.run_filter(
                self.session,
                df,
                cell,
                decision=args.decision,
                progress=view.update,
                on_plan=view.plan,
                **options,
            )
        except (chatmap.MapInterrupted, chatmap.MapAborted):
            view.finish(False)
            raise
        view.finish(outcome.result.summary.failed == 0)
        show_markdown(filter_line(args.df, outcome, into=args.into), notebook=notebook)
        return self._kept(args, outcome.frame)

    def _kept(self, args: Any, kept: Any) -> Any:
        """The cell's result: the kept rows, or (with --into) None, the rows stored."""
        if kept is None or args.into is None:
            return kept  # the cell's result: shown, and in Out and _
        if self.shell is not None:
            self.shell.user_ns[args.into] = kept
        from IPython.display import display

        display(kept.head())
        return None


def filter_line(name: str, outcome: Any, *, into: str | None) -> str:
    """`Kept 3 of 5 rows (2 answered no, 0 without an answer) in 1.2 s (5 sent, 0 cached) ·
    $0.00 · written to food_reviews`, and for rows that failed, the first error and how to
    retry them (a failed row is not kept, so its error is quoted here)."""
    from ipychat.core.pricing import format_usd

    summary = outcome.result.summary
    text = (
        f"{outcome.line()} in {summary.elapsed:.1f} s ({summary.sent:,} sent, "
        f"{summary.cached:,} cached) · {format_usd(summary.cost)}"
    )
    if into is not None:
        text += f" · written to {into}"
    if summary.failed:
        frame = outcome.result.frame
        errors = [e for e in list(frame[summary.error_column]) if isinstance(e, str) and e]
        first = f" (first: {errors[0]})" if errors else ""
        noun = "row" if summary.failed == 1 else "rows"
        text += (
            f" · {summary.failed:,} {noun} failed and {'is' if summary.failed == 1 else 'are'} "
            f"not kept{first}: re-run the cell to retry only those rows."
        )
    if summary.note:
        text += f" · {summary.note}"
    return text
