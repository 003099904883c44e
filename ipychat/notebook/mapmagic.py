"""`%%chatmap`: a thin view over `ipychat.map.job` (parse, call, show).

Same conventions as `ipychat.notebook.magics`: `@magic_arguments` (so `%%chatmap?` prints
real help), shlex parsing, every ChatError shown as a one-line UsageError. The progress is
`ipychat.notebook.progress`.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, argument_group, magic_arguments

from ipychat.notebook.daskcell import map_dask_cell
from ipychat.notebook.magicargs import check_variable, help_layout, parse_line, user_errors
from ipychat.notebook.progress import ProgressView
from ipychat.notebook.typedargs import dry_run_note, typed_options

if TYPE_CHECKING:
    from ipychat.core.structured import OutputSpec
    from ipychat.session import ChatSession

__all__ = ["ChatMapMagics"]


def run_options(func: Any) -> Any:
    """The flags every map-shaped magic shares (%%chatmap, %%chatfilter): the request, the
    pace, the cache and the cost, as @magic_arguments groups in this order."""
    for decorator in reversed(_RUN_OPTIONS):
        func = decorator(func)
    return func


_RUN_OPTIONS: list[Any] = [
    argument_group("Request"),
    argument("-m", "--model", help="Model (default: the session's, %%chat model)."),
    argument("-s", "--system", help="System prompt for every row."),
    argument("-t", "--temperature", type=float, metavar="T", help="Sampling temperature, 0–2."),
    argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="Most reply tokens per row (default: 64, per column with --json; a reply cut "
        "there is marked in _error).",
    ),
    argument_group("Pace"),
    argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="Requests in flight (default: from limits and latency).",
    ),
    argument("--rpm", type=float, metavar="N", help="Requests per minute (default: the server's)."),
    argument("--tpm", type=float, metavar="N", help="Tokens per minute (default: the server's)."),
    argument("--retries", type=int, metavar="N", help="Retries per row on 5xx and network errors."),
    argument_group("Cache and cost"),
    argument("--max-cost", type=float, metavar="USD", help="Refuse if it may cost more than USD."),
    argument(
        "--dry-run",
        action="store_true",
        help="Show rows, cache hits, tokens and cost; send nothing.",
    ),
    argument("--no-cache", action="store_true", help="Neither read nor write the response cache."),
    argument("--refresh", action="store_true", help="Skip the cache read; store the new replies."),
    argument(
        "--allow-secrets",
        action="store_true",
        help="Send rows even if they hold something shaped like an API key or private key.",
    ),
]


def run_values(args: Any) -> dict[str, Any]:
    """The map options the `run_options` flags give (and the frame's name, for messages)."""
    return {
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


@magics_class
class ChatMapMagics(Magics):
    """`%%chatmap`: one prompt per DataFrame row, in parallel, at the server's pace."""

    def __init__(
        self, shell: Any = None, session: ChatSession | None = None, **kwargs: Any
    ) -> None:
        from ipychat.session import get_session

        # The session `%%chat` uses (`load` hands it over): both magics are views of one.
        self.session = session or get_session()
        super().__init__(shell=shell, **kwargs)

    @magic_arguments(name="%%chatmap")
    @help_layout(
        "%(prog)s DF (-o COL [COL ...] | --schema NAME) [OPTIONS]  (the template is the rest "
        "of the cell)",
        """
        %%chatmap reviews -o sentiment --max-tokens 5
        Classify the sentiment of this review as positive, negative or neutral: {text}

        %%chatmap reviews -o sentiment --choices positive,negative,neutral
        Classify the sentiment of this review: {text}

        %%chatmap invoices --schema Invoice
        Extract the invoice's fields from: {text}

        %%chatmap reviews -o product price --json
        From this review, extract the product and its price: {text}

        %%chatmap reviews -o summary --limit 20 --dry-run
        Summarise in one sentence: {text}
        """,
    )
    @argument_group("What to map")
    @argument("df", metavar="DF", help="The DataFrame (a notebook variable) whose rows are mapped.")
    @argument(
        "-o",
        "--output",
        nargs="+",
        metavar="COL",
        help="Column for the replies; with --json one column per key of the reply "
        "(not with --schema, whose fields name the columns).",
    )
    @argument(
        "--json", action="store_true", help="The reply is a JSON object filling the -o columns."
    )
    @argument("--into", metavar="VAR", help="Write a new DataFrame to VAR and leave DF untouched.")
    @argument("--limit", type=int, metavar="N", help="Only the first N rows.")
    @argument(
        "--fill-null", metavar="TEXT", help="Send TEXT for null values (default: skip those rows)."
    )
    @argument_group("Typed answers")
    @argument(
        "--choices",
        metavar="A,B,...",
        help="The reply is exactly one of these comma-separated labels: a categorical column "
        "(constrained decoding where the server has it, checked always).",
    )
    @argument(
        "--schema",
        metavar="NAME",
        help="A Pydantic model class or JSON-schema dict in the notebook: the reply is one "
        "object, written as one column per field, of the field's dtype.",
    )
    @argument(
        "--scores",
        action="store_true",
        help="With --choices: each label's probability from the reply's logprobs, in "
        "Float64 columns COL_score_LABEL (NA where the server gives none).",
    )
    @run_options
    @argument_group("Batch API")
    @argument(
        "--batch",
        action="store_true",
        help="Send through the provider's Batch API: half the price, results within 24 h. "
        "The batch outlives the kernel; re-running the cell attaches to it.",
    )
    @argument(
        "--no-wait",
        action="store_true",
        help="With --batch: submit and return; re-run the cell later to collect the replies.",
    )
    @argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        help="With --batch: seconds between status checks (default: 1, growing to 30).",
    )
    @cell_magic("chatmap")
    def chatmap(self, line: str, cell: str) -> None:
        """Send the cell, filled from each row of DF ({column} placeholders), and write each
        reply into a column of DF.

        Before sending it shows the plan (rows, cached rows, tokens, cost) and refuses a run
        over --max-cost or the budget. Cached rows are free and instant, so re-running the
        cell resumes: only missing and failed rows are sent. Row failures go to DF["_error"].
        {{x}} sends {x}.
        """
        args = parse_line(self.chatmap, line, "%%chatmap")
        if args is None:
            return None
        check_variable(args.into, "--into")
        if (args.no_wait or args.poll is not None) and not args.batch:
            raise UsageError("--no-wait and --poll go with --batch.")
        typed, spec = typed_options(args, self._namespace())
        args.output = output_names(args, spec)
        df = self._frame(args.df)
        session = self.session
        before = session.redactions.copy()
        try:
            with user_errors(), session.allowing_secrets(args.allow_secrets):
                self._map(args, df, cell, typed)
        finally:
            say_masked(self.shell, session.redactions - before)
        return None

    def _namespace(self) -> dict[str, Any]:
        return self.shell.user_ns if self.shell is not None else {}

    def _frame(self, name: str) -> Any:
        return frame_named(name, self._namespace())

    def _map(self, args: Any, df: Any, cell: str, typed: dict[str, Any]) -> None:
        from ipychat.map import job as chatmap
        from ipychat.notebook.display import in_notebook, show_markdown

        session = self.session
        notebook = in_notebook(self.shell)
        options: dict[str, Any] = {"json": args.json, **run_values(args), **typed}
        view = ProgressView(notebook=notebook)
        if map_dask_cell(session, args, df, cell, options, view, self._store):  # on workers
            return
        if args.batch:
            self._batch(args, df, cell, options, view)
            return
        if args.dry_run:
            self._dry_run(args, df, cell, options, view)
            return
        # pandas frames are written in place; a polars frame is immutable, so the variable
        # is rebound to the new one (the same thing, seen from the notebook).
        inplace = args.into is None and type(df).__module__.startswith("pandas")
        try:
            result = chatmap.run(
                session,
                df,
                cell,
                args.output,
                inplace=inplace,
                progress=view.update,
                on_plan=view.plan,
                **options,
            )
        except (chatmap.MapInterrupted, chatmap.MapAborted) as exc:
            view.finish(False)
            self._store(args, exc.result.frame)
            raise
        view.finish(result.summary.failed == 0)
        self._store(args, result.frame)
        added = f"written to {args.into}" if args.into else None
        show_markdown(result.summary.line(args.df, added=added), notebook=notebook)
        from IPython.display import display

        display(result.frame.head())

    def _dry_run(
        self, args: Any, df: Any, cell: str, options: dict[str, Any], view: ProgressView
    ) -> None:
        """--dry-run: the plan (rows, cached rows, tokens, cost) and the first prompt."""
        from ipychat.map import job as chatmap
        from ipychat.notebook.display import in_notebook, show_markdown

        plan = chatmap.plan(self.session, df, cell, args.output, **options)
        view.plan(plan)
        note = dry_run_note(self.session, options)
        if note is not None:
            show_markdown(note, notebook=in_notebook(self.shell))
        if plan.first_prompt is not None:
            from ipychat.core.markdown import fenced

            show_markdown(
                f"First prompt:\n\n{fenced(plan.first_prompt)}",
                notebook=in_notebook(self.shell),
                plain=f"First prompt:\n{plan.first_prompt}",
            )

    def _batch(
        self, args: Any, df: Any, cell: str, options: dict[str, Any], view: ProgressView
    ) -> None:
        """--batch: the same plan, sent through ipychat.map.batch (which see)."""
        from ipychat.map import batch
        from ipychat.map import job as chatmap
        from ipychat.notebook.display import in_notebook, show_markdown

        session, notebook = self.session, in_notebook(self.shell)
        options = {**options, "poll_interval": args.poll}
        if args.dry_run:
            view.plan(batch.plan(session, df, cell, args.output, **options))
            return

        def submitted(job: Any, attached: bool) -> None:
            show_markdown(batch_note(job, attached, args.df), notebook=notebook)

        inplace = args.into is None and type(df).__module__.startswith("pandas")
        try:
            result = batch.run(
                session,
                df,
                cell,
                args.output,
                wait=not args.no_wait,
                inplace=inplace,
                progress=None if args.no_wait else view.update,
                on_plan=view.plan,
                on_submit=submitted,
                **options,
            )
        except (chatmap.MapInterrupted, chatmap.MapAborted) as exc:
            view.finish(False)
            self._store(args, exc.result.frame)
            raise
        self._store(args, result.frame)
        if args.no_wait and result.job is not None:
            return  # the note said how to collect it
        view.finish(result.summary.failed == 0)
        added = f"written to {args.into}" if args.into else None
        via = f" · via batch {result.job.id}" if result.job is not None else ""
        show_markdown(result.summary.line(args.df, added=added) + via, notebook=notebook)
        from IPython.display import display

        display(result.frame.head())

    def _store(self, args: Any, frame: Any) -> None:
        if self.shell is not None:
            self.shell.user_ns[args.into or args.df] = frame


def say_masked(shell: Any, counts: Any) -> None:
    """What the redact setting masked in a map's prompts, in one line."""
    if not counts:
        return
    from ipychat.core.hygiene import Redaction
    from ipychat.notebook.display import in_notebook, show_markdown

    note = Redaction("", dict(counts)).note
    show_markdown(f"ipychat {note} in the prompts before sending.", notebook=in_notebook(shell))


def frame_named(name: str, namespace: dict[str, Any]) -> Any:
    """The notebook variable a map or filter line names (its DataFrame), or a one-line
    UsageError with the nearest name."""
    if name not in namespace:
        public = [n for n in namespace if not n.startswith("_")]
        close = difflib.get_close_matches(name, public, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"{name} is not defined in the notebook{hint}: name a DataFrame.")
    return namespace[name]


def output_names(args: Any, spec: OutputSpec | None) -> list[str]:
    """The -o columns: required, except with --schema, whose fields name the columns."""
    if spec is not None and spec.mode == "schema":
        if args.output:
            raise UsageError(
                "%%chatmap: --schema names the columns after its fields: leave out -o."
            )
        return [f.column for f in spec.fields]
    if not args.output:
        raise UsageError(
            "%%chatmap: -o/--output COL names the column for the replies (or --schema NAME "
            "writes one column per field of a model)."
        )
    return list(args.output)


def batch_note(job: Any, attached: bool, frame: str) -> str:
    """What a notebook is told once its batch job is known (submitted, or attached to)."""
    ids = ", ".join(job.batch_ids) or "none yet"
    if attached:
        return (
            f"Attached to batch {job.id} ({ids}, {job.status}) submitted earlier for these rows: "
            "nothing is sent twice."
        )
    return (
        f"Submitted batch {job.id} ({ids}): {len(job.requests):,} requests. It runs at the "
        "provider even if this cell stops: re-run the cell to attach to it (or "
        f"%chat batch resume {job.id} {frame} after a restart); %chat batch cancel {job.id} "
        "stops it."
    )
