"""Reliability suite (issue 10): faults, soak, interrupts, bad input, secrets, a real kernel.

Every test records what it saw in `_support.TALLY`; `pytest_terminal_summary` prints it as
the table the issue asks for, whenever any test of this folder ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import TALLY, Tally, ipychat_threads, make_session, wait_for

from ipychat.session import ChatSession, reset_session
from ipychat.testing import FakeOpenAIServer


@pytest.fixture(scope="session")
def tally() -> Tally:
    return TALLY


@pytest.fixture(autouse=True)
def _no_stray_loop_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test leaves no session loop thread behind (a closed session's loop must stay shut)."""

    def loops() -> int:
        return ipychat_threads().count("ipychat-loop")

    before = loops()
    yield
    TALLY.leak_checks += 1
    if not wait_for(lambda: loops() <= before, timeout=3):
        TALLY.leaks.append(f"{request.node.name}: {loops() - before} loop thread(s) left")
        pytest.fail(f"{loops() - before} ipychat loop thread(s) left running after the test")


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as s:
        yield s


@pytest.fixture
def rsession(server: FakeOpenAIServer, tmp_path: Path) -> Iterator[ChatSession]:
    """A session on `server` with the canary key, one retry and a 1 s read timeout."""
    session = make_session(server.base_url, tmp_path / "cache")
    yield session
    reset_session(None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY.used:
        return
    terminalreporter.section("ipychat reliability summary")
    for line in TALLY.lines():
        terminalreporter.write_line(line)
