"""The transport under `ipychat.net.client.ChatClient`: building it, reading bodies from it,
and telling network trouble apart from bugs.

Part of the client's network boundary (docs/architecture.md): used only by
`ipychat.net.client` and its other private modules, and like the client it imports httpx
(and, lazily, aiohttp and httpx_aiohttp). Nothing here sends a request on its own.

- `Pool`: one transport (its connections) with the loop it belongs to and the requests
  using it; `close_pool` closes it when the client built it.
- `default_transport`: httpx_aiohttp's transport trimmed for CPU per request
  (`lean_aiohttp_transport`), with the proxy the environment sets (`_env_proxy`) and the
  process's one TLS context (`ipychat.net.tls`). It leans on httpx_aiohttp's private
  names; if they are not what it expects when a request is made, it warns once
  (`TransportWarning`) and serves every request from then on with the stock
  `AiohttpTransport` (`_shape_problem`); `IPYCHAT_STOCK_TRANSPORT=1` chooses it at once.
- Body helpers: `header_dict`, `raw_header_dict`, `body_chunks`, `read_body`,
  `aclose_iterator`, `close_response`, `is_json`.
- Failure classification: `is_transport_error` (retryable network trouble), and
  `root_cause`, `timeout_kind`, `is_connect_failure`, which see through httpx_aiohttp's
  mapping of aiohttp exceptions to name the failure right in the error message.
- `scrub`: an exception from inside the HTTP library carries the request's headers, the
  API key's among them: aiohttp's `request_info.headers` (also in its `args` and repr),
  and the locals of aiohttp's frames in its traceback (what `%xmode Verbose` prints). Every
  exception leaving the transport is scrubbed in place: headers masked, tracebacks of the
  library's frames dropped, and the whole chain (`__cause__`, `__context__`) likewise.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, NoReturn

import httpx

from ipychat.core.keys import SECRET_HEADERS
from ipychat.net.tls import default_context

log = logging.getLogger("ipychat")


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception chained to it (causes and contexts), each once."""
    seen: dict[int, BaseException] = {}
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen[id(e)] = e
        todo += [e.__cause__, e.__context__]
    return list(seen.values())


def _masked_request_info(info: Any) -> Any:
    """aiohttp's RequestInfo with its credential headers masked (same type, same fields)."""
    headers = getattr(info, "headers", None)
    if headers is None or not any(str(k).lower() in SECRET_HEADERS for k in headers):
        return info
    try:
        from multidict import CIMultiDict, CIMultiDictProxy

        masked = CIMultiDict(
            (k, "***" if str(k).lower() in SECRET_HEADERS else v) for k, v in headers.items()
        )
        return type(info)(info.url, info.method, CIMultiDictProxy(masked), info.real_url)
    except Exception:  # an aiohttp whose RequestInfo has changed: drop it rather than leak
        return None


def scrub(exc: BaseException) -> BaseException:
    """Make `exc` and its chain safe to keep and to print (see the module docstring).

    In place, because the chain is shared: an error raised inside an `except` block gets
    the original as `__context__` whatever its `__cause__` says.
    """
    for e in exception_chain(exc):
        e.__traceback__ = None  # aiohttp's frames hold the headers in their locals
        if e.__cause__ is e:  # `raise x from x` when a mapping returned the original
            e.__cause__ = None
        info = getattr(e, "request_info", None)
        if info is not None:
            clean = _masked_request_info(info)
            if clean is not info:
                try:
                    e.request_info = clean  # type: ignore[attr-defined]
                    e.args = tuple(clean if a is info else a for a in e.args)
                except (AttributeError, TypeError):
                    pass
        history = getattr(e, "history", None)
        if history:  # earlier responses, each with its own request_info
            try:
                e.history = ()  # type: ignore[attr-defined]
                e.args = tuple(() if a is history else a for a in e.args)
            except (AttributeError, TypeError):
                pass
    return exc


# Chooses httpx_aiohttp's own transport (CI runs the protocol tests with it: the fallback's).
STOCK_TRANSPORT_ENV = "IPYCHAT_STOCK_TRANSPORT"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})

_warned: set[str] = set()  # warnings given in this process: each once, not once per pool


class TransportWarning(RuntimeWarning):
    """ipychat's faster transport could not be used; the stock one serves instead."""


def _warn_once(message: str) -> None:
    if message in _warned:
        return
    _warned.add(message)
    log.debug("%s", message)
    warnings.warn(message, TransportWarning, stacklevel=2)


