"""%%chatmap's engine: one prompt per DataFrame row, sent in parallel at the server's pace.

The only module besides `Ledger.to_frame` that imports pandas (and polars, when the frame
is one). `ChatSession.map`/`amap` and the `%%chatmap` magic delegate here.

```
run(session, df, template, ...)          sync: plan, then execute on the session's loop
  ├── MapJob.__init__                   plan (caller's thread, nothing sent): template
  │                                      compiled once, nulls, dedupe, prepare_one per
  │                                      unique prompt, one batched cache read (get_many)
  ├── MapJob.execute()                  on the loop: budget held for the whole run,
  │     └── _dispatch() → _send(job)     concurrency window + rate limiter + shared 429 pause
  └── MapJob.result()                   outputs written by row position (order, index kept)
```

Rows never abort a run: a row's failure (after `retries`) lands in the `_error` column.
What stops a run is global: an interrupt, a wrong key or model, a server asking to wait
longer than a minute; the rows finished by then are written and cached, so running the
same map again sends only what is missing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import difflib
import heapq
import json
import math
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ipychat import pricing
from ipychat.errors import (
    APIError,
    AuthError,
    BadRequestError,
    BudgetExceeded,
    ChatError,
    ConfigError,
    ContextLengthError,
    Interrupted,
    NotFoundError,
    OfflineCacheMiss,
    RateLimitError,
    TemplateError,
)
from ipychat.keys import cache_key
from ipychat.ledger import LedgerRow
from ipychat.pricing import format_tokens, format_usd
from ipychat.ratelimit import RateLimiter, Ticket
from ipychat.retry import DEFAULT_MAX_WAIT, backoff_delay
from ipychat.types import Reply, Usage

if TYPE_CHECKING:
    from ipychat.session import ChatSession, Prepared

__all__ = [
    "MapAborted",
    "MapInterrupted",
    "MapPlan",
    "MapProgress",
    "MapResult",
    "MapSummary",
    "RowTemplate",
    "arun",
    "compile_template",
    "run",
]

CacheMode = Literal["use", "refresh", "off"]
T = TypeVar("T")

# Requests in flight when no limit is known (a latency-bound server: more is faster, and 64
# is where raw aiohttp on 2 cores reaches E = 0.93, DESIGN.md), and the most ever.
DEFAULT_CONCURRENCY = 64
MAX_CONCURRENCY = 256
# Before the first answer nothing is known about limits: a few requests probe, so that a
# drained quota costs a handful of 429s, not a whole window of them.
SLOW_START = 4
# In flight under known limits: the rate they allow × latency, with headroom for jitter.
LATENCY_HEADROOM = 1.5
# 429s one row may meet before it is given up (they say nothing about the row itself).
MAX_RATE_LIMITED = 20
# How often a waiting caller refreshes the progress display.
TICK = 0.25

_PLACEHOLDER = re.compile(r"\{\{(?P<escaped>[^{}]*)\}\}|\{(?P<name>[^{}\n]+)\}")
_IDENT = re.compile(r"[A-Za-z_]\w*")
# As in ipychat.messages: `\frac{x}`, `x^{n}`, `f{x}` are LaTeX or code, not placeholders.
_LITERAL_CONTEXT = set("\\^_$}") | set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
)
_FENCE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.S)
_JSON_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.S)


# ----- errors --------------------------------------------------------------------------------


class MapInterrupted(Interrupted):
    """The user stopped a map; `result` holds the rows finished so far (also cached)."""

    def __init__(self, message: str, result: MapResult) -> None:
        super().__init__(message)
        self.result = result


class MapAborted(ChatError):
    """Something global stopped a map (key, model, a long rate-limit wait); `result` holds
    the rows finished before it."""

    def __init__(self, message: str, result: MapResult, cause: ChatError) -> None:
        super().__init__(message)
        self.result = result
        self.cause = cause


# ----- templates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RowTemplate:
    """A row template compiled once: `render(values)` is one `str.format` call per row."""

    text: str
    columns: tuple[Any, ...]  # the column labels used, in order of first use
    format_string: str

    def render(self, values: Sequence[str]) -> str:
        return self.format_string.format(*values)


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _in_code(spans: list[tuple[int, int]], pos: int) -> bool:
    return any(start <= pos < end for start, end in spans)


def compile_template(
    template: str, columns: Sequence[Any], frame: str = "the DataFrame"
) -> RowTemplate:
    """Compile `{column}` placeholders, brace-safe like `ipychat.messages.interpolate`.

    `{{x}}` sends `{x}`; braces that cannot be a column (JSON, code, LaTeX) stay as written;
    a `{name}` that looks like a placeholder but names no column is an error listing the
    columns (checked before anything is sent). Column names need not be identifiers:
    `{review text}` works when there is such a column.
    """
    text = template.strip() if isinstance(template, str) else ""
    if not text:
        raise TemplateError(
            "The template is empty: write the prompt below %%chatmap, with {column} "
            "placeholders such as {text}."
        )
    known = {str(c): c for c in columns}
    code = [m.span() for m in _FENCE.finditer(text)]
    parts: list[str] = []
    used: list[Any] = []
    index: dict[str, int] = {}
    unknown: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(_escape(text[last : m.start()]))
        last = m.end()
        escaped, name = m.group("escaped"), m.group("name")
        if escaped is not None:
            parts.append(_escape("{" + escaped + "}"))
            continue
        if name in known:
            if name not in index:
                index[name] = len(used)
                used.append(known[name])
            parts.append(f"{{{index[name]}}}")
            continue
        before = text[m.start() - 1] if m.start() else ""
        if (
            _IDENT.fullmatch(name)
            and before not in _LITERAL_CONTEXT
            and not _in_code(code, m.start())
            and name not in unknown
        ):
            unknown.append(name)
        parts.append(_escape(m.group(0)))
    parts.append(_escape(text[last:]))
    listing = _list_columns(known)
    if unknown:
        names = ", ".join("{" + n + "}" for n in unknown)
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f" (did you mean {{{close[0]}}}?)" if close else ""
        verb = "is not a column" if len(unknown) == 1 else "are not columns"
        raise TemplateError(
            f"{names} {verb} of {frame}{hint}. Its columns: {listing}. "
            f"Use {{{{{unknown[0]}}}}} to send braces as text."
        )
    if not used:
        raise TemplateError(
            f"The template has no {{column}} placeholder, so every row would send the same "
            f"prompt. Use the columns of {frame}: {listing}."
        )
    return RowTemplate(text, tuple(used), "".join(parts))


def _list_columns(known: dict[str, Any], most: int = 30) -> str:
    names = list(known)
    shown = ", ".join(names[:most])
    return shown + (f", … ({len(names) - most} more)" if len(names) > most else "") or "none"


# ----- DataFrames ----------------------------------------------------------------------------


class _Frame:
    """The few things the engine needs from a pandas or a polars DataFrame."""

    def __init__(self, df: Any, name: str) -> None:
        module = type(df).__module__.split(".")[0]
        self.df = df
        self.name = name
        if module == "pandas" and type(df).__name__ == "DataFrame":
            self.kind = "pandas"
            labels = list(df.columns)
            if len(set(map(str, labels))) != len(labels):
                raise TemplateError(f"{name} has duplicate column names: rename them first.")
            self.columns: list[Any] = labels
        elif module == "polars" and type(df).__name__ == "DataFrame":
            self.kind = "polars"
            self.columns = list(df.columns)
        elif module == "polars" and type(df).__name__ == "LazyFrame":
            raise TemplateError(f"{name} is a polars LazyFrame: collect() it into a DataFrame.")
        else:
            raise TemplateError(
                f"{name} is a {type(df).__name__}, not a DataFrame: %%chatmap maps the rows of a "
                "pandas (or polars) DataFrame."
            )

    def __len__(self) -> int:
        return int(self.df.shape[0])

    def values(self, column: Any, n: int) -> list[Any]:
        if self.kind == "pandas":
            return self.df[column].iloc[:n].tolist()
        return self.df.get_column(column).head(n).to_list()

    def nulls(self, column: Any, n: int) -> list[bool]:
        if self.kind == "pandas":
            return self.df[column].iloc[:n].isna().tolist()
        series = self.df.get_column(column).head(n)
        mask = series.is_null()
        if series.dtype.is_float():
            mask = mask | series.is_nan()
        return mask.to_list()

    def existing(self, column: str) -> list[Any] | None:
        if column not in self.columns:
            return None
        return self.values(column, len(self))

    def write(self, columns: dict[str, list[Any]], *, inplace: bool, json_columns: set[str]) -> Any:
        if self.kind == "pandas":
            import pandas as pd

            target = self.df if inplace else self.df.copy()
            for name, values in columns.items():
                series = pd.Series(values, index=target.index, dtype=object)
                target[name] = series.infer_objects() if name in json_columns else values
            return target
        import polars as pl

        series = [pl.Series(name, _polars_values(values)) for name, values in columns.items()]
        return self.df.with_columns(series)


def _polars_values(values: list[Any]) -> list[Any]:
    """One type per polars column: mixed or nested JSON values become their JSON text."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) <= 1 and not kinds & {dict, list}:
        return values
    if kinds <= {int, float}:
        return [float(v) if v is not None else None for v in values]
    return [
        v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values
    ]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


