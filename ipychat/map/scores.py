"""`scores=True` / `--scores`: each label's probability next to a `choices` column.

The request asks for the token log probabilities (`logprobs: true, top_logprobs: 20`, the
most OpenAI takes: https://platform.openai.com/docs/api-reference/chat/create); each reply's
are read by `ipychat.core.labelscores.label_scores` (its docstring has the rule and its
limits) into one Float64 column per label, `<output>_score_<label>`, so the scores can be
sorted, filtered and thresholded like any number. A row without scores is NA there, and the
map's summary says once why:

- the endpoint refuses the fields (Groq, `core/providers.py`): refused before anything is
  sent, in one line;
- a llama.cpp server (the embedded model, or `structured = "llama.cpp"`): not asked. Its top
  tokens are computed before the label grammar applies (measured: "I" and "The" on top for a
  sentiment question whose reply the grammar made "positive"), so they are not the labels'
  probabilities; NA with a note rather than misleading numbers;
- the server sent no log probabilities with its replies (it ignores the fields): NA, noted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ipychat.core.errors import ConfigError
from ipychat.core.structured import EndpointKind

if TYPE_CHECKING:
    from ipychat.engine.engine import Engine

__all__ = ["TOP_LOGPROBS", "missing_note", "score_columns", "score_request"]

TOP_LOGPROBS: Final = 20  # OpenAI's maximum: the more alternatives, the fewer labels at 0

_LLAMA_CPP: Final = (
    "No per-label scores: a llama.cpp server reports its top tokens before the label grammar "
    "applies, so they are not the labels' probabilities (scores need an OpenAI-compatible "
    "endpoint that returns logprobs)."
)


def score_request(engine: Engine, kind: EndpointKind) -> tuple[dict[str, Any] | None, str | None]:
    """The body fields that ask for scores on this endpoint (None: not asked), and the note
    saying why there are none; ConfigError (one line, nothing sent) where the endpoint refuses
    them."""
    provider = engine.endpoint().spec
    if provider is not None and "logprobs" in provider.refused:
        raise ConfigError(
            f"{provider.name} refuses logprobs ({provider.docs}), which --scores needs: "
            "leave out --scores. Nothing was sent."
        )
    if kind == "llama.cpp":
        return None, _LLAMA_CPP
    return {"logprobs": True, "top_logprobs": TOP_LOGPROBS}, None


def missing_note(host: str) -> str:
    """The summary's line when answered rows came back without log probabilities."""
    return (
        f"No per-label scores for some rows: {host} sent no token log probabilities (logprobs) "
        "with their replies; those score columns are NA."
    )


def score_name(output: str, label: str) -> str:
    return f"{output}_score_{label}"


def score_columns(
    output: str,
    labels: Sequence[str],
    scores: Sequence[dict[str, float] | None],
    *,
    polars: bool,
) -> dict[str, Any]:
    """One Float64 column per label, by row position (NA where a row has no scores)."""
    columns: dict[str, Any] = {}
    for label in labels:
        values = [row.get(label) if row is not None else None for row in scores]
        name = score_name(output, label)
        if polars:
            import polars as pl

            columns[name] = pl.Series(name, values, dtype=pl.Float64)
        else:
            import pandas as pd

            columns[name] = pd.array(values, dtype="Float64")
    return columns
