"""The tables for coalescing, retries, circuit breakers, fallbacks and rate limits.

Only attrs classes here: config loading imports it cheaply.
"""

from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class SingleFlightConfig:
    """``[single_flight]``: identical calls in flight at once make one upstream call."""

    enabled: bool = False
    # "local" coalesces within the process; "redis" across every process sharing the server.
    backend: str = "local"
    url: str = "redis://127.0.0.1:6379/0"
    # How long a cross-process leader may hold a call before followers stop waiting for it.
    lease: float = 120.0


@attrs.define(kw_only=True)
class RetryPolicy:
    """How one provider's calls are retried."""

    max_attempts: int = 3
    # Full jitter: attempt n waits uniform(0, min(max_delay, base_delay * 2**n)).
    base_delay: float = 0.5
    max_delay: float = 20.0
    # A provider's Retry-After is honoured up to this many seconds; longer, and the error stands.
    max_retry_after: float = 60.0


@attrs.define(kw_only=True)
class RetryConfig(RetryPolicy):
    """``[retry]``, with per-provider overrides in ``[retry.providers.NAME]``."""

    enabled: bool = False
    # Retries may add at most this fraction of first attempts (a token bucket, as gRPC's
    # retry throttling), so that retries cannot multiply an outage.
    budget_ratio: float = 0.2
    # Retries always allowed per second, so a quiet service can still retry.
    budget_floor_per_second: float = 1.0
    providers: dict[str, RetryPolicy] = attrs.field(factory=dict)


@attrs.define(kw_only=True)
class CircuitBreakerConfig:
    """``[circuit_breaker]``: one breaker per provider endpoint."""

    enabled: bool = False
    # Opens when, over the last ``window`` seconds and at least ``minimum_calls`` calls, the
    # share of failures reaches ``failure_rate``; or after ``consecutive_failures`` in a row.
    failure_rate: float = 0.5
    minimum_calls: int = 10
    window: float = 60.0
    consecutive_failures: int = 5
    # Seconds it stays open before letting ``half_open_probes`` trial calls through.
    open_for: float = 30.0
    half_open_probes: int = 1


@attrs.define(kw_only=True)
class RateLimitRule:
    """One limit. ``scope`` says what is counted separately; ``match`` which values it covers."""

    scope: str = "global"  # global, provider, model, user, api_key, team
    match: str = "*"  # "*" limits each value of the scope separately
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    # The bucket's size; defaults to one minute's allowance.
    burst: float | None = None


@attrs.define(kw_only=True)
class RateLimitConfig:
    """``[rate_limits]`` with ``[[rate_limits.rules]]``."""

    enabled: bool = False
    backend: str = "local"  # or "redis", shared by every process
    url: str = "redis://127.0.0.1:6379/0"
    rules: list[RateLimitRule] = attrs.field(factory=list)
    # Seconds a call may wait in the queue before QueueTimeoutError.
    queue_timeout: float = 30.0
    max_queue: int = 10_000
    # Weighted fairness across users: a user's share of waiting capacity. Default weight 1.
    weights: dict[str, float] = attrs.field(factory=dict)
    # Tighten limits from the provider's x-ratelimit-remaining-* headers where present.
    learn_from_headers: bool = True
