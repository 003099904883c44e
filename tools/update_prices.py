"""Regenerate ipychat/data/prices.json from the installed `genai-prices` (PyPI).

    python tools/update_prices.py                 # prices as of today, writes the file
    python tools/update_prices.py --check         # exit 1 if the file is not what it would write

genai-prices (https://github.com/pydantic/genai-prices, MIT) is a maintained, offline price
database: its wheel bundles the data as Python objects (genai_prices/data.py), no network. It
is not imported at run time: importing it takes about a second and it needs Python 3.11 and
pydantic, so ipychat ships the prices it needs as JSON and a test (tests/core/test_pricing.py)
checks that the shipped file is exactly what this script makes from the installed version
(`pip install -e ".[test]"` installs it). A newer genai-prices therefore fails that test until
someone runs this script and commits the result: the file cannot go stale unnoticed.

What is taken, per provider ipychat names (PROVIDERS), for each model genai-prices lists:
- the list price on the as-of date (its dated prices resolved for that day): input, output,
  cache reads (`cached_input`), the Batch API's input/output where it has a batch price, and
  long-context tiers ("over N prompt tokens every token costs ...", genai-prices' threshold
  rule: the tier applies when the request's input tokens exceed N);
- names: the model id and the exact spellings of its matching rules (`equals`, and the literal
  of a `starts_with`) that genai-prices itself resolves to that model. Its prefix, `contains`
  and regex rules are not copied: ipychat does not price by prefix ("o3-pro" is not "o3");
  ipychat's own dated-snapshot rule covers "-2025-08-07", "-0125" and "-20250929" suffixes;
- the context window where genai-prices has one, except for the OpenAI models of
  OPENAI_LIMITS, whose window and largest reply are kept from OpenAI's model pages
  (https://platform.openai.com/docs/models): genai-prices has no max output tokens.
Models with no per-token input or output price (audio, images, embeddings) are left out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

from genai_prices import types as gp
from genai_prices.data import providers as GENAI_PROVIDERS

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "ipychat" / "data" / "prices.json"
DEFAULT_PROVIDER = "openai"

# ipychat's provider name -> genai-prices' provider id. The first is the default provider:
# its models are the file's top-level "models" (a plain "gpt-4o" is OpenAI's).
PROVIDERS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",  # the Gemini API and Vertex AI: one provider in genai-prices
    "mistral": "mistral",
    "groq": "groq",
    "openrouter": "openrouter",
    "together": "together",
    "azure": "azure",  # Azure OpenAI; falls back to OpenAI's prices (genai-prices' rule)
}

# Context window and largest reply of the OpenAI models ipychat listed before it took prices
# from genai-prices (from OpenAI's model pages), kept as they were.
OPENAI_LIMITS: dict[str, tuple[int, int]] = {
    "gpt-5": (400_000, 128_000),
    "gpt-5-mini": (400_000, 128_000),
    "gpt-5-nano": (400_000, 128_000),
    "gpt-4.1": (1_047_576, 32_768),
    "gpt-4.1-mini": (1_047_576, 32_768),
    "gpt-4.1-nano": (1_047_576, 32_768),
    "gpt-4o": (128_000, 16_384),
    "gpt-4o-2024-05-13": (128_000, 4_096),
    "chatgpt-4o-latest": (128_000, 16_384),
    "gpt-4o-mini": (128_000, 16_384),
    "o1": (200_000, 100_000),
    "o1-mini": (128_000, 65_536),
    "o3": (200_000, 100_000),
    "o3-mini": (200_000, 100_000),
    "o4-mini": (200_000, 100_000),
    "gpt-4-turbo": (128_000, 4_096),
    "gpt-4": (8_192, 8_192),
    "gpt-4-32k": (32_768, 8_192),
    "gpt-3.5-turbo": (16_385, 4_096),
    "gpt-3.5-turbo-instruct": (4_096, 4_096),
}

# ipychat's field -> genai-prices' price key, for the standard and the batch prices.
STANDARD = {"input": "input_mtok", "output": "output_mtok", "cached_input": "cache_read_mtok"}
BATCH = {"batch_input": "input_mtok", "batch_output": "output_mtok"}
BATCH_CONTEXT = {"processing": "batch"}  # genai-prices' price variant for batch requests

NOTE = (
    "Prices change: regenerate with tools/update_prices.py. Override or add a model with "
    "`%chat price MODEL INPUT OUTPUT` or, in Python, `get_session().prices.override(model, "
    "input=..., output=...)`; overrides win over this file. Top-level models are OpenAI's; "
    "other providers' are under `providers`, looked up as `prices.lookup(model, "
    "provider=...)` or as 'provider/model'. A missing cached_input: no cache discount. "
    "batch_*: the provider's batch API. tiers: over `above` prompt tokens, every token of the "
    "request costs the tier's prices. Dated snapshots (gpt-4o-2024-08-06, "
    "claude-sonnet-4-5-20250929) resolve to the listed name; `aliases` map other spellings."
)

Price = Decimal | gp.TieredPrices | None


def _rate(price: Price, above: int | None) -> float | None:
    """The price per 1M tokens of a request with more than `above` input tokens (None: the
    base rate); genai-prices' rule: the highest tier whose start is below the count."""
    if price is None:
        return None
    if isinstance(price, gp.TieredPrices):
        tiers = [t for t in price.tiers if above is not None and t.start <= above]
        return float(tiers[-1].price if tiers else price.base)
    return float(price)


