"""Secrets: a canary API key drives a whole run of every feature (magics, map, panel, cache,
ledger, errors including a 401 that echoes the key, DEBUG logging), then every place it
could leak is searched for it: cell outputs, exception texts and tracebacks, reprs, the
DEBUG log, the cache files on disk, the ledger, the panel's widget state, and the notebook
an nbclient run saves. The key must be found nowhere (the server's request headers are the
one place it belongs, and the test checks it really was sent there)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from _support import (
    CANARY,
    Tally,
    error_texts,
    make_session,
    run_cell,
    shell_on,
    wait_for,
)
from IPython.core.error import UsageError
from nbclient import NotebookClient

from ipychat.core.errors import ChatError
from ipychat.session import ChatSession, reset_session
from ipychat.testing import FakeOpenAIServer, Fault

# Found even if the key leaked without its prefix or cut short (the mask keeps 3 + 4 chars).
NEEDLES = (CANARY, CANARY[10:30])
REPO = Path(__file__).resolve().parents[2]


class Artefacts:
    """Everything that might hold the key, by name, as bytes."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def add(self, name: str, content: str | bytes) -> None:
        data = content.encode("utf-8", "replace") if isinstance(content, str) else content
        self.items[name] = self.items.get(name, b"") + data

    def add_files(self, prefix: str, root: Path) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.add(f"{prefix}/{path.relative_to(root)}", path.read_bytes())

    def hits(self) -> dict[str, int]:
        found = {}
        for name, data in self.items.items():
            n = sum(data.count(needle.encode()) for needle in NEEDLES)
            if n:
                found[name] = n
        return found

    def record(self, tally: Tally, refused: int = 0) -> None:
        s = tally.secrets
        s["hits"] = s.get("hits", 0) + sum(self.hits().values())
        s["artefacts"] = s.get("artefacts", 0) + len(self.items)
        s["bytes"] = s.get("bytes", 0) + sum(len(v) for v in self.items.values())
        s["refused"] = s.get("refused", 0) + refused


@pytest.fixture
def debug_log(tmp_path: Path) -> Iterator[Path]:
    """Every logger of the process at DEBUG, into a file."""
    path = tmp_path / "debug.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def _widget_states(widget: Any) -> str:
    states = [json.dumps(widget.get_state(), default=str)]
    for child in getattr(widget, "children", ()):
        states.append(_widget_states(child))
    return "\n".join(states)


def _echoing_faults() -> dict[str, Fault]:
    """Servers that put the key into their error texts (a proxy, a bad gateway, OpenAI's 401
    before it learnt to mask)."""
    return {
        "401": Fault.status(401, message=f"Incorrect API key provided: {CANARY}."),
        "500": Fault.status(
            500, body=f"upstream failed; request had Authorization: Bearer {CANARY}"
        ),
        "stream": Fault.error_mid_stream(message=f"key {CANARY} was revoked mid-reply"),
    }


