"""The pricer: hand-computed bills, token classes, model names, multipliers, volume, estimates.

The bills below are priced from the shipped price table (``tollway/pricing/prices.toml``, the
providers' published price pages) with the arithmetic written out by hand in the comments.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.config import Config, load_config
from tollway.errors import ConfigError
from tollway.plugins import build_plugin_manager
from tollway.pricing.base import Pricer
from tollway.pricing.config import PricingConfig
from tollway.pricing.pricer import TablePricer, build_pricer, model_candidates, period_bounds
from tollway.pricing.rates import ModelRates, Tier
from tollway.pricing.table import TomlPriceTable, parse_table
from tollway.types import ImagePart, Message, Request, TextPart, Tool, Usage

CENT = Decimal("0.01")


def config(data: dict[str, Any] | None = None, providers: dict[str, Any] | None = None) -> Config:
    # Provider sections need the provider plugins installed to be structured.
    manager = build_plugin_manager(load_entrypoints=bool(providers))
    raw: dict[str, Any] = {"pricing": {"enabled": True, "sources": ["toml"], **(data or {})}}
    if providers:
        raw["providers"] = providers
    return load_config(data=raw, plugins=manager, environ={})


def pricer(data: dict[str, Any] | None = None, **kwargs: Any) -> TablePricer:
    manager = build_plugin_manager(load_entrypoints=False)
    return build_pricer(config(data, kwargs.pop("providers", None)), manager, **kwargs)


@pytest.fixture(scope="module")
def shipped() -> TablePricer:
    return pricer()


# -- hand-computed bills -------------------------------------------------------------------------


def test_bill_gpt_4o_mini_with_cached_prompt(shipped: TablePricer) -> None:
    # $0.15 input, $0.075 cached input, $0.60 output per 1M tokens.
    # 1,234,567 prompt tokens of which 200,000 cached; 345,678 output tokens.
    #   1,034,567 x 0.15 / 1e6 = 0.15518505
    #     200,000 x 0.075 / 1e6 = 0.015
    #     345,678 x 0.60 / 1e6 = 0.2074068
    #   total 0.37759185 -> $0.38
    cost = shipped.price("openai/gpt-4o-mini", Usage(1_234_567, 345_678, cache_read_tokens=200_000))
    assert cost.input == Decimal("0.15518505")
    assert cost.cache_read == Decimal("0.015")
    assert cost.output == Decimal("0.2074068")
    assert cost.total == Decimal("0.37759185")
    assert cost.total.quantize(CENT) == Decimal("0.38")
    assert cost.currency == "USD"


def test_bill_o3_reasoning_tokens_at_their_own_rate(shipped: TablePricer) -> None:
    # $2 input, $8 output (reasoning billed as output). 50,000 in; 30,000 out of which
    # 25,000 reasoning: 50,000 x 2/1e6 = 0.10; 5,000 x 8/1e6 = 0.04; 25,000 x 8/1e6 = 0.20.
    cost = shipped.price("openai/o3", Usage(50_000, 30_000, reasoning_tokens=25_000))
    assert (cost.input, cost.output, cost.reasoning) == (
        Decimal("0.10"),
        Decimal("0.04"),
        Decimal("0.20"),
    )
    assert cost.total == Decimal("0.34")


def test_bill_claude_sonnet_4_5_cache_read_and_write(shipped: TablePricer) -> None:
    # $3 input, $3.75 cache write (5 min), $0.30 cache read, $15 output.
    # 120,000 prompt tokens: 80,000 read from the cache, 30,000 written, 10,000 plain.
    #   10,000 x 3 / 1e6    = 0.03
    #   80,000 x 0.30 / 1e6 = 0.024
    #   30,000 x 3.75 / 1e6 = 0.1125
    #    4,000 x 15 / 1e6   = 0.06
    #   total 0.2265 -> $0.23
    usage = Usage(120_000, 4_000, cache_read_tokens=80_000, cache_write_tokens=30_000)
    cost = shipped.price("anthropic/claude-sonnet-4-5-20250929", usage)
    assert cost.input == Decimal("0.03")
    assert cost.cache_read == Decimal("0.024")
    assert cost.cache_write == Decimal("0.1125")
    assert cost.output == Decimal("0.06")
    assert cost.total.quantize(CENT) == Decimal("0.23")


def test_bill_gemini_2_5_pro_either_side_of_the_200k_tier(shipped: TablePricer) -> None:
    # <= 200k prompt: $1.25 in, $10 out. 200,000 x 1.25/1e6 = 0.25; 10,000 x 10/1e6 = 0.10.
    at_limit = shipped.price("gemini/gemini-2.5-pro", Usage(200_000, 10_000))
    assert at_limit.total == Decimal("0.35")
    # > 200k: $2.50 in, $15 out, on the whole call.
    # 200,001 x 2.50/1e6 = 0.5000025; 10,000 x 15/1e6 = 0.15; total 0.6500025 -> $0.65.
    above = shipped.price("gemini/gemini-2.5-pro", Usage(200_001, 10_000))
    assert above.total == Decimal("0.6500025")
    assert above.total.quantize(CENT) == Decimal("0.65")


def test_bill_claude_long_context(shipped: TablePricer) -> None:
    # Above 200k prompt tokens: $6 in, $0.60 cache read, $22.50 out.
    # 500,000 prompt, 100,000 of them cached: 400,000 x 6/1e6 = 2.40; 100,000 x 0.6/1e6 = 0.06;
    # 20,000 x 22.5/1e6 = 0.45; total $2.91.
    cost = shipped.price(
        "anthropic/claude-sonnet-4-5", Usage(500_000, 20_000, cache_read_tokens=100_000)
    )
    assert cost.total == Decimal("2.91")


def test_bill_a_month_of_gpt_4_1_mini(shipped: TablePricer) -> None:
    # 1,000 calls of 2,000 in / 500 out at $0.40 / $1.60: 0.0008 + 0.0008 = 0.0016 a call.
    total = sum(
        (shipped.price("openai/gpt-4.1-mini", Usage(2_000, 500)).total for _ in range(1000)),
        Decimal(0),
    )
    assert total == Decimal("1.6")


def test_bill_haiku_through_bedrock_and_a_dated_id(shipped: TablePricer) -> None:
    # $1 in, $5 out: 10,000 x 1/1e6 = 0.01; 1,000 x 5/1e6 = 0.005.
    bedrock = "bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0"
    assert shipped.price(bedrock, Usage(10_000, 1_000)).total == Decimal("0.015")
    # gpt-4o-mini's dated id is an alias in the table: 1M in at $0.15.
    dated = shipped.price("openai/gpt-4o-mini-2024-07-18", Usage(1_000_000, 0))
    assert dated.total == Decimal("0.15")


# -- token classes -------------------------------------------------------------------------------


def test_defaults_cache_at_input_and_reasoning_at_output() -> None:
    p = pricer({"models": {"x/m": {"input_mtok": "2", "output_mtok": "8"}}})
    cost = p.price("x/m", Usage(1_000_000, 1_000_000, 300_000, 200_000, 400_000))
    # 500k plain + 300k read + 200k written, all at $2; 600k plain + 400k reasoning at $8.
    assert (cost.input, cost.cache_read, cost.cache_write) == (
        Decimal("1"),
        Decimal("0.6"),
        Decimal("0.4"),
    )
    assert (cost.output, cost.reasoning) == (Decimal("4.8"), Decimal("3.2"))
    assert cost.total == Decimal("10")


def test_per_request_price_and_explicit_reasoning_rate() -> None:
    p = pricer({"models": {"x/m": {"input_mtok": "1", "reasoning_mtok": "20", "request": "0.005"}}})
    cost = p.price("x/m", Usage(0, 1_000, reasoning_tokens=1_000))
    assert cost.reasoning == Decimal("0.02")
    assert cost.request == Decimal("0.005")
    assert cost.total == Decimal("0.025")


def test_cached_tokens_reported_outside_the_prompt_never_charge_negative() -> None:
    p = pricer({"models": {"x/m": {"input_mtok": "1", "output_mtok": "1"}}})
    cost = p.price("x/m", Usage(100, 10, cache_read_tokens=500, reasoning_tokens=50))
    assert cost.input == 0
    assert cost.output == 0
    assert cost.total >= 0


@given(
    input_tokens=st.integers(0, 2_000_000),
    output_tokens=st.integers(0, 200_000),
    read=st.integers(0, 2_000_000),
    write=st.integers(0, 2_000_000),
    reasoning=st.integers(0, 200_000),
)
def test_cost_is_the_sum_of_each_class_at_its_rate(
    input_tokens: int, output_tokens: int, read: int, write: int, reasoning: int
) -> None:
    read = min(read, input_tokens)
    write = min(write, input_tokens - read)
    reasoning = min(reasoning, output_tokens)
    usage = Usage(input_tokens, output_tokens, read, write, reasoning)
    cost = SHIPPED.price("anthropic/claude-sonnet-4-5", usage)
    tier = input_tokens > 200_000
    rates = (
        (Decimal(6), Decimal("22.5"), Decimal("0.6"), Decimal("7.5"))
        if tier
        else (Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75"))
    )
    million = Decimal(1_000_000)
    expected = (
        (input_tokens - read - write) * rates[0]
        + (output_tokens - reasoning) * rates[1]
        + reasoning * rates[1]
        + read * rates[2]
        + write * rates[3]
    ) / million
    assert cost.total == expected
    assert min(cost.input, cost.output, cost.cache_read, cost.cache_write, cost.reasoning) >= 0


SHIPPED = pricer()


# -- model names ---------------------------------------------------------------------------------


def test_candidates_for_each_kind_of_name() -> None:
    assert ("openai", "gpt-4o-mini") in model_candidates("azure", "gpt-4o-mini")
    assert ("openai", "gpt-4o") in model_candidates("openai", "gpt-4o-2024-08-06")
    bedrock = model_candidates("bedrock", "eu.anthropic.claude-3-5-haiku-20241022-v1:0")
    assert bedrock[0] == ("bedrock", "eu.anthropic.claude-3-5-haiku-20241022-v1:0")
    assert ("anthropic", "claude-3-5-haiku-20241022") in bedrock
    assert ("anthropic", "claude-3-5-haiku") in bedrock
    assert ("gemini", "gemini-2.5-flash") in model_candidates("vertex", "gemini-2.5-flash")
    assert ("gemini", "gemini-2.0-flash") in model_candidates("gemini", "models/gemini-2.0-flash")
    assert model_candidates("openai", "gpt-4o")[0] == ("openai", "gpt-4o")


def test_instance_names_price_as_their_provider_type() -> None:
    p = pricer(
        providers={
            "work": {"type": "openai", "api_key": "sk-x"},
            "eastus": {"type": "azure", "endpoint": "https://x.openai.azure.com"},
        }
    )
    usage = Usage(1_000_000, 1_000_000)
    expected = Decimal("0.75")  # gpt-4o-mini: $0.15 in + $0.60 out
    assert p.price("work/gpt-4o-mini", usage).total == expected
    assert p.price("eastus/gpt-4o-mini", usage).total == expected
    assert p.price("azure/gpt-4o-mini", usage).total == expected


def test_vertex_gemini_and_unknown_models(shipped: TablePricer) -> None:
    assert shipped.price("vertex/gemini-2.5-flash", Usage(1_000_000, 0)).total == Decimal("0.3")
    assert not shipped.knows("openai/gpt-nonexistent")
    assert not shipped.knows("no-slash")
    assert shipped.price("openai/gpt-nonexistent", Usage(10, 10)).total == 0
    # Local models are known, at zero.
    assert shipped.knows("llamacpp/gemma-3-270m")
    assert shipped.price("ollama/llama3", Usage(1000, 1000)).total == 0


def test_user_overrides_win_over_every_source_and_instance_over_type() -> None:
    p = pricer(
        {
            "models": {
                "openai/gpt-4o-mini": {"input_mtok": "1", "output_mtok": "1"},
                "work/gpt-4o-mini": {"input_mtok": "5", "output_mtok": "5"},
            }
        },
        providers={"work": {"type": "openai", "api_key": "sk-x"}},
    )
    assert p.price("openai/gpt-4o-mini", Usage(1_000_000, 0)).total == Decimal(1)
    # The base name's override covers its dated ids too.
    assert p.price("openai/gpt-4o-mini-2024-07-18", Usage(1_000_000, 0)).total == Decimal(1)
    assert p.price("work/gpt-4o-mini", Usage(1_000_000, 0)).total == Decimal(5)
    rates = p.model_rates("openai/gpt-4o-mini")
    assert rates is not None
    assert rates.source == "config"


def test_override_tiers() -> None:
    p = pricer(
        {
            "models": {
                "x/m": {
                    "input_mtok": "1",
                    "output_mtok": "2",
                    "tiers": [
                        {"above_input_tokens": 1000, "input_mtok": "3"},
                        {"above_input_tokens": 5000, "input_mtok": "4", "output_mtok": "5"},
                    ],
                }
            }
        }
    )
    million = Decimal(1_000_000)
    assert p.price("x/m", Usage(1000, 10)).total == (1000 * 1 + 10 * 2) / million
    assert p.price("x/m", Usage(1001, 10)).total == (1001 * 3 + 10 * 2) / million
    assert p.price("x/m", Usage(5001, 10)).total == (5001 * 4 + 10 * 5) / million


# -- discounts, margins, currency ----------------------------------------------------------------


def test_discount_margin_and_currency_multiply() -> None:
    p = pricer(
        {
            "currency": "eur",
            "exchange_rates": {"USD": "0.9"},
            "discounts": {"openai": "0.2", "openai/gpt-4o": "0.5"},
            "margins": {"*": "0.1"},
        }
    )
    # 1M gpt-4o-mini input at $0.15, 20% off, 10% margin, 0.9 EUR a USD: 0.1188 EUR.
    cost = p.price("openai/gpt-4o-mini", Usage(1_000_000, 0))
    assert cost.total == Decimal("0.15") * Decimal("0.8") * Decimal("1.1") * Decimal("0.9")
    assert cost.total == Decimal("0.1188")
    assert cost.currency == "EUR"
    # The model's own discount is more specific than its provider's: $2.50 x 0.5 x 1.1 x 0.9.
    assert p.price("openai/gpt-4o", Usage(1_000_000, 0)).total == Decimal("1.2375")
    # Anthropic has no discount, only the margin.
    haiku = p.price("anthropic/claude-haiku-4-5", Usage(1_000_000, 0)).total
    assert haiku == Decimal("0.99")


def test_override_in_another_currency_is_converted() -> None:
    p = pricer(
        {
            "exchange_rates": {"EUR": "1.25"},
            "models": {"x/m": {"input_mtok": "2", "currency": "EUR"}},
        }
    )
    assert p.price("x/m", Usage(1_000_000, 0)).total == Decimal("2.5")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"currency": "EUR"}, "exchange_rates] USD"),
        ({"discounts": {"openai": "1.5"}}, "fraction from 0 to 1"),
        ({"margins": {"*": "-0.1"}}, "0 or more"),
        ({"models": {"gpt-4o": {"input_mtok": "1"}}}, "PROVIDER/MODEL"),
        ({"models": {"x/m": {"input_mtok": "-1"}}}, "price of 0 or more"),
        ({"models": {"x/m": {"output_mtok": "1"}}}, "input_mtok"),
        ({"models": {"x/m": {"input_mtok": "1", "currency": "GBP"}}}, "no GBP"),
        ({"volume_discounts": [{"after_tokens": 1, "discount": "0.1", "period": "year"}]}, "year"),
        ({"models": {"x/m": {"input_mtok": "1", "inputt": "2"}}}, "did you mean"),
    ],
)
def test_bad_pricing_config_names_the_problem(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(data)
    assert fragment in str(info.value)
    assert "pricing" in str(info.value)


def test_a_named_source_that_is_not_installed_is_a_config_error() -> None:
    manager = build_plugin_manager(load_entrypoints=False)
    with pytest.raises(ConfigError, match=r"tollway\[genai-prices\]"):
        build_pricer(config({"sources": ["genai-prices"]}), manager)
    # The default list skips a missing plugin quietly: the shipped table still prices.
    default = build_pricer(
        load_config(data={"pricing": {"enabled": True}}, plugins=manager, environ={}), manager
    )
    assert default.knows("openai/gpt-4o-mini")


# -- volume discounts ----------------------------------------------------------------------------


class Clock:
    def __init__(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def test_volume_discount_steps_within_a_month_and_resets_next_month() -> None:
    clock = Clock(dt.datetime(2025, 3, 31, 23, 0, tzinfo=dt.UTC))
    p = pricer(
        {
            "volume_discounts": [
                {"match": "openai", "after_tokens": 1_000_000, "discount": "0.10"},
                {"match": "openai", "after_tokens": 2_000_000, "discount": "0.25"},
            ]
        },
        clock=clock,
    )
    call = Usage(600_000, 0)  # $0.09 of gpt-4o-mini at list price
    totals = [p.price("openai/gpt-4o-mini", call).total for _ in range(5)]
    # Counted before each call: 0, 0.6M, 1.2M (10% off), 1.8M (10%), 2.4M (25%).
    assert totals == [
        Decimal("0.09"),
        Decimal("0.09"),
        Decimal("0.081"),
        Decimal("0.081"),
        Decimal("0.0675"),
    ]
    # A quote does not count; other providers are not covered.
    assert p.quote("openai/gpt-4o-mini", call).total == Decimal("0.0675")
    assert p.price("anthropic/claude-haiku-4-5", Usage(1_000_000, 0)).total == Decimal(1)
    clock.now = dt.datetime(2025, 4, 1, 0, 0, 1, tzinfo=dt.UTC).timestamp()
    assert p.price("openai/gpt-4o-mini", call).total == Decimal("0.09")


def test_quote_and_count_add_up_to_price() -> None:
    clock = Clock(dt.datetime(2025, 5, 5, tzinfo=dt.UTC))
    data = {"volume_discounts": [{"period": "day", "after_tokens": 100, "discount": "0.5"}]}
    p = pricer(data, clock=clock)
    usage = Usage(100, 0)
    assert p.quote("openai/gpt-4o-mini", usage).total == Decimal("0.000015")
    p.count("openai/gpt-4o-mini", usage)
    assert p.quote("openai/gpt-4o-mini", usage).total == Decimal("0.0000075")


def test_period_bounds_are_calendar_utc() -> None:
    when = dt.datetime(2024, 2, 29, 13, 5, tzinfo=dt.UTC).timestamp()  # a Thursday
    day = period_bounds(when, "day")
    week = period_bounds(when, "week")
    month = period_bounds(when, "month")
    assert day == (
        dt.datetime(2024, 2, 29, tzinfo=dt.UTC).timestamp(),
        dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp(),
    )
    assert week[0] == dt.datetime(2024, 2, 26, tzinfo=dt.UTC).timestamp()
    assert week[1] == dt.datetime(2024, 3, 4, tzinfo=dt.UTC).timestamp()
    assert month[1] == dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp()
    december = dt.datetime(2024, 12, 31, tzinfo=dt.UTC).timestamp()
    assert period_bounds(december, "month")[1] == dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()


# -- rates that change over time -----------------------------------------------------------------


class ChangingSource:
    """A source whose price changes at a known moment, as genai-prices' price history does."""

    def __init__(self, clock: Clock, change_at: float) -> None:
        self.clock = clock
        self.change_at = change_at
        self.asked = 0

    def rates(self, provider: str, model: str) -> ModelRates | None:
        if model != "m":
            return None
        self.asked += 1
        if self.clock() < self.change_at:
            return ModelRates(input_mtok=Decimal(10), valid_until=self.change_at)
        return ModelRates(input_mtok=Decimal(2))


