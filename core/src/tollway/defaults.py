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


def _toml_prices(options: Any) -> Any:
    from tollway.pricing.table import TomlPriceTable

    return TomlPriceTable.from_options(options or {})


def _local_coalescer(config: Any, metrics: Any) -> Any:
    from tollway.resilience.singleflight import LocalCoalescer

    return LocalCoalescer.from_config(config, metrics)


def _local_budget_counters(config: Any, metrics: Any) -> Any:
    from tollway.budgets.counters import LocalBudgetCounters

    return LocalBudgetCounters.from_config(config, metrics)


@hookimpl
def tollway_register_cache_backends(register: Callable[..., None]) -> None:
    register("memory", _memory_cache, description="In-process LRU, bounded by entries and bytes.")
    register("disk", _disk_cache, description="diskcache on local disk, stored as JSON.")


@hookimpl
def tollway_register_pricing(register: Callable[..., None]) -> None:
    register(
        "toml",
        _toml_prices,
        description="The shipped price table (a dated snapshot) plus TOML tables of your own.",
    )


@hookimpl
def tollway_register_rate_limiters(register: Callable[..., None]) -> None:
    register("local", _local_rate_limiter, description="Token buckets in this process.")


@hookimpl
def tollway_register_coalescers(register: Callable[..., None]) -> None:
    register("local", _local_coalescer, description="Coalescing within this process.")


def _sqlite_usage_store(config: Any) -> Any:
    from tollway.usage.sqlite import SQLiteUsageStore

    return SQLiteUsageStore.from_config(config)


def _memory_usage_store(config: Any) -> Any:
    from tollway.usage.store import MemoryUsageStore

    return MemoryUsageStore.from_config(config)


@hookimpl
def tollway_register_usage_stores(register: Callable[..., None]) -> None:
    register("sqlite", _sqlite_usage_store, description="A local SQLite file (WAL), with rollups.")
    register("memory", _memory_usage_store, description="In-process; for tests, not history.")


@hookimpl
def tollway_register_budget_counters(register: Callable[..., None]) -> None:
    register("local", _local_budget_counters, description="Budget counters in this process.")


def _jsonl_exporter(options: Any) -> Any:
    from tollway.exporters.jsonl import JsonlExporter

    return JsonlExporter.from_options(options or {})


@hookimpl
def tollway_register_exporters(register: Callable[..., None]) -> None:
    register("jsonl", _jsonl_exporter, description="Events appended to a JSON Lines file.")
