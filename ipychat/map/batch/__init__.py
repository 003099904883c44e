"""%%chatmap --batch: a map's rows sent through the provider's Batch API (half the price, a
separate rate-limit pool, results within 24 h).

```
run(session, df, template, output, ...)   plan with the map's MapJob (template, nulls,
  │                                       dedupe, cache hits), then on the session loop:
  └── BatchRun.execute()                  (runner.py)
        ├── cache hits written, as in an online map
        ├── attach to the registry's uncollected job with the same fingerprint, or submit:
        │     JSONL parts (≤ 50,000 requests, ≤ 200 MB each; jsonl.py) → POST /files →
        │     POST /batches
        ├── poll GET /batches/{id} until every part is terminal (progress: request_counts)
        └── collect: output and error files joined by custom_id → cache, ledger (at the
              batch price), rows; a row with no line gets its batch's reason in `_error`
resume(session, id, df)   the same, attached to a given job (after a kernel restart)
collect(session, id)      no frame: wait, then put the replies in the cache and the ledger
cancel(session, id)       POST /batches/{id}/cancel for each part still running
jobs(session)             every job in the registry, newest first, statuses refreshed
```

The modules: `registry` (jobs on disk), `jsonl` (input lines, parts, output lines),
`results` (plan, progress, result, a row's error text), `runner` (one run on the loop),
`api` (the entry points above).

Why a registry on disk: a batch outlives the kernel. Each job is one JSON file in
`<cache dir>/batches/` (0700, files 0600): its batch and file ids, the custom_id → (rows,
cache key, part) mapping, the template and the resolved options, and the fingerprint (the
sha256 of the sorted cache keys it sends). Re-running a cell plans the same keys, finds the
job by fingerprint and attaches instead of paying twice; after a restart `resume` re-plans
the stored template over the frame and joins by cache key, so row order does not matter.
Results are joined by cache key too, which is also how they reach the cache: once a batch
is collected, the same cell (batch or not) is answered from the cache.
"""

from __future__ import annotations

from ipychat.map.batch.api import (
    amap_frame,
    arun,
    cancel,
    collect,
    jobs,
    map_frame,
    plan,
    resume,
    run,
)
from ipychat.map.batch.jsonl import ENDPOINT, MAX_BYTES, MAX_REQUESTS, request_line
from ipychat.map.batch.registry import ACTIVE, TERMINAL, BatchJob, Part, Registry, RequestRef
from ipychat.map.batch.results import BatchPlan, BatchProgress, BatchResult
from ipychat.map.batch.runner import (
    COMPLETION_WINDOW,
    FIRST_POLL,
    MAX_POLL,
    THREAD,
    BatchOptions,
    BatchRun,
)

__all__ = [
    "ACTIVE",
    "COMPLETION_WINDOW",
    "ENDPOINT",
    "FIRST_POLL",
    "MAX_BYTES",
    "MAX_POLL",
    "MAX_REQUESTS",
    "TERMINAL",
    "THREAD",
    "BatchJob",
    "BatchOptions",
    "BatchPlan",
    "BatchProgress",
    "BatchResult",
    "BatchRun",
    "Part",
    "Registry",
    "RequestRef",
    "amap_frame",
    "arun",
    "cancel",
    "collect",
    "jobs",
    "map_frame",
    "plan",
    "request_line",
    "resume",
    "run",
]
