"""pytest fixtures for testing code that talks to an OpenAI-compatible API.

Installed with ipychat (entry point `pytest11: ipychat`), so any project's tests can use:

    def test_my_notebook_helper(fake_openai):
        answer = my_helper(base_url=fake_openai.base_url, api_key=fake_openai.api_key)
        assert fake_openai.chat_requests[0].body["model"] == "gpt-4o-mini"

    @pytest.mark.fake_openai(reply="42", latency=0.05)
    def test_slow_server(fake_openai): ...

    def test_two_servers(fake_openai_factory):
        flaky = fake_openai_factory(fault_rate=0.5, seed=1)

    def test_env(fake_openai_env):  # OPENAI_BASE_URL / OPENAI_API_KEY point at the server
        ...

Every server a fixture starts is stopped at the end of the test, even when it fails.

pytest imports this module in every run of every project where ipychat is installed, so it
imports the server only when a fixture is used (`python -X importtime -c "import
ipychat.testing.pytest_plugin"` shows no httpx, asyncio server or pandas).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ipychat.testing.fake import FakeOpenAIServer

__all__ = ["fake_openai", "fake_openai_env", "fake_openai_factory"]


def pytest_configure(config: pytest.Config) -> None:
    # Registered so that `--strict-markers` projects can use the marker.
    config.addinivalue_line(
        "markers",
        "fake_openai(**options): FakeOpenAIServer options for the fake_openai fixture",
    )


@pytest.fixture
def fake_openai(request: pytest.FixtureRequest) -> Iterator[FakeOpenAIServer]:
    """A started FakeOpenAIServer; options come from `@pytest.mark.fake_openai(...)`."""
    marker = request.node.get_closest_marker("fake_openai")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    from ipychat.testing.fake import FakeOpenAIServer

    with FakeOpenAIServer(**options) as server:
        yield server


@pytest.fixture
def fake_openai_factory() -> Iterator[Callable[..., FakeOpenAIServer]]:
    """Call it with FakeOpenAIServer options to get more started servers."""
    from ipychat.testing.fake import FakeOpenAIServer

    servers: list[FakeOpenAIServer] = []

    def make(**options: Any) -> FakeOpenAIServer:
        server = FakeOpenAIServer(**options)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def fake_openai_env(
    fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> FakeOpenAIServer:
    """`fake_openai`, with OPENAI_BASE_URL and OPENAI_API_KEY set for code that reads them."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", fake_openai.api_key)
    return fake_openai
