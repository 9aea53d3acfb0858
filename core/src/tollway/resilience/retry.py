"""Retries: exponential backoff with full jitter, Retry-After within a bound, and a budget.

Only errors that say ``retryable`` are tried again (rate limited, unavailable, timed out, a
stream cut before its first chunk). A breaker that is open (:class:`CircuitOpenError`) and a
rate-limit queue that timed out (:class:`QueueTimeoutError`) are not: waiting here would only
hold the caller, and the fallback stage outside can try another model at once.

Each provider has a retry budget, a token bucket as in gRPC's retry throttling: every first
attempt adds ``budget_ratio`` tokens, time adds ``budget_floor_per_second``, a retry takes one,
and the bucket holds at most ``budget_burst``. When a provider is down, retries stop at that
ratio of the traffic instead of multiplying the load on it.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from tollway.errors import CircuitOpenError, QueueTimeoutError, TollwayError
from tollway.logging import get_logger
from tollway.pipeline import CompleteFn, Stage, StreamFn
from tollway.resilience.config import RetryConfig, RetryPolicy
from tollway.types import Request, Response, StreamChunk

if TYPE_CHECKING:
    from tollway.metrics import Metrics
    from tollway.stages import StageContext

log = get_logger("tollway.retry")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]

# Errors that say retryable but must not be retried here: they fail fast to the fallback.
_NEVER_RETRIED = (CircuitOpenError, QueueTimeoutError)
# 2**60 times any sane base_delay is far past any max_delay; the cap keeps the float finite.
_MAX_EXPONENT = 60


class _Policy:
    """One provider's resolved policy: the overrides merged onto ``[retry]``."""

    __slots__ = ("base_delay", "max_attempts", "max_delay", "max_retry_after")

    def __init__(self, config: RetryConfig, override: RetryPolicy | None = None) -> None:
        def pick(name: str) -> float:
            value = getattr(override, name, None) if override is not None else None
            return float(getattr(config, name) if value is None else value)

        self.max_attempts = int(pick("max_attempts"))
        self.base_delay = pick("base_delay")
        self.max_delay = pick("max_delay")
        self.max_retry_after = pick("max_retry_after")


class RetryBudget:
    """A token bucket of retries: first attempts and time fill it, each retry takes one."""

    __slots__ = ("_clock", "_last", "burst", "floor_per_second", "ratio", "tokens")

    def __init__(
        self, ratio: float, floor_per_second: float, burst: float, clock: Clock = time.monotonic
    ) -> None:
        self.ratio = ratio
        self.floor_per_second = floor_per_second
        self.burst = burst
        self.tokens = burst
        self._clock = clock
        self._last = clock()

    def deposit(self) -> None:
        """A first attempt: add ``ratio`` of a retry."""
        tokens = self.tokens + self.ratio
        self.tokens = tokens if tokens < self.burst else self.burst

    def withdraw(self) -> bool:
        """Take one retry if the bucket holds one; False when it is empty."""
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        tokens = self.tokens
        if elapsed > 0:
            tokens = min(self.burst, tokens + elapsed * self.floor_per_second)
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


class RetryStage(Stage):
    """Tries a failed call again while its error is retryable, its policy and budget allow."""

    name = "retry"

    def __init__(
        self,
        config: RetryConfig,
        metrics: Metrics,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._config = config
        self._default = _Policy(config)
        self._policies = {name: _Policy(config, p) for name, p in config.providers.items()}
        self._budgets: dict[str, RetryBudget] = {}
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._retries = metrics.counter(
            "retries_total",
            "Calls tried again, by provider and the error that caused it.",
            ["provider", "error"],
        )
        self._exhausted = metrics.counter(
            "retry_budget_exhausted_total",
            "Retries not made because the provider's retry budget was empty.",
            ["provider"],
        )

    @classmethod
    def from_context(cls, context: StageContext) -> RetryStage:
        return cls(context.config.retry, context.metrics)

    def budget(self, provider: str) -> RetryBudget:
        """The provider's retry budget, made on its first call."""
        found = self._budgets.get(provider)
        if found is None:
            config = self._config
            found = self._budgets[provider] = RetryBudget(
                config.budget_ratio,
                config.budget_floor_per_second,
                config.budget_burst,
                self._clock,
            )
        return found

    def _delay(
        self, exc: TollwayError, attempt: int, policy: _Policy, budget: RetryBudget, provider: str
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up with ``exc``."""
        if not exc.retryable or isinstance(exc, _NEVER_RETRIED):
            return None
        if attempt + 1 >= policy.max_attempts:
            if policy.max_attempts > 1:
                exc.add_note(
                    f"tollway: gave up after {policy.max_attempts} attempts "
                    f"(retry.max_attempts for {provider})"
                )
            return None
        retry_after = exc.retry_after
        if retry_after is not None and retry_after > policy.max_retry_after:
            exc.add_note(
                f"tollway: not retried: {provider} asked to wait {retry_after:g}s, more than "
                f"retry.max_retry_after = {policy.max_retry_after:g}s; raise max_retry_after "
                "to wait that long, or add a fallback model"
            )
            log.warning(
                "retry_after_too_long",
                provider=provider,
                retry_after=retry_after,
                max_retry_after=policy.max_retry_after,
            )
            return None
        if not budget.withdraw():
            self._exhausted.inc(provider)
            exc.add_note(
                f"tollway: not retried: the retry budget for {provider} is spent (retries are "
                f"held to retry.budget_ratio = {self._config.budget_ratio:g} of calls plus "
                f"{self._config.budget_floor_per_second:g}/s while it keeps failing)"
            )
            log.warning("retry_budget_exhausted", provider=provider, error=type(exc).__name__)
            return None
        ceiling = policy.base_delay * (1 << min(attempt, _MAX_EXPONENT))
        if ceiling > policy.max_delay:
            ceiling = policy.max_delay
        delay = self._random() * ceiling
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        self._retries.inc(provider, type(exc).__name__)
        log.debug(
            "retrying",
            provider=provider,
            attempt=attempt + 2,
            delay=delay,
            error=type(exc).__name__,
        )
        return delay

    async def complete(self, request: Request, call_next: CompleteFn) -> Response:
        controls = request.controls
        if controls and controls.get("retry") is False:
            return await call_next(request)
        provider = request.provider
        policy = self._policies.get(provider, self._default)
        budget = self._budgets.get(provider) or self.budget(provider)
        budget.deposit()
        attempt = 0
        while True:
            try:
                return await call_next(request)
            except TollwayError as exc:
                delay = self._delay(exc, attempt, policy, budget, provider)
                if delay is None:
                    raise
            await self._sleep(delay)
            attempt += 1

    def stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        controls = request.controls
        if controls and controls.get("retry") is False:
            return call_next(request)
        return self._stream(request, call_next)

    async def _stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        provider = request.provider
        policy = self._policies.get(provider, self._default)
        budget = self._budgets.get(provider) or self.budget(provider)
        budget.deposit()
        attempt = 0
        while True:
            iterator = call_next(request)
            started = False
            try:
                async for chunk in iterator:
                    started = True
                    yield chunk
                return
            except TollwayError as exc:
                # Once a chunk has reached the caller, trying again would repeat output the
                # caller already has: the error stands.
                if started:
                    raise
                delay = self._delay(exc, attempt, policy, budget, provider)
                if delay is None:
                    raise
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            await self._sleep(delay)
            attempt += 1
