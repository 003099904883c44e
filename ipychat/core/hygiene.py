"""Data hygiene: what a request must not carry out of the kernel. Pure functions, no I/O.

Every text that leaves the kernel goes through `clean_messages`, once, in
`ChatSession.prepare`/`prepare_one` (the one choke point: %%chat, ask, stream, the panel,
map rows with their --fill-null values, and therefore batch files too), before the cache is
consulted. It applies three checks to every message the user wrote (the system prompt, the
thread's earlier prompts, the new prompt; the model's own replies came from the server and
are only checked for sendability and, with `redact`, masked too):

- the text must be sendable: a lone surrogate (from a bad paste or a decoding with
  surrogateescape) cannot be encoded as UTF-8, so it is refused in one line;
- `check_secrets(text)` refuses something shaped like a credential (`ipychat.core.keys.KEY_SHAPES`,
  the package's one list), with one line that names what it found, masked.
  `--allow-secrets` (`allow_secrets=True`) overrides it for text that only looks like one;
- `redact_pii(text)`, opt-in with the `redact` setting, masks e-mail addresses, phone
  numbers and payment card numbers and says what it masked
  (`Redaction.note`: "masked 2 e-mail addresses and 1 phone number").

Redaction must not damage ordinary data (dates, ids, years, prices, tables), so numbers are
masked only when they have the structure of a phone or card number; see `_card` and `_phone`.
Precision and recall are measured in tests/core/test_hygiene.py (redaction) and
tests/core/test_keys.py (the key shapes).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ipychat.core.errors import ChatError, SecretInPromptError
from ipychat.core.keys import FoundKey, find_keys

__all__ = [
    "Cleaned",
    "Redaction",
    "check_magic_line",
    "check_secrets",
    "check_sendable",
    "clean_messages",
    "find_secrets",
    "redact_pii",
]

Message = dict[str, Any]


def find_secrets(text: str) -> list[tuple[str, str]]:
    """Every credential-shaped string in `text`: (what it looks like, its masked form)."""
    return [(f.kind, f.shown) for f in find_keys(text)]


def _refusal(found: list[FoundKey], where: str, fix: str) -> str:
    first = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"{where} contains what looks like {first.kind} ({first.shown}){more}; {fix}"


def check_secrets(
    text: str, *, allow: bool = False, flag: str = "--allow-secrets", where: str = "The prompt"
) -> None:
    """Raise SecretInPromptError if `text` holds something shaped like a credential."""
    if allow or not text:
        return
    found = find_keys(text)
    if found:
        raise SecretInPromptError(
            _refusal(
                found,
                where,
                f"nothing was sent. Remove it, or add {flag} if it is not a real secret.",
            )
        )


def check_magic_line(line: str) -> None:
    """Refuse a magic's argument line that holds something shaped like a credential.

    A key is never a magic argument: the line is saved in the notebook, and parse errors
    would echo it into the output too. The message shows the key masked only.
    """
    found = find_keys(line)
    if found:
        raise SecretInPromptError(
            f"The magic's arguments hold what looks like {found[0].kind} ({found[0].shown}); "
            "a key never goes in a cell (the notebook would keep it). Run %chat key alone and "
            "paste it at the prompt, or set OPENAI_API_KEY."
        )


def check_sendable(text: str, where: str = "The prompt") -> None:
    """Refuse text that cannot be encoded as UTF-8 (a lone surrogate), in one line."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        raise ChatError(
            f"{where} holds a character that cannot be sent (U+{ord(char):04X}, a lone "
            f"surrogate, at character {exc.start + 1}): it comes from a broken paste or "
            "decoding; remove it or decode the text with errors='replace'."
        ) from None


