"""Token counts: equal to tiktoken's own, offline, from the files bundled in the package.

The reference is tiktoken's public loader (`tiktoken.get_encoding`) pointed at a temporary
TIKTOKEN_CACHE_DIR holding the bundled files under the names it expects (sha1 of the download
URL): that proves our hand-built encodings equal what tiktoken would build, without network.
Every test here runs with socket connections patched to fail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken.model
import tiktoken_ext.openai_public as openai_public

import ipychat
from ipychat.core import tokens
from ipychat.core.errors import ChatError

DATA_DIR = Path(ipychat.__file__).resolve().parent / "data"
ROOT = DATA_DIR.parent.parent
ENCODINGS = ("cl100k_base", "o200k_base")
URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def _refuse(*args: object, **kwargs: object) -> None:
    raise OSError("network disabled by the test")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)


@pytest.fixture(autouse=True)
def fresh_lookups() -> None:
    """Each test resolves model names afresh: `encoding_name_for` is memoised per process,
    and an answer remembered from another test would hide what this one checks."""
    tokens.encoding_name_for.cache_clear()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tiktoken.Encoding]]:
    """tiktoken's own encodings, loaded by tiktoken's loader from a pre-filled cache dir."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ENCODINGS:
        key = hashlib.sha1(URL.format(name).encode()).hexdigest()
        shutil.copy(DATA_DIR / f"{name}.tiktoken", cache / key)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        # A cache miss would download with no timeout: make it fail fast instead.
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket, "getaddrinfo", _refuse)
        loaded = {name: tiktoken.get_encoding(name) for name in ENCODINGS}
    yield loaded


TEXTS = [
    "",
    "hello world",
    "Hello, World! How's it going? I'm fine; you'll see.",
    "東京は日本の首都です。数据分析和机器学习。한국어 텍스트도 있습니다.",
    "emoji 🙂🚀 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽",
    "accents: café naïve résumé Ångström façade; combining: cafe\u0301 n\u0303",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
    "def f(x: int) -> int:\n    return x ** 2  # comment\n\n\tindent\r\nwindows",
    "    leading and trailing spaces    \n\n\n",
    "numbers 1234567890 3.14159 1e-9 0x1F",
    "special-looking text <|endoftext|> and <|fim_prefix|> stays plain text",
    "a" * 5000,
    "lone surrogate \ud800 here",
]


