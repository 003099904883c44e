"""%%chatmap's output side: reading and writing pandas/polars frames, parsing --json
replies, and the reports (MapProgress, MapSummary, MapResult).

`Frame` is the few things the engine needs from a DataFrame: its columns, the values and
nulls of a column, and writing the output columns (and `_error`) by row position, so that
row order and the index are kept whatever order replies arrive in. pandas and polars are
imported only when a frame is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ipychat.core.errors import ChatError, Interrupted, TemplateError
from ipychat.core.messages import unfenced_json
from ipychat.core.pricing import format_usd
from ipychat.map.plan import MapPlan

__all__ = [
    "CUT",
    "Frame",
    "MapAborted",
    "MapInterrupted",
    "MapProgress",
    "MapResult",
    "MapSummary",
    "cut_note",
    "format_seconds",
    "parse_object",
]


# ----- DataFrames ----------------------------------------------------------------------------


class Frame:
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

    def column(self, column: str) -> Any:
        """The column itself (a pandas or polars Series)."""
        return self.df[column] if self.kind == "pandas" else self.df.get_column(column)

    def existing(self, column: str) -> list[Any] | None:
        if column not in self.columns:
            return None
        return self.values(column, len(self))

    def write(self, columns: dict[str, Any], *, inplace: bool, json_columns: set[str]) -> Any:
        if self.kind == "pandas":
            import pandas as pd

            target = self.df if inplace else self.df.copy()
            for name, values in columns.items():
                series = pd.Series(values, index=target.index, dtype=object)
                target[name] = series.infer_objects() if name in json_columns else values
            return target
        import polars as pl

        series = [  # a typed map's columns come as Series of their dtype (`map.typed`)
            v if isinstance(v, pl.Series) else pl.Series(name, _polars_values(v))
            for name, v in columns.items()
        ]
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


def parse_object(text: str) -> tuple[dict[str, Any] | None, str]:
    """A --json reply as a dict, or None and what is wrong with it."""
    candidate = unfenced_json(text)
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, ""


# ----- progress, summary, result -------------------------------------------------------------


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


CUT = "cut:"  # the error column's mark of a reply cut at the map's default cap


def cut_note(cap: int) -> str:
    """What a row's error column says of a reply cut at the map's default cap `cap`."""
    return (
        f"{CUT} the reply reached the map's default cap of {cap:,} tokens; re-run with "
        "--max-tokens N for the whole reply."
    )


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
    cut: int = 0  # replies cut at the map's default cap (text kept, noted in error_column)
    default_cap: int | None = None
    note: str | None = None  # e.g. a typed map's fallback to asking in the prompt

    def line(self, frame: str = "the DataFrame", *, added: str | None = None) -> str:
        cols = ", ".join(self.outputs)
        noun = "column" if len(self.outputs) == 1 else "columns"
        text = (
            f"Done: {self.rows:,} row{'' if self.rows == 1 else 's'} in {self.elapsed:.1f} s ({self.sent:,} sent, "
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
        if self.cut:
            replies = "reply" if self.cut == 1 else "replies"
            text += (
                f" · {self.cut:,} {replies} cut at the default cap of {self.default_cap or 0:,} "
                f"tokens (marked in {frame}[{self.error_column!r}]): add --max-tokens N for "
                "longer replies."
            )
        if self.note:
            text += f" · {self.note}"
        return text


@dataclass
class MapResult:
    """What `run` returns: the frame with the replies, how the map went, and its plan."""

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


# ----- how a map stops early ------------------------------------------------------------------


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
