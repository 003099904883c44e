"""A real `redis-server` for tests: 127.0.0.1, a random free port, a password, no persistence.

Debian's redis-server (`.ci/run` installs it). Started with a 0600 config file in a test's
temporary folder (so the password is not on the command line), `save ""` and
`appendonly no` (nothing written to disk), stopped by `stop()`. With `tls=True` it listens
with TLS only, on a self-signed certificate for 127.0.0.1 made at run time (`ca_file`).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

EXECUTABLE = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, *, tls: bool = False) -> None:
        self.directory = directory
        self.password = secrets.token_urlsafe(18)  # made at run time: never a committed secret
        self.tls = tls
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def ca_file(self) -> Path:
        return self.directory / "cert.pem"

    def client(self) -> redis.Redis:
        """A plain client, for what a test checks behind the store's back."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            ssl=self.tls,
            ssl_ca_certs=str(self.ca_file) if self.tls else None,
            socket_timeout=10,
        )

    def start(self) -> RedisServer:
        if self.tls:
            _self_signed(self.directory)
        for _attempt in range(5):  # another process may take the free port before we do
            self.port = free_port()
            config = self.directory / "redis.conf"
            config.write_text(self._config(), encoding="utf-8")
            config.chmod(0o600)
            log = (self.directory / "redis.log").open("wb")
            self.process = subprocess.Popen([EXECUTABLE, str(config)], stdout=log, stderr=log)
            log.close()
            if self._ready():
                return self
            self.stop()
        raise RuntimeError(f"redis-server did not start: {self._log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def _config(self) -> str:
        lines = [
            "bind 127.0.0.1",
            f"dir {self.directory}",
            'save ""',
            "appendonly no",
            f"requirepass {self.password}",
            "daemonize no",
            "protected-mode yes",
            "loglevel warning",
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.directory / 'cert.pem'}",
                f"tls-key-file {self.directory / 'key.pem'}",
                f"tls-ca-cert-file {self.directory / 'cert.pem'}",
                "tls-auth-clients no",
            ]
        else:
            lines.append(f"port {self.port}")
        return "\n".join(lines) + "\n"

    def _ready(self) -> bool:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            client = self.client()
            try:
                if client.ping():
                    return True
            except redis.RedisError:
                time.sleep(0.05)
            finally:
                client.close()
        return False

    def _log_tail(self) -> str:
        try:
            return (self.directory / "redis.log").read_text(errors="replace")[-500:]
        except OSError:
            return "(no log)"


def _self_signed(directory: Path) -> None:
    """cert.pem/key.pem: a self-signed certificate for 127.0.0.1 that is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ipychat test redis")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
