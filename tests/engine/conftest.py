"""Fixtures shared by the engine's tests: one real redis-server for the module that asks."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from redis_server import EXECUTABLE, RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server on 127.0.0.1 (random port, a password, nothing saved), stopped after."""
    if not os.path.exists(EXECUTABLE):
        pytest.skip("redis-server is not installed (apt install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
