"""Typed replies: a schema, a set of labels or a yes/no question, sent and checked.

```
output_spec(schema=Invoice)                    one object per reply (Pydantic model or JSON schema)
output_spec(choices=["positive", "negative"])  one label per reply
output_spec(filter=True)                       yes or no per reply, as a bool
  .instruction(kind)        the rule added to the system prompt
  .request_fragment(kind)   what goes into the request body to constrain decoding
  .parse(text)              -> Parsed(value, record, error): validated, or what is wrong
  .repair_messages(text, e) the one re-ask: the bad reply and a short note with the error
  .schema_tokens(model, kind), .prompt_tokens(model, kind)   for the cost preview
  .canonical(), .digest()   a stable form for cache and resume keys
```

Constrained where the server can, validated always: `kind` says how the endpoint constrains
decoding (`EndpointKind`, below); whatever it is, every reply is parsed and validated here,
because OpenAI-compatible gateways may ignore `response_format` silently.

Labels and yes/no answers are matched after normalising case, whitespace, surrounding quotes
or emphasis (`"`, `'`, `` ` ``, `*`) and one trailing `.` or `!`, and nothing else: "Positive."
is `positive`, but "not positive" and "The review is positive" match no label (a wrong label
in a column is worse than an error that says what came back).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ipychat.core.errors import ChatError, ConfigError
from ipychat.core.errors import InvalidReply as InvalidReply
from ipychat.core.keys import canonical_json
from ipychat.core.schema import Field, SchemaShape, parse_iso, read_schema
from ipychat.core.tokens import count_text

__all__ = [
    "ENDPOINT_KINDS",
    "EndpointKind",
    "InvalidReply",
    "OutputSpec",
    "Parsed",
    "endpoint_kind",
    "extract_object",
    "normalise_label",
    "output_spec",
]

# How an endpoint constrains decoding:
# - "openai": `response_format: {"type": "json_schema", "json_schema": {name, schema, strict}}`
#   (https://platform.openai.com/docs/guides/structured-outputs). The root must be an object,
#   so labels travel as {"label": <enum>} and yes/no as {"answer": <boolean>}.
# - "llama.cpp": llama-cpp-python's server takes `response_format: {"type": "json_object",
#   "schema": ...}` and turns the schema into a grammar (llama_cpp/llama_types.py,
#   ChatCompletionRequestResponseFormat; llama_chat_format.py, _grammar_for_response_format),
#   and a GBNF `grammar` field (llama_cpp/server/types.py, CreateChatCompletionRequest);
#   llama.cpp's own llama-server reads both fields too (tools/server/README.md). Labels and
#   yes/no use a grammar, so the reply is the bare label.
# - "vllm": `structured_outputs: {"json": schema}` / `{"choice": labels}` (vLLM >= 0.10.2,
#   https://docs.vllm.ai/en/latest/features/structured_outputs/);
#   "vllm-guided": `guided_json` / `guided_choice`, the fields vLLM < 0.12 reads.
# - "prompt": no constraint (a server that supports none): the schema goes into the prompt.
EndpointKind = Literal["openai", "llama.cpp", "vllm", "vllm-guided", "prompt"]
ENDPOINT_KINDS: Final[tuple[str, ...]] = ("openai", "llama.cpp", "vllm", "vllm-guided", "prompt")

_YES_NO: Final = {"yes": True, "no": False, "true": True, "false": False}
_LABEL_KEY: Final = "label"  # the property that carries a label where an object is required
_ANSWER_KEY: Final = "answer"  # the same for yes/no
_FENCE: Final = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)\n?[ \t]*```", re.S)
_NAME_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")
_SHOWN: Final = 80  # characters of a bad reply quoted in an error
_ERROR_CHARS: Final = 300  # an error carried into the repair prompt is cut here


def endpoint_kind(setting: str, *, base_url: str, local: bool) -> EndpointKind:
    """The kind for a `structured` setting: "auto" picks llama.cpp for the embedded model,
    else "openai" (OpenAI, vLLM, llama-server, Ollama and LM Studio all read its form)."""
    if setting == "auto":
        return "llama.cpp" if local else "openai"
    if setting not in ENDPOINT_KINDS:
        raise ConfigError(
            f"Unknown structured-output kind {setting!r}: use auto, {', '.join(ENDPOINT_KINDS)}."
        )
    return setting  # type: ignore[return-value]


@dataclass(frozen=True)
class Parsed:
    """One reply, checked. `error` is None when it fits; then `value` is the answer (a model
    instance, a dict, a label or a bool) and `record` its columns for a schema."""

    value: Any = None
    record: Mapping[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class OutputSpec:
    """What a reply must be: see the module docstring. Build it with `output_spec`."""

    mode: Literal["schema", "choices", "filter"]
    name: str  # the schema's name as sent (OpenAI demands ^[A-Za-z0-9_-]{1,64}$)
    labels: tuple[str, ...] = ()
    shape: SchemaShape | None = None
    source: Mapping[str, Any] = field(default_factory=dict)  # the user's schema, for validation
    model: Any = field(default=None, compare=False)  # the Pydantic model class, if given

    @property
    def fields(self) -> tuple[Field, ...]:
        return self.shape.fields if self.shape is not None else ()

    # ----- what is sent ------------------------------------------------------------------

    def wire_schema(self) -> dict[str, Any]:
        """The JSON schema the server is given where it takes one (root: an object)."""
        if self.shape is not None:
            return self.shape.strict
        answer: dict[str, Any] = (
            {"type": "string", "enum": list(self.labels)}
            if self.mode == "choices"
            else {"type": "boolean"}
        )
        key = _LABEL_KEY if self.mode == "choices" else _ANSWER_KEY
        return {
            "type": "object",
            "properties": {key: answer},
            "required": [key],
            "additionalProperties": False,
        }

    def instruction(self, kind: EndpointKind) -> str:
        """The rule appended to the system prompt (the model reads it; counted as prompt)."""
        if self.mode == "choices":
            return f"Answer with exactly one of these labels and nothing else: {self._listed()}."
        if self.mode == "filter":
            return "Answer with only yes or no."
        if kind == "openai":  # the schema travels in response_format, and is billed there
            return "Reply with only a JSON object that fits the given schema."
        return "Reply with only a JSON object that fits this JSON schema: " + canonical_json(
            self.wire_schema()
        )

    def request_fragment(self, kind: EndpointKind) -> dict[str, Any]:
        """The request-body fields that constrain the reply on this kind of endpoint."""
        if kind == "openai":
            return {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": self.name,
                        "schema": self.wire_schema(),
                        "strict": True,
                    },
                }
            }
        if kind == "llama.cpp":
            if self.mode == "schema":
                return {"response_format": {"type": "json_object", "schema": self.wire_schema()}}
            return {"grammar": _grammar(self._answers())}
        if kind in ("vllm", "vllm-guided"):
            if self.mode == "schema":
                payload: dict[str, Any] = {"json": self.wire_schema()}
            else:
                payload = {"choice": list(self._answers())}
            if kind == "vllm":
                return {"structured_outputs": payload}
            return {f"guided_{k}": v for k, v in payload.items()}
        if kind == "prompt":
            return {}
        raise ConfigError(
            f"Unknown structured-output kind {kind!r}: use {', '.join(ENDPOINT_KINDS)}."
        )

    def schema_tokens(self, model: str, kind: EndpointKind) -> int:
        """Prompt tokens the request fragment adds: OpenAI bills the schema it is sent as input
        (an approximation: its exact rendering is not published); a grammar or a guided
        choice is not prompt text."""
        if kind != "openai":
            return 0
        return count_text(canonical_json(self.request_fragment(kind)["response_format"]), model)

    def prompt_tokens(self, model: str, kind: EndpointKind) -> int:
        """Every prompt token the spec adds to one request: the instruction and the schema."""
        return count_text("\n\n" + self.instruction(kind), model) + self.schema_tokens(model, kind)

    def canonical(self) -> str:
        """A stable text of everything that decides what is asked and accepted."""
        return canonical_json(
            {
                "mode": self.mode,
                "name": self.name,
                "labels": list(self.labels),
                "schema": self.source,
                "wire": self.wire_schema(),
            }
        )

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    def as_options(self) -> dict[str, Any]:
        """The spec as JSON-able options of `output_spec` (a Pydantic model as its JSON
        schema, whose spec has the same wire form and digest): what a Batch job stores."""
        if self.mode == "choices":
            return {"choices": list(self.labels)}
        if self.mode == "filter":
            return {"filter": True}
        return {"schema": dict(self.source)}

    # ----- what comes back ---------------------------------------------------------------

    def parse(self, text: str) -> Parsed:
        """The reply as an answer, or why it does not fit (one line)."""
        if self.mode == "choices":
            return self._parse_label(text)
        if self.mode == "filter":
            return self._parse_yes_no(text)
        value, problem = extract_object(text)
        if value is None:
            return Parsed(error=problem)
        assert self.shape is not None
        return self._validate(self.shape.prune(value))

    def repair_messages(self, reply: str, error: str) -> list[dict[str, str]]:
        """The re-ask, appended to the conversation: the reply as given, then the error and the
        rule again, short (the error is cut at a few hundred characters)."""
        if len(error) > _ERROR_CHARS:
            error = error[: _ERROR_CHARS - 1] + "…"
        if self.mode == "schema":
            rule = "Reply with only the JSON object, with the fields: " + ", ".join(
                _top_keys(self.wire_schema())
            )
        else:
            rule = self.instruction("prompt")[:-1]
        return [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": f"That reply does not fit: {error}. {rule}."},
        ]

    def _answers(self) -> tuple[str, ...]:
        return self.labels if self.mode == "choices" else ("yes", "no")

    def _listed(self) -> str:
        if any("," in label for label in self.labels):
            return ", ".join(json.dumps(label, ensure_ascii=False) for label in self.labels)
        return ", ".join(self.labels)

    def _parse_label(self, text: str) -> Parsed:
        candidate = _unwrap(text, _LABEL_KEY)
        if isinstance(candidate, str):
            wanted = normalise_label(candidate)
            for label in self.labels:
                if normalise_label(label) == wanted:
                    return Parsed(value=label)
        return Parsed(error=f"{_shown(text)} is not one of the labels: {self._listed()}")

    def _parse_yes_no(self, text: str) -> Parsed:
        candidate = _unwrap(text, _ANSWER_KEY)
        if isinstance(candidate, bool):
            return Parsed(value=candidate)
        if isinstance(candidate, str) and normalise_label(candidate) in _YES_NO:
            return Parsed(value=_YES_NO[normalise_label(candidate)])
        return Parsed(error=f"{_shown(text)} is not yes or no")

    def _validate(self, value: dict[str, Any]) -> Parsed:
        if self.model is not None:
            problem, answer, plain = _validate_model(self.model, value)
        else:
            problem, answer, plain = _validate_schema(self.source, value), value, value
        if problem:
            return Parsed(error=problem)
        record = {f.column: _at(plain, f.path) for f in self.fields}
        for f in self.fields:
            if f.type in ("date", "datetime") and record[f.column] is not None:
                try:
                    parse_iso(record[f.column], f.type)
                except ValueError as exc:
                    return Parsed(error=f"{f.column}: {exc}")
        return Parsed(value=answer, record=record)


def output_spec(
    *, schema: Any = None, choices: Sequence[str] | None = None, filter: bool = False
) -> OutputSpec:
    """The spec for exactly one of: `schema` (a Pydantic model class or a JSON-schema dict),
    `choices` (labels) or `filter=True` (yes/no). ConfigError, one line, if it is unusable."""
    given = [n for n, v in (("schema", schema), ("choices", choices), ("filter", filter)) if v]
    if len(given) != 1:
        raise ConfigError(
            "Give exactly one of schema, choices or filter"
            + (f" (got {' and '.join(given)})." if given else ".")
        )
    if filter:
        return OutputSpec("filter", "answer")
    if choices is not None:
        return OutputSpec("choices", "label", labels=_check_labels(choices))
    if isinstance(schema, type) and callable(getattr(schema, "model_json_schema", None)):
        source = schema.model_json_schema()  # type: ignore[attr-defined]
        shape = read_schema(source, name=schema.__name__)
        return OutputSpec(
            "schema", _wire_name(schema.__name__), shape=shape, source=source, model=schema
        )
    if isinstance(schema, Mapping):
        source = dict(schema)
        shape = read_schema(source)
        return OutputSpec(
            "schema", _wire_name(str(source.get("title") or "output")), shape=shape, source=source
        )
    raise ConfigError(
        f"schema must be a Pydantic model class or a JSON-schema dict, not {type(schema).__name__}"
        " (a Pydantic model instance? pass its class)."
    )


# ----- helpers -------------------------------------------------------------------------------


def normalise_label(text: str) -> str:
    """A label or an answer as compared: case, whitespace, quotes, emphasis, final . or !"""
    text = text.strip().strip("\"'`*").strip()
    if text.endswith((".", "!")):
        text = text[:-1]
    return " ".join(text.strip("\"'`*").split()).casefold()


def _check_labels(choices: Sequence[str]) -> tuple[str, ...]:
    if isinstance(choices, str):
        raise ConfigError(
            "choices must be a list of labels, not one string: e.g. ['positive', 'negative']."
        )
    labels = tuple(choices)
    if len(labels) < 2:
        raise ConfigError(f"choices has {len(labels)} label(s): give at least two.")
    for label in labels:
        if not isinstance(label, str) or not normalise_label(label):
            raise ConfigError(f"choices holds {label!r}: every label must be a non-empty string.")
    seen: dict[str, str] = {}
    for label in labels:
        other = seen.setdefault(normalise_label(label), label)
        if other is not label:
            raise ConfigError(
                f"choices {other!r} and {label!r} are the same label once case, spaces and "
                "punctuation are ignored: keep one."
            )
    return labels


def extract_object(text: str) -> tuple[dict[str, Any] | None, str]:
    """The one JSON object in a reply (bare, or in a ```json fence, or with prose around it),
    or None and why not."""
    fenced = _FENCE.findall(text)
    candidates = fenced if fenced else [text]
    found: list[Any] = []
    decoder = json.JSONDecoder()
    for candidate in candidates:
        stripped = candidate.strip()
        try:
            found.append(json.loads(stripped))
            continue
        except json.JSONDecodeError as exc:
            whole_error = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        index = stripped.find("{")
        while index != -1:
            try:
                value, end = decoder.raw_decode(stripped, index)
            except json.JSONDecodeError:
                index = stripped.find("{", index + 1)
                continue
            found.append(value)
            index = stripped.find("{", end)
        if not found and stripped.startswith(("{", "[")):
            return None, f"the reply is not valid JSON ({whole_error})"
    objects = [v for v in found if isinstance(v, dict)]
    if len(objects) == 1:
        return objects[0], ""
    if len(objects) > 1:
        return None, f"the reply holds {len(objects)} JSON objects, not one"
    if found:
        return None, f"the reply is a JSON {type(found[0]).__name__}, not an object"
    return None, f"the reply holds no JSON object: {_shown(text)}"


def _unwrap(text: str, key: str) -> Any:
    """A label or answer from its JSON forms ("positive", {"label": "positive"}), else the text."""
    stripped = text.strip()
    if stripped.startswith(("{", '"')) or stripped in ("true", "false"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return stripped
        if isinstance(value, dict):
            return value.get(key) if set(value) == {key} else None
        return value
    return stripped


def _shown(text: str) -> str:
    one_line = " ".join(text.split())
    return repr(one_line if len(one_line) <= _SHOWN else one_line[: _SHOWN - 1] + "…")


def _at(value: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _top_keys(schema: Mapping[str, Any]) -> list[str]:
    return [str(k) for k in schema.get("properties", {})]


def _wire_name(name: str) -> str:
    return _NAME_CHARS.sub("_", name)[:64] or "output"


def _grammar(answers: Sequence[str]) -> str:
    """A GBNF grammar whose only sentences are the answers (llama.cpp grammars/README.md:
    double-quoted literals with \\", \\\\ and \\n escapes)."""

    def literal(answer: str) -> str:
        escaped = answer.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'

    return "root ::= " + " | ".join(literal(a) for a in answers)


def _validate_model(model: Any, value: dict[str, Any]) -> tuple[str, Any, Any]:
    """(error or "", the model instance, its JSON-mode dump) through Pydantic."""
    from pydantic import ValidationError  # the user passed a Pydantic model: it is installed

    try:
        instance = model.model_validate(value)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'the object'}: {e['msg']}"
            for e in exc.errors()[:3]
        ]
        return "; ".join(problems), None, None
    return "", instance, instance.model_dump(mode="json")


def _validate_schema(schema: Mapping[str, Any], value: dict[str, Any]) -> str:
    """The first (up to three) validation errors of `value` against the user's JSON schema."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a dependency of ipychat
        raise ChatError(
            "Checking replies against a JSON schema needs jsonschema: pip install jsonschema"
        ) from None
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    problems = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error.absolute_path) or "the object"
        message = error.message if len(error.message) <= 200 else error.message[:199] + "…"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)
