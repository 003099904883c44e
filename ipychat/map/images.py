"""Image columns of a %%chatmap: each row's image stands in its prompt as a marker until the
request is built, so rows stay strings (rendered by one `str.format`, de-duplicated by
value, shown in the plan) and the same picture in two rows is one request.

A column is an image column when the template says so (`{column:image}`: each value a path,
bytes, a PIL image, an `ipychat.image` or a Figure) or when its first non-null value is an
image (`{column}` over a column of PIL images or `ipychat.image`s). A value that cannot be
read is that row's error (`_error`); the other rows go on.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from ipychat.core.errors import ChatError
from ipychat.core.images import Image, image, is_image
from ipychat.core.messages import Content

__all__ = ["ImageSlots"]

# Unique per process: no cell value or template can hold it by chance.
_TAG = f"\x00ipychat-image-{uuid.uuid4().hex}-"
_MARK = re.compile(re.escape(_TAG) + r"(\d+)\x00")


class ImageSlots:
    """The images of a map's rows, by marker (see the module docstring)."""

    def __init__(self) -> None:
        self._images: list[Image] = []
        self._marks: dict[Image, str] = {}
        self.failed: set[int] = set()  # rows whose image could not be read

    def __bool__(self) -> bool:
        return bool(self._images)

    def column(
        self,
        values: Sequence[Any],
        nulls: Sequence[bool],
        kind: str,
        column: Any,
        row_errors: dict[int, str],
    ) -> list[str] | None:
        """Each row's marker for an image column (a row whose value cannot be read gets its
        error in `row_errors` and ""), or None when the column is text."""
        first = next((v for v, null in zip(values, nulls, strict=False) if not null), None)
        if kind == "text" and not is_image(first):
            return None
        detail = kind.partition("=")[2] or None
        marks: list[str] = []
        for i, value in enumerate(values):
            if i < len(nulls) and nulls[i]:
                marks.append("")  # the null rule (skip, or --fill-null) decides
                continue
            try:
                marks.append(self._mark(image(value, detail=detail)))
            except ChatError as exc:
                row_errors.setdefault(i, f"column {column!r}: {exc}")
                self.failed.add(i)
                marks.append("")
        return marks

    def _mark(self, picture: Image) -> str:
        mark = self._marks.get(picture)
        if mark is None:
            mark = self._marks[picture] = f"{_TAG}{len(self._images)}\x00"
            self._images.append(picture)
        return mark

    def content(self, prompt: str) -> Content:
        """The user message's content of a row: its text and image parts."""
        if _TAG not in prompt:
            return prompt
        parts: list[dict[str, Any]] = []
        last = 0
        for m in _MARK.finditer(prompt):
            if prompt[last : m.start()].strip():
                parts.append({"type": "text", "text": prompt[last : m.start()]})
            parts.append(self._images[int(m.group(1))].part())
            last = m.end()
        if prompt[last:].strip():
            parts.append({"type": "text", "text": prompt[last:]})
        return parts

    def text(self, prompt: str) -> str:
        """The row's prompt as a person reads it: each image as its label."""
        return _MARK.sub(lambda m: self._images[int(m.group(1))].label, prompt)
