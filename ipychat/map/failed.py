"""What a failed request means, for its row (retry it, or fail it) or for the whole run
(stop it): `classify`, and the errors that stop a run (`outage`, `bug`). Pure."""

from __future__ import annotations

from ipychat.core.errors import (
    APIError,
    AuthError,
    BadRequestError,
    ChatError,
    ConfigError,
    NotFoundError,
    RateLimitError,
    UntrustedCertificateError,
)
from ipychat.net.retry import format_wait

__all__ = ["QUOTA_GONE", "bug", "classify", "outage"]


def classify(exc: ChatError) -> str:
    """limit (a 429) | retry (may work next time) | row (this row is wrong) | fatal (all are)."""
    if isinstance(exc, RateLimitError):
        return "limit"
    if isinstance(exc, AuthError | NotFoundError | ConfigError | UntrustedCertificateError):
        return "fatal"
    if isinstance(exc, BadRequestError):
        return "row"
    if isinstance(exc, APIError):  # 5xx, 408/409, connection, timeout, broken or odd body
        return "retry"
    return "row"


def bug(exc: Exception) -> ChatError:
    """What stops a run when sending a row raised something no error of ours is: only its
    type in the message (its text may quote a request), the exception itself chained."""
    error = ChatError(
        f"ipychat failed while sending a row ({type(exc).__name__}): this is a bug in "
        "ipychat, please report it (the exception is this error's __cause__)"
    )
    error.__cause__ = exc
    return error


# A 429 that is about billing, not pace (OpenAI's `insufficient_quota`): waiting cannot help.
QUOTA_GONE = ("exceeded your current quota", "insufficient_quota")


def outage(last: ChatError, limit: float) -> ChatError:
    """What stops a run after `limit` seconds without an answer."""
    message = (
        f"No request was answered for {format_wait(limit)} (the outage limit, "
        f"ipychat.map.dispatch.MAX_OUTAGE): the server kept refusing or failing. The last "
        f"answer: {last}"
    )
    if isinstance(last, RateLimitError):
        return RateLimitError(message, status_code=429)
    return APIError(message)
