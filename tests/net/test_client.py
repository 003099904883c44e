"""ChatClient unit tests over httpx.MockTransport: no sockets, no sleeping.

The retry tests inject `sleep` and `rand`, so they are instant and can assert the exact
waits the client asked for. Real-socket behaviour (timeouts, resets, the aiohttp
transport) is in test_client_protocol.py.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from ipychat.core.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthError,
    BadRequestError,
    ConfigError,
    NoAPIKeyError,
    NotFoundError,
    RateLimitError,
    ServerError,
    StreamError,
)
from ipychat.core.keys import Secret
from ipychat.core.types import RateLimitInfo, Usage
from ipychat.net.client import ChatClient, Timeouts

T = TypeVar("T")
BASE = "https://llm.test/v1"  # https: a key never goes over plain http to another host
CANARY = "sk-canary-" + "Q7x9" * 10
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
Handler = Callable[[httpx.Request], Any]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


class Sleeps:
    """A fake sleep that records the waits asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make(handler: Handler, **kw: Any) -> tuple[ChatClient, Sleeps]:
    sleeps = Sleeps()
    base_url = kw.pop("base_url", BASE)
    options: dict[str, Any] = {"api_key": CANARY, "sleep": sleeps, "rand": lambda: 0.0}
    options.update(kw)
    client = ChatClient(base_url, transport=httpx.MockTransport(handler), **options)
    return client, sleeps


def completion_json(text: str = "Hello!", **extra: Any) -> dict[str, Any]:
    data = {
        "id": "chatcmpl-1",
        "model": "gpt-test-2024",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }
    data.update(extra)
    return data


def ok(text: str = "Hello!", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(200, json=completion_json(text), headers=headers)


def sse(*events: Any, done: bool = True) -> bytes:
    lines = [b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) for e in events]
    if done:
        lines.append(b"data: [DONE]")
    return b"".join(line + b"\n\n" for line in lines)


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "model": "gpt-test-2024",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "model": "gpt-test-2024",
    "choices": [],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2},
}


def stream_response(body: bytes | AsyncIterator[bytes], **headers: str) -> httpx.Response:
    return httpx.Response(
        200, content=body, headers={"content-type": "text/event-stream", **headers}
    )


class Script:
    """A MockTransport handler that replays responses (or raises exceptions) in order."""

    def __init__(self, *steps: httpx.Response | Exception | Handler) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        return step(request) if callable(step) else step


def error(status: int, message: str = "nope", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}}, headers=headers)


# ----- plain requests ------------------------------------------------------------------------


def test_non_streamed_completion() -> None:
    script = Script(ok(headers={"x-request-id": "req-1", "x-ratelimit-remaining-requests": "99"}))
    client, _ = make(script)
    completion = run(client.chat(BODY))
    assert completion.text == "Hello!"
    assert completion.model == "gpt-test-2024"
    assert completion.finish_reason == "stop"
    assert completion.usage == Usage(prompt_tokens=9, completion_tokens=3, cached_tokens=4)
    assert completion.request_id == "req-1"
    assert completion.retries == 0
    assert completion.latency > 0
    assert completion.rate_limit == RateLimitInfo(remaining_requests=99)
    assert client.last_rate_limit == RateLimitInfo(remaining_requests=99)

    [request] = script.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/chat/completions"
    assert request.headers["authorization"] == f"Bearer {CANARY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("ipychat/")
    assert json.loads(request.content) == BODY


def test_stream_key_in_body_is_dropped_for_non_streamed_requests() -> None:
    script = Script(ok())
    client, _ = make(script)
    run(client.chat({**BODY, "stream": True, "stream_options": {"include_usage": True}}))
    assert json.loads(script.requests[0].content) == BODY


def test_extra_headers_are_sent() -> None:
    script = Script(ok())
    client, _ = make(script, headers={"X-Title": "notebook"})
    run(client.chat(BODY))
    assert script.requests[0].headers["x-title"] == "notebook"