def _stock_wanted() -> bool:
    """Whether IPYCHAT_STOCK_TRANSPORT asks for httpx_aiohttp's stock transport."""
    value = os.environ.get(STOCK_TRANSPORT_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value not in _OFF:
        _warn_once(
            f"{STOCK_TRANSPORT_ENV}={value!r} is neither 1 nor 0: using ipychat's transport."
        )
    return False


def default_transport(max_connections: int, base_url: str) -> httpx.AsyncBaseTransport:
    """httpx_aiohttp's transport with `max_connections` connections to the endpoint.

    The transport maps httpx's connect/read/pool timeouts of each request to aiohttp's
    sock_connect/sock_read/connect. It ignores the environment, so the proxy httpx would
    take from HTTP(S)_PROXY/NO_PROXY is looked up here, once, for our one host.
    """
    n = max_connections
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=15.0)
    proxy = _env_proxy(base_url)
    transport_class: Callable[..., httpx.AsyncBaseTransport]
    if _stock_wanted():
        from httpx_aiohttp import AiohttpTransport as transport_class
    else:
        transport_class = lean_aiohttp_transport()
    proxied = httpx.Proxy(proxy) if proxy else None
    return transport_class(limits=limits, proxy=proxied, verify=default_context())


def _exception_map(module: Any) -> Mapping[type[BaseException], type[Exception]] | None:
    """httpx_aiohttp's aiohttp → httpx exception mapping, if it still has the known shape."""
    exc_map = getattr(module, "AIOHTTP_EXC_MAP", None)
    if not isinstance(exc_map, Mapping) or not exc_map:
        return None
    for source, target in exc_map.items():
        if not (isinstance(source, type) and issubclass(source, BaseException)):
            return None
        if not (isinstance(target, type) and issubclass(target, Exception)):
            return None
    return exc_map


def _shape_problem(transport: Any, module: Any) -> str | None:
    """What the trimmed transport needs from httpx_aiohttp (`module` is its transport
    module) and does not find on `transport`, a constructed AiohttpTransport, or None.

    These are private names (httpx_aiohttp 0.1.8 to 0.2.x): a release may rename them at
    any time, and the pin in pyproject.toml only holds for installs that respect it.
    """
    if _exception_map(module) is None:
        return "httpx_aiohttp.transport.AIOHTTP_EXC_MAP is missing or changed"
    if not callable(getattr(transport, "get_client", None)):
        return "AiohttpTransport.get_client is missing"
    for name in ("client", "proxy"):
        if not hasattr(transport, name):
            return f"AiohttpTransport has no .{name}"
    return None


def _httpx_aiohttp_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("httpx-aiohttp")
    except metadata.PackageNotFoundError:
        return "(version unknown)"


ExcMap = Mapping[type[BaseException], type[Exception]]