# ----- personal data ---------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+'-])[\w%+-]+(?:[.'][\w%+-]+)*@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*"
    r"\.[^\W\d_]{2,}(?![\w-])"
)
# A run of digits split by single separators (space, - . /) and (area) parentheses, maybe
# after a +: the candidates for card and phone numbers. Not inside a word, a decimal, a
# path, a date or a longer number (the look-behinds); `_card` and `_phone` decide what it is.
_NOT_AFTER = r"[\w.,+/\\:-]"
_GROUPS = r"(?:(?:[ .\-/]|\) ?| ?\()?\d++\)?)*+"
# Each branch starts with its first character, then looks behind it: a pattern that opens
# with a charset is scanned for that charset at C speed; one that opens with a look-behind
# is tried at every position (3x slower on prose).
_RUN = re.compile(
    rf"\+(?<!{_NOT_AFTER}\+) ?\(?\d++{_GROUPS}"
    rf"|\((?<!{_NOT_AFTER}\()\d++\)?{_GROUPS}"
    rf"|\d(?<!{_NOT_AFTER}\d)\d*+{_GROUPS}"
)
_PARTS = re.compile(r"\d+|[ .\-/]|[()]")
# A phone keyword just before a number ("Tel. ", "phone: ", "mobile no. ", "電話 ").
_PHONE_WORD = re.compile(
    r"(?:\b(?:tel|tél|tele?phone|téléphone|telefon|telefono|teléfono|phone|ph|mobile?|mob|"
    r"cell(?:phone)?|fax|whatsapp|handy|portable|celular)\b|電話|携帯)\.?"
    r"(?:\s*(?:no|nr|number|num|#)\.?)?\s*[:#=]?\s*(?:\(\w+\)\s*)?$",
    re.IGNORECASE,
)
# A card keyword just before a number ("card ", "Visa: ", "credit card no. ").
_CARD_WORD = re.compile(
    r"(?:\b(?:card|cc|credit|debit|visa|mastercard|amex|karte|carte|tarjeta|cartão|pan|pay|paid|payment)\b)"
    r"[\w .#:=-]{0,16}$",
    re.IGNORECASE,
)
# ... or just after it ("4111 ... exp 12/27", "..., cvv 123").
_CARD_AFTER = re.compile(r"[\s,;:()-]{0,4}(?:exp|expires|expiry|valid|cvv|cvc|cv2)\b", re.I)
_CARD_GROUPS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 4, 2)}
# Issuer prefixes (IIN) of Visa, Mastercard (51-55, 2221-2720), Amex, Discover, Diners,
# JCB, UnionPay, Maestro.
_CARD_IIN = re.compile(r"4|5[0-8]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|30[0-5]|3[689]|35|6")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class _Run:
    """A candidate number split into its parts: digit groups and what separates them."""

    plus: bool
    groups: list[str]
    seps: list[str]  # seps[i] is between groups[i] and groups[i + 1]: " ", "-", ".", "/", ""
    paren: list[bool]  # groups[i] was written in parentheses

    @property
    def digits(self) -> int:
        return sum(len(g) for g in self.groups)


def _parse(text: str) -> _Run | None:
    """Split a `_RUN` match; None when its parentheses or separators are not well formed."""
    plus = text.startswith("+")
    groups: list[str] = []
    seps: list[str] = []
    paren: list[bool] = []
    sep = ""
    open_paren = False
    # A separator before the first group (the space of "+ 44") is dropped with `sep = ""`.
    for part in _PARTS.findall(text):
        if part.isdigit():
            if groups:
                seps.append(sep)
            groups.append(part)
            paren.append(open_paren)
            sep = ""
        elif part == "(":
            if open_paren:
                return None
            open_paren = True
        elif part == ")":
            if not open_paren:
                return None
            open_paren = False
        elif sep.strip():
            return None  # two separators in a row (a space before one is allowed: "(212) -")
        else:
            sep = part
    if open_paren or not groups:
        return None
    return _Run(plus, groups, seps, paren)


def _card(run: _Run, keyword: bool) -> bool:
    """Whether a digit run is a payment card number: an issuer's prefix, 13-19 digits, a
    valid Luhn check digit, and written as cards are: grouped 4-4-4-4 (Amex 4-6-5, Diners
    4-6-4) by spaces or hyphens, or unseparated. Unseparated, only 16 digits (15 for Amex)
    count without a card keyword before them: order numbers and ids of other lengths pass
    Luhn one time in ten. Groups in ascending order read as a sorted list of ids, unless a
    card word is near (card, Visa, exp, cvv, ...)."""
    digits = "".join(run.groups)
    if not 13 <= len(digits) <= 19 or not _CARD_IIN.match(digits) or not _luhn(digits):
        return False
    if run.plus or any(run.paren):
        return False
    if len(run.groups) == 1:
        return keyword or len(digits) == 16 or (len(digits) == 15 and digits[:2] in ("34", "37"))
    if set(run.seps) not in ({" "}, {"-"}) or tuple(map(len, run.groups)) not in _CARD_GROUPS:
        return False
    values = [int(g) for g in run.groups]
    return keyword or values != sorted(values) or len(set(map(len, run.groups))) > 1


def _number_list(pairs: list[int]) -> bool:
    """Zero-padded pairs that read as a list, not as a phone number's random digits: days
    of a month or other small numbers (all ≤ 31: 01 02 03 04 05, 05 10 15 20 25), or
    ascending draws (04 11 23 38 45, lottery numbers). The first pair is 01-09 (`_phone`),
    so a constant step of at most 10 is always one of these two."""
    ascending = all(a < b for a, b in pairwise(pairs))
    return max(pairs) <= 31 or (ascending and max(pairs) <= 59)


