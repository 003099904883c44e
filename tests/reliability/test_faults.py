"""The fault matrix: every fault FakeOpenAIServer can inject × {session.ask, session.stream,
%%chatmap}, each with the outcome it must have.

Outcomes:
- `recovered`: retried and answered (the server saw the failed request and the retry);
- `error:<Class>`: one clear line, not retried (or retried until the retries ran out);
- `partial:<Class>`: a stream broke after text was given out: the caller got that text,
  then one clear line; never retried (the text would be said twice);
- `rows-failed`: %%chatmap wrote every row it could, the others carry their error in _error;
- `aborted`: %%chatmap stopped (the error concerns every row), kept the finished rows, and
  re-running the cell sends only the rest.

Whatever the outcome: no traceback, no key in any message, the ledger holds one row per
attempt the server saw, no row is sent again after it succeeded, and the next request works.
"""

from __future__ import annotations

import email.utils
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from _support import (
    CANARY,
    FaultCase,
    Tally,
    closed_port,
    is_one_line,
    loop_tasks,
    make_session,
    open_connections,
    prompt_of,
    run_cell,
    shell_on,
    succeeded,
    wait_for,
)
from IPython.core.error import UsageError

from ipychat.core.errors import ChatError
from ipychat.session import ChatSession, reset_session
from ipychat.testing import FakeOpenAIServer, Fault

R = "recovered"
ROWS = 4
PROMPT = "hello fault matrix"


def _date_in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@dataclass(frozen=True)
class Case:
    name: str
    faults: Callable[[], list[Fault]] | None  # None: nothing listens (connection refused)
    ask: str
    stream: str
    chatmap: str
    phrase: dict[str, str] = field(default_factory=dict)  # path -> words the message holds
    min_wait: float = 0.0  # seconds the server asked for, obeyed before the retry


def _status(code: int, **headers: str) -> Callable[[], list[Fault]]:
    return lambda: [Fault.status(code, headers=headers)]


CASES = [
    Case("429 retry-after-ms", _status(429, **{"retry-after-ms": "50"}), R, R, R),
    Case("429 Retry-After: 1", _status(429, **{"retry-after": "1"}), R, R, R, min_wait=0.95),
    Case(
        "429 Retry-After: date",
        lambda: [Fault.status(429, headers={"retry-after": _date_in(2)})],
        R,
        R,
        R,
        min_wait=0.9,
    ),
    Case("429 no header", _status(429), R, R, R),
    Case(
        "429 over the cap",
        _status(429, **{"retry-after": "3600"}),
        "error:RateLimitError",
        "error:RateLimitError",
        "aborted",
        phrase={p: "asked to wait 1 h; try again after" for p in ("ask", "stream", "chatmap")},
    ),
    *[
        Case(str(code), _status(code, **{"retry-after-ms": "50"}), R, R, R)
        for code in (408, 409, 500, 502, 503, 504)
    ],
    Case(
        "connection refused",
        None,
        "error:APIConnectionError",
        "error:APIConnectionError",
        "rows-failed",
        phrase={p: "is not reachable (connection refused" for p in ("ask", "stream", "chatmap")},
    ),
    Case("reset mid-request", lambda: [Fault.reset()], R, R, R),
    Case(
        "reset mid-stream",
        lambda: [Fault.reset_mid_stream()],
        R,
        "partial:StreamError",
        R,
        phrase={"stream": "the connection broke"},
    ),
    Case("hang past read timeout", lambda: [Fault.hang()], R, R, R, min_wait=0.95),
    Case(
        "stream cut before [DONE]",
        lambda: [Fault.truncate()],
        R,
        "partial:StreamError",
        R,
        phrase={"stream": "ended before [DONE]"},
    ),
    Case(
        "malformed JSON",
        lambda: [Fault.malformed_json()],
        R,
        "partial:StreamError",
        R,
        phrase={"stream": "a malformed chunk arrived"},
    ),
    Case(
        "error payload mid-stream",
        lambda: [Fault.error_mid_stream(message="The engine broke mid-reply.")],
        R,
        "partial:StreamError",
        R,
        phrase={"stream": "the server sent an error: The engine broke mid-reply."},
    ),
    Case(
        "400",
        _status(400),
        "error:BadRequestError",
        "error:BadRequestError",
        "rows-failed",
        phrase={p: "rejected the request (HTTP 400)" for p in ("ask", "stream", "chatmap")},
    ),
    Case(
        "401",
        _status(401),
        "error:AuthError",
        "error:AuthError",
        "aborted",
        phrase={p: "refused the API key (HTTP 401)" for p in ("ask", "stream", "chatmap")},
    ),
    Case(
        "403",
        _status(403),
        "error:AuthError",
        "error:AuthError",
        "aborted",
        phrase={p: "denied access (HTTP 403)" for p in ("ask", "stream", "chatmap")},
    ),
    Case(
        "404",
        _status(404),
        "error:NotFoundError",
        "error:NotFoundError",
        "aborted",
        phrase={
            p: "found nothing at /chat/completions (HTTP 404)" for p in ("ask", "stream", "chatmap")
        },
    ),
]
PATHS = ("ask", "stream", "chatmap")
MATRIX = [pytest.param(case, path, id=f"{case.name}-{path}") for case in CASES for path in PATHS]


