"""The embedded default on the real llama.cpp server and the real SmolLM2 model: no key,
no endpoint, and everything still works through the session and the magics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.utils.capture import capture_output

from ipychat.engine import local
from ipychat.engine.cache import ResponseCache
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
        assert "endpoint local model · model SmolLM2-135M-Instruct (local) · " in out.stdout
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


def test_the_local_model_is_named_for_what_it_is_whatever_m_says(
    local_session: ChatSession,
) -> None:
    # With no key, `%%chat -m gpt-4o` was answered by SmolLM2 and the footer, the ledger,
    # the usage table and the cache all said gpt-4o.
    import pandas as pd
    from IPython.core.interactiveshell import InteractiveShell

    label = "SmolLM2-135M-Instruct (local)"
    note = "gpt-4o was not used: the local model answers every request"
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipychat")
    try:
        with capture_output() as first:
            ip.run_cell_magic("chat", "-m gpt-4o -t 0 --max-tokens 20", FRANCE)
        assert "Paris" in first.stdout
        assert f"{label} · " in first.stdout and "gpt-4o ·" not in first.stdout
        assert note in first.stdout  # said once ...
        with capture_output() as second:
            ip.run_cell_magic("chat", "-m gpt-4o -t 0 --max-tokens 20", "And Italy? One word.")
        assert f"{label} · " in second.stdout and note not in second.stdout  # ... only once
        ip.user_ns["df"] = pd.DataFrame({"text": ["Spain", "Spain"]})
        with capture_output() as mapped:
            ip.run_cell_magic("chatmap", "df -o capital -m gpt-4.1 --max-tokens 5", "{text}")
        assert "gpt-4.1 was not used: the local model answers every request" in mapped.stdout
        with capture_output() as usage:
            ip.run_line_magic("chat", "usage")
            ip.run_line_magic("chat", "model gpt-4o")
        assert f"| {label} | 3 |" in usage.stdout and "gpt-4" not in usage.stdout.split("model:")[0]
        assert f"model: {label}, which answers every request (gpt-4o is not used)" in usage.stdout
    finally:
        ip.run_line_magic("unload_ext", "ipychat")
    rows = local_session.usage.rows
    assert [r.model for r in rows] == [label] * 3 and all(r.cost == 0 for r in rows)
    assert all(r.thread == "map" for r in rows[2:])
    body = local_session.prepare(
        FRANCE, model="gpt-4o", temperature=0.0, max_tokens=20, thread="empty"
    ).body
    assert local_session.cache is not None
    entry = local_session.cache.get(local_session.cache_key(body))
    assert entry is not None and entry["model"] == label and entry["request_model"] == "gpt-4o"
    # Read back from the cache, the reply keeps the name of the model that wrote it.
    again = local_session.ask(FRANCE, model="gpt-4o", temperature=0.0, max_tokens=20, new=True)
    assert again.cached and again.model == label
