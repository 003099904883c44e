"""Batch mode (ipychat.map.batch) against FakeOpenAIServer's Files and Batch API, over sockets."""

from __future__ import annotations

import asyncio
import json
import stat
from typing import Any

import pandas as pd
import pytest

from ipychat.core.errors import BudgetExceeded, ConfigError
from ipychat.map import batch
from ipychat.map import job as chatmap
from ipychat.map.batch import BatchJob, BatchProgress
from ipychat.map.batch import runner as batch_runner
from ipychat.map.job import MapAborted, MapInterrupted
from ipychat.map.plan import MAP_MAX_TOKENS
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer, Fault

FAST = {"poll_interval": 0.01}  # the fake's phases take tens of ms


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"item {i}" for i in range(n)]})


def echoes(n: int, template: str = "Say {}") -> list[str]:
    return [f"Echo: {template.format(f'item {i}')}" for i in range(n)]


def batch_posts(server: FakeOpenAIServer) -> list[Any]:
    return [r for r in server.requests if r.method == "POST" and r.path == "/v1/batches"]


def uploaded(server: FakeOpenAIServer) -> list[list[dict[str, Any]]]:
    files = [f for f in server.batch_api.files.values() if f.purpose == "batch"]
    return [[json.loads(line) for line in f.data.splitlines()] for f in files]


# ----- submission ------------------------------------------------------------------------


def test_submits_one_jsonl_line_per_row_to_send_and_fills_the_frame(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.01}) as server:
        session = make_session(server)
        session.map(frame(2), "Say {text}", "reply", max_tokens=50)  # two rows cached online
        server.reset_log()
        df = frame(6)
        result = batch.run(session, df, "Say {text}", "reply", max_tokens=50, **FAST)
        assert result.frame["reply"].tolist() == echoes(6)
        assert "_error" not in result.frame.columns and not result.attached
        assert result.summary.sent == 4 and result.summary.cached == 2
        assert server.chat_requests == []  # nothing went through /chat/completions

        (lines,) = uploaded(server)
        assert [line["custom_id"] for line in lines] == [f"row-{i}" for i in range(2, 6)]
        assert {(line["method"], line["url"]) for line in lines} == {
            ("POST", "/v1/chat/completions")
        }
        assert lines[0]["body"] == {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Say item 2"}],
            "max_tokens": 50,
        }
        (post,) = batch_posts(server)
        assert post.body["completion_window"] == "24h"
        assert post.body["endpoint"] == "/v1/chat/completions"
        job = result.job
        assert job is not None and post.body["metadata"] == {"ipychat_job": job.id, "part": "1/1"}
        upload = next(r for r in server.requests if r.path == "/v1/files")
        assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
        key = session.settings.api_key
        assert key is not None and upload.headers["authorization"] == f"Bearer {key.reveal()}"

        # The ledger has every reply at the batch price (half of gpt-4o-mini's).
        rows = [r for r in session.usage if r.thread == "batch"]
        assert len(rows) == 4 and all(r.outcome == "ok" and not r.cached for r in rows)
        price = session.prices.lookup("gpt-4o-mini")
        assert price is not None and price.batch_input == price.input / 2
        row = rows[0]
        expected = (
            row.prompt_tokens * price.batch_input + row.completion_tokens * price.batch_output
        ) / 1e6
        assert row.cost == pytest.approx(expected) and row.cost > 0
        assert result.summary.cost == pytest.approx(sum(r.cost or 0 for r in rows))

        # Every reply is in the cache: the same map online sends nothing.
        server.reset_log()
        again = chatmap.run(session, df, "Say {text}", "reply", max_tokens=50)
        assert again.summary.cached == 6 and server.requests == []


def test_the_registry_is_private_and_maps_custom_ids_to_rows_and_keys(
    make_session, tmp_path
) -> None:
    with FakeOpenAIServer(batch={"delay": 0.01}) as server:
        session = make_session(server, cache="cache")
        df = pd.DataFrame({"text": ["a", "b", "a", "c"]})  # a duplicate: one request, two rows
        result = batch.run(session, df, "{text}", "out", **FAST)
        assert result.frame["out"].tolist() == ["Echo: a", "Echo: b", "Echo: a", "Echo: c"]
        folder = tmp_path / "cache" / "batches"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        (path,) = folder.glob("*.json")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        saved = json.loads(path.read_text())
        assert saved["id"] == result.job.id and saved["state"] == "collected"
        assert {cid: ref["rows"] for cid, ref in saved["requests"].items()} == {
            "row-0": [0, 2],
            "row-1": [1],
            "row-3": [3],
        }
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a"}],
                "max_tokens": MAP_MAX_TOKENS}  # fmt: skip
        assert saved["requests"]["row-0"]["key"] == session.cache_key(body)
        assert saved["parts"][0]["batch_id"] == result.job.batch_ids[0]
        assert session.settings.api_key.reveal() not in path.read_text()
        # A job is found by its own id or by its provider batch id.
        assert batch.Registry.of(session).load(result.job.batch_ids[0]).id == result.job.id
        with pytest.raises(ConfigError, match="%chat batches lists them"):
            batch.Registry.of(session).load("../etc/passwd")


