"""ipychat.core.keys: the key shapes, cache keys, API keys as they are set, and where API keys go.

- KEY_SHAPES / find_keys / redact: the one list of what credentials look like, read by the
  prompt check (ipychat.core.hygiene) and by the scrubbing of server and exception texts;
  precision and recall measured on the corpora of tests/core/hygiene_corpus.py, the limits of
  `looks_random` (what tells a key from a word) pinned one by one.
- cache_key: a key changes with everything that changes the reply, and only that. Never
  with credentials: the key is computed from the endpoint and the JSON body alone, and
  credentials travel in headers, which the key function never sees.
- Secret: a pasted key that cannot go in an HTTP header is refused when set, in one line.
- Scoping: OPENAI_API_KEY goes only to the host it is for, a typed key to its endpoint,
  and no key crosses plain http to another machine unless the user allowed it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import json
import pickle
import random
import re
import string
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import hygiene_corpus as corpus
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.core.errors import ChatError, ConfigError
from ipychat.core.images import image
from ipychat.core.keys import (
    _NEEDLES,
    KEY_SHAPES,
    FoundKey,
    Secret,
    _in_words,
    _tail_random,
    cache_key,
    canonical_json,
    find_keys,
    looks_random,
    mask,
    redact,
    redact_headers,
)
from ipychat.session import ChatSession, Settings, get_session, reset_session
from ipychat.testing import FakeOpenAIServer

ENDPOINT = "https://api.openai.com/v1"

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another one, {braces} kept."},
    ],
    "temperature": 0.2,
    "top_p": 0.9,
    "max_tokens": 100,
    "seed": 42,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "object", "properties": {}}},
    },
    "tools": [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ],
}


def body(change: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    new = copy.deepcopy(BODY)
    if change is not None:
        change(new)
    return new


def test_the_key_is_a_sha256_hex_and_deterministic() -> None:
    key = cache_key(ENDPOINT, BODY)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert cache_key(ENDPOINT, body()) == key


def test_the_key_is_pinned() -> None:
    # Every cache on disk is addressed by this function: a change here makes every entry
    # a miss. If that is intended, update the value on purpose.
    # The hashed text is the canonical JSON of {"endpoint", "request"}: sorted keys, no spaces.
    canonical = '{"endpoint":"https://api.openai.com/v1","request":{"messages":[{"content":"hi","role":"user"}],"model":"m"}}'
    key = cache_key(ENDPOINT + "/", {"messages": [{"role": "user", "content": "hi"}], "model": "m"})
    assert key == hashlib.sha256(canonical.encode()).hexdigest()
    assert key == "48166d95f2f86231275ad378cb285b2bf25b42680e47af00a54bbdb16261e485"


def _set(field: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda b: b.__setitem__(field, value)


CHANGES: dict[str, Callable[[dict[str, Any]], object]] = {
    "model": _set("model", "gpt-4o"),
    "system message": lambda b: b["messages"][0].__setitem__("content", "You are verbose."),
    "user message": lambda b: b["messages"][1].__setitem__("content", "Name a prime!"),
    "assistant message": lambda b: b["messages"][2].__setitem__("content", "11"),
    "last message": lambda b: b["messages"][3].__setitem__("content", "Another one."),
    "a role": lambda b: b["messages"][2].__setitem__("role", "user"),
    "a message added": lambda b: b["messages"].append({"role": "user", "content": "More"}),
    "a message dropped (trimming)": lambda b: b["messages"].pop(1),
    "message order": lambda b: b["messages"].reverse(),
    "whitespace in a message": lambda b: b["messages"][1].__setitem__("content", "Name a prime. "),
    "temperature": _set("temperature", 0.3),
    "temperature absent": lambda b: b.pop("temperature"),
    "top_p": _set("top_p", 1.0),
    "max_tokens": _set("max_tokens", 101),
    "seed": _set("seed", 43),
    "response_format": _set("response_format", {"type": "json_object"}),
    "response_format schema": lambda b: b["response_format"]["json_schema"].__setitem__(
        "name", "other"
    ),
    "tools": lambda b: b["tools"][0]["function"].__setitem__("name", "search"),
    "no tools": lambda b: b.pop("tools"),
    "tool_choice": _set("tool_choice", "required"),
    "n": _set("n", 2),
    "stop": _set("stop", ["\n"]),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_the_key_changes_with_what_changes_the_reply(change: Callable[..., object]) -> None:
    assert cache_key(ENDPOINT, body(change)) != cache_key(ENDPOINT, BODY)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://eu.api.openai.com/v1",
        "http://api.openai.com/v1",
        "https://api.openai.com/v2",
        "http://localhost:8080/v1",
        "http://localhost:8081/v1",
    ],
)
def test_the_key_changes_with_the_endpoint(endpoint: str) -> None:
    assert cache_key(endpoint, BODY) != cache_key(ENDPOINT, BODY)


SAME: dict[str, Callable[[dict[str, Any]], object]] = {
    "stream": _set("stream", True),
    "stream false": _set("stream", False),
    "stream_options": _set("stream_options", {"include_usage": True}),
    "user": _set("user", "alice@example.com"),
    "top-level order": lambda b: [b.__setitem__(k, b.pop(k)) for k in sorted(b, reverse=True)],
    "message key order": lambda b: b["messages"].__setitem__(
        0, {"content": "You are terse.", "role": "system"}
    ),
    "nested key order": lambda b: b.__setitem__(
        "response_format",
        {
            "json_schema": {"schema": {"properties": {}, "type": "object"}, "name": "n"},
            "type": "json_schema",
        },
    ),
}


@pytest.mark.parametrize("change", SAME.values(), ids=SAME.keys())
def test_the_key_ignores_what_does_not_change_the_reply(change: Callable[..., object]) -> None:
    assert cache_key(ENDPOINT, body(change)) == cache_key(ENDPOINT, BODY)


def test_a_trailing_slash_on_the_endpoint_does_not_matter() -> None:
    assert cache_key(ENDPOINT + "/", BODY) == cache_key(ENDPOINT, BODY)


def test_the_key_strips_only_trailing_slashes_from_the_endpoint() -> None:
    assert cache_key("https://host.example/MAX", BODY) != cache_key("https://host.example/MA", BODY)


def test_canonical_json_is_sorted_compact_and_keeps_unicode() -> None:
    value = {"b": 1, "a": [1.5, "é 東"], "c": {"z": None, "y": True}}
    assert canonical_json(value) == '{"a":[1.5,"é 東"],"b":1,"c":{"y":true,"z":null}}'
    with pytest.raises(ValueError):
        canonical_json({"temperature": float("nan")})  # not JSON: no key for it


# A PNG header is all `ipychat.image` reads: the signature, then the IHDR chunk's size.
def _png(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", width, height) + b"\0" * 5


def _with_image(url: str, *, form: str = "image_url", detail: str | None = None) -> dict[str, Any]:
    part: dict[str, Any]
    if form == "image_url":
        part = {
            "type": "image_url",
            "image_url": {"url": url, **({"detail": detail} if detail else {})},
        }
    else:  # the Responses API's form
        part = {"type": "input_image", "image_url": url, **({"detail": detail} if detail else {})}
    text = {"type": "text", "text": "What is it?"}
    return {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": [text, part]}]}  # fmt: skip


def test_an_inline_image_is_keyed_by_the_sha256_of_its_bytes() -> None:
    picture = image(_png(8, 8))
    by_hash = f"sha256:{picture.sha256}"
    for form in ("image_url", "input_image"):
        for detail in (None, "low"):
            key = cache_key(ENDPOINT, _with_image(picture.url, form=form, detail=detail))
            assert key == cache_key(ENDPOINT, _with_image(by_hash, form=form, detail=detail))
            # The same bytes as a plain str data URL (a thread restored from a notebook).
            plain = _with_image(str(picture.url), form=form, detail=detail)
            assert cache_key(ENDPOINT, plain) == key
    other = image(_png(8, 9))
    assert cache_key(ENDPOINT, _with_image(other.url)) != cache_key(
        ENDPOINT, _with_image(picture.url)
    )
    sent = _with_image(picture.url)
    cache_key(ENDPOINT, sent)
    assert sent == _with_image(picture.url)  # the body given is not changed


def test_what_is_not_an_inline_image_is_keyed_as_written() -> None:
    remote = _with_image("https://example.com/cat.png")
    expected = canonical_json({"endpoint": ENDPOINT, "request": remote})
    assert cache_key(ENDPOINT, remote) == hashlib.sha256(expected.encode()).hexdigest()
    broken = _with_image("data:image/png;base64,QUJD")  # no image in it: as written
    expected = canonical_json({"endpoint": ENDPOINT, "request": broken})
    assert cache_key(ENDPOINT, broken) == hashlib.sha256(expected.encode()).hexdigest()


def test_parts_that_are_not_objects_are_keyed_as_written() -> None:
    picture = image(_png(4, 4))

    def request(url: str) -> dict[str, Any]:
        part = {"type": "image_url", "image_url": {"url": url}}
        return {"model": "m", "messages": [{"content": "hi"}, {"content": ["a bare part", part]}]}

    by_hash = request(f"sha256:{picture.sha256}")
    expected = canonical_json({"endpoint": ENDPOINT, "request": by_hash})
    assert (
        cache_key(ENDPOINT, request(picture.url)) == hashlib.sha256(expected.encode()).hexdigest()
    )


def test_bodies_without_a_list_of_messages_are_keyed_as_written() -> None:
    for request in ({"model": "m", "input": "hi"}, {"model": "m", "messages": None}):
        expected = canonical_json({"endpoint": ENDPOINT, "request": request})
        assert cache_key(ENDPOINT, request) == hashlib.sha256(expected.encode()).hexdigest()


def test_a_key_is_found_in_a_text_holding_every_needle() -> None:
    """The fast path ("no shape's needle in the text: nothing to find") looks for any needle;
    a text holding all of them is searched like any other."""
    text = " ".join(_NEEDLES) + " and the key " + ENV_KEY
    assert [(f.kind, f.text) for f in find_keys(text)] == [("an OpenAI API key", ENV_KEY)]


def test_the_key_function_takes_no_credentials() -> None:
    # The only inputs are the endpoint and the body: there is no way to pass a key or headers.
    assert list(inspect.signature(cache_key).parameters) == ["endpoint", "request"]


# ----- the key shapes: what is a key and what is a word -----------------------------------------


def _named(corpus_kind: str) -> str:
    """The KeyShape.kind that a format of tests/core/hygiene_corpus.py is reported as."""
    prefixes = {
        "openai": "an OpenAI API key",
        "deepseek": "an OpenAI API key",  # sk- + hex: OpenAI-compatible services share sk-
        "openrouter": "an OpenAI API key",
        "anthropic": "an Anthropic API key",
        "aws secret": "an AWS secret access key",
        "aws": "an AWS access key",
        "github": "a GitHub token",
        "gitlab": "a GitLab token",
        "google": "a Google API key",
        "slack": "a Slack token",
        "hugging face": "a Hugging Face token",
        "stripe": "a Stripe secret key",
        "groq": "a Groq API key",
        "npm": "an npm token",
        "pypi": "a PyPI token",
        "azure": "an Azure storage key",
        "jwt": "a JSON Web Token",
        "bearer": "a bearer token",
        "pem": "a private key",
    }
    return next(v for k, v in prefixes.items() if corpus_kind.startswith(k))


B62 = string.ascii_letters + string.digits


def _random(rng: random.Random, n: int, alphabet: str = B62) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_key_check_precision_is_total_on_words_file_names_and_placeholders() -> None:
    """2,000 generated file names, slugs, identifiers and placeholders with key prefixes
    (sk-2024-01-15-report.csv, hf_SalesReportDraft, Bearer your_token_here) plus the fixed
    list in the corpus: not one is taken for a key."""
    texts = corpus.not_keys(random.Random(6), 2000)
    flagged = [(t, find_keys(t)) for t in texts if find_keys(t)]
    print(f"\nkey check precision: {len(texts) - len(flagged)}/{len(texts)} harmless texts pass")
    assert flagged == []


def test_key_check_recall_on_every_documented_format() -> None:
    """200 generated keys of each of 33 formats, each inside a prompt: the recall of each
    format is printed; a key with a distinctive prefix (sk-proj-, AKIA, ghp_, AIza, PEM, a
    JWT) is always found, and even formats told apart from words by randomness alone
    (hf_, Bearer) are found at least 99 % of the time."""
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for kind, text in corpus.keys(random.Random(7), 200):
        total[kind] += 1
        found[kind] += bool(find_keys(text))
    recall = {kind: found[kind] / total[kind] for kind in total}
    print("\nkey check recall by format:")
    for kind, value in recall.items():
        print(f"  {kind:28} {value:7.2%}")
    overall = sum(found.values()) / sum(total.values())
    print(f"  {'all':28} {overall:7.2%} of {sum(total.values())}")
    assert min(recall.values()) >= 0.99, recall
    assert overall >= 0.998


def test_one_list_of_key_shapes_for_the_check_and_the_scrubbing() -> None:
    """The prompt check and the scrubbing of server and exception texts read the same list:
    what one finds the other masks (AWS and GitHub keys were missed by one of them). Each
    format is found once, as what it is."""
    for kind, make in corpus.KEY_FORMATS.items():
        key = make(random.Random(kind + "/scrub"))
        text = f"upstream said: bad credential {key} (request 42)"
        assert [f.kind for f in find_keys(text)] == [_named(kind)], kind
        scrubbed = redact(text)
        assert scrubbed != text, kind
        middle = key[len(key) // 2 - 10 : len(key) // 2 + 10]  # the secret part of any format
        assert middle not in scrubbed, (kind, scrubbed)
    kinds = [shape.kind for shape in KEY_SHAPES]
    assert len(kinds) == len(set(kinds))
    assert {"an AWS access key", "a GitHub token"} <= set(kinds)


def test_two_keys_are_two_findings_in_the_order_of_the_text() -> None:
    """Not only the first one: an OpenAI key after an Anthropic key (whose shape comes
    first in the list), and the other way round, are both reported, in text order."""
    anthropic = corpus.KEY_FORMATS["anthropic"](random.Random(1))
    openai = corpus.KEY_FORMATS["openai project"](random.Random(2))
    aws = corpus.KEY_FORMATS["aws access key id"](random.Random(3))
    found = find_keys(f"{openai} then {anthropic} then {aws}")
    assert [f.kind for f in found] == [
        "an OpenAI API key",
        "an Anthropic API key",
        "an AWS access key",
    ]
    text = f"a {anthropic} b {openai}"
    found = find_keys(text)
    assert [(f.kind, f.text) for f in found] == [
        ("an Anthropic API key", anthropic),
        ("an OpenAI API key", openai),
    ]
    assert [(f.start, f.end) for f in found] == [
        (2, 2 + len(anthropic)),
        (len(text) - len(openai), len(text)),
    ]


def test_a_stretch_claimed_by_one_shape_is_not_found_again() -> None:
    """sk-ant- is not also an sk- key; a bearer JWT is one JWT. Keys that touch (a PEM
    block's END line, then an AWS key id) are still two."""
    jwt = corpus.KEY_FORMATS["jwt"](random.Random(4))
    assert [f.kind for f in find_keys(f"Authorization: Bearer {jwt}")] == ["a JSON Web Token"]
    pem = corpus.KEY_FORMATS["pem rsa"](random.Random(5))
    aws = corpus.KEY_FORMATS["aws access key id"](random.Random(6))
    assert [f.kind for f in find_keys(pem + aws)] == ["a private key", "an AWS access key"]
    assert [f.kind for f in find_keys(aws + pem)] == ["an AWS access key", "a private key"]


def test_a_text_without_any_shape_s_needle_is_passed_over() -> None:
    assert find_keys("") == []
    assert find_keys("plain prose with numbers 1234567890 and words") == []


def test_a_private_key_is_shown_by_its_header_and_scrubbed_whole() -> None:
    rng = random.Random(22)
    pem = corpus.KEY_FORMATS["pem ec"](random.Random(7))
    header = pem.split("\n", 1)[0]
    (found,) = find_keys(f"here:\n{pem}\nthanks")
    assert (found.kind, found.text, found.masked) == ("a private key", pem, False)
    assert found.shown == header
    assert redact(f"here:\n{pem}\nthanks") == f"here:\n{header} ***\nthanks"
    putty = (
        "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPrivate-Lines: 1\n"
        + _random(rng, 40)
        + "\nPrivate-MAC: "
        + _random(rng, 64, "0123456789abcdef")
    )
    (found,) = find_keys(f"{putty}\nmore text")
    assert found.kind == "a PuTTY private key" and found.text == putty
    assert redact(putty) == "PuTTY-User-Key-File-3: ssh-ed25519 ***"


def test_what_a_finding_shows_and_what_replaces_it() -> None:
    bearer = FoundKey("a bearer token", 0, 30, "Bearer abcdefghijklmnopqrstuvwx")
    assert bearer.shown == "Bea...uvwx" and bearer.scrubbed == "Bearer ***"
    key = FoundKey("an OpenAI API key", 0, 12, "sk-abcdefghi")
    assert key.shown == key.scrubbed == "sk-...fghi"
    header = FoundKey("a private key", 0, 9, "  -----BEGIN X-----\nABC", masked=False)
    assert header.shown == "-----BEGIN X-----" and header.scrubbed == "-----BEGIN X----- ***"


def test_mask_shows_the_first_three_and_last_four_characters_only() -> None:
    assert mask("") == mask("12345678") == "***"  # too short to show any of it
    assert mask("123456789") == "123...6789"
    assert mask("sk-proj-abcdefghijklmnop") == "sk-...mnop"


def test_redact_masks_given_secrets_and_every_key_shape_and_keeps_the_rest() -> None:
    rng = random.Random(23)
    openai = corpus.KEY_FORMATS["openai legacy"](random.Random(8))
    github = corpus.KEY_FORMATS["github classic"](random.Random(9))
    text = f"401 for {openai}; token {github}; password hunter2-secret; end"
    assert redact(text) == (
        f"401 for {mask(openai)}; token {mask(github)}; password hunter2-secret; end"
    )
    assert redact(text, [None, "", "hunter2-secret", Secret("end-of-secret")]) == (
        f"401 for {mask(openai)}; token {mask(github)}; password hun...cret; end"
    )
    assert redact("seen: end-of-secret", [Secret("end-of-secret")]) == "seen: end...cret"
    assert redact("nothing to hide", ["absent"]) == "nothing to hide"
    assert redact(f"Authorization: Bearer {_random(rng, 40)}") == "Authorization: Bearer ***"


def test_redact_headers_hides_credential_headers_whatever_their_case() -> None:
    headers = {
        "Authorization": "Bearer x",
        "API-Key": "k",
        "x-api-key": "k",
        "Proxy-Authorization": "Basic y",
        "Content-Type": "application/json",
        "X-Request-Id": "42",
    }
    assert redact_headers(headers) == {
        "Authorization": "***",
        "API-Key": "***",
        "x-api-key": "***",
        "Proxy-Authorization": "***",
        "Content-Type": "application/json",
        "X-Request-Id": "42",
    }


# (token, min_run, max_words, looks random): one case on each side of each limit.
RANDOMNESS = {
    "empty": ("", 16, 0.75, False),
    "one character": ("g", 1, None, False),  # one kind of character is no key
    "separators only": ("----____", 1, None, False),
    "16 random characters": ("X8pPd5khxE3pyIgK", 16, 0.75, True),
    "15 random characters": ("NqVwYS81VP7Hb1D", 16, 0.75, False),
    "15 random characters, min_run 15": ("NqVwYS81VP7Hb1D", 15, 0.75, True),
    "runs of 8 joined by -": ("X8pPd5kh-xE3pyIgK", 16, 0.75, False),
    "runs of 8 joined by -, min_run 8": ("X8pPd5kh-xE3pyIgK", 8, 0.75, True),
    "24 hex": ("a1b2c3d4e5f6a7b8c9d0e1f2", 16, 0.75, True),
    "24 upper-case hex": ("A1B2C3D4E5F6A7B8C9D0E1F2", 16, 0.75, True),
    "23 hex": ("a1b2c3d4e5f6a7b8c9d0e1f", 16, 0.75, False),
    "24 hex, one letter": ("12345678901234567890123a", 16, 0.75, True),
    "24 hex, one digit": ("abcdefabcdefabcdefabcde1", 16, 0.75, True),
    "24 digits": ("123456789012345678901234", 16, 0.75, False),
    "24 hex letters": ("abcdefabcdefabcdefabcdef", 16, 0.75, False),
    "lower case only": ("qwrtzpsdfghjklmnbvcx", 16, None, False),
    "lower case and one digit": ("abc1defgh", 8, None, True),
    "lower and upper, switching": ("aBcDeFgHiJkLmNoP", 16, 0.75, True),
    "lower and digits, switching": ("a1b2c3d4e5f6g7h8", 16, 0.75, True),
    "few switches": ("aaaaaaaaAAAAAAAA11111111", 16, None, False),
    "a quarter switching": ("ABCD1234EFGH5678j", 16, 0.75, True),  # 4 of 16 neighbours
    "under a quarter switching": ("ABCD1234EFGHjk", 8, None, False),  # 3 of 13
    "low entropy": ("aA1aA1aA1aA1aA1aA1aA1aA1", 16, None, False),
    "short, entropy under log2(n) - 0.7": ("aB3aB3cD4cD4", 8, None, False),
    "short, entropy over log2(n) - 0.7": ("aB3cD4eF5aB3", 8, None, True),
    "three quarters in words": ("ReportModelsX7q2", 16, 0.75, True),
    "over three quarters in words": ("ReportModelsXyz7", 16, 0.75, False),
    "words and digits": ("Report2North5Sales9Data3Final7Summary1", 16, 0.75, False),
    "words and digits, no word test": ("Report2North5Sales9Data3Final7Summary1", 16, None, True),
}


@pytest.mark.parametrize(
    ("token", "min_run", "max_words", "expected"), RANDOMNESS.values(), ids=RANDOMNESS.keys()
)
def test_the_limits_of_looks_random(
    token: str, min_run: int, max_words: float | None, expected: bool
) -> None:
    assert looks_random(token, min_run=min_run, max_words=max_words) is expected


def test_looks_random_defaults_to_runs_of_16_and_the_word_test() -> None:
    assert looks_random("X8pPd5khxE3pyIgK") and not looks_random("NqVwYS81VP7Hb1D")
    assert not looks_random("Report2North5Sales9Data3Final7Summary1")


@pytest.mark.parametrize(
    ("body", "share"),
    [
        ("Bob1", 3 / 4),  # 3 letters, one vowel in three
        ("ab12", 0.0),  # two letters are no word
        ("Brand12345", 5 / 10),  # one vowel in five: still a word
        ("Brnd1234", 0.0),  # a cluster of four consonants
        ("idea123456", 4 / 10),  # three vowels in four: still a word
        ("aeio123456", 0.0),  # all vowels
        ("Xaei123456", 4 / 10),  # X is no vowel
        ("strength12", 0.0),  # n-g-t-h
        ("NORTH12345", 5 / 10),  # capitals
        ("ReportNorth", 1.0),
        ("Xq7zWv9kLp", 0.0),
    ],
)
def test_the_share_of_word_like_stretches(body: str, share: float) -> None:
    assert _in_words(body) == pytest.approx(share)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("AKIA" + "2" * 16, True),  # a digit: a key id
        ("AKIA" + "BCDFGHAEIOUAXYBC", True),  # 6 vowels of 16, no digit
        ("AKIA" + "BCDFGHAEIOUAEYBC", False),  # 7 vowels: a word in capitals
        ("AKIA" + "2" * 15, False),  # too short
        ("AKIA" + "2" * 17, False),  # too long
    ],
)
def test_aws_key_ids_against_words_in_capitals(text: str, found: bool) -> None:
    assert bool(find_keys(f"id {text} here")) is found


