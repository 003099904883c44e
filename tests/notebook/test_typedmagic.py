"""%%chatmap --choices / --schema and %%chatfilter, through a real InteractiveShell
(with `%load_ext ipychat`) against the loopback FakeOpenAIServer."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from pydantic import BaseModel

from ipychat.testing import FakeOpenAIServer


class Currency(str, enum.Enum):
    eur = "EUR"
    usd = "USD"


class Invoice(BaseModel):
    number: str
    total: float
    paid: bool
    currency: Currency


@pytest.fixture
def shell(ip: Any) -> Iterator[Any]:
    ip.user_ns["reviews"] = pd.DataFrame(
        {"text": ["great pasta", "rude waiter", "slow service"]}, index=["a", "b", "c"]
    )
    ip.user_ns["Invoice"] = Invoice
    ip.user_ns["number"] = 3
    yield ip


def run(shell: Any, magic: str, line: str, cell: str) -> tuple[Any, str]:
    """The magic's return value and everything it showed, as text."""
    with capture_output() as out:
        value = shell.run_cell_magic(magic, line, cell)
    parts = [out.stdout]
    for o in out.outputs:
        parts.extend(str(v) for v in o.data.values())
    return value, "\n".join(parts)


# ----- bad input: one line, nothing sent -------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("reviews -o s --choices ''", "--choices needs labels separated by commas"),
        ("reviews -o s --choices good,,bad", "has an empty label"),
        ("reviews -o s --choices good,", "has an empty label"),
        ("reviews -o s --choices good", "gives one label: give at least two"),
        ("reviews -o s --choices Good,good", "are the same label"),
        ("reviews --schema Invoice --choices a,b", "--choices and --schema are two kinds"),
        ("reviews -o s --choices a,b --json", "--choices replaces --json"),
        ("reviews --schema Invoice --json", "--schema replaces --json"),
        (
            "reviews --schema Invoise",
            "Invoise is not defined in the notebook (did you mean Invoice?)",
        ),
        ("reviews --schema number", "--schema number is a int, not a Pydantic model class"),
        ("reviews --schema invoice_obj", "is an instance of Invoice: name the model class"),
        ("reviews --schema Invoice.nope", "Invoice has no attribute nope"),
        ("reviews --schema 'not a name'", "--schema needs the name of a Pydantic model"),
        ("reviews --schema listed", "the top level must be an object"),
        ("reviews --schema free", "free-form"),
        ("reviews --schema Invoice -o x", "--schema names the columns after its fields"),
        ("reviews", "-o/--output COL names the column"),
    ],
)
def test_a_bad_typed_flag_is_one_line_and_sends_nothing(
    shell: Any, fake: FakeOpenAIServer, line: str, message: str
) -> None:
    shell.user_ns["invoice_obj"] = Invoice(number="1", total=1.0, paid=True, currency="EUR")
    shell.user_ns["listed"] = {"type": "array", "items": {"type": "string"}}
    shell.user_ns["free"] = {
        "type": "object",
        "properties": {"meta": {"type": "object"}},
        "required": ["meta"],
    }
    with pytest.raises(UsageError) as info:
        run(shell, "chatmap", line, "Classify: {text}")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert fake.chat_requests == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("reviwes", "reviwes is not defined in the notebook (did you mean reviews?)"),
        ("number", "number is a int, not a DataFrame"),
        ("reviews --into 2bad", "--into needs a Python variable name"),
        ("reviews --decision ' '", "--decision needs a column name"),
        ("reviews --choices a,b", "unknown option --choices"),
        ("reviews --no-cache --refresh", "contradict"),
    ],
)
def test_a_bad_filter_line_is_one_line_and_sends_nothing(
    shell: Any, fake: FakeOpenAIServer, line: str, message: str
) -> None:
    with pytest.raises(UsageError) as info:
        run(shell, "chatfilter", line, "Is this about food? {text}")
    assert message in str(info.value)
    assert fake.chat_requests == []


def test_the_help_of_both_magics_names_the_typed_flags(shell: Any) -> None:
    _, mapped = run(shell, "chatmap", "--help", "{text}")
    for flag in ("--choices A,B,...", "--schema NAME", "Typed answers"):
        assert flag in mapped
    _, filtered = run(shell, "chatfilter", "--help", "{text}")
    # %%chatfilter? shows the magic's docstring, which @magic_arguments makes the help
    doc = shell.find_cell_magic("chatfilter").__doc__
    for flag in ("Usage: %%chatfilter DF", "--into VAR", "--decision COL", "--dry-run"):
        assert flag in filtered and flag in doc
    assert "chatfilter" in shell.magics_manager.magics["cell"]


