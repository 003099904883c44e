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

from ipychat.core.errors import ConfigError

__all__ = ["default_context"]


def default_context() -> ssl.SSLContext:
    """httpx's default verifying context for the current `SSL_CERT_FILE`/`SSL_CERT_DIR`."""
    return _context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@lru_cache(maxsize=4)
def _context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # The arguments are the cache key: httpx reads the same variables itself.
    try:
        return httpx.create_ssl_context(verify=True, trust_env=True)
    except (OSError, ssl.SSLError) as exc:
        name, value = ("SSL_CERT_FILE", cert_file) if cert_file else ("SSL_CERT_DIR", cert_dir)
        if not value:
            raise  # certifi's own bundle: a broken install, not a setting
        why = "no PEM certificate in it" if isinstance(exc, ssl.SSLError) else exc.strerror
        raise ConfigError(
            f"{name} is set to {value}, which holds no CA certificates ipychat can read "
            f"({why}): point it at a CA bundle (PEM) or unset it"
        ) from exc
