"""The SSE decoder on bytes: line ends, comments, multi-line data, UTF-8 and chunk boundaries."""

from __future__ import annotations

import random

import pytest

from ipychat.net.sse import ServerSentEvent, SSEDecoder


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def datas(*chunks: bytes) -> list[str]:
    return [e.data for e in decode(*chunks)]


def bytewise(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


OPENAI_STREAM = (
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
    b"data: [DONE]\n\n"
)


def test_plain_openai_stream() -> None:
    assert datas(OPENAI_STREAM) == [
        '{"choices":[{"delta":{"content":"Hel"}}]}',
        '{"choices":[{"delta":{"content":"lo"}}]}',
        "[DONE]",
    ]


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(end: bytes) -> None:
    body = OPENAI_STREAM.replace(b"\n", end)
    assert datas(body) == datas(OPENAI_STREAM)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_byte_by_byte_feeding_gives_the_same_events(end: bytes) -> None:
    body = OPENAI_STREAM.replace(b"\n", end)
    assert decode(*bytewise(body)) == decode(body)


def test_random_chunk_boundaries() -> None:
    body = (
        b": keep-alive\r\n\r\nevent: message\r\nid: 7\r\ndata: first line\r\n"
        b"data: second \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\r\n\r\n"
        b"data: [DONE]\r\n\r\n"
    )
    expected = [
        ServerSentEvent("first line\nsecond é€😀", event="message", id="7"),
        ServerSentEvent("[DONE]", id="7"),
    ]
    assert decode(body) == expected
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 12)))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert decode(*chunks) == expected


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    # "\r" ends one chunk and "\n" starts the next: that is one CRLF, not CR + empty line
    # (an empty line would dispatch the event early and split "a" and "b").
    assert datas(b"data: a\r", b"\ndata: b\r\n\r\n") == ["a\nb"]


def test_lone_cr_at_the_end_of_a_chunk_then_data() -> None:
    assert datas(b"data: a\r", b"\r", b"data: b\r\r") == ["a", "b"]