def test_a_shape_check_reads_its_group_with_its_limits() -> None:
    """`_tail_random` builds the checks of KEY_SHAPES (at import: called here so that a
    change to it is seen): it reads its named group, runs of 16 and no word test unless
    told otherwise."""
    split = re.match(r"x(?P<t>.*)", "xX8pPd5kh-xE3pyIgK")
    assert split is not None
    assert _tail_random("t", 8)(split) is True and _tail_random("t")(split) is False
    sixteen = re.match(r"(?P<t>.*)", "X8pPd5khxE3pyIgK")
    assert sixteen is not None and _tail_random("t")(sixteen) is True
    words = re.match(r"(?P<t>.*)", "Report2North5Sales9Data3Final7Summary1")
    assert words is not None
    assert _tail_random("t")(words) is True
    assert _tail_random("t", max_words=0.75)(words) is False


def test_the_run_lengths_each_shape_asks_for() -> None:
    """Shapes whose key alphabet holds separators accept shorter random runs: GitLab 4,
    AWS secret and Google 8, bearer 12; the others 16."""
    rng = random.Random(24)
    glpat = "glpat-" + "-".join(_random(rng, 4) for _ in range(5))
    assert [f.kind for f in find_keys(glpat)] == ["a GitLab token"]
    google = "AIza" + "-".join(_random(rng, 8) for _ in range(4))  # 35 after the prefix
    assert [f.kind for f in find_keys(google)] == ["a Google API key"]
    secret = "aws_secret_access_key=" + "/".join([*(_random(rng, 8) for _ in range(4)), "Ab3d"])
    assert [f.kind for f in find_keys(secret)] == ["an AWS secret access key"]
    bearer = "Bearer " + "-".join(_random(rng, 12) for _ in range(3))
    assert [f.kind for f in find_keys(bearer)] == ["a bearer token"]
    assert find_keys("Bearer " + "-".join(_random(rng, 11) for _ in range(3))) == []
    azure = "AccountKey=" + "+".join(_random(rng, 16) for _ in range(6))
    assert [f.kind for f in find_keys(azure)] == ["an Azure storage key"]
    assert find_keys("AccountKey=" + "+".join(_random(rng, 15) for _ in range(6))) == []


