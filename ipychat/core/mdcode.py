"""Where code is in Markdown: code blocks (fenced, indented) and inline code spans.

`ipychat.core.markdown` leaves everything inside code untouched; this module finds it
(`CodeMap`, `code_regions`), closes a fence a text ends inside (`close_fences`) and fences a
text whose own backticks must not end the block (`fenced`). Pure: standard library only.
"""

from __future__ import annotations

import bisect
import re

__all__ = [
    "BACKTICKS",
    "BLANK_LINE",
    "CodeMap",
    "close_fences",
    "code_regions",
    "fenced",
    "is_escaped",
]

# Fences may sit inside block quotes and list items (any indentation), as replies write them.
_FENCE_OPEN = re.compile(r"(?:[ \t]*>)*[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)")
_FENCE_CLOSE = re.compile(r"(?:[ \t]*>)*[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*")
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)")
BACKTICKS = re.compile(r"`+")
BLANK_LINE = re.compile(r"\n[ \t]*\n")


class CodeMap:
    """Code regions of a text: fenced and indented blocks, then inline code spans."""

    def __init__(self, text: str) -> None:
        self.open_fence: str | None = None  # the fence a text ends inside, if it does
        blocks = self._blocks(text)
        regions: list[tuple[int, int]] = []
        last = 0
        for start, end in blocks:
            regions.extend(_spans(text, last, start))
            regions.append((start, end))
            last = end
        regions.extend(_spans(text, last, len(text)))
        self.regions = regions
        self._starts = [s for s, _ in regions]

    def _blocks(self, text: str) -> list[tuple[int, int]]:
        blocks: list[tuple[int, int]] = []
        fence: tuple[str, int, int] | None = None  # (character, length, start)
        code_start: int | None = None  # an indented code block in progress
        previous_blank, in_list = True, False
        pos = 0
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            blank = not body.strip()
            if fence is not None:
                close = _FENCE_CLOSE.fullmatch(body)
                if close and close["fence"][0] == fence[0] and len(close["fence"]) >= fence[1]:
                    blocks.append((fence[2], pos + len(body)))
                    fence = None
            else:
                opening = _FENCE_OPEN.fullmatch(body)
                if opening and not (opening["fence"][0] == "`" and "`" in opening["info"]):
                    if code_start is not None:
                        blocks.append((code_start, pos))
                        code_start = None
                    fence = (opening["fence"][0], len(opening["fence"]), pos)
                elif not blank and _indent(body) >= 4 and not in_list:
                    if code_start is None and previous_blank:
                        code_start = pos
                elif not blank:
                    if code_start is not None:
                        blocks.append((code_start, pos))
                        code_start = None
                    if _LIST_ITEM.match(body):
                        in_list = True
                    elif _indent(body) == 0:
                        in_list = False
            previous_blank = blank and (code_start is None or previous_blank)
            pos += len(line)
        if fence is not None:
            blocks.append((fence[2], len(text)))
            self.open_fence = fence[0] * fence[1]
        if code_start is not None:
            blocks.append((code_start, len(text)))
        return blocks

    def contains(self, pos: int) -> bool:
        i = bisect.bisect_right(self._starts, pos) - 1
        return i >= 0 and pos < self.regions[i][1]


def _indent(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip(" "))


def _spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Inline code spans in text[start:end]: a backtick run closed by a run of equal length
    in the same paragraph (CommonMark 6.1)."""
    found: list[tuple[int, int]] = []
    pos = start
    while True:
        run = BACKTICKS.search(text, pos, end)
        if run is None:
            return found
        if is_escaped(text, run.start()):
            pos = run.start() + 1  # `\`` is a literal backtick; the rest may open a span
            continue
        stop = end
        blank = BLANK_LINE.search(text, run.end(), end)
        if blank is not None:
            stop = blank.start()
        closer = BACKTICKS.search(text, run.end(), stop)
        while closer is not None and len(closer.group()) != len(run.group()):
            closer = BACKTICKS.search(text, closer.end(), stop)
        if closer is None:
            pos = run.end()
        else:
            found.append((run.start(), closer.end()))
            pos = closer.end()


def is_escaped(text: str, pos: int) -> bool:
    """Whether text[pos] is backslash-escaped (an odd number of backslashes before it)."""
    n = 0
    while pos - n - 1 >= 0 and text[pos - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def code_regions(text: str) -> list[tuple[int, int]]:
    """(start, end) of every code block and code span of `text`, in order."""
    return list(CodeMap(text).regions)


# ----- fences ---------------------------------------------------------------------------------


def close_fences(text: str) -> str:
    """`text` with its last code fence closed if it was left open (a reply cut mid-block, or
    streaming), so the block cannot swallow the footer and the turns after it."""
    fence = CodeMap(text).open_fence
    if fence is None:
        return text
    return text + ("" if text.endswith("\n") else "\n") + fence


def fenced(text: str, info: str = "") -> str:
    """`text` as a fenced code block whose fence is longer than any backtick run inside."""
    longest = max((len(m.group()) for m in BACKTICKS.finditer(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"
