"""Helpers of the reliability suite: sessions and shells on a fake server, and the probes
that look at the process from outside (sockets in /proc/net/tcp, RSS, the loop's tasks)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import socket
import string
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipychat.engine.cache import ResponseCache
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import RecordedRequest

# Must never appear anywhere but in the request headers the fake server receives. Built at
# run time (never a credential-shaped literal in the repo) and random like a real key, so
# the credential check (ipychat.core.keys.KEY_SHAPES) knows it for what it is.
_RNG = random.Random(20240115)
CANARY = "sk-canary-" + "".join(
    _RNG.choice(string.ascii_letters + string.digits) for _ in range(48)
)
MODEL = "gpt-4o-mini"


# ----- the summary table ----------------------------------------------------------------------


@dataclass
class FaultCase:
    fault: str
    path: str
    expected: str
    observed: str
    requests: int
    seconds: float


@dataclass
class Tally:
    """What the suite saw, for the table printed at the end (conftest.py)."""

    faults: list[FaultCase] = field(default_factory=list)
    bad_inputs: dict[str, bool] = field(default_factory=dict)
    rows_checked: int = 0
    rows_lost: int = 0
    duplicates: int = 0
    leak_checks: int = 0
    leaks: list[str] = field(default_factory=list)
    interrupts: Counter[str] = field(default_factory=Counter)
    soak: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, int] = field(default_factory=dict)
    kernel: list[str] = field(default_factory=list)

    @property
    def used(self) -> bool:
        return bool(
            self.faults
            or self.bad_inputs
            or self.soak
            or self.interrupts
            or self.secrets
            or self.kernel
        )

    def lines(self) -> list[str]:
        out: list[str] = []
        if self.faults:
            faults = list(dict.fromkeys(c.fault for c in self.faults))
            paths = list(dict.fromkeys(c.path for c in self.faults))
            outcomes = Counter(c.observed.split(":")[0] for c in self.faults)
            unexpected = sum(1 for c in self.faults if c.observed != c.expected)
            width = max(len(f) for f in faults)
            out.append(
                f"faults tried             {len(faults)} faults × {len(paths)} paths = "
                f"{len(self.faults)} cases"
            )
            shown = " · ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            out.append(f"outcomes                 {shown} · unexpected {unexpected}")
            out.append("")
            out.append(f"  {'fault':<{width}}  " + "  ".join(f"{p:<42}" for p in paths))
            for fault in faults:
                cells = []
                for path in paths:
                    case = next(
                        (c for c in self.faults if c.fault == fault and c.path == path), None
                    )
                    cells.append(
                        "–"
                        if case is None
                        else f"{case.observed} ({case.requests} req, {case.seconds:.1f} s)"
                    )
                out.append(f"  {fault:<{width}}  " + "  ".join(f"{c:<42}" for c in cells))
            out.append("")
        out.append(f"rows lost                {self.rows_lost} (of {self.rows_checked:,} checked)")
        out.append(f"duplicates after success {self.duplicates}")
        leak_text = "; ".join(self.leaks) if self.leaks else "threads, tasks, connections"
        out.append(
            f"leaks                    {len(self.leaks)} ({self.leak_checks} checks: {leak_text})"
        )
        if self.bad_inputs:
            handled = sum(self.bad_inputs.values())
            out.append(
                f"bad inputs handled       {handled}/{len(self.bad_inputs)} "
                "(one line each, 0 requests sent)"
            )
        if self.interrupts:
            shown = " · ".join(f"{k} {v}" for k, v in sorted(self.interrupts.items()))
            out.append(f"interrupts               {shown}")
        for key, value in self.soak.items():
            out.append(f"soak {key:<19} {value}")
        if self.secrets:
            s = self.secrets
            out.append(
                f"secrets                  canary hits {s.get('hits', 0)} in "
                f"{s.get('artefacts', 0)} artefacts ({s.get('bytes', 0):,} bytes searched); "
                f"key refused {s.get('refused', 0)} times (magic arguments, a prompt), never echoed"
            )
        if "hygiene refused" in self.secrets:
            s = self.secrets
            out.append(
                f"data hygiene             {s['hygiene refused']} credential-shaped prompts refused "
                f"before sending (magics, panel, API); {s['hygiene masked requests']} requests "
                "sent with redact on: 0 e-mails, phones or cards reached the server"
            )
        for line in self.kernel:
            out.append(f"kernel reality           {line}")
        return out


TALLY = Tally()


# ----- sessions and shells --------------------------------------------------------------------


def make_session(base_url: str, cache_dir: Path | None, **settings: Any) -> ChatSession:
    """A session on `base_url` with the canary key, installed as the kernel session."""
    values: dict[str, Any] = {
        "base_url": base_url,
        "api_key": CANARY,
        "model": MODEL,
        "max_retries": 1,
        "read_timeout": 1.0,
        "connect_timeout": 2.0,
    }
    values.update(settings)
    session = ChatSession(
        Settings(**values), cache=ResponseCache(cache_dir) if cache_dir is not None else False
    )
    reset_session(session)
    return session


@contextlib.contextmanager
def shell_on(session: ChatSession) -> Iterator[Any]:
    """The process's InteractiveShell with ipychat loaded against `session`, cleaned after."""
    from IPython.core.interactiveshell import InteractiveShell

    reset_session(session)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ipychat")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "ipychat")
        shell.config.pop("ChatMagics", None)
        keep = ("In", "Out", "exit", "quit", "get_ipython")
        for name in [n for n in shell.user_ns if not n.startswith("_") and n not in keep]:
            shell.user_ns.pop(name, None)


