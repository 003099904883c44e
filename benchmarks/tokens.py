"""How fast ipychat counts tokens, beside plain tiktoken measured in the same run.

    python benchmarks/tokens.py [--prompts 10000] [--runs 200]

Prints: the cold load time of each bundled encoding (first use in a fresh interpreter), counting
throughput for a batch of realistic prompts (one by one and batched), and the time to count an
8,000-token draft, the figure that decides whether the panel can count as the user types
(goal: under 10 ms). The baseline is tiktoken's own loader (`tiktoken.get_encoding`, pointed at
a temporary TIKTOKEN_CACHE_DIR filled with the bundled files, so no network) and its
`Encoding.encode`, which also scans every text for special tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tiktoken  # noqa: E402

from ipychat.core import tokens  # noqa: E402

DATA = ROOT / "ipychat" / "data"
URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
MODELS = {"o200k_base": "gpt-4o", "cl100k_base": "gpt-4"}

SENTENCES = [
    "The quarterly revenue grew 12.4% year over year, driven mostly by the EMEA region.",
    "Customers reported that the checkout page times out when the cart has more than 50 items.",
    "Please summarise the following meeting notes in three bullet points for the VP.",
    "I ordered the blue jacket in size M but received a red one in size XL; I'd like a refund.",
    "def moving_average(xs: list[float], k: int) -> list[float]:\n"
    "    return [sum(xs[i:i+k]) / k for i in range(len(xs) - k + 1)]",
    "SELECT customer_id, SUM(amount) FROM orders WHERE created_at >= '2024-01-01' GROUP BY 1;",
    "Le produit est arrivé en retard et l'emballage était abîmé, mais le service client a réagi.",
    "Die Lieferung war pünktlich, aber die Größe fällt deutlich kleiner aus als angegeben.",
    "El hotel estaba limpio y el personal fue amable, aunque el desayuno era algo caro.",
    "配送はとても早く、商品の品質にも満足しています。また利用したいと思います。",
    "这个应用程序的界面很直观，但是在低端手机上运行有点慢。",
    "Great phone 👍 battery lasts two days 🔋 but the camera struggles at night 🌙.",
    "Error: ConnectionResetError(104, 'Connection reset by peer') after 3 retries at 14:02:17 UTC.",
    "Translate to English: « Je voudrais réserver une table pour quatre personnes ce soir. »",
    "The patient presented with mild fever (38.2 °C), fatigue and a dry cough lasting 5 days.",
    "Our API returns HTTP 429 when the rate limit of 3,500 requests per minute is exceeded.",
    "Write a haiku about autumn leaves falling on a quiet river.",
    "Как улучшить производительность запросов к базе данных PostgreSQL?",
    "Extract the invoice number, the total and the due date from the text below as JSON.",
    "Note: the contract renews automatically unless cancelled 30 days before the end date.",
]
TEMPLATES = [
    "Classify the sentiment of this review as positive, negative or neutral.\n\nReview: {}",
    "You are a helpful assistant. Answer concisely.\n\n{}",
    "Summarise in one sentence:\n{}",
    "Extract all named entities (people, places, organisations) as a JSON list.\n\nText:\n{}",
    "{}\n\nWhat is the main issue described above, and how should support respond?",
]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        body = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 12)))
        prompts.append(rng.choice(TEMPLATES).format(body))
    return prompts


def make_draft(enc: tiktoken.Encoding, target: int = 8000, seed: int = 1) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    while len(enc.encode_ordinary(" ".join(parts))) < target:
        parts.extend(rng.choice(SENTENCES) for _ in range(20))
    text = " ".join(parts)
    return enc.decode(enc.encode_ordinary(text)[:target])


def best(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def median_ms(fn: Callable[[int], object], runs: int) -> float:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def cold_load(code: str, env: dict[str, str]) -> float:
    """Seconds for `code` to load an encoding in a fresh interpreter (median of 3)."""
    script = f"import time, sys\nsys.path.insert(0, {str(ROOT)!r})\n{code}"
    times = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        times.append(float(out.stdout))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    cache_dir = Path(tempfile.mkdtemp(prefix="tiktoken-cache-"))
    try:
        for name in MODELS:
            key = hashlib.sha1(URL.format(name).encode()).hexdigest()
            shutil.copy(DATA / f"{name}.tiktoken", cache_dir / key)
        env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache_dir)}
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
        run(args.prompts, args.runs, env)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def run(n_prompts: int, runs: int, env: dict[str, str]) -> None:
    print(
        f"python {sys.version.split()[0]}, tiktoken {tiktoken.__version__}, {os.cpu_count()} CPUs"
    )
    prompts = make_prompts(n_prompts)

    print("\ncold load, first use in a fresh interpreter (median of 3)")
    print(f"  {'encoding':<12} {'ipychat.core.tokens':>15} {'tiktoken.get_encoding':>22}")
    for name in MODELS:
        ours = cold_load(
            "from ipychat.core import tokens\nt = time.perf_counter()\n"
            f"tokens.get_encoding({name!r})\nprint(time.perf_counter() - t)",
            env,
        )
        theirs = cold_load(
            "import tiktoken\nt = time.perf_counter()\n"
            f"tiktoken.get_encoding({name!r})\nprint(time.perf_counter() - t)",
            env,
        )
        print(f"  {name:<12} {ours * 1000:>12.0f} ms {theirs * 1000:>19.0f} ms")

    for name, model in MODELS.items():
        bench_encoding(name, model, prompts, runs)


def bench_encoding(name: str, model: str, prompts: list[str], runs: int) -> None:
    ours = tokens.get_encoding(name)
    ref = tiktoken.get_encoding(name)
    total = sum(len(ours.encode_ordinary(p)) for p in prompts)
    print(
        f"\n{name} ({model}): {len(prompts):,} prompts, {total:,} tokens "
        f"(mean {total / len(prompts):.0f}); best of 3"
    )

    def single() -> None:
        tokens.clear_cache()  # every prompt is new, as in %%chatmap
        for p in prompts:
            tokens.count_text(p, model)

    def messages() -> None:
        tokens.clear_cache()
        for p in prompts:
            tokens.count_messages([{"role": "user", "content": p}], model)

    rows = [
        ("ipychat count_text, one by one", best(single)),
        ("ipychat count_messages, one by one", best(messages)),
        ("ipychat count_batch", best(lambda: tokens.count_batch(prompts, model))),
        ("tiktoken encode, one by one", best(lambda: [ref.encode(p) for p in prompts])),
        (
            "tiktoken encode_ordinary, one by one",
            best(lambda: list(map(ref.encode_ordinary, prompts))),
        ),
        ("tiktoken encode_batch", best(lambda: ref.encode_batch(prompts))),
        ("tiktoken encode_ordinary_batch", best(lambda: ref.encode_ordinary_batch(prompts))),
    ]
    for label, seconds in rows:
        rate = total / seconds / 1e6
        print(f"  {label:<38} {seconds * 1000:>8.0f} ms {rate:>7.2f} M tokens/s")

    draft = make_draft(ref)
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(SENTENCES[i:])}
        for i in range(20)
    ]
    tokens.clear_cache()
    tokens.count_messages(history, model)  # the panel has counted the history before

    def keystroke(i: int) -> None:
        # a new string on every keystroke, so the cache cannot answer for the draft
        tokens.count_messages([*history, {"role": "user", "content": draft + str(i)}], model)

    print(f"  {len(ref.encode_ordinary(draft)):,}-token draft, median of {runs} runs:")
    draft_rows = [
        ("ipychat count_text (new text)", lambda i: tokens.count_text(draft + str(i), model)),
        ("ipychat count_text (same text, cached)", lambda i: tokens.count_text(draft, model)),
        ("ipychat count_messages, 20-turn history", keystroke),
        ("tiktoken encode", lambda i: ref.encode(draft + str(i))),
        ("tiktoken encode_ordinary", lambda i: ref.encode_ordinary(draft + str(i))),
    ]
    for label, fn in draft_rows:
        goal = "  (goal < 10 ms)" if label == "ipychat count_text (new text)" else ""
        print(f"    {label:<40} {median_ms(fn, runs):>8.3f} ms{goal}")


if __name__ == "__main__":
    main()
