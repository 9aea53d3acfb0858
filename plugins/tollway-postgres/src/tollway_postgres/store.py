"""PostgresUsageStore: usage records in PostgreSQL through one asyncpg pool.

The same design as the core's SQLite store (see :mod:`tollway.usage.sql`): money in BIGINT
nano-units, time as ``timestamptz``, a tag table, hourly, daily, weekly and monthly rollups
kept in the same transaction as the records (one statement upserts every level), and the same query
planner, so both answer exactly as the reference aggregation does. Batches go in with COPY.
Every table lives in ``[usage] schema`` (created when missing); migrations are versioned in
its ``schema_version`` table and run under an advisory lock, so many processes can start at
once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from tollway.usage.records import UsageQuery, UsageRecord, UsageRow
from tollway.usage.sql import (
    LEVELS,
    RECORD_COLUMNS,
    ROLLUP_COLUMNS,
    SUM_COLUMNS,
    build_query,
    from_micros,
    record_row,
    records_where,
    result_rows,
    rollup_rows,
    row_record,
    tag_rows,
    to_micros,
)

_PAGE = 2_000
_MIGRATION_LOCK = 0x746F6C6C  # "toll": one migrator at a time, across processes


def _migrations(s: str) -> tuple[str, ...]:
    sums = ", ".join(f"{c} BIGINT NOT NULL" for c in SUM_COLUMNS)

    def rollup(name: str) -> str:
        return f"""
        CREATE TABLE {s}.{name} (
            bucket timestamptz NOT NULL, key text NOT NULL, provider text NOT NULL,
            model text NOT NULL, user_id text, team text, api_key_id text,
            currency text NOT NULL, {sums}, PRIMARY KEY (bucket, key))
        """

    v1 = f"""
        CREATE TABLE {s}.usage_records (
            id text PRIMARY KEY,
            ts timestamptz NOT NULL,
            provider text NOT NULL, model text NOT NULL,
            user_id text, session_id text, team text, api_key_id text,
            tags text,
            cached boolean NOT NULL, stream boolean NOT NULL,
            input_tokens bigint NOT NULL, output_tokens bigint NOT NULL,
            cache_read_tokens bigint NOT NULL, cache_write_tokens bigint NOT NULL,
            reasoning_tokens bigint NOT NULL,
            cost_input bigint NOT NULL, cost_output bigint NOT NULL,
            cost_cache_read bigint NOT NULL, cost_cache_write bigint NOT NULL,
            cost_reasoning bigint NOT NULL, cost_request bigint NOT NULL,
            cost_total bigint NOT NULL, saved bigint NOT NULL,
            currency text NOT NULL,
            latency_s double precision, request_id text, prompt_hash text, finish_reason text
        );
        CREATE INDEX usage_records_ts ON {s}.usage_records (ts);
        CREATE INDEX usage_records_user_model_ts ON {s}.usage_records (user_id, model, ts);
        CREATE INDEX usage_records_team_ts ON {s}.usage_records (team, ts);
        CREATE INDEX usage_records_model_ts ON {s}.usage_records (model, ts);
        CREATE INDEX usage_records_prompt_hash ON {s}.usage_records (prompt_hash);
        CREATE TABLE {s}.usage_tags (
            record_id text NOT NULL, name text NOT NULL, value text NOT NULL,
            PRIMARY KEY (record_id, name));
        CREATE INDEX usage_tags_name_value ON {s}.usage_tags (name, value);
        {rollup("usage_rollup_hour")};
        {rollup("usage_rollup_day")};
    """
    # v2: weekly (ISO) and monthly rollups, filled from the daily one so that archived days
    # count; the raw table's (user, model, ts), (team, ts) and (model, ts) indexes go: the
    # rollups answer those queries, and every index slows every write.
    keys = "key, provider, model, user_id, team, api_key_id, currency"
    totals = ", ".join(f"SUM({c})" for c in SUM_COLUMNS)
    fills = []
    for level in ("week", "month"):
        start = f"date_trunc('{level}', bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        fills.append(f"""
        {rollup(f"usage_rollup_{level}")};
        INSERT INTO {s}.usage_rollup_{level} (bucket, {keys}, {", ".join(SUM_COLUMNS)})
            SELECT {start}, {keys}, {totals} FROM {s}.usage_rollup_day GROUP BY {start}, {keys};
        """)
    v2 = f"""
        {"".join(fills)}
        DROP INDEX IF EXISTS {s}.usage_records_user_model_ts;
        DROP INDEX IF EXISTS {s}.usage_records_team_ts;
        DROP INDEX IF EXISTS {s}.usage_records_model_ts;
    """
    return (v1, v2)


class PostgresDialect:
    """Time is ``timestamptz``; buckets are ``date_trunc`` in UTC."""

    def placeholder(self, index: int) -> str:
        return f"${index}"

    def time_param(self, micros: int) -> Any:
        return from_micros(micros)

    def bucket_expr(self, bucket: str, column: str) -> str:
        return f"date_trunc('{bucket}', {column} AT TIME ZONE 'UTC')"

    def bucket_param(self, bucket: str, start: dt.datetime) -> Any:
        return start.astimezone(dt.UTC).replace(tzinfo=None)

    def bucket_iso(self, bucket: str, value: Any) -> str:
        return str(value.replace(tzinfo=dt.UTC).isoformat())

    def flag(self, column: str, value: bool) -> str:
        return f"{column} = {'TRUE' if value else 'FALSE'}"

    def flag_count(self, column: str) -> str:
        return f"SUM({column}::int)"


class _Tables:
    def __init__(self, schema: str) -> None:
        self.records = f"{schema}.usage_records"
        self.tags = f"{schema}.usage_tags"
        self.rollup_hour = f"{schema}.usage_rollup_hour"
        self.rollup_day = f"{schema}.usage_rollup_day"
        self.rollup_week = f"{schema}.usage_rollup_week"
        self.rollup_month = f"{schema}.usage_rollup_month"


DIALECT = PostgresDialect()


def _quote(schema: str) -> str:
    if not schema.replace("_", "").isalnum():
        raise ValueError(f"schema {schema!r} must be letters, digits and '_'")
    return f'"{schema}"'


class PostgresUsageStore:
    """Usage records in PostgreSQL. Connects on first use; one pool per store."""

    SCHEMA_VERSION = 2

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "tollway",
        archive_dir: str | Path | None = None,
        use_rollups: bool = True,
        pool_options: dict[str, Any] | None = None,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self._s = _quote(schema)
        self.tables = _Tables(self._s)
        self.archive_dir = Path(archive_dir) if archive_dir is not None else None
        self.use_rollups = use_rollups
        self.pool_options = {"min_size": 1, "max_size": 10, **(pool_options or {})}
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._upsert_rollups = self._upsert()

    @classmethod
    def from_config(cls, config: Any) -> PostgresUsageStore:
        return cls(
            config.dsn,
            schema=config.schema,
            archive_dir=config.archive_dir,
            pool_options=dict(config.options),
        )

    def _upsert(self) -> str:
        """One statement adding a batch's hourly sums (as arrays) to every rollup level: the
        day, week and month sums are grouped from them in the server, in one round trip."""
        types = ("timestamptz", "text", "text", "text", "text", "text", "text", "text")
        types += ("bigint",) * len(SUM_COLUMNS)
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
        columns = ", ".join(ROLLUP_COLUMNS)
        keys = ", ".join(c for c in ROLLUP_COLUMNS[1:] if c not in SUM_COLUMNS)
        totals = ", ".join(f"SUM({c})" for c in SUM_COLUMNS)
        updates = ", ".join(f"{c} = t.{c} + excluded.{c}" for c in SUM_COLUMNS)
        parts = [f"hourly ({columns}) AS (SELECT * FROM unnest({arrays}))"]
        for level in LEVELS:
            table = getattr(self.tables, f"rollup_{level}")
            if level == "hour":
                select = "SELECT * FROM hourly"
            else:
                start = f"date_trunc('{level}', bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
                select = f"SELECT {start}, {keys}, {totals} FROM hourly GROUP BY {start}, {keys}"
            parts.append(
                f"up_{level} AS (INSERT INTO {table} AS t ({columns}) {select} "
                f"ON CONFLICT (bucket, key) DO UPDATE SET {updates})"
            )
        return f"WITH {', '.join(parts)} SELECT 1"

    async def _connect(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is not None:
                return self._pool
            if self._closed:
                raise RuntimeError("this usage store is closed")
            try:
                pool = await asyncpg.create_pool(self.dsn, **self.pool_options)
            except (OSError, asyncpg.PostgresError) as exc:
                raise ConnectionError(
                    f"cannot reach the PostgreSQL usage store at {_safe(self.dsn)}: {exc}; "
                    "check [usage] dsn and that the server is running"
                ) from exc
            try:
                await self._migrate(pool)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            return pool

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        s = self._s
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {s}.schema_version (version int)")
            found = await conn.fetchval(f"SELECT max(version) FROM {s}.schema_version") or 0
            migrations = _migrations(s)
            if found > len(migrations):
                raise RuntimeError(
                    f"the usage schema {self.schema} is at version {found}, newer than this "
                    f"tollway-postgres knows ({len(migrations)}); upgrade tollway-postgres, or "
                    "set [usage] schema to another schema"
                )
            for version in range(found + 1, len(migrations) + 1):
                await conn.execute(migrations[version - 1])
                await conn.execute(f"DELETE FROM {s}.schema_version")
                await conn.execute(f"INSERT INTO {s}.schema_version VALUES ($1)", version)

    # -- the UsageStore protocol -------------------------------------------------------------

    async def write(self, records: Sequence[UsageRecord]) -> None:
        """Store a batch in one transaction (COPY); ids already stored are skipped."""
        if not records:
            return
        unique: dict[str, UsageRecord] = {}
        for record in records:
            unique.setdefault(record.id, record)
        pool = await self._connect()
        async with pool.acquire() as conn, conn.transaction():
            for (found,) in await conn.fetch(
                f"SELECT id FROM {self.tables.records} WHERE id = ANY($1::text[])", list(unique)
            ):
                del unique[found]
            new = list(unique.values())
            if not new:
                return
            plain = [record_row(r) for r in new]
            hourly = rollup_rows(new, plain, levels=("hour",))["hour"]
            rows = []
            for values in plain:
                row = list(values)
                row[1] = from_micros(row[1])
                rows.append(row)
            await conn.copy_records_to_table(
                "usage_records", records=rows, columns=RECORD_COLUMNS, schema_name=self.schema
            )
            tags = tag_rows(new)
            if tags:
                await conn.copy_records_to_table(
                    "usage_tags", records=tags, columns=("record_id", "name", "value"),
                    schema_name=self.schema,
                )  # fmt: skip
            columns = [list(column) for column in zip(*hourly, strict=True)]
            columns[0] = [from_micros(micros) for micros in columns[0]]
            await conn.execute(self._upsert_rollups, *columns)

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        sql, params = build_query(query, DIALECT, self.tables, use_rollups=self.use_rollups)
        pool = await self._connect()
        rows = await pool.fetch(sql, *params)
        return result_rows(query, DIALECT, rows)

    async def records(self, query: UsageQuery) -> AsyncIterator[UsageRecord]:
        """Every matching record, oldest first, a page at a time."""
        pool = await self._connect()
        columns = ", ".join(f"r.{c}" for c in RECORD_COLUMNS)
        after: tuple[dt.datetime, str] | None = None
        while True:
            where, params = records_where(query, DIALECT, self.tables)
            if after is not None:
                n = len(params)
                where += f" AND (r.ts, r.id) > (${n + 1}, ${n + 2})"
                params += [after[0], after[1]]
            rows = await pool.fetch(
                f"SELECT {columns} FROM {self.tables.records} r WHERE {where} "
                f"ORDER BY r.ts, r.id LIMIT {_PAGE}",
                *params,
            )
            for row in rows:
                yield row_record(tuple(row), to_micros(row["ts"]))
            if len(rows) < _PAGE:
                return
            after = (rows[-1]["ts"], rows[-1]["id"])

    async def aclose(self) -> None:
        """Close the pool. Safe to call twice."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- administration ----------------------------------------------------------------------

    async def delete_records(self, until: dt.datetime, since: dt.datetime | None = None) -> int:
        """Delete raw records (and their tags) in [since, until); rollups are kept."""
        pool = await self._connect()
        bounds = "ts < $1" + (" AND ts >= $2" if since is not None else "")
        params: list[Any] = [until] if since is None else [until, since]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"DELETE FROM {self.tables.tags} WHERE record_id IN "
                f"(SELECT id FROM {self.tables.records} WHERE {bounds})",
                *params,
            )
            status = await conn.execute(
                f"DELETE FROM {self.tables.records} WHERE {bounds}", *params
            )
        return int(status.split()[-1])

    async def apply_retention(
        self, older_than: dt.datetime | dt.timedelta, archive_dir: str | Path | None = None
    ) -> int:
        """Archive whole UTC days before ``older_than`` to gzip JSONL, then delete them."""
        from tollway.usage.retention import apply_retention

        directory = archive_dir or self.archive_dir
        if directory is None:
            raise ValueError("no archive directory: set [usage] archive_dir or pass archive_dir")
        return await apply_retention(self, older_than, directory)


def _safe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn
