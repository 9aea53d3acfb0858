"""Single-flight: identical calls in flight at once share one upstream call.

The stage keys each call with the canonical request key and hands it to a *coalescer*, chosen
by ``[single_flight] backend`` from the coalescers that plugins register (``local`` here,
``redis`` in tollway-redis). The first caller of a key leads: its call runs in a task of its
own, so that cancelling that caller does not cancel the call the others wait on. Followers wait
for the same outcome: every one gets the answer, or its own copy of the error. Only when every
waiter has gone is the upstream call cancelled.

A stream is pumped by its leader task into a growing list of chunks; each subscriber reads the
list with its own index, so each goes at its own pace and a slow one holds up neither the
others nor the provider. A subscriber that joins part-way reads from the first chunk.

A ``complete`` and a ``stream`` of the same request are different calls and never share.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from tollway.cache.keys import key_of, request_digest, take_handed
from tollway.errors import ConfigError, TollwayError
from tollway.pipeline import CompleteFn, Stage, StreamFn
from tollway.types import Request, Response, StreamChunk

if TYPE_CHECKING:
    from tollway.metrics import Metrics
    from tollway.resilience.config import SingleFlightConfig
    from tollway.stages import StageContext

KEY_NAMESPACE = "sf"

CallComplete = Callable[[], Awaitable[Response]]
CallStream = Callable[[], AsyncIterator[StreamChunk]]


class Coalescer(Protocol):
    """What a coalescer backend offers. ``key`` is the call's canonical key.

    ``complete`` runs ``call()`` once for every caller of ``key`` that arrives while it is in
    flight and gives each the outcome; ``stream`` does the same for streams, each subscriber
    reading every chunk from the first at its own pace. A coalescer must keep the calls of the
    two kinds apart, must not cancel the shared call while anyone still waits for it, and must
    cancel it once nobody does.
    """

    async def complete(self, key: str, call: CallComplete) -> Response: ...

    def stream(self, key: str, call: CallStream) -> AsyncIterator[StreamChunk]: ...

    async def aclose(self) -> None: ...


class SharedCallCancelledError(TollwayError):
    """The shared call this caller was waiting on was cancelled by someone else."""

    retryable = True


def clone_error(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one waiter, with the original's traceback and cause.

    Raising one exception object in several tasks would splice every task's frames into the
    same traceback; each waiter raises its own copy instead.
    """
    try:
        clone = copy.copy(exc)
    except Exception:
        return exc
    if type(clone) is not type(exc):
        return exc
    clone.__cause__ = exc.__cause__
    clone.__context__ = exc.__context__
    clone.__suppress_context__ = exc.__suppress_context__
    return clone.with_traceback(exc.__traceback__)


def _cancelled_error() -> SharedCallCancelledError:
    return SharedCallCancelledError(
        "the identical call this one was coalesced with was cancelled before it finished; "
        "send the call again (or pass controls={'single_flight': False} to never share it)"
    )


