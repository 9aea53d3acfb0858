"""The on-disk cache backend: diskcache (SQLite plus files), storing bytes and nothing else.

diskcache's default ``Disk`` pickles any value it does not know and unpickles whatever a row
says was pickled; so does its ``JSONDisk``, which only wraps it. On a cache directory that
someone else can write, that is code execution (CVE-2025-69872). :class:`BytesOnlyDisk` stores
``str`` keys and ``bytes`` values as they are and refuses every other mode, in both directions:
a planted pickle row reads as a corrupt entry, which the backend deletes.

diskcache is synchronous, and a slow disk would stall the event loop, so every call runs on
one worker thread of the backend's own. One thread also means one SQLite connection, opened
and closed on that thread.

Tags are index rows in the same cache, keyed ``\\x1ftag\\x1f<tag hash>\\x1f<entry key>`` with the
entry's expiry, so invalidating by tag (and by namespace or model, which are key prefixes) is
a range read over the key index, not a scan of the whole cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import diskcache

from tollway.cache.backend import EntryError, check_filters, key_matches, key_prefix
from tollway.logging import get_logger

if TYPE_CHECKING:
    from tollway.cache.config import CacheConfig

T = TypeVar("T")
log = get_logger("tollway.cache")

_TAG_ROW = "\x1ftag\x1f"
# Settings of diskcache.Cache that [cache] options may set; the disk itself is never one.
_ALLOWED_OPTIONS = frozenset(
    ("size_limit", "cull_limit", "eviction_policy", "statistics", "sqlite_mmap_size")
)


class UnsafeEntryError(EntryError):
    """A row stored in a mode other than raw bytes: never decoded, since it could be a pickle."""


class BytesOnlyDisk(diskcache.Disk):  # type: ignore[misc]
    """A diskcache ``Disk`` for ``str`` keys and ``bytes`` values that never pickles."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"cache keys are str, not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise UnsafeEntryError("a pickled key in the cache directory; refusing to load it")
        return bytes(key) if type(key) is sqlite3.Binary else key

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> Any:
        if type(value) is not bytes:
            raise TypeError(f"cache values are bytes, not {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_RAW:
            return bytes(value) if type(value) is sqlite3.Binary else value
        if mode == diskcache.core.MODE_BINARY and not read:
            with open(os.path.join(self._directory, filename or ""), "rb") as reader:
                return reader.read()
        raise UnsafeEntryError(
            f"a cache row in mode {mode} (not raw bytes); refusing to decode it, it may be a pickle"
        )


def default_directory() -> Path:
    base = os.environ.get("TOLLWAY_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "tollway"
    return root / "answers"


def _tag_hash(tag: str) -> str:
    return hashlib.blake2b(tag.encode(), digest_size=12).hexdigest()


def _upper_bound(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class DiskCacheBackend:
    """Answers in a diskcache directory on local disk, shared by processes on this machine."""

    def __init__(self, directory: str | Path, **settings: Any) -> None:
        unknown = set(settings) - _ALLOWED_OPTIONS
        if unknown:
            raise ValueError(
                f"unknown disk cache option(s) {', '.join(sorted(unknown))}; "
                f"[cache.options] takes: {', '.join(sorted(_ALLOWED_OPTIONS))}"
            )
        self.directory = Path(directory)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollway-diskcache")
        self._closed = False
        # Opened on the worker thread, so its SQLite connection belongs to that thread.
        self._cache: diskcache.Cache = self._executor.submit(
            diskcache.Cache, str(self.directory), disk=BytesOnlyDisk, **settings
        ).result()

    @classmethod
    def from_config(cls, config: CacheConfig) -> DiskCacheBackend:
        directory = Path(config.path).expanduser() if config.path else default_directory()
        return cls(directory, **config.options)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("the disk cache is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- the protocol ------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._run(self._get, key)

    async def set(
        self, key: str, value: bytes, *, ttl: float | None, tags: Sequence[str] = ()
    ) -> None:
        await self._run(self._set, key, value, ttl, tuple(tags))

    async def delete(self, key: str) -> bool:
        return await self._run(self._delete, key)

    async def invalidate(
        self, *, namespace: str | None = None, model: str | None = None, tag: str | None = None
    ) -> int:
        check_filters(namespace, model, tag)
        return await self._run(self._invalidate, namespace, model, tag)

    async def aclose(self) -> None:
        if self._closed:
            return
        await self._run(self._cache.close)
        self._closed = True
        self._executor.shutdown(wait=True)

    # -- on the worker thread ----------------------------------------------------------------

    def _get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = self._cache.get(key)
        except UnsafeEntryError as exc:
            log.warning("cache_entry_unsafe", directory=str(self.directory), error=str(exc))
            self._cache.delete(key)
            return None
        return value

    def _set(self, key: str, value: bytes, ttl: float | None, tags: tuple[str, ...]) -> None:
        cache = self._cache
        with cache.transact():
            cache.set(key, value, expire=ttl)
            for tag in tags:
                cache.set(f"{_TAG_ROW}{_tag_hash(tag)}\x1f{key}", b"", expire=ttl)

    def _delete(self, key: str) -> bool:
        return bool(self._cache.delete(key))

    def _keys_from(self, prefix: str) -> list[str]:
        # A range read over diskcache's (key, raw) index. diskcache has no public prefix query,
        # and walking iterkeys() would read every key; its schema has been stable since 2016.
        rows = self._cache._sql(
            "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1",
            (prefix, _upper_bound(prefix)),
        ).fetchall()
        return [row[0] for row in rows if isinstance(row[0], str)]

    def _invalidate(self, namespace: str | None, model: str | None, tag: str | None) -> int:
        cache = self._cache
        prefix = key_prefix(namespace, model)
        if tag is not None:
            row_prefix = f"{_TAG_ROW}{_tag_hash(tag)}\x1f"
            rows = self._keys_from(row_prefix + (prefix or ""))
            keys = [row[len(row_prefix) :] for row in rows]
        elif prefix is not None:
            rows = []
            keys = self._keys_from(prefix)
        else:  # a model in every namespace: every key is read (keys only, not values)
            rows = []
            keys = [
                row[0]
                for row in self._cache._sql("SELECT key FROM Cache WHERE raw = 1").fetchall()
                if isinstance(row[0], str) and not row[0].startswith(_TAG_ROW)
            ]
        removed = 0
        with cache.transact():
            for key in keys:
                if key_matches(key, namespace, model) and cache.delete(key):
                    removed += 1
            for row in rows:
                cache.delete(row)
        return removed
