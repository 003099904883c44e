"""Reliability suite (issue 10): faults, soak, interrupts, bad input, secrets, a real kernel.

Every test records what it saw in `_support.TALLY`; `pytest_terminal_summary` prints it as
the table the issue asks for, whenever any test of this folder ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import TALLY, Tally, make_session

from ipychat.session import ChatSession, reset_session
from ipychat.testing import FakeOpenAIServer


@pytest.fixture(scope="session")
def tally() -> Tally:
    return TALLY


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
