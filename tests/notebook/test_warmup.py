"""`%load_ext ipychat` warms up (ipychat.notebook.warmup): the first-use imports before it
returns, the tokenizer in a daemon thread; the shell never waits for the thread, nor hears
of either's failures. Real IPython InteractiveShell; timings are for benchmarks/coldstart.py."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from ipychat.core import pricing, tokens
from ipychat.notebook import warmup as _warmup
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[2]


def _warm_up_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == _warmup.THREAD_NAME]


@pytest.fixture
def shell(session: ChatSession) -> Any:
    """The shared InteractiveShell, ipychat unloaded after the test (loading is the test)."""
    for thread in _warm_up_threads():  # one a previous test's shell may have left
        thread.join(30)
    ip = InteractiveShell.instance()
    yield ip
    ip.run_line_magic("unload_ext", "ipychat")
    for thread in _warm_up_threads():
        thread.join(30)


def test_load_ext_loads_the_tokenizer_in_a_background_thread(
    shell: Any, session: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "_encodings", {})  # as in a fresh kernel: nothing loaded
    pricing._package_data.cache_clear()  # the shipped price table too
    table = pricing.default_table()
    monkeypatch.setattr(table, "_table", None)
    monkeypatch.setattr(table, "_memo", (table._overrides, {}))  # no lookup made yet
    collections: list[int] = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or real_collect(*a))
    started: list[threading.Thread] = []
    real_start = _warmup.start
    monkeypatch.setattr(_warmup, "start", lambda s: started.append(real_start(s)) or started[-1])
    shell.run_line_magic("load_ext", "ipychat")
    assert len(started) == 1
    thread = started[0]
    assert thread.name == _warmup.THREAD_NAME and thread.daemon
    assert thread is not threading.current_thread()
    thread.join(60)
    assert not thread.is_alive()
    name, _ = tokens.encoding_name_for(session.model)
    assert name in tokens._encodings  # loaded by the thread: the first map will not wait
    assert pricing.default_table()._table is not None  # a map looks up its price
    assert collections  # the full pass over what it imported, not in the first map
    for module in ("ipychat.map.job", "ipychat.net.client", "ipychat.engine.cache", "aiohttp"):
        assert module in sys.modules
    # Nothing the user may still change was turned into state: no client, no cache opened.
    assert session.engine.current_client is None and not session.engine.cache_opened


def test_load_ext_returns_while_the_warm_up_is_still_working(
    shell: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, entered = threading.Event(), threading.Event()

    def slow_warm(session: ChatSession) -> None:
        entered.set()
        release.wait(30)

    monkeypatch.setattr(_warmup, "warm", slow_warm)
    shell.run_line_magic("load_ext", "ipychat")
    # load_ext is back, the magics work, and the warm-up has not finished (it cannot yet).
    assert entered.wait(10)
    [thread] = _warm_up_threads()
    assert thread.is_alive() and not release.is_set()
    assert "chatmap" in shell.magics_manager.magics["cell"]
    release.set()
    thread.join(30)
    assert not thread.is_alive()


def test_a_failing_warm_up_never_reaches_the_shell(
    shell: Any,
    fake: FakeOpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(models: Any, **options: Any) -> None:
        raise RuntimeError("the tokenizer file is unreadable")

    uncaught: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    monkeypatch.setattr(tokens, "warm", broken)
    with caplog.at_level(logging.DEBUG, logger="ipychat"), capture_output() as out:
        shell.run_line_magic("load_ext", "ipychat")
        for thread in _warm_up_threads():
            thread.join(30)
    assert uncaught == [] and out.stdout == "" and out.stderr == ""
    assert "warm-up failed" in caplog.text and "tokenizer file is unreadable" in caplog.text
    # The first map loads what it needs itself.
    shell.user_ns["df"] = pd.DataFrame({"text": ["a", "b"]})
    with capture_output():
        shell.run_cell_magic("chatmap", "df -o out", "{text}")
    assert shell.user_ns["df"]["out"].tolist() == ["Echo: a", "Echo: b"]


def test_import_ipychat_loads_none_of_what_the_warm_up_loads() -> None:
    code = (
        "import json, sys, threading, ipychat; "
        "print(json.dumps([sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tiktoken', 'aiohttp', 'httpx', 'diskcache', 'pandas', 'IPython'}), "
        "[t.name for t in threading.enumerate()]]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    modules, threads = json.loads(out.stdout)
    assert modules == [] and threads == ["MainThread"]  # only %load_ext starts the warm-up


def test_load_ext_has_loaded_what_a_first_map_needs_to_send_when_it_returns() -> None:
    # A fresh process, the warm-up thread left out: what is loaded when %load_ext returns
    # was loaded by %load_ext itself (a map in the next cell finds it there).
    code = (
        "import json, os, sys; os.environ['OPENAI_API_KEY'] = 'sk-none'; "
        "from IPython.core.interactiveshell import InteractiveShell; "
        "from ipychat.notebook import warmup; warmup._run = lambda session: None; "
        "shell = InteractiveShell.instance(); before = set(sys.modules); "
        "shell.run_line_magic('load_ext', 'ipychat'); "
        "from ipychat.core import pricing; "
        "print(json.dumps([sorted(m for m in ('aiohttp', 'httpx', 'httpx_aiohttp', "
        "'ipychat.map.job', 'ipychat.net.client', 'ipychat.engine.cache') "
        "if m in sys.modules and m not in before), "
        "pricing.default_table()._table is not None]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IPYTHONDIR": str(ROOT / ".no-ipython-dir")}
    env.pop("IPYCHAT_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    modules, priced = json.loads(out.stdout.strip().splitlines()[-1])
    expected = ["aiohttp", "httpx", "httpx_aiohttp", "ipychat.engine.cache"]
    assert modules == sorted([*expected, "ipychat.map.job", "ipychat.net.client"])
    assert priced  # the shipped price table read: a map looks up its model's price


def test_a_failing_preparation_never_reaches_the_shell(
    shell: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(session: ChatSession) -> None:
        raise RuntimeError("aiohttp is broken")

    monkeypatch.setattr(_warmup, "prepare", broken)
    monkeypatch.setattr(_warmup, "_run", lambda session: None)
    with caplog.at_level(logging.DEBUG, logger="ipychat"), capture_output() as out:
        shell.run_line_magic("load_ext", "ipychat")
    assert out.stdout == "" and out.stderr == ""
    assert "warm-up failed" in caplog.text and "aiohttp is broken" in caplog.text
    assert "chatmap" in shell.magics_manager.magics["cell"]
