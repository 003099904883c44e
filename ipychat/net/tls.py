"""The TLS context of ipychat's transport, built once per process.

httpx_aiohttp's transport builds its own context from httpx's defaults each time one is
made (every new client: a first request, another endpoint, another event loop), and that
reads the whole CA bundle: ~30 ms of CPU each time, on the first request's path. The
context is the same every time (httpx's: certifi's bundle, or `SSL_CERT_FILE` /
`SSL_CERT_DIR` when set, as httpx reads them), and an `ssl.SSLContext` may serve any
number of connections, so it is built once per value of those variables.
"""

from __future__ import annotations

import os
import ssl
from functools import lru_cache

import httpx

__all__ = ["default_context"]


def default_context() -> ssl.SSLContext:
    """httpx's default verifying context for the current `SSL_CERT_FILE`/`SSL_CERT_DIR`."""
    return _context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@lru_cache(maxsize=4)
def _context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    del cert_file, cert_dir  # the cache key: httpx reads them from the environment
    return httpx.create_ssl_context(verify=True, trust_env=True)
