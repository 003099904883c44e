"""Data hygiene: credential-shaped text is refused before sending (--allow-secrets
overrides), the opt-in `redact` setting masks personal data and says what it masked, every
text that leaves the kernel passes both (system prompt, history, rows, fill values, batch
files), and neither damages ordinary data: precision and recall measured on corpora
(tests/core/hygiene_corpus.py; `python benchmarks/hygiene.py` prints the same figures)."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from typing import Any

import hygiene_corpus as corpus
import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.core.errors import ChatError, SecretInPromptError
from ipychat.core.hygiene import (
    Redaction,
    check_magic_line,
    check_secrets,
    check_sendable,
    clean_messages,
    find_secrets,
    redact_pii,
)
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer

RNG = random.Random(15)
OPENAI_KEY = corpus.KEY_FORMATS["openai project"](RNG)
AWS_KEY = corpus.KEY_FORMATS["aws access key id"](RNG)
GITHUB_TOKEN = corpus.KEY_FORMATS["github classic"](RNG)
SLACK_TOKEN = corpus.KEY_FORMATS["slack bot"](RNG)
PRIVATE_KEY = corpus.KEY_FORMATS["pem rsa"](RNG)

SECRETS = {
    kind: f"use {make(random.Random(kind))} please" for kind, make in corpus.KEY_FORMATS.items()
}
SECRETS["openai"] = f"use {OPENAI_KEY} please"
EMAIL = "ann.lee@example.org"
PHONE = "+44 20 7946 0958"


@pytest.mark.parametrize("text", SECRETS.values(), ids=SECRETS.keys())
def test_credential_shapes_are_found(text: str) -> None:
    assert find_secrets(text), text
    with pytest.raises(SecretInPromptError) as info:
        check_secrets(text)
    message = str(info.value)
    assert "nothing was sent" in message and "--allow-secrets" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    [
        "sk-2024-01-15-quarterly-report.csv",
        "sk-1029384756-blue-large-cotton",
        "sk-learn-compatible-estimators-toolkit",
        "Ask the sk- team about skiing and risk-free tasks.",
        "The Bearer of bad news",
        "-----BEGIN PUBLIC KEY-----\nMFkw",
    ],
)
def test_ordinary_words_are_not_keys(text: str) -> None:
    assert find_secrets(text) == []
    check_secrets(text)


def test_the_refusal_never_repeats_the_secret() -> None:
    with pytest.raises(SecretInPromptError) as info:
        check_secrets(SECRETS["openai"] + " and " + AWS_KEY)
    message = str(info.value)
    assert OPENAI_KEY not in message and AWS_KEY not in message
    assert f"sk-...{OPENAI_KEY[-4:]}" in message
    assert "(and 1 more)" in message


def test_allow_overrides_only_what_it_is_given_for() -> None:
    assert find_secrets(SECRETS["openai"])  # a key, refused without the override...
    assert check_secrets(SECRETS["openai"], allow=True) is None  # ...passed with it
    cleaned = clean_messages([{"role": "user", "content": SECRETS["openai"]}], allow_secrets=True)
    assert cleaned.messages == [{"role": "user", "content": SECRETS["openai"]}]
    with pytest.raises(SecretInPromptError):
        clean_messages([{"role": "user", "content": SECRETS["openai"]}])  # off by default


def test_the_refusal_of_one_key_says_what_to_do() -> None:
    assert find_secrets(SECRETS["openai"]) == [("an OpenAI API key", f"sk-...{OPENAI_KEY[-4:]}")]
    with pytest.raises(SecretInPromptError) as info:
        check_secrets(SECRETS["openai"])
    assert str(info.value) == (
        f"The prompt contains what looks like an OpenAI API key (sk-...{OPENAI_KEY[-4:]}); "
        "nothing was sent. Remove it, or add --allow-secrets if it is not a real secret."
    )


def test_a_key_on_a_magic_line_is_refused_with_where_keys_go() -> None:
    with pytest.raises(SecretInPromptError) as info:
        check_magic_line(f"--api-key {OPENAI_KEY}")
    assert str(info.value) == (
        f"The magic's arguments hold what looks like an OpenAI API key (sk-...{OPENAI_KEY[-4:]}); "
        "a key never goes in a cell (the notebook would keep it). Run %chat key alone and "
        "paste it at the prompt, or set OPENAI_API_KEY."
    )
    check_magic_line("-m gpt-4o-mini --no-stream")


def test_an_unsendable_character_is_named_with_its_position() -> None:
    check_sendable("plain ascii")
    check_sendable("Grüße, 東京, emoji \U0001f600")  # any encodable text passes
    with pytest.raises(ChatError) as info:
        check_sendable("ab\ud800c")
    assert str(info.value) == (
        "The prompt holds a character that cannot be sent (U+D800, a lone surrogate, at "
        "character 3): it comes from a broken paste or decoding; remove it or decode the "
        "text with errors='replace'."
    )


# ----- personal data ---------------------------------------------------------------------------

PII = [
    ("write to jane.doe+news@example.co.uk today", "write to [email] today", {"email": 1}),
    ("call +44 20 7946 0958 or (212) 555-0147", "call [phone] or [phone]", {"phone": 2}),
    ("call 020-7946-0958", "call [phone]", {"phone": 1}),
    ("card 4111 1111 1111 1111 exp 12/27", "card [card] exp 12/27", {"card": 1}),
    ("card 5500-0000-0000-0004", "card [card]", {"card": 1}),
    ("Pay with 4111 1111 1111 1111.", "Pay with [card].", {"card": 1}),  # end of a sentence
    ("+15551234567", "[phone]", {"phone": 1}),
    ("(020 7946 0958)", "([phone])", {"phone": 1}),  # a number in brackets
    ("tél. 01 23 45 67 89", "tél. [phone]", {"phone": 1}),
    ("josé.müller@beispiel.de", "[email]", {"email": 1}),
]
# The review's examples first: each was damaged before (`[phone]:30:45 UTC`, `1 [phone]`).
UNTOUCHED = [
    "created 2024-01-15 10:30:45 UTC",
    "ids 1001 1002 1003",
    "between 2021 2022 2023",
    "scores 88 92 75 64 99",
    "Population 1 234 567 890",
    "order 1234567890123 shipped",  # 13 digits, no separators: an id
    "on 2024-03-15 at 10.0.0.12",
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


def test_redaction_precision_is_total_on_ordinary_data() -> None:
    """Dates and times in 17 formats, ids, years, scores, populations, prices, coordinates,
    versions, IP addresses, numeric table rows, ISBNs, order numbers, zero-padded id lists:
    5,000 generated lines plus the fixed ones; redaction changes none of them."""
    lines = corpus.keep(random.Random(8), 5000)
    damaged = [(line, redact_pii(line).text) for line in lines if redact_pii(line).text != line]
    print(f"\nredaction precision: {len(lines) - len(damaged)}/{len(lines)} lines unchanged")
    assert damaged == []


def test_redaction_recall_on_phone_card_and_email_formats_of_eight_countries() -> None:
    """US, UK, DE, FR, IN, BR, JP and AU phone formats (national and +E.164, with and
    without separators, after a keyword), Visa/Mastercard/Amex/Discover/JCB/Diners cards
    (spaces, hyphens, none; Luhn-valid) and e-mail addresses, 60 of each, in sentences."""
    total: Counter[str] = Counter()
    masked: Counter[str] = Counter()
    by_format: dict[str, list[bool]] = defaultdict(list)
    for kind, label, text, expected in corpus.personal(random.Random(9), 60):
        ok = redact_pii(text).text == expected
        total[kind] += 1
        masked[kind] += ok
        by_format[label].append(ok)
    print("\nredaction recall:")
    for kind in total:
        print(f"  {kind:6} {masked[kind] / total[kind]:7.2%} of {total[kind]}")
    weakest = sorted((sum(v) / len(v), label) for label, v in by_format.items())[:4]
    print("  weakest formats: " + ", ".join(f"{label} {r:.0%}" for r, label in weakest))
    assert masked["email"] == total["email"]
    assert masked["phone"] / total["phone"] >= 0.995
    assert masked["card"] / total["card"] >= 0.95
    # What stays unmasked by design: five spaced pairs that read as a list (all ≤ 31),
    # unseparated Diners (14 digits) without a card word, grouped cards in ascending order.
    assert all(
        sum(v) / len(v) >= 0.95 for label, v in by_format.items() if "Diners no" not in label
    )


def test_every_card_with_a_card_word_is_masked() -> None:
    rng = random.Random(10)
    for issuer, prefixes, length, groups in corpus.CARD_FORMATS:
        for sep in (" ", "-", ""):
            for _ in range(40):
                digits = corpus._luhn_complete(rng, rng.choice(prefixes), length)
                shown = corpus._grouped(digits, groups, sep) if sep else digits
                assert redact_pii(f"card {shown}").text == "card [card]", (issuer, shown)


def test_the_note_says_what_was_masked() -> None:
    assert Redaction("", {"email": 2, "phone": 1}).note == (
        "masked 2 e-mail addresses and 1 phone number"
    )
    assert Redaction("", {"email": 1, "card": 1, "phone": 3}).note == (
        "masked 1 e-mail address, 1 card number and 3 phone numbers"
    )


# Where each rule of `_phone` and `_card` stops, one text on each side of each bound (the
# corpora above measure the formats; these pin the limits, which random data rarely hits).
# Card numbers here are Luhn-valid unless said otherwise.
PHONE_BOUNDS = {
    # after a + country code: 8-15 digits, 10-15 without separators
    "+ 9 digits unseparated": ("+123456789", False),
    "+ 10 digits unseparated": ("+1234567890", True),
    "+ 15 digits unseparated": ("+123456789012345", True),
    "+ 16 digits unseparated": ("+1234567890123456", False),
    "+ 7 digits": ("+44 123 45", False),
    "+ 8 digits": ("+44 123 456", True),
    "+ 15 digits": ("+49 1234 5678 90123", True),
    "+ 16 digits": ("+49 1234 5678 901234", False),
    "+ country code of 3": ("+353 1 234 5678", True),
    "+ country code of 4": ("+1234 567 890", False),
    "+ a block of 10": ("+1 2125550147", True),
    "+ a block of 11": ("+1 21255501470", False),
    "+ (0) is not counted": ("+49 (0)3012 3456 78901", True),  # 16 digits, 15 without it
    "+ other brackets are": ("+44 (20) 1234", True),  # 8 digits
    "+ an unclosed bracket": ("+44 (20 7946 0958", False),
    "+ and a space": ("+ 44 20 7946 0958", True),
    # after a phone keyword: 6-15 digits
    "keyword, 6 digits": ("tel 123456", True),
    "keyword, 15 digits": ("tel 123456789012345", True),
    "keyword, 16 digits": ("tel 1234567890123456", False),
    "keyword 24 characters before": ("tel" + " " * 21 + "123456", True),
    "keyword 25 characters before": ("tel" + " " * 22 + "123456", False),
    "a word ending in a keyword": ("hotel" + " " * 21 + "123456", False),
    # an (area) code: 2-3 digits or 0 + up to 4, then 6-10 digits
    "(area of 4 with 0)": ("(0161) 496 0123", True),
    "(area of 5 with 0)": ("(01632) 960123", True),
    "(area of 6 with 0)": ("(016320) 960123", False),
    "(area) + 5": ("(212) 12345", False),
    "(area) + 6": ("(212) 123456", True),
    "(area) + 10": ("(11) 12345 67890", True),
    "(area) + 11": ("(11) 12345 678901", False),
    "(area) one group": ("(212) 5550147", True),
    "(area) dots": ("(212) 555.0147", True),
    "(area) mixed separators": ("(02) 9-374.4000", True),
    "(area) slash": ("(212) 555/0147", False),
    "(area) (exchange)": ("(212) (555) 0147", False),
    "(a year) among years": ("years 2021 (2022) 2023", False),
    # North American 3-3-4 and 1-3-3-4
    "NA area code from 2": ("212-456-7890", True),
    "NA area code from 1": ("123-456-7890", False),
    "NA 1-800": ("1-800-555-0199", True),
    "NA 2-800": ("2-800-555-0199", False),
    # five pairs
    "pairs from 00": ("00 12 34 56 78", False),
    "pairs, largest 31": ("01 31 05 07 09", False),
    "pairs, largest 32": ("01 32 05 07 09", True),
    "pairs ascending to 59": ("01 12 23 45 59", False),
    "pairs ascending to 60": ("01 12 23 45 60", True),
    "pairs with a repeat": ("01 12 45 45 50", True),
    "pairs with dots": ("01.31.05.07.09", True),
    # national numbers with a trunk 0
    "national, 9 digits": ("02 123 4567", True),
    "national, 8 digits": ("02 123 456", False),
    "national, 12 digits": ("020 7946 09581", True),
    "national, 13 digits": ("020 7946 095812", False),
    "national, 4 groups": ("0171 12 34 567", True),
    "national, 5 groups": ("01 2 3 45 678", False),
    "national, first group of 5": ("01632 960 123", True),
    "national, first group of 6": ("012345 678 901", False),
    "national from 00": ("0012 3456 789", False),
    "national ending in 2 digits": ("020 7946 09", False),
    "national, two groups, second of 5": ("0201 23456", False),
    "national, two kinds of separator": ("020-7946 0958", False),
    "national, slash between two groups": ("089/1234567", True),
    "national, slash between three": ("089/123/4567", False),
    # what follows the number
    "followed by a letter": ("call 020 7946 0958x today", False),
    "followed by a decimal comma": ("020 7946 0958,5", False),
    "followed by a comma": ("020 7946 0958, 5", True),
}
CARD_BOUNDS = {
    "13 digits": ("card 4222222222222", True),
    "12 digits": ("card 422222222222", False),
    "19 digits": ("card 4123456789012345677", True),
    "20 digits": ("card 41234567890123456787", False),
    "15 digits, not Amex, no card word": ("ref 412345678901233", False),
    "15 digits, not Amex, card word": ("card 412345678901233", True),
    "after a +": ("ref +4111 1111 1111 1111", False),
    "in brackets": ("ref (4111) 1111 1111 1111", False),
    "Diners 4-6-4 ascending": ("3612 004000 5674", True),  # unequal widths: not a list
    "Diners unseparated, no card word": ("ref 36123456789013", False),
    "Diners unseparated, exp after": ("36123456789013 exp 12/27", True),
    "Luhn fails": ("card 4111111111111112", False),
}


def _masked_as(text: str, kind: str) -> bool:
    result = redact_pii(text)
    if result.text == text:
        assert result.counts == {}, text
        return False
    assert result.counts == {kind: 1}, (text, result)
    return True


@pytest.mark.parametrize(("text", "masked"), PHONE_BOUNDS.values(), ids=PHONE_BOUNDS.keys())
def test_the_bounds_of_phone_numbers(text: str, masked: bool) -> None:
    assert _masked_as(text, "phone") is masked


@pytest.mark.parametrize(("text", "masked"), CARD_BOUNDS.values(), ids=CARD_BOUNDS.keys())
def test_the_bounds_of_card_numbers(text: str, masked: bool) -> None:
    assert _masked_as(text, "card") is masked


def test_every_item_is_masked_and_counted() -> None:
    """Each e-mail, card and phone number, not only the first of its kind."""
    text = (
        "ann@example.org, bob@example.org; cards 4111 1111 1111 1111 and "
        "5500-0000-0000-0004; call +44 20 7946 0958 or (212) 555-0147 or 020 7946 0123"
    )
    result = redact_pii(text)
    assert result.text == (
        "[email], [email]; cards [card] and [card]; call [phone] or [phone] or [phone]"
    )
    assert result.counts == {"email": 2, "card": 2, "phone": 3}
    assert result.note == "masked 2 e-mail addresses, 2 card numbers and 3 phone numbers"


def test_brackets_around_a_number_stay_around_its_mask() -> None:
    assert redact_pii("(call (020) 7946 0958)").text == "(call [phone])"
    assert redact_pii("(020 7946 0958 and more").text == "([phone] and more"
    assert redact_pii("(4111 1111 1111 1111)").text == "([card])"


def test_the_note_of_one_of_a_kind() -> None:
    assert Redaction("", {"card": 1}).note == "masked 1 card number"
    assert Redaction("", {"email": 1}).note == "masked 1 e-mail address"
    assert Redaction("", {}).note == "" and Redaction("x").masked == 0


# ----- clean_messages: which message is checked, and how it is said ---------------------------


def _refusal(messages: list[dict[str, Any]]) -> str:
    with pytest.raises(ChatError) as info:
        clean_messages(messages)
    return str(info.value)


SHOWN = f"an OpenAI API key (sk-...{OPENAI_KEY[-4:]})"


def test_each_message_the_user_wrote_is_refused_with_where_it_is() -> None:
    key = SECRETS["openai"]
    assert _refusal([{"role": "system", "content": key}]) == (
        f"The system prompt contains what looks like {SHOWN}; nothing was sent. Change it "
        "(%chat system), or add --allow-secrets if it is not a real secret."
    )
    assert _refusal([{"role": "developer", "content": key}]).startswith("The system prompt ")
    earlier = [
        {"role": "user", "content": key},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and now?"},
    ]
    assert _refusal(earlier) == (
        f"An earlier prompt of this thread contains what looks like {SHOWN}; nothing was "
        "sent. Start afresh with --new (or %chat reset), or add --allow-secrets if it is not "
        "a real secret."
    )
    earlier[0], earlier[2] = earlier[2], earlier[0]  # the key in the prompt being sent
    assert _refusal(earlier) == (
        f"The prompt contains what looks like {SHOWN}; nothing was sent. Remove it, or add "
        "--allow-secrets if it is not a real secret."
    )


def test_replies_are_not_refused_but_must_be_sendable() -> None:
    """A reply came from the server: a key in it was not the user's to leak. It is still
    sent back as history, so it must encode, and its error says it is a reply."""
    replies = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": SECRETS["openai"]},
        {"role": "tool", "content": SECRETS["github classic"]},
        {"role": "user", "content": "thanks"},
    ]
    assert clean_messages(replies).messages == replies
    no_prompt = [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a\udc80"}]
    assert _refusal(no_prompt).startswith("An earlier reply of this thread holds a character")
    parts = [{"type": "text", "text": "fine"}, {"type": "text", "text": "bad \ud800"}]
    assert _refusal([{"role": "assistant", "content": parts}]).startswith(
        "An earlier reply of this thread holds"
    )


def test_the_prompt_being_sent_is_named_so_when_it_cannot_be_encoded() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b \ud800"}]
    assert _refusal(messages).startswith("The prompt holds a character that cannot be sent")
    messages.reverse()
    assert _refusal(messages).startswith("An earlier prompt of this thread holds a character")


def test_allowed_texts_pass_and_others_do_not() -> None:
    key = SECRETS["openai"]
    messages = [{"role": "user", "content": key}, {"role": "user", "content": "more"}]
    assert clean_messages(messages, allowed={key}).messages == messages
    with pytest.raises(SecretInPromptError):
        clean_messages(messages, allowed={"another text"})


def test_redaction_is_off_unless_asked_and_then_covers_replies_too() -> None:
    messages = [
        {"role": "user", "content": f"I am {EMAIL}"},
        {"role": "assistant", "content": f"Hello {EMAIL}"},
        {"role": "user", "content": "and my number is +44 20 7946 0958"},
    ]
    plain = clean_messages(messages)
    assert plain.messages == messages and plain.counts == {} and plain.note == ""
    cleaned = clean_messages(messages, redact=True)
    assert [m["content"] for m in cleaned.messages] == [
        "I am [email]",
        "Hello [email]",
        "and my number is [phone]",
    ]
    assert cleaned.counts == {"email": 2, "phone": 1}
    assert cleaned.note == "masked 2 e-mail addresses and 1 phone number"
    assert messages[0]["content"] == f"I am {EMAIL}"  # the given messages are not changed


def test_only_the_text_parts_of_a_list_content_are_read_and_masked() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    other = {"type": "file", "text": f"not a text part: {EMAIL}"}
    content = [
        {"type": "text", "text": f"mail {EMAIL}"},
        image,
        other,
        {"type": "text", "text": "no personal data"},
    ]
    cleaned = clean_messages([{"role": "user", "content": content}], redact=True)
    assert cleaned.messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "mail [email]"},
                image,
                other,
                {"type": "text", "text": "no personal data"},
            ],
        }
    ]
    assert cleaned.counts == {"email": 1}
    assert content[0] == {"type": "text", "text": f"mail {EMAIL}"}
    keyed = [{"type": "text", "text": "hi"}, {"type": "text", "text": SECRETS["openai"]}]
    with pytest.raises(SecretInPromptError, match=r"^The prompt contains"):
        clean_messages([{"role": "user", "content": keyed}])


# ----- every text that leaves the kernel --------------------------------------------------------


def _sent(fake: FakeOpenAIServer) -> str:
    """Everything the server received: request bodies and uploaded (batch) files."""
    bodies = [json.dumps(r.body, ensure_ascii=False) for r in fake.requests if r.body]
    files = [f.data.decode() for f in fake.batch_api.files.values() if f.purpose == "batch"]
    return "\n".join(bodies + files)


def _rows(*values: Any) -> pd.DataFrame:
    # object dtype: with pyarrow installed, pandas' default string dtype cannot hold a lone
    # surrogate at all, and the test is about what ipychat does with one.
    return pd.DataFrame({"t": pd.Series(list(values), dtype=object)})


def _with_system(session: ChatSession) -> None:
    session.configure(system=f"Use the key {OPENAI_KEY} for the tool.")
    session.ask("hello")


def _tampered_history(session: ChatSession) -> None:
    session.thread().add_turn(f"earlier: {AWS_KEY}", "ok")  # history built by user code
    session.ask("and now?")


REFUSED = {
    "ask(system=)": lambda s: s.ask("hi", system=f"key {OPENAI_KEY}"),
    "configure(system=)": _with_system,
    "stream(system=)": lambda s: list(s.stream("hi", system=f"key {OPENAI_KEY}")),
    "map(system=)": lambda s: s.map(_rows("a"), "{t}", "out", system=f"key {GITHUB_TOKEN}"),
    "map row": lambda s: s.map(_rows("a", f"key {AWS_KEY}"), "{t}", "out"),
    "map fill_null": lambda s: s.map(_rows("a", None), "{t}", "out", fill_null=AWS_KEY),
    "batch map system": lambda s: s.map(
        _rows("a"), "{t}", "out", system=f"key {SLACK_TOKEN}", batch=True, poll_interval=0.01
    ),
    "history": _tampered_history,
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_key_anywhere_in_a_request_is_refused_and_nothing_is_sent(
    name: str, session: ChatSession, fake: FakeOpenAIServer
) -> None:
    with pytest.raises(SecretInPromptError) as info:
        REFUSED[name](session)
    message = str(info.value)
    assert "nothing was sent" in message and "\n" not in message
    for key in (OPENAI_KEY, AWS_KEY, GITHUB_TOKEN, SLACK_TOKEN):
        assert key not in message
    assert fake.requests == [], name


def test_a_key_given_as_the_model_name_is_refused(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    from ipychat.core.errors import ConfigError

    for call in (
        lambda: session.ask("hi", model=OPENAI_KEY),  # the request body carries the model
        lambda: session.configure(model=AWS_KEY),
        lambda: session.map(_rows("a"), "{t}", "out", model=GITHUB_TOKEN),
    ):
        with pytest.raises(ConfigError, match="a key goes in %chat key") as info:
            call()
        assert all(k not in str(info.value) for k in (OPENAI_KEY, AWS_KEY, GITHUB_TOKEN))
    assert fake.requests == []


def test_where_the_key_was_is_said(session: ChatSession) -> None:
    with pytest.raises(SecretInPromptError, match=r"^The system prompt .*%chat system"):
        session.ask("hi", system=f"key {OPENAI_KEY}")
    with pytest.raises(SecretInPromptError, match=r"^An earlier prompt of this thread .*--new"):
        _tampered_history(session)


def test_a_turn_sent_with_allow_secrets_is_not_refused_again_as_history(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    session.ask(f"is {OPENAI_KEY} valid?", allow_secrets=True)
    session.ask("thanks, and now?")  # the history resends the first turn
    assert len(fake.chat_requests) == 2
    assert OPENAI_KEY in json.dumps(fake.chat_requests[1].body)
    session.configure(system=f"tool key {GITHUB_TOKEN}")
    with pytest.raises(SecretInPromptError, match="system prompt"):
        session.ask("one more")  # a new text still needs its own say-so


def test_redact_masks_every_text_that_leaves(session: ChatSession, fake: FakeOpenAIServer) -> None:
    """System prompt, history written before redact was on, prompts, map rows, fill values,
    a map's system prompt and a batch file: none of them carries the e-mail or the phone."""
    session.ask(f"my mail is {EMAIL}")  # redact off: sent as it is, and kept in history
    assert EMAIL in _sent(fake)
    fake.reset_log()
    session.configure(redact=True, system=f"Escalate to {PHONE}.")
    reply = session.ask("what is my mail?")
    # the e-mail of the first turn, in the prompt and in the echoing reply; the system phone
    assert reply.extra["masked"] == "masked 2 e-mail addresses and 1 phone number"
    session.map(_rows("a", None), "{t}", "out", fill_null=EMAIL, system=f"cc {EMAIL}")
    session.map(_rows(f"row {EMAIL}"), "{t}", "b", batch=True, poll_interval=0.01)
    sent = _sent(fake)
    assert len(fake.chat_requests) == 3 and "[email]" in sent and "[phone]" in sent
    assert EMAIL not in sent and PHONE not in sent
    assert any(f.purpose == "batch" for f in fake.batch_api.files.values())


