"""How fast the outgoing-text checks run, and how precise they are, beside baselines measured
in the same run.

    python benchmarks/hygiene.py [--mb 4] [--row-chars 500]

The credential check runs on every prompt, every %%chatmap row included; redaction on every
prompt when `redact` is on. Prints throughput (MB/s) on typical prompt text (prose, a small
table, code; tests/core/hygiene_corpus.py) cut into rows, for:

- `find_keys` (the credential check), `redact_pii` (redaction) and `clean_messages` (both,
  on a system prompt plus the row, as `ChatSession.prepare_one` calls it, cache cold);
- baselines on the same rows: one `str.count` (the cost floor of reading the text once),
  `re.findall(r"\\d+")` (one simple regex pass) and `json.dumps` of the request body (work
  every request does anyway), and the token count of the row (what `prepare_one` also
  spends per row; its cache bypassed, as for a map's distinct rows).

Then the precision and recall figures of tests/core/test_keys.py (the key check) and
tests/core/test_hygiene.py (redaction), on the same corpora.
Timings on a shared machine are noisy: compare the figures of one run with each other.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "core"))

import hygiene_corpus as corpus  # noqa: E402

from ipychat.core import hygiene, tokens  # noqa: E402
from ipychat.core.keys import find_keys  # noqa: E402


def throughput(label: str, work: Callable[[str], object], rows: list[str], runs: int = 3) -> float:
    size = sum(len(r) for r in rows)
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for row in rows:
            work(row)
        best = min(best, time.perf_counter() - started)
    rate = size / best / 1e6
    per_row = best / len(rows) * 1e6
    print(f"  {label:44} {rate:9.1f} MB/s   {per_row:7.1f} µs per row")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=4.0, help="MB of typical text")
    parser.add_argument("--row-chars", type=int, default=500, help="characters per row")
    args = parser.parse_args()
    text = corpus.typical_text(random.Random(0), int(args.mb * 1e6))
    rows = [text[i : i + args.row_chars] for i in range(0, len(text), args.row_chars)]
    system = "You label customer messages. Reply with one word: positive, negative or neutral."
    print(f"{len(rows):,} rows of {args.row_chars} characters of typical prompt text")

    def cleaned(row: str) -> object:
        hygiene._scan.cache_clear()  # every row is new, as in a map
        messages = [{"role": "system", "content": system}, {"role": "user", "content": row}]
        return hygiene.clean_messages(messages, redact=True)

    def body(row: str) -> str:
        return json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": row}]},
            ensure_ascii=False,
        )

    digits = re.compile(r"\d+")
    print("checks:")
    keys = throughput("credential check (find_keys)", find_keys, rows)
    pii = throughput("redaction (redact_pii)", hygiene.redact_pii, rows)
    both = throughput("both, system + row (clean_messages)", cleaned, rows)
    print("baselines, same rows:")
    floor = throughput("one str.count('sk-')", lambda r: r.count("sk-"), rows)
    regex = throughput(r"one regex pass (re.findall \d+)", digits.findall, rows)
    dumps = throughput("json.dumps of the request body", body, rows)
    count = throughput(
        "token count (tokens.count_batch, no cache)",
        lambda r: tokens.count_batch([r], "gpt-4o"),
        rows,
    )
    print(
        f"the credential check takes {floor / keys:.0f}x the time of one substring scan, "
        f"{regex / keys:.1f}x one regex pass, {dumps / keys:.1f}x json.dumps, "
        f"{count / keys:.2f}x a token count"
    )
    print(
        f"redaction takes {regex / pii:.1f}x the time of one regex pass; both checks with "
        f"redact on (system + row, cold) {count / both:.2f}x a token count"
    )

    print("precision and recall (tests/core/test_keys.py, tests/core/test_hygiene.py):")
    harmless = corpus.not_keys(random.Random(6), 2000)
    flagged = sum(bool(find_keys(t)) for t in harmless)
    print(
        f"  key check precision   {len(harmless) - flagged:,}/{len(harmless):,} harmless texts pass"
    )
    found = Counter[str]()
    total = Counter[str]()
    for kind, prompt in corpus.keys(random.Random(7), 200):
        total[kind] += 1
        found[kind] += bool(find_keys(prompt))
    weakest = sorted(total, key=lambda k: found[k] / total[k])[:3]
    print(
        f"  key check recall      {sum(found.values()):,}/{sum(total.values()):,} keys of "
        f"{len(total)} formats; weakest: "
        + ", ".join(f"{k} {found[k] / total[k]:.1%}" for k in weakest)
    )
    lines = corpus.keep(random.Random(8), 5000)
    damaged = sum(hygiene.redact_pii(line).text != line for line in lines)
    print(
        f"  redaction precision   {len(lines) - damaged:,}/{len(lines):,} ordinary lines unchanged"
    )
    masked = Counter[str]()
    seen = Counter[str]()
    for kind, _label, prompt, expected in corpus.personal(random.Random(9), 60):
        seen[kind] += 1
        masked[kind] += hygiene.redact_pii(prompt).text == expected
    print(
        "  redaction recall      "
        + ", ".join(f"{k} {masked[k]}/{seen[k]} ({masked[k] / seen[k]:.1%})" for k in seen)
    )


if __name__ == "__main__":
    main()
