"""The price table, overrides, costs and the money/token formatting every view uses."""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from typing import Any

import pytest

from ipychat.core import pricing
from ipychat.core.errors import ConfigError
from ipychat.core.pricing import ModelPrice, PriceTable, cost, estimate_cost_range
from ipychat.core.types import Usage

REQUIRED = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o1",
    "o1-mini",
    "o3",
    "o3-mini",
    "o4-mini",
    "gpt-3.5-turbo",
    "gpt-4-turbo",
    "gpt-4",
]


@pytest.fixture
def table() -> PriceTable:
    return PriceTable()  # a fresh table: overrides never leak between tests


def raw_data() -> dict[str, Any]:
    text = (resources.files("ipychat") / "data" / "prices.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


# ---------------------------------------------------------------------------------------------
# The shipped table
# ---------------------------------------------------------------------------------------------


def test_shipped_table_header() -> None:
    data = raw_data()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["as_of"])
    assert (data["currency"], data["unit"]) == ("USD", "per 1M tokens")
    assert "override" in data["note"]
    assert PriceTable().as_of == data["as_of"]


@pytest.mark.parametrize("model", REQUIRED)
def test_shipped_table_is_consistent(model: str, table: PriceTable) -> None:
    price = table.lookup(model)
    assert price is not None and price.model == model and price.source == "table"
    assert 0 < price.input <= price.output
    assert price.cached_input is None or price.cached_input <= price.input
    if price.batch_input is not None:  # the Batch API is half price
        assert price.batch_input == pytest.approx(price.input / 2)
        assert price.batch_output == pytest.approx(price.output / 2)
    assert price.context_window and price.max_output_tokens
    assert price.max_output_tokens <= price.context_window


@pytest.mark.parametrize(
    ("model", "input", "cached", "output"),
    [
        ("gpt-4o-mini", 0.15, 0.075, 0.60),
        ("gpt-4o", 2.50, 1.25, 10.00),
        ("gpt-4.1", 2.00, 0.50, 8.00),
        ("gpt-4.1-mini", 0.40, 0.10, 1.60),
        ("gpt-4.1-nano", 0.10, 0.025, 0.40),
        ("gpt-5", 1.25, 0.125, 10.00),
        ("gpt-5-mini", 0.25, 0.025, 2.00),
        ("gpt-5-nano", 0.05, 0.005, 0.40),
        ("o3", 2.00, 0.50, 8.00),
        ("o4-mini", 1.10, 0.275, 4.40),
        ("o3-mini", 1.10, 0.55, 4.40),
        ("o1", 15.00, 7.50, 60.00),
        ("gpt-3.5-turbo", 0.50, None, 1.50),
    ],
)
def test_list_prices(
    model: str, input: float, cached: float | None, output: float, table: PriceTable
) -> None:
    price = table.lookup(model)
    assert price is not None
    assert (price.input, price.cached_input, price.output) == (input, cached, output)


def test_a_broken_table_is_refused() -> None:
    with pytest.raises(ConfigError, match="unlisted"):
        PriceTable({"models": {"a": {"input": 1, "output": 2}}, "aliases": {"b": "c"}})
    with pytest.raises(ConfigError, match="input price for a"):
        PriceTable({"models": {"a": {"input": -1, "output": 2}}})


FULL_ENTRY = {
    "input": 1,
    "output": "2.5",
    "cached_input": 0.5,
    "batch_input": 0.25,
    "batch_output": 1.25,
    "context_window": 100_000,
    "max_output_tokens": "8,192",
}


def test_a_table_is_read_as_written() -> None:
    """Every field of an entry, the header and the aliases (the shipped table is read once
    per process: this reads one built here)."""
    table = PriceTable(
        {
            "as_of": "2025-01-31",
            "currency": "EUR",
            "models": {"Model-A": FULL_ENTRY, "model-b": {"input": 3, "output": 4}},
            "aliases": {"A-Alias": "MODEL-A"},
        }
    )
    full = ModelPrice("model-a", 1.0, 2.5, 0.5, 0.25, 1.25, 100_000, 8_192, source="table")
    assert table.lookup("model-a") == table.lookup("a-alias") == full
    assert table.lookup("model-b") == ModelPrice("model-b", 3.0, 4.0)
    assert (table.as_of, table.currency, table.models()) == (
        "2025-01-31",
        "EUR",
        ["model-a", "model-b"],
    )
    assert repr(table) == "<PriceTable as of 2025-01-31: 2 models, 0 overrides>"
    table.override("model-b", 1, 1)
    assert repr(table) == "<PriceTable as of 2025-01-31: 2 models, 1 overrides>"


