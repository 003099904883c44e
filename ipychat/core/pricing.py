"""Prices per model, the cost of a request, and how money and token counts are written.

The table is `ipychat/data/prices.json`: list prices (USD per 1M tokens, with an as-of date)
for OpenAI and the other providers ipychat names, generated from the maintained `genai-prices`
data by tools/update_prices.py (ipychat.core.pricedata reads it). Users add or correct prices
with `PriceTable.override` (`%chat price MODEL INPUT OUTPUT`); an override wins.

Three rules keep a budget honest:
- an unknown model costs *unknown* (`None`), never 0, so a typo cannot make a request look free;
- a local model (the name "local", or `is_local=True` for a local endpoint) costs 0;
- a name resolves to a listed model only exactly, through an alias, or as a *dated snapshot*
  of it ("gpt-4o-2024-08-06" → "gpt-4o", "gpt-3.5-turbo-0125" → "gpt-3.5-turbo",
  "claude-sonnet-4-5-20250929" → "claude-sonnet-4-5"). Plain longest-prefix matching would
  price "o3-pro" as "o3" and "gpt-5-pro" as "gpt-5", ten times too cheap; a name not listed
  stays unknown until listed or overridden.

Which provider's price: the one asked for (`lookup(model, provider="anthropic")`, or the name
"anthropic/claude-..."), then the providers it falls back to (Azure OpenAI: OpenAI's). A name
without a provider is OpenAI's if OpenAI lists it, else that of the provider that makes models
so named ("claude-..." Anthropic, "gemini-..." Google, "mistral-..." Mistral: genai-prices'
rule); a model only hosts serve (Groq, Together, OpenRouter) needs its provider.

Pure: no I/O beyond reading the package's own data file once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from ipychat.core.pricedata import (
    MAX_PRICE,
    MAX_WINDOW,
    ModelPrice,
    PriceTier,
    ProviderPrices,
    TableData,
    normalize_model,
    optional_price,
    parse_table,
    price_value,
    snapshot_keys,
    window_value,
)

if TYPE_CHECKING:  # annotations only: core.types imports core.format, which imports this
    from ipychat.core.types import Usage

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "LOCAL_PRICE",
    "MAX_PRICE",
    "MAX_WINDOW",
    "ModelPrice",
    "PriceTable",
    "PriceTier",
    "context_window",
    "cost",
    "default_table",
    "estimate_cost_range",
    "format_tokens",
    "format_usd",
    "format_usd_bound",
    "max_output_tokens",
    "round_up_usd",
]

# For models we know nothing about: the smallest window any current chat model has, so that
# history trimming keeps a request that fits rather than one the server rejects.
DEFAULT_CONTEXT_WINDOW: Final = 8_192
DEFAULT_MAX_OUTPUT_TOKENS: Final = 4_096

PER_TOKENS: Final = 1_000_000  # prices are per 1M tokens

LOCAL_PRICE: Final = ModelPrice("local", 0.0, 0.0, 0.0, 0.0, 0.0, source="local")


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@cache
def _package_data() -> TableData:
    """The shipped table, read and validated once per process."""
    text = (resources.files("ipychat") / "data" / "prices.json").read_text(encoding="utf-8")
    return parse_table(json.loads(text))


def _override_keys(name: str, provider: str | None, known: Callable[[str], bool]) -> list[str]:
    """Override names that apply to `name` (on `provider`), most specific first: the
    provider-qualified name, the name, each without a dated-snapshot suffix; for a name with
    a provider path ("openai/gpt-4o", "openrouter/openai/o3-mini"), the same for the rest."""
    names = [f"{provider}/{name}", name] if provider else [name]
    head, _, tail = name.partition("/")
    while tail and known(head):
        names.append(tail)
        head, _, tail = tail.partition("/")
    return [key for n in names for key in snapshot_keys(n)]


class PriceTable:
    """Model prices: the shipped table plus the user's overrides (which win).

    Reads are lock-free: `override` replaces the overrides mapping instead of mutating it, so a
    lookup on the session's event-loop thread never sees a half-made change.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        # The shipped table is read on the first lookup, not here: a session is made when
        # the extension loads, and most sessions price one or two models.
        self._table = None if data is None else parse_table(data)
        self._overrides: Mapping[str, ModelPrice] = MappingProxyType({})
        # Lookups memoised per overrides mapping: %%chatmap looks up the same model for
        # every row, and an override replaces the mapping, which retires the memo with it.
        self._memo: tuple[
            Mapping[str, ModelPrice], dict[tuple[str, bool, str | None], ModelPrice | None]
        ] = (self._overrides, {})

    def __repr__(self) -> str:
        return (
            f"<PriceTable as of {self.as_of}: {len(self._default.models)} models, "
            f"{len(self._overrides)} overrides>"
        )

    @property
    def _data(self) -> TableData:
        table = self._table
        if table is None:
            table = self._table = _package_data()
        return table

    @property
    def as_of(self) -> str:
        """The day the table's list prices were in force (YYYY-MM-DD)."""
        return self._data.as_of

    @property
    def source(self) -> str:
        """Where the table's prices come from (genai-prices and its version)."""
        return self._data.source

    @property
    def currency(self) -> str:
        return self._data.currency

    @property
    def overrides(self) -> dict[str, ModelPrice]:
        return dict(self._overrides)

    @property
    def _default(self) -> ProviderPrices:
        return self._data.provider(self._data.default_provider)

    def models(self, provider: str | None = None) -> list[str]:
        """The listed model names (not aliases), sorted: the default provider's (OpenAI's), or
        `provider`'s; [] for a provider the table does not know."""
        if provider is None:
            return sorted(self._default.models)
        name = provider.strip().lower()
        return sorted(self._data.provider(name).models) if self._data.knows(name) else []

    def providers(self) -> list[str]:
        """The providers with prices, the default one (OpenAI) first."""
        return self._data.names

    def lookup(
        self, model: str, *, is_local: bool = False, provider: str | None = None
    ) -> ModelPrice | None:
        """The price of `model` (on `provider`), or None when unknown (never a made-up 0).

        Order: a user override ("provider/model", then the name; exact or dated snapshot);
        then 0 for a local model (`is_local` or the name "local"); then the table. `provider`
        is a name of `providers()` ("anthropic", "azure"...); one the table does not know
        (a local server's, say) is looked up as if none was given.
        """
        overrides, memo = self._memo
        if overrides is not self._overrides:
            overrides, memo = self._memo = (self._overrides, {})
        if isinstance(model, str) and (provider is None or isinstance(provider, str)):
            key = (model, is_local, provider)
            try:
                return memo[key]
            except KeyError:
                price = memo[key] = self._lookup(model, is_local, provider)
                return price
        return self._lookup(model, is_local, provider)

    def _lookup(self, model: str, is_local: bool, provider: str | None) -> ModelPrice | None:
        if not isinstance(model, str) or not model.strip():
            return LOCAL_PRICE if is_local else None
        name = model.strip().lower()
        known = provider.strip().lower() if isinstance(provider, str) else ""
        known = known if self._data.knows(known) else ""
        overrides = self._overrides  # one read: consistent even if overridden meanwhile
        for key in _override_keys(name, known or None, self._data.knows):
            if key in overrides:
                return overrides[key]
        if is_local or name == "local":
            return LOCAL_PRICE
        return self._on(known, name) if known else self._anywhere(name)

    def _on(self, provider: str, name: str) -> ModelPrice | None:
        """`name` on `provider`: its table, the tables it falls back to, and for a name with a
        provider path ("openai/o3-mini" on OpenRouter), that provider's."""
        prices = self._data.provider(provider)
        for table in (prices, *(self._data.provider(f) for f in prices.fallback)):
            price = table.find(name)
            if price is not None:
                return price
        head, _, tail = name.partition("/")
        if tail and self._data.knows(head):
            return self._on(head, tail)
        return None

    def _anywhere(self, name: str) -> ModelPrice | None:
        """A name without a provider: "provider/model", the default provider's, or the
        provider that makes models so named."""
        head, _, tail = name.partition("/")
        if tail and self._data.knows(head):
            return self._on(head, tail)
        price = self._default.find(name)
        if price is not None:
            return price
        maker = self._data.maker(name)
        return self._on(maker, name) if maker else None

    def override(
        self,
        model: str,
        input: float | str,
        output: float | str,
        cached_input: float | str | None = None,
        batch_input: float | str | None = None,
        batch_output: float | str | None = None,
        context_window: int | str | None = None,
        max_output_tokens: int | str | None = None,
    ) -> ModelPrice:
        """Set the price of `model` (USD per 1M tokens); wins over the table from now on.

        Applies to the name and its dated snapshots; "provider/model" applies to the model on
        that provider only. Prices left out are unknown for this model (cached tokens bill at
        `input`, no batch estimate); a context window or max output left out is kept from the
        table when the model is listed. Numbers may be given as strings ("2.50", "$2.50"), as
        typed after `%chat price`. Raises ConfigError when a value is negative, not a number,
        or absurdly large.
        """
        key = normalize_model(model)
        listed = self._anywhere(key)
        price = ModelPrice(
            model=key,
            input=price_value(input, "input", key),
            output=price_value(output, "output", key),
            cached_input=optional_price(cached_input, "cached input", key),
            batch_input=optional_price(batch_input, "batch input", key),
            batch_output=optional_price(batch_output, "batch output", key),
            context_window=window_value(context_window, "context window", key),
            max_output_tokens=window_value(max_output_tokens, "max output tokens", key),
            source="override",
        )
        if listed is not None:
            price = replace(
                price,
                context_window=price.context_window or listed.context_window,
                max_output_tokens=price.max_output_tokens or listed.max_output_tokens,
            )
        self._overrides = MappingProxyType({**self._overrides, key: price})
        return price

    def remove_override(self, model: str) -> bool:
        """Drop the user's price for `model`; True if there was one."""
        key = normalize_model(model)
        if key not in self._overrides:
            return False
        self._overrides = MappingProxyType({k: v for k, v in self._overrides.items() if k != key})
        return True

    def context_window(
        self, model: str, *, is_local: bool = False, provider: str | None = None
    ) -> int:
        """Context window in tokens; DEFAULT_CONTEXT_WINDOW (8,192) when not known."""
        price = self.lookup(model, is_local=is_local, provider=provider)
        return (price and price.context_window) or DEFAULT_CONTEXT_WINDOW

    def max_output_tokens(
        self, model: str, *, is_local: bool = False, provider: str | None = None
    ) -> int:
        """Largest reply in tokens; DEFAULT_MAX_OUTPUT_TOKENS (4,096) when not known, and never
        more than the context window."""
        price = self.lookup(model, is_local=is_local, provider=provider)
        limit = (price and price.max_output_tokens) or DEFAULT_MAX_OUTPUT_TOKENS
        return min(limit, self.context_window(model, is_local=is_local, provider=provider))

    def describe(self, model: str, *, is_local: bool = False, provider: str | None = None) -> str:
        """One line for people: the price of `model` and where it comes from, with the table's
        as-of date, or that it is unknown and how to set it."""
        price = self.lookup(model, is_local=is_local, provider=provider)
        if price is None:
            return (
                f"{model}: price unknown (not in the price table of {self.as_of}); set it with "
                "%chat price MODEL INPUT OUTPUT (USD per 1M tokens)"
            )
        if price.source == "local":
            return f"{model}: local model, $0"
        text = f"{model}: {_rates(price)}"
        for tier in price.tiers:
            text += f"; over {tier.above:,} prompt tokens {_rates(tier)}"
        if price.source == "override":
            return f"{text} (your price)"
        on = f" on {price.provider}" if price.provider else ""
        return f"{text} (list price{on} as of {self.as_of}, {self.source.split(' (')[0]})"


