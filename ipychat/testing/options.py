"""The options of `ipychat.testing.FakeOpenAIServer`, checked once, frozen.

`ServerOptions` is what the engine (`ipychat.testing.server`), the Batch API
(`ipychat.testing.batchapi`) and a spawned child (`ipychat.testing.process`, by pickle)
receive; `BatchOptions` is the Batch API's share of it. The server's keyword arguments
are these fields (see `FakeOpenAIServer` for what each one does).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ipychat.testing.faults import Fault
from ipychat.testing.flavours import Flavour, flavour

__all__ = ["DEFAULT_FAULTS", "BatchOptions", "ReplyFunc", "ServerOptions", "approx_tokens"]

ReplyFunc: TypeAlias = "Callable[[dict[str, Any]], str | Fault | Awaitable[str | Fault]]"

# What `fault_rate` draws from when `faults` is not given.
DEFAULT_FAULTS = (Fault.status(500), Fault.status(503), Fault.reset())


def approx_tokens(text: str) -> int:
    """The default token counter: ceil(len/4), the usual rule of thumb; cheap and stable."""
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class BatchOptions:
    """How the fake Batch API behaves (`FakeOpenAIServer(batch=BatchOptions(...))`).

    - `delay`: seconds in `validating`, and again in `finalizing` (and `cancelling`).
    - `processing_time`: seconds `in_progress` for the whole file (None: `delay`).
    - `shuffle`: process and write the output in a seeded random order.
    - `error_rate`: the fraction of lines that fail with a 500 (seeded).
    - `expire_after`: lines done before the batch expires (None: it never does).
    - `max_requests`, `max_bytes`: OpenAI's limits per batch input file.
    """

    delay: float = 0.05
    processing_time: float | None = None
    shuffle: bool = False
    error_rate: float = 0.0
    expire_after: int | None = None
    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.delay < 0 or (self.processing_time is not None and self.processing_time < 0):
            raise ValueError("batch delays must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.expire_after is not None and self.expire_after < 0:
            raise ValueError("expire_after must be >= 0 (or None)")

    @classmethod
    def of(cls, value: BatchOptions | Mapping[str, Any] | None) -> BatchOptions:
        if value is None:
            return cls()
        return value if isinstance(value, BatchOptions) else cls(**value)


@dataclass(frozen=True)
class ServerOptions:
    """A server's options, checked on creation: a wrong value raises ValueError at once,
    in the caller's frame, not later on the server's thread."""

    reply: str | ReplyFunc | None = None
    models: tuple[str, ...] = ("fake-model",)
    # what a `logprobs: true` request gets (ipychat.testing.rules.logprobs_of)
    logprobs: Mapping[str, Mapping[str, float]] | Callable[[dict[str, Any]], Any] | bool | None = (
        None
    )

    latency: float | tuple[float, float] = 0.0
    tokens_per_second: float | None = None
    chunk_chars: int | None = None
    include_usage_chunk: bool = True
    count_tokens: Callable[[str], int] = approx_tokens
    require_key: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    assumed_max_tokens: int = 16
    window: float = 1.0
    charge_refused: bool = True
    ratelimit_headers: bool = True
    retry_after: bool = True
    faults: tuple[Fault, ...] = DEFAULT_FAULTS
    fault_rate: float = 0.0
    seed: int | None = 0
    host: str = "127.0.0.1"
    port: int = 0
    batch: BatchOptions = field(default_factory=BatchOptions)
    # The provider imitated; FakeOpenAIServer fills `models` and `ratelimit_headers` from
    # it unless given (ServerOptions itself takes them as they are).
    flavour: Flavour = field(default_factory=lambda: flavour("openai"))

    def __post_init__(self) -> None:
        latency = self.latency
        if isinstance(latency, (tuple, list)):
            low, high = latency
            if not 0 <= low <= high:
                raise ValueError(f"latency range must satisfy 0 <= low <= high, got {latency!r}")
            object.__setattr__(self, "latency", (float(low), float(high)))
        elif latency < 0:
            raise ValueError("latency must be >= 0")
        if self.tokens_per_second is not None and self.tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be > 0 (or None for no pacing)")
        if self.chunk_chars is not None and self.chunk_chars < 1:
            raise ValueError("chunk_chars must be >= 1")
        for name, limit in (("rpm", self.rpm), ("tpm", self.tpm)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be >= 1 (or None for no limit)")
        if not 0 < self.window <= 60:
            raise ValueError(
                f"window must be in seconds, more than 0 and at most 60, not {self.window!r}"
            )
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        object.__setattr__(self, "flavour", flavour(self.flavour))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "window", float(self.window))
        object.__setattr__(self, "faults", tuple(self.faults) or DEFAULT_FAULTS)
