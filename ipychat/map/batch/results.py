"""What a batch map gives back: its dry run (`BatchPlan`), its progress, its result, and
the text of a row's error when the batch did not answer it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ipychat.core.pricing import format_usd
from ipychat.map.batch.registry import BatchJob, Part
from ipychat.map.job import MapPlan, MapResult, format_seconds

__all__ = ["BatchPlan", "BatchProgress", "BatchResult", "line_error", "missing_reason"]


@dataclass(frozen=True)
class BatchPlan:
    """The dry run of a batch map: the map's plan, and how it would be submitted."""

    plan: MapPlan
    files: int
    bytes: int

    def line(self) -> str:
        p = self.plan
        if not p.send:
            return p.line()
        cost = p.cost_batch if p.cost_batch is not None else p.cost_high
        return (
            f"{p.line()} · Batch API: {p.send:,} requests in {self.files} "
            f"file{'s' if self.files != 1 else ''} ({_size(self.bytes)}), up to "
            f"{format_usd(cost)}, results within 24 h"
        )

    def __str__(self) -> str:
        return self.line()

    def _repr_markdown_(self) -> str:
        return f"`{self.line()}`"


@dataclass(frozen=True)
class BatchProgress:
    """`batch bm_1a2b · in_progress · 612/788 requests · 3 failed · 4 min 10 s` (the shape
    chatmap's progress displays take: done, total, line())."""

    job: str
    status: str
    done: int
    failed: int
    total: int
    elapsed: float

    @property
    def errors(self) -> int:
        return self.failed

    def line(self) -> str:
        return (
            f"batch {self.job} · {self.status} · {self.done:,}/{self.total:,} requests · "
            f"{self.failed:,} failed · {format_seconds(self.elapsed)}"
        )


@dataclass
class BatchResult(MapResult):
    """A map's result (frame, summary, plan) and the job that answered it."""

    job: BatchJob | None = None
    attached: bool = False  # True when it joined a job submitted earlier


def line_error(line: dict[str, Any]) -> str:
    error = line.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        if code == "batch_expired":
            return "The batch expired before this row was answered; re-run the cell to send it."
        if code == "batch_cancelled":
            return (
                "The batch was cancelled before this row was answered; re-run the cell to send it."
            )
        return f"The batch could not run this row: {str(error.get('message') or code).rstrip('.')}."
    response = line.get("response") or {}
    status = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    detail = (body or {}).get("error") if isinstance(body, dict) else None
    message = str((detail.get("message") if isinstance(detail, dict) else detail) or "")
    if status == 200:
        return "The batch answered this row without a reply; re-run the cell to send it again."
    return f"HTTP {status} in the batch: {message.rstrip('.') or 'no message'}; re-run the cell to retry."


def missing_reason(part: Part) -> str:
    if part.batch_id is None:
        return "This row's batch file was never submitted; re-run the cell to send it."
    if part.status == "failed":
        why = "; ".join(part.errors) or "no reason given"
        return f"Batch {part.batch_id} failed validation: {why}."
    if part.status == "expired":
        return "The batch expired before this row was answered; re-run the cell to send it."
    if part.status == "cancelled":
        return "The batch was cancelled before this row was answered; re-run the cell to send it."
    return f"Batch {part.batch_id} ({part.status}) returned nothing for this row; re-run the cell."


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"
