"""`%chat panel --side`: the panel docked in JupyterLab's right-hand sidebar.

Docking is done the ipywidgets way, with PyPI's `sidecar` (jupyter-widgets/jupyterlab-sidecar):
a `Sidecar` is an Output widget whose view JupyterLab opens in its right-hand area
(`anchor="right"`, the default), and what is displayed inside it shows there. The panel
stays beside the notebook while the user scrolls, as jupyter-ai's chat does. sidecar is
optional: it is imported only here, when asked for.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError

__all__ = ["dock"]

TITLE = "ipychat"


def dock(widget: Any) -> Any:
    """Show `widget` in a new sidebar; returns the Sidecar (close it to undock)."""
    try:
        from sidecar import Sidecar
    except ImportError:
        raise UsageError(
            "%chat panel --side needs the sidecar package: pip install sidecar, then restart "
            "the kernel and reload the page (or use %chat panel)."
        ) from None
    from IPython.display import display

    side = Sidecar(title=TITLE, anchor="right")
    with side:
        display(widget)
    return side