def test_the_word_test_each_shape_applies() -> None:
    """Distinctive prefixes skip the word test (a GitHub token of words is still a token);
    sk- applies it at 0.75, hf_ (letters only) at 0.85."""
    words = "ReportNorthSalesDataFinalSummaryModelIndexStore"
    assert [f.kind for f in find_keys("ghp_" + words[:36])] == ["a GitHub token"]
    assert find_keys("sk-" + words) == []
    hf = "hf_ReportNorthSalesDataFinalWv9Kz"  # 25 of 30 in words (0.83)
    assert [f.kind for f in find_keys(hf)] == ["a Hugging Face token"]
    assert find_keys("hf_ReportNorthSalesDataModelsWv9K") == []  # 26 of 30 (0.87)
    assert find_keys("sk-ReportNorthSalesDataFinalWv9Kz") == []  # over 0.75 for sk-


# ----- the body two clients actually send ----------------------------------------------------

REPLY = {
    "id": "chatcmpl-1",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "13"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 30, "completion_tokens": 1, "total_tokens": 31},
}


def sent_by_client(api_key: str, *, stream: bool = False) -> httpx.Request:
    """The request a real ChatClient puts on the wire (captured by a mock transport)."""
    import ipychat.net.client as client_module

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=REPLY)

    async def send() -> None:
        client = client_module.ChatClient(
            ENDPOINT, api_key=api_key, transport=httpx.MockTransport(handler), max_retries=0
        )
        async with client:
            await client.chat(BODY, stream=stream)

    asyncio.run(send())
    assert len(seen) == 1
    return seen[0]


