"""Corpora for the precision and recall of the key check (tests/core/test_keys.py) and of
redaction (tests/core/test_hygiene.py), and for their speed (benchmarks/hygiene.py).

Everything credential-shaped is generated at run time from a seeded random generator: no
real-looking credential literal is committed (secret scanners would flag the repository,
and a literal could be mistaken for a leaked key). Phone numbers use each country's
reserved or fictional ranges where the template fixes digits (555-01xx, 020 7946 0xxx);
elsewhere digits are random, so the tests measure the formats, not a list of examples.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import string
from collections.abc import Callable

B62 = string.ascii_letters + string.digits
B64URL = B62 + "-_"
B64 = B62 + "+/"
HEX = "0123456789abcdef"
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

PRIVATE = "PRIVATE" + " KEY"  # split so that no file holds a PEM header literal


def _r(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url_json(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _jwt(rng: random.Random) -> str:
    header = _b64url_json({"alg": "HS256", "typ": "JWT"})
    payload = _b64url_json({"sub": _r(rng, string.digits, 10), "iat": rng.randrange(10**9)})
    return f"{header}.{payload}.{_r(rng, B64URL, 43)}"


def _pem(rng: random.Random, label: str) -> str:
    body = "\n".join(_r(rng, B64, 64) for _ in range(3))
    return f"-----BEGIN {label}{PRIVATE}-----\n{body}\n-----END {label}{PRIVATE}-----"


# kind → generator of one key of that issuer's documented format.
KEY_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "openai project": lambda r: "sk-proj-" + _r(r, B64URL, 74) + "T3BlbkFJ" + _r(r, B64URL, 74),
    "openai project (no marker)": lambda r: "sk-proj-" + _r(r, B64URL, 156),
    "openai service account": lambda r: "sk-svcacct-" + _r(r, B64URL, 150),
    "openai admin": lambda r: "sk-admin-" + _r(r, B64URL, 150),
    "openai legacy": lambda r: "sk-" + _r(r, B62, 20) + "T3BlbkFJ" + _r(r, B62, 20),
    "openai legacy (no marker)": lambda r: "sk-" + _r(r, B62, 48),
    "deepseek": lambda r: "sk-" + _r(r, HEX, 32),
    "openrouter": lambda r: "sk-or-v1-" + _r(r, HEX, 64),
    "anthropic": lambda r: "sk-ant-api03-" + _r(r, B64URL, 93) + "AA",
    "anthropic admin": lambda r: "sk-ant-admin01-" + _r(r, B64URL, 93) + "AA",
    "aws access key id": lambda r: "AKIA" + _r(r, B32, 16),
    "aws temporary key id": lambda r: "ASIA" + _r(r, B32, 16),
    "aws secret key": lambda r: "aws_secret_access_key = " + _r(r, B64, 40),
    "github classic": lambda r: r.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + _r(r, B62, 36),
    "github fine-grained": lambda r: "github_pat_" + _r(r, B62, 22) + "_" + _r(r, B62, 59),
    "gitlab": lambda r: "glpat-" + _r(r, B64URL, 20),
    "google": lambda r: "AIza" + _r(r, B64URL, 35),
    "slack bot": lambda r: (
        f"xoxb-{_r(r, string.digits, 12)}-{_r(r, string.digits, 13)}-{_r(r, B62, 24)}"
    ),
    "slack user": lambda r: (
        f"xoxp-{_r(r, string.digits, 12)}-{_r(r, string.digits, 12)}-"
        f"{_r(r, string.digits, 13)}-{_r(r, HEX, 32)}"
    ),
    "slack webhook": lambda r: (
        "https://hooks.slack.com/services/T"
        + _r(r, B32[:26] + "0123456789", 8)
        + "/B"
        + _r(r, B32[:26] + "0123456789", 10)
        + "/"
        + _r(r, B62, 24)
    ),
    "hugging face": lambda r: "hf_" + _r(r, string.ascii_letters, 34),
    "stripe": lambda r: r.choice(["sk_live_", "sk_test_", "rk_live_"]) + _r(r, B62, 99),
    "groq": lambda r: "gsk_" + _r(r, B62, 52),
    "npm": lambda r: "npm_" + _r(r, B62, 36),
    "pypi": lambda r: "pypi-AgEIcHlwaS5vcmc" + _r(r, B64URL, 70),
    "azure storage": lambda r: "AccountKey=" + _r(r, B64, 86) + "==",
    "jwt": _jwt,
    "bearer": lambda r: "Authorization: Bearer " + _r(r, B64URL, 40),
    "pem rsa": lambda r: _pem(r, "RSA "),
    "pem openssh": lambda r: _pem(r, "OPENSSH "),
    "pem pkcs8": lambda r: _pem(r, ""),
    "pem encrypted": lambda r: _pem(r, "ENCRYPTED "),
    "pem ec": lambda r: _pem(r, "EC "),
}

# Where a key turns up in a prompt.
KEY_CONTEXTS = (
    "{k}",
    "my key is {k}, is it valid?",
    "export OPENAI_API_KEY={k}",
    '{{"api_key": "{k}", "model": "gpt-4o"}}',
    "curl -H 'X-Token: {k}' https://example.com",
    "token={k}&page=2",
    "`{k}`",
    "why does this fail?\n{k}\nthanks",
)


def keys(rng: random.Random, per_kind: int) -> list[tuple[str, str]]:
    """(kind, prompt) pairs: `per_kind` generated keys of every format, each in a context."""
    return [
        (kind, rng.choice(KEY_CONTEXTS).format(k=make(rng)))
        for kind, make in KEY_FORMATS.items()
        for _ in range(per_kind)
    ]


# ----- text that must never be taken for a key -----------------------------------------------

NOT_KEYS = [
    # the review's examples
    "sk-2024-01-15-quarterly-report.csv",
    "sk-1029384756-blue-large-cotton",
    "sk-learn-compatible-estimators-toolkit",
    # sk- as a word, a product code, an identifier, a placeholder
    "see sk-learn's docs: sklearn is scikit-learn",
    "task-based-approach-to-modelling-and-more",
    "risk-free-investment-strategy-2024-guide",
    "SKU sk-000123-000456-000789-001011",
    "sk-550e8400-e29b-41d4-a716-446655440000",
    "sk-YOUR-API-KEY-HERE",
    "sk-" + "x" * 48,  # placeholders built at run time: no key-shaped literal in the repo
    "sk-proj-" + "X" * 56,
    "sk-proj-...",
    "the key sk-...wxyz is masked",
    "sk-SomeVeryLongCamelCaseIdentifierName",
    "sk-2024Q1SalesReportFinalVersion2",
    "sk-DataScienceTeamQuarterlyReport2023Final",
    "sk-" + "123456789012345678901234567890",
    "sk-" + "abcdefghijklmnopqrstuvwxyz",
    "sk-" + "0" * 40,
    "sk-your_openai_api_key_goes_here_please",
    # Bearer as a word and as a placeholder
    "Authorization: Bearer <your token here>",
    "Authorization: Bearer YOUR_ACCESS_TOKEN_GOES_HERE",
    "Authorization: Bearer $OPENAI_API_KEY",
    "Authorization: Bearer ${ACCESS_TOKEN}",
    "Authorization: Bearer {{token}}",
    "The Bearer of bad news arrived yesterday evening",
    "bearer tokens are described in RFC6750 and elsewhere",
    "bearer_token_authentication_middleware_config",
    # AWS prefixes as words
    "ASIAPACIFICREGIONALOFFICE",
    "AKIA" + "EXAMPLEKEYIDENTITY",  # joined at run time: no key-shaped literal is tracked
    "ASIA-PACIFIC region sales grew 12%",
    "ASIAN MARKETS AND EUROPEAN STOCKS",
    "aws_secret_access_key = <YOUR_SECRET_ACCESS_KEY>",
    "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}",
    "aws_secret_access_key: os.environ['AWS_SECRET_ACCESS_KEY']",
    # other prefixes in code and prose
    "hf_hub_download(repo_id='bert-base-uncased', filename='config.json')",
    "hf_DataCollatorForLanguageModeling",
    "HF_HOME=/data/hf_cache_directory_for_models",
    "ghp_ is the prefix of GitHub classic tokens",
    "github_pat_ is the fine-grained prefix",
    "AIzaSy... is how Google keys start",
    "eyJhbGciOiJIUzI1NiJ9 is a JWT header",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
    "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa",
    "xoxb-your-token",
    "npm_config_registry=https://registry.npmjs.org",
    "gsk_placeholder",
    "sk_test_placeholder_value",
    "glpat-xxxxxxxxxxxxxxxxxxxx",
    "AccountKey=<your-account-key>",
    "pypi-AgE is how PyPI tokens start",
    # hashes and ids without a key prefix
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "commit 3b18e512dba79e4c8300dd08aeb37f8e728b8dad",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "base64 SGVsbG8gV29ybGQhIFRoaXMgaXMgYSB0ZXN0Lg==",
    "df.groupby('sku').sum()  # akia is a word",
    "Ask the sk- team about skiing and risk-free tasks.",
    "sk-1234",
]

_WORDS = [
    "quarterly",
    "report",
    "final",
    "draft",
    "blue",
    "large",
    "cotton",
    "learn",
    "compatible",
    "estimators",
    "toolkit",
    "sales",
    "data",
    "team",
    "summary",
    "revenue",
    "north",
    "south",
    "model",
    "training",
    "eval",
    "export",
    "backup",
    "notes",
    "invoice",
    "customer",
    "product",
    "pipeline",
    "feature",
    "store",
    "index",
    "vector",
    "cache",
]


def not_keys(rng: random.Random, n: int) -> list[str]:
    """`NOT_KEYS` plus `n` generated file names, slugs and identifiers with key prefixes."""

    def words(k: int, sep: str = "-") -> str:
        return sep.join(rng.choice(_WORDS) for _ in range(k))

    def date() -> str:
        day = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(2000))
        return day.strftime(rng.choice(["%Y-%m-%d", "%Y%m%d", "%Y_%m_%d"]))

    makers: list[Callable[[], str]] = [
        lambda: f"sk-{date()}-{words(2)}.{rng.choice(['csv', 'parquet', 'xlsx', 'json'])}",
        lambda: f"sk-{rng.randrange(10**9, 10**10)}-{words(3)}",
        lambda: f"sk-{words(rng.randint(3, 6))}",
        lambda: (
            "sk-" + "".join(w.capitalize() for w in rng.sample(_WORDS, 5)) + str(rng.randrange(100))
        ),
        lambda: f"hf_{words(4, '_')}",
        lambda: "hf_" + "".join(w.capitalize() for w in rng.sample(_WORDS, 6)),
        lambda: f"Bearer {words(4, '_')}",
        lambda: f"Bearer {'-'.join(rng.sample(_WORDS, 4))}-{rng.randrange(1000)}",
        lambda: f"sk-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}-{words(2)}",
    ]
    return NOT_KEYS + [rng.choice(makers)() for _ in range(n)]


# ----- personal data: what must be masked ----------------------------------------------------

# (country, template): '#' a random digit, 'N' a random non-zero digit, 'A' 2-9 (a North
# American area code or exchange never starts with 0 or 1).
PHONE_FORMATS: list[tuple[str, str]] = [
    ("US", "(A##) 555-01##"),
    ("US", "A##-555-01##"),
    ("US", "A##.555.01##"),
    ("US", "+1 A## 555 01##"),
    ("US", "+1-A##-555-01##"),
    ("US", "+1A##55501##"),
    ("US", "1-800-555-01##"),
    ("UK", "020 7946 0###"),
    ("UK", "+44 20 7946 0###"),
    ("UK", "+44 (0)20 7946 0###"),
    ("UK", "07700 900###"),
    ("UK", "+44 7700 900###"),
    ("UK", "0161 496 0###"),
    ("UK", "01632 960###"),
    ("DE", "030 N#######"),
    ("DE", "+49 30 N#######"),
    ("DE", "+49 (0)30 N######"),
    ("DE", "0171 N######"),
    ("DE", "089/N######"),
    ("DE", "+49 171 N######"),
    ("DE", "030 N### ####"),
    ("FR", "0N ## ## ## ##"),
    ("FR", "0N.##.##.##.##"),
    ("FR", "0N-##-##-##-##"),
    ("FR", "+33 N ## ## ## ##"),
    ("FR", "+33N########"),
    ("IN", "+91 N#### #####"),
    ("IN", "+91-N####-#####"),
    ("IN", "0N# N### ####"),
    ("IN", "0N#-N#######"),
    ("IN", "+91 N# #### ####"),
    ("BR", "(N#) 9####-####"),
    ("BR", "(N#) N###-####"),
    ("BR", "+55 N# 9####-####"),
    ("BR", "+55 (N#) 9####-####"),
    ("JP", "0N-####-####"),
    ("JP", "0N0-####-####"),
    ("JP", "+81 N-####-####"),
    ("JP", "+81 N0 #### ####"),
    ("JP", "0120-###-###"),
    ("AU", "(0N) #### ####"),
    ("AU", "0N #### ####"),
    ("AU", "04## ### ###"),
    ("AU", "+61 N #### ####"),
    ("AU", "+61 4## ### ###"),
    ("E.164", "+1N#########"),
    ("E.164", "+44N#########"),
    ("E.164", "+49N##########"),
    ("E.164", "+33N########"),
    ("E.164", "+91N#########"),
    ("E.164", "+55N#9########"),
    ("E.164", "+81N#########"),
    ("E.164", "+61N########"),
]
# Numbers with a keyword before them: any grouping counts then.
KEYWORD_PHONES: list[tuple[str, str, str]] = [
    ("FR", "tél. ", "0N ## ## ## ##"),
    ("US", "Phone: ", "N##555####"),
    ("IN", "mobile ", "N#### #####"),
    ("DE", "Tel.: ", "0N# N######"),
    ("JP", "電話 ", "0N0########"),
]
PHONE_CONTEXTS = (
    "call {p}",
    "Contact: {p}",
    "{p}",
    "reach me at {p} after 6pm",
    "({p})",
    "numbers: {p}, and more",
    "Ring {p}.",
)


def _fill(rng: random.Random, template: str) -> str:
    return "".join(
        str(rng.randrange(10))
        if c == "#"
        else str(rng.randrange(1, 10))
        if c == "N"
        else str(rng.randrange(2, 10))
        if c == "A"
        else c
        for c in template
    )


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    digits = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # doubled: every second digit from the right, the check digit excluded
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


# (issuer, prefixes, length, grouping)
CARD_FORMATS: list[tuple[str, tuple[str, ...], int, tuple[int, ...]]] = [
    ("Visa", ("4",), 16, (4, 4, 4, 4)),
    ("Mastercard", ("51", "52", "53", "54", "55", "2221", "2720"), 16, (4, 4, 4, 4)),
    ("Amex", ("34", "37"), 15, (4, 6, 5)),
    ("Discover", ("6011", "65"), 16, (4, 4, 4, 4)),
    ("JCB", ("3528", "3589"), 16, (4, 4, 4, 4)),
    ("Diners", ("36", "38"), 14, (4, 6, 4)),
]


CARD_CONTEXTS = (
    "card {c} exp 12/27",
    "Visa: {c}",
    "paid with {c}.",
    "{c}",
    "number {c}, cvv on the back",
)


def _grouped(digits: str, groups: tuple[int, ...], sep: str) -> str:
    out, start = [], 0
    for size in groups:
        out.append(digits[start : start + size])
        start += size
    return sep.join(out)


_FIRST = [
    "jane",
    "john",
    "maria",
    "li",
    "ahmed",
    "josé",
    "françois",
    "müller",
    "o'brien",
    "anne-marie",
    "yuki",
    "priya",
]
_LAST = [
    "doe",
    "smith",
    "garcia",
    "wang",
    "khan",
    "álvarez",
    "dupont",
    "schmidt",
    "tanaka",
    "singh",
    "silva",
]
_DOMAINS = [
    "example.com",
    "example.org",
    "mail.example.co.uk",
    "example.de",
    "exemple.fr",
    "beispiel.de",
    "example.com.br",
    "example.co.jp",
    "example.in",
    "uni.example.edu.au",
]


def personal(rng: random.Random, per_format: int) -> list[tuple[str, str, str, str]]:
    """(kind, label, text, expected) for phone, card and e-mail formats: `text` holds one item
    in a context sentence, `expected` is the text with the item's placeholder."""
    out: list[tuple[str, str, str, str]] = []
    for country, template in PHONE_FORMATS:
        for _ in range(per_format):
            context = rng.choice(PHONE_CONTEXTS)
            number = _fill(rng, template)
            out.append(
                (
                    "phone",
                    f"{country} {template}",
                    context.format(p=number),
                    context.format(p="[phone]"),
                )
            )
    for country, keyword, template in KEYWORD_PHONES:
        for _ in range(per_format):
            number = _fill(rng, template)
            out.append(
                (
                    "phone",
                    f"{country} {keyword}{template}",
                    f"{keyword}{number}",
                    f"{keyword}[phone]",
                )
            )
    for issuer, prefixes, length, groups in CARD_FORMATS:
        for sep in (" ", "-", ""):
            for _ in range(per_format):
                digits = _luhn_complete(rng, rng.choice(prefixes), length)
                shown = _grouped(digits, groups, sep) if sep else digits
                context = rng.choice(CARD_CONTEXTS)
                out.append(
                    (
                        "card",
                        f"{issuer} {'grouped by ' + repr(sep) if sep else 'no separators'}",
                        context.format(c=shown),
                        context.format(c="[card]"),
                    )
                )
    for _ in range(per_format * 6):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        local = rng.choice(
            [
                f"{first}.{last}",
                f"{first}{rng.randrange(100)}",
                f"{first[0]}.{last}+news",
                f"{first}_{last}".upper(),
            ]
        )
        address = f"{local}@{rng.choice(_DOMAINS)}"
        out.append(("email", "e-mail", f"write to <{address}> today", "write to <[email]> today"))
    return out