def _phone(run: _Run, keyword: bool) -> bool:
    """Whether a digit run is written the way phone numbers are (and data is not).

    - after a + country code: 8-15 digits (E.164), 10+ when written without separators;
    - after a phone keyword (tel, phone, mobile, fax, ...): 6-15 digits, any grouping;
    - an (area) code in parentheses of 2-3 digits, or 0 + up to 4 (030, 0161), then 6-10
      digits: (212) 555-0147, (11) 91234-5678, (02) 9374 4000;
    - North American 3-3-4 split by - or . (212-555-0147, 1-800-555-0199);
    - a national number with its trunk 0 (020 7946 0958, 03-1234-5678, 0412 345 678,
      030 12345678): 0 then a non-zero digit opening a group of 2-5, one kind of
      separator, 9-12 digits, groups of unequal widths ending in 3+ digits (lists of
      zero-padded ids are equal widths);
    - the French five pairs 01 23 45 67 89 (with . or -; with spaces unless the pairs
      read as a list of numbers, `_number_list`).
    Everything else is data: dates, times, years, ids, prices, tables, 1 234 567 890.
    """
    groups, seps, n = run.groups, run.seps, run.digits
    widths = [len(g) for g in groups]
    kinds = {s for s in seps if s}
    if run.plus:
        # A (0) after the country code is the dropped trunk prefix: +44 (0)20 7946 0958
        zero = sum(len(g) for g, p in zip(groups, run.paren, strict=True) if p and g == "0")
        n -= zero
        if len(groups) == 1:
            return 10 <= n <= 15
        return 8 <= n <= 15 and widths[0] <= 3 and max(widths[1:]) <= 10
    if keyword:
        return 6 <= n <= 15
    if run.paren[0] and not any(run.paren[1:]) and len(groups) >= 2:
        area = groups[0]
        area_ok = len(area) in (2, 3) or (area[0] == "0" and len(area) <= 5)
        rest = n - len(area)
        return area_ok and 6 <= rest <= 10 and kinds <= {" ", "-", "."} and widths[-1] >= 4
    if any(run.paren):
        return False
    if len(kinds) > 1:
        return False
    if kinds in ({"-"}, {"."}) and widths in ([3, 3, 4], [1, 3, 3, 4]):
        return (widths[0] == 3 or groups[0] == "1") and groups[-3][0] in "23456789"
    if widths == [2, 2, 2, 2, 2] and groups[0][0] == "0" and groups[0][1] != "0":
        return kinds != {" "} or not _number_list([int(g) for g in groups])
    first = groups[0]
    return (
        2 <= len(groups) <= 4
        and first[0] == "0"
        and first[1:2] not in ("", "0")
        and len(first) <= 5
        and 9 <= n <= 12
        and widths[-1] >= 3
        and len(set(widths)) > 1
        and (len(groups) > 2 or widths[1] >= 6)
        and ("/" not in kinds or len(groups) == 2)
    )