def test_a_dated_price_change_is_picked_up_when_it_happens() -> None:
    clock = Clock(dt.datetime(2025, 6, 9, 23, 59, tzinfo=dt.UTC))
    change = dt.datetime(2025, 6, 10, tzinfo=dt.UTC).timestamp()
    source = ChangingSource(clock, change)
    p = TablePricer(PricingConfig(), [("changing", source)], clock=clock)
    assert p.price("x/m", Usage(1_000_000, 0)).total == Decimal(10)
    assert p.price("x/m", Usage(1_000_000, 0)).total == Decimal(10)
    assert source.asked == 1
    clock.now = change
    assert p.price("x/m", Usage(1_000_000, 0)).total == Decimal(2)
    assert p.price("x/m", Usage(1_000_000, 0)).total == Decimal(2)
    assert source.asked == 2


def test_a_broken_source_is_skipped() -> None:
    class Broken:
        def rates(self, provider: str, model: str) -> ModelRates | None:
            raise RuntimeError("boom")

    table = TomlPriceTable()
    p = TablePricer(PricingConfig(), [("broken", Broken()), ("toml", table)])
    assert p.price("openai/gpt-4o-mini", Usage(1_000_000, 0)).total == Decimal("0.15")


# -- the price table and reloading ---------------------------------------------------------------


