"""The price table, overrides, costs and the money/token formatting every view uses."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from datetime import date, datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ipychat.core import pricing
from ipychat.core.errors import ConfigError
from ipychat.core.pricing import ModelPrice, PriceTable, cost, estimate_cost_range
from ipychat.core.types import Usage

ROOT = Path(__file__).resolve().parents[2]

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
        ("openrouter/openai/o3-mini", "openai/o3-mini"),  # OpenRouter's own listing
        ("azure/gpt-4o", "gpt-4o"),  # Azure OpenAI falls back to OpenAI's prices
        # listed with their own prices, which are not their prefix's ("o3-pro" is not "o3")
        ("o3-pro", "o3-pro"),
        ("gpt-5-pro", "gpt-5-pro"),
        ("o1-pro-2025-03-19", "o1-pro"),
        ("gpt-4o-realtime-preview", "gpt-4o-realtime-preview"),
        # unknown: never guessed from a prefix
        ("o3-pro-max", None),
        ("gpt-5-pro-ultra", None),
        ("gpt-4o-mini-tts-hd", None),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc", None),
        ("llama3.2", None),
        ("claude-3-5-sonnet-latest", None),  # genai-prices lists it by prefix only
        ("", None),
    ],
)
def test_lookup_resolution(model: str, resolved: str | None, table: PriceTable) -> None:
    price = table.lookup(model)
    assert (price.model if price else None) == resolved


@pytest.mark.parametrize(
    "model",
    [
        "mistral-large-next",  # a Mistral name that is not listed
        "llama-3.3-70b-versatile",  # Groq's name, but no provider said: served by hosts only
        "together/llama-3-70b",  # a provider's name that it does not list
    ],
)
def test_unknown_model_costs_unknown_never_zero(model: str, table: PriceTable) -> None:
    price = table.lookup(model)
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
# Providers, from the maintained data (genai-prices, through tools/update_prices.py)
# ---------------------------------------------------------------------------------------------

# One model per provider issue 20 names, as a user of that provider's endpoint writes it.
PROVIDER_MODELS = [
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-sonnet-4-5-20250929"),  # a dated snapshot
    ("gemini", "gemini-2.5-pro"),
    ("gemini", "gemini-2.5-flash"),
    ("mistral", "mistral-large-latest"),
    ("groq", "llama-3.3-70b-versatile"),
    ("openrouter", "anthropic/claude-sonnet-4.5"),
    ("openrouter", "openai/gpt-4o"),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ("azure", "gpt-4o"),  # Azure OpenAI: OpenAI's models at OpenAI's prices
    ("azure", "gpt-35-turbo"),  # Azure's spelling
]


def genai_prices() -> ModuleType:
    """The maintained source itself (a `test` extra). It needs Python 3.11: on 3.10 the tests
    that compare with it cannot run, and say so; anywhere else a missing install fails."""
    if sys.version_info < (3, 11):
        pytest.skip("genai-prices needs Python 3.11 or later")
    import genai_prices as module

    return module


def as_of(table: PriceTable) -> datetime:
    day = date.fromisoformat(table.as_of)
    return datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)


def test_a_claude_model_on_anthropic_has_anthropics_list_price(table: PriceTable) -> None:
    """Anthropic's list price for Claude Sonnet 4.5 (https://www.anthropic.com/pricing#api):
    $3 in, $15 out, $0.30 cache reads; the Batch API half; over 200k prompt tokens $6/$22.50."""
    price = table.lookup("claude-sonnet-4-5", provider="anthropic")
    assert price is not None and (price.provider, price.source) == ("anthropic", "table")
    assert (price.input, price.output, price.cached_input) == (3.0, 15.0, 0.3)
    assert (price.batch_input, price.batch_output) == (1.5, 7.5)
    assert [(t.above, t.input, t.output) for t in price.tiers] == [(200_000, 6.0, 22.5)]
    assert table.context_window("claude-sonnet-4-5", provider="anthropic") == 200_000
    # the name alone is Anthropic's too: it makes the models named "claude-..."
    assert table.lookup("claude-sonnet-4-5") == price


@pytest.mark.parametrize("prompt", [1_000, 250_000])
@pytest.mark.parametrize(("provider", "model"), PROVIDER_MODELS)
def test_provider_prices_cost_what_genai_prices_says(
    provider: str, model: str, prompt: int, table: PriceTable
) -> None:
    """ipychat's cost of a request equals genai-prices' own calculation for the same usage on
    the same day: the prices, cache reads and long-context tiers came across intact."""
    gp = genai_prices()
    genai_id = {"gemini": "google"}.get(provider, provider)
    price = table.lookup(model, provider=provider)
    assert price is not None
    usage = Usage(prompt_tokens=prompt, completion_tokens=700, cached_tokens=prompt // 4)
    ours = cost(usage, price)
    theirs = gp.calc_price(
        gp.Usage(input_tokens=prompt, cache_read_tokens=prompt // 4, output_tokens=700),
        model,
        provider_id=genai_id,
        genai_request_timestamp=as_of(table),
    )
    assert ours == pytest.approx(float(theirs.total_price), rel=1e-9)


def test_every_listed_name_is_the_model_genai_prices_resolves_it_to(table: PriceTable) -> None:
    """Precision of the names taken from genai-prices' matching rules: each listed name and
    alias, asked of genai-prices on that provider, gives a model with the same prices."""
    gp = genai_prices()
    data = raw_data()
    sections = {"openai": data, **data["providers"]}
    checked = 0
    for provider, section in sections.items():
        genai_id = section.get("genai_prices_id", provider)
        for name in [*section["models"], *section["aliases"]]:
            ours = table.lookup(name, provider=provider)
            theirs = gp.calc_price(
                gp.Usage(input_tokens=1_000, cache_read_tokens=100, output_tokens=1_000),
                name,
                provider_id=genai_id,
                genai_request_timestamp=as_of(table),
            )
            assert ours is not None, (provider, name)
            mine = cost(Usage(1_000, 1_000, 100), ours)
            assert mine == pytest.approx(float(theirs.total_price), rel=1e-9), (provider, name)
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    ("model", "provider", "resolved"),
    [
        ("claude-sonnet-4-5-20250929", None, ("anthropic", "claude-sonnet-4-5")),
        ("claude-3-5-sonnet@20240620", "gemini", ("gemini", "claude-3-5-sonnet")),  # Vertex
        ("claude-3-5-sonnet-20241022", None, ("anthropic", "claude-3-5-sonnet")),
        ("gemini-2.5-pro", None, ("gemini", "gemini-2.5-pro")),
        ("mistral-large-latest", None, ("mistral", "mistral-large")),
        ("llama-3.3-70b-versatile", "groq", ("groq", "llama-3.3-70b-versatile")),
        ("groq/llama-3.3-70b-versatile", None, ("groq", "llama-3.3-70b-versatile")),
        ("gpt-4o", "azure", ("openai", "gpt-4o")),
        ("gpt-4o", "ollama", ("openai", "gpt-4o")),  # a provider without prices: as if none
        ("GPT-4o", "OpenRouter", None),  # OpenRouter's names have a path: openai/gpt-4o
        ("openai/gpt-4o", "openrouter", ("openrouter", "openai/gpt-4o")),
        ("openai/gpt-4o", None, ("openai", "gpt-4o")),
        # no prefix matching, whichever the provider
        ("claude-sonnet-4-5-thinking", None, None),
        ("claude-sonnet-4-5-thinking", "anthropic", None),
        ("gemini-2.5-pro-max", "gemini", None),
        ("llama-3.3-70b-versatile", "together", None),  # Together lists it under another name
    ],
)
def test_provider_resolution(
    model: str, provider: str | None, resolved: tuple[str, str] | None, table: PriceTable
) -> None:
    price = table.lookup(model, provider=provider)
    assert ((price.provider, price.model) if price else None) == resolved


def test_the_same_name_costs_what_its_provider_charges(table: PriceTable) -> None:
    """gpt-oss-120b is in OpenAI's listing and sold by Groq and Together: the provider picks
    whose price, and each is that provider's own entry of the file."""
    data = raw_data()
    for provider in ("openai", "groq", "together"):
        price = table.lookup("openai/gpt-oss-120b", provider=provider)
        section = data if provider == "openai" else data["providers"][provider]
        listed = section["models"][
            "gpt-oss-120b" if provider == "openai" else "openai/gpt-oss-120b"
        ]
        assert price is not None and price.provider == provider
        assert (price.input, price.output) == (listed["input"], listed["output"])
    openai = table.lookup("gpt-oss-120b")
    groq = table.lookup("openai/gpt-oss-120b", provider="groq")  # Groq's name for it
    assert openai and groq and (openai.input, openai.output) != (groq.input, groq.output)
    assert table.lookup("gpt-oss-120b", provider="groq") is None  # not a name Groq uses