def test_request_id_falls_back_to_the_body_id() -> None:
    client, _ = make(Script(ok()))
    assert run(client.chat(BODY)).request_id == "chatcmpl-1"


def test_models_are_listed_sorted() -> None:
    data = {"object": "list", "data": [{"id": "b-model"}, {"id": "a-model"}]}
    script = Script(httpx.Response(200, json=data))
    client, _ = make(script)
    assert run(client.models()) == ["a-model", "b-model"]
    assert script.requests[0].method == "GET"
    assert str(script.requests[0].url) == f"{BASE}/models"


def test_non_json_success_is_a_clear_error() -> None:
    client, _ = make(Script(httpx.Response(200, text="<html>Welcome</html>")))
    with pytest.raises(APIError, match=r"not JSON .*check that the base URL"):
        run(client.chat(BODY))


def test_a_body_meant_as_json_that_does_not_parse_is_retried() -> None:
    cut = json.dumps(completion_json())[:40].encode()
    script = Script(
        httpx.Response(200, content=cut, headers={"content-type": "text/plain"}),  # starts as JSON
        httpx.Response(200, content=b"", headers={"content-type": "application/json"}),
        httpx.Response(200, json=completion_json("whole")),
    )
    client, sleeps = make(script)
    completion = run(client.chat(BODY))
    assert completion.text == "whole" and completion.retries == 2
    assert sleeps.delays == [0.5, 1.0]


def test_a_page_labelled_json_is_not_retried() -> None:
    page = httpx.Response(
        200, text="<html>Sign in</html>", headers={"content-type": "application/json"}
    )
    script = Script(page)
    client, _ = make(script)
    with pytest.raises(APIError, match="check that the base URL"):
        run(client.chat(BODY))
    assert len(script.requests) == 1


def test_error_object_in_a_200_body() -> None:
    client, _ = make(Script(httpx.Response(200, json={"error": {"message": "model overloaded"}})))
    with pytest.raises(APIError, match="model overloaded"):
        run(client.chat(BODY))


def test_redirect_is_reported_not_followed() -> None:
    response = httpx.Response(301, headers={"location": "https://elsewhere.test/v1"})
    client, _ = make(Script(response))
    with pytest.raises(APIStatusError, match=r"redirected .*https://elsewhere.test/v1"):
        run(client.chat(BODY))


# ----- base URL and keys ---------------------------------------------------------------------


def test_base_url_is_normalized_and_defaults_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ChatClient("http://localhost:8080/v1/").base_url == "http://localhost:8080/v1"
    assert ChatClient("http://localhost:8080/v1/").host == "localhost:8080"
    assert ChatClient().base_url == "https://api.openai.com/v1"
    assert ChatClient().host == "api.openai.com"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert ChatClient().base_url == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://x/v1", "http://"])
def test_bad_base_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        ChatClient(url)


def test_no_key_for_openai_fails_on_request_not_construction() -> None:
    client = ChatClient(transport=httpx.MockTransport(lambda r: ok()))
    assert not client.has_key
    with pytest.raises(NoAPIKeyError) as info:
        run(client.chat(BODY))
    assert str(info.value) == (
        "No API key for https://api.openai.com/v1. Set OPENAI_API_KEY, run %chat key, "
        "or install ipychat[local] for the offline model."
    )


def test_no_key_for_a_local_server_sends_no_auth_header() -> None:
    script = Script(ok())
    client = ChatClient("http://127.0.0.1:8080/v1", transport=httpx.MockTransport(script))
    run(client.chat(BODY))
    assert "authorization" not in script.requests[0].headers
    assert "api-key" not in script.requests[0].headers