def test_the_canary_key_leaks_nowhere_in_process(
    tmp_path: Path, debug_log: Path, tally: Tally
) -> None:
    found = Artefacts()
    refused = 0
    with FakeOpenAIServer(require_key=CANARY, models=("gpt-4o-mini", "gpt-4o")) as server:
        session = make_session(server.base_url, tmp_path / "cache", max_retries=1)
        try:
            with shell_on(session) as shell, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                shell.user_ns["df"] = pd.DataFrame({"text": ["good", "bad", "fine"]})

                def cell(name: str, magic: str, line: str, body: str | None, shows: str) -> None:
                    """A cell that must succeed and show `shows`: an error fails the test
                    here, so a regression that stops ordinary cells early cannot pass as
                    "nothing leaked"."""
                    out = run_cell(shell, magic, line, body)
                    assert shows in out, (name, out[-500:])
                    found.add(f"cell {name}", out)

                def failing_cell(name: str, magic: str, line: str, body: str | None) -> str:
                    """A cell that must fail the way magics fail: a UsageError."""
                    with pytest.raises(UsageError) as info:
                        run_cell(shell, magic, line, body)
                    found.add(f"cell {name} (error)", error_texts(info.value))
                    return str(info.value)

                cell("status", "chat", "", None, "ipychat · endpoint")
                summarise = "Echo: Summarise DataFrame"
                cell("chat", "chat", "--max-tokens 40 -o first", "Summarise {df}", summarise)
                cell("chat again", "chat", "--max-tokens 40", "Summarise {df}", summarise)
                cell("chat no-stream", "chat", "--no-stream --thread side", "hello", "Echo: hello")
                cell("dry run", "chat", "--dry-run", "what would {df} cost?", "would send")
                cell("models", "chat", "models", None, "gpt-4o-mini")
                cell("threads", "chat", "threads", None, "side (1 turn)")
                cell("history", "chat", "history", None, "assistant: Echo:")
                cell("chatmap", "chatmap", "df -o out", "Classify {text}", "Done: 3 rows")
                cell("chatmap cached", "chatmap", "df -o out2", "Classify {text}", "3 cached")
                cell("usage", "chat", "usage", None, "| gpt-4o-mini |")
                cell("cache", "chat", "cache", None, "6 entries")
                cell("budget", "chat", "budget 5", None, "of $5.00")
                # Errors that echo the key, through the magics and the Python API.
                faults = _echoing_faults()
                server.script(faults["401"])
                said = failing_cell("401", "chat", "--no-cache", "who am I?")
                assert "refused the API key (HTTP 401)" in said
                server.script(faults["500"], faults["500"])
                said = failing_cell("500", "chat", "--no-cache --no-stream", "again")
                assert "failed with HTTP 500 after 1 retry" in said
                server.script(faults["stream"])
                said = failing_cell("stream error", "chat", "--no-cache", "once more")
                assert "broke: the server sent an error" in said
                server.script(faults["401"])
                said = failing_cell(
                    "chatmap 401", "chatmap", "df -o out3 --no-cache", "Rate {text}"
                )
                assert "(HTTP 401)" in said and "Stopped after" in said
                for name, fault in faults.items():
                    server.script(*[fault] * (2 if name == "500" else 1))  # 500 is retried
                    with pytest.raises(ChatError) as info:
                        session.ask(f"api {name}", cache=False, stream=name == "stream")
                    found.add(f"exception {name}", error_texts(info.value))
                    found.add(f"exception vars {name}", repr(vars(info.value)))
                # The key is refused as a magic argument, and as a prompt.
                for name, magic, line, body in [
                    ("%chat key", "chat", f"key {CANARY}", None),
                    ("%%chat --api-key", "chat", f"--api-key {CANARY}", "hi"),
                    ("%%chatmap --key", "chatmap", f"df -o x --key={CANARY}", "{text}"),
                    ("endpoint URL", "chat", f"endpoint http://k:{CANARY}@127.0.0.1:9/v1", None),
                    ("prompt", "chat", "", f"my key is {CANARY}, is it valid?"),
                ]:
                    before = len(server.chat_requests)
                    said = failing_cell(f"refused {name}", magic, line, body)
                    assert "a key never goes in a cell" in said or "nothing was sent" in said
                    assert len(server.chat_requests) == before
                    refused += 1
                # The panel: a streamed reply, then an error that echoes the key.
                from ipychat.notebook.widget import ChatPanel

                p = ChatPanel(session)
                try:
                    p.prompt.value = "hello panel"
                    p.send.click()
                    ok = wait_for(lambda: "Echo: hello panel" in p.transcript_markdown())
                    assert ok, (p.error.value, p.transcript_markdown()[-500:])
                    wait_for(lambda: not p.send.disabled)
                    server.script(faults["401"])
                    p.prompt.value = "panel 401"
                    p.send.click()
                    assert wait_for(lambda: "refused the API key" in p.error.value)
                    found.add("panel transcript", p.transcript_markdown())
                    found.add("panel widget state", _widget_states(p))
                    found.add("panel repr", repr(p))
                finally:
                    p.close()
                for w in caught:
                    found.add("warnings", f"{w.category.__name__}: {w.message}\n")
            # Reprs of everything that holds or touched the key.
            client = session.run(session.client())
            for name, obj in {
                "session": session,
                "settings": session.settings,
                "api_key": session.settings.api_key,
                "client": client,
                "cache": session.cache,
                "ledger": session.usage,
                "threads": session.threads,
                "last reply": session.last_reply,
                "prepared": session.prepare("a prepared request"),
                "session vars": vars(session),
                "client vars": vars(client),
                "recorded request": server.chat_requests[0],
            }.items():
                found.add(f"repr {name}", f"{obj!r}\n{obj}\n{obj!s:>10}")
            with pytest.raises(TypeError):
                pickle.dumps(session.settings)  # a Secret cannot be pickled into a file
            found.add("ledger frame", session.usage.to_frame().to_csv())
            found.add("ledger rows", "\n".join(map(repr, session.usage.rows)))
            assert server.chat_requests[0].headers["authorization"] == f"Bearer {CANARY}"
        finally:
            session.close()
            reset_session(None)
    found.add_files("cache", tmp_path / "cache")
    found.add("debug log", debug_log.read_bytes())
    assert b"DEBUG ipychat" in found.items["debug log"]  # the log really was at DEBUG
    assert any(name.startswith("cache/") for name in found.items)
    found.record(tally, refused)
    assert found.hits() == {}