def test_two_clients_with_different_keys_give_the_same_key() -> None:
    alice = sent_by_client("sk-alice-0000000000000000000000")
    bob = sent_by_client("sk-bob-11111111111111111111111111", stream=True)
    assert alice.headers["authorization"] != bob.headers["authorization"]  # different keys...
    alice_body, bob_body = json.loads(alice.content), json.loads(bob.content)
    assert bob_body.get("stream") is True and "stream" not in alice_body  # ...and modes
    assert cache_key(ENDPOINT, alice_body) == cache_key(ENDPOINT, bob_body)  # ...one entry
    assert cache_key(ENDPOINT, alice_body) == cache_key(ENDPOINT, BODY)
    for request in (alice, bob):  # the key material (endpoint + body) holds no credential
        assert b"sk-" not in request.content


# ----- a key goes only where it is meant to (issue 15, item 9) ---------------------------------
#
# Like HTTP clients on a redirect to another host (requests' `should_strip_auth`, curl's
# --location without --location-trusted): OPENAI_API_KEY goes to OpenAI or OPENAI_BASE_URL's
# host only; a key set with %chat key to the endpoint it was set for. 127.0.0.1 and
# 127.0.0.2 are both loopback on Linux: two real servers on two different hosts.

_RNG = random.Random(9)
ENV_KEY = "sk-proj-" + "".join(_RNG.choice(string.ascii_letters + string.digits) for _ in range(64))
TYPED_KEY = "sk-proj-" + "".join(
    _RNG.choice(string.ascii_letters + string.digits) for _ in range(64)
)


