"""ipychat.core.frametext on its own: each view of a DataFrame or Series (`{df}`,
`{df:summary}`, `{df:head=N}`, `{df:tail=N}`, `{df:describe}`, `{df:csv}`) written out whole,
for pandas and polars alike, the number format of summaries, and the budget of a large frame.
tests/core/test_messages.py tests the same through templates; this file pins what a
mutation of the module showed unpinned (`python tools/mutation.py core.frametext --tests
tests/core/test_messages.py --tests tests/core/test_frametext.py`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest

from ipychat.core.frametext import (
    SUMMARY_CHARS,
    frame_text,
    is_frame,
    is_series,
    parse_mode,
)
from ipychat.core.frametext import _fit as fit  # the budget's unit: a line and its newline
from ipychat.core.frametext import _number as number  # the number format is the contract

# Five rows: pandas (linear) and polars (nearest) quantiles agree at whole positions.
DATA: dict[str, list[Any]] = {
    "city": ["Oslo", "Rome", "Oslo", "Rome", "Oslo"],  # counts without a tie: a fixed order
    "temp": [1.23456, 20.5, 7.0, -3.0, 0.5],
    "n": [1, 2, 3, 4, 5],
    "ok": [True, False, True, True, True],
}
STATS = [
    "describe() of the numeric columns (4 significant digits):",
    "column,count,mean,std,min,25%,50%,75%,max",
    "temp,5,5.247,9.252,-3,0.5,1.235,7,20.5",
    "n,5,3,1.581,1,2,3,4,5",
    "most frequent values (top 5):",
    "city: Oslo 3, Rome 2",
    "ok: True 4, False 1",
]


def _frame(kind: str) -> Any:
    df = pd.DataFrame(DATA)
    return df if kind == "pandas" else pl.from_pandas(df)


def _dtypes(kind: str) -> str:
    if kind == "polars":
        return "city: String, temp: Float64, n: Int64, ok: Boolean"
    text = str(pd.DataFrame(DATA).dtypes["city"])  # "object", or "str" from pandas 3 on
    return f"city: {text}, temp: float64, n: int64, ok: bool"


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_the_summary_of_a_frame(kind: str) -> None:
    shown = frame_text(_frame(kind), ("summary", 0), "df")
    assert shown.note == (
        "5 × 4 DataFrame as a summary; {df:head=N}, {df:describe} or {df:csv} choose"
    )
    assert shown.text.split("\n") == [
        "DataFrame with 5 rows × 4 columns",
        f"columns: {_dtypes(kind)}",
        "first 5 rows (floats to 4 significant digits):",
        "city,temp,n,ok",
        "Oslo,1.235,1,True",
        "Rome,20.5,2,False",
        "Oslo,7,3,True",
        "Rome,-3,4,True",
        "Oslo,0.5,5,True",
        *STATS,
    ]


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_describe_and_the_rows_at_full_precision(kind: str) -> None:
    frame = _frame(kind)
    described = frame_text(frame, ("describe", 0), "df")
    assert described.note == "5 × 4 DataFrame: statistics, no rows"
    head = ["DataFrame with 5 rows × 4 columns", f"columns: {_dtypes(kind)}"]
    assert described.text.split("\n")[:-2] == [*head, *STATS[:-2]]
    tail = frame_text(frame, ("tail", 2), "df")
    assert tail.note == "tail 2 of 5 rows (5 × 4)"
    assert tail.text.split("\n") == [
        *head,
        "last 2 rows:",
        "city,temp,n,ok",
        "Rome,-3.0,4,True",
        "Oslo,0.5,5,True",
    ]
    first = frame_text(frame, ("head", 9), "df")  # more than there are: all of them
    assert first.note == "head 5 of 5 rows (5 × 4)"
    assert first.text.split("\n")[2:4] == ["first 5 rows:", "city,temp,n,ok"]
    assert first.text.split("\n")[4] == "Oslo,1.23456,1,True"


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_a_small_frame_whole_and_as_csv(kind: str) -> None:
    frame = _frame(kind)
    whole = frame_text(frame, None, "df")
    assert whole.note == "5 × 4 DataFrame, sent whole"
    as_csv = frame_text(frame, ("csv", 0), "df")
    assert as_csv.note == "5 × 4 DataFrame as CSV"
    true, false = ("True", "False") if kind == "pandas" else ("true", "false")
    expected = [
        f"DataFrame with 5 rows × 4 columns ({_dtypes(kind)})",
        "city,temp,n,ok",
        f"Oslo,1.23456,1,{true}",
        f"Rome,20.5,2,{false}",
        f"Oslo,7.0,3,{true}",
        f"Rome,-3.0,4,{true}",
        f"Oslo,0.5,5,{true}",
    ]
    assert whole.text.split("\n") == expected
    assert as_csv.text.split("\n") == expected


def test_a_frame_with_its_own_index_shows_it() -> None:
    df = pd.DataFrame({"v": [1.5, float("nan")]}, index=["a", "b"])
    assert (
        frame_text(df, None, "i").text
        == "DataFrame with 2 rows × 1 columns (v: float64)\n,v\na,1.5\nb,"
    )
    assert frame_text(df, ("head", 1), "i").text.split("\n")[-2:] == [",v", "a,1.5"]
    summary = frame_text(df, ("summary", 0), "i").text.split("\n")
    assert summary[2:6] == ["first 2 rows (floats to 4 significant digits):", ",v", "a,1.5", "b,"]
    # A default RangeIndex is not shown; one that does not start at 0 or step 1 is.
    assert frame_text(pd.DataFrame({"v": [1]}), None, "d").text.endswith("\nv\n1")
    shifted = pd.DataFrame({"v": [1]}, index=pd.RangeIndex(5, 6))
    assert frame_text(shifted, None, "d").text.endswith("\n,v\n5,1")
    stepped = pd.DataFrame({"v": [1, 2]}, index=pd.RangeIndex(0, 4, 2))
    assert frame_text(stepped, None, "d").text.endswith("\n,v\n0,1\n2,2")


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_a_series(kind: str) -> None:
    values = [1.5, 2.25, 1.5]
    series = pd.Series(values, name="x") if kind == "pandas" else pl.Series("x", values)
    dtype = "float64" if kind == "pandas" else "Float64"
    whole = frame_text(series, None, "s")
    assert whole.note == "3 Series, sent whole"
    assert whole.text == f"Series x of length 3 ({dtype})\nx\n1.5\n2.25\n1.5"
    summary = frame_text(series, ("summary", 0), "s")
    assert summary.note == "3 Series as a summary; {s:head=N}, {s:describe} or {s:csv} choose"
    assert summary.text.split("\n") == [
        f"Series x of length 3 ({dtype})",
        "first 3 rows (floats to 4 significant digits):",
        "x",
        "1.5",
        "2.25",
        "1.5",
        "describe() of the numeric columns (4 significant digits):",
        "column,count,mean,std,min,25%,50%,75%,max",
        f"x,3,1.75,0.433,1.5,1.5,1.5,{'1.875' if kind == 'pandas' else '2.25'},2.25",
    ]
    assert frame_text(series, ("describe", 0), "s").note == "3 Series: statistics, no rows"
    assert frame_text(series, ("head", 2), "s").note == "head 2 of 3 rows (3)"


def test_a_series_without_a_name_and_a_text_series() -> None:
    assert frame_text(pd.Series([1, 2], name=""), None, "s").text.startswith(
        "Series of length 2 (int64)\n"
    )
    assert frame_text(pd.Series([1, 2]), None, "s").text.startswith("Series of length 2 (int64)\n")
    text = frame_text(pl.Series("t", ["a", "b", "a"]), ("summary", 0), "s").text
    assert text.split("\n")[-2:] == ["most frequent values (top 5):", "t: a 2, b 1"]


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_missing_values_are_counted_as_null(kind: str) -> None:
    values = ["a", None, None, "a", "a"]
    frame = pd.DataFrame({"k": values}) if kind == "pandas" else pl.DataFrame({"k": values})
    text = frame_text(frame, ("describe", 0), "df").text
    assert text.split("\n")[-1] == "k: a 3, null 2"


def test_value_counts_say_how_many_distinct_values_they_leave_out() -> None:
    letters = pd.DataFrame({"k": list("aaaabbbccdefg")})
    text = frame_text(letters, ("describe", 0), "df").text
    assert text.split("\n")[-1] == "k: a 4, b 3, c 2, d 1, e 1 (7 distinct)"


def test_long_text_cells_are_cut_in_a_summary_only() -> None:
    long = "x" * 80
    df = pd.DataFrame({"t": [long]})
    summary = frame_text(df, ("summary", 0), "df").text.split("\n")
    assert summary[4] == "x" * 59 + "…"
    assert frame_text(df, ("head", 1), "df").text.split("\n")[-1] == long


def test_a_wide_frame_summary_stays_in_budget_and_counts_what_it_left_out() -> None:
    numeric = pd.DataFrame({f"c{i}": [float(i), i + 0.5] for i in range(300)})
    text = frame_text(numeric, ("summary", 0), "df").text
    assert len(text) <= SUMMARY_CHARS
    lines = text.split("\n")
    assert lines[1].startswith("columns: c0: float64, c1: float64, ")
    assert lines[1].endswith(" more")
    shown = lines[1].count(": float64")
    assert lines[1].endswith(f", … {300 - shown:,} more")
    stats = [line for line in lines if line.startswith("c") and line[1].isdigit()]
    assert lines[-1] == f"(… {300 - len(stats):,} more numeric columns)"
    texts = pd.DataFrame({f"t{i}": ["a", "b"] for i in range(300)})
    lines = frame_text(texts, ("summary", 0), "df").text.split("\n")
    counted = [line for line in lines if line.startswith("t") and ": a 1, b 1" in line]
    assert counted and lines[-1] == f"(… {300 - len(counted):,} more columns)"


def test_a_frame_is_sent_whole_up_to_its_limits() -> None:
    rows = pd.DataFrame({"v": range(100)})
    assert frame_text(rows, None, "df").note == "100 × 1 DataFrame, sent whole"
    more = pd.DataFrame({"v": range(101)})
    assert frame_text(more, None, "df").note.startswith("101 × 1 DataFrame as a summary")
    wide = pd.DataFrame({"v": ["x" * 1_500]})  # the CSV is over 1,500 characters
    assert frame_text(wide, None, "df").note.startswith("1 × 1 DataFrame as a summary")
    fits = pd.DataFrame({"v": ["x" * 1_498]})  # "v\n" + 1,498: exactly 1,500
    assert frame_text(fits, None, "df").note == "1 × 1 DataFrame, sent whole"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "True"),
        (12, "12"),
        ("1.23456", "1.23456"),
        (1234567.891, "1234568"),
        (0.000123456, "0.0001235"),
        (123.456, "123.5"),
        (1.0, "1"),
        (100.0, "100"),
        (-0.5, "-0.5"),
        (0.0, "0"),
        (1e-4, "0.0001"),
        (1e-5, "1.000e-05"),
        (1e15, "1.000e+15"),
        (123456789012345.6, "123456789012346"),
        (float("nan"), ""),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (np.float32(1.5), "1.5"),
        (np.float64(2.25), "2.25"),
        (np.int64(7), "7"),
        (np.float32(1.23456), "1.235"),  # numpy floats are rounded too
        (np.int64(123456789012345678), "123456789012345678"),  # numpy integers are not
        (np.bool_(True), "True"),
    ],
)
def test_the_number_format_of_summaries(value: Any, text: str) -> None:
    assert number(value) == text


def test_parse_mode() -> None:
    assert parse_mode("head=20") == ("head", 20)
    assert parse_mode("tail=0") == ("tail", 0)
    assert parse_mode("head=1234567") == ("head", 1_234_567)
    assert parse_mode("describe") == ("describe", 0)
    assert parse_mode("summary") == ("summary", 0)
    assert parse_mode("csv") == ("csv", 0)
    for spec in ("head=12345678", "head", "x", "csv ", ".2f", "head=-1"):
        assert parse_mode(spec) is None


class _Shaped:
    def __init__(self, shape: Any, *attrs: str) -> None:
        self.shape = shape
        for attr in attrs:
            setattr(self, attr, None)


def test_frames_and_series_are_known_by_their_shape_and_methods() -> None:
    assert is_frame(pd.DataFrame({"a": [1]})) and is_frame(pl.DataFrame({"a": [1]}))
    assert is_series(pd.Series([1])) and is_series(pl.Series([1]))
    assert not is_frame(pd.Series([1])) and not is_series(pd.DataFrame({"a": [1]}))
    assert not is_frame(np.zeros((2, 2))) and not is_series(np.zeros(2))
    frame_attrs = ("dtypes", "head", "columns")
    assert is_frame(_Shaped((1, 2), *frame_attrs))
    for missing in frame_attrs:
        assert not is_frame(_Shaped((1, 2), *(a for a in frame_attrs if a != missing)))
    assert not is_frame(_Shaped([1, 2], *frame_attrs))
    assert not is_frame(_Shaped((1, 2, 3), *frame_attrs))
    series_attrs = ("dtype", "head", "to_frame")
    assert is_series(_Shaped((3,), *series_attrs))
    for missing in series_attrs:
        assert not is_series(_Shaped((3,), *(a for a in series_attrs if a != missing)))
    assert not is_series(_Shaped([3], *series_attrs)) and not is_series(
        _Shaped((3, 1), *series_attrs)
    )


def test_cells_of_rows_at_full_precision_and_rounded() -> None:
    df = pd.DataFrame({"k": ["New York", None, "x" * 60], "v": [1.0, float("nan"), 2.5]})
    head = frame_text(df, ("head", 3), "df").text.split("\n")[-3:]
    assert head == ["New York,1.0", ",", "x" * 60 + ",2.5"]  # a missing value is empty
    summary = frame_text(df, ("summary", 0), "df").text.split("\n")
    assert summary[4:7] == ["New York,1", ",", "x" * 60 + ",2.5"]  # 60 characters: not cut
    for last in ("Oslo ", "OsloX"):  # the last cell of the last row, kept as it is
        rows = frame_text(pd.DataFrame({"k": ["a", last]}), ("tail", 1), "df").text
        assert rows.endswith("\n" + last)


def test_value_counts_cut_long_texts_and_count_null_as_distinct() -> None:
    long = "y" * 70
    df = pd.DataFrame({"k": [long, long, "b"]})
    counts = frame_text(df, ("describe", 0), "df").text.split("\n")[-1]
    assert counts == f"k: {'y' * 59}… 2, b 1"
    values = [None, float("nan"), "a", "b", "c", "d", "e", "f"]
    counts = frame_text(pd.DataFrame({"k": values}), ("describe", 0), "df").text.split("\n")[-1]
    assert counts == "k: null 2, a 1, b 1, c 1, d 1 (7 distinct)"


def test_a_date_column_is_neither_numeric_nor_categorical() -> None:
    df = pd.DataFrame({"t": pd.to_datetime(["2024-01-01", "2024-01-02"]), "k": ["a", "b"]})
    lines = frame_text(df, ("describe", 0), "df").text.split("\n")
    assert lines[2:] == ["most frequent values (top 5):", "k: a 1, b 1"]


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_every_view_of_a_series_is_titled_as_a_series(kind: str) -> None:
    values = [1.5, 2.25, 1.5]
    series = pd.Series(values, name="x") if kind == "pandas" else pl.Series("x", values)
    dtype = "float64" if kind == "pandas" else "Float64"
    title = f"Series x of length 3 ({dtype})"
    for mode in (("csv", 0), ("describe", 0), ("head", 2), ("tail", 1), ("summary", 0)):
        assert frame_text(series, mode, "s").text.split("\n")[0] == title, mode
    assert frame_text(series, ("csv", 0), "s").text == f"{title}\nx\n1.5\n2.25\n1.5"


def test_fit_keeps_the_lines_that_fit_with_their_newlines() -> None:
    assert fit(["ab", "cd"], 6) == (["ab", "cd"], 0)  # 3 + 3 characters
    assert fit(["ab", "cd"], 5) == (["ab"], 1)
    assert fit(["ab"], 2) == ([], 1)
    assert fit(["ab"], 3) == (["ab"], 0)
    assert fit([], 0) == ([], 0)


def test_the_summary_of_a_wide_mixed_frame_shares_its_budget() -> None:
    """80 columns, 8 rows: the budget's shares (a quarter of what is left for the column
    list, a third for the rows, two thirds of the rest for the statistics, the rest for the
    value counts) pinned on one frame: each section says what it left out, and the whole
    stays within SUMMARY_CHARS. A change to the shares shows here."""
    columns: dict[str, list[Any]] = {}
    for i in range(40):
        columns[f"num{i}"] = [float(i) + j / 7 for j in range(8)]
    for i in range(40):
        columns[f"cat{i}"] = [f"value {j % (3 + i % 5)} of column {i}" for j in range(8)]
    text = frame_text(pd.DataFrame(columns), ("summary", 0), "df").text
    assert len(text) == 1964
    lines = text.split("\n")
    assert lines[0] == "DataFrame with 8 rows × 80 columns"
    assert lines[1].endswith(", num32: float64, … 47 more")  # 33 of 80 named
    # A row does not fit in its third, so no rows (the header alone is not shown).
    assert lines[2] == "describe() of the numeric columns (4 significant digits):"
    assert lines[4] == "num0,8,0.5,0.3499,0,0.25,0.5,0.75,1"
    assert lines[23:26] == [
        "num19,8,19.5,0.3499,19,19.25,19.5,19.75,20",
        "(… 20 more numeric columns)",
        "most frequent values (top 5):",
    ]
    assert [line.split(":")[0] for line in lines[26:30]] == ["cat0", "cat1", "cat2", "cat3"]
    assert lines[30:] == ["(… 36 more columns)"]


def test_the_counts_of_left_out_columns_add_up_when_lines_are_long() -> None:
    # Each count line is long (five 60-character values), so fewer fit than are computed.
    texts = pd.DataFrame({f"t{i}": [f"{c * 60}" for c in "abcdeab"] for i in range(60)})
    lines = frame_text(texts, ("summary", 0), "df").text.split("\n")
    counted = [line for line in lines if line.startswith("t") and ": " in line]
    assert counted
    assert lines[-1] == f"(… {60 - len(counted):,} more columns)"