def _rates(price: ModelPrice | PriceTier) -> str:
    text = f"${price.input:g} in, ${price.output:g} out per 1M tokens"
    if price.cached_input is not None:
        text += f", cached ${price.cached_input:g}"
    if price.batch_input is not None and price.batch_output is not None:
        text += f", batch ${price.batch_input:g}/${price.batch_output:g}"
    return text


@cache
def default_table() -> PriceTable:
    """The process-wide table (the kernel's one session keeps its overrides here)."""
    return PriceTable()


def context_window(model: str, *, is_local: bool = False, provider: str | None = None) -> int:
    """`default_table().context_window(model)`: 8,192 for unknown models."""
    return default_table().context_window(model, is_local=is_local, provider=provider)


def max_output_tokens(model: str, *, is_local: bool = False, provider: str | None = None) -> int:
    """`default_table().max_output_tokens(model)`: 4,096 for unknown models."""
    return default_table().max_output_tokens(model, is_local=is_local, provider=provider)


# --------------------------------------------------------------------------------------------
# Costs
# --------------------------------------------------------------------------------------------


def cost(usage: Usage | None, price: ModelPrice | None) -> float | None:
    """USD for a finished request: (prompt − cached)·input + cached·cached_input +
    completion·output, per 1M tokens. None when the price (or the usage) is unknown."""
    if usage is None or price is None:
        return None
    prompt = max(usage.prompt_tokens, 0)
    price = price.for_prompt(prompt)  # a long-context tier, if the prompt is past one
    cached = min(max(usage.cached_tokens, 0), prompt)  # a server bug must not make money
    cached_rate = price.input if price.cached_input is None else price.cached_input
    return (
        (prompt - cached) * price.input
        + cached * cached_rate
        + max(usage.completion_tokens, 0) * price.output
    ) / PER_TOKENS