def _session_for(case: Case, server: FakeOpenAIServer, tmp_path: Path) -> ChatSession:
    url = server.base_url if case.faults else f"http://127.0.0.1:{closed_port()}/v1"
    # A 1 s read timeout bounds a silent stream; reply_timeout bounds a silent non-streamed
    # reply (without it a hung server holds a %%chatmap row for 600 s).
    return make_session(url, tmp_path / "cache", reply_timeout=1.0)


def _check_message(message: str, case: Case, path: str) -> None:
    assert is_one_line(message), message
    assert "Traceback" not in message and CANARY not in message
    phrase = case.phrase.get(path)
    if phrase:
        assert phrase in message, message


def _direct(case: Case, path: str, session: ChatSession, server: FakeOpenAIServer) -> str:
    """session.ask or session.stream through the fault; returns the observed outcome."""
    deltas: list[str] = []
    try:
        if path == "ask":
            reply = session.ask(PROMPT, cache=False)
        else:
            with session.stream(PROMPT, cache=False) as stream:
                deltas.extend(stream)
            assert stream.reply is not None
            reply = stream.reply
    except ChatError as exc:
        _check_message(str(exc), case, path)
        kind = "partial" if deltas else "error"
        assert session.usage.rows[-1].outcome == "error"
        return f"{kind}:{type(exc).__name__}"
    assert reply.text == f"Echo: {PROMPT}"
    if path == "stream":
        assert "".join(deltas) == reply.text
    assert reply.retries == 1, reply
    assert session.usage.rows[-1].outcome == "ok" and session.usage.rows[-1].retries == 1
    return R


def _chatmap(case: Case, session: ChatSession, server: FakeOpenAIServer) -> str:
    with shell_on(session) as shell:
        frame = pd.DataFrame({"text": [f"row {i}" for i in range(ROWS)]})
        shell.user_ns["df"] = frame
        line, cell = "df -o out --retries 1", "Say {text}"
        raised: UsageError | None = None
        try:
            run_cell(shell, "chatmap", line, cell)
        except UsageError as exc:
            raised = exc
        frame = shell.user_ns["df"]
        errors = frame["_error"] if "_error" in frame else pd.Series([None] * ROWS)
        ok = int((frame["out"].notna() & errors.isna()).sum())
        failed = int(errors.notna().sum())
        pending = ROWS - ok - failed
        for message in errors.dropna():
            _check_message(str(message), case, "chatmap")
        if raised is not None:
            _check_message(str(raised), case, "chatmap")
            assert pending and "Stopped after" in str(raised), (raised, ok, failed)
            outcome = "aborted"
            # Re-running the cell sends only what is missing (finished rows are cached).
            before = len(server.chat_requests)
            run_cell(shell, "chatmap", line, cell)
            frame = shell.user_ns["df"]
            assert frame["out"].notna().all()
            assert len(server.chat_requests) - before == pending
        elif failed:
            assert pending == 0
            outcome = "rows-failed"
        else:
            assert ok == ROWS and pending == 0
            assert len(server.chat_requests) == ROWS + 1  # the fault, then its retry
            outcome = R
        assert frame["out"].dropna().str.startswith("Echo: Say row").all()
    # The ledger has one row per attempt the server saw (%%chatmap retries itself).
    sent = [row for row in session.usage.rows if not row.cached]
    attempts = len(server.chat_requests) if case.faults else ROWS * 2  # refused: 1 retry each
    assert len(sent) == attempts, (len(sent), attempts)
    return outcome


@pytest.mark.parametrize(("case", "path"), MATRIX)
def test_fault(
    case: Case, path: str, server: FakeOpenAIServer, tmp_path: Path, tally: Tally
) -> None:
    session = _session_for(case, server, tmp_path)
    try:
        if case.faults is not None:
            server.script(*case.faults())
        started = time.monotonic()
        if path == "chatmap":
            observed = _chatmap(case, session, server)
        else:
            observed = _direct(case, path, session, server)
        elapsed = time.monotonic() - started
        requests = server.chat_requests
        tally.faults.append(
            FaultCase(case.name, path, getattr(case, path), observed, len(requests), elapsed)
        )
        assert observed == getattr(case, path)
        if observed == R and case.min_wait:
            assert elapsed >= case.min_wait, f"retried after {elapsed:.2f} s"
        if path != "chatmap":
            expected = {R: 2, "error": 1, "partial": 1}[observed.split(":")[0]]
            assert len(requests) == (expected if case.faults else 0)
        # Never sent again after a success: at most one whole reply per prompt.
        successes = Counter(prompt_of(r) for r in requests if succeeded(r))
        tally.duplicates += sum(n - 1 for n in successes.values())
        if path == "chatmap":
            tally.rows_checked += ROWS
        assert all(n == 1 for n in successes.values()), successes
        # The next request works (the fault is gone; a refused endpoint is fixed first).
        if case.faults is None:
            session.configure(base_url=server.base_url)
        assert session.ask("after the fault", cache=False).text == "Echo: after the fault"
        # Nothing is left behind: no task on the loop, no connection once the session closes.
        tasks = loop_tasks(session)
        session.close()
        left = wait_for(lambda: open_connections(server.port) == 0, timeout=3)
        tally.leak_checks += 1
        if tasks or not left:
            tally.leaks.append(f"{case.name}/{path}: tasks {tasks}, connections {not left}")
        assert not tasks and left
    finally:
        session.close()
        reset_session(None)
