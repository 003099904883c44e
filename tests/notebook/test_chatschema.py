"""`%%chat --schema NAME` looks NAME up as `%%chatmap --schema` does (one lookup,
`ipychat.notebook.typedargs.schema_object`), in a real InteractiveShell."""

from __future__ import annotations

import json
import types
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from pydantic import BaseModel

from ipychat.testing import FakeOpenAIServer


class Invoice(BaseModel):
    number: str
    total: float


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--schema Invoise", "--schema Invoise: Invoise is not defined in the notebook "
         "(did you mean Invoice?)"),
        ("--schema models.Nope", "--schema models.Nope: models has no attribute Nope."),
        ("--schema one", "--schema one is an instance of Invoice: name the model class itself "
         "(--schema Invoice)."),
        ("--schema number", "--schema number is a int, not a Pydantic model class"),
        ("--schema 'a b'", "--schema needs the name of a Pydantic model"),
    ],
)  # fmt: skip
def test_a_bad_schema_name_is_one_line_and_nothing_is_sent(
    ip: Any, fake: FakeOpenAIServer, line: str, message: str
) -> None:
    ip.user_ns.update(
        Invoice=Invoice,
        models=types.SimpleNamespace(Invoice=Invoice),
        one=Invoice(number="1", total=1.0),
        number=3,
    )
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("chat", line, "Extract: A-1, 12.50")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert fake.chat_requests == []


def test_a_dotted_name_finds_the_model(ip: Any) -> None:
    answer = {"number": "A-1", "total": 12.5}
    with FakeOpenAIServer(reply=json.dumps(answer)) as server:
        ip.run_line_magic("chat", f"endpoint {server.base_url}")
        ip.user_ns["models"] = types.SimpleNamespace(Invoice=Invoice)
        with capture_output():
            ip.run_cell_magic("chat", "--schema models.Invoice -o invoice", "Extract: A-1")
        sent = server.chat_requests[0].body
    assert ip.user_ns["invoice"] == Invoice(**answer)
    assert sent["response_format"]["json_schema"]["name"] == "Invoice"