def test_large_maps_are_split_into_several_files(make_session) -> None:
    # The fake refuses more than 3 requests per file, as OpenAI refuses 50,000.
    with FakeOpenAIServer(batch={"delay": 0.01, "max_requests": 3}) as server:
        session = make_session(server)
        result = batch.run(session, frame(8), "Say {text}", "reply", max_requests=3, **FAST)
        assert result.frame["reply"].tolist() == echoes(8)
        assert [len(lines) for lines in uploaded(server)] == [3, 3, 2]
        assert len(batch_posts(server)) == 3 and len(result.job.batch_ids) == 3
        assert [p.body["metadata"]["part"] for p in batch_posts(server)] == ["1/3", "2/3", "3/3"]

        # By size too: every file under the byte limit.
        server.batch_api.files.clear()
        line = len(batch.request_line("row-10", {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "Again item 10"}], "max_tokens": MAP_MAX_TOKENS})) + 1  # fmt: skip
        again = batch.run(session, frame(12), "Again {text}", "r", max_bytes=line * 3 + 10, **FAST)
        assert again.frame["r"].tolist() == echoes(12, "Again {}")
        sizes = [len(lines) for lines in uploaded(server)]
        assert sum(sizes) == 12 and max(sizes) == 3


def test_without_splitting_the_provider_fails_it_and_rows_say_why(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.01, "max_requests": 3}) as server:
        session = make_session(server)
        result = batch.run(session, frame(5), "{text}", "out", **FAST)
        errors = result.frame["_error"].tolist()
        assert all(e.startswith("Batch batch_") and "failed validation" in e for e in errors)
        assert "over the 3 limit" in errors[0]
        assert result.summary.failed == 5 and result.job.status == "failed"


# ----- polling and results ---------------------------------------------------------------


def test_polling_shows_the_request_counts_as_they_grow(make_session) -> None:
    options = {"delay": 0.05, "processing_time": 0.8}  # progress ticks every 0.25 s
    with FakeOpenAIServer(batch=options) as server:
        session = make_session(server)
        seen: list[BatchProgress] = []
        announced: list[tuple[str, bool]] = []
        result = batch.run(
            session,
            frame(30),
            "{text}",
            "out",
            progress=seen.append,
            on_submit=lambda job, attached: announced.append((job.id, attached)),
            **FAST,
        )
        assert announced == [(result.job.id, False)]
        statuses = [p.status for p in seen]
        assert statuses[-1] == "completed" and "in_progress" in statuses
        counts = [p.done for p in seen]
        assert counts == sorted(counts) and counts[-1] == 30
        assert any(0 < p.done < 30 for p in seen if p.status == "in_progress")
        assert all(p.total == 30 for p in seen)
        assert seen[-1].line().startswith(f"batch {result.job.id} · completed · 30/30 requests")
        gets = [r for r in server.requests if r.method == "GET" and "/batches/" in r.path]
        assert len(gets) >= 5  # it polled while the batch ran


def test_results_in_any_order_land_on_their_rows(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.01, "shuffle": True, "seed": 5}) as server:
        session = make_session(server)
        df = frame(25)
        df.index = pd.Index([f"k{(i * 7) % 25}" for i in range(25)])
        result = batch.run(session, df, "Say {text}", "reply", **FAST)
        output = server.batch_api.files[
            server.batch_api.batches[result.job.batch_ids[0]].output_file_id
        ]
        order = [json.loads(line)["custom_id"] for line in output.data.splitlines()]
        assert order != sorted(order, key=lambda c: int(c.split("-")[1]))  # really shuffled
        assert list(result.frame.index) == list(df.index)
        assert result.frame["reply"].tolist() == echoes(25)


