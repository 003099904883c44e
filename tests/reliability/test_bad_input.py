"""Bad input across the magics, the panel and the Python API: each case gives one clear line
(a UsageError in a cell, the panel's error line, a ChatError from Python, IPython's one
log line for %config) and the server sees no chat request at all."""

from __future__ import annotations

import html
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _support import CANARY, Tally, closed_port, is_one_line, run_cell, shell_on, wait_for
from IPython.core.error import UsageError

from ipychat.core.errors import ChatError
from ipychat.engine.cache import CacheWarning
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer

HUGE = "word " * 200_000  # about 200k tokens: beyond gpt-4o-mini's 128k context window


@dataclass
class Ctx:
    shell: Any
    session: ChatSession
    server: FakeOpenAIServer
    tmp_path: Path


Act = Callable[[Ctx], str]


def cell(line: str, body: str | None = "hello", magic: str = "chat") -> Act:
    """A %%chat / %%chatmap cell (or, with body None, a %chat line) that must be refused."""

    def act(ctx: Ctx) -> str:
        with pytest.raises(UsageError) as info:
            run_cell(ctx.shell, magic, line, body)
        return str(info.value)

    return act


def line(text: str) -> Act:
    return cell(text, None)


def chatmap(text: str, body: str = "Classify {text}") -> Act:
    return cell(text, body, "chatmap")


def config(assignment: str, name: str) -> Act:
    """%config logs a refused value as one ERROR line and leaves the setting as it was."""

    def act(ctx: Ctx) -> str:
        before = getattr(ctx.session.settings, name)
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            ctx.shell.run_line_magic("config", f"ChatMagics.{assignment}")
        finally:
            root.removeHandler(handler)
        assert getattr(ctx.session.settings, name) == before
        errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        return errors[0]

    return act


def api(call: Callable[[ChatSession], object]) -> Act:
    def act(ctx: Ctx) -> str:
        with pytest.raises(ChatError) as info:
            call(ctx.session)
        return str(info.value)

    return act


def panel(setup: Callable[[Any], None]) -> Act:
    """Drive the panel's widgets; the refusal shows in its error line."""

    def act(ctx: Ctx) -> str:
        from ipychat.notebook.widget import ChatPanel

        p = ChatPanel(ctx.session)
        try:
            setup(p)
            shown = wait_for(lambda: p.error.value, timeout=5)
            assert shown, "the panel showed no error"
            return html.unescape(re.sub(r"<[^>]+>", "", shown)).removeprefix("⚠ ")
        finally:
            p.close()

    return act


def _send(prompt: str) -> Callable[[Any], None]:
    def setup(p: Any) -> None:
        p.prompt.value = prompt
        p.send.click()

    return setup


def _set(widget: str, value: str) -> Callable[[Any], None]:
    def setup(p: Any) -> None:
        getattr(p, widget).value = value

    return setup


def unreachable(ctx: Ctx) -> str:
    run_cell(ctx.shell, "chat", f"endpoint http://127.0.0.1:{closed_port()}/v1")
    return cell("", "hello")(ctx)


