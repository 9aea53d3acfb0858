"""The Redis cache backend end to end: pipelines sharing one server, expiry, and an outage.

The backend's behaviour (get, set, TTL, invalidation, tags) is checked with the memory and disk
backends by the shared suite in ``core/tests/test_cache_backends.py``; this file covers what only
Redis has. Every test uses a namespace of its own and deletes its keys afterwards.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_asyncio
import redis.asyncio as redis

from tollway import Pipeline
from tollway.cache.config import CacheConfig
from tollway.cache.stage import CacheStage
from tollway.config import Config
from tollway.plugins import build_plugin_manager
from tollway.testing.fake_openai import FakeOpenAI
from tollway.testing.services import require_redis, unique_namespace
from tollway_redis.cache import RedisCacheBackend, tag_index_key

MODEL = "openai/gpt-4o-mini"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest_asyncio.fixture
async def namespace() -> AsyncIterator[str]:
    url = require_redis()
    name = unique_namespace("rediscache")
    yield name
    client = redis.Redis.from_url(url)
    leftovers = [k async for k in client.scan_iter(match=f"{name}*")]
    if leftovers:
        await client.delete(*leftovers)
    await client.aclose()


@pytest_asyncio.fixture
async def inspect_client() -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(require_redis())
    yield client
    await client.aclose()


def build(fake: FakeOpenAI, **cache: Any) -> Pipeline:
    config = Config(cache=CacheConfig(enabled=True, backend="redis", **cache))
    return Pipeline.build(
        providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}}, config=config
    )


def chat_requests(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


def counter(pipe: Pipeline, name: str, *labels: str) -> float:
    metric = pipe.metrics.get(name)
    assert metric is not None
    value: float = metric.values.get(labels, 0.0)
    return value


def test_the_plugin_registers_the_redis_backend() -> None:
    registrations = build_plugin_manager().registrations("cache_backends")
    assert registrations["redis"].plugin == "redis"
    assert {"memory", "disk", "redis"} <= set(registrations)


async def test_pipelines_share_answers_through_redis(fake: FakeOpenAI, namespace: str) -> None:
    url = require_redis()
    async with (
        build(fake, url=url, namespace=namespace) as one,
        build(fake, url=url, namespace=namespace) as two,
    ):
        first = await one.complete(MODEL, "shared question", tags={"team": "research"})
        second = await two.complete(MODEL, "shared question")
        assert second.text == first.text
        assert second.usage == first.usage
        chunks = [c async for c in one.stream(MODEL, "shared stream")]
        replayed = [c async for c in two.stream(MODEL, "shared stream")]
        # The same chunks, each marked as coming from the cache.
        assert replayed == [attrs.evolve(c, cached=True) for c in chunks]
        assert chat_requests(fake) == 2
        assert counter(two, "cache_hits_total", namespace) == 2

        # One process invalidates; every process sees it.
        stage = two._state.builtin["cache"][1]
        assert isinstance(stage, CacheStage)
        assert await stage.invalidate(tag="team:research") == 1
        await one.complete(MODEL, "shared question")
        assert chat_requests(fake) == 3


async def test_entries_and_tag_sets_expire(namespace: str, inspect_client: redis.Redis) -> None:
    backend = RedisCacheBackend(require_redis())
    try:
        short, long = f"{namespace}:v1:{MODEL}:{1:064x}", f"{namespace}:v1:{MODEL}:{2:064x}"
        index = tag_index_key(namespace, "team:x")
        await backend.set(short, b"v", ttl=30, tags=["team:x"])
        assert 0 < await inspect_client.pttl(short) <= 30_000
        assert 0 < await inspect_client.pttl(index) <= 30_000
        # A longer-lived entry stretches its tag set's life; a shorter one never shortens it.
        await backend.set(long, b"v", ttl=300, tags=["team:x"])
        assert 30_000 < await inspect_client.pttl(index) <= 300_000
        await backend.set(short, b"v", ttl=30, tags=["team:x"])
        assert 30_000 < await inspect_client.pttl(index) <= 300_000
        # An entry that never expires keeps its tag set forever too.
        await backend.set(short, b"v", ttl=None, tags=["team:x"])
        assert await inspect_client.pttl(short) == -1
        assert await inspect_client.pttl(index) == -1
        assert await inspect_client.smembers(index) == {short.encode(), long.encode()}
    finally:
        await backend.aclose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_redis_outage_degrades_to_misses_without_failing_calls(fake: FakeOpenAI) -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    async with build(fake, url=url, namespace="outage", error_cooldown=0) as pipe:
        first = await pipe.complete(MODEL, "still answered")
        second = await pipe.complete(MODEL, "still answered")
        streamed = [c async for c in pipe.stream(MODEL, "still streamed")]
        assert first.text == second.text
        assert "".join(c.text for c in streamed)
        assert chat_requests(fake) == 3
        assert counter(pipe, "cache_errors_total", "outage", "get") == 3
        assert counter(pipe, "cache_errors_total", "outage", "set") == 3
        assert counter(pipe, "cache_misses_total", "outage") == 3
        assert counter(pipe, "cache_hits_total", "outage") == 0


async def test_during_an_outage_the_backend_is_skipped_for_the_cooldown(fake: FakeOpenAI) -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    async with build(fake, url=url, namespace="outage", error_cooldown=3600) as pipe:
        for _ in range(3):
            await pipe.complete(MODEL, "q")
        assert counter(pipe, "cache_errors_total", "outage", "get") == 1
        assert counter(pipe, "cache_errors_total", "outage", "skipped") == 5


def test_a_bad_redis_option_is_a_config_error() -> None:
    from tollway.errors import ConfigError

    with pytest.raises(ConfigError, match="redis cache backend cannot start"):
        Pipeline.build(
            config=Config(
                cache=CacheConfig(enabled=True, backend="redis", options={"no_such_option": 1})
            )
        )
