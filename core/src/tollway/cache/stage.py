"""The cache stage: the outermost built-in stage, answering repeated calls from a backend.

A call's key is :func:`tollway.cache.keys.request_key` (its digest is handed on to the
single-flight stage inside, which keys the same request); what is stored is a
:class:`tollway.cache.backend.CacheEntry` (JSON, never pickle). ``complete`` and ``stream``
share keys: a stored stream answers ``complete`` (assembled), and a stored answer replays as a
stream (one chunk of text and tool calls, then one with the finish reason and usage).

Per request, ``controls["cache"]`` is ``"no-cache"`` (do not read, do store), ``"no-store"``
(read, do not store) or ``"off"`` (neither), and ``controls["cache_ttl"]`` overrides the TTL
(0 or less: do not store). ``request.tags`` become the entry's tags, as ``"KEY:VALUE"``.

Errors are never cached, nor answers cut short (no finish reason) or blocked by a content
filter; a stream is stored only when it ran to its end. A backend that fails (Redis down) never
fails the call: the call goes on as a miss, the failure is counted in
``tollway_cache_errors_total`` and logged once per burst, and the backend is skipped for
``error_cooldown`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from tollway.cache.backend import (
    CacheBackend,
    CacheEntry,
    EntryError,
    EntryVersionError,
    decode_entry,
    encode_entry,
)
from tollway.cache.keys import clear_handed, hand_on, key_of, request_digest
from tollway.errors import ConfigError, TollwayError
from tollway.logging import get_logger
from tollway.metrics import Metrics
from tollway.pipeline import CompleteFn, Stage, StreamFn
from tollway.types import Request, Response, StreamChunk

if TYPE_CHECKING:
    from tollway.stages import StageContext

log = get_logger("tollway.cache")

# Answers that are not what the same call would give again: cut off, or filtered.
_UNSTORABLE = frozenset((None, "content_filter", "error"))
# A failing backend is logged at most once in this many seconds; the rest are counted.
_LOG_EVERY = 60.0
# The decoded-entry memo: at most this many entries (oldest out first), of at most this size.
_MEMO_ENTRIES = 256
_MEMO_MAX_BYTES = 16 * 1024


class CacheStage(Stage):
    """Answers repeated calls from a :class:`CacheBackend`; stores what the provider answers."""

    name = "cache"

    def __init__(
        self,
        backend: CacheBackend,
        *,
        namespace: str = "tollway",
        ttl: float | None = 3600.0,
        metrics: Metrics | None = None,
        route: Callable[[str], str] | None = None,
        error_cooldown: float = 1.0,
        backend_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.namespace = namespace
        self.ttl = ttl
        self.route = route
        self.error_cooldown = error_cooldown
        self.backend_name = backend_name or type(backend).__name__
        self.clock = clock
        metrics = metrics if metrics is not None else Metrics()
        labels = ["namespace"]
        self._hits = metrics.counter("cache_hits_total", "Calls answered from the cache.", labels)
        self._misses = metrics.counter(
            "cache_misses_total", "Calls looked up in the cache and not found there.", labels
        )
        self._saved = metrics.counter(
            "cache_saved_tokens_total",
            "Input plus output tokens that cache hits did not spend upstream.",
            labels,
        )
        self._errors = metrics.counter(
            "cache_errors_total",
            "Cache backend failures (op: get, set, delete, decode), calls that skipped a "
            "failing backend (op: skipped) and calls with no key (op: key).",
            ["namespace", "op"],
        )
        # Entries decoded lately, by their stored bytes: a hot answer is decoded once, not per
        # hit. Equal bytes are the same entry, and records are frozen, so sharing them is safe.
        self._decoded: dict[bytes, CacheEntry] = {}
        self._skip_until = 0.0
        self._quiet_until = 0.0
        self._suppressed = 0

    @classmethod
    def from_context(cls, context: StageContext) -> CacheStage:
        config = context.config.cache
        backends = context.plugins.registrations("cache_backends")
        registration = backends.get(config.backend)
        if registration is None:
            hint = (
                ' (install it: pip install "tollway[redis]")' if config.backend == "redis" else ""
            )
            raise ConfigError(
                f"no cache backend is called {config.backend!r}{hint}; the installed ones are: "
                f"{', '.join(sorted(backends)) or 'none'}",
                key="cache.backend",
            )
        try:
            backend = registration.factory(config)
        except (ValueError, TypeError, OSError) as exc:
            raise ConfigError(
                f"the {config.backend} cache backend cannot start: {exc}", key="cache"
            ) from exc
        stage_class = cls if config.streams else _CompleteOnlyCacheStage
        return stage_class(
            backend,
            namespace=config.namespace,
            ttl=config.ttl,
            metrics=context.metrics,
            route=context.route,
            error_cooldown=config.error_cooldown,
            backend_name=config.backend,
        )

    # -- the request path --------------------------------------------------------------------

    async def complete(self, request: Request, call_next: CompleteFn) -> Response:
        read = store = True
        ttl = self.ttl
        controls = request.controls
        if controls:
            mode = controls.get("cache")
            if mode == "off":
                clear_handed()
                return await call_next(request)
            if mode is not None:
                read = mode != "no-cache"
                store = mode != "no-store"
            if "cache_ttl" in controls:
                ttl, store = _ttl_control(controls["cache_ttl"], ttl, store)
        try:
            digest = request_digest(request)
        except TypeError as exc:
            self._unkeyable(exc)
            clear_handed()
            return await call_next(request)
        key = key_of(self.namespace, request, digest)
        if read:
            entry = await self._lookup(key)
            if entry is not None:
                self._hit(entry)
                return entry.to_response(request.provider, request.model)
        # The single-flight stage inside keys the same request: it gets the digest made here.
        hand_on(request, digest)
        response = await call_next(request)
        if store and response.finish_reason not in _UNSTORABLE:
            await self._store(key, CacheEntry.of_response(response), ttl, request.tags)
        return response

    def stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        read = store = True
        ttl = self.ttl
        controls = request.controls
        if controls:
            mode = controls.get("cache")
            if mode == "off":
                clear_handed()
                return call_next(request)
            if mode is not None:
                read = mode != "no-cache"
                store = mode != "no-store"
            if "cache_ttl" in controls:
                ttl, store = _ttl_control(controls["cache_ttl"], ttl, store)
        try:
            digest = request_digest(request)
        except TypeError as exc:
            self._unkeyable(exc)
            clear_handed()
            return call_next(request)
        return self._stream(request, call_next, digest, read, store, ttl)

    async def _stream(
        self,
        request: Request,
        call_next: StreamFn,
        digest: str,
        read: bool,
        store: bool,
        ttl: float | None,
    ) -> AsyncIterator[StreamChunk]:
        key = key_of(self.namespace, request, digest)
        if read:
            entry = await self._lookup(key)
            if entry is not None:
                self._hit(entry)
                for chunk in entry.to_chunks():
                    yield chunk
                return
        hand_on(request, digest)
        iterator = call_next(request)
        chunks: list[StreamChunk] = []
        finish_reason: str | None = None
        try:
            async for chunk in iterator:
                if store:
                    chunks.append(chunk)
                    if chunk.finish_reason is not None:
                        finish_reason = chunk.finish_reason
                yield chunk
        finally:
            # Close the stream below now: an abandoned stream gives its connection back.
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        # Only reached when the stream ran to its end: an error, a cut stream or a consumer
        # that stopped early leaves through the finally above and stores nothing.
        if store and finish_reason not in _UNSTORABLE:
            await self._store(key, CacheEntry.of_stream(chunks), ttl, request.tags)

    # -- backend calls, each of which may fail without failing the call ---------------------

    async def _lookup(self, key: str) -> CacheEntry | None:
        namespace = self.namespace
        if self._skip_until and not self._usable():
            self._errors.inc(namespace, "skipped")
            self._misses.inc(namespace)
            return None
        try:
            value = await self.backend.get(key)
        except Exception as exc:
            self._failed("get", exc)
            self._misses.inc(namespace)
            return None
        if value is None:
            self._misses.inc(namespace)
            return None
        decoded = self._decoded
        entry = decoded.get(value)
        if entry is not None:
            return entry
        try:
            entry = decode_entry(value)
        except EntryVersionError:
            pass  # another tollway's entry: a miss here, left for the one that reads it
        except EntryError as exc:
            self._errors.inc(namespace, "decode")
            log.warning("cache_entry_corrupt", key=key, error=str(exc), action="deleted")
            try:
                await self.backend.delete(key)
            except Exception as delete_exc:
                self._failed("delete", delete_exc)
        else:
            if len(value) <= _MEMO_MAX_BYTES:
                decoded[value] = entry
                if len(decoded) > _MEMO_ENTRIES:
                    del decoded[next(iter(decoded))]
            return entry
        self._misses.inc(namespace)
        return None

    async def _store(
        self, key: str, entry: CacheEntry, ttl: float | None, tags: Mapping[str, str]
    ) -> None:
        if self._skip_until and not self._usable():
            self._errors.inc(self.namespace, "skipped")
            return
        try:
            await self.backend.set(
                key,
                encode_entry(entry),
                ttl=ttl,
                tags=[f"{k}:{v}" for k, v in tags.items()] if tags else (),
            )
        except Exception as exc:
            self._failed("set", exc)

    def _unkeyable(self, exc: TypeError) -> None:
        # A value in ``extra`` that has no JSON form: the call goes on, uncached.
        self._errors.inc(self.namespace, "key")
        log.debug("cache_key_impossible", error=str(exc))

    def _hit(self, entry: CacheEntry) -> None:
        self._hits.inc(self.namespace)
        saved = entry.usage_tokens()
        if saved:
            self._saved.inc(self.namespace, amount=float(saved))

    def _usable(self) -> bool:
        if self.clock() < self._skip_until:
            return False
        self._skip_until = 0.0
        return True

    def _failed(self, op: str, exc: Exception) -> None:
        self._errors.inc(self.namespace, op)
        now = self.clock()
        if self.error_cooldown > 0:
            self._skip_until = now + self.error_cooldown
        if now < self._quiet_until:
            self._suppressed += 1
            return
        log.warning(
            "cache_backend_failed",
            backend=self.backend_name,
            op=op,
            error=f"{type(exc).__name__}: {exc}",
            failures_not_logged=self._suppressed,
            effect="calls go on without the cache",
            skip_seconds=self.error_cooldown,
            fix="check that the cache backend is reachable ([cache] url / path)",
        )
        self._suppressed = 0
        self._quiet_until = now + _LOG_EVERY

    # -- administration ----------------------------------------------------------------------

    async def invalidate(
        self, *, namespace: str | None = None, model: str | None = None, tag: str | None = None
    ) -> int:
        """Remove cached answers; returns how many. All given filters must match.

        ``namespace`` defaults to this cache's; ``model`` may be an alias or a full
        ``PROVIDER/MODEL``; ``tag`` is ``"KEY:VALUE"`` from a request's tags. With no
        argument, empties this cache's namespace.
        """
        if model is not None and self.route is not None:
            try:
                model = self.route(model)
            except TollwayError:
                pass  # a provider no longer configured: its entries are still named so
        return await self.backend.invalidate(
            namespace=namespace or self.namespace, model=model, tag=tag
        )

    async def aclose(self) -> None:
        await self.backend.aclose()


class _CompleteOnlyCacheStage(CacheStage):
    """``[cache] streams = false``: streams are left out of the stage entirely."""

    stream = Stage.stream


def _ttl_control(value: Any, default: float | None, store: bool) -> tuple[float | None, bool]:
    if value is None:
        return default, store
    ttl = float(value)
    if ttl <= 0:
        return None, False
    return ttl, store
