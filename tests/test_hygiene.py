"""Data hygiene: credential-shaped prompts are refused before sending (--allow-secrets
overrides), and the opt-in `redact` setting masks personal data and says what it masked."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.errors import SecretInPromptError
from ipychat.hygiene import Redaction, check_secrets, find_secrets, redact_pii
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer

OPENAI_KEY = "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vX7" * 2
PRIVATE_KEY = (
    "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA " + "PRIVATE KEY-----"
)

SECRETS = {
    "openai": f"use {OPENAI_KEY} please",
    "openai-plain": "key=sk-" + "a1B2c3D4e5F6g7H8i9J0k1L2",
    "anthropic": "sk-ant-api03-" + "x" * 40,
    "aws": "AKIA" + "IOSFODNN7EXAMPLE is the id",
    "github": "token ghp_" + "A" * 36,
    "google": "AIza" + "S" * 35,
    "slack": "xoxb-123456789012-abcdefghij",
    "huggingface": "hf_" + "a" * 34,
    "bearer": "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload",
    "private-key": f"here:\n{PRIVATE_KEY}",
    "openssh": "-----BEGIN OPENSSH " + "PRIVATE KEY-----\nb3BlbnNzaC1rZXk=",
}
HARMLESS = {
    "prose": "Ask the sk- team about skiing and risk-free tasks.",
    "short": "sk-1234",
    "code": "df.groupby('sku').sum()  # akia is a word",
    "public-key": "-----BEGIN PUBLIC KEY-----\nMFkw",
    "bearer-word": "The Bearer of bad news",
}


@pytest.mark.parametrize("text", SECRETS.values(), ids=SECRETS.keys())
def test_credential_shapes_are_found(text: str) -> None:
    found = find_secrets(text)
    assert found, text
    with pytest.raises(SecretInPromptError) as info:
        check_secrets(text)
    message = str(info.value)
    assert "nothing was sent" in message and "--allow-secrets" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", HARMLESS.values(), ids=HARMLESS.keys())
def test_ordinary_text_is_not_a_secret(text: str) -> None:
    assert find_secrets(text) == []
    check_secrets(text)


def test_the_refusal_never_repeats_the_secret() -> None:
    with pytest.raises(SecretInPromptError) as info:
        check_secrets(SECRETS["openai"] + " and " + SECRETS["aws"])
    message = str(info.value)
    assert OPENAI_KEY not in message and "AKIA" + "IOSFODNN7EXAMPLE" not in message
    assert "sk-...X7" in message or "sk-..." in message
    assert "(and 1 more)" in message


def test_allow_overrides() -> None:
    check_secrets(SECRETS["openai"], allow=True)


PII = [
    ("write to jane.doe+news@example.co.uk today", "write to [email] today", {"email": 1}),
    ("call +44 20 7946 0958 or (212) 555-0147", "call [phone] or [phone]", {"phone": 2}),
    ("call 020-7946-0958", "call [phone]", {"phone": 1}),
    ("card 4111 1111 1111 1111 exp 12/27", "card [card] exp 12/27", {"card": 1}),
    ("card 5500-0000-0000-0004", "card [card]", {"card": 1}),
    ("Pay with 4111 1111 1111 1111.", "Pay with [card].", {"card": 1}),  # end of a sentence
    ("+15551234567", "[phone]", {"phone": 1}),
]
UNTOUCHED = [
    "order 1234567890123 shipped",  # 13 digits, not Luhn-valid, no separators: an id
    "on 2024-03-15 at 10.0.0.12",
    "the year 2024, 3.14159, 42",
    "version 1.2.3.4567",
    "4111 1111 1111 1112",  # fails Luhn; four groups of four is no phone either
    "ratio 0.4111111111111111 and 4111111111111111.5",  # decimals, not cards
]


@pytest.mark.parametrize(("text", "masked", "counts"), PII)
def test_personal_data_is_masked(text: str, masked: str, counts: dict[str, int]) -> None:
    result = redact_pii(text)
    assert result.text == masked
    assert result.counts == counts


@pytest.mark.parametrize("text", UNTOUCHED)
def test_numbers_that_are_not_personal_data_stay(text: str) -> None:
    result = redact_pii(text)
    assert result.text == text and result.masked == 0 and result.note == ""


def test_the_note_says_what_was_masked() -> None:
    assert Redaction("", {"email": 2, "phone": 1}).note == (
        "masked 2 e-mail addresses and 1 phone number"
    )
    assert Redaction("", {"email": 1, "card": 1, "phone": 3}).note == (
        "masked 1 e-mail address, 1 card number and 3 phone numbers"
    )


# ----- in the session, the magics and the panel ---------------------------------------------


def test_the_session_refuses_before_sending(session: ChatSession, fake: FakeOpenAIServer) -> None:
    with pytest.raises(SecretInPromptError):
        session.ask(SECRETS["openai"])
    with pytest.raises(SecretInPromptError):
        list(session.stream(SECRETS["private-key"]))
    with pytest.raises(SecretInPromptError):
        session.map(pd.DataFrame({"t": ["ok", SECRETS["aws"]]}), "{t}", "out")
    assert fake.chat_requests == []
    assert session.threads["main"].messages == []
    reply = session.ask(SECRETS["openai"], allow_secrets=True)
    assert OPENAI_KEY in reply.text  # the fake server echoes what it was sent
    out = session.map(pd.DataFrame({"t": [SECRETS["aws"]]}), "{t}", "out", allow_secrets=True)
    assert out["out"].iloc[0].startswith("Echo: AKIA")


def test_redact_masks_before_the_prompt_leaves(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    text = "Reply to ann@example.org or +1 415 555 0100 about card 4111-1111-1111-1111"
    plain = session.ask(text, cache=False)
    assert "ann@example.org" in plain.text and "masked" not in plain.extra
    session.configure(redact=True)
    reply = session.ask(text, cache=False)
    sent = fake.chat_requests[-1].body["messages"][-1]["content"]
    assert sent == "Reply to [email] or [phone] about card [card]"
    assert reply.extra["masked"] == "masked 1 e-mail address, 1 card number and 1 phone number"
    assert session.threads["main"].messages[-2]["content"] == sent  # history holds the mask
    from ipychat.format import footer

    assert footer(reply).endswith("masked 1 e-mail address, 1 card number and 1 phone number")
    frame = session.map(pd.DataFrame({"t": ["a@b.io", "none here"]}), "x {t}", "out")
    assert list(frame["out"]) == ["Echo: x [email]", "Echo: x none here"]
    assert session.redactions["email"] == 2


def _cell(ip: Any, magic: str, line: str, cell: str) -> str:
    with capture_output() as out:
        ip.run_cell_magic(magic, line, cell)  # type: ignore[attr-defined]
    return out.stdout + "".join(str(v) for o in out.outputs for v in o.data.values())


def test_chat_magic_refuses_and_allow_secrets_overrides(ip: Any, fake: FakeOpenAIServer) -> None:
    with pytest.raises(UsageError, match="looks like an OpenAI-style API key"):
        _cell(ip, "chat", "", f"debug this: {OPENAI_KEY}")
    with pytest.raises(UsageError, match="private key"):
        _cell(ip, "chat", "--dry-run", PRIVATE_KEY)
    assert fake.chat_requests == []
    shown = _cell(ip, "chat", "--allow-secrets --no-stream", f"debug this: {OPENAI_KEY}")
    assert "Echo: debug this" in shown and len(fake.chat_requests) == 1


def test_redact_trait_and_what_the_cell_says(ip: Any, fake: FakeOpenAIServer) -> None:
    ip.run_line_magic("config", "ChatMagics.redact = True")  # type: ignore[attr-defined]
    shown = _cell(ip, "chat", "--no-stream", "mail bob@example.com")
    assert fake.chat_requests[-1].body["messages"][-1]["content"] == "mail [email]"
    assert "masked 1 e-mail address" in shown
    dry = _cell(ip, "chat", "--dry-run", "and carol@example.com")
    assert "masked 1 e-mail address" in dry


def test_chatmap_magic_refuses_and_says_what_it_masked(ip: Any, fake: FakeOpenAIServer) -> None:
    ip.user_ns["rows"] = pd.DataFrame({"t": ["fine", SECRETS["github"]]})  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="GitHub token"):
        _cell(ip, "chatmap", "rows -o out", "{t}")
    assert fake.chat_requests == []
    _cell(ip, "chatmap", "rows -o out --allow-secrets", "{t}")
    assert len(fake.chat_requests) == 2
    ip.run_line_magic("config", "ChatMagics.redact = True")  # type: ignore[attr-defined]
    ip.user_ns["people"] = pd.DataFrame({"who": ["x@y.org", "z@w.org", "nobody"]})  # type: ignore[attr-defined]
    shown = _cell(ip, "chatmap", "people -o out", "greet {who}")
    assert "ipychat masked 2 e-mail addresses in the prompts before sending." in shown
    assert sorted(r.body["messages"][-1]["content"] for r in fake.chat_requests[2:]) == [
        "greet [email]",
        "greet [email]",
        "greet nobody",
    ]


def test_the_panel_shows_the_refusal(session: ChatSession, fake: FakeOpenAIServer) -> None:
    import time

    from ipychat.widget import panel

    p = panel(session)
    try:
        p.prompt.value = SECRETS["slack"]
        p.send.click()
        deadline = time.monotonic() + 5
        while "Slack token" not in p.error.value and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "Slack token" in p.error.value and "xoxb-123456789012" not in p.error.value
        assert p.prompt.value == SECRETS["slack"]  # given back, nothing lost
        assert fake.chat_requests == []
    finally:
        p.close()


@pytest.mark.parametrize(
    ("magic", "line", "body"),
    [
        ("chat", f"key {OPENAI_KEY}", None),
        ("chat", f"--api-key {OPENAI_KEY}", "hi"),  # argparse would echo the unknown option
        ("chat", f"-m {OPENAI_KEY}", "hi"),
        ("chat", f"endpoint http://user:{OPENAI_KEY}@127.0.0.1:9/v1", None),
        ("chatmap", f"rows -o out --api-key={OPENAI_KEY}", "{t}"),
    ],
)
def test_a_key_on_a_magic_line_is_refused_and_never_echoed(
    ip: Any, fake: FakeOpenAIServer, magic: str, line: str, body: str | None
) -> None:
    ip.user_ns["rows"] = pd.DataFrame({"t": ["a"]})  # type: ignore[attr-defined]
    with pytest.raises(UsageError) as info:
        if body is None:
            ip.run_line_magic(magic, line)  # type: ignore[attr-defined]
        else:
            _cell(ip, magic, line, body)
    message = str(info.value)
    assert OPENAI_KEY not in message and "a key never goes in a cell" in message
    assert fake.chat_requests == []
