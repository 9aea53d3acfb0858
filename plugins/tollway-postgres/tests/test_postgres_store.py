"""The PostgreSQL usage store against the real server, each test in a schema of its own.

It must answer exactly as the reference aggregation does (seeded random records and queries,
with and without rollups), skip ids already stored, migrate under a lock, refuse a newer
schema, archive and delete whole days, and say what to do when the server cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import gzip
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from tollway.plugins import build_plugin_manager
from tollway.testing.services import require_postgres, unique_namespace
from tollway.types import Cost, Usage
from tollway.usage import contract
from tollway.usage.config import UsageConfig
from tollway.usage.records import UsageQuery, UsageRecord
from tollway.usage.store import aggregate, open_store
from tollway_postgres.store import PostgresUsageStore


@pytest_asyncio.fixture
async def schema() -> AsyncIterator[str]:
    dsn = require_postgres()
    name = unique_namespace("usage").replace("-", "_")
    yield name
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def store(schema: str, tmp_path: Path) -> AsyncIterator[PostgresUsageStore]:
    instance = PostgresUsageStore(
        require_postgres(), schema=schema, archive_dir=tmp_path / "archive"
    )
    yield instance
    await instance.aclose()


def test_the_plugin_registers_the_postgres_store(schema: str) -> None:
    plugins = build_plugin_manager()
    assert plugins.registrations("usage_stores")["postgres"].plugin == "postgres"
    store = open_store(
        UsageConfig(store="postgres", dsn=require_postgres(), schema=schema), plugins
    )
    assert isinstance(store, PostgresUsageStore)
    assert store.schema == schema


async def test_postgres_answers_as_the_reference_does(store: PostgresUsageStore) -> None:
    rng = random.Random(2026)
    records = contract.sample_records(rng, 600)
    await store.write(records[:300])
    await store.write(records)  # the first half again: skipped, not doubled
    queries = [contract.sample_query(rng) for _ in range(60)]
    queries += [contract.rollup_friendly_query(rng) for _ in range(40)]
    await contract.check_agrees(store, records, queries)
    store.use_rollups = False
    await contract.check_agrees(store, records, queries)


async def test_records_come_back_as_written(store: PostgresUsageStore) -> None:
    rng = random.Random(5)
    records = contract.sample_records(rng, 2500)
    await store.write(records)
    read = [r async for r in store.records(UsageQuery())]
    assert read == sorted(records, key=lambda r: (r.timestamp, r.id))
    only = [r async for r in store.records(UsageQuery(filters={"user": "u-17"}))]
    assert only
    assert all(r.user == "u-17" for r in only)


async def test_a_newer_schema_is_refused(schema: str, store: PostgresUsageStore) -> None:
    await store.query(UsageQuery())  # creates the schema at the current version
    conn = await asyncpg.connect(require_postgres())
    try:
        await conn.execute(f'UPDATE "{schema}".schema_version SET version = 42')
    finally:
        await conn.close()
    newer = PostgresUsageStore(require_postgres(), schema=schema)
    try:
        with pytest.raises(RuntimeError, match="at version 42, newer than this"):
            await newer.query(UsageQuery())
    finally:
        await newer.aclose()


async def test_a_version_1_schema_gets_monthly_rollups(
    schema: str, store: PostgresUsageStore
) -> None:
    rng = random.Random(21)
    records = contract.sample_records(rng, 400)
    await store.write(records)
    await store.aclose()
    # Back to what version 1 had (no monthly rollup, five raw indexes), with March archived:
    # only the hourly and daily rollups remember it.
    conn = await asyncpg.connect(require_postgres())
    try:
        s = f'"{schema}"'
        await conn.execute(f"DROP TABLE {s}.usage_rollup_month, {s}.usage_rollup_week")
        await conn.execute(
            f"CREATE INDEX usage_records_user_model_ts ON {s}.usage_records (user_id, model, ts)"
        )
        await conn.execute(f"UPDATE {s}.schema_version SET version = 1")
        await conn.execute(
            f"DELETE FROM {s}.usage_records WHERE ts < $1", dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
        )
    finally:
        await conn.close()
    upgraded = PostgresUsageStore(require_postgres(), schema=schema)
    try:
        month = UsageQuery(
            since=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
            until=dt.datetime(2026, 4, 1, tzinfo=dt.UTC),
            group_by=("user", "model"),
        )
        queries = [
            month,
            UsageQuery(group_by=("month", "team")),
            UsageQuery(group_by=("week", "user")),
            UsageQuery(group_by=("model",)),
            UsageQuery(since=dt.datetime(2026, 3, 2, 5, tzinfo=dt.UTC), group_by=("model",)),
        ]
        await contract.check_agrees(upgraded, records, queries)
        more = contract.sample_records(random.Random(22), 60)
        await upgraded.write(more)
        await contract.check_agrees(upgraded, [*records, *more], queries)
        conn = await asyncpg.connect(require_postgres())
        try:
            assert await conn.fetchval(f'SELECT version FROM "{schema}".schema_version') == 2
            indexes = await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema
            )
            assert "usage_records_user_model_ts" not in {r[0] for r in indexes}
        finally:
            await conn.close()
    finally:
        await upgraded.aclose()


async def test_retention_archives_and_keeps_rollups(
    store: PostgresUsageStore, tmp_path: Path
) -> None:
    base = dt.datetime(2026, 9, 30, 22, tzinfo=dt.UTC)
    records = [
        UsageRecord(
            id=f"id-{i}",
            timestamp=(base + dt.timedelta(hours=i)).timestamp(),
            provider="openai",
            model="openai/gpt-4o",
            usage=Usage(10, 10),
            cost=Cost(Decimal("0.25")),
            team="research",
        )
        for i in range(30)
    ]
    await store.write(records)
    assert await store.apply_retention(dt.datetime(2026, 10, 2, 12, tzinfo=dt.UTC)) == 2 + 24
    names = sorted(p.name for p in (tmp_path / "archive").iterdir())
    assert names == ["usage-2026-09-30.jsonl.gz", "usage-2026-10-01.jsonl.gz"]
    with gzip.open(tmp_path / "archive" / names[1], "rt") as file:
        assert len(file.readlines()) == 24
    by_day = UsageQuery(group_by=("day", "team"))
    assert await store.query(by_day) == aggregate(records, by_day)
    assert len([r async for r in store.records(UsageQuery())]) == 4


async def test_an_unreachable_server_is_named_without_its_password() -> None:
    store = PostgresUsageStore("postgresql://me:secret@127.0.0.1:1/db", schema="x")
    try:
        with pytest.raises(ConnectionError, match=r"me:\*\*\*@127.0.0.1:1.*check \[usage\] dsn"):
            await store.query(UsageQuery())
    finally:
        await store.aclose()
