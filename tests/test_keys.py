"""ipychat.keys.cache_key: a key changes with everything that changes the reply, and only that.

Never with credentials: the key is computed from the endpoint and the JSON body alone, and
credentials travel in headers, which the key function never sees.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ipychat.keys import cache_key

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
