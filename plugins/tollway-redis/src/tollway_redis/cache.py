"""Cached answers in Redis, shared by every process that points at the same server.

An entry is a plain string key (the request key, ``NAMESPACE:v1:PROVIDER/MODEL:SHA256``) set
with ``PX`` for its TTL. A tag is a set ``NAMESPACE:tag-index:TAG`` of the keys stored with it,
updated in the same Lua call as the entry, whose own expiry is stretched to outlive its longest
entry. Invalidating by tag reads that set; by namespace or model, ``SCAN MATCH`` on the key
prefix. Members of a tag set whose entry has expired are harmless: deleting them deletes
nothing and counts nothing.

A cache must never make a call slower than no cache: the client fails fast (short socket
timeouts, one immediate retry for a dropped pooled connection, no backoff), and the cache stage
treats any error as a miss.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tollway.cache.backend import check_filters, key_matches, key_namespace, key_prefix
from tollway.cache.keys import KEY_VERSION

if TYPE_CHECKING:
    from tollway.cache.config import CacheConfig

_TAG_INDEX = "tag-index"
_BATCH = 500

# KEYS[1] the entry, KEYS[2..] its tag sets; ARGV[1] the value, ARGV[2] the TTL in ms (0: none).
_SET_SCRIPT = """
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
for i = 2, #KEYS do
  local existed = redis.call('EXISTS', KEYS[i])
  redis.call('SADD', KEYS[i], KEYS[1])
  if ttl == 0 then
    redis.call('PERSIST', KEYS[i])
  elseif existed == 0 then
    redis.call('PEXPIRE', KEYS[i], ttl)
  else
    local left = redis.call('PTTL', KEYS[i])
    if left >= 0 and left < ttl then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end
return 1
"""

_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def _glob_escape(text: str) -> str:
    return text.translate(_GLOB_SPECIAL)


def tag_index_key(namespace: str, tag: str) -> str:
    return f"{namespace}:{_TAG_INDEX}:{tag}"


class RedisCacheBackend:
    """Answers in Redis through one connection pool (``redis.asyncio``)."""

    def __init__(self, url: str, *, timeout: float = 0.5, **options: Any) -> None:
        accepted = inspect.signature(redis.Redis.__init__).parameters
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(
                f"unknown redis option(s) {', '.join(unknown)} in [cache.options]; it takes "
                "the keywords of redis.asyncio.Redis, such as max_connections"
            )
        self.url = url
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            **options,
        )
        self._set_script = self.client.register_script(_SET_SCRIPT)
        self._closed = False

    @classmethod
    def from_config(cls, config: CacheConfig) -> RedisCacheBackend:
        return cls(config.url, timeout=config.timeout, **config.options)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.client.get(key)
        return value

    async def set(
        self, key: str, value: bytes, *, ttl: float | None, tags: Sequence[str] = ()
    ) -> None:
        ttl_ms = max(int(ttl * 1000), 1) if ttl is not None else 0
        if not tags:
            if ttl_ms:
                await self.client.set(key, value, px=ttl_ms)
            else:
                await self.client.set(key, value)
            return
        namespace = key_namespace(key)
        keys = [key, *(tag_index_key(namespace, tag) for tag in dict.fromkeys(tags))]
        await self._set_script(keys=keys, args=[value, ttl_ms])

    async def delete(self, key: str) -> bool:
        return bool(await self.client.delete(key))

    async def invalidate(
        self, *, namespace: str | None = None, model: str | None = None, tag: str | None = None
    ) -> int:
        check_filters(namespace, model, tag)
        if tag is not None:
            return await self._invalidate_tag(namespace, model, tag)
        prefix = key_prefix(namespace, model)
        if prefix is not None:
            pattern = _glob_escape(prefix) + "*"
        else:
            assert model is not None
            pattern = f"*:{KEY_VERSION}:{_glob_escape(model)}:*"
        removed = await self._delete_matching(pattern, namespace, model)
        if model is None and namespace is not None:
            # The namespace's tag sets go with it.
            index_pattern = f"{_glob_escape(namespace)}:{_TAG_INDEX}:*"
            async for index in self.client.scan_iter(match=index_pattern, count=_BATCH):
                await self.client.unlink(index)
        return removed

    async def _delete_matching(self, pattern: str, namespace: str | None, model: str | None) -> int:
        removed = 0
        batch: list[bytes] = []
        async for raw in self.client.scan_iter(match=pattern, count=_BATCH, _type="string"):
            if key_matches(raw.decode(errors="replace"), namespace, model):
                batch.append(raw)
            if len(batch) >= _BATCH:
                removed += await self.client.unlink(*batch)
                batch = []
        if batch:
            removed += await self.client.unlink(*batch)
        return removed

    async def _invalidate_tag(self, namespace: str | None, model: str | None, tag: str) -> int:
        if namespace is not None:
            indexes = [tag_index_key(namespace, tag).encode()]
        else:
            pattern = f"*:{_TAG_INDEX}:{_glob_escape(tag)}"
            indexes = [i async for i in self.client.scan_iter(match=pattern, _type="set")]
        removed = 0
        for index in indexes:
            members: set[bytes] = await self.client.smembers(index)
            chosen = [m for m in members if key_matches(m.decode(errors="replace"), None, model)]
            for start in range(0, len(chosen), _BATCH):
                part = chosen[start : start + _BATCH]
                removed += await self.client.unlink(*part)
            if model is None:
                await self.client.unlink(index)
            elif chosen:
                await self.client.srem(index, *chosen)
        return removed

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.client.aclose()
