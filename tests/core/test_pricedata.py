"""ipychat.core.pricedata on its own: the checks every price and window goes through (the
file's and the user's), dated snapshot names, long-context tiers, a provider's lookups and
the price file's sections. tests/core/test_pricing.py tests the same through `PriceTable`;
this file pins what a mutation of the module showed unpinned (`python tools/mutation.py
core.pricedata --tests tests/core/test_pricing.py --tests tests/core/test_pricedata.py`)."""

from __future__ import annotations

from typing import Any

import pytest

from ipychat.core.errors import ConfigError
from ipychat.core.pricedata import (
    ModelPrice,
    PriceTier,
    ProviderPrices,
    normalize_model,
    optional_price,
    parse_table,
    price_value,
    snapshot_keys,
    window_value,
)

PRICE_HINT = "pass USD per 1M tokens, a number from 0 to 10,000 (e.g. 2.50)"
WINDOW_HINT = "pass a whole number of tokens from 1 to 100,000,000 (e.g. 128000)"


@pytest.mark.parametrize(
    ("value", "number"),
    [(0, 0.0), (10_000, 10_000.0), (2.5, 2.5), (" 2.5 ", 2.5), ("$1,234.50", 1234.5), ("0", 0.0)],
)
def test_prices_as_typed(value: Any, number: float) -> None:
    assert price_value(value, "input", "m") == number
    assert isinstance(price_value(value, "input", "m"), float)


@pytest.mark.parametrize(
    "value", ["x", "", True, float("nan"), float("inf"), -1, -0.01, 10_000.01, "1$", None, [1]]
)
def test_bad_prices_are_refused_naming_the_model_and_the_price(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        price_value(value, "cached input", "gpt-x")
    assert str(caught.value) == f"Invalid cached input price for gpt-x: {value!r}; {PRICE_HINT}"


def test_an_optional_price_may_be_none() -> None:
    assert optional_price(None, "batch input", "m") is None
    assert optional_price("1.25", "batch input", "m") == 1.25
    with pytest.raises(ConfigError, match="Invalid batch input price for m: -1;"):
        optional_price(-1, "batch input", "m")


@pytest.mark.parametrize(
    ("value", "window"),
    [
        (None, None),
        (1, 1),
        (1.0, 1),
        (128_000.0, 128_000),
        ("128,000", 128_000),
        ("128_000", 128_000),
        (" 12 ", 12),
        (100_000_000, 100_000_000),
    ],
)
def test_windows_as_typed(value: Any, window: int | None) -> None:
    assert window_value(value, "context window", "m") == window


@pytest.mark.parametrize(
    "value", [0, -5, 1.5, "1e3", "abc", "", "-5", True, 100_000_001, float("inf"), [1]]
)
def test_bad_windows_are_refused(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        window_value(value, "max output tokens", "gpt-x")
    assert str(caught.value) == f"Invalid max output tokens for gpt-x: {value!r}; {WINDOW_HINT}"


def test_model_names_are_trimmed_and_lower_case() -> None:
    assert normalize_model(" GPT-4o ") == "gpt-4o"
    for bad in ("", "  ", None, 4):
        with pytest.raises(ConfigError) as caught:
            normalize_model(bad)
        assert str(caught.value) == (
            f"Invalid model name {bad!r}; pass the model's name, e.g. gpt-4o-mini"
        )


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("gpt-4o-2024-08-06", ["gpt-4o-2024-08-06", "gpt-4o"]),
        ("gpt-3.5-turbo-0125", ["gpt-3.5-turbo-0125", "gpt-3.5-turbo"]),
        ("claude-sonnet-4-5-20250929", ["claude-sonnet-4-5-20250929", "claude-sonnet-4-5"]),
        ("claude-3-5@20241022", ["claude-3-5@20241022", "claude-3-5"]),
        ("gpt-4o", ["gpt-4o"]),
        ("-2024-08-06", ["-2024-08-06"]),  # nothing left: no base name
        ("gpt-4o-2024-08-06-x", ["gpt-4o-2024-08-06-x"]),  # not at the end
        ("x-19991231", ["x-19991231"]),  # eight digits that are no 20xx date
    ],
)
def test_snapshot_keys(name: str, keys: list[str]) -> None:
    assert snapshot_keys(name) == keys


def test_a_prompt_past_a_tier_is_priced_at_the_highest_tier_it_passes() -> None:
    tiers = (
        PriceTier(above=200_000, input=6.0, output=22.5, cached_input=0.6),
        PriceTier(above=500_000, input=9.0, output=30.0, batch_input=4.5, batch_output=15.0),
    )
    price = ModelPrice(
        "m", 3.0, 15.0, 0.3, 1.5, 7.5, 1_000_000, 64_000, "override", "anthropic", tiers
    )
    assert price.for_prompt(200_000) is price  # "more than `above`": at it, the base price
    assert price.for_prompt(0) is price
    assert price.for_prompt(200_001) == ModelPrice(
        "m", 6.0, 22.5, 0.6, None, None, 1_000_000, 64_000, "override", "anthropic"
    )
    assert price.for_prompt(900_000) == ModelPrice(
        "m", 9.0, 30.0, None, 4.5, 15.0, 1_000_000, 64_000, "override", "anthropic"
    )


