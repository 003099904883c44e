"""The persistent ledger (ledger.db): written through from the in-kernel ledger in batches,
read back by later sessions, shared by processes writing at once, private, and never in
the way of a request when it cannot be used."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipychat.core.errors import BudgetExceeded, ChatError
from ipychat.engine.cache import ResponseCache
from ipychat.engine.ledger import Ledger, LedgerRow
from ipychat.engine.ledgerdb import DATABASE, LedgerStore, LedgerWarning
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer

KEY = "sk-test-" + "l" * 20


def row(cost: float | None = 0.01, **kw: object) -> LedgerRow:
    base: dict = dict(time=time.time(), thread="main", model="m", host="h", prompt_tokens=10)
    base.update(kw)
    return LedgerRow(cost=cost, **base)


def count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


def new_session(fake: FakeOpenAIServer, folder: Path, **settings: object) -> ChatSession:
    return ChatSession(
        Settings(base_url=fake.base_url, api_key=KEY, model="gpt-4o-mini", **settings),  # type: ignore[arg-type]
        cache=ResponseCache(folder),
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(folder: Path) -> Iterator[LedgerStore]:
    s = LedgerStore(folder)
    yield s
    s.close()


def test_a_request_is_recorded_in_the_cache_folder_0600_without_its_prompt(
    fake: FakeOpenAIServer, folder: Path
) -> None:
    session = new_session(fake, folder)
    try:
        reply = session.ask("the marker prompt Q7XW of this test")
        store = session.usage.store
        assert store is not None and store.path == folder / DATABASE
        assert store.flush()
        [recorded] = store.rows()
        assert recorded["model"] == "gpt-4o-mini" and recorded["outcome"] == "ok"
        assert recorded["cost"] == pytest.approx(reply.cost)
        assert recorded["completion_tokens"] == reply.usage.completion_tokens
        assert recorded["session"] == store.session and recorded["prompt"] is None
        for name in os.listdir(folder):
            if name.startswith(DATABASE):
                assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600, name
                # The prompt is nowhere in the database's bytes (nor its WAL).
                assert b"Q7XW" not in (folder / name).read_bytes(), name
    finally:
        session.close()
    assert b"Q7XW" not in (folder / DATABASE).read_bytes()


def test_log_prompts_keeps_the_prompt_as_sent(fake: FakeOpenAIServer, folder: Path) -> None:
    session = new_session(fake, folder, log_prompts=True)
    try:
        session.ask("the marker prompt Q7XW of this test")
        frame = session.usage.to_frame(all=True)
    finally:
        session.close()
    assert list(frame["prompt"]) == ["the marker prompt Q7XW of this test"]
    assert b"Q7XW" in (folder / DATABASE).read_bytes()


def test_the_record_outlives_the_session_and_names_every_kernel(
    fake: FakeOpenAIServer, folder: Path
) -> None:
    first = new_session(fake, folder)
    first.ask("one")
    first.ask("two")
    first.close()  # what a kernel's exit does (close_at_exit): the queue is written
    second = new_session(fake, folder)
    try:
        assert len(second.usage) == 0  # this kernel: nothing yet
        history = second.usage.history()
        assert len(history) == 2 and history.summary()[0].requests == 2
        second.ask("three")
        frame = second.usage.to_frame(all=True)
        assert len(frame) == 3 and frame["session"].nunique() == 2
        assert {"notebook", "kernel", "session", "prompt"} <= set(frame.columns)
        assert len(second.usage.to_frame()) == 1  # without all=True: this session's
        assert len(second.usage.to_frame(since=time.time() + 1)) == 0
    finally:
        second.close()


def test_rows_are_written_in_batches_not_one_by_one(store: LedgerStore) -> None:
    store.rows_per_write, store.interval = 1000, 60.0
    store.append([row(), row(), row()])
    time.sleep(0.5)
    # Queued, not written: the writer waits for 1,000 rows or 60 s (or a flush).
    assert not store.path.exists() or count(store.path) == 0
    assert store.flush() and count(store.path) == 3
    store.rows_per_write = 10
    store.append([row() for _ in range(10)])  # a full batch goes without a flush
    deadline = time.monotonic() + 20
    while count(store.path) < 13 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(store.path) == 13


def test_rows_go_within_the_interval_without_a_flush(store: LedgerStore) -> None:
    store.interval = 0.2
    store.append([row()])
    assert store.flush()  # the writer thread now idles, waiting for rows
    store.append([row()])
    deadline = time.monotonic() + 5  # the interval, not the writer's 10 s idle time
    while count(store.path) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(store.path) == 2


_WRITER = """
import sys, time
from pathlib import Path
from ipychat.engine.ledger import LedgerRow
from ipychat.engine.ledgerdb import LedgerStore

folder, go, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
store = LedgerStore(folder, rows_per_write=20, interval=0.005)
while not go.exists():
    time.sleep(0.005)
for i in range(0, n, 7):  # many small transactions, so the two processes interleave
    rows = [LedgerRow(time=time.time(), thread="t", model="m", host="h", cost=0.001)
            for _ in range(min(7, n - i))]
    store.append(rows)
    time.sleep(0.0005)
