"""Typed replies without a server: schemas read as columns, the strict schema and the request
fragment per endpoint kind, parsing and validation, labels and yes/no with their precision,
the repair prompt, token counts, canonical forms, and typed pandas/polars columns."""

from __future__ import annotations

import datetime as dt
import enum
import json
from typing import Any, Literal

import pandas as pd
import polars as pl
import pytest
from pydantic import BaseModel

from ipychat.core.errors import ConfigError
from ipychat.core.keys import canonical_json
from ipychat.core.schema import read_schema
from ipychat.core.structured import (
    ENDPOINT_KINDS,
    OutputSpec,
    endpoint_kind,
    extract_object,
    output_spec,
)
from ipychat.core.tokens import count_text
from ipychat.map.typed import filter_rows, typed_columns

LABELS = ["positive", "negative", "neutral"]

# One field of every kind, as a JSON-schema dict.
EVERY_KIND: dict[str, Any] = {
    "title": "Invoice",
    "type": "object",
    "properties": {
        "number": {"type": "integer"},
        "total": {"type": "number"},
        "paid": {"type": "boolean"},
        "customer": {"type": "string"},
        "issued": {"type": "string", "format": "date-time"},
        "due": {"type": "string", "format": "date"},
        "status": {"enum": ["open", "paid", "void"]},
        "items": {"type": "array", "items": {"type": "string"}},
        "note": {"type": ["string", "null"]},
    },
    "required": ["number", "total", "paid", "customer", "issued", "due", "status", "items"],
}
GOOD = {
    "number": 7,
    "total": 12.5,
    "paid": False,
    "customer": "Ada",
    "issued": "2024-03-01T10:30:00",
    "due": "2024-03-31",
    "status": "open",
    "items": ["tea", "cake"],
    "note": None,
}


class Status(str, enum.Enum):
    open = "open"
    paid = "paid"


class Address(BaseModel):
    city: str
    postcode: str | None = None


class Invoice(BaseModel):
    number: int
    status: Status
    kind: Literal["retail", "trade"]
    address: Address
    billing: Address | None = None
    lines: list[Address] = []


