"""Warming up at `%load_ext ipychat`, so that a kernel's first map is as quick as a later one.

A fresh kernel pays, on its first request or map, for things loaded on first use:

- the modules a request imports when it is made: the map engine (`ipychat.map.job` and
  its parts), the cache's diskcache, the client (httpx) and its aiohttp transport (aiohttp
  also builds its TLS contexts on import) with the TLS context it uses (`ipychat.net.tls`:
  the CA bundle read once per process): ~0.25 s together, all needed before a map's first
  request;
- the shipped price table (`ipychat.core.pricing`: read and checked on first use, ~0.1 s;
  a map looks up its model's price and context window before sending);
- the garbage collector's first full pass over what all this imported (pandas, aiohttp,
  tiktoken: hundreds of thousands of objects, ~0.1-0.2 s that the first map would
  otherwise pause for, holding the GIL, once its allocations trigger it);
- the tokenizer of the model (`ipychat.core.tokens`: ~0.5 s of CPU to build o200k_base from
  the bundled file, ~0.3 s of it one call that holds the GIL).

`start(session)` does the first three at once, in `%load_ext` (~0.3 s on two idle cores),
and the tokenizer in a daemon thread. A thread cannot load the first three sooner than a
map needs them: in a notebook run top to bottom the first map comes straight after
`%load_ext`, and would wait for them while competing with the thread for the GIL (a first
map 0.4-0.5 s slower than a later one). So they are paid where users expect a set-up
cost. The tokenizer a map does not need to send (ipychat.map.counting: it sends with byte
bounds while the encoding is not loaded), so it is built in the thread, only in a quiet
moment, when no map runs (`ipychat.core.foreground`): built during one, it would only
slow it down.

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

__all__ = ["THREAD_NAME", "prepare", "start", "warm"]

THREAD_NAME = "ipychat-warm-up"

# Imported by a first map or request, in this order (the cheap ones first).
_MODULES = (
    "ipychat.map.job",
    "ipychat.map.dask",  # only its frame check: dask itself is not imported
    "ipychat.engine.cache",
    "ipychat.engine.stores.counted",
    "ipychat.engine.send",
    "ipychat.net.client",
)

_log = logging.getLogger("ipychat")


def prepare(session: ChatSession) -> None:
    """What a first map needs before its first request (see the module doc): imported and
    read now, so that the map finds them loaded."""
    from ipychat.core import pricing
    from ipychat.net import tls

    for name in _MODULES:
        importlib.import_module(name)
    from ipychat.net.transport import lean_aiohttp_transport

    lean_aiohttp_transport()  # imports aiohttp (and its TLS contexts) and httpx_aiohttp
    tls.default_context()  # reads the CA bundle: every client's transport shares it
    pricing.context_window(session.model)  # reads the shipped table (not the user's overrides)
    gc.collect()  # now, rather than in the first map (see the module docstring)


def warm(session: ChatSession) -> None:
    """Load what the first request and map of `session` would load (see the module doc)."""
    from ipychat.core import tokens

    prepare(session)  # already done by `start`: a no-op then
    tokens.warm([session.model], when_idle=True)  # not while a map runs (core.foreground)


def _run(session: ChatSession) -> None:
    try:
        warm(session)
    except Exception:  # never into the shell: the first request pays, and says what is wrong
        _log.debug("ipychat warm-up failed; the first request loads what it needs", exc_info=True)


def start(session: ChatSession) -> threading.Thread:
    """Prepare now (never raising into the shell), then warm the rest in a daemon thread
    (started here, never joined by ipychat)."""
    try:
        prepare(session)
    except Exception:  # the first request pays, and says what is wrong
        _log.debug("ipychat warm-up failed; the first request loads what it needs", exc_info=True)
    thread = threading.Thread(target=_run, args=(session,), name=THREAD_NAME, daemon=True)
    thread.start()
    return thread
