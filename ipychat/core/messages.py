"""Prompts and conversation history: brace-safe interpolation, threads, trimming by tokens.

Pure: no I/O and no third-party imports. DataFrames are recognised by duck typing so that
pandas is never imported here.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipychat.core.errors import ChatError, ConfigError, ContextLengthError, TemplateError
from ipychat.core.frametext import frame_text, is_frame, is_series, parse_mode
from ipychat.core.images import Image, as_image, image, image_info

__all__ = [
    "Content",
    "Interpolated",
    "Thread",
    "as_content",
    "build_messages",
    "check_thread_name",
    "interpolate",
    "is_parts",
    "literal_braces",
    "parts_text",
    "render_value",
    "trim_history",
    "unfenced_json",
]

Message = dict[str, Any]
# A message's content: text, or OpenAI's list of parts (text and images) when it holds images.
Content = str | list[dict[str, Any]]

# `{name}`, `{name.attr}`, `{name[0]}`, `{name["key"]}`, `{In[3]}`; nothing else is a placeholder,
# so JSON (`{"a": 1}`), code (`{ return x; }`) and most LaTeX pass through untouched.
# `{name:spec}` formats the value: a DataFrame/Series view (`{df:head=20}`, `{df:describe}`,
# `{df:csv}`; see ipychat.core.frametext) or a Python format spec (`{price:.2f}`, `{n:,}`). A spec
# has no spaces and is never only digits, so `{name: "x"}` and `{a:1}` stay text.
# `{fig}` (a matplotlib Figure, a PIL image, an `ipychat.image`) is sent as an image part, and
# `{path:image}` (or `:image=low`) reads the file (or bytes) the value names as one.
_PLACEHOLDER = re.compile(
    r"\{\{(?P<escaped>[^{}]*)\}\}|\{(?P<expr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[(?:-?\d+|'[^'\]]*'|\"[^\"\]]*\")\])*)(?::(?P<spec>[^{}\s]+))?\}"
)
# Python's format-spec mini-language: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_FORMAT_SPEC = re.compile(r"(?:[^{}]?[<>=^])?[-+ ]?z?#?0?\d*[,_]?(?:\.\d+)?[bcdeEfFgGnosxX%]?")
_NAME = re.compile(r"[A-Za-z_]\w*")
_IMAGE_SPEC = re.compile(r"image(?:=(low|high|auto))?")
# A `{word}` right after one of these is LaTeX or code (`\frac{a}`, `x^{n}`, `f{x}`), not a
# placeholder the user meant, so an unknown name there is left alone instead of refused.
_LITERAL_CONTEXT = set("\\^_$}") | set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
)
_FENCE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.S)

# Values longer than this (in characters, ~4 per token) are shortened when interpolated.
DEFAULT_VALUE_CHARS = 8_000


@dataclass(frozen=True)
class Interpolated:
    """A rendered prompt, the names substituted in it and where their values landed."""

    text: str
    names: tuple[str, ...] = ()
    spans: tuple[tuple[int, int], ...] = ()  # (start, end) in `text` of each substituted value
    # What was sent for each DataFrame/Series (`{big}: 1,000 × 8 DataFrame as a summary; …`)
    notes: tuple[str, ...] = ()
    # The images, each with the span of `text` its label (`[image: 640×480 PNG]`) stands in
    images: tuple[tuple[int, int, Image], ...] = ()

    @property
    def content(self) -> Content:
        """What the user message carries: `text`, or, when it holds images, OpenAI's content
        parts (the text around each image as text parts, each image as an image part)."""
        if not self.images:
            return self.text
        parts: list[dict[str, Any]] = []
        last = 0
        for start, end, picture in self.images:
            if self.text[last:start].strip():
                parts.append({"type": "text", "text": self.text[last:start]})
            parts.append(picture.part())
            last = end
        if self.text[last:].strip():
            parts.append({"type": "text", "text": self.text[last:]})
        return parts


def _lookup(expr: str, namespace: Mapping[str, Any]) -> tuple[bool, Any]:
    """Evaluate `name.attr[key]` against the namespace without `eval`; (found, value)."""
    match = _NAME.match(expr)
    assert match is not None
    name = match.group(0)
    if name not in namespace:
        return False, None
    value = namespace[name]
    rest = expr[match.end() :]
    for part in re.finditer(r"\.([A-Za-z_]\w*)|\[([^\]]*)\]", rest):
        attr, key = part.group(1), part.group(2)
        try:
            value = getattr(value, attr) if attr is not None else value[ast.literal_eval(key)]
        except Exception as exc:
            raise TemplateError(
                f"{{{expr}}}: {type(exc).__name__}: {exc}. Fix the expression, or use "
                f"{{{{{expr}}}}} to send the braces as text."
            ) from None
    return True, value


def literal_braces(template: str) -> Callable[[int], bool]:
    """The brace scanner of every template (`%%chat`'s and `%%chatmap`'s): for `template`, a
    test of whether the `{` at a position is code or LaTeX rather than a placeholder the
    user meant. It is inside ``` fences or `inline code`, or right after a letter, a digit,
    `\\`, `^`, `_`, `$` or `}` (`\\frac{a}`, `x^{n}`, `f{x}`): an unknown name there is left
    as written instead of refused."""
    code = [m.span() for m in _FENCE.finditer(template)]

    def is_literal(pos: int) -> bool:
        before = template[pos - 1] if pos else ""
        return before in _LITERAL_CONTEXT or any(start <= pos < end for start, end in code)

    return is_literal


# A reply asked for as JSON, which models often wrap in a ```json fence anyway.
_JSON_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.S)


