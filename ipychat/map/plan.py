"""%%chatmap's planning: nulls, dedupe, prepared requests, cached reads, MapPlan.

Everything here runs in the caller's thread before anything is sent:

```
compile_template(text, columns)    {column} placeholders → one str.format per row
                                   (ipychat.map.template)
plan_requests(engine, frame, ...) → Planned
  ├── render the rows column by column; null placeholders skip the row (or --fill-null)
  ├── identical prompts share one request (sent once, its reply fills every row)
  ├── RowShape (map.rowshape): what every row's request shares, worked out once
  ├── per unique prompt: secret check and redaction, body, cache key
  ├── one batched cache read (get_many): hits are free and need no token count
  └── the rest is estimated exactly (tokens, cost; too long → row error): `to_send`
MapPlan                            the dry run and the check printed before every run
```

A cached re-run of a map costs per row the secret check, a sha256 and its share of one
SELECT; `python benchmarks/cache.py` measures it.

Counted later: in a fresh kernel the encoding (~0.5 s to load, ~0.3 s of it holding the
GIL) may still be loading when the first map is planned. A run that nothing obliges to
know its exact total first (`RowRequest.count_later`: no --max-cost, no budget, no
--rpm/--tpm, no token limit learnt yet) then estimates each prompt that surely fits the
context by its byte bound (`tokens.count_messages_bound`, never fewer than its tokens),
marks the request `counted=False` and the plan `counting`, and sends at once;
`ipychat.map.counting` counts exactly where the count comes to matter (a token limit
learnt, a reply without usage). A prompt whose bound does not fit is counted exactly here
(it waits): a bound never refuses a row."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipychat.core import tokens
from ipychat.core.errors import ContextLengthError, TemplateError
from ipychat.core.messages import Content
from ipychat.core.pricing import format_tokens, format_usd, format_usd_bound
from ipychat.engine.prepare import RequestOptions
from ipychat.engine.typedreply import add_prompt_tokens
from ipychat.map.images import ImageSlots
from ipychat.map.rowshape import RowShape, request_key

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine
    from ipychat.engine.prepare import Prepared
    from ipychat.map.frame import Frame
    from ipychat.map.template import RowTemplate

__all__ = [
    "MAP_MAX_TOKENS",
    "CachedRequest",
    "MapPlan",
    "MapRequest",
    "Planned",
    "RowRequest",
    "RowShape",
    "default_reply_cap",
    "plan_requests",
    "request_key",
    "totals",
]

# The reply cap of a map whose user set none (per output column with --json). A map's
# budget check holds the worst case of every row, and the session default (1,024) made a
# 300-row map of one-word labels cost "up to" 100 times what it does (and a $0.01 budget
# refused it). 32 tokens hold a label, a number, a name or a short sentence; a reply cut
# there keeps its text and says so in the error column and the summary, so a longer
# answer is one `--max-tokens N` away, never lost.
MAP_MAX_TOKENS = 32


def _s(n: int) -> str:
    return "" if n == 1 else "s"


# ----- the plan ------------------------------------------------------------------------------


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
    default_cap: int | None = None  # the map's own reply cap, when the user set none
    note: str | None = None  # e.g. the local model answers a map naming another model
    unreadable: int = 0  # rows whose image could not be read (not in `skipped`)
    counting: bool = False  # prompt tokens and cost are upper bounds until counted (above)

    def line(self) -> str:
        """`1,000 rows · 212 cached · 788 to send · 61,203 prompt tokens · up to 3,940 reply
        tokens · $0.0092–$0.0116 (batch: $0.0058)`"""
        parts = [f"{self.rows:,} row{_s(self.rows)}", f"{self.cached:,} cached"]
        parts.append(f"{self.send:,} to send")
        if self.duplicates:
            n = self.duplicates
            parts.append(f"{n:,} duplicate row{_s(n)} share{'s' if n == 1 else ''} a reply")
        if self.skipped:
            cols = ", ".join(self.null_columns)
            parts.append(f"{self.skipped:,} skipped (null in {cols}; --fill-null TEXT sends them)")
        if self.unreadable:
            parts.append(f"{self.unreadable:,} with an unreadable image (see _error)")
        if self.invalid:
            parts.append(f"{self.invalid:,} too long for the context window")
        if self.counting:  # byte bounds until the encoding is loaded (the module doc)
            parts.append(f"up to {self.prompt_tokens:,} prompt tokens (counting)")
        else:
            parts.append(f"{format_tokens(self.prompt_tokens, self.approximate)} prompt tokens")
        reply = f"up to {self.completion_tokens:,} reply tokens"
        if self.default_cap is not None and self.send:
            reply += f" ({self.default_cap:,} per reply by default; --max-tokens N for longer)"
        parts.append(reply)
        if self.send == 0:
            parts.append("$0.00")
        elif self.cost_high is None:
            parts.append(f"cost unknown (no price for {self.model}: %chat price MODEL IN OUT)")
        elif self.counting:  # no low end: the prompt tokens are a bound
            parts.append(f"up to {format_usd_bound(self.cost_high)}")
        else:
            cost = f"{format_usd(self.cost_low)}–{format_usd_bound(self.cost_high)}"
            if self.cost_batch is not None:
                cost += f" (batch: {format_usd(self.cost_batch)})"
            parts.append(cost)
        if self.offline and self.send:
            parts.append("offline: uncached rows will fail")
        if self.note:
            parts.append(self.note)
        return " · ".join(parts)

    def __str__(self) -> str:
        return self.line()

    def _repr_markdown_(self) -> str:
        return f"`{self.line()}`"


@dataclass
class MapRequest:
    """One unique request of a map and the rows it answers: `key` is its cache key,
    `prepared.body` the request body, `rows` the row positions its reply fills."""

    key: str
    prepared: Prepared
    rows: list[int]
    tokens: int  # what the rate limiter charges: prompt tokens + max_tokens
    reask: bool = False
    counted: bool = True  # False: `tokens` and the estimate hold a byte bound (module doc)
    failures: int = 0
    limited: int = 0
    fell_back: bool = False  # re-sent in the prompt kind after the server refused the fields

    @property
    def prompt(self) -> Content:
        return self.prepared.prompt

    @property
    def body(self) -> dict[str, Any]:
        return self.prepared.body

    @property
    def model(self) -> str:
        return str(self.prepared.body["model"])


@dataclass(slots=True)
class CachedRequest:
    """A unique request of a map that the cache answers: nothing is sent, so nothing is
    estimated (its reply's recorded usage is what the ledger shows)."""

    key: str
    prompt: str  # as it would be sent (after redaction)
    rows: list[int]
    shape: RowShape
    reask: bool = False  # a cache hit is never a re-ask

    @property
    def body(self) -> dict[str, Any]:
        return self.shape.body(self.prompt)

    @property
    def model(self) -> str:
        return self.shape.model


@dataclass
class Planned:
    """What planning found: the requests to send, the cache hits, the plan, and the rows
    finished before anything is sent (skipped for a null, too long for the context)."""

    plan: MapPlan
    hits: list[tuple[CachedRequest | MapRequest, dict[str, Any]]]
    to_send: list[MapRequest]
    skipped: int
    row_errors: dict[int, str]


# ----- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowRequest:
    """What every request of a map is sent with, the engine's defaults applied."""

    model: str
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    extra: dict[str, Any] | None = None  # e.g. --json's response_format
    allow_secrets: bool = False
    default_cap: int | None = None  # the map's own reply cap, when the user set none
    salt: str = ""  # a typed map's spec digest: part of every cache key
    # Prompt tokens a typed map's request carries outside the messages (a schema sent in
    # `response_format` is billed as input): added to every estimate.
    schema_tokens: int = 0
    # Prompts that surely fit may be estimated by their byte bound while the model's
    # encoding still loads, and counted later (the module doc): a run that needs no exact
    # total before sending.
    count_later: bool = False

    def options(self) -> RequestOptions:
        """The options of `Engine.one_body`/`prepare_one` for every row."""
        return RequestOptions(
            self.model,
            self.system,
            self.temperature,
            self.max_tokens,
            self.extra,
            self.allow_secrets,
        )


def plan_requests(
    engine: Engine,
    frame: Frame,
    template: RowTemplate,
    n: int,
    *,
    fill_null: str | None,
    cache_mode: str,
    request: RowRequest,
) -> Planned:
    """Plan the first `n` rows of `frame` (caller's thread, nothing sent): render each row
    once, skip or fill nulls, send identical prompts once, check and clean each unique
    prompt, read the cache for all of them in one batched read, and estimate what is sent.

    What all rows share is worked out once (`RowShape`); per unique prompt there is the
    secret check and redaction (`Engine.clean_prompt`, as `prepare_one` does), a body, a key,
    and, only for the prompts to send, the token count.
    """
    row_errors: dict[int, str] = {}
    slots = ImageSlots()  # image columns: each image a marker in the row's text
    by_prompt, skipped, null_cols = _render(frame, template, n, fill_null, row_errors, slots)
    store = engine.cache if engine.settings.cache and cache_mode == "use" else None
    jobs, found, invalid = _lookup(engine, by_prompt, row_errors, request, store, slots)
    hits = [(job, found[job.key]) for job in jobs if job.key in found]
    to_send = [job for job in jobs if job.key not in found and isinstance(job, MapRequest)]
    processed = n - skipped
    plan = MapPlan(
        rows=n,
        cached=sum(len(job.rows) for job, _ in hits),
        send=len(to_send),
        send_rows=sum(len(job.rows) for job in to_send),
        duplicates=processed - invalid - len(jobs) if processed else 0,
        skipped=skipped - len(slots.failed),
        null_columns=tuple(null_cols),
        invalid=invalid,
        prompt_tokens=0,
        completion_tokens=0,
        cost_low=None,
        cost_high=None,
        cost_batch=None,
        model=request.model,
        offline=engine.settings.offline,
        first_prompt=next((slots.text(p) for p in by_prompt), None),
        default_cap=request.default_cap,
        unreadable=len(slots.failed),
    )
    return Planned(totals(plan, to_send), hits, to_send, skipped, row_errors)


def totals(plan: MapPlan, to_send: list[MapRequest]) -> MapPlan:
    """`plan` with the tokens and cost of `to_send` (again, once they are counted)."""
    estimates = [job.prepared.estimate for job in to_send]
    return dataclasses.replace(
        plan,
        prompt_tokens=sum(e.prompt_tokens for e in estimates),
        completion_tokens=sum(e.max_completion_tokens for e in estimates),
        cost_low=_total([e.cost_low for e in estimates]),
        cost_high=_total([e.cost_high for e in estimates]),
        cost_batch=_total([e.cost_batch for e in estimates]),
        approximate=any(e.approximate for e in estimates),
        counting=any(not job.counted for job in to_send),
    )


def _lookup(
    engine: Engine,
    by_prompt: dict[str, list[int]],
    row_errors: dict[int, str],
    request: RowRequest,
    store: Any,
    slots: ImageSlots,
) -> tuple[list[MapRequest | CachedRequest], dict[str, dict[str, Any]], int]:
    """Each unique prompt's request and cache key, the cache read for all of them at once:
    (the requests, the cache entries found by key, the rows too long for the context).
    Rows with images are prepared one by one (`RowShape` is for text rows)."""
    options = request.options()
    allow_secrets = request.allow_secrets
    shape = RowShape.probe(engine, options, request.salt) if by_prompt and not slots else None
    jobs: list[MapRequest | CachedRequest] = []
    found: dict[str, dict[str, Any]] = {}
    invalid = 0
    if shape is None:
        invalid = _prepare(engine, by_prompt, row_errors, request, jobs, slots)
        if store is not None and jobs:
            found = store.get_many([job.key for job in jobs])
        return jobs, found, invalid
    # Every prompt is checked (and cleaned) before anything else, in row order: the first
    # one holding a credential refuses the map, whatever the cache holds.
    cleaned = [engine.clean_prompt(prompt, allow_secrets) for prompt in by_prompt]
    keys = shape.keys([text for text, _ in cleaned])
    if store is not None:
        found = store.get_many(keys)
    # Decided once, before the rows (the encoding loads in another thread meanwhile).
    later = request.count_later and not request.schema_tokens and not tokens.is_loaded(shape.model)
    for (text, masked), key, rows in zip(cleaned, keys, by_prompt.values(), strict=True):
        fits = shape.fits(text)
        if key in found and fits:
            jobs.append(CachedRequest(key, text, rows, shape))
            continue
        bound = later and fits  # the byte bound stands in for the count (module doc)
        try:
            prepared = shape.prepare(text, masked, exact=not bound)
        except ContextLengthError as exc:  # this row only (a credential refuses the map)
            invalid += _too_long(row_errors, rows, exc)
            continue
        job = _request(key, _with_schema(engine, prepared, request), rows)
        job.counted = not bound
        jobs.append(job)
    return jobs, found, invalid


def _render(
    frame: Frame,
    template: RowTemplate,
    n: int,
    fill_null: str | None,
    row_errors: dict[int, str],
    slots: ImageSlots,
) -> tuple[dict[str, list[int]], int, list[str]]:
    """Each row's prompt, rendered once: {prompt: its rows}, rows skipped, null columns.

    Column by column (one list per column, one `str.format` per row); only the rows with a
    null in a placeholder column go one by one. An image column's values become markers
    (`slots`); a row whose image cannot be read is skipped with its error.
    """
    masks = [frame.nulls(c, n) for c in template.columns]
    columns = []
    for k, c in enumerate(template.columns):
        values = frame.values(c, n)
        marks = slots.column(values, masks[k], template.kind(k), c, row_errors)
        columns.append(
            marks if marks is not None else [v if type(v) is str else _text(v, c) for v in values]
        )
    nulls: dict[int, list[int]] = {}  # row → its placeholder columns that are null
    for k, mask in enumerate(masks):
        if any(mask):
            for i in itertools.compress(range(n), mask):
                nulls.setdefault(i, []).append(k)
    render = template.format_string.format
    prompts = [render(*row) for row in zip(*columns, strict=True)]
    null_cols: list[str] = []
    for i in sorted(nulls):
        names = [str(template.columns[k]) for k in nulls[i]]
        if fill_null is None:
            row_errors[i] = f"skipped: null in {', '.join(names)} (use --fill-null TEXT to send it)"
            null_cols.extend(c for c in names if c not in null_cols)
            continue
        row = [column[i] for column in columns]
        for k in nulls[i]:
            row[k] = fill_null
        prompts[i] = render(*row)
    by_prompt: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        rows = by_prompt.get(prompt)
        if rows is None:
            if i in row_errors:
                continue
            by_prompt[prompt] = [i]
        elif i not in row_errors:
            rows.append(i)
    return by_prompt, len(row_errors), null_cols  # every row with an error is skipped


def _with_schema(engine: Engine, prepared: Prepared, request: RowRequest) -> Prepared:
    """`prepared` with a typed map's schema tokens in its estimate (tokens and cost)."""
    return add_prompt_tokens(engine, prepared, request.schema_tokens)


def _request(key: str, prepared: Prepared, rows: list[int]) -> MapRequest:
    estimate = prepared.estimate
    return MapRequest(key, prepared, rows, estimate.prompt_tokens + estimate.max_completion_tokens)


def _too_long(row_errors: dict[int, str], rows: list[int], exc: ContextLengthError) -> int:
    for i in rows:
        row_errors[i] = str(exc)
    return len(rows)


def _prepare(
    engine: Engine,
    by_prompt: dict[str, list[int]],
    row_errors: dict[int, str],
    request: RowRequest,
    jobs: list[MapRequest | CachedRequest],
    slots: ImageSlots,
) -> int:
    """Each unique prompt through `Engine.prepare_one`, into `jobs` (when no `RowShape`
    could be had); returns the rows too long for the context window."""
    invalid = 0
    options = request.options()
    for prompt, rows in by_prompt.items():
        try:
            prepared = engine.prepare_one(slots.content(prompt), options, label="map")
        except ContextLengthError as exc:  # this row only (a credential refuses the map)
            invalid += _too_long(row_errors, rows, exc)
            continue
        prepared.cache_salt = request.salt
        key = request_key(engine, prepared.body, request.salt)
        jobs.append(_request(key, _with_schema(engine, prepared, request), rows))
    return invalid


def default_reply_cap(engine: Engine, max_tokens: int | None, columns: int) -> int | None:
    """The map's own reply cap (MAP_MAX_TOKENS per output column), or None when the user
    chose one: `max_tokens` here, or a max_tokens setting other than the default."""
    from ipychat.core.settings import DEFAULT_MAX_TOKENS

    if max_tokens is not None or engine.settings.max_tokens not in (None, DEFAULT_MAX_TOKENS):
        return None
    return MAP_MAX_TOKENS * max(columns, 1)


def _total(values: list[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _text(value: Any, column: Any) -> str:
    """A cell's text; a value whose str() raises (user code) refuses the map in one line."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception as exc:
        raise TemplateError(
            f"A value in column {column!r} could not be turned into text "
            f"({type(exc).__name__}): fix or drop it before mapping."
        ) from None
