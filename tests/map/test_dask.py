"""session.map over a Dask DataFrame, on a real LocalCluster (2 worker processes) against a
real loopback FakeOpenAIServer; the shared cache and pace on a real redis-server.

What Dask does is Dask's: a task whose worker dies is run again on another ("the scheduler
will reschedule the task on another worker", https://distributed.dask.org/en/stable/
killed.html), so the kill test only kills a worker process, as a crash would.
"""

from __future__ import annotations

import collections
import os
import pickle
import signal
import time
from typing import Any

import pandas as pd
import pytest

from ipychat.core.errors import BudgetExceeded, ChatError, ConfigError
from ipychat.engine.cache import ResponseCache
from ipychat.engine.stores.counted import StoreCache
from ipychat.engine.stores.redis import RedisStore
from ipychat.map.dask import DaskPlan, is_dask_frame
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer, Fault

dd = pytest.importorskip("dask.dataframe")

pytestmark = [pytest.mark.dask, pytest.mark.slow]

ROWS = 120


def frame(rows: int = ROWS, partitions: int = 4) -> Any:
    pdf = pd.DataFrame({"name": [f"item {i}" for i in range(rows)], "n": range(rows)})
    return dd.from_pandas(pdf, npartitions=partitions)


def prompt_of(request: Any) -> str:
    return str(request.body["messages"][-1]["content"])


def new_session(fake: FakeOpenAIServer, cache: Any) -> ChatSession:
    return ChatSession(Settings(base_url=fake.base_url, model="gpt-4o-mini"), cache=cache)


def test_a_dask_frame_maps_lazily_on_the_workers(dask_client: Any, tmp_path: Any) -> None:
    def reply(body: dict[str, Any]) -> Any:
        text = body["messages"][-1]["content"]
        return Fault.status(400) if text == "Describe item 7" else f"about {text[9:]}"

    with FakeOpenAIServer(reply=reply) as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        try:
            out = session.map(frame(), "Describe {name}", output="d")
            assert is_dask_frame(out)
            assert list(out.columns) == ["name", "n", "d", "_error"]
            assert str(out.dtypes["d"]) == "string" and str(out.dtypes["_error"]) == "string"
            assert fake.chat_requests == []  # lazy: nothing sent before compute
            result = out.compute()
        finally:
            session.close()
    assert len(result) == ROWS and list(result["n"]) == list(range(ROWS))
    assert result.loc[3, "d"] == "about item 3" and pd.isna(result.loc[3, "_error"])
    assert pd.isna(result.loc[7, "d"]) and "400" in result.loc[7, "_error"]
    assert result["_error"].notna().sum() == 1
    assert result.dtypes["d"] == out.dtypes["d"]  # the meta told the truth
    assert sorted(prompt_of(r) for r in fake.chat_requests) == sorted(
        f"Describe item {i}" for i in range(ROWS)
    )  # each row sent once


def test_the_workers_share_the_callers_cache(dask_client: Any, tmp_path: Any) -> None:
    with FakeOpenAIServer() as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        try:
            session.map(frame(), "Describe {name}", output="d").compute()
            sent = len(fake.chat_requests)
            again = session.map(frame(), "Describe {name}", output="d").compute()
            # The kernel's own map reads what the workers wrote, too.
            local = session.map(frame().compute().head(5), "Describe {name}", output="d")
        finally:
            session.close()
    assert sent == ROWS
    assert len(fake.chat_requests) == ROWS  # the second run and the kernel's: all cached
    assert again["d"].tolist() == [f"Echo: Describe item {i}" for i in range(ROWS)]
    assert local["d"].tolist() == again["d"].head(5).tolist()


def test_the_dry_run_plans_one_partition_and_says_so(dask_client: Any, tmp_path: Any) -> None:
    with FakeOpenAIServer() as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        try:
            plan = session.map(frame(), "Describe {name}", output="d", dry_run=True)
            with pytest.raises(BudgetExceeded, match=r"partition 1 of 4 planned, scaled"):
                session.map(frame(), "Describe {name}", output="d", max_cost=1e-9)
            session.set_budget(1e-6)
            with pytest.raises(BudgetExceeded, match="Budget: spent"):
                session.map(frame(), "Describe {name}", output="d")
        finally:
            session.close()
    assert fake.chat_requests == []
    assert isinstance(plan, DaskPlan)
    assert plan.sample.rows == ROWS // 4 and plan.estimated_rows == ROWS
    line = plan.line()
    assert line.startswith("Dask: 4 partitions on 2 workers · sampled partition 1 of 4: 30 rows")
    assert "~120 rows if partitions are alike" in line


def test_what_cannot_go_to_workers_is_refused_in_one_line(dask_client: Any) -> None:
    session = ChatSession(Settings(base_url="local", model="local"), cache=False)
    try:
        with pytest.raises(ConfigError, match="embedded local model runs in this kernel"):
            session.map(frame(), "Describe {name}", output="d")
        with pytest.raises(ConfigError, match="not changed in place"):
            session.map(frame(), "Describe {name}", output="d", inplace=True)
        with pytest.raises(ConfigError, match=r"use session.filter\(ddf"):
            session.map(frame(), "Is {name} good?", output="d", filter=True)
        with pytest.raises(ConfigError, match="Batch API takes one file"):
            session.map(frame(), "Describe {name}", output="d", batch=True)
    finally:
        session.close()