@pytest.fixture
def two_hosts() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    with FakeOpenAIServer(host="127.0.0.1") as home, FakeOpenAIServer(host="127.0.0.2") as other:
        yield home, other


@pytest.fixture
def shell() -> Iterator[Any]:
    """A real InteractiveShell with ipychat on a session built from the environment."""
    from IPython.core.interactiveshell import InteractiveShell

    session = ChatSession(Settings(model="gpt-4o-mini", max_retries=0), cache=False)
    reset_session(session)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipychat")
    yield ip
    ip.run_line_magic("unload_ext", "ipychat")
    ip.config.pop("ChatMagics", None)
    reset_session(None)


def _chat(ip: Any, line: str = "--no-stream --no-cache", cell: str = "hello") -> str:
    with capture_output() as out:
        ip.run_cell_magic("chat", line, cell)
    return out.stdout + "".join(str(v) for o in out.outputs for v in o.data.values())


def _line(ip: Any, line: str) -> str:
    with capture_output() as out:
        ip.run_line_magic("chat", line)
    return out.stdout + "".join(str(v) for o in out.outputs for v in o.data.values())


def _authorized(server: FakeOpenAIServer) -> list[str | None]:
    return [r.headers.get("authorization") for r in server.chat_requests]


def test_the_environment_key_does_not_follow_the_user_to_another_host(
    two_hosts: tuple[FakeOpenAIServer, FakeOpenAIServer], shell: Any, monkeypatch: Any
) -> None:
    home, other = two_hosts
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", home.base_url)  # the key is for this host
    _chat(shell)
    _line(shell, f"endpoint {other.base_url}")
    _chat(shell)
    assert _authorized(home) == [f"Bearer {ENV_KEY}"]
    assert _authorized(other) == [None]  # the request went there, the key did not
    shown = _line(shell, f"endpoint {other.base_url} --send-key")  # the explicit opt-in
    assert f"endpoint: {other.base_url}" in shown
    _chat(shell, cell="again")
    assert _authorized(other) == [None, f"Bearer {ENV_KEY}"]