def test_key_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    def sent(**kw: Any) -> str | None:
        script = Script(ok())
        run(ChatClient(BASE, transport=httpx.MockTransport(script), **kw).chat(BODY))
        return script.requests[0].headers.get("authorization")

    monkeypatch.setenv("OPENAI_BASE_URL", BASE)  # the environment's keys are for this host
    monkeypatch.setenv("OPENAI_API_KEYS", "sk-pool-a,sk-pool-b")
    assert sent() == "Bearer sk-pool-a"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert sent() == "Bearer sk-env"
    assert sent(api_keys=["sk-list-1", Secret("sk-list-2")]) == "Bearer sk-list-1"
    assert sent(api_key=Secret("sk-explicit"), api_keys=["sk-list-1"]) == "Bearer sk-explicit"
    assert sent(api_key="") == "Bearer sk-env"  # an empty setting falls through to the env


def test_azure_uses_api_key_header_and_api_version_query() -> None:
    script = Script(ok())
    url = "https://res.openai.azure.com/openai/deployments/gpt4o"
    client, _ = make(script, base_url=url, azure_api_version="2024-10-21")
    run(client.chat(BODY))
    [request] = script.requests
    assert request.headers["api-key"] == CANARY
    assert "authorization" not in request.headers
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.url.path == "/openai/deployments/gpt4o/chat/completions"


# ----- streaming -----------------------------------------------------------------------------


def test_stream_joins_deltas_and_reports_usage() -> None:
    body = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        delta("Hel"),
        delta("lo"),
        delta("", "stop"),
        USAGE_CHUNK,
    )
    script = Script(stream_response(body, **{"x-request-id": "req-s"}))
    client, _ = make(script)
    seen: list[str] = []
    completion = run(client.chat(BODY, stream=True, on_delta=seen.append))
    assert seen == ["Hel", "lo"]
    assert completion.text == "Hello"
    assert completion.finish_reason == "stop"
    assert completion.usage == Usage(prompt_tokens=5, completion_tokens=2)
    assert completion.model == "gpt-test-2024"
    assert completion.request_id == "req-s"
    assert completion.time_to_first_token is not None
    assert completion.time_to_first_token <= completion.latency
    sent = json.loads(script.requests[0].content)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_stream_without_usage_chunk_gives_usage_none() -> None:
    client, _ = make(Script(stream_response(sse(delta("Hi", "stop")))))
    completion = run(client.chat(BODY, stream=True))
    assert completion.text == "Hi" and completion.usage is None


def test_stream_in_odd_chunks_with_crlf_and_keepalives() -> None:
    raw = b": keep-alive\r\n\r\n" + sse(
        delta("Gr\u00fc"), delta("\u00dfe \U0001f600", "stop")
    ).replace(b"\n", b"\r\n")

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(len(raw)):
            yield raw[i : i + 1]

    client, _ = make(Script(lambda r: stream_response(chunks())))
    assert run(client.chat(BODY, stream=True)).text == "Grüße 😀"


def test_server_that_ignores_stream_true() -> None:
    client, _ = make(Script(ok("whole")))
    seen: list[str] = []
    completion = run(client.chat(BODY, stream=True, on_delta=seen.append))
    assert completion.text == "whole" and seen == ["whole"]


def test_error_payload_mid_stream() -> None:
    body = sse(delta("par"), {"error": {"message": "The server had an error"}}, done=False)
    client, sleeps = make(Script(stream_response(body)))
    seen: list[str] = []
    with pytest.raises(StreamError, match="The server had an error") as info:
        run(client.chat(BODY, stream=True, on_delta=seen.append))
    assert "after 3 characters" in str(info.value)
    assert seen == ["par"] and sleeps.delays == []


def test_malformed_chunk_is_a_stream_error() -> None:
    body = sse(delta("ok"), b'{"choices": [', done=False)
    client, _ = make(Script(stream_response(body)))
    with pytest.raises(StreamError, match="malformed chunk"):
        run(client.chat(BODY, stream=True))


