"""Router.pin: a %%chatmap run resolves where requests go once, not several times a row.

Unit tests of the pin on a Router, then one map against FakeOpenAIServer (real loopback
HTTP) that counts the resolutions of a whole run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ipychat.core.keys import Secret
from ipychat.core.settings import Settings
from ipychat.engine.cache import ResponseCache
from ipychat.engine.endpoint import Router
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer

KEY = "sk-test-" + "p" * 20


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_API_KEYS", "GROQ_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_a_pinned_run_keeps_its_endpoint_until_released(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(api_key=Secret(KEY))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9001/v1")
    router = Router(settings)
    release = router.pin(settings)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9002/v1")
    assert router.endpoint(settings).url == "http://127.0.0.1:9001/v1"  # read at the start
    assert router.host(settings) == "127.0.0.1:9001"
    release()
    assert router.endpoint(settings).url == "http://127.0.0.1:9002/v1"
    assert router.host(settings) == "127.0.0.1:9002"


def test_other_settings_are_not_served_the_pinned_answers() -> None:
    first = Settings(base_url="http://127.0.0.1:9001/v1", api_key=Secret(KEY))
    router = Router(first)
    release = router.pin(first)
    moved = Settings(base_url="http://127.0.0.1:9003/v1", api_key=first.api_key)
    assert router.endpoint(moved).url == "http://127.0.0.1:9003/v1"
    assert router.host(moved) == "127.0.0.1:9003"
    other_key = Settings(base_url=first.base_url, api_key=Secret(KEY + "x"))
    pinned = router.connection(first, router.endpoint(first))
    assert pinned[1] is first.api_key
    url, key = router.connection(other_key, router.endpoint(other_key))
    assert url == first.base_url and key is other_key.api_key  # its own key, not the pinned
    release()


def test_the_pinned_connection_is_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(base_url="groq")
    monkeypatch.setenv("GROQ_API_KEY", "gsk-" + "g" * 20)
    router = Router(settings)
    release = router.pin(settings)
    endpoint = router.endpoint(settings)
    url, key = router.connection(settings, endpoint)
    assert key is not None and key.reveal() == "gsk-" + "g" * 20
    monkeypatch.delenv("GROQ_API_KEY")  # read when the run started, not per request
    assert router.connection(settings, router.endpoint(settings)) == (url, key)
    release()
    with pytest.raises(Exception, match="GROQ_API_KEY"):
        router.connection(settings, router.endpoint(settings))


def test_a_map_resolves_its_endpoint_a_few_times_not_per_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    resolve = Router._resolve

    def counted(self: Router, settings: Settings) -> object:
        calls.append(settings.base_url)
        return resolve(self, settings)

    with FakeOpenAIServer() as server:
        session = ChatSession(
            Settings(base_url=server.base_url, api_key=Secret(KEY), model="gpt-4o-mini"),
            cache=ResponseCache(tmp_path / "cache"),
        )
        try:
            session.map(pd.DataFrame({"t": ["warm up"]}), "{t}", "out")  # client, encodings
            monkeypatch.setattr(Router, "_resolve", counted)
            out = session.map(pd.DataFrame({"t": [f"row {i}" for i in range(60)]}), "{t}", "out")
        finally:
            session.close()
        assert out["out"].notna().all() and len(server.requests) == 61
    # Planning (the cache keys, the estimate) and the pin itself; before the pin, five
    # resolutions per row sent.
    assert 0 < len(calls) < 20, len(calls)
