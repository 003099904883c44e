"""The persistent ledger: every request's row in SQLite, so spend outlives the kernel.

`ledger.db` sits in the cache directory (`$IPYCHAT_CACHE_DIR`, else ~/.cache/ipychat; the
folder a `ResponseCache` given to the session uses), 0600 like `cache.db`. One row per
request: time, notebook path (when Jupyter says it), kernel, session, thread, model, host,
tokens, cost, cached, outcome, error. Never the prompt, unless the `log_prompts` setting is
on (`%config ChatMagics.log_prompts = True`); then the prompt as it was sent (after
`redact`).

Writes never hold up a request: `append` puts rows on a queue and returns; a writer thread
of this store writes them, one transaction per `rows_per_write` rows (5,000) or per `interval`
seconds, whichever comes first, and everything left at `flush`/`close` (and at exit). A
thread rather than the session's loop: a write may wait up to `BUSY_SECONDS` for another
kernel's transaction (WAL mode lets readers on, one writer at a time), and the loop must
not wait with it. The thread ends after `IDLE_SECONDS` without rows and starts again on
the next.

Several kernels write at once: WAL mode and SQLite's busy timeout order the writers; a
batch that still finds the database locked is put back and written on the next round, so
no row is dropped for contention. Anything else (a corrupt file, an unwritable folder, a
folder someone else can change) turns the store off for this process: one `LedgerWarning`
line, shown at the next request, and the in-kernel ledger carries on in memory as before.

Where the notebook path comes from: jupyter_server starts a notebook's kernel with
`JPY_SESSION_NAME` set to the notebook's full path (`SessionManager.get_kernel_env`;
jupyter-server/jupyter_server#679 and #1100, jupyter_server 2.x), and ipykernel copies it
into the user's `__session__` (`IPythonKernel.__init__`; ipython/ipykernel#1078, 7.4 here).
Both are the same string, the path when the kernel started: a rename is seen at the next
restart (jupyter-server/jupyter_server#1341). The environment variable is read, as it needs
no shell. Without it (a terminal; a front end that does not set it: VS Code's own
`__vsc_ipynb_file__` is not read) rows have no notebook and `--notebook` needs a PATH.
"""

from __future__ import annotations

import atexit
import contextlib
import operator
import os
import sqlite3
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ChatError

if TYPE_CHECKING:
    from ipychat.engine.ledger import LedgerRow

__all__ = [
    "DATABASE",
    "LedgerStore",
    "LedgerUnavailable",
    "LedgerWarning",
    "default_directory",
    "kernel_id",
    "notebook_path",
    "open_store",
]

DATABASE = "ledger.db"
ENV_LEDGER = "IPYCHAT_LEDGER"  # off: no persistent record (the in-kernel ledger only)
BUSY_SECONDS = 10.0  # how long a write waits for another kernel's transaction
IDLE_SECONDS = 10.0  # the writer thread ends after this long without rows
SCHEMA_VERSION = 1

# LedgerRow's fields, then what only the persistent record keeps.
ROW_FIELDS = (
    "time",
    "thread",
    "model",
    "host",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
    "saved",
    "cached",
    "estimated",
    "latency",
    "time_to_first_token",
    "retries",
    "outcome",
    "error",
)
EXTRA_FIELDS = ("notebook", "kernel", "session", "prompt")
_ROW_VALUES = operator.itemgetter(*ROW_FIELDS)  # a row's values in column order, at C speed
COLUMNS = ROW_FIELDS + EXTRA_FIELDS

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL, thread TEXT, model TEXT, host TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER,
    cost REAL, saved REAL, cached INTEGER, estimated INTEGER, latency REAL,
    time_to_first_token REAL, retries INTEGER, outcome TEXT, error TEXT,
    notebook TEXT, kernel TEXT, session TEXT NOT NULL, prompt TEXT
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
CREATE TABLE IF NOT EXISTS budgets (
    period TEXT PRIMARY KEY, usd REAL NOT NULL, set_at REAL NOT NULL
);
PRAGMA user_version = {SCHEMA_VERSION};
"""
_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class LedgerWarning(UserWarning):
    """The persistent ledger could not be used: this kernel's record stays in memory."""


class LedgerUnavailable(ChatError):
    """A question only the persistent ledger answers, while it is off (one line: why)."""


def notebook_path() -> str | None:
    """The notebook this kernel runs, as Jupyter started it (see the module docstring)."""
    return os.environ.get("JPY_SESSION_NAME") or None


def kernel_id() -> str:
    """This kernel's id (its connection file's name, kernel-ID.json), else "pid-N"."""
    app = sys.modules.get("ipykernel.kernelapp")  # never imported here: only if running
    if app is not None and app.IPKernelApp.initialized():
        name = Path(app.IPKernelApp.instance().connection_file or "").stem
        if name:
            return name.removeprefix("kernel-")
    return f"pid-{os.getpid()}"


