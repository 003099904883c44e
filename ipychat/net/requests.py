"""What `ipychat.net.client.ChatClient` puts on the wire, and the settings it is built from.

- `Timeouts`: the network timeouts, and the per-request dict transports read.
- `RequestBuilder`: builds each `httpx.Request` (URL, headers, body) with as little work per
  request as possible: URLs are parsed once per path and headers built once per key.
  API keys are revealed here only, while building those headers.
- Settings: `normalize_base_url` (refuses credentials in the URL), `resolve_keys`
  (explicit key, key pool, OPENAI_API_KEY, OPENAI_API_KEYS, each scoped to the hosts it
  is for), `check_plain_http` (no key over http to another machine unless allowed),
  `path_id` (a server id as one path segment) and `multipart_body` (the body of a file upload).

Where a key may go (like HTTP clients that drop Authorization on a redirect to another
host): a key given to the client goes to the client's endpoint; OPENAI_API_KEY(S) only to
api.openai.com and to OPENAI_BASE_URL's host, or to an endpoint the user lists in
`key_origins` (`%chat endpoint URL --send-key`, IPYCHAT_KEY_ORIGINS). Any key over plain
http to a host that is not this machine is refused unless that endpoint is listed.

Part of the client's network boundary (docs/architecture.md): used only by `ipychat.net.client`, and
like the client it imports httpx.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx

from ipychat.core import providers
from ipychat.core.errors import ConfigError
from ipychat.core.keys import Secret, redact_headers
from ipychat.core.settings import is_loopback, origin

DEFAULT_BASE_URL = "https://api.openai.com/v1"

log = logging.getLogger("ipychat")
# json.dumps with options builds an encoder per call; one, shared (encode keeps no state).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Timeouts:
    """Network timeouts in seconds.

    `read` is the longest silence between two chunks of a streamed reply. A non-streamed
    reply arrives in one piece only when the model has finished, so its wait is `reply`
    (the OpenAI SDK allows 600 s too); a 60 s cap there would kill long answers.
    `pool` is the wait for a free connection (None: wait as long as it takes, the
    concurrency limit upstream is what bounds it).
    """

    connect: float = 10.0
    read: float = 60.0
    write: float = 30.0
    pool: float | None = None
    reply: float = 600.0

    def for_request(self, *, stream: bool) -> dict[str, float | None]:
        """The per-request timeout dict httpx transports read from request.extensions."""
        return {
            "connect": self.connect,
            "read": self.read if stream else max(self.read, self.reply),
            "write": self.write,
            "pool": self.pool,
        }


class RequestBuilder:
    """The request builder of one client (its base URL, keys and extra headers)."""

    __slots__ = (
        "_direct",
        "_extra",
        "_header_cache",
        "_keys",
        "_query",
        "_urls",
        "azure_api_version",
        "base_url",
        "stream_options",
    )

    def __init__(
        self,
        base_url: str,
        keys: Sequence[Secret],
        azure_api_version: str | None,
        headers: Mapping[str, str],
        provider: str | None = None,
    ) -> None:
        self.base_url = base_url
        self._keys = keys
        self.azure_api_version = azure_api_version
        self._extra = _checked_headers(headers)
        self._query = {"api-version": azure_api_version} if azure_api_version else {}
        self._urls: dict[str, httpx.URL] = {}
        self._header_cache: dict[tuple[int, bool], httpx.Headers] = {}
        self._direct: dict[tuple[str, int], tuple[str, Mapping[str, str]]] = {}
        # Whether a streamed request asks for the usage chunk (`stream_options`): not where
        # the provider (named, or found by its URL) refuses the field and sends usage
        # unasked, as Mistral does (`ipychat.core.providers`; FakeOpenAIServer's flavour).
        spec = providers.find(provider) or providers.for_url(base_url)
        self.stream_options = providers.stream_usage(spec)

    def chat_content(self, body: Mapping[str, Any], *, stream: bool) -> bytes:
        """The JSON of a /chat/completions request: `body` with the client's own `stream`
        and, where the endpoint accepts it, `stream_options.include_usage` (so the usage
        chunk comes; servers that refuse the field send usage in the finish chunk)."""
        payload = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        if stream:
            payload["stream"] = True
            if self.stream_options:
                options = dict(body.get("stream_options") or {})
                options["include_usage"] = True
                payload["stream_options"] = options
        return _JSON.encode(payload).encode("utf-8")

    def url(self, path: str) -> httpx.URL:
        # Parsed once per path: httpx.URL(str) costs more than the rest of a request build.
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self.base_url + path, params=self._query or None)
            self._urls[path] = url
        return url

    def _base_headers(self, key_index: int, url: httpx.URL, body: bool) -> httpx.Headers:
        # Built once per key: copying an httpx.Headers is cheap, building one is not.
        # Secret.reveal() happens here only; the cache lives as long as the client.
        headers = self._header_cache.get((key_index, body))
        if headers is None:
            values = {
                "Host": url.netloc.decode("ascii"),
                "Accept": "application/json",
                # Said explicitly: left to aiohttp, it may offer codecs (br, zstd) that
                # httpx, which decodes the body, cannot read in this environment.
                "Accept-Encoding": "gzip, deflate",
            }
            if body:
                values["Content-Type"] = "application/json"
            values.update(self._extra)
            if self._keys:
                key = self._keys[key_index % len(self._keys)].reveal()
                if self.azure_api_version:
                    values["api-key"] = key
                else:
                    values["Authorization"] = f"Bearer {key}"
            headers = self._header_cache[key_index, body] = httpx.Headers(values)
            headers.encoding  # noqa: B018 - probed once here, then passed to every copy
        return headers

    def direct(self, path: str, key_index: int) -> tuple[str, Mapping[str, str]]:
        """The URL and headers of a JSON POST to `path` as `build` makes them, for the lean
        transport's `send_direct` (no httpx models). Content-Length, the one header `build`
        adds per request, aiohttp sets from the body: the same value."""
        made = self._direct.get((path, key_index))
        if made is None:
            url = self.url(path)
            headers = MappingProxyType(dict(self._base_headers(key_index, url, True).items()))
            made = self._direct[path, key_index] = (str(url), headers)
        return made

    def build(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        key_index: int,
        timeout: dict[str, float | None],
        content_type: str | None = None,
    ) -> httpx.Request:
        base = self._base_headers(key_index, url, content is not None)
        headers = httpx.Headers(base, encoding=base.encoding)
        if content_type is not None:  # a file upload (multipart); JSON is the cached default
            headers["Content-Type"] = content_type
        extensions = {"timeout": timeout}
        if content is None:
            return httpx.Request(method, url, headers=headers, extensions=extensions)
        # Content-Length is set here and the body given as a stream, so httpx does not
        # re-normalise every header (Request(content=...) rebuilds them all).
        headers["Content-Length"] = str(len(content))
        request = httpx.Request(
            method, url, headers=headers, stream=httpx.ByteStream(content), extensions=extensions
        )
        request.read()  # makes request.content available, as with content=...
        return request


def normalize_base_url(base_url: str | None) -> str:
    url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        url = f"{scheme.lower()}://{rest}"  # HTTPS://host is a URL too
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"The base URL {url!r} must start with http:// or https://")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:  # never echo it: it holds a password
        raise ConfigError(
            "The base URL holds a user name or password (user:secret@host): leave it out, and "
            "give the key with %chat key or OPENAI_API_KEY."
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"The base URL {url!r} is not a valid URL ({exc})") from None
    if not parsed.host:
        raise ConfigError(f"The base URL {url!r} has no host")
    return url


def _as_secret(key: str | Secret) -> Secret | None:
    if isinstance(key, Secret):
        return key
    return Secret(key) if key and key.strip() else None


def _checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Extra headers must be printable ASCII: otherwise the HTTP library fails on the first
    request with an encoding error whose traceback holds every header, the key's too."""
    for name, value in headers.items():
        if not all(" " <= c <= "~" for c in f"{name}{value}") or not name.strip():
            raise ConfigError(
                f"The header {name.encode('ascii', 'replace').decode()!r} holds a character "
                "that cannot be sent in HTTP (non-ASCII or control): fix its name or value."
            )
    return dict(headers)


