"""A map's options, checked once: `MapOptions` is what `%%chatmap`'s flags and the keyword
arguments of `ChatSession.map` become before anything is planned or sent.

Every check of a map's options is here (`MapOptions.__post_init__`), each refusing in one
line that names the option and what to give instead. The entry points (`ipychat.map.job`,
`ipychat.map.batch`) turn their keyword arguments into a `MapOptions` with `MapOptions.of`;
a `MapJob` takes one.

A typed map names what each reply must be with exactly one of `schema` (a Pydantic model or
a JSON-schema dict: one column per field, named after it), `choices` (labels: one categorical
column) or `filter` (yes/no: one boolean column, `ChatSession.filter`); `spec` is its
`ipychat.core.structured.OutputSpec`. With `choices`, `scores=True` adds each label's
probability from the reply's log probabilities (`ipychat.map.scores`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, cast

from ipychat.core.errors import ConfigError
from ipychat.core.structured import OutputSpec, output_spec
from ipychat.core.types import CacheMode
from ipychat.map.dispatch import MAX_CONCURRENCY
from ipychat.map.sharedpace import SharedPace

__all__ = ["MapOptions", "check_options", "output_columns"]


@dataclass(frozen=True)
class MapOptions:
    """What a map was asked for (None: the session's setting). See `ipychat.map.job.run`.

    `outputs` is the -o column names (one, or with `json` one per key); `cache` takes
    "use" | "refresh" | "off" (True and False mean "use" and "off").
    """

    outputs: tuple[str, ...] = ("col",)
    json: bool = False
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    retries: int | None = None
    max_cost: float | None = None
    cache: CacheMode = "use"
    limit: int | None = None
    fill_null: str | None = None
    inplace: bool = False
    error_column: str = "_error"
    name: str | None = None
    allow_secrets: bool = False
    schema: Any = None
    choices: Sequence[str] | None = None
    filter: bool = False
    scores: bool = False  # with choices: each label's probability (ipychat.map.scores)
    # A pace shared with other kernels or workers (`ipychat.map.sharedpace`): one quota.
    pace: SharedPace | None = None
    # Replies per cache write (None: dispatch.CACHE_BATCH, or every second). 1 writes each
    # reply as it comes: a Dask worker killed mid-map loses no answered row.
    cache_batch: int | None = None

    def __post_init__(self) -> None:
        # Normalised in place (the dataclass is frozen once built): a str or a list of
        # column names becomes a tuple, and a bool cache the mode it stands for.
        spec = self.spec
        if spec is not None and self.json:
            raise ConfigError(
                f"--json and {_typed_flag(spec)} ask for different replies: keep "
                f"{_typed_flag(spec)} (its columns are typed)."
            )
        if self.scores and (spec is None or spec.mode != "choices"):
            raise ConfigError(
                "scores gives each label's probability: it needs choices "
                "(e.g. --choices positive,negative --scores)."
            )
        if spec is not None and spec.mode == "schema":
            object.__setattr__(self, "outputs", _schema_columns(spec, self.outputs))
        elif spec is not None:
            object.__setattr__(self, "choices", spec.labels or None)
            object.__setattr__(self, "outputs", tuple(output_columns(self.outputs, False)))
        else:
            object.__setattr__(self, "outputs", tuple(output_columns(self.outputs, self.json)))
        cache: Any = self.cache
        mode = "use" if cache is True else "off" if cache is False else cache
        if mode not in ("use", "refresh", "off"):
            raise ConfigError(f"cache must be 'use', 'refresh' or 'off', not {cache!r}.")
        object.__setattr__(self, "cache", mode)
        check_options(
            self.concurrency,
            self.rpm,
            self.tpm,
            self.retries,
            self.max_cost,
            self.limit,
            self.max_tokens,
            self.temperature,
        )
        if self.pace is not None and not isinstance(self.pace, SharedPace):
            raise ConfigError(
                f"pace is a shared pace such as ipychat.map.sharedpace.RedisPace(url), not "
                f"{type(self.pace).__name__}."
            )
        batch = self.cache_batch
        if batch is not None and (type(batch) is not int or batch < 1):
            raise ConfigError(f"cache_batch must be a positive whole number, not {batch!r}.")
        if self.error_column in self.outputs:
            raise ConfigError(
                f"{self.error_column!r} is where row errors go: pick another -o name."
            )

    @classmethod
    def of(cls, output: str | Sequence[str] = "col", **options: Any) -> MapOptions:
        """The options of `map(df, template, output, **options)`; an unknown option is a
        TypeError naming it, as for any keyword argument."""
        unknown = sorted(set(options) - _NAMES)
        if unknown:
            raise TypeError(f"map() got an unexpected keyword argument {unknown[0]!r}")
        return cls(outputs=cast("tuple[str, ...]", output), **options)

    @cached_property
    def spec(self) -> OutputSpec | None:
        """What each reply must be (schema, choices or filter), or None: free text."""
        if self.schema is None and self.choices is None and not self.filter:
            return None
        return output_spec(schema=self.schema, choices=self.choices, filter=self.filter)

    def as_dict(self) -> dict[str, Any]:
        """The options but `outputs`, as keyword arguments (`MapOptions.of(outputs, **…)`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "outputs"}


_NAMES = frozenset(f.name for f in fields(MapOptions)) - {"outputs"}


def _typed_flag(spec: OutputSpec) -> str:
    return {"schema": "--schema", "choices": "--choices", "filter": "a filter"}[spec.mode]


def _schema_columns(spec: OutputSpec, outputs: str | Sequence[str]) -> tuple[str, ...]:
    """A schema's columns: its fields (`parent.child` for nested objects), in order."""
    columns = tuple(f.column for f in spec.fields)
    given = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    if given not in (("col",), columns):
        raise ConfigError(
            f"With a schema the columns are its fields ({', '.join(columns)}): leave out the "
            "output column names (or rename the fields in the schema)."
        )
    return columns


def output_columns(output: str | Sequence[str], json: bool) -> list[str]:
    """The -o column names, checked."""
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


def check_options(
    concurrency: int | None,
    rpm: float | None,
    tpm: float | None,
    retries: int | None,
    max_cost: float | None,
    limit: int | None,
    max_tokens: int | None,
    temperature: float | None,
) -> None:
    """The numeric options of a map, checked before anything else."""
    whole = {"concurrency": concurrency, "max_tokens": max_tokens}
    for name, value in whole.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive whole number, not {value!r}.")
    if concurrency is not None and concurrency > MAX_CONCURRENCY * 4:
        raise ConfigError(f"concurrency {concurrency} is more than any server will welcome.")
    for label, rate in {"rpm": rpm, "tpm": tpm}.items():
        if rate is not None and not (rate > 0 and math.isfinite(rate)):  # nan, inf: no limit
            unit = "requests" if label == "rpm" else "tokens"
            raise ConfigError(
                f"{label} must be a positive number of {unit} per minute, not {rate!r}: "
                f"give the limit (e.g. --{label} {500 if label == 'rpm' else 200_000}), or "
                "leave it out to use the server's own."
            )
    if retries is not None and (not isinstance(retries, int) or not 0 <= retries <= 20):
        raise ConfigError(f"retries must be a whole number from 0 to 20, not {retries!r}.")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a whole number ≥ 0, not {limit!r}.")
    if max_cost is not None and not max_cost >= 0:
        raise ConfigError(f"max cost must be a number of dollars ≥ 0, not {max_cost!r}.")
    if temperature is not None and not 0 <= temperature <= 2:
        raise ConfigError(f"temperature must be between 0 and 2, not {temperature}.")
