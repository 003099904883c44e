"""`python -m ipychat.testing --port 8000 --latency 0.2`: see `ipychat.testing.cli`."""

from ipychat.testing.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