# ----- ordinary data that redaction must leave exactly as it is ------------------------------

KEEP = [
    # the review's examples
    "created 2024-01-15 10:30:45 UTC",
    "ids 1001 1002 1003",
    "between 2021 2022 2023",
    "scores 88 92 75 64 99",
    "Population 1 234 567 890",
    # dates and times
    "on 2024-03-15 at 10.0.0.12",
    "01-15-2024 10:30",
    "05.01.2024",
    "15/01/2024 and 2024/01/15",
    "2024 01 15 10 30 45",
    "1705314645123 ms since the epoch",
    "2024年1月15日 10時30分",
    "Mon, 15 Jan 2024 10:30:45 +0000",
    "2024-01-15T10:30:45.123456+05:30",
    "20240115 103045",
    "10h30 - 12h45",
    "(2021) 2022 2023",
    # ids, orders, codes
    "order 1234567890123 shipped",
    "order #0123-4567-8901",
    "chapters 01 02 03 04 05",
    "bins 05 10 15 20 25",
    "days 01 08 15 22 29",
    "lottery 04 11 23 38 45",
    "ids 0001 0002 0003 0004",
    "tracking 9400 1000 0000 0000 0000 00",
    "ORD-2024-000123 and INV 2024 0001 23",
    "ISBN 978-3-16-148410-0",
    "ISBN 0-306-40615-2",
    "ISBN-10: 0306406152",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "IBAN DE89 3704 0044 0532 0130 00",
    "SSN-like 123-45-6789 is not a phone",
    "4111 1111 1111 1112",  # fails Luhn; four groups of four is no phone either
    "1234 5678 9012 3456",  # no issuer starts with 1
    # numbers
    "the year 2024, 3.14159, 42",
    "ratio 0.4111111111111111 and 4111111111111111.5",
    "$1,234.56 and € 1 234,56 and 1.234.567,89 EUR",
    "-33.8688, 151.2093",
    "48.8566° N, 2.3522° E",
    "version 1.2.3.4567",
    "python 3.11.7, numpy 1.26.4, pandas 2.1.0",
    "192.168.1.100 and 10.0.0.1:8080 and fe80::1ff:fe23:4567:890a",
    "matrix 0.5 0.25 0.125 0.0625",
    "1e-05 2.5e+10 -3.2E-4",
    "x = [1, 2, 3, 10, 200, 3000]",
    "row | 12 | 3456 | 78 | 9012 |",
    "0.12 0.34 0.56 0.78 0.90",
    "+12 -3 +45 -6",
    # addresses-like that are not e-mail
    "pip install pandas==2.1.0 numpy@1.26",
    "y = X @ W.T + b",
    "@decorator and @app.route('/x')",
]


