"""What every ipychat magic does with its line before its own work: refuse credentials,
parse with shlex and argparse, and turn ipychat's errors into one-line UsageErrors."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.error import UsageError

from ipychat.errors import ChatError
from ipychat.hygiene import check_magic_line

__all__ = ["check_variable", "parse_line", "user_errors"]

_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")


@contextmanager
def user_errors() -> Iterator[None]:
    """ipychat's own errors are the user's to fix: show them as one line, never a traceback."""
    try:
        yield
    except ChatError as exc:
        raise UsageError(str(exc)) from None


def parse_line(magic: Callable[..., Any], line: str, name: str) -> Any | None:
    """The parsed arguments of a @magic_arguments magic, or None after --help."""
    with user_errors():
        check_magic_line(line)  # before argparse, whose errors would echo a key back
    try:
        # shlex, not IPython's arg_split: quotes must group words and then disappear
        args = magic.parser.parse_args(shlex.split(line))  # type: ignore[attr-defined]
    except ValueError as exc:  # shlex: unbalanced quotes
        raise UsageError(f"{name}: {exc}.") from None
    except SystemExit:  # argparse's --help inside a magic
        return None
    if getattr(args, "no_cache", False) and getattr(args, "refresh", False):
        raise UsageError("--no-cache and --refresh contradict each other: pick one.")
    return args


def check_variable(value: str | None, flag: str) -> None:
    """A flag that names a notebook variable must name one."""
    if value is not None and not _IDENTIFIER.match(value):
        raise UsageError(f"{flag} needs a Python variable name, not {value!r}.")