def run_cell(shell: Any, magic: str, line: str, cell: str | None = None) -> str:
    """Run a cell (or line) magic; what it displayed and printed, as text."""
    from IPython.utils.capture import capture_output

    with capture_output() as out:
        if cell is None:
            shell.run_line_magic(magic, line)
        else:
            shell.run_cell_magic(magic, line, cell)
    parts = [out.stdout, out.stderr]
    for o in out.outputs:
        parts.extend(str(v) for v in o.data.values())
    return "\n".join(parts)


# ----- probes ---------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_OPEN_STATES = {"01", "08"}  # ESTABLISHED, CLOSE_WAIT (a socket we forgot to close)


def open_connections(port: int) -> int:
    """Client-side TCP connections of this machine to 127.0.0.1:`port` that are still open."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                remote, state = fields[2], fields[3]
                if int(remote.rsplit(":", 1)[1], 16) == port and state in _OPEN_STATES:
                    count += 1
    return count


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loop_tasks(session: ChatSession) -> list[str]:
    """Tasks alive on the session's loop besides the one asking (a leak if any)."""

    async def others() -> list[str]:
        me = asyncio.current_task()
        return [repr(t) for t in asyncio.all_tasks() if t is not me and not t.done()]

    return session.submit(others()).result(5)


def loop_responsive(session: ChatSession, timeout: float = 2.0) -> bool:
    """The loop thread is alive and runs a coroutine promptly."""

    async def ping() -> bool:
        return True

    try:
        return session.submit(ping()).result(timeout)
    except Exception:
        return False


def ipychat_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("ipychat"))


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def prompt_of(request: RecordedRequest) -> str:
    body = request.body if isinstance(request.body, dict) else {}
    messages = body.get("messages") or [{}]
    return str(messages[-1].get("content", ""))


def succeeded(request: RecordedRequest) -> bool:
    """The server sent this request a whole, well-formed reply."""
    return request.status == 200 and request.fault is None


def is_one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip() and len(message) < 600


def error_texts(exc: BaseException) -> str:
    """The message, the full traceback and every chained cause's, as one text."""
    return "".join(traceback.format_exception(exc))
