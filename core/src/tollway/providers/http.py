"""One pooled aiohttp session per provider endpoint, owned by a Pipeline.

Sessions are created on first use (inside the running loop) and keyed by endpoint, so every
provider instance that talks to the same host shares its keep-alive connections. ``aclose``
closes them all and waits for the transports, so nothing warns about an unclosed session.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from tollway.logging import get_logger

if TYPE_CHECKING:
    import aiohttp


log = get_logger("tollway.http")


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
    """Health counters for one endpoint, kept by the providers that use it.

    ``failures`` counts transport failures (refused, reset, timed out), not HTTP error
    statuses, which are the provider's answer rather than the pool's health.
    """

    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    rebuilds: int = 0
    latency_ewma_s: float = 0.0
    latency_max_s: float = 0.0
    last_error: str | None = None


# Weight of the newest sample in the latency average: about the last 10 calls dominate.
_EWMA_ALPHA = 0.2


@attrs.frozen(slots=True)
class ProbeResult:
    """The outcome of a cheap reachability check: any HTTP answer means the endpoint is up."""

    endpoint: str
    ok: bool
    latency_s: float
    status: int | None = None
    error: str | None = None


class Endpoint:
    """A provider's stable handle on one endpoint's pool.

    Providers keep the handle and read ``session`` per call, so the pool can rebuild the
    session under them: after ``rebuild_after`` transport failures in a row, the next call gets
    a fresh session with fresh connections, while calls still running on the old one finish
    there; the old session is closed once it has no connection in use.
    """

    __slots__ = ("_limit", "_pool", "_session", "key", "stats")

    def __init__(self, pool: HttpPool, key: str, limit: int | None) -> None:
        self._pool = pool
        self.key = key
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self.stats = pool.stats.setdefault(key, EndpointStats())

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            session = self._session = self._pool._new_session(self._limit)
        return session

    def ok(self, started: float) -> None:
        """Record a call that got an HTTP answer; ``started`` is its ``time.monotonic()``."""
        stats = self.stats
        latency = time.monotonic() - started
        stats.requests += 1
        stats.consecutive_failures = 0
        stats.latency_ewma_s += _EWMA_ALPHA * (latency - stats.latency_ewma_s)
        if latency > stats.latency_max_s:
            stats.latency_max_s = latency

    def failed(self, started: float, error: BaseException) -> None:
        """Record a transport failure; enough of them in a row rebuild the pool."""
        stats = self.stats
        stats.requests += 1
        stats.failures += 1
        stats.consecutive_failures += 1
        stats.last_error = f"{type(error).__name__}: {error}"
        if stats.consecutive_failures >= self._pool.rebuild_after:
            self.rebuild()

    def rebuild(self) -> None:
        """Start over with a new session; calls running on the old one are not disturbed."""
        old, self._session = self._session, None
        self.stats.consecutive_failures = 0
        if old is None or old.closed:
            return
        self.stats.rebuilds += 1
        log.warning("http_pool_rebuilt", endpoint=self.key, error=self.stats.last_error)
        self._pool._retire(old)

    async def probe(self, timeout: float = 2.0) -> ProbeResult:  # noqa: ASYNC109 (aiohttp's own)
        """GET the endpoint's root. Any status counts as reachable; only transport errors fail."""
        import aiohttp

        started = time.monotonic()
        try:
            async with self.session.get(
                self.key + "/", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.failed(started, exc)
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return ProbeResult(self.key, False, time.monotonic() - started, error=error)
        self.ok(started)
        return ProbeResult(self.key, True, time.monotonic() - started, status=response.status)

    def health(self) -> dict[str, Any]:
        """Open, in-use and idle connections, and the counters, for metrics."""
        session = self._session
        connector = session.connector if session is not None else None
        acquired = len(getattr(connector, "_acquired", ()))
        idle = sum(len(v) for v in getattr(connector, "_conns", {}).values())
        stats = self.stats
        return {
            "open": acquired + idle,
            "in_use": acquired,
            "idle": idle,
            "requests": stats.requests,
            "failures": stats.failures,
            "consecutive_failures": stats.consecutive_failures,
            "rebuilds": stats.rebuilds,
            "latency_ewma_ms": round(stats.latency_ewma_s * 1000, 3),
            "latency_max_ms": round(stats.latency_max_s * 1000, 3),
            "last_error": stats.last_error,
        }


@attrs.define
class HttpPool:
    """Pooled client sessions by endpoint. Not thread-safe: one pool per event loop."""

    limit_per_endpoint: int = 100
    keepalive_timeout: float = 30.0
    # Transport failures in a row after which an endpoint's session is rebuilt.
    rebuild_after: int = 3
    # How long a rebuilt pool's old session may keep serving calls still running on it.
    retire_grace: float = 600.0
    _endpoints: dict[str, Endpoint] = attrs.field(factory=dict, init=False)
    stats: dict[str, EndpointStats] = attrs.field(factory=dict, init=False)
    _retiring: dict[asyncio.Task[None], aiohttp.ClientSession] = attrs.field(
        factory=dict, init=False
    )
    _closed: bool = attrs.field(default=False, init=False)

    def endpoint(self, url: str, *, limit: int | None = None) -> Endpoint:
        """The stable handle for the endpoint of ``url``; providers keep it."""
        key = endpoint_key(url)
        found = self._endpoints.get(key)
        if found is None:
            if self._closed:
                raise RuntimeError("this pipeline's HTTP pool is closed; build a new Pipeline")
            found = self._endpoints[key] = Endpoint(self, key, limit)
        return found

    def session(self, url: str, *, limit: int | None = None) -> aiohttp.ClientSession:
        """The current session for the endpoint of ``url``, made on first use."""
        if self._closed:
            raise RuntimeError("this pipeline's HTTP pool is closed; build a new Pipeline")
        return self.endpoint(url, limit=limit).session

    def _new_session(self, limit: int | None) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this pipeline's HTTP pool is closed; build a new Pipeline")
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self.limit_per_endpoint if limit is None else limit,
            keepalive_timeout=self.keepalive_timeout,
            ttl_dns_cache=300,
        )
        # Timeouts are per request (each provider sets its own), so the session has none.
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            raise_for_status=False,
        )

    def _retire(self, session: aiohttp.ClientSession) -> None:
        task = asyncio.get_running_loop().create_task(self._close_when_idle(session))
        self._retiring[task] = session
        task.add_done_callback(self._retiring.pop)

    async def _close_when_idle(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + self.retire_grace
        connector = session.connector
        # aiohttp signals nothing when a connection is released, so this polls.
        while getattr(connector, "_acquired", None) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await session.close()

    def endpoints(self) -> dict[str, dict[str, Any]]:
        """Health of each endpoint's pool: connections, requests, failures, latency."""
        return {key: endpoint.health() for key, endpoint in self._endpoints.items()}

    async def probe(self) -> list[ProbeResult]:
        """Probe every endpoint in use, concurrently."""
        return list(await asyncio.gather(*(e.probe() for e in self._endpoints.values())))

    async def aclose(self) -> None:
        self._closed = True
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        sessions = [e._session for e in endpoints if e._session is not None]
        for endpoint in endpoints:
            endpoint._session = None
        # Sessions retired by a rebuild close now too, whatever they were waiting for.
        retiring = list(self._retiring.items())
        for task, session in retiring:
            task.cancel()
            sessions.append(session)
        for task, _ in retiring:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for session in sessions:
            if not session.closed:
                await session.close()
        if sessions:
            # Let the transports finish closing (aiohttp's documented graceful-shutdown pause),
            # so no "unclosed transport" warning fires when the loop ends.
            await asyncio.sleep(0)