def _thresholds(prices: list[Price]) -> list[int]:
    starts = {t.start for p in prices if isinstance(p, gp.TieredPrices) for t in p.tiers}
    return sorted(starts)


def _batch_prices(model: gp.ModelInfo, when: datetime) -> gp.ModelPrice | None:
    """The batch prices in force on `when`, or None when the model has none."""
    for variant in model.price_variants or ():
        active = variant.constraint is None or variant.constraint.active(when)
        if active and variant.when == BATCH_CONTEXT:
            prices = model.get_prices(when, BATCH_CONTEXT)
            if variant.prices.input_mtok is not None and variant.prices.output_mtok is not None:
                return prices
    return None


def _entry(model: gp.ModelInfo, when: datetime) -> dict[str, Any] | None:
    """ipychat's entry for one model, or None when it has no per-token text price."""
    standard = model.get_prices(when)
    if standard.input_mtok is None or standard.output_mtok is None:
        return None
    batch = _batch_prices(model, when)
    fields: dict[str, Price] = {k: getattr(standard, v) for k, v in STANDARD.items()}
    if batch is not None:
        fields |= {k: getattr(batch, v) for k, v in BATCH.items()}

    def rates(above: int | None) -> dict[str, Any]:
        return {k: r for k, p in fields.items() if (r := _rate(p, above)) is not None}

    entry = rates(None)
    if model.context_window:
        entry["context_window"] = model.context_window
    tiers = [{"above": n, **rates(n)} for n in _thresholds(list(fields.values()))]
    if tiers:
        entry["tiers"] = tiers
    return entry


def _literals(match: Any) -> Iterator[str]:
    """The exact spellings in a model's matching rules: `equals` and `starts_with` literals."""
    if isinstance(match, gp.ClauseEquals):
        yield match.equals
    elif isinstance(match, gp.ClauseStartsWith):
        yield match.starts_with
    elif isinstance(match, (gp.ClauseOr, gp.ClauseAnd)):
        for clause in match.or_ if isinstance(match, gp.ClauseOr) else match.and_:
            yield from _literals(clause)


def _names(provider: gp.Provider, model: gp.ModelInfo) -> list[str]:
    """The model's names, its id first when usable: spellings genai-prices resolves to this
    model (its rules are tried in order, so an earlier model may claim a literal), ending in a
    letter or digit (a prefix such as "ft:gpt-4o-2024-" is no model's name)."""
    names: list[str] = []
    for name in (model.id, *_literals(model.match)):
        name = name.strip().lower()
        usable = name and name[-1].isalnum() and " " not in name and name not in names
        if usable and provider.find_model(name) is model:
            names.append(name)
    return names


