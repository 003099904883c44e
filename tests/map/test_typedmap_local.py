"""A typed map on the embedded model: the real llama.cpp server with the real SmolLM2 model
(marker `local_model`), through `session.map` and the whole pipeline (the `structured`
setting's "auto" gives the llama.cpp kind, whose grammar leaves the model only the labels)."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from ipychat.engine import local
from ipychat.engine.cache import ResponseCache
from ipychat.session import ChatSession, Settings, reset_session

pytestmark = pytest.mark.local_model

# The five reviews of notebooks/quickstart.ipynb and its %%chatmap template.
REVIEWS = [
    "The pasta was wonderful and the staff were lovely.",
    "Cold soup, rude waiter, never again.",
    "It was fine, nothing special.",
    "Best curry I have had in years!",
    "The wait was far too long.",
]
PROMPT = "Is this restaurant review positive or negative? Answer with one word.\n\nReview: {review}"
LABELS = ["positive", "negative", "neutral"]


@pytest.fixture(scope="module")
def local_server() -> Iterator[local.LocalServer]:
    server = local.get_server()
    yield server
    local.stop_server()


@pytest.fixture
def local_session(local_server: local.LocalServer, tmp_path) -> Iterator[ChatSession]:
    s = ChatSession(Settings(temperature=0.0), cache=ResponseCache(tmp_path / "cache"))
    reset_session(s)
    yield s
    s.close()
    reset_session(None)


def test_choices_on_the_quickstart_reviews_give_only_labels(
    local_session: ChatSession, capsys: pytest.CaptureFixture[str]
) -> None:
    assert local_session.is_local
    df = pd.DataFrame({"review": REVIEWS})
    out = local_session.map(df, PROMPT, "sentiment", choices=LABELS)
    assert "_error" not in out, out.get("_error")
    assert out["sentiment"].notna().all()
    assert set(out["sentiment"]) <= set(LABELS)
    assert list(out["sentiment"].cat.categories) == LABELS
    with capsys.disabled():  # the column as it comes out of the embedded model, for the record
        print("\nembedded model, choices:", out["sentiment"].tolist())
    # The wrong label for the plainest reviews would mean the grammar is not what decides.
    assert out["sentiment"][1] == "negative"


def test_a_schema_on_the_quickstart_reviews_gives_typed_columns(local_session: ChatSession) -> None:
    import enum

    from pydantic import BaseModel

    class Sentiment(str, enum.Enum):
        positive = "positive"
        negative = "negative"
        neutral = "neutral"

    class ReviewFacts(BaseModel):
        sentiment: Sentiment
        about_food: bool
        stars: int

    df = pd.DataFrame({"review": REVIEWS})
    out = local_session.map(df, "Review: {review}", schema=ReviewFacts)
    # Every row validated (the grammar from the schema, then Pydantic): no error column.
    assert "_error" not in out, out.get("_error")
    assert list(out.columns) == ["review", "sentiment", "about_food", "stars"]
    assert isinstance(out["sentiment"].dtype, pd.CategoricalDtype)
    assert str(out["about_food"].dtype) == "boolean" and str(out["stars"].dtype) == "Int64"
    assert out[["sentiment", "about_food", "stars"]].notna().all().all()
