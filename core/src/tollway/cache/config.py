"""The ``[cache]`` table. Only attrs classes here: config loading imports it cheaply."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define(kw_only=True)
class CacheConfig:
    """Answer caching. ``backend`` names a registered cache backend: memory, disk, redis."""

    enabled: bool = False
    backend: str = "memory"
    namespace: str = "tollway"
    # Seconds an answer is kept; None keeps it until evicted or invalidated.
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
    # Backend-specific extras, passed through.
    options: dict[str, Any] = attrs.field(factory=dict)