def test_a_lone_surrogate_anywhere_is_refused_in_one_line(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    for call in (
        lambda: session.ask("bad \ud800 text"),
        lambda: session.ask("hi", system="sys \udcff"),
        lambda: session.map(_rows("a \ud83d b"), "{t}", "out"),
    ):
        with pytest.raises(ChatError, match="lone surrogate") as info:
            call()
        assert "\n" not in str(info.value)
    assert fake.requests == []


# ----- in the session, the magics and the panel ---------------------------------------------


def test_the_session_refuses_before_sending(session: ChatSession, fake: FakeOpenAIServer) -> None:
    with pytest.raises(SecretInPromptError):
        session.ask(SECRETS["openai"])
    with pytest.raises(SecretInPromptError):
        list(session.stream(PRIVATE_KEY))
    with pytest.raises(SecretInPromptError):
        session.map(pd.DataFrame({"t": ["ok", AWS_KEY]}), "{t}", "out")
    assert fake.chat_requests == []
    assert session.threads["main"].messages == []
    reply = session.ask(SECRETS["openai"], allow_secrets=True)
    assert OPENAI_KEY in reply.text  # the fake server echoes what it was sent
    out = session.map(pd.DataFrame({"t": [AWS_KEY]}), "{t}", "out", allow_secrets=True)
    assert out["out"].iloc[0].startswith("Echo: AKIA")


def test_redact_masks_before_the_prompt_leaves(
    session: ChatSession, fake: FakeOpenAIServer
) -> None:
    text = "Reply to ann@example.org or +1 415 555 0100 about card 4111-1111-1111-1111"
    plain = session.ask(text, cache=False)
    assert "ann@example.org" in plain.text and "masked" not in plain.extra
    session.configure(redact=True)
    reply = session.ask(text, cache=False, new=True)
    sent = fake.chat_requests[-1].body["messages"][-1]["content"]
    assert sent == "Reply to [email] or [phone] about card [card]"
    assert reply.extra["masked"] == "masked 1 e-mail address, 1 card number and 1 phone number"
    assert session.threads["main"].messages[-2]["content"] == sent  # history holds the mask
    from ipychat.core.format import footer

    assert footer(reply).endswith("masked 1 e-mail address, 1 card number and 1 phone number")
    frame = session.map(pd.DataFrame({"t": ["a@b.io", "none here"]}), "x {t}", "out")
    assert list(frame["out"]) == ["Echo: x [email]", "Echo: x none here"]
    assert session.redactions["email"] == 2


def _cell(ip: Any, magic: str, line: str, cell: str) -> str:
    with capture_output() as out:
        ip.run_cell_magic(magic, line, cell)  # type: ignore[attr-defined]
    return out.stdout + "".join(str(v) for o in out.outputs for v in o.data.values())


def test_chat_magic_refuses_and_allow_secrets_overrides(ip: Any, fake: FakeOpenAIServer) -> None:
    with pytest.raises(UsageError, match="looks like an OpenAI API key"):
        _cell(ip, "chat", "", f"debug this: {OPENAI_KEY}")
    with pytest.raises(UsageError, match="private key"):
        _cell(ip, "chat", "--dry-run", PRIVATE_KEY)
    ip.user_ns["token"] = GITHUB_TOKEN  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="GitHub token"):
        _cell(ip, "chat", "", "is {token} still valid?")  # an interpolated value
    assert fake.chat_requests == []
    shown = _cell(ip, "chat", "--allow-secrets --no-stream", f"debug this: {OPENAI_KEY}")
    assert "Echo: debug this" in shown and len(fake.chat_requests) == 1


