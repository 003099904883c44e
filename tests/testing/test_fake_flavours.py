"""FakeOpenAIServer(flavour=...): each provider's documented differences, seen on the wire with
plain httpx (the sources are cited in ipychat/testing/flavours.py, quirk by quirk)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _wire import BODY, ECHO, HTTP, sse_data

from ipychat.testing import FakeOpenAIServer, Fault
from ipychat.testing.flavours import FLAVOURS

NAMES = sorted(FLAVOURS)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeOpenAIServer]]:
    """One started server per flavour for the module (each test resets its log)."""
    started: dict[str, FakeOpenAIServer] = {}
    try:
        for name in NAMES:
            started[name] = FakeOpenAIServer(flavour=name).start()
        yield started
    finally:
        for server in started.values():
            server.stop()


def chat(server: FakeOpenAIServer, body: dict[str, Any] | None = None) -> httpx.Response:
    model = server.flavour.models[0]
    return HTTP.post(
        server.base_url + "/chat/completions", json={**BODY, "model": model, **(body or {})}
    )


def events(response: httpx.Response) -> tuple[list[str], list[dict[str, Any]]]:
    """The raw SSE blocks of a stream, and its parsed `data:` chunks (without [DONE])."""
    blocks = [b for b in response.text.split("\n\n") if b]
    data = sse_data(response.content)
    assert data[-1] == "[DONE]"
    return blocks, [json.loads(d) for d in data[:-1]]


def test_every_flavour_answers_at_its_own_base_url(servers: dict[str, FakeOpenAIServer]) -> None:
    prefixes = {"gemini": "/v1beta/openai", "groq": "/openai/v1", "openrouter": "/api/v1",
                "azure": "/openai/v1"}  # fmt: skip
    for name, server in servers.items():
        assert server.base_url == server.url + prefixes.get(name, "/v1")
        r = chat(server)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["choices"][0]["message"]["content"] == ECHO
        listed = HTTP.get(server.base_url + "/models").json()["data"]
        assert [m["id"] for m in listed] == list(FLAVOURS[name].models)
    # A path outside the flavour's prefix is not served: Gemini has no /v1/chat/completions.
    gemini = servers["gemini"]
    r = HTTP.post(gemini.url + "/v1beta/chat/completions", json=BODY)
    assert r.status_code == 404


def test_the_default_flavour_is_openai_unchanged() -> None:
    with FakeOpenAIServer() as server:
        assert server.base_url.endswith("/v1")
        r = HTTP.post(server.base_url + "/chat/completions", json=BODY)
        assert "prompt_tokens_details" in r.json()["usage"]
        assert "openai-version" not in r.headers
    with pytest.raises(ValueError, match=r"unknown flavour 'claude'; use one of anthropic, "):
        FakeOpenAIServer(flavour="claude")


@pytest.mark.parametrize("name", NAMES)
def test_error_bodies_take_the_providers_shape(
    servers: dict[str, FakeOpenAIServer], name: str
) -> None:
    server = servers[name]
    server.script(Fault.status(429))
    r = chat(server)
    assert r.status_code == 429
    error = r.json()
    if name == "gemini":  # a list of Google error objects
        assert error == [{"error": {"code": 429, "message": error[0]["error"]["message"],
                                    "status": "RESOURCE_EXHAUSTED"}}]  # fmt: skip
    elif name == "mistral":
        assert error == {"object": "error", "message": "Rate limit exceeded",
                         "type": "rate_limited", "param": None, "code": "1300"}  # fmt: skip
    elif name == "vllm":
        assert error["object"] == "error" and error["code"] == 429 and "error" not in error
    elif name == "openrouter":
        assert error["error"]["code"] == 429 and error["error"]["metadata"] == {}
    elif name == "lmstudio":  # a bare message string
        assert isinstance(error["error"], str) and error["error"]
    else:
        assert error["error"]["code"] == "rate_limit_exceeded"
        assert error["error"]["type"] == "requests"
    # Validation errors take the same shape (a missing `messages`).
    r = HTTP.post(server.base_url + "/chat/completions", json={"model": server.flavour.models[0]})
    assert r.status_code == 400
    text = r.text
    assert "messages" in text
    if name == "gemini":
        assert r.json()[0]["error"]["status"] == "INVALID_ARGUMENT"


def test_rate_limit_headers_only_where_the_provider_sends_them() -> None:
    for name in NAMES:
        with FakeOpenAIServer(flavour=name, rpm=600) as server:
            headers = chat(server).headers
            sent = "x-ratelimit-limit-requests" in headers
            assert sent == FLAVOURS[name].ratelimit_headers, name
    # An explicit option wins over the flavour.
    with FakeOpenAIServer(flavour="gemini", rpm=600, ratelimit_headers=True) as server:
        assert chat(server).headers["x-ratelimit-limit-requests"] == "600"


def test_anthropic(servers: dict[str, FakeOpenAIServer]) -> None:
    server = servers["anthropic"]
    r = chat(server, {"response_format": {"type": "json_object"}, "seed": 7, "user": "u"})
    assert r.status_code == 200  # ignored fields are accepted, not refused
    assert r.headers["openai-version"] == "2020-10-01"
    assert set(r.json()["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    r = chat(server, {"n": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert chat(server, {"n": 1}).status_code == 200
    assert "max_tokens" not in BODY and chat(server).status_code == 200


def test_mistral(servers: dict[str, FakeOpenAIServer]) -> None:
    server = servers["mistral"]
    for field in ("max_completion_tokens", "stream_options"):
        extra = {field: 5} if field == "max_completion_tokens" else {"stream": True,
                 "stream_options": {"include_usage": True}}  # fmt: skip
        r = chat(server, extra)
        assert r.status_code == 422, field
        assert r.json()["object"] == "error" and r.json()["param"] == field
    assert chat(server, {"max_tokens": 5}).status_code == 200
    # A stream carries its usage in the finish chunk, unasked, and no separate usage chunk.
    _, chunks = events(chat(server, {"stream": True}))
    *content, finish = chunks
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert (
        finish["usage"]["total_tokens"]
        == finish["usage"]["prompt_tokens"] + finish["usage"]["completion_tokens"]
    )
    assert all("usage" not in c for c in content) and all(c["choices"] for c in chunks)


def test_groq(servers: dict[str, FakeOpenAIServer]) -> None:
    server = servers["groq"]
    usage = chat(server).json()["usage"]
    assert {"queue_time", "prompt_time", "completion_time", "total_time"} <= set(usage)
    _, chunks = events(chat(server, {"stream": True}))
    finish = chunks[-1]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["x_groq"]["usage"]["total_tokens"] == usage["total_tokens"]
    assert "usage" not in finish  # not asked: no OpenAI usage
    _, chunks = events(chat(server, {"stream": True, "stream_options": {"include_usage": True}}))
    assert (
        chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == usage["total_tokens"]
    )
    assert "x_groq" in chunks[-2]


def test_azure_opens_a_stream_with_prompt_filter_results(
    servers: dict[str, FakeOpenAIServer],
) -> None:
    server = servers["azure"]
    url = server.url + "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    r = HTTP.post(url, json={"messages": BODY["messages"], "stream": True})
    _, chunks = events(r)
    first = chunks[0]
    assert first["choices"] == [] and first["prompt_filter_results"][0]["prompt_index"] == 0
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[1:])
    assert text == ECHO


def test_openrouter_sends_keepalive_comments(servers: dict[str, FakeOpenAIServer]) -> None:
    server = servers["openrouter"]
    blocks, chunks = events(chat(server, {"stream": True}))
    assert blocks[0] == ": OPENROUTER PROCESSING"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == ECHO


@pytest.mark.parametrize("name", ["ollama", "vllm"])
def test_local_servers_refuse_a_model_they_do_not_serve(
    servers: dict[str, FakeOpenAIServer], name: str
) -> None:
    server = servers[name]
    r = HTTP.post(server.base_url + "/chat/completions", json={**BODY, "model": "gpt-4o"})
    assert r.status_code == 404
    assert "gpt-4o" in r.text
    assert chat(server).status_code == 200
    # Cloud providers the fake imitates do not check model names.
    groq = servers["groq"].base_url + "/chat/completions"
    assert HTTP.post(groq, json={**BODY, "model": "gpt-4o"}).status_code == 200


def test_lmstudio(servers: dict[str, FakeOpenAIServer]) -> None:
    server = servers["lmstudio"]
    # json_object is refused with LM Studio's 400; json_schema and text are taken.
    r = chat(server, {"response_format": {"type": "json_object"}})
    assert r.status_code == 400
    assert r.json() == {"error": "'response_format.type' must be 'json_schema' or 'text'"}
    assert chat(server, {"response_format": {"type": "text"}}).status_code == 200
    # A stream asked for its usage sends none (no usage chunk, no usage anywhere).
    _, chunks = events(chat(server, {"stream": True, "stream_options": {"include_usage": True}}))
    assert all(c["choices"] for c in chunks) and not any(c.get("usage") for c in chunks)
    # The option still wins over the flavour.
    with FakeOpenAIServer(flavour="lmstudio", include_usage_chunk=True) as other:
        _, chunks = events(chat(other, {"stream": True, "stream_options": {"include_usage": True}}))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
