"""`scores=True` on the embedded model (marker `local_model`): the real llama.cpp server ranks
its top tokens before the label grammar, so ipychat does not ask for them; the labels come
back, the score columns are NA, and the summary says why once."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from ipychat.engine import local
from ipychat.engine.cache import ResponseCache
from ipychat.map import job as chatmap
from ipychat.session import ChatSession, Settings, reset_session

pytestmark = pytest.mark.local_model

LABELS = ["positive", "negative", "neutral"]


@pytest.fixture
def local_session(tmp_path) -> Iterator[ChatSession]:
    local.get_server()
    s = ChatSession(Settings(temperature=0.0), cache=ResponseCache(tmp_path / "cache"))
    reset_session(s)
    yield s
    s.close()
    reset_session(None)
    local.stop_server()


def test_scores_on_the_embedded_model_are_na_with_the_reason(local_session) -> None:
    assert local_session.is_local
    df = pd.DataFrame({"review": ["Cold soup, rude waiter, never again.", "Lovely pasta!"]})
    result = chatmap.run(
        local_session, df, "Is this review positive or negative? {review}", "s",
        choices=LABELS, scores=True,
    )  # fmt: skip
    out = result.frame
    assert set(out["s"]) <= set(LABELS) and "_error" not in out
    for label in LABELS:
        assert str(out[f"s_score_{label}"].dtype) == "Float64"
        assert out[f"s_score_{label}"].isna().all()
    assert "before the label grammar" in (result.summary.note or "")
    assert "before the label grammar" in result.summary.line()
