"""`%load_ext ipychat` and `%unload_ext ipychat`: register the magics on one session, and
release what the session holds when unloaded."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any

from ipychat.core.errors import ChatError
from ipychat.notebook.magics import ChatMagics
from ipychat.session import ChatSession, reset_session

__all__ = ["load", "unload"]

_loaded: ChatMagics | None = None


def load(ipython: Any) -> None:
    """`%load_ext ipychat`: register the magics once (loading twice is harmless)."""
    global _loaded
    if _loaded is not None and _loaded.shell is ipython:
        return
    from ipychat.core.markdown import allow_remote_images
    from ipychat.notebook.filtermagic import ChatFilterMagics
    from ipychat.notebook.mapmagic import ChatMapMagics

    magics = ChatMagics(shell=ipython)
    allow_remote_images(magics.allow_remote_images)  # the configured value, or off
    ipython.register_magics(magics)
    # Both magics are views of the one session (%%chatmap rows are priced in %chat usage).
    ipython.register_magics(ChatMapMagics(shell=ipython, session=magics.session))
    ipython.register_magics(ChatFilterMagics(shell=ipython, session=magics.session))
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)  # so %config ChatMagics.x works
    magics.session.subscribe(magics.on_event)
    ipython.events.register("pre_run_cell", magics.note_cell)  # which cell a turn came from
    _loaded = magics
    _prestart_local(magics.session)
    from ipychat.notebook import warmup as _warmup

    _warmup.start(magics.session)  # the first map as quick as a later one (never blocks)


def _prestart_local(session: ChatSession) -> None:
    """Start the embedded model's server in the background if it is the endpoint, so the
    first %%chat does not wait for it (a failure is reported by that first request)."""
    try:
        if not session.is_local:
            return
    except ChatError:
        return
    from ipychat.engine import local

    def start() -> None:
        with contextlib.suppress(Exception):
            local.get_server()

    threading.Thread(target=start, name="ipychat-local-start", daemon=True).start()


def unload(ipython: Any) -> None:
    """`%unload_ext ipychat`: release the loop thread and the connections."""
    global _loaded
    if _loaded is not None:
        if _loaded in ipython.configurables:
            ipython.configurables.remove(_loaded)
        with contextlib.suppress(ValueError):  # registered by `load` on this shell
            ipython.events.unregister("pre_run_cell", _loaded.note_cell)
        for kind in ("line", "cell"):
            ipython.magics_manager.magics[kind].pop("chat", None)
        for name in ("chatmap", "chatfilter"):
            ipython.magics_manager.magics["cell"].pop(name, None)
        _loaded = None
    reset_session(None)
    from ipychat.core.markdown import allow_remote_images

    allow_remote_images(False)
    if "ipychat.engine.local" in sys.modules:  # never import it just to stop nothing
        sys.modules["ipychat.engine.local"].stop_server()
