"""One protocol contract, checked against FakeOpenAIServer and the real llama.cpp server.

If the fake passes a check the real server fails (or the other way round), the fake is
lying to every other test, or ipychat relies on something real servers do not do. Where
they legitimately differ, the difference is a parameter of `Backend`, stated once:

- `usage_chunk`: llama.cpp sends no usage chunk in streams even when asked
  (`stream_options.include_usage`), OpenAI and the fake do;
- `capital`: what the temperature-0 answer to the France question must contain
  (the real model says "Paris"; the fake echoes the prompt).

The wire-level checks use plain httpx; the rest go through `ipychat.net.client.ChatClient`,
so the contract covers our client too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ipychat import errors
from ipychat.core.types import Completion
from ipychat.engine import local
from ipychat.net.client import ChatClient
from ipychat.testing import FakeOpenAIServer, Fault
from ipychat.testing.flavours import FLAVOURS as FLAVOUR_TABLE

FRANCE = "What is the capital of France? Answer in one word."
LONG = "Tell me a long story about a dragon who lived in the mountains of the north."


@dataclass(frozen=True)
class Backend:
    name: str
    base_url: str
    model: str
    usage_chunk: bool  # does a stream end with a usage chunk when include_usage is asked?
    capital: str  # the temperature-0 answer to FRANCE mentions this
    api_key: str | None = None  # the local server demands its per-start key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@pytest.fixture(
    scope="module",
    params=[
        "fake",
        pytest.param(
            "llama",
            marks=[pytest.mark.local_model],
        ),
    ],
)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    if request.param == "fake":
        with FakeOpenAIServer(include_usage_chunk=True) as fake:
            yield Backend("fake", fake.base_url, "fake-model", usage_chunk=True, capital="France")
        return
    # One real server for the whole module (starting it takes a second or two).
    server = local.LocalServer(local.bundled_model(), log_dir=tmp_path_factory.mktemp("llama"))
    server.start()
    try:
        assert server.api_key is not None
        yield Backend(
            "llama",
            server.base_url,
            local.MODEL_ALIAS,
            usage_chunk=False,
            capital="Paris",
            api_key=server.api_key.reveal(),
        )
    finally:
        server.stop()


def _body(backend: Backend, content: str = FRANCE, **extra: Any) -> dict[str, Any]:
    return {
        "model": backend.model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 40,
        **extra,
    }


def _chat(
    backend: Backend, body: dict[str, Any], *, stream: bool = False
) -> tuple[Completion, list[str]]:
    deltas: list[str] = []

    async def run() -> Completion:
        async with ChatClient(backend.base_url, api_key=backend.api_key) as client:
            return await client.chat(body, stream=stream, on_delta=deltas.append)

    return asyncio.run(run()), deltas


def _post(backend: Backend, body: dict[str, Any]) -> httpx.Response:
    # trust_env=False: loopback must never go through a proxy from the environment.
    with httpx.Client(timeout=60, trust_env=False) as http:
        return http.post(backend.base_url + "/chat/completions", json=body, headers=backend.headers)


# ----- the wire ---------------------------------------------------------------------------


def test_reply_shape(backend: Backend) -> None:
    response = _post(backend, _body(backend))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    data = response.json()
    assert data["object"] == "chat.completion"
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = data["usage"]  # both report usage outside streams
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_wire(backend: Backend) -> None:
    body = _body(backend, stream=True, stream_options={"include_usage": True})
    with (
        httpx.Client(timeout=60, trust_env=False) as http,
        http.stream(
            "POST", backend.base_url + "/chat/completions", json=body, headers=backend.headers
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")
        ]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    usage_chunks = [c for c in chunks if not c["choices"]]
    assert bool(usage_chunks) is backend.usage_chunk
    if usage_chunks:  # last, after the finish_reason, as OpenAI sends it
        assert chunks[-1] is usage_chunks[0] and chunks[-1]["usage"]["completion_tokens"] > 0
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert choices[-1]["finish_reason"] in ("stop", "length")
    text = "".join(ch["delta"].get("content") or "" for ch in choices)
    assert text.strip()


def test_models_lists_something(backend: Backend) -> None:
    async def run() -> list[str]:
        async with ChatClient(backend.base_url, api_key=backend.api_key) as client:
            return await client.models()

    models = asyncio.run(run())
    assert backend.model in models


# ----- through ChatClient -----------------------------------------------------------------


def test_reply_through_client(backend: Backend) -> None:
    completion, _ = _chat(backend, _body(backend))
    assert completion.text.strip()
    assert completion.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_stream_through_client(backend: Backend) -> None:
    completion, deltas = _chat(backend, _body(backend), stream=True)
    assert len(deltas) > 1 and "".join(deltas) == completion.text
    assert completion.finish_reason in ("stop", "length")
    assert completion.time_to_first_token is not None
    # ChatClient always asks for the usage chunk; llama.cpp ignores the request.
    assert (completion.usage is not None) is backend.usage_chunk


def test_multi_turn(backend: Backend) -> None:
    body = _body(backend)
    body["messages"] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    completion, _ = _chat(backend, body)
    assert completion.text.strip()
    assert completion.finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_max_tokens_honoured(backend: Backend, stream: bool) -> None:
    completion, _ = _chat(backend, _body(backend, LONG, max_tokens=5), stream=stream)
    assert completion.finish_reason == "length"
    assert 0 < len(completion.text) < 60
    if completion.usage is not None:
        assert completion.usage.completion_tokens <= 5


def test_deterministic_answer_at_temperature_0(backend: Backend) -> None:
    first, _ = _chat(backend, _body(backend))
    again, _ = _chat(backend, _body(backend))
    assert backend.capital in first.text
    assert again.text == first.text


def test_concurrent_streams_both_finish(backend: Backend) -> None:
    """The local server handles one request at a time: a second must queue, not cut the first
    (llama.cpp's default `interrupt_requests` ends the running stream without a finish_reason)."""

    async def run() -> list[Completion]:
        async with ChatClient(backend.base_url, api_key=backend.api_key) as client:
            body = _body(backend, LONG, max_tokens=24)
            return list(await asyncio.gather(*(client.chat(body, stream=True) for _ in range(2))))

    for completion in asyncio.run(run()):
        assert completion.finish_reason in ("stop", "length")
        assert completion.text.strip()


# ----- the client against each provider flavour of the fake ---------------------------------
# FakeOpenAIServer(flavour=...) reproduces each provider's documented differences (cited in
# ipychat/testing/flavours.py). These tests pin what ipychat's client does with each one
# today. Where it does not yet handle a quirk, the test states the current behaviour and
# says GAP: it changes (and must be updated) when the client learns the quirk.

FLAVOURS = ["anthropic", "azure", "gemini", "groq", "lmstudio", "mistral", "ollama", "openai",
            "openrouter", "together", "vllm"]  # fmt: skip


def _flavour_chat(server: FakeOpenAIServer, *, stream: bool) -> tuple[Completion, list[str]]:
    body = {"model": server.flavour.models[0], "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50}  # fmt: skip
    deltas: list[str] = []

    async def main() -> Completion:
        async with ChatClient(server.base_url, api_key=server.api_key, max_retries=0) as client:
            return await client.chat(body, stream=stream, on_delta=deltas.append)

    return asyncio.run(main()), deltas


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_reads_each_flavours_reply_and_usage(flavour: str) -> None:
    with FakeOpenAIServer(flavour=flavour) as server:
        reply, _ = _flavour_chat(server, stream=False)
        served = server.chat_requests[-1]
        assert reply.text == "Echo: hi"
        assert reply.usage is not None and reply.usage.prompt_tokens == 8
        assert served.path.startswith(server.base_url.removeprefix(server.url))


@pytest.mark.parametrize("flavour", [f for f in FLAVOURS if f not in ("mistral", "lmstudio")])
def test_client_streams_each_flavour_with_usage(flavour: str) -> None:
    # Azure's opening prompt_filter_results chunk (no choices), OpenRouter's keep-alive
    # comments and Groq's x_groq finish chunk are all read past.
    with FakeOpenAIServer(flavour=flavour) as server:
        reply, deltas = _flavour_chat(server, stream=True)
    assert reply.text == "Echo: hi" and "".join(deltas) == "Echo: hi"
    assert reply.usage is not None and reply.usage.completion_tokens == 2


class _ToLoopback(httpx.AsyncHTTPTransport):
    """Sends every request to a FakeOpenAIServer on 127.0.0.1 whatever host its URL names,
    so a client built for a provider's real base URL (which the client's host-based quirks
    key on) is tested over a real socket without leaving this machine."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        super().__init__()
        self._target = httpx.URL(server.url)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self._target
        request.url = request.url.copy_with(scheme=target.scheme, host=target.host,
                                            port=target.port)  # fmt: skip
        return await super().handle_async_request(request)


def _chat_as(base_url: str, server: FakeOpenAIServer) -> Completion:
    body = {"model": server.flavour.models[0], "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50}  # fmt: skip

    async def main() -> Completion:
        async with ChatClient(base_url, api_key=server.api_key, max_retries=0,
                              transport=_ToLoopback(server)) as client:  # fmt: skip
            return await client.chat(body, stream=True)

    return asyncio.run(main())


def test_client_streams_to_mistral_without_stream_options() -> None:
    # Mistral refuses stream_options (422) and sends a stream's usage in its finish chunk
    # unasked: the client, seeing Mistral's host, leaves the field out and reads that usage.
    with FakeOpenAIServer(flavour="mistral") as server:
        reply = _chat_as("https://api.mistral.ai/v1", server)
        sent = server.chat_requests[-1].body
    assert sent["stream"] is True and "stream_options" not in sent
    assert reply.text == "Echo: hi"
    assert reply.usage is not None and reply.usage.total_tokens == 10


def test_client_named_mistral_leaves_stream_options_out_at_any_url() -> None:
    # ChatClient(provider="mistral") (what `%chat endpoint mistral` makes) applies Mistral's
    # quirk wherever its URL points, a proxy's or this loopback server's.
    with FakeOpenAIServer(flavour="mistral") as server:

        async def main() -> Completion:
            async with ChatClient(server.base_url, api_key=server.api_key, max_retries=0,
                                  provider="mistral") as client:  # fmt: skip
                return await client.chat(
                    {"model": "mistral-small-latest", "messages": [{"role": "user",
                     "content": "hi"}], "max_tokens": 50}, stream=True)  # fmt: skip

        reply = asyncio.run(main())
        sent = server.chat_requests[-1].body
    assert "stream_options" not in sent and reply.usage is not None


def test_client_asks_other_hosts_for_the_usage_chunk() -> None:
    # Precision of the rule above: only Mistral's host loses stream_options.
    with FakeOpenAIServer(flavour="openai") as server:
        reply = _chat_as("https://api.openai.com/v1", server)
        sent = server.chat_requests[-1].body
    assert sent["stream_options"] == {"include_usage": True}
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_client_reads_usage_from_mistrals_finish_chunk() -> None:
    # Mistral without the stream_options refusal: usage only in the finish chunk.
    lenient = dataclasses.replace(FLAVOUR_TABLE["mistral"], refused_params=())
    with FakeOpenAIServer(flavour=lenient) as server:
        reply, _ = _flavour_chat(server, stream=True)
    assert reply.usage is not None and reply.usage.total_tokens == 10


def test_client_reads_usage_only_in_x_groq() -> None:
    # A Groq stream not asked for usage, or a Groq that ignored include_usage, carries it
    # only in the finish chunk's `x_groq.usage`; the client reads it there.
    with FakeOpenAIServer(flavour="groq", include_usage_chunk=False) as server:
        reply, _ = _flavour_chat(server, stream=True)
    assert reply.text == "Echo: hi"
    assert reply.usage is not None and reply.usage.prompt_tokens == 8
    assert reply.usage.completion_tokens == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_turns_each_flavours_429_into_a_rate_limit_error(flavour: str) -> None:
    with FakeOpenAIServer(flavour=flavour) as server:
        server.script(Fault.status(429, message="Slow down, please."))
        with pytest.raises(errors.RateLimitError) as info:
            _flavour_chat(server, stream=False)
    message = str(info.value)
    if flavour == "mistral":  # Mistral's own fixed text replaces the fault's
        assert "Rate limit exceeded" in message
    else:  # Gemini's list-wrapped body ([{"error": {...}}]) included
        assert "(HTTP 429): Slow down, please;" in message and "{" not in message
