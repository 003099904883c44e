"""Where requests go, and which API key may go with them.

`Router.endpoint(settings)` resolves the endpoint in this order: an explicit endpoint
(`%chat endpoint`: a URL, "local", or a provider's name such as "anthropic"),
OPENAI_BASE_URL, OpenAI when a key is set, the embedded local model when its extra is
installed, else nothing (a request then says how to fix it). A key set with `%chat key` is
scoped to the endpoint (origin) it was set for: it is sent there, or to an origin the user
allowed (`key_origins`), never elsewhere. A provider's key variable (ANTHROPIC_API_KEY, ...)
is read only for requests to that provider's own URL (`Router.connection`).

A %%chatmap run resolves this once (`Router.pin`): its thousands of requests each ask for
the endpoint, its host and its key several times, and working them out again from the
settings and the environment was a tenth of a map's CPU per row. While pinned, a request
with the same endpoint setting and key gets the pinned answers; the environment
(OPENAI_BASE_URL, the key variables) is read when the run starts, not at every request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from ipychat.core import providers
from ipychat.core.errors import ConfigError
from ipychat.core.keys import Secret
from ipychat.core.settings import LOCAL, OPENAI_URL, Endpoint, Settings, origin

__all__ = ["Router"]


class _Pin:
    """Where requests went when a run started: its endpoint, and its host and connection
    once asked for, valid for settings with the same endpoint setting, key and origins."""

    __slots__ = ("api_key", "base_url", "connection", "endpoint", "host", "key_origins")

    def __init__(self, settings: Settings, endpoint: Endpoint) -> None:
        self.base_url, self.api_key = settings.base_url, settings.api_key
        self.key_origins = settings.key_origins
        self.endpoint = endpoint
        self.host: str | None = None
        self.connection: tuple[str, Secret | None] | None = None

    def fits(self, settings: Settings) -> bool:
        return (
            settings.api_key is self.api_key
            and settings.base_url == self.base_url
            and settings.key_origins == self.key_origins
        )


class Router:
    """Endpoint resolution and key scoping for one engine (its state: what was found of the
    local model, and the origin the explicit key was given for)."""

    def __init__(self, settings: Settings) -> None:
        self.local_available: bool | None = None  # the local extra installed (asked once)
        self._local_memo: tuple[str | None, Path | None] | None = None
        # The endpoint (origin) the explicit key was given for: it is sent only there.
        self.key_origin: str | None = None
        self._pins: tuple[_Pin, ...] = ()  # the runs under way (a tuple: read by any thread)
        self.scope_key(settings)

    def pin(self, settings: Settings) -> Callable[[], None]:
        """Resolve the endpoint once for a run (a %%chatmap) with these settings; returns
        the function that ends the pin (see the module docstring)."""
        pin = _Pin(settings, self._resolve(settings))
        self._pins = (*self._pins, pin)

        def release() -> None:
            self._pins = tuple(p for p in self._pins if p is not pin)

        return release

    def _pinned(self, settings: Settings) -> _Pin | None:
        for pin in self._pins:
            if pin.fits(settings):
                return pin
        return None

    def endpoint(self, settings: Settings) -> Endpoint:
        """Where requests go (see the module docstring for the order)."""
        pin = self._pinned(settings) if self._pins else None
        return pin.endpoint if pin is not None else self._resolve(settings)

    def _resolve(self, settings: Settings) -> Endpoint:
        url = settings.base_url or os.environ.get("OPENAI_BASE_URL")
        if url == LOCAL:
            return self._local_endpoint()
        named = providers.find(settings.base_url)
        if named is not None:
            try:
                return Endpoint("provider", providers.base_url(named), named.name)
            except ConfigError:  # Azure without AZURE_OPENAI_ENDPOINT: a request says so
                return Endpoint("none", OPENAI_URL, named.name)
        if url:
            url = url.rstrip("/")
            found = providers.for_url(url)
            return Endpoint("custom", url, found.name if found else "")
        has_key = settings.api_key is not None or any(
            os.environ.get(name) for name in ("OPENAI_API_KEY", "OPENAI_API_KEYS")
        )
        if has_key:
            return Endpoint("openai", OPENAI_URL)
        if self.local_available is None:
            from ipychat.engine import local

            self.local_available = local.available()
        return self._local_endpoint() if self.local_available else Endpoint("none", OPENAI_URL)

    def host(self, settings: Settings) -> str:
        """The endpoint as footers and the ledger name it: hostname and port only."""
        pin = self._pinned(settings) if self._pins else None
        if pin is None:
            return self._host(self.endpoint(settings))
        if pin.host is None:
            pin.host = self._host(pin.endpoint)
        return pin.host

    @staticmethod
    def _host(endpoint: Endpoint) -> str:
        if endpoint.kind == "local":
            return "local model"
        if endpoint.kind == "none" and endpoint.provider:  # Azure without its endpoint
            return f"{endpoint.provider} (not set up)"
        parts = urlsplit(endpoint.url)  # hostname and port only: never user:password@
        return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or endpoint.url

    def origin(self, settings: Settings) -> str | None:
        """scheme://host:port of where requests go now (None: the local model, or none)."""
        endpoint = self.endpoint(settings)
        return None if endpoint.kind == "local" else origin(endpoint.url)

    def scope_key(self, settings: Settings) -> None:
        """Tie the explicit key (if any) to where requests go now: called when it is set."""
        self.key_origin = self._safe_origin(settings) if settings.api_key is not None else None

    def _safe_origin(self, settings: Settings) -> str | None:
        """`origin`, or None while the endpoint is unusable (OPENAI_BASE_URL that is not a
        URL): a key set then goes nowhere, and the request says what is wrong."""
        try:
            return self.origin(settings)
        except ConfigError:
            return None

    def explicit_key(self, settings: Settings) -> Secret | None:
        """The key set with %chat key / configure(api_key=...), if it may go where requests
        go now: the endpoint it was given for, or one the user allowed (key_origins)."""
        key = settings.api_key
        if key is None:
            return None
        here = self.origin(settings)
        if here is not None and (here == self.key_origin or here in settings.key_origins):
            return key
        return None

    def connection(self, settings: Settings, endpoint: Endpoint) -> tuple[str, Secret | None]:
        """(URL, key) of a request to `endpoint` (not the local model): the key set with %chat
        key where it may go; else, at a provider's URL, its key variable (ANTHROPIC_API_KEY,
        ...); else None, and the client applies OPENAI_API_KEY's own rules. A named provider
        without its key, or an endpoint that is not set up, is a one-line ConfigError."""
        pin = self._pinned(settings) if self._pins else None
        if pin is None or pin.endpoint is not endpoint:
            return self._connection(settings, endpoint)
        if pin.connection is None:
            pin.connection = self._connection(settings, endpoint)
        return pin.connection

    def _connection(self, settings: Settings, endpoint: Endpoint) -> tuple[str, Secret | None]:
        spec = endpoint.spec
        if endpoint.kind == "none":
            if spec is not None:
                providers.base_url(spec)  # raises: what the provider's URL needs
            from ipychat.engine.local import NOT_CONFIGURED

            raise ConfigError(NOT_CONFIGURED)
        key = self.explicit_key(settings)
        if key is None and spec is not None and not spec.local:
            key = providers.key_for(spec)
            if key is None and endpoint.kind == "provider":
                raise providers.missing_key(spec)
        return endpoint.url, key

    def key_note(self, settings: Settings) -> str:
        """One line when the key set with %chat key stays behind at this endpoint, else ""."""
        if settings.api_key is None or self.key_origin is None:
            return ""
        here = self.origin(settings)
        if here is None or self.explicit_key(settings) is not None:
            return ""
        home = self.key_origin.split("://", 1)[1]
        return (
            f"the API key set with %chat key is for {home} and is not sent here: run "
            "%chat key to give this endpoint its own, or add --send-key to send that one."
        )

    def _local_endpoint(self) -> Endpoint:
        from ipychat.engine import local

        # Finding the model file reads package metadata: remember it per model setting.
        chosen = os.environ.get("IPYCHAT_LOCAL_MODEL")
        if self._local_memo is None or self._local_memo[0] != chosen:
            self._local_memo = (chosen, local.model_path())
        # Named by content (a remembered sha256), so another file with the same name never
        # shares this one's cache entries.
        return Endpoint("local", local.endpoint_url(self._local_memo[1]))