@dataclass(frozen=True)
class Redaction:
    """A prompt with personal data masked, and how many of each kind were masked."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def masked(self) -> int:
        return sum(self.counts.values())

    @property
    def note(self) -> str:
        """`masked 2 e-mail addresses and 1 phone number` ("" when nothing was masked)."""
        return _note(self.counts)


def _note(counts: dict[str, int]) -> str:
    names = {"email": "e-mail address", "card": "card number", "phone": "phone number"}
    parts = [
        f"{n} {names[kind]}{'es' if kind == 'email' and n != 1 else 's' if n != 1 else ''}"
        for kind in names  # always in this order, whatever order they were found in
        if (n := counts.get(kind))
    ]
    if not parts:
        return ""
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"masked {listed}"


def redact_pii(text: str) -> Redaction:
    """Mask e-mail addresses, card numbers (known issuer, Luhn-valid) and phone numbers.

    Each is replaced by a placeholder the model can still reason about: `[email]`,
    `[card]`, `[phone]`. Numbers are masked only when written like a card or phone number
    (`_phone`); dates, times, ids, years, prices, versions and tables stay as they are.
    """
    counts = {"email": 0, "card": 0, "phone": 0}

    def email(m: re.Match[str]) -> str:
        counts["email"] += 1
        return "[email]"

    masked = _EMAIL.sub(email, text) if "@" in text else text
    if not any(c.isdigit() for c in masked):
        return Redaction(masked, {k: v for k, v in counts.items() if v})

    def number(m: re.Match[str]) -> str:
        found = m.group(0)  # ends with a digit or ")": a sentence's full stop is not in it
        core, tail = found, ""
        if core.count("(") < core.count(")"):  # a closing bracket is not part of the number
            core, tail = core[:-1], ")"
        after = masked[m.end() : m.end() + 2]
        # Part of a word (0412abc) or of a decimal with a comma (1234567,89); a decimal
        # point followed by a digit is always inside the run (`.` is a separator).
        if after[:1].isalnum() or (after[:1] == "," and after[1:2].isdigit()):
            return found
        if sum(c.isdigit() for c in core) < 6:
            return found  # no phone or card is that short: years, counts, prices, times
        lead = ""
        if core.startswith("(") and core.find(")") == len(core) - 1:  # (020 7946 0958)
            lead, core, tail = "(", core[1:-1], ")" + tail
        elif core.startswith("(") and ")" not in core:  # (020 7946 0958 and more
            lead, core = "(", core[1:]
        run = _parse(core)
        if run is None:
            return found
        # Keywords in the 24 characters before the number, searched in place: a slice
        # would cut a word and make the "tel" of "hotel" a keyword.
        window = max(0, m.start() - 24)
        card_word = _CARD_WORD.search(masked, window, m.start())
        if _card(run, bool(card_word or _CARD_AFTER.match(masked, m.end()))):
            counts["card"] += 1
            return f"{lead}[card]{tail}"
        if _phone(run, bool(_PHONE_WORD.search(masked, window, m.start()))):
            counts["phone"] += 1
            return f"{lead}[phone]{tail}"
        return found

    masked = _RUN.sub(number, masked)
    return Redaction(masked, {k: v for k, v in counts.items() if v})


# ----- the choke point ---------------------------------------------------------------------------

_ROLES_WRITTEN_BY_THE_USER = frozenset({"system", "developer", "user"})
_WHERE = {"system": "The system prompt", "developer": "The system prompt"}


@dataclass(frozen=True)
class Cleaned:
    """Messages fit to leave the kernel, and what `redact` masked in them."""

    messages: list[Message]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def note(self) -> str:
        return _note(self.counts)


@functools.lru_cache(maxsize=512)
def _scan(text: str, redact: bool) -> tuple[tuple[FoundKey, ...], Redaction | None]:
    """The credential findings and the redaction of one text, remembered: a map sends the
    same system prompt with every row, and a thread resends its history every turn."""
    return tuple(find_keys(text)), redact_pii(text) if redact else None


def _is_text_part(part: Any) -> bool:
    """A part of a list content that carries text: {"type": "text", "text": "..."}."""
    return (
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
    )


def _texts(content: Any) -> list[str]:
    """The text parts of a message's content (a string, or a list of typed parts)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if _is_text_part(p)]
    return []


def _replace_texts(content: Any, replacements: dict[str, str]) -> Any:
    """`content` with each text that has a redacted form replaced by it."""
    if isinstance(content, str):
        return replacements[content]  # called only when its one text was redacted
    return [
        {**p, "text": replacements.get(p["text"], p["text"])} if _is_text_part(p) else p
        for p in content
    ]


# What to do about a credential found in a text of the request, by where the text was.
_FIX = "nothing was sent. Remove it, or add --allow-secrets if it is not a real secret."
_FIXES = {
    "An earlier prompt of this thread": (
        "nothing was sent. Start afresh with --new (or %chat reset), or add "
        "--allow-secrets if it is not a real secret."
    ),
    "The system prompt": (
        "nothing was sent. Change it (%chat system), or add --allow-secrets "
        "if it is not a real secret."
    ),
}


def clean_messages(
    messages: Sequence[Message],
    *,
    allow_secrets: bool = False,
    redact: bool = False,
    allowed: Container[str] = (),
) -> Cleaned:
    """The messages of a request as they may leave the kernel (see the module docstring).

    Refuses credentials in every message the user wrote (system, developer, user; the
    model's replies came from the server); `allowed` holds texts already sent on an explicit
    --allow-secrets (an earlier turn of the thread), which are not refused again. With
    `redact`, masks personal data in every message, replies included (a reply may repeat
    an address from before redaction was on). Raises ChatError (unsendable text) or SecretInPromptError; returns
    new message dicts, never changes the given ones.
    """
    counts: Counter[str] = Counter()
    out: list[Message] = []
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    for i, message in enumerate(messages):
        role = message.get("role")
        written = role in _ROLES_WRITTEN_BY_THE_USER
        where = _WHERE.get(str(role)) or (
            "The prompt"
            if i == last_user
            else "An earlier prompt of this thread"
            if written
            else "An earlier reply of this thread"
        )
        content = message.get("content")
        redactions: dict[str, str] = {}
        for text in _texts(content):
            check_sendable(text, where)
            if not written and not redact:
                continue
            found, redaction = _scan(text, redact)
            if written and found and not allow_secrets and text not in allowed:
                raise SecretInPromptError(_refusal(list(found), where, _FIXES.get(where, _FIX)))
            if redaction is not None and redaction.counts:
                counts.update(redaction.counts)
                redactions[text] = redaction.text
        if redactions:
            message = {
                **message,
                "content": _replace_texts(content, redactions),
            }
        out.append(message)
    return Cleaned(out, dict(counts))