def unfenced_json(reply: str) -> str:
    """The JSON text of a reply: stripped, and out of its ``` / ```json fence if it has one."""
    candidate = reply.strip()
    fenced = _JSON_FENCE.match(candidate)
    return fenced.group(1) if fenced else candidate


def interpolate(
    template: str,
    namespace: Mapping[str, Any],
    *,
    max_value_chars: int = DEFAULT_VALUE_CHARS,
) -> Interpolated:
    """Replace `{name}` placeholders whose name exists in `namespace`; leave every other brace.

    `{{text}}` becomes `{text}`; lone `{{` or `}}` (nested JSON) stay as written. A bare `{name}` outside code whose name does not exist
    raises TemplateError (sending the literal "{df}" is never what the user wanted), with a
    "did you mean" suggestion. Inside ``` fences or `inline code`, unknown names are left as
    written because braces there are code.

    `{name:spec}` chooses how a value is written: for a DataFrame or Series `summary`,
    `head=N`, `tail=N`, `describe` or `csv` (ipychat.core.frametext); for anything else a Python
    format spec (`{price:.2f}`, `{n:,}`). A spec has no spaces and is not only digits, so
    `{name: string}` and `{a:1}` are text; an unknown name with a spec is left as written.
    """
    is_literal = literal_braces(template)
    names: list[str] = []
    spans: list[tuple[int, int]] = []
    notes: list[str] = []
    images: list[tuple[int, int, Image]] = []
    out: list[str] = []
    size = 0  # length of "".join(out), kept to record spans without re-joining
    last = 0
    for m in _PLACEHOLDER.finditer(template):
        out.append(template[last : m.start()])
        size += m.start() - last
        last = m.end()
        token = m.group(0)
        if m.group("escaped") is not None:
            out.append("{" + m.group("escaped") + "}")
            size += len(out[-1])
            continue
        expr, spec = m.group("expr"), m.group("spec")
        if spec is not None and not _is_spec(spec):  # `{key:value}` text, not a placeholder
            out.append(token)
            size += len(token)
            continue
        found, value = _lookup(expr, namespace)
        if found:
            names.append(expr)
            text, note, picture = _substituted(token, expr, spec, value, max_value_chars)
            out.append(text)
            notes.extend([f"{token}: {note}"] if note else [])
            spans.append((size, size + len(text)))
            images.extend([(size, size + len(text), picture)] if picture is not None else [])
            size += len(text)
            continue
        # With a spec, an unknown name is left alone: `{x:.2f}` is as likely an f-string
        # being discussed as a placeholder.
        if spec is not None or is_literal(m.start()):
            out.append(token)
            size += len(token)
            continue
        raise _undefined(_NAME.match(expr).group(0), namespace)  # type: ignore[union-attr]
    out.append(template[last:])
    return Interpolated("".join(out), tuple(names), tuple(spans), tuple(notes), tuple(images))


def _substituted(
    token: str, expr: str, spec: str | None, value: Any, max_chars: int
) -> tuple[str, str, Image | None]:
    """What `{expr}` becomes: (text, a note for --dry-run, the image it stands for)."""
    picture = _image_value(token, spec, value)
    if picture is not None:
        return picture.label, f"sent as an image ({picture.describe})", picture
    text, note = _value_text(token, expr, spec, value, max_chars)
    return text, note, None


def _image_value(token: str, spec: str | None, value: Any) -> Image | None:
    """The image `{expr}` sends: a Figure, PIL image or `ipychat.image` as it is, or with
    `:image` the file or bytes the value names; None for any other value (text)."""
    wanted = _IMAGE_SPEC.fullmatch(spec) if spec is not None else None
    if spec is not None and wanted is None:
        return None
    try:
        if wanted is not None:
            return image(value, detail=wanted.group(1))
        return as_image(value)
    except ChatError as exc:
        raise TemplateError(f"{token}: {exc}") from None


