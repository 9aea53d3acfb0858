"""The ``[cache]`` table. Only attrs classes here: config loading imports it cheaply."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define(kw_only=True)
class CacheConfig:
    """Answer caching. ``backend`` names a registered cache backend: memory, disk, redis."""

    enabled: bool = False
    backend: str = "memory"
    # The first part of every key: separate namespaces never see each other's answers, and
    # one namespace can be emptied at once. Letters, digits, '-', '_' and '.'; no ':'.
    namespace: str = "tollway"
    # Seconds an answer is kept; 0 (or None in code) keeps it until evicted or invalidated.
    ttl: float | None = 3600.0
    # Memory backend: the most entries and bytes it holds before evicting least recently used.
    max_entries: int = 10_000
    max_bytes: int | None = 256 * 1024 * 1024
    # Disk backend: the directory (default: $TOLLWAY_CACHE_DIR/answers or ~/.cache/tollway/answers).
    path: str | None = None
    # Redis backend.
    url: str = "redis://127.0.0.1:6379/0"
    # Cache streamed answers too, and replay them as streams.
    streams: bool = True
    # Remote backends (redis): seconds a cache read or write may take before the call goes on
    # without the cache. A cache must never make a call slower than having no cache.
    timeout: float = 0.5
    # After the backend fails (down, timing out), calls skip it for this many seconds and go
    # straight to the provider, rather than each paying for the failure; 0 never skips.
    error_cooldown: float = 1.0
    # Backend-specific extras, passed through (disk: size_limit, eviction_policy, ...;
    # redis: any redis.asyncio.Redis keyword, e.g. max_connections).
    options: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.namespace or not all(c.isalnum() or c in "-_." for c in self.namespace):
            raise ValueError(
                f"cache namespace {self.namespace!r} must be letters, digits, '-', '_' or '.' "
                "(it starts every cache key, before a ':')"
            )
        if self.ttl is not None and self.ttl < 0:
            raise ValueError(f"cache ttl must be seconds, or 0 for no expiry, not {self.ttl}")
        if self.ttl == 0:
            self.ttl = None
        if self.max_entries < 1:
            raise ValueError(f"cache max_entries must be at least 1, not {self.max_entries}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"cache max_bytes must be positive, not {self.max_bytes}")
        if self.timeout <= 0 or self.error_cooldown < 0:
            raise ValueError("cache timeout must be positive and error_cooldown not negative")
