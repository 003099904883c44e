"""ipychat.map.failed: what a failed request means for its row and for the run. Pure."""

from __future__ import annotations

import pytest

from ipychat.core.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthError,
    BadRequestError,
    BudgetExceeded,
    ChatError,
    ConfigError,
    NoAPIKeyError,
    NotFoundError,
    RateLimitError,
    ServerError,
    StreamError,
    UntrustedCertificateError,
)
from ipychat.map.failed import bug, classify, outage


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RateLimitError("slow down", status_code=429), "limit"),
        # The same for every row: the run stops at once.
        (AuthError("bad key", status_code=401), "fatal"),
        (NotFoundError("no such model", status_code=404), "fatal"),
        (ConfigError("no endpoint"), "fatal"),
        (NoAPIKeyError("no key"), "fatal"),
        (UntrustedCertificateError("not trusted"), "fatal"),
        # This row's request is wrong: retrying it cannot help, the others go on.
        (BadRequestError("too long", status_code=400), "row"),
        (BudgetExceeded("over"), "row"),
        (ChatError("something of ours"), "row"),
        # May work next time.
        (ServerError("oops", status_code=503), "retry"),
        (APIConnectionError("dropped"), "retry"),
        (APITimeoutError("timed out"), "retry"),
        (StreamError("cut"), "retry"),
        (APIError("odd body"), "retry"),
    ],
)
def test_each_error_is_a_rows_or_the_runs(error: ChatError, kind: str) -> None:
    assert classify(error) == kind


def test_a_bug_is_named_by_its_type_only_and_chained() -> None:
    cause = KeyError("Authorization: Bearer sk-...")  # a bug's text may quote a request
    error = bug(cause)
    assert type(error) is ChatError and error.__cause__ is cause
    assert str(error) == (
        "ipychat failed while sending a row (KeyError): this is a bug in ipychat, please "
        "report it (the exception is this error's __cause__)"
    )


def test_an_outage_says_how_long_and_keeps_the_kind_of_the_last_answer() -> None:
    limited = outage(RateLimitError("429 from the server", status_code=429), 600.0)
    assert isinstance(limited, RateLimitError) and limited.status_code == 429
    assert str(limited) == (
        "No request was answered for 10 min (the outage limit, "
        "ipychat.map.dispatch.MAX_OUTAGE): the server kept refusing or failing. The last "
        "answer: 429 from the server"
    )
    down = outage(ServerError("HTTP 503", status_code=503), 45.0)
    assert type(down) is APIError and str(down).startswith("No request was answered for 45 s")
    assert str(down).endswith("The last answer: HTTP 503")
