"""ipychat.net.tls: every transport shares one verifying TLS context per CA setting, and
verification works as httpx's own default does: a certificate the CA bundle does not trust
is refused, and `SSL_CERT_FILE` set later is honoured. Such a refusal is said in one line
that names the cause and what to do, and is not retried (ipychat.net.failures): before,
it read "not reachable (no connection, after 3 retries)". A real TLS server on 127.0.0.1
with a self-signed certificate made by the `openssl` command line."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from ipychat.core.errors import ConfigError, UntrustedCertificateError
from ipychat.map import job as chatmap
from ipychat.map.frame import MapAborted
from ipychat.net import tls
from ipychat.net.transport import default_transport
from ipychat.session import ChatSession, Settings


@pytest.fixture
def fresh_contexts() -> Iterator[None]:
    tls._context.cache_clear()
    yield
    tls._context.cache_clear()


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _CountingServer(http.server.ThreadingHTTPServer):
    handshakes = 0

    def get_request(self) -> tuple[object, object]:
        self.handshakes += 1  # each connection: a TLS handshake (refused or not)
        return super().get_request()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 whose certificate nobody trusts: (its URL, the cert)."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command line is needed (Debian: openssl)"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    server = _CountingServer(("127.0.0.1", 0), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _servers.append(server)
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


_servers: list[_CountingServer] = []


def _get(url: str) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=default_transport(2, url)) as client:
            return await client.get(url)

    return asyncio.run(go())


def test_every_transport_shares_one_verifying_context(fresh_contexts: None) -> None:
    a = default_transport(4, "http://127.0.0.1:1/v1")
    b = default_transport(8, "https://api.openai.com/v1")
    context = tls.default_context()
    assert a.ssl_context is context and b.ssl_context is context  # type: ignore[attr-defined]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_an_untrusted_certificate_is_refused_and_ssl_cert_file_set_later_trusts_it(
    fresh_contexts: None, tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = tls_server
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    # httpx_aiohttp maps aiohttp's certificate error to httpx.ConnectTimeout (the tests
    # below: ipychat.net.failures tells it apart by the cause).
    with pytest.raises(httpx.TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(url)
    refused_with = tls.default_context()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # e.g. a company's own CA
    assert _get(url).json() == {"ok": True}
    assert tls.default_context() is not refused_with
    monkeypatch.delenv("SSL_CERT_FILE")
    assert tls.default_context() is refused_with  # built once per setting


@pytest.fixture
def untrusted(
    fresh_contexts: None, tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, ChatSession]]:
    """A session pointed at the TLS server, on a machine that does not trust it."""
    url, _ = tls_server
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    key = "sk-test-" + "k" * 20
    session = ChatSession(
        Settings(base_url=url + "v1", api_key=key, model="gpt-4o-mini"), cache=False
    )
    try:
        yield url, session
    finally:
        session.close()


def test_an_untrusted_certificate_is_one_line_that_says_what_to_do_and_is_not_retried(
    untrusted: tuple[str, ChatSession],
) -> None:
    url, session = untrusted
    with pytest.raises(UntrustedCertificateError) as caught:
        session.ask("hello")
    message = str(caught.value)
    assert "\n" not in message and "self-signed certificate" in message
    assert "SSL_CERT_FILE" in message and url in message
    assert _servers[-1].handshakes == 1  # the same certificate again would fail again


def test_a_map_stops_at_an_untrusted_certificate(untrusted: tuple[str, ChatSession]) -> None:
    _, session = untrusted
    with pytest.raises(MapAborted) as caught:
        chatmap.run(session, pd.DataFrame({"t": [f"row {i}" for i in range(20)]}), "{t}")
    assert isinstance(caught.value.cause, UntrustedCertificateError)
    assert "Stopped after 0 of 20 rows" in str(caught.value)
    assert _servers[-1].handshakes <= 4  # the first few in flight, none retried


@pytest.mark.parametrize("content", [None, b"not a certificate\n"])
def test_an_unreadable_ssl_cert_file_is_a_one_line_config_error(
    fresh_contexts: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None
) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_bytes(content)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    with pytest.raises(ConfigError) as caught:
        default_transport(2, "https://api.openai.com/v1")
    message = str(caught.value)
    assert message.startswith(f"SSL_CERT_FILE is set to {bundle}, which holds no CA")
    assert "point it at a CA bundle (PEM) or unset it" in message and "\n" not in message
    monkeypatch.delenv("SSL_CERT_FILE")
    assert default_transport(2, "https://api.openai.com/v1") is not None  # unset: fine again
