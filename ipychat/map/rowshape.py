"""What every row of a %%chatmap's requests shares, worked out once (`RowShape`).

`ipychat.map.plan` uses it to build each row's body and cache key without building and
hashing one canonical JSON dump per row, and to skip counting the tokens of cache hits that
surely fit the context window.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Sequence
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from ipychat.core.keys import canonical_json
from ipychat.core.tokens import count_messages_bound

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine
    from ipychat.engine.prepare import Prepared, RequestOptions

__all__ = ["RowShape", "request_key"]


def request_key(engine: Engine, body: dict[str, Any], salt: str = "") -> str:
    """The cache key of a request body (the engine's: it knows the endpoint's every part);
    `salt`: a typed reply's spec digest (`Prepared.cache_salt`)."""
    return engine.cache_key(body, salt) if salt else engine.cache_key(body)


# Stands in for a row's prompt while the shared parts are worked out (unique per process, so
# no system prompt or endpoint can hold it).
_MARK = f"\x00ipychat-row-prompt-{uuid.uuid4().hex}\x00"
# Sampled rows whose fast key is checked against `request_key` (the first always is).
_KEY_CHECK_EVERY = 4096


class RowShape:
    """The parts of a map's requests that are the same for every row, worked out once from
    the body `Engine.one_body` builds for an empty prompt (nothing is counted or sent):

    - `body(prompt)`: that body with the prompt as its last message, which is what
      `prepare_one(prompt)` builds (same keys, same order);
    - `keys(prompts)`: the cache keys, as the JSON text `request_key` hashes around each
      prompt's own JSON string (one sha256 a row, not one canonical JSON dump); checked to
      equal `request_key` on the first, the last and every 4,096th row, else every row goes
      through `request_key`;
    - `fits(prompt)`: True when the prompt surely fits the context window, from
      `tokens.count_messages_bound` (no tokenizer needed). Only cache hits use it: a hit
      that does not surely fit is counted exactly, and refused if it does not fit, as it
      would be if it were not cached;
    - `prepare(prompt, masked, exact=False)`: the request estimated with that bound for its
      prompt tokens, for a prompt that `fits` (so never refused for a bound): a map that
      starts while the encoding still loads sends at once, counted later (`map.counting`).
    """

    def __init__(self, engine: Engine, base: dict[str, Any], window: int, salt: str = "") -> None:
        self.engine = engine
        self.salt = salt  # part of every row's cache key (`request_key`)
        self._base = base
        self.model = str(base["model"])
        self._head = base["messages"][:-1]
        self._fixed = count_messages_bound(base["messages"])
        self._room = window - int(base["max_tokens"])
        self._key_parts = self._key_template()
        self._estimate = engine.estimator(base["model"], base["max_tokens"])
        self._bound = dataclasses.replace(self._estimate, bound=True)

    @classmethod
    def probe(cls, engine: Engine, options: RequestOptions, salt: str = "") -> RowShape | None:
        """The shape of the rows `Engine.prepare_one` would prepare with these options, or
        None when the body is not the prompt as its last message (each row then goes
        through `prepare_one`)."""
        base = engine.one_body("", options)
        messages = base.get("messages")
        if not messages or messages[-1] != {"role": "user", "content": ""}:
            return None
        return cls(engine, base, engine.context_window(base["model"]), salt)

    def body(self, prompt: str) -> dict[str, Any]:
        return {**self._base, "messages": [*self._head, {"role": "user", "content": prompt}]}

    def fits(self, prompt: str) -> bool:
        fixed = self._fixed
        if fixed is None:
            return False
        # A character is at most 4 UTF-8 bytes: most prompts fit without being encoded.
        return fixed + 4 * len(prompt) <= self._room or (
            fixed + len(prompt.encode("utf-8")) <= self._room
        )

    def prepare(self, prompt: str, masked: str, *, exact: bool = True) -> Prepared:
        """The row's request, estimated exactly (ContextLengthError if it does not fit), or
        with `exact` False by the byte bound (only for a prompt that `fits`)."""
        estimator = self._estimate if exact else self._bound
        prepared = self.engine.prepare_body(
            prompt, self.body(prompt), label="map", masked=masked, estimator=estimator
        )
        prepared.cache_salt = self.salt
        return prepared

    def keys(self, prompts: Sequence[str]) -> list[str]:
        """The cache key of each prompt's request, as `request_key` gives it."""
        parts = self._key_parts
        if parts is None:
            return [request_key(self.engine, self.body(p), self.salt) for p in prompts]
        prefix, suffix = parts
        sha256 = hashlib.sha256
        keys = [
            sha256((prefix + encode_basestring(p) + suffix).encode("utf-8")).hexdigest()
            for p in prompts
        ]
        sample = {*range(0, len(keys), _KEY_CHECK_EVERY), len(keys) - 1} if keys else set()
        check = self.engine, self.salt
        if any(keys[i] != request_key(check[0], self.body(prompts[i]), check[1]) for i in sample):
            self._key_parts = None  # not the engine's key after all: the slow, sure way
            return self.keys(prompts)
        return keys

    def _key_template(self) -> tuple[str, str] | None:
        """The canonical JSON `keys.cache_key` hashes, split around the prompt."""
        engine = self.engine
        endpoint = engine.base_url
        version = engine.settings.azure_api_version
        if version:  # as Engine.cache_key: the api-version is part of the endpoint
            endpoint = f"{endpoint}?api-version={version}"
        if self.salt:
            endpoint = f"{endpoint}#output={self.salt}"
        marked = canonical_json({"endpoint": endpoint.rstrip("/"), "request": self.body(_MARK)})
        mark = encode_basestring(_MARK)
        if marked.count(mark) != 1:
            return None
        prefix, suffix = marked.split(mark)
        return prefix, suffix  # `keys` checks what it gives against `request_key`