# ----- plan, progress, summary ---------------------------------------------------------------


@dataclass(frozen=True)
class MapPlan:
    """What a map would do: the dry run, and the check printed before every real run."""

    rows: int
    cached: int  # rows answered from the cache
    send: int  # requests to send
    send_rows: int  # rows those requests answer
    duplicates: int  # rows that share another row's prompt (sent once)
    skipped: int  # rows with a null in a placeholder column
    null_columns: tuple[str, ...]
    invalid: int  # rows whose prompt does not fit the context window
    prompt_tokens: int
    completion_tokens: int  # upper bound: max_tokens per request
    cost_low: float | None
    cost_high: float | None
    cost_batch: float | None
    model: str
    approximate: bool = False
    offline: bool = False
    first_prompt: str | None = None

    def line(self) -> str:
        """`1,000 rows · 212 cached · 788 to send · 61,203 prompt tokens · up to 3,940 reply
        tokens · $0.0092–$0.0116 (batch: $0.0058)`"""
        parts = [f"{self.rows:,} rows", f"{self.cached:,} cached", f"{self.send:,} to send"]
        if self.duplicates:
            parts.append(f"{self.duplicates:,} duplicate rows share a reply")
        if self.skipped:
            cols = ", ".join(self.null_columns)
            parts.append(f"{self.skipped:,} skipped (null in {cols}; --fill-null TEXT sends them)")
        if self.invalid:
            parts.append(f"{self.invalid:,} too long for the context window")
        parts.append(f"{format_tokens(self.prompt_tokens, self.approximate)} prompt tokens")
        parts.append(f"up to {self.completion_tokens:,} reply tokens")
        if self.send == 0:
            parts.append("$0.00")
        elif self.cost_high is None:
            parts.append(f"cost unknown (no price for {self.model}: %chat price MODEL IN OUT)")
        else:
            cost = f"{format_usd(self.cost_low)}–{format_usd(self.cost_high)}"
            if self.cost_batch is not None:
                cost += f" (batch: {format_usd(self.cost_batch)})"
            parts.append(cost)
        if self.offline and self.send:
            parts.append("offline: uncached rows will fail")
        return " · ".join(parts)

    def __str__(self) -> str:
        return self.line()

    def _repr_markdown_(self) -> str:
        return f"`{self.line()}`"


