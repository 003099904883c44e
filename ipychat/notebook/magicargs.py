"""What every ipychat magic does with its line before its own work: refuse credentials,
parse with shlex and argparse, and turn ipychat's errors into one-line UsageErrors; and
how its help reads (`%%chat?`: the usage as typed, options in groups, examples)."""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import textwrap
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicHelpFormatter, kwds

from ipychat.core.errors import ChatError
from ipychat.core.hygiene import check_magic_line

__all__ = ["check_variable", "help_layout", "parse_line", "unknown_word", "user_errors"]

_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
_NUMBER = re.compile(r"^-\d")


class _HelpFormatter(MagicHelpFormatter):
    """The usage as it is typed ("Usage: %%chat [OPTIONS]"): IPython's own formatter opens
    with an RST "::" block and a "%" before the parser's name (a cell magic read "%chat_cell")."""

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any = None) -> None:
        argparse.RawDescriptionHelpFormatter.add_usage(self, usage, actions, groups, "Usage: ")

    # argparse's own "-o COL [COL ...]": IPython's wraps it as "<COL [COL ...]>" for RST.
    _format_action_invocation = argparse.HelpFormatter._format_action_invocation


def help_layout(usage: str, examples: str) -> kwds:
    """The parser keywords of an ipychat magic (a `kwds` decorator): `usage` as typed,
    `examples` at the end, the docstring in between, then the options in their groups."""
    return kwds(
        usage=usage,
        # A first line of its own: IPython dedents all but the first line of a text.
        epilog="\nExamples:\n\n" + textwrap.indent(textwrap.dedent(examples).strip("\n"), "  "),
        formatter_class=_HelpFormatter,
    )


def unknown_word(name: str, word: str, options: Iterable[str]) -> str:
    """The one-line error for a word argparse did not take: an unknown option gets its
    nearest known one ("did you mean --temperature?"), anything else where it belongs."""
    flag = word.split("=", 1)[0]
    if flag.startswith("-") and not _NUMBER.match(flag):
        close = difflib.get_close_matches(flag, list(options), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{name}: unknown option {flag}{hint}. {name}? lists the options."
    return (
        f"{name}: unexpected {word!r} on the magic line: options only there, the prompt goes "
        f"in the cell below. {name}? lists the options."
    )


@contextmanager
def user_errors() -> Iterator[None]:
    """ipychat's own errors are the user's to fix: show them as one line, never a traceback."""
    try:
        yield
    except ChatError as exc:
        raise UsageError(str(exc)) from None


def parse_line(magic: Callable[..., Any], line: str, name: str) -> Any | None:
    """The parsed arguments of a @magic_arguments magic, or None after -h/--help (which
    prints the help)."""
    with user_errors():
        check_magic_line(line)  # before argparse, whose errors would echo a key back
    parser: argparse.ArgumentParser = magic.parser  # type: ignore[attr-defined]
    try:
        # shlex, not IPython's arg_split: quotes must group words and then disappear
        words = shlex.split(line)
    except ValueError as exc:  # shlex: unbalanced quotes
        raise UsageError(f"{name}: {exc}.") from None
    if "-h" in words or "--help" in words:
        print(parser.format_help())
        return None
    try:
        args, extra = parser.parse_known_args(words)
    except UsageError as exc:  # argparse's own complaint: a missing or malformed value
        raise UsageError(f"{name}: {exc}. {name}? lists the options.") from None
    if extra:
        options = [o for action in parser._actions for o in action.option_strings]
        raise UsageError(unknown_word(name, extra[0], options))
    if getattr(args, "no_cache", False) and getattr(args, "refresh", False):
        raise UsageError("--no-cache and --refresh contradict each other: pick one.")
    return args


def check_variable(value: str | None, flag: str) -> None:
    """A flag that names a notebook variable must name one."""
    if value is not None and not _IDENTIFIER.match(value):
        raise UsageError(f"{flag} needs a Python variable name, not {value!r}.")
