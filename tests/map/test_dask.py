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
from ipychat.core.pricing import format_usd
from ipychat.engine.cache import ResponseCache
from ipychat.engine.stores.counted import StoreCache
from ipychat.engine.stores.redis import RedisStore
from ipychat.map.dask import WORKER_CACHE_BATCH, DaskPlan, is_dask_frame
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


def cached(redis_server: Any, store: RedisStore, prefix: str) -> dict[str, dict[str, Any]]:
    """Every entry under `prefix`, by key (without the prefix), as the store reads it."""
    names = [n.decode() for n in redis_server.client().scan_iter(match=prefix + "*")]
    return store.get_many([n.removeprefix(prefix) for n in names])


@pytest.mark.redis
def test_a_killed_worker_costs_no_written_row_twice(dask_client: Any, redis_server: Any) -> None:
    store = RedisStore(redis_server.url + "?prefix=kill:")
    with FakeOpenAIServer(latency=0.1) as fake:
        session = new_session(fake, StoreCache(store))
        try:
            out = session.map(frame(240), "Describe {name}", output="d", concurrency=4)
            future = dask_client.compute(out)
            fake.wait_for_requests(60, timeout=60)
            victim = next(iter(dask_client.run(os.getpid).values()))
            # What the workers had written when the kill came (a subset: more may land
            # between this read and the kill).
            written = {v["text"] for v in cached(redis_server, store, "kill:").values()}
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
    # A row whose reply was in the cache is never sent again: the retried partition reads it.
    assert written and all(len(sent[text.removeprefix("Echo: ")]) == 1 for text in written)
    # Sent twice: at most what the dead worker had in flight (its window of 4) and what it
    # had answered since its last write (less than a batch).
    twice = [p for p, rs in sent.items() if len(rs) > 1]
    assert len(twice) <= 4 + WORKER_CACHE_BATCH
    assert any(r.time > killed_at for r in fake.chat_requests)  # the partition was retried


@pytest.mark.redis
def test_workers_write_the_cache_in_batches(dask_client: Any, redis_server: Any) -> None:
    # Written reply by reply (the default: a killed worker costs no answered row twice) and
    # in batches (cache_batch=16), a map leaves the same entries; the batches take a few
    # MSETs (round trips), not one per reply.
    client = redis_server.client()
    entries, writes = {}, {}
    with FakeOpenAIServer() as fake:
        for prefix, options in (("each:", {}), ("batched:", {"cache_batch": 16})):
            store = RedisStore(redis_server.url + f"?prefix={prefix}")
            session = new_session(fake, StoreCache(store))
            client.config_resetstat()
            try:
                out = session.map(frame(), "Describe {name}", output="d", **options).compute()
            finally:
                session.close()
            assert out["d"].notna().all()
            writes[prefix] = client.info("commandstats").get("cmdstat_mset", {}).get("calls", 0)
            entries[prefix] = {
                key: {k: v for k, v in value.items() if k != "created"}
                for key, value in cached(redis_server, store, prefix).items()
            }
            store.close()
    assert len(entries["each:"]) == ROWS and entries["batched:"] == entries["each:"]
    assert writes["each:"] == ROWS
    # 4 partitions of 30 rows: two batches each (a late second may flush a third).
    assert writes["batched:"] <= 4 * 3


@pytest.mark.redis
def test_an_unlimited_map_takes_no_turn_from_redis(dask_client: Any, redis_server: Any) -> None:
    # No limit told (no header, no 429, no rpm): the workers send without asking the shared
    # pace, but for a look-up of a limit another published, at most every CHECK_EVERY s
    # per worker. (Before: one script per request, 240 here.)
    from ipychat.map.sharedpace import CHECK_EVERY

    rows = 240
    store = RedisStore(redis_server.url + "?prefix=free:")
    client = redis_server.client()
    with FakeOpenAIServer() as fake:
        session = new_session(fake, StoreCache(store))
        try:
            out = session.map(frame(rows), "Describe {name}", output="d")
            client.config_resetstat()
            started = time.monotonic()
            result = out.compute()
            elapsed = time.monotonic() - started
        finally:
            session.close()
    assert result["d"].notna().all() and len(fake.chat_requests) == rows
    stats = client.info("commandstats")
    scripts = sum(stats.get(f"cmdstat_{n}", {}).get("calls", 0) for n in ("eval", "evalsha"))
    assert scripts <= 2 * (elapsed / CHECK_EVERY + 1) and scripts < rows // 4


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
    assert "Done: 120 rows on 2 workers (4 partitions), 0 failed · $" in done
    assert "(120 requests, 0 cached) · column d in ddf (persisted)" in done
    assert computed["d"].tolist() == [f"Echo: Describe item {i}" for i in range(ROWS)]
    assert len(fake.chat_requests) == ROWS  # computed once, on the workers; read back after