def _objects(schema: Any) -> list[dict[str, Any]]:
    """Every object schema inside a schema (to check the strict rules on each)."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            found.append(schema)
        for value in schema.values():
            found += _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _objects(value)
    return found


# ----- reading schemas -----------------------------------------------------------------------


def test_every_field_kind_is_read_from_a_json_schema() -> None:
    shape = read_schema(EVERY_KIND)
    kinds = {f.column: (f.type, f.nullable) for f in shape.fields}
    assert kinds == {
        "number": ("integer", False),
        "total": ("number", False),
        "paid": ("boolean", False),
        "customer": ("string", False),
        "issued": ("datetime", False),
        "due": ("date", False),
        "status": ("enum", False),
        "items": ("list", False),
        "note": ("string", True),
    }
    assert shape.fields[6].categories == ("open", "paid", "void")


def test_the_strict_schema_requires_everything_and_makes_optional_fields_nullable() -> None:
    spec = output_spec(schema=Invoice)
    strict = spec.wire_schema()
    objects = _objects(strict)
    assert len(objects) == 4  # the root, address, billing, an item of lines
    for obj in objects:
        assert obj["required"] == list(obj["properties"])
        assert obj["additionalProperties"] is False
    props = strict["properties"]
    assert props["number"] == {"type": "integer"}
    assert props["status"] == {"type": "string", "enum": ["open", "paid"]}  # $ref inlined
    assert props["kind"] == {"type": "string", "enum": ["retail", "trade"]}
    assert props["address"]["properties"]["postcode"] == {"type": ["string", "null"]}
    assert props["billing"]["anyOf"][1] == {"type": "null"}
    assert "$defs" not in json.dumps(strict) and "$ref" not in json.dumps(strict)
    assert "title" not in json.dumps(strict) and "default" not in json.dumps(strict)


def test_nested_objects_are_flattened_to_parent_dot_child() -> None:
    fields = {f.column: f for f in output_spec(schema=Invoice).fields}
    assert list(fields) == [
        "number",
        "status",
        "kind",
        "address.city",
        "address.postcode",
        "billing.city",
        "billing.postcode",
        "lines",
    ]
    assert fields["address.city"].path == ("address", "city")
    assert not fields["address.city"].nullable
    assert fields["billing.city"].nullable  # its parent may be null
    assert fields["lines"].type == "list" and fields["lines"].items is None


def test_the_strict_schema_compiles_to_a_llama_cpp_grammar_that_keeps_enums_and_dates() -> None:
    # The converter llama-cpp-python's server runs on response_format.schema.
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    strict = dict(output_spec(schema=EVERY_KIND).wire_schema())
    strict["properties"] = {
        **strict["properties"],
        "maybe_status": {"anyOf": [{"type": "string", "enum": ["x", "y"]}, {"type": "null"}]},
    }
    grammar = json_schema_to_gbnf(json.dumps(strict))
    for literal in ('"\\"open\\""', '"\\"void\\""', '"\\"x\\""', "date-time", "null"):
        assert literal in grammar
    nullable_enum = read_schema(
        {"type": "object", "properties": {"s": {"enum": ["x", "y"]}}, "required": []}
    ).strict
    assert '"\\"x\\""' in json_schema_to_gbnf(json.dumps(nullable_enum))


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "array", "items": {"type": "string"}}, "top level must be an object"),
        ({"type": "string"}, "top level must be an object"),
        ({"type": ["object", "null"], "properties": {"a": {"type": "string"}}}, "top level"),
        ({"type": "object", "properties": {}}, "without named properties"),
        (
            {"type": "object", "properties": {"d": {"type": "object", "additionalProperties": {}}}},
            "free-form dict",
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "other.json#/x"}}},
            "put the definition inline",
        ),
        (
            {
                "type": "object",
                "properties": {"n": {"$ref": "#/$defs/Node"}},
                "$defs": {
                    "Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}
                },
            },
            "recursive",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            },
            "one type",
        ),
        ({"type": "object", "properties": {"a": {"type": ["string", "integer"]}}}, "one type"),
        ({"type": "object", "properties": {"a": {"enum": []}}}, "empty enum"),
        ({"type": "object", "properties": {"a": {"enum": ["x", 1]}}}, "mixed"),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, "say what its items are"),
        ({"type": "object", "properties": {"a": {"type": "string", "not": {}}}}, "'not'"),
        (
            {
                "type": "object",
                "properties": {"a": {"allOf": [{"type": "string"}, {"maxLength": 3}]}},
            },
            "allOf",
        ),
        ({"type": "object", "properties": {"a": {}}}, "has no type"),
        (
            {
                "type": "object",
                "properties": {
                    "a.b": {"type": "string"},
                    "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                },
            },
            "column 'a.b' comes from two fields",
        ),
    ],
)
def test_unsupported_schemas_are_refused_in_one_line(schema: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        output_spec(schema=schema)
    message = str(caught.value)
    assert says in message and "\n" not in message
    assert ":" in message  # what is wrong: what to do


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({}, "exactly one of schema, choices or filter"),
        ({"choices": LABELS, "filter": True}, "got choices and filter"),
        ({"choices": []}, "exactly one"),  # an empty list is no choice at all
        ({"choices": ["only"]}, "at least two"),
        ({"choices": "positive,negative"}, "not one string"),
        ({"choices": ["Positive", " positive. "]}, "same label"),
        ({"choices": ["a", ""]}, "non-empty string"),
        ({"choices": ["a", 3]}, "non-empty string"),
        (
            {
                "schema": Invoice(
                    number=1, status=Status.open, kind="trade", address=Address(city="x")
                )
            },
            "pass its class",
        ),
        ({"schema": "Invoice"}, "Pydantic model class or a JSON-schema dict"),
    ],
)
def test_bad_specs_are_refused_in_one_line(kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        output_spec(**kwargs)
    assert says in str(caught.value) and "\n" not in str(caught.value)


# ----- what is sent per endpoint kind ------------------------------------------------------


def test_request_fragments_per_endpoint_kind() -> None:
    schema = output_spec(schema=EVERY_KIND)
    choices = output_spec(choices=LABELS)
    yes_no = output_spec(filter=True)
    strict = schema.wire_schema()
    assert schema.request_fragment("openai") == {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Invoice", "schema": strict, "strict": True},
        }
    }
    assert schema.request_fragment("llama.cpp") == {
        "response_format": {"type": "json_object", "schema": strict}
    }
    assert schema.request_fragment("vllm") == {"structured_outputs": {"json": strict}}
    assert schema.request_fragment("vllm-guided") == {"guided_json": strict}
    assert schema.request_fragment("prompt") == {}
    assert choices.request_fragment("llama.cpp") == {
        "grammar": 'root ::= "positive" | "negative" | "neutral"'
    }
    assert choices.request_fragment("vllm") == {"structured_outputs": {"choice": LABELS}}
    assert choices.request_fragment("vllm-guided") == {"guided_choice": LABELS}
    openai_choice = choices.request_fragment("openai")["response_format"]["json_schema"]
    assert openai_choice["schema"]["properties"] == {"label": {"type": "string", "enum": LABELS}}
    assert yes_no.request_fragment("llama.cpp") == {"grammar": 'root ::= "yes" | "no"'}
    openai_filter = yes_no.request_fragment("openai")["response_format"]["json_schema"]
    assert openai_filter["schema"]["properties"] == {"answer": {"type": "boolean"}}
    with pytest.raises(ConfigError, match="Unknown structured-output kind"):
        schema.request_fragment("anthropic")  # type: ignore[arg-type]


def test_the_openai_schema_name_is_made_valid() -> None:
    spec = output_spec(schema={**EVERY_KIND, "title": "My invoice (v2)"})
    name = spec.request_fragment("openai")["response_format"]["json_schema"]["name"]
    assert name == "My_invoice__v2_"


def test_a_label_with_quotes_makes_a_valid_grammar() -> None:
    from llama_cpp import LlamaGrammar

    spec = output_spec(choices=['say "hi"', "back\\slash", "plain"])
    grammar = spec.request_fragment("llama.cpp")["grammar"]
    assert grammar == 'root ::= "say \\"hi\\"" | "back\\\\slash" | "plain"'
    LlamaGrammar.from_string(grammar, verbose=False)  # llama.cpp's own parser accepts it


def test_the_instruction_carries_the_schema_only_where_the_server_is_not_given_it() -> None:
    spec = output_spec(schema=EVERY_KIND)
    assert "schema:" not in spec.instruction("openai")
    for kind in ("llama.cpp", "vllm", "prompt"):
        assert canonical_json(spec.wire_schema()) in spec.instruction(kind)  # type: ignore[arg-type]
    assert (
        output_spec(choices=LABELS).instruction("openai").endswith("positive, negative, neutral.")
    )
    with_comma = output_spec(choices=["yes, mostly", "no"]).instruction("prompt")
    assert '"yes, mostly", "no"' in with_comma


def test_endpoint_kind() -> None:
    assert endpoint_kind("auto", base_url="http://127.0.0.1:1/v1", local=True) == "llama.cpp"
    assert endpoint_kind("auto", base_url="https://api.openai.com/v1", local=False) == "openai"
    for kind in ENDPOINT_KINDS:
        assert endpoint_kind(kind, base_url="", local=False) == kind
    with pytest.raises(ConfigError, match="use auto, openai"):
        endpoint_kind("json", base_url="", local=False)


# ----- parsing and validating --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('  {"a": 1}\n', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('Here it is:\n```\n{"a": 1}\n```\nDone.', {"a": 1}),
        ('Sure! {"a": {"b": [1, 2]}} Hope that helps.', {"a": {"b": [1, 2]}}),
    ],
)
def test_the_json_object_is_found(text: str, value: dict[str, Any]) -> None:
    assert extract_object(text) == (value, "")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"a": 1,}', "not valid JSON (Expecting property name"),
        ('{"a": 1} and {"b": 2}', "2 JSON objects"),
        ("[1, 2]", "a JSON list, not an object"),
        ("no idea", "no JSON object: 'no idea'"),
        ("", "no JSON object"),
    ],
)
def test_a_reply_without_one_json_object_says_why(text: str, says: str) -> None:
    value, problem = extract_object(text)
    assert value is None and says in problem


def test_a_valid_reply_gives_its_columns() -> None:
    parsed = output_spec(schema=EVERY_KIND).parse(json.dumps(GOOD))
    assert parsed.ok and parsed.value == {k: v for k, v in GOOD.items() if k != "note"}
    assert parsed.record == GOOD  # every column, the optional one as None


def test_validation_errors_name_the_field() -> None:
    spec = output_spec(schema=EVERY_KIND)
    wrong_type = spec.parse(json.dumps({**GOOD, "total": "twelve"}))
    assert wrong_type.error == "total: 'twelve' is not of type 'number'"
    missing = spec.parse(json.dumps({k: v for k, v in GOOD.items() if k != "paid"}))
    assert missing.error == "the object: 'paid' is a required property"
    not_listed = spec.parse(json.dumps({**GOOD, "status": "late"}))
    assert not_listed.error == "status: 'late' is not one of ['open', 'paid', 'void']"
    bad_date = spec.parse(json.dumps({**GOOD, "due": "next Tuesday"}))
    assert bad_date.error == "due: 'next Tuesday' is not an ISO date (YYYY-MM-DD)"
    assert not wrong_type.ok and wrong_type.record is None


def test_a_null_for_an_optional_field_is_taken_as_absent() -> None:
    # Strict mode makes the model write null for an optional field; the user's schema says
    # only "string" (absent is allowed, null is not): the null is dropped before validation.
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "required": ["a"],
    }
    spec = output_spec(schema=schema)
    assert spec.parse('{"a": "x", "b": null}').record == {"a": "x", "b": None}
    assert spec.parse('{"a": null, "b": "y"}').error == "a: None is not of type 'string'"


def test_a_pydantic_model_gives_its_instance() -> None:
    spec = output_spec(schema=Invoice)
    reply = {
        "number": 3,
        "status": "paid",
        "kind": "trade",
        "address": {"city": "Oslo", "postcode": None},
        "billing": None,
        "lines": None,
    }
    parsed = spec.parse(json.dumps(reply))
    assert parsed.ok
    assert parsed.value == Invoice(
        number=3, status=Status.paid, kind="trade", address=Address(city="Oslo")
    )
    assert parsed.record is not None and parsed.record["address.city"] == "Oslo"
    assert parsed.record["lines"] == []  # the model's default, the null being dropped
    bad = spec.parse(json.dumps({**reply, "number": "three", "kind": "other"}))
    assert bad.error is not None
    assert bad.error.startswith("number: Input should be a valid integer")
    assert "; kind: Input should be 'retail' or 'trade'" in bad.error


def test_the_repair_prompt_carries_the_error_and_the_rule() -> None:
    spec = output_spec(schema=EVERY_KIND)
    parsed = spec.parse('{"number": "x"}')
    assert parsed.error is not None
    assistant, user = spec.repair_messages('{"number": "x"}', parsed.error)
    assert assistant == {"role": "assistant", "content": '{"number": "x"}'}
    assert user["role"] == "user"
    assert user["content"].startswith(f"That reply does not fit: {parsed.error}. ")
    assert user["content"].endswith(
        "with the fields: number, total, paid, customer, issued, due, status, items, note."
    )
    long = spec.repair_messages("x", "e" * 5000)[1]["content"]
    assert len(long) < 500
    labels = output_spec(choices=LABELS).repair_messages("meh", "'meh' is not one of the labels")
    assert labels[1]["content"] == (
        "That reply does not fit: 'meh' is not one of the labels. Answer with exactly one of "
        "these labels and nothing else: positive, negative, neutral."
    )


# ----- labels and yes/no: recall and precision ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("positive", "positive"),
        ("Positive", "positive"),
        ("  NEGATIVE \n", "negative"),
        ("Neutral.", "neutral"),
        ("positive!", "positive"),
        ('"positive"', "positive"),
        ("'negative'", "negative"),
        ("`neutral`", "neutral"),
        ("**Positive**", "positive"),
        ('{"label": "negative"}', "negative"),
    ],
)
def test_labels_are_matched_after_normalising(text: str, label: str) -> None:
    assert output_spec(choices=LABELS).parse(text).value == label


@pytest.mark.parametrize(
    "text",
    [
        "not positive",
        "This review is positive",
        "positive or negative",
        "positively",
        "neutral-ish",
        "pos",
        "",
        '{"label": "positive", "why": "nice"}',
        '{"sentiment": "positive"}',
        "positive.\nnegative",
    ],
)
def test_anything_else_is_no_label(text: str) -> None:
    parsed = output_spec(choices=LABELS).parse(text)
    assert parsed.value is None
    assert parsed.error is not None and "is not one of the labels" in parsed.error


def test_labels_keep_their_spelling_and_match_inner_whitespace() -> None:
    spec = output_spec(choices=["Very Good", "Bad"])
    assert spec.parse("very   good").value == "Very Good"
    assert spec.parse("verygood").error is not None


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("yes", True),
        ("Yes.", True),
        (" NO ", False),
        ("no!", False),
        ("true", True),
        ("False", False),
        ('{"answer": true}', True),
        ('{"answer": false}', False),
        ('"yes"', True),
    ],
)
def test_yes_no_answers_become_bools(text: str, answer: bool) -> None:
    assert output_spec(filter=True).parse(text).value is answer


@pytest.mark.parametrize(
    "text", ["not yes", "yes and no", "maybe", "Yes, because it mentions pasta.", "1", "y", ""]
)
def test_anything_else_is_no_answer(text: str) -> None:
    parsed = output_spec(filter=True).parse(text)
    assert parsed.value is None and parsed.error is not None and "not yes or no" in parsed.error


# ----- cost preview and cache key -----------------------------------------------------------


def test_prompt_tokens_count_the_instruction_and_the_schema_as_sent() -> None:
    spec = output_spec(schema=EVERY_KIND)
    rule = count_text("\n\n" + spec.instruction("openai"), "gpt-4o")
    sent = count_text(canonical_json(spec.request_fragment("openai")["response_format"]), "gpt-4o")
    assert spec.schema_tokens("gpt-4o", "openai") == sent > 50
    assert spec.prompt_tokens("gpt-4o", "openai") == rule + sent
    # llama.cpp gets the schema as a grammar (no prompt tokens) and in the instruction.
    assert spec.schema_tokens("gpt-4o", "llama.cpp") == 0
    in_prompt = count_text("\n\n" + spec.instruction("llama.cpp"), "gpt-4o")
    assert spec.prompt_tokens("gpt-4o", "llama.cpp") == in_prompt > sent // 2
    choices = output_spec(choices=LABELS)
    assert choices.prompt_tokens("gpt-4o", "llama.cpp") == count_text(
        "\n\n" + choices.instruction("llama.cpp"), "gpt-4o"
    )
    more = output_spec(choices=[*LABELS, "mixed", "sarcastic"])
    assert more.prompt_tokens("gpt-4o", "openai") > choices.prompt_tokens("gpt-4o", "openai")


def _variant(**changes: Any) -> dict[str, Any]:
    schema = json.loads(json.dumps(EVERY_KIND))
    schema["properties"].update(changes)
    return schema


def test_the_canonical_form_changes_with_what_is_asked_and_nothing_else() -> None:
    base = output_spec(schema=EVERY_KIND)
    reordered = dict(reversed(list(EVERY_KIND.items())))
    assert output_spec(schema=reordered).canonical() == base.canonical()
    assert output_spec(schema=EVERY_KIND).digest() == base.digest()
    variants: list[OutputSpec] = [
        output_spec(schema=_variant(extra={"type": "string"})),
        output_spec(schema=_variant(total={"type": "integer"})),
        output_spec(schema=_variant(status={"enum": ["open", "paid"]})),
        output_spec(schema=_variant(total={"type": "number", "minimum": 0})),  # validation only
        output_spec(schema={**EVERY_KIND, "title": "Bill"}),
        output_spec(choices=LABELS),
        output_spec(choices=list(reversed(LABELS))),
        output_spec(filter=True),
    ]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == len(variants) + 1


# ----- typed columns -------------------------------------------------------------------------


def _rows() -> list[Any]:
    spec = output_spec(schema=EVERY_KIND)
    return [
        spec.parse(json.dumps(GOOD)),
        spec.parse(
            json.dumps({**GOOD, "number": 8, "note": "late", "status": "void", "items": []})
        ),
        spec.parse("I cannot read this invoice."),
        None,  # not asked
    ]


def test_every_dtype_from_a_schema_in_pandas() -> None:
    result = typed_columns(output_spec(schema=EVERY_KIND), _rows())
    df = pd.DataFrame(result.columns)
    assert {c: str(t) for c, t in df.dtypes.items() if c not in ("issued", "due")} == {
        "number": "Int64",
        "total": "Float64",
        "paid": "boolean",
        "customer": "string",
        "status": "category",
        "items": "object",
        "note": "string",
    }
    assert pd.api.types.is_datetime64_dtype(df["issued"]) and df["issued"].dt.tz is None
    assert pd.api.types.is_datetime64_dtype(df["due"])
    assert list(df["status"].cat.categories) == ["open", "paid", "void"]  # "paid" never came
    assert df["number"].tolist()[:2] == [7, 8] and df["number"].isna().tolist() == [
        False,
        False,
        True,
        True,
    ]
    assert df["issued"][0] == pd.Timestamp("2024-03-01 10:30")
    assert df["due"][1] == pd.Timestamp("2024-03-31")
    assert df["items"][0] == ["tea", "cake"] and df["items"][1] == []
    assert pd.isna(df["note"][0]) and df["note"][1] == "late"  # nullable: null is NA
    assert result.errors[:2] == [None, None]
    assert result.errors[2] is not None and "no JSON object" in result.errors[2]
    assert result.errors[3] is None


def test_every_dtype_from_a_schema_in_polars() -> None:
    result = typed_columns(output_spec(schema=EVERY_KIND), _rows(), library="polars")
    df = pl.DataFrame(list(result.columns.values()))
    assert dict(df.schema) == {
        "number": pl.Int64,
        "total": pl.Float64,
        "paid": pl.Boolean,
        "customer": pl.String,
        "issued": pl.Datetime("us"),
        "due": pl.Date,
        "status": pl.Enum(["open", "paid", "void"]),
        "items": pl.List(pl.String),
        "note": pl.String,
    }
    assert df["number"].to_list() == [7, 8, None, None]
    assert df["due"][0] == dt.date(2024, 3, 31)
    assert df["items"][1].to_list() == []


def test_datetimes_with_offsets_become_utc_and_a_mix_is_not_rewritten() -> None:
    schema = {
        "type": "object",
        "properties": {"at": {"type": "string", "format": "date-time"}},
        "required": ["at"],
    }
    spec = output_spec(schema=schema)
    aware = [
        spec.parse('{"at": "2024-01-01T12:00:00+02:00"}'),
        spec.parse('{"at": "2024-01-01T09:00:00Z"}'),
    ]
    column = pd.Series(typed_columns(spec, aware).columns["at"])
    assert str(column.dt.tz) == "UTC"
    assert column.tolist() == [
        pd.Timestamp("2024-01-01 10:00", tz="UTC"),
        pd.Timestamp("2024-01-01 09:00", tz="UTC"),
    ]
    mixed = [aware[0], spec.parse('{"at": "2024-01-01T12:00:00"}')]
    kept = typed_columns(spec, mixed).columns["at"]
    assert kept.dtype == object and [v.isoformat() for v in kept] == [
        "2024-01-01T12:00:00+02:00",
        "2024-01-01T12:00:00",
    ]
    assert typed_columns(spec, aware, library="polars").columns["at"].dtype == pl.Datetime(
        "us", "UTC"
    )


def test_nested_fields_become_dotted_columns() -> None:
    spec = output_spec(schema=Invoice)
    reply = {
        "number": 1,
        "status": "open",
        "kind": "retail",
        "address": {"city": "Oslo", "postcode": "0150"},
        "billing": None,
        "lines": [{"city": "Bergen", "postcode": None}],
    }
    result = typed_columns(spec, [spec.parse(json.dumps(reply))])
    df = pd.DataFrame(result.columns)
    assert df["address.city"].tolist() == ["Oslo"] and df["address.postcode"].tolist() == ["0150"]
    assert df["billing.city"].isna().all()  # a null parent: its children are NA
    assert df["lines"][0] == [{"city": "Bergen", "postcode": None}]
    assert str(df["kind"].dtype) == "category" and list(df["kind"].cat.categories) == [
        "retail",
        "trade",
    ]
    assert (
        pl.DataFrame(
            list(
                typed_columns(
                    spec, [spec.parse(json.dumps(reply))], library="polars"
                ).columns.values()
            )
        )["lines"].dtype
        == pl.Object
    )


def test_choices_are_a_categorical_of_exactly_the_labels() -> None:
    spec = output_spec(choices=LABELS)
    parsed = [spec.parse("Positive"), spec.parse("not positive"), spec.parse("positive.")]
    result = typed_columns(spec, parsed, output="sentiment")
    column = pd.Series(result.columns["sentiment"])
    assert list(column.cat.categories) == LABELS
    assert column.tolist()[0] == "positive" and pd.isna(column[1]) and column[2] == "positive"
    assert (
        result.errors[1] is not None
        and "'not positive' is not one of the labels" in result.errors[1]
    )
    polars = typed_columns(spec, parsed, output="sentiment", library="polars").columns["sentiment"]
    assert polars.dtype == pl.Enum(LABELS) and polars.to_list() == ["positive", None, "positive"]


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_filter_keeps_the_rows_answered_yes(library: Literal["pandas", "polars"]) -> None:
    reviews = ["Lovely pasta.", "Rude staff.", "Great curry!", "Cold soup."]
    frame = (
        pd.DataFrame({"review": reviews})
        if library == "pandas"
        else pl.DataFrame({"review": reviews})
    )
    spec = output_spec(filter=True)
    parsed = [
        spec.parse("yes"),
        spec.parse("No."),
        spec.parse("maybe"),
        spec.parse('{"answer": true}'),
    ]
    result = typed_columns(spec, parsed, library=library, output="about_food")
    decision = result.columns["about_food"]
    assert [None if v is None or v is pd.NA else v for v in decision] == [True, False, None, True]
    kept = filter_rows(frame, decision)
    assert list(kept["review"]) == ["Lovely pasta.", "Cold soup."]  # an error is not a yes
    if library == "pandas":
        assert str(pd.Series(decision).dtype) == "boolean"
        assert list(kept.index) == [0, 3]  # the original index is kept
    assert result.errors[2] is not None and "not yes or no" in result.errors[2]


def test_a_value_that_does_not_convert_is_na_with_its_error() -> None:
    # What validation lets through but a dtype cannot hold (e.g. a date pandas cannot store
    # before pandas 2, or an integer written 3.5 in a schema the model bypassed).
    spec = output_spec(
        schema={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    )
    fake = [type(spec.parse('{"n": 1}'))(value={}, record={"n": 3.5})]
    result = typed_columns(spec, fake)
    assert pd.isna(result.columns["n"][0]) and result.errors == ["n: 3.5 is not an integer"]
