"""Shared fixtures: an isolated environment, a real loopback server, a session, a shell."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ipychat.cache import ResponseCache
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer

# A key that must never show up anywhere: tests search outputs and logs for it.
CANARY_KEY = "sk-canary-" + "Zx9" * 14


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test reads the developer's keys, endpoint or cache."""
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_API_KEYS",
        "OPENAI_BASE_URL",
        "IPYCHAT_MODEL",
        "IPYCHAT_OFFLINE",
        "IPYCHAT_LOCAL_MODEL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def session(fake: FakeOpenAIServer, tmp_path) -> Iterator[ChatSession]:
    """The kernel session, pointed at the fake server, with a fresh cache."""
    s = ChatSession(
        Settings(base_url=fake.base_url, api_key=CANARY_KEY, model="gpt-4o-mini"),
        cache=ResponseCache(tmp_path / "cache"),
    )
    reset_session(s)
    yield s
    reset_session(None)


@pytest.fixture
def ip(session: ChatSession) -> Iterator[object]:
    """A real InteractiveShell with ipychat loaded against `session`."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ipychat")
    yield shell
    shell.run_line_magic("unload_ext", "ipychat")
    shell.config.pop("ChatMagics", None)  # %config lands in the shared shell's config
    for name in [
        n
        for n in shell.user_ns
        if not n.startswith("_") and n not in ("In", "Out", "exit", "quit", "get_ipython")
    ]:
        shell.user_ns.pop(name, None)