def test_an_empty_table_has_defaults_and_knows_no_model() -> None:
    table = PriceTable({})
    assert (table.as_of, table.currency, table.models()) == ("", "USD", [])
    assert table.lookup("gpt-4o") is None and table.lookup("local") == pricing.LOCAL_PRICE


@pytest.mark.parametrize(
    ("field", "said"),
    [
        ("input", "input price"),
        ("output", "output price"),
        ("cached_input", "cached input price"),
        ("batch_input", "batch input price"),
        ("batch_output", "batch output price"),
        ("context_window", "context window"),
        ("max_output_tokens", "max output tokens"),
    ],
)
def test_a_bad_field_in_the_table_is_named(field: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        PriceTable({"models": {"Model-A": {**FULL_ENTRY, field: "oops"}}})
    assert str(info.value).startswith(f"Invalid {said} for model-a: 'oops'; pass ")


@pytest.mark.parametrize(
    ("value", "price"),
    [("$1,234.50", 1234.5), (" 2.50 ", 2.5), (0, 0.0), (10_000, 10_000.0), ("10,000", 10_000.0)],
)
def test_prices_as_typed(value: Any, price: float, table: PriceTable) -> None:
    assert table.override("m", value, 1).input == price


@pytest.mark.parametrize("value", [10_000.01, "10,000.01", "1.2.3"])
def test_prices_over_the_limit_or_not_numbers_are_refused(value: Any, table: PriceTable) -> None:
    with pytest.raises(ConfigError, match=r"a number from 0 to 10,000 \(e\.g\. 2\.50\)$"):
        table.override("m", value, 1)


@pytest.mark.parametrize(
    ("value", "window"),
    [
        (1, 1),
        (8192.0, 8192),
        ("128,000", 128_000),
        ("1_000_000", 1_000_000),
        (" 4096 ", 4096),
        (100_000_000, 100_000_000),
    ],
)
def test_windows_as_typed(value: Any, window: int, table: PriceTable) -> None:
    assert table.override("m", 1, 1, context_window=value).context_window == window


@pytest.mark.parametrize("value", [100_000_001, "12k", "", True])
def test_windows_out_of_range_or_not_whole_numbers_are_refused(
    value: Any, table: PriceTable
) -> None:
    with pytest.raises(ConfigError, match=r"from 1 to 100,000,000 \(e\.g\. 128000\)$"):
        table.override("m", 1, 1, max_output_tokens=value)


# ---------------------------------------------------------------------------------------------
# Name resolution
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "resolved"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longer name wins
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # a snapshot with its own price
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("gpt-4-1106-preview", "gpt-4-turbo"),  # alias
        ("gpt-35-turbo", "gpt-3.5-turbo"),  # Azure spelling
        ("gpt-5-chat-latest", "gpt-5"),
        ("GPT-4o", "gpt-4o"),
        ("  gpt-4o-mini ", "gpt-4o-mini"),
        ("openai/gpt-4o", "gpt-4o"),
        ("openai/gpt-4.1-2025-04-14", "gpt-4.1"),
        ("openrouter/openai/o3-mini", "o3-mini"),
        # unknown: never guessed from a prefix (these cost far more than their prefix)
        ("o3-pro", None),
        ("gpt-5-pro", None),
        ("o1-pro-2025-03-19", None),
        ("gpt-4o-realtime-preview", None),
        ("gpt-4o-mini-tts", None),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc", None),
        ("azure/gpt-4o", None),
        ("llama3.2", None),
        ("claude-3-5-sonnet-latest", None),
        ("", None),
    ],
)
def test_lookup_resolution(model: str, resolved: str | None, table: PriceTable) -> None:
    price = table.lookup(model)
    assert (price.model if price else None) == resolved


def test_unknown_model_costs_unknown_never_zero(table: PriceTable) -> None:
    price = table.lookup("mistral-large-latest")
    assert price is None
    assert cost(Usage(1000, 100), price) is None
    assert estimate_cost_range(1000, 100, price) == (None, None, None)
    assert pricing.format_usd(cost(Usage(1000, 100), price)) == "unknown"


