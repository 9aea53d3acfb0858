"""Rate limits: token buckets for requests and tokens, a fair queue in front of them, and limits
learned from the provider's own ``x-ratelimit-*`` headers.

A call takes one request and its estimated tokens from every bucket its rules name, all or none
(so a call that must wait holds nothing). The buckets live in a limiter backend: ``local``
(this module, in the process) or a plugin's, such as tollway-redis's shared GCRA. A call that
must wait joins an in-process queue ordered by priority, then by weighted fair queueing across
users, then first come first served; it leaves with a ``QueueTimeoutError`` that names the limit
when it waits too long. After the call the tokens buckets are settled to the reported usage.

The limiter protocol (what a ``tollway_register_rate_limiters`` factory returns)::

    async acquire(demands) -> (wait_seconds, index)   # all taken: (0.0, -1); else nothing taken,
                                                      # index = the demand that waits longest
    async adjust(demands) -> None                     # amounts > 0 charge (debt allowed),
                                                      # amounts < 0 refund (up to capacity)
    async aclose() -> None

where ``demands`` is a sequence of ``(Bucket, amount)``.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from tollway.errors import ConfigError, QueueTimeoutError, RateLimitedError, TollwayError
from tollway.logging import get_logger
from tollway.pipeline import Stage
from tollway.types import Request, Response, StreamChunk

if TYPE_CHECKING:
    from tollway.metrics import Metrics
    from tollway.resilience.config import RateLimitConfig, RateLimitRule
    from tollway.stages import StageContext

Clock = Callable[[], float]

# The bucket value for calls that do not carry the attribute a rule counts by (no user, ...):
# they share one bucket rather than escape the limit.
UNATTRIBUTED = "(none)"
# Below this, a level counts as enough: float sums of refills must not make a call wait 1e-12 s.
_EPSILON = 1e-9
# How long the dispatcher sleeps at most between passes while calls wait: other processes
# (a shared backend) and refunds free capacity without telling it.
_MAX_IDLE = 1.0
# When a response carries a remaining count but no reset time.
_DEFAULT_RESET = 1.0


@attrs.frozen(slots=True)
class Bucket:
    """One token bucket: ``rate`` units per second, holding at most ``capacity``.

    ``key`` is unique per scope, match, unit and value, and stable across processes and config
    reorderings, so a shared backend keeps the right state. ``label`` names the limit in errors.
    """

    key: str
    rate: float
    capacity: float
    scope: str
    label: str
    # Counts tokens (settled to the reported usage after the call) rather than requests.
    tokens: bool = False


Demand = tuple[Bucket, float]


class RateLimiter(Protocol):
    """Where the buckets live. See the module docstring for the contract."""

    async def acquire(self, demands: Sequence[Demand]) -> tuple[float, int]: ...

    async def adjust(self, demands: Sequence[Demand]) -> None: ...

    async def aclose(self) -> None: ...


# -- token estimate ----------------------------------------------------------------------------


def estimate_tokens(request: Request, default_max_tokens: int = 256) -> int:
    """Tokens a call may use, guessed before it is sent, offline: prompt characters / 4
    rounded up, plus ``max_tokens`` (``default_max_tokens`` when the request sets none).

    Four characters a token is the usual figure for English with BPE tokenizers; the buckets
    are settled to the provider's reported usage after the call, so the guess only has to be
    good enough to decide whether a call may start.
    """
    chars = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        else:
            chars += len(message.text)
        for call in message.tool_calls:
            chars += len(call.arguments) + len(call.name)
    output = request.max_tokens if request.max_tokens is not None else default_max_tokens
    return -(-chars // 4) + output


# -- the local backend -------------------------------------------------------------------------


class LocalRateLimiter:
    """Token buckets in this process, on a monotonic clock (injectable for tests).

    ``take`` and ``charge`` are the synchronous forms of ``acquire`` and ``adjust``; the stage
    uses them directly, so a local check costs no coroutine.
    """

    def __init__(self, *, clock: Clock = time.monotonic, prune_at: int = 10_000) -> None:
        self._clock = clock
        # key -> [level, when it was that level, rate, capacity]
        self._levels: dict[str, list[float]] = {}
        self._prune_at = prune_at

    @classmethod
    def from_config(
        cls, config: RateLimitConfig, metrics: Metrics | None = None
    ) -> LocalRateLimiter:
        return cls()

    def level(self, bucket: Bucket) -> float:
        """What the bucket holds now (negative while a charge is being paid off)."""
        state = self._levels.get(bucket.key)
        if state is None:
            return bucket.capacity
        return min(bucket.capacity, state[0] + (self._clock() - state[1]) * bucket.rate)

    def take(self, demands: Sequence[Demand]) -> tuple[float, int]:
        now = self._clock()
        levels = self._levels
        worst = 0.0
        worst_index = -1
        for index, (bucket, amount) in enumerate(demands):
            state = levels.get(bucket.key)
            if state is None:
                level = bucket.capacity
            else:
                level = state[0] + (now - state[1]) * bucket.rate
                if level > bucket.capacity:
                    level = bucket.capacity
            if level + _EPSILON < amount:
                wait = (amount - level) / bucket.rate
                if wait > worst:
                    worst = wait
                    worst_index = index
        if worst_index >= 0:
            return worst, worst_index
        self._apply(demands, now)
        return 0.0, -1

    def charge(self, demands: Sequence[Demand]) -> None:
        self._apply(demands, self._clock())

    def _apply(self, demands: Sequence[Demand], now: float) -> None:
        levels = self._levels
        for bucket, amount in demands:
            state = levels.get(bucket.key)
            if state is None:
                levels[bucket.key] = [bucket.capacity - amount, now, bucket.rate, bucket.capacity]
                continue
            level = state[0] + (now - state[1]) * bucket.rate
            if level > bucket.capacity:
                level = bucket.capacity
            level -= amount
            state[0] = level if level < bucket.capacity else bucket.capacity
            state[1] = now
            state[2] = bucket.rate
            state[3] = bucket.capacity
        if len(levels) > self._prune_at:
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled: they are the same as buckets never used."""
        stale = [
            key
            for key, (level, at, rate, capacity) in self._levels.items()
            if level + (now - at) * rate >= capacity
        ]
        for key in stale:
            del self._levels[key]
        if len(self._levels) > self._prune_at // 2:
            self._prune_at *= 2

    async def acquire(self, demands: Sequence[Demand]) -> tuple[float, int]:
        return self.take(demands)

    async def adjust(self, demands: Sequence[Demand]) -> None:
        self.charge(demands)

    async def aclose(self) -> None:
        self._levels.clear()