# ----- the workers' usage and progress in the kernel ------------------------------------------


def wait_until(condition: Any, timeout: float = 20.0) -> None:
    """Reports travel worker -> scheduler -> this client: they land shortly after compute()."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the workers' reports did not come"
        time.sleep(0.05)


def test_the_workers_spend_is_in_the_kernels_ledger(dask_client: Any, tmp_path: Any) -> None:
    with FakeOpenAIServer() as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        try:
            session.map(frame(), "Describe {name}", output="d").compute()
            wait_until(lambda: len(session.usage) >= ROWS)
            first = list(session.usage)
            session.map(frame(), "Describe {name}", output="d").compute()  # all cached
            wait_until(lambda: len(session.usage) >= 2 * ROWS)
            again = list(session.usage)[ROWS:]
            summary = session.usage.summary()
            # The same rows mapped by a kernel (no cache): what its own ledger records.
            kernel = new_session(fake, False)
            kernel.map(frame().compute(), "Describe {name}", output="d")
            mine = list(kernel.usage)
            kernel.close()
        finally:
            session.close()
    assert len(first) == ROWS and not any(r.cached for r in first)
    for field in ("prompt_tokens", "completion_tokens", "cost"):
        assert sum(getattr(r, field) for r in first) == pytest.approx(
            sum(getattr(r, field) for r in mine)
        ), field
    assert session.usage.spent > 0 and all(r.model == "gpt-4o-mini" for r in first)
    assert len(again) == ROWS and all(r.cached and r.cost == 0 for r in again)
    assert summary[0].requests == 2 * ROWS and summary[0].cached == ROWS


def uneven_frame(small: int, big: int, partitions: int) -> Any:
    """A first partition of `small` rows, then `partitions - 1` of `big` rows each: the
    first partition's estimate scaled is far below what the frame costs."""
    head = pd.DataFrame({"name": [f"item {i}" for i in range(small)]})
    rest = pd.DataFrame(
        {"name": [f"item {i}" for i in range(small, small + big * (partitions - 1))]},
        index=range(small, small + big * (partitions - 1)),
    )
    return dd.concat([dd.from_pandas(head, npartitions=1), dd.from_pandas(rest, partitions - 1)])


def test_the_budget_stops_the_workers(dask_client: Any, tmp_path: Any) -> None:
    # Each request costs ~5e-6 USD (gpt-4o-mini's price, the fake's token counts): 452
    # rows cost ~2.4e-3, the budget holds ~75 of them. The check before the map passes
    # (the 2-row first partition scaled is ~1e-4); the workers' reported spend stops it.
    budget = 4e-4
    with FakeOpenAIServer(latency=0.2) as fake:  # 2 workers x 4 in flight: ~40 rows/s
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        session.set_budget(budget)
        try:
            out = session.map(
                uneven_frame(2, 150, 4), "Describe {name}", "d", max_tokens=20, concurrency=4
            )
            with pytest.raises(BudgetExceeded, match="Dask map stopped sending") as caught:
                out.compute()
            time.sleep(1.0)  # the last reports of the partitions that stopped
            spent = session.usage.spent
        finally:
            session.close()
    sent = len(fake.chat_requests)
    assert "\n" not in str(caught.value)
    assert 0 < sent < 452 * 0.5  # stopped well before the end
    assert len(session.usage) == sent  # every request the workers made is in the ledger
    # Reached, and overrun by what the workers answer in about a second (a report
    # interval, the stop's way to them, the requests in flight): ~40 rows, ~2e-4 USD.
    assert budget <= spent <= budget * 2


