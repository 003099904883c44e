"""The faults `ipychat.testing.FakeOpenAIServer` injects: `Fault` and its shorthands.

Pure data, no I/O: the engine (`ipychat.testing.server`) acts them out on the wire, and a
spawned server's parent sends them to the child as `Fault.to_dict()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

__all__ = ["FAULT_KINDS", "Fault", "FaultSpec"]

FAULT_KINDS = (
    "status",  # an HTTP error status (any code), OpenAI error body, optional headers
    "reset",  # TCP reset instead of a response
    "reset_mid_stream",  # part of the body, then the connection closes (body incomplete)
    "hang",  # never answer (or stop after `after` chunks) until the client or server quits
    "truncate",  # the stream ends cleanly but without finish_reason and [DONE]
    "malformed_json",  # a body, or one `data:` line, that is not JSON
    "error_mid_stream",  # `data: {"error": ...}` after some content, then the end
    "empty_reply",  # a valid reply with empty content
)


@dataclass(frozen=True)
class Fault:
    """One injected failure: a `kind` from FAULT_KINDS plus its parameters.

    `after` is how many content chunks of a stream are sent before the fault strikes
    (default: half of them, at least one); for a non-streamed reply the partial kinds cut
    the body in half. Build faults with the class methods, or let `Fault.parse` read the
    shorthands `503`, `"503"`, `"reset"`, `"hang"`, ... (`None`/`"ok"` mean no fault).
    """

    kind: str
    code: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    body: str | dict[str, Any] | None = field(default=None, hash=False)
    message: str | None = None
    after: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {FAULT_KINDS}")
        if self.kind == "status" and not (isinstance(self.code, int) and 200 <= self.code <= 599):
            raise ValueError(f"a status fault needs an HTTP code in 200..599, got {self.code!r}")
        if self.after is not None and self.after < 0:
            raise ValueError("Fault.after must be >= 0")
        object.__setattr__(self, "headers", dict(self.headers))

    @classmethod
    def status(
        cls,
        code: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: str | dict[str, Any] | None = None,
        message: str | None = None,
    ) -> Fault:
        """Answer with `code`. `body` replaces OpenAI's error JSON (a str is sent verbatim)."""
        return cls("status", code=code, headers=headers or {}, body=body, message=message)

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def reset_mid_stream(cls, after: int | None = None) -> Fault:
        return cls("reset_mid_stream", after=after)

    @classmethod
    def hang(cls, after: int | None = None) -> Fault:
        """Never answer; with `after`, stall a stream after that many content chunks."""
        return cls("hang", after=after)

    @classmethod
    def truncate(cls, after: int | None = None) -> Fault:
        return cls("truncate", after=after)

    @classmethod
    def malformed_json(cls, after: int | None = None) -> Fault:
        return cls("malformed_json", after=after)

    @classmethod
    def error_mid_stream(cls, after: int | None = None, message: str | None = None) -> Fault:
        return cls("error_mid_stream", after=after, message=message)

    @classmethod
    def empty_reply(cls) -> Fault:
        return cls("empty_reply")

    @classmethod
    def parse(cls, spec: FaultSpec) -> Fault | None:
        """A Fault from a shorthand; None for `None`/`"ok"` (a normal reply)."""
        if spec is None or isinstance(spec, Fault):
            return spec
        if isinstance(spec, bool):
            raise TypeError(f"not a fault: {spec!r}")
        if isinstance(spec, int):
            return cls.status(spec)
        if isinstance(spec, str):
            if spec == "ok":
                return None
            return cls.status(int(spec)) if spec.isdigit() else cls(spec)
        if isinstance(spec, Mapping):
            return cls(**spec)
        raise TypeError(f"not a fault: {spec!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


FaultSpec: TypeAlias = "Fault | str | int | Mapping[str, Any] | None"
