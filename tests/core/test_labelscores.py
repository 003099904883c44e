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


def test_the_chosen_token_counts_when_the_top_list_leaves_it_out() -> None:
    # the reply's own token need not be among its top_logprobs (a sampled, unlikely token)
    content = [
        {
            "token": "positive",
            "logprob": math.log(0.5),
            "top_logprobs": [{"token": "negative", "logprob": math.log(0.2)}],
        }
    ]
    assert label_scores(content, LABELS) == pytest.approx(
        {"positive": 5 / 7, "negative": 2 / 7, "neutral": 0.0}
    )
    without_list = [{"token": "neutral", "logprob": -0.5}]
    assert label_scores(without_list, LABELS) == {"positive": 0, "negative": 0, "neutral": 1}


def test_malformed_and_unmatched_alternatives_are_skipped_not_the_rest() -> None:
    bare = position(" Pos", {" Pos": 0.5, "Neg": 0.25})
    bare["top_logprobs"] = [
        {"token": "Neu", "logprob": None},  # no number: skipped
        {"token": None, "logprob": -0.1},  # no text: skipped
        {"token": " ", "logprob": math.log(0.2)},  # only spaces: starts no label yet
        "junk",
        *bare["top_logprobs"],  # type: ignore[misc]
    ]
    assert label_scores([bare, *plain("itive")], LABELS) == pytest.approx(
        {"positive": 2 / 3, "negative": 1 / 3, "neutral": 0.0}
    )
    # in the JSON form an alternative that does not start like the chosen token is skipped,
    # and so is one that is only that start
    json_form = [
        *plain('{"', "label"),
        position('":"neg', {'": "neu': 0.3, '":"': 0.1, '":"neg': 0.6, '":"pos': 0.2}),
        *plain("ative", '"}'),
    ]
    assert label_scores(json_form, LABELS) == pytest.approx(
        {"positive": 0.25, "negative": 0.75, "neutral": 0.0}
    )


def test_alternatives_spelling_the_same_label_add_up() -> None:
    content = [position(" Pos", {" Pos": 0.3, "pos": 0.3, "Neg": 0.4})]
    assert label_scores(content, LABELS) == pytest.approx(
        {"positive": 0.6, "negative": 0.4, "neutral": 0.0}
    )


def test_quotes_and_stars_before_a_bare_label_in_a_token_of_their_own_or_not() -> None:
    own_token = [*plain("**"), position("Pos", {"Pos": 0.7, "Neg": 0.3}), *plain("itive")]
    assert label_scores(own_token, LABELS) == pytest.approx(
        {"positive": 0.7, "negative": 0.3, "neutral": 0.0}
    )
    in_the_label_s = [position('"pos', {'"pos': 0.6, '"neg': 0.4}), *plain('itive"')]
    assert label_scores(in_the_label_s, LABELS) == pytest.approx(
        {"positive": 0.6, "negative": 0.4, "neutral": 0.0}
    )


def test_a_json_reply_after_a_newline_is_read_as_json() -> None:
    content = [*plain("\n", '{"label": "'), position("neg", {"neg": 0.8, "pos": 0.2})]
    content += plain('ative"}')
    assert label_scores(content, LABELS) == pytest.approx(
        {"positive": 0.2, "negative": 0.8, "neutral": 0.0}
    )


@pytest.mark.parametrize(
    "content",
    [
        (position("positive", {"positive": 1.0}),),  # a tuple: not what JSON gives
        ["positive"],
        [None],
        plain(" ", '"'),  # nothing but what may come before a label
        plain('{"label": "'),  # cut off where the label starts
    ],
)
def test_content_that_is_no_token_list_or_ends_before_the_label_is_none(content: object) -> None:
    assert label_scores(content, LABELS) is None


def test_trim_refuses_entries_that_are_no_token_and_keeps_a_missing_top_list_empty() -> None:
    assert trim_logprobs({"content": [{"token": "pos", "logprob": -0.2}]}) == [
        {"token": "pos", "logprob": -0.2, "top_logprobs": []}
    ]
    assert trim_logprobs({"content": ["pos"]}) is None
    assert trim_logprobs({"content": [{"token": 3, "logprob": -0.2}]}) is None


def test_a_shared_start_the_reply_did_not_choose_is_not_followed() -> None:
    labels = ["very good", "very bad", "fine"]
    content = [
        position("fine", {"fine": 0.6, "very": 0.4}),
        position(" indeed", {" indeed": 0.5, " good": 0.5}),
    ]
    assert label_scores(content, labels) == {"very good": 0.0, "very bad": 0.0, "fine": 1.0}
    chosen = [position("very", {"fine": 0.6, "very": 0.4}), position(" good", {" good": 0.5})]
    chosen[1]["top_logprobs"].append({"token": " bad", "logprob": math.log(0.25)})  # type: ignore[union-attr]
    assert label_scores(chosen, labels) == pytest.approx(
        {"very good": 0.2 / 0.9, "very bad": 0.1 / 0.9, "fine": 0.6 / 0.9}
    )