# -- rules -------------------------------------------------------------------------------------


def _scope_getter(scope: str) -> Callable[[Request], str | None]:
    if scope == "global":
        return lambda request: "*"
    if scope == "provider":
        return lambda request: request.provider
    if scope == "model":
        return lambda request: request.model
    if scope == "user":
        return lambda request: request.user
    if scope == "api_key":
        return lambda request: request.api_key_id
    if scope == "team":
        return lambda request: request.team
    raise ConfigError(f"unknown rate-limit scope {scope!r}", key="rate_limits.rules.scope")


class _Rule:
    """A rule compiled for the request path: which value it counts by, and its buckets."""

    __slots__ = (
        "_cache",
        "fixed",
        "get",
        "match",
        "match_all",
        "requests",
        "rule",
        "scope",
        "tokens",
    )

    def __init__(self, rule: RateLimitRule, match: str) -> None:
        self.rule = rule
        self.scope = rule.scope
        self.match = match
        self.match_all = match == "*" and rule.scope != "global"
        self.get = _scope_getter(rule.scope)
        rpm, tpm = rule.requests_per_minute, rule.tokens_per_minute
        # (rate per second, capacity) per unit
        self.requests = (rpm / 60.0, rule.burst or rpm) if rpm is not None else None
        self.tokens = (tpm / 60.0, rule.burst_tokens or tpm) if tpm is not None else None
        self._cache: dict[str, tuple[Bucket | None, Bucket | None]] = {}
        self.fixed = self._build("*" if rule.scope == "global" else match)

    def _build(self, value: str) -> tuple[Bucket | None, Bucket | None]:
        what = "all calls" if self.scope == "global" else f"{self.scope}={value!r}"
        if self.match_all:
            what += f" (rule scope={self.scope} match='*')"
        out: list[Bucket | None] = []
        for unit, spec, name, burst_name in (
            ("req", self.requests, "requests_per_minute", "burst"),
            ("tok", self.tokens, "tokens_per_minute", "burst_tokens"),
        ):
            if spec is None:
                out.append(None)
                continue
            rate, capacity = spec
            label = f"the limit on {what}: {name}={rate * 60:g}, {burst_name} {capacity:g}"
            key = f"{self.scope}:{self.match}:{unit}:{value}"
            out.append(Bucket(key, rate, capacity, self.scope, label, unit == "tok"))
        return out[0], out[1]

    def buckets(self, value: str) -> tuple[Bucket | None, Bucket | None]:
        found = self._cache.get(value)
        if found is None:
            if len(self._cache) > 100_000:  # many users: a bounded memo, rebuilt as used
                self._cache.clear()
            found = self._cache[value] = self._build(value)
        return found


