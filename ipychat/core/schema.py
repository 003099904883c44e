"""A user's JSON schema read as columns, and rewritten as the strict schema servers accept.

`read_schema(schema)` takes the JSON schema of one reply (a dict, or a Pydantic model's
`model_json_schema()`) and returns a `SchemaShape`:

- `fields`: one `Field` per column the reply fills, with the column's type;
- `strict`: the schema to send, in the form OpenAI's `strict` structured outputs demand
  (https://platform.openai.com/docs/guides/structured-outputs, "Supported schemas"): every
  object lists all its properties in `required` and says `additionalProperties: false`; a
  property the user's schema does not require becomes nullable instead (`"type": [t, "null"]`
  for a plain type, `anyOf: [..., {"type": "null"}]` for an enum, a dated string, an object
  or an array, because llama.cpp's grammar converter drops an `enum` or `format` that sits
  beside a list of types);
- `prune(value)`: removes the nulls the model gave for those optional properties, so that
  the user's own schema (or Pydantic model) validates the reply as if they were absent.

What the sent schema keeps: types, properties, items, enums, `description`, and `format` for
dates. Titles, defaults, examples and constraints (`minimum`, `pattern`, `maxLength`, ...)
are left out, because strict modes refuse some of them with a 400; the client still checks
them, since validation uses the user's full schema.

The rules, each refused with one line that says what to do when broken:

- The top level is an object with named properties (a list or a string is not a row).
- Nested objects are FLATTENED: the field `city` of the object `address` is the column
  `address.city` (pandas' `json_normalize` naming). A nullable parent makes its children
  nullable. An object with no named properties (a free-form dict) is refused.
- Arrays are one column holding lists, whatever their items; `items` must be given.
- A field has one type, or that type or null: `anyOf`/`oneOf`/type lists of several types
  are refused. `$ref` to `#/$defs/...` or `#/definitions/...` (what Pydantic writes for
  nested models and enums) is inlined; any other `$ref`, or a recursive one, is refused.
- An enum's values are all strings or all integers (a categorical column); `const` is an
  enum of one value.
- A string with `format: date-time` is a datetime column, with `format: date` a date one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ipychat.core.errors import ConfigError

__all__ = ["Field", "FieldType", "SchemaShape", "parse_iso", "read_schema"]

FieldType = Literal["integer", "number", "boolean", "string", "date", "datetime", "enum", "list"]

_JSON_TYPES: Final = {"integer", "number", "boolean", "string", "array", "object"}
_DATE_FORMATS: Final = {"date-time": "datetime", "date": "date"}
_REFUSED: Final = ("not", "if", "then", "else", "patternProperties", "dependentSchemas")


@dataclass(frozen=True)
class Field:
    """One column of a structured reply."""

    column: str  # "address.city" for a nested field
    path: tuple[str, ...]  # where the value is in the reply: ("address", "city")
    type: FieldType
    nullable: bool  # may the answer be null (not required, or null in the type)
    categories: tuple[Any, ...] = ()  # an enum's values, in the schema's order
    items: FieldType | None = None  # a list's item type, when it is a plain one


@dataclass(frozen=True)
class _Prune:
    """Where the nulls of optional properties may sit in a reply."""

    optional: frozenset[str] = frozenset()
    children: Mapping[str, _Prune] = field(default_factory=dict)
    items: _Prune | None = None

    def apply(self, value: Any) -> Any:
        if isinstance(value, dict):
            kept = {k: v for k, v in value.items() if not (v is None and k in self.optional)}
            for name, child in self.children.items():
                if name in kept:
                    kept[name] = child.apply(kept[name])
            return kept
        if isinstance(value, list) and self.items is not None:
            return [self.items.apply(v) for v in value]
        return value


@dataclass(frozen=True)
class SchemaShape:
    """What `read_schema` makes of a schema: its columns and the strict form to send."""

    fields: tuple[Field, ...]
    strict: dict[str, Any]
    pruner: _Prune

    def prune(self, value: Any) -> Any:
        """The reply without the nulls the strict schema forced on optional properties."""
        return self.pruner.apply(value)

    @property
    def columns(self) -> list[str]:
        return [f.column for f in self.fields]


def read_schema(schema: Mapping[str, Any], *, name: str = "the schema") -> SchemaShape:
    """Columns and strict form of one reply's JSON schema; ConfigError if it breaks a rule."""
    if not isinstance(schema, Mapping):
        raise ConfigError(f"{name} must be a JSON-schema dict, not a {type(schema).__name__}.")
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    root = _Reader(name, defs)
    node = root.resolve(schema, ())
    nullable, node = _nullable(node, name, "the top level")
    if nullable or _type_of(node, name, "the top level") != "object":
        raise ConfigError(
            f"{name}: the top level must be an object with named properties (one row's fields), "
            f"not {_describe(node, nullable)}: "
            + (
                "a row cannot be null, drop the null."
                if nullable
                else "wrap the value in an object."
            )
        )
    fields: list[Field] = []
    strict, pruner = root.object(node, (), False, fields)
    columns = [f.column for f in fields]
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ConfigError(
            f"{name}: the column {twice[0]!r} comes from two fields (a nested field is named "
            "parent.child): rename one of them."
        )
    return SchemaShape(tuple(fields), strict, pruner)


