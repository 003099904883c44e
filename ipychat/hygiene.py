"""Data hygiene: what a prompt must not carry out of the kernel. Pure functions, no I/O.

Two checks run on every prompt in `ChatSession.prepare`/`prepare_one`, before anything is
sent (and before the cache is consulted):

- `check_secrets(text)` refuses a prompt that contains something shaped like a credential
  (an API key, an access token, a private key block), with one line that names what it
  found, masked. `--allow-secrets` (`allow_secrets=True`) overrides it for the text that
  only looks like a secret.
- `redact_pii(text)`, opt-in with the `redact` setting, masks e-mail addresses, phone
  numbers and payment card numbers (Luhn-checked) and says what it masked
  (`Redaction.note`: "masked 2 e-mail addresses and 1 phone number").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ipychat.errors import SecretInPromptError
from ipychat.keys import mask

__all__ = ["Redaction", "check_magic_line", "check_secrets", "find_secrets", "redact_pii"]

# (what it is, its shape). Shapes are the documented formats of each issuer's credentials,
# long enough that prose does not match them by chance.
_SECRET_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "a private key",
        re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    ),
    ("an Anthropic API key", re.compile(r"\bsk-ant-[A-Za-z0-9_\-]{20,}")),
    ("an OpenAI-style API key", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}")),
    ("an AWS access key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_\w{40,})")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}")),
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    ("a bearer token", re.compile(r"\bBearer\s+[A-Za-z0-9_\-\.=]{20,}")),
)


def find_secrets(text: str) -> list[tuple[str, str]]:
    """Every credential-shaped string in `text`: (what it looks like, its masked form)."""
    found: list[tuple[str, str]] = []
    taken: list[tuple[int, int]] = []
    for kind, shape in _SECRET_SHAPES:
        for m in shape.finditer(text):
            if any(start < m.end() and m.start() < end for start, end in taken):
                continue  # one finding per stretch of text (sk-ant- is not also sk-)
            taken.append(m.span())
            shown = m.group(0) if kind == "a private key" else mask(m.group(0))
            found.append((kind, shown))
    return found


def check_secrets(text: str, *, allow: bool = False, flag: str = "--allow-secrets") -> None:
    """Raise SecretInPromptError if `text` holds something shaped like a credential."""
    if allow or not text:
        return
    found = find_secrets(text)
    if not found:
        return
    kind, shown = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise SecretInPromptError(
        f"The prompt contains what looks like {kind} ({shown}){more}; nothing was sent. "
        f"Remove it, or add {flag} if it is not a real secret."
    )


def check_magic_line(line: str) -> None:
    """Refuse a magic's argument line that holds something shaped like a credential.

    A key is never a magic argument: the line is saved in the notebook, and parse errors
    would echo it into the output too. The message shows the key masked only.
    """
    found = find_secrets(line)
    if found:
        kind, shown = found[0]
        raise SecretInPromptError(
            f"The magic's arguments hold what looks like {kind} ({shown}); a key never goes in "
            "a cell (the notebook would keep it). Run %chat key alone and paste it at the "
            "prompt, or set OPENAI_API_KEY."
        )


# ----- personal data ---------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
# 13-19 digits, optionally in groups split by single spaces or hyphens.
_CARD = re.compile(r"(?<!\w)(?<!\d\.)\d(?:[ -]?\d){12,18}(?!\w|\.\d)")  # not in a decimal
# An optional +country code, an optional (area), then groups of digits split by a space, a
# hyphen or a dot; 9 to 15 digits in all (E.164 allows 15; dates and years have fewer).
_PHONE = re.compile(
    r"(?<![\w.+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,5}(?![\w])"
    r"|(?<![\w.+])\+\d{9,15}(?!\w)"
)
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


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
        names = {"email": "e-mail address", "phone": "phone number", "card": "card number"}
        parts = [
            f"{n} {names[kind]}{'es' if kind == 'email' and n != 1 else 's' if n != 1 else ''}"
            for kind, n in self.counts.items()
            if n
        ]
        if not parts:
            return ""
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"masked {listed}"


def redact_pii(text: str) -> Redaction:
    """Mask e-mail addresses, card numbers (Luhn-valid) and phone numbers in `text`.

    Each is replaced by a placeholder the model can still reason about: `[email]`,
    `[card]`, `[phone]`. Dates, IPv4 addresses and short numbers are left alone.
    """
    counts = {"email": 0, "card": 0, "phone": 0}

    def email(m: re.Match[str]) -> str:
        counts["email"] += 1
        return "[email]"

    def card(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        if not 13 <= len(digits) <= 19 or not _luhn(digits):
            return m.group(0)
        counts["card"] += 1
        return "[card]"

    def phone(m: re.Match[str]) -> str:
        found = m.group(0)
        digits = re.sub(r"\D", "", found)
        if not 9 <= len(digits) <= 15 or _IPV4.match(found) or _DATE.match(found):
            return found
        if "." in found and not found.startswith("+") and "(" not in found:
            # 1.234.567.890 is as likely a number as a phone: only dots after +cc or (area)
            return found
        counts["phone"] += 1
        return "[phone]"

    masked = _EMAIL.sub(email, text)
    masked = _CARD.sub(card, masked)
    masked = _PHONE.sub(phone, masked)
    return Redaction(masked, {k: v for k, v in counts.items() if v})