def test_chatmap_shows_progress_and_the_spend(dask_client: Any, tmp_path: Any, capsys: Any) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from ipychat.session import reset_session

    with FakeOpenAIServer(latency=0.05) as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        reset_session(session)
        shell = InteractiveShell.instance()
        try:
            shell.run_line_magic("load_ext", "ipychat")
            shell.user_ns["ddf"] = frame(240)
            shell.run_cell_magic("chatmap", "ddf -o d --concurrency 4", "Describe {name}")
            out = capsys.readouterr().out
            spent = session.usage.spent
            requests = len(session.usage)
        finally:
            shell.run_line_magic("unload_ext", "ipychat")
            reset_session(None)
            session.close()
    # The text progress line, rewritten as the workers report (the last one: all rows).
    assert "\r240/240 · " in out and " 0 errors · $" in out
    assert requests == 240 and spent > 0
    assert f"0 failed · {format_usd(spent)} (240 requests, 0 cached)" in out


# ----- typed maps and filters on the workers --------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "age": {"type": ["integer", "null"]},
        "ok": {"type": "boolean"},
        "when": {"type": "string", "format": "date-time"},
        "place": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
        "tone": {"enum": ["calm", "loud"]},
    },
    "required": ["age", "ok", "when", "place", "tone"],
}


def typed_reply(body: dict[str, Any]) -> Any:
    # The row's prompt is the first user message (a re-ask adds the reply and a note).
    text = next(str(m["content"]) for m in body["messages"] if m["role"] == "user")
    n = int(text.split()[-1])
    if text.startswith("Sentiment"):
        return "maybe" if n == 5 else ("positive" if n % 2 else "Negative.")
    if text.startswith("Good"):
        return "yes" if n % 3 == 0 else "no"
    if n == 7:
        return "not an object"
    age = "null" if n % 4 == 0 else str(n)
    return (
        f'{{"age": {age}, "ok": {"true" if n % 2 else "false"}, '
        f'"when": "2024-01-02T03:04:{n % 60:02d}", "place": {{"city": "C{n}"}}, '
        f'"tone": "{"calm" if n % 2 else "loud"}"}}'
    )


def numbers(rows: int = 40) -> Any:
    return dd.from_pandas(pd.DataFrame({"n": range(rows)}), npartitions=4)


def test_typed_maps_on_dask_are_typed_as_in_the_kernel(dask_client: Any, tmp_path: Any) -> None:
    with FakeOpenAIServer(reply=typed_reply) as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        try:
            labels = session.map(
                numbers(), "Sentiment of {n}", output="s", choices=["positive", "negative"]
            )
            typed = session.map(numbers(), "Describe {n}", schema=SCHEMA)
            metas = (labels.dtypes.to_dict(), typed.dtypes.to_dict())
            got_labels, got_typed = labels.compute(), typed.compute()
            kernel_labels = session.map(
                numbers().compute(),
                "Sentiment of {n}",
                output="s",
                choices=["positive", "negative"],
            )
            kernel_typed = session.map(numbers().compute(), "Describe {n}", schema=SCHEMA)
        finally:
            session.close()
    assert str(metas[0]["s"]) == "category"
    assert list(metas[0]["s"].categories) == ["positive", "negative"]
    assert got_labels.dtypes.to_dict() == metas[0]  # the meta told the truth
    assert got_labels["s"].tolist()[:5] == [
        "negative",
        "positive",
        "negative",
        "positive",
        "negative",
    ]
    assert pd.isna(got_labels.loc[5, "s"]) and "maybe" in got_labels.loc[5, "_error"]
    assert got_labels["s"].tolist()[:5] == kernel_labels["s"].tolist()[:5]
    assert got_labels.loc[5, "_error"] == kernel_labels.loc[5, "_error"]

    assert list(typed.columns) == ["n", "age", "ok", "when", "place.city", "tone", "_error"]
    assert {k: str(v) for k, v in metas[1].items()} == {
        "n": "int64",
        "age": "Int64",
        "ok": "boolean",
        "when": "datetime64[us]",
        "place.city": "string",
        "tone": "category",
        "_error": "string",
    }
    assert got_typed.dtypes.to_dict() == metas[1]
    assert pd.isna(got_typed.loc[4, "age"]) and got_typed.loc[5, "age"] == 5
    assert got_typed.loc[3, "place.city"] == "C3" and bool(got_typed.loc[3, "ok"]) is True
    assert got_typed.loc[3, "when"] == pd.Timestamp("2024-01-02 03:04:03")
    assert (
        pd.isna(got_typed.loc[7, "age"])
        and got_typed.loc[7, "_error"] == kernel_typed.loc[7, "_error"]
    )
    for column in ("age", "ok", "place.city", "tone"):
        assert got_typed[column].tolist() == kernel_typed[column].tolist(), column