# -- limits learned from the provider ----------------------------------------------------------

_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """Seconds in OpenAI's reset format (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``) or a
    plain number of seconds; None when it is neither."""
    text = text.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    total = 0.0
    number = ""
    unit = ""
    for char in text:
        if char.isdigit() or char == ".":
            if unit:
                scale = _DURATION_UNITS.get(unit)
                if scale is None or not number:
                    return None
                total += float(number) * scale
                number, unit = "", ""
            number += char
        elif char.isalpha():
            unit += char
        else:
            return None
    if not number or not unit:
        return None
    scale = _DURATION_UNITS.get(unit)
    if scale is None:
        return None
    try:
        return total + float(number) * scale
    except ValueError:
        return None


def _parse_reset(value: str | None) -> float | None:
    if not value:
        return None
    seconds = parse_duration(value)
    if seconds is not None:
        return seconds
    try:  # Anthropic sends an RFC 3339 time
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _parse_count(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        count = float(value)
    except ValueError:
        return None
    return count if math.isfinite(count) and count >= 0 else None


def parse_rate_limit_headers(
    headers: Mapping[str, str],
) -> tuple[float | None, float | None, float | None, float | None]:
    """(remaining requests, seconds to their reset, remaining tokens, seconds to their reset)
    from OpenAI's ``x-ratelimit-*`` or Anthropic's ``anthropic-ratelimit-*`` headers."""
    get = headers.get
    requests = _parse_count(
        get("x-ratelimit-remaining-requests") or get("anthropic-ratelimit-requests-remaining")
    )
    tokens = _parse_count(
        get("x-ratelimit-remaining-tokens") or get("anthropic-ratelimit-tokens-remaining")
    )
    requests_reset = _parse_reset(
        get("x-ratelimit-reset-requests") or get("anthropic-ratelimit-requests-reset")
    )
    tokens_reset = _parse_reset(
        get("x-ratelimit-reset-tokens") or get("anthropic-ratelimit-tokens-reset")
    )
    return requests, requests_reset, tokens, tokens_reset


class _Window:
    """What the provider last said about a model: so many left until a reset time."""

    __slots__ = ("bucket", "requests", "requests_reset", "tokens", "tokens_reset")

    def __init__(self, model: str) -> None:
        self.requests: float | None = None
        self.requests_reset = 0.0
        self.tokens: float | None = None
        self.tokens_reset = 0.0
        self.bucket = Bucket(
            f"learned:{model}",
            1.0,
            1.0,
            "learned",
            f"the provider's own limit for {model} (from its x-ratelimit-* headers)",
        )

    def wait(self, now: float, tokens: float) -> float:
        wait = 0.0
        if self.requests is not None:
            if now >= self.requests_reset:
                self.requests = None
            elif self.requests < 1.0:
                wait = self.requests_reset - now
        if self.tokens is not None:
            if now >= self.tokens_reset:
                self.tokens = None
            elif self.tokens < tokens:
                wait = max(wait, self.tokens_reset - now)
        return wait

    def take(self, tokens: float) -> None:
        if self.requests is not None:
            self.requests -= 1.0
        if self.tokens is not None:
            self.tokens -= tokens


# -- the queue ---------------------------------------------------------------------------------


class _Waiter:
    __slots__ = (
        "blocking",
        "demands",
        "enqueued",
        "entry",
        "future",
        "hint",
        "keys",
        "request",
        "tokens",
        "user",
        "weight",
        "window",
    )

    def __init__(
        self,
        request: Request,
        demands: list[Demand],
        tokens: float,
        window: _Window | None,
        blocking: Bucket,
        hint: float,
    ) -> None:
        self.request = request
        self.demands = demands
        self.tokens = tokens
        self.window = window
        self.keys = [bucket.key for bucket, _ in demands]
        if window is not None:
            self.keys.append(window.bucket.key)
        self.blocking = blocking
        self.hint = hint
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.enqueued = 0.0
        self.entry: tuple[float, float, int, _Waiter] | None = None
        self.user = ""
        self.weight = 1.0


class RateLimitStage(Stage):
    """Waits for capacity before a call, in a fair queue; settles token use after it."""

    name = "rate_limit"

    def __init__(
        self,
        config: RateLimitConfig,
        limiter: Any,
        metrics: Metrics,
        *,
        route: Callable[[str], str] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.limiter = limiter
        self._clock = clock
        rules = []
        for rule in config.rules:
            match = rule.match
            if rule.scope == "model" and match != "*" and route is not None:
                try:
                    match = route(match)
                except TollwayError:
                    pass  # a model no provider offers yet is matched as written
            rules.append(_Rule(rule, match))
        self._rules = tuple(rules)
        self._has_tokens = any(rule.tokens is not None for rule in rules)
        self._default_max_tokens = config.default_max_tokens
        self._learn = config.learn_from_headers
        self._windows: dict[str, _Window] = {}
        self._weights = dict(config.weights)
        self._max_queue = config.max_queue
        self._queue_timeout = config.queue_timeout
        # The local backend is called synchronously: no coroutine on the fast path.
        self._take: Callable[[Sequence[Demand]], tuple[float, int]] | None = getattr(
            limiter, "take", None
        )
        self._charge: Callable[[Sequence[Demand]], None] | None = getattr(limiter, "charge", None)
        # The queue: entries (-priority, virtual finish, seq, waiter), kept sorted.
        self._entries: list[tuple[float, float, int, _Waiter]] = []
        self._waiting_keys: dict[str, int] = {}
        self._seq = itertools.count()
        self._vtime = 0.0
        self._finish: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._wait_seconds = metrics.histogram(
            "ratelimit_wait_seconds",
            "Seconds calls waited in the rate-limit queue, by the scope of the limit that held "
            "them (calls admitted at once are not observed).",
            ["scope"],
        )
        self._queued = metrics.gauge(
            "ratelimit_queued", "Calls waiting in the rate-limit queue now."
        )
        self._rejected = metrics.counter(
            "ratelimit_rejected_total",
            "Calls refused by the rate limiter: reason queue_timeout or queue_full.",
            ["scope", "reason"],
        )
        self._learned = metrics.counter(
            "ratelimit_learned_total",
            "Times a provider's rate-limit headers (or a 429) tightened a model's limit.",
            ["model"],
        )
        self._queued.set(0.0)

    @classmethod
    def from_context(cls, context: StageContext) -> RateLimitStage:
        config = context.config.rate_limits
        backends = context.plugins.registrations("rate_limiters")
        registration = backends.get(config.backend)
        if registration is None:
            available = ", ".join(sorted(backends)) or "none"
            hint = (
                ' (install tollway-redis: pip install "tollway[redis]")'
                if (config.backend == "redis")
                else ""
            )
            raise ConfigError(
                f"no rate limiter backend is called {config.backend!r}{hint}; "
                f"set it to one of: {available}",
                key="rate_limits.backend",
            )
        limiter = registration.factory(config, context.metrics)
        return cls(config, limiter, context.metrics, route=context.route)

    # -- the request path ------------------------------------------------------------------

    def _demands(self, request: Request) -> tuple[list[Demand], float]:
        demands: list[Demand] = []
        tokens = -1.0
        for rule in self._rules:
            value = rule.get(request)
            if value is None:
                value = UNATTRIBUTED
            if rule.match_all:
                requests_bucket, tokens_bucket = rule.buckets(value)
            elif value == rule.match or rule.scope == "global":
                requests_bucket, tokens_bucket = rule.fixed
            else:
                continue
            if requests_bucket is not None:
                demands.append((requests_bucket, 1.0))
            if tokens_bucket is not None:
                if tokens < 0:
                    tokens = float(estimate_tokens(request, self._default_max_tokens))
                # More than the bucket holds could never be admitted: take it all, and the
                # rest is charged as debt when the call is settled.
                demands.append((tokens_bucket, min(tokens, tokens_bucket.capacity)))
        return demands, tokens

    async def complete(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        demands, tokens = self._demands(request)
        window = self._windows.get(request.model) if self._windows else None
        if demands or window is not None:
            if window is not None and tokens < 0:
                tokens = float(estimate_tokens(request, self._default_max_tokens))
            if not self._admitted_now(demands, window):
                await self._admit(request, demands, tokens, window)
        try:
            response = await call_next(request)
        except TollwayError as exc:
            self._failed(request, demands, exc)
            raise
        if self._learn:
            headers = getattr(response, "rate_limit", None)
            if headers:
                self.learn(request.model, headers)
        if self._has_tokens and demands:
            self._settle(demands, response.usage.input_tokens + response.usage.output_tokens)
        return response

    async def stream(
        self, request: Request, call_next: Callable[[Request], AsyncIterator[StreamChunk]]
    ) -> AsyncIterator[StreamChunk]:
        demands, tokens = self._demands(request)
        window = self._windows.get(request.model) if self._windows else None
        if demands or window is not None:
            if window is not None and tokens < 0:
                tokens = float(estimate_tokens(request, self._default_max_tokens))
            if not self._admitted_now(demands, window):
                await self._admit(request, demands, tokens, window)
        iterator = call_next(request)
        used = -1
        first = self._learn
        try:
            async for chunk in iterator:
                if first:
                    first = False
                    headers = getattr(chunk, "rate_limit", None)
                    if headers:
                        self.learn(request.model, headers)
                if chunk.usage is not None:
                    used = chunk.usage.input_tokens + chunk.usage.output_tokens
                yield chunk
        except TollwayError as exc:
            self._failed(request, demands, exc)
            raise
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if self._has_tokens and demands and used >= 0:
            self._settle(demands, used)

    def _settle(self, demands: Sequence[Demand], used: int) -> None:
        """Charge or refund each tokens bucket the difference between estimate and use."""
        if used <= 0:  # no usage reported: the estimate stands
            return
        corrections: list[Demand] = []
        for bucket, amount in demands:
            if not bucket.tokens:
                continue
            delta = used - amount
            if delta:
                corrections.append((bucket, delta))
        if corrections:
            self._adjust(corrections)

    def _failed(self, request: Request, demands: Sequence[Demand], exc: TollwayError) -> None:
        # An HTTP error answer means the provider did no work: give the estimated tokens back.
        # The request itself was sent, and stays counted.
        if exc.status is not None and self._has_tokens:
            refunds = [(b, -amount) for b, amount in demands if b.tokens]
            if refunds:
                self._adjust(refunds)
        if self._learn and isinstance(exc, RateLimitedError) and exc.retry_after:
            window = self._window(request.model)
            window.requests = 0.0
            window.requests_reset = self._clock() + exc.retry_after
            self._learned.inc(request.model)

    def _adjust(self, demands: Sequence[Demand]) -> None:
        if self._charge is not None:
            self._charge(demands)
        else:
            self._spawn(self.limiter.adjust(demands))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # a settle that fails must not fail anything else
                get_logger("tollway.ratelimit").warning(
                    "ratelimit_adjust_failed", error=f"{type(exc).__name__}: {exc}"
                )

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- learning --------------------------------------------------------------------------

    def _window(self, model: str) -> _Window:
        window = self._windows.get(model)
        if window is None:
            window = self._windows[model] = _Window(model)
        return window

    def learn(self, model: str, headers: Mapping[str, str]) -> None:
        """Tighten ``model``'s limit to what the provider says remains (until its reset)."""
        requests, requests_reset, tokens, tokens_reset = parse_rate_limit_headers(headers)
        if requests is None and tokens is None:
            return
        now = self._clock()
        window = self._window(model)
        if requests is not None:
            window.requests = requests
            window.requests_reset = now + (
                requests_reset if requests_reset is not None else _DEFAULT_RESET
            )
        if tokens is not None:
            window.tokens = tokens
            window.tokens_reset = now + (
                tokens_reset if tokens_reset is not None else _DEFAULT_RESET
            )
        self._learned.inc(model)

    # -- admission -------------------------------------------------------------------------

    async def _try(
        self, demands: list[Demand], tokens: float, window: _Window | None
    ) -> tuple[float, Bucket | None]:
        """Take everything now, or nothing and say how long to wait and for which limit."""
        if window is not None:
            wait = window.wait(self._clock(), tokens)
            if wait > 0:
                return wait, window.bucket
        if demands:
            if self._take is not None:
                wait, index = self._take(demands)
            else:
                wait, index = await self.limiter.acquire(demands)
            if wait > 0:
                return wait, demands[index][0]
        if window is not None:
            window.take(tokens)
        return 0.0, None

    def _admitted_now(self, demands: list[Demand], window: _Window | None) -> bool:
        """The fast path: a local limiter, nobody queued and nothing learned, so the buckets
        are taken synchronously here, with no coroutine. False: go through :meth:`_admit`."""
        take = self._take
        if take is None or window is not None or self._waiting_keys:
            return False
        return take(demands)[1] < 0

    async def _admit(
        self, request: Request, demands: list[Demand], tokens: float, window: _Window | None
    ) -> None:
        waiting = self._waiting_keys
        blocking: Bucket | None = None
        hint = 0.0
        if waiting:
            for bucket, _ in demands:
                if bucket.key in waiting:
                    blocking = bucket
                    break
            if blocking is None and window is not None and window.bucket.key in waiting:
                blocking = window.bucket
        if blocking is None:
            # Nobody waits for these buckets: no one to overtake, so try at once.
            hint, blocking = await self._try(demands, tokens, window)
            if blocking is None:
                return
        await self._queue(_Waiter(request, demands, tokens, window, blocking, hint))

    async def _queue(self, waiter: _Waiter) -> None:
        request = waiter.request
        if self._closed:
            raise TollwayError("the pipeline is closed; the call was not sent")
        if len(self._entries) >= self._max_queue:
            self._rejected.inc(waiter.blocking.scope, "queue_full")
            raise QueueTimeoutError(
                f"{request.model}: the rate-limit queue is full ({self._max_queue} calls "
                f"waiting) and this call would have to wait for {waiter.blocking.label}; raise "
                "that limit or [rate_limits] max_queue, or send fewer calls at once",
                retry_after=waiter.hint or None,
                code="queue_full",
            )
        timeout = self._queue_timeout
        by_request = request.timeout is not None and request.timeout < timeout
        if by_request:
            assert request.timeout is not None
            timeout = request.timeout
        self._enqueue(waiter)
        future = waiter.future
        try:
            await asyncio.wait((future,), timeout=timeout)
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release(waiter)  # admitted, but the caller is gone
            else:
                self._remove(waiter)
                future.cancel()
            raise
        if future.done():
            future.result()  # admitted, or the limiter's error
            self._wait_seconds.observe(loop_time() - waiter.enqueued, waiter.blocking.scope)
            return
        self._remove(waiter)
        future.cancel()
        waited = loop_time() - waiter.enqueued
        self._rejected.inc(waiter.blocking.scope, "queue_timeout")
        self._wait_seconds.observe(waited, waiter.blocking.scope)
        change = (
            f"pass a longer timeout (the call's timeout={timeout:g}s cut the wait short)"
            if by_request
            else f"raise [rate_limits] queue_timeout (now {timeout:g}s)"
        )
        raise QueueTimeoutError(
            f"{request.model} waited {waited:.2f}s in the rate-limit queue and was not admitted: "
            f"{waiter.blocking.label} was used up. Raise that limit, {change}, or send fewer "
            "calls",
            retry_after=waiter.hint or None,
            code="queue_timeout",
        )

    def _enqueue(self, waiter: _Waiter) -> None:
        request = waiter.request
        priority = request.controls.get("priority", 0) if request.controls else 0
        try:
            rank = -float(priority or 0)
        except (TypeError, ValueError):
            raise ValueError(
                f"priority={priority!r} is not a number; pass an int, higher goes first"
            ) from None
        user = request.user or ""
        weight = self._weights.get(user, 1.0)
        # Weighted fair queueing on virtual time: each user's calls are spaced 1/weight apart,
        # starting no earlier than the call being served, so a user with a thousand calls
        # queued takes turns with a user who has one.
        start = max(self._vtime, self._finish.get(user, 0.0))
        finish = start + 1.0 / weight
        self._finish[user] = finish
        waiter.user = user
        waiter.weight = weight
        waiter.enqueued = loop_time()
        entry = (rank, finish, next(self._seq), waiter)
        waiter.entry = entry
        bisect.insort(self._entries, entry)
        waiting = self._waiting_keys
        for key in waiter.keys:
            waiting[key] = waiting.get(key, 0) + 1
        self._queued.set(float(len(self._entries)))
        self._wake.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    def _remove(self, waiter: _Waiter, *, served: bool = False) -> None:
        entry = waiter.entry
        if entry is None:
            return
        waiter.entry = None
        entries = self._entries
        index = bisect.bisect_left(entries, entry[:3])
        if index < len(entries) and entries[index] is entry:
            del entries[index]
        else:  # not expected; keep the queue right anyway
            entries.remove(entry)
        waiting = self._waiting_keys
        for key in waiter.keys:
            count = waiting[key] - 1
            if count:
                waiting[key] = count
            else:
                del waiting[key]
        # A call that leaves unserved gives its turn back, when it was its user's latest.
        if not served and self._finish.get(waiter.user) == entry[1]:
            self._finish[waiter.user] = entry[1] - 1.0 / waiter.weight
        self._queued.set(float(len(entries)))
        if not entries:
            self._vtime = 0.0
            self._finish.clear()

    def _release(self, waiter: _Waiter) -> None:
        """Give back what an admitted call took when its caller went away before using it."""
        if waiter.demands:
            self._adjust([(bucket, -amount) for bucket, amount in waiter.demands])
        if waiter.window is not None:
            window = waiter.window
            if window.requests is not None:
                window.requests += 1.0
            if window.tokens is not None:
                window.tokens += waiter.tokens

    def wake(self) -> None:
        """Make the queue look again now (for tests on a fake clock, and after refunds)."""
        self._wake.set()

    async def _dispatch(self) -> None:
        """Admit waiting calls in queue order whenever their buckets allow."""
        wake = self._wake
        while self._entries:
            wake.clear()
            blocked: set[str] = set()
            sleep = _MAX_IDLE
            for entry in list(self._entries):
                waiter = entry[3]
                if waiter.entry is None:
                    continue  # left while an earlier one was being tried
                if blocked and not blocked.isdisjoint(waiter.keys):
                    continue  # someone ahead waits for one of its buckets
                try:
                    wait, bucket = await self._try(waiter.demands, waiter.tokens, waiter.window)
                except Exception as exc:
                    if waiter.entry is not None:
                        self._remove(waiter)
                        if not waiter.future.done():
                            waiter.future.set_exception(exc)
                    continue
                if bucket is None:
                    if waiter.entry is None or waiter.future.done():
                        self._release(waiter)  # it left during the check
                        continue
                    self._remove(waiter, served=True)
                    if entry[1] > self._vtime:
                        self._vtime = entry[1]
                    waiter.future.set_result(None)
                else:
                    waiter.blocking = bucket
                    waiter.hint = wait
                    blocked.add(bucket.key)
                    if wait < sleep:
                        sleep = wait
            if not self._entries:
                break
            if not wake.is_set():
                try:
                    await asyncio.wait_for(wake.wait(), sleep)
                except TimeoutError:
                    pass

    async def aclose(self) -> None:
        self._closed = True
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.cancel()
            try:
                await dispatcher
            except asyncio.CancelledError:
                pass
        for _, _, _, waiter in list(self._entries):
            self._remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(
                    TollwayError("the pipeline closed while this call waited for its rate limit")
                )
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.limiter.aclose()


def loop_time() -> float:
    return asyncio.get_running_loop().time()