def test_a_typed_key_stays_with_the_endpoint_it_was_given_for(
    two_hosts: tuple[FakeOpenAIServer, FakeOpenAIServer], shell: Any, monkeypatch: Any
) -> None:
    home, other = two_hosts
    monkeypatch.setattr("getpass.getpass", lambda prompt="": TYPED_KEY)
    _line(shell, f"endpoint {home.base_url}")
    _line(shell, "key")
    _chat(shell)
    shown = _line(shell, f"endpoint {other.base_url}")
    assert "is for 127.0.0.1" in shown and "%chat key" in shown and "--send-key" in shown
    assert TYPED_KEY not in shown
    _chat(shell)
    _line(shell, f"endpoint {home.base_url}")
    _chat(shell, cell="back home")
    assert _authorized(home) == [f"Bearer {TYPED_KEY}", f"Bearer {TYPED_KEY}"]
    assert _authorized(other) == [None]


def test_a_withheld_key_is_named_in_the_401(shell: Any, monkeypatch: Any) -> None:
    with FakeOpenAIServer(host="127.0.0.2", require_key=ENV_KEY) as other:
        monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
        _line(shell, f"endpoint {other.base_url}")
        with pytest.raises(UsageError) as info:
            _chat(shell)
        message = str(info.value)
        assert "OPENAI_API_KEY is for OpenAI" in message and "--send-key" in message
        assert ENV_KEY not in message and "\n" not in message
        assert _authorized(other) == [None]


