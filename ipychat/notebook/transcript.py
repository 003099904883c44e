"""`%chat export` and `%chat import`: a thread as Markdown or as a notebook, and back.

The notebook form is what a notebook of `%%chat` cells saves: one code cell per turn,
`%%chat --thread NAME` then the prompt as it was sent, its output the Reply as a
`%%chat` cell's result (text/markdown, text/plain, metadata `{"ipychat": {...}}`). So
`%chat import` reads back a notebook written by export and one saved from a session alike:
the prompt is the cell below its magic line, the reply the output's text/plain without its
footer line. A comparison's output (`%%chat -m A,B`) is no turn there and is left out. The notebook is written as nbformat 4.5 JSON by hand (nbformat may not be
installed in a kernel); the tests validate it with nbformat.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from pathlib import Path
from typing import Any

from ipychat.conversation import TurnRecord
from ipychat.core import format as fmt
from ipychat.core.errors import ChatError
from ipychat.core.markdown import prompt_markdown, reply_markdown
from ipychat.core.messages import Thread
from ipychat.session import ChatSession

__all__ = [
    "export_command",
    "export_markdown",
    "export_notebook",
    "import_command",
    "read_notebook",
    "write_new",
]

# nbformat 4.5's cell id: 1-64 letters, digits, - and _ (nbformat/v4/nbformat.v4.5.schema.json).
_CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAGIC = "%%chat"


def _turns(thread: Thread) -> list[tuple[str, str, str | None, dict[str, Any] | None]]:
    messages = thread.messages
    return [
        (
            str(messages[2 * i]["content"]),
            str(messages[2 * i + 1]["content"]),
            thread.cell_of(i),
            thread.record_of(i),
        )
        for i in range(thread.turns)
    ]


def export_markdown(thread: Thread) -> str:
    """The thread as a Markdown document: each turn's prompt, its reply, how it was made."""
    parts = [f"# Thread {thread.name}"]
    for n, (prompt, reply, cell, record) in enumerate(_turns(thread), 1):
        made = f" · {record['model']}" if record and record.get("model") else ""
        where = f" · cell `{cell}`" if cell else ""
        parts.append(f"## Turn {n}{made}{where}")
        parts.append(f"**user:**\n\n{prompt_markdown(prompt)}")
        parts.append(f"**assistant:**\n\n{reply_markdown(reply)}")
    return "\n\n".join(parts) + "\n"


def _plain_footer(record: dict[str, Any] | None, thread: Thread, turn: int) -> str:
    model = (record or {}).get("model") or "reply"
    return f"{model} · thread {thread.name} · turn {turn}"


def _cell(
    thread: Thread, n: int, turn: tuple[str, str, str | None, dict[str, Any] | None], ids: set[str]
) -> dict[str, Any]:
    prompt, reply, cell, record = turn
    # The prompt was sent as it stands: re-running the cell must not interpolate it again.
    flags = " --no-interpolate" if "{" in prompt else ""
    source = f"{_MAGIC} --thread {shlex.quote(thread.name)}{flags}\n{prompt}"
    cell_id = cell if cell and _CELL_ID.match(cell) and cell not in ids else secrets.token_hex(4)
    ids.add(cell_id)
    meta = dict(record or {}) | {"thread": thread.name, "turn": n, "cell": cell_id}
    footer = _plain_footer(record, thread, n)
    return {
        "cell_type": "code",
        "execution_count": n,
        "id": cell_id,
        "metadata": {},
        "source": source,
        "outputs": [
            {
                "output_type": "execute_result",
                "execution_count": n,
                "data": {
                    "text/markdown": f"{reply_markdown(reply)}\n\n{fmt.footer_markdown(footer)}",
                    "text/plain": f"{reply}\n\n[{footer}]",
                },
                "metadata": {"ipychat": meta},
            }
        ],
    }


