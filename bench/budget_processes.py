"""Budgets under concurrency: do 1,000 calls at once overspend a $1 hard budget?

Three measurements, in one run:

1. One process, ``local`` counters: 1,000 concurrent calls through a Pipeline with the budget
   stage, against $1.
2. Several processes (4 by default), ``redis`` counters: each process starts its share of
   1,000 calls at the same moment, all against one $1 budget in Redis.
3. What the stage costs per call: sequential calls through a Pipeline with a provider that
   answers at once, without the stage, with it on local counters, and with it on Redis.

Each call costs $0.05 (10 input tokens at $0.001, 20 output at $0.002) and reserves its
estimated maximum, $0.09 (max_tokens=40), so a call holds more than it spends while in flight.

    uv run --frozen python bench/budget_processes.py
    uv run --frozen python bench/budget_processes.py --processes 8 --calls 4000

Target (issue #4): the spend never passes $1 by more than one call's cost, in one process and
across 4 processes on Redis. Needs Redis on 127.0.0.1:6379 (or ``--url``); its keys live under
a fresh prefix, deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

COST = Decimal("0.05")
BUDGET = Decimal(1)


class _Pricer:
    def knows(self, model: str) -> bool:
        return True

    def price(self, model: str, usage: Any) -> Any:
        from tollway.types import Cost

        return Cost(
            input=usage.input_tokens * Decimal("0.001"),
            output=usage.output_tokens * Decimal("0.002"),
        )

    def estimate(self, request: Any) -> Decimal:
        return 10 * Decimal("0.001") + (request.max_tokens or 50) * Decimal("0.002")


class _Provider:
    name = "fake"

    def __init__(self, seed: int = 0, delay: float = 0.005) -> None:
        self.calls = 0
        self.rng = random.Random(seed)
        self.delay = delay
        from tollway.types import Cost, Message, Response, Usage

        # Priced as the cost stage would have priced it: the budget stage settles this cost.
        cost = Cost(input=Decimal("0.010"), output=Decimal("0.040"))
        self._answer = Response(
            "r", "fake/m1", "fake", Message.assistant("ok"), "stop", Usage(10, 20), cost=cost
        )

    async def complete(self, request: Any) -> Any:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.rng.random() * self.delay)
        return self._answer

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the bench sends complete() calls only")
        yield

    async def list_models(self) -> list[Any]:
        return []

    async def aclose(self) -> None:
        pass


def _stage(backend: str, url: str, prefix: str, amount: Decimal = BUDGET) -> Any:
    from tollway.budgets.config import BudgetLimit, BudgetsConfig
    from tollway.budgets.counters import LocalBudgetCounters
    from tollway.budgets.stage import BudgetStage
    from tollway.metrics import Metrics

    config = BudgetsConfig(
        enabled=True,
        backend=backend,
        url=url,
        key_prefix=prefix,
        limits=[BudgetLimit(amount=amount)],
    )
    if backend == "redis":
        from tollway_redis.budgets import RedisBudgetCounters

        counters: Any = RedisBudgetCounters.from_config(config)
    else:
        counters = LocalBudgetCounters.from_config(config)
    return BudgetStage(config, counters, _Pricer(), Metrics())


async def _burst(stage: Any, calls: int, seed: int, start_at: float | None = None) -> int:
    from tollway.errors import BudgetExceededError
    from tollway.pipeline import Pipeline

    provider = _Provider(seed)
    rng = random.Random(seed)
    async with Pipeline.build(
        providers={"fake": provider}, stages=[stage], load_entrypoints=False
    ) as pipe:
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))

        async def one() -> bool:
            await asyncio.sleep(rng.random() * 0.05)
            try:
                await pipe.complete("fake/m1", "hi", max_tokens=40)
            except BudgetExceededError:
                return False
            return True

        results = await asyncio.gather(*(one() for _ in range(calls)))
    assert sum(results) == provider.calls
    return sum(results)


# -- 1. one process ----------------------------------------------------------------------------


async def one_process(calls: int) -> tuple[int, Decimal]:
    stage = _stage("local", "", "")
    answered = 0
    from tollway.errors import BudgetExceededError
    from tollway.pipeline import Pipeline

    provider = _Provider(1)
    rng = random.Random(1)
    async with Pipeline.build(
        providers={"fake": provider}, stages=[stage], load_entrypoints=False
    ) as pipe:

        async def one() -> bool:
            await asyncio.sleep(rng.random() * 0.05)
            try:
                await pipe.complete("fake/m1", "hi", max_tokens=40)
            except BudgetExceededError:
                return False
            return True

        answered = sum(await asyncio.gather(*(one() for _ in range(calls))))
        (row,) = await stage.status()
    return answered, row.spent


# -- 2. many processes -------------------------------------------------------------------------


def _quiet() -> None:
    """Alerts would be logged as warnings (no exporter here): keep the figures readable."""
    from tollway.logging import configure_logging

    configure_logging("error")


def _worker(
    index: int, url: str, prefix: str, calls: int, sync: tuple[Any, Any, Any], results: Any
) -> None:
    _quiet()

    async def run() -> None:
        stage = _stage("redis", url, prefix)
        await stage.counters._client.ping()
        ready, go, start = sync
        ready.put(index)
        await asyncio.to_thread(go.wait)
        answered = await _burst(stage, calls, index, start.value)
        results.put((index, answered))

    asyncio.run(run())


async def _read_spent(url: str, prefix: str) -> tuple[Decimal, Decimal]:
    stage = _stage("redis", url, prefix)
    try:
        (row,) = await stage.status()
    finally:
        await stage.aclose()
    return row.spent, row.reserved


async def _cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match="{" + prefix + "}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def many_processes(processes: int, calls: int, url: str) -> tuple[list[int], Decimal, Decimal]:
    prefix = f"bench-budget-{uuid.uuid4().hex[:12]}"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ready, go, start = context.Queue(), context.Event(), context.Value("d", 0.0)
    share = calls // processes
    workers = [
        context.Process(target=_worker, args=(i, url, prefix, share, (ready, go, start), results))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=120)
        start.value = time.time() + 0.3
        go.set()
        answered = sorted(results.get(timeout=300) for _ in workers)
        spent, reserved = asyncio.run(_read_spent(url, prefix))
    finally:
        for worker in workers:
            worker.join(timeout=30)
        asyncio.run(_cleanup(url, prefix))
    return [count for _, count in answered], spent, reserved


# -- 3. the cost per call ----------------------------------------------------------------------


async def per_call(backend: str | None, url: str, n: int) -> float:
    """Microseconds of wall time per sequential call (the provider answers at once)."""
    from tollway.pipeline import Pipeline

    prefix = f"bench-budget-{uuid.uuid4().hex[:12]}"
    stages = [] if backend is None else [_stage(backend, url, prefix, amount=Decimal(10**9))]
    provider = _Provider(delay=0.0)
    try:
        async with Pipeline.build(
            providers={"fake": provider}, stages=stages, load_entrypoints=False
        ) as pipe:
            for _ in range(200):  # warm up
                await pipe.complete("fake/m1", "hi", max_tokens=40)
            began = time.perf_counter()
            for _ in range(n):
                await pipe.complete("fake/m1", "hi", max_tokens=40)
            return (time.perf_counter() - began) / n * 1e6
    finally:
        if backend == "redis":
            await _cleanup(url, prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--calls", type=int, default=1000, help="concurrent calls in all")
    parser.add_argument("--per-call", type=int, default=20_000, help="sequential calls timed")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    _quiet()
    ok = True

    answered, spent = asyncio.run(one_process(args.calls))
    over = spent - BUDGET
    within = spent <= BUDGET + COST
    ok &= within
    print(f"1 process, local counters: {args.calls} concurrent calls against {BUDGET} USD")
    print(
        f"  answered {answered}, refused {args.calls - answered}, spent {spent} USD "
        f"(over by {max(over, Decimal(0))}; one call costs {COST})  "
        f"{'within target' if within else 'OVERSPENT'}"
    )

    counts, spent, reserved = many_processes(args.processes, args.calls, args.url)
    over = spent - BUDGET
    within = spent <= BUDGET + COST and spent == sum(counts) * COST
    ok &= within
    print(
        f"{args.processes} processes, redis counters: {args.calls} concurrent calls against "
        f"{BUDGET} USD"
    )
    print(
        f"  answered per process {counts} = {sum(counts)}, spent {spent} USD, still reserved "
        f"{reserved} (over by {max(over, Decimal(0))})  "
        f"{'within target' if within else 'OVERSPENT'}"
    )

    base = asyncio.run(per_call(None, args.url, args.per_call))
    local = asyncio.run(per_call("local", args.url, args.per_call))
    shared = asyncio.run(per_call("redis", args.url, max(args.per_call // 10, 500)))
    print(f"per call, sequential ({args.per_call} calls, a provider that answers at once):")
    print(f"  pipeline without budgets  {base:8.1f} us")
    print(f"  with budgets, local       {local:8.1f} us  (+{local - base:.1f} us)")
    print(
        f"  with budgets, redis       {shared:8.1f} us  (+{shared - base:.1f} us: two script "
        "round trips)"
    )
    print("target (spend <= budget + one call, everywhere):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
