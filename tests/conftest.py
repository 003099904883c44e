"""Shared fixtures: an isolated environment, a real loopback server, a session, a shell.

And the rule CI runs under (`.ci/run` sets IPYCHAT_REQUIRE_ALL=1): a test that needs a real
component (the markers in REQUIRED_MARKERS) must run. Its skip is reported as a failure,
and so is a test module skipped whole at import, whose tests cannot be seen at all, so a
missing browser, model or server can never turn CI green by skipping.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipychat.core.providers import PROVIDERS
from ipychat.engine.cache import ResponseCache
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer

# The redis-server helper lives beside the engine's tests (tests/engine/redis_server.py,
# also used by benchmarks/): test folders are not packages, so its folder goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent / "engine"))

# A key that must never show up anywhere: tests search outputs and logs for it.
CANARY_KEY = "sk-canary-" + "Zx9" * 14

REQUIRE_ALL_ENV = "IPYCHAT_REQUIRE_ALL"
# Markers of tests that need a real component (registered in pyproject.toml).
REQUIRED_MARKERS = ("browser", "local_model", "redis", "dask")


def _require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_ENV, "").strip() not in ("", "0")


def _skip_reason(longrepr: object) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_report_header(config: pytest.Config) -> str | None:
    if _require_all():
        return f"{REQUIRE_ALL_ENV}=1: a skipped {'/'.join(REQUIRED_MARKERS)} test fails"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.skipped or hasattr(report, "wasxfail") or not _require_all():
        return report  # an expected failure (xfail) is not a skip
    needs = [name for name in REQUIRED_MARKERS if item.get_closest_marker(name)]
    if needs:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} needs {', '.join(needs)} and was skipped "
            f"({_skip_reason(report.longrepr)}); under {REQUIRE_ALL_ENV}=1 that is a "
            "failure: install what it needs (.ci/run does) or fix the test."
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.skipped and isinstance(collector, pytest.Module) and _require_all():
        report.outcome = "failed"
        report.longrepr = (
            f"{collector.nodeid} was skipped whole at import "
            f"({_skip_reason(report.longrepr)}); under {REQUIRE_ALL_ENV}=1 that is a "
            "failure, since the tests inside (browser, local model...) cannot be seen."
        )
    return report


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
        "AZURE_OPENAI_ENDPOINT",
        *(var for spec in PROVIDERS.values() for var in spec.key_vars),  # ANTHROPIC_API_KEY...
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A redis-server on 127.0.0.1 (random port, a password, nothing saved), stopped after
    the module (tests/engine/redis_server.py: the store's, the shared pace's, Dask's tests)."""
    from redis_server import EXECUTABLE, RedisServer

    if not os.path.exists(EXECUTABLE):
        pytest.skip("redis-server is not installed (apt install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


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
