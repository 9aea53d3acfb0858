"""Checking that a usage store agrees with the reference aggregation.

Every store must answer a :class:`~tollway.usage.records.UsageQuery` exactly as
:func:`tollway.usage.store.aggregate` does over the same records. A store's tests call
:func:`check_agrees` with seeded random records and queries (no dependency but the stdlib, so
a plugin can use it as is); the core's own tests also drive the SQLite store with hypothesis.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from decimal import Decimal

from tollway.types import Cost, Usage
from tollway.usage.records import UsageQuery, UsageRecord
from tollway.usage.store import UsageStore, aggregate

# 2026-03-01T00:00:00Z: a Sunday, so week buckets start on the day before.
BASE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SPAN_US = 40 * 86_400_000_000  # records fall across 40 days, over a month boundary

VALUES: dict[str, tuple[str | None, ...]] = {
    "provider": ("openai", "anthropic"),
    "model": ("openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-sonnet-4"),
    "user": (None, "u-1", "u-2", "u-17"),
    "session": (None, "s-1", "s-2"),
    "team": (None, "research", "support"),
    "api_key_id": (None, "key-a", "key-b"),
    "prompt_hash": (None, "aa", "bb"),
}
TAGS: dict[str, tuple[str, ...]] = {"env": ("prod", "dev"), "app": ("chat", "batch")}
DIMENSIONS = (*VALUES, "cached", "stream", "tag:env", "tag:app")
BUCKET_NAMES = ("hour", "day", "week", "month")


def nanos(rng: random.Random, top: int = 5_000_000_000) -> Decimal:
    """A random amount with up to nine decimals (what a store keeps exactly)."""
    return Decimal(rng.randrange(0, top)) / Decimal(1_000_000_000)


def sample_record(rng: random.Random, index: int) -> UsageRecord:
    micros = rng.randrange(0, SPAN_US)
    if rng.random() < 0.2:  # on or next to a boundary, where off-by-one errors live
        micros = micros - micros % 3_600_000_000 + rng.choice((0, 1, -1)) % 3_600_000_000
    when = BASE + dt.timedelta(microseconds=micros)
    pick = {name: rng.choice(values) for name, values in VALUES.items()}
    tags = {name: rng.choice(values) for name, values in TAGS.items() if rng.random() < 0.5}
    cached = rng.random() < 0.2
    return UsageRecord(
        id=f"r{index}-{rng.randrange(1 << 30)}",
        timestamp=(when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
        / dt.timedelta(microseconds=1)
        / 1_000_000,
        provider=pick["provider"] or "openai",
        model=pick["model"] or "openai/gpt-4o-mini",
        usage=Usage(*(rng.randrange(0, 5000) for _ in range(5))),
        cost=Cost(
            input=nanos(rng),
            output=nanos(rng),
            cache_read=nanos(rng),
            cache_write=nanos(rng),
            reasoning=nanos(rng),
            request=nanos(rng),
        ),
        user=pick["user"],
        session=pick["session"],
        team=pick["team"],
        api_key_id=pick["api_key_id"],
        tags=tags,
        cached=cached,
        saved=nanos(rng) if cached else Decimal(0),
        stream=rng.random() < 0.3,
        latency_s=rng.random(),
        request_id=rng.choice((None, "req-1")),
        prompt_hash=pick["prompt_hash"],
        finish_reason=rng.choice((None, "stop", "length")),
    )


def sample_records(rng: random.Random, count: int) -> list[UsageRecord]:
    return [sample_record(rng, i) for i in range(count)]


def _bound(rng: random.Random) -> dt.datetime | None:
    roll = rng.random()
    if roll < 0.25:
        return None
    micros = rng.randrange(0, SPAN_US)
    if roll < 0.5:
        micros -= micros % 86_400_000_000  # a whole day
    elif roll < 0.7:
        micros -= micros % 3_600_000_000  # a whole hour
    return BASE + dt.timedelta(microseconds=micros)


def sample_query(rng: random.Random) -> UsageQuery:
    since, until = _bound(rng), _bound(rng)
    if since is not None and until is not None and since > until and rng.random() < 0.8:
        since, until = until, since
    filters: dict[str, str] = {}
    for name in rng.sample(DIMENSIONS, rng.choice((0, 0, 1, 1, 2))):
        if name in ("cached", "stream"):
            filters[name] = rng.choice(("true", "false"))
        elif name.startswith("tag:"):
            filters[name] = rng.choice((*TAGS[name[4:]], "None"))
        else:
            filters[name] = str(rng.choice(VALUES[name]))
    group_by = list(rng.sample(DIMENSIONS, rng.choice((0, 1, 1, 2, 2, 3))))
    if rng.random() < 0.5:
        group_by.insert(rng.randrange(len(group_by) + 1), rng.choice(BUCKET_NAMES))
    return UsageQuery(since=since, until=until, filters=filters, group_by=tuple(group_by))


def rollup_friendly_query(rng: random.Random) -> UsageQuery:
    """A query the rollups can answer (no session, tag, flag or prompt-hash dimension)."""
    dims = ("provider", "model", "user", "team", "api_key_id")
    filters = {n: str(rng.choice(VALUES[n])) for n in rng.sample(dims, rng.choice((0, 1)))}
    group_by = list(rng.sample(dims, rng.choice((0, 1, 2))))
    if rng.random() < 0.6:
        group_by.append(rng.choice(BUCKET_NAMES))
    since, until = _bound(rng), _bound(rng)
    return UsageQuery(since=since, until=until, filters=filters, group_by=tuple(group_by))


async def check_agrees(
    store: UsageStore, records: Sequence[UsageRecord], queries: Sequence[UsageQuery]
) -> None:
    """Assert the store answers every query as the reference does over ``records``."""
    for query in queries:
        got = await store.query(query)
        want = aggregate(records, query)
        if got != want:
            raise AssertionError(
                f"the store disagrees with the reference aggregation for {query!r}:\n"
                f"  store:     {got!r}\n  reference: {want!r}"
            )