def test_stream_without_done_is_an_error_not_a_short_answer() -> None:
    script = Script(stream_response(sse(delta("Hello, wor"), done=False)))
    client, sleeps = make(script)
    with pytest.raises(StreamError) as info:
        run(client.chat(BODY, stream=True))
    assert "stream ended before [DONE] after 10 characters" in str(info.value)
    assert len(script.requests) == 1 and sleeps.delays == []


def broken_stream(prefix: bytes) -> Handler:
    async def chunks() -> AsyncIterator[bytes]:
        yield prefix
        raise httpx.ReadError("connection reset by peer")

    return lambda r: stream_response(chunks())


def test_no_retry_after_content_was_delivered() -> None:
    script = Script(broken_stream(sse(delta("Once"), done=False)), stream_response(sse(delta("x"))))
    client, sleeps = make(script)
    seen: list[str] = []
    with pytest.raises(StreamError, match=r"connection broke .* after 4 characters"):
        run(client.chat(BODY, stream=True, on_delta=seen.append))
    assert seen == ["Once"]
    assert len(script.requests) == 1 and sleeps.delays == []


def test_stream_that_failed_before_content_is_retried() -> None:
    role_only = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}, done=False)
    script = Script(broken_stream(role_only), stream_response(sse(delta("fine", "stop"))))
    client, sleeps = make(script)
    seen: list[str] = []
    completion = run(client.chat(BODY, stream=True, on_delta=seen.append))
    assert completion.text == "fine" and completion.retries == 1
    assert seen == ["fine"] and sleeps.delays == [0.5]


def test_empty_stream_before_content_is_retried() -> None:
    script = Script(stream_response(b""), stream_response(sse(delta("ok", "stop"))))
    client, sleeps = make(script)
    assert run(client.chat(BODY, stream=True)).text == "ok"
    assert sleeps.delays == [0.5]


def test_on_delta_exception_propagates_unwrapped() -> None:
    client, _ = make(Script(stream_response(sse(delta("x")))))

    def boom(text: str) -> None:
        raise KeyError("bug in the caller")

    with pytest.raises(KeyError):
        run(client.chat(BODY, stream=True, on_delta=boom))


# ----- retries -------------------------------------------------------------------------------


def test_retry_after_ms_is_obeyed() -> None:
    script = Script(error(429, **{"retry-after-ms": "1234"}), ok())
    client, sleeps = make(script)
    completion = run(client.chat(BODY))
    assert sleeps.delays == [1.234] and completion.retries == 1


def test_retry_after_seconds_is_obeyed() -> None:
    script = Script(error(503, **{"retry-after": "2"}), ok())
    client, sleeps = make(script)
    run(client.chat(BODY))
    assert sleeps.delays == [2.0]


def test_retry_after_http_date_is_obeyed() -> None:
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    client, sleeps = make(Script(error(429, **{"retry-after": date}), ok()))
    run(client.chat(BODY))
    assert len(sleeps.delays) == 1 and 27 <= sleeps.delays[0] <= 30


def test_demand_above_the_cap_fails_at_once_saying_when() -> None:
    script = Script(error(429, "quota", **{"retry-after": "3600"}), ok())
    client, sleeps = make(script)
    with pytest.raises(RateLimitError) as info:
        run(client.chat(BODY))
    message = str(info.value)
    assert message.startswith("Rate limited by llm.test and asked to wait 1 h; try again after ")
    assert info.value.retry_after == 3600.0
    assert len(script.requests) == 1 and sleeps.delays == []


def test_cap_is_configurable() -> None:
    script = Script(error(429, **{"retry-after": "5"}), ok())
    client, _sleeps = make(script, max_retry_wait=2.0)
    with pytest.raises(RateLimitError, match="asked to wait 5 s"):
        run(client.chat(BODY))


def test_x_should_retry_true_retries_a_400() -> None:
    script = Script(error(400, **{"x-should-retry": "true"}), ok())
    client, sleeps = make(script)
    assert run(client.chat(BODY)).retries == 1
    assert sleeps.delays == [0.5]