def test_per_line_errors_go_to_the_error_column_and_a_rerun_retries_them(make_session) -> None:
    def reply(body: dict[str, Any]) -> str | Fault:
        text = body["messages"][-1]["content"]
        if text == "item 3":
            return Fault.status(400, message="Invalid content.")
        return "ok " + text

    with FakeOpenAIServer(
        reply=reply, batch={"delay": 0.01, "error_rate": 0.2, "seed": 0}
    ) as server:
        session = make_session(server)
        result = batch.run(session, frame(20), "{text}", "out", **FAST)
        errors = result.frame["_error"]
        assert errors[3] == "HTTP 400 in the batch: Invalid content; re-run the cell to retry."
        failed = errors.notna()
        assert 2 <= failed.sum() < 20 and result.summary.failed == failed.sum()
        assert errors[failed & (errors.index != 3)].str.startswith("HTTP 500 in the batch").all()
        assert result.frame["out"][~failed].tolist() == [
            f"ok item {i}" for i in range(20) if not failed[i]
        ]
        ledger = [r for r in session.usage if r.thread == "batch"]
        assert sum(r.outcome == "error" for r in ledger) == failed.sum()
        assert all(r.cost == 0 for r in ledger if r.outcome == "error")

        server.reset_log()
        again = batch.run(session, frame(20), "{text}", "out", **FAST)
        (lines,) = uploaded(server)[1:]  # only the failed rows are sent again
        assert len(lines) == failed.sum() and again.summary.cached == 20 - failed.sum()


def test_expiry_keeps_partial_results_and_the_rest_are_row_errors(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.01, "expire_after": 4}) as server:
        session = make_session(server)
        result = batch.run(session, frame(10), "Say {text}", "reply", **FAST)
        assert result.job.status == "expired"
        done = result.frame["reply"].notna()
        assert done.sum() == 4 and result.frame["reply"][done].tolist() == echoes(4)
        assert (
            result.frame["_error"][~done]
            == "The batch expired before this row was answered; re-run the cell to send it."
        ).all()
        assert result.summary.failed == 6 and result.summary.sent == 4
        assert (
            len([r for r in session.usage if r.thread == "batch"]) == 4
        )  # never-run rows are not requests
        assert "collected (expired) · 4 answered · 6 failed" in result.job.line()
        # Re-running sends only the rest, in a new batch.
        again = batch.run(session, frame(10), "Say {text}", "reply", **FAST)
        assert again.summary.cached == 4 and len(uploaded(server)[1]) == 6
        assert again.frame["reply"][again.frame["reply"].notna()].tolist() == echoes(10)[:8]


def test_json_columns_and_a_bad_reply_is_asked_again_online(make_session) -> None:
    def reply(body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        if body["messages"][-1]["content"].startswith("That is not"):
            return json.dumps({"label": "fixed", "score": 0})
        if text == "item 2":
            return "not json"
        return json.dumps({"label": text, "score": len(text)})

    with FakeOpenAIServer(reply=reply, batch={"delay": 0.01}) as server:
        session = make_session(server)
        result = batch.run(session, frame(4), "{text}", ["label", "score"], json=True, **FAST)
        assert result.frame["label"].tolist() == ["item 0", "item 1", "fixed", "item 3"]
        assert result.frame["score"].tolist() == [6, 6, 0, 6]
        assert len(server.chat_requests) == 1  # the re-ask, online
        (lines,) = uploaded(server)
        assert lines[0]["body"]["response_format"] == {"type": "json_object"}
        assert "JSON object" in lines[0]["body"]["messages"][0]["content"]


# ----- cancel, attach, resume ------------------------------------------------------------


def test_rerunning_while_in_flight_attaches_instead_of_resubmitting(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.05, "processing_time": 0.2}) as server:
        session = make_session(server)
        first = batch.run(session, frame(8), "{text}", "out", wait=False, **FAST)
        assert first.summary.pending == 8 and first.frame["out"].isna().all()
        assert first.job is not None and first.job.status == "validating"
        second = batch.run(session, frame(8), "{text}", "out", **FAST)
        assert second.attached and second.job.id == first.job.id
        assert second.frame["out"].tolist() == [f"Echo: item {i}" for i in range(8)]
        assert len(batch_posts(server)) == 1 and len(uploaded(server)) == 1
        # Collected now: a third run is answered from the cache, with no batch at all.
        third = batch.run(session, frame(8), "{text}", "out", **FAST)
        assert third.job is None and third.summary.cached == 8 and len(batch_posts(server)) == 1


