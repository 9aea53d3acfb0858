"""tollway-redis: state shared by every process through one Redis server.

Registers a cache backend, a rate limiter, a coalescer and budget counters, each named
``redis``. Nothing here imports redis-py: each factory imports its module when a pipeline first
uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollway import hookimpl


def _cache(config: Any) -> Any:
    from tollway_redis.cache import RedisCacheBackend

    return RedisCacheBackend.from_config(config)


def _rate_limiter(config: Any, metrics: Any) -> Any:
    from tollway_redis.ratelimit import RedisRateLimiter

    return RedisRateLimiter.from_config(config, metrics)


def _coalescer(config: Any, metrics: Any) -> Any:
    from tollway_redis.singleflight import RedisCoalescer

    return RedisCoalescer.from_config(config, metrics)


def _budget_counters(config: Any, metrics: Any) -> Any:
    from tollway_redis.budgets import RedisBudgetCounters

    return RedisBudgetCounters.from_config(config, metrics)


@hookimpl
def tollway_register_cache_backends(register: Callable[..., None]) -> None:
    register("redis", _cache, description="Answers cached in Redis, shared by every process.")


@hookimpl
def tollway_register_rate_limiters(register: Callable[..., None]) -> None:
    register("redis", _rate_limiter, description="GCRA limits in Redis (atomic Lua).")


@hookimpl
def tollway_register_coalescers(register: Callable[..., None]) -> None:
    register(
        "redis", _coalescer, description="Identical in-flight calls coalesced across processes."
    )


@hookimpl
def tollway_register_budget_counters(register: Callable[..., None]) -> None:
    register(
        "redis",
        _budget_counters,
        description="Budget counters in Redis: atomic Lua reserve/settle across processes.",
    )