@pytest.mark.parametrize(
    ("model", "is_local"),
    [("local", False), ("LOCAL", False), ("llama3", True), ("gpt-4o", True), ("", True)],
)
def test_local_models_cost_zero(model: str, is_local: bool, table: PriceTable) -> None:
    price = table.lookup(model, is_local=is_local)
    assert price is not None and price.source == "local"
    assert cost(Usage(10_000, 5_000, 1_000), price) == 0.0
    assert estimate_cost_range(10_000, 5_000, price) == (0.0, 0.0, 0.0)
    assert pricing.format_usd(cost(Usage(1, 1), price)) == "$0.00"


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------


def test_override_wins_over_the_table(table: PriceTable) -> None:
    price = table.override("gpt-4o", input=3, output=12)
    assert price == ModelPrice(
        "gpt-4o", 3.0, 12.0, context_window=128_000, max_output_tokens=16_384, source="override"
    )
    assert table.lookup("gpt-4o") == price
    assert table.lookup("GPT-4o-2024-08-06") == price  # its snapshots too
    assert table.lookup("openai/gpt-4o") == price
    assert table.lookup("gpt-4o-2024-05-13") == price  # the user's word beats the table's
    assert table.lookup("gpt-4o-mini").source == "table"  # type: ignore[union-attr]
    # cached tokens bill at the overridden input price unless a cached price is given
    assert cost(Usage(1_000_000, 1_000_000, 500_000), price) == pytest.approx(3 + 12)
    assert table.overrides == {"gpt-4o": price}
    assert table.remove_override("GPT-4o") is True
    assert table.remove_override("gpt-4o") is False
    assert table.lookup("gpt-4o").source == "table"  # type: ignore[union-attr]


def test_override_makes_an_unknown_model_known(table: PriceTable) -> None:
    table.override(
        "together/llama-3-70b",
        input="$0.88",
        output="0.88",
        cached_input=0.5,
        batch_input=0.44,
        batch_output=0.44,
        context_window="8192",
        max_output_tokens=2048,
    )
    price = table.lookup("Together/Llama-3-70B")
    assert price == ModelPrice(
        "together/llama-3-70b", 0.88, 0.88, 0.5, 0.44, 0.44, 8192, 2048, source="override"
    )
    assert table.context_window("together/llama-3-70b") == 8192
    assert table.max_output_tokens("together/llama-3-70b") == 2048


def test_a_name_that_is_not_a_string_is_unknown_or_local(table: PriceTable) -> None:
    assert table.lookup(None) is None  # type: ignore[arg-type]
    assert table.lookup(None, is_local=True) == pricing.LOCAL_PRICE  # type: ignore[arg-type]
    assert table.lookup("   ") is None


def test_override_wins_over_local(table: PriceTable) -> None:
    table.override("llama3", input=0.1, output=0.2)
    assert table.lookup("llama3", is_local=True).source == "override"  # type: ignore[union-attr]


def test_overrides_stay_in_their_table() -> None:
    one, two = PriceTable(), PriceTable()
    one.override("gpt-4o", 1, 1)
    assert two.lookup("gpt-4o").source == "table"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": -1, "output": 1}, "input price"),
        ({"input": 1, "output": -0.01}, "output price"),
        ({"input": math.nan, "output": 1}, "input price"),
        ({"input": 1, "output": math.inf}, "output price"),
        ({"input": "abc", "output": 1}, "input price"),
        ({"input": True, "output": 1}, "input price"),
        ({"input": None, "output": 1}, "input price"),
        ({"input": 1e9, "output": 1}, "input price"),
        ({"input": 1, "output": 1, "cached_input": -1}, "cached input price"),
        ({"input": 1, "output": 1, "batch_input": "x"}, "batch input price"),
        ({"input": 1, "output": 1, "batch_output": "x"}, "batch output price"),
        ({"input": 1, "output": 1, "context_window": 0}, "context window"),
        ({"input": 1, "output": 1, "context_window": -5}, "context window"),
        ({"input": 1, "output": 1, "context_window": 1.5}, "context window"),
        ({"input": 1, "output": 1, "context_window": "big"}, "context window"),
        ({"input": 1, "output": 1, "max_output_tokens": 10**12}, "max output tokens"),
    ],
)
def test_invalid_overrides(kwargs: dict[str, Any], message: str, table: PriceTable) -> None:
    with pytest.raises(ConfigError, match=f"Invalid {message} for gpt-4o") as info:
        table.override("gpt-4o", **kwargs)
    text = str(info.value)
    assert "\n" not in text and "pass " in text  # one line, saying what to pass
    assert table.lookup("gpt-4o").source == "table"  # type: ignore[union-attr]