def corrupted_cache(ctx: Ctx) -> str:
    """A cache file that is not a database: one warning, then the cache is off (offline mode
    then refuses instead of sending: a miss is never a request)."""
    cache = ctx.session.cache
    assert cache is not None
    cache.directory.mkdir(parents=True, exist_ok=True)
    (cache.directory / "cache.db").write_bytes(b"not a database, " * 512)
    ctx.session.configure(offline=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = api(lambda s: s.ask("hello"))(ctx)
    notes = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(notes) == 1 and is_one_line(notes[0]), notes
    return message


def huge_rows(ctx: Ctx) -> str:
    """Rows too long for the context window are not sent: each says why in _error."""
    shown = run_cell(ctx.shell, "chatmap", "df -o out", "{text} " + HUGE)
    assert "2 too long for the context window" in shown and "2 failed" in shown
    errors = ctx.shell.user_ns["df"]["_error"]
    assert errors.str.startswith("A prompt of 200,0").all()
    return str(errors.iloc[0])


def over_budget(session: ChatSession) -> object:
    session.set_budget(1e-9)
    return session.ask("hello there")


def offline_miss(session: ChatSession) -> object:
    session.configure(offline=True)
    return session.ask("never asked before")


class Unprintable:
    """A value whose repr and str raise, as a half-built object of user code may."""

    def __repr__(self) -> str:
        raise ValueError("half-built")

    __str__ = __repr__


CASES: dict[str, tuple[Act, str]] = {
    # %%chat
    "%%chat unknown option": (cell("--bogus"), "unknown option --bogus"),
    "%%chat -t not a number": (cell("-t hot"), "invalid float value: 'hot'"),
    "%%chat -t out of range": (cell("-t 5"), "temperature must be between 0 and 2"),
    "%%chat --max-tokens negative": (cell("--max-tokens -5"), "max_tokens must be a positive"),
    "%%chat --max-tokens absurd": (cell("--max-tokens 100000000"), "leaves no room for the prompt"),
    "%%chat empty cell": (cell("", "   \n"), "The cell is empty"),
    "%%chat missing variable": (cell("", "Summarise {dff}"), "did you mean df?"),
    "%%chat huge cell": (cell("", HUGE), "Shorten it"),
    "%%chat --max-cost negative": (cell("--max-cost -1"), "max cost must be a number of dollars"),
    "%%chat --max-cost too low": (cell("--max-cost 0.0000001"), "over --max-cost"),
    "%%chat -o not a name": (cell("-o 1abc"), "-o needs a Python variable name"),
    "%%chat --no-cache --refresh": (cell("--no-cache --refresh"), "contradict each other"),
    "%%chat -f unknown": (cell("-f yaml"), "invalid choice: 'yaml'"),
    "%%chat unbalanced quote": (cell('-s "oops'), "No closing quotation"),
    "%%chat unreachable endpoint": (unreachable, "The server at http://127.0.0.1"),
    # %chat
    "%chat unknown subcommand": (line("frobnicate"), "unknown subcommand"),
    "%chat endpoint ftp://": (line("endpoint ftp://example.com/v1"), "is not an endpoint URL"),
    "%chat endpoint without host": (line("endpoint http://"), "is not an endpoint URL"),
    "%chat endpoint not a URL": (line("endpoint localhost:8000"), "is not an endpoint URL"),
    "%chat endpoint with a password": (
        line("endpoint http://me:hunter2@127.0.0.1:9/v1"),
        "holds a user name or password",
    ),
    "%%chat key as an option": (cell(f"--api-key {CANARY}"), "a key never goes in a cell"),
    "%chat price not a number": (line("price my-model abc 1"), "INPUT must be a number"),
    "%chat price negative": (line("price my-model -1 2"), "my-model"),
    "%chat price absurd": (line("price my-model 1e12 1"), "my-model"),
    "%chat price missing": (line("price my-model 1"), "%chat price MODEL INPUT OUTPUT"),
    "%chat budget negative": (line("budget -5"), "positive number of dollars"),
    "%chat budget not a number": (line("budget lots"), "must be a number, not 'lots'"),
    "%chat offline maybe": (line("offline maybe"), "%chat offline on|off"),
    "%chat history unknown thread": (line("history nope"), "No thread named 'nope'"),
    "%chat cache clear negative age": (
        line("cache clear --older-than -1"),
        "--older-than takes a number of days",
    ),
    "%config temperature 9": (config("temperature = 9", "temperature"), "between 0 and 2"),
    "%config max_retries 99": (config("max_retries = 99", "max_retries"), "from 0 to 20"),
    "%config base_url nope": (config("base_url = 'nope'", "base_url"), "not an endpoint URL"),
    "%config max_tokens text": (config("max_tokens = 'x'", "max_tokens"), "expected an int"),
    # %%chatmap
    "%%chatmap undefined frame": (chatmap("dff -o out"), "did you mean df?"),
    "%%chatmap not a DataFrame": (chatmap("items -o out"), "is a list, not a DataFrame"),
    "%%chatmap unknown column": (chatmap("df -o out", "Rate {txt}"), "did you mean {text}?"),
    "%%chatmap no -o": (chatmap("df"), "-o/--output COL names the column for the replies"),
    "%%chatmap --concurrency 0": (chatmap("df -o out --concurrency 0"), "positive whole"),
    "%%chatmap --retries 99": (chatmap("df -o out --retries 99"), "from 0 to 20"),
    "%%chatmap --rpm negative": (chatmap("df -o out --rpm -1"), "rpm must be a positive"),
    "%%chatmap --limit negative": (chatmap("df -o out --limit -3"), "limit must be a whole"),
    "%%chatmap no placeholder": (chatmap("df -o out", "Classify this"), "no {column}"),
    "%%chatmap two outputs without --json": (chatmap("df -o a b"), "need --json"),
    "%%chatmap --max-cost too low": (chatmap("df -o out --max-cost 0.0000001"), "over --max-cost"),
    "%%chatmap empty template": (chatmap("df -o out", "  \n "), "The template is empty"),
    "%%chatmap -o _error": (chatmap("df -o _error"), "is where row errors go"),
    "%%chatmap -t not a number": (chatmap("df -o out -t warm"), "invalid float value"),
    "%%chatmap huge rows": (huge_rows, "does not fit the 128,000-token context"),
    # typed answers (issue 17)
    "%%chatmap --choices empty label": (chatmap("df -o out --choices a,,b"), "an empty label"),
    "%%chatmap --schema undefined": (chatmap("df --schema Nope"), "Nope is not defined"),
    "%%chatmap --schema not a model": (chatmap("df --schema items"), "is a list, not a Pydantic"),
    "%%chatmap --choices and --schema": (chatmap("df --schema x --choices a,b"), "give one"),
    "%%chatfilter not a DataFrame": (
        cell("items", "Keep? {text}", "chatfilter"),
        "not a DataFrame",
    ),
    # issue 15, item 12: each was a raw traceback (or was sent, or accepted)
    "%%chat lone surrogate": (cell("", "hi \ud800 there"), "lone surrogate"),
    "%%chat {value} whose repr raises": (
        cell("", "look at {broken}"),
        "{broken} could not be turned into text (ValueError: half-built)",
    ),
    "%chat endpoint http://[::1": (line("endpoint http://[::1"), "Invalid IPv6 URL"),
    "%chat endpoint port 99999": (line("endpoint http://127.0.0.1:99999/v1"), "Port out of range"),
    "%chat cache clear --older-than nan": (
        line("cache clear --older-than nan"),
        "--older-than takes a number of days",
    ),
    "%%chat -m ' '": (cell("-m ' '"), "The model name is empty"),
    "%chat budget inf": (line("budget inf"), "positive number of dollars"),
    "%chat budget nan": (line("budget nan"), "positive number of dollars"),
    # their siblings, found by fuzzing the magics' arguments
    "%chat cache clear --older-than inf": (
        line("cache clear --older-than inf"),
        "--older-than takes a number of days",
    ),
    "%chat endpoint with a ?query": (line("endpoint http://127.0.0.1:9/v1?x=1"), "?query"),
    "%chat endpoint port 0": (line("endpoint http://127.0.0.1:0/v1"), "has port 0"),
    "%chat system lone surrogate": (line("system 'be \udcff brief'"), "lone surrogate"),
    "%chat thread control character": (line("thread 'a\x01b'"), "cannot name a thread"),
    "%chat batch resume long id": (line("batch resume " + "x" * 300), "an ID as %chat batches"),
    "%%chat -m with a control character": (cell("-m 'gpt\x01'"), "control characters"),
    "%%chat --max-cost inf": (cell("--max-cost inf"), "max cost must be a number of dollars"),
    "%%chatmap -m ' '": (chatmap("df -o out -m ' '"), "The model name is empty"),
    "%%chatmap value whose str raises": (
        chatmap("odd -o out"),
        "A value in column 'text' could not be turned into text (ValueError)",
    ),
    "%config connect_timeout inf": (
        config("connect_timeout = 1e309", "connect_timeout"),
        "positive number of seconds",
    ),
    "%config azure_api_version with a space": (
        config("azure_api_version = '2024 10'", "azure_api_version"),
        "azure_api_version is a version",
    ),
    "configure system lone surrogate": (
        api(lambda s: s.configure(system="\ud800")),
        "lone surrogate",
    ),
    "ask model ' '": (api(lambda s: s.ask("hi", model=" ")), "The model name is empty"),
    # the panel
    "panel empty prompt": (panel(_send("   ")), "Write a prompt first"),
    "panel temperature not a number": (
        panel(_set("temperature", "hot")),
        "temperature must be a number",
    ),
    "panel temperature out of range": (panel(_set("temperature", "7")), "between 0 and 2"),
    "panel max tokens negative": (panel(_set("max_tokens", "-3")), "positive whole number"),
    "panel huge prompt": (panel(_send(HUGE)), "Shorten it"),
    # the Python API
    "ask empty prompt": (api(lambda s: s.ask("")), "The prompt is empty"),
    "ask temperature 3": (api(lambda s: s.ask("hi", temperature=3)), "between 0 and 2"),
    "ask max_tokens 0": (api(lambda s: s.ask("hi", max_tokens=0)), "positive whole number"),
    "stream empty prompt": (api(lambda s: list(s.stream(" "))), "The prompt is empty"),
    "configure bad URL": (
        api(lambda s: s.configure(base_url="not a url")),
        "is not an endpoint URL",
    ),
    "configure unknown setting": (api(lambda s: s.configure(bogus=1)), "Unknown setting 'bogus'"),
    "configure max_retries -1": (api(lambda s: s.configure(max_retries=-1)), "from 0 to 20"),
    "configure read_timeout 0": (api(lambda s: s.configure(read_timeout=0)), "positive number"),
    "map not a DataFrame": (
        api(lambda s: s.map([1, 2], "{x}", "out")),
        "is a list, not a DataFrame",
    ),
    "map unknown column": (
        api(lambda s: s.map(pd.DataFrame({"text": ["a"]}), "{nope}", "out")),
        "is not a column",
    ),
    "set_budget negative": (api(lambda s: s.set_budget(-1)), "positive number of dollars"),
    "price override not a number": (
        api(lambda s: s.prices.override("m", "abc", 1)),
        "m",
    ),
    "over budget": (api(over_budget), "Budget: spent"),
    "offline cache miss": (api(offline_miss), "Offline mode"),
    "corrupted cache": (corrupted_cache, "Offline mode"),
}


@pytest.fixture
def ctx(server: FakeOpenAIServer, rsession: ChatSession, tmp_path: Path) -> Iterator[Ctx]:
    with shell_on(rsession) as shell:
        shell.user_ns["df"] = pd.DataFrame({"text": ["great", "awful"]})
        shell.user_ns["items"] = [1, 2, 3]
        shell.user_ns["broken"] = Unprintable()
        shell.user_ns["odd"] = pd.DataFrame({"text": [Unprintable()]})
        yield Ctx(shell, rsession, server, tmp_path)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, ctx: Ctx, tally: Tally) -> None:
    act, phrase = CASES[name]
    tally.bad_inputs[name] = False
    message = act(ctx)
    assert phrase in message, message
    assert is_one_line(message), message
    assert "Traceback" not in message and CANARY not in message
    assert ctx.server.chat_requests == [], f"{name} sent a request"
    tally.bad_inputs[name] = True


def test_there_are_at_least_30_cases() -> None:
    kinds = {name.split()[0] for name in CASES}
    assert len(CASES) >= 30
    assert {"%%chat", "%chat", "%%chatmap", "panel", "ask", "map", "%config"} <= kinds
