"""What a map does with each reply: free text as it is, a --json object checked for its keys,
a typed reply (schema, choices, filter) parsed and validated by its `OutputSpec`.

`Answers` is a mixin of `ipychat.map.mapper.MapJob`, kept apart so the job's bookkeeping and
the reading of replies each stay readable. A reply that does not fit (invalid JSON, a label
that is none of the labels, an object that fails the schema) is asked again once, in the same
conversation, first in line, through the same dispatcher, pacing, ledger and cache; if the
second reply does not fit either, the row's error column says what was wrong.

An endpoint that refuses the structured-output fields (HTTP 400/422 naming them) makes the
map fall back to asking in the prompt (`engine.prepare.fall_back`): every request not yet
answered is rebuilt that way and the refused ones are sent again, so no row is lost; the
summary says so in one line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ChatError, ContextLengthError
from ipychat.core.structured import EndpointKind, OutputSpec, Parsed
from ipychat.engine.prepare import Prepared, RequestOptions, fall_back, format_refused
from ipychat.map.frame import cut_note, parse_object
from ipychat.map.plan import CachedRequest, MapRequest, request_key
from ipychat.map.typed import Library, keep_tail, typed_columns

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine
    from ipychat.map.dispatch import Counters, Dispatcher
    from ipychat.map.frame import Frame

__all__ = ["Answers"]

Job = MapRequest | CachedRequest


class Answers:
    """How a `MapJob` reads replies (see the module docstring). The job sets the attributes
    annotated here; `spec` is None for a free-text or --json map."""

    engine: Engine
    frame: Frame
    outputs: list[str]
    json: bool
    n: int  # the rows processed (--limit)
    default_cap: int | None
    counters: Counters
    _dispatcher: Dispatcher
    to_send: list[MapRequest]
    # typed maps
    spec: OutputSpec | None
    kind: EndpointKind
    salt: str
    parsed: list[Parsed | None]
    typed_note: str | None
    row_options: RequestOptions  # a typed map's options before its spec was added

    if TYPE_CHECKING:  # MapJob's own

        def _finish(
            self,
            i: int,
            values: dict[str, Any],
            error: str | None,
            *,
            cached: bool = False,
            failed: bool | None = None,
        ) -> None: ...

        def _fail(self, job: MapRequest, exc: ChatError) -> None: ...

    def _answered(
        self,
        job: Job,
        text: str,
        *,
        cached: bool,
        finish_reason: str | None = None,
    ) -> None:
        # A reply cut at the cap the user never chose must not lose text silently: the text
        # is kept and the row says so in the error column (a note, not a failure).
        cut = self.default_cap is not None and finish_reason == "length"
        note = cut_note(self.default_cap) if cut and self.default_cap is not None else None
        if self.spec is not None:
            self._typed(job, text, cached=cached, cut=cut, note=note)
            return
        if not self.json:
            for i in job.rows:
                self._finish(i, {self.outputs[0]: text}, note, cached=cached, failed=False)
            return
        parsed, problem = parse_object(text)
        if parsed is None:
            if cut:  # asking again would be cut at the same place
                again = f"The reply is not a JSON object ({problem}): {note}"
                for i in job.rows:
                    self._finish(i, {}, again)
            elif job.reask:
                again = f"The reply is not a JSON object ({problem}), even when asked again."
                for i in job.rows:
                    self._finish(i, {}, again)
            else:
                keys = ", ".join(self.outputs)
                self._reask(job, cached, [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"That is not a valid JSON object ({problem}). "
                     f"Reply with only the JSON object, with the keys: {keys}."},
                ])  # fmt: skip
            return
        missing = [col for col in self.outputs if col not in parsed]
        error: str | None = None
        if missing:
            keys = ", ".join(repr(k) for k in missing)
            error = f"The reply has no {keys} key{'s' if len(missing) > 1 else ''}."
        values = {col: parsed.get(col) for col in self.outputs}
        for i in job.rows:
            self._finish(i, values, error or note, cached=cached, failed=error is not None)

    def _typed(self, job: Job, text: str, *, cached: bool, cut: bool, note: str | None) -> None:
        """A typed reply: parsed and validated; asked again once when it does not fit."""
        assert self.spec is not None
        parsed = self.spec.parse(text)
        if parsed.ok:
            for i in job.rows:
                self.parsed[i] = parsed
                self._finish(i, {}, None, cached=cached, failed=False)
            return
        if cut:  # asking again would be cut at the same place
            error = f"{parsed.error}: {note}"
        elif job.reask:
            error = f"{parsed.error} (also when asked again)."
        else:
            assert parsed.error is not None
            self._reask(job, cached, self.spec.repair_messages(text, parsed.error))
            return
        for i in job.rows:
            self.parsed[i] = None
            self._finish(i, {}, error)

    def _reask(self, job: Job, cached: bool, messages: list[dict[str, Any]]) -> None:
        """A reply that does not fit is asked for once more, in the same conversation (the
        reply and `messages` appended), first in line."""
        body = dict(job.body)
        body["messages"] = [*body["messages"], *messages]
        estimate = self.engine.estimate(
            body["messages"], model=body["model"], max_tokens=body.get("max_tokens")
        )
        salt = self.salt if self.spec is not None else ""
        prepared = Prepared(job.prompt, None, body, estimate, label="map", cache_salt=salt)
        again = MapRequest(
            request_key(self.engine, body, salt),
            prepared,
            job.rows,
            estimate.prompt_tokens + estimate.max_completion_tokens,
            reask=True,
        )
        if cached:  # its rows were counted as cached: now they are to send
            self.counters.total += len(job.rows)
        self._dispatcher.ready.appendleft(again)

    # ----- an endpoint that refuses the structured-output fields --------------------------

    def _fell_back(self, job: MapRequest, error: ChatError) -> bool:
        """True when `error` is the endpoint refusing the spec's fields: the map switches to
        the prompt kind (once), and `job` goes back in line, rebuilt."""
        if self.spec is None or job.fell_back or not format_refused(error):
            return False
        if self.kind != "prompt":
            self.typed_note = fall_back(self.engine, self.kind)
            logging.getLogger("ipychat").warning("%s", self.typed_note)
            self.kind = "prompt"
            for other in self.to_send:
                if other is not job:
                    self._rebuild(other)
        job.fell_back = True
        if self._rebuild(job):
            self._dispatcher.ready.appendleft(job)
        return True

    def _rebuild(self, job: MapRequest) -> bool:
        """`job` in the prompt kind, in place (its queued copies are the same object); False
        when it no longer fits the context window (its rows fail saying so)."""
        assert self.spec is not None
        options = self.row_options
        base = options.system
        rule = self.spec.instruction("prompt")
        system = f"{base}\n\n{rule}" if base else rule
        prompt_options = RequestOptions(
            options.model,
            system,
            options.temperature,
            options.max_tokens,
            None,
            options.allow_secrets,
        )
        body = self.engine.one_body(job.prompt, prompt_options)
        try:
            prepared = self.engine.prepare_body(
                job.prompt, body, label="map", masked=job.prepared.masked
            )
        except ContextLengthError as exc:
            self._fail(job, exc)
            return False
        prepared.cache_salt = self.salt
        job.prepared, job.reask = prepared, False
        job.key = request_key(self.engine, body, self.salt)
        return True

    def _typed_columns(self, errors: list[str | None]) -> dict[str, Any]:
        """A typed map's columns (by row position) and, into `errors`, what did not convert."""
        assert self.spec is not None
        library: Library = "polars" if self.frame.kind == "polars" else "pandas"
        typed = typed_columns(self.spec, self.parsed, library=library, output=self.outputs[0])
        for i, problem in enumerate(typed.errors):
            if errors[i] is None and problem is not None:
                errors[i] = problem
        n = self.n
        if n < len(self.frame):  # --limit: the rows past it keep what the frame had
            for name, column in typed.columns.items():
                if name in self.frame.columns:
                    typed.columns[name] = keep_tail(column, self.frame.column(name), n)
        return typed.columns