# ---------------------------------------------------------------------------------------------
# The bundled encodings are tiktoken's encodings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODINGS)
def test_spec_matches_tiktoken_ext(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pattern, special tokens and sha256 are those of tiktoken_ext/openai_public.py."""
    seen: dict[str, Any] = {}

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.update(url=url, expected_hash=expected_hash)
        return {b"x": 0}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    expected = openai_public.ENCODING_CONSTRUCTORS[name]()
    spec = tokens._SPECS[name]
    assert spec.pat_str == expected["pat_str"]
    assert dict(spec.special_tokens) == expected["special_tokens"]
    assert spec.sha256 == seen["expected_hash"]
    assert seen["url"].rsplit("/", 1)[1] == spec.file


@pytest.mark.parametrize("name", ENCODINGS)
def test_bundled_files_have_tiktokens_hash(name: str) -> None:
    data = (DATA_DIR / f"{name}.tiktoken").read_bytes()
    assert hashlib.sha256(data).hexdigest() == tokens._SPECS[name].sha256


@pytest.mark.parametrize("name", ENCODINGS)
def test_parse_equals_load_tiktoken_bpe(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # "" = no cache: read the local file directly
    path = str(DATA_DIR / f"{name}.tiktoken")
    theirs = tiktoken.load.load_tiktoken_bpe(path, expected_hash=tokens._SPECS[name].sha256)
    assert tokens._parse_bpe(Path(path).read_bytes()) == theirs


@pytest.mark.parametrize("name", ENCODINGS)
def test_encoding_equals_tiktoken_loader(
    name: str, reference: Mapping[str, tiktoken.Encoding]
) -> None:
    ours, theirs = tokens.get_encoding(name), reference[name]
    assert ours is not theirs  # ours was built without tiktoken's loader
    assert ours.name == theirs.name
    assert ours.n_vocab == theirs.n_vocab
    assert ours.max_token_value == theirs.max_token_value
    assert ours.special_tokens_set == theirs.special_tokens_set
    for text in TEXTS:
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text), text
        assert ours.encode(text, disallowed_special=()) == theirs.encode(
            text, disallowed_special=()
        )


def test_encodings_load_once() -> None:
    assert tokens.get_encoding("o200k_base") is tokens.get_encoding("o200k_base")
    with pytest.raises(ValueError, match="bundled"):
        tokens.get_encoding("p50k_base")


def test_concurrent_first_use_loads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_encodings", {})
    real_load = tokens._load
    calls: list[str] = []

    def slow_load(name: str) -> tiktoken.Encoding:
        calls.append(name)
        time.sleep(0.05)  # widen the race window
        return real_load(name)

    monkeypatch.setattr(tokens, "_load", slow_load)
    results: list[tiktoken.Encoding] = []
    threads = [
        threading.Thread(target=lambda: results.append(tokens.get_encoding("cl100k_base")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["cl100k_base"]
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert results[0].name == "cl100k_base"


def test_an_unknown_encoding_names_the_bundled_ones() -> None:
    with pytest.raises(ValueError) as info:
        tokens.get_encoding("p50k_base")
    assert str(info.value) == "unknown encoding 'p50k_base'; bundled: cl100k_base, o200k_base"


def test_warm_loads_the_encodings_of_the_given_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_encodings", {})
    tokens.warm(["gpt-4", "llama3"])  # cl100k, and o200k for a model tiktoken does not know
    assert sorted(tokens._encodings) == ["cl100k_base", "o200k_base"]
    monkeypatch.setattr(tokens, "_encodings", {})
    tokens.warm()
    assert list(tokens._encodings) == ["o200k_base"]  # gpt-4o by default


def test_corrupted_file_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(tokens, "_read_bundled", lambda file: b"not the real file")
    with pytest.raises(ChatError) as info:
        tokens.get_encoding("o200k_base")
    assert str(info.value) == (
        "ipychat/data/o200k_base.tiktoken is corrupted (sha256 mismatch): reinstall ipychat"
    )


def test_missing_file_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(file: str) -> bytes:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(tokens, "_read_bundled", missing)
    with pytest.raises(ChatError) as info:
        tokens.get_encoding("cl100k_base")
    assert str(info.value) == (
        "ipychat/data/cl100k_base.tiktoken is missing (No such file or directory): "
        "reinstall ipychat"
    )


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"YQ== 0 Yg==", "odd number of fields"),
        (b"YQ== zero", "invalid literal for int() with base 10: b'zero'"),
    ],
)
def test_an_unreadable_file_is_a_one_line_error(
    data: bytes, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose hash matches but whose lines are not `<base64> <rank>` (a spec and a file
    updated out of step)."""
    spec = tokens._SPECS["cl100k_base"]
    specs = {**tokens._SPECS, "cl100k_base": replace(spec, sha256=hashlib.sha256(data).hexdigest())}
    monkeypatch.setattr(tokens, "_SPECS", specs)
    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(tokens, "_read_bundled", lambda file: data)
    with pytest.raises(ChatError) as info:
        tokens.get_encoding("cl100k_base")
    assert str(info.value) == (
        f"ipychat/data/cl100k_base.tiktoken is unreadable ({why}): reinstall ipychat"
    )


# ---------------------------------------------------------------------------------------------
# Model → encoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding", "exact"),
    [
        ("gpt-4o", "o200k_base", True),
        ("gpt-4o-mini", "o200k_base", True),
        ("gpt-4o-2024-08-06", "o200k_base", True),
        ("chatgpt-4o-latest", "o200k_base", True),
        ("gpt-4.1", "o200k_base", True),
        ("gpt-4.1-nano-2025-04-14", "o200k_base", True),
        ("gpt-5", "o200k_base", True),
        ("gpt-5-mini", "o200k_base", True),
        ("o1", "o200k_base", True),
        ("o1-mini", "o200k_base", True),
        ("o3", "o200k_base", True),
        ("o3-mini-2025-01-31", "o200k_base", True),
        ("o4-mini", "o200k_base", True),
        ("gpt-4", "cl100k_base", True),
        ("gpt-4-0613", "cl100k_base", True),
        ("gpt-4-turbo", "cl100k_base", True),
        ("gpt-3.5-turbo", "cl100k_base", True),
        ("gpt-3.5-turbo-0125", "cl100k_base", True),
        ("gpt-35-turbo", "cl100k_base", True),  # Azure spelling
        ("gpt-35-turbo-16k", "cl100k_base", True),
        ("GPT-4o", "o200k_base", True),
        (" gpt-4o ", "o200k_base", True),
        ("openai/gpt-4o", "o200k_base", True),
        ("openrouter/openai/gpt-4.1-mini", "o200k_base", True),
        ("azure/gpt-35-turbo", "cl100k_base", True),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base", True),
        ("ft:gpt-3.5-turbo-0125:acme::abc123", "cl100k_base", True),
        # not OpenAI's tokenizer, or not one we bundle: o200k, approximate
        ("local", "o200k_base", False),
        ("llama3.2", "o200k_base", False),
        ("meta-llama/Llama-3.1-8B-Instruct", "o200k_base", False),
        ("claude-3-5-sonnet-latest", "o200k_base", False),
        ("mistral-large-latest", "o200k_base", False),
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "o200k_base", False),
        ("gpt-oss-20b", "o200k_base", False),  # o200k_harmony: same BPE, other chat template
        ("text-davinci-003", "o200k_base", False),  # p50k_base is not bundled
        ("", "o200k_base", False),
    ],
)
def test_model_to_encoding(model: str, encoding: str, exact: bool) -> None:
    assert tokens.encoding_name_for(model) == (encoding, exact)
    assert tokens.is_exact(model) is exact
    enc, got_exact = tokens.encoding_for(model)
    assert (enc.name, got_exact) == (encoding, exact)


