"""The usage stage and its write-behind writer, through a real pipeline and a fake provider.

Every answered call (streams and cache hits included) becomes one record; errors do not; the
call never waits on the store; a store that is down is buffered for, retried, and reported; a
full buffer drops its oldest records loudly; pending records are written on close and SIGTERM.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio
import structlog

from tollway import Pipeline
from tollway.cache.config import CacheConfig
from tollway.cache.keys import request_key
from tollway.config import Config
from tollway.errors import ProviderError
from tollway.metrics import Metrics
from tollway.plugins import build_plugin_manager
from tollway.resilience.config import RetryConfig
from tollway.stages import StageContext
from tollway.testing.fake_openai import FakeOpenAI
from tollway.types import Cost, Usage
from tollway.usage.config import UsageConfig
from tollway.usage.records import UsageQuery, UsageRecord
from tollway.usage.sqlite import SQLiteUsageStore
from tollway.usage.stage import UsageStage
from tollway.usage.store import MemoryUsageStore
from tollway.usage.writer import UsageWriter

MODEL = "openai/gpt-4o-mini"


class FlakyStore(MemoryUsageStore):
    """A memory store that fails while ``down`` and can hold writes until released."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.attempts = 0
        self.release: asyncio.Event | None = None

    async def write(self, records: Sequence[UsageRecord]) -> None:
        self.attempts += 1
        if self.release is not None:
            await self.release.wait()
        if self.down:
            raise ConnectionError("the usage store is down")
        await super().write(records)

    def stored(self) -> list[UsageRecord]:
        return sorted(self._records.values(), key=lambda r: r.timestamp)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def pipeline(fake: FakeOpenAI, stage: UsageStage, **config: object) -> Pipeline:
    return Pipeline.build(
        providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}},
        stages=[stage],
        config=Config(retry=RetryConfig(enabled=False), **config),  # type: ignore[arg-type]
    )


def value(metrics: Metrics, name: str) -> float:
    metric = metrics.get(name)
    assert metric is not None, name
    got: float = metric.values.get((), 0.0)
    return got


async def test_answered_calls_are_recorded_with_who_asked(fake: FakeOpenAI) -> None:
    store = FlakyStore()
    stage = UsageStage(UsageWriter(store, flush_interval=60))
    async with pipeline(fake, stage) as pipe:
        reply = await pipe.complete(
            MODEL, "hello there", user="u-17", session="s-1", team="research",
            api_key_id="key-a", tags={"app": "chat"},
        )  # fmt: skip
        chunks = [c async for c in pipe.stream(MODEL, "stream me", user="u-2")]
        fake.fail(400)
        with pytest.raises(ProviderError):
            await pipe.complete(MODEL, "this one fails")
        await stage.flush()
        first, second = store.stored()
    assert first.user == "u-17"
    assert first.session == "s-1"
    assert first.team == "research"
    assert first.api_key_id == "key-a"
    assert dict(first.tags) == {"app": "chat"}
    assert first.provider == "openai"
    assert first.model.startswith("openai/gpt-4o-mini")
    assert first.usage == reply.usage
    assert first.usage.input_tokens > 0
    assert first.cost == Cost()
    assert not first.stream
    assert not first.cached
    assert first.finish_reason == "stop"
    assert first.latency_s is not None
    request = pipe.request(MODEL, "hello there")
    assert first.prompt_hash == request_key(request).rpartition(":")[2]
    assert len(first.id) == 32
    assert second.stream
    assert second.user == "u-2"
    assert second.usage == next(c.usage for c in chunks if c.usage is not None)
    # The failed call left no record.
    assert len(store.stored()) == 2


async def test_cache_hits_are_recorded_as_cached(fake: FakeOpenAI) -> None:
    store = FlakyStore()
    stage = UsageStage(UsageWriter(store, flush_interval=60))
    config = {"cache": CacheConfig(enabled=True)}
    async with pipeline(fake, stage, **config) as pipe:
        await pipe.complete(MODEL, "same question")
        await pipe.complete(MODEL, "same question")
        await stage.flush()
    miss, hit = store.stored()
    assert not miss.cached
    assert hit.cached
    assert hit.prompt_hash == miss.prompt_hash
    assert hit.saved == Decimal(0)  # no cost stage here: nothing priced, nothing saved


async def test_the_call_never_waits_on_the_store(fake: FakeOpenAI) -> None:
    store = FlakyStore()
    store.release = asyncio.Event()  # every write hangs until released
    stage = UsageStage(UsageWriter(store, batch_size=1, flush_interval=0.01))
    async with pipeline(fake, stage) as pipe:
        for _ in range(3):
            await pipe.complete(MODEL, "quick")
        assert store.stored() == []
        assert stage.writer.pending == 3
        store.release.set()
        await stage.flush()
        assert len(store.stored()) == 3


async def test_a_store_that_is_down_is_buffered_for_and_retried() -> None:
    store = FlakyStore()
    store.down = True
    metrics = Metrics()
    writer = UsageWriter(
        store, batch_size=2, flush_interval=0.01, retry_initial=0.01, retry_max=0.02,
        metrics=metrics,
    )  # fmt: skip
    records = [_record(i) for i in range(5)]
    with structlog.testing.capture_logs() as logs:
        for r in records:
            writer.submit(r)
        await _until(lambda: store.attempts >= 3)
        assert writer.pending == 5
        assert value(metrics, "tollway_usage_pending") == 5
        assert value(metrics, "tollway_usage_write_errors_total") >= 3
        store.down = False
        await _until(lambda: not writer.pending)
    await writer.aclose()
    assert store.stored() == records
    assert value(metrics, "tollway_usage_records_written_total") == 5
    assert value(metrics, "tollway_usage_dropped_total") == 0
    failing = [e for e in logs if e["event"] == "usage_store_failing"]
    assert failing
    assert failing[0]["pending"] == 5
    assert "ConnectionError" in failing[0]["error"]
    assert any(e["event"] == "usage_store_recovered" for e in logs)