def _pattern(match: Any) -> str:
    """A regular expression, for `re.match` on the lower-cased name, equivalent to one of
    genai-prices' matching rules (`is_match` of its Clause* classes)."""
    if isinstance(match, gp.ClauseEquals):
        return re.escape(match.equals.lower()) + r"\Z"
    if isinstance(match, gp.ClauseStartsWith):
        return re.escape(match.starts_with.lower())
    if isinstance(match, gp.ClauseEndsWith):
        return ".*" + re.escape(match.ends_with.lower()) + r"\Z"
    if isinstance(match, gp.ClauseContains):
        return ".*" + re.escape(match.contains.lower())
    if isinstance(match, gp.ClauseRegex):  # re.search: anywhere
        return f".*?(?:{match.regex})"
    if isinstance(match, gp.ClauseOr):
        return "(?:" + "|".join(_pattern(c) for c in match.or_) + ")"
    if isinstance(match, gp.ClauseAnd):
        return "".join(f"(?={_pattern(c)})" for c in match.and_)
    raise TypeError(f"unknown genai-prices clause {match!r}")


def _provider_section(pid: str, when: datetime, openai: bool) -> dict[str, Any]:
    provider = next(p for p in GENAI_PROVIDERS if p.id == pid)
    models: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    for model in provider.models:
        names = _names(provider, model)
        entry = _entry(model, when) if names else None
        if entry is None or names[0] in models:
            continue
        if openai and names[0] in OPENAI_LIMITS:
            entry["context_window"], entry["max_output_tokens"] = OPENAI_LIMITS[names[0]]
        models[names[0]] = entry
        for alias in names[1:]:
            aliases.setdefault(alias, names[0])
    aliases = {a: m for a, m in aliases.items() if a not in models}
    return {"models": dict(sorted(models.items())), "aliases": dict(sorted(aliases.items()))}


def build(as_of: date) -> dict[str, Any]:
    """The whole file, for prices in force on `as_of` (UTC)."""
    when = datetime(as_of.year, as_of.month, as_of.day, 12, tzinfo=UTC)
    ours = {gid: name for name, gid in PROVIDERS.items()}
    data: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "currency": "USD",
        "unit": "per 1M tokens",
        "source": (
            f"genai-prices {version('genai-prices')} "
            "(https://github.com/pydantic/genai-prices, MIT licence): its bundled data, "
            "list prices in force on as_of"
        ),
        "generated_by": f"python tools/update_prices.py --as-of {as_of.isoformat()}",
        "note": NOTE,
        "provider": DEFAULT_PROVIDER,
        **_provider_section(PROVIDERS[DEFAULT_PROVIDER], when, openai=True),
        "providers": {},
    }
    for name, pid in PROVIDERS.items():
        if name == DEFAULT_PROVIDER:
            continue
        provider = next(p for p in GENAI_PROVIDERS if p.id == pid)
        fallback = [ours[f] for f in provider.fallback_model_providers or () if f in ours]
        data["providers"][name] = {
            "name": provider.name,
            "genai_prices_id": pid,
            "pricing_urls": provider.pricing_urls or [],
            "fallback": fallback,
            # The names this provider makes (genai-prices' model_match): a name without a
            # provider that matches is looked up here ("claude-..." is Anthropic's).
            "model_match": _pattern(provider.model_match) if provider.model_match else None,
            **_provider_section(pid, when, openai=False),
        }
    return data


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _block(items: list[str], indent: str) -> str:
    return "{\n" + ",\n".join(items) + f"\n{indent}}}" if items else "{}"


def _object(obj: dict[str, Any], indent: str) -> str:
    items = []
    for key, value in obj.items():
        inner = indent + "    "
        if key == "providers":
            text = _block(
                [f"{inner}{_dumps(k)}: {_object(v, inner)}" for k, v in value.items()],
                indent + "  ",
            )
        elif key in ("models", "aliases"):
            text = _block(
                [f"{inner}{_dumps(k)}: {_dumps(v)}" for k, v in value.items()], indent + "  "
            )
        else:
            text = _dumps(value)
        items.append(f"{indent}  {_dumps(key)}: {text}")
    return _block(items, indent)


def render(data: dict[str, Any]) -> str:
    """JSON with one model (or alias) per line, so that a price change is a one-line diff."""
    return _object(data, "") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--as-of", type=date.fromisoformat, help="YYYY-MM-DD (default: today)")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    shipped = json.loads(TARGET.read_text(encoding="utf-8"))
    as_of = args.as_of or (date.fromisoformat(shipped["as_of"]) if args.check else date.today())
    text = render(build(as_of))
    if args.check:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is stale: run python tools/update_prices.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}: prices as of {as_of}, genai-prices {version('genai-prices')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
