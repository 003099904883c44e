"""Every failure a user can meet, as one exception tree.

```
ChatError                      anything ipychat raises on purpose (magics show it as one line)
├── ConfigError                a setting is missing or wrong (bad URL, bad number, no endpoint)
│   └── NoAPIKeyError          no key for an endpoint that needs one
├── TemplateError              a prompt template or {name} interpolation is wrong
├── ContextLengthError         the prompt does not fit the model's context window
├── BudgetExceeded             sending could take spend past a budget or --max-cost
├── OfflineCacheMiss           offline mode and the reply is not in the cache
├── SecretInPromptError        the prompt contains something shaped like a credential
├── ImageError                 an image is unreadable, or the model cannot read images
├── Interrupted                the user stopped a request (partial results are kept)
└── APIError                   the server or the network failed us
    ├── APIConnectionError     could not connect, or the connection dropped
    │   ├── APITimeoutError    connect or read timeout
    │   └── UntrustedCertificateError  the server's TLS certificate failed verification
    ├── StreamError            a stream broke: no [DONE], malformed chunk, error mid-stream
    └── APIStatusError         the server answered with an error status
        ├── BadRequestError    400 / 422
        ├── AuthError          401 / 403
        ├── NotFoundError      404 (unknown model or wrong base URL)
        ├── RateLimitError     429 (retry_after says how long the server asked us to wait)
        └── ServerError        5xx
```

Messages are one line: what happened and what to do. They never contain a credential:
`ipychat.core.keys.redact` is applied to every server message before it is stored here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipychat.core.types import RateLimitInfo

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthError",
    "BadRequestError",
    "BudgetExceeded",
    "ChatError",
    "ConfigError",
    "ContextLengthError",
    "ImageError",
    "Interrupted",
    "InvalidReply",
    "NoAPIKeyError",
    "NotFoundError",
    "OfflineCacheMiss",
    "RateLimitError",
    "SecretInPromptError",
    "ServerError",
    "StreamError",
    "TemplateError",
    "UntrustedCertificateError",
    "status_error",
]


class ChatError(Exception):
    """Base of every error ipychat raises on purpose; its message is meant for the user."""


class ConfigError(ChatError):
    """A setting is missing or invalid."""


class InvalidReply(ChatError):
    """A typed reply (schema, choices) that does not fit, even when asked again; `reply` is
    the last reply (its text is what came back), `error` what is wrong with it."""

    def __init__(self, message: str, *, reply: object | None = None, error: str = "") -> None:
        super().__init__(message)
        self.reply = reply
        self.error = error


class NoAPIKeyError(ConfigError):
    """The endpoint needs an API key and none is configured."""


class TemplateError(ChatError):
    """A prompt template or an interpolated name is wrong; nothing was sent."""


class ContextLengthError(ChatError):
    """The prompt is larger than the model's context window (or max_input_tokens)."""


class BudgetExceeded(ChatError):
    """Sending could take spend past the session budget or the request's max cost."""


class OfflineCacheMiss(ChatError):
    """Offline mode is on and the reply is not in the cache."""


class SecretInPromptError(ChatError):
    """The prompt contains something shaped like a credential; nothing was sent."""


class ImageError(ChatError):
    """An image cannot be read or sent (format, size), or the model cannot read images;
    nothing was sent."""


class Interrupted(ChatError):
    """The user interrupted a request; `reply` holds whatever arrived (marked interrupted)."""

    def __init__(self, message: str, *, reply: object | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class APIError(ChatError):
    """The server or the network failed."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class APIConnectionError(APIError):
    """Could not connect, or the connection dropped before a full answer."""


class APITimeoutError(APIConnectionError):
    """A connect or read timeout expired."""


class UntrustedCertificateError(APIConnectionError):
    """The server's TLS certificate failed verification: the same again on every request
    (not retried), until the machine trusts it (SSL_CERT_FILE) or the URL changes."""


class StreamError(APIError):
    """A streamed reply broke off or carried an error."""


class APIStatusError(APIError):
    """The server answered with an HTTP error status; `retry_after` is the wait (seconds) it
    asked for in `retry-after-ms`/`retry-after`, if it said one."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        server_message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.server_message = server_message
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400/422: the request is wrong; retrying will not help."""


class AuthError(APIStatusError):
    """401/403: the key is missing, wrong or not allowed to use this model."""


class NotFoundError(APIStatusError):
    """404: unknown model or wrong base URL."""


class RateLimitError(APIStatusError):
    """429: too many requests or tokens; `retry_after` is the server's demand in seconds."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        rate_limit: RateLimitInfo | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after
        self.rate_limit = rate_limit  # the x-ratelimit-* headers of the 429, when sent


class ServerError(APIStatusError):
    """5xx: the server failed."""


def status_error(
    status_code: int,
    message: str,
    *,
    request_id: str | None = None,
    server_message: str | None = None,
    retry_after: float | None = None,
) -> APIStatusError:
    """The APIStatusError subclass that fits an HTTP status code."""
    kwargs = {
        "status_code": status_code,
        "request_id": request_id,
        "server_message": server_message,
        "retry_after": retry_after,
    }
    if status_code == 429:
        return RateLimitError(
            message,
            retry_after=retry_after,
            status_code=status_code,
            request_id=request_id,
            server_message=server_message,
        )
    cls: type[APIStatusError]
    if status_code in (400, 422):
        cls = BadRequestError
    elif status_code in (401, 403):
        cls = AuthError
    elif status_code == 404:
        cls = NotFoundError
    elif status_code >= 500:
        cls = ServerError
    else:
        cls = APIStatusError
    return cls(message, **kwargs)  # type: ignore[arg-type]