@dataclass(frozen=True)
class MapProgress:
    """A snapshot for progress displays: `612/788 · 41 rows/s · ETA 4 s · 0 errors · $0.0071`."""

    done: int
    total: int
    errors: int
    cost: float | None
    elapsed: float
    rate: float | None  # rows per second
    eta: float | None  # seconds

    def line(self) -> str:
        rate = f"{self.rate:,.0f} rows/s" if self.rate else "– rows/s"
        eta = f"ETA {format_seconds(self.eta)}" if self.eta is not None else "ETA –"
        errors = f"{self.errors:,} error{'s' if self.errors != 1 else ''}"
        return f"{self.done:,}/{self.total:,} · {rate} · {eta} · {errors} · {format_usd(self.cost)}"


@dataclass(frozen=True)
class MapSummary:
    """How a map went; `line()` is what the magic prints when it is done."""

    rows: int
    sent: int  # rows answered by a request sent in this run
    cached: int
    failed: int
    skipped: int
    duplicates: int
    cost: float | None
    elapsed: float
    requests: int  # HTTP requests made, retries and 429s included
    rate_limited: int  # of which answered 429
    outputs: tuple[str, ...]
    error_column: str
    interrupted: bool = False
    pending: int = 0  # rows not done when the run stopped

    def line(self, frame: str = "the DataFrame", *, added: str | None = None) -> str:
        cols = ", ".join(self.outputs)
        noun = "column" if len(self.outputs) == 1 else "columns"
        text = (
            f"Done: {self.rows:,} rows in {self.elapsed:.1f} s ({self.sent:,} sent, "
            f"{self.cached:,} cached, {self.failed:,} failed"
            + (f", {self.skipped:,} skipped" if self.skipped else "")
            + f") · {format_usd(self.cost)} · {noun} {cols} "
            + (added or f"added to {frame}")
        )
        if self.failed:
            text += (
                f" · {self.failed:,} failed: see {frame}[{self.error_column!r}]; re-run the cell "
                "to retry only those rows."
            )
        return text


@dataclass
class MapResult:
    frame: Any
    summary: MapSummary
    plan: MapPlan


def format_seconds(value: float) -> str:
    """A duration as people say it: `42 s`, `3 min 05 s`, `2 h 07 min`."""
    if value < 60:
        return f"{value:.0f} s"
    minutes, seconds = divmod(int(value), 60)
    return (
        f"{minutes} min {seconds:02d} s"
        if minutes < 60
        else f"{minutes // 60} h {minutes % 60:02d} min"
    )


# ----- the engine ----------------------------------------------------------------------------


@dataclass
class MapRequest:
    """One unique request of a map and the rows it answers: `key` is its cache key,
    `prepared.body` the request body, `rows` the row positions its reply fills."""

    key: str
    prepared: Prepared
    rows: list[int]
    tokens: int  # what the rate limiter charges: prompt tokens + max_tokens
    reask: bool = False
    failures: int = 0
    limited: int = 0


@dataclass
class _Counters:
    done: int = 0  # rows finished (answered or failed) among those to send
    total: int = 0
    errors: int = 0
    cost: float = 0.0
    cost_known: bool = True
    requests: int = 0
    rate_limited: int = 0
    started: float = field(default_factory=time.monotonic)
    first_send: float | None = None


# Pacing state per session and endpoint survives between maps: a second map starts at the
# pace the first one learnt, instead of probing again.
_LIMITERS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], RateLimiter]] = (
    weakref.WeakKeyDictionary()
)


def _classify(exc: ChatError) -> str:
    """limit (a 429) | retry (may work next time) | row (this row is wrong) | fatal (all are)."""
    if isinstance(exc, RateLimitError):
        return "limit"
    if isinstance(exc, AuthError | NotFoundError | ConfigError):
        return "fatal"
    if isinstance(exc, BadRequestError):
        return "row"
    if isinstance(exc, APIError):  # 5xx, 408/409, connection, timeout, broken or odd body
        return "retry"
    return "row"


def _parse_object(text: str) -> tuple[dict[str, Any] | None, str]:
    candidate = text.strip()
    fenced = _JSON_FENCE.match(candidate)
    if fenced:
        candidate = fenced.group(1)
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, ""