def open_store(cache: object, log_prompts: Callable[[], bool]) -> LedgerStore | None:
    """The store of a new engine given `cache` (a ResponseCache: its folder; else the
    default cache folder); None when `IPYCHAT_LEDGER` is off (0, off, false, no)."""
    if os.environ.get(ENV_LEDGER, "").strip().lower() in ("0", "off", "false", "no"):
        return None
    folder = getattr(cache, "directory", None)
    if isinstance(folder, Path):
        return LedgerStore(folder, log_prompts=log_prompts)
    return LedgerStore(default_directory, log_prompts=log_prompts)


def default_directory() -> Path:
    """`$IPYCHAT_CACHE_DIR`, else ~/.cache/ipychat: `engine.cache.default_cache_dir`, not
    imported from there (the cache imports the ledger, through `exchange`); a test checks
    the two agree."""
    return Path(
        os.environ.get("IPYCHAT_CACHE_DIR") or Path.home() / ".cache" / "ipychat"
    ).expanduser()


def _is_contention(exc: BaseException) -> bool:
    """Another kernel holds the write lock past the busy timeout: try again later."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _never() -> bool:
    return False


class LedgerStore:
    """The SQLite record of one session's requests (see the module docstring).

    `directory` is the cache directory, or a callable giving it when first needed (the
    engine's, which follows the cache it was given). `log_prompts()` is asked at each
    `append`: True keeps the prompt with its row.
    """

    def __init__(
        self,
        directory: Path | Callable[[], Path],
        *,
        log_prompts: Callable[[], bool] = _never,
        rows_per_write: int = 5000,
        interval: float = 1.0,
    ) -> None:
        self._directory = directory
        self._log_prompts = log_prompts
        self.rows_per_write = rows_per_write
        self.interval = interval
        self.session = uuid.uuid4().hex  # this store's rows, apart from every other's
        self.kernel = kernel_id()
        self.notebook = notebook_path()
        self._cond = threading.Condition()
        self._pending: list[tuple[LedgerRow, str | None]] = []
        self._appended = self._done = 0  # rows queued / written or given up, ever
        self._flushing = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._writer: sqlite3.Connection | None = None  # the writer thread's
        self._reader: sqlite3.Connection | None = None  # queries and budgets, under _read
        self._read = threading.Lock()
        self._broken: str | None = None
        self._warned = False
        _live.add(self)

    columns = COLUMNS  # of `rows`' dicts, in order

    def __repr__(self) -> str:
        state = f"off: {self._broken}" if self._broken else f"{len(self._pending)} queued"
        return f"LedgerStore({self.path}, {state})"

    @property
    def path(self) -> Path:
        """Where the database is (or will be)."""
        directory = self._directory() if callable(self._directory) else self._directory
        return Path(directory).expanduser() / DATABASE

    @property
    def broken(self) -> str | None:
        """Why the store is off for this process, or None while it works."""
        return self._broken

    # ----- writing ---------------------------------------------------------------------------

    def append(self, rows: Sequence[LedgerRow], prompt: str | None = None) -> None:
        """Queue `rows` (and `prompt`, kept only under `log_prompts`); returns at once."""
        if self._broken is not None:
            self._warn_once()
            return
        if not rows:
            return
        kept = prompt if prompt is not None and self._log_prompts() else None
        with self._cond:
            self._pending.extend([(row, kept) for row in rows])
            self._appended += len(rows)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ipychat-ledger", daemon=True
                )
                self._thread.start()
            elif len(self._pending) == len(rows) or len(self._pending) >= self.rows_per_write:
                # The first rows start the writer's `interval` (it idles until told); a
                # full batch goes at once.
                self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row queued so far is written (or given up); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._appended
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._done < target and self._thread is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._flushing -= 1
        self._warn_once()
        return self._done >= target

    def close(self) -> None:
        """Write what is queued, end the writer thread, close the database (it reopens on
        the next use)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(BUSY_SECONDS * 3)
        with self._cond:
            self._closing = False
            writer, self._writer = self._writer, None
        with self._read:
            reader, self._reader = self._reader, None
        for connection in (writer, reader):
            if connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
        self._warn_once()

    def _run(self) -> None:
        """The writer thread: a batch at a time until idle or closed."""
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._write(batch)

    def _next_batch(self) -> list[tuple[LedgerRow, str | None]] | None:
        """The rows to write next: once `rows_per_write` are queued, `interval` seconds
        after the first, or at once when flushing or closing; None: the thread ends."""
        with self._cond:
            idle_until = time.monotonic() + IDLE_SECONDS
            while not self._pending:
                left = idle_until - time.monotonic()
                if self._closing or self._broken is not None or left <= 0:
                    self._thread = None
                    self._cond.notify_all()
                    return None
                self._cond.wait(left)
            due = time.monotonic() + self.interval
            while (
                not self._closing
                and not self._flushing
                and len(self._pending) < self.rows_per_write
            ):
                left = due - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, self._pending = self._pending, []
            return batch

    def _write(self, batch: list[tuple[LedgerRow, str | None]]) -> None:
        """One transaction for `batch`: written, put back (contention), or given up (off)."""
        written = False
        try:
            if self._writer is None:
                self._writer = self._open()
            values = [self.row_values(row, prompt) for row, prompt in batch]
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                self._writer.executemany(_INSERT, values)
                self._writer.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("ROLLBACK")
                raise
            written = True
        except Exception as exc:
            if _is_contention(exc) and not self._closing:
                with self._cond:
                    self._pending[:0] = batch  # first again, in order
                time.sleep(0.05)
                return
            self._fail(exc)
        with self._cond:
            self._done += len(batch)
            if not written:  # off: what is still queued is given up as well
                self._done += len(self._pending)
                self._pending = []
            self._cond.notify_all()

    def row_values(self, row: LedgerRow, prompt: str | None) -> tuple[Any, ...]:
        """`row` as the `requests` table's values, in `COLUMNS` order."""
        return (*_ROW_VALUES(row.__dict__), self.notebook, self.kernel, self.session, prompt)

    # ----- the database ----------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """A connection to `ledger.db` in the private directory, WAL mode, schema made."""
        from ipychat.core.files import private_directory
        from ipychat.engine.cachedisk import private_database

        directory = private_directory(self.path.parent)
        private_database(directory, DATABASE)
        connection = sqlite3.connect(
            directory / DATABASE,
            timeout=BUSY_SECONDS,
            isolation_level=None,  # autocommit: transactions are explicit (BEGIN IMMEDIATE)
            check_same_thread=False,  # one user at a time: the writer thread, or under _read
        )
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"it was written by a newer ipychat (schema {version}); upgrade ipychat"
                )
            if version < SCHEMA_VERSION:  # made once: later opens take no write lock
                connection.executescript(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def _fail(self, exc: BaseException) -> None:
        """Off for this process: the reason (with what to do) is kept and said once."""
        from ipychat.core.files import UnsafeDirectory

        if self._broken is not None:
            return
        if isinstance(exc, UnsafeDirectory):  # its text says why and what to do
            self._broken = str(exc).rstrip(".")
        else:
            self._broken = (
                f"{self.path} cannot be used ({type(exc).__name__}: {str(exc).rstrip('.')}); "
                "move it away to start a new record"
            )

    def _warn_once(self) -> None:
        if self._broken is None or self._warned:
            return
        self._warned = True
        warnings.warn(
            f"ipychat: this kernel keeps its usage in memory only: {self._broken}.",
            LedgerWarning,
            stacklevel=3,
        )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of `sql` on the reader connection; LedgerUnavailable (one line) when off."""
        if self._broken is not None:
            self._warn_once()
            raise LedgerUnavailable(
                f"The persistent usage record is off in this kernel: {self._broken}, then "
                "restart the kernel."
            )
        with self._read:
            try:
                if self._reader is None:
                    self._reader = self._open()
                return self._reader.execute(sql, params).fetchall()
            except Exception as exc:
                if _is_contention(exc):
                    raise LedgerUnavailable(
                        f"The usage record in {self.path} is busy (another kernel holds it): "
                        "try again."
                    ) from None
                self._fail(exc)
        return self.query(sql, params)  # raises LedgerUnavailable, saying why

    # ----- questions -------------------------------------------------------------------------

    def rows(
        self, since: float | None = None, *, session: str | None = None
    ) -> list[dict[str, Any]]:
        """Every recorded row (of every kernel, or of `session` only) since `since`, oldest
        first, as dicts of `COLUMNS`; this store's queued rows are written first."""
        self.flush()
        terms: list[str] = []
        params: list[Any] = []
        if since is not None:
            terms.append("time >= ?")
            params.append(since)
        if session is not None:
            terms.append("session = ?")
            params.append(session)
        where = f"WHERE {' AND '.join(terms)}" if terms else ""
        found = self.query(f"SELECT {', '.join(COLUMNS)} FROM requests {where} ORDER BY id", params)
        out = []
        for values in found:
            row = dict(zip(COLUMNS, values, strict=True))
            row["cached"], row["estimated"] = bool(row["cached"]), bool(row["estimated"])
            out.append(row)
        return out

    def spent_by_others(self, since: float) -> float:
        """What every other session (other kernels, earlier kernels) spent since `since`.

        This session's own spend is the in-memory ledger's, which holds every row of it
        whether written yet or not: so nothing is counted twice or missed in between."""
        found = self.query(
            "SELECT TOTAL(cost) FROM requests WHERE time >= ? AND session != ?",
            (since, self.session),
        )
        return float(found[0][0])

    def budgets(self) -> dict[str, float]:
        """The persistent budgets by period (day | week | month)."""
        return {period: usd for period, usd in self.query("SELECT period, usd FROM budgets")}

    def set_budget(self, period: str, usd: float | None) -> None:
        """Set (None: remove) the budget of `period`, for every kernel from now on."""
        if usd is None:
            self.query("DELETE FROM budgets WHERE period = ?", (period,))
        else:
            self.query(
                "INSERT INTO budgets (period, usd, set_at) VALUES (?, ?, ?) ON CONFLICT(period) "
                "DO UPDATE SET usd = excluded.usd, set_at = excluded.set_at",
                (period, usd, time.time()),
            )


# Every store still alive at exit writes what it queued (the writer thread is a daemon).
_live: weakref.WeakSet[LedgerStore] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for store in list(_live):
        with contextlib.suppress(Exception):
            store.close()