def test_x_should_retry_false_does_not_retry_a_503() -> None:
    script = Script(error(503, **{"x-should-retry": "false"}), ok())
    client, sleeps = make(script)
    with pytest.raises(ServerError):
        run(client.chat(BODY))
    assert len(script.requests) == 1 and sleeps.delays == []


def test_backoff_delays_and_max_retries() -> None:
    script = Script(error(500, "boom"))
    client, sleeps = make(script, max_retries=4, rand=lambda: 0.5)
    with pytest.raises(ServerError, match=r"HTTP 500 after 4 retries: boom; try again later"):
        run(client.chat(BODY))
    assert len(script.requests) == 5
    assert sleeps.delays == [0.4375, 0.875, 1.75, 3.5]  # min(0.5*2**k, 8) * (1 - 0.25*0.5)


def test_per_call_max_retries() -> None:
    script = Script(error(502))
    client, sleeps = make(script)
    with pytest.raises(ServerError):
        run(client.chat(BODY, max_retries=0))
    assert len(script.requests) == 1 and sleeps.delays == []


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(status: int) -> None:
    script = Script(error(status), ok())
    client, _sleeps = make(script)
    assert run(client.chat(BODY)).text == "Hello!"
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    ("exc", "cls", "text"),
    [
        (
            httpx.ConnectError("refused"),
            APIConnectionError,
            "The server at https://llm.test/v1 is not reachable",
        ),
        (httpx.ConnectTimeout("slow"), APITimeoutError, "Timed out connecting to llm.test"),
        (httpx.ReadTimeout("slow"), APITimeoutError, "llm.test sent nothing for 600 s"),
        (httpx.RemoteProtocolError("bad"), APIConnectionError, "connection to llm.test failed"),
        (httpx.ReadError("reset"), APIConnectionError, "connection to llm.test failed"),
    ],
)
def test_connection_errors_are_retried_then_mapped(
    exc: Exception, cls: type[Exception], text: str
) -> None:
    script = Script(exc)
    client, sleeps = make(script, max_retries=2)
    with pytest.raises(cls) as info:
        run(client.chat(BODY))
    assert type(info.value) is cls
    assert text in str(info.value) and "after 2 retries" in str(info.value)
    assert len(script.requests) == 3 and sleeps.delays == [0.5, 1.0]


def test_connection_error_then_success() -> None:
    script = Script(httpx.ConnectError("refused"), ok())
    client, _sleeps = make(script)
    assert run(client.chat(BODY)).retries == 1


def test_bugs_are_not_retried() -> None:
    script = Script(ValueError("a bug"))
    client, _sleeps = make(script)
    with pytest.raises(ValueError):
        run(client.chat(BODY))
    assert len(script.requests) == 1


def test_retry_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    client, _ = make(Script(error(503, **{"retry-after": "1.5"}), ok()))
    with caplog.at_level(logging.WARNING, logger="ipychat"):
        run(client.chat(BODY))
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "in 1.50 s" in record.getMessage() and "HTTP 503" in record.getMessage()


def test_success_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    client, _ = make(Script(ok(headers={"x-request-id": "req-9"})))
    with caplog.at_level(logging.DEBUG, logger="ipychat"):
        run(client.chat(BODY))
    line = next(r.getMessage() for r in caplog.records if "status=200" in r.getMessage())
    for part in ("req-9", "model=gpt-test", "latency=", "retries=0"):
        assert part in line


