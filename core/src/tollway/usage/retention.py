"""Retention: archive whole UTC days of raw records to gzip JSONL, then delete them.

One file per day, ``usage-YYYY-MM-DD.jsonl.gz`` in the archive directory, one record per line
(the :func:`tollway.usage.export.record_dict` form; money as strings). The rollups are kept,
so spend by day, team, user and model still answers for archived days; what needs raw records
(sessions, tags, prompt hashes, sub-hour ranges) answers from what is left.

Safe to re-run and to interrupt: a day's file is written to a temporary name and renamed into
place before that day's records are deleted, and records already in an existing file (an
earlier run that stopped before deleting) are not written twice.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from pathlib import Path
from typing import Any, Protocol

import structlog

from tollway.usage.export import record_dict
from tollway.usage.records import UsageQuery, UsageRecord
from tollway.usage.sql import from_micros, record_micros

log = structlog.get_logger("tollway.usage")


class _RetainableStore(Protocol):
    def records(self, query: UsageQuery) -> Any: ...

    async def delete_records(self, until: dt.datetime, since: dt.datetime | None = None) -> int: ...


def cutoff_day(
    older_than: dt.datetime | dt.timedelta, now: dt.datetime | None = None
) -> dt.datetime:
    """The UTC midnight at or before ``older_than`` (a time, or an age before now)."""
    if isinstance(older_than, dt.timedelta):
        older_than = (now or dt.datetime.now(dt.UTC)) - older_than
    if older_than.tzinfo is None:
        older_than = older_than.astimezone()
    when = older_than.astimezone(dt.UTC)
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


def archive_file(archive_dir: Path, day: dt.date) -> Path:
    return archive_dir / f"usage-{day.isoformat()}.jsonl.gz"


def _write_day(archive_dir: Path, day: dt.date, lines: list[tuple[str, str]]) -> int:
    archive_dir.mkdir(parents=True, exist_ok=True)
    target = archive_file(archive_dir, day)
    kept: list[str] = []
    seen: set[str] = set()
    if target.exists():
        with gzip.open(target, "rt", encoding="utf-8") as old:
            for line in old:
                if line.strip():
                    seen.add(json.loads(line)["id"])
                    kept.append(line.rstrip("\n"))
    fresh = [text for record_id, text in lines if record_id not in seen]
    temporary = target.with_name(target.name + ".tmp")
    with gzip.open(temporary, "wt", encoding="utf-8") as out:
        for text in (*kept, *fresh):
            out.write(text + "\n")
        out.flush()
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return len(fresh)


async def apply_retention(
    store: _RetainableStore,
    older_than: dt.datetime | dt.timedelta,
    archive_dir: str | Path,
) -> int:
    """Archive then delete every raw record before the cutoff day; returns how many."""
    import asyncio

    cutoff = cutoff_day(older_than)
    directory = Path(archive_dir)
    total = 0
    day: dt.date | None = None
    lines: list[tuple[str, str]] = []

    async def finish(current: dt.date, batch: list[tuple[str, str]]) -> int:
        await asyncio.to_thread(_write_day, directory, current, batch)
        start = dt.datetime.combine(current, dt.time(), dt.UTC)
        await store.delete_records(start + dt.timedelta(days=1), since=start)
        log.info("usage_archived", day=current.isoformat(), records=len(batch), dir=str(directory))
        return len(batch)

    record: UsageRecord
    async for record in store.records(UsageQuery(until=cutoff)):
        record_day = from_micros(record_micros(record)).date()
        if day is not None and record_day != day:
            total += await finish(day, lines)
            lines = []
        day = record_day
        lines.append((record.id, json.dumps(record_dict(record), ensure_ascii=False)))
    if day is not None:
        total += await finish(day, lines)
    return total
