"""`%chat SUBCOMMAND ...`: each subcommand reads its words, calls the session, shows the result.

`ChatCommands.run` is the line magic's body: it refuses credentials on the line, splits it
with shlex, answers `--help` from `ipychat.notebook.subcommands` (the table of subcommands),
and turns ipychat's errors into one-line UsageErrors.
"""

from __future__ import annotations

import getpass
import re
import shlex
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from IPython.core.error import UsageError

from ipychat.core import format as fmt
from ipychat.core import providers
from ipychat.core.hygiene import check_magic_line
from ipychat.core.pricing import format_usd
from ipychat.core.settings import LOCAL_MODEL
from ipychat.notebook import usage
from ipychat.notebook.magicargs import unknown_word, user_errors
from ipychat.notebook.subcommands import (
    Subcommand,
    chat_help,
    find,
    subcommand_help,
    unknown_subcommand,
)
from ipychat.session import ChatSession

__all__ = ["ChatCommands"]

_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")  # a job id (bm_...) or a provider's batch id


class ChatCommands:
    """The `%chat` subcommands of one shell, as views of `session`.

    `notebook()` says whether the front end renders Markdown and widgets (it follows
    `%config ChatMagics.display_mode`, so it is asked each time).
    """

    def __init__(self, session: ChatSession, shell: Any, notebook: Callable[[], bool]) -> None:
        self.session = session
        self.shell = shell
        self._notebook = notebook
        self.panel: Any = None  # the ChatPanel that %chat panel showed last
        self.sidebar: Any = None  # the Sidecar it is docked in (%chat panel --side)

    @property
    def notebook(self) -> bool:
        return self._notebook()

    @property
    def _user_ns(self) -> dict[str, Any]:
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    def run(self, line: str) -> Any:
        """`%chat LINE`: the status, the help, or one subcommand."""
        with user_errors():
            check_magic_line(line)
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%chat: {exc}.") from None
        if not words:
            return self.status()
        name, rest = words[0].lower(), words[1:]
        if name in ("-h", "--help"):
            print(chat_help())
            return None
        command = find(name)
        if command is None:
            raise UsageError(unknown_subcommand(name))
        if "-h" in rest or "--help" in rest:
            self._help(command)
            return None
        _check_flags(command, rest)
        handler: Callable[[list[str]], Any] = getattr(self, f"cmd_{command.name}")
        with user_errors():
            return handler(rest)

    def _help(self, command: Subcommand) -> None:
        from ipychat.notebook.display import show_rendered

        markdown, plain = subcommand_help(command)
        if self.notebook:
            show_rendered(markdown, plain)
        else:
            print(plain)

    def show(self, text: str) -> None:
        from ipychat.notebook.display import show_markdown

        show_markdown(text, notebook=self.notebook)

    def status(self) -> None:
        """`%chat` alone: endpoint, model, thread, spend, and what is missing."""
        session, s = self.session, self.session.settings
        thread = session.threads[session.current_thread]
        budget = (
            f" of {format_usd(session.usage.budget)}" if session.usage.budget is not None else ""
        )
        flags = " · offline" if s.offline else ""
        endpoint = session.endpoint()
        if endpoint.kind == "none" and endpoint.provider:  # %chat endpoint azure, unset
            flags += " · not set up: set AZURE_OPENAI_ENDPOINT"
        elif endpoint.kind == "none":
            flags += " · not configured: set OPENAI_API_KEY or %chat endpoint URL"
        self.show(
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

    # ----- Settings ----------------------------------------------------------------------------

    def cmd_model(self, rest: list[str]) -> None:
        if rest:
            self.session.configure(model=rest[0])
        self.show(f"model: {self._model_name()}")

    def cmd_endpoint(self, rest: list[str]) -> None:
        if not rest:
            self.show(f"{self._endpoint_line()}\n\n{fmt.named_endpoints(providers.names())}")
            return
        send_key = "--send-key" in rest
        words = [w for w in rest if w != "--send-key"]
        if len(words) != 1 or words[0].startswith("-"):
            raise UsageError(f"%chat endpoint URL|local|NAME [--send-key]; NAME is one of "
                             f"{', '.join(providers.names())}")  # fmt: skip
        url = words[0]
        named = providers.find(url)
        if named is not None:
            url = named.name
        changes: dict[str, Any] = {"base_url": url}
        if send_key:
            if url == "local" or named is not None:
                raise UsageError(
                    "--send-key is for a URL: the local model needs no API key, and a named "
                    "endpoint reads its own key variable (%chat endpoint NAME alone)."
                )
            from ipychat.core.settings import origin

            trusted = origin(url)
            known = self.session.settings.key_origins
            changes["key_origins"] = known if trusted in known else (*known, trusted)
        self.session.configure(**changes)
        note = self.session.key_note()
        self.show(self._endpoint_line() + (f" · {note}" if note else ""))

    def _endpoint_line(self) -> str:
        """`endpoint: URL`, and for a named provider its name, its key variable (or that it
        is missing) and the model asked for."""
        session = self.session
        endpoint = session.endpoint()
        spec = endpoint.spec
        if spec is None:
            return f"endpoint: {session.base_url}"
        if endpoint.kind == "none":  # Azure without AZURE_OPENAI_ENDPOINT
            return f"endpoint: {spec.name} · not set up: set AZURE_OPENAI_ENDPOINT"
        return fmt.provider_line(spec, endpoint.url, session.model, providers.key_var(spec))

    def cmd_key(self, rest: list[str]) -> None:
        if rest:
            raise UsageError(
                "Never put an API key in a cell (it would be saved in the notebook): run %chat key "
                "alone and paste the key at the prompt, or set OPENAI_API_KEY."
            )
        key = getpass.getpass("API key (not shown, not saved in the notebook): ")
        if not key.strip():
            raise UsageError("No key entered; nothing changed.")
        self.session.configure(api_key=key.strip())
        self.show("API key set for this session.")

    def cmd_system(self, rest: list[str]) -> None:
        if rest:
            text = " ".join(rest)
            self.session.configure(system=None if text.lower() == "off" else text)
        self.show(f"system prompt: {self.session.settings.system or '(none)'}")

    def cmd_models(self, rest: list[str]) -> None:
        self.show("\n".join(f"- {m}" for m in self.session.models()))

    def cmd_offline(self, rest: list[str]) -> None:
        if rest:
            if rest[0].lower() not in ("on", "off"):
                raise UsageError("%chat offline on|off")
            self.session.configure(offline=rest[0].lower() == "on")
        self.show(f"offline mode: {'on' if self.session.settings.offline else 'off'}")

    def cmd_local(self, rest: list[str]) -> None:
        from ipychat.engine import local

        if rest != ["log"]:
            raise UsageError("%chat local log: show the end of the local model server's log.")
        server = local.current_server()
        if server is None:
            self.show("The local model server has not been started in this kernel.")
            return
        from ipychat.core.markdown import fenced

        self.show(f"{server.log_path}:\n\n{fenced(server.log_tail(40))}")

    # ----- Conversations -----------------------------------------------------------------------

    def cmd_threads(self, rest: list[str]) -> None:
        lines = [
            f"{'*' if name == self.session.current_thread else '-'} {name} "
            f"({fmt.plural(t.turns, 'turn')})"
            for name, t in self.session.threads.items()
        ]
        self.show("\n".join(lines))

    def cmd_thread(self, rest: list[str]) -> None:
        if not rest:
            raise UsageError("%chat thread NAME: name the thread to switch to.")
        thread = self.session.switch_thread(rest[0])
        self.show(f"thread: {thread.name} ({fmt.plural(thread.turns, 'turn')})")

    def cmd_history(self, rest: list[str]) -> None:
        thread = self.session.thread(rest[0] if rest else None, create=False)
        if not thread.messages:
            self.show(f"thread {thread.name} is empty.")
            return
        from ipychat.core.markdown import history_markdown
        from ipychat.notebook.display import show_rendered

        plain, markdown = [], []
        for index in range(thread.turns):  # each turn under the cell it came from, if any
            pair = thread.messages[2 * index : 2 * index + 2]
            cell = thread.cell_of(index)
            head = f"turn {index + 1}" + (f" · cell {cell}" if cell else "")
            plain.append(f"[{head}]\n" + "\n\n".join(f"{m['role']}: {m['content']}" for m in pair))
            markdown.append(f"<sub>`{head}`</sub>\n\n{history_markdown(pair)}")
        if self.notebook:
            show_rendered("\n\n".join(markdown), "\n\n".join(plain))
        else:
            print("\n\n".join(plain))

    def cmd_export(self, rest: list[str]) -> None:
        from ipychat.notebook import transcript

        self.show(transcript.export_command(self.session, rest))

    def cmd_import(self, rest: list[str]) -> None:
        from ipychat.notebook import transcript

        self.show(transcript.import_command(self.session, rest))

    def cmd_reset(self, rest: list[str]) -> None:
        self.session.reset(rest[0] if rest else None)
        self.show(f"thread {rest[0] if rest else self.session.current_thread} cleared.")

    def cmd_panel(self, rest: list[str]) -> None:
        side = rest == ["--side"]
        if rest and not side:
            raise UsageError("%chat panel [--side]")
        if not self.notebook:
            raise UsageError("%chat panel needs a notebook front end (JupyterLab, Notebook 7).")
        from IPython.display import display

        from ipychat.notebook.widget import panel

        if self.panel is not None:  # re-running the cell replaces the panel, not adds one
            self.panel.close()
            self.panel = None
        if self.sidebar is not None:
            self.sidebar.close()  # and its sidebar
            self.sidebar = None
        shown = panel(self.session)
        if side:
            from ipychat.notebook.sidebar import dock

            try:
                self.sidebar = dock(shown)
            except UsageError:
                shown.close()
                raise
            self.show("The chat panel is in the right-hand sidebar.")
        else:
            display(shown)
        self.panel = shown

    # ----- Spend and cache ---------------------------------------------------------------------

    def cmd_usage(self, rest: list[str]) -> None:
        store = self.session.usage.store
        query = usage.parse_usage(rest, store.notebook if store is not None else None)
        ledger, text = usage.usage_text(self.session.usage, query)
        if not query.plot:
            self.show(text)
            return
        figure = ledger.plot()
        import io

        from IPython.display import display

        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=100)
        summary = fmt.usage_markdown(ledger).rsplit("\n", 1)[-1]
        # PNG with a text line beside it: a saved notebook's text views (nbconvert --to
        # markdown, a terminal) still say what the chart showed.
        display(
            {"image/png": png.getvalue(), "text/plain": f"<chart: spend and latency; {summary}>"},
            raw=True,
        )

    def cmd_budget(self, rest: list[str]) -> None:
        amount, per = usage.parse_budget(rest)
        if amount is not None:
            off = amount.lower() in ("off", "none")
            usd = None if off else _float(amount.lstrip("$"), "The budget")
            self.session.set_budget(usd, per=per)
        self.show(usage.budget_text(self.session.usage))

    def cmd_price(self, rest: list[str]) -> None:
        if len(rest) != 3:
            raise UsageError("%chat price MODEL INPUT OUTPUT: USD per 1M input and output tokens.")
        model, price_in, price_out = rest[0], _float(rest[1], "INPUT"), _float(rest[2], "OUTPUT")
        self.session.prices.override(model, input=price_in, output=price_out)
        self.show(
            f"{model}: ${_plain(price_in)} per 1M input tokens, ${_plain(price_out)} per 1M "
            "output tokens"
        )

    def cmd_cache(self, rest: list[str]) -> None:
        cache = self.session.cache
        if cache is None:
            raise UsageError("The response cache is off for this session.")
        if rest and rest[0] == "clear":
            older, model = _clear_options(rest[1:])
            removed = cache.clear(older_than_days=older, model=model)
            self.show(f"removed {fmt.plural(removed, 'cached reply', 'cached replies')}")
            return
        if rest:
            raise UsageError("%chat cache [clear [--older-than DAYS] [--model MODEL]]")
        st = cache.stats()
        state = " (disabled: see the warning above)" if st.disabled else ""
        where = st.directory if st.backend == "disk" else f"{st.backend} {st.location}"
        self.show(
            f"cache {where}{state} · {fmt.plural(st.entries, 'entry', 'entries')} · "
            f"{st.size_bytes / 1e6:.1f} MB · this session: {fmt.plural(st.hits, 'hit')}, "
            f"{fmt.plural(st.misses, 'miss', 'misses')}, saved {format_usd(st.saved)}"
        )

    # ----- Batch API ---------------------------------------------------------------------------

    def cmd_batches(self, rest: list[str]) -> None:
        from ipychat.map import batch

        found = batch.jobs(self.session)
        if not found:
            where = batch.Registry.of(self.session).directory
            self.show(f"No batches in {where}: %%chatmap DF -o COL --batch submits one.")
            return
        self.show("\n".join(f"- {job.line()}" for job in found))

    def cmd_batch(self, rest: list[str]) -> None:
        from ipychat.map import batch

        usage = "%chat batch resume ID [DF] | %chat batch cancel ID"
        if len(rest) < 2 or rest[0] not in ("resume", "cancel"):
            raise UsageError(usage)
        action, ident, frame = rest[0], rest[1], rest[2] if len(rest) > 2 else None
        if not _BATCH_ID.match(ident) or len(rest) > 3:
            raise UsageError(f"{usage} (an ID as %chat batches lists it, such as bm_1a2b3c4d)")
        if action == "resume":
            self._resume(ident, frame)
            return
        if frame is not None:
            raise UsageError(usage)
        job = batch.cancel(self.session, ident)
        self.show(
            f"Cancelling {job.id} ({job.status}): what finished is kept; "
            f"%chat batch resume {job.id} DF collects it."
        )

    def _resume(self, ident: str, frame: str | None) -> None:
        """`%chat batch resume ID [DF]`: collect a batch into the cache, or into DF."""
        from ipychat.map import batch
        from ipychat.map import job as chatmap
        from ipychat.notebook.progress import ProgressView

        view = ProgressView(notebook=self.notebook)
        if frame is None:
            job = batch.collect(self.session, ident, progress=view.update)
            view.finish(job.failed == 0)
            self.show(
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
        self.show(result.summary.line(frame) + f" · from batch {ident}")

    # ----- Help --------------------------------------------------------------------------------

    def cmd_help(self, rest: list[str]) -> None:
        if not rest:
            print(chat_help())
            return
        command = find(rest[0])
        if command is None or len(rest) > 1:
            raise UsageError(
                unknown_subcommand(rest[0]) if command is None else "%chat help [SUBCOMMAND]"
            )
        self._help(command)


def _check_flags(command: Subcommand, rest: list[str]) -> None:
    """An unknown --flag of a subcommand that takes flags: say which one was meant."""
    if not command.flags:
        return
    for word in rest:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag not in command.flags:
            raise UsageError(unknown_word(f"%chat {command.name}", flag, command.flags))


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, not {text!r}.") from None


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
