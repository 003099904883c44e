"""One typed reply: `ChatSession.ask(schema=/choices=)` and `%%chat --schema`, against
FakeOpenAIServer over real sockets (the magic in a real InteractiveShell)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from pydantic import BaseModel

from ipychat.core.structured import output_spec
from ipychat.engine.cache import ResponseCache
from ipychat.errors import InvalidReply
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer, Fault

KEY = "sk-test-" + "q" * 20


class Invoice(BaseModel):
    number: str
    total: float


GOOD = {"number": "A-1", "total": 12.5}


@pytest.fixture
def typed(tmp_path) -> Iterator[Callable[..., tuple[FakeOpenAIServer, ChatSession]]]:
    """(server, session) for a reply callable; both closed after the test."""
    opened: list[tuple[FakeOpenAIServer, ChatSession]] = []

    def make(reply: Any, **settings: Any) -> tuple[FakeOpenAIServer, ChatSession]:
        server = FakeOpenAIServer(reply=reply).start()
        session = ChatSession(
            Settings(base_url=server.base_url, api_key=KEY, model="gpt-4o-mini", **settings),
            cache=ResponseCache(tmp_path / f"cache{len(opened)}"),
        )
        opened.append((server, session))
        return server, session

    yield make
    for server, session in opened:
        session.close()
        server.stop()
    reset_session(None)


def replies(*texts: str) -> Callable[[dict[str, Any]], str]:
    queue = list(texts)
    return lambda body: queue.pop(0)


def test_ask_with_a_schema_returns_the_model_instance(typed) -> None:
    server, session = typed(json.dumps(GOOD))
    reply = session.ask("Invoice A-1, 12.50 due", schema=Invoice)
    assert reply.value == Invoice(**GOOD) and json.loads(reply.text) == GOOD
    (sent,) = server.chat_requests
    spec = output_spec(schema=Invoice)
    assert sent.body["response_format"] == spec.request_fragment("openai")["response_format"]
    assert sent.body["messages"][0] == {"role": "system", "content": spec.instruction("openai")}
    again = session.ask("Invoice A-1, 12.50 due", schema=Invoice, thread="other")
    assert again.cached and again.value == Invoice(**GOOD)  # the cache serves typed replies too


def test_the_system_prompt_keeps_its_place_before_the_rule(typed) -> None:
    server, session = typed(json.dumps({"label": "b"}), system="Be terse.")
    assert session.ask("Pick", choices=["a", "b"]).value == "b"
    system = server.chat_requests[0].body["messages"][0]["content"]
    assert system == "Be terse.\n\n" + output_spec(choices=["a", "b"]).instruction("openai")


def test_a_reply_that_does_not_fit_is_repaired_once_and_the_thread_keeps_the_fix(typed) -> None:
    server, session = typed(replies("Here you go: number A-1", json.dumps(GOOD)))
    reply = session.ask("Invoice A-1, 12.50", schema=Invoice)
    assert reply.value == Invoice(**GOOD)
    _, second = (r.body for r in server.chat_requests)
    assert second["messages"][-2] == {"role": "assistant", "content": "Here you go: number A-1"}
    assert second["messages"][-1]["content"].startswith("That reply does not fit: the reply")
    # The conversation goes on from the reply that fits, not the one that did not.
    assert session.threads["main"].messages[-1] == {"role": "assistant", "content": reply.text}
    assert len(session.usage.rows) == 2  # both requests are in the ledger


def test_a_repaired_reply_of_a_re_run_cell_goes_into_that_cells_turn(typed) -> None:
    # Cell "a" answers turn 1, cell "b" turn 2; "a" runs again, needs a repair: the fix
    # lands in turn 1 (the cell's own), and turn 2 keeps its text.
    bad, fixed = "number A-2 I think", json.dumps({"number": "A-2", "total": 3.0})
    server, session = typed(replies(json.dumps(GOOD), "second answer", bad, fixed))
    session.ask("Invoice A-1, 12.50", schema=Invoice, cell="a")
    session.ask("And the next one?", cell="b")
    reply = session.ask("Invoice A-2, 3.00", schema=Invoice, cell="a")
    assert reply.value == Invoice(number="A-2", total=3.0)
    assert (reply.turn, reply.cell, reply.replaced, reply.later_turns) == (1, "a", True, 1)
    assert [m["content"] for m in session.threads["main"].messages] == [
        "Invoice A-2, 3.00",
        fixed,
        "And the next one?",
        "second answer",
    ]
    # the repair went as a one-off request: what the model saw of turn 2 is unchanged
    assert len(server.chat_requests) == 4


def test_a_reply_that_never_fits_raises_invalid_reply(typed) -> None:
    server, session = typed(replies("maybe", "perhaps"))
    with pytest.raises(InvalidReply) as info:
        session.ask("Is it?", choices=["yes", "no"])
    assert str(info.value) == (
        "The reply does not fit: 'perhaps' is not one of the labels: yes, no "
        "(also when asked again)."
    )
    assert info.value.reply.text == "perhaps" and len(server.chat_requests) == 2


def test_ask_falls_back_to_the_prompt_when_the_server_refuses_the_field(typed) -> None:
    # OpenAI's 400 for a field it does not know (see tests/map/test_typedmap.py).
    def reply(body: dict[str, Any]) -> str | Fault:
        if "response_format" in body:
            return Fault.status(
                400, message="Unrecognized request argument supplied: response_format"
            )
        return json.dumps(GOOD)

    server, session = typed(reply)
    assert session.ask("Invoice", schema=Invoice).value == Invoice(**GOOD)
    assert [r.status for r in server.chat_requests] == [400, 200]
    prompt_rule = output_spec(schema=Invoice).instruction("prompt")
    assert server.chat_requests[1].body["messages"][0]["content"] == prompt_rule
    session.ask("Another", schema=Invoice)
    assert [r.status for r in server.chat_requests] == [400, 200, 200]  # remembered


def test_the_dry_run_of_a_typed_turn_counts_the_schema(typed) -> None:
    server, session = typed("unused")
    plain = session.prepare("Invoice A-1")
    typed_turn = session.prepare("Invoice A-1", schema=Invoice)
    spec = output_spec(schema=Invoice)
    rule = session.count([{"role": "system", "content": spec.instruction("openai")}]).tokens
    added = typed_turn.estimate.prompt_tokens - plain.estimate.prompt_tokens
    assert added == pytest.approx(rule + spec.schema_tokens("gpt-4o-mini", "openai"), abs=3)
    assert spec.schema_tokens("gpt-4o-mini", "openai") > 20
    assert server.chat_requests == []


# ----- %%chat --schema in a real InteractiveShell ----------------------------------------


@pytest.fixture
def shell(typed) -> Iterator[tuple[Any, FakeOpenAIServer]]:
    from IPython.core.interactiveshell import InteractiveShell

    server, session = typed(replies("no JSON here", json.dumps(GOOD)))
    reset_session(session)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipychat")
    try:
        yield ip, server
    finally:
        ip.run_line_magic("unload_ext", "ipychat")
        ip.config.pop("ChatMagics", None)
        for name in ("Invoice", "invoice", "loose"):
            ip.user_ns.pop(name, None)


def test_chat_schema_magic_keeps_the_parsed_object(shell) -> None:
    ip, server = shell
    ip.user_ns["Invoice"] = Invoice
    with capture_output() as out:
        ip.run_cell_magic("chat", "--schema Invoice -o invoice", "Extract: A-1, 12.50")
    assert ip.user_ns["invoice"] == Invoice(**GOOD)
    assert "A-1" in out.stdout
    assert "response_format" in server.chat_requests[0].body
    assert len(server.chat_requests) == 2  # the reply without JSON was asked again once


def test_chat_schema_magic_refuses_an_unknown_name_in_one_line(shell) -> None:
    ip, server = shell
    with pytest.raises(UsageError, match=r"--schema Nope: no variable named 'Nope'"):
        ip.run_cell_magic("chat", "--schema Nope", "Extract")
    ip.user_ns["loose"] = Invoice(**GOOD)  # an instance, not the class
    with pytest.raises(UsageError, match="a Pydantic model instance\\? pass its class"):
        ip.run_cell_magic("chat", "--schema loose", "Extract")
    assert server.chat_requests == []


def test_the_structured_setting_is_a_magics_trait(shell, caplog) -> None:
    from ipychat.session import get_session

    ip, _ = shell
    ip.run_line_magic("config", "ChatMagics.structured = 'prompt'")
    assert get_session().settings.structured == "prompt"
    ip.run_line_magic("config", "ChatMagics.structured = 'grammar'")  # %config logs, not raises
    assert get_session().settings.structured == "prompt"
    assert "The 'structured' trait of a ChatMagics instance expected any of" in caplog.text