class MapJob:
    """One map: planned in the constructor (nothing sent), executed on the session loop.

    `execute()` is the online run. Another engine (ipychat.batch sends the requests
    through the Batch API) drives a job through this interface instead:

    - what was asked: `plan`, `max_cost`, `outputs`, `json`, `base_system` (the system
      prompt before --json added its rule), `fill_null`, `error_column`, `cache_mode`,
      `allow_secrets`, `frame_name`, `template_text`, `limit` (None: every row);
    - `to_send`: the MapRequests the cache does not answer;
    - on the session loop: `start()` first (counters, queues, cache hits written), then
      `spend(reply)` for a reply's cost, `answer(request, text)` for a reply's text,
      `fail(request, error)` for a request given up, and `send_queued()` to send online
      what is still queued (the JSON re-asks);
    - from any thread: `progress()`, `result(interrupted=...)`.
    """

    def __init__(
        self,
        session: ChatSession,
        df: Any,
        template: str,
        output: str | Sequence[str] = "col",
        *,
        json: bool = False,
        model: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        retries: int | None = None,
        max_cost: float | None = None,
        cache: CacheMode | bool = "use",
        limit: int | None = None,
        fill_null: str | None = None,
        inplace: bool = False,
        error_column: str = "_error",
        name: str | None = None,
        allow_secrets: bool = False,
    ) -> None:
        self.session = session
        self.allow_secrets = allow_secrets
        self.outputs = _outputs(output, json)
        self.json = json
        self.error_column = error_column
        self.inplace = inplace
        self.frame = _Frame(df, name or "the DataFrame")
        self.cache_mode: CacheMode = "use" if cache is True else "off" if cache is False else cache
        if self.cache_mode not in ("use", "refresh", "off"):
            raise ConfigError(f"cache must be 'use', 'refresh' or 'off', not {cache!r}.")
        _check_options(concurrency, rpm, tpm, retries, max_cost, limit, max_tokens, temperature)
        if error_column in self.outputs:
            raise ConfigError(f"{error_column!r} is where row errors go: pick another -o name.")
        self.concurrency = concurrency
        self.local = bool(getattr(session, "is_local", False))
        self.retries = session.settings.max_retries if retries is None else retries
        self.max_cost = max_cost
        self.model: str = model or getattr(session, "model", None) or session.settings.model or ""
        self.max_tokens = max_tokens
        self.rpm, self.tpm = rpm, tpm
        base_system = system if system is not None else session.settings.system
        self.base_system: str = base_system or ""
        self.extra: dict[str, Any] | None = None
        self.system = base_system
        if json:
            keys = ", ".join(self.outputs)
            rule = f"Reply with only a JSON object with the keys: {keys}."
            self.system = f"{base_system}\n\n{rule}" if base_system else rule
            self.extra = {"response_format": {"type": "json_object"}}
        self.temperature = temperature
        self.fill_null = fill_null
        self.template = compile_template(template, self.frame.columns, self.frame.name)
        n = len(self.frame) if limit is None else min(limit, len(self.frame))
        self.n = n
        # Per row: values of each output, and the error (None: fine). Rows not processed
        # (past --limit) keep what the frame had.
        self.values: dict[str, list[Any]] = {
            col: (self.frame.existing(col) or [None] * len(self.frame)) for col in self.outputs
        }
        for col in self.outputs:
            self.values[col][:n] = [None] * n
        previous = self.frame.existing(error_column)
        self.had_error_column = previous is not None
        self.errors: list[str | None] = previous or [None] * len(self.frame)
        self.errors[:n] = [None] * n
        self.finished = [False] * n
        self.counters = _Counters()
        self._plan()

    # ----- planning (caller's thread) -------------------------------------------------------

    def _plan(self) -> None:
        n, template, frame = self.n, self.template, self.frame
        columns = [[_text(v) for v in frame.values(c, n)] for c in template.columns]
        null_masks = [frame.nulls(c, n) for c in template.columns]
        null_cols: list[str] = []
        skipped = 0
        by_prompt: dict[str, list[int]] = {}
        for i in range(n):
            row = [col[i] for col in columns]
            missing = [k for k, mask in enumerate(null_masks) if mask[i]]
            if missing:
                names = [str(template.columns[k]) for k in missing]
                if self.fill_null is None:
                    skipped += 1
                    self.errors[i] = (
                        f"skipped: null in {', '.join(names)} (use --fill-null TEXT to send it)"
                    )
                    self.finished[i] = True
                    null_cols.extend(c for c in names if c not in null_cols)
                    continue
                for k in missing:
                    row[k] = self.fill_null
            by_prompt.setdefault(template.render(row), []).append(i)
        jobs, invalid = self._prepare(by_prompt)
        self.skipped = skipped
        hits: dict[str, dict[str, Any]] = {}
        store = self.session.cache if self.session.settings.cache else None
        if store is not None and self.cache_mode == "use" and jobs:
            hits = store.get_many([job.key for job in jobs])
        self.hits = [(job, hits[job.key]) for job in jobs if job.key in hits]
        self.to_send = [job for job in jobs if job.key not in hits]
        processed = n - skipped
        estimates = [job.prepared.estimate for job in self.to_send]
        lows = [e.cost_low for e in estimates]
        highs = [e.cost_high for e in estimates]
        batches = [e.cost_batch for e in estimates]
        self.plan = MapPlan(
            rows=n,
            cached=sum(len(job.rows) for job, _ in self.hits),
            send=len(self.to_send),
            send_rows=sum(len(job.rows) for job in self.to_send),
            duplicates=processed - invalid - len(jobs) if processed else 0,
            skipped=skipped,
            null_columns=tuple(null_cols),
            invalid=invalid,
            prompt_tokens=sum(e.prompt_tokens for e in estimates),
            completion_tokens=sum(e.max_completion_tokens for e in estimates),
            cost_low=_total(lows),
            cost_high=_total(highs),
            cost_batch=_total(batches),
            model=self.model,
            approximate=any(e.approximate for e in estimates),
            offline=self.session.settings.offline,
            first_prompt=next(iter(by_prompt), None),
        )

    def _key(self, body: dict[str, Any]) -> str:
        # The session's own key when it has one (it knows the endpoint's every part).
        own = getattr(self.session, "cache_key", None)
        return own(body) if callable(own) else cache_key(self.session.base_url, body)

    def _prepare(self, by_prompt: dict[str, list[int]]) -> tuple[list[MapRequest], int]:
        session = self.session
        jobs: list[MapRequest] = []
        invalid = 0
        for prompt, rows in by_prompt.items():
            options: dict[str, Any] = {"allow_secrets": True} if self.allow_secrets else {}
            try:
                prepared = session.prepare_one(
                    prompt,
                    model=self.model,
                    system=self.system,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    label="map",
                    extra=self.extra,
                    **options,
                )
            except ContextLengthError as exc:  # this row only (a credential refuses the map)
                invalid += len(rows)
                for i in rows:
                    self.errors[i] = str(exc)
                    self.finished[i] = True
                continue
            estimate = prepared.estimate
            jobs.append(
                MapRequest(
                    self._key(prepared.body),
                    prepared,
                    rows,
                    estimate.prompt_tokens + estimate.max_completion_tokens,
                )
            )
        return jobs, invalid

    def check_budget(self) -> None:
        """Refuse a run whose upper bound exceeds --max-cost, before anything is sent."""
        high = self.plan.cost_high if self.plan.send else 0.0
        if self.max_cost is not None and (high is None or high > self.max_cost + 1e-12):
            shown = "an unknown amount" if high is None else format_usd(high)
            raise BudgetExceeded(
                f"This map may cost up to {shown} ({self.plan.send:,} requests), over --max-cost "
                f"{format_usd(self.max_cost)}. Lower --max-tokens, use --limit N, or raise "
                "--max-cost."
            )

    # ----- execution (session loop) ---------------------------------------------------------

    @property
    def frame_name(self) -> str:
        return self.frame.name

    @property
    def template_text(self) -> str:
        return self.template.text

    @property
    def limit(self) -> int | None:
        return self.n if self.n < len(self.frame) else None

    @property
    def abort(self) -> ChatError | None:
        """What stopped the run (key, model, a long wait), or None."""
        return self._abort

    def start(self) -> None:
        """Ready to run (session loop): counters and queues reset, cache hits written."""
        self._reset()
        self._apply_hits()

    def _reset(self) -> None:
        self.counters = _Counters(total=sum(len(job.rows) for job in self.to_send))
        self._ready: deque[MapRequest] = deque()
        self._delayed: list[tuple[float, int, MapRequest]] = []
        self._abort: ChatError | None = None

    def _apply_hits(self) -> None:
        for job, hit in self.hits:
            self._cached(job, hit)

    def spend(self, reply: Reply) -> None:
        """Count a reply's cost in the progress and the summary."""
        self._spent(reply)

    def answer(self, request: MapRequest, text: str) -> None:
        """A reply to `request` (not from the cache): its rows are written (or re-asked)."""
        self._answered(request, text, cached=False)

    def fail(self, request: MapRequest, error: ChatError) -> None:
        """`request` is given up: `error` goes into its rows' error column."""
        self._fail(request, error)

    async def send_queued(self) -> None:
        """Send online what is queued (session loop): the re-asks of invalid JSON replies."""
        if self._ready:
            await self._dispatch()

    async def execute(self) -> None:
        session = self.session
        self._reset()
        high = self.plan.cost_high if self.to_send else 0.0
        held = session.usage.reserve(high) if self.to_send and not session.settings.offline else 0.0
        try:
            self._apply_hits()
            if session.settings.offline:
                for job in self.to_send:
                    self._fail(job, OfflineCacheMiss("Offline mode: this row is not in the cache."))
            else:
                self._ready.extend(self.to_send)
            if self._ready:
                await self._dispatch()
        finally:
            session.usage.settle(held, None)

    def _cached(self, job: MapRequest, hit: dict[str, Any]) -> None:
        """A cache hit: its ledger row and the saving, then the same handling as a reply."""
        session, model = self.session, job.prepared.body["model"]
        usage = Usage(**hit["usage"]) if hit.get("usage") else None
        price = session.prices.lookup(model, is_local=self.local)
        saved = pricing.cost(usage, price) if usage else None
        if session.cache is not None:
            session.cache.record_hit(saved)
        session.usage.record(
            LedgerRow(
                time=time.time(),
                thread="map",
                model=model,
                host=session.host,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                cached_tokens=usage.cached_tokens if usage else 0,
                cost=0.0,
                saved=saved,
                cached=True,
                estimated=usage.estimated if usage else True,
            )
        )
        self._answered(job, str(hit.get("text", "")), cached=True)

    def _limiter(self) -> RateLimiter:
        now = time.monotonic()
        per_session = _LIMITERS.setdefault(self.session, {})
        key = (self.session.base_url, self.model)
        limiter = per_session.get(key)
        if limiter is None:
            limiter = per_session[key] = RateLimiter(self.rpm, self.tpm, now)
        else:  # this run's caps (none: the server's own limits, as learnt)
            limiter.set_limits(self.rpm, self.tpm, now)
        return limiter

    def _window(self) -> int:
        if self.local:
            return 1  # the embedded llama.cpp server answers one request at a time
        if self.concurrency is not None:
            return self.concurrency  # the user's window, from the first request on
        if not self.limiter.answered and not self.limiter.limited:
            return SLOW_START
        rate = self.limiter.max_rate(self._mean_tokens)
        if rate is None:
            return DEFAULT_CONCURRENCY
        needed = math.ceil(rate * self._latency * LATENCY_HEADROOM) + 2
        return max(4, min(MAX_CONCURRENCY, needed))

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        self.limiter = self._limiter()
        self._latency = 1.0 if self.limiter.max_rate(1) is None else 0.5
        self._mean_tokens = sum(j.tokens for j in self.to_send) / max(1, len(self.to_send))
        client = await self.session.client()
        pool = self.concurrency or (1 if self.local else MAX_CONCURRENCY)
        if getattr(client, "max_connections", None) != pool:
            await client.set_max_connections(pool)
        self._waiter: asyncio.Future[None] = loop.create_future()
        self._inflight = inflight = set[asyncio.Task[None]]()
        try:
            while self._abort is None and (self._ready or self._delayed or inflight):
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    self._ready.append(heapq.heappop(self._delayed)[2])
                timeout: float | None = None
                if self._ready and len(inflight) < self._window():
                    job = self._ready[0]
                    if self.limiter.too_large(job.tokens):
                        self._ready.popleft()
                        self._fail(
                            job, RateLimitError(_too_large(job, self.limiter), status_code=429)
                        )
                        continue
                    wait = self.limiter.wait(job.tokens, now)
                    if wait <= 0:
                        self._ready.popleft()
                        ticket = self.limiter.take(job.tokens, now)
                        task = loop.create_task(self._send(job, ticket))
                        inflight.add(task)
                        task.add_done_callback(self._done)
                        continue
                    timeout = wait
                if self._delayed:
                    due = self._delayed[0][0] - now
                    timeout = due if timeout is None else min(timeout, due)
                await self._sleep(loop, timeout)
            if inflight:  # aborted: let what is in flight finish and be written
                await asyncio.gather(*inflight, return_exceptions=True)
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        """Until a request finishes or `timeout` passes (the exact deficit: no polling)."""
        if self._waiter.done():
            self._waiter = loop.create_future()
            return
        handle = loop.call_later(timeout, self._wake) if timeout is not None else None
        try:
            await self._waiter
        finally:
            if handle is not None:
                handle.cancel()
            self._waiter = loop.create_future()

    def _wake(self) -> None:
        if not self._waiter.done():
            self._waiter.set_result(None)

    def _done(self, task: asyncio.Task[None]) -> None:
        # A done callback, not the task's own `finally`: the dispatcher must see it gone.
        self._inflight.discard(task)
        self._wake()

    async def _send(self, job: MapRequest, ticket: Ticket) -> None:
        counters = self.counters
        counters.requests += 1
        if counters.first_send is None:
            counters.first_send = time.monotonic()
        mode: CacheMode = "off" if self.cache_mode == "off" else "refresh"
        if job.reask and self.cache_mode == "use":
            mode = "use"  # a re-ask may have been answered by an earlier run
        try:
            reply = await self.session.request(
                job.prepared, cache=mode, reserve=job.reask, max_retries=0
            )
        except RateLimitError as exc:
            now = time.monotonic()
            self.limiter.refund(ticket, now)
            self.limiter.observe(ticket, exc.rate_limit, now)
            self._rate_limited(job, exc, now)
        except ChatError as exc:
            self.limiter.observe(ticket, None, time.monotonic())
            self._failed(job, exc)
        else:
            # the x-ratelimit-* headers of this very response calibrate the limiter
            self.limiter.observe(ticket, reply.extra.get("rate_limit"), time.monotonic())
            if not reply.cached:
                self._latency = 0.8 * self._latency + 0.2 * reply.latency
            self._spent(reply)
            self._answered(job, reply.text, cached=False)

    def _spent(self, reply: Reply) -> None:
        if reply.cost is None:
            self.counters.cost_known = False
        else:
            self.counters.cost += reply.cost

    def _rate_limited(self, job: MapRequest, exc: RateLimitError, now: float) -> None:
        self.counters.rate_limited += 1
        job.limited += 1
        server = (exc.server_message or "").lower()
        if "too large" in server:
            self._fail(job, exc)
            return
        wait = exc.retry_after
        if wait is not None and wait > DEFAULT_MAX_WAIT:
            self._stop(exc)
            self._ready.appendleft(job)
            return
        if job.limited > MAX_RATE_LIMITED:
            self._fail(job, exc)
            return
        # One shared pause for every sender; the row goes back to the front of the queue.
        self.limiter.pause(wait if wait is not None else backoff_delay(job.limited - 1), now)
        self._ready.appendleft(job)

    def _failed(self, job: MapRequest, exc: ChatError) -> None:
        kind = _classify(exc)
        if kind == "fatal":
            self._stop(exc)
            self._ready.appendleft(job)
        elif kind == "retry" and job.failures < self.retries:
            # The server's own demand (retry-after-ms / retry-after) wins over the backoff,
            # as in the client; a demand above the cap is not retried (the message says when).
            wait = getattr(exc, "retry_after", None)
            if wait is not None and wait > DEFAULT_MAX_WAIT:
                self._fail(job, exc)
                return
            job.failures += 1
            delay = wait if wait is not None and wait > 0 else backoff_delay(job.failures - 1)
            heapq.heappush(self._delayed, (time.monotonic() + delay, id(job), job))
        else:
            self._fail(job, exc)

    def _stop(self, exc: ChatError) -> None:
        if self._abort is None:
            self._abort = exc

    def _fail(self, job: MapRequest, exc: ChatError) -> None:
        message = str(exc)
        if job.failures:
            message += f" (after {job.failures} {'retry' if job.failures == 1 else 'retries'})"
        for i in job.rows:
            self._finish(i, {}, message)

    def _answered(self, job: MapRequest, text: str, *, cached: bool) -> None:
        if not self.json:
            for i in job.rows:
                self._finish(i, {self.outputs[0]: text}, None, cached=cached)
            return
        parsed, problem = _parse_object(text)
        if parsed is None:
            if job.reask:
                again = f"The reply is not a JSON object ({problem}), even when asked again."
                for i in job.rows:
                    self._finish(i, {}, again)
            else:
                self._reask(job, text, problem, cached)
            return
        missing = [col for col in self.outputs if col not in parsed]
        error: str | None = None
        if missing:
            keys = ", ".join(repr(k) for k in missing)
            error = f"The reply has no {keys} key{'s' if len(missing) > 1 else ''}."
        values = {col: parsed.get(col) for col in self.outputs}
        for i in job.rows:
            self._finish(i, values, error, cached=cached)

    def _reask(self, job: MapRequest, text: str, problem: str, cached: bool) -> None:
        """Invalid JSON is asked for once more, in the same conversation, first in line."""
        from ipychat.session import Prepared

        body = dict(job.prepared.body)
        keys = ", ".join(self.outputs)
        body["messages"] = [
            *body["messages"],
            {"role": "assistant", "content": text},
            {
                "role": "user",
                "content": f"That is not a valid JSON object ({problem}). Reply with only "
                f"the JSON object, with the keys: {keys}.",
            },
        ]
        estimate = self.session.estimate(
            body["messages"], model=body["model"], max_tokens=body.get("max_tokens")
        )
        prepared = Prepared(job.prepared.prompt, None, body, estimate, label="map")
        again = MapRequest(
            self._key(body),
            prepared,
            job.rows,
            estimate.prompt_tokens + estimate.max_completion_tokens,
            reask=True,
        )
        if cached:  # its rows were counted as cached: now they are to send
            self.counters.total += len(job.rows)
        self._ready.appendleft(again)

    def _finish(
        self, i: int, values: dict[str, Any], error: str | None, *, cached: bool = False
    ) -> None:
        for col, value in values.items():
            self.values[col][i] = value
        self.errors[i] = error
        if not self.finished[i]:
            self.finished[i] = True
            if not cached:
                self.counters.done += 1
                if error is not None:
                    self.counters.errors += 1

    # ----- reading the state (any thread) ---------------------------------------------------

    def progress(self) -> MapProgress:
        c = self.counters
        now = time.monotonic()
        rate = eta = None
        if c.first_send is not None and c.done:
            elapsed = max(1e-9, now - c.first_send)
            rate = c.done / elapsed
            eta = (c.total - c.done) / rate
        return MapProgress(
            done=c.done,
            total=c.total,
            errors=c.errors,
            cost=c.cost if c.cost_known else None,
            elapsed=now - c.started,
            rate=rate,
            eta=eta,
        )

    def result(self, *, interrupted: bool = False) -> MapResult:
        columns = dict(self.values)
        failed = sum(
            1 for error in self.errors[: self.n] if error and not error.startswith("skipped:")
        )
        if failed or self.skipped or self.had_error_column:
            columns[self.error_column] = self.errors
        frame = self.frame.write(
            columns, inplace=self.inplace, json_columns=set(self.outputs) if self.json else set()
        )
        c = self.counters
        pending = self.n - sum(self.finished)
        summary = MapSummary(
            rows=self.n,
            sent=c.done - c.errors,
            cached=self.plan.cached,
            failed=failed,
            skipped=self.skipped,
            duplicates=self.plan.duplicates,
            cost=c.cost if c.cost_known else None,
            elapsed=time.monotonic() - c.started,
            requests=c.requests,
            rate_limited=c.rate_limited,
            outputs=tuple(self.outputs),
            error_column=self.error_column,
            interrupted=interrupted,
            pending=pending,
        )
        return MapResult(frame, summary, self.plan)


