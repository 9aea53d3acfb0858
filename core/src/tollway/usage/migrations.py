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
    LEVELS,
    RECORD_COLUMNS,
    ROLLUP_COLUMNS,
    SUM_COLUMNS,
    month_floor,
    rollup_rows,
    row_record,
    tag_rows,
    week_floor,
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
    _rebuild(conn, ("hour", "day"))


# SQL for the start of the UTC ISO week and month of a daily rollup's bucket (microseconds).
_START_OF = {
    "week": "bucket - ((bucket / 86400000000 + 3) % 7) * 86400000000",
    "month": "CAST(strftime('%s', bucket / 1000000, 'unixepoch', 'start of month') AS INTEGER)"
    " * 1000000",
}


def _fill_from_days(conn: sqlite3.Connection, since: int | None) -> None:
    """(Re)compute the weekly and monthly rollups from the daily one, from the week and the
    month holding ``since`` on (everything when None)."""
    keys = ", ".join(c for c in ROLLUP_COLUMNS if c not in SUM_COLUMNS and c != "bucket")
    sums = ", ".join(f"SUM({c})" for c in SUM_COLUMNS)
    for level, floor in (("week", week_floor), ("month", month_floor)):
        where = "" if since is None else f" WHERE bucket >= {int(floor(since))}"
        conn.execute(f"DELETE FROM usage_rollup_{level}{where}")
        conn.execute(
            f"INSERT INTO usage_rollup_{level} ({', '.join(ROLLUP_COLUMNS)}) "
            f"SELECT {_START_OF[level]} AS start, {keys}, {sums} FROM usage_rollup_day{where} "
            f"GROUP BY start, key"
        )


def _v3_coarser_rollups_fewer_indexes(conn: sqlite3.Connection) -> None:
    """Weekly and monthly rollups (filled from the daily one, so archived days count), and
    the raw table's (user, model, ts), (team, ts) and (model, ts) indexes dropped: rollups
    answer those queries, and every index slows every write."""
    conn.execute(_rollup_table("usage_rollup_week"))
    conn.execute(_rollup_table("usage_rollup_month"))
    _fill_from_days(conn, None)
    for index in ("usage_records_user_model_ts", "usage_records_team_ts", "usage_records_model_ts"):
        conn.execute(f"DROP INDEX IF EXISTS {index}")


def rebuild_derived(conn: sqlite3.Connection) -> None:
    """Fill the tag table and the rollups from the raw records they are missing from.

    Rollup buckets that hold no raw record (archived days) are kept as they are.
    """
    _rebuild(conn, LEVELS)


def _rebuild(conn: sqlite3.Connection, levels: Sequence[str]) -> None:
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
        insert_derived(conn, records, levels=("hour", "day"))
    if "month" in levels:
        _fill_from_days(conn, first)


def insert_derived(
    conn: sqlite3.Connection,
    records: Sequence[UsageRecord],
    rows: Sequence[Sequence[object]] | None = None,
    levels: Sequence[str] = LEVELS,
) -> None:
    """Add the tags and the rollup sums of records just inserted (``rows``: their
    ``record_row`` tuples, when the caller has them)."""
    tags = tag_rows(records)
    if tags:
        conn.executemany("INSERT OR REPLACE INTO usage_tags VALUES (?, ?, ?)", tags)
    for level, sums in rollup_rows(records, rows, levels).items():
        conn.executemany(UPSERT[level], sums)


def _upsert(table: str) -> str:
    marks = ", ".join("?" for _ in ROLLUP_COLUMNS)
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in SUM_COLUMNS)
    return (
        f"INSERT INTO {table} ({', '.join(ROLLUP_COLUMNS)}) VALUES ({marks}) "
        f"ON CONFLICT (bucket, key) DO UPDATE SET {updates}"
    )


UPSERT = {level: _upsert(f"usage_rollup_{level}") for level in LEVELS}

MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _v1_records,
    _v2_tags_and_rollups,
    _v3_coarser_rollups_fewer_indexes,
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