def estimate_cost_range(
    prompt_tokens: int, max_completion_tokens: int, price: ModelPrice | None
) -> tuple[float | None, float | None, float | None]:
    """(low, high, batch) USD before sending.

    low: a one-token reply; high: a reply of `max_completion_tokens` (for reasoning models the
    hidden reasoning tokens count here too); batch: the high bound at Batch API prices, None
    when the model has none. No cache discount is assumed, so `high` is a true upper bound for
    the given token counts; everything is None when the price is unknown.
    """
    if price is None:
        return None, None, None
    prompt = max(prompt_tokens, 0)
    completion = max(max_completion_tokens, 0)
    price = price.for_prompt(prompt)  # a long-context tier, if the prompt is past one
    low = (prompt * price.input + min(1, completion) * price.output) / PER_TOKENS
    high = (prompt * price.input + completion * price.output) / PER_TOKENS
    batch = None
    if price.batch_input is not None and price.batch_output is not None:
        batch = (prompt * price.batch_input + completion * price.batch_output) / PER_TOKENS
    return low, high, batch


# --------------------------------------------------------------------------------------------
# Formatting (every view writes money and token counts the same way)
# --------------------------------------------------------------------------------------------


def format_usd(amount: float | None) -> str:
    """Money as every view shows it: "$1.23", "$1,234.50", "$0.00012" (two significant digits
    under a cent), "$0.00", "<$0.000001", or "unknown" for None (never shown as $0)."""
    if amount is None or not math.isfinite(amount):
        return "unknown"
    sign = "-" if amount < 0 else ""
    x = abs(amount)
    if x == 0:
        return "$0.00"
    if x >= 0.01:
        return f"{sign}${x:,.2f}"
    if x < 0.000001:
        return f"{sign}<$0.000001"
    decimals = 1 - math.floor(math.log10(x))  # two significant digits
    # Under a cent at least two decimals stay after the zeros go: 0.00012, 0.005, 0.01.
    return f"{sign}${x:.{decimals}f}".rstrip("0")


