"""Every cache backend (memory, disk, Redis) against one suite, then what is particular to each."""

from __future__ import annotations

import asyncio
import os
import pickle
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import pytest_asyncio

from tollway.cache.backend import CacheBackend
from tollway.cache.config import CacheConfig
from tollway.cache.disk import DiskCacheBackend
from tollway.cache.memory import MemoryCacheBackend
from tollway.testing.services import require_redis, unique_namespace


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class Subject:
    """A backend under test, two namespaces of its own, and a way to let time pass."""

    backend: CacheBackend
    ns: str
    other_ns: str
    # Waits until ``await backend.get(key)`` is None (a fake clock jumps; real ones poll).
    expire: Callable[[str, float], Awaitable[None]]


async def _poll_until_gone(backend: CacheBackend, key: str, ttl: float) -> None:
    deadline = time.monotonic() + ttl + 10.0
    while await backend.get(key) is not None:
        assert time.monotonic() < deadline, f"{key} outlived its TTL of {ttl}s by 10s"
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture(params=["memory", "disk", "redis"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    base = unique_namespace("cachetest")
    ns, other = f"{base}-a", f"{base}-b"
    if request.param == "memory":
        clock = FakeClock()
        memory = MemoryCacheBackend(max_entries=1000, clock=clock)

        async def jump(key: str, ttl: float) -> None:
            clock.now += ttl + 0.001

        yield Subject(memory, ns, other, jump)
        await memory.aclose()
    elif request.param == "disk":
        disk = DiskCacheBackend(tmp_path / "answers")

        async def poll_disk(key: str, ttl: float) -> None:
            await _poll_until_gone(disk, key, ttl)

        yield Subject(disk, ns, other, poll_disk)
        await disk.aclose()
    else:
        from tollway_redis.cache import RedisCacheBackend

        url = require_redis()
        remote = RedisCacheBackend(url)

        async def poll_redis(key: str, ttl: float) -> None:
            await _poll_until_gone(remote, key, ttl)

        try:
            yield Subject(remote, ns, other, poll_redis)
        finally:
            await remote.aclose()
            import redis.asyncio as redis

            cleaner = redis.Redis.from_url(url)
            leftovers = [k async for k in cleaner.scan_iter(match=f"{base}*")]
            if leftovers:
                await cleaner.delete(*leftovers)
            await cleaner.aclose()


def key(ns: str, model: str = "openai/gpt-4o-mini", n: int = 0) -> str:
    return f"{ns}:v1:{model}:{n:064x}"


# -- the shared suite ---------------------------------------------------------------------------


async def test_set_get_overwrite_and_miss(subject: Subject) -> None:
    b = subject.backend
    assert isinstance(b, CacheBackend)
    assert await b.get(key(subject.ns)) is None
    await b.set(key(subject.ns), b"first", ttl=60)
    assert await b.get(key(subject.ns)) == b"first"
    await b.set(key(subject.ns), b"second", ttl=60)
    assert await b.get(key(subject.ns)) == b"second"


async def test_values_are_opaque_bytes(subject: Subject) -> None:
    value = bytes(range(256)) * 4 + b"\x80\xff not utf-8"
    await subject.backend.set(key(subject.ns), value, ttl=None)
    assert await subject.backend.get(key(subject.ns)) == value


async def test_delete_says_whether_it_removed_something(subject: Subject) -> None:
    b = subject.backend
    await b.set(key(subject.ns), b"x", ttl=60)
    assert await b.delete(key(subject.ns)) is True
    assert await b.get(key(subject.ns)) is None
    assert await b.delete(key(subject.ns)) is False


async def test_an_entry_expires_after_its_ttl_and_others_stay(subject: Subject) -> None:
    b = subject.backend
    short, long, forever = key(subject.ns, n=1), key(subject.ns, n=2), key(subject.ns, n=3)
    await b.set(long, b"long", ttl=3600)
    await b.set(forever, b"forever", ttl=None)
    await b.set(short, b"short", ttl=0.2)
    await subject.expire(short, 0.2)
    assert await b.get(short) is None
    assert await b.get(long) == b"long"
    assert await b.get(forever) == b"forever"


async def test_invalidate_a_namespace(subject: Subject) -> None:
    b = subject.backend
    for n in range(3):
        await b.set(key(subject.ns, n=n), b"x", ttl=60, tags=["team:a"])
    await b.set(key(subject.other_ns), b"kept", ttl=60, tags=["team:a"])
    assert await b.invalidate(namespace=subject.ns) == 3
    assert all([await b.get(key(subject.ns, n=n)) is None for n in range(3)])
    assert await b.get(key(subject.other_ns)) == b"kept"
    assert await b.invalidate(namespace=subject.ns) == 0
    # The namespace's tags went with it; new entries can be tagged again.
    await b.set(key(subject.ns, n=9), b"again", ttl=60, tags=["team:a"])
    assert await b.invalidate(namespace=subject.ns, tag="team:a") == 1


async def test_invalidate_a_model_in_a_namespace(subject: Subject) -> None:
    b = subject.backend
    llama = "ollama/llama3:8b"  # a ':' inside the model name
    await b.set(key(subject.ns, llama, 1), b"x", ttl=60)
    await b.set(key(subject.ns, llama, 2), b"x", ttl=None)
    await b.set(key(subject.ns, "ollama/llama3", 3), b"other model", ttl=60)
    await b.set(key(subject.ns, "ollama/llama3:8b-q4", 4), b"other model", ttl=60)
    await b.set(key(subject.other_ns, llama, 5), b"other namespace", ttl=60)
    assert await b.invalidate(namespace=subject.ns, model=llama) == 2
    assert await b.get(key(subject.ns, llama, 1)) is None
    assert await b.get(key(subject.ns, "ollama/llama3", 3)) == b"other model"
    assert await b.get(key(subject.ns, "ollama/llama3:8b-q4", 4)) == b"other model"
    assert await b.get(key(subject.other_ns, llama, 5)) == b"other namespace"


async def test_invalidate_a_model_in_every_namespace(subject: Subject) -> None:
    b = subject.backend
    model = f"test/{subject.ns}"  # unique, since other runs may share the server
    await b.set(key(subject.ns, model, 1), b"x", ttl=60)
    await b.set(key(subject.other_ns, model, 2), b"x", ttl=60, tags=["t:1"])
    await b.set(key(subject.ns, "openai/gpt-4o", 3), b"kept", ttl=60)
    assert await b.invalidate(model=model) == 2
    assert await b.get(key(subject.ns, "openai/gpt-4o", 3)) == b"kept"


async def test_invalidate_a_tag(subject: Subject) -> None:
    b = subject.backend
    await b.set(key(subject.ns, n=1), b"x", ttl=60, tags=["team:research", "env:prod"])
    await b.set(key(subject.ns, n=2), b"x", ttl=None, tags=["team:research"])
    await b.set(key(subject.ns, n=3), b"ops", ttl=60, tags=["team:ops", "env:prod"])
    await b.set(key(subject.ns, n=4), b"untagged", ttl=60)
    await b.set(key(subject.other_ns, n=5), b"other ns", ttl=60, tags=["team:research"])
    assert await b.invalidate(namespace=subject.ns, tag="team:research") == 2
    assert await b.get(key(subject.ns, n=1)) is None
    assert await b.get(key(subject.ns, n=2)) is None
    assert await b.get(key(subject.ns, n=3)) == b"ops"
    assert await b.get(key(subject.ns, n=4)) == b"untagged"
    assert await b.get(key(subject.other_ns, n=5)) == b"other ns"
    # Invalidated entries are not counted twice, and a tag never used matches nothing.
    assert await b.invalidate(namespace=subject.ns, tag="team:research") == 0
    assert await b.invalidate(namespace=subject.ns, tag="team:nobody") == 0
    assert await b.invalidate(namespace=subject.ns, tag="env:prod") == 1


async def test_invalidate_a_tag_within_a_model(subject: Subject) -> None:
    b = subject.backend
    await b.set(key(subject.ns, "openai/a", 1), b"x", ttl=60, tags=["t:x"])
    await b.set(key(subject.ns, "openai/b", 2), b"y", ttl=60, tags=["t:x"])
    assert await b.invalidate(namespace=subject.ns, model="openai/a", tag="t:x") == 1
    assert await b.get(key(subject.ns, "openai/b", 2)) == b"y"
    assert await b.invalidate(namespace=subject.ns, tag="t:x") == 1


async def test_invalidate_a_tag_in_every_namespace(subject: Subject) -> None:
    b = subject.backend
    tag = f"run:{subject.ns}"
    await b.set(key(subject.ns, n=1), b"x", ttl=60, tags=[tag])
    await b.set(key(subject.other_ns, n=2), b"x", ttl=60, tags=[tag])
    assert await b.invalidate(tag=tag) == 2


async def test_a_rewritten_entry_carries_its_new_tags(
    subject: Subject,
) -> None:
    # Storing again under the same key replaces the value; invalidating an old tag may remove
    # the new value too (the tag indexes are append-only in disk and Redis), but never fails.
    b = subject.backend
    await b.set(key(subject.ns), b"old", ttl=60, tags=["v:1"])
    await b.set(key(subject.ns), b"new", ttl=60, tags=["v:2"])
    assert await b.get(key(subject.ns)) == b"new"
    assert await b.invalidate(namespace=subject.ns, tag="v:2") == 1
    assert await b.get(key(subject.ns)) is None


async def test_invalidate_needs_a_filter(subject: Subject) -> None:
    with pytest.raises(ValueError, match="needs a namespace, a model or a tag"):
        await subject.backend.invalidate()


async def test_aclose_twice_is_harmless(subject: Subject) -> None:
    await subject.backend.aclose()
    await subject.backend.aclose()


# -- memory ------------------------------------------------------------------------------------


async def test_memory_evicts_the_least_recently_used_by_count() -> None:
    memory = MemoryCacheBackend(max_entries=3, max_bytes=None)
    for n in range(3):
        await memory.set(key("ns", n=n), b"v", ttl=None)
    assert await memory.get(key("ns", n=0)) == b"v"  # now the most recently used
    await memory.set(key("ns", n=3), b"v", ttl=None)
    assert len(memory) == 3
    assert await memory.get(key("ns", n=1)) is None  # the least recently used went
    assert await memory.get(key("ns", n=0)) == b"v"
    assert await memory.get(key("ns", n=3)) == b"v"


async def test_memory_evicts_by_bytes_and_never_holds_more() -> None:
    memory = MemoryCacheBackend(max_entries=1000, max_bytes=1000)
    for n in range(10):
        await memory.set(key("ns", n=n), b"x" * 200, ttl=None)
        assert memory.bytes <= 1000
    assert 2 <= len(memory) < 10
    assert await memory.get(key("ns", n=9)) is not None
    assert await memory.get(key("ns", n=0)) is None
    # A value bigger than the whole budget is not stored, and evicts nothing.
    before = len(memory)
    await memory.set(key("ns", n=99), b"x" * 2000, ttl=None)
    assert await memory.get(key("ns", n=99)) is None
    assert len(memory) == before


async def test_memory_bookkeeping_survives_overwrites_and_invalidation() -> None:
    memory = MemoryCacheBackend(max_entries=100, max_bytes=10_000)
    await memory.set(key("ns", n=1), b"a" * 100, ttl=None, tags=["t:1"])
    await memory.set(key("ns", n=1), b"b" * 10, ttl=None, tags=["t:2"])
    assert await memory.invalidate(namespace="ns", tag="t:1") == 0
    assert await memory.invalidate(namespace="ns", tag="t:2") == 1
    assert memory.bytes == 0
    assert len(memory) == 0


async def test_memory_ttl_uses_the_monotonic_clock_it_is_given() -> None:
    clock = FakeClock()
    memory = MemoryCacheBackend(clock=clock)
    await memory.set(key("ns"), b"v", ttl=10)
    clock.now += 9.9
    assert await memory.get(key("ns")) == b"v"
    clock.now += 0.2
    assert await memory.get(key("ns")) is None
    assert len(memory) == 0
    # An expired entry does not count as deleted or invalidated.
    await memory.set(key("ns"), b"v", ttl=1)
    clock.now += 2
    assert await memory.delete(key("ns")) is False
    await memory.set(key("ns"), b"v", ttl=1)
    clock.now += 2
    assert await memory.invalidate(namespace="ns") == 0


def test_memory_from_config() -> None:
    memory = MemoryCacheBackend.from_config(CacheConfig(max_entries=5, max_bytes=None))
    assert (memory.max_entries, memory.max_bytes) == (5, None)


# -- disk --------------------------------------------------------------------------------------


class _Detonator:
    """Unpickling this runs ``touch`` on a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def _plant(directory: Path, key: str, mode: int, value: bytes | None, filename: str | None) -> None:
    """Write a row straight into diskcache's database, as an attacker with the dir could."""
    with sqlite3.connect(directory / "cache.db") as db:
        db.execute(
            "INSERT OR REPLACE INTO Cache (key, raw, store_time, expire_time, access_time,"
            " access_count, tag, size, mode, filename, value)"
            " VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, ?, ?, ?)",
            (key, time.time(), time.time(), mode, filename, value),
        )
    db.close()


async def test_disk_never_unpickles_a_planted_entry(tmp_path: Path) -> None:
    directory = tmp_path / "answers"
    marker = tmp_path / "exploded"
    disk = DiskCacheBackend(directory)
    try:
        payload = pickle.dumps(_Detonator(marker))
        # Sanity: this payload does run code when unpickled.
        pickle.loads(payload)
        assert marker.exists()
        marker.unlink()

        _plant(directory, key("ns", n=1), 4, payload, None)  # MODE_PICKLE, in the row
        (directory / "planted.val").write_bytes(payload)
        _plant(directory, key("ns", n=2), 4, None, "planted.val")  # MODE_PICKLE, in a file
        _plant(directory, key("ns", n=3), 3, None, "planted.val")  # MODE_TEXT

        for n in (1, 2, 3):
            assert await disk.get(key("ns", n=n)) is None
        assert not marker.exists()
        # Read as corrupt, and deleted: the next read does not even find the row.
        with sqlite3.connect(directory / "cache.db") as db:
            left = db.execute("SELECT COUNT(*) FROM Cache WHERE mode != 1").fetchone()[0]
        db.close()
        assert left == 0
    finally:
        await disk.aclose()


async def test_disk_stores_values_as_raw_bytes_never_pickled(tmp_path: Path) -> None:
    directory = tmp_path / "answers"
    disk = DiskCacheBackend(directory)
    try:
        await disk.set(key("ns"), b'{"v":1}', ttl=60, tags=["team:x"])
        with pytest.raises(TypeError, match="cache values are bytes"):
            await disk.set(key("ns", n=2), {"not": "bytes"}, ttl=60)  # type: ignore[arg-type]
    finally:
        await disk.aclose()
    with sqlite3.connect(directory / "cache.db") as db:
        modes = {row[0] for row in db.execute("SELECT mode FROM Cache")}
    db.close()
    assert modes == {1}  # MODE_RAW only: nothing pickled, not even the tag rows


async def test_disk_entries_survive_a_restart_and_are_shared(tmp_path: Path) -> None:
    first = DiskCacheBackend.from_config(CacheConfig(path=str(tmp_path / "d")))
    second = DiskCacheBackend(tmp_path / "d")
    try:
        await first.set(key("ns"), b"shared", ttl=60, tags=["t:1"])
        assert await second.get(key("ns")) == b"shared"
        assert await second.invalidate(namespace="ns", tag="t:1") == 1
        assert await first.get(key("ns")) is None
    finally:
        await first.aclose()
        await second.aclose()


def test_disk_refuses_options_it_does_not_know(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown disk cache option\(s\) disk"):
        DiskCacheBackend(tmp_path, disk=object)


def test_disk_default_directory_follows_tollway_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tollway.cache.disk import default_directory

    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path))
    assert default_directory() == tmp_path / "answers"


async def test_disk_work_runs_off_the_event_loop(tmp_path: Path) -> None:
    import threading

    disk = DiskCacheBackend(tmp_path)
    try:
        seen: list[str] = []
        original = disk._cache.get

        def spy(*args: object, **kwargs: object) -> object:
            seen.append(threading.current_thread().name)
            return original(*args, **kwargs)

        disk._cache.get = spy
        await disk.get(key("ns"))
        assert seen
        assert seen[0].startswith("tollway-diskcache")
        assert threading.current_thread().name not in seen
    finally:
        await disk.aclose()
