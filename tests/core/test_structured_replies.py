"""ipychat.core.structured in detail, beside tests/core/test_structured.py: the exact texts the
model and the user read (instructions, errors), the grammar's escapes, how a JSON object is
found in a reply, how validation errors are reported, and the canonical form cache keys are
made of. Each pins behaviour a mutation of the module showed unpinned
(`python tools/mutation.py core.structured --tests tests/core/test_structured.py --tests
tests/core/test_structured_replies.py`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from typing import Any

import pytest
from pydantic import BaseModel, model_validator

from ipychat.core.errors import ChatError, ConfigError
from ipychat.core.structured import endpoint_kind, extract_object, output_spec

NUMBERS = {
    "type": "object",
    "properties": {
        "a": {"type": "number"},
        "b": {"type": "number"},
        "c": {"type": "number"},
        "d": {"type": "number"},
        "where": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    "required": ["a", "b", "c", "d"],
}


# ----- what the model reads ---------------------------------------------------------------


def test_the_instruction_of_each_mode_word_for_word() -> None:
    schema = output_spec(schema={"type": "object", "properties": {"n": {"type": "integer"}}})
    assert schema.instruction("openai") == (
        "Reply with only a JSON object that fits the given schema."
    )
    assert schema.instruction("prompt") == (
        "Reply with only a JSON object that fits this JSON schema: "
        '{"additionalProperties":false,"properties":{"n":{"type":["integer","null"]}},'
        '"required":["n"],"type":"object"}'
    )
    for kind in ("openai", "prompt"):
        assert output_spec(filter=True).instruction(kind) == "Answer with only yes or no."
        assert output_spec(choices=["a", "b"]).instruction(kind) == (
            "Answer with exactly one of these labels and nothing else: a, b."
        )


def test_labels_with_commas_are_listed_as_json_strings_unescaped() -> None:
    spec = output_spec(choices=["oui, très", "non"])
    assert spec.instruction("prompt").endswith(': "oui, très", "non".')


def test_a_grammar_escapes_line_breaks_and_tabs_in_labels() -> None:
    from llama_cpp import LlamaGrammar

    spec = output_spec(choices=["a\nb", "c\rd", "e\tf"])
    grammar = spec.request_fragment("llama.cpp")["grammar"]
    assert grammar == 'root ::= "a\\nb" | "c\\rd" | "e\\tf"'
    LlamaGrammar.from_string(grammar, verbose=False)  # llama.cpp's own parser accepts it


def test_a_long_title_is_cut_to_the_64_characters_openai_allows() -> None:
    spec = output_spec(schema={**NUMBERS, "title": "x" * 70})
    name = spec.request_fragment("openai")["response_format"]["json_schema"]["name"]
    assert name == "x" * 64


def test_the_canonical_form_is_stable_text() -> None:
    # Cache and resume keys are digests of it: changing its form loses every cached answer.
    assert output_spec(filter=True).canonical() == (
        '{"labels":[],"mode":"filter","name":"answer","schema":{},"wire":'
        '{"additionalProperties":false,"properties":{"answer":{"type":"boolean"}},'
        '"required":["answer"],"type":"object"}}'
    )
    spec = output_spec(filter=True)
    assert spec.digest() == hashlib.sha256(spec.canonical().encode()).hexdigest()


# ----- what the user reads ----------------------------------------------------------------


def test_bad_choices_and_kinds_are_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError) as caught:
        output_spec(choices="positive,negative")
    assert str(caught.value) == (
        "choices must be a list of labels, not one string: e.g. ['positive', 'negative']."
    )
    with pytest.raises(ConfigError) as caught:
        output_spec(choices=["Yes", "yes."])
    assert str(caught.value) == (
        "choices 'Yes' and 'yes.' are the same label once case, spaces and punctuation are "
        "ignored: keep one."
    )
    with pytest.raises(ConfigError) as caught:
        endpoint_kind("json", base_url="", local=False)
    assert str(caught.value) == (
        "Unknown structured-output kind 'json': use auto, openai, llama.cpp, vllm, "
        "vllm-guided, prompt."
    )


def test_schema_errors_name_nested_fields_and_stop_at_three() -> None:
    spec = output_spec(schema=NUMBERS)
    parsed = spec.parse('{"a": "x", "b": "x", "c": "x", "d": "x", "where": {"city": 1}}')
    assert parsed.error == (
        "a: 'x' is not of type 'number'; b: 'x' is not of type 'number'; "
        "c: 'x' is not of type 'number'"
    )
    nested = spec.parse('{"a": 1, "b": 2, "c": 3, "d": 4, "where": {"city": 1}}')
    assert nested.error == "where.city: 1 is not of type 'string'"


@pytest.mark.parametrize(("length", "cut"), [(200, False), (201, True)])
def test_a_long_validation_message_is_cut_at_200_characters(length: int, cut: bool) -> None:
    spec = output_spec(schema={"type": "object", "properties": {"a": {"type": "number"}}})
    value = "v" * (length - len("'' is not of type 'number'"))
    message = f"'{value}' is not of type 'number'"
    assert len(message) == length
    error = spec.parse('{"a": "' + value + '"}').error
    assert error == "a: " + (message[:199] + "…" if cut else message)


def test_without_jsonschema_a_schema_reply_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = output_spec(schema=NUMBERS)
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # `import jsonschema` fails
    with pytest.raises(ChatError) as caught:
        spec.parse('{"a": 1, "b": 2, "c": 3, "d": 4}')
    assert str(caught.value) == (
        "Checking replies against a JSON schema needs jsonschema: pip install jsonschema"
    )


class Trip(BaseModel):
    start: dt.date
    end: dt.date
    at: dt.datetime
    n: int = 0
    m: int = 0
    k: int = 0

    @model_validator(mode="after")
    def ends_after_it_starts(self) -> Trip:
        if self.end < self.start:
            raise ValueError("the trip ends before it starts")
        return self


TRIP = {"start": "2024-03-01", "end": "2024-03-05", "at": "2024-03-01T09:30:00Z"}


def test_a_pydantic_reply_gives_its_dates_as_iso_columns() -> None:
    parsed = output_spec(schema=Trip).parse(_json(TRIP))
    assert parsed.ok and isinstance(parsed.value, Trip)
    assert parsed.record == {
        "start": "2024-03-01",
        "end": "2024-03-05",
        "at": "2024-03-01T09:30:00Z",
        "n": 0,
        "m": 0,
        "k": 0,
    }


class Stop(BaseModel):
    city: str


class Route(BaseModel):
    stop: Stop


def test_pydantic_errors_name_the_object_or_the_nested_field_and_stop_at_three() -> None:
    assert output_spec(schema=Route).parse('{"stop": {}}').error == "stop.city: Field required"
    spec = output_spec(schema=Trip)
    backwards = spec.parse(_json({**TRIP, "end": "2024-02-01"}))
    assert backwards.error == "the object: Value error, the trip ends before it starts"
    many = spec.parse(_json({**TRIP, "n": "x", "m": "x", "k": "x", "at": "x"}))
    assert many.error is not None and many.error.count(": ") == 3
    assert many.error.startswith("at: Input should be a valid datetime")


def test_a_bad_datetime_in_a_json_schema_reply_is_an_error() -> None:
    # jsonschema does not check `format` by default: the column's own parse does.
    spec = output_spec(
        schema={
            "type": "object",
            "properties": {"at": {"type": "string", "format": "date-time"}},
            "required": ["at"],
        }
    )
    assert spec.parse('{"at": "yesterday"}').error == (
        "at: 'yesterday' is not an ISO datetime (YYYY-MM-DDTHH:MM:SS)"
    )


def _json(value: dict[str, Any]) -> str:
    import json

    return json.dumps(value)


# ----- finding the object in a reply --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # The fence says which object is the answer: an example before it is not.
        ('For example {"a": 0}. Here:\n```json\n{"a": 1}\n```', {"a": 1}),
        ('Use {curly} braces: {"a": 1}, or {none}', {"a": 1}),
        ('{{"a": 1}}', {"a": 1}),  # a doubled brace, as templates write them
    ],
)
def test_the_one_object_is_found_among_braces_that_are_not_json(
    text: str, value: dict[str, Any]
) -> None:
    assert extract_object(text) == (value, "")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('```json\n{"a": 1}\n```\nor\n```json\n{"b": 2}\n```', "the reply holds 2 JSON objects"),
        ('{"a": 1} {"b": 2} {"c": 3}', "the reply holds 3 JSON objects, not one"),
        ("[1, 2", "the reply is not valid JSON (Expecting"),
    ],
)
def test_replies_with_no_single_object_say_why(text: str, says: str) -> None:
    value, problem = extract_object(text)
    assert value is None and problem.startswith(says)


def test_an_optional_property_of_the_objects_in_a_list_may_come_back_null() -> None:
    # Strict mode makes the model write null for `v` in every item; the user's schema says
    # only "string" for it: the nulls are dropped in the list's items too (they were not,
    # and such a reply was refused with "rows.0.v: None is not of type 'string'").
    spec = output_spec(
        schema={
            "type": "object",
            "properties": {
                "rows": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"k": {"type": "string"}, "v": {"type": "string"}},
                        "required": ["k"],
                    },
                }
            },
            "required": ["rows"],
        }
    )
    parsed = spec.parse('{"rows": [{"k": "1", "v": null}, {"k": "2", "v": "b"}]}')
    assert parsed.error is None
    assert parsed.value == {"rows": [{"k": "1"}, {"k": "2", "v": "b"}]}


@pytest.mark.parametrize(("length", "cut"), [(300, False), (301, True)])
def test_the_repair_prompt_word_for_word_with_the_error_cut_at_300(length: int, cut: bool) -> None:
    spec = output_spec(schema=NUMBERS)
    error = "e" * length
    shown = "e" * 299 + "…" if cut else error
    assert spec.repair_messages("{}", error)[1]["content"] == (
        f"That reply does not fit: {shown}. Reply with only the JSON object, with the "
        "fields: a, b, c, d, where."
    )
    yes_no = output_spec(filter=True).repair_messages("maybe", "'maybe' is not yes or no")
    assert yes_no[1]["content"] == (
        "That reply does not fit: 'maybe' is not yes or no. Answer with only yes or no."
    )


def test_an_unknown_kind_for_a_request_fragment_names_the_kinds() -> None:
    with pytest.raises(ConfigError) as caught:
        output_spec(filter=True).request_fragment("anthropic")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "Unknown structured-output kind 'anthropic': use openai, llama.cpp, vllm, "
        "vllm-guided, prompt."
    )


def test_a_pydantic_spec_is_named_after_its_class_and_keeps_its_schema() -> None:
    spec = output_spec(schema=Route)
    fragment = spec.request_fragment("openai")["response_format"]["json_schema"]
    assert fragment["name"] == "Route" and spec.name == "Route"
    assert spec.source == Route.model_json_schema() and spec.model is Route
    choices = output_spec(choices=["a", "b"])
    assert (
        choices.name == "label"
        and choices.request_fragment("openai")["response_format"]["json_schema"]["name"] == "label"
    )

    class Loose(BaseModel):
        data: dict[str, int]

    with pytest.raises(ConfigError) as caught:
        output_spec(schema=Loose)
    assert str(caught.value).startswith("Loose: field 'data' is an object without named")
    with pytest.raises(ConfigError) as caught:
        output_spec()
    assert str(caught.value) == "Give exactly one of schema, choices or filter."
    with pytest.raises(ConfigError) as caught:
        output_spec(schema=NUMBERS, filter=True)
    assert (
        str(caught.value)
        == "Give exactly one of schema, choices or filter (got schema and filter)."
    )
