"""The chat panel end to end: a real JupyterLab, a real kernel, headless Chromium.

JupyterLab runs on 127.0.0.1 with a temporary notebook; its kernel (a separate process)
reaches the in-test FakeOpenAIServer through OPENAI_BASE_URL. Playwright drives Debian's
Chromium (never a downloaded browser; see ../shared/RECIPES.md). Everything is stopped in
`finally` blocks, also when an assertion fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipychat.testing import FakeOpenAIServer

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "ipychat-browser-test"
PANEL_PROMPT = "Tell me about the panel"
CELL_PROMPT = "Hello from a chat cell"

if not Path(CHROMIUM).exists() or shutil.which("jupyter-lab") is None:
    pytest.skip("needs Debian's chromium and jupyterlab", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _notebook() -> dict[str, Any]:
    def cell(source: str) -> dict[str, Any]:
        return {
            "cell_type": "code",
            "execution_count": None,
            "id": f"c{abs(hash(source)) % 10**8}",
            "metadata": {},
            "outputs": [],
            "source": source,
        }

    return {
        "cells": [
            cell("%load_ext ipychat"),
            cell("%chat panel"),
            cell(f"%%chat\n{CELL_PROMPT}"),
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _isolated_env(home: Path, fake: FakeOpenAIServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IPYCHAT_"))}
    dirs = {
        "HOME": home,
        "JUPYTER_CONFIG_DIR": home / "config",
        "JUPYTER_DATA_DIR": home / "data",
        "JUPYTER_RUNTIME_DIR": home / "runtime",
        "IPYTHONDIR": home / "ipython",
        "JUPYTERLAB_SETTINGS_DIR": home / "settings",
        "JUPYTERLAB_WORKSPACES_DIR": home / "workspaces",
        "IPYCHAT_CACHE_DIR": home / "cache",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env.update({k: str(v) for k, v in dirs.items()})
    # The kernel inherits this environment: it finds the fake server and this checkout.
    env["OPENAI_BASE_URL"] = fake.base_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    settings = home / "settings"
    for name, value in (
        (
            "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
            {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
        ),
        ("@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings", {"enabled": False}),
    ):
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    return env


class Lab:
    """A JupyterLab server in its own process group."""

    def __init__(self, root: Path, home: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "lab.log"
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={TOKEN}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"jupyter-lab exited:\n{self.log()}")
        try:
            self.api("/api/status")
            return True
        except OSError:
            return False

    def kernel_idle(self) -> bool:
        sessions = self.api("/api/sessions")
        return bool(sessions) and all(s["kernel"]["execution_state"] == "idle" for s in sessions)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.api("/api/shutdown", method="POST")  # also stops the kernels
                self.process.wait(10)
        except Exception:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self._log.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Lab, FakeOpenAIServer]]:
    # Slow enough that the reply is seen while it streams (about 1.5 s for the panel's).
    with FakeOpenAIServer(tokens_per_second=8, models=("gpt-4o-mini", "fake-model")) as fake:
        root, home = tmp_path / "root", tmp_path / "home"
        root.mkdir()
        (root / "panel.ipynb").write_text(json.dumps(_notebook()))
        server = Lab(root, home, _isolated_env(home, fake))
        try:
            _wait(server.ready, "jupyter-lab to answer /api/status", timeout=30)
            yield server, fake
        finally:
            server.stop()


def test_panel_in_jupyterlab(lab: tuple[Lab, FakeOpenAIServer]) -> None:
    server, fake = lab
    ARTIFACTS.mkdir(exist_ok=True)
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.on("websocket", lambda ws: requests.append(ws.url))
            try:
                _drive(page, server)
            finally:
                page.screenshot(path=str(ARTIFACTS / "notebook.png"))
        finally:
            browser.close()

    origin = (f"http://127.0.0.1:{server.port}/", f"ws://127.0.0.1:{server.port}/")
    strays = [u for u in requests if not u.startswith((*origin, "data:", "blob:"))]
    assert not strays, f"the browser went elsewhere: {strays[:5]}"
    assert [r.body["messages"][-1]["content"] for r in fake.chat_requests] == [
        PANEL_PROMPT,
        CELL_PROMPT,
    ]
    # The %%chat cell continued the thread the panel wrote to.
    assert len(fake.chat_requests[1].body["messages"]) == 3
    assert "Traceback" not in server.log(), server.log()


def _drive(page: Any, server: Lab) -> None:
    page.goto(f"{server.url}/lab/tree/panel.ipynb?token={TOKEN}")
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    cells.nth(2).wait_for(timeout=30_000)
    page.locator(
        '.jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status="idle"]'
    ).wait_for(timeout=30_000)
    _wait(server.kernel_idle, "the kernel to start")

    def run_cell(index: int) -> None:
        cells.nth(index).locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")

    run_cell(0)
    _wait(server.kernel_idle, "%load_ext")
    run_cell(1)
    panel = page.locator(".ipychat-panel")
    panel.wait_for(timeout=20_000)

    # The estimate follows the prompt as it is typed.
    estimate = panel.locator(".ipychat-estimate")
    prompt = panel.locator(".ipychat-prompt textarea")
    prompt.press_sequentially("Tell me", delay=20)
    first = _wait(lambda: "tokens" in estimate.inner_text() and estimate.inner_text(), "estimate")
    prompt.press_sequentially(" about the panel", delay=20)
    _wait(lambda: estimate.inner_text() not in ("", first), "the estimate to change")
    assert prompt.input_value() == PANEL_PROMPT

    # Send: the reply streams in (seen half-written) while the kernel stays idle.
    panel.locator(".ipychat-send").click()
    transcript = panel.locator(".ipychat-transcript")
    _wait(lambda: "streaming" in transcript.inner_text(), "the reply to start streaming")
    assert server.kernel_idle(), "sending from the panel must not keep the kernel busy"
    reply = f"Echo: {PANEL_PROMPT}"
    _wait(lambda: reply in transcript.inner_text(), "the panel's reply")
    _wait(lambda: "thread main (1 turn)" in transcript.inner_text(), "the reply's footer")
    assert "spent $" in panel.locator(".ipychat-spend").inner_text()

    # A %%chat cell shows up in the panel too, on the same thread.
    run_cell(2)
    _wait(
        lambda: f"Echo: {CELL_PROMPT}" in transcript.inner_text(), "the cell's reply in the panel"
    )
    _wait(lambda: "thread main (2 turns)" in transcript.inner_text(), "the cell reply's footer")
    _wait(server.kernel_idle, "the cell to finish")
    assert not panel.locator(".ipychat-error").inner_text().strip()

    # A new draft is estimated with the two turns it would carry along.
    prompt.press_sequentially("Now compare the two replies in one line", delay=5)
    _wait(lambda: "with history" in estimate.inner_text(), "the estimate with history")
    assert estimate.inner_text().count("$") == 2, "dollar amounts must not be typeset as math"
    panel.scroll_into_view_if_needed()
    panel.screenshot(path=str(ARTIFACTS / "panel.png"))