store.close()
print(store.session)
"""


def test_two_processes_writing_at_once_lose_no_row(folder: Path, tmp_path: Path) -> None:
    go, n = tmp_path / "go", 3000
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(folder), str(go), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    time.sleep(1.0)  # both imported and waiting
    go.touch()
    results = [w.communicate(timeout=180) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], results
    assert all("Warning" not in err for _, err in results), results
    sessions = [out.strip() for out, _ in results]
    with sqlite3.connect(folder / DATABASE) as db:
        per_session = dict(db.execute("SELECT session, COUNT(*) FROM requests GROUP BY session"))
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert per_session == {sessions[0]: n, sessions[1]: n}


def test_a_persistent_budget_counts_every_kernel_once(folder: Path) -> None:
    mine, other = Ledger(store=LedgerStore(folder)), LedgerStore(folder)
    try:
        mine.set_period_budget("day", 1.0)
        mine.record(row(cost=0.3))
        assert mine.store is not None and mine.store.flush()  # in memory and on disk
        other.append([row(cost=0.5)])
        other.flush()
        assert mine.periods() == [("day", 1.0, pytest.approx(0.8))]
        held = mine.reserve(0.2)  # exactly the budget: 0.3 of mine, counted once
        with pytest.raises(BudgetExceeded) as refused:
            mine.reserve(0.01)
        assert str(refused.value) == (
            "Budget: every kernel spent $0.80 today of the daily budget of $1.00 ($0.20 in "
            "flight); this request may cost up to $0.01. Raise it with %chat budget 1.1 "
            "--per day."
        )
        mine.settle(held, None)
        mine.set_period_budget("day", None)
        mine.reserve(5.0)  # removed: no limit
    finally:
        other.close()
        if mine.store is not None:
            mine.store.close()


def test_a_persistent_budget_refuses_in_a_new_session_before_sending(
    fake: FakeOpenAIServer, folder: Path
) -> None:
    first = new_session(fake, folder)
    first.ask("spend a little")
    first.set_budget(first.usage.spent * 1.5, per="month")
    first.close()
    second = new_session(fake, folder)
    try:
        with pytest.raises(
            BudgetExceeded,
            match=r"^Budget: every kernel spent \$0\.\d+ this "
            r"month of the monthly budget of .* --per month\.$",
        ):
            second.ask("this one is refused")
        assert len(fake.chat_requests) == 1  # nothing sent
        second.set_budget(None, per="month")
        second.ask("now it goes")
    finally:
        second.close()


def test_bad_budget_words_are_one_line_errors(store: LedgerStore) -> None:
    ledger = Ledger(store=store)
    with pytest.raises(ChatError, match=r"^--per takes day, week or month, not 'year'"):
        ledger.set_period_budget("year", 5)
    with pytest.raises(ChatError, match=r"positive number of dollars.*--per month"):
        ledger.set_period_budget("month", -1)
    with pytest.raises(ChatError, match="no persistent record"):
        Ledger().set_period_budget("month", 5)


def test_a_corrupt_database_degrades_to_memory_with_one_warning(
    fake: FakeOpenAIServer, folder: Path
) -> None:
    folder.mkdir(mode=0o700)
    (folder / DATABASE).write_bytes(b"this is not a database " * 100)
    session = new_session(fake, folder)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = session.ask("one")  # the request goes: the record fails behind it
            assert session.usage.store is not None
            session.usage.store.flush()
            second = session.ask("two")
        assert first.text and second.text and len(session.usage) == 2  # in memory
        said = [w for w in caught if issubclass(w.category, LedgerWarning)]
        assert len(said) == 1
        message = str(said[0].message)
        assert message == (
            f"ipychat: this kernel keeps its usage in memory only: {folder / DATABASE} cannot "
            "be used (DatabaseError: file is not a database); move it away to start a new "
            "record."
        )
        with pytest.raises(ChatError, match=r"^The persistent usage record is off"):
            session.usage.history()
        assert session.usage.periods() == []  # no persistent budget to check
    finally:
        session.close()
    assert (folder / DATABASE).read_bytes().startswith(b"this is not")  # left as it was


def test_an_unusable_folder_never_breaks_a_request(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    ledger_store = LedgerStore(blocked)
    ledger = Ledger(store=ledger_store)
    ledger.record(row())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ledger_store.flush()
    assert len(ledger) == 1 and ledger_store.broken is not None
    assert [w.category for w in caught] == [LedgerWarning]
    ledger.record(row())  # off: nothing queued, nothing raised
    assert len(ledger) == 2
    ledger_store.close()


def test_ipychat_ledger_off_keeps_no_record(
    fake: FakeOpenAIServer, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPYCHAT_LEDGER", "off")
    session = new_session(fake, folder)
    try:
        session.ask("hello")
        assert session.usage.store is None and len(session.usage) == 1
    finally:
        session.close()
    assert not (folder / DATABASE).exists()


def test_the_record_sits_in_the_default_cache_folder_without_a_cache_of_its_own(
    fake: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipychat.engine.cache import default_cache_dir
    from ipychat.engine.ledgerdb import default_directory

    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_directory() == default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("IPYCHAT_CACHE_DIR")
    assert default_directory() == default_cache_dir()
    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(tmp_path / "elsewhere"))
    session = ChatSession(
        Settings(base_url=fake.base_url, api_key=KEY, model="gpt-4o-mini"), cache=False
    )
    try:
        session.ask("uncached, still recorded")
        assert session.usage.store is not None and session.usage.store.flush()
    finally:
        session.close()
    assert count(tmp_path / "elsewhere" / DATABASE) == 1
