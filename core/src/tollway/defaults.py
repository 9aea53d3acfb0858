"""The core's zero-dependency defaults, registered through the same hooks as any plugin.

Each factory imports its module on first use, so registering the defaults costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollway.hookspecs import hookimpl


def _memory_cache(config: Any) -> Any:
    from tollway.cache.memory import MemoryCacheBackend

    return MemoryCacheBackend.from_config(config)


def _disk_cache(config: Any) -> Any:
    from tollway.cache.disk import DiskCacheBackend

    return DiskCacheBackend.from_config(config)


def _local_rate_limiter(config: Any, metrics: Any) -> Any:
    from tollway.resilience.ratelimit import LocalRateLimiter

    return LocalRateLimiter.from_config(config, metrics)


def _local_coalescer(config: Any, metrics: Any) -> Any:
    from tollway.resilience.singleflight import LocalCoalescer

    return LocalCoalescer.from_config(config, metrics)


@hookimpl
def tollway_register_cache_backends(register: Callable[..., None]) -> None:
    register("memory", _memory_cache, description="In-process LRU, bounded by entries and bytes.")
    register("disk", _disk_cache, description="diskcache on local disk, stored as JSON.")


@hookimpl
def tollway_register_rate_limiters(register: Callable[..., None]) -> None:
    register("local", _local_rate_limiter, description="Token buckets in this process.")


@hookimpl
def tollway_register_coalescers(register: Callable[..., None]) -> None:
    register("local", _local_coalescer, description="Coalescing within this process.")
