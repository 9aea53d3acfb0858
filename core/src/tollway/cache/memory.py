"""The in-process cache backend: least recently used, bounded by entries and by bytes.

``get`` and ``set`` are O(1) (an ``OrderedDict`` in recency order). An entry's TTL is measured
on a monotonic clock, so a change of wall time neither expires nor revives anything; expired
entries are dropped when read, and otherwise age out of the LRU end like any other. Invalidation
by namespace or model scans the keys (a dictionary walk, fine for an in-process cache); by tag
it reads an index of tag -> keys.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tollway.cache.backend import check_filters, key_matches

if TYPE_CHECKING:
    from tollway.cache.config import CacheConfig

# Each entry also costs its key and bookkeeping; counted roughly so max_bytes means something.
_OVERHEAD = 64


class _Entry:
    __slots__ = ("expires", "size", "tags", "value")

    def __init__(
        self, value: bytes, expires: float | None, tags: tuple[str, ...], size: int
    ) -> None:
        self.value = value
        self.expires = expires
        self.tags = tags
        self.size = size


class MemoryCacheBackend:
    """An LRU of bytes in this process. Not shared across processes; lost on exit."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._tags: dict[str, set[str]] = {}

    @classmethod
    def from_config(cls, config: CacheConfig) -> MemoryCacheBackend:
        return cls(max_entries=config.max_entries, max_bytes=config.max_bytes)

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires is not None and entry.expires <= self.clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    async def set(
        self, key: str, value: bytes, *, ttl: float | None, tags: Sequence[str] = ()
    ) -> None:
        size = len(value) + len(key) + _OVERHEAD
        if key in self._entries:
            self._remove(key)
        if self.max_bytes is not None and size > self.max_bytes:
            return  # would evict everything and still not fit
        expires = self.clock() + ttl if ttl is not None else None
        tag_tuple = tuple(tags)
        self._entries[key] = _Entry(value, expires, tag_tuple, size)
        self.bytes += size
        for tag in tag_tuple:
            members = self._tags.get(tag)
            if members is None:
                self._tags[tag] = {key}
            else:
                members.add(key)
        entries = self._entries
        max_bytes = self.max_bytes
        while len(entries) > self.max_entries or (max_bytes is not None and self.bytes > max_bytes):
            self._remove(next(iter(entries)))

    async def delete(self, key: str) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        live = entry.expires is None or entry.expires > self.clock()
        self._remove(key)
        return live

    async def invalidate(
        self, *, namespace: str | None = None, model: str | None = None, tag: str | None = None
    ) -> int:
        check_filters(namespace, model, tag)
        if tag is not None:
            candidates: list[str] = list(self._tags.get(tag, ()))
        else:
            candidates = list(self._entries)
        now = self.clock()
        removed = 0
        for key in candidates:
            if key_matches(key, namespace, model):
                entry = self._entries[key]
                if entry.expires is None or entry.expires > now:
                    removed += 1
                self._remove(key)
        return removed

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        for tag in entry.tags:
            members = self._tags.get(tag)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._tags[tag]

    async def aclose(self) -> None:
        self._entries.clear()
        self._tags.clear()
        self.bytes = 0
