"""`%%chat` and `%chat`: thin views over the kernel session.

They parse arguments, call the session, and show the result; every ChatError becomes a
one-line UsageError (no traceback). Settings are traitlets on ChatMagics, so
`%config ChatMagics.model = "gpt-4o"` and `ipython_config.py` work.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, argument_group, magic_arguments
from traitlets import Bool, CaselessStrEnum, Float, Int, TraitError, Unicode, observe, validate

from ipychat.core import format as fmt
from ipychat.core.errors import ChatError, Interrupted
from ipychat.core.messages import Interpolated, interpolate, unfenced_json
from ipychat.core.structured import ENDPOINT_KINDS
from ipychat.core.types import Reply
from ipychat.notebook.commands import ChatCommands
from ipychat.notebook.magicargs import check_variable, help_layout, parse_line, user_errors
from ipychat.notebook.subcommands import chat_help
from ipychat.session import CacheMode, ChatSession, Event, get_session

if TYPE_CHECKING:
    from ipychat.notebook.display import LiveReply

__all__ = ["ChatMagics"]

_CODE_BLOCK = re.compile(r"```[\w+-]*\n(.*?)```", re.S)
# Settings that mirror ChatMagics traits one to one.
_MIRRORED = (
    "model",
    "base_url",
    "system",
    "temperature",
    "max_tokens",
    "max_input_tokens",
    "connect_timeout",
    "read_timeout",
    "reply_timeout",
    "max_retries",
    "azure_api_version",
    "redact",
    "structured",
    "log_prompts",
)


@magics_class
class ChatMagics(Magics):
    """Chat with an OpenAI-compatible model from the notebook."""

    model = Unicode(None, allow_none=True, help="Default model, e.g. gpt-4o-mini.").tag(config=True)
    base_url = Unicode(
        None, allow_none=True, help="OpenAI-compatible endpoint; default OPENAI_BASE_URL or OpenAI."
    ).tag(config=True)
    system = Unicode(None, allow_none=True, help="System prompt sent first on every thread.").tag(
        config=True
    )
    temperature = Float(None, allow_none=True, help="Sampling temperature (0–2).").tag(config=True)
    max_tokens = Int(None, allow_none=True, help="Most reply tokens per request.").tag(config=True)
    max_input_tokens = Int(
        None, allow_none=True, help="Refuse prompts larger than this (default: the context window)."
    ).tag(config=True)
    connect_timeout = Float(None, allow_none=True, help="Seconds to wait for a connection.").tag(
        config=True
    )
    read_timeout = Float(
        None, allow_none=True, help="Seconds to wait between chunks of a reply."
    ).tag(config=True)
    reply_timeout = Float(
        None,
        allow_none=True,
        help="Seconds to wait for a whole reply that is not streamed (%%chatmap rows, --no-stream).",
    ).tag(config=True)
    max_retries = Int(None, allow_none=True, help="Retries on 429, 5xx and network errors.").tag(
        config=True
    )
    azure_api_version = Unicode(
        None, allow_none=True, help="Azure OpenAI api-version; switches to the api-key header."
    ).tag(config=True)
    structured = CaselessStrEnum(
        ["auto", *ENDPOINT_KINDS],
        None,
        allow_none=True,
        help="How the endpoint constrains typed replies (--schema, --choices): auto (from the "
        "endpoint), openai, llama.cpp, vllm, vllm-guided, or prompt (validated only).",
    ).tag(config=True)
    display_mode = CaselessStrEnum(
        ["auto", "notebook", "terminal"],
        "auto",
        help="How replies are shown: live Markdown or text.",
    ).tag(config=True)
    stream = Bool(
        True, help="Stream replies as they are written (False: wait for the whole reply)."
    ).tag(config=True)
    redact = Bool(
        None,
        allow_none=True,
        help="Mask e-mail addresses, phone and card numbers in prompts before they are sent.",
    ).tag(config=True)
    log_prompts = Bool(
        None,
        allow_none=True,
        help="Keep each prompt in the persistent usage record (ledger.db in the cache "
        "folder); off: it records tokens, cost and outcome only.",
    ).tag(config=True)
    allow_remote_images = Bool(
        False,
        help="Show images a reply links from other hosts. Off: they show as links, since "
        "fetching one can carry data out (a prompt injection's favourite trick).",
    ).tag(config=True)

    def __init__(
        self, shell: Any = None, session: ChatSession | None = None, **kwargs: Any
    ) -> None:
        self.session = session or get_session()
        super().__init__(shell=shell, **kwargs)
        self.commands = ChatCommands(self.session, shell, lambda: self.notebook)
        self.cell_id: str | None = None  # the id of the cell running now (None: no notebook)
        with user_errors():
            configured = {k: getattr(self, k) for k in _MIRRORED if getattr(self, k) is not None}
            if configured:
                self.session.configure(**configured)

    @validate(*_MIRRORED)
    def _check_setting(self, proposal: dict[str, Any]) -> Any:
        """Refuse a bad value before it is stored, with the session's own message."""
        value, name = proposal["value"], proposal["trait"].name
        if value is not None:
            try:
                replace(self.session.settings, **{name: value}).validate()
            except ChatError as exc:
                raise TraitError(str(exc)) from None
        return value

    @observe("allow_remote_images")
    def _push_images(self, change: dict[str, Any]) -> None:
        from ipychat.core.markdown import allow_remote_images

        allow_remote_images(change["new"])

    @observe(*_MIRRORED)
    def _push_setting(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            with user_errors():
                self.session.configure(**{change["name"]: change["new"]})

    def note_cell(self, info: Any) -> None:
        """IPython's pre_run_cell event: remember which cell runs. ipykernel passes the
        cellId a front end sends in the execute_request's metadata (JupyterLab, Notebook 7,
        VS Code do) to `run_cell(cell_id=...)`, which hands it on as `ExecutionInfo.cell_id`;
        a terminal has none."""
        cell_id = getattr(info, "cell_id", None)
        self.cell_id = cell_id if isinstance(cell_id, str) and cell_id else None

    @property
    def _ipython(self) -> Any:
        assert self.shell is not None, "ChatMagics needs a shell"
        return self.shell

    @property
    def _user_ns(self) -> dict[str, Any]:
        return self._ipython.user_ns

    @property
    def notebook(self) -> bool:
        if self.display_mode == "auto":
            from ipychat.notebook.display import in_notebook

            return in_notebook(self.shell)
        return self.display_mode == "notebook"

    # ----- %%chat ------------------------------------------------------------------------------

    @magic_arguments(name="%%chat")
    @help_layout(
        "%(prog)s [OPTIONS]  (the prompt is the rest of the cell)",
        """
        %%chat
        Explain this error: {err}

        %%chat -m gpt-4o -t 0 --max-tokens 200 -o answer
        Summarise {df} in three bullet points.

        %%chat -f code
        Write a function that parses ISO dates.

        %%chat --dry-run
        How many tokens is {notes}?

        %%chat --schema Invoice -o invoice
        Extract the invoice from: {email}

        %%chat -m gpt-4o-mini,gpt-4.1-mini --keep gpt-4.1-mini
        Name three uses of a hash map.

        %%chat -o answer ;
        A trailing ; on this line: no result shown, the Reply still goes to answer.
        """,
    )
    @argument_group("Request")
    @argument(
        "-m",
        "--model",
        help="Model for this request (default: the session's, %%chat model); several, "
        "comma-separated, compare their replies side by side.",
    )
    @argument(
        "--keep",
        metavar="MODEL",
        help="With -m A,B: the model whose reply the thread continues with (default: the first).",
    )
    @argument("-s", "--system", help="System prompt for this request.")
    @argument("-t", "--temperature", type=float, metavar="T", help="Sampling temperature, 0–2.")
    @argument("--max-tokens", type=int, metavar="N", help="Most reply tokens.")
    @argument_group("Conversation")
    @argument(
        "--thread", metavar="NAME", help="Conversation to continue (default: the current one)."
    )
    @argument("--new", action="store_true", help="Start the thread afresh.")
    @argument_group("Output")
    @argument("-o", "--output", metavar="VAR", help="Store the Reply (or parsed JSON) in VAR.")
    @argument(
        "-f",
        "--format",
        choices=["markdown", "text", "code", "json"],
        default="markdown",
        metavar="FORMAT",
        help="markdown (default); text; code: the first code block goes into the next cell; "
        "json: parse the reply (with -o VAR, the object).",
    )
    @argument(
        "--schema",
        metavar="NAME",
        help="The reply is one object of this Pydantic model or JSON-schema dict (a notebook "
        "variable), constrained where the endpoint can and validated; -o VAR keeps the object.",
    )
    @argument("--no-stream", action="store_true", help="Wait for the whole reply.")
    @argument_group("Cache")
    @argument("--no-cache", action="store_true", help="Neither read nor write the response cache.")
    @argument("--refresh", action="store_true", help="Skip the cache read; store the new reply.")
    @argument_group("Cost and safety")
    @argument("--max-cost", type=float, metavar="USD", help="Refuse if it may cost more than USD.")
    @argument(
        "--dry-run", action="store_true", help="Show the prompt and its estimate; send nothing."
    )
    @argument("--no-interpolate", action="store_true", help="Send {braces} exactly as written.")
    @argument(
        "--allow-secrets",
        action="store_true",
        help="Send the prompt even if it holds something shaped like an API key or private key.",
    )
    @cell_magic("chat")
    def chat_cell(self, line: str, cell: str) -> Reply | None:
        """Send the cell to the model and stream the reply as Markdown, with a footer: the
        model that answered, tokens, cost, time, thread.

        {name}, {name.attr} and {name[key]} are replaced by notebook variables (DataFrames as a
        compact summary); every other brace is sent as written; {{name}} sends {name}.
        Each %%chat continues its thread; --new starts it afresh. Running a cell again
        replaces the turn it made (the model sees the turns before it). The result is the
        Reply (Out[n], _); a ; at the end of the %%chat line shows none. %chat? lists the
        line commands (model, budget, usage, history, export, ...).
        """
        # `;` ends the magic line, not the prompt: a prompt may well end in `;` (C, SQL, JS).
        quiet = line.rstrip().endswith(";")
        args = parse_line(self.chat_cell, line.rstrip().removesuffix(";"), "%%chat")
        if args is None:
            return None
        check_variable(args.output, "-o")
        with user_errors():
            return self._chat(args, cell, quiet)

    def _render(self, cell: str, raw: bool) -> Interpolated:
        if not cell.strip():
            raise UsageError("The cell is empty: write your prompt below %%chat.")
        if raw:
            return Interpolated(cell.strip())
        return interpolate(cell.strip(), self._user_ns)

    def _chat(self, args: Any, cell: str, quiet: bool) -> Any:
        rendered = self._render(cell, args.no_interpolate)
        prompt = rendered.text
        models = _models(args.model, args.keep)
        options = {
            "thread": args.thread,
            "model": models[0] if models else None,
            "system": args.system,
            "temperature": args.temperature,
            "max_tokens": args.max_tokens,
            "max_cost": args.max_cost,
            "allow_secrets": args.allow_secrets,
            "cell": self.cell_id,
        }
        if args.schema:
            options["schema"] = self._schema(args.schema)
        from ipychat.notebook.display import LiveReply, show_prompt

        if args.dry_run:
            lines = [self._estimate(prompt, args.new, {**options, "model": m}) for m in models]
            if len(models) > 1:  # -m A,B: one estimate per model, named
                lines = [f"{m}: {line}" for m, line in zip(models, lines, strict=True)]
            summary = lines[0] if lines else self._estimate(prompt, args.new, options)
            notes = (*lines[1:], *rendered.notes)
            show_prompt(prompt, rendered.spans, summary, notebook=self.notebook, notes=notes)
            return None
        if len(models) > 1:
            return self._compare(prompt, models, args, options, quiet)
        live = LiveReply(notebook=self.notebook, code=args.format == "text", quiet=quiet)
        reply = self._stream(prompt, options, _cache_mode(args), args, live)
        if args.format == "text":  # its result shows verbatim too
            reply = replace(reply, extra={**reply.extra, "shown_as": "text"})
        self._deliver(reply, args)
        return self._result(reply, live, quiet)

    def _estimate(self, prompt: str, new: bool, options: dict[str, Any]) -> str:
        """--dry-run: what sending would cost, and what the history lost to fit."""
        prepared = self.session.prepare(prompt, new=new, **options)
        extra = (
            f" · {fmt.plural(prepared.dropped_turns, 'early turn')} left out"
            if prepared.dropped_turns
            else ""
        )
        if prepared.masked:
            extra += f" · {prepared.masked}"
        return fmt.estimate_line(prepared.estimate) + extra

    def _result(self, reply: Reply, live: LiveReply, quiet: bool) -> Reply | None:
        """The cell's result. In a notebook the Reply is returned (Out[n], `_`): the live
        display is cleared as the result arrives, so the reply shows once, with its metadata.
        A terminal has printed it as it streamed: Out[n] and `_` get it without a reprint."""
        turns = self.session.threads[reply.thread].turns
        if quiet:
            self._alerts()
            return None
        if not self.notebook:
            live.finish(reply.text, fmt.footer(reply, turns=turns))
            self._alerts()
            self._ipython.displayhook.update_user_ns(reply)
            return None
        live.hand_over()
        self._alerts()
        return reply

    def _compare(
        self, prompt: str, models: list[str], args: Any, options: dict[str, Any], quiet: bool
    ) -> Any:
        """-m A,B: the same turn to each model at once, the replies side by side."""
        if args.format != "markdown":
            raise UsageError("-m A,B compares replies: drop -f (each reply shows as Markdown).")
        del options["model"]
        comparison = self.session.compare(
            prompt, models, keep=args.keep, cache=_cache_mode(args), new=args.new, **options
        )
        if args.output:
            self._user_ns[args.output] = comparison
        self._alerts()
        if quiet:
            return None
        if not self.notebook:
            print(comparison.text())
            self._ipython.displayhook.update_user_ns(comparison)
            return None
        return comparison

    def _stream(
        self, prompt: str, options: dict[str, Any], cache: CacheMode, args: Any, live: LiveReply
    ) -> Reply:
        session = self.session
        if args.no_stream or not self.stream or args.schema:  # a typed reply is checked whole
            return session.ask(prompt, cache=cache, new=args.new, **options)
        text = ""
        model = options["model"] or session.model
        label = session.model_label(model)  # the model that will answer (the local one?)
        from ipychat.core import tokens

        try:
            # `with`: a Ctrl-C that lands in this loop's body (not inside the stream's own
            # wait) still cancels the request and keeps the partial reply.
            with session.stream(prompt, cache=cache, new=args.new, **options) as stream:
                for delta in stream:
                    text += delta
                    # Count tokens only for the frames that are shown. The estimate comes
                    # from the stream's own preparation: the prompt is prepared once.
                    if live.due() and stream.estimate is not None:
                        counted = tokens.count_text(text, model)
                        live.update(text, fmt.streaming_footer(label, stream.estimate, counted))
        except Interrupted as exc:
            if exc.reply is not None:
                reply = exc.reply
                assert isinstance(reply, Reply)
                live.finish(
                    reply.text, fmt.footer(reply, turns=session.threads[reply.thread].turns)
                )
                if args.output:
                    self._user_ns[args.output] = reply
            raise
        assert stream.reply is not None
        return stream.reply

    def _schema(self, name: str) -> Any:
        """The --schema variable: a Pydantic model class or a JSON-schema dict."""
        if name not in self._user_ns:
            raise UsageError(
                f"--schema {name}: no variable named {name!r}; define the Pydantic model (or "
                "JSON-schema dict) in a cell above first."
            )
        return self._user_ns[name]

    def _deliver(self, reply: Reply, args: Any) -> None:
        value: Any = reply
        if args.schema:
            value = reply.value
        elif args.format == "json":
            value = _parse_json(reply.text)
        elif args.format == "code":
            blocks = _CODE_BLOCK.findall(reply.text)
            if not blocks:
                raise UsageError(
                    "-f code: the reply has no ``` code block to put in the next cell."
                )
            self._ipython.set_next_input(blocks[0].rstrip("\n"), replace=False)
        if args.output:
            self._user_ns[args.output] = value

    def _alerts(self) -> None:
        from ipychat.notebook.display import show_markdown

        for alert in self.session.usage.alerts():
            show_markdown(f"**⚠ ipychat:** {alert}", notebook=self.notebook)

    # ----- %chat ---------------------------------------------------------------------------------

    @line_magic("chat")
    def chat_line(self, line: str) -> Any:
        # The docstring (what %chat? prints) is the overview of ipychat.notebook.subcommands.
        return self.commands.run(line)

    def on_event(self, event: Event) -> None:
        """Keep %config in step with settings changed elsewhere (the panel, `%chat model`)."""
        if event.kind == "settings":
            for name in ("model", "system"):
                value = getattr(self.session.settings, name)
                if getattr(self, name) is not None and getattr(self, name) != value:
                    setattr(self, name, value)


ChatMagics.chat_line.__doc__ = chat_help()


def _cache_mode(args: Any) -> CacheMode:
    return "off" if args.no_cache else "refresh" if args.refresh else "use"


def _models(model: str | None, keep: str | None) -> list[str]:
    """-m A,B: the models to compare (one: no comparison); --keep must name one of them."""
    if model is None or "," not in model:  # one model (or none): checked as ever
        models = [] if model is None else [model]
    else:
        models = [m.strip() for m in model.split(",") if m.strip()]
        if not models:
            raise UsageError("-m needs a model name, or several separated by commas.")
    if len(set(models)) != len(models):
        raise UsageError(f"-m {model}: a model is named twice; name each once.")
    if keep is not None and len(models) < 2:
        raise UsageError("--keep chooses among compared models: use it with -m A,B.")
    if keep is not None and keep not in models:
        raise UsageError(f"--keep {keep}: not one of the compared models ({', '.join(models)}).")
    return models


def _parse_json(text: str) -> Any:
    candidate = unfenced_json(text)
    try:
        return json.loads(candidate)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"-f json: the reply is not JSON ({exc.msg} at line {exc.lineno}); ask for JSON only, "
            "or drop -f json."
        ) from None