# ----- error classes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls", "fix"),
    [
        (400, BadRequestError, "fix the request"),
        (422, BadRequestError, "fix the request"),
        (401, AuthError, "check OPENAI_API_KEY or run %chat key"),
        (403, AuthError, "check that this key may use this model"),
        (404, NotFoundError, "check the model name (%chat models lists them) and the base URL"),
        (418, APIStatusError, "HTTP 418"),
    ],
)
def test_client_errors_carry_the_server_message_and_the_fix(
    status: int, cls: type[APIStatusError], fix: str
) -> None:
    script = Script(error(status, "The model `gpt-9` does not exist", **{"x-request-id": "r7"}))
    client, sleeps = make(script)
    with pytest.raises(cls) as info:
        run(client.chat(BODY))
    assert type(info.value) is cls
    assert "The model `gpt-9` does not exist" in str(info.value)
    assert fix in str(info.value)
    assert info.value.status_code == status
    assert info.value.request_id == "r7"
    assert info.value.server_message == "The model `gpt-9` does not exist"
    assert len(script.requests) == 1 and sleeps.delays == []
    assert "\n" not in str(info.value)


def test_rate_limit_error_after_retries_carries_the_headers() -> None:
    headers = {"retry-after-ms": "10", "x-ratelimit-remaining-tokens": "0"}
    client, sleeps = make(Script(error(429, "slow down", **headers)), max_retries=1)
    with pytest.raises(RateLimitError) as info:
        run(client.chat(BODY))
    assert "slow down" in str(info.value) and "after 1 retry" in str(info.value)
    assert info.value.retry_after == 0.01
    assert info.value.rate_limit == RateLimitInfo(remaining_tokens=0)
    assert sleeps.delays == [0.01]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": "plain string"}', "plain string"),
        (b'{"detail": "Not authenticated"}', "Not authenticated"),
        (b'{"message": "flat"}', "flat"),
        (b"Bad Gateway\n<html>\n", "Bad Gateway <html>"),
    ],
)
def test_server_messages_in_other_shapes(body: bytes, message: str) -> None:
    client, _ = make(Script(httpx.Response(400, content=body)))
    with pytest.raises(BadRequestError) as info:
        run(client.chat(BODY))
    assert info.value.server_message == message


def test_long_server_message_is_cut_to_one_line() -> None:
    client, _ = make(Script(error(400, "word\n" * 500)))
    with pytest.raises(BadRequestError) as info:
        run(client.chat(BODY))
    assert len(str(info.value)) < 450 and "\n" not in str(info.value)


# ----- key pool ------------------------------------------------------------------------------


def test_key_pool_moves_to_the_next_key_on_429() -> None:
    keys = ["sk-pool-first-0000000000000000", "sk-pool-second-000000000000000"]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == f"Bearer {keys[0]}":
            return error(429, **{"retry-after": "20"})
        return ok()

    script = Script(handler)
    client, sleeps = make(script, api_key=None, api_keys=keys)
    completion = run(client.chat(BODY))
    assert completion.retries == 1 and sleeps.delays == []  # no wait: another key had quota
    run(client.chat(BODY))  # later requests start on the key that worked
    sent = [r.headers["authorization"] for r in script.requests]
    assert sent == [f"Bearer {keys[0]}", f"Bearer {keys[1]}", f"Bearer {keys[1]}"]


def test_key_pool_all_limited_falls_back_to_waiting() -> None:
    script = Script(error(429, **{"retry-after": "2"}), error(429, **{"retry-after": "2"}), ok())
    client, sleeps = make(script, api_key=None, api_keys=["sk-a" * 5, "sk-b" * 5])
    assert run(client.chat(BODY)).retries == 2
    assert sleeps.delays == [2.0]


def test_key_pool_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", BASE)  # the environment's keys are for this host
    monkeypatch.setenv("OPENAI_API_KEYS", " sk-one , sk-two ,")
    script = Script(error(429), ok())
    client = ChatClient(BASE, transport=httpx.MockTransport(script), sleep=Sleeps())
    run(client.chat(BODY))
    assert [r.headers["authorization"] for r in script.requests] == [
        "Bearer sk-one",
        "Bearer sk-two",
    ]


# ----- secrets -------------------------------------------------------------------------------


def all_text(exc: BaseException) -> str:
    """str and repr of an exception and every exception chained to it."""
    parts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), *(str(a) for a in e.args)]
        todo += [e.__cause__, e.__context__]
    return "\n".join(parts)