def test_resume_after_a_kernel_restart(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.05, "processing_time": 0.1, "shuffle": True}) as server:
        old = make_session(server, cache="shared")
        df = frame(12)
        df.index = pd.Index([f"r{i}" for i in range(12)])
        submitted = batch.run(old, df, "Say {text}", "reply", max_tokens=30, system="Be brief.",
                              wait=False, **FAST).job  # fmt: skip
        assert submitted is not None
        old.close()  # the kernel dies; the batch goes on at the provider

        new = make_session(server, cache="shared")
        listed = batch.jobs(new)
        assert [j.id for j in listed] == [submitted.id]
        result = batch.resume(new, submitted.batch_ids[0], df, name="df", **FAST)
        assert result.attached and result.job.id == submitted.id
        assert result.frame["reply"].tolist() == echoes(12) and result.frame is not df
        assert list(result.frame.index) == list(df.index)
        assert len(batch_posts(server)) == 1
        assert batch.jobs(new)[0].state == "collected"
        bodies = uploaded(server)[0]
        assert bodies[0]["body"]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_rerunning_the_cell_after_a_restart_attaches_too(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.05}) as server:
        old = make_session(server, cache="shared")
        batch.run(old, frame(5), "{text}", "out", wait=False, **FAST)
        old.close()
        new = make_session(server, cache="shared")
        result = batch.run(new, frame(5), "{text}", "out", **FAST)
        assert result.attached and len(batch_posts(server)) == 1
        assert result.frame["out"].notna().all()


def test_collect_without_a_frame_fills_the_cache(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.02}) as server:
        old = make_session(server, cache="shared")
        job = batch.run(old, frame(6), "{text}", "out", wait=False, **FAST).job
        old.close()
        new = make_session(server, cache="shared")
        collected = batch.collect(new, job.id, **FAST)
        assert collected.state == "collected" and collected.answered == 6
        assert len([r for r in new.usage if r.thread == "batch"]) == 6
        server.reset_log()
        out = new.map(frame(6), "{text}", "out")
        assert out["out"].notna().all() and server.requests == []


def test_cancel_keeps_what_finished(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.01, "processing_time": 1.0}) as server:
        session = make_session(server)
        job = batch.run(session, frame(40), "{text}", "out", wait=False, **FAST).job
        assert job is not None

        def stop_midway(progress: BatchProgress) -> None:
            if progress.done >= 5 and progress.status == "in_progress":
                batch.cancel(session, job.id)

        result = batch.resume(session, job.id, frame(40), progress=stop_midway, **FAST)
        assert result.job.status == "cancelled"
        done = result.frame["out"].notna()
        assert 5 <= done.sum() < 40
        cancelled = result.frame["_error"][~done]
        assert cancelled.str.startswith("The batch was cancelled before this row").all()
        posts = [r for r in server.requests if r.path.endswith("/cancel")]
        assert len(posts) == 1
        with pytest.raises(ConfigError, match="No batch 'bm_nope'"):
            batch.cancel(session, "bm_nope")


def test_an_interrupt_stops_waiting_not_the_batch(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.05, "processing_time": 1.0}) as server:
        session = make_session(server)

        def interrupt(progress: BatchProgress) -> None:
            if progress.status == "in_progress":
                raise KeyboardInterrupt

        with pytest.raises(MapInterrupted) as info:
            batch.run(session, frame(10), "{text}", "out", progress=interrupt, **FAST)
        (job,) = batch.jobs(session, refresh=False)
        assert f"Batch {job.id} keeps running at the provider" in str(info.value)
        assert f"%chat batch cancel {job.id}" in str(info.value)
        assert not any(r.path.endswith("/cancel") for r in server.requests)
        again = batch.run(session, frame(10), "{text}", "out", **FAST)
        assert again.attached and again.frame["out"].notna().all()


def test_the_async_api_attaches_after_a_cancelled_await(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.05, "processing_time": 0.2}) as server:
        session = make_session(server)

        async def main() -> None:
            task = asyncio.ensure_future(batch.arun(session, frame(6), "{text}", "out", **FAST))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(MapInterrupted):
                await task
            out = await session.amap(frame(6), "{text}", "out", batch=True, **FAST)
            assert out["out"].notna().all()

        asyncio.run(main())
        assert len(batch_posts(server)) == 1


# ----- plan, budget, guards --------------------------------------------------------------


