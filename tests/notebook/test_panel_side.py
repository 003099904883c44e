"""`%chat panel --side`: the panel in a sidecar (JupyterLab's right-hand sidebar), through a
real InteractiveShell. How it looks docked is tests/notebook/test_browser.py's to show."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.testing import FakeOpenAIServer

WIDGET = "application/vnd.jupyter.widget-view+json"


def _commands(ip: Any) -> Any:
    return ip.magics_manager.registry["ChatMagics"].commands


def test_side_docks_the_panel_in_a_sidecar(ip: Any, fake: FakeOpenAIServer) -> None:
    from sidecar import Sidecar

    ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
    with capture_output() as out:
        ip.run_line_magic("chat", "panel --side")
    commands = _commands(ip)
    side, panel = commands.sidebar, commands.panel
    assert isinstance(side, Sidecar) and side.anchor == "right" and side.title == "ipychat"
    # What the cell itself shows: a line saying where the panel went (a kernel routes the
    # panel's own view into the sidecar; this shell has no kernel, so it is captured here).
    notes = [o.data["text/plain"] for o in out.outputs if WIDGET not in o.data]
    assert notes == ["The chat panel is in the right-hand sidebar."]
    views = [o.data[WIDGET]["model_id"] for o in out.outputs if WIDGET in o.data]
    assert views == [panel.model_id]

    with capture_output():
        ip.run_line_magic("chat", "panel")  # back in the notebook: the sidebar goes away
    assert side.comm is None and panel.comm is None
    assert commands.sidebar is None and commands.panel is not panel
    # Each panel asks the endpoint for its models in the background: let those finish before
    # the fixture closes the session.
    _wait(lambda: "fake-model" in commands.panel.model.options)
    assert fake.chat_requests == []


def _wait(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_without_sidecar_it_says_what_to_install(
    ip: Any, fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
    monkeypatch.setitem(sys.modules, "sidecar", None)  # `import sidecar` raises ImportError
    with capture_output() as out, pytest.raises(UsageError, match=r"pip install sidecar"):
        ip.run_line_magic("chat", "panel --side")
    assert out.outputs == [] and _commands(ip).panel is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("panel --sdie", r"^%chat panel: unknown option --sdie \(did you mean --side\?\)"),
        ("panel left", r"^%chat panel \[--side\]$"),
    ],
)
def test_a_wrong_word_after_panel_is_one_line(
    ip: Any, fake: FakeOpenAIServer, line: str, message: str
) -> None:
    ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("chat", line)
    assert _commands(ip).panel is None
