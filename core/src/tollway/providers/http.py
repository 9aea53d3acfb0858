"""One pooled aiohttp session per provider endpoint, owned by a Pipeline.

Sessions are created on first use (inside the running loop) and keyed by endpoint, so every
provider instance that talks to the same host shares its keep-alive connections. ``aclose``
closes them all and waits for the transports, so nothing warns about an unclosed session.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs

if TYPE_CHECKING:
    import aiohttp


def endpoint_key(url: str) -> str:
    """``scheme://host:port`` of a URL: the unit of connection pooling."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http(s) URL; write it as https://host/path")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


@attrs.define
class EndpointStats:
    """Counters for one endpoint's pool, read by metrics and `tollway plugins --health`."""

    requests: int = 0
    failures: int = 0


@attrs.define
class HttpPool:
    """Pooled client sessions by endpoint. Not thread-safe: one pool per event loop."""

    limit_per_endpoint: int = 100
    keepalive_timeout: float = 30.0
    _sessions: dict[str, aiohttp.ClientSession] = attrs.field(factory=dict, init=False)
    stats: dict[str, EndpointStats] = attrs.field(factory=dict, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def session(self, url: str, *, limit: int | None = None) -> aiohttp.ClientSession:
        """The session for the endpoint of ``url``, made on first use."""
        key = endpoint_key(url)
        session = self._sessions.get(key)
        if session is not None and not session.closed:
            return session
        if self._closed:
            raise RuntimeError("this pipeline's HTTP pool is closed; build a new Pipeline")
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self.limit_per_endpoint if limit is None else limit,
            keepalive_timeout=self.keepalive_timeout,
            ttl_dns_cache=300,
        )
        # Timeouts are per request (each provider sets its own), so the session has none.
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            raise_for_status=False,
        )
        self._sessions[key] = session
        self.stats.setdefault(key, EndpointStats())
        return session

    def endpoints(self) -> dict[str, dict[str, int]]:
        """Open, idle and total connection counts for each endpoint."""
        out: dict[str, dict[str, int]] = {}
        for key, session in self._sessions.items():
            connector = session.connector
            acquired = len(getattr(connector, "_acquired", ()))
            idle = sum(len(v) for v in getattr(connector, "_conns", {}).values())
            stats = self.stats.get(key, EndpointStats())
            out[key] = {
                "open": acquired + idle,
                "in_use": acquired,
                "idle": idle,
                "requests": stats.requests,
                "failures": stats.failures,
            }
        return out

    async def aclose(self) -> None:
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        if sessions:
            # Let the transports finish closing (aiohttp's documented graceful-shutdown pause),
            # so no "unclosed transport" warning fires when the loop ends.
            await asyncio.sleep(0)
