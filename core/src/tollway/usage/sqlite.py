"""The core's usage store: one SQLite file, written from a dedicated thread.

One connection lives in one worker thread (WAL, ``synchronous=NORMAL``), so the event loop
never waits on disk and SQLite is never touched from two threads. Money is INTEGER nano-units,
time INTEGER microseconds (UTC). A batch is written in one transaction: the raw records (a
record whose id is already stored is skipped), their tags, and the hourly and daily rollups,
which stay exact because they change in the same transaction.

Queries agree with :func:`tollway.usage.store.aggregate`; which ones read rollups is said in
:mod:`tollway.usage.sql`. Retention (:meth:`SQLiteUsageStore.apply_retention`) archives whole
UTC days to gzip JSONL and deletes them, keeping the rollups.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tollway.usage.migrations import insert_derived, migrate, rebuild_derived
from tollway.usage.records import UsageQuery, UsageRecord, UsageRow
from tollway.usage.sql import (
    RECORD_COLUMNS,
    build_query,
    from_micros,
    record_row,
    records_where,
    result_rows,
    row_record,
    to_micros,
)

T = TypeVar("T")

_INSERT = (
    f"INSERT INTO usage_records ({', '.join(RECORD_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in RECORD_COLUMNS)})"
)
# SQLite allows 32766 parameters per statement since 3.32; stay far below.
_ID_CHUNK = 900
_PAGE = 2_000


def default_path() -> Path:
    """``$TOLLWAY_DATA_DIR/usage.db``, else ``~/.local/share/tollway/usage.db``."""
    base = os.environ.get("TOLLWAY_DATA_DIR")
    root = Path(base) if base else Path.home() / ".local" / "share" / "tollway"
    return root / "usage.db"


class SQLiteDialect:
    """Time is INTEGER microseconds; buckets are computed with integer arithmetic."""

    def placeholder(self, index: int) -> str:
        return "?"

    def time_param(self, micros: int) -> Any:
        return micros

    def bucket_expr(self, bucket: str, column: str) -> str:
        if bucket == "hour":
            return f"({column} - {column} % 3600000000)"
        day = f"({column} - {column} % 86400000000)"
        if bucket == "day":
            return day
        if bucket == "week":  # 1970-01-01 was a Thursday: 3 days after a Monday
            return f"({day} - (({column} / 86400000000 + 3) % 7) * 86400000000)"
        return f"strftime('%Y-%m', {column} / 1000000, 'unixepoch')"

    def bucket_param(self, bucket: str, start: dt.datetime) -> Any:
        return start.strftime("%Y-%m") if bucket == "month" else to_micros(start)

    def bucket_iso(self, bucket: str, value: Any) -> str:
        if bucket == "month":
            return f"{value}-01T00:00:00+00:00"
        return from_micros(int(value)).isoformat()

    def flag(self, column: str, value: bool) -> str:
        return f"{column} = {int(value)}"

    def flag_count(self, column: str) -> str:
        return f"SUM({column})"


class _Tables:
    records = "usage_records"
    tags = "usage_tags"
    rollup_hour = "usage_rollup_hour"
    rollup_day = "usage_rollup_day"
    rollup_week = "usage_rollup_week"
    rollup_month = "usage_rollup_month"


DIALECT = SQLiteDialect()
TABLES = _Tables()


class SQLiteUsageStore:
    """Usage records in a SQLite file. Safe to share among the tasks of one event loop."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        archive_dir: str | Path | None = None,
        create: bool = True,
        use_rollups: bool = True,
    ) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.archive_dir = (
            Path(archive_dir) if archive_dir is not None else self.path.parent / "archive"
        )
        self.use_rollups = use_rollups
        if not create and not self.path.exists():
            raise FileNotFoundError(
                f"no usage database at {self.path}; turn on [usage] (enabled = true) so that "
                "calls are recorded, or point [usage] path at the right file"
            )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tollway-usage-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        try:
            self._executor.submit(self._open, create).result()
        except BaseException:
            self._executor.shutdown(wait=True)
            raise

    @classmethod
    def from_config(cls, config: Any) -> SQLiteUsageStore:
        return cls(config.path, archive_dir=config.archive_dir)

    # -- the worker thread -------------------------------------------------------------------

    def _open(self, create: bool) -> None:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache
            conn.execute("PRAGMA mmap_size=268435456")  # reads through 256 MiB of mmap
            # Checkpoint every ~16 MiB of WAL rather than 4: fewer, larger checkpoints on the
            # writer's commits (the WAL file is reused, so its size stays bounded).
            conn.execute("PRAGMA wal_autocheckpoint=4000")
            migrate(conn, str(self.path))
        except sqlite3.Error as exc:
            conn.close()
            raise RuntimeError(
                f"cannot open the usage database {self.path}: {exc}; point [usage] path at a "
                "tollway usage database or at a new file"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"the usage store {self.path} is closed")
        return self._conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _write(self, records: Sequence[UsageRecord]) -> int:
        unique: dict[str, UsageRecord] = {}
        for record in records:
            unique.setdefault(record.id, record)

        def write(conn: sqlite3.Connection) -> int:
            ids = list(unique)
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                marks = ",".join("?" * len(chunk))
                for (found,) in conn.execute(
                    f"SELECT id FROM usage_records WHERE id IN ({marks})", chunk
                ):
                    del unique[found]
            new = list(unique.values())
            if new:
                rows = [record_row(r) for r in new]
                conn.executemany(_INSERT, rows)
                insert_derived(conn, new, rows)
            return len(new)

        return self._transaction(write)

    def _query(self, query: UsageQuery, use_rollups: bool) -> list[UsageRow]:
        sql, params = build_query(query, DIALECT, TABLES, use_rollups=use_rollups)
        rows = self._db().execute(sql, params).fetchall()
        return result_rows(query, DIALECT, rows)

    def _page(
        self, query: UsageQuery, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[Any, ...]]:
        where, params = records_where(query, DIALECT, TABLES)
        if after is not None:
            where += " AND (r.ts > ? OR (r.ts = ? AND r.rowid > ?))"
            params += [after[0], after[0], after[1]]
        columns = ", ".join(f"r.{c}" for c in RECORD_COLUMNS)
        sql = (
            f"SELECT {columns}, r.rowid FROM usage_records r WHERE {where} "
            f"ORDER BY r.ts, r.rowid LIMIT {int(limit)}"
        )
        return list(self._db().execute(sql, params).fetchall())

    def _delete(self, since: int | None, until: int) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            bounds = "ts < ?" + (" AND ts >= ?" if since is not None else "")
            params = [until] if since is None else [until, since]
            conn.execute(
                f"DELETE FROM usage_tags WHERE record_id IN "
                f"(SELECT id FROM usage_records WHERE {bounds})",
                params,
            )
            return conn.execute(f"DELETE FROM usage_records WHERE {bounds}", params).rowcount

        return self._transaction(delete)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the UsageStore protocol -------------------------------------------------------------

    async def write(self, records: Sequence[UsageRecord]) -> None:
        """Store a batch in one transaction; ids already stored are skipped."""
        if records:
            await self._run(self._write, records)

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        return await self._run(self._query, query, self.use_rollups)

    async def records(self, query: UsageQuery) -> AsyncIterator[UsageRecord]:
        """Every matching record, oldest first, read a page at a time."""
        after: tuple[int, int] | None = None
        while True:
            rows = await self._run(self._page, query, after, _PAGE)
            for row in rows:
                yield row_record(row, row[1])
            if len(rows) < _PAGE:
                return
            after = (rows[-1][1], rows[-1][-1])

    async def aclose(self) -> None:
        """Close the connection and stop the thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    # -- administration ----------------------------------------------------------------------

    async def delete_records(self, until: dt.datetime, since: dt.datetime | None = None) -> int:
        """Delete raw records (and their tags) in [since, until); rollups are kept."""
        return await self._run(
            self._delete, to_micros(since) if since is not None else None, to_micros(until)
        )

    async def rollup(self) -> None:
        """Rebuild the rollups (and the tag table) from the raw records they cover."""
        await self._run(self._transaction, rebuild_derived)

    async def apply_retention(
        self, older_than: dt.datetime | dt.timedelta, archive_dir: str | Path | None = None
    ) -> int:
        """Archive the whole UTC days before ``older_than`` to gzip JSONL, then delete them.

        Returns how many records were archived. See :mod:`tollway.usage.retention`.
        """
        from tollway.usage.retention import apply_retention

        return await apply_retention(self, older_than, archive_dir or self.archive_dir)

    def __repr__(self) -> str:
        return f"SQLiteUsageStore({str(self.path)!r})"
