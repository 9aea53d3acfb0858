"""The SQLite usage store: it answers as the reference aggregation does, with or without its
rollups; writes are idempotent; old databases migrate, newer ones are refused; retention archives
and deletes whole days and keeps the rollups; export keeps money exact."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import gzip
import io
import json
import random
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.config import Config
from tollway.errors import ConfigError
from tollway.plugins import build_plugin_manager
from tollway.types import Cost, Usage
from tollway.usage import contract
from tollway.usage.config import UsageConfig
from tollway.usage.export import export_records, record_from_dict, write_records, write_rows
from tollway.usage.migrations import MIGRATIONS, SCHEMA_VERSION, migrate
from tollway.usage.records import UsageQuery, UsageRecord
from tollway.usage.sql import month_floor, plan_segments, week_floor
from tollway.usage.sqlite import SQLiteUsageStore
from tollway.usage.store import MemoryUsageStore, aggregate, open_store

HOUR = 3_600_000_000
DAY = 86_400_000_000


def record(index: int, when: dt.datetime, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "id": f"id-{index}",
        "timestamp": when.timestamp(),
        "provider": "openai",
        "model": "openai/gpt-4o-mini",
        "usage": Usage(100, 20),
        "cost": Cost(Decimal("0.000015"), Decimal("0.000012")),
        "user": "u-1",
    }
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]


# -- agreement with the reference -----------------------------------------------------------

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=seeds, count=st.integers(min_value=0, max_value=120))
def test_sqlite_answers_as_the_reference_does(tmp_path: Path, seed: int, count: int) -> None:
    rng = random.Random(seed)
    records = contract.sample_records(rng, count)
    queries = [contract.sample_query(rng) for _ in range(6)]
    queries += [contract.rollup_friendly_query(rng) for _ in range(6)]

    path = tmp_path / f"agree-{seed}-{count}.db"

    async def run() -> None:
        store = SQLiteUsageStore(path)
        try:
            # Two batches, one written twice: ids already stored change nothing.
            await store.write(records[: count // 2])
            await store.write(records)
            await contract.check_agrees(store, records, queries)
            store.use_rollups = False
            await contract.check_agrees(store, records, queries)
        finally:
            await store.aclose()

    asyncio.run(run())
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@given(
    lo=st.one_of(st.none(), st.integers(0, 40 * DAY)),
    width=st.one_of(st.none(), st.integers(0, 40 * DAY)),
    allow_day=st.booleans(),
    allow_month=st.booleans(),
    allow_week=st.booleans(),
)
def test_the_segments_cover_the_range_once(
    lo: int | None, width: int | None, allow_day: bool, allow_month: bool, allow_week: bool
) -> None:
    hi = None if width is None else (lo or 0) + width
    allow_month, allow_week = allow_month and allow_day, allow_week and allow_day
    segments = plan_segments(lo, hi, allow_day, allow_month, allow_week)
    probes = {0, 1, HOUR - 1, HOUR, DAY - 1, DAY, 3 * DAY + 5, 39 * DAY + HOUR + 7}
    probes |= {p + d for p in (lo or 0, hi or 0) for d in (-1, 0, 1) if p + d >= 0}
    for t in probes:
        inside = (lo is None or t >= lo) and (hi is None or t < hi)
        covering = [
            s for s in segments if (s[1] is None or t >= s[1]) and (s[2] is None or t < s[2])
        ]
        assert len(covering) == (1 if inside else 0), (t, segments)
    for source, a, b in segments:
        if source in ("hour", "day"):
            width_of = HOUR if source == "hour" else DAY
            assert a is None or a % width_of == 0
            assert b is None or b % width_of == 0
        if source == "day":
            assert allow_day
        if source == "month":
            assert allow_month
            for edge in (a, b):
                assert edge is None or month_floor(edge) == edge
        if source == "week":
            assert allow_week
            for edge in (a, b):
                assert edge is None or week_floor(edge) == edge


async def test_rollups_answer_a_month_by_user_and_model(tmp_path: Path) -> None:
    rng = random.Random(7)
    records = contract.sample_records(rng, 400)
    query = UsageQuery(
        since=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        until=dt.datetime(2026, 4, 1, tzinfo=dt.UTC),
        group_by=("user", "model"),
    )
    store = SQLiteUsageStore(tmp_path / "u.db")
    try:
        await store.write(records)
        assert await store.query(query) == aggregate(records, query)
        # The daily rollups answer it alone: with the raw records gone it still answers.
        await store.delete_records(dt.datetime(2026, 4, 1, tzinfo=dt.UTC))
        assert await store.query(query) == aggregate(records, query)
        store.use_rollups = False
        assert await store.query(query) == []
    finally:
        await store.aclose()


# -- writing and reading records ------------------------------------------------------------


async def test_records_come_back_as_written_oldest_first(tmp_path: Path) -> None:
    rng = random.Random(3)
    records = contract.sample_records(rng, 4500)  # more than two pages
    store = SQLiteUsageStore(tmp_path / "u.db")
    try:
        await store.write(records)
        await store.write(records[:10])
        read = [r async for r in store.records(UsageQuery())]
        assert read == sorted(records, key=lambda r: r.timestamp)
        query = UsageQuery(filters={"team": "research", "tag:env": "prod"})
        filtered = [r async for r in store.records(query)]
        assert filtered == sorted(
            (r for r in records if r.team == "research" and r.tags.get("env") == "prod"),
            key=lambda r: r.timestamp,
        )
    finally:
        await store.aclose()


async def test_money_is_kept_in_integer_nano_units(tmp_path: Path) -> None:
    store = SQLiteUsageStore(tmp_path / "u.db")
    when = dt.datetime(2026, 11, 3, 12, tzinfo=dt.UTC)
    cost = Cost(Decimal("0.000000001"), Decimal("1234.567890123"), currency="EUR")
    try:
        await store.write([record(1, when, cost=cost, saved=Decimal("0.1"))])
        [row] = await store.query(UsageQuery())
        assert row.cost == Decimal("1234.567890124")
        assert row.saved == Decimal("0.1")
        assert row.currency == "EUR"
        [back] = [r async for r in store.records(UsageQuery())]
        assert back.cost == cost
    finally:
        await store.aclose()
    conn = sqlite3.connect(tmp_path / "u.db")
    try:
        raw = conn.execute("SELECT cost_total, cost_input, typeof(cost_total) FROM usage_records")
        assert raw.fetchone() == (1234567890124, 1, "integer")
    finally:
        conn.close()


def test_the_sqlite_store_is_registered_and_follows_the_config(tmp_path: Path) -> None:
    plugins = build_plugin_manager(load_entrypoints=False)
    assert {"sqlite", "memory"} <= set(plugins.registrations("usage_stores"))
    path = tmp_path / "here" / "usage.db"
    store = open_store(UsageConfig(path=str(path)), plugins)
    assert isinstance(store, SQLiteUsageStore)
    assert store.path == path
    assert path.exists()
    asyncio.run(store.aclose())
    assert isinstance(open_store(UsageConfig(store="memory"), plugins), MemoryUsageStore)
    with pytest.raises(ConfigError, match=r"no usage store is called 'nope'.*sqlite"):
        open_store(UsageConfig(store="nope"), plugins)


def test_the_default_path_is_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tollway.usage.sqlite import default_path

    monkeypatch.setenv("TOLLWAY_DATA_DIR", str(tmp_path))
    assert default_path() == tmp_path / "usage.db"
    monkeypatch.delenv("TOLLWAY_DATA_DIR")
    assert default_path() == Path.home() / ".local" / "share" / "tollway" / "usage.db"


def test_bad_usage_config_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        UsageConfig(batch_size=0)
    with pytest.raises(ValueError, match="max_pending"):
        UsageConfig(batch_size=100, max_pending=10)
    assert Config().usage.store == "sqlite"


# -- migrations -----------------------------------------------------------------------------


async def test_an_older_database_is_migrated_and_its_rollups_filled(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    rng = random.Random(11)
    records = contract.sample_records(rng, 200)
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, str(path), target=1)  # as the first tollway release left it
    from tollway.usage.sql import RECORD_COLUMNS, record_row

    marks = ", ".join("?" for _ in RECORD_COLUMNS)
    conn.executemany(f"INSERT INTO usage_records VALUES ({marks})", map(record_row, records))
    conn.close()

    store = SQLiteUsageStore(path)
    try:
        await contract.check_agrees(
            store, records, [contract.rollup_friendly_query(rng) for _ in range(10)]
        )
        query = UsageQuery(filters={"tag:env": "prod"}, group_by=("day",))
        assert await store.query(query) == aggregate(records, query)
    finally:
        await store.aclose()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        conn.close()
    assert len(MIGRATIONS) == SCHEMA_VERSION == 3


async def test_a_version_2_database_gets_weekly_and_monthly_rollups_keeping_archived_days(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    rng = random.Random(12)
    records = contract.sample_records(rng, 300)
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, str(path), target=2)  # as the second release left it: hour and day rollups
    from tollway.usage.migrations import insert_derived
    from tollway.usage.sql import RECORD_COLUMNS, record_row

    rows = [record_row(r) for r in records]
    marks = ", ".join("?" for _ in RECORD_COLUMNS)
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO usage_records VALUES ({marks})", rows)
    insert_derived(conn, records, rows, levels=("hour", "day"))
    # Archived before the upgrade: only the daily and hourly rollups remember March.
    conn.execute("DELETE FROM usage_records WHERE ts < ?", (to_us(dt.datetime(2026, 4, 1)),))
    conn.execute("COMMIT")
    conn.close()

    store = SQLiteUsageStore(path)
    try:
        month = UsageQuery(
            since=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
            until=dt.datetime(2026, 4, 1, tzinfo=dt.UTC),
            group_by=("user", "model"),
        )
        assert await store.query(month) == aggregate(records, month)
        coarse = [
            UsageQuery(group_by=("month", "team")),
            UsageQuery(group_by=("week", "user")),
            UsageQuery(since=dt.datetime(2026, 3, 2, 5, tzinfo=dt.UTC), group_by=("model",)),
        ]
        await contract.check_agrees(store, records, coarse)
        # Written after the upgrade, new records reach the monthly rollup too.
        more = contract.sample_records(random.Random(13), 50)
        await store.write(more)
        assert await store.query(month) == aggregate([*records, *more], month)
    finally:
        await store.aclose()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (3,)
        indexes = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage_records'"
            )
        }
        assert "usage_records_user_model_ts" not in indexes
        assert {"usage_records_ts", "usage_records_prompt_hash"} <= indexes
    finally:
        conn.close()


def to_us(when: dt.datetime) -> int:
    return (when.replace(tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(
        microseconds=1
    )


async def test_a_time_bucket_filter_reads_rollups_of_its_own_width(tmp_path: Path) -> None:
    rng = random.Random(5)
    records = contract.sample_records(rng, 400)
    store = SQLiteUsageStore(tmp_path / "b.db")
    try:
        await store.write(records)
        queries = [
            UsageQuery(filters={"hour": "2026-03-02T00:00:00+00:00"}, group_by=("user",)),
            UsageQuery(filters={"day": "2026-03-02T00:00:00+00:00"}, group_by=("model",)),
            UsageQuery(filters={"week": "2026-03-02T00:00:00+00:00"}),
            UsageQuery(filters={"month": "2026-03-01T00:00:00+00:00"}, group_by=("user",)),
            UsageQuery(group_by=("week", "model")),
            UsageQuery(group_by=("month",)),
            # Weeks and months do not nest: neither rollup can answer for the other.
            UsageQuery(filters={"month": "2026-03-01T00:00:00+00:00"}, group_by=("week", "user")),
            UsageQuery(filters={"week": "2026-03-30T00:00:00+00:00"}, group_by=("month",)),
        ]
        await contract.check_agrees(store, records, queries)
    finally:
        await store.aclose()


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    create_store_file(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 99, newer than this tollway"):
        SQLiteUsageStore(path)


def create_store_file(path: Path) -> None:
    asyncio.run(SQLiteUsageStore(path).aclose())


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(RuntimeError, match=f"cannot open the usage database {path}"):
        SQLiteUsageStore(path)
    with pytest.raises(FileNotFoundError, match="no usage database at"):
        SQLiteUsageStore(tmp_path / "missing.db", create=False)


# -- retention ------------------------------------------------------------------------------


async def test_retention_archives_whole_days_then_deletes_them(tmp_path: Path) -> None:
    day1 = dt.datetime(2026, 10, 1, 23, 59, tzinfo=dt.UTC)
    day2 = dt.datetime(2026, 10, 2, 0, 1, tzinfo=dt.UTC)
    day3 = dt.datetime(2026, 10, 3, 12, tzinfo=dt.UTC)
    records = [
        record(1, day1, tags={"env": "prod"}),
        record(2, day1 + dt.timedelta(seconds=30), user="u-2"),
        record(3, day2),
        record(4, day3),
    ]
    archive = tmp_path / "archive"
    store = SQLiteUsageStore(tmp_path / "u.db", archive_dir=archive)
    try:
        await store.write(records)
        # A cutoff in the middle of 3 October keeps that whole day.
        archived = await store.apply_retention(dt.datetime(2026, 10, 3, 15, tzinfo=dt.UTC))
        assert archived == 3
        assert sorted(p.name for p in archive.iterdir()) == [
            "usage-2026-10-01.jsonl.gz",
            "usage-2026-10-02.jsonl.gz",
        ]
        with gzip.open(archive / "usage-2026-10-01.jsonl.gz", "rt") as file:
            back = [record_from_dict(json.loads(line)) for line in file]
        assert back == records[:2]
        assert [r.id async for r in store.records(UsageQuery())] == ["id-4"]
        # The rollups keep the archived days: spend by day and user still answers.
        by_day = UsageQuery(group_by=("day", "user"))
        assert await store.query(by_day) == aggregate(records, by_day)
        # Running it again archives nothing twice.
        assert await store.apply_retention(dt.datetime(2026, 10, 3, tzinfo=dt.UTC)) == 0
        with gzip.open(archive / "usage-2026-10-01.jsonl.gz", "rt") as file:
            assert len(file.readlines()) == 2
    finally:
        await store.aclose()


async def test_retention_after_an_interrupted_run_writes_no_duplicates(tmp_path: Path) -> None:
    from tollway.usage.retention import _write_day

    when = dt.datetime(2026, 10, 1, 8, tzinfo=dt.UTC)
    records = [record(i, when + dt.timedelta(minutes=i)) for i in range(5)]
    archive = tmp_path / "archive"
    store = SQLiteUsageStore(tmp_path / "u.db", archive_dir=archive)
    try:
        await store.write(records)
        from tollway.usage.export import record_dict

        # An earlier run wrote the file for three of them, then stopped before deleting.
        _write_day(archive, when.date(), [(r.id, json.dumps(record_dict(r))) for r in records[:3]])
        assert await store.apply_retention(dt.timedelta(days=1)) == 5
        with gzip.open(archive / "usage-2026-10-01.jsonl.gz", "rt") as file:
            ids = [json.loads(line)["id"] for line in file]
        assert sorted(ids) == [r.id for r in records]
    finally:
        await store.aclose()


# -- export ---------------------------------------------------------------------------------


async def test_export_writes_csv_and_json_with_money_as_strings(tmp_path: Path) -> None:
    when = dt.datetime(2026, 11, 3, 12, tzinfo=dt.UTC)
    records = [
        record(1, when, tags={"env": "prod"}),
        record(2, when, user="u-2", cost=Cost(Decimal("0.1"), Decimal("0.2"))),
    ]
    query = UsageQuery(group_by=("user",))
    rows = aggregate(records, query)

    out = io.StringIO()
    write_rows(rows, out, "csv", query.group_by)
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["user"], r["cost"], r["calls"]) for r in table] == [
        ("u-1", "0.000027", "1"),
        ("u-2", "0.3", "1"),
    ]
    out = io.StringIO()
    write_rows(rows, out, "json")
    assert json.loads(out.getvalue())[1]["cost"] == "0.3"

    out = io.StringIO()
    assert write_records(records, out, "json") == 2
    assert [record_from_dict(json.loads(line)) for line in out.getvalue().splitlines()] == records

    store = MemoryUsageStore()
    await store.write(records)
    out = io.StringIO()
    assert await export_records(store.records(UsageQuery()), out, "csv") == 2
    lines = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert lines[0]["tags"] == '{"env": "prod"}'
    assert lines[1]["cost"] == "0.3"
    with pytest.raises(ValueError, match="xml"):
        write_rows(rows, out, "xml")
