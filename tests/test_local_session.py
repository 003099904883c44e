"""The embedded default on the real llama.cpp server and the real SmolLM2 model: no key,
no endpoint, and everything still works through the session and the magics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.utils.capture import capture_output

from ipychat import local
from ipychat.cache import ResponseCache
from ipychat.session import ChatSession, Settings, reset_session

pytestmark = pytest.mark.local_model

FRANCE = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def local_server() -> Iterator[local.LocalServer]:
    server = local.get_server()
    yield server
    local.stop_server()


@pytest.fixture
def local_session(local_server: local.LocalServer, tmp_path) -> Iterator[ChatSession]:
    s = ChatSession(Settings(temperature=0.0), cache=ResponseCache(tmp_path / "cache"))
    reset_session(s)
    yield s
    reset_session(None)


def test_no_key_means_the_local_model(local_session: ChatSession) -> None:
    assert local_session.endpoint().kind == "local" and local_session.model == "local"
    reply = local_session.ask(FRANCE, max_tokens=20)
    assert "Paris" in reply.text
    assert reply.cost == 0 and reply.usage is not None


def test_stream_context_cache_and_ledger_on_the_local_model(local_session: ChatSession) -> None:
    stream = local_session.stream(FRANCE, max_tokens=20)
    text = "".join(stream)
    assert "Paris" in text and stream.reply is not None
    assert stream.reply.usage.estimated  # llama.cpp streams carry no usage chunk
    follow = local_session.ask("And of Italy? One word.", max_tokens=20)
    assert len(local_session.threads["main"].messages) == 4 and follow.text
    again = local_session.ask(FRANCE, max_tokens=20, thread="replay")
    assert again.cached and again.text == text
    rows = local_session.usage.rows
    assert [r.cached for r in rows] == [False, False, True] and all(r.cost == 0 for r in rows)


def test_chat_magic_on_the_local_model(local_session: ChatSession) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipychat")
    try:
        with capture_output() as out:
            ip.run_cell_magic("chat", "-t 0 --max-tokens 20", FRANCE)
            ip.run_line_magic("chat", "")
            ip.run_line_magic("chat", "local log")
        assert "Paris" in out.stdout and "≈" in out.stdout and "$0.00" in out.stdout
        assert "endpoint local model · model local" in out.stdout
        assert "llama-server.log" in out.stdout
    finally:
        ip.run_line_magic("unload_ext", "ipychat")


def test_the_local_server_gets_its_own_key_never_the_users(
    local_session: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a cloud key in the environment and the local endpoint chosen explicitly, the
    # request carries the server's per-start key (anything else is a 401 there).
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-" + "L0" * 20)
    local_session.configure(base_url="local")
    assert local_session.endpoint().kind == "local"
    reply = local_session.ask(FRANCE, max_tokens=20, cache=False)
    assert "Paris" in reply.text


def test_a_restarted_server_is_reached_with_its_new_key(local_session: ChatSession) -> None:
    assert "Paris" in local_session.ask(FRANCE, max_tokens=20, cache=False).text
    server = local.get_server()
    old_key = server.api_key
    server.stop()
    reply = local_session.ask(FRANCE, max_tokens=20, cache=False)  # starts it again
    assert "Paris" in reply.text and local.get_server().api_key != old_key
