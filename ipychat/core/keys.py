"""Secrets and keys: the masking holder for API keys, the one list of credential shapes,
redaction, and pure cache keys.

Nothing here does I/O. The API key lives only inside `Secret`; everything that could
print it (`repr`, `str`, logging, exception text) sees the mask instead.

`KEY_SHAPES` is the package's one list of what credentials look like. The prompt check
(`ipychat.core.hygiene.check_secrets`, which refuses) and the scrubbing of server and exception
texts (`redact`, which masks) both read it through `find_keys`. A shape is a known prefix
(sk-proj-, AKIA, ghp_, ...) plus what real keys of that issuer have: a length, an alphabet
and, where the prefix alone is weak (sk-, hf_, Bearer), the look of random characters
(`looks_random`), so `sk-2024-01-15-quarterly-report.csv` or `sk-learn-compatible` are
words, not keys. Each shape names literal needles; a text holding none of them is passed
over with a few substring searches (the check runs on every row of a map).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from ipychat.core.errors import ConfigError
from ipychat.core.images import has_images, image_info

__all__ = [
    "KEY_SHAPES",
    "KeyShape",
    "Secret",
    "cache_key",
    "canonical_json",
    "find_keys",
    "looks_random",
    "mask",
    "redact",
    "redact_headers",
]

# Header names whose values are credentials, lower-cased.
SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})


def mask(value: str) -> str:
    """A recognisable but useless form of a key: `sk-...wxyz` (last four characters only)."""
    if len(value) <= 8:
        return "***"
    return f"{value[:3]}...{value[-4:]}"


# ----- what random key material looks like ------------------------------------------------------

_RUNS = re.compile(r"[A-Za-z0-9]+")
_HEX = re.compile(r"[0-9a-f]+|[0-9A-F]+")
# Pronounceable stretches: a capitalised or lower-case run of letters, or one in capitals.
_LETTERS = re.compile(r"[A-Z]?[a-z]{2,}|[A-Z]{3,}")
_CLUSTER = re.compile(r"[^aeiouy]{4,}", re.I)


def _kind(c: str) -> int:
    return 0 if c.isdigit() else 1 if c.islower() else 2


def _in_words(body: str) -> float:
    """The share of `body` inside word-like stretches: 3+ letters, a fifth to three quarters
    of them vowels, no cluster of four consonants (Report, North, estimators). Random base62
    keeps ~20 % there (99.9th percentile ~67 %); names and file names 75-100 %."""
    total = 0
    for w in _LETTERS.findall(body):
        vowels = sum(c in "aeiouyAEIOUY" for c in w)
        if len(w) >= 3 and 0.2 <= vowels / len(w) <= 0.75 and not _CLUSTER.search(w):
            total += len(w)
    return total / len(body)


def looks_random(token: str, *, min_run: int = 16, max_words: float | None = 0.75) -> bool:
    """True when `token` looks drawn at random from a key alphabet, False for words, dates,
    numbers and placeholders (sk-YOUR-KEY-HERE, xxxx...).

    Measured on the letters and digits of the token (separators such as - and _ dropped):
    a run of at least `min_run` of them (dates and file names are short words joined by -
    or _); hex with both digits and letters; otherwise at least two of lower case, upper
    case and digits, switching between those classes on at least a quarter of neighbours
    (random base62: ~62 %), 3.3+ bits of entropy per character, and, unless `max_words` is
    None, at most that share of the characters inside word-like stretches (`_in_words`).
    Thresholds were set on generated keys and on words: tests/core/test_keys.py measures both.
    """
    runs = _RUNS.findall(token)
    if not runs or max(map(len, runs)) < min_run:
        return False
    body = "".join(runs)
    n = len(body)
    digits = sum(c.isdigit() for c in body)
    if _HEX.fullmatch(body):
        return 0 < digits < n and n >= 24
    classes = (digits > 0) + any(c.islower() for c in body) + any(c.isupper() for c in body)
    if classes < 2:
        return False
    switches = sum(_kind(a) != _kind(b) for a, b in pairwise(body))
    if switches < 0.25 * (n - 1):
        return False
    counts = Counter(body).values()
    entropy = -sum(c / n * math.log2(c / n) for c in counts)
    if entropy < min(3.3, math.log2(n) - 0.7):
        return False
    return max_words is None or _in_words(body) <= max_words


def _tail_random(
    group: str, min_run: int = 16, max_words: float | None = None
) -> Callable[[re.Match[str]], bool]:
    """A check on one named group: distinctive prefixes (ghp_, AIza...) need no word test."""
    return lambda m: looks_random(m.group(group), min_run=min_run, max_words=max_words)


def _aws_id(m: re.Match[str]) -> bool:
    # Access key ids are 16 base32 characters after the prefix; a word in capitals (ASIA
    # PACIFIC...) has no digit and many vowels.
    rest = m.group("id")
    vowels = sum(c in "AEIOU" for c in rest)
    return any(c.isdigit() for c in rest) or vowels < 0.4 * len(rest)


@dataclass(frozen=True)
class KeyShape:
    """What one issuer's credentials look like.

    `needles`: literal substrings one of which every match contains (the prefilter);
    `pattern`: the shape; `check`: what a regular expression cannot say (randomness).
    """

    kind: str
    needles: tuple[str, ...]
    pattern: re.Pattern[str]
    check: Callable[[re.Match[str]], bool] | None = None
    masked: bool = True  # False: the match is a header, safe to show (a PEM block's)


_B = r"(?<![A-Za-z0-9_])"  # a key starts at a word's start: task-based is not sk-based

# Ordered: a longer, more specific shape claims its text before a general one (sk-ant-
# before sk-, a JWT before Bearer). Formats from each issuer's documentation.
KEY_SHAPES: tuple[KeyShape, ...] = (
    KeyShape(
        "a private key",
        ("-----BEGIN ",),
        # The whole block (to its END line, or as far as base64 goes when it is cut short),
        # so that scrubbing removes the key and not only its header.
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:,-]*)"
        ),
        masked=False,
    ),
    KeyShape(
        "a PuTTY private key",
        ("PuTTY-User-Key-File-",),
        re.compile(r"PuTTY-User-Key-File-\d+:(?:[\s\S]*?Private-MAC:\s*[0-9a-fA-F]+|[\s\S]*)"),
        masked=False,
    ),
    KeyShape(
        "an Anthropic API key",
        ("sk-ant-",),
        re.compile(_B + r"sk-ant-(?:[a-z]+\d*-)?(?P<t>[A-Za-z0-9_\-]{32,})"),
        _tail_random("t"),
    ),
    KeyShape(
        "an OpenAI API key",
        ("sk-",),
        # sk-proj- (project), sk-svcacct-, sk-admin- and the legacy sk- + 48 characters;
        # other OpenAI-compatible services use sk- too (sk-or-v1-, DeepSeek's sk- + hex).
        re.compile(
            _B + r"sk-(?:(?:proj|svcacct|admin|None)-|(?:[a-z0-9]{1,12}-){1,2})?"
            r"(?P<t>[A-Za-z0-9][A-Za-z0-9_\-]{19,})"
        ),
        lambda m: "T3BlbkFJ" in m.group("t") or looks_random(m.group("t"), max_words=0.75),
    ),
    KeyShape(
        "a Stripe secret key",
        ("k_live_", "k_test_"),
        re.compile(_B + r"[rs]k_(?:live|test)_(?P<t>[A-Za-z0-9]{20,})"),
        _tail_random("t"),
    ),
    KeyShape(
        "an AWS access key",
        ("AKIA", "ASIA", "ABIA", "ACCA"),
        re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)(?P<id>[A-Z2-7]{16})(?![A-Za-z0-9])"),
        _aws_id,
    ),
    KeyShape(
        "an AWS secret access key",
        ("aws_secret", "AWS_SECRET", "SecretAccessKey", "aws_secret_access_key"),
        re.compile(
            r"(?i:aws_?secret_?access_?key|secretaccesskey)[\"']?\s*[:=]\s*[\"']?"
            r"(?P<t>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
        ),
        _tail_random("t", 8),
    ),
    KeyShape(
        "a GitHub token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(
            _B + r"(?:gh[pousr]_(?P<t>[A-Za-z0-9]{36,255})|github_pat_(?P<p>[A-Za-z0-9_]{59,}))"
        ),
        lambda m: looks_random(m.group("t") or m.group("p"), max_words=None),
    ),
    KeyShape(
        "a GitLab token",
        ("glpat-",),
        re.compile(_B + r"glpat-(?P<t>[A-Za-z0-9_\-]{20,})"),
        _tail_random("t", 4),
    ),
    KeyShape(
        "a Google API key",
        ("AIza",),
        re.compile(_B + r"AIza(?P<t>[0-9A-Za-z_\-]{35})(?![0-9A-Za-z_\-])"),
        _tail_random("t", 8),
    ),
    KeyShape(
        "a Slack token",
        ("xox", "hooks.slack.com/services/"),
        re.compile(
            _B + r"(?:xox[abposre]-\d{6,}-[A-Za-z0-9\-]{8,}"
            r"|https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,})"
        ),
    ),
    KeyShape(
        "a Hugging Face token",
        ("hf_",),
        re.compile(_B + r"hf_(?P<t>[A-Za-z0-9]{30,})(?![A-Za-z0-9_])"),
        _tail_random("t", max_words=0.85),  # letters only: more of them look like words
    ),
    KeyShape(
        "a Groq API key",
        ("gsk_",),
        re.compile(_B + r"gsk_(?P<t>[A-Za-z0-9]{40,})"),
        _tail_random("t"),
    ),
    KeyShape(
        "an npm token",
        ("npm_",),
        re.compile(_B + r"npm_(?P<t>[A-Za-z0-9]{36})(?![A-Za-z0-9])"),
        _tail_random("t"),
    ),
    KeyShape("a PyPI token", ("pypi-AgE",), re.compile(_B + r"pypi-AgE[A-Za-z0-9_\-]{50,}")),
    KeyShape(
        "an Azure storage key",
        ("AccountKey=",),
        re.compile(r"AccountKey=(?P<t>[A-Za-z0-9+/]{80,}={0,2})"),
        _tail_random("t"),
    ),
    KeyShape(
        "a JSON Web Token",
        ("eyJ",),
        # header.payload.signature, each base64url; the first two are JSON objects ({" is eyJ)
        re.compile(_B + r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}"),
    ),
    KeyShape(
        "a bearer token",
        ("Bearer", "bearer", "BEARER"),
        re.compile(r"(?i:bearer)\s+(?P<t>[A-Za-z0-9._~+/\-]{20,}=*)"),
        _tail_random("t", 12, max_words=0.75),
    ),
)


@dataclass(frozen=True)
class FoundKey:
    """A credential-shaped stretch of a text: what it looks like and where it is."""

    kind: str
    start: int
    end: int
    text: str
    masked: bool = True

    @property
    def shown(self) -> str:
        """The form a message may show: masked, or a private key's first line (its header,
        which says what it is and holds nothing secret)."""
        return mask(self.text) if self.masked else self.text.split("\n", 1)[0].strip()

    @property
    def scrubbed(self) -> str:
        """What replaces it in a cleaned text."""
        if not self.masked:
            return f"{self.shown} ***"
        return "Bearer ***" if self.kind == "a bearer token" else mask(self.text)


# Every shape's needles in one tuple: most texts (each row of a map) hold none of them, and
# one pass of `in` over these costs a fifth of asking each shape in turn.
_NEEDLES = tuple(sorted({needle for shape in KEY_SHAPES for needle in shape.needles}))


def find_keys(text: str) -> list[FoundKey]:
    """Every credential-shaped stretch of `text`, in order, one finding per stretch."""
    for needle in _NEEDLES:
        if needle in text:
            break
    else:
        return []
    found: list[FoundKey] = []
    for shape in KEY_SHAPES:
        if not any(needle in text for needle in shape.needles):
            continue
        for m in shape.pattern.finditer(text):
            if any(f.start < m.end() and m.start() < f.end for f in found):
                continue  # claimed by a more specific shape (sk-ant- is not also sk-)
            if shape.check is None or shape.check(m):
                found.append(FoundKey(shape.kind, m.start(), m.end(), m.group(0), shape.masked))
    found.sort(key=lambda f: f.start)
    return found


# ----- the holder ---------------------------------------------------------------------------------


def _check_key(value: str) -> None:
    """A key must fit in an HTTP header: printable ASCII, no spaces inside.

    Said at once, in one line that never shows the key: otherwise the first request fails
    inside the HTTP library with an encoding error that carries the whole header.
    """
    for i, ch in enumerate(value):
        if not ("!" <= ch <= "~"):
            what = (
                "a space"
                if ch == " "
                else "a line break"
                if ch in "\r\n"
                else "a control character"
                if ord(ch) < 32 or ord(ch) == 127
                else f"the non-ASCII character {ch!r}"
                if ch.isprintable()  # never a lone surrogate, which cannot be shown
                else f"the character U+{ord(ch):04X}"
            )
            raise ConfigError(
                f"The API key ({mask(value)}) holds {what} at position {i + 1}, which no API "
                "key has: copy it again from the provider's page (a pasted key sometimes picks "
                "up quotes, accents or line breaks)."
            )


class Secret:
    """Holds a credential; `repr`/`str`/format never show it. Call `.reveal()` at the wire.

    Surrounding white space is dropped; anything else that cannot go in an HTTP header
    (non-ASCII, control characters, inner spaces) is refused with a ConfigError that shows
    the key masked.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("An API key must be a non-empty string.")
        value = value.strip()
        _check_key(value)
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({mask(self._value)!r})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:  # never pickle a key into a cache or a notebook
        raise TypeError("a Secret cannot be pickled")


