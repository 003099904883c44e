"""The progress of a map (`%%chatmap`, `%chat batch resume`): a widget bar, or a text line.

ipywidgets is imported only when a notebook shows the bar; a terminal gets a text line.
"""

from __future__ import annotations

import html
import re
import sys
import time
from typing import Any

__all__ = ["ProgressView"]

# A terminal progress line is rewritten at most this often (a notebook widget every tick).
_TEXT_EVERY = 1.0


class ProgressView:
    """`612/788 · 41 rows/s · ETA 4 s · 0 errors · $0.0071`: a widget bar, or a text line.

    In a notebook the bar is a live widget while the map runs; when it ends the widget's
    output is replaced (through its display id) by a static summary in HTML and text, so a
    saved, exported or reopened notebook shows how the map went instead of "Error displaying
    widget: model not found" or `HBox(children=(IntProgress(...`.
    """

    def __init__(self, *, notebook: bool) -> None:
        self.notebook = notebook
        self._bar: Any = None
        self._label: Any = None
        self._box: Any = None
        self._handle: Any = None
        self._progress: Any = None  # the last snapshot shown
        self._last = 0.0
        self._shown = False

    def plan(self, plan: Any) -> None:
        from ipychat.notebook.display import show_markdown

        line = plan.line()
        show_markdown(f"`{line}`" if self.notebook else line, notebook=self.notebook, plain=line)

    def update(self, progress: Any) -> None:
        if progress.total == 0:
            return
        self._progress = progress
        if self.notebook and self._widget(progress.total):
            self._bar.value = progress.done
            self._label.value = f"<code>{html.escape(progress.line())}</code>"
            return
        now = time.monotonic()
        if now - self._last >= _TEXT_EVERY or progress.done == progress.total:
            self._last = now
            sys.stdout.write(f"\r{progress.line()}   ")
            sys.stdout.flush()
            self._shown = True

    def _widget(self, total: int) -> bool:
        if self._bar is None:
            try:
                import ipywidgets as widgets
                from IPython.display import display
            except ImportError:
                self.notebook = False
                return False
            self._bar = widgets.IntProgress(min=0, max=total, bar_style="info")
            self._label = widgets.HTML()
            self._box = widgets.HBox([self._bar, self._label])
            bundle = self._box._repr_mimebundle_()
            bundle["text/plain"] = f"map in progress: 0/{total:,}"
            self._handle = display(bundle, raw=True, display_id=True)
        self._bar.max = total
        return True

    def finish(self, ok: bool) -> None:
        if self._handle is not None:
            self._handle.update(self._static(ok), raw=True)
            for widget in (self._bar, self._label, self._box):
                widget.close()  # the output no longer shows them: free their comms
            self._handle = self._bar = self._label = self._box = None
        if self._shown:
            sys.stdout.write("\n")
            sys.stdout.flush()

    def _static(self, ok: bool) -> dict[str, str]:
        """The finished bar as HTML (a native <progress>, amounts in <code> so they are
        never typeset) and as text."""
        p = self._progress
        done = re.sub(r" · ETA [^·]*·", " ·", p.line())  # no ETA once it has ended
        line = f"{'map finished' if ok else 'map stopped'}: {done}"
        color = "var(--jp-success-color1, #388e3c)" if ok else "var(--jp-warn-color1, #f57c00)"
        return {
            "text/html": (
                f"<progress value='{p.done}' max='{p.total}' style='accent-color: {color}'>"
                f"</progress> <code>{html.escape(line)}</code>"
            ),
            "text/plain": line,
        }
