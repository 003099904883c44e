"""Fixtures of the map's tests: sessions on a FakeOpenAIServer, and real components (a Dask
cluster, a redis-server).

`make_session(server, cache=None, **settings)`: a session on that server (model
gpt-4o-mini unless given) with a cache of its own, or the cache folder `cache` names
(the same name: the same folder, as a kernel restarted), closed after the test.

`dask_client`: a `distributed.Client` on a `LocalCluster` with two worker processes (one thread each), started
once per module and closed after it, its workers spawned without the developer's keys or
endpoint (the same names `_isolated_env` clears). `redis_server`: tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipychat.engine.cache import ResponseCache
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer

KEY = "sk-test-" + "k" * 20


@pytest.fixture
def make_session(tmp_path: Path) -> Iterator[Callable[..., ChatSession]]:
    made: list[ChatSession] = []

    def make(server: FakeOpenAIServer, cache: str | None = None, **settings: Any) -> ChatSession:
        settings = {"model": "gpt-4o-mini", **settings}
        s = ChatSession(
            Settings(base_url=server.base_url, api_key=KEY, **settings),
            cache=ResponseCache(tmp_path / (cache or f"cache{len(made)}")),
        )
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
    reset_session(None)


_CLEARED = ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_BASE_URL", "IPYCHAT_MODEL")


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A `distributed.Client` on a LocalCluster of 2 worker processes, closed after."""
    distributed = pytest.importorskip("distributed")
    with pytest.MonkeyPatch.context() as env:
        for name in _CLEARED:
            env.delenv(name, raising=False)
        # Any free port for the scheduler's HTTP server (it binds one even without a
        # dashboard: 8787 by default, taken by another test's cluster).
        cluster = distributed.LocalCluster(
            processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0"
        )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