def round_up_usd(amount: float) -> str:
    """An amount as a number to type after `%chat budget` or `--max-cost`: rounded up to two
    significant digits, written out in full (0.014, 0.19, 13, 1300), never 1.4e-05."""
    if not math.isfinite(amount) or amount <= 0:
        return "0"
    decimals = 1 - math.floor(math.log10(amount))  # two significant digits
    step = 10.0**-decimals
    # A hair below the multiple: 0.013 stays 0.013 despite floating-point noise.
    value = math.ceil(amount / step - 1e-9) * step
    return f"{value:.{max(decimals, 0)}f}"


def format_usd_bound(amount: float | None) -> str:
    """An upper bound: like format_usd, but under $1 two significant digits rounded up, so
    that "$0.013" does not read "$0.01" (as if it fitted a $0.01 budget)."""
    if amount is None or not math.isfinite(amount) or not 0.000001 <= amount < 1:
        return format_usd(amount)
    whole, _, frac = round_up_usd(amount).partition(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"


def _compact(n: int) -> str:
    for size, binary, suffix in ((1_000_000, 1 << 20, "M"), (1_000, 1 << 10, "k")):
        if n >= size - size // 2000:  # 999,999 rounds to "1M", not "1000k"
            # Powers of two are read in binary units by custom (8192 is "8k", 32768 "32k"),
            # the rest in decimal (128000 is "128k", not "125k").
            value = n / (binary if n & (n - 1) == 0 else size)
            text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")
            return text + suffix
    return str(n)


def format_tokens(n: int, approximate: bool = False, *, compact: bool = False) -> str:
    """A token count: "412", "≈412", "12,345"; `compact` (context windows): "8k", "128k", "1M"."""
    text = _compact(n) if compact else f"{n:,}"
    return f"≈{text}" if approximate else text
