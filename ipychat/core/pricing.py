"""Prices per model, the cost of a request, and how money and token counts are written.

The table is `ipychat/data/prices.json` (USD per 1M tokens, with an as-of date). Users add or
correct prices with `PriceTable.override` (`%chat price MODEL INPUT OUTPUT`); an override wins.

Three rules keep a budget honest:
- an unknown model costs *unknown* (`None`), never 0, so a typo cannot make a request look free;
- a local model (the name "local", or `is_local=True` for a local endpoint) costs 0;
- a name resolves to a listed model only exactly, through an alias, or as a *dated snapshot*
  of it ("gpt-4o-2024-08-06" → "gpt-4o", "gpt-3.5-turbo-0125" → "gpt-3.5-turbo"). Plain
  longest-prefix matching would price "o3-pro" as "o3" and "gpt-5-pro" as "gpt-5", ten times
  too cheap; those stay unknown until listed or overridden.

Pure: no I/O beyond reading the package's own data file once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from ipychat.core.errors import ConfigError

if TYPE_CHECKING:  # annotations only: core.types imports core.format, which imports this
    from ipychat.core.types import Usage

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "LOCAL_PRICE",
    "ModelPrice",
    "PriceTable",
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
# Far above any list price (o1-pro output is 600). A larger number is a unit mistake
# (per token, per 1K?) or a typo, and would silently wreck every estimate.
MAX_PRICE: Final = 10_000.0
MAX_WINDOW: Final = 100_000_000

_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")  # -2024-08-06, -0125


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens for one model; `None` where the table has no such price.

    `cached_input` None means no cache discount (cached tokens bill at `input`). `source` says
    where it came from: "table", "override" or "local".
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


LOCAL_PRICE: Final = ModelPrice("local", 0.0, 0.0, 0.0, 0.0, 0.0, source="local")


# --------------------------------------------------------------------------------------------
# Validation (shared by the data file and user overrides)
# --------------------------------------------------------------------------------------------


def _price(value: Any, what: str, model: str) -> float:
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


def _optional_price(value: Any, what: str, model: str) -> float | None:
    return None if value is None else _price(value, what, model)


def _window(value: Any, what: str, model: str) -> int | None:
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


def _normalize(model: Any) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"Invalid model name {model!r}; pass the model's name, e.g. gpt-4o-mini")
    return model.strip().lower()


def _from_entry(model: str, entry: Mapping[str, Any]) -> ModelPrice:
    """A model of the table file (`source` "table")."""
    return ModelPrice(
        model=model,
        input=_price(entry.get("input"), "input", model),
        output=_price(entry.get("output"), "output", model),
        cached_input=_optional_price(entry.get("cached_input"), "cached input", model),
        batch_input=_optional_price(entry.get("batch_input"), "batch input", model),
        batch_output=_optional_price(entry.get("batch_output"), "batch output", model),
        context_window=_window(entry.get("context_window"), "context window", model),
        max_output_tokens=_window(entry.get("max_output_tokens"), "max output tokens", model),
    )


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    as_of: str
    currency: str
    models: Mapping[str, ModelPrice]
    aliases: Mapping[str, str]


def _parse(data: Mapping[str, Any]) -> _Data:
    models = {
        _normalize(name): _from_entry(_normalize(name), entry)
        for name, entry in (data.get("models") or {}).items()
    }
    aliases = {_normalize(k): _normalize(v) for k, v in (data.get("aliases") or {}).items()}
    for alias, target in aliases.items():
        if target not in models:
            raise ConfigError(f"Price alias {alias} points to unlisted model {target}")
    return _Data(
        as_of=str(data.get("as_of", "")),
        currency=str(data.get("currency", "USD")),
        models=MappingProxyType(models),
        aliases=MappingProxyType(aliases),
    )


@cache
def _package_data() -> _Data:
    """The shipped table, read and validated once per process."""
    text = (resources.files("ipychat") / "data" / "prices.json").read_text(encoding="utf-8")
    return _parse(json.loads(text))


def _keys(model: str) -> list[str]:
    """Names to try for `model`, most specific first: as given, then without a dated-snapshot
    suffix, then the same for the name without an "openai/" provider path."""
    names = [model]
    parts = model.split("/")
    if len(parts) > 1 and parts[-2] == "openai":  # openai/gpt-4o, openrouter/openai/gpt-4o
        names.append(parts[-1])
    keys: list[str] = []
    for name in names:
        keys.append(name)
        base = _SNAPSHOT.sub("", name)
        if base != name:
            keys.append(base)
    return keys


class PriceTable:
    """Model prices: the shipped table plus the user's overrides (which win).

    Reads are lock-free: `override` replaces the overrides mapping instead of mutating it, so a
    lookup on the session's event-loop thread never sees a half-made change.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = _package_data() if data is None else _parse(data)
        self._overrides: Mapping[str, ModelPrice] = MappingProxyType({})
        # Lookups memoised per overrides mapping: %%chatmap looks up the same model for
        # every row, and an override replaces the mapping, which retires the memo with it.
        self._memo: tuple[Mapping[str, ModelPrice], dict[tuple[str, bool], ModelPrice | None]] = (
            self._overrides,
            {},
        )

    def __repr__(self) -> str:
        return (
            f"<PriceTable as of {self.as_of}: {len(self._data.models)} models, "
            f"{len(self._overrides)} overrides>"
        )

    @property
    def as_of(self) -> str:
        return self._data.as_of

    @property
    def currency(self) -> str:
        return self._data.currency

    @property
    def overrides(self) -> dict[str, ModelPrice]:
        return dict(self._overrides)

    def models(self) -> list[str]:
        """The listed model names (not aliases), sorted."""
        return sorted(self._data.models)

    def lookup(self, model: str, *, is_local: bool = False) -> ModelPrice | None:
        """The price of `model`, or None when unknown (never a made-up 0).

        Order: a user override (exact or dated snapshot); then 0 for a local model (`is_local`
        or the name "local"); then the table (exact, alias, or dated snapshot).
        """
        overrides, memo = self._memo
        if overrides is not self._overrides:
            overrides, memo = self._memo = (self._overrides, {})
        if isinstance(model, str):
            try:
                return memo[(model, is_local)]
            except KeyError:
                price = memo[(model, is_local)] = self._lookup(model, is_local)
                return price
        return self._lookup(model, is_local)

    def _lookup(self, model: str, is_local: bool) -> ModelPrice | None:
        if not isinstance(model, str) or not model.strip():
            return LOCAL_PRICE if is_local else None
        keys = _keys(model.strip().lower())
        overrides = self._overrides  # one read: consistent even if overridden meanwhile
        for key in keys:
            if key in overrides:
                return overrides[key]
        if is_local or keys[0] == "local":
            return LOCAL_PRICE
        return self._table_entry(keys)

    def _table_entry(self, keys: list[str]) -> ModelPrice | None:
        for key in keys:
            key = self._data.aliases.get(key, key)
            if key in self._data.models:
                return self._data.models[key]
        return None

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

        Applies to the name and its dated snapshots. Prices left out are unknown for this
        model (cached tokens bill at `input`, no batch estimate); a context window or max output
        left out is kept from the table when the model is listed. Numbers may be given as
        strings ("2.50", "$2.50"), as typed after `%chat price`. Raises ConfigError when a value
        is negative, not a number, or absurdly large.
        """
        key = _normalize(model)
        listed = self._table_entry(_keys(key))
        price = ModelPrice(
            model=key,
            input=_price(input, "input", key),
            output=_price(output, "output", key),
            cached_input=_optional_price(cached_input, "cached input", key),
            batch_input=_optional_price(batch_input, "batch input", key),
            batch_output=_optional_price(batch_output, "batch output", key),
            context_window=_window(context_window, "context window", key),
            max_output_tokens=_window(max_output_tokens, "max output tokens", key),
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
        key = _normalize(model)
        if key not in self._overrides:
            return False
        self._overrides = MappingProxyType({k: v for k, v in self._overrides.items() if k != key})
        return True

    def context_window(self, model: str, *, is_local: bool = False) -> int:
        """Context window in tokens; DEFAULT_CONTEXT_WINDOW (8,192) when not known."""
        price = self.lookup(model, is_local=is_local)
        return (price and price.context_window) or DEFAULT_CONTEXT_WINDOW

    def max_output_tokens(self, model: str, *, is_local: bool = False) -> int:
        """Largest reply in tokens; DEFAULT_MAX_OUTPUT_TOKENS (4,096) when not known, and never
        more than the context window."""
        price = self.lookup(model, is_local=is_local)
        limit = (price and price.max_output_tokens) or DEFAULT_MAX_OUTPUT_TOKENS
        return min(limit, self.context_window(model, is_local=is_local))


@cache
def default_table() -> PriceTable:
    """The process-wide table (the kernel's one session keeps its overrides here)."""
    return PriceTable()


def context_window(model: str, *, is_local: bool = False) -> int:
    """`default_table().context_window(model)`: 8,192 for unknown models."""
    return default_table().context_window(model, is_local=is_local)


def max_output_tokens(model: str, *, is_local: bool = False) -> int:
    """`default_table().max_output_tokens(model)`: 4,096 for unknown models."""
    return default_table().max_output_tokens(model, is_local=is_local)


# --------------------------------------------------------------------------------------------
# Costs
# --------------------------------------------------------------------------------------------


def cost(usage: Usage | None, price: ModelPrice | None) -> float | None:
    """USD for a finished request: (prompt − cached)·input + cached·cached_input +
    completion·output, per 1M tokens. None when the price (or the usage) is unknown."""
    if usage is None or price is None:
        return None
    prompt = max(usage.prompt_tokens, 0)
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