@pytest.mark.parametrize("model", ["", "   ", None, 42])
def test_invalid_override_model_name(model: Any, table: PriceTable) -> None:
    with pytest.raises(ConfigError, match=r"Invalid model name .*pass the model's name"):
        table.override(model, 1, 1)


# ---------------------------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------------------------


def test_cost_formula_with_cached_tokens(table: PriceTable) -> None:
    price = table.lookup("gpt-4o")  # 2.50 input, 1.25 cached, 10.00 output
    usage = Usage(prompt_tokens=1000, completion_tokens=500, cached_tokens=200)
    assert cost(usage, price) == pytest.approx((800 * 2.50 + 200 * 1.25 + 500 * 10.00) / 1e6)
    assert cost(Usage(1000, 500), price) == pytest.approx((1000 * 2.50 + 500 * 10.00) / 1e6)


def test_cost_without_a_cache_price_bills_cached_at_input(table: PriceTable) -> None:
    price = table.lookup("gpt-3.5-turbo")  # no cached price
    assert cost(Usage(1000, 0, 400), price) == pytest.approx(1000 * 0.50 / 1e6)


def test_cost_clamps_nonsense_usage(table: PriceTable) -> None:
    price = table.lookup("gpt-4o-mini")
    assert cost(Usage(100, 0, cached_tokens=500), price) == pytest.approx(100 * 0.075 / 1e6)
    assert cost(Usage(-5, -5, -5), price) == 0.0
    assert cost(None, price) is None


def test_estimate_cost_range(table: PriceTable) -> None:
    price = table.lookup("gpt-4o-mini")  # 0.15 / 0.60, batch 0.075 / 0.30
    low, high, batch = estimate_cost_range(1000, 500, price)
    assert low == pytest.approx((1000 * 0.15 + 1 * 0.60) / 1e6)
    assert high == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert batch == pytest.approx((1000 * 0.075 + 500 * 0.30) / 1e6)
    assert estimate_cost_range(1000, 0, price) == pytest.approx(
        (1000 * 0.15 / 1e6, 1000 * 0.15 / 1e6, 1000 * 0.075 / 1e6)
    )  # no reply tokens allowed: not even the one of the low bound
    assert estimate_cost_range(0, 0, price) == (0.0, 0.0, 0.0)
    assert estimate_cost_range(-5, -5, price) == (0.0, 0.0, 0.0)
    no_batch = table.lookup("chatgpt-4o-latest")
    assert estimate_cost_range(1000, 500, no_batch)[2] is None
    half = ModelPrice("half", 1.0, 2.0, batch_input=0.5)  # a batch price for input only
    assert estimate_cost_range(1000, 500, half)[2] is None


def test_high_estimate_bounds_every_actual_cost(table: PriceTable) -> None:
    price = table.lookup("o4-mini")
    _, high, _ = estimate_cost_range(2000, 300, price)
    for completion in (0, 1, 150, 300):
        for cached in (0, 1000, 2000):
            assert cost(Usage(2000, completion, cached), price) <= high  # type: ignore[operator]


def test_context_window_and_max_output(table: PriceTable) -> None:
    assert table.context_window("gpt-4o-2024-08-06") == 128_000
    assert table.max_output_tokens("gpt-4o") == 16_384
    assert table.context_window("gpt-4.1-mini") == 1_047_576
    assert table.context_window("some-local-model") == pricing.DEFAULT_CONTEXT_WINDOW == 8_192
    assert table.max_output_tokens("some-local-model") == pricing.DEFAULT_MAX_OUTPUT_TOKENS
    assert table.context_window("local") == 8_192
    assert pricing.context_window("gpt-5") == 400_000  # module functions: the default table
    assert pricing.max_output_tokens("gpt-5") == 128_000
    assert pricing.default_table() is pricing.default_table()
    table.override("tiny", 0, 0, context_window=2048)
    assert table.max_output_tokens("tiny") == 2048  # never more than the window


