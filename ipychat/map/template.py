"""A map's row template: `{column}` placeholders compiled once into one `str.format` per
row, brace-safe like `ipychat.core.messages.interpolate` (JSON, code and LaTeX braces stay
as written; a `{name}` that names no column is refused before anything is sent).

`{column:image}` (or `:image=low`/`high`/`auto`) reads each row's value, a path or bytes, as
an image (`ipychat.map.images`); a column of images (PIL, `ipychat.image`, Figures) is one
as `{column}` already."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ipychat.core.errors import TemplateError
from ipychat.core.messages import literal_braces

__all__ = ["RowTemplate", "compile_template"]

_PLACEHOLDER = re.compile(r"\{\{(?P<escaped>[^{}]*)\}\}|\{(?P<name>[^{}\n]+)\}")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_IMAGE = re.compile(r"(?P<name>.+):(?P<kind>image(?:=(?:low|high|auto))?)")


@dataclass(frozen=True)
class RowTemplate:
    """A row template compiled once: `render(values)` is one `str.format` call per row."""

    text: str
    columns: tuple[Any, ...]  # the column labels used, in order of first use
    format_string: str
    # Per entry of `columns`: "text", or "image"/"image=low"… for `{column:image…}` (the
    # same column may be used both ways, so a label may appear twice in `columns`)
    kinds: tuple[str, ...] = ()

    def kind(self, k: int) -> str:
        return self.kinds[k] if self.kinds else "text"

    def render(self, values: Sequence[str]) -> str:
        return self.format_string.format(*values)


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def compile_template(
    template: str, columns: Sequence[Any], frame: str = "the DataFrame"
) -> RowTemplate:
    """Compile `{column}` placeholders, brace-safe like `ipychat.core.messages.interpolate`.

    `{{x}}` sends `{x}`; braces that cannot be a column (JSON, code, LaTeX) stay as written;
    a `{name}` that looks like a placeholder but names no column is an error listing the
    columns (checked before anything is sent). Column names need not be identifiers:
    `{review text}` works when there is such a column.
    """
    text = template.strip() if isinstance(template, str) else ""
    if not text:
        raise TemplateError(
            "The template is empty: write the prompt below %%chatmap, with {column} "
            "placeholders such as {text}."
        )
    known = {str(c): c for c in columns}
    is_literal = literal_braces(text)  # `\frac{x}`, `x^{n}`, code: not placeholders
    parts: list[str] = []
    used: list[Any] = []
    kinds: list[str] = []
    index: dict[tuple[str, str], int] = {}
    unknown: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(_escape(text[last : m.start()]))
        last = m.end()
        escaped, name = m.group("escaped"), m.group("name")
        if escaped is not None:
            parts.append(_escape("{" + escaped + "}"))
            continue
        name, kind = _kind(name, known)
        if name in known:
            if (name, kind) not in index:
                index[name, kind] = len(used)
                used.append(known[name])
                kinds.append(kind)
            parts.append(f"{{{index[name, kind]}}}")
            continue
        if _IDENT.fullmatch(name) and not is_literal(m.start()) and name not in unknown:
            unknown.append(name)
        parts.append(_escape(m.group(0)))
    parts.append(_escape(text[last:]))
    _check_used(known, used, unknown, frame)
    return RowTemplate(text, tuple(used), "".join(parts), tuple(kinds))


def _kind(name: str, known: dict[str, Any]) -> tuple[str, str]:
    """(column, "text") or, for `{column:image…}` naming a column, (column, "image…")."""
    image = _IMAGE.fullmatch(name)
    if image is not None and name not in known:  # `{nme:image}`: an unknown column
        return image.group("name"), image.group("kind")
    return name, "text"


def _check_used(known: dict[str, Any], used: list[Any], unknown: list[str], frame: str) -> None:
    """Refuse a template naming no column, or a `{name}` that is not one (listing them)."""
    listing = _list_columns(known)
    if unknown:
        names = ", ".join("{" + n + "}" for n in unknown)
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f" (did you mean {{{close[0]}}}?)" if close else ""
        verb = "is not a column" if len(unknown) == 1 else "are not columns"
        raise TemplateError(
            f"{names} {verb} of {frame}{hint}. Its columns: {listing}. "
            f"Use {{{{{unknown[0]}}}}} to send braces as text."
        )
    if not used:
        raise TemplateError(
            f"The template has no {{column}} placeholder, so every row would send the same "
            f"prompt. Use the columns of {frame}: {listing}."
        )


def _list_columns(known: dict[str, Any], most: int = 30) -> str:
    names = list(known)
    shown = ", ".join(names[:most])
    return shown + (f", … ({len(names) - most} more)" if len(names) > most else "") or "none"
