"""The DataFrame operations of a session: `map` and `amap` (what %%chatmap runs).

A mixin of `ChatSession`, kept apart so the session's conversation code and the frame
operations each stay readable; both call down into `ipychat.map`. Nothing here holds state:
every method works through the session it is mixed into.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ipychat.engine.prepare import allowing_secrets

__all__ = ["FrameOperations"]


class FrameOperations:
    """`ChatSession`'s DataFrame operations (see the module docstring)."""

    def map(
        self,
        df: Any,
        template: str,
        output: str | Sequence[str] = "col",
        *,
        allow_secrets: bool = False,
        batch: bool = False,
        **options: Any,
    ) -> Any:
        """Fill `template`'s {column} placeholders from each row of `df`, send the prompts in
        parallel at the server's pace, and return the DataFrame (pandas or polars, as given)
        with each reply in `output`, failures in `_error`; `dry_run=True` returns the plan.
        Options and behaviour: `ipychat.map.job` (the same as %%chatmap's flags).
        `batch=True` sends the rows through the provider's Batch API: `ipychat.map.batch`."""
        from ipychat.map import job as chatmap

        mapper: Any = chatmap
        if batch:
            from ipychat.map import batch as mapper
        with allowing_secrets(allow_secrets):
            return mapper.map_frame(self, df, template, output, **options)

    async def amap(
        self,
        df: Any,
        template: str,
        output: str | Sequence[str] = "col",
        *,
        allow_secrets: bool = False,
        batch: bool = False,
        **options: Any,
    ) -> Any:
        """`map` for code that awaits; the requests still go from the session's own loop."""
        from ipychat.map import job as chatmap

        mapper: Any = chatmap
        if batch:
            from ipychat.map import batch as mapper
        with allowing_secrets(allow_secrets):
            return await mapper.amap_frame(self, df, template, output, **options)