def _table(**more: Any) -> dict[str, Any]:
    return {
        "as_of": "2025-01-02",
        "currency": "USD",
        "source": "genai-prices",
        "provider": "OpenAI",
        "models": {"GPT-A": {"input": 1, "output": 2}, "gpt-b": {"input": "3", "output": 4}},
        "aliases": {"Alias-A": "gpt-a"},
        "model_match": "^gpt-",
        "providers": {
            "Anthropic": {
                "models": {
                    "claude-x": {
                        "input": 3,
                        "output": 15,
                        "cached_input": 0.3,
                        "batch_input": 1.5,
                        "batch_output": 7.5,
                        "context_window": "200,000",
                        "max_output_tokens": 64000,
                        "tiers": [
                            {"above": 500_000, "input": 9, "output": 30},
                            {"above": 200_000, "input": 6, "output": 22.5, "cached_input": 0.6},
                        ],
                    }
                },
                "model_match": "^claude-",
            },
            "azure": {"models": {}, "fallback": ["OpenAI"]},
            "broken": {"models": {"m": {"input": -1, "output": 1}}},
        },
        **more,
    }


def test_the_table_header_sections_and_lookups() -> None:
    table = parse_table(_table())
    assert (table.as_of, table.currency, table.source) == ("2025-01-02", "USD", "genai-prices")
    assert table.default_provider == "openai"
    assert table.names == ["openai", "anthropic", "azure", "broken"]
    assert table.knows("anthropic") and not table.knows("Anthropic") and not table.knows("x")
    openai = table.provider("openai")
    assert openai.name == "openai" and openai.fallback == ()
    assert openai.models["gpt-a"] == ModelPrice("gpt-a", 1.0, 2.0, provider="openai")
    assert openai.aliases == {"alias-a": "gpt-a"}
    assert openai.find("alias-a") is openai.models["gpt-a"]
    assert openai.find("gpt-b-2024-08-06") is openai.models["gpt-b"]
    assert openai.find("alias-a-0125") is openai.models["gpt-a"]  # a snapshot of an alias
    assert openai.find("gpt-c") is None
    assert table.provider("azure").fallback == ("openai",)
    assert table.provider("openai") is openai  # parsed once
    with pytest.raises(KeyError):
        table.provider("nope")
    assert table.maker("gpt-b") == "openai"
    assert table.maker("claude-x-20250101") == "anthropic"
    assert table.maker("gemini-2.5") is None


def test_every_field_of_an_entry_and_its_tiers_in_order() -> None:
    claude = parse_table(_table()).provider("anthropic").models["claude-x"]
    assert claude == ModelPrice(
        "claude-x",
        3.0,
        15.0,
        0.3,
        1.5,
        7.5,
        200_000,
        64_000,
        "table",
        "anthropic",
        (
            PriceTier(200_000, 6.0, 22.5, 0.6),
            PriceTier(500_000, 9.0, 30.0),
        ),
    )


def test_a_providers_bad_values_are_refused_when_it_is_first_read() -> None:
    table = parse_table(_table())  # the default provider is read at once; "broken" is not
    with pytest.raises(ConfigError) as caught:
        table.provider("broken")
    assert str(caught.value) == f"Invalid input price for m: -1; {PRICE_HINT}"
    with pytest.raises(ConfigError, match="Invalid input price for gpt-a: -1;"):
        parse_table({**_table(), "models": {"gpt-a": {"input": -1, "output": 1}}})
    with pytest.raises(ConfigError, match="Invalid tier input price for t: 'x';"):
        parse_table({"models": {"t": {"input": 1, "output": 1, "tiers": [{"input": "x"}]}}})


def test_an_alias_to_an_unlisted_model_and_an_unknown_fallback_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_table({"models": {"a": {"input": 1, "output": 1}}, "aliases": {"B": "C"}})
    assert str(caught.value) == "Price alias b points to unlisted model c"
    with pytest.raises(ConfigError) as caught:
        parse_table({"models": {}, "providers": {"azure": {"fallback": ["Nope"]}}})
    assert str(caught.value) == "Provider azure falls back to unknown Nope"


def test_a_minimal_table_has_defaults() -> None:
    table = parse_table({})
    assert (table.as_of, table.currency, table.source, table.default_provider) == (
        "",
        "USD",
        "",
        "",
    )
    assert table.names == [""]
    assert table.provider("") == ProviderPrices("", {}, {}, ())
    assert table.maker("gpt-4o") is None


def test_every_field_of_a_tier_and_its_refusals() -> None:
    entry = {
        "input": 1,
        "output": 2,
        "tiers": [
            {
                "above": "128,000",
                "input": 2,
                "output": 4,
                "cached_input": 0.2,
                "batch_input": 1,
                "batch_output": 2,
            },
            {"input": 1.5, "output": 3},  # no threshold: from the first token on
        ],
    }
    price = parse_table({"models": {"t": entry}}).provider("").models["t"]
    assert price.tiers == (
        PriceTier(0, 1.5, 3.0),
        PriceTier(128_000, 2.0, 4.0, 0.2, 1.0, 2.0),
    )
    for field, said, bad in [
        ("above", "tier threshold", 0),
        ("input", "tier input price", -1),
        ("output", "tier output price", -1),
        ("cached_input", "tier cached input price", -1),
        ("batch_input", "tier batch input price", -1),
        ("batch_output", "tier batch output price", -1),
    ]:
        tier = {"above": 10, "input": 1, "output": 1, field: bad}
        with pytest.raises(ConfigError) as caught:
            parse_table({"models": {"t": {"input": 1, "output": 1, "tiers": [tier]}}})
        hint = WINDOW_HINT if field == "above" else PRICE_HINT
        assert str(caught.value) == f"Invalid {said} for t: {bad!r}; {hint}"