def test_a_global_failure_on_a_worker_is_one_chat_error(dask_client: Any) -> None:
    with FakeOpenAIServer(require_key="sk-" + "w" * 40) as fake:
        session = new_session(fake, False)
        try:
            out = session.map(frame(), "Describe {name}", output="d")
            with pytest.raises(ChatError) as caught:
                out.compute()
        finally:
            session.close()
    assert "\n" not in str(caught.value) and "re-run to finish" in str(caught.value)


@pytest.mark.redis
def test_a_redis_store_pickles_as_its_url(redis_server: Any) -> None:
    store = RedisStore(redis_server.url + "?prefix=pickle:", timeout=3.0)
    key = "a" * 64
    store.set_many([(key, {"text": "kept"})])
    copy = pickle.loads(pickle.dumps(store))
    assert copy is not store and copy.location == store.location
    assert copy.get_many([key])[key]["text"] == "kept"
    assert repr(copy) == f"RedisStore({store.location!r}, connected)"
    store.close()
    copy.close()


@pytest.mark.redis
def test_a_killed_worker_costs_no_answered_row_twice(dask_client: Any, redis_server: Any) -> None:
    store = RedisStore(redis_server.url + "?prefix=kill:")
    with FakeOpenAIServer(latency=0.1) as fake:
        session = new_session(fake, StoreCache(store))
        try:
            out = session.map(frame(240), "Describe {name}", output="d", concurrency=4)
            future = dask_client.compute(out)
            fake.wait_for_requests(60, timeout=60)
            victim = next(iter(dask_client.run(os.getpid).values()))
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            result = future.result(timeout=120)
        finally:
            session.close()
    assert len(result) == 240 and result["_error"].isna().all()
    assert result["d"].tolist() == [f"Echo: Describe item {i}" for i in range(240)]
    sent = collections.defaultdict(list)
    for request in fake.chat_requests:
        sent[prompt_of(request)].append(request)
    # Answered well before the kill (arrived, answered 0.1 s later, cached at once):
    # never sent again. Only what was in flight on the dead worker may go twice.
    answered = [p for p, rs in sent.items() if rs[0].status == 200 and rs[0].time < killed_at - 0.5]
    assert answered and all(len(sent[p]) == 1 for p in answered)
    twice = [p for p, rs in sent.items() if len(rs) > 1]
    assert len(twice) <= 4  # at most the dead worker's window
    assert any(r.time > killed_at for r in fake.chat_requests)  # the partition was retried


@pytest.mark.redis
def test_two_workers_share_one_quota(dask_client: Any, redis_server: Any) -> None:
    # The fake enforces 2,400 RPM over 1-second windows (40 requests in any second) and
    # counts refused requests, as OpenAI does; alone, each worker would take all of it.
    rows, rpm = 240, 2400
    store = RedisStore(redis_server.url + "?prefix=quota:")
    with FakeOpenAIServer.spawn(rpm=rpm, latency=0.05) as fake:
        session = new_session(fake, StoreCache(store))
        try:
            started = time.monotonic()
            out = session.map(frame(rows), "Describe {name}", output="d").compute()
            elapsed = time.monotonic() - started
        finally:
            session.close()
        stats = fake.stats()
    assert out["_error"].isna().all() and out["d"].notna().sum() == rows  # no row lost
    # Each worker pacing alone (pace=False): 47 of 287 requests refused in one run.
    assert stats.rate_limited <= 0.03 * rows
    assert elapsed >= rows / (rpm / 60) * 0.9  # within the limit, not around it


def test_chatmap_maps_a_dask_frame_on_the_workers(
    dask_client: Any, tmp_path: Any, capsys: Any
) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from ipychat.session import reset_session

    with FakeOpenAIServer() as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        reset_session(session)
        shell = InteractiveShell.instance()
        try:
            shell.run_line_magic("load_ext", "ipychat")
            shell.user_ns["ddf"] = frame()
            shell.run_cell_magic("chatmap", "ddf -o d --dry-run", "Describe {name}")
            dry = capsys.readouterr().out
            assert fake.chat_requests == []
            shell.run_cell_magic("chatmap", "ddf -o d", "Describe {name}")
            done = capsys.readouterr().out
            result = shell.user_ns["ddf"]
            assert is_dask_frame(result)
            computed = result.compute()
        finally:
            shell.run_line_magic("unload_ext", "ipychat")  # as the `ip` fixture leaves it
            reset_session(None)
            session.close()
    assert dry.startswith("Dask: 4 partitions on 2 workers · sampled partition 1 of 4: 30 rows")
    assert done.splitlines()[0].startswith("Dask: 4 partitions on 2 workers")
    assert "Done: 120 rows on 2 workers (4 partitions), 0 failed · column d in ddf" in done
    assert computed["d"].tolist() == [f"Echo: Describe item {i}" for i in range(ROWS)]
    assert len(fake.chat_requests) == ROWS  # computed once, on the workers; read back after
