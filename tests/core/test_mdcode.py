"""ipychat.core.mdcode on its own: where code is in Markdown (CommonMark 4.4 indented code,
4.5 fenced code, 6.1 code spans), as (start, end) offsets, since everything ipychat rewrites
in a reply (dollars, HTML, images) must leave those ranges byte for byte. Each case pins
behaviour a mutation of the module showed unpinned (`python tools/mutation.py core.mdcode
--tests tests/core/test_markdown.py --tests tests/core/test_mdcode.py`)."""

from __future__ import annotations

import pytest

from ipychat.core.mdcode import CodeMap, close_fences, code_regions, fenced, is_escaped


@pytest.mark.parametrize(
    ("text", "regions"),
    [
        # Code spans: a backtick run closed by a run of the same length, in one paragraph.
        ("a `x` b", [(2, 5)]),
        ("``a`b``", [(0, 7)]),
        ("`a ``b`` c", [(3, 8)]),
        ("`a`b`c`", [(0, 3), (4, 7)]),
        ("`` ` ``", [(0, 7)]),
        ("a ` b", []),
        ("`a\nb`", [(0, 5)]),  # a line break does not end a span
        ("`a\n\nb` `c`", [(5, 8)]),  # a blank line does
        ("`a `` b\n\nc` d", []),  # a run of another length closes nothing
        ("`a\n```\nx`\n```\n\nz `y`", [(3, 13), (17, 20)]),  # nor into a block
        # A backslash escapes a backtick outside code; an escaped backslash does not.
        ("a \\`x` b `y`", [(5, 10)]),
        ("\\``x`", [(2, 5)]),
        ("`a` \\\\`b`", [(0, 3), (6, 9)]),
        ("\\\\\\`a`", []),
        # Fenced blocks: closed by the same character, at least as long, with no info.
        ("```\nx\n```", [(0, 9)]),
        ("~~~\nx\n~~~", [(0, 9)]),
        ("```\nx\n~~~\ny\n```", [(0, 15)]),
        ("````\n```\n````", [(0, 13)]),
        ("```a\n```b\n```", [(0, 13)]),
        ("~~~ `x`\ncode\n~~~", [(0, 16)]),  # a tilde fence's info may hold backticks
        ("```js `x`\ncode", [(6, 9)]),  # a backtick fence's may not: a span, no fence
        ("```\r\nx\r\n```\r\nafter `y`", [(0, 11), (19, 22)]),
        ("x  \n```\ncode\n```", [(4, 16)]),
        (" ```\nx\n ```", [(0, 11)]),
        ("```\nx\n```  \nafter", [(0, 11)]),  # a closing fence's trailing spaces are in
        ("```\nx\n```X\ny\n```", [(0, 16)]),  # "```X" closes nothing
        # Indented blocks: four spaces after a blank line (or at the start), not in a list.
        ("text\n\n    code\n    more\nafter", [(6, 24)]),
        ("text\n    not code", []),
        ("    code at start\ntext", [(0, 18)]),
        ("    a\n\n    b\nc", [(0, 13)]),
        ("a\n\n    code\n```\nfenced\n```", [(3, 12), (12, 26)]),
        ("- item\n\n    continuation", []),
        ("para\n\n  - a\n\n    b", []),
        ("- item\ntext\n\n    code", [(13, 21)]),  # the list ended at "text"
        ("1. item\n\n    cont\n\nfoo\n\n    code", [(24, 32)]),
        ("- a\n  ```\n  x\n  ```\n\n    after list", [(4, 19)]),
    ],
)
def test_code_regions(text: str, regions: list[tuple[int, int]]) -> None:
    assert code_regions(text) == regions
    code = CodeMap(text)
    inside = {i for start, end in regions for i in range(start, end)}
    assert [code.contains(i) for i in range(len(text) + 1)] == [
        i in inside for i in range(len(text) + 1)
    ]


@pytest.mark.parametrize(
    ("text", "fence"),
    [("```\ncode", "```"), ("~~~~\ncode\n~~~", "~~~~"), ("```\nx\n```", None), ("`x`", None)],
)
def test_the_fence_a_text_ends_inside(text: str, fence: str | None) -> None:
    assert CodeMap(text).open_fence == fence
    closed = close_fences(text)
    assert closed == (text if fence is None else text + "\n" + fence)
    assert CodeMap(closed).open_fence is None


@pytest.mark.parametrize(
    ("text", "pos", "escaped"),
    [
        ("\\$", 1, True),
        ("x$", 1, False),
        ("$", 0, False),
        ("\\\\$", 2, False),
        ("a\\\\\\$", 4, True),
        ("\\\\\\\\$", 4, False),
        ("a\\b\\$", 4, True),
        ("$x\\", 0, False),  # a backslash at the end of the text is not before it
        ("\\$x\\", 1, True),
    ],
)
def test_is_escaped_counts_the_backslashes(text: str, pos: int, escaped: bool) -> None:
    assert is_escaped(text, pos) is escaped


def test_fenced_is_longer_than_any_backtick_run_inside() -> None:
    assert fenced("") == "```\n\n```"
    assert fenced("`") == "```\n`\n```"
    assert fenced("``") == "```\n``\n```"
    assert fenced("a ```` b", "py") == "`````py\na ```` b\n`````"