def _undefined(name: str, namespace: Mapping[str, Any]) -> TemplateError:
    public = [n for n in namespace if not n.startswith("_")]
    close = difflib.get_close_matches(name, public, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return TemplateError(
        f"{{{name}}} is not defined in the notebook{hint}. "
        f"Use {{{{{name}}}}} to send the braces as text."
    )


def _describe(exc: BaseException) -> str:
    """`Type: message` of an exception raised by user code, one short line, even when its
    own `str` raises too."""
    try:
        text = " ".join(str(exc).split())
    except Exception:
        text = ""
    text = text if len(text) <= 120 else text[:119] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rendered(expr: str, value: Any, max_chars: int) -> str:
    """`render_value`, with a value whose repr/str raises (user code) said in one line."""
    try:
        text = render_value(value, max_chars=max_chars)
    except Exception as exc:
        raise TemplateError(
            f"{{{expr}}} could not be turned into text ({_describe(exc)}). Interpolate "
            f"something printable instead, or use {{{{{expr}}}}} to send the braces as text."
        ) from None
    return text  # always a str: repr() itself refuses a __repr__ that returns anything else


def _is_spec(spec: str) -> bool:
    if parse_mode(spec) is not None or _IMAGE_SPEC.fullmatch(spec):
        return True
    return _FORMAT_SPEC.fullmatch(spec) is not None and not spec.isdigit()


def _value_text(
    token: str, expr: str, spec: str | None, value: Any, max_chars: int
) -> tuple[str, str]:
    """The text `{expr}` or `{expr:spec}` becomes, and a note for --dry-run (frames only)."""
    frame = is_frame(value) or is_series(value)
    if spec is None:
        if frame:
            shown = frame_text(value, None, expr)
            return _shorten(shown.text, max_chars), shown.note
        return _rendered(expr, value, max_chars), ""
    mode = parse_mode(spec)
    if frame:
        if mode is None:
            raise TemplateError(
                f"{token}: a DataFrame or Series takes :summary, :head=N, :tail=N, :describe or "
                f":csv, not a format spec. Use {{{{{expr}:{spec}}}}} to send the braces as text."
            )
        shown = frame_text(value, mode, expr)
        return shown.text, shown.note
    if mode is not None:
        raise TemplateError(
            f"{token}: :{spec} is for DataFrames and Series, and {expr} is a "
            f"{type(value).__name__}. Drop :{spec}, or use {{{{{expr}:{spec}}}}} for the text."
        )
    try:
        return format(value, spec), ""
    except Exception as exc:  # user code: a __format__ may raise anything
        raise TemplateError(
            f"{token}: {exc} ({expr} is a {type(value).__name__}). Fix the format spec, or use "
            f"{{{{{expr}:{spec}}}}} to send the braces as text."
        ) from None


def _shorten(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    keep = max_chars // 2
    return f"{text[:keep]}\n… [{len(text) - 2 * keep:,} characters left out] …\n{text[-keep:]}"


def render_value(value: Any, *, max_chars: int = DEFAULT_VALUE_CHARS) -> str:
    """The text a value becomes inside a prompt: strings as they are, DataFrames and Series
    whole if small, else as a summary (ipychat.core.frametext), anything else as its repr; all
    capped."""
    if isinstance(value, str):
        return _shorten(value, max_chars)
    if is_frame(value) or is_series(value):  # pandas or polars, read by duck typing
        return _shorten(frame_text(value, None, "value").text, max_chars)
    return _shorten(repr(value), max_chars)


@dataclass
class Thread:
    """One named conversation: the user/assistant messages exchanged so far, one pair a turn.

    `messages` are the plain dicts sent to the API, a user message then its assistant reply
    for every turn. Beside the turns run `cells`, the notebook cell each turn came from (None
    from a terminal, the panel or Python), and `records`, how each reply was made
    (`Reply.record()`: model, tokens, cost; None when unknown). A cell owns at most one turn of a thread:
    running it again replaces that turn in place (`replace_turn`) and the turns after it stay.
    """

    name: str
    messages: list[Message] = field(default_factory=list)
    cells: list[str | None] = field(default_factory=list)
    records: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "user")

    def cell_of(self, index: int) -> str | None:
        """The cell turn `index` (0-based) came from, or None."""
        return self.cells[index] if index < len(self.cells) else None

    def record_of(self, index: int) -> dict[str, Any] | None:
        """How turn `index`'s reply was made (`Reply.record()`), or None."""
        return self.records[index] if index < len(self.records) else None

    def turn_of(self, cell: str | None) -> int | None:
        """The 0-based index of the turn `cell` last answered in this thread, or None."""
        if cell is None:
            return None
        for index in range(min(len(self.cells), self.turns) - 1, -1, -1):
            if self.cells[index] == cell:
                return index
        return None

    def history_before(self, index: int | None) -> list[Message]:
        """What the model sees before turn `index` (every message when None: a new turn)."""
        if index is None:
            return list(self.messages)
        return self.messages[: 2 * index]

    def add_turn(
        self,
        prompt: Content,
        reply: str,
        cell: str | None = None,
        record: dict[str, Any] | None = None,
    ) -> int:
        """Append a turn; returns its 0-based index. A prompt with images keeps them (each
        later turn resends them, and their tokens are counted and paid each time)."""
        index = self.turns
        self.cells[index:] = [None] * (index - len(self.cells)) + [cell]
        self.records[index:] = [None] * (index - len(self.records)) + [record]
        self.messages.append({"role": "user", "content": prompt})
        self.messages.append({"role": "assistant", "content": reply})
        return index

    def replace_turn(
        self, index: int, prompt: Content, reply: str, record: dict[str, Any] | None = None
    ) -> None:
        """Put a new prompt and reply in turn `index`: new dicts, so a view that keyed the old
        reply (the panel's footers) does not show its footer under the new one."""
        # `records` may be shorter than the turns (a Thread built from its messages alone)
        self.records.extend([None] * (index + 1 - len(self.records)))
        self.records[index] = record
        self.messages[2 * index : 2 * index + 2] = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply},
        ]

    def clear(self) -> None:
        self.messages.clear()
        self.cells.clear()
        self.records.clear()