def test_dry_run_shows_the_batch_price_and_files(make_session) -> None:
    with FakeOpenAIServer() as server:
        session = make_session(server)
        plan = session.map(frame(5), "{text}", "out", batch=True, dry_run=True, max_requests=2)
        assert isinstance(plan, batch.BatchPlan)
        line = plan.line()
        assert "5 to send" in line and "(batch: $" in line
        assert "Batch API: 5 requests in 3 files" in line and "results within 24 h" in line
        assert plan.plan.cost_batch == pytest.approx(plan.plan.cost_high / 2)
        assert server.requests == []


def test_max_cost_is_checked_at_the_batch_price(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.01}) as server:
        session = make_session(server)
        plan = batch.plan(session, frame(4), "{text}", "out").plan
        assert plan.cost_batch is not None and plan.cost_high is not None
        between = (plan.cost_batch + plan.cost_high) / 2  # enough at the batch price only
        result = batch.run(session, frame(4), "{text}", "out", max_cost=between, **FAST)
        assert result.frame["out"].notna().all()
        with pytest.raises(BudgetExceeded, match="This batch may cost up to"):
            batch.run(session, frame(4), "Other {text}", "out", max_cost=plan.cost_batch / 10)
        session.set_budget(plan.cost_batch / 10)
        with pytest.raises(BudgetExceeded):
            batch.run(session, frame(4), "Third {text}", "out", **FAST)
        assert len(batch_posts(server)) == 1


def test_offline_sends_nothing_and_the_local_model_has_no_batches(make_session) -> None:
    with FakeOpenAIServer() as server:
        session = make_session(server, offline=True)
        result = batch.run(session, frame(3), "{text}", "out", **FAST)
        assert result.frame["_error"].str.startswith("Offline mode").all()
        assert server.requests == []


def test_a_job_is_resumed_only_on_its_endpoint(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.5}) as server, FakeOpenAIServer() as other:
        session = make_session(server, cache="shared")
        job = batch.run(session, frame(2), "{text}", "out", wait=False, **FAST).job
        elsewhere = make_session(other, cache="shared")
        with pytest.raises(ConfigError, match=f"%chat endpoint {server.base_url} first"):
            batch.resume(elsewhere, job.id, frame(2), **FAST)
        with pytest.raises(ConfigError):
            batch.collect(elsewhere, job.id, **FAST)
        with pytest.raises(ConfigError):
            batch.cancel(elsewhere, job.id)


def test_a_failed_upload_leaves_a_job_to_attach_to(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 0.01}) as server:
        session = make_session(server, max_retries=0)
        uploads = 0
        original = server.batch_api._upload

        def flaky(body: bytes, content_type: str) -> tuple[int, Any]:
            nonlocal uploads
            uploads += 1
            if uploads == 2:
                return 400, {"error": {"message": "upload refused", "type": "x"}}
            return original(body, content_type)

        server.batch_api._upload = flaky  # type: ignore[method-assign]
        with pytest.raises(MapAborted, match="upload refused") as info:
            batch.run(session, frame(6), "{text}", "out", max_requests=3, **FAST)
        assert "keeps running at the provider" in str(info.value)
        again = batch.run(session, frame(6), "{text}", "out", max_requests=3, **FAST)
        assert again.attached and again.frame["out"].notna().all()
        assert len(batch_posts(server)) == 2  # part 1 once, part 2 once


def test_jobs_lists_newest_first_with_a_line_each(make_session) -> None:
    with FakeOpenAIServer(batch={"delay": 5.0}) as server:  # still validating when listed
        session = make_session(server)
        a = batch.run(session, frame(2), "A {text}", "out", wait=False, **FAST).job
        b = batch.run(session, frame(3), "B {text}", "out", wait=False, **FAST).job
        listed: list[BatchJob] = batch.jobs(session)
        assert [j.id for j in listed] == [b.id, a.id]
        line = listed[0].line()
        assert line.startswith(f"{b.id} · validating · 0/3 requests · 0 failed · batch_")
        assert "gpt-4o-mini" in line and "s ago" in line


# ----- the magics ------------------------------------------------------------------------


def shown(shell: Any, kind: str, line: str, cell: str | None = None) -> str:
    from IPython.utils.capture import capture_output

    with capture_output() as out:
        if kind == "cell":
            shell.run_cell_magic("chatmap", line, cell)
        else:
            shell.run_line_magic("chat", line)
    parts = [out.stdout]
    for o in out.outputs:
        parts.extend(str(v) for v in o.data.values())
    return "\n".join(parts)


