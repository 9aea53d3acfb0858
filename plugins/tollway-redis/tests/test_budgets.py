"""The redis budget counters against a real Redis: the same answers as the local counters,
all-or-none reserves across instances (each with its own client, standing for a process),
reservations that lapse, keys that expire past their window, the shared emergency stop, the
`tollway budget` commands, and real subprocesses sharing a $1 budget."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis
from click.testing import CliRunner

import tollway_redis
from tollway.budgets.config import BudgetLimit, BudgetsConfig, EmergencyStopConfig
from tollway.budgets.counters import RESERVED, STOPPED, BudgetWindow, LocalBudgetCounters
from tollway.budgets.stage import BudgetStage
from tollway.budgets.windows import SLOTS, Window
from tollway.cli import main
from tollway.errors import BudgetExceededError, TollwayError
from tollway.metrics import Metrics
from tollway.pipeline import Pipeline
from tollway.plugins import build_plugin_manager
from tollway.testing.services import require_redis, unique_namespace
from tollway.types import Cost, Message, ModelInfo, Request, Response, StreamChunk, Usage
from tollway_redis.budgets import LEASE_SLOTS, RedisBudgetCounters, client_for

MODEL = "fake/m1"
# Calendar keys expire at their window's end in Redis's own time: the tests' "now" is real.
NOW = float(int(time.time()) // 600 * 600)


@pytest.fixture
def url() -> str:
    return require_redis()


@pytest_asyncio.fixture
async def prefix(url: str) -> AsyncIterator[str]:
    namespace = unique_namespace("budgets")
    yield namespace
    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match="{" + namespace + "}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def make(url: str, prefix: str) -> AsyncIterator[Callable[..., RedisBudgetCounters]]:
    made: list[RedisBudgetCounters] = []

    def factory(**options: Any) -> RedisBudgetCounters:
        counters = RedisBudgetCounters(client_for(url), key_prefix=prefix, url=url, **options)
        made.append(counters)
        return counters

    yield factory
    for counters in made:
        await counters.aclose()


def calendar(key: str = "k", limit: int = 100, *, hard: bool = True) -> BudgetWindow:
    return BudgetWindow(
        key, limit=limit, hard=hard, expires_at=NOW + 86_400, thresholds=(50, 80, 100)
    )


def rolling(key: str = "r", limit: int = 100, seconds: float = 600.0) -> BudgetWindow:
    return BudgetWindow(
        key,
        limit=limit,
        hard=True,
        rolling=seconds,
        slot=seconds / SLOTS,
        thresholds=(50, 80, 100),
    )


# -- the same answers as the local counters ----------------------------------------------------


async def scenario(counters: Any) -> list[Any]:
    """A script of reserves and settles on calendar and rolling windows; what each returns."""
    a, b, r = calendar("a"), calendar("b", limit=60), rolling("r")
    out: list[Any] = []
    out.append(await counters.reserve([(a, 40), (b, 40)], NOW))
    out.append(await counters.reserve([(a, 40), (b, 40)], NOW))  # b: 40 + 40 > 60, none taken
    out.append(await counters.read([a, b], NOW))
    out.append(await counters.reserve([(a, 40)], NOW))  # a: 40 + 40 <= 100
    out.append(await counters.settle([(a, 40), (b, 40)], 30, NOW, NOW + 1))
    out.append(await counters.settle([(a, 40)], 25, NOW, NOW + 2))  # a: 55 spent, 50% alert
    out.append(await counters.reserve([(a, 50)], NOW + 3))  # 55 + 50 > 100: refused, first
    out.append(await counters.reserve([(a, 50)], NOW + 4))  # refused again: not first
    out.append(await counters.settle([(a, 0)], 45, NOW, NOW + 5))  # to 100: 80% and 100%
    out.append(await counters.read([a, b], NOW + 5))
    # Rolling: spend ages out, and thresholds it falls back under re-arm.
    out.append(await counters.reserve([(r, 90)], NOW))
    out.append(await counters.settle([(r, 90)], 90, NOW, NOW))
    out.append(await counters.reserve([(r, 20)], NOW + 300))
    out.append(await counters.read([r], NOW + 599))
    out.append(await counters.read([r], NOW + 600 + r.slot))
    out.append(await counters.reserve([(r, 60)], NOW + 600 + r.slot))
    out.append(await counters.settle([(r, 60)], 60, NOW + 600 + r.slot, NOW + 601 + r.slot))
    return out


async def test_redis_answers_as_the_local_counters_do(make: Any) -> None:
    local = await scenario(LocalBudgetCounters())
    shared = await scenario(make())
    assert shared == local
    assert local[1][0] == 1
    assert local[6] == (0, 55, 0, True)
    assert local[7][3] is False
    assert local[8] == [(100, 1, 3)]
    # The rolling spend aged out to 0: every threshold re-armed, and 60 crossed 50 again.
    assert local[16] == [(60, 0, 1)]


# -- across instances --------------------------------------------------------------------------


async def test_reserves_from_many_clients_never_pass_the_limit(make: Any) -> None:
    window = calendar("shared", limit=1000)
    instances = [make() for _ in range(4)]

    async def reserve(counters: RedisBudgetCounters) -> bool:
        index, *_ = await counters.reserve([(window, 7)], NOW)
        return index == RESERVED

    results = await asyncio.gather(*(reserve(instances[n % 4]) for n in range(400)))
    assert sum(results) == 1000 // 7
    assert await instances[0].read([window], NOW) == [(0, 7 * (1000 // 7))]


async def test_an_unsettled_reservation_lapses_after_the_timeout(make: Any) -> None:
    counters = make(reservation_timeout=100.0)
    window = calendar("lapse", limit=100)
    assert (await counters.reserve([(window, 100)], NOW))[0] == RESERVED
    assert (await counters.reserve([(window, 1)], NOW + 50))[0] == 0  # held
    lease = 100.0 / LEASE_SLOTS
    later = NOW + 100 + lease
    assert (await counters.reserve([(window, 100)], later))[0] == RESERVED  # the first lapsed
    # The late settle of the lapsed call takes back nothing that is not its own.
    await counters.settle([(window, 100)], 10, NOW, later)
    assert await counters.read([window], later) == [(10, 100)]


async def test_keys_expire_past_their_window(make: Any, url: str, prefix: str) -> None:
    counters = make()
    month = Window("monthly").span(time.time())
    window = BudgetWindow("ttl", limit=100, hard=True, expires_at=month.end + 86_400)
    await counters.reserve([(window, 5)], time.time())
    client = redis.Redis.from_url(url)
    try:
        expires = await client.pexpiretime("{" + prefix + "}:c:ttl")
    finally:
        await client.aclose()
    assert expires == pytest.approx((month.end + 86_400) * 1000, abs=1000)


async def test_the_emergency_stop_is_shared(make: Any) -> None:
    one, two = make(), make()
    window = calendar("stop")
    assert await one.trip("incident 7", NOW) is True
    assert await two.trip("again", NOW) is False
    assert (await two.reserve([(window, 1)], NOW))[0] == STOPPED
    assert await two.stopped() == ("incident 7", NOW)
    assert await two.reset() is True
    assert await one.stopped() is None
    assert (await one.reserve([(window, 1)], NOW))[0] == RESERVED


async def test_the_spend_history_is_kept_in_slots(make: Any) -> None:
    counters = make(rate_slot=6.0, rate_slots=110)
    window = calendar("rate")
    start = 6.0 * 300_000_000  # a slot boundary
    for offset, amount in ((0, 5), (1, 7), (6, 11)):
        await counters.settle([(window, 0)], amount, start, start + offset)
    history = await counters.spend_history(start + 6)
    assert len(history) == 110
    assert history[-2:] == [12, 11]
    assert sum(history) == 23


async def test_redis_down_is_a_clear_error() -> None:
    counters = RedisBudgetCounters(
        redis.Redis.from_url("redis://127.0.0.1:1/0"), url="redis://127.0.0.1:1/0"
    )
    try:
        with pytest.raises(TollwayError, match=r"cannot reach Redis at redis://127.0.0.1:1/0.*"):
            await counters.reserve([(calendar(), 1)], NOW)
    finally:
        await counters.aclose()


# -- through the stage -------------------------------------------------------------------------


class Pricer:
    def knows(self, model: str) -> bool:
        return True

    def price(self, model: str, usage: Usage) -> Cost:
        return Cost(
            input=usage.input_tokens * Decimal("0.001"),
            output=usage.output_tokens * Decimal("0.002"),
        )

    def estimate(self, request: Request) -> Decimal:
        return 10 * Decimal("0.001") + (request.max_tokens or 50) * Decimal("0.002")


class Provider:
    name = "fake"

    def __init__(self, seed: int = 0) -> None:
        self.calls = 0
        self.rng = random.Random(seed)

    async def complete(self, request: Request) -> Response:
        self.calls += 1
        await asyncio.sleep(self.rng.random() * 0.005)
        usage = Usage(10, 20)
        return Response("r", request.model, "fake", Message.assistant("ok"), "stop", usage)

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(finish_reason="stop", usage=Usage(10, 20))

    async def list_models(self) -> list[ModelInfo]:
        return []

    async def aclose(self) -> None:
        pass


def budgets(url: str, prefix: str, **extra: Any) -> BudgetsConfig:
    return BudgetsConfig(
        enabled=True,
        backend="redis",
        url=url,
        key_prefix=prefix,
        limits=[BudgetLimit(amount=Decimal(1))],
        **extra,
    )


async def test_a_thousand_concurrent_calls_through_two_pipelines(url: str, prefix: str) -> None:
    """Two pipelines (two clients, as two processes would have) share a $1 budget; each call
    reserves $0.09 (max_tokens=40) and costs $0.05."""
    config = budgets(url, prefix)
    stages = [
        BudgetStage(config, RedisBudgetCounters.from_config(config), Pricer(), Metrics())
        for _ in range(2)
    ]
    providers = [Provider(seed) for seed in range(2)]
    pipes = [
        Pipeline.build(providers={"fake": p}, stages=[s], load_entrypoints=False)
        for p, s in zip(providers, stages, strict=True)
    ]
    rng = random.Random(9)

    async def caller(pipe: Pipeline) -> bool:
        await asyncio.sleep(rng.random() * 0.05)
        try:
            await pipe.complete(MODEL, "hi", max_tokens=40)
        except BudgetExceededError:
            return False
        return True

    try:
        results = await asyncio.gather(*(caller(pipes[n % 2]) for n in range(1000)))
        (row,) = await stages[0].status()
    finally:
        for pipe in pipes:
            await pipe.aclose()
    answered = sum(results)
    assert answered == sum(p.calls for p in providers) >= 11
    assert row.reserved == 0
    assert row.spent == answered * Decimal("0.05") <= Decimal("1.05")


async def test_a_trip_in_one_process_stops_the_others(url: str, prefix: str) -> None:
    config = budgets(url, prefix, emergency_stop=EmergencyStopConfig())
    config.limits = []  # no budget applies: the stop is still checked (polled)
    one = BudgetStage(config, RedisBudgetCounters.from_config(config), Pricer(), Metrics())
    two = BudgetStage(config, RedisBudgetCounters.from_config(config), Pricer(), Metrics())
    try:
        async with Pipeline.build(
            providers={"fake": Provider()}, stages=[two], load_entrypoints=False
        ) as pipe:
            await pipe.complete(MODEL, "hi")
            assert await one.trip("runaway agent") is True
            two._stop_checked = float("-inf")  # rather than wait out the 1 s poll
            with pytest.raises(BudgetExceededError, match="runaway agent"):
                await pipe.complete(MODEL, "hi")
            await one.reset()
            two._stop_checked = float("-inf")
            await pipe.complete(MODEL, "hi")
    finally:
        await one.aclose()


# -- the command line --------------------------------------------------------------------------


def test_budget_commands_act_on_the_shared_counters(url: str, prefix: str, tmp_path: Path) -> None:
    file = tmp_path / "tollway.toml"
    file.write_text(
        textwrap.dedent(
            f"""
            [budgets]
            enabled = true
            backend = "redis"
            url = "{url}"
            key_prefix = "{prefix}"

            [[budgets.limits]]
            scope = "team"
            match = "research"
            amount = 500

            [[budgets.limits]]
            scope = "user"
            window = "daily"
            amount = 5
            """
        ),
        encoding="utf-8",
    )
    plugins = build_plugin_manager([tollway_redis])
    from tollway.config import load_config

    config = load_config(file, plugins=plugins)

    async def spend() -> None:
        stage = BudgetStage(
            config.budgets,
            RedisBudgetCounters.from_config(config.budgets),
            Pricer(),
            Metrics(),
        )
        async with Pipeline.build(
            providers={"fake": Provider()}, stages=[stage], load_entrypoints=False
        ) as pipe:
            await pipe.complete(MODEL, "hi", team="research", user="u-17", max_tokens=20)
            await pipe.complete(MODEL, "hi", team="research", user="u-18", max_tokens=20)

    asyncio.run(spend())
    runner = CliRunner()
    shown = runner.invoke(main, ["budget", "status", "-c", str(file), "--json"])
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)
    assert status["emergency_stop"] is None
    rows = {row["budget"]: row for row in status["budgets"]}
    assert rows["team=research monthly"]["spent"] == "0.1"
    assert rows["team=research monthly"]["remaining"] == "499.9"
    assert rows["user=u-17 daily"]["spent"] == "0.05"
    assert "user=u-18 daily" in rows

    table = runner.invoke(main, ["budget", "status", "-c", str(file)])
    assert table.exit_code == 0
    assert "team=research monthly" in table.output
    assert "499.90 USD" in table.output
    assert "not tripped" in table.output

    tripped = runner.invoke(main, ["budget", "trip", "-c", str(file), "--reason", "audit"])
    assert tripped.exit_code == 0
    assert "tripped: audit" in tripped.output

    async def refused() -> str:
        stage = BudgetStage(
            config.budgets,
            RedisBudgetCounters.from_config(config.budgets),
            Pricer(),
            Metrics(),
        )
        async with Pipeline.build(
            providers={"fake": Provider()}, stages=[stage], load_entrypoints=False
        ) as pipe:
            try:
                await pipe.complete(MODEL, "hi", team="research")
            except BudgetExceededError as exc:
                return str(exc)
        return ""

    assert "emergency stop" in asyncio.run(refused())
    assert "EMERGENCY STOP" in runner.invoke(main, ["budget", "status", "-c", str(file)]).output
    reset = runner.invoke(main, ["budget", "reset", "-c", str(file)])
    assert reset.exit_code == 0
    assert "reset" in reset.output
    assert asyncio.run(refused()) == ""


# -- real processes ----------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import asyncio, json, random, sys
    from decimal import Decimal

    from tollway.budgets.config import BudgetLimit, BudgetsConfig
    from tollway.budgets.stage import BudgetStage
    from tollway.errors import BudgetExceededError
    from tollway.metrics import Metrics
    from tollway.pipeline import Pipeline
    from tollway.types import Cost, Message, Response, Usage
    from tollway_redis.budgets import RedisBudgetCounters

    class Pricer:
        def knows(self, model):
            return True

        def price(self, model, usage):
            return Cost(input=usage.input_tokens * Decimal("0.001"),
                        output=usage.output_tokens * Decimal("0.002"))

        def estimate(self, request):
            return 10 * Decimal("0.001") + request.max_tokens * Decimal("0.002")

    class Provider:
        name = "fake"

        def __init__(self, seed):
            self.calls = 0
            self.rng = random.Random(seed)

        async def complete(self, request):
            self.calls += 1
            await asyncio.sleep(self.rng.random() * 0.005)
            return Response("r", request.model, "fake", Message.assistant("ok"), "stop",
                            Usage(10, 20))

        def stream(self, request):
            raise NotImplementedError("complete only")

        async def list_models(self):
            return []

        async def aclose(self):
            pass

    async def main(url, prefix, calls, seed):
        config = BudgetsConfig(enabled=True, backend="redis", url=url, key_prefix=prefix,
                               limits=[BudgetLimit(amount=Decimal(1))])
        stage = BudgetStage(config, RedisBudgetCounters.from_config(config), Pricer(), Metrics())
        provider = Provider(seed)
        rng = random.Random(seed)
        async with Pipeline.build(providers={"fake": provider}, stages=[stage],
                                  load_entrypoints=False) as pipe:
            await stage.counters._client.ping()
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

            async def one():
                await asyncio.sleep(rng.random() * 0.05)
                try:
                    await pipe.complete("fake/m1", "hi", max_tokens=40)
                except BudgetExceededError:
                    return False
                return True

            results = await asyncio.gather(*(one() for _ in range(calls)))
        print(json.dumps({"answered": sum(results), "calls": provider.calls}), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    """
)


async def test_four_processes_share_one_dollar(url: str, prefix: str, tmp_path: Path) -> None:
    """Four real processes, 250 calls each at once, against one $1 budget in Redis."""
    (tmp_path / "worker.py").write_text(WORKER, encoding="utf-8")
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(tmp_path / "worker.py"),
            url,
            prefix,
            "250",
            str(seed),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path,
        )
        for seed in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stderr is not None
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise AssertionError(f"worker failed: {line!r} {(await process.stderr.read())!r}")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        reports = []
        for process in processes:
            out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, err.decode()
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    answered = sum(r["answered"] for r in reports)
    assert answered == sum(r["calls"] for r in reports)
    counters = RedisBudgetCounters(client_for(url), key_prefix=prefix, url=url)
    try:
        config = budgets(url, prefix)
        stage = BudgetStage(config, counters, Pricer(), Metrics())
        (row,) = await stage.status()
    finally:
        await counters.aclose()
    assert row.reserved == 0
    assert row.spent == answered * Decimal("0.05")
    assert row.spent <= Decimal(1) + Decimal("0.05")  # at most one call over
    assert answered >= 11
