"""The price data: a model's prices (`ModelPrice`), and the price file read and checked.

The file is `ipychat/data/prices.json`, made by tools/update_prices.py from the maintained
`genai-prices` data (USD per 1M tokens, with an as-of date). Its top-level `models` and
`aliases` are the default provider's (OpenAI); each other provider has a section under
`providers` with its own models and aliases, the providers whose prices it falls back to
(Azure OpenAI: OpenAI's) and the pattern of the names it makes (`model_match`).

Pure: every value is checked here, for the file and for the user's overrides alike, so that a
unit mistake or a typo is an error that says what to pass, never a silent wrong estimate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from ipychat.core.errors import ConfigError

__all__ = [
    "MAX_PRICE",
    "MAX_WINDOW",
    "ModelPrice",
    "PriceTier",
    "ProviderPrices",
    "TableData",
    "normalize_model",
    "optional_price",
    "parse_table",
    "price_value",
    "snapshot_keys",
    "window_value",
]

# Far above any list price (o1-pro output is 600). A larger number is a unit mistake
# (per token, per 1K?) or a typo, and would silently wreck every estimate.
MAX_PRICE: Final = 10_000.0
MAX_WINDOW: Final = 100_000_000

# Dated snapshots: -2024-08-06 (OpenAI), -0125 (OpenAI's older), -20250929 (Anthropic),
# @20241022 (Claude on Vertex AI).
_SNAPSHOT = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{4}|-20\d{6}|@20\d{6})$")


@dataclass(frozen=True)
class PriceTier:
    """Long-context prices: when a request has more than `above` prompt tokens, every token
    of it costs these (the "cliff" rule of Anthropic, Google and OpenAI, as genai-prices
    models it)."""

    above: int
    input: float
    output: float
    cached_input: float | None = None
    batch_input: float | None = None
    batch_output: float | None = None


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens for one model; `None` where the table has no such price.

    `cached_input` None means no cache discount (cached tokens bill at `input`). `source` says
    where it came from: "table", "override" or "local"; `provider` whose list price it is
    ("" when not known). `tiers`: long-context prices, by ascending `above`.
    """

    model: str
    input: float
    output: float
    cached_input: float | None = None
    batch_input: float | None = None
    batch_output: float | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    source: str = "table"
    provider: str = ""
    tiers: tuple[PriceTier, ...] = ()

    def for_prompt(self, prompt_tokens: int) -> ModelPrice:
        """The prices of a request with `prompt_tokens` prompt tokens: this one, or with the
        rates of the highest long-context tier it exceeds."""
        tier = None
        for candidate in self.tiers:
            if prompt_tokens > candidate.above:
                tier = candidate
        if tier is None:
            return self
        return ModelPrice(
            self.model,
            tier.input,
            tier.output,
            tier.cached_input,
            tier.batch_input,
            tier.batch_output,
            self.context_window,
            self.max_output_tokens,
            self.source,
            self.provider,
        )


# --------------------------------------------------------------------------------------------
# Validation (shared by the data file and user overrides)
# --------------------------------------------------------------------------------------------