def _env_key_origins() -> tuple[str, ...]:
    """Where OPENAI_API_KEY is meant to go: OpenAI, and OPENAI_BASE_URL if set."""
    homes = [origin(DEFAULT_BASE_URL)]
    base = os.environ.get("OPENAI_BASE_URL", "").strip()
    if base and base != "local":
        # An unusable OPENAI_BASE_URL is said where it is used as the endpoint.
        with contextlib.suppress(ConfigError):
            homes.append(origin(base))
    return tuple(homes)


def _same_host(a: str, b: str) -> bool:
    """Two origins with the same host and port (the scheme is the plain-http check's)."""
    return a.split("://", 1)[1] == b.split("://", 1)[1]


def resolve_keys(
    api_key: str | Secret | None,
    api_keys: Sequence[str | Secret] | None,
    base_url: str = DEFAULT_BASE_URL,
    key_origins: Sequence[str] = (),
) -> tuple[tuple[Secret, ...], bool]:
    """(keys, withheld): explicit key, else explicit pool, else OPENAI_API_KEY, else
    OPENAI_API_KEYS (k1,k2). An environment key is used only where it is meant to go
    (`_env_key_origins`, or `key_origins`); `withheld` says one was set but not used here.

    An empty string counts as not given, so an unset setting falls through to the env.
    """
    if api_key is not None and (single := _as_secret(api_key)) is not None:
        return (single,), False
    if api_keys:
        pool = tuple(s for s in (_as_secret(k) for k in api_keys) if s is not None)
        if pool:
            return pool, False
    env = _as_secret(os.environ.get("OPENAI_API_KEY", ""))
    keys: tuple[Secret, ...] = (
        (env,)
        if env is not None
        else tuple(
            s
            for s in (_as_secret(k) for k in os.environ.get("OPENAI_API_KEYS", "").split(","))
            if s
        )
    )
    if not keys:
        return (), False
    here = origin(base_url)
    if here in key_origins or any(_same_host(here, home) for home in _env_key_origins()):
        return keys, False
    return (), True


