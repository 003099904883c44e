"""Showing replies in a cell: live Markdown in a notebook, plain text in a terminal.

Every output carries a readable text/plain next to its Markdown or HTML, so exported
notebooks (`jupyter nbconvert --to markdown`, text viewers) read well. The Markdown itself
goes through ipychat.core.markdown: ipychat's own lines with every `$` shown as written, replies
with currency shown as written, LaTeX kept and nothing remote fetched.

One of the two modules (with magics.py) that import IPython.
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any

from IPython.display import clear_output, display

from ipychat.core import format as fmt
from ipychat.core.markdown import escape_dollars, reply_markdown

__all__ = ["LiveReply", "in_notebook", "show_markdown", "show_prompt", "show_rendered"]

# At most this many display updates a second while streaming: more only costs the front end.
REFRESH_HZ = 20


def in_notebook(shell: Any) -> bool:
    """True under a kernel with a rich front end (Jupyter), False in terminal IPython."""
    return getattr(shell, "kernel", None) is not None


def _footer_md(footer: str) -> str:
    return f"\n\n{fmt.footer_markdown(footer)}" if footer else ""


def _footer_text(footer: str) -> str:
    return f"\n\n[{footer}]" if footer else ""


class LiveReply:
    """A reply that grows while it streams and is re-rendered at most REFRESH_HZ times a second."""

    def __init__(self, *, notebook: bool, code: bool = False, quiet: bool = False) -> None:
        self.notebook = notebook
        self.code = code  # -f text: show as preformatted text rather than Markdown
        self.quiet = quiet  # `%%chat ... ;`: show nothing
        self._handle: Any = None
        self._last = 0.0
        self._printed = 0

    def _body(self, text: str, footer: str) -> dict[str, str]:
        plain = text + _footer_text(footer)
        if self.code:
            body = f"<pre>{html.escape(text)}</pre><sub><code>{html.escape(footer)}</code></sub>"
            return {"text/html": body, "text/plain": plain}
        return {"text/markdown": reply_markdown(text) + _footer_md(footer), "text/plain": plain}

    def due(self) -> bool:
        """Whether the next update would be shown (a terminal shows every one)."""
        return not self.notebook or time.monotonic() - self._last >= 1 / REFRESH_HZ

    def update(self, text: str, footer: str, *, force: bool = False) -> None:
        if self.quiet:
            return
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
            self._handle = display(self._body(text, footer), raw=True, display_id=True)
        else:
            self._handle.update(self._body(text, footer), raw=True)

    def hand_over(self) -> None:
        """The cell's result is about to show the whole reply: clear the live display when
        it arrives (`wait=True`: no flicker between the two). Only the Reply stays in the
        saved notebook, as the cell's execute_result with its metadata."""
        if self._handle is not None:
            clear_output(wait=True)

    def finish(self, text: str, footer: str) -> None:
        if self.quiet:
            return
        if not self.notebook:
            if self._printed == 0 and text:
                sys.stdout.write(text)
            sys.stdout.write(f"\n\n[{footer}]\n")
            sys.stdout.flush()
            return
        self.update(text, footer, force=True)


def show_markdown(text: str, *, notebook: bool, plain: str | None = None) -> None:
    """ipychat's own text (usage, budgets, summaries, notes): every `$` shown as written."""
    if notebook:
        show_rendered(escape_dollars(text), plain if plain is not None else text)
    else:
        print(plain if plain is not None else text)


def show_rendered(markdown: str, plain: str) -> None:
    """Markdown already made safe (ipychat.core.markdown), with its text/plain."""
    display({"text/markdown": markdown, "text/plain": plain}, raw=True)


def show_prompt(
    text: str,
    spans: tuple[tuple[int, int], ...],
    summary: str,
    *,
    notebook: bool,
    notes: tuple[str, ...] = (),
) -> None:
    """--dry-run: the rendered prompt with interpolated values highlighted, its estimate, and
    what was sent for each DataFrame (`{big}: 1,000 × 8 DataFrame as a summary; …`)."""
    if not notebook:
        print(text)
        print(f"\n[{summary}]")
        for note in notes:
            print(note)
        return
    pieces, last = [], 0
    for start, end in spans:
        pieces.append(html.escape(text[last:start]))
        pieces.append(f"<mark>{html.escape(text[start:end])}</mark>")
        last = end
    pieces.append(html.escape(text[last:]))
    body = "".join(pieces)
    # Amounts inside <code>/<pre>: MathJax skips those when it typesets HTML output.
    lines = "".join(f"<br><sub><code>{html.escape(note)}</code></sub>" for note in notes)
    plain = "\n".join([text, "", f"[{summary}]", *notes])
    display(
        {
            "text/html": f"<pre style='white-space: pre-wrap'>{body}</pre>"
            f"<sub><code>{html.escape(summary)}</code></sub>{lines}",
            "text/plain": plain,
        },
        raw=True,
    )
