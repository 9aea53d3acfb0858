"""The usage store's targets: ingest rate through the write-behind writer, and the
spend-by-user-and-model query over 1,000,000 rows.

    uv run --frozen python bench/usage_store.py                 # SQLite, 1M rows
    uv run --frozen python bench/usage_store.py --rows 200000   # quicker
    uv run --frozen python bench/usage_store.py --postgres      # also tollway-postgres

Targets (issue #4): ingest >= 20,000 records/s; the query (group_by user, model over one
month) <= 20 ms (the seed asks < 100 ms). The database goes in a temporary directory (or
--dir); PostgreSQL runs in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from tollway.types import Cost, Usage
from tollway.usage.records import UsageQuery, UsageRecord
from tollway.usage.writer import UsageWriter

START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
MONTH = dt.timedelta(days=31)
MODELS = [
    "openai/gpt-4o", "openai/gpt-4o-mini", "openai/gpt-4.1", "openai/o3-mini",
    "anthropic/claude-sonnet-4", "anthropic/claude-haiku-3.5", "gemini/gemini-2.0-flash",
    "gemini/gemini-2.5-pro", "bedrock/llama-3-70b", "ollama/llama3",
]  # fmt: skip


def make_records(count: int, seed: int, users: int, span: dt.timedelta) -> list[UsageRecord]:
    rng = random.Random(seed)
    base = START.timestamp()
    seconds = span.total_seconds()
    out = []
    for i in range(count):
        model = MODELS[rng.randrange(len(MODELS))]
        user = rng.randrange(users)
        out.append(
            UsageRecord(
                id=f"{seed}-{i}",
                timestamp=base + rng.random() * seconds,
                provider=model.partition("/")[0],
                model=model,
                usage=Usage(rng.randrange(50, 4000), rng.randrange(10, 800)),
                cost=Cost(
                    Decimal(rng.randrange(1, 10**7)) / 10**9,
                    Decimal(rng.randrange(1, 10**7)) / 10**9,
                ),
                user=f"user-{user}",
                team=f"team-{user % 8}",
                api_key_id=f"key-{user}",
                session=f"s-{rng.randrange(10**6)}",
                tags={"app": "chat"} if i % 3 else {},
                prompt_hash=f"{rng.getrandbits(64):016x}",
                latency_s=0.5,
                finish_reason="stop",
            )
        )
    return out


async def ingest(store: Any, records: list[UsageRecord], batch_size: int) -> float:
    """Records per second from the first submit until the last is on disk."""
    writer = UsageWriter(store, batch_size=batch_size, flush_interval=0.05,
                         max_pending=len(records) + batch_size)  # fmt: skip
    started = time.perf_counter()
    for record in records:
        writer.submit(record)
    submitted = time.perf_counter()
    await writer.aclose()
    elapsed = time.perf_counter() - started
    print(
        f"  submit: {(submitted - started) / len(records) * 1e6:.2f} us/record on the request path"
    )
    return len(records) / elapsed


async def timed_query(store: Any, query: UsageQuery, repeat: int = 15) -> tuple[float, int]:
    times = []
    rows: list[Any] = []
    for _ in range(repeat):
        started = time.perf_counter()
        rows = await store.query(query)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, len(rows)


async def bench(store: Any, name: str, rows: int, users: int, with_raw: bool) -> None:
    print(f"\n== {name}")
    # Live traffic arrives in time order: the ingest sample is, the bulk load is not.
    sample = sorted(
        make_records(100_000, seed=1, users=users, span=MONTH), key=lambda r: r.timestamp
    )
    for batch_size in (1000, 5000):
        part = sample[: len(sample) // 2] if batch_size == 1000 else sample[len(sample) // 2 :]
        rate = await ingest(store, part, batch_size=batch_size)
        print(
            f"  ingest through the writer (batch_size {batch_size}): {rate:,.0f} records/s"
            "  (target >= 20,000)"
        )

    remaining = rows - len(sample)
    started = time.perf_counter()
    chunk = 50_000
    for offset in range(0, remaining, chunk):
        batch = make_records(
            min(chunk, remaining - offset), seed=2 + offset, users=users, span=MONTH
        )
        await store.write(batch)
    elapsed = time.perf_counter() - started
    if remaining > 0:
        print(
            f"  bulk load of {remaining:,} more rows (store.write, 50k batches): "
            f"{remaining / elapsed:,.0f} records/s"
        )

    calendar = UsageQuery(since=START, until=START + MONTH, group_by=("user", "model"))
    rolling_until = START + dt.timedelta(days=30, hours=7, minutes=13)
    rolling = UsageQuery(since=rolling_until - dt.timedelta(days=30), until=rolling_until,
                         group_by=("user", "model"))  # fmt: skip
    daily = UsageQuery(since=START, until=START + MONTH, group_by=("team", "day"))
    for label, query in (("calendar month", calendar), ("rolling 30 days", rolling),
                         ("team by day, month", daily)):  # fmt: skip
        ms, count = await timed_query(store, query)
        print(
            f"  {label:<22} group_by={','.join(query.group_by):<10} {ms:7.2f} ms"
            f"  ({count} rows; target <= 20 ms)"
        )
    if with_raw:
        store.use_rollups = False
        ms, count = await timed_query(store, calendar, repeat=3)
        print(f"  without rollups (raw records only):        {ms:7.1f} ms  ({count} rows)")
        store.use_rollups = True


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--postgres", action="store_true", help="also bench tollway-postgres")
    parser.add_argument("--no-raw", action="store_true", help="skip the query without rollups")
    args = parser.parse_args()
    print(f"{args.rows:,} rows over 31 days, {args.users} users, {len(MODELS)} models")

    from tollway.usage.sqlite import SQLiteUsageStore

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        store = SQLiteUsageStore(Path(folder) / "usage.db")
        try:
            await bench(store, "SQLite (core)", args.rows, args.users, not args.no_raw)
        finally:
            await store.aclose()

    if args.postgres:
        import asyncpg

        from tollway.testing.services import POSTGRES_DSN
        from tollway_postgres.store import PostgresUsageStore

        schema = f"bench_{random.getrandbits(32):08x}"
        pg = PostgresUsageStore(POSTGRES_DSN, schema=schema)
        try:
            await bench(pg, "PostgreSQL (tollway-postgres)", args.rows, args.users, not args.no_raw)
        finally:
            await pg.aclose()
            conn = await asyncpg.connect(POSTGRES_DSN)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
