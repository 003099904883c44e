"""The Files and Batch API calls of `ipychat.net.client.ChatClient` (batch mode,
`ipychat.map.batch`): thin calls through the client's own retry loop (`_call`).

Part of the client's network boundary (docs/architecture.md): a base class of
`ChatClient`, used by nothing else; like the client it imports httpx.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx

from ipychat.core.errors import APIError
from ipychat.net.replies import Attempt, Dropped, ReplyReader
from ipychat.net.requests import multipart_body, path_id
from ipychat.net.transport import is_transport_error, read_body

__all__ = ["BatchCalls"]

T = TypeVar("T")


class BatchCalls:
    """POST /files, /batches; GET /batches/{id}, /files/{id}/content (the client's)."""

    # What the client provides (`ipychat.net.client.ChatClient`).
    host: str
    _replies: ReplyReader
    _reply_timeout: dict[str, float | None]

    async def _call(
        self,
        method: str,
        path: str,
        content: bytes | None,
        *,
        timeout: dict[str, float | None],
        model: str,
        read: Callable[[httpx.Response, Attempt], Awaitable[T]],
        max_retries: int | None,
        content_type: str | None = None,
    ) -> T:
        raise NotImplementedError  # the client's retry loop

    async def upload_file(
        self, content: bytes, *, filename: str, purpose: str = "batch"
    ) -> dict[str, Any]:
        """POST /files (multipart): upload `content`; returns the file object (`id`, `bytes`)."""
        boundary = f"ipychat-{os.urandom(12).hex()}"
        body = multipart_body(boundary, {"purpose": purpose}, ("file", filename, content))
        return await self._call_json(
            "POST", "/files", body, content_type=f"multipart/form-data; boundary={boundary}"
        )

    async def create_batch(
        self,
        input_file_id: str,
        *,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST /batches: start a batch over an uploaded JSONL file; returns the batch object."""
        payload: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if metadata:
            payload["metadata"] = dict(metadata)
        return await self._call_json("POST", "/batches", json.dumps(payload).encode())

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        """GET /batches/{id}: the batch object (status, request_counts, output files)."""
        return await self._call_json("GET", f"/batches/{path_id(batch_id)}", None)

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """POST /batches/{id}/cancel: returns the batch object (status `cancelling`)."""
        return await self._call_json("POST", f"/batches/{path_id(batch_id)}/cancel", b"{}")

    async def file_content(self, file_id: str) -> bytes:
        """GET /files/{id}/content: the raw bytes of a file (a batch's output or error JSONL)."""

        async def read(response: httpx.Response, attempt: Attempt) -> bytes:
            try:
                return await read_body(response, attempt.headers)
            except Exception as exc:
                if is_transport_error(exc):
                    raise Dropped(exc) from exc
                raise

        path = f"/files/{path_id(file_id)}/content"
        return await self._call(
            "GET", path, None, timeout=self._reply_timeout, model="", read=read, max_retries=None
        )

    async def _call_json(
        self, method: str, path: str, content: bytes | None, *, content_type: str | None = None
    ) -> dict[str, Any]:
        async def read(response: httpx.Response, attempt: Attempt) -> dict[str, Any]:
            data = await self._replies.read_json(response, attempt)
            if not isinstance(data, dict):
                raise APIError(
                    f"{self.host} answered {path} with something that is not a JSON object",
                    request_id=attempt.request_id,
                )
            return data

        return await self._call(
            method,
            path,
            content,
            timeout=self._reply_timeout,
            model="",
            read=read,
            max_retries=None,
            content_type=content_type,
        )