def test_providers_and_their_models(table: PriceTable) -> None:
    names = ["openai", "anthropic", "gemini", "mistral", "groq", "openrouter", "together"]
    assert table.providers()[: len(names)] == names and "azure" in table.providers()
    assert "claude-sonnet-4-5" in table.models("anthropic")
    assert "claude-sonnet-4-5" not in table.models()  # the default provider's: OpenAI's
    assert table.models("no-such-provider") == []


def test_long_context_tiers_price_every_token_of_a_long_request(table: PriceTable) -> None:
    """Over 200k prompt tokens Gemini 2.5 Pro costs $2.50/$15 for every token of the request,
    not just those past the threshold (genai-prices' threshold rule: more than `above`)."""
    price = table.lookup("gemini-2.5-pro", provider="gemini")
    assert price is not None and price.tiers
    at, over = Usage(200_000, 1_000), Usage(200_001, 1_000)
    assert cost(at, price) == pytest.approx((200_000 * 1.25 + 1_000 * 10) / 1e6)
    assert cost(over, price) == pytest.approx((200_001 * 2.50 + 1_000 * 15) / 1e6)
    low, high, batch = estimate_cost_range(300_000, 1_000, price)
    assert low == pytest.approx((300_000 * 2.50 + 1 * 15) / 1e6)
    assert high == pytest.approx((300_000 * 2.50 + 1_000 * 15) / 1e6)
    assert batch == pytest.approx((300_000 * 1.25 + 1_000 * 7.5) / 1e6)
    assert price.for_prompt(10) is price


