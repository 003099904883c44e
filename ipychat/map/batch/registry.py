"""The batch registry: one JSON file per `%%chatmap --batch` job in `<cache dir>/batches/`.

A batch outlives the kernel, so its job is kept on disk (0700 folder, 0600 files): its batch
and file ids, the custom_id → (rows, cache key, part) mapping, the template and the resolved
options, and the fingerprint (the sha256 of the sorted cache keys it sends). Re-running a
cell plans the same keys, finds the job by fingerprint and attaches instead of paying twice.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ipychat.core.errors import ConfigError

if TYPE_CHECKING:
    from ipychat.engine.cache import ResponseCache

__all__ = ["ACTIVE", "TERMINAL", "BatchJob", "Part", "Registry", "RequestRef"]

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass
class Part:
    """One input file and the provider batch made from it."""

    requests: int
    bytes: int
    file_id: str | None = None
    batch_id: str | None = None
    status: str = "unsubmitted"
    counts: dict[str, int] = field(default_factory=dict)  # total, completed, failed
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = field(default_factory=list)  # why a batch failed validation

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def update(self, batch: dict[str, Any]) -> None:
        self.batch_id = str(batch.get("id") or self.batch_id or "") or None
        self.status = str(batch.get("status") or self.status)
        counts = batch.get("request_counts") or {}
        self.counts = {k: int(counts.get(k) or 0) for k in ("total", "completed", "failed")}
        self.output_file_id = batch.get("output_file_id") or self.output_file_id
        self.error_file_id = batch.get("error_file_id") or self.error_file_id
        errors = (batch.get("errors") or {}).get("data") or []
        self.errors = [_batch_error(e) for e in errors if isinstance(e, dict)][:5]


@dataclass
class RequestRef:
    """What a custom_id stands for: the rows it answers, its cache key, its part."""

    rows: list[int]
    key: str
    part: int


@dataclass
class BatchJob:
    """One `%%chatmap --batch` submission: one or more provider batches, saved on disk."""

    id: str
    fingerprint: str
    created: float
    endpoint: str
    host: str
    frame: str
    template: str
    outputs: list[str]
    options: dict[str, Any]  # the resolved map options: re-planning gives the same keys
    requests: dict[str, RequestRef]
    parts: list[Part]
    state: str = "submitted"  # submitted | collected
    answered: int = 0  # after collection: requests answered, and failed
    failed: int = 0

    @property
    def batch_ids(self) -> list[str]:
        return [p.batch_id for p in self.parts if p.batch_id]

    @property
    def model(self) -> str:
        return str(self.options.get("model") or "")

    @property
    def finished(self) -> bool:
        """Nothing more will happen at the provider (unsubmitted parts never will)."""
        return all(p.terminal or p.batch_id is None for p in self.parts)

    @property
    def status(self) -> str:
        """The least advanced status of its parts, or the terminal ones (`completed`,
        `expired`, `completed+expired` …)."""
        running = [p.status for p in self.parts if p.status in ACTIVE]
        if running:
            return min(running, key=ACTIVE.index)
        done = sorted({p.status for p in self.parts}, key=lambda s: (s != "completed", s))
        return "+".join(done)

    def counts(self) -> tuple[int, int]:
        """(requests finished, of which failed), as the provider counts them."""
        completed = sum(p.counts.get("completed", 0) for p in self.parts)
        failed = sum(p.counts.get("failed", 0) for p in self.parts)
        return completed + failed, failed

    def line(self) -> str:
        """`bm_1a2b3c4d5e · in_progress · 612/788 requests · 3 failed · batch_abc · reviews ·
        gpt-4o-mini · 4 min ago`"""
        done, failed = self.counts()
        if self.state == "collected":
            state = (
                f"collected ({self.status}) · {self.answered:,} answered · {self.failed:,} failed"
            )
        else:
            state = f"{self.status} · {done:,}/{len(self.requests):,} requests · {failed:,} failed"
        ids = self.batch_ids
        shown = ids[0] + (f" (+{len(ids) - 1})" if len(ids) > 1 else "") if ids else "not submitted"
        age = _ago(time.time() - self.created)
        return f"{self.id} · {state} · {shown} · {self.frame} · {self.model} · {age}"

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchJob:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        data["requests"] = {cid: RequestRef(**ref) for cid, ref in data["requests"].items()}
        data["parts"] = [Part(**part) for part in data["parts"]]
        return cls(**data)


class HasCache(Protocol):
    """What `Registry.of` needs: where the response cache is."""

    @property
    def cache(self) -> ResponseCache | None: ...


class Registry:
    """The jobs of one cache directory: `<dir>/<job id>.json`, written atomically.

    Only in a directory nobody else can change (`ipychat.core.files`, as the cache): a job
    file steers which batch is downloaded and which rows and cache keys its replies fill.
    Files are read without following links and must be regular files (a FIFO would hang).
    """

    _MAX_JOB = 256 << 20  # bytes: a job file of 50,000 requests x several parts is ~10 MB

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def of(cls, owner: HasCache) -> Registry:
        """The registry beside `owner`'s cache (an Engine, or a ChatSession)."""
        from ipychat.engine.cache import default_cache_dir

        cache = owner.cache
        return cls((cache.directory if cache is not None else default_cache_dir()) / "batches")

    def _root(self) -> Path:
        """The checked folder (symlinks resolved); ConfigError in one line if not safe."""
        from ipychat.core.files import UnsafeDirectory, private_directory, private_subdirectory

        try:
            return private_subdirectory(
                private_directory(self.directory.parent), self.directory.name
            )
        except UnsafeDirectory as exc:
            raise ConfigError(f"Batch jobs are kept with the cache, and {exc}") from None

    def _read(self, root: Path, name: str) -> BatchJob:
        from ipychat.core.files import read_private

        return BatchJob.from_dict(json.loads(read_private(root, name, self._MAX_JOB)))

    def save(self, job: BatchJob) -> None:
        from ipychat.core.files import write_replace

        # Batch ids and templates are private to the user, like the cached replies; a
        # reader (another kernel) never sees half a file.
        data = json.dumps(job.to_dict(), ensure_ascii=False, separators=(",", ":"))
        write_replace(self._root(), f"{job.id}.json", data.encode("utf-8"))

    def all(self, prefix: str = "") -> list[BatchJob]:
        root = self._root()
        found: list[BatchJob] = []
        for path in root.glob(f"{prefix}*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                found.append(self._read(root, path.name))
        return sorted(found, key=lambda job: job.created, reverse=True)

    def load(self, ident: str) -> BatchJob:
        """A job by its id (bm_…) or by the id of one of its provider batches."""
        if ident and set(ident) <= _ID_CHARS:
            root = self._root()
            try:
                return self._read(root, f"{ident}.json")
            except FileNotFoundError:
                pass
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise ConfigError(
                    f"Batch {ident} in {self.directory} cannot be read ({exc}); delete "
                    f"{ident}.json there if you do not need it."
                ) from None
            for job in self.all():
                if ident in job.batch_ids:
                    return job
        raise ConfigError(f"No batch {ident!r} in {self.directory}: %chat batches lists them.")

    def attachable(self, fingerprint: str) -> BatchJob | None:
        """The newest uncollected job that sends exactly these requests."""
        candidates = self.all(f"bm_{fingerprint[:8]}")
        return next(
            (j for j in candidates if j.fingerprint == fingerprint and j.state != "collected"),
            None,
        )


def _batch_error(error: dict[str, Any]) -> str:
    where = f" (line {error['line']})" if error.get("line") else ""
    return f"{error.get('message') or error.get('code') or 'invalid input'}{where}"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, seconds):.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