def test_no_key_over_plain_http_to_another_machine(shell: Any, monkeypatch: Any) -> None:
    """192.0.2.1 (TEST-NET-1, never routed): the refusal comes before any connection."""
    monkeypatch.setattr("getpass.getpass", lambda prompt="": TYPED_KEY)
    _line(shell, "endpoint http://192.0.2.1:9/v1")
    _line(shell, "key")
    with pytest.raises(UsageError) as info:
        _chat(shell)
    message = str(info.value)
    assert "plain http to another machine" in message and "--send-key" in message
    assert TYPED_KEY not in message and "\n" not in message
    # Opting in says it: the client is then built (not run: nothing listens there).
    _line(shell, "endpoint http://192.0.2.1:9/v1 --send-key")
    session = get_session()
    client = session.run(session.client())
    assert client.has_key


def test_plain_http_from_the_environment_needs_ipychat_key_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ipychat.net.client import ChatClient

    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gateway.example:4000/v1")
    with pytest.raises(ConfigError, match=r"IPYCHAT_KEY_ORIGINS=http://gateway\.example:4000"):
        ChatClient()
    monkeypatch.setenv("IPYCHAT_KEY_ORIGINS", "http://gateway.example:4000")
    assert ChatClient().has_key
    assert not ChatClient("http://other.example/v1").has_key  # listed hosts only
    assert ChatClient("http://127.0.0.2:9/v1").has_key is False  # loopback, but not its host