@functools.cache
def lean_aiohttp_transport() -> Callable[..., httpx.AsyncBaseTransport]:
    """httpx_aiohttp's AiohttpTransport with its per-request work trimmed.

    Same connection pool, limits, TLS, proxy and timeout mapping (connect → sock_connect,
    read → sock_read between chunks, pool → connect), but measured at 64 requests in
    flight its handle_async_request costs ~40 µs of CPU more than plain aiohttp, a third
    of aiohttp's own cost. So this override reuses one ClientTimeout per timeout
    setting, maps exceptions only when one is raised (no context manager per call and
    per body), streams the body with `iter_any` (whatever arrived, no re-chunking) and
    lets the client read a whole body with one `read()` (`_LeanBody.read_all`).

    It relies on httpx_aiohttp's private names (`AIOHTTP_EXC_MAP`, `self.client`,
    `get_client`, `self.proxy`). They are checked at the first request of each transport
    (`_shape_problem`), and a TypeError or AttributeError while preparing a request (before
    anything is sent) counts as a changed shape too: either way the transport warns once
    and hands that request and all later ones to the stock `handle_async_request`, which
    matches whatever its own release looks like. Built on first use: importing aiohttp
    costs ~150 ms, and unit tests never need it. `send_direct` serves ChatClient._direct.
    """
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    def to_httpx(exc: Exception, exc_map: ExcMap) -> Exception:
        """httpx_aiohttp's mapping: the most specific httpx exception for an aiohttp one."""
        mapped: type[Exception] | None = None
        for source, target in exc_map.items():
            if isinstance(exc, source) and (mapped is None or issubclass(target, mapped)):
                mapped = target
        return exc if mapped is None else mapped(str(exc))

    def raise_mapped(exc: Exception, exc_map: ExcMap) -> NoReturn:
        """Raise the httpx form of an aiohttp exception, scrubbed (`scrub`)."""
        scrub(exc)
        mapped = to_httpx(exc, exc_map)
        if mapped is exc:
            raise exc
        raise mapped from exc

    class LeanBody(httpx.AsyncByteStream):
        __slots__ = ("_exc_map", "_response")

        def __init__(self, response: aiohttp.ClientResponse, exc_map: ExcMap) -> None:
            self._response = response
            self._exc_map = exc_map

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                async for chunk in self._response.content.iter_any():
                    yield chunk
            except Exception as exc:
                raise_mapped(exc, self._exc_map)

        async def read_all(self) -> bytes:
            try:
                return await self._response.read()
            except Exception as exc:
                raise_mapped(exc, self._exc_map)

        async def aclose(self) -> None:
            self._response.release()

    class LeanAiohttpTransport(AiohttpTransport):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}
            self._exc_map: ExcMap | None = None  # set by the first request's shape check
            self._stock = False  # True once the shape was not the known one

        def _use_stock(self, problem: str) -> None:
            self._stock = True
            _warn_once(
                f"httpx-aiohttp {_httpx_aiohttp_version()} has changed inside ({problem}): "
                "ipychat uses its stock AiohttpTransport instead (more CPU per request). "
                f'Install "httpx-aiohttp<0.3", or set {STOCK_TRANSPORT_ENV}=1 to choose it '
                "without this warning."
            )

        def _timeout(self, wanted: Mapping[str, Any] | None) -> aiohttp.ClientTimeout:
            wanted = wanted or {}
            key = (wanted.get("connect"), wanted.get("read"), wanted.get("pool"))
            timeout = self._timeouts.get(key)
            if timeout is None:
                timeout = aiohttp.ClientTimeout(
                    sock_connect=key[0], sock_read=key[1], connect=key[2]
                )
                self._timeouts[key] = timeout
            return timeout

        def _ready(self) -> ExcMap | None:
            """The exception map, after the first request's shape check; None: stock."""
            if self._exc_map is None and not self._stock:
                module = sys.modules[AiohttpTransport.__module__]
                problem = _shape_problem(self, module)
                if problem is None:
                    self._exc_map = _exception_map(module)
                else:
                    self._use_stock(problem)
            return None if self._stock else self._exc_map

        def _open(
            self, method: str, url: str, headers: Any, data: Any, timeout: Any, sni: Any
        ) -> Any:
            """The aiohttp request, not yet sent (its coroutine starts at __aenter__)."""
            if not isinstance(self.client, aiohttp.ClientSession):
                self.client = self.get_client()
            proxy = self.proxy
            return self.client.request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,  # httpx decodes, as with the original transport
                compress=False,
                timeout=self._timeout(timeout),
                server_hostname=sni,
                proxy=str(proxy.url) if proxy else None,
                proxy_auth=aiohttp.BasicAuth(*proxy.auth) if proxy and proxy.auth else None,
                proxy_headers=proxy.headers if proxy else None,
            )

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            exc_map = self._ready()
            if exc_map is None:
                return await super().handle_async_request(request)
            try:
                data: bytes | None = request.content or None
            except httpx.RequestNotRead:  # a streamed upload: the general path
                return await super().handle_async_request(request)
            try:
                pending = self._open(
                    request.method,
                    str(request.url),
                    request.headers,
                    data,
                    request.extensions.get("timeout"),
                    request.extensions.get("sni_hostname"),
                )
            except (AttributeError, TypeError) as exc:  # a shape the check did not foresee
                self._use_stock(f"{type(exc).__name__}: {exc}")
                return await super().handle_async_request(request)
            try:
                response = await pending.__aenter__()
            except Exception as exc:
                raise_mapped(exc, exc_map)
            return self.as_httpx(response, request)

        async def send_direct(
            self, url: str, headers: Any, data: bytes, timeout: Mapping[str, Any]
        ) -> aiohttp.ClientResponse | None:
            """POST `data` without httpx's models (ChatClient._direct): the aiohttp response,
            or None when the stock code serves (the caller takes the general path)."""
            exc_map = self._ready()
            if exc_map is None:
                return None
            try:
                pending = self._open("POST", url, headers, data, timeout, None)
            except (AttributeError, TypeError) as exc:
                self._use_stock(f"{type(exc).__name__}: {exc}")
                return None
            try:
                response: aiohttp.ClientResponse = await pending.__aenter__()
            except Exception as exc:
                raise_mapped(exc, exc_map)
            return response

        async def read_direct(self, response: aiohttp.ClientResponse) -> bytes:
            """The whole body of a `send_direct` response (errors as httpx's)."""
            try:
                return await response.read()
            except Exception as exc:
                raise_mapped(exc, self._exc_map or {})

        def as_httpx(
            self, response: aiohttp.ClientResponse, request: httpx.Request
        ) -> httpx.Response:
            """The httpx.Response of an aiohttp response, its body read as it arrives."""
            extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
            if response.reason:
                extensions["reason_phrase"] = response.reason.encode()
            return httpx.Response(
                status_code=response.status,
                headers=response.raw_headers,
                stream=LeanBody(response, self._exc_map or {}),
                request=request,
                extensions=extensions,
            )

    return LeanAiohttpTransport


