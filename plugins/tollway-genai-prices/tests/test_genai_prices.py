"""tollway's arithmetic on genai-prices' data equals genai-prices' own, for every model it covers.

The walk takes every provider and every model in genai-prices' bundled snapshot, at the current
price (history and off-peak windows resolved at one instant), and compares tollway's cost with
``calc_price`` for a plain call, a call with cached, cache-written and reasoning tokens, and a
call above the model's largest prompt-size tier. Exactly: both are Decimal, nothing rounds.

Skipped, deliberately: models priced only in units tollway's ``Usage`` does not count (audio
hours, characters, document pages, messages); the test checks that this is the only reason.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from decimal import Decimal

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price
from genai_prices import types as gp
from genai_prices.data_snapshot import get_snapshot

from tollway.config import load_config
from tollway.plugins import build_plugin_manager
from tollway.pricing.config import PricingConfig
from tollway.pricing.pricer import TablePricer, build_pricer
from tollway.pricing.rates import CompiledRates
from tollway.types import Usage
from tollway_genai_prices.source import GenaiPricesSource, model_rates, next_change

NOW = dt.datetime.now(dt.UTC)
ONE = Decimal(1)
# Price keys for units a tollway Usage does not carry.
NOT_TOKENS = {
    "audio_hours",
    "input_audio_hours",
    "output_audio_hours",
    "input_mchars",
    "input_document_kpages",
    "input_annotated_document_kpages",
    "input_text_messages_kcount",
    "input_gpixels",
    "rerank_searches_kcount",
}


def shapes(rates: CompiledRates) -> list[Usage]:
    out = [Usage(1_234, 567), Usage(40_000, 3_000, 12_000, 5_000, 1_000)]
    if rates.rates.tiers:
        top = max(t.above_input_tokens for t in rates.rates.tiers)
        out.append(Usage(top + 1, 2_000, 1_000, 500, 300))
        out.append(Usage(top, 2_000, 1_000, 500, 300))
    return out


def genai(usage: Usage) -> GenaiUsage:
    return GenaiUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
    )


def every_model() -> list[tuple[gp.Provider, gp.ModelInfo]]:
    return [(provider, model) for provider in get_snapshot().providers for model in provider.models]


def test_every_model_costs_what_calc_price_says() -> None:
    walked = skipped = compared = 0
    mismatches = []
    for provider, model in every_model():
        walked += 1
        prices = model.get_prices(NOW)
        rates = model_rates(prices)
        if rates is None:
            stated = {k for k, v in vars(prices).items() if v is not None}
            assert stated <= NOT_TOKENS, (provider.id, model.id, stated)
            skipped += 1
            continue
        compiled = CompiledRates(f"{provider.id}/{model.id}", rates, ONE, "USD")
        for usage in shapes(compiled):
            ours = compiled.select(usage.input_tokens).cost(usage, "USD").total
            theirs = model.calc_price(genai(usage), provider, genai_request_timestamp=NOW)
            compared += 1
            if ours != theirs.total_price:
                mismatches.append((provider.id, model.id, usage, ours, theirs.total_price))
    assert not mismatches, mismatches[:5]
    assert walked > 2000
    assert skipped < walked // 20
    assert compared > 2 * (walked - skipped)


def test_lookup_by_provider_and_model_id_agrees_with_calc_price() -> None:
    clock = NOW.timestamp
    source = GenaiPricesSource(clock=clock)
    config = PricingConfig(sources=["genai-prices"], free_providers=[])
    pricer = TablePricer(config, [("genai-prices", source)], clock=clock)
    usage = Usage(40_000, 3_000, 12_000, 5_000, 1_000)
    found = 0
    for provider, model in every_model():
        name = f"{provider.id}/{model.id}"
        if source.find(provider.id, model.id) is None or not pricer.knows(name):
            continue
        found += 1
        theirs = calc_price(
            genai(usage), model.id, provider_id=provider.id, genai_request_timestamp=NOW
        )
        assert pricer.quote(name, usage).total == theirs.total_price, name
    assert found > 1900


def test_price_history_switches_on_its_date() -> None:
    # o3 fell from $10/$40 to $2/$8 on 2025-06-10 (genai-prices' price history).
    when = [dt.datetime(2025, 6, 9, 12, tzinfo=dt.UTC).timestamp()]
    source = GenaiPricesSource(clock=lambda: when[0])
    rates = source.rates("openai", "o3")
    assert rates is not None
    assert rates.input_mtok == Decimal(10)
    assert rates.valid_until == dt.datetime(2025, 6, 10, tzinfo=dt.UTC).timestamp()
    pricer = TablePricer(PricingConfig(), [("genai-prices", source)], clock=lambda: when[0])
    assert pricer.price("openai/o3", Usage(1_000_000, 0)).total == Decimal(10)
    when[0] = dt.datetime(2025, 6, 10, 0, 0, 1, tzinfo=dt.UTC).timestamp()
    assert pricer.price("openai/o3", Usage(1_000_000, 0)).total == Decimal(2)


def test_off_peak_window_is_looked_up_again_at_its_boundary() -> None:
    found = get_snapshot().find_provider_model("deepseek-chat", None, "deepseek", None)
    provider, model = found
    moments = [
        dt.datetime(2025, 9, 1, 12, tzinfo=dt.UTC).timestamp(),
        dt.datetime(2025, 9, 1, 20, tzinfo=dt.UTC).timestamp(),
    ]
    when = [moments[0]]
    source = GenaiPricesSource(clock=lambda: when[0])
    pricer = TablePricer(PricingConfig(), [("genai-prices", source)], clock=lambda: when[0])
    usage = Usage(1_000_000, 1_000_000, 200_000)
    seen = set()
    for moment in moments:
        when[0] = moment
        at = dt.datetime.fromtimestamp(moment, dt.UTC)
        expected = model.calc_price(genai(usage), provider, genai_request_timestamp=at)
        assert pricer.price("deepseek/deepseek-chat", usage).total == expected.total_price
        seen.add(expected.total_price)
        until = next_change(model, at)
        assert until is not None
        assert moment < until <= moment + 86_400
    assert len(seen) == 2  # the window changes the price


def test_registered_and_used_by_the_default_sources() -> None:
    manager = build_plugin_manager()
    assert "genai-prices" in manager.registrations("pricing")
    config = load_config(data={"pricing": {"enabled": True}}, plugins=manager, environ={})
    pricer = build_pricer(config, manager)
    # The shipped table answers first for what it has...
    mini = pricer.model_rates("openai/gpt-4o-mini")
    assert mini is not None
    assert mini.source.startswith("toml:")
    # ...genai-prices for the rest, Bedrock ids included.
    for model in (
        "openai/gpt-3.5-turbo",
        "bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0",
        "bedrock/amazon.nova-pro-v1:0",
        "vertex/gemini-1.5-pro",
    ):
        rates = pricer.model_rates(model)
        assert rates is not None, model
        assert rates.source == "genai-prices", model


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="provider_ids"):
        GenaiPricesSource.from_options({"providers": {}})
    source = GenaiPricesSource.from_options({"provider_ids": {"acme": "openai"}})
    assert source.rates("acme", "gpt-4o") is not None


def test_importing_the_plugin_does_not_import_genai_prices() -> None:
    code = (
        "import sys, tollway_genai_prices; "
        "assert 'genai_prices' not in sys.modules, 'imported eagerly'; "
        "assert 'tollway_genai_prices.source' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