class _CompleteFlight:
    """One shared ``complete`` call and the callers waiting for it.

    Each caller waits on a future of its own (cancelling a caller cancels only its future,
    never the shared task), and the task settles them itself when the call ends: no
    ``shield`` and no done-callbacks, so a call that nobody joins costs one task and one
    future.
    """

    __slots__ = (
        "abandoned",
        "done",
        "error",
        "futures",
        "key",
        "result",
        "task",
        "waiters",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.task: asyncio.Task[None] | None = None
        self.futures: list[asyncio.Future[None]] = []
        self.waiters = 0
        self.abandoned = False
        self.done = False
        # The outcome: an answer, an error, or neither (the call was cancelled).
        self.result: Response | None = None
        self.error: BaseException | None = None

    def settle(self) -> None:
        """Wake every caller still waiting; what each gets is read from the flight."""
        self.done = True
        futures, self.futures = self.futures, []
        for future in futures:
            if not future.done():
                future.set_result(None)


class _StreamFlight:
    __slots__ = ("abandoned", "chunks", "done", "error", "event", "key", "subscribers", "task")

    def __init__(self, key: str) -> None:
        self.key = key
        self.task: asyncio.Task[None] | None = None
        self.chunks: list[StreamChunk] = []
        self.done = False
        self.error: BaseException | None = None
        # Created only when a subscriber has caught up and must wait; set and dropped by the
        # pump at the next chunk, so a chunk nobody waits for costs no event.
        self.event: asyncio.Event | None = None
        self.subscribers = 0
        self.abandoned = False

    def wake(self) -> None:
        event = self.event
        if event is not None:
            self.event = None
            event.set()


class LocalCoalescer:
    """Coalesces identical calls within this process (and event loop).

    ``count_leaders`` is off when another coalescer (tollway-redis) wraps this one and counts
    upstream calls itself; ``join_backend`` labels the followers this one serves.
    """

    backend = "local"

    def __init__(
        self, metrics: Metrics, *, count_leaders: bool = True, join_backend: str = "local"
    ) -> None:
        self._complete: dict[str, _CompleteFlight] = {}
        self._streams: dict[str, _StreamFlight] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._leaders = (
            metrics.counter(
                "singleflight_leaders_total", "Coalesced calls that went upstream themselves."
            )
            if count_leaders
            else None
        )
        self._joins = metrics.counter(
            "singleflight_joins_total",
            "Calls served by an identical call already in flight (backend: where it ran).",
            ["backend"],
        )
        self._join_backend = join_backend
        self._inflight = metrics.gauge(
            "singleflight_inflight", "Distinct calls in flight through single-flight."
        )

    @classmethod
    def from_config(cls, config: SingleFlightConfig, metrics: Metrics) -> LocalCoalescer:
        return cls(metrics)

    # -- complete --------------------------------------------------------------------------

    async def complete(self, key: str, call: CallComplete) -> Response:
        flight = self._complete.get(key)
        if flight is None:
            flight = self._start_complete(key, call)
        else:
            self._joins.inc(self._join_backend)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        flight.futures.append(future)
        flight.waiters += 1
        try:
            await future
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.done:
                # The last waiter has gone: nobody wants the answer any more.
                self._abandon_complete(flight)
        result = flight.result
        if result is not None:
            return result
        error = flight.error
        if error is not None:
            raise clone_error(error) from error.__cause__
        raise _cancelled_error()  # the shared call was cancelled by someone else

    def _start_complete(self, key: str, call: CallComplete) -> _CompleteFlight:
        flight = _CompleteFlight(key)
        task = asyncio.get_running_loop().create_task(self._lead(flight, call))
        flight.task = task
        self._complete[key] = flight
        self._tasks.add(task)
        if self._leaders is not None:
            self._leaders.inc()
        self._inflight.add(1.0)
        return flight

    async def _lead(self, flight: _CompleteFlight, call: CallComplete) -> None:
        """The shared call, in a task of its own; it settles its waiters when it ends."""
        try:
            flight.result = await call()
        except asyncio.CancelledError:
            raise  # neither answer nor error: the waiters are told it was cancelled
        except BaseException as exc:
            flight.error = exc  # retrieved here: every waiter raises its own copy
            if not isinstance(exc, Exception):
                raise
        finally:
            task = flight.task
            if task is not None:
                self._tasks.discard(task)
            if not flight.abandoned:
                self._forget_complete(flight)
            flight.settle()

    def _forget_complete(self, flight: _CompleteFlight) -> None:
        if self._complete.get(flight.key) is flight:
            del self._complete[flight.key]
            self._inflight.add(-1.0)

    def _abandon_complete(self, flight: _CompleteFlight) -> None:
        # Forget it now, so a caller arriving before the task unwinds starts a fresh call
        # instead of joining one that is being cancelled.
        flight.abandoned = True
        self._forget_complete(flight)
        task = flight.task
        if task is not None:
            # A task cancelled before its first step never runs _lead's finally.
            task.add_done_callback(self._tasks.discard)
            task.cancel()

    # -- stream ----------------------------------------------------------------------------

    async def stream(self, key: str, call: CallStream) -> AsyncIterator[StreamChunk]:
        flight = self._streams.get(key)
        if flight is None:
            flight = self._start_stream(key, call)
        else:
            self._joins.inc(self._join_backend)
        flight.subscribers += 1
        chunks = flight.chunks
        index = 0
        try:
            while True:
                if index < len(chunks):
                    chunk = chunks[index]
                    index += 1
                    yield chunk
                    continue
                if flight.done:
                    break
                event = flight.event
                if event is None:
                    event = flight.event = asyncio.Event()
                await event.wait()
            error = flight.error
            if error is not None:
                if isinstance(error, asyncio.CancelledError):
                    raise _cancelled_error()
                raise clone_error(error) from error.__cause__
        finally:
            flight.subscribers -= 1
            task = flight.task
            if not flight.subscribers and task is not None and not task.done():
                flight.abandoned = True
                self._forget_stream(flight)
                task.cancel()
                # Let the provider's stream close now, not at some later turn of the loop.
                await asyncio.wait((task,))

    def _start_stream(self, key: str, call: CallStream) -> _StreamFlight:
        flight = _StreamFlight(key)
        self._streams[key] = flight
        task = asyncio.get_running_loop().create_task(self._pump(flight, call))
        flight.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._leaders is not None:
            self._leaders.inc()
        self._inflight.add(1.0)
        return flight

    async def _pump(self, flight: _StreamFlight, call: CallStream) -> None:
        chunks = flight.chunks
        iterator = None
        try:
            iterator = call()
            async for chunk in iterator:
                chunks.append(chunk)
                flight.wake()
        except BaseException as exc:
            flight.error = exc
            if not isinstance(exc, Exception):  # cancelled: only when nobody listens
                raise
        finally:
            flight.done = True
            if not flight.abandoned:
                self._forget_stream(flight)
            flight.wake()
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    def _forget_stream(self, flight: _StreamFlight) -> None:
        if self._streams.get(flight.key) is flight:
            del self._streams[flight.key]
            self._inflight.add(-1.0)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Distinct calls in flight now (both kinds)."""
        return len(self._complete) + len(self._streams)

    async def aclose(self) -> None:
        """Cancel whatever is still in flight and wait for it to unwind."""
        flights = list(self._complete.values())
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._tasks.clear()
        for flight in flights:
            if not flight.done:
                # Its task was cancelled before its first step, so _lead never ran.
                self._forget_complete(flight)
                flight.settle()


class SingleFlightStage(Stage):
    """Joins a call to an identical one already in flight, through the configured coalescer.

    ``controls={"single_flight": False}`` sends a call on its own.
    """

    name = "single_flight"

    def __init__(self, coalescer: Coalescer) -> None:
        self.coalescer = coalescer

    @classmethod
    def from_context(cls, context: StageContext) -> SingleFlightStage:
        config = context.config.single_flight
        registrations = context.plugins.registrations("coalescers")
        registration = registrations.get(config.backend)
        if registration is None:
            available = ", ".join(sorted(registrations)) or "none"
            hint = (
                ' (install it: pip install "tollway[redis]")' if config.backend == "redis" else ""
            )
            raise ConfigError(
                f"no coalescer backend is called {config.backend!r}{hint}; use one of: {available}",
                key="single_flight.backend",
            )
        coalescer: Coalescer = registration.factory(config, context.metrics)
        return cls(coalescer)

    async def complete(self, request: Request, call_next: CompleteFn) -> Response:
        key = _key(request)
        if key is None:
            return await call_next(request)
        return await self.coalescer.complete(key, lambda: call_next(request))

    def stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        key = _key(request)
        if key is None:
            return call_next(request)
        return self.coalescer.stream(key, lambda: call_next(request))

    async def aclose(self) -> None:
        await self.coalescer.aclose()


def _key(request: Request) -> str | None:
    """The call's key, or None when it must go alone (asked to, or it cannot be keyed)."""
    # Taken first, whatever happens next: the slot belongs to this call only.
    digest = take_handed(request)
    controls = request.controls
    if controls and controls.get("single_flight") is False:
        return None
    if digest is None:
        try:
            digest = request_digest(request)
        except TypeError:  # a pass-through parameter that is not JSON: cannot prove two equal
            return None
    return key_of(KEY_NAMESPACE, request, digest)