def test_follows_tiktokens_map_for_every_bundled_model() -> None:
    for model, name in tiktoken.model.MODEL_TO_ENCODING.items():
        if name in ENCODINGS:
            assert tokens.encoding_name_for(model) == (name, True), model
    for prefix, name in tiktoken.model.MODEL_PREFIX_TO_ENCODING.items():
        if name in ENCODINGS:
            assert tokens.encoding_name_for(prefix + "2099-01-01") == (name, True), prefix


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", "llama3"])
def test_count_text_equals_tiktoken(model: str, reference: Mapping[str, tiktoken.Encoding]) -> None:
    ref = reference[tiktoken.model.MODEL_TO_ENCODING.get(model, "o200k_base")]
    tokens.clear_cache()
    for text in TEXTS:
        expected = len(ref.encode_ordinary(text))
        assert tokens.count_text(text, model) == expected, text
        assert tokens.count_text(text, model) == expected, text  # again, from the cache


def test_special_token_text_is_plain_text(reference: Mapping[str, tiktoken.Encoding]) -> None:
    # The API does not let user text inject <|endoftext|>; tiktoken's encode() would refuse it.
    text = "<|endoftext|>"
    assert tokens.count_text(text, "gpt-4o") == len(reference["o200k_base"].encode_ordinary(text))
    assert tokens.count_text(text, "gpt-4o") > 1


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-3.5-turbo"])
def test_count_batch(model: str, reference: Mapping[str, tiktoken.Encoding]) -> None:
    ref = reference[tokens.encoding_name_for(model)[0]]
    assert tokens.count_batch(TEXTS, model) == [len(ref.encode_ordinary(t)) for t in TEXTS]
    assert tokens.count_batch(iter(TEXTS), model) == [tokens.count_text(t, model) for t in TEXTS]
    assert tokens.count_batch([], model) == []


