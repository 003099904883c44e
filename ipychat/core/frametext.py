"""How a DataFrame or Series is written into a prompt: `{df}`, `{df:head=20}`, `{df:describe}`…

A frame small enough is sent whole. A larger one is sent as a summary a model can use,
within a character budget (about 4 characters a token): its shape, columns and dtypes, the
first rows with floats to 4 significant digits, `describe()` statistics of the numeric
columns, and the most frequent values of the categorical ones. The placeholder's format
spec chooses another view:

    {df}             the whole frame if small, else the summary
    {df:summary}     the summary, whatever the size
    {df:head=N}      shape, dtypes and the first N rows at full precision (tail=N: the last N)
    {df:describe}    shape, dtypes, statistics and value counts of every column, no rows
    {df:csv}         the whole frame as CSV at full precision

pandas and polars (DataFrame and Series) are read by duck typing: neither is imported here.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FRAME_MODES", "FrameText", "frame_text", "is_frame", "is_series", "parse_mode"]

# A frame whose whole CSV is at most this long is sent whole by `{df}`.
WHOLE_CHARS = 1_500
WHOLE_ROWS = 100  # and has at most this many rows
# The summary's budget in characters (≈ 500 tokens).
SUMMARY_CHARS = 2_000
SIGNIFICANT = 4  # digits of floats in summaries
HEAD_ROWS = 5  # rows in a summary
TOP_VALUES = 5  # most frequent values listed per categorical column
CELL_CHARS = 60  # a longer text cell is cut in a summary
FRAME_MODES = ("summary", "head=N", "tail=N", "describe", "csv")
_MODE = re.compile(r"(summary|describe|csv|(head|tail)=(\d{1,7}))")
_STATS = ("count", "mean", "std", "min", "25%", "50%", "75%", "max")


@dataclass(frozen=True)
class FrameText:
    """A frame as prompt text, and a one-line note on what was sent (shown by --dry-run)."""

    text: str
    note: str


def is_frame(value: Any) -> bool:
    shape = getattr(value, "shape", None)
    return (
        isinstance(shape, tuple)
        and len(shape) == 2
        and hasattr(value, "dtypes")
        and hasattr(value, "head")
        and hasattr(value, "columns")
    )


def is_series(value: Any) -> bool:
    shape = getattr(value, "shape", None)
    return (
        isinstance(shape, tuple)
        and len(shape) == 1
        and hasattr(value, "dtype")
        and hasattr(value, "head")
        and hasattr(value, "to_frame")
    )


def parse_mode(spec: str) -> tuple[str, int] | None:
    """`head=20` → ("head", 20); `describe` → ("describe", 0); None if not a frame mode."""
    m = _MODE.fullmatch(spec)
    if m is None:
        return None
    if m.group(2):
        return m.group(2), int(m.group(3))
    return m.group(1), 0


class _Table:
    """The few things a summary needs from a pandas or polars DataFrame."""

    def __init__(self, frame: Any) -> None:
        self.frame = frame
        self.polars = type(frame).__module__.split(".")[0] == "polars"
        self.rows, self.cols = frame.shape
        self.columns = [str(c) for c in frame.columns]
        if self.polars:
            self.dtypes = [str(t) for t in frame.dtypes]
            self.numeric = [
                c for c, t in zip(self.columns, frame.dtypes, strict=True) if t.is_numeric()
            ]
            self.index = False
        else:
            self.dtypes = [str(t) for t in frame.dtypes]
            self.numeric = [str(c) for c in frame.select_dtypes("number").columns]
            index = frame.index
            default = type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1
            self.index = not default
        # Categorical: text, category, boolean and enum columns.
        self.categorical = [
            c
            for c, t in zip(self.columns, self.dtypes, strict=True)
            if c not in self.numeric
            and re.match(r"(object|str|string|category|bool|categorical|enum|boolean)", t.lower())
        ]

    def column(self, name: str) -> Any:
        if self.polars:
            return self.frame[name]
        position = self.columns.index(name)
        return self.frame.iloc[:, position]

    def rows_of(self, which: str, n: int) -> tuple[list[str], list[Sequence[Any]]]:
        part = self.frame.head(n) if which == "head" else self.frame.tail(n)
        if self.polars:
            return self.columns, part.rows()
        if self.index:
            return ["", *self.columns], list(part.itertuples(index=True, name=None))
        return self.columns, list(part.itertuples(index=False, name=None))

    def describe(self, columns: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        if not columns:
            return []
        if self.polars:
            table = self.frame.select(list(columns)).describe().to_dicts()
            by_stat = {str(row["statistic"]): row for row in table}
            return [(c, {s: by_stat.get(s, {}).get(c) for s in _STATS}) for c in columns]
        positions = [self.columns.index(c) for c in columns]
        stats = self.frame.iloc[:, positions].describe().T
        return [(str(c), {s: row.get(s) for s in _STATS}) for c, row in stats.iterrows()]

    def value_counts(self, name: str, k: int) -> tuple[list[tuple[Any, int]], int]:
        column = self.column(name)
        if self.polars:
            counts = column.value_counts(sort=True).head(k).rows()
            return [(v, int(n)) for v, n in counts], int(column.n_unique())
        counts = column.value_counts(dropna=False).head(k)
        return [(v, int(n)) for v, n in counts.items()], int(column.nunique(dropna=False))

    def csv(self) -> str:
        if self.polars:
            return str(self.frame.write_csv()).strip()
        return str(self.frame.to_csv(index=self.index)).strip()


def _number(value: Any, digits: int = SIGNIFICANT) -> str:
    """A float to `digits` significant digits, keeping every digit of its integer part
    (1234567.891 → 1234568, 0.000123456 → 0.0001235); other values as they are."""
    if value is None:
        return ""
    if isinstance(value, bool) or (not isinstance(value, float) and not _is_float(value)):
        return str(value)
    x = float(value)
    if math.isnan(x):
        return ""
    if math.isinf(x) or x == 0:
        return str(x) if math.isinf(x) else "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= 15 or magnitude < -4:
        return f"{x:.{digits - 1}e}"
    decimals = max(0, digits - 1 - magnitude)
    text = f"{x:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _is_float(value: Any) -> bool:
    # numpy floating scalars (np.float32 is not a Python float) without importing numpy.
    return type(value).__name__.startswith("float") and hasattr(value, "dtype")


def _cell(value: Any, rounded: bool) -> str:
    if rounded:
        text = _number(value)
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        text = ""
    else:
        text = str(value)
    if rounded and len(text) > CELL_CHARS:
        text = text[: CELL_CHARS - 1] + "…"
    return text


def _csv_lines(header: Sequence[str], rows: Iterable[Sequence[Any]], rounded: bool) -> list[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v, rounded) for v in row])
    return buffer.getvalue().rstrip("\n").split("\n")


def _fit(lines: Sequence[str], budget: int) -> tuple[list[str], int]:
    """As many of `lines` (the first always tried) as fit in `budget` characters."""
    kept: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 1 > budget:
            break
        kept.append(line)
        used += len(line) + 1
    return kept, len(lines) - len(kept)


def _describe_lines(table: _Table, columns: Sequence[str]) -> list[str]:
    rows = [[c, *(stats[s] for s in _STATS)] for c, stats in table.describe(columns)]
    return _csv_lines(["column", *_STATS], rows, rounded=True)


def _counts_lines(table: _Table, columns: Sequence[str]) -> list[str]:
    lines = []
    for name in columns:
        counts, distinct = table.value_counts(name, TOP_VALUES)
        shown = ", ".join(f"{_cell(v, True) or 'null'} {n:,}" for v, n in counts)
        more = f" ({distinct:,} distinct)" if distinct > len(counts) else ""
        lines.append(f"{name}: {shown}{more}")
    return lines


def _title(value: Any, table: _Table, series: bool) -> str:
    if series:
        name = getattr(value, "name", None)
        label = f"Series {name} " if name not in (None, "") else "Series "
        return f"{label}of length {table.rows:,} ({table.dtypes[0]})"
    return f"DataFrame with {table.rows:,} rows × {table.cols:,} columns"


def _dtypes_line(table: _Table, budget: int | None = None) -> str:
    parts = [f"{c}: {t}" for c, t in zip(table.columns, table.dtypes, strict=True)]
    if budget is None:
        return "columns: " + ", ".join(parts)
    kept, left = _fit(parts, budget)
    more = f", … {left:,} more" if left else ""
    return "columns: " + ", ".join(kept) + more


def frame_text(value: Any, mode: tuple[str, int] | None, name: str) -> FrameText:
    """`value` (a pandas/polars DataFrame or Series) as prompt text for `{name}` or
    `{name:MODE}`; see the module docstring for the modes."""
    series = is_series(value)
    table = _Table(value.to_frame() if series else value)
    kind = "Series" if series else "DataFrame"
    size = f"{table.rows:,}" if series else f"{table.rows:,} × {table.cols:,}"
    choose = f"{{{name}:head=N}}, {{{name}:describe}} or {{{name}:csv}} choose"
    if mode is None:
        whole = table.csv()
        if table.rows <= WHOLE_ROWS and len(whole) <= WHOLE_CHARS:
            return FrameText(_whole(value, table, series, whole), f"{size} {kind}, sent whole")
        mode = ("summary", 0)
    what, n = mode
    if what == "csv":
        return FrameText(_whole(value, table, series, table.csv()), f"{size} {kind} as CSV")
    if what in ("head", "tail"):
        header, rows = table.rows_of(what, n)
        lines = [_title(value, table, series), _dtypes_line(table)]
        shown = min(n, table.rows)
        lines.append(f"{'first' if what == 'head' else 'last'} {shown:,} rows:")
        lines.extend(_csv_lines(header, rows, rounded=False))
        return FrameText("\n".join(lines), f"{what} {shown:,} of {table.rows:,} rows ({size})")
    if what == "describe":
        lines = [_title(value, table, series), _dtypes_line(table)]
        lines.extend(_stats_sections(table, table.numeric, table.categorical))
        return FrameText("\n".join(lines), f"{size} {kind}: statistics, no rows")
    return FrameText(_summary(value, table, series), f"{size} {kind} as a summary; {choose}")


def _whole(value: Any, table: _Table, series: bool, text: str) -> str:
    if series:
        return f"{_title(value, table, series)}\n{text}"
    dtypes = ", ".join(f"{c}: {t}" for c, t in zip(table.columns, table.dtypes, strict=True))
    return f"{_title(value, table, series)} ({dtypes})\n{text}"


def _stats_sections(table: _Table, numeric: Sequence[str], categorical: Sequence[str]) -> list[str]:
    lines: list[str] = []
    if numeric:
        lines.append(f"describe() of the numeric columns ({SIGNIFICANT} significant digits):")
        lines.extend(_describe_lines(table, numeric))
    if categorical:
        lines.append(f"most frequent values (top {TOP_VALUES}):")
        lines.extend(_counts_lines(table, categorical))
    return lines


def _summary(value: Any, table: _Table, series: bool) -> str:
    """Shape, dtypes, first rows, describe and value counts within SUMMARY_CHARS: each
    section gets a share of what is left, and says what it left out."""
    out = _Budget(SUMMARY_CHARS)
    out.add([_title(value, table, series)])
    if not series:
        out.add([_dtypes_line(table, budget=out.left // 4)])
    header, rows = table.rows_of("head", HEAD_ROWS)
    head, _ = _fit(_csv_lines(header, rows, rounded=True), out.left // 3)
    if len(head) > 1:  # the header and at least one row
        shown = len(head) - 1
        out.add([f"first {shown} rows (floats to {SIGNIFICANT} significant digits):", *head])
    if table.numeric:
        # Compute only as many columns as could fit (a wide frame has thousands).
        room = (out.left * 2) // 3 if table.categorical else out.left
        candidates = table.numeric[: max(1, room // 40)]
        title = f"describe() of the numeric columns ({SIGNIFICANT} significant digits):"
        body, cut = _fit(_describe_lines(table, candidates), room - len(title) - 40)
        cut += len(table.numeric) - len(candidates)
        if len(body) > 1:
            out.add([title, *body, *([f"(… {cut:,} more numeric columns)"] if cut else [])])
    if table.categorical:
        candidates = table.categorical[: max(1, out.left // 30)]
        title = f"most frequent values (top {TOP_VALUES}):"
        body, cut = _fit(_counts_lines(table, candidates), out.left - len(title) - 40)
        cut += len(table.categorical) - len(candidates)
        if body:
            out.add([title, *body, *([f"(… {cut:,} more columns)"] if cut else [])])
    return "\n".join(out.lines)


class _Budget:
    """Lines added section by section, and the characters left."""

    def __init__(self, chars: int) -> None:
        self.lines: list[str] = []
        self.left = chars

    def add(self, lines: Sequence[str]) -> None:
        self.lines.extend(lines)
        self.left -= sum(len(line) + 1 for line in lines)
