"""The typed-output flags of `%%chatmap` and `%%chatfilter`, read before anything is planned.

`--choices positive,negative,neutral` becomes the label list, `--schema Invoice` the object
named Invoice in the notebook (a Pydantic model class or a JSON-schema dict), each checked
here through `ipychat.core.structured.output_spec`, so every unusable one is refused in one
line (a `UsageError`) before a row is rendered or a request sent. What comes out is the
keyword arguments `session.map` takes (`choices=[...]`, `schema=...`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from IPython.core.error import UsageError

from ipychat.core.errors import ChatError
from ipychat.core.structured import EndpointKind, OutputSpec, output_spec

__all__ = ["choice_labels", "dry_run_note", "schema_object", "typed_note", "typed_options"]

_CHOICES_EXAMPLE = "--choices positive,negative,neutral"


def choice_labels(text: str) -> list[str]:
    """The labels of `--choices A,B,C`: split at commas, each stripped. An empty label (two
    commas in a row, a trailing comma) is refused rather than dropped, since it usually means
    a label was lost to the shell's quoting."""
    labels = [label.strip() for label in text.split(",")]
    if not any(labels):
        raise UsageError(f"--choices needs labels separated by commas, e.g. {_CHOICES_EXAMPLE}.")
    if not all(labels):
        raise UsageError(
            f"--choices {text!r} has an empty label: separate the labels by single commas, "
            f"e.g. {_CHOICES_EXAMPLE} (quote labels that hold spaces)."
        )
    if len(labels) < 2:
        raise UsageError(
            f"--choices {text!r} gives one label: give at least two, e.g. {_CHOICES_EXAMPLE}."
        )
    return labels


def schema_object(name: str, namespace: Mapping[str, Any]) -> Any:
    """The object `--schema NAME` names in the notebook: `Invoice`, or a dotted path such as
    `models.Invoice`. It must be a Pydantic model class or a JSON-schema dict."""
    head, *rest = name.split(".")
    if not head.isidentifier() or not all(part.isidentifier() for part in rest):
        raise UsageError(
            f"--schema needs the name of a Pydantic model or a JSON-schema dict in the "
            f"notebook, not {name!r}."
        )
    if head not in namespace:
        public = [n for n in namespace if not n.startswith("_")]
        close = difflib.get_close_matches(head, public, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(
            f"--schema {name}: {head} is not defined in the notebook{hint}. Define a Pydantic "
            "model class or a JSON-schema dict first."
        )
    value = namespace[head]
    for i, part in enumerate(rest):
        if not hasattr(value, part):
            where = ".".join([head, *rest[:i]])
            raise UsageError(f"--schema {name}: {where} has no attribute {part}.")
        value = getattr(value, part)
    if isinstance(value, Mapping) or _is_model_class(value):
        return value
    if _is_model_class(type(value)):
        raise UsageError(
            f"--schema {name} is an instance of {type(value).__name__}: name the model class "
            f"itself (--schema {type(value).__name__})."
        )
    raise UsageError(
        f"--schema {name} is a {type(value).__name__}, not a Pydantic model class or a "
        "JSON-schema dict."
    )


def typed_options(
    args: Any, namespace: Mapping[str, Any], *, name: str = "%%chatmap"
) -> tuple[dict[str, Any], OutputSpec | None]:
    """The typed keyword arguments for `session.map` from parsed flags (`choices`, `schema`,
    `json`), checked (only the ones given are returned), and the spec they make."""
    choices = getattr(args, "choices", None)
    schema = getattr(args, "schema", None)
    if choices is not None and schema is not None:
        raise UsageError(
            f"{name}: --choices and --schema are two kinds of answer: give one (a label "
            "column, or one column per field)."
        )
    if getattr(args, "json", False) and (choices is not None or schema is not None):
        flag = "--choices" if choices is not None else "--schema"
        raise UsageError(f"{name}: {flag} replaces --json: leave --json out.")
    options: dict[str, Any] = {}
    spec: OutputSpec | None = None
    try:
        if choices is not None:
            labels = choice_labels(choices)
            spec = output_spec(choices=labels)  # duplicate or blank labels: one line
            options["choices"] = labels
        if schema is not None:
            value = schema_object(schema, namespace)
            spec = output_spec(schema=value)  # a schema that cannot be columns: one line
            options["schema"] = value
    except ChatError as exc:
        flag = "--choices" if choices is not None else f"--schema {schema}"
        raise UsageError(f"{name} {flag}: {exc}") from None
    return options, spec


def dry_run_note(session: Any, options: Mapping[str, Any]) -> str | None:
    """The dry run's line on what a typed map's answer adds to every row's request (None for
    free text): the endpoint's kind decides where the rule and the schema travel."""
    if not any(options.get(k) for k in ("choices", "schema", "filter")):
        return None
    from ipychat.engine.prepare import structured_kind

    spec = output_spec(
        schema=options.get("schema"),
        choices=options.get("choices"),
        filter=bool(options.get("filter")),
    )
    engine = session.engine
    system = options.get("system")
    base = system if system is not None else engine.settings.system
    model = options.get("model") or engine.model
    return typed_note(spec, model, structured_kind(engine), base or "")


def typed_note(spec: OutputSpec, model: str, kind: EndpointKind, system: str = "") -> str:
    """What a typed answer adds to every row's request, beside a `system` prompt (none: "");
    e.g. `The labels add ≈31 prompt tokens per row (counted above): the rule in the system
    prompt, ...`. Counted as the plan counts: the messages with and without the rule (a
    system message of its own carries its framing tokens), plus the schema sent beside them."""
    from ipychat.core.tokens import count_messages

    rule = spec.instruction(kind)
    user = {"role": "user", "content": ""}
    typed = [{"role": "system", "content": f"{system}\n\n{rule}" if system else rule}, user]
    plain = [{"role": "system", "content": system}, user] if system else [user]
    tokens = count_messages(typed, model).tokens - count_messages(plain, model).tokens
    tokens += spec.schema_tokens(model, kind)
    what = {"choices": "The labels add", "schema": "The schema adds", "filter": "Yes/no adds"}
    if spec.schema_tokens(model, kind):  # OpenAI bills the response_format schema as input
        carried = "the rule in the system prompt and the schema in response_format"
    elif spec.mode == "schema":  # every other kind reads the schema in the prompt too
        carried = "the rule with the schema in the system prompt"
    else:
        carried = "the rule in the system prompt"
    if kind != "prompt":
        carried += f"; the server ({kind}) constrains the reply to it"
    return f"{what[spec.mode]} ≈{tokens:,} prompt tokens per row (counted above): {carried}."


def _is_model_class(value: Any) -> bool:
    """A Pydantic model class (v2: it has `model_json_schema`), not an instance of one."""
    return isinstance(value, type) and callable(getattr(value, "model_json_schema", None))
