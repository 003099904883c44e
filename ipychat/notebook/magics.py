"""`%%chat` and `%chat`: thin views over the kernel session.

They parse arguments, call the session, and show the result; every ChatError becomes a
one-line UsageError (no traceback). Settings are traitlets on ChatMagics, so
`%config ChatMagics.model = "gpt-4o"` and `ipython_config.py` work.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import json
import re
import shlex
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, argument_group, magic_arguments
from traitlets import Bool, CaselessStrEnum, Float, Int, TraitError, Unicode, observe, validate

from ipychat.core import format as fmt
from ipychat.core.errors import ChatError, Interrupted
from ipychat.core.hygiene import check_magic_line
from ipychat.core.messages import Interpolated, interpolate, unfenced_json
from ipychat.core.pricing import format_usd
from ipychat.core.settings import LOCAL_MODEL
from ipychat.core.types import Reply
from ipychat.notebook.magicargs import (
    check_variable,
    help_layout,
    parse_line,
    unknown_word,
    user_errors,
)
from ipychat.session import CacheMode, ChatSession, Event, get_session, reset_session

if TYPE_CHECKING:
    from ipychat.notebook.display import LiveReply

__all__ = ["ChatMagics", "load", "unload"]

_CODE_BLOCK = re.compile(r"```[\w+-]*\n(.*?)```", re.S)
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")  # a job id (bm_...) or a provider's batch id
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
)


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, not {text!r}.") from None


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
    allow_remote_images = Bool(
        False,
        help="Show images a reply links from other hosts. Off: they show as links, since "
        "fetching one can carry data out (a prompt injection's favourite trick).",
    ).tag(config=True)

    def __init__(
        self, shell: Any = None, session: ChatSession | None = None, **kwargs: Any
    ) -> None:
        self.session = session or get_session()
        self._panel: Any = None  # the ChatPanel that %chat panel showed last
        super().__init__(shell=shell, **kwargs)
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
        """,
    )
    @argument_group("Request")
    @argument(
        "-m", "--model", help="Model for this request (default: the session's, %%chat model)."
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
        Each %%chat continues its thread; --new starts it afresh. %chat? lists the line
        commands (model, budget, usage, history, ...).
        """
        args = parse_line(self.chat_cell, line, "%%chat")
        if args is None:
            return None
        check_variable(args.output, "-o")
        with user_errors():
            return self._chat(args, cell)

    def _render(self, cell: str, raw: bool) -> Interpolated:
        if not cell.strip():
            raise UsageError("The cell is empty: write your prompt below %%chat.")
        if raw:
            return Interpolated(cell.strip())
        return interpolate(cell.strip(), self._user_ns)

    def _chat(self, args: Any, cell: str) -> Reply | None:
        rendered = self._render(cell, args.no_interpolate)
        prompt = rendered.text
        options = {
            "thread": args.thread,
            "model": args.model,
            "system": args.system,
            "temperature": args.temperature,
            "max_tokens": args.max_tokens,
            "max_cost": args.max_cost,
            "allow_secrets": args.allow_secrets,
        }
        from ipychat.notebook.display import LiveReply, show_prompt

        if args.dry_run:
            prepared = self.session.prepare(prompt, new=args.new, **options)
            extra = (
                f" · {fmt.plural(prepared.dropped_turns, 'early turn')} left out"
                if prepared.dropped_turns
                else ""
            )
            if prepared.masked:
                extra += f" · {prepared.masked}"
            show_prompt(
                prompt,
                rendered.spans,
                fmt.estimate_line(prepared.estimate) + extra,
                notebook=self.notebook,
                notes=rendered.notes,
            )
            return None
        cache: CacheMode = "off" if args.no_cache else "refresh" if args.refresh else "use"
        live = LiveReply(notebook=self.notebook, code=args.format == "text")
        reply = self._stream(prompt, options, cache, args, live)
        turns = self.session.threads[reply.thread].turns
        live.finish(reply.text, fmt.footer(reply, turns=turns))
        self._alerts()
        return self._deliver(reply, args)

    def _stream(
        self, prompt: str, options: dict[str, Any], cache: CacheMode, args: Any, live: LiveReply
    ) -> Reply:
        session = self.session
        if args.no_stream or not self.stream:
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

    def _deliver(self, reply: Reply, args: Any) -> Any:
        value: Any = reply
        if args.format == "json":
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
        return None

    def _alerts(self) -> None:
        from ipychat.notebook.display import show_markdown

        for alert in self.session.usage.alerts():
            show_markdown(f"**⚠ ipychat:** {alert}", notebook=self.notebook)

    # ----- %chat ---------------------------------------------------------------------------------

    @line_magic("chat")
    def chat_line(self, line: str) -> Any:
        # The docstring (what %chat? prints) is built from _SUBCOMMANDS below the class.
        with user_errors():
            check_magic_line(line)
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%chat: {exc}.") from None
        if not words:
            return self._status()
        command, rest = words[0].lower(), words[1:]
        if command in ("-h", "--help"):
            print(_chat_help())
            return None
        handler: Callable[[list[str]], Any] | None = getattr(self, f"_cmd_{command}", None)
        if handler is None or command not in _USAGE:
            close = difflib.get_close_matches(command, list(_USAGE), n=1)
            hint = f" (did you mean %chat {close[0]}?)" if close else ""
            raise UsageError(f"%chat {command}: unknown subcommand{hint}. %chat? lists them.")
        if "-h" in rest or "--help" in rest:
            usage, text = _USAGE[command]
            self._show(f"`%chat {usage}`: {text}")
            return None
        _check_flags(command, rest)
        with user_errors():
            return handler(rest)

    def _show(self, text: str) -> None:
        from ipychat.notebook.display import show_markdown

        show_markdown(text, notebook=self.notebook)

    def _status(self) -> None:
        s, session = self.session.settings, self.session
        thread = session.threads[session.current_thread]
        budget = (
            f" of {format_usd(session.usage.budget)}" if session.usage.budget is not None else ""
        )
        flags = " · offline" if s.offline else ""
        if session.endpoint().kind == "none":
            flags += " · not configured: set OPENAI_API_KEY or %chat endpoint URL"
        self._show(
            f"ipychat · endpoint {session.host} · model {self._model_name()} · thread "
            f"{thread.name} ({fmt.plural(thread.turns, 'turn')}) · spent "
            f"{format_usd(session.usage.spent)}{budget}{flags}"
        )

    def _model_name(self) -> str:
        """The default model, and what answers instead of it when the endpoint is local."""
        session = self.session
        label = session.model_label(session.model)
        if label == session.model or session.model == LOCAL_MODEL:
            return label
        return f"{label}, which answers every request ({session.model} is not used)"

    def _cmd_model(self, rest: list[str]) -> None:
        if rest:
            self.session.configure(model=rest[0])
        self._show(f"model: {self._model_name()}")

    def _cmd_endpoint(self, rest: list[str]) -> None:
        if not rest:
            self._show(f"endpoint: {self.session.base_url}")
            return
        send_key = "--send-key" in rest
        words = [w for w in rest if w != "--send-key"]
        if len(words) != 1 or words[0].startswith("-"):
            raise UsageError("%chat endpoint URL|local [--send-key]")
        url = words[0]
        changes: dict[str, Any] = {"base_url": url}
        if send_key:
            if url == "local":
                raise UsageError("--send-key is for a URL: the local model needs no API key.")
            from ipychat.core.settings import origin

            trusted = origin(url)
            known = self.session.settings.key_origins
            changes["key_origins"] = known if trusted in known else (*known, trusted)
        self.session.configure(**changes)
        note = self.session.key_note()
        self._show(f"endpoint: {self.session.base_url}" + (f" · {note}" if note else ""))

    def _cmd_key(self, rest: list[str]) -> None:
        if rest:
            raise UsageError(
                "Never put an API key in a cell (it would be saved in the notebook): run %chat key "
                "alone and paste the key at the prompt, or set OPENAI_API_KEY."
            )
        key = getpass.getpass("API key (not shown, not saved in the notebook): ")
        if not key.strip():
            raise UsageError("No key entered; nothing changed.")
        self.session.configure(api_key=key.strip())
        self._show("API key set for this session.")

    def _cmd_system(self, rest: list[str]) -> None:
        if rest:
            text = " ".join(rest)
            self.session.configure(system=None if text.lower() == "off" else text)
        self._show(f"system prompt: {self.session.settings.system or '(none)'}")

    def _cmd_threads(self, rest: list[str]) -> None:
        lines = [
            f"{'*' if name == self.session.current_thread else '-'} {name} "
            f"({fmt.plural(t.turns, 'turn')})"
            for name, t in self.session.threads.items()
        ]
        self._show("\n".join(lines))

    def _cmd_thread(self, rest: list[str]) -> None:
        if not rest:
            raise UsageError("%chat thread NAME: name the thread to switch to.")
        thread = self.session.switch_thread(rest[0])
        self._show(f"thread: {thread.name} ({fmt.plural(thread.turns, 'turn')})")

    def _cmd_history(self, rest: list[str]) -> None:
        thread = self.session.thread(rest[0] if rest else None, create=False)
        if not thread.messages:
            self._show(f"thread {thread.name} is empty.")
            return
        from ipychat.core.markdown import history_markdown
        from ipychat.notebook.display import show_rendered

        plain = "\n\n".join(f"{m['role']}: {m.get('content') or ''}" for m in thread.messages)
        if self.notebook:
            show_rendered(history_markdown(thread.messages), plain)
        else:
            print(plain)

    def _cmd_reset(self, rest: list[str]) -> None:
        self.session.reset(rest[0] if rest else None)
        self._show(f"thread {rest[0] if rest else self.session.current_thread} cleared.")

    def _cmd_models(self, rest: list[str]) -> None:
        self._show("\n".join(f"- {m}" for m in self.session.models()))

    def _cmd_usage(self, rest: list[str]) -> None:
        if [w for w in rest if w != "--plot"]:
            raise UsageError("%chat usage [--plot]")
        if not rest:
            self._show(fmt.usage_markdown(self.session.usage))
            return
        figure = self.session.usage.plot()
        import io

        from IPython.display import display

        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=100)
        summary = fmt.usage_markdown(self.session.usage).rsplit("\n", 1)[-1]
        # PNG with a text line beside it: a saved notebook's text views (nbconvert --to
        # markdown, a terminal) still say what the chart showed.
        display(
            {"image/png": png.getvalue(), "text/plain": f"<chart: spend and latency; {summary}>"},
            raw=True,
        )

    def _cmd_budget(self, rest: list[str]) -> None:
        if rest:
            off = rest[0].lower() in ("off", "none")
            self.session.set_budget(None if off else _float(rest[0].lstrip("$"), "The budget"))
        ledger = self.session.usage
        budget = format_usd(ledger.budget) if ledger.budget is not None else "no budget"
        self._show(f"spent {format_usd(ledger.spent)} of {budget}")

    def _cmd_price(self, rest: list[str]) -> None:
        if len(rest) != 3:
            raise UsageError("%chat price MODEL INPUT OUTPUT: USD per 1M input and output tokens.")
        model, price_in, price_out = rest[0], _float(rest[1], "INPUT"), _float(rest[2], "OUTPUT")
        self.session.prices.override(model, input=price_in, output=price_out)
        self._show(
            f"{model}: ${_plain(price_in)} per 1M input tokens, ${_plain(price_out)} per 1M "
            "output tokens"
        )

    def _cmd_offline(self, rest: list[str]) -> None:
        if rest:
            if rest[0].lower() not in ("on", "off"):
                raise UsageError("%chat offline on|off")
            self.session.configure(offline=rest[0].lower() == "on")
        self._show(f"offline mode: {'on' if self.session.settings.offline else 'off'}")

    def _cmd_cache(self, rest: list[str]) -> None:
        cache = self.session.cache
        if cache is None:
            raise UsageError("The response cache is off for this session.")
        if rest and rest[0] == "clear":
            older, model = _clear_options(rest[1:])
            removed = cache.clear(older_than_days=older, model=model)
            self._show(f"removed {fmt.plural(removed, 'cached reply', 'cached replies')}")
            return
        if rest:
            raise UsageError("%chat cache [clear [--older-than DAYS] [--model MODEL]]")
        st = cache.stats()
        state = " (disabled: see the warning above)" if st.disabled else ""
        self._show(
            f"cache {st.directory}{state} · {fmt.plural(st.entries, 'entry', 'entries')} · "
            f"{st.size_bytes / 1e6:.1f} MB · this session: {fmt.plural(st.hits, 'hit')}, "
            f"{fmt.plural(st.misses, 'miss', 'misses')}, saved {format_usd(st.saved)}"
        )

    def _cmd_local(self, rest: list[str]) -> None:
        from ipychat.engine import local

        if rest != ["log"]:
            raise UsageError("%chat local log: show the end of the local model server's log.")
        server = local.current_server()
        if server is None:
            self._show("The local model server has not been started in this kernel.")
            return
        from ipychat.core.markdown import fenced

        self._show(f"{server.log_path}:\n\n{fenced(server.log_tail(40))}")

    def _cmd_batches(self, rest: list[str]) -> None:
        from ipychat.map import batch

        found = batch.jobs(self.session)
        if not found:
            where = batch.Registry.of(self.session).directory
            self._show(f"No batches in {where}: %%chatmap DF -o COL --batch submits one.")
            return
        self._show("\n".join(f"- {job.line()}" for job in found))

    def _cmd_batch(self, rest: list[str]) -> None:
        from ipychat.map import batch
        from ipychat.map import job as chatmap
        from ipychat.notebook.mapmagic import _ProgressView

        usage = "%chat batch resume ID [DF] | %chat batch cancel ID"
        if len(rest) < 2 or rest[0] not in ("resume", "cancel"):
            raise UsageError(usage)
        action, ident, frame = rest[0], rest[1], rest[2] if len(rest) > 2 else None
        if not _BATCH_ID.match(ident) or len(rest) > 3:
            raise UsageError(f"{usage} (an ID as %chat batches lists it, such as bm_1a2b3c4d)")
        if action == "cancel":
            if frame is not None:
                raise UsageError(usage)
            job = batch.cancel(self.session, ident)
            self._show(
                f"Cancelling {job.id} ({job.status}): what finished is kept; "
                f"%chat batch resume {job.id} DF collects it."
            )
            return
        view = _ProgressView(notebook=self.notebook)
        if frame is None:
            job = batch.collect(self.session, ident, progress=view.update)
            view.finish(job.failed == 0)
            self._show(
                f"Collected {job.id}: {fmt.plural(job.answered, 'reply', 'replies')} in the "
                f"cache, {job.failed:,} failed. Re-run its %%chatmap cell to write them into "
                "the frame."
            )
            return
        if frame not in self._user_ns:
            raise UsageError(f"{frame} is not defined in the notebook: name a DataFrame.")
        df = self._user_ns[frame]
        inplace = type(df).__module__.startswith("pandas")
        try:
            result = batch.resume(
                self.session, ident, df, inplace=inplace, name=frame, progress=view.update
            )
        except (chatmap.MapInterrupted, chatmap.MapAborted) as exc:
            view.finish(False)
            self._user_ns[frame] = exc.result.frame
            raise
        view.finish(result.summary.failed == 0)
        self._user_ns[frame] = result.frame
        self._show(result.summary.line(frame) + f" · from batch {ident}")

    def _cmd_panel(self, rest: list[str]) -> None:
        if not self.notebook:
            raise UsageError("%chat panel needs a notebook front end (JupyterLab, Notebook 7).")
        from IPython.display import display

        from ipychat.notebook.widget import panel

        if self._panel is not None:  # re-running the cell replaces the panel, not adds one
            self._panel.close()
        self._panel = panel(self.session)
        display(self._panel)

    def _on_event(self, event: Event) -> None:
        if event.kind == "settings":  # keep %config in step with changes made elsewhere
            for name in ("model", "system"):
                value = getattr(self.session.settings, name)
                if getattr(self, name) is not None and getattr(self, name) != value:
                    setattr(self, name, value)


# %chat's subcommands, in groups: (usage, what it does). %chat? prints them, %chat NAME
# --help prints one, and an unknown name or flag gets the nearest known one.
_SUBCOMMANDS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Settings",
        (
            ("model [NAME]", "show or set the default model"),
            (
                "endpoint [URL|local] [--send-key]",
                "show or set the endpoint: an OpenAI-compatible URL (https://…/v1), or the "
                "embedded local model; --send-key sends the API key there too "
                "(OPENAI_API_KEY goes only to OpenAI and OPENAI_BASE_URL; plain http to "
                "another machine needs it)",
            ),
            ("key", "ask for the API key (never type it into a cell)"),
            ("system [TEXT|off]", "show or set the system prompt"),
            ("models", "list the endpoint's models"),
            ("offline [on|off]", "serve only from the cache, never the network"),
            ("local log", "the end of the local model server's log"),
        ),
    ),
    (
        "Conversations",
        (
            ("threads", "list conversation threads"),
            ("thread NAME", "switch to (or create) a thread"),
            ("history [NAME]", "show a thread's messages"),
            ("reset [NAME]", "forget a thread's messages"),
            ("panel", "the chat panel"),
        ),
    ),
    (
        "Spend and cache",
        (
            (
                "usage [--plot]",
                "spend, tokens and latency per model; --plot: spend against the budget over "
                "time, and latency per model (matplotlib)",
            ),
            ("budget [USD|off]", "show or set the spend budget of this session"),
            ("price MODEL IN OUT", "set a model's price in USD per 1M input/output tokens"),
            (
                "cache [clear [--older-than DAYS] [--model MODEL]]",
                "response cache statistics, or clear it (all, or old entries, or one model's)",
            ),
        ),
    ),
    (
        "Batch API",
        (
            ("batches", "%%chatmap --batch jobs of this cache, with their status"),
            (
                "batch resume ID [DF]",
                "wait for a batch (after a restart too) and fill DF from it; without DF its "
                "replies go to the cache",
            ),
            ("batch cancel ID", "cancel a batch (what finished is kept)"),
        ),
    ),
)
_USAGE: dict[str, tuple[str, str]] = {}
for _group, _entries in _SUBCOMMANDS:
    for _usage, _text in _entries:
        _USAGE.setdefault(_usage.split()[0], (_usage, _text))
# Subcommands that take flags, and their flags (an unknown one gets "did you mean").
_FLAGS = {"usage": ("--plot",), "cache": ("--older-than", "--model")}
_CHAT_EXAMPLES = """\
  %chat                          the status: endpoint, model, thread, spend
  %chat model gpt-4o-mini
  %chat budget 5
  %chat usage --plot
  %chat cache clear --older-than 30
  %chat budget --help            one subcommand's help"""


def _chat_help() -> str:
    lines = [
        "Usage: %chat [SUBCOMMAND ARGS]",
        "",
        "Without a subcommand: the status. With one: change settings and threads, see spend.",
    ]
    for group, entries in _SUBCOMMANDS:
        lines += ["", f"{group}:"]
        for usage, text in entries:
            wrapped = textwrap.wrap(text, 56) or [""]
            if len(usage) > 24:
                lines.append(f"  {usage}")
                lines += [f"  {'':24}  {part}" for part in wrapped]
            else:
                lines.append(f"  {usage:24}  {wrapped[0]}")
                lines += [f"  {'':24}  {part}" for part in wrapped[1:]]
    lines += ["", "Examples:", "", _CHAT_EXAMPLES]
    return "\n".join(lines)


def _check_flags(command: str, rest: list[str]) -> None:
    """An unknown --flag of a subcommand that takes flags: say which one was meant."""
    known = _FLAGS.get(command)
    if known is None:
        return
    for word in rest:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag not in known:
            raise UsageError(unknown_word(f"%chat {command}", flag, known))


ChatMagics.chat_line.__doc__ = _chat_help()


def _clear_options(words: list[str]) -> tuple[float | None, str | None]:
    older: float | None = None
    model: str | None = None
    pairs = iter(words)
    for word in pairs:
        value = next(pairs, None)
        if value is None or word not in ("--older-than", "--model"):
            raise UsageError("%chat cache clear [--older-than DAYS] [--model MODEL]")
        if word == "--model":
            model = value
        else:
            older = _float(value, "--older-than")
            if not 0 <= older < float("inf"):  # nan and inf too: a age is a finite number
                raise UsageError("--older-than takes a number of days ≥ 0, e.g. 30.")
    return older, model


def _plain(number: float) -> str:
    """A number as typed, never in scientific notation: 0.00001, not 1e-05."""
    text = format(Decimal(repr(number)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _parse_json(text: str) -> Any:
    candidate = unfenced_json(text)
    try:
        return json.loads(candidate)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"-f json: the reply is not JSON ({exc.msg} at line {exc.lineno}); ask for JSON only, "
            "or drop -f json."
        ) from None


_loaded: ChatMagics | None = None


def load(ipython: Any) -> None:
    """`%load_ext ipychat`: register the magics once (loading twice is harmless)."""
    global _loaded
    if _loaded is not None and _loaded.shell is ipython:
        return
    from ipychat.notebook.mapmagic import ChatMapMagics

    magics = ChatMagics(shell=ipython)
    from ipychat.core.markdown import allow_remote_images

    allow_remote_images(magics.allow_remote_images)  # the configured value, or off
    ipython.register_magics(magics)
    ipython.register_magics(ChatMapMagics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)  # so %config ChatMagics.x works
    magics.session.subscribe(magics._on_event)
    _loaded = magics
    _prestart_local(magics.session)
    from ipychat.notebook import warmup as _warmup

    _warmup.start(magics.session)  # the first map as quick as a later one (never blocks)


def _prestart_local(session: ChatSession) -> None:
    """Start the embedded model's server in the background if it is the endpoint, so the
    first %%chat does not wait for it (a failure is reported by that first request)."""
    try:
        if not session.is_local:
            return
    except ChatError:
        return
    from ipychat.engine import local

    def start() -> None:
        with contextlib.suppress(Exception):
            local.get_server()

    threading.Thread(target=start, name="ipychat-local-start", daemon=True).start()


def unload(ipython: Any) -> None:
    """`%unload_ext ipychat`: release the loop thread and the connections."""
    global _loaded
    if _loaded is not None:
        if _loaded in ipython.configurables:
            ipython.configurables.remove(_loaded)
        for kind in ("line", "cell"):
            ipython.magics_manager.magics[kind].pop("chat", None)
        ipython.magics_manager.magics["cell"].pop("chatmap", None)
        _loaded = None
    reset_session(None)
    from ipychat.core.markdown import allow_remote_images

    allow_remote_images(False)
    if "ipychat.engine.local" in sys.modules:  # never import it just to stop nothing
        sys.modules["ipychat.engine.local"].stop_server()