def check_plain_http(base_url: str, key_origins: Sequence[str]) -> None:
    """A key never crosses the network unencrypted unless the user allowed that endpoint."""
    parts = httpx.URL(base_url)
    if parts.scheme != "http" or is_loopback(parts.host):
        return
    here = origin(base_url)
    if here in key_origins:
        return
    raise ConfigError(
        f"{base_url} is plain http to another machine: the API key would cross the network "
        f"unencrypted. Use https://, or allow it with %chat endpoint {base_url} --send-key "
        f"(IPYCHAT_KEY_ORIGINS={here} outside a notebook)."
    )


def path_id(value: str) -> str:
    """An id from a server or a user, safe as one path segment (no `/`, `?`, `..`)."""
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise ConfigError(f"{value!r} is not a file or batch id.")
    return value


def multipart_body(boundary: str, fields: Mapping[str, str], file: tuple[str, str, bytes]) -> bytes:
    """A multipart/form-data body (RFC 7578) with text fields and one file."""
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    field, filename, content = file
    safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    out += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{safe}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    out += content + f"\r\n--{boundary}--\r\n".encode()
    return bytes(out)


# ----- debug lines ------------------------------------------------------------------------


def log_request(request: httpx.Request, model: str, retries: int) -> None:
    """The debug line of a request about to go (its secret headers masked)."""
    log.debug(
        "-> %s %s model=%s retries=%d headers=%s",
        request.method,
        request.url,
        model or "-",
        retries,
        redact_headers(dict(request.headers)),
    )


def log_reply(
    method: str, path: str, model: str, status: int, request_id: str | None, started: float,
    retries: int,
) -> None:  # fmt: skip
    """The debug line of a request answered."""
    log.debug(
        "%s %s model=%s status=%d request_id=%s latency=%.3fs retries=%d",
        method, path, model or "-", status, request_id, time.perf_counter() - started, retries,
    )  # fmt: skip
