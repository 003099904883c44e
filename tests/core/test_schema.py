"""ipychat.core.schema in detail, beside tests/core/test_structured.py (which reads schemas
through `output_spec`): every refusal word for word, the strict form of each kind of field,
what `prune` removes, the item types of list columns, and `parse_iso`. Each pins behaviour a
mutation of the module showed unpinned (`python tools/mutation.py core.schema --tests
tests/core/test_structured.py --tests tests/core/test_schema.py`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from ipychat.core.errors import ConfigError
from ipychat.core.schema import Field, parse_iso, read_schema


def _object(properties: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, **more}


NODE = _object({"next": {"$ref": "#/$defs/Node"}})
OPTIONAL_NODE = _object({"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}})
ARRAY = {"type": "array", "items": {"type": "string"}}
WHAT_TYPES = "give it one of integer, number, boolean, string, array or object."
NO_PROPERTIES = "is an object without named properties (a free-form dict): list its properties, or make it a string."
ONLY_OWN_DEFS = (
    "only references to the schema's own $defs are supported: put the definition inline."
)
RECURSIVE = (
    "a recursive schema cannot be columns: cut the recursion (e.g. make the inner level a string)."
)
TOP = "the top level must be an object with named properties (one row's fields), not"
UNSUPPORTED = "which structured replies do not support: describe the field with a plain type."


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (ARRAY, f"Invoice: {TOP} an array: wrap the value in an object."),
        ({"type": "string"}, f"Invoice: {TOP} a string: wrap the value in an object."),
        ({"type": "integer"}, f"Invoice: {TOP} an integer: wrap the value in an object."),
        ({"enum": ["a"]}, f"Invoice: {TOP} that: wrap the value in an object."),
        (
            {"type": ["object", "null"], "properties": {"a": {"type": "string"}}},
            f"Invoice: {TOP} an object or null: a row cannot be null, drop the null.",
        ),
        (_object({}), f"Invoice: the top level {NO_PROPERTIES}"),
        (_object({"d": {"type": "object"}}), f"Invoice: field 'd' {NO_PROPERTIES}"),
        (_object({"a": _object({"b": _object({})})}), f"Invoice: field 'a.b' {NO_PROPERTIES}"),
        (
            _object({"a": {"$ref": "other.json#/x"}}),
            f"Invoice: field 'a' refers to 'other.json#/x'; {ONLY_OWN_DEFS}",
        ),
        (
            _object({"a": {"$ref": "#/$defs/Nope"}}),
            f"Invoice: field 'a' refers to '#/$defs/Nope'; {ONLY_OWN_DEFS}",
        ),
        (
            _object({"n": {"$ref": "#/$defs/Node"}}, **{"$defs": {"Node": NODE}}),
            f"Invoice: field 'n.next' refers to itself (#/$defs/Node); {RECURSIVE}",
        ),
        (  # Optional["Node"], as Pydantic writes it
            _object({"n": {"$ref": "#/$defs/Node"}}, **{"$defs": {"Node": OPTIONAL_NODE}}),
            f"Invoice: field 'n.next' refers to itself (#/$defs/Node); {RECURSIVE}",
        ),
        (  # the same through `definitions` and a one-element allOf (older writers)
            _object(
                {"n": {"allOf": [{"$ref": "#/definitions/Node"}]}},
                definitions={"Node": _object({"next": {"allOf": [{"$ref": "#/definitions/Node"}]}})},
            ),
            f"Invoice: field 'n.next' refers to itself (#/definitions/Node); {RECURSIVE}",
        ),
        (
            _object({"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}),
            "Invoice: field 'a' may be one of several types (anyOf): give it one type, or one "
            "type or null.",
        ),
        (
            _object({"a": {"oneOf": [{"type": "string"}, {"type": "null"}, {"type": "integer"}]}}),
            "Invoice: field 'a' may be one of several types (oneOf): give it one type, or one "
            "type or null.",
        ),
        (
            _object({"a": {"type": ["string", "integer"]}}),
            "Invoice: field 'a' has the types ['string', 'integer']: give it one type, or one "
            "type or null.",
        ),
        (
            _object({"a": {"type": ["null"]}}),
            "Invoice: field 'a' has the types ['null']: give it one type, or one type or null.",
        ),
        (
            _object({"a": {"enum": []}}),
            "Invoice: field 'a' has an empty enum: list at least one value.",
        ),
        (
            _object({"a": {"enum": ["x", 1]}}),
            "Invoice: field 'a' has enum values of mixed or unsupported types ['x', 1]: use "
            "strings (or integers) only.",
        ),
        (
            _object({"a": {"enum": [True, 1]}}),
            "Invoice: field 'a' has enum values of mixed or unsupported types [True, 1]: use "
            "strings (or integers) only.",
        ),
        (
            _object({"a": {"type": "string", "enum": ["x", 1]}}),
            "Invoice: an enum has enum values of mixed or unsupported types ['x', 1]: use "
            "strings (or integers) only.",
        ),
        (
            _object({"a": {"type": "array"}}),
            "Invoice: field 'a' is an array without one `items` schema: say what its items are.",
        ),
        (
            _object({"a": {"type": "array", "items": [{"type": "string"}]}}),
            "Invoice: field 'a' is an array without one `items` schema: say what its items are.",
        ),
        *(
            (
                _object({"a": {"type": "string", key: {}}}),
                f"Invoice: field 'a' uses '{key}', {UNSUPPORTED}",
            )
            for key in ("not", "if", "then", "else", "patternProperties", "dependentSchemas")
        ),
        (
            _object({"a": {"allOf": [{"type": "string"}, {"maxLength": 3}]}}),
            "Invoice: field 'a' combines schemas with allOf: write the combined object out as one.",
        ),
        (_object({"a": {}}), f"Invoice: field 'a' has no type: {WHAT_TYPES}"),
        (  # an item's field is named with "[]" for the list
            _object({"a": {"type": "array", "items": {}}}),
            f"Invoice: field 'a.[]' has no type: {WHAT_TYPES}",
        ),
        (_object({"a": {"type": "null"}}), f"Invoice: field 'a' has the type 'null': {WHAT_TYPES}"),
        (_object({"a": 3}), "Invoice: field 'a' is not a schema object."),
        (
            _object({"b.c": {"type": "string"}, "b": _object({"c": {"type": "string"}}),
                     "a.b": {"type": "string"}, "a": _object({"b": {"type": "string"}})}),
            "Invoice: the column 'a.b' comes from two fields (a nested field is named "
            "parent.child): rename one of them.",
        ),
    ],
)  # fmt: skip
def test_every_refusal_is_one_line_that_says_what_to_do(
    schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        read_schema(schema, name="Invoice")
    assert str(caught.value) == message


def test_a_schema_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        read_schema(["a"])  # type: ignore[arg-type]
    assert str(caught.value) == "the schema must be a JSON-schema dict, not a list."


def test_the_strict_form_of_each_kind_of_optional_field() -> None:
    # Plain types take null in their type list; an enum, a dated string, an object and an
    # array are wrapped in anyOf (llama.cpp drops an enum or format beside a type list),
    # the description moving to the wrapper.
    shape = read_schema(
        _object(
            {
                "n": {"type": "integer", "description": "how many"},
                "s": {"enum": ["x", "y"], "description": "which"},
                "c": {"const": 3},
                "d": {"type": "string", "format": "date"},
                "u": {"type": "string", "format": "uri"},
                "o": _object({"k": {"type": "boolean"}}, description="inner", required=["k"]),
                "l": {"type": "array", "items": {"type": "number"}},
            },
            description="one row",
        )
    )
    props = shape.strict["properties"]
    assert shape.strict["description"] == "one row"
    assert shape.strict["required"] == ["n", "s", "c", "d", "u", "o", "l"]
    assert props["n"] == {"type": ["integer", "null"], "description": "how many"}
    assert props["s"] == {
        "anyOf": [{"type": "string", "enum": ["x", "y"]}, {"type": "null"}],
        "description": "which",
    }
    assert props["c"] == {"anyOf": [{"type": "integer", "enum": [3]}, {"type": "null"}]}
    assert props["d"] == {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]}
    assert props["u"] == {"type": ["string", "null"]}  # only dates keep their format
    assert props["o"] == {
        "anyOf": [
            {
                "type": "object",
                "properties": {"k": {"type": "boolean"}},
                "required": ["k"],
                "additionalProperties": False,
            },
            {"type": "null"},
        ],
        "description": "inner",
    }
    assert props["l"] == {
        "anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "null"}]
    }
    assert shape.columns == ["n", "s", "c", "d", "u", "o.k", "l"]


def test_the_fields_of_each_kind() -> None:
    shape = read_schema(
        _object(
            {
                "s": {"enum": ["x", None]},  # null among the values: nullable
                "i": {"enum": [2, 1]},
                "c": {"const": "only"},
                "t": {"type": "string", "format": "date-time"},
                "ints": {"type": "array", "items": {"type": "integer"}},
                "texts": {"type": "array", "items": {"type": "string"}},
                "flags": {"type": "array", "items": {"type": "boolean"}},
                "ratios": {"type": "array", "items": {"type": "number"}},
                "moods": {"type": "array", "items": {"type": "string", "enum": ["up", "down"]}},
                "days": {"type": "array", "items": {"type": "string", "format": "date"}},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
                "codes": {"type": "array", "items": {"type": "integer", "enum": [1, 2]}},
                "rows": {"type": "array", "items": _object({"k": {"type": "string"}})},
                "ref": {"$ref": "#/$defs/Day", "description": "when"},
            },
            required=[
                "s",
                "i",
                "c",
                "t",
                "ints",
                "texts",
                "flags",
                "ratios",
                "moods",
                "days",
                "tags",
                "codes",
            ],
            **{"$defs": {"Day": {"type": "string", "format": "date"}}},
        )
    )
    assert shape.fields == (
        Field("s", ("s",), "enum", True, ("x",)),
        Field("i", ("i",), "enum", False, (2, 1)),
        Field("c", ("c",), "enum", False, ("only",)),
        Field("t", ("t",), "datetime", False),
        Field("ints", ("ints",), "list", False, items="integer"),
        Field("texts", ("texts",), "list", False, items="string"),
        Field("flags", ("flags",), "list", False, items="boolean"),
        Field("ratios", ("ratios",), "list", False, items="number"),
        Field("moods", ("moods",), "list", False, items=None),
        Field("days", ("days",), "list", False, items=None),
        Field("tags", ("tags",), "list", False, items=None),
        Field("codes", ("codes",), "list", False, items=None),
        Field("rows", ("rows",), "list", True, items=None),
        Field("ref", ("ref",), "date", True),
    )
    assert shape.strict["properties"]["i"] == {"type": "integer", "enum": [2, 1]}
    assert shape.strict["properties"]["ref"]["description"] == "when"


def test_prune_drops_the_nulls_of_optional_properties_only() -> None:
    shape = read_schema(
        _object(
            {
                "a": {"type": "string"},
                "b": {"type": ["string", "null"]},
                "o": _object({"x": {"type": "string"}, "y": {"type": "string"}}, required=["x"]),
                "rows": {
                    "type": "array",
                    "items": _object({"k": {"type": "string"}, "v": {"type": "string"}},
                                     required=["k"]),
                },
            },
            required=["b", "o", "rows"],
        )
    )  # fmt: skip
    reply = {
        "a": None,  # optional: the null the strict schema forced
        "b": None,  # required and nullable: the user's schema allows the null
        "o": {"x": None, "y": None},
        "rows": [{"k": None, "v": None}, {"k": "1", "v": "2"}],
    }
    assert shape.prune(reply) == {
        "b": None,
        "o": {"x": None},
        "rows": [{"k": None}, {"k": "1", "v": "2"}],
    }
    assert shape.prune({"rows": "not a list", "o": None}) == {"rows": "not a list", "o": None}
    assert shape.prune("text") == "text"


@pytest.mark.parametrize(
    ("value", "kind", "parsed"),
    [
        ("2024-03-01", "date", dt.date(2024, 3, 1)),
        (" 2024-03-01 ", "date", dt.date(2024, 3, 1)),
        ("2024-03-01T10:30:00", "datetime", dt.datetime(2024, 3, 1, 10, 30)),
        ("2024-03-01T10:30:00Z", "datetime", dt.datetime(2024, 3, 1, 10, 30, tzinfo=dt.UTC)),
        (
            "2024-03-01T10:30:00+02:00",
            "datetime",
            dt.datetime(2024, 3, 1, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        ),
    ],
)
def test_parse_iso_reads_dates_and_datetimes(value: str, kind: Any, parsed: dt.date) -> None:
    result = parse_iso(value, kind)
    assert result == parsed and type(result) is type(parsed)
    if isinstance(parsed, dt.datetime):
        assert result.utcoffset() == parsed.utcoffset()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "kind", "message"),
    [
        ("2024-03-01T10:30:00Z", "date", "'2024-03-01T10:30:00Z' is not an ISO date (YYYY-MM-DD)"),
        ("Z", "datetime", "'Z' is not an ISO datetime (YYYY-MM-DDTHH:MM:SS)"),
        ("soon", "datetime", "'soon' is not an ISO datetime (YYYY-MM-DDTHH:MM:SS)"),
        (3, "date", "3 is not an ISO date string"),
        (None, "datetime", "None is not an ISO datetime string"),
    ],
)
def test_parse_iso_says_what_it_expected(value: Any, kind: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_iso(value, kind)
    assert str(caught.value) == message


def test_an_object_without_a_type_is_read_by_its_properties_and_nested_lists_are_named() -> None:
    shape = read_schema(
        {"properties": {"o": {"properties": {"tags": ARRAY}, "required": ["tags"]}}},
        name="Invoice",
    )
    assert shape.fields == (Field("o.tags", ("o", "tags"), "list", True, items="string"),)


# ----- pins the last mutation run listed as unpinned (issue 22) ------------------------------


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "Invoice: the top level may be one of several types (anyOf): give it one type, or "
            "one type or null.",
        ),
        (
            {"oneOf": [_object({"a": ARRAY}), _object({"b": ARRAY})]},
            "Invoice: the top level may be one of several types (oneOf): give it one type, or "
            "one type or null.",
        ),
        (
            {"type": ["object", "string"]},
            "Invoice: the top level has the types ['object', 'string']: give it one type, or "
            "one type or null.",
        ),
        ({}, f"Invoice: the top level has no type: {WHAT_TYPES}"),
        ({"type": "dict"}, f"Invoice: the top level has the type 'dict': {WHAT_TYPES}"),
        ({"enum": []}, "Invoice: the top level has an empty enum: list at least one value."),
        (
            {"enum": [1.5]},
            "Invoice: the top level has enum values of mixed or unsupported types [1.5]: use "
            "strings (or integers) only.",
        ),
    ],
)
def test_the_top_levels_refusals_name_the_schema_and_the_top_level(
    schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        read_schema(schema, name="Invoice")
    assert str(info.value) == message


def test_an_any_of_with_one_type_and_no_null_is_not_nullable_and_keeps_its_siblings() -> None:
    shape = read_schema(
        _object(
            {
                "a": {"anyOf": [{"type": "string", "description": "inner"}], "description": "d"},
                "b": {"anyOf": [{"type": "integer"}, {"type": "null"}], "title": "B"},
            },
            required=["a", "b"],
        )
    )
    assert [(f.column, f.nullable) for f in shape.fields] == [("a", False), ("b", True)]
    props = shape.strict["properties"]
    assert props["a"] == {"type": "string", "description": "d"}  # the anyOf's own wins
    assert props["b"] == {"type": ["integer", "null"]}


def test_a_reference_chain_that_comes_back_is_recursive_at_the_field_that_names_it() -> None:
    defs = {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}
    with pytest.raises(ConfigError) as info:
        read_schema(_object({"p": _object({"x": {"$ref": "#/$defs/A"}})}, **{"$defs": defs}))
    assert str(info.value) == f"the schema: field 'p.x' refers to itself (#/$defs/A); {RECURSIVE}"
    # A chain that ends is read through, however long.
    defs = {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/C"}, "C": {"type": "integer"}}
    shape = read_schema(_object({"x": {"$ref": "#/$defs/A"}}, **{"$defs": defs}))
    assert [(f.column, f.type) for f in shape.fields] == [("x", "integer")]


def test_a_bad_reference_inside_all_of_names_its_field() -> None:
    schema = _object({"p": _object({"x": {"allOf": [{"$ref": "#/$defs/Nope"}]}})})
    with pytest.raises(ConfigError) as info:
        read_schema(schema, name="Invoice")
    assert str(info.value) == f"Invoice: field 'p.x' refers to '#/$defs/Nope'; {ONLY_OWN_DEFS}"


def test_recursion_through_optional_references_is_caught_where_it_closes() -> None:
    # The first reference is itself optional: its $ref is found inside the anyOf.
    optional_ref = {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}
    schema = _object({"n": optional_ref}, **{"$defs": {"Node": OPTIONAL_NODE}})
    with pytest.raises(ConfigError) as info:
        read_schema(schema)
    assert (
        str(info.value)
        == f"the schema: field 'n.next' refers to itself (#/$defs/Node); {RECURSIVE}"
    )
    # Two levels down: A holds B, B optionally A again.
    defs = {
        "A": _object({"b": {"$ref": "#/$defs/B"}}),
        "B": _object({"c": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}}),
    }
    with pytest.raises(ConfigError) as info:
        read_schema(_object({"a": {"$ref": "#/$defs/A"}}, **{"$defs": defs}))
    assert str(info.value) == f"the schema: field 'a.b.c' refers to itself (#/$defs/A); {RECURSIVE}"
    # The same definition used twice side by side, optional or not, is no recursion.
    leaf = _object({"v": {"type": "integer"}})
    twice = _object(
        {"x": {"$ref": "#/$defs/L"}, "y": {"anyOf": [{"$ref": "#/$defs/L"}, {"type": "null"}]}},
        **{"$defs": {"L": leaf}},
    )
    assert read_schema(twice).columns == ["x.v", "y.v"]


def test_const_beside_an_enum_keeps_the_enum() -> None:
    shape = read_schema(
        _object({"k": {"type": "string", "const": "a", "enum": ["a", "b"]}}, required=["k"])
    )
    assert shape.strict["properties"]["k"] == {"type": "string", "enum": ["a", "b"]}
    assert shape.fields[0].categories == ("a", "b")


def test_a_type_list_of_one_type_without_null_is_not_nullable() -> None:
    # {"type": ["string"]} is the list form of "string": required, never null.
    shape = read_schema(
        _object(
            {"a": {"type": ["string"]}, "b": {"type": ["integer", "null"]}}, required=["a", "b"]
        )
    )
    assert [(f.column, f.nullable) for f in shape.fields] == [("a", False), ("b", True)]
    assert shape.strict["properties"]["a"] == {"type": "string"}
    assert shape.strict["properties"]["b"] == {"type": ["integer", "null"]}


def test_a_definition_that_wraps_a_reference_to_itself_in_all_of_is_recursive() -> None:
    # Older writers wrap a $ref in a one-element allOf; the chain A -> allOf[A] comes back.
    defs = {"A": {"allOf": [{"$ref": "#/$defs/A"}]}}
    with pytest.raises(ConfigError) as info:
        read_schema(_object({"x": {"$ref": "#/$defs/A"}}, **{"$defs": defs}), name="Invoice")
    assert str(info.value) == f"Invoice: field 'x' refers to itself (#/$defs/A); {RECURSIVE}"


def test_a_date_format_on_a_type_that_is_not_a_string_is_ignored() -> None:
    # JSON Schema's "format" annotates strings; on an integer it does not make a date column.
    shape = read_schema(
        _object({"n": {"type": "integer", "format": "date"}, "d": {"type": "string", "format": "date"}},
                required=["n", "d"])
    )  # fmt: skip
    assert [(f.column, f.type) for f in shape.fields] == [("n", "integer"), ("d", "date")]
    assert shape.strict["properties"]["n"] == {"type": "integer"}