def price_value(value: Any, what: str, model: str) -> float:
    """A price as given (a number, "2.50", "$1,234.50") checked: 0 to MAX_PRICE."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().removeprefix("$").replace(",", ""))
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not 0 <= number <= MAX_PRICE:
        raise ConfigError(
            f"Invalid {what} price for {model}: {value!r}; pass USD per 1M tokens, "
            f"a number from 0 to {MAX_PRICE:,.0f} (e.g. 2.50)"
        )
    return number


def optional_price(value: Any, what: str, model: str) -> float | None:
    return None if value is None else price_value(value, what, model)


def window_value(value: Any, what: str, model: str) -> int | None:
    """A token count as given (128000, "128,000", "128_000") checked: 1 to MAX_WINDOW."""
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        digits = value.strip().replace(",", "").replace("_", "")  # 128,000 or 128_000
        if digits.isdigit():
            number = int(digits)
    if number is None or not 0 < number <= MAX_WINDOW:
        raise ConfigError(
            f"Invalid {what} for {model}: {value!r}; pass a whole number of tokens "
            f"from 1 to {MAX_WINDOW:,} (e.g. 128000)"
        )
    return number


def normalize_model(model: Any) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"Invalid model name {model!r}; pass the model's name, e.g. gpt-4o-mini")
    return model.strip().lower()


def snapshot_keys(name: str) -> list[str]:
    """`name`, then the name of which it is a dated snapshot, if it is one."""
    base = _SNAPSHOT.sub("", name)
    return [name] if base == name or not base else [name, base]


def _tier(model: str, entry: Mapping[str, Any]) -> PriceTier:
    above = window_value(entry.get("above"), "tier threshold", model)
    return PriceTier(
        above=above or 0,
        input=price_value(entry.get("input"), "tier input", model),
        output=price_value(entry.get("output"), "tier output", model),
        cached_input=optional_price(entry.get("cached_input"), "tier cached input", model),
        batch_input=optional_price(entry.get("batch_input"), "tier batch input", model),
        batch_output=optional_price(entry.get("batch_output"), "tier batch output", model),
    )


def _from_entry(model: str, entry: Mapping[str, Any], provider: str) -> ModelPrice:
    """A model of the table file (`source` "table")."""
    tiers = sorted((_tier(model, t) for t in entry.get("tiers") or ()), key=lambda t: t.above)
    return ModelPrice(
        model=model,
        input=price_value(entry.get("input"), "input", model),
        output=price_value(entry.get("output"), "output", model),
        cached_input=optional_price(entry.get("cached_input"), "cached input", model),
        batch_input=optional_price(entry.get("batch_input"), "batch input", model),
        batch_output=optional_price(entry.get("batch_output"), "batch output", model),
        context_window=window_value(entry.get("context_window"), "context window", model),
        max_output_tokens=window_value(entry.get("max_output_tokens"), "max output tokens", model),
        provider=provider,
        tiers=tuple(tiers),
    )


# --------------------------------------------------------------------------------------------
# The table file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderPrices:
    """One provider's models: listed names, aliases, and the providers it falls back to."""

    name: str
    models: Mapping[str, ModelPrice]
    aliases: Mapping[str, str]
    fallback: tuple[str, ...] = ()

    def find(self, name: str) -> ModelPrice | None:
        """`name` listed here exactly, through an alias, or as a dated snapshot of either."""
        for key in snapshot_keys(name):
            key = self.aliases.get(key, key)
            if key in self.models:
                return self.models[key]
        return None


def _provider(name: str, data: Mapping[str, Any]) -> ProviderPrices:
    models = {
        normalize_model(model): _from_entry(normalize_model(model), entry, name)
        for model, entry in (data.get("models") or {}).items()
    }
    aliases = {
        normalize_model(k): normalize_model(v) for k, v in (data.get("aliases") or {}).items()
    }
    for alias, target in aliases.items():
        if target not in models:
            raise ConfigError(f"Price alias {alias} points to unlisted model {target}")
    return ProviderPrices(
        name=name,
        models=MappingProxyType(models),
        aliases=MappingProxyType(aliases),
        fallback=tuple(str(f).lower() for f in data.get("fallback") or ()),
    )


class TableData:
    """The price file's contents. The default provider's models are checked at once (a bad
    value is a ConfigError naming it); another provider's when first asked for, so that a
    session that only ever prices OpenAI models never reads a thousand others."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.as_of = str(data.get("as_of", ""))
        self.currency = str(data.get("currency", "USD"))
        self.source = str(data.get("source", ""))
        self.default_provider = str(data.get("provider") or "").lower()
        sections = {self.default_provider: data}
        for name, section in (data.get("providers") or {}).items():
            sections[str(name).lower()] = section
        self._sections: Mapping[str, Mapping[str, Any]] = MappingProxyType(sections)
        # The names each provider makes (genai-prices' model_match), in the file's order.
        self._makers = tuple(
            (name, re.compile(str(section["model_match"])))
            for name, section in sections.items()
            if section.get("model_match")
        )
        for name, section in sections.items():
            for target in section.get("fallback") or ():
                if str(target).lower() not in sections:
                    raise ConfigError(f"Provider {name} falls back to unknown {target}")
        self._parsed: dict[str, ProviderPrices] = {}
        self.provider(self.default_provider)

    @property
    def names(self) -> list[str]:
        """The providers, the default one first."""
        return list(self._sections)

    def knows(self, provider: str) -> bool:
        return provider in self._sections

    def provider(self, name: str) -> ProviderPrices:
        """A provider's prices (KeyError for one the file does not have). Parsed once; two
        threads parsing at the same time make equal results, and either is kept."""
        try:
            return self._parsed[name]
        except KeyError:
            parsed = self._parsed[name] = _provider(name, self._sections[name])
            return parsed

    def maker(self, model: str) -> str | None:
        """The provider that makes models named like `model`, or None."""
        return next((name for name, pattern in self._makers if pattern.match(model)), None)


def parse_table(data: Mapping[str, Any]) -> TableData:
    """The price file's contents checked; ConfigError names the first bad value."""
    return TableData(data)
