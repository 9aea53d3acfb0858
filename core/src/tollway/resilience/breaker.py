"""Circuit breakers: one per provider endpoint, so a failing endpoint is not called in vain.

An endpoint is a provider instance, a ``[providers.NAME]`` section (``request.provider``): two
instances of one type with different ``base_url`` have a breaker each.

Closed, a breaker counts outcomes in a rolling window; it opens when the share of failures
reaches ``failure_rate`` (over at least ``minimum_calls``) or after ``consecutive_failures`` in
a row. Open, it fails calls at once with :class:`CircuitOpenError` for ``open_for`` seconds.
Then it is half-open: up to ``half_open_probes`` trial calls go through at a time; the first
that succeeds closes it, the first that fails opens it again.

Only failures on the provider's side count: retryable errors (429, timeouts, 5xx, resets, cut
streams), malformed answers, and exceptions that are not tollway's. A client error (400, 401,
403, 404, a content filter, a budget) says nothing about the endpoint's health and counts as
neither success nor failure.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from tollway.errors import CircuitOpenError, MalformedResponseError, TollwayError
from tollway.logging import get_logger
from tollway.pipeline import CompleteFn, Stage, StreamFn
from tollway.resilience.config import CircuitBreakerConfig
from tollway.types import Request, Response, StreamChunk

if TYPE_CHECKING:
    from tollway.metrics import Counter, Gauge, Metrics
    from tollway.stages import StageContext

log = get_logger("tollway.circuit_breaker")

Clock = Callable[[], float]

CLOSED = "closed"
HALF_OPEN = "half_open"
OPEN = "open"
# What the circuit_state gauge reports for each state.
STATE_VALUES = {CLOSED: 0.0, HALF_OPEN: 1.0, OPEN: 2.0}

# The rolling window is kept as this many buckets of calls and failures.
_BUCKETS = 10


def counts_as_failure(exc: BaseException) -> bool:
    """Whether an error says the endpoint is unhealthy (rather than the request wrong)."""
    if isinstance(exc, TollwayError):
        if isinstance(exc, CircuitOpenError):
            return False
        return (
            exc.retryable
            or isinstance(exc, MalformedResponseError)
            or (exc.status is not None and exc.status >= 500)
        )
    # Cancellation and generator exits are the caller's doing, not the endpoint's.
    return isinstance(exc, Exception)


class CircuitBreaker:
    """The breaker of one endpoint. Not thread-safe: it lives on one event loop."""

    __slots__ = (
        "_bucket_end",
        "_bucket_width",
        "_calls",
        "_clock",
        "_epochs",
        "_failures",
        "_gauge",
        "_index",
        "_transitions",
        "config",
        "consecutive",
        "opened_at",
        "probes",
        "provider",
        "state",
    )

    def __init__(
        self,
        provider: str,
        config: CircuitBreakerConfig,
        gauge: Gauge,
        transitions: Counter,
        clock: Clock = time.monotonic,
    ) -> None:
        self.provider = provider
        self.config = config
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probes = 0
        self._clock = clock
        self._gauge = gauge
        self._transitions = transitions
        self._bucket_width = config.window / _BUCKETS
        self._epochs = [-1] * _BUCKETS
        self._calls = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self._index = 0
        self._bucket_end = -1.0  # rolls on the first call
        gauge.set(STATE_VALUES[CLOSED], provider)

    # -- state -----------------------------------------------------------------------------

    def _move(self, state: str) -> None:
        self.state = state
        self._gauge.set(STATE_VALUES[state], self.provider)
        self._transitions.inc(self.provider, state)
        log.info("circuit_state_changed", provider=self.provider, to=state)

    def _open(self, now: float) -> None:
        self.opened_at = now
        self.probes = 0
        self._move(OPEN)

    def _close(self) -> None:
        self.consecutive = 0
        self.probes = 0
        self._epochs = [-1] * _BUCKETS
        self._bucket_end = -1.0
        self._move(CLOSED)

    def acquire(self) -> bool:
        """Let a call through, or raise CircuitOpenError. True when the call is a probe."""
        state = self.state
        if state is CLOSED:
            return False
        if state is OPEN:
            now = self._clock()
            wait = self.opened_at + self.config.open_for - now
            if wait > 0:
                raise self._refusal(wait)
            self.probes = 0
            self._move(HALF_OPEN)
        if self.probes >= self.config.half_open_probes:
            raise self._refusal(0.0)
        self.probes += 1
        return True

    def _refusal(self, wait: float) -> CircuitOpenError:
        if wait > 0:
            when = f"it lets a trial call through in {wait:.3g}s"
        else:
            when = (
                f"its {self.config.half_open_probes} trial call(s) are under way; it lets more "
                "through when they finish"
            )
        return CircuitOpenError(
            f"the circuit breaker for provider {self.provider!r} is open after repeated "
            f"failures, so the call was not sent; {when}. Add a fallback model to answer "
            "meanwhile, or tune [circuit_breaker]",
            provider=self.provider,
            retry_after=wait,
        )

    # -- outcomes --------------------------------------------------------------------------

    def _count(self, failed: bool) -> None:
        now = self._clock()
        if now >= self._bucket_end or now < self._bucket_end - self._bucket_width:
            self._roll(now)
        index = self._index
        self._calls[index] += 1
        if failed:
            self._failures[index] += 1

    def _roll(self, now: float) -> None:
        """Move to the bucket that ``now`` falls in, emptying it if it holds an older epoch."""
        epoch = int(now / self._bucket_width)
        index = self._index = epoch % _BUCKETS
        self._bucket_end = (epoch + 1) * self._bucket_width
        if self._epochs[index] != epoch:
            self._epochs[index] = epoch
            self._calls[index] = 0
            self._failures[index] = 0

    def _window(self) -> tuple[int, int]:
        oldest = int(self._clock() / self._bucket_width) - _BUCKETS + 1
        calls = failures = 0
        for epoch, n, bad in zip(self._epochs, self._calls, self._failures, strict=True):
            if epoch >= oldest:
                calls += n
                failures += bad
        return calls, failures

    def success(self, probe: bool) -> None:
        if probe:
            self.probes -= 1
            if self.state is HALF_OPEN:
                self._close()
            return
        self.consecutive = 0
        self._count(False)

    def failure(self, probe: bool) -> None:
        if probe:
            self.probes -= 1
            if self.state is HALF_OPEN:
                self._open(self._clock())
            return
        if self.state is not CLOSED:
            return  # a call let through before the breaker opened: it is open already
        self.consecutive += 1
        self._count(True)
        config = self.config
        if self.consecutive >= config.consecutive_failures:
            self._open(self._clock())
            return
        calls, failures = self._window()
        if calls >= config.minimum_calls and failures >= config.failure_rate * calls:
            self._open(self._clock())

    def release(self, probe: bool) -> None:
        """A call ended in a way that says nothing about the endpoint (a 400, a cancel)."""
        if probe:
            self.probes -= 1

    def settle(self, probe: bool, exc: BaseException) -> None:
        if counts_as_failure(exc):
            self.failure(probe)
        else:
            self.release(probe)


class CircuitBreakerStage(Stage):
    """Holds one breaker per provider endpoint and passes each call through its breaker."""

    name = "circuit_breaker"

    def __init__(
        self, config: CircuitBreakerConfig, metrics: Metrics, *, clock: Clock = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._gauge = metrics.gauge(
            "circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["provider"]
        )
        self._transitions = metrics.counter(
            "circuit_transitions_total",
            "Circuit breaker state changes, by the state entered.",
            ["provider", "to"],
        )

    @classmethod
    def from_context(cls, context: StageContext) -> CircuitBreakerStage:
        return cls(context.config.circuit_breaker, context.metrics)

    def breaker(self, provider: str) -> CircuitBreaker:
        """The endpoint's breaker, made on its first call."""
        found = self._breakers.get(provider)
        if found is None:
            found = self._breakers[provider] = CircuitBreaker(
                provider, self._config, self._gauge, self._transitions, self._clock
            )
        return found

    async def complete(self, request: Request, call_next: CompleteFn) -> Response:
        provider = request.provider
        breaker = self._breakers.get(provider) or self.breaker(provider)
        probe = breaker.acquire()
        try:
            response = await call_next(request)
        except BaseException as exc:
            breaker.settle(probe, exc)
            raise
        breaker.success(probe)
        return response

    async def stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        provider = request.provider
        breaker = self._breakers.get(provider) or self.breaker(provider)
        probe = breaker.acquire()
        iterator = call_next(request)
        try:
            async for chunk in iterator:
                yield chunk
        except BaseException as exc:
            # A stream the caller stopped early (GeneratorExit) is neither outcome.
            breaker.settle(probe, exc)
            raise
        else:
            breaker.success(probe)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
