"""%%chatmap --choices / --schema / --scores and %%chatfilter, through a real InteractiveShell
(with `%load_ext ipychat`) against the loopback FakeOpenAIServer."""

from __future__ import annotations

import enum
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
        ("reviews -o s --scores", "--scores gives a probability per label"),
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
    for flag in ("--choices A,B,...", "--schema NAME", "--scores", "Typed answers"):
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