def parse_iso(value: Any, kind: Literal["date", "datetime"]) -> dt.date | dt.datetime:
    """An ISO 8601 date (YYYY-MM-DD) or datetime string as a date/datetime; ValueError if not."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an ISO {kind} string")
    text = value.strip()
    try:
        if kind == "date":
            return dt.date.fromisoformat(text)
        # Python < 3.11 does not read a trailing "Z" (UTC); every version reads "+00:00".
        return dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        form = "YYYY-MM-DD" if kind == "date" else "YYYY-MM-DDTHH:MM:SS"
        raise ValueError(f"{value!r} is not an ISO {kind} ({form})") from None


# ----- reading ---------------------------------------------------------------------------------


def _where(path: Sequence[str]) -> str:
    return f"field {'.'.join(path)!r}" if path else "the top level"


def _describe(node: Mapping[str, Any], nullable: bool) -> str:
    kind = node.get("type")
    if not isinstance(kind, str):
        return "that"
    article = "an" if kind[:1] in "aeiou" else "a"
    return f"{article} {kind}" + (" or null" if nullable else "")


def _nullable(node: Mapping[str, Any], name: str, where: str) -> tuple[bool, Mapping[str, Any]]:
    """(may it be null, the node without its null alternative)."""
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = list(node[key])
            rest = [o for o in options if o.get("type") != "null"]
            if len(rest) != 1:
                raise ConfigError(
                    f"{name}: {where} may be one of several types ({key}): give it one type, "
                    "or one type or null."
                )
            siblings = {k: v for k, v in node.items() if k != key}
            return len(rest) < len(options), {**rest[0], **siblings}
    kind = node.get("type")
    if isinstance(kind, list):
        types = [t for t in kind if t != "null"]
        if len(types) != 1:
            raise ConfigError(
                f"{name}: {where} has the types {kind}: give it one type, or one type or null."
            )
        return len(types) < len(kind), {**node, "type": types[0]}
    enum = node.get("enum")
    if isinstance(enum, list) and None in enum:
        return True, {**node, "enum": [v for v in enum if v is not None]}
    return False, node


def _type_of(node: Mapping[str, Any], name: str, where: str) -> str:
    kind = node.get("type")
    if kind is None and ("enum" in node or "const" in node):  # `const`: an enum of one
        values = list(node["enum"]) if "enum" in node else [node["const"]]
        kind = _enum_type(values, name, where)
    elif kind is None and "properties" in node:
        kind = "object"
    if kind not in _JSON_TYPES:
        shown = "no type" if kind is None else f"the type {kind!r}"
        raise ConfigError(
            f"{name}: {where} has {shown}: give it one of integer, number, boolean, string, "
            "array or object."
        )
    return str(kind)


def _enum_type(values: list[Any], name: str, where: str) -> str:
    if not values:
        raise ConfigError(f"{name}: {where} has an empty enum: list at least one value.")
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "integer"
    raise ConfigError(
        f"{name}: {where} has enum values of mixed or unsupported types {values!r}: use "
        "strings (or integers) only."
    )


class _Reader:
    """Walks one schema: inlines local $refs, collects fields, builds the strict form."""

    def __init__(self, name: str, defs: Mapping[str, Any]) -> None:
        self.name = name
        self.defs = defs
        self.active: list[str] = []  # the $refs being expanded above the current node

    def resolve(self, node: Any, path: tuple[str, ...], seen: tuple[str, ...] = ()) -> Any:
        """The node with its $ref (and a one-element allOf, Pydantic's older wrapping) inlined."""
        if not isinstance(node, Mapping):
            raise ConfigError(f"{self.name}: {_where(path)} is not a schema object.")
        refused = [k for k in _REFUSED if k in node]
        if refused:
            raise ConfigError(
                f"{self.name}: {_where(path)} uses {refused[0]!r}, which structured replies do "
                "not support: describe the field with a plain type."
            )
        if "allOf" in node:
            parts = list(node["allOf"])
            if len(parts) != 1:
                raise ConfigError(
                    f"{self.name}: {_where(path)} combines schemas with allOf: write the "
                    "combined object out as one."
                )
            rest = {k: v for k, v in node.items() if k != "allOf"}
            return self.resolve({**parts[0], **rest}, path, seen)
        ref = node.get("$ref")
        if ref is None:
            return node
        target = self._target(ref, path, seen)
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return self.resolve({**target, **rest}, path, (*seen, ref))

    def _target(self, ref: Any, path: tuple[str, ...], seen: tuple[str, ...]) -> Any:
        prefix = next((p for p in ("#/$defs/", "#/definitions/") if str(ref).startswith(p)), None)
        if prefix is None or str(ref)[len(prefix) :] not in self.defs:
            raise ConfigError(
                f"{self.name}: {_where(path)} refers to {ref!r}; only references to the "
                "schema's own $defs are supported: put the definition inline."
            )
        if ref in seen or ref in self.active:
            raise ConfigError(
                f"{self.name}: {_where(path)} refers to itself ({ref}); a recursive schema "
                "cannot be columns: cut the recursion (e.g. make the inner level a string)."
            )
        return self.defs[str(ref)[len(prefix) :]]

    def object(
        self,
        node: Mapping[str, Any],
        path: tuple[str, ...],
        nullable: bool,
        out: list[Field] | None,
    ) -> tuple[dict[str, Any], _Prune]:
        """The strict form of an object; its fields go to `out` (None inside arrays)."""
        properties = node.get("properties")
        if not isinstance(properties, Mapping) or not properties:
            raise ConfigError(
                f"{self.name}: {_where(path)} is an object without named properties (a "
                "free-form dict): list its properties, or make it a string."
            )
        required = set(node.get("required", ()))
        strict_props: dict[str, Any] = {}
        children: dict[str, _Prune] = {}
        for key, sub in properties.items():
            child = (*path, str(key))
            optional = key not in required
            strict_props[key], pruner = self.value(sub, child, nullable, optional, out)
            if pruner is not None:
                children[key] = pruner
        strict: dict[str, Any] = {
            "type": "object",
            "properties": strict_props,
            "required": list(strict_props),
            "additionalProperties": False,
        }
        if "description" in node:
            strict["description"] = node["description"]
        optional_keys = frozenset(str(k) for k in properties if k not in required)
        return strict, _Prune(optional_keys, children)

    def value(
        self,
        raw: Any,
        path: tuple[str, ...],
        parent_nullable: bool,
        optional: bool,
        out: list[Field] | None,
    ) -> tuple[dict[str, Any], _Prune | None]:
        """The strict form of one property, and its field(s) added to `out`."""
        refs = _refs(raw)
        node = self.resolve(raw, path)
        where = _where(path)
        null, node = _nullable(node, self.name, where)
        refs += _refs(node)
        node = self.resolve(node, path)  # Optional[Model] is anyOf: [{$ref}, null]
        self.active += refs
        try:
            return self._value(
                node, path, parent_nullable or null or optional, null or optional, out
            )
        finally:
            del self.active[len(self.active) - len(refs) :]

    def _value(
        self,
        node: Mapping[str, Any],
        path: tuple[str, ...],
        nullable: bool,
        null_allowed: bool,
        out: list[Field] | None,
    ) -> tuple[dict[str, Any], _Prune | None]:
        kind = _type_of(node, self.name, _where(path))
        pruner: _Prune | None = None
        if kind == "object":
            strict, pruner = self.object(node, path, nullable, out)
        elif kind == "array":
            strict, pruner, items = self.array(node, path)
            self._add(out, Field(".".join(path), path, "list", nullable, items=items))
        else:
            strict, field_type, categories = self.scalar(node, kind)
            self._add(out, Field(".".join(path), path, field_type, nullable, categories))
        if "description" in node:
            strict["description"] = node["description"]
        if null_allowed:
            strict = _or_null(strict)
        return strict, pruner

    def array(
        self, node: Mapping[str, Any], path: tuple[str, ...]
    ) -> tuple[dict[str, Any], _Prune | None, FieldType | None]:
        if "items" not in node or not isinstance(node["items"], Mapping):
            raise ConfigError(
                f"{self.name}: {_where(path)} is an array without one `items` schema: say "
                "what its items are."
            )
        items, pruner = self.value(node["items"], (*path, "[]"), False, False, None)
        plain = _plain_items(self.resolve(node["items"], path))
        # The items' pruner applies to each item of the list, not to the list itself.
        each = None if pruner is None else _Prune(items=pruner)
        return {"type": "array", "items": items}, each, plain

    def scalar(
        self, node: Mapping[str, Any], kind: str
    ) -> tuple[dict[str, Any], FieldType, tuple[Any, ...]]:
        if "const" in node and "enum" not in node:
            node = {**node, "enum": [node["const"]]}
        if "enum" in node:
            values = list(node["enum"])
            _enum_type(values, self.name, "an enum")
            return {"type": kind, "enum": values}, "enum", tuple(values)
        form = _DATE_FORMATS.get(str(node.get("format"))) if kind == "string" else None
        if form is not None:
            return {"type": "string", "format": node["format"]}, form, ()  # type: ignore[return-value]
        return {"type": kind}, kind, ()  # type: ignore[return-value]

    @staticmethod
    def _add(out: list[Field] | None, item: Field) -> None:
        if out is not None:
            out.append(item)


def _refs(node: Any) -> list[str]:
    """The $ref a node (or its one-element allOf) names, to catch a recursion."""
    if not isinstance(node, Mapping):
        return []
    parts = node.get("allOf") or []
    inner = [p.get("$ref") for p in parts if isinstance(p, Mapping) and "$ref" in p]
    return [str(r) for r in [node.get("$ref"), *inner] if r is not None]


def _or_null(strict: dict[str, Any]) -> dict[str, Any]:
    if "enum" in strict or "format" in strict or strict["type"] in ("object", "array"):
        description = strict.pop("description", None)
        wrapped: dict[str, Any] = {"anyOf": [strict, {"type": "null"}]}
        if description is not None:
            wrapped["description"] = description
        return wrapped
    return {**strict, "type": [strict["type"], "null"]}


def _plain_items(node: Mapping[str, Any]) -> FieldType | None:
    """The item type of a list of plain values (for a typed list column), else None."""
    kind = node.get("type")
    if kind in ("integer", "number", "boolean") and "enum" not in node:
        return kind
    if kind == "string" and "enum" not in node and node.get("format") not in _DATE_FORMATS:
        return "string"
    return None