@pytest.mark.parametrize(
    "step",
    [
        error(401, f"Incorrect API key provided: {CANARY}."),
        error(400, f"bad header Authorization: Bearer {CANARY}"),
        httpx.Response(500, text=f"upstream said key={CANARY}"),
        httpx.ConnectError(f"could not reach proxy with {CANARY}"),
        httpx.ReadTimeout(f"timeout {CANARY}"),
        httpx.Response(200, text=f"not json {CANARY}"),
        stream_response(sse(delta("a"), f"not json {CANARY}".encode(), done=False)),
        stream_response(sse(delta("a"), {"error": {"message": f"bad key {CANARY}"}}, done=False)),
    ],
)
def test_canary_key_never_leaks(step: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, _ = make(Script(step), max_retries=1)
    assert CANARY not in repr(client) and CANARY not in str(client)
    with caplog.at_level(logging.DEBUG), pytest.raises(APIError) as info:
        run(
            client.chat(
                BODY,
                stream=isinstance(step, httpx.Response)
                and step.headers.get("content-type") == "text/event-stream",
            )
        )
    assert CANARY not in all_text(info.value)
    assert CANARY not in caplog.text
    assert "Authorization" in caplog.text or "authorization" in caplog.text  # headers were logged
    assert "***" in caplog.text


def test_canary_not_in_azure_logs(caplog: pytest.LogCaptureFixture) -> None:
    client, _ = make(Script(ok()), azure_api_version="2024-10-21")
    with caplog.at_level(logging.DEBUG):
        run(client.chat(BODY))
    assert CANARY not in caplog.text and "api-key" in caplog.text


# ----- pool management -----------------------------------------------------------------------


def test_client_is_reusable_across_event_loops_and_after_aclose() -> None:
    client, _ = make(Script(ok()))
    assert run(client.chat(BODY)).text == "Hello!"
    assert run(client.chat(BODY)).text == "Hello!"  # a new asyncio.run: a new loop

    async def twice() -> None:
        await client.chat(BODY)
        await client.aclose()
        await client.chat(BODY)
        await client.aclose()

    run(twice())


def test_set_max_connections_validates() -> None:
    client, _ = make(Script(ok()))
    with pytest.raises(ConfigError):
        run(client.set_max_connections(0))
    run(client.set_max_connections(8))
    assert client.max_connections == 8


def test_timeouts_reach_the_transport() -> None:
    script = Script(ok(), stream_response(sse(delta("x"))))
    client, _ = make(script, timeouts=Timeouts(connect=1.0, read=2.0, write=3.0, pool=4.0))
    run(client.chat(BODY))
    run(client.chat(BODY, stream=True))
    whole, streamed = (r.extensions["timeout"] for r in script.requests)
    assert streamed == {"connect": 1.0, "read": 2.0, "write": 3.0, "pool": 4.0}
    assert whole["read"] == 600.0  # a non-streamed reply arrives only when it is finished


def test_concurrent_requests_share_one_pool() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        return ok()

    client, _ = make(handler)

    async def many() -> None:
        results = await asyncio.gather(*(client.chat(BODY) for _ in range(50)))
        assert {c.text for c in results} == {"Hello!"}
        await client.aclose()

    run(many())


def test_gzip_body_is_decoded() -> None:
    import gzip

    raw = gzip.compress(json.dumps(completion_json("zipped")).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    script = Script(httpx.Response(200, content=raw, headers=headers))
    client, _ = make(script)
    assert run(client.chat(BODY)).text == "zipped"
    assert script.requests[0].headers["accept-encoding"] == "gzip, deflate"


def test_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipychat.net.transport import _env_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert _env_proxy("https://api.openai.com/v1") == "http://proxy.test:3128"
    assert _env_proxy("http://127.0.0.1:8080/v1") is None
    assert _env_proxy("http://llm.test/v1") is None  # no HTTP_PROXY for plain http
