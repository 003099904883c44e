"""Per-label probabilities of a `choices` reply, from the token log probabilities the server
sent with it (`--scores`).

OpenAI's chat completions take `logprobs: true` and `top_logprobs: N` (0 to 20) and answer
with `choices[0].logprobs.content`: one entry per reply token, `{token, logprob, bytes,
top_logprobs: [{token, logprob, bytes}, ...]}`, the most likely tokens at that position
(https://platform.openai.com/docs/api-reference/chat/create, `logprobs` and `top_logprobs`;
https://platform.openai.com/docs/api-reference/chat/object, `choices[].logprobs.content`).

The rule (`label_scores`):

1. Find where the label starts in the reply: after `"label": "` when the reply is the JSON
   object of an OpenAI structured output (`{"label": "positive"}`), else at the first
   character that is not a space, a quote or `*` (the bare label of a prompt or a grammar).
2. At the token position covering that character, every alternative token (the part after
   what the reply's own token has before the label start) is read as the start of a label,
   compared case-insensitively. An alternative that starts exactly one label (or is that
   label followed by no letter or digit, `positive"`) adds its probability to that label.
3. An alternative that starts several labels ("very" for "very good" and "very bad") is
   followed only if it is the token the reply chose: at the next position its alternatives
   split that probability among those labels (the chain rule). A shared start the reply did
   not choose, and an alternative that starts no label, are not attributed.
4. The attributed probabilities are renormalised to sum to 1.

Limits, as the numbers should be read: they are relative among the labels, not calibrated
confidence; a label whose distinguishing token is not among the top N alternatives gets 0;
the probability of shared starts the reply did not take, and of text that is no label, is
left out before renormalising; a label that is a prefix of another ("good", "good enough")
can only be told apart where a token follows it (the closing quote of the JSON form), not at
the end of a bare reply. No log probabilities, or none that match a label: None (NA).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["label_scores", "trim_logprobs"]

_JSON_LABEL: Final = re.compile(r'"label"\s*:\s*"')
_LEAD: Final = " \t\r\n\"'`*"  # what may come before a bare label (normalise_label strips it)


def trim_logprobs(raw: Any) -> list[dict[str, Any]] | None:
    """`choices[0].logprobs.content` as kept (cache entries hold it): token, logprob and the
    top alternatives' token and logprob per position (`bytes` left out); None when absent."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("content"), list):
        return None
    kept: list[dict[str, Any]] = []
    for entry in raw["content"]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("token"), str):
            return None
        top = entry.get("top_logprobs")
        kept.append(
            {
                "token": entry["token"],
                "logprob": entry.get("logprob"),
                "top_logprobs": [
                    {"token": t.get("token"), "logprob": t.get("logprob")}
                    for t in (top if isinstance(top, list) else [])
                    if isinstance(t, Mapping)
                ],
            }
        )
    return kept


def label_scores(content: Any, labels: Sequence[str]) -> dict[str, float] | None:
    """Each label's probability from the reply's token log probabilities (see the module
    docstring for the rule and its limits), or None when they say nothing about the labels."""
    if not isinstance(content, list) or not content:
        return None
    tokens = [entry.get("token") if isinstance(entry, Mapping) else None for entry in content]
    if not all(isinstance(t, str) for t in tokens):
        return None
    text = "".join(tokens)  # type: ignore[arg-type]
    start, bare = _label_start(text)
    if start is None:
        return None
    position, offset = 0, 0
    while position < len(tokens) and offset + len(tokens[position]) <= start:  # type: ignore[arg-type]
        offset += len(tokens[position])  # type: ignore[arg-type]
        position += 1
    if position == len(tokens):
        return None
    folded = {label: label.casefold() for label in labels}
    mass = dict.fromkeys(labels, 0.0)
    # The reply's own token may start before the label (`":"neg`): the alternatives must
    # start the same way, and that part is cut off. Before a bare label it is only spaces or
    # quotes, which any alternative may have or not (" Pos" and "Neg" both start a label).
    before: str | None = None if bare else text[offset:start]
    said, weight = "", 1.0
    for entry in content[position:]:
        follow = _attribute(entry, before, said, weight, folded, mass)
        if follow is None:
            break
        said, weight = follow
        before = ""
    total = sum(mass.values())
    if total <= 0 or not math.isfinite(total):
        return None
    return {label: value / total for label, value in mass.items()}


def _label_start(text: str) -> tuple[int | None, bool]:
    """Where the label starts in the reply, and whether it is a bare label (not JSON)."""
    if text.lstrip().startswith("{"):
        found = _JSON_LABEL.search(text)
        return (found.end() if found else None), False
    # A reply of nothing but spaces and quotes starts its label at its end: no token covers
    # that, and label_scores answers None.
    return len(text) - len(text.lstrip(_LEAD)), True


def _attribute(
    entry: Mapping[str, Any],
    before: str | None,
    said: str,
    weight: float,
    folded: Mapping[str, str],
    mass: dict[str, float],
) -> tuple[str, float] | None:
    """One token position: each alternative's probability added to the one label it starts;
    the (label text so far, probability) to follow when the reply's own token starts several."""
    chosen = entry["token"]
    alternatives = [a for a in entry.get("top_logprobs") or [] if isinstance(a, Mapping)]
    if not any(a.get("token") == chosen for a in alternatives):
        alternatives.append({"token": chosen, "logprob": entry.get("logprob")})
    follow: tuple[str, float] | None = None
    for alternative in alternatives:
        token, logprob = alternative.get("token"), alternative.get("logprob")
        if not isinstance(token, str) or not isinstance(logprob, int | float):
            continue
        if before is None:  # the first token of a bare label
            piece = token.lstrip(_LEAD)
        elif token.startswith(before):
            piece = token[len(before) :]
        else:
            continue
        if not piece:
            continue
        sofar = said + piece.casefold()
        fits = [label for label, low in folded.items() if _fits(sofar, low)]
        probability = weight * math.exp(logprob)
        if len(fits) == 1:
            mass[fits[0]] += probability
        elif len(fits) > 1 and token == chosen:
            follow = (sofar, probability)
    return follow


def _fits(sofar: str, label: str) -> bool:
    """`sofar` is the start of `label`, or `label` followed by no letter or digit (`positive"`,
    `positive.`; "good enough" is not "good" followed by something)."""
    if label.startswith(sofar):
        return True
    return sofar.startswith(label) and not any(c.isalnum() for c in sofar[len(label) :])