def test_filter_on_dask_keeps_the_rows_answered_yes(dask_client: Any, tmp_path: Any) -> None:
    with FakeOpenAIServer(reply=typed_reply) as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        try:
            kept = session.filter(numbers(), "Good {n}", decision="good")
            meta = kept.dtypes.to_dict()
            got = kept.compute()
            plain = session.filter(numbers(), "Good {n}").compute()
            kernel = session.filter(numbers().compute(), "Good {n}", decision="good")
        finally:
            session.close()
    assert {k: str(v) for k, v in meta.items()} == {"n": "int64", "good": "boolean"}
    assert got.dtypes.to_dict() == meta
    assert got.index.tolist() == list(range(0, 40, 3)) and got["good"].all()
    assert got.equals(kernel)
    assert list(plain.columns) == ["n"] and plain.index.tolist() == list(range(0, 40, 3))


def test_chatfilter_filters_a_dask_frame(dask_client: Any, tmp_path: Any, capsys: Any) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from ipychat.session import reset_session

    with FakeOpenAIServer(reply=typed_reply) as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        reset_session(session)
        shell = InteractiveShell.instance()
        try:
            shell.run_line_magic("load_ext", "ipychat")
            shell.user_ns["ddf"] = numbers()
            shell.run_cell_magic("chatfilter", "ddf --into good", "Good {n}")
            out = capsys.readouterr().out
            good = shell.user_ns["good"]
            computed = good.compute()
        finally:
            shell.run_line_magic("unload_ext", "ipychat")
            reset_session(None)
            session.close()
    assert is_dask_frame(good) and computed.index.tolist() == list(range(0, 40, 3))
    assert "Kept 14 of 40 rows on 2 workers (4 partitions" in out
    assert "written to good (persisted)" in out


# ----- reading and closing ----------------------------------------------------------------------


def read_part(i: int, log: str) -> pd.DataFrame:
    """A partition read from "storage": each read leaves a line in `log` (any process)."""
    with open(log, "a") as f:
        f.write(f"{i}\n")
    return pd.DataFrame(
        {"name": [f"item {i}-{j}" for j in range(5)]}, index=range(i * 5, i * 5 + 5)
    )


def test_the_first_partition_is_read_once(dask_client: Any, tmp_path: Any) -> None:
    log = str(tmp_path / "reads")
    with FakeOpenAIServer() as fake:
        session = new_session(fake, ResponseCache(tmp_path / "cache"))
        session.set_budget(1.0)  # a budget: the first partition is planned before the map
        try:
            # meta and divisions given: Dask reads nothing to infer them (from_map's docs).
            meta = pd.DataFrame({"name": pd.Series([], dtype="string")})
            ddf = dd.from_map(read_part, range(3), log=log, meta=meta, divisions=[0, 5, 10, 14])
            out = session.map(ddf, "Describe {name}", output="d").compute()
        finally:
            session.close()
    with open(log) as f:
        reads = collections.Counter(f.read().split())
    assert len(out) == 15 and out["_error"].isna().all()
    assert reads == {"0": 1, "1": 1, "2": 1}


def test_workers_exit_without_the_nannys_kill(tmp_path: Any, caplog: Any) -> None:
    # A worker that mapped used to spend seconds finalizing (a full garbage collection, the
    # token encoding's tables) and, on a loaded machine, was killed by its nanny after 4 s
    # ("Worker process still alive after 4.0 seconds, killing"). Closing with a shorter
    # timeout (its kill comes after 0.8 of it) makes the test see it on a less loaded one.
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0"
    )
    client = distributed.Client(cluster)
    try:
        with FakeOpenAIServer() as fake:
            session = new_session(fake, ResponseCache(tmp_path / "cache"))
            try:
                session.map(frame(40), "Describe {name}", output="d").compute()
            finally:
                session.close()
    finally:
        client.close()
        with caplog.at_level("WARNING", logger="distributed.nanny"):
            cluster.close(timeout=2.5)
    assert not [r for r in caplog.records if "still alive" in r.getMessage()]
