"""Warming up at `%load_ext ipychat`, so that a kernel's first map is as quick as a later one.

A fresh kernel pays, on its first request or map, for things loaded on first use:

- the tokenizer of the model (`ipychat.core.tokens`: ~0.25 s to build o200k_base from the bundled
  file; a map counts every prompt it sends before sending any);
- the modules a request imports when it is made: the client (httpx) and its aiohttp
  transport (aiohttp also builds its TLS contexts on import), ~0.3 s together;
- the map engine (`ipychat.map.job` and its parts) and the cache's diskcache;
- the shipped price table (`ipychat.core.pricing`: read and checked on first use, ~0.1 s;
  a map looks up its model's price and context window before sending);
- the garbage collector's first full pass over what all this imported (pandas, aiohttp,
  tiktoken: hundreds of thousands of objects, ~0.1-0.2 s that the first map would
  otherwise pause for, holding the GIL, once its allocations trigger it).

`start(session)` does these in a daemon thread and returns at once: `%load_ext` is not
slowed, and the user's first cells run while it works (a map that starts before it is done
waits only for what is still loading; the encoding has a lock per file, imports a lock per
module, so nothing is loaded twice).

What it does not do, on purpose: nothing touches the network (no connection is opened, no
file downloaded: the encodings are bundled), no file or directory is created, and nothing
the user may still change is read to build state (the endpoint, the key, the cache
directory are read at first use, as before: a client or cache made now could be the wrong
one). A failure here is ignored: the first request pays the same cost as without the
warm-up, and reports any real problem itself.
"""

from __future__ import annotations

import gc
import importlib
import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipychat.session import ChatSession

__all__ = ["THREAD_NAME", "start", "warm"]

THREAD_NAME = "ipychat-warm-up"

# Imported by a first map or request, in this order (the cheap ones first).
_MODULES = ("ipychat.map.job", "ipychat.engine.cache", "ipychat.net.client")

_log = logging.getLogger("ipychat")


def warm(session: ChatSession) -> None:
    """Load what the first request and map of `session` would load (see the module doc)."""
    from ipychat.core import pricing, tokens

    tokens.warm([session.model])
    pricing.context_window(session.model)  # reads the shipped table (not the user's overrides)
    for name in _MODULES:
        importlib.import_module(name)
    from ipychat.net.transport import lean_aiohttp_transport

    lean_aiohttp_transport()  # imports aiohttp (and its TLS contexts) and httpx_aiohttp
    gc.collect()  # now, rather than in the first map (see the module docstring)


def _run(session: ChatSession) -> None:
    try:
        warm(session)
    except Exception:  # never into the shell: the first request pays, and says what is wrong
        _log.debug("ipychat warm-up failed; the first request loads what it needs", exc_info=True)


def start(session: ChatSession) -> threading.Thread:
    """Warm up in a daemon thread (started here, never joined by ipychat)."""
    thread = threading.Thread(target=_run, args=(session,), name=THREAD_NAME, daemon=True)
    thread.start()
    return thread
