"""The one-line errors of `ipychat.net.client.ChatClient`, built from what went wrong.

- `error_from_status`: an HTTP status ≥ 300 → the `ipychat.core.errors` class for it, with the
  server's own explanation (`server_message_of`) and what to do next.
- `connection_error`: a transport failure → `APIConnectionError` / `APITimeoutError`,
  naming the timeout or the refused connection.
- Redaction: every server text and exception text passes through `ipychat.core.keys.redact`
  (`short_cause`, `clean_cause`, `body_snippet`, `server_message_of`) before it reaches an
  exception or a log line, and is cut to one line.

Part of the client's network boundary (docs/architecture.md): used only by `ipychat.net.client` and its
other private modules, and like the client it imports httpx.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ipychat.core.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    RateLimitError,
    UntrustedCertificateError,
    status_error,
)
from ipychat.core.keys import Secret, redact
from ipychat.core.types import RateLimitInfo
from ipychat.net import retry as policy
from ipychat.net.requests import Timeouts
from ipychat.net.transport import (
    exception_chain,
    is_connect_failure,
    is_transport_error,
    root_cause,
    scrub,
    timeout_kind,
)

log = logging.getLogger("ipychat")

_KEY_FIX = "check OPENAI_API_KEY or run %chat key"
# The retry reason of a connection nobody accepted: retried quietly (the final error says it).
UNREACHABLE = "server not reachable"

# Longest server message kept in an exception (one line; the rest is noise in a notebook).
_MESSAGE_LIMIT = 300


def error_from_status(
    response: httpx.Response,
    path: str,
    body: bytes,
    request_id: str | None,
    rate_limit: RateLimitInfo | None,
    decision: policy.RetryDecision,
    retries: int,
    *,
    host: str,
    base_url: str,
    keys: Sequence[Secret],
    withheld: bool = False,
) -> APIStatusError:
    status = response.status_code
    server = server_message_of(body, keys)
    said = _said(server)
    after = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
    if status == 429:
        if decision.too_long and decision.server_wait is not None:
            wait = decision.server_wait
            message = (
                f"Rate limited by {host} and asked to wait {policy.format_wait(wait)}; "
                f"try again after {policy.format_retry_time(wait)}."
            )
        else:
            message = (
                f"Rate limited by {host} (HTTP 429){after}{said}; lower the "
                "concurrency or the request rate, or try again in a minute"
            )
        return RateLimitError(
            message,
            status_code=status,
            request_id=request_id,
            server_message=server or None,
            retry_after=decision.server_wait,
            rate_limit=rate_limit,
        )
    message = _status_message(
        response,
        path,
        status,
        said,
        after,
        decision,
        host=host,
        base_url=base_url,
        keys=keys,
        withheld=withheld,
    )
    return status_error(
        status,
        message,
        request_id=request_id,
        server_message=server or None,
        retry_after=decision.server_wait,
    )


def _status_message(
    response: httpx.Response,
    path: str,
    status: int,
    said: str,
    after: str,
    decision: policy.RetryDecision,
    *,
    host: str,
    base_url: str,
    keys: Sequence[Secret],
    withheld: bool = False,
) -> str:
    if status in (400, 422):
        return f"{host} rejected the request (HTTP {status}){said}; fix the request and retry"
    if status == 401:
        if withheld:
            return (
                f"{host} wants an API key (HTTP 401){said}: OPENAI_API_KEY is for OpenAI (or "
                f"OPENAI_BASE_URL) and is not sent to {host}; run %chat key to give this "
                f"endpoint its own key, or %chat endpoint {base_url} --send-key to send it there"
            )
        if not keys:
            return f"{host} wants an API key (HTTP 401){said}; set OPENAI_API_KEY or run %chat key"
        return f"{host} refused the API key (HTTP 401){said}; {_KEY_FIX}"
    if status == 403:
        return (
            f"{host} denied access (HTTP 403){said}: check that this key may use this model "
            "(project, organisation or region settings)"
        )
    if status == 404:
        return (
            f"{host} found nothing at {path} (HTTP 404){said}: check the model name "
            f"(%chat models lists them) and the base URL ({base_url})"
        )
    if 300 <= status < 400:
        location = response.headers.get("location", "another address")
        return (
            f"{host} redirected {path} (HTTP {status}) to {location}; "
            "set the base URL to the final address"
        )
    if decision.too_long and decision.server_wait is not None:
        wait = decision.server_wait
        return (
            f"{host} failed with HTTP {status}{said} and asked to wait "
            f"{policy.format_wait(wait)}; try again after {policy.format_retry_time(wait)}."
        )
    if status >= 500:
        return f"{host} failed with HTTP {status}{after}{said}; try again later"
    return f"{host} answered HTTP {status}{after}{said}"


def connection_error(
    exc: BaseException,
    retries: int,
    read_timeout: float | None,
    *,
    host: str,
    base_url: str,
    keys: Sequence[Secret],
    timeouts: Timeouts,
) -> APIConnectionError:
    after = f" (after {retries} {'retry' if retries == 1 else 'retries'})" if retries else ""
    kind = timeout_kind(exc)
    if kind == "connect":
        return APITimeoutError(
            f"Timed out connecting to {host} after {timeouts.connect:g} s{after}; "
            f"check the network and the base URL ({base_url})"
        )
    if kind == "read":
        return APITimeoutError(
            f"{host} sent nothing for {read_timeout or timeouts.read:g} s (read "
            f"timeout){after}; the server may be overloaded: try again, or raise the timeout"
        )
    if kind is not None:
        return APITimeoutError(f"Request to {host} timed out ({kind}){after}; try again")
    limit = _header_limit(exc)
    if limit is not None:
        return APIConnectionError(
            f"{host} sent a response header longer than the {limit:,} bytes the HTTP client "
            f"accepts{after}; check the server (or the proxy in front of it)"
        )
    untrusted = untrusted_certificate(exc)
    if untrusted is not None:
        return UntrustedCertificateError(
            f"The server at {base_url} presented a TLS certificate this machine does not "
            f"trust ({untrusted}): if your network inspects TLS, set SSL_CERT_FILE to its CA "
            "bundle and restart the kernel; else check the URL (%chat endpoint URL)"
        )
    if is_connect_failure(exc):
        # One line in our words: aiohttp's own ("Cannot connect to host …
        # ssl:default [Connect call failed (…)]") stays in __cause__ for debugging.
        tried = f", after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
        return APIConnectionError(
            f"The server at {base_url} is not reachable ({_unreachable(exc)}{tried}): check "
            "that it is running and the network, or set another URL with %chat endpoint URL"
        )
    detail = short_cause(exc, keys)
    return APIConnectionError(f"The connection to {host} failed ({detail}){after}; try again")


_TOO_LONG = re.compile(r"Got more than (\d+) bytes")


def _header_limit(exc: BaseException) -> int | None:
    """The limit aiohttp names when a response header line is too long (its LineTooLong,
    wrapped in a ClientResponseError whose text quotes the header's start), else None."""
    for e in exception_chain(exc):
        m = _TOO_LONG.search(str(e))
        if m is not None and (
            "header" in str(e).lower()
            or any(type(c).__name__ == "LineTooLong" for c in exception_chain(e))
        ):
            return int(m.group(1))
    return None


def untrusted_certificate(exc: BaseException) -> str | None:
    """Why the server's certificate failed verification ("self-signed certificate",
    "unable to get local issuer certificate", ...), or None when that is not the failure.
    httpx_aiohttp maps aiohttp's certificate error to a ConnectTimeout: the cause tells."""
    found = [e for e in _causes(exc) if isinstance(e, ssl.SSLCertVerificationError)]
    for e in found:  # aiohttp's own error is one too, without the details
        why = getattr(e, "verify_message", None) or getattr(e, "reason", None)
        if why:
            return str(why)
    return "certificate verify failed" if found else None


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc`, its causes and contexts, and the OS errors aiohttp wraps, each once."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc, root_cause(exc)]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [getattr(item, "os_error", None), item.__cause__, item.__context__]
        todo.append(getattr(item, "certificate_error", None))
    return seen


def _unreachable(exc: BaseException) -> str:
    """Why nothing answered, in a few words: refused, unknown host name, or neither."""
    seen = _causes(exc)
    if any(isinstance(e, socket.gaierror) or "DNS" in type(e).__name__ for e in seen):
        return "host name not found"
    if any(isinstance(e, ConnectionRefusedError) for e in seen):
        return "connection refused"
    return "no connection"


def _said(server: str) -> str:
    """The server's own words inside our sentence: without its closing punctuation, so that
    what follows ("; set OPENAI_API_KEY…") does not read "…Bearer ***).; set"."""
    text = server.rstrip(" .;:,")
    return f": {text}" if text else ""


def short_reason(error: APIError) -> str:
    if isinstance(error, APITimeoutError):
        return "timeout"
    return "connection error"


def _one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_cause(exc: BaseException, keys: Sequence[Secret]) -> str:
    root = root_cause(exc)
    text = str(root) or type(root).__name__
    return redact(_one_line(text, 160), keys)


def clean_cause(exc: BaseException, keys: Sequence[Secret]) -> BaseException:
    """The original exception, kept as __cause__ for debugging, with nothing secret in it.

    Scrubbed in place first (`scrub`: aiohttp's request_info headers masked, the library's
    traceback frames dropped, the whole chain too), since the original is also the
    `__context__` of an error raised while handling it. If its text still names a key, a
    stand-in with the text redacted takes its place.
    """
    scrub(exc)
    text = str(exc)
    clean = redact(text, keys)
    if clean == text and all(redact(str(e), keys) == str(e) for e in exception_chain(exc)):
        return exc
    return APIConnectionError(f"{type(exc).__name__}: {clean}")


def body_snippet(body: bytes, keys: Sequence[Secret]) -> str:
    text = body[:200].decode("utf-8", "replace")
    return redact(_one_line(text, 80), keys) or "an empty body"


def server_message_of(body: bytes, keys: Sequence[Secret]) -> str:
    """The server's own explanation from an error body, one line, credentials masked.

    OpenAI sends {"error": {"message": ...}}; others send {"error": "..."},
    {"message": ...} or {"detail": ...}, or plain text. Gemini's OpenAI-compatible
    endpoint wraps Google's error in a list, [{"error": {"code", "message", "status"}}]
    (https://ai.google.dev/gemini-api/docs/troubleshooting; seen on the wire in
    https://github.com/n4ze3m/page-assist/issues/406), so a one-item list is read inside.
    """
    if not body:
        return ""
    text: str
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace")
    else:
        text = _message_of(data) or body.decode("utf-8", "replace")
    return redact(_one_line(text), keys)


def _message_of(data: Any) -> str | None:
    if isinstance(data, list) and len(data) == 1:
        data = data[0]  # Gemini's [{"error": {...}}]
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message") or error.get("code") or error.get("type")
        return str(message) if message else None
    if isinstance(error, str) and error:
        return error
    for name in ("message", "detail"):
        if data.get(name):
            return str(data[name])
    return None


# ----- one failed attempt, judged for the client's retry loop ---------------------------


@dataclass(frozen=True)
class Failed:
    """How one attempt failed, and what the retry policy says about it."""

    error: APIError
    decision: policy.RetryDecision


@dataclass(frozen=True)
class Endpoint:
    """What a failure names and redacts: the server, its keys, the client's timeouts."""

    host: str
    base_url: str
    keys: Sequence[Secret]
    withheld: bool  # an environment key was set but not sent here (said in a 401)
    timeouts: Timeouts
    rand: Callable[[], float]  # the retry jitter (injected by tests)


def transport_failure(
    exc: BaseException, request: httpx.Request, retries: int, limit: int, endpoint: Endpoint
) -> Failed:
    """A transport error (no HTTP status) → its one-line error and the retry decision."""
    read_timeout = (request.extensions.get("timeout") or {}).get("read")
    error = connection_error(
        exc,
        retries,
        read_timeout,
        host=endpoint.host,
        base_url=endpoint.base_url,
        keys=endpoint.keys,
        timeouts=endpoint.timeouts,
    )
    error.__cause__ = clean_cause(exc, endpoint.keys)
    if isinstance(error, UntrustedCertificateError):  # the same certificate again: no retry
        return Failed(error, policy.RetryDecision(False, reason=short_reason(error)))
    reason = (
        UNREACHABLE
        if is_connect_failure(exc) and timeout_kind(exc) is None
        else short_reason(error)
    )
    decision = policy.decide_error(
        reason, retries_taken=retries, max_retries=limit, rand=endpoint.rand
    )
    return Failed(error, decision)


async def status_failure(
    response: httpx.Response,
    headers: Mapping[str, str],
    path: str,
    rate_limit: RateLimitInfo | None,
    retries: tuple[int, int],
    max_wait: float,
    endpoint: Endpoint,
) -> Failed:
    """An HTTP status ≥ 300 → its one-line error and the retry decision.

    `retries` is (retries taken, retries allowed); the body is read here (a body the
    connection drops is read as empty: the status alone still says what happened).
    """
    taken, limit = retries
    try:
        body = await response.aread()
    except Exception as exc:
        if not is_transport_error(exc):
            raise
        body = b""
    decision = policy.decide_response(
        response.status_code,
        headers,
        retries_taken=taken,
        max_retries=limit,
        max_wait=max_wait,
        rand=endpoint.rand,
    )
    request_id = headers.get("x-request-id")
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s %s status=%d request_id=%s retries=%d",
            response.request.method,
            path,
            response.status_code,
            request_id,
            taken,
        )
    error = error_from_status(
        response,
        path,
        body,
        request_id,
        rate_limit,
        decision,
        taken,
        host=endpoint.host,
        base_url=endpoint.base_url,
        keys=endpoint.keys,
        withheld=endpoint.withheld,
    )
    return Failed(error, decision)


def warn_retry(
    host: str, what: str, decision: policy.RetryDecision, retries: int, limit: int
) -> None:
    """Log the retry the client is about to make (`what`: `POST /chat/completions`)."""
    # Nobody accepting the connection is retried quietly: the one error line at the end
    # says the server is not reachable (three retry lines said nothing more).
    log.log(
        logging.INFO if decision.reason == UNREACHABLE else logging.WARNING,
        "Retrying %s on %s in %.2f s (retry %d of %d): %s",
        what,
        host,
        decision.delay,
        retries + 1,
        limit,
        decision.reason,
    )
