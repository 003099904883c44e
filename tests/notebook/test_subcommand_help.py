"""`%chat help` and `%chat SUBCOMMAND --help`, for every subcommand, through a real
InteractiveShell: each says how it is typed, what it does and shows examples, without a
traceback and without a request."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.testing import FakeOpenAIServer

# Every subcommand a user can type, written out here rather than read from the table: a
# subcommand dropped from the table (or one added without help) fails this test.
NAMES = (
    "model",
    "endpoint",
    "key",
    "system",
    "models",
    "offline",
    "local",
    "threads",
    "thread",
    "history",
    "export",
    "import",
    "reset",
    "panel",
    "usage",
    "budget",
    "price",
    "cache",
    "batches",
    "batch",
    "help",
)


def _cell(ip: Any, source: str) -> tuple[str, list[dict[str, Any]]]:
    """Run `source` as a cell: what it printed and displayed. It must not fail."""
    with capture_output() as out:
        result = ip.run_cell(source)
    assert result.error_before_exec is None and result.error_in_exec is None, out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    return out.stdout, [o.data for o in out.outputs]


def test_the_table_holds_every_subcommand_and_each_has_a_handler() -> None:
    from ipychat.notebook.commands import ChatCommands
    from ipychat.notebook.subcommands import SUBCOMMANDS

    assert sorted(c.name for c in SUBCOMMANDS) == sorted(NAMES)
    for command in SUBCOMMANDS:
        assert callable(getattr(ChatCommands, f"cmd_{command.name}", None)), command.name
        assert command.examples and all(
            e == f"%chat {command.name}" or e.startswith(f"%chat {command.name} ")
            for e in command.examples
        ), command.name


@pytest.mark.parametrize("name", NAMES)
def test_every_subcommand_has_its_own_help(ip: Any, fake: FakeOpenAIServer, name: str) -> None:
    from ipychat.notebook.subcommands import find

    command = find(name)
    assert command is not None
    for flag in ("--help", "-h"):
        printed, displayed = _cell(ip, f"%chat {name} {flag}")
        assert displayed == []  # a terminal: text only
        for usage, text in command.forms:
            assert f"`%chat {usage}`: {text}" in printed
        assert "Examples:" in printed
        for example in command.examples:
            assert f"\n  {example}\n" in printed + "\n"
    # `%chat help NAME` says the same
    assert _cell(ip, f"%chat help {name}")[0] == printed
    assert fake.chat_requests == []


def test_a_subcommand_with_two_forms_lists_both(ip: Any, fake: FakeOpenAIServer) -> None:
    printed, _ = _cell(ip, "%chat batch --help")
    assert "`%chat batch resume ID [DF]`: wait for a batch" in printed
    assert "`%chat batch cancel ID`: cancel a batch (what finished is kept)" in printed
    assert "  %chat batch cancel bm_1a2b3c4d" in printed


def test_help_after_the_subcommands_words_is_still_help(ip: Any, fake: FakeOpenAIServer) -> None:
    printed, _ = _cell(ip, "%chat cache clear --older-than 30 --help")
    assert "`%chat cache [clear [--older-than DAYS] [--model MODEL]]`" in printed
    assert fake.chat_requests == []


def test_in_a_notebook_the_help_is_markdown_with_a_text_twin(
    ip: Any, fake: FakeOpenAIServer
) -> None:
    ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
    printed, displayed = _cell(ip, "%chat batch --help")
    assert printed == ""
    (data,) = displayed
    markdown, plain = data["text/markdown"], data["text/plain"]
    assert "- `%chat batch resume ID [DF]`: " in markdown  # a list: one line per form
    assert "```\n%chat batch resume bm_1a2b3c4d reviews\n%chat batch cancel" in markdown
    assert plain.startswith("`%chat batch resume ID [DF]`: ")


def test_chat_help_lists_every_subcommand(ip: Any, fake: FakeOpenAIServer) -> None:
    from ipychat.notebook.subcommands import SUBCOMMANDS

    printed, _ = _cell(ip, "%chat help")
    assert printed.startswith("Usage: %chat [SUBCOMMAND ARGS]")
    for command in SUBCOMMANDS:
        for usage, _text in command.forms:
            assert f"\n  {usage}" in printed, usage
    assert _cell(ip, "%chat --help")[0] == printed
    assert ip.find_line_magic("chat").__doc__.strip() == printed.strip()  # what %chat? shows


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("help bugdet", r"^%chat bugdet: unknown subcommand \(did you mean %chat budget\?\)"),
        ("help budget cache", r"^%chat help \[SUBCOMMAND\]$"),
        ("hepl", r"did you mean %chat help\?"),
    ],
)
def test_help_for_an_unknown_subcommand_is_one_line(
    ip: Any, fake: FakeOpenAIServer, line: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("chat", line)