def test_chatmap_batch_magic_fills_in_place_and_says_how_to_attach(
    ip: Any, fake: FakeOpenAIServer
) -> None:
    df = ip.user_ns["reviews"] = frame(5)
    out = shown(ip, "cell", "reviews -o reply --batch --poll 0.01", "Say {text}")
    assert ip.user_ns["reviews"] is df and df["reply"].tolist() == echoes(5)
    assert "5 rows · 0 cached · 5 to send" in out and "Batch API: 5 requests in 1 file" in out
    (job,) = batch.jobs(batch_session(ip), refresh=False)
    assert f"Submitted batch {job.id} (batch_" in out
    assert f"%chat batch resume {job.id} reviews" in out
    assert "(5 sent, 0 cached, 0 failed)" in out and f"via batch {job.id}" in out
    assert fake.chat_requests == []


def test_the_submission_is_announced_with_its_batch_id_however_slow_the_upload(
    ip: Any, fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A display tick between the job's making and its upload (a slow POST /files) must not
    # announce a submission that has not happened yet ("Submitted batch … (none yet)").
    real_submit = batch_runner.BatchRun._submit_missing

    async def slow_submit(self: Any, client: Any, job: BatchJob) -> None:
        await asyncio.sleep(0.6)  # more than two display ticks (TICK = 0.25 s)
        await real_submit(self, client, job)

    monkeypatch.setattr(batch_runner.BatchRun, "_submit_missing", slow_submit)
    ip.user_ns["reviews"] = frame(2)
    out = shown(ip, "cell", "reviews -o reply --batch --poll 0.01", "Say {text}")
    (job,) = batch.jobs(batch_session(ip), refresh=False)
    assert f"Submitted batch {job.id} (batch_" in out and "none yet" not in out


def batch_session(ip: Any) -> ChatSession:
    """The kernel session the magics of `ip` use."""
    from ipychat.session import get_session

    return get_session()


def test_chatmap_batch_dry_run_sends_nothing(ip: Any, fake: FakeOpenAIServer) -> None:
    ip.user_ns["reviews"] = frame(3)
    out = shown(ip, "cell", "reviews -o reply --batch --dry-run", "Say {text}")
    assert "(batch: $" in out and "Batch API: 3 requests in 1 file" in out
    assert fake.requests == [] and "reply" not in ip.user_ns["reviews"].columns


def test_no_wait_then_list_resume_and_cancel_from_the_magics(
    ip: Any, fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from IPython.core.error import UsageError

    monkeypatch.setattr(batch_runner, "FIRST_POLL", 0.01)  # %chat batch resume has no --poll

    ip.user_ns["reviews"] = frame(4)
    out = shown(ip, "cell", "reviews -o reply --batch --no-wait", "Say {text}")
    (job,) = batch.jobs(batch_session(ip), refresh=False)
    assert f"Submitted batch {job.id}" in out and "Done:" not in out
    assert ip.user_ns["reviews"]["reply"].isna().all()
    listed = shown(ip, "line", "batches")
    assert f"- {job.id} · " in listed and "/4 requests" in listed

    out = shown(ip, "line", f"batch resume {job.id} reviews")
    assert ip.user_ns["reviews"]["reply"].tolist() == echoes(4)
    assert "(4 sent, 0 cached, 0 failed)" in out and f"from batch {job.id}" in out
    assert "collected (completed) · 4 answered" in shown(ip, "line", "batches")

    ip.user_ns["more"] = frame(6)
    shown(ip, "cell", "more -o reply --batch --no-wait", "Other {text}")
    second = batch.jobs(batch_session(ip), refresh=False)[0]
    cancelled = shown(ip, "line", f"batch cancel {second.id}")
    assert f"Cancelling {second.id} (cancelling)" in cancelled
    collected = shown(ip, "line", f"batch resume {second.id}")
    assert f"Collected {second.id}: 0 replies in the cache, 6 failed" in collected

    with pytest.raises(UsageError, match="go with --batch"):
        ip.run_cell_magic("chatmap", "reviews -o x --no-wait", "{text}")
    with pytest.raises(UsageError, match="resume ID"):
        ip.run_line_magic("chat", "batch frobnicate x")
    with pytest.raises(UsageError, match="No batch 'bm_nope'"):
        ip.run_line_magic("chat", "batch cancel bm_nope")
    with pytest.raises(UsageError, match="nothere is not defined"):
        ip.run_line_magic("chat", f"batch resume {job.id} nothere")


def test_batches_when_there_are_none(ip: Any) -> None:
    assert "No batches in " in shown(ip, "line", "batches")
