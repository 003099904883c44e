"""Showing replies in a cell: live Markdown in a notebook, plain text in a terminal.

One of the two modules (with magics.py) that import IPython.
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any

from IPython.display import HTML, Markdown, display

__all__ = ["LiveReply", "in_notebook", "show_markdown", "show_prompt"]

# At most this many display updates a second while streaming: more only costs the front end.
REFRESH_HZ = 20


def in_notebook(shell: Any) -> bool:
    """True under a kernel with a rich front end (Jupyter), False in terminal IPython."""
    return getattr(shell, "kernel", None) is not None


def _footer_md(footer: str) -> str:
    return f"\n\n<sub>`{footer}`</sub>" if footer else ""


class LiveReply:
    """A reply that grows while it streams and is re-rendered at most REFRESH_HZ times a second."""

    def __init__(self, *, notebook: bool, code: bool = False) -> None:
        self.notebook = notebook
        self.code = code  # -f text: show as preformatted text rather than Markdown
        self._handle: Any = None
        self._last = 0.0
        self._printed = 0

    def _body(self, text: str, footer: str) -> Any:
        if self.code:
            return HTML(
                f"<pre>{html.escape(text)}</pre><sub><code>{html.escape(footer)}</code></sub>"
            )
        return Markdown(text + _footer_md(footer))

    def due(self) -> bool:
        """Whether the next update would be shown (a terminal shows every one)."""
        return not self.notebook or time.monotonic() - self._last >= 1 / REFRESH_HZ

    def update(self, text: str, footer: str, *, force: bool = False) -> None:
        if not self.notebook:
            sys.stdout.write(text[self._printed :])  # a terminal shows the deltas as they come
            sys.stdout.flush()
            self._printed = len(text)
            return
        now = time.monotonic()
        if not force and now - self._last < 1 / REFRESH_HZ:
            return
        self._last = now
        if self._handle is None:
            self._handle = display(self._body(text, footer), display_id=True)
        else:
            self._handle.update(self._body(text, footer))

    def finish(self, text: str, footer: str) -> None:
        if not self.notebook:
            if self._printed == 0 and text:
                sys.stdout.write(text)
            sys.stdout.write(f"\n\n[{footer}]\n")
            sys.stdout.flush()
            return
        self.update(text, footer, force=True)


def show_markdown(text: str, *, notebook: bool) -> None:
    if notebook:
        display(Markdown(text))
    else:
        print(text)


def show_prompt(
    text: str, spans: tuple[tuple[int, int], ...], summary: str, *, notebook: bool
) -> None:
    """--dry-run: the rendered prompt with interpolated values highlighted, and its estimate."""
    if not notebook:
        print(text)
        print(f"\n[{summary}]")
        return
    pieces, last = [], 0
    for start, end in spans:
        pieces.append(html.escape(text[last:start]))
        pieces.append(f"<mark>{html.escape(text[start:end])}</mark>")
        last = end
    pieces.append(html.escape(text[last:]))
    body = "".join(pieces)
    display(
        HTML(
            f"<pre style='white-space: pre-wrap'>{body}</pre><sub><code>{html.escape(summary)}</code></sub>"
        )
    )