def test_loopback_over_http_and_no_key_need_no_opt_in(fake: FakeOpenAIServer) -> None:
    from ipychat.net.client import ChatClient

    assert ChatClient(fake.base_url, api_key=TYPED_KEY).has_key  # this machine
    assert not ChatClient("http://192.0.2.1:9/v1").has_key  # nothing secret to send


# ----- keys that cannot be sent are refused when set (issue 15, item 8) -------------------------


@pytest.mark.parametrize(
    ("pasted", "said"),
    [
        ("sk-proj-abcé123456789012345678", "non-ASCII character 'é'"),
        ("sk-proj-abc\n123456789012345678", "a line break"),
        ("sk-proj-abc 123456789012345678", "a space"),
        ("sk-proj-abc\x00123456789012345678", "a control character"),
        ("“sk-proj-abc123456789012345678”", "non-ASCII character '“'"),
    ],
)
def test_a_key_that_cannot_go_in_a_header_is_refused_when_set(pasted: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        Secret(pasted)
    message = str(info.value)
    assert said in message and "\n" not in message
    assert pasted not in message and "abc123456789" not in message.replace("\n", "")


def test_the_refusal_of_a_key_says_what_where_and_what_to_do() -> None:
    with pytest.raises(ConfigError) as info:
        Secret("sk-proj-abc 12345678901234567890")
    assert str(info.value) == (
        "The API key (sk-...7890) holds a space at position 12, which no API key has: copy it "
        "again from the provider's page (a pasted key sometimes picks up quotes, accents or "
        "line breaks)."
    )


@pytest.mark.parametrize(
    ("char", "said"),
    [
        ("\r", "a line break"),
        ("\t", "a control character"),
        ("\x7f", "a control character"),  # DEL, the last ASCII code
        ("\u200b", "the character U+200B"),  # a zero-width space cannot be shown
        ("\ud800", "the character U+D800"),  # a lone surrogate
        ("é", "the non-ASCII character 'é'"),
    ],
)
def test_each_character_that_cannot_go_in_a_header_is_named(char: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        Secret(f"sk-abcd{char}efghijklmnop")
    assert f" holds {said} at position 8," in str(info.value)


def test_a_key_of_printable_ascii_is_kept_as_it_is() -> None:
    key = "!" + string.ascii_letters + string.digits + string.punctuation + "~"
    assert Secret(key).reveal() == key


@pytest.mark.parametrize("value", ["", "   ", None, 42])
def test_a_key_must_be_a_non_empty_string(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^An API key must be a non-empty string\.$"):
        Secret(value)


def test_a_secret_never_shows_itself() -> None:
    key = "sk-proj-" + "A1b2" * 10
    secret = Secret(key)
    shown = "Secret('sk-...A1b2')"
    assert repr(secret) == str(secret) == f"{secret}" == f"{secret:>80}" == shown
    assert secret == Secret(key) and secret != Secret(key + "x") and secret != key
    assert hash(secret) == hash(Secret(key)) != hash(Secret(key + "x"))
    assert len({secret, Secret(key), Secret(key + "x")}) == 2
    with pytest.raises(TypeError, match=r"^a Secret cannot be pickled$"):
        pickle.dumps(secret)
    with pytest.raises(TypeError, match=r"^a Secret cannot be pickled$"):
        copy.copy(secret)


def test_surrounding_white_space_is_dropped() -> None:
    assert Secret("  sk-abc123\n").reveal() == "sk-abc123"


def test_a_pasted_key_with_an_accent_is_one_line_through_the_magic(
    shell: Any, monkeypatch: Any, fake: FakeOpenAIServer
) -> None:
    pasted = TYPED_KEY[:20] + "é" + TYPED_KEY[20:]
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pasted)
    _line(shell, f"endpoint {fake.base_url}")
    with pytest.raises(UsageError) as info:
        _line(shell, "key")
    message = str(info.value)
    assert "non-ASCII character 'é'" in message and TYPED_KEY[:20] not in message
    assert fake.requests == []


def test_an_environment_key_with_a_line_break_fails_in_one_line(
    fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TYPED_KEY[:30] + "\n" + TYPED_KEY[30:])
    session = ChatSession(Settings(model="gpt-4o-mini"), cache=False)
    try:
        with pytest.raises(ChatError) as info:
            session.ask("hello")
        assert "a line break" in str(info.value) and TYPED_KEY[:30] not in str(info.value)
        assert not isinstance(info.value, UnicodeError) and info.value.__context__ is None
        assert fake.requests == []
    finally:
        session.close()


def test_extra_headers_that_cannot_be_sent_are_refused_when_set() -> None:
    from ipychat.net.client import ChatClient

    with pytest.raises(ConfigError, match="cannot be sent in HTTP"):
        ChatClient("https://api.example/v1", api_key=TYPED_KEY, headers={"X-Team": "Zürich"})
