"""A fake OpenAI-compatible server on 127.0.0.1, for tests, notebooks and benchmarks.

Why a real server and not a mock transport: it exercises everything between your code and
the wire (sockets, connection pools, HTTP framing, SSE parsing, timeouts, retries), and it
works with any client (ipychat, the openai SDK, httpx, aiohttp, curl). It speaks the
protocol of `POST /v1/chat/completions` (streaming and not, with `usage` and the
`stream_options.include_usage` chunk), `GET /v1/models` and the Files and Batch API
(`ipychat.testing.batchapi`), and can misbehave on purpose:
latency and token pacing, OpenAI-style rpm/tpm limits with `x-ratelimit-*` headers and
429s, and scripted or random faults (any status, connection reset, hang, truncated or
malformed streams, an error payload mid-stream). It records every request it receives.

Example::

    import httpx
    from ipychat.testing import FakeOpenAIServer, Fault

    with FakeOpenAIServer(reply="Hello!", rpm=600, latency=0.05) as server:
        server.script(Fault.status(503), "reset")  # the next two chat requests fail
        for _ in range(3):
            try:
                r = httpx.post(
                    server.base_url + "/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                )
            except httpx.TransportError:
                continue  # the "reset"
        assert r.json()["choices"][0]["message"]["content"] == "Hello!"
        assert [rq.status for rq in server.chat_requests] == [503, None, 200]

In pytest, the `fake_openai` fixture (installed with ipychat, see `ipychat.testing.pytest_plugin`)
yields a started server; `@pytest.mark.fake_openai(latency=0.1)` passes options.

The server runs its own asyncio event loop in a daemon thread, so it serves while sync
code (a test, a notebook cell) blocks on it and while async code awaits it. For
benchmarks, `FakeOpenAIServer.spawn(...)` runs it in a child process instead, so that
the client's CPU time is measured without the server's; the API is the same. Callables
given to a spawned server (`reply`, `count_tokens`) must be picklable (module-level
functions), and a script that spawns needs the usual `if __name__ == "__main__":` guard.
From a shell: `python -m ipychat.testing --port 8000 --latency 0.2` prints its base URL.

Rate limits follow what OpenAI and Azure document (`ipychat.testing.rules` cites the
sources, option by option). `rpm` and `tpm` are per-minute limits enforced over a short
`window`: within any `window` seconds (default 1, the worst case documented; 10 and 60
are the others) at most limit × window / 60 is accepted, so a burst is refused even when
the minute's total is far below the limit. A request is charged when it arrives, before
any work: 1 request and `prompt tokens + max_tokens` tokens (`max_completion_tokens` wins
over `max_tokens`; a request that sets neither is charged `assumed_max_tokens`, default
16), and a refused request is charged too (`charge_refused=False` refunds it): hammering a
full window keeps it full. Every answer carries OpenAI's `x-ratelimit-limit-*`,
`-remaining-*` and `-reset-*` headers, which report the per-minute limit (a bucket of a
minute's capacity refilling at limit/60 per second, reset as a duration like `20ms`,
`1s`, `6m0s`), never the window. A refused request gets OpenAI's 429 (`code`
`rate_limit_exceeded`, `type` `requests` or `tokens`, "Rate limit reached for MODEL in
organization org-fake on requests per min (RPM): Limit 6000, Used 120, Requested 1.
Please try again in 10ms. ...") with `retry-after-ms`/`retry-after`: the time until the
window has room for it. `ratelimit_headers=False` sends no `x-ratelimit-*` header at all
(vLLM, llama.cpp, many gateways), `retry_after=False` no retry-after and no "try again
in". A request larger than the whole tpm limit gets a 429 with `x-should-retry: false`.

Faults apply to chat requests that got past auth, validation and the rate limiter (so a
limiter 429 does not use up a scripted fault): first the `script()` queue, one entry per
request, then a seeded draw with probability `fault_rate`. `latency` delays every chat
answer, faults included, but not 400/401/429 rejections, which OpenAI also sends at once.

This package's `__all__` is the public surface; the modules behind it, each importing
only those below it: `http` (the HTTP/1.1 core), `rules` (errors, token accounting, rate
limits; no I/O), `faults` (`Fault`), `records` (the request log and counters), `options`
(the checked, frozen options), `batchapi` (the Files and Batch API), `server` (the protocol
engine), `process` (the thread or child process it runs in), `fake` (`FakeOpenAIServer`),
`cli` (`python -m ipychat.testing`) and `pytest_plugin` (the fixtures). The names below
load on first use, so that pytest loading the plugin for everyone who installed ipychat
does not load the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipychat.testing.cli import main
    from ipychat.testing.fake import FakeOpenAIServer
    from ipychat.testing.faults import Fault, FaultSpec
    from ipychat.testing.options import BatchOptions, approx_tokens
    from ipychat.testing.records import RecordedRequest, ServerStats

__all__ = [
    "BatchOptions",
    "FakeOpenAIServer",
    "Fault",
    "FaultSpec",
    "RecordedRequest",
    "ServerStats",
    "approx_tokens",
    "main",
]

# Where each public name lives (imported on first access, PEP 562).
_HOMES = {
    "BatchOptions": "options",
    "FakeOpenAIServer": "fake",
    "Fault": "faults",
    "FaultSpec": "faults",
    "RecordedRequest": "records",
    "ServerStats": "records",
    "approx_tokens": "options",
    "main": "cli",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
