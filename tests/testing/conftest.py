"""Fixtures of the FakeOpenAIServer tests (helpers are in `_wire`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _wire import HTTP

from ipychat.testing import FakeOpenAIServer


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as s:
        yield s


@pytest.fixture(scope="session", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()