def test_a_local_endpoint_has_the_default_window_whatever_the_name() -> None:
    """A model served locally is not the listed model of the same name: its window is
    unknown (8,192), so history is trimmed to fit a small local context."""
    table = PriceTable()
    assert table.context_window("gpt-4o") == 128_000
    assert table.context_window("gpt-4o", is_local=True) == 8_192
    assert table.max_output_tokens("gpt-4o", is_local=True) == 4_096
    table.override("gpt-4o", 1, 1, context_window=2048)
    assert table.max_output_tokens("gpt-4o", is_local=True) == 2048  # the override's window
    small = PriceTable({"models": {"tiny": {"input": 1, "output": 1, "context_window": 2048}}})
    assert small.max_output_tokens("tiny") == 2048
    assert small.max_output_tokens("tiny", is_local=True) == 4_096  # of 8,192, not 2,048
    assert pricing.context_window("gpt-5", is_local=True) == 8_192
    assert pricing.max_output_tokens("gpt-5", is_local=True) == 4_096


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (None, "unknown"),
        (math.nan, "unknown"),
        (0, "$0.00"),
        (0.0, "$0.00"),
        (0.000123, "$0.00012"),
        (0.0001, "$0.0001"),
        (0.005, "$0.005"),
        (0.00999, "$0.01"),
        (0.01, "$0.01"),
        (0.0456, "$0.05"),  # from a cent: two decimals
        (0.000001, "$0.000001"),
        (-0.00012, "-$0.00012"),
        (1.234, "$1.23"),
        (1.235001, "$1.24"),
        (1234.5, "$1,234.50"),
        (1e-9, "<$0.000001"),
        (-0.5, "-$0.50"),
    ],
)
def test_format_usd(amount: float | None, text: str) -> None:
    assert pricing.format_usd(amount) == text


@pytest.mark.parametrize(
    ("n", "approximate", "compact", "text"),
    [
        (412, False, False, "412"),
        (412, True, False, "≈412"),
        (0, False, False, "0"),
        (12_345, False, False, "12,345"),
        (999, False, True, "999"),
        (1_000, False, True, "1k"),
        (10_400, False, True, "10k"),
        (999_499, False, True, "999k"),
        (999_500, False, True, "1M"),  # would be "1000k"
        (1_048_576, False, True, "1M"),  # 2**20
        (2_097_152, False, True, "2M"),
        (2_500, False, True, "2.5k"),
        (8_192, False, True, "8k"),
        (16_385, False, True, "16k"),
        (32_768, False, True, "32k"),
        (128_000, False, True, "128k"),
        (128_000, True, True, "≈128k"),
        (400_000, False, True, "400k"),
        (999_999, False, True, "1M"),
        (1_047_576, False, True, "1M"),
        (2_000_000, False, True, "2M"),
    ],
)
def test_format_tokens(n: int, approximate: bool, compact: bool, text: str) -> None:
    assert pricing.format_tokens(n, approximate, compact=compact) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0.0134, "0.014"),  # up, to two significant digits
        (0.013, "0.013"),  # exact: floating-point noise does not round it up
        (0.181, "0.19"),
        (0.1, "0.10"),
        (1, "1.0"),
        (12.1, "13"),
        (99.5, "100"),
        (1234, "1300"),
        (1.4e-5, "0.000014"),  # written out, never 1.4e-05
        (0, "0"),
        (-1, "0"),
        (math.nan, "0"),
        (math.inf, "0"),
    ],
)
def test_round_up_usd(amount: float, text: str) -> None:
    assert pricing.round_up_usd(amount) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0.013, "$0.013"),  # not "$0.01", as if it fitted a $0.01 budget
        (0.0134, "$0.014"),
        (0.123, "$0.13"),
        (0.5, "$0.50"),
        (0.1, "$0.10"),
        (0.9999, "$1.00"),
        (0.000001, "$0.000001"),
        (5e-7, "<$0.000001"),  # under the smallest shown amount: as format_usd
        (1.5, "$1.50"),  # from $1 on, as format_usd
        (1.234, "$1.23"),
        (1234.561, "$1,234.56"),
        (0, "$0.00"),
        (None, "unknown"),
        (math.nan, "unknown"),
    ],
)
def test_format_usd_bound(amount: float | None, text: str) -> None:
    assert pricing.format_usd_bound(amount) == text


def test_format_tokens_is_exact_and_in_full_by_default() -> None:
    assert pricing.format_tokens(128_000) == "128,000"
