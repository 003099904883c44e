"""What a cache entry is (ipychat.engine.cacheentry) on its own: which stored bytes decode
back to a reply and why the others are refused, and which replies may be stored at all. No
disk, no Redis: the stores' own tests (test_cache.py, test_stores.py) go through files and a
server; here each refusal is pinned word for word, and the mutation run
(`python tools/mutation.py engine.cacheentry`) has a test file of its own."""

from __future__ import annotations

import json
import sys
import zlib
from typing import Any

import pytest

from ipychat.engine.cacheentry import MAX_VALUE, UntrustedEntry, cacheable, decode

REPLY = {"text": "Bonjour", "model": "gpt-test", "finish_reason": "stop"}


def _stored(value: Any) -> bytes:
    """As the stores write a value: UTF-8 JSON."""
    return json.dumps(value).encode("utf-8")


def _refusal(data: Any) -> str:
    with pytest.raises(UntrustedEntry) as info:
        decode(data)
    return str(info.value)


def test_a_stored_reply_decodes_from_bytes_text_and_zlib() -> None:
    assert decode(_stored(REPLY)) == REPLY
    assert decode(json.dumps(REPLY)) == REPLY  # a str value (Redis with decode_responses)
    assert decode(zlib.compress(_stored(REPLY))) == REPLY
    unicode = {"text": "naïve café ✓ 日本"}
    assert decode(_stored(unicode)) == unicode
    assert decode(json.dumps(unicode, ensure_ascii=False)) == unicode
    assert decode(zlib.compress(json.dumps(unicode, ensure_ascii=False).encode())) == unicode


def test_a_value_that_is_not_bytes_or_text_is_refused_by_its_type() -> None:
    assert _refusal(None) == "a NoneType, not JSON"
    assert _refusal(12) == "a int, not JSON"
    assert _refusal(bytearray(_stored(REPLY))) == "a bytearray, not JSON"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\x04\x95 pickled", "not JSON (error)"),  # a pickle: not zlib either
        (b"{not json}", "not JSON (JSONDecodeError)"),
        (b'{"text": "\xff"}', "not JSON (UnicodeDecodeError)"),
        (zlib.compress(b"[1, 2]")[:-6], "not JSON (JSONDecodeError)"),  # cut: partial output
        (zlib.compress(b"\xff\xfe"), "not JSON (UnicodeDecodeError)"),
        (b"", "not JSON (JSONDecodeError)"),
    ],
)
def test_what_is_not_json_is_refused_naming_the_error(data: bytes, reason: str) -> None:
    assert _refusal(data) == reason


def test_json_nested_past_the_recursion_limit_is_refused() -> None:
    deep = "[" * (sys.getrecursionlimit() * 2) + "]" * (sys.getrecursionlimit() * 2)
    assert _refusal(zlib.compress(deep.encode())) == "not JSON (RecursionError)"


def test_a_zip_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"{" + b" " * MAX_VALUE + b'"text": "x"}', 9)
    assert len(bomb) < MAX_VALUE // 100
    assert _refusal(bomb) == "larger than any reply"


def test_a_value_exactly_at_the_limit_still_decodes() -> None:
    body = b'{"text": "x"' + b" " * (MAX_VALUE - len(b'{"text": "x"}')) + b"}"
    assert len(body) == MAX_VALUE
    assert decode(zlib.compress(body, 1)) == {"text": "x"}


@pytest.mark.parametrize(
    "value",
    [[REPLY], "text", 3, {"text": None}, {"text": 5}, {"reply": "Bonjour"}, {}],
)
def test_json_that_is_not_a_reply_object_is_refused(value: Any) -> None:
    assert _refusal(zlib.compress(_stored(value))) == "not a reply object"
    if isinstance(value, dict):  # uncompressed, only an object starts with "{"
        assert _refusal(_stored(value)) == "not a reply object"


def test_uncompressed_json_is_an_object_or_read_as_zlib() -> None:
    # Our JSON always starts with "{"; anything else is taken for zlib, and is not zlib.
    assert _refusal(b' {"text": "x"}') == "not JSON (error)"
    assert _refusal(_stored([REPLY])) == "not JSON (error)"


def test_a_reply_with_text_may_be_stored() -> None:
    assert cacheable(REPLY)
    assert cacheable({"text": "x"})  # no finish_reason: a reply all the same
    assert cacheable({"text": " x ", "finish_reason": "length"})  # cut, but not empty


@pytest.mark.parametrize(
    "value",
    [
        {"text": ""},
        {"text": " \n\t"},
        {"text": None, "finish_reason": "stop"},
        {"text": 7},
        {},
        {"text": "Sorry", "finish_reason": "error"},
        {"text": "[filtered]", "finish_reason": "content_filter"},
    ],
)
def test_an_empty_or_failed_reply_is_never_stored(value: dict[str, Any]) -> None:
    assert not cacheable(value)
