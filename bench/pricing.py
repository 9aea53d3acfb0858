"""What pricing a call costs: tollway's pricer against genai-prices' own ``calc_price``.

    uv run --frozen python bench/pricing.py             # about 10 s
    uv run --frozen python bench/pricing.py --calls 20000

Target (issue #4): pricing a call costs no more than ~20 us. genai-prices' ``calc_price`` is
shown for comparison: it is what the pricer must never call per request. Printed per call, the
median of ``--repeat`` runs, after the model's rates are resolved (the first call of a model
resolves them once; that one-off cost is printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Any


def _per_call(fn: Callable[[], Any], calls: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from tollway.config import load_config
    from tollway.plugins import build_plugin_manager
    from tollway.pricing.pricer import build_pricer
    from tollway.types import Message, Request, Usage

    manager = build_plugin_manager()
    config = load_config(
        data={
            "pricing": {
                "enabled": True,
                "discounts": {"openai": "0.1"},
                "margins": {"*": "0.05"},
                "volume_discounts": [
                    {"match": "anthropic", "after_tokens": 10**12, "discount": "0.1"}
                ],
            }
        },
        plugins=manager,
        environ={},
    )
    pricer = build_pricer(config, manager)
    plain = Usage(1_234, 567)
    cached = Usage(40_000, 3_000, 12_000, 5_000, 1_000)
    long_prompt = Usage(250_000, 2_000, 10_000)

    start = time.perf_counter()
    pricer.price("deepseek/deepseek-chat", plain)  # genai-prices only: lookup + derivation
    first = time.perf_counter() - start

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("price  openai/gpt-4o-mini (plain)", lambda: pricer.price("openai/gpt-4o-mini", plain)),
        ("price  openai/gpt-4o-mini (cached)", lambda: pricer.price("openai/gpt-4o-mini", cached)),
        (
            "price  gemini/gemini-2.5-pro (tier)",
            lambda: pricer.price("gemini/gemini-2.5-pro", long_prompt),
        ),
        (
            "price  anthropic/claude-sonnet-4-5 (volume)",
            lambda: pricer.price("anthropic/claude-sonnet-4-5", cached),
        ),
        (
            "price  bedrock/...claude-3-5-haiku (genai-prices)",
            lambda: pricer.price("bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0", cached),
        ),
        (
            "price  deepseek/deepseek-chat (off-peak window)",
            lambda: pricer.price("deepseek/deepseek-chat", cached),
        ),
    ]
    request = Request(
        "openai/gpt-4o-mini",
        (Message.system("You are terse."), Message.user("Summarise this. " * 60)),
        max_tokens=512,
    )
    cases.append(("estimate  a 2-message request", lambda: pricer.estimate(request)))

    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    genai_usage = GenaiUsage(input_tokens=40_000, output_tokens=3_000, cache_read_tokens=12_000)
    now = dt.datetime.now(dt.UTC)
    cases.append(
        (
            "genai_prices.calc_price (for comparison)",
            lambda: calc_price(
                genai_usage, "gpt-4o-mini", provider_id="openai", genai_request_timestamp=now
            ),
        )
    )

    print(f"first call of a model (resolve once): {first * 1e6:9.1f} us")
    for name, fn in cases:
        calls = args.calls if "calc_price" not in name else max(args.calls // 20, 500)
        per = _per_call(fn, calls, args.repeat)
        print(f"{name:52s} {per * 1e6:9.2f} us/call")

    asyncio.run(_stage(args.calls, args.repeat))


async def _stage(calls: int, repeat: int) -> None:
    """The cost stage's own overhead: a chain with and without it, around a provider that
    answers at once."""
    from decimal import Decimal

    from tollway.metrics import Metrics
    from tollway.pipeline import build_chain
    from tollway.pricing.config import ModelPriceConfig, PricingConfig
    from tollway.pricing.pricer import TablePricer
    from tollway.pricing.stage import CostStage
    from tollway.types import Message, Request, Response, StreamChunk, Usage

    response = Response(
        "id", "openai/gpt-4o-mini", "openai", Message.assistant("hi"), "stop", Usage(1000, 200)
    )

    async def provider(request: Request) -> Response:
        return response

    async def stream(request: Request) -> Any:  # pragma: no cover - not timed
        yield StreamChunk("hi")

    pricer = TablePricer(
        PricingConfig(models={"openai/gpt-4o-mini": ModelPriceConfig(input_mtok=Decimal("0.15"))})
    )
    bare, _ = build_chain([], provider, stream)
    priced, _ = build_chain([CostStage(pricer, Metrics())], provider, stream)
    request = Request("openai/gpt-4o-mini", (Message.user("hi"),))

    async def run(fn: Callable[[Request], Any]) -> float:
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(calls):
                await fn(request)
            runs.append((time.perf_counter() - start) / calls)
        return statistics.median(runs)

    without = await run(bare)
    with_stage = await run(priced)
    print(
        f"{'cost stage overhead per complete() call':52s} "
        f"{(with_stage - without) * 1e6:9.2f} us/call"
    )


if __name__ == "__main__":
    main()