def cookbook_count(enc: tiktoken.Encoding, messages: Sequence[Mapping[str, Any]]) -> int:
    """The OpenAI cookbook's formula, written independently of ipychat.core.tokens."""
    n = 3
    for message in messages:
        n += 3
        for key, value in message.items():
            if isinstance(value, list):
                value = "".join(p["text"] for p in value)
            n += len(enc.encode(value, disallowed_special=()))
            if key == "name":
                n += 1
    return n


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **extra}


MESSAGE_CASES: dict[str, list[dict[str, Any]]] = {
    "no messages": [],
    "one user": [user("hello world")],
    "system, user, assistant": [
        {"role": "system", "content": "You are a terse assistant."},
        user("What is the capital of France?"),
        {"role": "assistant", "content": "Paris."},
        user("And of Japan?"),
    ],
    "names": [
        {"role": "system", "name": "example_user", "content": "New synergies will help."},
        {"role": "system", "name": "example_assistant", "content": "Things working well."},
        user("Hi", name="Ada"),
    ],
    "empty content": [user(""), {"role": "assistant", "content": ""}],
    "empty message": [{}],
    "CJK": [user("東京は日本の首都です。这是一个测试。")],
    "emoji": [user("ship it 🚀🚀🚀 👨‍👩‍👧‍👦")],
    "accents": [user("Crème brûlée, smörgåsbord, jalapeño, cafe\u0301")],
    "mixed scripts with name": [user("Привет, мир! مرحبا 🌍", name="Иван")],
    "special-looking text": [user("say <|endoftext|> literally")],
    "long": [user("The quick brown fox jumps over the lazy dog. " * 400)],
    "list content": [user([{"type": "text", "text": "Summarise: naïve café 東京 🙂"}])],
}


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4.1-mini", "gpt-4", "gpt-3.5-turbo-0125"])
@pytest.mark.parametrize("case", list(MESSAGE_CASES))
def test_count_messages_equals_tiktoken_plus_overhead(
    case: str, model: str, reference: Mapping[str, tiktoken.Encoding]
) -> None:
    messages = MESSAGE_CASES[case]
    expected = cookbook_count(reference[tokens.encoding_name_for(model)[0]], messages)
    assert tokens.count_messages(messages, model) == tokens.TokenCount(expected, False)


def test_overhead_formula_by_hand(reference: Mapping[str, tiktoken.Encoding]) -> None:
    enc = reference["o200k_base"]
    one = tokens.count_messages([user("hello world")], "gpt-4o").tokens
    assert one == 3 + len(enc.encode("user")) + len(enc.encode("hello world")) + 3
    named = tokens.count_messages([user("hello world", name="bob")], "gpt-4o").tokens
    assert named == one + len(enc.encode("bob")) + 1
    assert tokens.count_messages([], "gpt-4o") == tokens.TokenCount(3, False)


def test_list_content_counts_each_text_part(reference: Mapping[str, tiktoken.Encoding]) -> None:
    enc = reference["o200k_base"]
    parts = [
        {"type": "text", "text": "Describe "},
        {"type": "text", "text": "東京 🙂"},
        "plain string part",
    ]
    overhead = 3 + len(enc.encode("user")) + 3  # message, role, reply priming
    texts = ("Describe ", "東京 🙂", "plain string part")
    expected = overhead + sum(len(enc.encode_ordinary(t)) for t in texts)
    # several parts are counted apart, and flagged: the server may join them before tokenizing
    assert tokens.count_messages([user(parts)], "gpt-4o") == tokens.TokenCount(expected, True)
    # one text part counts exactly like the same string
    single = tokens.count_messages([user("hello world")], "gpt-4o")
    assert tokens.count_messages([user([{"type": "text", "text": "hello world"}])], "gpt-4o") == (
        single
    )