def _too_large(job: MapRequest, limiter: RateLimiter) -> str:
    limit = limiter.tokens.limit if limiter.tokens is not None else 0
    return (
        f"This row needs {job.tokens:,} tokens (prompt + max_tokens), more than the whole "
        f"limit of {limit:,.0f} tokens per minute; shorten it or lower --max-tokens."
    )


def _total(values: list[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _outputs(output: str | Sequence[str], json: bool) -> list[str]:
    names = [output] if isinstance(output, str) else list(output)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError("Name the output column: -o COLUMN (with --json, one per key).")
    if len(set(names)) != len(names):
        raise ConfigError(f"An output column is named twice: {', '.join(names)}.")
    if len(names) > 1 and not json:
        raise ConfigError(
            "Several output columns need --json: the reply is then a JSON object whose keys "
            "fill them."
        )
    return names


def _check_options(
    concurrency: int | None,
    rpm: float | None,
    tpm: float | None,
    retries: int | None,
    max_cost: float | None,
    limit: int | None,
    max_tokens: int | None,
    temperature: float | None,
) -> None:
    whole = {"concurrency": concurrency, "max_tokens": max_tokens}
    for name, value in whole.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive whole number, not {value!r}.")
    if concurrency is not None and concurrency > MAX_CONCURRENCY * 4:
        raise ConfigError(f"concurrency {concurrency} is more than any server will welcome.")
    for label, rate in {"rpm": rpm, "tpm": tpm}.items():
        if rate is not None and not rate > 0:
            raise ConfigError(f"{label} must be a positive number, not {rate!r}.")
    if retries is not None and (not isinstance(retries, int) or not 0 <= retries <= 20):
        raise ConfigError(f"retries must be a whole number from 0 to 20, not {retries!r}.")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a whole number ≥ 0, not {limit!r}.")
    if max_cost is not None and not max_cost >= 0:
        raise ConfigError(f"max cost must be a number of dollars ≥ 0, not {max_cost!r}.")
    if temperature is not None and not 0 <= temperature <= 2:
        raise ConfigError(f"temperature must be between 0 and 2, not {temperature}.")


# ----- entry points --------------------------------------------------------------------------


def _interrupted(mapper: MapJob) -> MapInterrupted:
    result = mapper.result(interrupted=True)
    c = mapper.counters
    message = (
        f"Interrupted: {c.done:,} of {c.total:,} rows written; re-run the cell to finish "
        "(finished rows are cached)."
    )
    return MapInterrupted(message, result)


def _aborted(mapper: MapJob, cause: ChatError) -> MapAborted:
    result = mapper.result()
    c = mapper.counters
    message = (
        f"{cause} Stopped after {c.done:,} of {c.total:,} rows; the finished ones are written "
        "and cached, re-run to finish."
    )
    return MapAborted(message, result, cause)


def plan(
    session: ChatSession,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    **options: Any,
) -> MapPlan:
    """The dry run: what `run` would send and what it may cost; nothing is sent."""
    options.pop("progress", None)
    options.pop("on_plan", None)
    return MapJob(session, df, template, output, **options).plan


def map_frame(
    session: ChatSession,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    dry_run: bool = False,
    **options: Any,
) -> Any:
    """`ChatSession.map`: the DataFrame with the replies, or the MapPlan of a dry run."""
    if dry_run:
        return plan(session, df, template, output, **options)
    return run(session, df, template, output, **options).frame


async def amap_frame(
    session: ChatSession,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    dry_run: bool = False,
    **options: Any,
) -> Any:
    """`ChatSession.amap`."""
    if dry_run:
        return plan(session, df, template, output, **options)
    return (await arun(session, df, template, output, **options)).frame


def run(
    session: ChatSession,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    progress: Callable[[MapProgress], None] | None = None,
    on_plan: Callable[[MapPlan], None] | None = None,
    **options: Any,
) -> MapResult:
    """Map `template` over the rows of `df` and wait; `ChatSession.map` is this, `.frame`.

    `output`: the column for the replies, or with `json=True` a list of columns, one per
    key of the JSON object each reply must be. Options (None: the session's setting):
    `model`, `system`, `temperature`, `max_tokens`; `concurrency` (requests in flight;
    default: a few until the server answers, then what its limits and the latency call
    for), `rpm`/`tpm` (caps; default: learnt from the x-ratelimit-* headers), `retries`
    (per row, on 5xx and network errors), `max_cost` (USD: refuse before sending if the
    upper bound is above), `cache` ("use" | "refresh" | "off"), `limit` (first N rows),
    `fill_null` (text sent for nulls; default: skip those rows), `inplace` (write into a
    pandas `df`), `error_column` ("_error"), `name` (the frame's name in messages),
    `allow_secrets` (send rows holding credential-shaped text; default: the map is
    refused before anything is sent).

    `on_plan(plan)` is called after the check and before anything is sent; `progress` is
    called from this thread about four times a second. Ctrl-C raises MapInterrupted with
    the rows finished so far in `.result`; a global failure (key, model, a long wait
    demanded by the server) raises MapAborted, also with `.result`.
    """
    mapper = MapJob(session, df, template, output, **options)
    mapper.check_budget()
    if on_plan is not None:
        on_plan(mapper.plan)
    try:
        wait_on_loop(
            session, mapper.execute(), lambda: progress(mapper.progress()) if progress else None
        )
    except KeyboardInterrupt:
        raise _interrupted(mapper) from None
    if progress is not None:
        progress(mapper.progress())
    if mapper.abort is not None:
        raise _aborted(mapper, mapper.abort)
    return mapper.result()


async def arun(
    session: ChatSession,
    df: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    progress: Callable[[MapProgress], None] | None = None,
    on_plan: Callable[[MapPlan], None] | None = None,
    **options: Any,
) -> MapResult:
    """`run` for code that awaits; the requests still go from the session's own loop."""
    mapper = MapJob(session, df, template, output, **options)
    mapper.check_budget()
    if on_plan is not None:
        on_plan(mapper.plan)
    finished = threading.Event()
    future = session.submit(guarded(mapper.execute(), finished))
    wrapped = asyncio.wrap_future(future)
    try:
        while not (await asyncio.wait({wrapped}, timeout=TICK))[0]:
            if progress is not None:
                progress(mapper.progress())
        wrapped.result()
    except asyncio.CancelledError:
        future.cancel()
        await asyncio.to_thread(finished.wait, 5.0)
        raise _interrupted(mapper) from None
    if progress is not None:
        progress(mapper.progress())
    if mapper.abort is not None:
        raise _aborted(mapper, mapper.abort)
    return mapper.result()


async def guarded(coro: Coroutine[Any, Any, T], finished: threading.Event) -> T:
    """Run `coro` and set `finished` once it and its own cleanup are over."""
    try:
        return await coro
    finally:  # after the coroutine's own cleanup: the caller may read the state now
        finished.set()


def wait_on_loop(session: ChatSession, coro: Coroutine[Any, Any, T], tick: Callable[[], None]) -> T:
    """Like LoopThread.run (Ctrl-C cancels the work and waits for its cleanup), with a tick
    in the waiting thread for the progress display."""
    finished = threading.Event()
    future = session.submit(guarded(coro, finished))
    try:
        while True:
            try:
                return future.result(timeout=TICK)
            except concurrent.futures.TimeoutError:
                tick()
    except BaseException:  # Ctrl-C, or a failing progress display: stop the work too
        future.cancel()
        finished.wait(5.0)
        raise
