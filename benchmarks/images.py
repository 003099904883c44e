"""What an image costs the kernel on the way out: its cache key and its token count.

    python benchmarks/images.py [--megapixels 4] [--repeat 20]

A request body holding one PNG image part (random pixels, so it does not compress: a few MB
of base64) is keyed and counted, `--repeat` times, and the median and peak extra memory of
each is printed beside baselines from the same run:

- `cache_key`, the image part's URL a `DataURL` (as `{fig}` and `ipychat.image` make it): the
  key names the image by the SHA-256 remembered with it, so the base64 is neither re-hashed
  nor copied into the canonical JSON;
- `cache_key`, the same URL as a plain `str` (a thread restored from a notebook): decoded
  once and hashed;
- baseline: `canonical_json` + sha256 of the body as it is (what keying did before images:
  the base64 copied into one more string, then hashed);
- `count_messages` with the `DataURL` (size known) and with the plain string (decoded).

Goal: keying a `DataURL` body costs a small fraction of the baseline and holds no second
copy of the base64 (its peak extra memory is well under the base64's size).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image as PILImage

from ipychat.core import images, tokens
from ipychat.core.keys import cache_key, canonical_json

ENDPOINT = "https://api.openai.com/v1"


def random_png(megapixels: float) -> bytes:
    side = int((megapixels * 1e6) ** 0.5)
    picture = PILImage.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def body(url: str) -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url}}
    content = [{"type": "text", "text": "What is in this picture?"}, part]
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}


def measure(func: Callable[[], object], repeat: int) -> tuple[float, int]:
    """(median seconds, peak extra bytes allocated during one call)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    func()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    picture = images.image(random_png(args.megapixels))
    rich, plain = body(picture.url), body(str(picture.url))
    size = len(picture.url)
    print(
        f"image: {picture.describe}, {len(picture.data) / 2**20:.1f} MB; base64 {size / 2**20:.1f} MB"
    )

    def baseline() -> str:
        return hashlib.sha256(
            canonical_json({"endpoint": ENDPOINT, "request": plain}).encode()
        ).hexdigest()

    rows = [
        ("cache_key, DataURL", lambda: cache_key(ENDPOINT, rich)),
        ("cache_key, plain str", lambda: cache_key(ENDPOINT, plain)),
        ("baseline: canonical JSON + sha256", baseline),
        ("count_messages, DataURL", lambda: tokens.count_messages(rich["messages"], "gpt-4o")),
        ("count_messages, plain str", lambda: tokens.count_messages(plain["messages"], "gpt-4o")),
    ]
    results = {name: measure(func, args.repeat) for name, func in rows}
    base_time, base_peak = results["baseline: canonical JSON + sha256"]
    for name, (seconds, peak) in results.items():
        print(
            f"{name:36} {seconds * 1e3:9.3f} ms  ×{seconds / base_time:7.4f} of baseline"
            f"   peak +{peak / 2**20:6.2f} MB"
        )
    keyed_time, keyed_peak = results["cache_key, DataURL"]
    ok = keyed_time < base_time / 10 and keyed_peak < size / 10
    print(f"goal (DataURL key < 1/10 of baseline time, no second base64 copy): "
          f"{'met' if ok else 'NOT met'} (baseline peak +{base_peak / 2**20:.2f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