def test_images_of_unknown_size_err_high() -> None:
    """A remote image's size is unknown: counted at the most an image can cost ("≈"); a
    "low" image costs gpt-4o's flat, documented 85 tokens whatever its size (exact)."""
    base = tokens.count_messages([user([{"type": "text", "text": "What is this?"}])], "gpt-4o")
    low = tokens.count_messages(
        [
            user(
                [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}},
                ]
            )
        ],
        "gpt-4o",
    )
    high = tokens.count_messages(
        [
            user(
                [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ]
            )
        ],
        "gpt-4o",
    )
    assert low == tokens.TokenCount(base.tokens + tokens.IMAGE_TOKENS_LOW, False)
    assert high == tokens.TokenCount(base.tokens + tokens.IMAGE_TOKENS_HIGH, True)


def test_tool_calls_count_as_json_and_are_approximate(
    reference: Mapping[str, tiktoken.Encoding],
) -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
        }
    ]
    messages = [
        user("Weather in Zürich?"),
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    counted = tokens.count_messages(messages, "gpt-4o")
    enc = reference["o200k_base"]
    calls_json = json.dumps(calls, ensure_ascii=False, separators=(",", ":"))
    without_calls = cookbook_count(enc, [messages[0], {"role": "assistant"}, messages[2]])
    assert counted == tokens.TokenCount(without_calls + len(enc.encode(calls_json)), True)


def test_unknown_model_is_approximate_o200k(reference: Mapping[str, tiktoken.Encoding]) -> None:
    messages = MESSAGE_CASES["system, user, assistant"]
    counted = tokens.count_messages(messages, "llama3.2:3b")
    assert counted == tokens.TokenCount(cookbook_count(reference["o200k_base"], messages), True)


def test_count_messages_rejects_a_string() -> None:
    for wrong in ("hello", b"hello"):
        with pytest.raises(TypeError) as info:
            tokens.count_messages(wrong, "gpt-4o")  # type: ignore[arg-type]
        assert str(info.value) == (
            "count_messages takes a list of message dicts; use count_text for a string"
        )


def _content(content: Any) -> tuple[int, bool]:
    """(tokens, approximate) of `content` alone: a user message's count less the message
    around it."""
    around = tokens.count_messages([user("")], "gpt-4o").tokens
    counted = tokens.count_messages([user(content)], "gpt-4o")
    return counted.tokens - around, counted.approximate


def test_each_kind_of_content_part(reference: Mapping[str, tiktoken.Encoding]) -> None:
    """Text parts of every name are counted as text; a refusal as its text; images at a
    flat rate by detail; anything else (a part that is not a dict, audio, a file, a part of
    an unknown type even with a "text" field) as its JSON text, approximately."""
    enc = reference["o200k_base"]

    def n(text: str) -> int:
        return len(enc.encode_ordinary(text))

    for kind in ("text", "input_text", "output_text"):
        assert _content([{"type": kind, "text": "naïve café"}]) == (n("naïve café"), False)
    assert _content(["just a string"]) == (n("just a string"), False)
    assert _content([{"type": "refusal", "refusal": "I can't help"}]) == (n("I can't help"), False)
    assert _content(["one", "two"]) == (n("one") + n("two"), True)  # parts counted apart
    two_texts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert _content(two_texts) == (n("one") + n("two"), True)
    refusals = [{"type": "refusal", "refusal": "no"}, {"type": "refusal", "refusal": "never"}]
    assert _content(["first", *refusals]) == (n("first") + n("no") + n("never"), True)
    image = {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}
    assert _content([image]) == (tokens.IMAGE_TOKENS_LOW, False)
    assert _content([{**image, "detail": "high"}]) == (tokens.IMAGE_TOKENS_HIGH, True)
    audio = {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}
    other = {"type": "file", "file": {"file_id": "f-1"}, "text": "not a text part"}
    not_a_refusal = {"type": "refusal", "refusal": None}
    for part in (audio, other, not_a_refusal, 42, ["nested"]):
        text = json.dumps(part, separators=(",", ":"))
        assert _content([part]) == (n(text), True), part  # alone: approximate all the same
        expected = n("before") + n(text) + n("after")
        assert _content(["before", part, "after"]) == (expected, True), part
    assert _content({"type": "text", "text": "a dict, not a list"}) == (
        n('{"type":"text","text":"a dict, not a list"}'),
        True,
    )


def test_fields_that_are_not_json_count_as_their_text(
    reference: Mapping[str, tiktoken.Encoding],
) -> None:
    """A value JSON cannot hold (a datetime) is written as its str(); non-ASCII stays as it
    is (not \\u escapes, which would count several tokens a character)."""
    enc = reference["o200k_base"]
    meta = {"when": dt.datetime(2024, 1, 15, 10, 30), "city": "Zürich 東京"}
    counted = tokens.count_messages([{"role": "user", "metadata": meta}], "gpt-4o")
    text = '{"when":"2024-01-15 10:30:00","city":"Zürich 東京"}'
    assert counted == tokens.TokenCount(
        3 + len(enc.encode("user")) + len(enc.encode(text)) + 3, True
    )


def test_token_count_is_an_int_when_asked() -> None:
    assert int(tokens.TokenCount(412, True)) == 412


# ---------------------------------------------------------------------------------------------
# Cache and truncation
# ---------------------------------------------------------------------------------------------


def test_repeated_history_is_served_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens.clear_cache()
    history = [user("a question that is long enough to be worth caching " * 3)] * 20
    first = tokens.count_messages(history, "gpt-4o")
    enc = tokens.get_encoding("o200k_base")
    calls: list[str] = []
    real = enc.encode_ordinary

    def spy(text: str) -> list[int]:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(enc, "encode_ordinary", spy)
    assert tokens.count_messages(history, "gpt-4o") == first
    assert all(len(t) < tokens._CACHE_MIN_CHARS for t in calls)  # only roles were re-encoded


def test_texts_from_64_characters_are_cached() -> None:
    tokens.clear_cache()
    tokens.count_text("a" * 63, "gpt-4o")
    assert len(tokens._cache) == 0  # encoding a short text costs about a lookup
    tokens.count_text("a" * 64, "gpt-4o")
    assert len(tokens._cache) == 1


def test_the_cache_holds_exactly_its_limit() -> None:
    cache = tokens._CountCache(max_chars=10)
    cache.put(("e", "x" * 10), 1)  # as large as the whole cache: kept
    assert cache.get(("e", "x" * 10)) == 1
    cache.clear()
    for text in ("aaaa", "bbb", "ccc"):  # 10 characters in all
        cache.put(("e", text), len(text))
    assert len(cache) == 3
    cache.put(("e", "d"), 1)  # 11: the oldest goes
    assert cache.get(("e", "aaaa")) is None and len(cache) == 3


def test_cache_is_bounded_by_characters() -> None:
    cache = tokens._CountCache(max_chars=100)
    for i in range(10):
        cache.put(("e", f"{i}" * 30), i)
    assert len(cache) == 3  # 3 x 30 characters fit in 100
    assert cache.get(("e", "9" * 30)) == 9
    assert cache.get(("e", "0" * 30)) is None
    cache.put(("e", "x" * 101), 1)  # larger than the whole cache: not kept
    assert cache.get(("e", "x" * 101)) is None
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-3.5-turbo"])
@pytest.mark.parametrize("text", TEXTS[1:])
@pytest.mark.parametrize("limit", [1, 3, 10])
def test_truncate(text: str, model: str, limit: int) -> None:
    cut = tokens.truncate(text, limit, model)
    assert tokens.count_text(cut, model) <= limit
    assert "\ufffd" not in cut or "\ufffd" in text
    if "\ud800" not in text:  # the lone surrogate is replaced while encoding
        assert text.startswith(cut)
    if tokens.count_text(text, model) <= limit:
        assert cut == text


def test_truncate_edges() -> None:
    assert tokens.truncate("hello world", 0, "gpt-4o") == ""
    assert tokens.truncate("hello world", -1, "gpt-4o") == ""
    assert tokens.truncate("hello world", 1, "gpt-4o") == "hello"
    assert tokens.truncate("hello world", 2, "gpt-4o") == "hello world"
    assert tokens.truncate("hello world", 100, "gpt-4o") == "hello world"
    assert tokens.truncate("🙂🙂🙂", 1, "gpt-4o") in ("", "🙂")
    # A text that fits is returned as it is, even one that would not survive a round trip
    # through the tokens (a lone surrogate is encoded as U+FFFD).
    odd = "lone surrogate \ud800 here"
    assert tokens.truncate(odd, tokens.count_text(odd, "gpt-4o"), "gpt-4o") == odd


class _MergingEncoding:
    """A toy tokenizer with the methods truncate uses (tiktoken.Encoding.encode_ordinary and
    decode_bytes: https://github.com/openai/tiktoken/blob/main/tiktoken/core.py): one token
    per character, and one more when the text ends in "x", so a cut just after an "x"
    re-encodes longer than the tokens it was cut from. No text and bundled encoding found
    to do this (fuzzed), but BPE does not promise it cannot: truncate re-checks."""

    def encode_ordinary(self, text: str) -> list[int]:
        return [ord(c) for c in text] + ([0] if text.endswith("x") else [])

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        return "".join(chr(t) for t in tokens if t).encode()


def test_truncate_shortens_a_cut_until_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "encoding_for", lambda model: (_MergingEncoding(), True))
    assert tokens.truncate("abxxcd", 3, "toy") == "ab"  # "abx" is 4 tokens
    assert tokens.truncate("abxxcd", 4, "toy") == "abx"  # "abxx" is 5
    assert tokens.truncate("xxxxy", 1, "toy") == ""  # even "x" is 2 tokens


