"""`core/labelscores`: the rule that turns a reply's top log probabilities into one
probability per label (its module docstring), on OpenAI-shaped `logprobs.content`
(https://platform.openai.com/docs/api-reference/chat/object)."""

from __future__ import annotations

import math

import pytest

from ipychat.core.labelscores import label_scores, trim_logprobs

LABELS = ["positive", "negative", "neutral"]


def position(token: str, alternatives: dict[str, float]) -> dict[str, object]:
    own = alternatives.get(token)
    return {
        "token": token,
        "logprob": math.log(own) if own else -9999.0,
        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alternatives.items()],
    }


def plain(*tokens: str) -> list[dict[str, object]]:
    return [position(t, {t: 1.0}) for t in tokens]


def test_a_bare_label_with_a_leading_space_and_capitals() -> None:
    content = [position(" Pos", {" Pos": 0.6, "Neg": 0.3, " neutral": 0.1}), *plain("itive")]
    assert label_scores(content, LABELS) == pytest.approx(
        {"positive": 0.6, "negative": 0.3, "neutral": 0.1}
    )


def test_inside_the_json_object_and_a_token_that_starts_before_the_label() -> None:
    # `":"` + `neg` is one token here: its alternatives must start with `":"` too
    content = [
        *plain('{"', "label"),
        position('":"neg', {'":"neg': 0.5, '":"pos': 0.25, '": "neu': 0.25, '":"ne': 0.1}),
        *plain("ative", '"}'),
    ]
    # '": "neu' does not start with the chosen token's '":"' and is left out; '":"ne' starts
    # two labels, and the reply did not choose it: not attributed
    assert label_scores(content, LABELS) == pytest.approx(
        {"positive": 1 / 3, "negative": 2 / 3, "neutral": 0.0}
    )


def test_mass_on_text_that_is_no_label_is_dropped_before_renormalising() -> None:
    content = [position("positive", {"positive": 0.4, "The": 0.5, "negative": 0.1})]
    assert label_scores(content, LABELS) == pytest.approx(
        {"positive": 0.8, "negative": 0.2, "neutral": 0.0}
    )


def test_a_label_that_is_a_prefix_of_another_is_told_apart_by_the_next_token() -> None:
    labels = ["good", "good enough"]
    content = [
        *plain('{"label":"'),
        position("good", {"good": 0.9, "bad": 0.1}),
        position(" enough", {" enough": 0.3, '"': 0.7}),
        *plain("}"),
    ]
    assert label_scores(content, labels) == pytest.approx({"good": 0.7, "good enough": 0.3})


@pytest.mark.parametrize(
    "content",
    [None, [], "text", [{"token": 3}], plain('{"other":"x"}'), plain("The", " review")],
)
def test_nothing_about_the_labels_is_none(content: object) -> None:
    assert label_scores(content, LABELS) is None


def test_trim_keeps_tokens_and_logprobs_only() -> None:
    raw = {
        "content": [
            {
                "token": "pos",
                "logprob": -0.1,
                "bytes": [112, 111, 115],
                "top_logprobs": [{"token": "pos", "logprob": -0.1, "bytes": [1]}],
            }
        ],
        "refusal": None,
    }
    assert trim_logprobs(raw) == [
        {"token": "pos", "logprob": -0.1, "top_logprobs": [{"token": "pos", "logprob": -0.1}]}
    ]
    assert trim_logprobs(None) is None
    assert trim_logprobs({"content": None}) is None
