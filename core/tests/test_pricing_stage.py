"""The cost stage through a real Pipeline and the fake OpenAI server: every answer priced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest_asyncio
import structlog

from tollway import Pipeline
from tollway.cache.config import CacheConfig
from tollway.config import Config
from tollway.plugins import build_plugin_manager
from tollway.pricing.config import ModelPriceConfig, PricingConfig
from tollway.pricing.stage import CostStage
from tollway.testing.fake_openai import FakeOpenAI
from tollway.types import Cost, StreamChunk

MODEL = "openai/gpt-4o-mini"
MILLION = Decimal(1_000_000)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def pricing(models: dict[str, dict[str, Any]] | None = None) -> PricingConfig:
    prices = {
        "openai/gpt-4o-mini": ModelPriceConfig(
            input_mtok=Decimal(1), output_mtok=Decimal(2), cache_read_mtok=Decimal("0.5")
        )
    }
    for name, entry in (models or {}).items():
        prices[name] = ModelPriceConfig(**{k: Decimal(v) for k, v in entry.items()})
    return PricingConfig(enabled=True, sources=["toml"], models=prices)


def build(fake: FakeOpenAI, config: Config) -> Pipeline:
    return Pipeline.build(
        providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}}, config=config
    )


def counter(pipe: Pipeline, name: str, *labels: str) -> float:
    metric = pipe.metrics.get(name)
    assert metric is not None, name
    value: float = metric.values.get(labels, 0.0)
    return value


async def test_every_answer_gets_its_exact_cost(fake: FakeOpenAI) -> None:
    async with build(fake, Config(pricing=pricing())) as pipe:
        fake.reply(
            "hello",
            usage={"prompt_tokens": 1000, "completion_tokens": 500},
            cached_tokens=200,
            reasoning_tokens=100,
        )
        response = await pipe.complete(MODEL, "hi")
    # 800 plain input at $1, 200 cached at $0.50, 400 plain output and 100 reasoning at $2.
    assert response.cost == Cost(
        input=800 / MILLION,
        output=800 / MILLION,
        cache_read=100 / MILLION,
        reasoning=200 / MILLION,
        currency="USD",
    )
    assert response.cost.total == Decimal("0.0019")
    assert response.saved == 0
    assert counter(pipe, "cost_total", "openai", MODEL, "USD") == float(Decimal("0.0019"))


async def test_the_reported_model_is_priced(fake: FakeOpenAI) -> None:
    # The provider answers with a dated snapshot that has a price of its own.
    config = Config(pricing=pricing({"openai/snapshot": {"input_mtok": "7"}}))
    async with build(fake, config) as pipe:
        fake.reply(
            "x", usage={"prompt_tokens": 1_000_000, "completion_tokens": 0}, model="snapshot"
        )
        response = await pipe.complete(MODEL, "hi")
        assert response.cost is not None
        assert response.cost.total == Decimal(7)
        # An unknown reported model falls back to the requested one.
        fake.reply("x", usage={"prompt_tokens": 1_000_000, "completion_tokens": 0}, model="zz")
        response = await pipe.complete(MODEL, "hi")
        assert response.cost is not None
        assert response.cost.total == Decimal(1)


async def test_a_stream_prices_the_chunk_that_carries_usage(fake: FakeOpenAI) -> None:
    async with build(fake, Config(pricing=pricing())) as pipe:
        fake.reply("one two three", usage={"prompt_tokens": 2000, "completion_tokens": 1000})
        chunks: list[StreamChunk] = [c async for c in pipe.stream(MODEL, "hi")]
    priced = [c for c in chunks if c.cost is not None]
    assert len(priced) == 1
    assert priced[0].usage is not None
    assert priced[0].cost is not None
    assert priced[0].cost.total == Decimal("0.004")
    assert all(c.cost is None for c in chunks if c.usage is None)
    assert counter(pipe, "cost_total", "openai", MODEL, "USD") == 0.004


async def test_a_cache_hit_costs_zero_and_records_its_saving(fake: FakeOpenAI) -> None:
    config = Config(pricing=pricing(), cache=CacheConfig(enabled=True, backend="memory"))
    async with build(fake, config) as pipe:
        fake.reply("same", usage={"prompt_tokens": 1000, "completion_tokens": 1000}, times=2)
        first = await pipe.complete(MODEL, "repeat me")
        second = await pipe.complete(MODEL, "repeat me")
    assert not first.cached
    assert first.cost is not None
    assert first.cost.total == Decimal("0.003")
    assert second.cached
    assert second.cost == Cost(currency="USD")
    assert second.saved == Decimal("0.003")
    assert counter(pipe, "cost_saved_total", "USD") == 0.003
    assert counter(pipe, "cost_total", "openai", MODEL, "USD") == 0.003


async def test_an_unknown_model_costs_zero_is_counted_and_warned_once(fake: FakeOpenAI) -> None:
    async with build(fake, Config(pricing=pricing())) as pipe:
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                fake.reply("x", model="mystery")
                response = await pipe.complete("openai/mystery", "hi")
                assert response.cost == Cost(currency="USD")
    assert counter(pipe, "pricing_unknown_model_total", "openai/mystery") == 3
    warnings = [log for log in logs if log["event"] == "pricing_unknown_model"]
    assert len(warnings) == 1
    assert "pricing.models" in warnings[0]["fix"]


async def test_a_reloaded_config_reprices(fake: FakeOpenAI) -> None:
    async with build(fake, Config(pricing=pricing())) as pipe:
        usage = {"prompt_tokens": 1_000_000, "completion_tokens": 0}
        fake.reply("x", usage=usage)
        before = await pipe.complete(MODEL, "hi")
        pipe.reload(
            Config(pricing=pricing({MODEL: {"input_mtok": "3"}}), providers=pipe.config.providers)
        )
        fake.reply("x", usage=usage)
        after = await pipe.complete(MODEL, "hi")
    assert before.cost is not None
    assert before.cost.total == Decimal(1)
    assert after.cost is not None
    assert after.cost.total == Decimal(3)


async def test_the_stage_is_built_only_when_pricing_is_needed(fake: FakeOpenAI) -> None:
    async with build(fake, Config()) as off:
        assert "cost" not in off._state.builtin
        fake.reply("x")
        assert (await off.complete(MODEL, "hi")).cost is None
    async with build(fake, Config(pricing=pricing())) as on:
        stage = on._state.builtin["cost"][1]
        assert isinstance(stage, CostStage)


def test_the_stage_shares_one_pricer_per_assembly() -> None:
    from tollway.metrics import Metrics
    from tollway.pricing.pricer import pricer_for
    from tollway.stages import StageContext

    config = Config(pricing=pricing())
    context = StageContext(
        config, build_plugin_manager(load_entrypoints=False), Metrics(), lambda m: m
    )
    stage = CostStage.from_context(context)
    assert pricer_for(context) is stage.pricer