# ---------------------------------------------------------------------------------------------
# No network, and the files come from the package (in a fresh interpreter)
# ---------------------------------------------------------------------------------------------

PROBE = r"""
import json, socket, sys

events = []

def audit(event, args):
    if event == "open" and isinstance(args[0], str):
        events.append(["open", args[0]])
    elif event.startswith("socket.") or event.startswith("urllib."):
        events.append([event, repr(args)[:200]])

sys.addaudithook(audit)

def refuse(*args, **kwargs):
    raise OSError("network disabled by the test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from ipychat.core import tokens

messages = json.loads(sys.argv[1])
counts = {
    model: [tokens.count_messages(messages, model).tokens, tokens.count_text("héllo 東京", model)]
    for model in ("gpt-4o", "gpt-4", "llama3")
}
net_modules = sorted(
    m for m in sys.modules if m.split(".")[0] in ("requests", "urllib3", "blobfile", "httpx")
)
print(json.dumps({"counts": counts, "events": events, "net_modules": net_modules}))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("empty-tiktoken-cache")
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(cache),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    messages = MESSAGE_CASES["names"]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(messages)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    result["cache_dir"] = cache
    result["cache_after"] = sorted(p.name for p in cache.iterdir())
    result["messages"] = messages
    return result


def test_counting_attempts_no_network(
    probe: dict[str, Any], reference: Mapping[str, tiktoken.Encoding]
) -> None:
    o200k, cl100k = reference["o200k_base"], reference["cl100k_base"]
    messages = probe["messages"]
    assert probe["counts"] == {
        "gpt-4o": [cookbook_count(o200k, messages), len(o200k.encode("héllo 東京"))],
        "gpt-4": [cookbook_count(cl100k, messages), len(cl100k.encode("héllo 東京"))],
        "llama3": [cookbook_count(o200k, messages), len(o200k.encode("héllo 東京"))],
    }
    assert [e for e in probe["events"] if e[0] != "open"] == []  # no socket.* event at all
    assert probe["net_modules"] == []  # tiktoken's downloader (requests) was never imported
    assert probe["cache_after"] == []  # and tiktoken's cache was neither read nor filled


def test_encoding_files_are_read_from_the_package(probe: dict[str, Any]) -> None:
    opened = [Path(path).resolve() for kind, path in probe["events"] if kind == "open"]
    bpe_files = [p for p in opened if p.suffix == ".tiktoken"]
    assert sorted(bpe_files) == sorted(DATA_DIR / f"{name}.tiktoken" for name in ENCODINGS)
    cache_dir = Path(probe["cache_dir"]).resolve()
    assert not [p for p in opened if cache_dir in p.parents or "shared" in p.parts]


# ----- count_messages_bound: an upper bound without an encoding -----------------------------


def test_messages_bound_is_the_exact_sum_of_bytes_and_overheads() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "héllo", "name": "ann"},
        {"role": "assistant", "content": None},
    ]
    expected = (
        tokens.REPLY_PRIMING
        + 3 * tokens.MESSAGE_OVERHEAD
        + len(b"system") + len(b"Be brief.")
        + len(b"user") + len("héllo".encode()) + len(b"ann") + tokens.NAME_OVERHEAD
        + len(b"assistant")
    )  # fmt: skip
    assert tokens.count_messages_bound(messages) == expected


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4", "some-unknown-model"])
def test_messages_bound_never_undercounts(model: str) -> None:
    messages = [
        {"role": "system", "content": "Réponds en français. 数字 1234567 ✓"},
        {"role": "user", "content": "x " * 300 + "🙂" * 20, "name": "bob"},
    ]
    bound = tokens.count_messages_bound(messages)
    assert bound is not None and bound >= tokens.count_messages(messages, model).tokens


def test_messages_bound_gives_up_on_content_parts() -> None:
    parts = [{"type": "text", "text": "hi"}]
    assert tokens.count_messages_bound([{"role": "user", "content": parts}]) is None
    assert tokens.count_messages_bound([]) == tokens.REPLY_PRIMING


def test_messages_bound_skips_a_none_field_and_reads_on() -> None:
    messages = [{"role": "assistant", "content": None, "name": "bo"}, {"role": "user"}]
    expected = (
        tokens.REPLY_PRIMING + 2 * tokens.MESSAGE_OVERHEAD
        + len(b"assistant") + len(b"bo") + tokens.NAME_OVERHEAD + len(b"user")
    )  # fmt: skip
    assert tokens.count_messages_bound(messages) == expected


def test_an_inline_image_is_counted_by_its_width_and_height() -> None:
    """OpenAI's formula for a 1024 × 512 PNG: gpt-4o scales it to 1024 × 512 (shortest side
    under 768), 2 × 1 tiles: 85 + 2 × 170 (https://platform.openai.com/docs/guides/images-vision)."""
    import struct

    from ipychat.core.images import image

    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 1024, 512) + b"\0" * 5
    part = image(png).part()
    text = {"type": "text", "text": "What is it?"}

    def counted(content: list[dict[str, Any]]) -> tokens.TokenCount:
        return tokens.count_messages([{"role": "user", "content": content}], "gpt-4o")

    both, alone = counted([text, part]), counted([text])
    assert both.tokens - alone.tokens == 85 + 2 * 170 and not both.approximate
    tall = image(png[:16] + struct.pack(">II", 512, 1024) + b"\0" * 5).part()
    assert counted([text, tall]).tokens == both.tokens  # turned: the same tiles