def test_the_system_prompt_of_the_magics_is_checked(ip: Any, fake: FakeOpenAIServer) -> None:
    ip.run_line_magic("config", f"ChatMagics.system = 'use {OPENAI_KEY}'")  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="The system prompt contains what looks like"):
        _cell(ip, "chat", "--no-stream", "hello")
    ip.user_ns["rows"] = pd.DataFrame({"t": ["a"]})  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="The system prompt contains"):
        _cell(ip, "chatmap", "rows -o out", "{t}")
    assert fake.requests == []
    ip.run_line_magic("config", "ChatMagics.redact = True")  # type: ignore[attr-defined]
    ip.run_line_magic("chat", f"system Write to {EMAIL} if unsure")  # type: ignore[attr-defined]
    _cell(ip, "chat", "--no-stream", "hello")
    assert fake.chat_requests[-1].body["messages"][0]["content"] == "Write to [email] if unsure"


def test_redact_trait_and_what_the_cell_says(ip: Any, fake: FakeOpenAIServer) -> None:
    ip.run_line_magic("config", "ChatMagics.redact = True")  # type: ignore[attr-defined]
    shown = _cell(ip, "chat", "--no-stream", "mail bob@example.com")
    assert fake.chat_requests[-1].body["messages"][-1]["content"] == "mail [email]"
    assert "masked 1 e-mail address" in shown
    dry = _cell(ip, "chat", "--dry-run", "and carol@example.com")
    assert "masked 1 e-mail address" in dry