def check_thread_name(name: Any) -> None:
    """A thread's name is shown in cells, the panel and the ledger: printable text only."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > 200
        or not name.isprintable()  # also refuses lone surrogates (category Cs)
    ):
        raise ConfigError(
            f"{name!r} cannot name a thread: use a short printable name such as 'draft'."
        )


def build_messages(
    system: str | None, history: Sequence[Message], prompt: Content
) -> list[Message]:
    """The messages of a request: the system prompt, the thread's history, the new prompt."""
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages.extend(history)
    messages.append({"role": "user", "content": prompt})
    return messages


def is_parts(prompt: Any) -> bool:
    """True for a prompt given as content parts (text and images: `Interpolated.content`),
    not a list of messages."""
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(p, dict) and "type" in p and "role" not in p for p in prompt)
    )


def as_content(prompt: Any) -> Any:
    """A prompt given from Python as a list of texts and images (`["What does this show?",
    ipychat.image(fig)]`, a Figure or a PIL image as it is) as OpenAI's content parts; a
    part already a dict, and any other prompt, is left as it is."""
    if not isinstance(prompt, (list, tuple)):
        return prompt
    parts: list[Any] = []
    for item in prompt:
        if isinstance(item, str):
            parts.extend([{"type": "text", "text": item}] if item.strip() else [])
        else:
            picture = as_image(item)
            parts.append(picture.part() if picture is not None else item)
    return parts


def parts_text(content: Any) -> str:
    """A message's content as a person reads it: its text, an image part as its label
    (`[image: 640×480]`). For history, the panel, --dry-run and logs: never the image's bytes."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else str(content)
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") in ("image_url", "input_image"):
            info = image_info(part)
            size = f": {info.width}×{info.height}" if info.width and info.height else ""
            space = " " if texts and not texts[-1][-1:].isspace() else ""
            texts.append(f"{space}[image{size}]")
    return "".join(texts)


def _turn_starts(messages: Sequence[Message]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def trim_history(
    messages: list[Message],
    budget: int,
    count: Callable[[Sequence[Message]], int],
) -> tuple[list[Message], int]:
    """Drop the oldest turns until `count(messages) <= budget`; (kept messages, turns dropped).

    The system prompt and the new prompt (the last message) are always kept; if they alone
    do not fit, ContextLengthError says by how much.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(system) :]
    dropped = 0
    while count(system + body) > budget:
        starts = _turn_starts(body)
        if len(starts) <= 1:  # only the new prompt is left
            used = count(system + body)
            raise ContextLengthError(
                f"The prompt needs {used:,} tokens but only {budget:,} fit (context window minus "
                f"max_tokens). Shorten it, lower --max-tokens, or use a model with a larger context."
            )
        body = body[starts[1] :]
        dropped += 1
    return system + body, dropped
