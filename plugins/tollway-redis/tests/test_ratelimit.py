"""The redis rate limiter against a real Redis: GCRA admits exactly the configured rate, takes
from all of a call's buckets or none, atomically across limiter instances, and serves the
rate-limit stage's queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis

import tollway_redis
from tollway.config import Config
from tollway.errors import QueueTimeoutError, TollwayError
from tollway.metrics import Metrics
from tollway.plugins import build_plugin_manager
from tollway.resilience.config import RateLimitConfig, RateLimitRule
from tollway.resilience.ratelimit import Bucket, RateLimitStage
from tollway.stages import StageContext
from tollway.testing.services import require_redis, unique_namespace
from tollway.types import Message, Request, Response, Usage
from tollway_redis.ratelimit import RedisRateLimiter


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def url() -> str:
    return require_redis()


@pytest_asyncio.fixture
async def prefix(url: str) -> AsyncIterator[str]:
    namespace = unique_namespace("ratelimit")
    yield namespace
    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match="{" + namespace + "}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def make(url: str, prefix: str) -> AsyncIterator[Callable[..., RedisRateLimiter]]:
    made: list[RedisRateLimiter] = []

    def factory(clock: Callable[[], float] | None = None) -> RedisRateLimiter:
        limiter = RedisRateLimiter(
            redis.Redis.from_url(url), key_prefix=prefix, url=url, clock=clock
        )
        made.append(limiter)
        return limiter

    yield factory
    for limiter in made:
        await limiter.aclose()


def bucket(key: str, per_second: float, capacity: float) -> Bucket:
    return Bucket(key, per_second, capacity, "global", f"the limit {key}")


async def admitted(limiter: RedisRateLimiter, demands: list[tuple[Bucket, float]], n: int) -> int:
    results = [await limiter.acquire(demands) for _ in range(n)]
    return sum(1 for wait, _ in results if wait == 0)


async def test_gcra_admits_the_burst_then_exactly_the_rate(make: Any) -> None:
    clock = FrozenClock()
    limiter = make(clock)
    b = bucket("rpm600", 10.0, 5.0)  # 600 a minute, burst 5
    assert await admitted(limiter, [(b, 1.0)], 8) == 5
    wait, index = await limiter.acquire([(b, 1.0)])
    assert index == 0
    assert wait == pytest.approx(0.1, abs=1e-5)
    total = 0
    for _ in range(10):  # one second in tenths: exactly the rate, 10
        clock.now += 0.1
        total += await admitted(limiter, [(b, 1.0)], 3)
    assert total == 10
    clock.now += 0.25
    assert await admitted(limiter, [(b, 1.0)], 5) == 2
    clock.now += 60.0  # a long pause refills to the burst, never beyond
    assert await admitted(limiter, [(b, 1.0)], 8) == 5


async def test_one_window_admits_the_rate_across_two_limiters_at_once(make: Any) -> None:
    clock = FrozenClock()
    one, two = make(clock), make(clock)
    b = bucket("shared", 10.0, 1.0)
    total = 0
    for _ in range(10):  # ten 0.1-second steps: one second
        clock.now += 0.1
        results = await asyncio.gather(
            *(limiter.acquire([(b, 1.0)]) for limiter in (one, two) for _ in range(5))
        )
        total += sum(1 for wait, _ in results if wait == 0)
    assert total == 10


async def test_all_or_nothing_is_atomic_across_instances(make: Any) -> None:
    clock = FrozenClock()
    one, two = make(clock), make(clock)
    tight, roomy = bucket("tight", 1.0, 20.0), bucket("roomy", 1.0, 1000.0)
    demands = [(roomy, 1.0), (tight, 1.0)]
    results = await asyncio.gather(
        *(limiter.acquire(demands) for limiter in (one, two) for _ in range(50))
    )
    assert sum(1 for wait, _ in results if wait == 0) == 20
    assert {index for wait, index in results if wait > 0} == {1}
    # The refused calls took nothing from the roomy bucket: exactly 980 are left in it.
    assert (await one.acquire([(roomy, 980.0)]))[0] == 0
    assert (await two.acquire([(roomy, 1.0)]))[0] > 0


async def test_adjust_charges_debt_and_refunds_up_to_capacity(make: Any) -> None:
    clock = FrozenClock()
    limiter = make(clock)
    b = bucket("tpm", 100.0, 1000.0)
    assert (await limiter.acquire([(b, 600.0)]))[0] == 0
    await limiter.adjust([(b, 900.0)])  # used 1500: 500 in debt
    wait, _ = await limiter.acquire([(b, 100.0)])
    assert wait == pytest.approx(6.0, abs=1e-5)
    await limiter.adjust([(b, -10_000.0)])
    assert (await limiter.acquire([(b, 1000.0)]))[0] == 0


async def test_server_time_and_expiring_keys(make: Any, url: str, prefix: str) -> None:
    limiter = make()  # Redis's own clock
    b = bucket("server-time", 1.0, 3.0)
    assert await admitted(limiter, [(b, 1.0)], 4) == 3
    wait, _ = await limiter.acquire([(b, 1.0)])
    assert 0 < wait <= 1.0
    client = redis.Redis.from_url(url)
    try:
        ttl = await client.pttl(limiter.key_prefix + b.key)
    finally:
        await client.aclose()
    assert 0 < ttl <= 4000, "a key lives until its bucket has refilled, and a second more"


async def test_an_unreachable_redis_gives_a_clear_error() -> None:
    limiter = RedisRateLimiter(
        redis.Redis.from_url("redis://127.0.0.1:1/0"), url="redis://127.0.0.1:1/0"
    )
    try:
        with pytest.raises(TollwayError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
            await limiter.acquire([(bucket("x", 1.0, 1.0), 1.0)])
    finally:
        await limiter.aclose()


def _request(user: str) -> Request:
    return Request("openai/gpt-4o-mini", (Message.user("hi"),), max_tokens=10, user=user)


async def _call(request: Request) -> Response:
    return Response("r", request.model, "openai", Message.assistant("ok"), "stop", Usage(2, 3))


async def test_the_stage_queues_on_the_shared_limit(url: str, prefix: str) -> None:
    manager = build_plugin_manager([tollway_redis], load_entrypoints=False)
    config = Config(
        rate_limits=RateLimitConfig(
            enabled=True,
            backend="redis",
            url=url,
            key_prefix=prefix,
            rules=[RateLimitRule(scope="user", requests_per_minute=600, burst=2)],
            queue_timeout=0.05,
        )
    )
    metrics = Metrics()
    stage = RateLimitStage.from_context(StageContext(config, manager, metrics, lambda m: m))
    assert isinstance(stage.limiter, RedisRateLimiter)
    try:
        for _ in range(2):
            await stage.complete(_request("u"), _call)
        # The third waits a tenth of a second: longer than this queue allows.
        with pytest.raises(QueueTimeoutError, match="user='u'"):
            await stage.complete(_request("u"), _call)
        await stage.complete(_request("v"), _call)  # another user's bucket is full
    finally:
        await stage.aclose()


async def test_the_stage_admits_a_queued_call_when_redis_allows(url: str, prefix: str) -> None:
    limiter = RedisRateLimiter(redis.Redis.from_url(url), key_prefix=prefix, url=url)
    config = RateLimitConfig(
        enabled=True, rules=[RateLimitRule(requests_per_minute=600, burst=1)], queue_timeout=10
    )
    metrics = Metrics()
    stage = RateLimitStage(config, limiter, metrics)
    try:
        results = await asyncio.gather(*(stage.complete(_request("u"), _call) for _ in range(3)))
        assert len(results) == 3
        assert metrics.histogram("ratelimit_wait_seconds", "", ["scope"]).count("global") == 2
    finally:
        await stage.aclose()