def redact(text: str, secrets: Iterable[Secret | str | None] = ()) -> str:
    """`text` with every given secret and every key-shaped string (`KEY_SHAPES`) masked."""
    for secret in secrets:
        if secret is None:
            continue
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value:
            text = text.replace(value, mask(value))
    found = find_keys(text)
    if not found:
        return text
    out: list[str] = []
    last = 0
    for f in found:
        out.append(text[last : f.start])
        out.append(f.scrubbed)
        last = f.end
    out.append(text[last:])
    return "".join(out)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` fit for a log line: credential headers replaced by `***`."""
    return {k: ("***" if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, unicode kept, floats as JSON writes them."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def cache_key(endpoint: str, request: Mapping[str, Any]) -> str:
    """sha256 of what determines a reply: the endpoint and the request body.

    `request` is the JSON body as sent (model, messages after trimming, sampling
    parameters, response format). Fields that do not change the reply (`stream`,
    `stream_options`, `user`) are dropped, so a streamed and a non-streamed request
    share an entry. Credentials never reach this function: they live in headers.

    An image sent inline (a `data:` URL) is keyed by the sha256 of its bytes, not its base64:
    the same picture is the same key, and the base64 is not copied into a second string.
    """
    body = {k: v for k, v in request.items() if k not in _NOT_IN_KEY}
    messages = body.get("messages")
    if isinstance(messages, list) and has_images(messages):
        body["messages"] = [_keyed_images(m) for m in messages]
    payload = canonical_json({"endpoint": endpoint.rstrip("/"), "request": body})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_NOT_IN_KEY = frozenset({"stream", "stream_options", "user"})


def _keyed_images(message: Any) -> Any:
    """`message` with each inline image's URL as `sha256:<hex of its bytes>` (a copy)."""
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, list):
        return message
    parts = []
    for part in content:
        info = image_info(part) if isinstance(part, Mapping) else None
        if info is None or info.sha256 is None or part.get("type") not in _IMAGE_PARTS:
            parts.append(part)
            continue
        inner = part.get("image_url")
        url = f"sha256:{info.sha256}"
        keyed = {**inner, "url": url} if isinstance(inner, Mapping) else url
        parts.append({**part, "image_url": keyed})
    return {**message, "content": parts}


_IMAGE_PARTS = frozenset({"image_url", "input_image"})