@pytest.mark.slow
def test_the_canary_key_leaks_nowhere_in_a_saved_notebook(
    tmp_path: Path, tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real kernel with the key in its environment, DEBUG logs printed into the cells,
    errors with tracebacks; the notebook nbclient saves and the cache are then searched."""
    cache = tmp_path / "kernel-cache"
    with FakeOpenAIServer(require_key=CANARY) as server:
        monkeypatch.setenv("OPENAI_API_KEY", CANARY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(cache))
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        cells = [
            "import logging, sys\n"
            "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, force=True)\n"
            "for name in ('asyncio', 'traitlets', 'tornado'): logging.getLogger(name).setLevel(logging.INFO)",
            "%load_ext ipychat",
            "%chat",
            "%%chat --max-tokens 30\nhello from the kernel",
            "import pandas as pd\ndf = pd.DataFrame({'text': ['a', 'b', 'c']})",
            "%%chatmap df -o out\nSay {text}",
            "%chat usage",
            "%%chat --no-cache\nthe server will echo the key",  # a 401 that echoes it
            "import ipychat\ns = ipychat.get_session()\ns.ask('raise it', cache=False)",  # traceback
            f"%chat key {CANARY}",
            "print(repr(s), repr(s.settings), s.settings.api_key)\ns.usage.to_frame()",
        ]
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
        client = NotebookClient(
            nb,
            timeout=60,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(tmp_path)}},
        )
        echo = Fault.status(401, message=f"Incorrect API key provided: {CANARY}.")
        with client.setup_kernel():
            for index, c in enumerate(nb.cells):
                if index in (7, 8):
                    server.script(echo, echo)
                client.execute_cell(c, index)
        assert server.chat_requests[0].headers["authorization"] == f"Bearer {CANARY}"
    # The one cell where the user typed the key keeps it in its source, as typed: what is
    # searched is everything ipychat and the kernel wrote.
    refused = next(c for c in nb.cells if c.source.startswith("%chat key "))
    refused.source = "%chat key <the key, as the user typed it>"
    saved = tmp_path / "run.ipynb"
    nbformat.write(nb, saved)
    found = Artefacts()
    found.add("saved notebook", saved.read_bytes())
    found.add_files("kernel cache", cache)
    text = saved.read_text()
    # The run really exercised what it claims: replies, the map, DEBUG lines, both errors.
    assert "Echo: hello from the kernel" in text and "Done: 3 rows" in text
    assert "DEBUG:ipychat" in text
    assert "refused the API key (HTTP 401)" in text and "AuthError" in text
    assert "a key never goes in a cell" in text
    found.record(tally, refused=1)
    tally.kernel.append(
        f"secrets: notebook of {len(cells)} cells saved, canary hits {sum(found.hits().values())}"
    )
    assert found.hits() == {}


# ----- data hygiene, end to end ----------------------------------------------------------------

PRIVATE = (
    "-----BEGIN OPENSSH "
    + "PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH "
    + "PRIVATE KEY-----"
)
PII = {
    "email": "jane.roe@example.org",
    "phone": "+44 20 7946 0958",
    "card": "4111 1111 1111 1111",
}


def test_data_hygiene_through_every_entry_point(
    server: FakeOpenAIServer, rsession: ChatSession, tally: Tally
) -> None:
    """Credential-shaped prompts are refused by %%chat, %%chatmap, the panel, ask, stream and
    map before anything is sent; with `redact` on, no e-mail, phone or card number reaches
    the server from any of them, and each says what it masked."""
    from IPython.core.error import UsageError

    from ipychat.core.errors import SecretInPromptError
    from ipychat.notebook.widget import ChatPanel

    session = rsession
    leaked_key = f"here is {CANARY}"
    refusals = 0
    with shell_on(session) as shell:
        shell.user_ns["rows"] = pd.DataFrame({"t": ["fine", leaked_key]})
        for magic, line, body in [
            ("chat", "", leaked_key),
            ("chat", "--no-stream", PRIVATE),
            ("chatmap", "rows -o out", "{t}"),
        ]:
            with pytest.raises(UsageError, match="nothing was sent"):
                run_cell(shell, magic, line, body)
            refusals += 1
        for call in (
            lambda: session.ask(leaked_key),
            lambda: list(session.stream(PRIVATE)),
            lambda: session.map(pd.DataFrame({"t": [leaked_key]}), "{t}", "out"),
        ):
            with pytest.raises(SecretInPromptError):
                call()
            refusals += 1
        p = ChatPanel(session)
        try:
            p.prompt.value = leaked_key
            p.send.click()
            assert wait_for(lambda: "nothing was sent" in p.error.value)
            refusals += 1
        finally:
            p.close()
        assert server.chat_requests == []

        run_cell(shell, "config", "ChatMagics.redact = True")
        personal = "Contact {email}, {phone}, card {card}.".format(**PII)
        said = [
            run_cell(shell, "chat", "--no-cache", personal),
            run_cell(shell, "chat", "--no-cache --no-stream --thread b", personal),
        ]
        shell.user_ns["people"] = pd.DataFrame({"who": [PII["email"], PII["phone"]]})
        said.append(run_cell(shell, "chatmap", "people -o out --no-cache", "Greet {who}"))
        said.append(str(session.ask(personal + " (api)", cache=False).extra["masked"]))
        with session.stream(personal + " (stream)", cache=False) as stream:
            list(stream)
        assert stream.reply is not None
        said.append(str(stream.reply.extra["masked"]))
        frame = session.map(pd.DataFrame({"x": [PII["card"]]}), "Pay {x}", "out", cache=False)
        assert frame["out"].iloc[0] == "Echo: Pay [card]"
        p = ChatPanel(session)
        try:
            p.prompt.value = personal + " (panel)"
            p.send.click()
            assert wait_for(lambda: "(panel)" in p.transcript_markdown())
            assert wait_for(lambda: "masked 1 e-mail address" in p.transcript_markdown())
        finally:
            p.close()
    sent = "\n".join(json.dumps(r.body) for r in server.chat_requests)
    assert len(server.chat_requests) >= 8
    for kind, value in PII.items():
        assert value not in sent, kind
    assert all("masked" in text for text in said), said
    tally.secrets["hygiene refused"] = refusals
    tally.secrets["hygiene masked requests"] = len(server.chat_requests)


# ----- keys in exception objects (issue 15, item 8) --------------------------------------------


def _everything_an_exception_holds(exc: BaseException) -> str:
    """What a user can reach from an exception: str, repr, args and attributes (aiohttp's
    `request_info.headers` among them) of it and of every chained cause and context,
    recursively, and the repr of every local of every frame of their tracebacks (what
    `%xmode Verbose` prints, and more: all locals, not only those on the shown lines)."""
    parts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), *map(repr, e.args)]
        for name, value in vars(e).items() if hasattr(e, "__dict__") else ():
            parts.append(f"{name}={value!r}")
            headers = getattr(value, "headers", None)
            if headers is not None:
                parts.append(repr(dict(headers)))
        tb = e.__traceback__
        while tb is not None:
            for name, value in tb.tb_frame.f_locals.items():
                try:
                    parts.append(f"{name}={value!r}")
                except Exception:  # a local whose repr fails shows nothing
                    continue
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__]
    return "\n".join(parts)


def _verbose_traceback(exc: BaseException) -> str:
    """The traceback IPython prints in `%xmode Verbose` (chained exceptions included)."""
    from IPython.core.ultratb import VerboseTB

    return VerboseTB(color_scheme="NoColor").text(type(exc), exc, exc.__traceback__)


def test_a_huge_response_header_leaves_no_key_in_the_exception(
    server: FakeOpenAIServer, rsession: ChatSession, tally: Tally
) -> None:
    """A 20 kB response header makes aiohttp fail while reading the response: its exception
    holds the request's headers (Authorization: Bearer <key>) in `request_info`, in its
    args and in the locals of its frames. What ipychat raises must hold none of that."""
    big = Fault.status(500, headers={"x-padding": "a" * 20_000})
    server.script(big, big)  # the session retries once
    with pytest.raises(ChatError) as info:
        rsession.ask("hello", cache=False, max_tokens=5)
    error = info.value
    assert "\n" not in str(error) and "response header longer than" in str(error)
    assert server.requests[0].headers["authorization"] == f"Bearer {CANARY}"  # it was sent
    held = _everything_an_exception_holds(error)
    shown = _verbose_traceback(error)
    assert "request_info" in held  # the chain was searched, aiohttp's exception included
    for needle in NEEDLES:
        assert needle not in held
        assert needle not in shown
    tally.secrets["exception chains searched"] = (
        tally.secrets.get("exception chains searched", 0) + 1
    )


def test_a_huge_response_header_through_the_magic_in_verbose_mode(
    server: FakeOpenAIServer, rsession: ChatSession
) -> None:
    from IPython.core.error import UsageError

    with shell_on(rsession) as shell:
        shell.run_line_magic("xmode", "Verbose")
        try:
            big = Fault.status(500, headers={"x-padding": "b" * 20_000})
            server.script(big, big)  # the session retries once
            with pytest.raises(UsageError) as info:
                run_cell(shell, "chat", "--no-cache --no-stream", "hello")
            assert "\n" not in str(info.value)
            held = _everything_an_exception_holds(info.value)  # the UsageError's context too
            assert "ClientResponseError" in held
            for needle in NEEDLES:
                assert needle not in held
        finally:
            shell.run_line_magic("xmode", "Context")