def test_chatmap_magic_refuses_and_says_what_it_masked(ip: Any, fake: FakeOpenAIServer) -> None:
    ip.user_ns["rows"] = pd.DataFrame({"t": ["fine", SECRETS["github classic"]]})  # type: ignore[attr-defined]
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

    from ipychat.notebook.widget import panel

    p = panel(session)
    try:
        p.prompt.value = SECRETS["slack bot"]
        p.send.click()
        deadline = time.monotonic() + 5
        while "Slack token" not in p.error.value and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "Slack token" in p.error.value and "xoxb-" not in p.error.value
        assert p.prompt.value == SECRETS["slack bot"]  # given back, nothing lost
        assert fake.chat_requests == []
    finally:
        p.close()


@pytest.mark.parametrize(
    ("magic", "line", "body"),
    [
        ("chat", "key {key}", None),
        ("chat", "--api-key {key}", "hi"),  # argparse would echo the unknown option
        ("chat", "-m {key}", "hi"),
        ("chat", "endpoint http://user:{key}@127.0.0.1:9/v1", None),
        ("chat", "system use {key}", None),
        ("chatmap", "rows -o out --api-key={key}", "{t}"),
        ("chatmap", "rows -o out --fill-null {key}", "{t}"),
        ("chatmap", "rows -o out -s 'use {key}'", "{t}"),
    ],
)
def test_a_key_on_a_magic_line_is_refused_and_never_echoed(
    ip: Any, fake: FakeOpenAIServer, magic: str, line: str, body: str | None
) -> None:
    ip.user_ns["rows"] = pd.DataFrame({"t": ["a"]})  # type: ignore[attr-defined]
    line = line.format(key=OPENAI_KEY)
    with pytest.raises(UsageError) as info:
        if body is None:
            ip.run_line_magic(magic, line)  # type: ignore[attr-defined]
        else:
            _cell(ip, magic, line, body)
    message = str(info.value)
    assert OPENAI_KEY not in message and "a key never goes in a cell" in message
    assert fake.chat_requests == []