def export_notebook(thread: Thread) -> dict[str, Any]:
    """The thread as a notebook (nbformat 4.5) of `%%chat` cells with their results."""
    ids: set[str] = set()
    title: dict[str, Any] = {
        "cell_type": "markdown",
        "id": "ipychat-title",
        "metadata": {},
        "source": f"# Thread {thread.name}\n\nExported by ipychat; `%chat import` reads it back.",
    }
    ids.add("ipychat-title")
    cells = [_cell(thread, n, turn, ids) for n, turn in enumerate(_turns(thread), 1)]
    return {
        "cells": [title, *cells],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_new(path: Path, text: str, *, force: bool) -> None:
    """Write `text` to `path`, refusing to overwrite an existing file unless `force`."""
    if path.exists() and not force:
        raise ChatError(f"{path} exists: add --force to overwrite it.")
    if not path.parent.is_dir():
        raise ChatError(f"{path.parent} is no directory: create it first, or pick another path.")
    path.write_text(text, encoding="utf-8")


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _result(cell: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The reply a %%chat cell shows (its text/plain without the footer) and its metadata."""
    for output in reversed(cell.get("outputs") or []):
        if output.get("output_type") not in ("execute_result", "display_data"):
            continue
        plain = output.get("data", {}).get("text/plain")
        meta = dict(output.get("metadata", {}).get("ipychat") or {})
        if plain is None or "compared" in meta:  # -m A,B: replies side by side, not a turn
            continue
        plain = "".join(plain) if isinstance(plain, list) else str(plain)
        # Every %%chat output ends with "\n\n[footer]", a line that holds no "\n\n[".
        text, sep, footer = plain.rpartition("\n\n[")
        if not sep or not footer.rstrip().endswith("]"):
            continue
        return text, meta
    return None


def read_notebook(path: Path, thread: str | None = None) -> tuple[str, list[TurnRecord]]:
    """The turns of one thread in a notebook of %%chat cells: (its name, its turns). Without
    `thread`, the thread of the first %%chat result; turns in the order of their `turn`."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = list(notebook["cells"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ChatError(f"{path} is not a readable notebook ({exc}).") from None
    found: list[tuple[int, int, str, TurnRecord]] = []
    for position, cell in enumerate(cells):
        source = _source(cell)
        if cell.get("cell_type") != "code" or not source.startswith(_MAGIC):
            continue
        result = _result(cell)
        if result is None:
            continue
        text, meta = result
        prompt = source.partition("\n")[2].strip()
        name = str(meta.get("thread") or "main")
        number = meta.get("turn")
        turn = number if isinstance(number, int) else position
        cell_id = cell.get("id") if isinstance(cell.get("id"), str) else None
        found.append((turn, position, name, TurnRecord(prompt, text, cell_id, meta or None)))
    if not found:
        raise ChatError(f"{path} has no %%chat cell with a reply: nothing to import.")
    name = thread or found[0][2]
    turns = sorted((t for t in found if t[2] == name), key=lambda t: (t[0], t[1]))
    if not turns:
        known = ", ".join(sorted({t[2] for t in found}))
        raise ChatError(f"{path} has no turn of thread {name!r}; its threads: {known}.")
    return name, [t[3] for t in turns]


def export_command(session: ChatSession, rest: list[str]) -> str:
    """`%chat export [THREAD] FILE.md|FILE.ipynb [--force]`: the line saying what was written."""
    words = [w for w in rest if w != "--force"]
    if len(words) not in (1, 2):
        raise ChatError("%chat export [THREAD] FILE.md|FILE.ipynb [--force]")
    thread = session.thread(words[0] if len(words) == 2 else None, create=False)
    path = Path(words[-1]).expanduser()
    if path.suffix not in (".md", ".ipynb"):
        raise ChatError(f"%chat export {path}: name a .md or an .ipynb file.")
    if not thread.messages:
        raise ChatError(f"thread {thread.name} is empty: nothing to export.")
    if path.suffix == ".md":
        text = export_markdown(thread)
    else:
        text = json.dumps(export_notebook(thread), indent=1, ensure_ascii=False)
    write_new(path, text, force="--force" in rest)
    return f"thread {thread.name} ({fmt.plural(thread.turns, 'turn')}) written to {path}"


def import_command(session: ChatSession, rest: list[str]) -> str:
    """`%chat import FILE.ipynb [--thread NAME] [--force]`: the line saying what was restored."""
    words = [w for w in rest if w != "--force"]
    name = None
    if "--thread" in words:
        at = words.index("--thread")
        if at + 1 >= len(words):
            raise ChatError("%chat import FILE.ipynb --thread NAME: name the thread.")
        name = words.pop(at + 1)
        words.pop(at)
    if len(words) != 1 or not words[0].endswith(".ipynb"):
        raise ChatError("%chat import FILE.ipynb [--thread NAME] [--force]")
    path = Path(words[0]).expanduser()
    found, turns = read_notebook(path)
    thread = session.restore(name or found, turns, replace="--force" in rest)
    return f"thread {thread.name}: {fmt.plural(thread.turns, 'turn')} from {path}"
