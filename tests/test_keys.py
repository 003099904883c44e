"""ipychat.keys: cache keys, API keys as they are set, and where API keys may go.

- cache_key: a key changes with everything that changes the reply, and only that. Never
  with credentials: the key is computed from the endpoint and the JSON body alone, and
  credentials travel in headers, which the key function never sees.
- Secret: a pasted key that cannot go in an HTTP header is refused when set, in one line.
- Scoping: OPENAI_API_KEY goes only to the host it is for, a typed key to its endpoint,
  and no key crosses plain http to another machine unless the user allowed it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import json
import random
import re
import string
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.errors import ChatError, ConfigError
from ipychat.keys import Secret, cache_key
from ipychat.session import ChatSession, Settings, get_session, reset_session
from ipychat.testing import FakeOpenAIServer

ENDPOINT = "https://api.openai.com/v1"

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another one, {braces} kept."},
    ],
    "temperature": 0.2,
    "top_p": 0.9,
    "max_tokens": 100,
    "seed": 42,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "object", "properties": {}}},
    },
    "tools": [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ],
}


def body(change: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    new = copy.deepcopy(BODY)
    if change is not None:
        change(new)
    return new


def test_the_key_is_a_sha256_hex_and_deterministic() -> None:
    key = cache_key(ENDPOINT, BODY)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert cache_key(ENDPOINT, body()) == key


def test_the_key_is_pinned() -> None:
    # Every cache on disk is addressed by this function: a change here makes every entry
    # a miss. If that is intended, update the value on purpose.
    # The hashed text is the canonical JSON of {"endpoint", "request"}: sorted keys, no spaces.
    canonical = '{"endpoint":"https://api.openai.com/v1","request":{"messages":[{"content":"hi","role":"user"}],"model":"m"}}'
    key = cache_key(ENDPOINT + "/", {"messages": [{"role": "user", "content": "hi"}], "model": "m"})
    assert key == hashlib.sha256(canonical.encode()).hexdigest()
    assert key == "48166d95f2f86231275ad378cb285b2bf25b42680e47af00a54bbdb16261e485"


def _set(field: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda b: b.__setitem__(field, value)


CHANGES: dict[str, Callable[[dict[str, Any]], object]] = {
    "model": _set("model", "gpt-4o"),
    "system message": lambda b: b["messages"][0].__setitem__("content", "You are verbose."),
    "user message": lambda b: b["messages"][1].__setitem__("content", "Name a prime!"),
    "assistant message": lambda b: b["messages"][2].__setitem__("content", "11"),
    "last message": lambda b: b["messages"][3].__setitem__("content", "Another one."),
    "a role": lambda b: b["messages"][2].__setitem__("role", "user"),
    "a message added": lambda b: b["messages"].append({"role": "user", "content": "More"}),
    "a message dropped (trimming)": lambda b: b["messages"].pop(1),
    "message order": lambda b: b["messages"].reverse(),
    "whitespace in a message": lambda b: b["messages"][1].__setitem__("content", "Name a prime. "),
    "temperature": _set("temperature", 0.3),
    "temperature absent": lambda b: b.pop("temperature"),
    "top_p": _set("top_p", 1.0),
    "max_tokens": _set("max_tokens", 101),
    "seed": _set("seed", 43),
    "response_format": _set("response_format", {"type": "json_object"}),
    "response_format schema": lambda b: b["response_format"]["json_schema"].__setitem__(
        "name", "other"
    ),
    "tools": lambda b: b["tools"][0]["function"].__setitem__("name", "search"),
    "no tools": lambda b: b.pop("tools"),
    "tool_choice": _set("tool_choice", "required"),
    "n": _set("n", 2),
    "stop": _set("stop", ["\n"]),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_the_key_changes_with_what_changes_the_reply(change: Callable[..., object]) -> None:
    assert cache_key(ENDPOINT, body(change)) != cache_key(ENDPOINT, BODY)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://eu.api.openai.com/v1",
        "http://api.openai.com/v1",
        "https://api.openai.com/v2",
        "http://localhost:8080/v1",
        "http://localhost:8081/v1",
    ],
)
def test_the_key_changes_with_the_endpoint(endpoint: str) -> None:
    assert cache_key(endpoint, BODY) != cache_key(ENDPOINT, BODY)


SAME: dict[str, Callable[[dict[str, Any]], object]] = {
    "stream": _set("stream", True),
    "stream false": _set("stream", False),
    "stream_options": _set("stream_options", {"include_usage": True}),
    "user": _set("user", "alice@example.com"),
    "top-level order": lambda b: [b.__setitem__(k, b.pop(k)) for k in sorted(b, reverse=True)],
    "message key order": lambda b: b["messages"].__setitem__(
        0, {"content": "You are terse.", "role": "system"}
    ),
    "nested key order": lambda b: b.__setitem__(
        "response_format",
        {
            "json_schema": {"schema": {"properties": {}, "type": "object"}, "name": "n"},
            "type": "json_schema",
        },
    ),
}


@pytest.mark.parametrize("change", SAME.values(), ids=SAME.keys())
def test_the_key_ignores_what_does_not_change_the_reply(change: Callable[..., object]) -> None:
    assert cache_key(ENDPOINT, body(change)) == cache_key(ENDPOINT, BODY)


def test_a_trailing_slash_on_the_endpoint_does_not_matter() -> None:
    assert cache_key(ENDPOINT + "/", BODY) == cache_key(ENDPOINT, BODY)


def test_the_key_function_takes_no_credentials() -> None:
    # The only inputs are the endpoint and the body: there is no way to pass a key or headers.
    assert list(inspect.signature(cache_key).parameters) == ["endpoint", "request"]


# ----- the body two clients actually send ----------------------------------------------------

REPLY = {
    "id": "chatcmpl-1",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "13"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 30, "completion_tokens": 1, "total_tokens": 31},
}


def sent_by_client(api_key: str, *, stream: bool = False) -> httpx.Request:
    """The request a real ChatClient puts on the wire (captured by a mock transport)."""
    import ipychat.client as client_module

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=REPLY)

    async def send() -> None:
        client = client_module.ChatClient(
            ENDPOINT, api_key=api_key, transport=httpx.MockTransport(handler), max_retries=0
        )
        async with client:
            await client.chat(BODY, stream=stream)

    asyncio.run(send())
    assert len(seen) == 1
    return seen[0]


def test_two_clients_with_different_keys_give_the_same_key() -> None:
    alice = sent_by_client("sk-alice-0000000000000000000000")
    bob = sent_by_client("sk-bob-11111111111111111111111111", stream=True)
    assert alice.headers["authorization"] != bob.headers["authorization"]  # different keys...
    alice_body, bob_body = json.loads(alice.content), json.loads(bob.content)
    assert bob_body.get("stream") is True and "stream" not in alice_body  # ...and modes
    assert cache_key(ENDPOINT, alice_body) == cache_key(ENDPOINT, bob_body)  # ...one entry
    assert cache_key(ENDPOINT, alice_body) == cache_key(ENDPOINT, BODY)
    for request in (alice, bob):  # the key material (endpoint + body) holds no credential
        assert b"sk-" not in request.content


# ----- a key goes only where it is meant to (issue 15, item 9) ---------------------------------
#
# Like HTTP clients on a redirect to another host (requests' `should_strip_auth`, curl's
# --location without --location-trusted): OPENAI_API_KEY goes to OpenAI or OPENAI_BASE_URL's
# host only; a key set with %chat key to the endpoint it was set for. 127.0.0.1 and
# 127.0.0.2 are both loopback on Linux: two real servers on two different hosts.

_RNG = random.Random(9)
ENV_KEY = "sk-proj-" + "".join(_RNG.choice(string.ascii_letters + string.digits) for _ in range(64))
TYPED_KEY = "sk-proj-" + "".join(
    _RNG.choice(string.ascii_letters + string.digits) for _ in range(64)
)


@pytest.fixture
def two_hosts() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    with FakeOpenAIServer(host="127.0.0.1") as home, FakeOpenAIServer(host="127.0.0.2") as other:
        yield home, other


@pytest.fixture
def shell() -> Iterator[Any]:
    """A real InteractiveShell with ipychat on a session built from the environment."""
    from IPython.core.interactiveshell import InteractiveShell

    session = ChatSession(Settings(model="gpt-4o-mini", max_retries=0), cache=False)
    reset_session(session)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipychat")
    yield ip
    ip.run_line_magic("unload_ext", "ipychat")
    ip.config.pop("ChatMagics", None)
    reset_session(None)


def _chat(ip: Any, line: str = "--no-stream --no-cache", cell: str = "hello") -> str:
    with capture_output() as out:
        ip.run_cell_magic("chat", line, cell)
    return out.stdout + "".join(str(v) for o in out.outputs for v in o.data.values())


def _line(ip: Any, line: str) -> str:
    with capture_output() as out:
        ip.run_line_magic("chat", line)
    return out.stdout + "".join(str(v) for o in out.outputs for v in o.data.values())


def _authorized(server: FakeOpenAIServer) -> list[str | None]:
    return [r.headers.get("authorization") for r in server.chat_requests]


def test_the_environment_key_does_not_follow_the_user_to_another_host(
    two_hosts: tuple[FakeOpenAIServer, FakeOpenAIServer], shell: Any, monkeypatch: Any
) -> None:
    home, other = two_hosts
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", home.base_url)  # the key is for this host
    _chat(shell)
    _line(shell, f"endpoint {other.base_url}")
    _chat(shell)
    assert _authorized(home) == [f"Bearer {ENV_KEY}"]
    assert _authorized(other) == [None]  # the request went there, the key did not
    shown = _line(shell, f"endpoint {other.base_url} --send-key")  # the explicit opt-in
    assert f"endpoint: {other.base_url}" in shown
    _chat(shell, cell="again")
    assert _authorized(other) == [None, f"Bearer {ENV_KEY}"]


def test_a_typed_key_stays_with_the_endpoint_it_was_given_for(
    two_hosts: tuple[FakeOpenAIServer, FakeOpenAIServer], shell: Any, monkeypatch: Any
) -> None:
    home, other = two_hosts
    monkeypatch.setattr("getpass.getpass", lambda prompt="": TYPED_KEY)
    _line(shell, f"endpoint {home.base_url}")
    _line(shell, "key")
    _chat(shell)
    shown = _line(shell, f"endpoint {other.base_url}")
    assert "is for 127.0.0.1" in shown and "%chat key" in shown and "--send-key" in shown
    assert TYPED_KEY not in shown
    _chat(shell)
    _line(shell, f"endpoint {home.base_url}")
    _chat(shell, cell="back home")
    assert _authorized(home) == [f"Bearer {TYPED_KEY}", f"Bearer {TYPED_KEY}"]
    assert _authorized(other) == [None]


def test_a_withheld_key_is_named_in_the_401(shell: Any, monkeypatch: Any) -> None:
    with FakeOpenAIServer(host="127.0.0.2", require_key=ENV_KEY) as other:
        monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
        _line(shell, f"endpoint {other.base_url}")
        with pytest.raises(UsageError) as info:
            _chat(shell)
        message = str(info.value)
        assert "OPENAI_API_KEY is for OpenAI" in message and "--send-key" in message
        assert ENV_KEY not in message and "\n" not in message
        assert _authorized(other) == [None]


def test_no_key_over_plain_http_to_another_machine(shell: Any, monkeypatch: Any) -> None:
    """192.0.2.1 (TEST-NET-1, never routed): the refusal comes before any connection."""
    monkeypatch.setattr("getpass.getpass", lambda prompt="": TYPED_KEY)
    _line(shell, "endpoint http://192.0.2.1:9/v1")
    _line(shell, "key")
    with pytest.raises(UsageError) as info:
        _chat(shell)
    message = str(info.value)
    assert "plain http to another machine" in message and "--send-key" in message
    assert TYPED_KEY not in message and "\n" not in message
    # Opting in says it: the client is then built (not run: nothing listens there).
    _line(shell, "endpoint http://192.0.2.1:9/v1 --send-key")
    session = get_session()
    client = session.run(session.client())
    assert client.has_key


def test_plain_http_from_the_environment_needs_ipychat_key_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ipychat.client import ChatClient

    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gateway.example:4000/v1")
    with pytest.raises(ConfigError, match=r"IPYCHAT_KEY_ORIGINS=http://gateway\.example:4000"):
        ChatClient()
    monkeypatch.setenv("IPYCHAT_KEY_ORIGINS", "http://gateway.example:4000")
    assert ChatClient().has_key
    assert not ChatClient("http://other.example/v1").has_key  # listed hosts only
    assert ChatClient("http://127.0.0.2:9/v1").has_key is False  # loopback, but not its host


def test_loopback_over_http_and_no_key_need_no_opt_in(fake: FakeOpenAIServer) -> None:
    from ipychat.client import ChatClient

    assert ChatClient(fake.base_url, api_key=TYPED_KEY).has_key  # this machine
    assert not ChatClient("http://192.0.2.1:9/v1").has_key  # nothing secret to send


# ----- keys that cannot be sent are refused when set (issue 15, item 8) -------------------------


@pytest.mark.parametrize(
    ("pasted", "said"),
    [
        ("sk-proj-abcé123456789012345678", "non-ASCII character 'é'"),
        ("sk-proj-abc\n123456789012345678", "a line break"),
        ("sk-proj-abc 123456789012345678", "a space"),
        ("sk-proj-abc\x00123456789012345678", "a control character"),
        ("“sk-proj-abc123456789012345678”", "non-ASCII character '“'"),
    ],
)
def test_a_key_that_cannot_go_in_a_header_is_refused_when_set(pasted: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        Secret(pasted)
    message = str(info.value)
    assert said in message and "\n" not in message
    assert pasted not in message and "abc123456789" not in message.replace("\n", "")


def test_surrounding_white_space_is_dropped() -> None:
    assert Secret("  sk-abc123\n").reveal() == "sk-abc123"


def test_a_pasted_key_with_an_accent_is_one_line_through_the_magic(
    shell: Any, monkeypatch: Any, fake: FakeOpenAIServer
) -> None:
    pasted = TYPED_KEY[:20] + "é" + TYPED_KEY[20:]
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pasted)
    _line(shell, f"endpoint {fake.base_url}")
    with pytest.raises(UsageError) as info:
        _line(shell, "key")
    message = str(info.value)
    assert "non-ASCII character 'é'" in message and TYPED_KEY[:20] not in message
    assert fake.requests == []


def test_an_environment_key_with_a_line_break_fails_in_one_line(
    fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TYPED_KEY[:30] + "\n" + TYPED_KEY[30:])
    session = ChatSession(Settings(model="gpt-4o-mini"), cache=False)
    try:
        with pytest.raises(ChatError) as info:
            session.ask("hello")
        assert "a line break" in str(info.value) and TYPED_KEY[:30] not in str(info.value)
        assert not isinstance(info.value, UnicodeError) and info.value.__context__ is None
        assert fake.requests == []
    finally:
        session.close()


def test_extra_headers_that_cannot_be_sent_are_refused_when_set() -> None:
    from ipychat.client import ChatClient

    with pytest.raises(ConfigError, match="cannot be sent in HTTP"):
        ChatClient("https://api.example/v1", api_key=TYPED_KEY, headers={"X-Team": "Zürich"})