def test_unloading_removes_chatfilter(shell: Any) -> None:
    shell.run_line_magic("unload_ext", "ipychat")
    try:
        assert "chatfilter" not in shell.magics_manager.magics["cell"]
    finally:
        shell.run_line_magic("load_ext", "ipychat")


# ----- what is sent, what comes back ---------------------------------------------------------


def _user(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def test_choices_send_the_labels_and_write_a_categorical_column(shell: Any) -> None:
    def reply(body: dict[str, Any]) -> str:
        # A gateway that ignores response_format and answers in its own words: the
        # normalised label is kept ("Positive." is positive), as core.structured documents.
        return "Positive." if "pasta" in _user(body) else '{"label": "negative"}'

    with FakeOpenAIServer(reply=reply) as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        _, shown = run(
            shell, "chatmap", "reviews -o mood --choices positive,negative,neutral", "{text}"
        )
        sent = server.chat_requests[0].body
    out = shell.user_ns["reviews"]
    assert out["mood"].tolist() == ["positive", "negative", "negative"]
    assert isinstance(out["mood"].dtype, pd.CategoricalDtype)
    assert list(out["mood"].cat.categories) == ["positive", "negative", "neutral"]
    # https://platform.openai.com/docs/guides/structured-outputs: json_schema, strict
    fmt = sent["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    label = fmt["json_schema"]["schema"]["properties"]["label"]
    assert label["enum"] == ["positive", "negative", "neutral"]
    assert "column mood added to reviews" in shown


def test_schema_writes_one_typed_column_per_field(shell: Any) -> None:
    answers = {
        "great pasta": {"number": "A-1", "total": 12.5, "paid": True, "currency": "EUR"},
        "rude waiter": {"number": "A-2", "total": 3, "paid": False, "currency": "USD"},
        "slow service": {"number": "A-3", "total": 7.25, "paid": True, "currency": "EUR"},
    }

    def reply(body: dict[str, Any]) -> str:
        return json.dumps(next(a for t, a in answers.items() if t in _user(body)))

    with FakeOpenAIServer(reply=reply) as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        _, shown = run(shell, "chatmap", "reviews --schema Invoice --into invoices", "{text}")
        sent = server.chat_requests[0].body
    out = shell.user_ns["invoices"]
    assert "number" not in shell.user_ns["reviews"].columns  # --into: DF untouched
    assert {c: str(out[c].dtype) for c in ("number", "total", "paid", "currency")} == {
        "number": "string",
        "total": "Float64",
        "paid": "boolean",
        "currency": "category",
    }
    assert out["total"].tolist() == [12.5, 3.0, 7.25]
    assert list(out["currency"].cat.categories) == ["EUR", "USD"]
    assert sent["response_format"]["json_schema"]["name"] == "Invoice"
    assert "columns number, total, paid, currency written to invoices" in shown


def test_a_json_schema_dict_works_like_a_model(shell: Any) -> None:
    shell.user_ns["spec"] = {
        "title": "Flags",
        "type": "object",
        "properties": {"spicy": {"type": "boolean"}, "stars": {"type": "integer"}},
        "required": ["spicy", "stars"],
    }
    with FakeOpenAIServer(reply='{"spicy": false, "stars": 4}') as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        run(shell, "chatmap", "reviews --schema spec", "{text}")
    out = shell.user_ns["reviews"]
    assert str(out["spicy"].dtype) == "boolean" and str(out["stars"].dtype) == "Int64"
    assert out["stars"].tolist() == [4, 4, 4]


def test_a_reply_that_does_not_fit_is_asked_again_once_then_is_the_rows_error(shell: Any) -> None:
    with FakeOpenAIServer(reply="I think it is fine.") as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        _, shown = run(shell, "chatmap", "reviews -o mood --choices good,bad --retries 0", "{text}")
        sent = len(server.chat_requests)
    out = shell.user_ns["reviews"]
    assert sent == 6  # each row asked, then asked again once
    assert out["mood"].isna().all()
    assert out["_error"].str.contains("is not one of the labels: good, bad").all()
    assert "3 failed: see reviews['_error']" in shown


@pytest.mark.parametrize("system", ["", " -s 'Be brief.'"])
def test_the_dry_run_counts_what_the_labels_add_to_each_row(
    shell: Any, fake: FakeOpenAIServer, system: str
) -> None:
    import re

    def prompt_tokens(shown: str) -> int:
        return int(re.search(r"([\d,]+) prompt tokens", shown).group(1).replace(",", ""))  # type: ignore[union-attr]

    _, plain = run(shell, "chatmap", f"reviews -o mood --dry-run{system}", "{text}")
    line = f"reviews -o mood --choices good,bad --dry-run{system}"
    _, typed = run(shell, "chatmap", line, "{text}")
    per_row = int(re.search(r"The labels add ≈([\d,]+) prompt tokens per row", typed).group(1))  # type: ignore[union-attr]
    assert per_row > 0
    # the estimate above includes them: three rows, each carrying the rule and the schema
    assert prompt_tokens(typed) - prompt_tokens(plain) == 3 * per_row
    assert "response_format" in typed  # the fake server is the openai kind
    assert fake.chat_requests == []


def test_chatfilter_keeps_the_rows_answered_yes(shell: Any) -> None:
    def reply(body: dict[str, Any]) -> str:
        return '{"answer": true}' if "pasta" in _user(body) or "slow" in _user(body) else "No."

    with FakeOpenAIServer(reply=reply) as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        df = shell.user_ns["reviews"]
        _, shown = run(shell, "chatfilter", "reviews --into food", "Is this about food? {text}")
        kept = shell.user_ns["food"]
        assert list(kept.index) == ["a", "c"] and list(kept.columns) == ["text"]
        assert shell.user_ns["reviews"] is df and list(df.columns) == ["text"]  # untouched
        assert "Kept 2 of 3 rows (1 answered no, 0 without an answer)" in shown
        assert "(3 sent, 0 cached)" in shown and "written to food" in shown
        # no --into: the kept rows are the cell's result; the answers come from the cache
        value, again = run(
            shell, "chatfilter", "reviews --decision food", "Is this about food? {text}"
        )
        assert len(server.chat_requests) == 3
    assert list(value.index) == ["a", "c"]
    assert str(value["food"].dtype) == "boolean" and value["food"].all()
    assert "(0 sent, 3 cached)" in again


def test_chatfilter_says_which_rows_failed_and_does_not_keep_them(shell: Any) -> None:
    def reply(body: dict[str, Any]) -> str:
        # the row about the waiter gets no yes or no, even when asked again
        return "perhaps" if "rude" in json.dumps(body["messages"]) else "yes"

    with FakeOpenAIServer(reply=reply) as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        value, shown = run(shell, "chatfilter", "reviews", "Is this about food? {text}")
    assert list(value.index) == ["a", "c"]
    assert "Kept 2 of 3 rows (0 answered no, 1 without an answer)" in shown
    assert "1 row failed and is not kept (first: 'perhaps' is not yes or no" in shown
    assert "re-run the cell to retry only those rows" in shown


def test_chatfilter_dry_run_sends_nothing_and_counts_the_rule(
    shell: Any, fake: FakeOpenAIServer
) -> None:
    value, shown = run(shell, "chatfilter", "reviews --dry-run", "Is this about food? {text}")
    assert value is None and fake.chat_requests == []
    assert "3 rows · 0 cached · 3 to send" in shown
    assert "Yes/no adds ≈" in shown and "prompt tokens per row" in shown


def test_chatfilter_on_a_polars_frame(shell: Any) -> None:
    pl = pytest.importorskip("polars")
    shell.user_ns["notes"] = pl.DataFrame({"text": ["great pasta", "rude waiter"]})
    with FakeOpenAIServer(reply=lambda b: "yes" if "pasta" in _user(b) else "no") as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        run(shell, "chatfilter", "notes --into kept --decision food", "About food? {text}")
    kept = shell.user_ns["kept"]
    assert type(kept).__module__.startswith("polars")
    assert kept["text"].to_list() == ["great pasta"] and kept["food"].dtype == pl.Boolean


def test_choices_on_a_polars_frame_rebind_it_with_an_enum_column(shell: Any) -> None:
    pl = pytest.importorskip("polars")
    shell.user_ns["notes"] = pl.DataFrame({"text": ["great pasta", "rude waiter"]})
    with FakeOpenAIServer(reply=lambda b: "good" if "pasta" in _user(b) else "bad") as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        run(shell, "chatmap", "notes -o mood --choices good,bad", "{text}")
    out = shell.user_ns["notes"]
    assert out["mood"].to_list() == ["good", "bad"]
    assert out["mood"].dtype == pl.Enum(["good", "bad"])


def test_typed_flags_reach_the_batch_plan(shell: Any, fake: FakeOpenAIServer) -> None:
    import re

    def tokens(line: str) -> int:
        _, shown = run(shell, "chatmap", f"reviews -o mood {line} --batch --dry-run", "{text}")
        assert "Batch API: 3 requests" in shown
        return int(re.search(r"([\d,]+) prompt tokens", shown).group(1).replace(",", ""))  # type: ignore[union-attr]

    # the labels' rule and schema are in the batch's requests too (so in its price)
    assert tokens("--choices good,bad") > tokens("")
    assert fake.chat_requests == []