def test_a_provider_qualified_override_wins_on_that_provider_only(table: PriceTable) -> None:
    table.override("anthropic/claude-sonnet-4-5", 1, 2)
    assert table.lookup("claude-sonnet-4-5", provider="anthropic").source == "override"  # type: ignore[union-attr]
    assert table.lookup("anthropic/claude-sonnet-4-5-20250929").input == 1  # type: ignore[union-attr]
    on_vertex = table.lookup("claude-sonnet-4-5", provider="gemini")
    assert on_vertex is not None and on_vertex.source == "table"
    table.override("claude-sonnet-4-5", 5, 6)  # the plain name: on every provider
    assert table.lookup("claude-sonnet-4-5", provider="gemini").input == 5  # type: ignore[union-attr]
    assert table.lookup("claude-sonnet-4-5", provider="anthropic").input == 1  # type: ignore[union-attr]


def test_the_as_of_date_and_source_are_shown(table: PriceTable) -> None:
    line = table.describe("claude-sonnet-4-5", provider="anthropic")
    assert line.startswith("claude-sonnet-4-5: $3 in, $15 out per 1M tokens, cached $0.3")
    assert f"list price on anthropic as of {table.as_of}, genai-prices " in line
    assert "over 200,000 prompt tokens $6 in, $22.5 out" in line
    assert table.describe("no-such-model").startswith("no-such-model: price unknown (")
    assert "%chat price MODEL INPUT OUTPUT" in table.describe("no-such-model")
    table.override("gpt-4o", 1, 2)
    assert table.describe("gpt-4o") == "gpt-4o: $1 in, $2 out per 1M tokens (your price)"
    assert table.describe("anything", is_local=True) == "anything: local model, $0"


# ---------------------------------------------------------------------------------------------
# Freshness: the shipped file is what tools/update_prices.py makes from the installed data
# ---------------------------------------------------------------------------------------------


def update_prices() -> ModuleType:
    genai_prices()  # the script imports it
    spec = importlib.util.spec_from_file_location(
        "update_prices", ROOT / "tools" / "update_prices.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_prices_are_what_the_script_makes_from_the_installed_genai_prices() -> None:
    """Fails when genai-prices is updated (or the file edited by hand): then run
    `python tools/update_prices.py` and commit ipychat/data/prices.json."""
    script = update_prices()
    shipped = (ROOT / "ipychat" / "data" / "prices.json").read_text(encoding="utf-8")
    made = script.render(script.build(date.fromisoformat(json.loads(shipped)["as_of"])))
    assert made == shipped, "ipychat/data/prices.json is stale: run python tools/update_prices.py"
    assert f"genai-prices {metadata.version('genai-prices')} " in json.loads(shipped)["source"]


def test_the_freshness_check_sees_a_changed_price(tmp_path: Path) -> None:
    script = update_prices()
    shipped = json.loads((ROOT / "ipychat" / "data" / "prices.json").read_text(encoding="utf-8"))
    made = script.build(date.fromisoformat(shipped["as_of"]))
    made["providers"]["anthropic"]["models"]["claude-sonnet-4-5"]["input"] = 2.99
    edited = tmp_path / "prices.json"
    edited.write_text(script.render(made), encoding="utf-8")
    script.TARGET = edited
    assert script.main(["--check"]) == 1
    script.TARGET.write_text(script.render(script.build(date.fromisoformat(shipped["as_of"]))))
    assert script.main(["--check"]) == 0


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
