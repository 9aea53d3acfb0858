"""The usage store protocol, and a simple in-memory store (tests, short-lived programs).

Stores are offered through the ``tollway_register_usage_stores`` hook; ``[usage] store``
selects one. The pipeline writes behind the request in batches, so a store never slows a call.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from tollway.usage.records import BUCKETS, UsageQuery, UsageRecord, UsageRow


@runtime_checkable
class UsageStore(Protocol):
    """Where usage records go, and how they are read back."""

    async def write(self, records: Sequence[UsageRecord]) -> None:
        """Store a batch. Writing a record whose id is already stored changes nothing."""

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        """Sums grouped as the query asks, sorted by group values."""

    def records(self, query: UsageQuery) -> AsyncIterator[UsageRecord]:
        """Every record in the query's range and filters, oldest first (group_by ignored)."""

    async def aclose(self) -> None: ...


def bucket_start(when: dt.datetime, bucket: str) -> dt.datetime:
    """The UTC start of the hour, day, ISO week (Monday) or month that ``when`` falls in."""
    when = when.astimezone(dt.UTC)
    if bucket == "hour":
        return when.replace(minute=0, second=0, microsecond=0)
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket == "day":
        return day
    if bucket == "week":
        return day - dt.timedelta(days=day.weekday())
    if bucket == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown time bucket {bucket!r}; use one of {', '.join(sorted(BUCKETS))}")


def dimension_value(record: UsageRecord, name: str) -> Any:
    if name.startswith("tag:"):
        return record.tags.get(name[4:])
    if name in BUCKETS:
        return bucket_start(record.when, name).isoformat()
    return getattr(record, name)


def matches(record: UsageRecord, query: UsageQuery) -> bool:
    if query.since is not None and record.timestamp < query.since.timestamp():
        return False
    if query.until is not None and record.timestamp >= query.until.timestamp():
        return False
    for name, wanted in query.filters.items():
        value = dimension_value(record, name)
        if isinstance(value, bool):
            value = str(value).lower()
        if value != wanted and str(value) != str(wanted):
            return False
    return True


def aggregate(records: Sequence[UsageRecord], query: UsageQuery) -> list[UsageRow]:
    """The reference aggregation every store must agree with (a test compares them)."""
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        if not matches(record, query):
            continue
        key = tuple(dimension_value(record, name) for name in query.group_by)
        row = sums.setdefault(
            key,
            {
                "calls": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_read_tokens": 0,
                "cache_write_tokens": 0,
                "reasoning_tokens": 0,
                "cost": Decimal(0),
                "saved": Decimal(0),
                "cached_calls": 0,
                "currency": record.cost.currency,
            },
        )
        usage = record.usage
        row["calls"] += 1
        row["input_tokens"] += usage.input_tokens
        row["output_tokens"] += usage.output_tokens
        row["cache_read_tokens"] += usage.cache_read_tokens
        row["cache_write_tokens"] += usage.cache_write_tokens
        row["reasoning_tokens"] += usage.reasoning_tokens
        row["cost"] += record.cost.total
        row["saved"] += record.saved
        row["cached_calls"] += int(record.cached)
    out = [
        UsageRow(dict(zip(query.group_by, key, strict=True)), **values)
        for key, values in sums.items()
    ]
    out.sort(key=lambda r: tuple("" if v is None else str(v) for v in r.group.values()))
    return out


class MemoryUsageStore:
    """Keeps records in a list. Right for tests and short programs; not for history."""

    def __init__(self) -> None:
        self._records: dict[str, UsageRecord] = {}

    @classmethod
    def from_config(cls, config: Any) -> MemoryUsageStore:
        return cls()

    async def write(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            self._records.setdefault(record.id, record)

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        return aggregate(list(self._records.values()), query)

    async def records(self, query: UsageQuery) -> AsyncIterator[UsageRecord]:
        for record in sorted(self._records.values(), key=lambda r: r.timestamp):
            if matches(record, query):
                yield record

    async def aclose(self) -> None:
        return None


def open_store(config: Any, plugins: Any) -> Any:
    """The usage store ``[usage] store`` names, built by its registered factory.

    Raises ConfigError naming the installed stores when none has that name, or when the store
    cannot start.
    """
    from tollway.errors import ConfigError

    stores = plugins.registrations("usage_stores")
    registration = stores.get(config.store)
    if registration is None:
        hint = (
            ' (install it: pip install "tollway[postgres]")' if config.store == "postgres" else ""
        )
        raise ConfigError(
            f"no usage store is called {config.store!r}{hint}; the installed ones are: "
            f"{', '.join(sorted(stores)) or 'none'}",
            key="usage.store",
        )
    try:
        return registration.factory(config)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(
            f"the {config.store} usage store cannot start: {exc}", key="usage"
        ) from exc
