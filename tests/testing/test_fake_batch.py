"""FakeOpenAIServer's Files and Batch API (ipychat.testing.batchapi), driven with plain httpx."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from ipychat.testing import BatchOptions, FakeOpenAIServer, Fault

TERMINAL = ("completed", "failed", "expired", "cancelled")


def jsonl(n: int, *, model: str = "m", url: str = "/v1/chat/completions") -> bytes:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]},
        }
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(server: FakeOpenAIServer, data: bytes, purpose: str = "batch") -> dict[str, Any]:
    r = httpx.post(
        server.base_url + "/files", files={"file": ("in.jsonl", data)}, data={"purpose": purpose}
    )
    assert r.status_code == 200, r.text
    return r.json()


def create(server: FakeOpenAIServer, file_id: str, **extra: Any) -> httpx.Response:
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    return httpx.post(server.base_url + "/batches", json={**body, **extra})


def wait(server: FakeOpenAIServer, batch_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every distinct state seen until the batch is terminal."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = httpx.get(f"{server.base_url}/batches/{batch_id}").json()
        if not seen or (batch["status"], batch["request_counts"]) != (
            seen[-1]["status"],
            seen[-1]["request_counts"],
        ):
            seen.append(batch)
        if batch["status"] in TERMINAL:
            return seen
        time.sleep(0.005)
    raise TimeoutError(seen[-1]["status"])


def content(server: FakeOpenAIServer, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    r = httpx.get(f"{server.base_url}/files/{file_id}/content")
    assert r.status_code == 200
    return [json.loads(line) for line in r.text.splitlines()]


def test_upload_retrieve_list_delete() -> None:
    with FakeOpenAIServer() as server:
        file = upload(server, jsonl(3))
        assert file["object"] == "file" and file["purpose"] == "batch"
        assert file["bytes"] == len(jsonl(3)) and file["filename"] == "in.jsonl"
        got = httpx.get(f"{server.base_url}/files/{file['id']}").json()
        assert got == file
        assert httpx.get(f"{server.base_url}/files/{file['id']}/content").content == jsonl(3)
        assert [f["id"] for f in httpx.get(server.base_url + "/files").json()["data"]] == [
            file["id"]
        ]
        assert httpx.delete(f"{server.base_url}/files/{file['id']}").json()["deleted"] is True
        missing = httpx.get(f"{server.base_url}/files/{file['id']}")
        assert missing.status_code == 404 and "No such File" in missing.json()["error"]["message"]
        bad = httpx.post(server.base_url + "/files", json={"purpose": "batch"})
        assert bad.status_code == 400


def test_status_progression_counts_and_output() -> None:
    with FakeOpenAIServer(batch=BatchOptions(delay=0.03, processing_time=0.3)) as server:
        batch = create(server, upload(server, jsonl(20))["id"], metadata={"k": "v"}).json()
        assert batch["status"] == "validating" and batch["completion_window"] == "24h"
        assert (
            batch["metadata"] == {"k": "v"} and batch["expires_at"] - batch["created_at"] == 86400
        )
        seen = wait(server, batch["id"])
        order = ["validating", "in_progress", "finalizing", "completed"]
        ranks = [order.index(b["status"]) for b in seen]
        assert ranks == sorted(ranks) and ranks[-1] == 3 and 1 in ranks
        counts = [b["request_counts"]["completed"] for b in seen if b["status"] == "in_progress"]
        assert counts == sorted(counts) and any(0 < c < 20 for c in counts)  # it grows
        final = seen[-1]
        assert final["request_counts"] == {"total": 20, "completed": 20, "failed": 0}
        assert final["completed_at"] and final["in_progress_at"] and final["error_file_id"] is None
        lines = content(server, final["output_file_id"])
        assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(20)]
        body = lines[3]["response"]["body"]
        assert lines[3]["response"]["status_code"] == 200 and lines[3]["error"] is None
        assert body["choices"][0]["message"]["content"] == "Echo: hi 3"
        assert body["usage"]["prompt_tokens"] > 0


def test_shuffle_and_per_line_errors() -> None:
    options = {"delay": 0.01, "shuffle": True, "error_rate": 0.25, "seed": 7}
    with FakeOpenAIServer(batch=options) as server:
        final = wait(server, create(server, upload(server, jsonl(40))["id"]).json()["id"])[-1]
        counts = final["request_counts"]
        assert counts["total"] == 40 and counts["failed"] > 0
        assert counts["completed"] + counts["failed"] == 40
        ok = content(server, final["output_file_id"])
        failed = content(server, final["error_file_id"])
        ids = [line["custom_id"] for line in ok + failed]
        assert sorted(ids) == sorted(f"r{i}" for i in range(40))
        assert [line["custom_id"] for line in ok] != sorted(
            (line["custom_id"] for line in ok), key=lambda c: int(c[1:])
        )
        assert all(line["response"]["status_code"] == 500 for line in failed)
        assert failed[0]["response"]["body"]["error"]["type"] == "server_error"


def test_reply_callable_faults_fail_their_line() -> None:
    def reply(body: dict[str, Any]) -> str | Fault:
        text = body["messages"][-1]["content"]
        return Fault.status(400, message="bad row") if text == "hi 1" else text.upper()

    with FakeOpenAIServer(reply=reply, batch={"delay": 0.0}) as server:
        final = wait(server, create(server, upload(server, jsonl(3))["id"]).json()["id"])[-1]
        ok = content(server, final["output_file_id"])
        assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in ok] == [
            "HI 0",
            "HI 2",
        ]
        (bad,) = content(server, final["error_file_id"])
        assert bad["custom_id"] == "r1" and bad["response"]["status_code"] == 400
        assert bad["response"]["body"]["error"]["message"] == "bad row"


def test_expiry_keeps_partial_results() -> None:
    with FakeOpenAIServer(batch={"delay": 0.01, "expire_after": 4}) as server:
        final = wait(server, create(server, upload(server, jsonl(10))["id"]).json()["id"])[-1]
        assert final["status"] == "expired" and final["expired_at"]
        assert len(content(server, final["output_file_id"])) == 4
        errors = content(server, final["error_file_id"])
        assert len(errors) == 6 and {e["error"]["code"] for e in errors} == {"batch_expired"}
        assert errors[0]["response"] is None


def test_cancel_keeps_what_was_done() -> None:
    with FakeOpenAIServer(batch={"delay": 0.01, "processing_time": 0.6}) as server:
        batch = create(server, upload(server, jsonl(30))["id"]).json()
        time.sleep(0.15)
        cancelled = httpx.post(f"{server.base_url}/batches/{batch['id']}/cancel").json()
        assert cancelled["status"] == "cancelling" and cancelled["cancelling_at"]
        final = wait(server, batch["id"])[-1]
        assert final["status"] == "cancelled"
        done = content(server, final["output_file_id"])
        errors = content(server, final["error_file_id"])
        assert 0 < len(done) < 30 and len(done) + len(errors) == 30
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        again = httpx.post(f"{server.base_url}/batches/{batch['id']}/cancel")
        assert again.status_code == 400 and "cancelled" in again.json()["error"]["message"]


@pytest.mark.parametrize(
    ("data", "options", "code"),
    [
        (jsonl(5), {"max_requests": 4}, "too_many_requests"),
        (jsonl(5), {"max_bytes": 100}, "file_too_large"),
        (jsonl(2, url="/v1/embeddings"), {}, "invalid_request"),
        (jsonl(1) + jsonl(1), {}, "invalid_request"),  # the same custom_id twice
        (jsonl(1) + b"not json\n", {}, "invalid_request"),
        (b"", {}, "empty_file"),
    ],
)
def test_validation_failures(data: bytes, options: dict[str, Any], code: str) -> None:
    with FakeOpenAIServer(batch={"delay": 0.0, **options}) as server:
        final = wait(server, create(server, upload(server, data)["id"]).json()["id"])[-1]
        assert final["status"] == "failed" and final["failed_at"]
        assert code in [e["code"] for e in final["errors"]["data"]]
        assert final["output_file_id"] is None


def test_one_model_per_batch() -> None:
    mixed = jsonl(1) + jsonl(2, model="other").replace(b'"r0"', b'"x0"').replace(b'"r1"', b'"x1"')
    with FakeOpenAIServer(batch={"delay": 0.0}) as server:
        final = wait(server, create(server, upload(server, mixed)["id"]).json()["id"])[-1]
        assert [e["code"] for e in final["errors"]["data"]] == ["mismatched_model"]


def test_create_rejects_bad_requests_and_lists_newest_first() -> None:
    with FakeOpenAIServer(require_key="sk-right") as server:
        auth = {"Authorization": "Bearer sk-right"}
        assert httpx.get(server.base_url + "/batches").status_code == 401
        r = httpx.post(
            server.base_url + "/files",
            files={"file": ("a.jsonl", jsonl(1))},
            data={"purpose": "batch"},
            headers=auth,
        )
        file_id = r.json()["id"]
        url = server.base_url + "/batches"
        base = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
        assert (
            httpx.post(url, json={**base, "completion_window": "1h"}, headers=auth).status_code
            == 400
        )
        assert (
            httpx.post(
                url,
                json={**base, "completion_window": "24h", "input_file_id": "file-nope"},
                headers=auth,
            ).status_code
            == 404
        )
        ids = [
            httpx.post(url, json={**base, "completion_window": "24h"}, headers=auth).json()["id"]
            for _ in range(2)
        ]
        listed = httpx.get(url, headers=auth).json()
        assert [b["id"] for b in listed["data"]] == ids[::-1] and listed["has_more"] is False
        assert httpx.get(url + "/batch_nope", headers=auth).status_code == 404
        assert set(server.batch_api.batches) == set(ids)
