"""ipychat: talk to LLMs from Jupyter.

`%load_ext ipychat` registers the `%%chat`, `%chat` and `%%chatmap` magics. Importing
this package is cheap: the magics, httpx, tiktoken and pandas load where first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = [
    "__version__",
    "get_session",
    "image",
    "load_ipython_extension",
    "panel",
    "unload_ipython_extension",
]

if TYPE_CHECKING:
    from ipychat.core.images import Image
    from ipychat.notebook.widget import ChatPanel
    from ipychat.session import ChatSession


def get_session() -> ChatSession:
    """The one ChatSession of this kernel (created on first use)."""
    from ipychat.session import get_session as _get

    return _get()


def image(source: Any, *, detail: str | None = None) -> Image:
    """An image for a prompt: `{img}` in %%chat, a column in %%chatmap. `source` is a path
    to a PNG, JPEG, GIF or WebP file, its bytes, a PIL image or a matplotlib Figure (a Figure
    or a PIL image also works as `{fig}` directly). `detail`: "low", "high" or "auto"."""
    from ipychat.core.images import image as _image

    return _image(source, detail=detail)


def panel() -> ChatPanel:
    """The chat panel: an ipywidgets view of the kernel session (display it, or leave it as
    the last expression of a cell)."""
    from ipychat.notebook.widget import panel as _panel

    return _panel(get_session())


def load_ipython_extension(ipython: Any) -> None:
    from ipychat.notebook.extension import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from ipychat.notebook.extension import unload

    unload(ipython)