def _years(rng: random.Random) -> range:
    first = rng.randrange(1950, 2020)
    return range(first, first + rng.randint(3, 6))


def _padded_ids(rng: random.Random) -> str:
    """Sorted zero-padded ids of one width: 007 042 133 or 0012 0345 0678 0901."""
    width = rng.randint(2, 4)
    return " ".join(f"{i:0{width}d}" for i in sorted(rng.sample(range(1, 10**width), 4)))


def keep(rng: random.Random, n: int) -> list[str]:
    """`KEEP` plus `n` generated lines of dates, times, ids, prices, coordinates, versions,
    IP addresses, numeric tables, ISBNs and order numbers."""

    def date() -> dt.datetime:
        return dt.datetime(2000, 1, 1) + dt.timedelta(seconds=rng.randrange(10**9))

    def isbn13() -> str:
        digits = "978" + "".join(str(rng.randrange(10)) for _ in range(9))
        check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10) % 10
        d = digits + str(check)
        return f"{d[:3]}-{d[3]}-{d[4:6]}-{d[6:12]}-{d[12]}"

    def table_row() -> str:
        sep = rng.choice([" ", "\t", ", ", " | ", ";"])
        cells = [
            rng.choice(
                [
                    str(rng.randrange(1, 100_000)),
                    f"{rng.uniform(-1000, 1000):.{rng.randrange(1, 5)}f}",
                    str(rng.randrange(1900, 2030)),
                    f"{rng.randrange(1, 10**6):,}",
                ]
            )
            for _ in range(rng.randint(3, 8))
        ]
        return sep.join(cells)

    date_formats = [
        "%Y-%m-%d",
        "%d/%m/%Y",
        "%m/%d/%Y",
        "%d.%m.%Y",
        "%Y/%m/%d",
        "%d-%m-%Y",
        "%Y%m%d",
        "%d %b %Y",
        "%B %d, %Y",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S UTC",
        "%d.%m.%Y %H:%M",
        "%H:%M",
        "%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%m/%d/%Y %I:%M %p",
        "%a %d %b %Y %H:%M:%S",
    ]
    makers: list[Callable[[], str]] = [
        lambda: f"created {date().strftime(rng.choice(date_formats))}",
        lambda: (
            f"from {date().strftime(rng.choice(date_formats))} to {date().strftime(rng.choice(date_formats))}"
        ),
        lambda: (
            "ids " + " ".join(map(str, sorted(rng.sample(range(100, 10**6), rng.randint(3, 6)))))
        ),
        lambda: "years " + " ".join(map(str, _years(rng))),
        lambda: "scores " + " ".join(str(rng.randrange(10, 100)) for _ in range(rng.randint(4, 8))),
        lambda: f"population {rng.randrange(10**6, 10**10):,}".replace(
            ",", rng.choice([" ", ",", "."])
        ),
        lambda: f"price {rng.choice(['$', '€', '£', '¥'])}{rng.uniform(1, 10**5):,.2f}",
        lambda: (
            f"at {rng.uniform(-90, 90):.{rng.randrange(2, 7)}f}, {rng.uniform(-180, 180):.{rng.randrange(2, 7)}f}"
        ),
        lambda: "version " + ".".join(str(rng.randrange(0, 30)) for _ in range(rng.randint(2, 4))),
        lambda: (
            "host "
            + ".".join(str(rng.randrange(256)) for _ in range(4))
            + rng.choice(["", f":{rng.randrange(1, 65536)}"])
        ),
        lambda: table_row(),
        lambda: f"ISBN {isbn13()}",
        lambda: (
            f"order #{rng.choice(['A', 'ORD', 'INV'])}-{rng.randrange(2000, 2030)}-{rng.randrange(10**6):06d}"
        ),
        lambda: (
            f"order {rng.randrange(10 ** (w := rng.choice([12, 13, 14, 17, 18])), 10 ** (w + 1))}"
        ),
        lambda: "ids " + _padded_ids(rng),
        lambda: f"epoch {rng.randrange(10**9, 2 * 10**9)}",
    ]
    return KEEP + [rng.choice(makers)() for _ in range(n)]


# ----- typical prompt text, for the speed figure ---------------------------------------------


def typical_text(rng: random.Random, n_chars: int) -> str:
    """Prose, a small table and code, like a data scientist's prompts (no secret, no PII)."""
    parts = [
        "Summarise the quarterly sales by region and explain the trend. ",
        "The dataframe has columns id, date, region, units, price, and revenue. ",
        f"created {dt.date(2024, 1, 15)} 10:30:45 UTC, ids 1001 1002 1003, between 2021 2022 2023. ",
        "def clean(df):\n    return df.dropna().groupby('region').sum()\n",
        "| region | units | revenue |\n| north | 1 234 | 56,789.00 |\n| south | 987 | 43,210.50 |\n",
        "Use scikit-learn's LogisticRegression with C=0.5 and report accuracy 0.87. ",
    ]
    out: list[str] = []
    size = 0
    while size < n_chars:
        part = rng.choice(parts)
        out.append(part)
        size += len(part)
    return "".join(out)[:n_chars]
