"""Versioned schema migrations of the SQLite usage store.

``schema_version`` holds one row: the version the database is at. Migration N takes a database
at version N-1 to N, inside one transaction. Opening a database migrates it up to
:data:`SCHEMA_VERSION`; a database newer than this tollway knows is refused rather than
guessed at. Add a migration by appending a function to :data:`MIGRATIONS`; never edit one that
has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from tollway.usage.records import UsageRecord
from tollway.usage.sql import (
    RECORD_COLUMNS,
    ROLLUP_COLUMNS,
    SUM_COLUMNS,
    rollup_rows,
    row_record,
    tag_rows,
)

_RECORDS = """
CREATE TABLE usage_records (
    id TEXT NOT NULL UNIQUE,
    ts INTEGER NOT NULL,                -- microseconds since the epoch, UTC
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    user_id TEXT,
    session_id TEXT,
    team TEXT,
    api_key_id TEXT,
    tags TEXT,                          -- JSON object, NULL when there are none
    cached INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_input INTEGER NOT NULL,        -- money: integer nano-units of the currency
    cost_output INTEGER NOT NULL,
    cost_cache_read INTEGER NOT NULL,
    cost_cache_write INTEGER NOT NULL,
    cost_reasoning INTEGER NOT NULL,
    cost_request INTEGER NOT NULL,
    cost_total INTEGER NOT NULL,
    saved INTEGER NOT NULL,
    currency TEXT NOT NULL,
    latency_s REAL,
    request_id TEXT,
    prompt_hash TEXT,
    finish_reason TEXT
);
CREATE INDEX usage_records_ts ON usage_records (ts);
CREATE INDEX usage_records_user_model_ts ON usage_records (user_id, model, ts);
CREATE INDEX usage_records_team_ts ON usage_records (team, ts);
CREATE INDEX usage_records_model_ts ON usage_records (model, ts);
CREATE INDEX usage_records_prompt_hash ON usage_records (prompt_hash);
"""


def _rollup_table(name: str) -> str:
    sums = ", ".join(f"{c} INTEGER NOT NULL" for c in SUM_COLUMNS)
    return f"""
CREATE TABLE {name} (
    bucket INTEGER NOT NULL,
    key TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    user_id TEXT,
    team TEXT,
    api_key_id TEXT,
    currency TEXT NOT NULL,
    {sums},
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
"""


def _v1_records(conn: sqlite3.Connection) -> None:
    for statement in _RECORDS.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v2_tags_and_rollups(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE usage_tags (record_id TEXT NOT NULL, name TEXT NOT NULL, "
        "value TEXT NOT NULL, PRIMARY KEY (record_id, name)) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX usage_tags_name_value ON usage_tags (name, value)")
    conn.execute(_rollup_table("usage_rollup_hour"))
    conn.execute(_rollup_table("usage_rollup_day"))
    rebuild_derived(conn)


def rebuild_derived(conn: sqlite3.Connection) -> None:
    """Fill the tag table and the rollups from the raw records they are missing from.

    Rollup buckets that hold no raw record (archived days) are kept as they are.
    """
    conn.execute("DELETE FROM usage_tags WHERE record_id IN (SELECT id FROM usage_records)")
    first = conn.execute("SELECT MIN(ts) FROM usage_records").fetchone()[0]
    if first is None:
        return
    for table, width in (
        ("usage_rollup_hour", 3_600_000_000),
        ("usage_rollup_day", 86_400_000_000),
    ):
        conn.execute(f"DELETE FROM {table} WHERE bucket >= ?", (first - first % width,))
    columns = ", ".join(RECORD_COLUMNS)
    cursor = conn.execute(f"SELECT {columns} FROM usage_records ORDER BY ts")
    while True:
        rows = cursor.fetchmany(20_000)
        if not rows:
            break
        records = [row_record(row, row[1]) for row in rows]
        insert_derived(conn, records)


def insert_derived(
    conn: sqlite3.Connection,
    records: Sequence[UsageRecord],
    rows: Sequence[Sequence[object]] | None = None,
) -> None:
    """Add the tags and the rollup sums of records just inserted (``rows``: their
    ``record_row`` tuples, when the caller has them)."""
    tags = tag_rows(records)
    if tags:
        conn.executemany("INSERT OR REPLACE INTO usage_tags VALUES (?, ?, ?)", tags)
    for level, sums in rollup_rows(records, rows).items():
        conn.executemany(UPSERT[level], sums)


def _upsert(table: str) -> str:
    marks = ", ".join("?" for _ in ROLLUP_COLUMNS)
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in SUM_COLUMNS)
    return (
        f"INSERT INTO {table} ({', '.join(ROLLUP_COLUMNS)}) VALUES ({marks}) "
        f"ON CONFLICT (bucket, key) DO UPDATE SET {updates}"
    )


UPSERT = {"hour": _upsert("usage_rollup_hour"), "day": _upsert("usage_rollup_day")}

MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _v1_records,
    _v2_tags_and_rollups,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer tollway."""


def current_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection, path: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the database up to ``target``; returns the version it was at."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = current_version(conn)
        if found > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"the usage database {path} is at schema version {found}, newer than this "
                f"tollway knows ({SCHEMA_VERSION}); upgrade tollway, or point [usage] path at "
                "another file"
            )
        if found == 0:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (0)")
        for version in range(found + 1, target + 1):
            MIGRATIONS[version - 1](conn)
            conn.execute("UPDATE schema_version SET version = ?", (version,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found