def test_every_shipped_entry_is_dated_and_sourced() -> None:
    import tomllib

    from tollway.pricing.table import shipped_table_text

    models = tomllib.loads(shipped_table_text())["models"]
    assert len(models) >= 12
    vendors = {key.split("/")[0] for key in models}
    assert vendors == {"openai", "anthropic", "gemini"}
    for key, entry in models.items():
        assert entry["source"].startswith("https://"), key
        dt.date.fromisoformat(entry["as_of"])


def test_price_table_errors_name_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'my\.toml: models\."openai/x"\.input_mtok'):
        parse_table('[models."openai/x"]\ninput_mtok = "lots"\n', "my.toml")
    with pytest.raises(ConfigError, match="PROVIDER/MODEL"):
        parse_table('[models."x"]\ninput_mtok = 1\n', "my.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        TomlPriceTable([tmp_path / "missing.toml"])


def test_pricer_reload_reads_changed_price_files(tmp_path: Path) -> None:
    table = tmp_path / "prices.toml"
    table.write_text('[models."acme/m1"]\ninput_mtok = "1"\noutput_mtok = "2"\n')
    p = pricer({"source_options": {"toml": {"files": [str(table)]}}})
    assert p.price("acme/m1", Usage(1_000_000, 1_000_000)).total == Decimal(3)
    # A user table's entry replaces the shipped one.
    table.write_text(
        '[models."acme/m1"]\ninput_mtok = "4"\noutput_mtok = "2"\n'
        '[models."openai/gpt-4o-mini"]\ninput_mtok = "9"\n'
    )
    assert p.price("acme/m1", Usage(1_000_000, 1_000_000)).total == Decimal(3)
    p.reload()
    assert p.price("acme/m1", Usage(1_000_000, 1_000_000)).total == Decimal(6)
    assert p.price("openai/gpt-4o-mini", Usage(1_000_000, 0)).total == Decimal(9)


def test_the_pricer_meets_the_protocol(shipped: TablePricer) -> None:
    assert isinstance(shipped, Pricer)


# -- estimates -----------------------------------------------------------------------------------


def test_estimate_is_prompt_bytes_plus_max_tokens(shipped: TablePricer) -> None:
    request = Request("openai/gpt-4o-mini", (Message.user("x" * 1200),), max_tokens=100)
    # 1,200 bytes / 3 = 400, + 4 for the message + 3 priming = 407 prompt tokens at $0.15;
    # 100 output at $0.60: 0.00006105 + 0.00006.
    assert shipped.prompt_tokens(request) == 407
    assert shipped.estimate(request) == Decimal("0.00012105")


def test_estimate_counts_non_ascii_images_tools_and_default_output(
    shipped: TablePricer,
) -> None:
    text = "価格" * 100  # 200 characters, 600 UTF-8 bytes -> 200 tokens
    request = Request(
        "anthropic/claude-sonnet-4-5",
        (Message("user", (TextPart(text), ImagePart("https://x/y.png"))),),
        tools=(Tool("lookup", "find", {"type": "object"}),),
    )
    tool_bytes = len("lookup") + len("find") + len('{"type":"object"}')
    prompt = 200 + -(-tool_bytes // 3) + 4 + 3 + 1600
    assert shipped.prompt_tokens(request) == prompt
    # No max_tokens: 4096 output at $15; the prompt at the dearest input-side rate ($3.75).
    million = Decimal(1_000_000)
    expected = (prompt * Decimal("3.75") + 4096 * 15) / million
    assert shipped.estimate(request) == expected
    assert shipped.estimate(Request("acme/unknown", (Message.user("hi"),))) == 0


@given(st.text(max_size=3000), st.integers(1, 4000))
def test_estimate_never_below_the_bill_for_the_same_counts(text: str, max_tokens: int) -> None:
    request = Request("openai/gpt-4o-mini", (Message.user(text),), max_tokens=max_tokens)
    # A byte-level tokenizer never makes more tokens than bytes; ordinary text makes far
    # fewer than a third. The bill for at most that many prompt tokens and max_tokens output,
    # any of it cached, is at most the estimate.
    prompt = SHIPPED.prompt_tokens(request)
    bill = SHIPPED.quote("openai/gpt-4o-mini", Usage(prompt, max_tokens, cache_read_tokens=prompt))
    assert SHIPPED.estimate(request) >= bill.total
    assert prompt * 3 >= len(text.encode())


def test_tier_rates_resolve_against_the_base() -> None:
    rates = ModelRates(
        input_mtok=Decimal(1),
        output_mtok=Decimal(2),
        cache_read_mtok=Decimal("0.1"),
        tiers=(Tier(10, input_mtok=Decimal(3)),),
    )
    assert rates.at_tier(None) == (Decimal(1), Decimal(2), Decimal("0.1"), Decimal(1), Decimal(2))
    assert rates.at_tier(rates.tiers[0]) == (
        Decimal(3),
        Decimal(2),
        Decimal("0.1"),
        Decimal(3),
        Decimal(2),
    )