async def test_a_full_buffer_drops_the_oldest_loudly() -> None:
    store = FlakyStore()
    store.down = True
    metrics = Metrics()
    writer = UsageWriter(
        store, batch_size=2, max_pending=4, flush_interval=60, retry_initial=60, metrics=metrics
    )
    with structlog.testing.capture_logs() as logs:
        for i in range(7):
            writer.submit(_record(i))
    assert writer.pending == 4
    assert value(metrics, "tollway_usage_dropped_total") == 3
    assert any(e["event"] == "usage_records_dropped" and e["log_level"] == "error" for e in logs)
    store.down = False
    await writer.aclose()
    assert [r.id for r in store.stored()] == ["r3", "r4", "r5", "r6"]


async def test_close_writes_what_is_pending_and_gives_up_loudly_when_down() -> None:
    store = FlakyStore()
    writer = UsageWriter(store, flush_interval=60)
    writer.submit(_record(1))
    await writer.aclose()
    assert [r.id for r in store.stored()] == ["r1"]

    down = FlakyStore()
    down.down = True
    metrics = Metrics()
    writer = UsageWriter(
        down, flush_interval=60, retry_initial=0.01, close_timeout=0.05, metrics=metrics
    )
    writer.submit(_record(2))
    with structlog.testing.capture_logs() as logs:
        await writer.aclose()
    lost = [e for e in logs if e["event"] == "usage_records_lost_at_close"]
    assert lost
    assert lost[0]["records"] == 1
    assert value(metrics, "tollway_usage_dropped_total") == 1


async def test_the_stage_is_built_from_the_config(tmp_path: Path, fake: FakeOpenAI) -> None:
    path = tmp_path / "usage.db"
    config = Config(usage=UsageConfig(enabled=True, path=str(path), flush_on_sigterm=False))
    context = StageContext(
        config, build_plugin_manager(load_entrypoints=False), Metrics(), lambda m: m
    )
    stage = UsageStage.from_context(context)
    assert context.shared["usage_store"] is stage.store
    assert isinstance(stage.store, SQLiteUsageStore)
    assert stage.store.path == path
    async with pipeline(fake, stage) as pipe:
        await pipe.complete(MODEL, "to disk", team="t")
    # Closing the pipeline flushed the record and closed the store.
    reader = SQLiteUsageStore(path)
    try:
        [row] = await reader.query(UsageQuery(group_by=("team",)))
        assert row.group == {"team": "t"}
        assert row.calls == 1
    finally:
        await reader.aclose()


def test_sigterm_flushes_pending_records_then_ends_the_process(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal, time
        from decimal import Decimal
        from tollway.types import Cost, Usage
        from tollway.usage.records import UsageRecord
        from tollway.usage.sqlite import SQLiteUsageStore
        from tollway.usage.writer import UsageWriter

        async def main():
            writer = UsageWriter(SQLiteUsageStore({str(path)!r}), flush_interval=3600,
                                 flush_on_sigterm=True)
            for i in range(25):
                writer.submit(UsageRecord(id=f"r{{i}}", timestamp=time.time(),
                    provider="openai", model="openai/m", usage=Usage(1, 1), cost=Cost()))
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(30)
            print("not ended")

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -15, done.stdout + done.stderr
    assert "not ended" not in done.stdout
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM usage_records").fetchone() == (25,)
    finally:
        conn.close()


def _record(index: int) -> UsageRecord:
    return UsageRecord(
        id=f"r{index}",
        timestamp=1_790_000_000.0 + index,
        provider="openai",
        model=MODEL,
        usage=Usage(10, 5),
        cost=Cost(Decimal("0.001")),
    )


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for the writer's background task to reach a state (the test's own timeout)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the writer never got there")


async def test_usage_on_in_the_config_records_priced_calls_and_cache_hits(
    fake: FakeOpenAI,
) -> None:
    config = Config(
        usage=UsageConfig(enabled=True, store="memory", flush_on_sigterm=False),
        cache=CacheConfig(enabled=True),
    )
    async with Pipeline.build(
        providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}}, config=config
    ) as pipe:
        stage = pipe._state.builtin["usage"][1]
        assert isinstance(stage, UsageStage)
        first = await pipe.complete(MODEL, "price me", user="u-1")
        await pipe.complete(MODEL, "price me", user="u-1")
        [c async for c in pipe.stream(MODEL, "stream me", user="u-1")]
        [c async for c in pipe.stream(MODEL, "stream me", user="u-1")]
        await stage.flush()
        records = [r async for r in stage.store.records(UsageQuery())]
    miss, hit, streamed, replay = records
    assert first.cost is not None
    assert miss.cost == first.cost
    assert miss.cost.total > 0
    assert hit.cached
    assert hit.cost.total == 0
    assert hit.saved == miss.cost.total
    assert streamed.stream
    assert not streamed.cached
    assert streamed.cost.total > 0
    assert replay.stream
    assert replay.prompt_hash == streamed.prompt_hash
    # A stream replayed from the cache is a hit too: free, with what it saved.
    assert replay.cached
    assert replay.cost.total == 0
    assert replay.saved == streamed.cost.total
