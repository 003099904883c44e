"""Typed replies as typed columns: one column per schema field, a categorical for labels, a
boolean for yes/no, for pandas and polars.

`typed_columns(spec, parsed, library=...)` takes one `Parsed` per row (None: the row was not
asked) and returns the columns in row order, ready to be assigned by position, plus one error
per row for the `_error` column.

The dtype of a column follows from the schema alone, never from the values that came back,
so a column has the same dtype on every run:

| schema                          | pandas                  | polars                   |
|---------------------------------|-------------------------|--------------------------|
| integer                         | Int64                   | Int64                    |
| number                          | Float64                 | Float64                  |
| boolean, and yes/no (filter)    | boolean                 | Boolean                  |
| string                          | string                  | String                   |
| string, format date-time        | datetime64 (naive; UTC if every value has an offset) | Datetime |
| string, format date             | datetime64 (midnight)   | Date                     |
| enum (and choices)              | category, exactly the enum's values | Enum (strings), else Int64 |
| array                           | object (Python lists)   | List of the item type, else Object |

Every column is of a nullable dtype, because any row can fail (its values are then NA and
its error is kept); whether null is an acceptable *answer* is the schema's business, checked
when the reply is parsed. Datetimes that mix values with and without an offset are not
rewritten into one time zone: that column holds the Python datetimes (object / Object).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ipychat.core.schema import Field, parse_iso
from ipychat.core.structured import OutputSpec, Parsed

__all__ = ["Library", "TypedColumns", "filter_rows", "keep_tail", "typed_columns"]

Library = Literal["pandas", "polars"]


@dataclass(frozen=True)
class TypedColumns:
    """The columns (name -> pandas array or polars Series, in row order) and per-row errors."""

    columns: dict[str, Any]
    errors: list[str | None]


def typed_columns(
    spec: OutputSpec,
    parsed: Sequence[Parsed | None],
    *,
    library: Library = "pandas",
    output: str | None = None,
) -> TypedColumns:
    """Columns for the replies of a spec. `output` names the label/answer column (default
    the spec's name); a schema's columns are named after its fields (`parent.child`)."""
    errors: list[str | None] = [p.error if p is not None else None for p in parsed]
    if spec.mode == "schema":
        fields = list(spec.fields)
        rows = [p.record if p is not None and p.ok else None for p in parsed]
    else:
        kind = "enum" if spec.mode == "choices" else "boolean"
        fields = [Field(output or spec.name, (), kind, False, spec.labels)]  # type: ignore[arg-type]
        rows = [{fields[0].column: p.value} if p is not None and p.ok else None for p in parsed]
    columns: dict[str, Any] = {}
    for f in fields:
        values = [_value(f, row, i, errors) for i, row in enumerate(rows)]
        columns[f.column] = _build(library, f, values)
    return TypedColumns(columns, errors)


def filter_rows(frame: Any, decisions: Any) -> Any:
    """The rows of a pandas or polars frame whose decision is True (NA, a failed row, is not
    kept), with their index (pandas) and order."""
    if type(frame).__module__.split(".")[0] == "polars":
        import polars as pl

        return frame.filter(pl.Series(decisions, dtype=pl.Boolean).fill_null(False).to_list())
    import pandas as pd

    mask = pd.array(list(decisions), dtype="boolean").fillna(False)
    return frame[mask.to_numpy(dtype=bool)]


def keep_tail(new: Any, old: Any, n: int) -> Any:
    """Column `new` (a typed column, pandas array or polars Series) for its first `n` rows and
    `old` (the frame's column of that name) after them: a map with --limit leaves the rows it
    did not process as they were. The typed dtype is kept where every old value converts
    without loss; otherwise the column holds both as they are (object / the old dtype)."""
    if type(new).__module__.split(".")[0] == "polars":
        import polars as pl

        tail = old.slice(n)
        try:
            tail = tail.cast(new.dtype, strict=True)
        except (pl.exceptions.PolarsError, TypeError, ValueError):
            return pl.Series(new.name, [*new.head(n).to_list(), *tail.to_list()], dtype=pl.Object)
        return pl.concat([new.head(n), tail.rename(new.name)])
    import pandas as pd

    head = pd.Series(new[:n], dtype=new.dtype)
    tail = pd.Series(old).iloc[n:].reset_index(drop=True)
    categories = getattr(new.dtype, "categories", None)
    lossless = categories is None or set(tail.dropna()) <= set(categories)
    converted = tail
    if lossless:  # an astype that would turn a value into NA is not taken
        try:
            converted = tail.astype(new.dtype)
            lossless = bool((converted.isna() == tail.isna()).all())
        except (TypeError, ValueError):
            lossless = False
    if not lossless:
        return _object_array([*head.tolist(), *tail.tolist()])
    return pd.concat([head, converted], ignore_index=True).astype(new.dtype).array


def _value(f: Field, row: Any, i: int, errors: list[str | None]) -> Any:
    """The Python value of one cell, or None; a value that does not convert becomes None and
    its row's error says why (the first problem of a row is kept)."""
    if row is None or row.get(f.column) is None:
        return None
    raw = row[f.column]
    try:
        return _convert(f, raw)
    except (TypeError, ValueError, OverflowError) as exc:
        if errors[i] is None:
            errors[i] = f"{f.column}: {exc}"
        return None


def _convert(f: Field, raw: Any) -> Any:
    if f.type == "integer":
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"{raw!r} is not an integer")
        return int(raw)
    if f.type == "number":
        if isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not a number")
        return float(raw)
    if f.type == "boolean":
        if not isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not true or false")
        return raw
    if f.type == "string":
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not a string")
        return raw
    if f.type in ("date", "datetime"):
        return parse_iso(raw, f.type)
    if f.type == "enum" and raw not in f.categories:
        raise ValueError(f"{raw!r} is not one of {list(f.categories)!r}")
    if f.type == "list" and not isinstance(raw, list):
        raise ValueError(f"{raw!r} is not a list")
    return raw


def _offsets(values: Sequence[Any]) -> set[bool]:
    """Which of the datetimes carry an offset: {True}, {False}, both, or none."""
    return {v.tzinfo is not None for v in values if isinstance(v, dt.datetime)}


def _build(library: Library, f: Field, values: list[Any]) -> Any:
    if library == "pandas":
        return _pandas(f, values)
    if library == "polars":
        return _polars(f, values)
    raise ValueError(f"library must be 'pandas' or 'polars', not {library!r}")


def _object_array(values: Sequence[Any]) -> Any:
    import numpy as np

    array = np.empty(len(values), dtype=object)  # one cell per value, lists included
    for i, value in enumerate(values):
        array[i] = value
    return array


def _pandas(f: Field, values: list[Any]) -> Any:
    import pandas as pd

    dtypes: dict[str, Any] = {
        "integer": "Int64",
        "number": "Float64",
        "boolean": "boolean",
        "string": "string",
    }
    if f.type in dtypes:
        return pd.array(values, dtype=dtypes[f.type])
    if f.type == "enum":
        return pd.Categorical(values, categories=list(f.categories))
    if f.type in ("date", "datetime"):
        offsets = _offsets(values)
        if offsets == {True, False}:
            return _object_array(values)
        return pd.to_datetime(pd.Series(values, dtype=object), utc=offsets == {True}).array
    return _object_array(values)


def _polars(f: Field, values: list[Any]) -> Any:
    import polars as pl

    scalar = {"integer": pl.Int64, "number": pl.Float64, "boolean": pl.Boolean, "string": pl.String}
    name = f.column
    if f.type in scalar:
        return pl.Series(name, values, dtype=scalar[f.type])
    if f.type == "enum":
        if all(isinstance(c, str) for c in f.categories):
            return pl.Series(name, values, dtype=pl.Enum(list(f.categories)))
        return pl.Series(name, values, dtype=pl.Int64)
    if f.type == "date":
        return pl.Series(name, values, dtype=pl.Date)
    if f.type == "datetime":
        offsets = _offsets(values)
        if offsets == {True, False}:
            return pl.Series(name, values, dtype=pl.Object)
        zone = "UTC" if offsets == {True} else None
        return pl.Series(name, values, dtype=pl.Datetime("us", zone))
    if f.items is not None:
        return pl.Series(name, values, dtype=pl.List(scalar[f.items]))
    return pl.Series(name, values, dtype=pl.Object)