def _env_proxy(base_url: str) -> str | None:
    """The proxy the environment sets for `base_url` (HTTP_PROXY, HTTPS_PROXY, NO_PROXY)."""
    import urllib.request

    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass(url.host):
        return None
    return proxies.get(url.scheme)


def body_chunks(response: httpx.Response, headers: Mapping[str, str]) -> AsyncIterator[bytes]:
    """The body as it arrives. Without a Content-Encoding, straight from the transport's
    stream: httpx's decoding and re-chunking layers cost CPU on every chunk for nothing."""
    raw = response.stream
    if headers.get("content-encoding", "identity") in ("", "identity") and isinstance(
        raw, httpx.AsyncByteStream
    ):
        return aiter(raw)
    return response.aiter_bytes()


async def read_body(response: httpx.Response, headers: Mapping[str, str]) -> bytes:
    read_all = getattr(response.stream, "read_all", None)  # the lean aiohttp transport's
    if read_all is not None and headers.get("content-encoding", "identity") in ("", "identity"):
        body: bytes = await read_all()
        return body
    return b"".join([chunk async for chunk in body_chunks(response, headers)])


async def aclose_iterator(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as exc:  # the response is closed next anyway
            log.debug("closing a body iterator failed: %s", type(exc).__name__)


def header_dict(response: httpx.Response) -> dict[str, str]:
    """The response headers as one plain dict with lower-case names, decoded once
    (httpx.Headers decodes and scans its list on every lookup; the client reads a dozen)."""
    return raw_header_dict(response.headers.raw)


def raw_header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """`header_dict` of raw (name, value) pairs (aiohttp's `raw_headers`)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


async def close_response(response: httpx.Response) -> None:
    try:
        await response.aclose()
    except Exception as exc:  # a broken connection is discarded either way
        log.debug("closing a response failed: %s", type(exc).__name__)


def is_json(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").startswith("application/json")


def _aiohttp_errors() -> tuple[type[BaseException], ...]:
    # Only when aiohttp is loaded: if it is not, no exception can come from it.
    module = sys.modules.get("aiohttp")
    return (module.ClientError,) if module is not None else ()


def is_transport_error(exc: BaseException) -> bool:
    """Network trouble (retryable), as opposed to a bug or a cancellation."""
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return False
    return isinstance(exc, (httpx.TransportError, OSError, TimeoutError, *_aiohttp_errors()))


def _from_aiohttp(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("aiohttp")


def root_cause(exc: BaseException) -> BaseException:
    """The aiohttp exception under httpx_aiohttp's mapped one, which is sometimes misleading
    (it maps every aiohttp ClientConnectionError, e.g. a server disconnect, to ConnectTimeout)."""
    cause = exc.__cause__
    if cause is not None and _from_aiohttp(cause):
        return cause
    return exc


def timeout_kind(exc: BaseException) -> str | None:
    root = root_cause(exc)
    name = type(root).__name__
    if _from_aiohttp(root):
        if name == "ConnectionTimeoutError":
            return "connect"
        if name == "SocketTimeoutError":
            return "read"
        return "timeout" if isinstance(root, TimeoutError) else None
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return "connect"
    if isinstance(exc, httpx.ReadTimeout):
        return "read"
    if isinstance(exc, httpx.WriteTimeout):
        return "write"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    return None


def is_connect_failure(exc: BaseException) -> bool:
    root = root_cause(exc)
    if _from_aiohttp(root):
        return type(root).__name__.startswith("ClientConnector")
    return isinstance(exc, httpx.ConnectError | ConnectionRefusedError)
