"""Compare models: the same turn sent to several models at once (`%%chat -m A,B`).

Each model gets one request with the same history and prompt, in parallel on the session's
loop; every request is priced and written to the ledger like any other. The thread continues
with one reply only (the first model's, or `keep`'s): the others are shown, never remembered.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipychat.core import format as fmt
from ipychat.core.errors import ChatError
from ipychat.core.markdown import reply_markdown
from ipychat.core.types import CacheMode, Reply
from ipychat.streaming import Progress

if TYPE_CHECKING:
    from ipychat.session import ChatSession

__all__ = ["Comparison", "compare_on_loop"]


@dataclass(frozen=True)
class Answer:
    """One model's side of a comparison: its reply, or the one-line error it ended with."""

    model: str
    reply: Reply | None
    error: str | None = None

    def line(self) -> str:
        """`412 → 96 tokens · $0.00012 · 1.8 s`, or the error."""
        if self.reply is None:
            return f"failed: {self.error}"
        return fmt.compare_line(self.reply)


@dataclass(frozen=True)
class Comparison:
    """The replies of several models to one turn; `reply` is the one the thread kept."""

    prompt: str
    answers: tuple[Answer, ...]
    kept: str

    @property
    def reply(self) -> Reply | None:
        """The reply the thread continues with (None if that model failed)."""
        return self[self.kept]

    def __getitem__(self, model: str) -> Reply | None:
        for answer in self.answers:
            if answer.model == model:
                return answer.reply
        raise KeyError(model)

    def _title(self, answer: Answer) -> str:
        return answer.model + (" (kept)" if answer.model == self.kept else "")

    def text(self) -> str:
        """Plain text: each model's reply under its name, with its figures."""
        return "\n\n".join(
            f"── {self._title(a)} ──\n{a.reply.text if a.reply else ''}\n[{a.line()}]"
            for a in self.answers
        )

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None
    ) -> tuple[dict[str, str], dict[str, Any]]:
        # An HTML table whose cells hold Markdown: CommonMark ends an HTML block at a blank
        # line, so each reply between blank lines is rendered as Markdown, side by side.
        cells = []
        for answer in self.answers:
            body = reply_markdown(answer.reply.text) if answer.reply else ""
            cells.append(
                f'<td style="vertical-align: top; text-align: left">\n\n'
                f"**{html.escape(self._title(answer))}**\n\n{body}\n\n"
                f"{fmt.footer_markdown(answer.line())}\n\n</td>"
            )
        markdown = "<table>\n<tr>\n" + "\n".join(cells) + "\n</tr>\n</table>"
        data = {"text/markdown": markdown, "text/plain": self.text()}
        # Saved with the notebook, like a Reply's: how each model answered, and which one the
        # thread kept.
        replies = [
            a.reply.record() if a.reply else {"model": a.model, "error": a.error}
            for a in self.answers
        ]
        return data, {"ipychat": {"kept": self.kept, "compared": replies}}


async def compare_on_loop(
    session: ChatSession,
    prompt: str,
    models: Sequence[str],
    *,
    keep: str | None = None,
    cache: CacheMode = "use",
    new: bool = False,
    **options: Any,
) -> Comparison:
    """Send one turn to each of `models` at once; the thread keeps `keep`'s reply (default:
    the first model's). Every request is prepared (and refused) before any is sent."""
    kept = keep or models[0]
    prepared = [session.prepare(prompt, model=model, new=new, **options) for model in models]
    for model, one in zip(models, prepared, strict=True):
        if model != kept:
            one.thread = None  # shown, not remembered: no turn, no panel event

    async def send(one: Any) -> Reply:
        return await session.request(one, Progress(), cache=cache, new=new)

    results = await asyncio.gather(*(send(one) for one in prepared), return_exceptions=True)
    answers = []
    for model, result in zip(models, results, strict=True):
        if isinstance(result, ChatError):
            answers.append(Answer(model, None, str(result)))
        elif isinstance(result, BaseException):
            raise result
        else:
            answers.append(Answer(model, result))
    if all(answer.reply is None for answer in answers):
        raise ChatError(f"Every model failed; {answers[0].model}: {answers[0].error}")
    return Comparison(prompt, tuple(answers), kept)