def test_comment_and_keepalive_lines_are_ignored() -> None:
    body = b": ping\n\n:another\ndata: x\n: in the middle\ndata: y\n\n"
    assert datas(body) == ["x\ny"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert datas(b"data: one\ndata: two\ndata:three\ndata\n\n") == ["one\ntwo\nthree\n"]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert datas(b"data:  two spaces\n\n") == [" two spaces"]


def test_event_id_and_retry_fields_are_kept() -> None:
    [event] = decode(b"event: delta\nid: 42\nretry: 1500\ndata: {}\n\n")
    assert event == ServerSentEvent("{}", event="delta", id="42", retry=1500)


def test_unknown_fields_are_tolerated() -> None:
    assert datas(b"foo: bar\nbaz\ndata: x\n\n") == ["x"]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: ping\n\nid: 3\n\n") == []


def test_event_type_does_not_leak_into_the_next_event() -> None:
    events = decode(b"event: special\ndata: a\n\ndata: b\n\n")
    assert [(e.event, e.data) for e in events] == [("special", "a"), (None, "b")]


def test_multibyte_utf8_split_by_chunk_boundary() -> None:
    text = "é€😀 Grüße"
    body = f"data: {text}\n\n".encode()
    start = body.index("€".encode())
    # cut inside the three bytes of €, and inside the four bytes of the emoji
    chunks = [body[: start + 1], body[start + 1 : start + 5], body[start + 5 :]]
    assert datas(*chunks) == [text]
    assert datas(*bytewise(body)) == [text]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert datas(b"data: a\xffb\n\n") == ["a\ufffdb"]


def test_leading_bom_is_dropped() -> None:
    assert datas(b"\xef\xbb\xbfdata: x\n\n") == ["x"]


def test_done_without_final_blank_line_is_flushed() -> None:
    decoder = SSEDecoder()
    assert [e.data for e in decoder.feed(b"data: a\n\ndata: [DONE]\n")] == ["a"]
    assert decoder.has_pending
    assert [e.data for e in decoder.flush()] == ["[DONE]"]


def test_unterminated_last_line_is_flushed() -> None:
    assert datas(b"data: [DONE]") == ["[DONE]"]


def test_truncated_stream_has_no_done() -> None:
    # the decoder reports what came; deciding that no [DONE] is an error is the client's job
    assert datas(b'data: {"a":1}\n\ndata: {"b"') == ['{"a":1}', '{"b"']


def test_empty_chunks_are_harmless() -> None:
    assert datas(b"", b"data: x\r", b"", b"\n", b"", b"\n") == ["x"]


def test_long_line_in_many_small_chunks() -> None:
    payload = b"x" * 100_000
    body = b"data: " + payload + b"\n\n"
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    assert datas(*chunks) == [payload.decode()]


def test_many_events_in_one_chunk() -> None:
    body = b"".join(b"data: %d\n\n" % i for i in range(1000))
    assert datas(body) == [str(i) for i in range(1000)]


# Pinned values: each test below fails on a specific change to the decoder that the
# tests above did not notice (found by mutation testing, tools/mutation.py).


def test_events_carry_none_for_fields_that_never_came() -> None:
    assert decode(b"data: x\n\n") == [ServerSentEvent("x", None, None, None)]


def test_an_event_without_data_resets_the_event_type() -> None:
    [event] = decode(b"event: ping\n\ndata: x\n\n")
    assert event == ServerSentEvent("x", None, None, None)


def test_cr_then_a_chunk_of_only_lf_then_a_blank_line() -> None:
    # The LF completes the CRLF; the next lone LF is a blank line that dispatches "a".
    # Keeping the skip-LF state after the first LF would swallow that blank line and
    # merge the two events.
    assert datas(b"data: a\r", b"\n", b"\n", b"data: b\n\n") == ["a", "b"]


def test_invalid_utf8_in_a_later_data_line_is_replaced() -> None:
    # The first line of a stream takes the general path; later data lines the fast path.
    assert datas(b"data: ok\ndata: \xff\xfeend\n\n") == ["ok\n\ufffd\ufffdend"]
    assert datas(b"data: 1\n\ndata: a\xc3\n\n") == ["1", "a\ufffd"]


def test_a_bom_counts_only_at_the_start_of_the_stream() -> None:
    # Later, U+FEFF is part of the field name, so "\ufeffdata" is an unknown field.
    assert datas(b"data: a\n\xef\xbb\xbfdata: b\n\n") == ["a"]
    assert datas(b"event: e\n\xef\xbb\xbfdata: b\n\ndata: c\n\n") == ["c"]


def test_a_bare_colon_line_is_a_comment() -> None:
    assert datas(b":\ndata: x\n:\n\n") == ["x"]


def test_an_id_holding_nul_is_ignored() -> None:
    [first, second] = decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert (first.id, second.id) == ("1", "1")  # the last valid id persists


def test_retry_must_be_all_digits_and_only_from_the_retry_field() -> None:
    [event] = decode(b"retry: abc\nfoo: 5\nretry: 12x\ndata: x\n\n")
    assert event.retry is None
    [event] = decode(b"retry: 7\ndata: x\n\n")
    assert event.retry == 7


def test_trailing_characters_of_a_data_line_are_kept_exactly() -> None:
    # Only the line end is removed: not spaces, tabs or any other character.
    assert datas(b"data: a  \t\r\ndata: XX\r\ndata: b \n\n") == ["a  \t\nXX\nb "]


def test_an_unterminated_line_in_pieces_is_joined_when_flushed() -> None:
    assert datas(b"data: a", b"b", b"c") == ["abc"]
    decoder = SSEDecoder()
    decoder.feed(b"data: x\n")
    decoder.feed(b"data: y")
    assert decoder.flush() == [ServerSentEvent("x\ny")]
    assert not decoder.has_pending


def test_a_leading_blank_line_is_a_line_of_its_own() -> None:
    # Nothing came before it, so it is not the second half of a CRLF; after it, a BOM is
    # no longer at the start of the stream and "\ufeffdata" is an unknown field.
    assert datas(b"\n\xef\xbb\xbfdata: x\n\n") == []
    assert datas(b"\n", b"data: y\n\n") == ["y"]
