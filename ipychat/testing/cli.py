"""`python -m ipychat.testing`: a fake server from a shell, serving until interrupted."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence

from ipychat.testing.fake import FakeOpenAIServer

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ipychat.testing`: serve until interrupted; prints the base URL first."""
    parser = argparse.ArgumentParser(prog="python -m ipychat.testing", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--flavour", default="openai", help="a provider: groq, gemini, ...")
    parser.add_argument("--reply", default=None, help="fixed reply (default: echo the prompt)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before the first byte")
    parser.add_argument("--tokens-per-second", type=float, default=None)
    parser.add_argument("--rpm", type=int, default=None)
    parser.add_argument("--tpm", type=int, default=None)
    parser.add_argument("--window", type=float, default=1.0, help="seconds: 1, 10 or 60")
    parser.add_argument("--refund-refused", action="store_true", help="429s are not charged")
    parser.add_argument("--no-ratelimit-headers", action="store_true", help="like vLLM")
    parser.add_argument("--no-retry-after", action="store_true")
    parser.add_argument("--require-key", default=None)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default="", help="comma-separated, e.g. 500,503,reset,hang")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-usage-chunk", action="store_true", help="imitate llama.cpp")
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        flavour=args.flavour,
        reply=args.reply,
        latency=args.latency,
        tokens_per_second=args.tokens_per_second,
        rpm=args.rpm,
        tpm=args.tpm,
        window=args.window,
        charge_refused=not args.refund_refused,
        ratelimit_headers=False if args.no_ratelimit_headers else None,
        retry_after=not args.no_retry_after,
        require_key=args.require_key,
        fault_rate=args.fault_rate,
        faults=[f.strip() for f in args.faults.split(",") if f.strip()],
        seed=args.seed,
        include_usage_chunk=False if args.no_usage_chunk else None,  # None: the flavour's
        host=args.host,
        port=args.port,
    ).start()
    # Handlers set before the URL is printed: whoever reads it may signal us at once.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(server.base_url, flush=True)
    try:
        while not stop.wait(0.2):  # a timed wait: signal handlers run between waits
            pass
    finally:
        server.stop()
    return 0
