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
    # How long a cross-process leader may hold a call before followers stop waiting for it:
    # its claim is renewed for at most this long, then lapses and a follower takes over.
    lease: float = 120.0
    # Redis: the prefix of every key, so that several deployments can share one server.
    namespace: str = "tollway"
    # Redis: seconds a leader's claim lasts unless renewed; a live leader renews it every third
    # of that, so a leader whose process died is replaced by a follower within about this long.
    heartbeat: float = 3.0
    # Redis: seconds the outcome (an answer, an error, a stream's chunks) stays readable after
    # the call ends, for followers still reading it. Not a cache: new calls never read it.
    result_ttl: float = 30.0

    def __attrs_post_init__(self) -> None:
        for name in ("lease", "heartbeat", "result_ttl"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} = {value} must be a positive number of seconds")


def _check_policy(policy: RetryPolicy | RetryConfig) -> None:
    if policy.max_attempts is not None and policy.max_attempts < 1:
        raise ValueError(
            f"max_attempts = {policy.max_attempts} must be at least 1 (the first attempt counts)"
        )
    for name in ("base_delay", "max_delay", "max_retry_after"):
        value = getattr(policy, name)
        if value is not None and not value >= 0:
            raise ValueError(f"{name} = {value} must be a number of seconds, 0 or more")


@attrs.define(kw_only=True)
class RetryPolicy:
    """``[retry.providers.NAME]``: one provider's overrides; a key left out keeps ``[retry]``'s."""

    max_attempts: int | None = None
    base_delay: float | None = None
    max_delay: float | None = None
    max_retry_after: float | None = None

    def __attrs_post_init__(self) -> None:
        _check_policy(self)


@attrs.define(kw_only=True)
class RetryConfig:
    """``[retry]``, with per-provider overrides in ``[retry.providers.NAME]``."""

    enabled: bool = False
    # Every attempt counts, the first one included: 3 means one call and up to two retries.
    max_attempts: int = 3
    # Full jitter: retry n (from 0) waits uniform(0, min(max_delay, base_delay * 2**n)).
    base_delay: float = 0.5
    max_delay: float = 20.0
    # A provider's Retry-After is honoured up to this many seconds; longer, and the error stands.
    max_retry_after: float = 60.0
    # Retries may add at most this fraction of first attempts (a token bucket, as gRPC's
    # retry throttling), so that retries cannot multiply an outage. One budget per provider.
    budget_ratio: float = 0.2
    # Retries always allowed per second, so a quiet service can still retry.
    budget_floor_per_second: float = 1.0
    # The most retries the budget holds (and starts with): the burst it allows after a calm.
    budget_burst: float = 10.0
    providers: dict[str, RetryPolicy] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        _check_policy(self)
        for name in ("budget_ratio", "budget_floor_per_second", "budget_burst"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} = {value} must be 0 or more")


@attrs.define(kw_only=True)
class CircuitBreakerConfig:
    """``[circuit_breaker]``: one breaker per provider endpoint (a ``[providers.NAME]``)."""

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

    def __attrs_post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"failure_rate = {self.failure_rate} must be above 0 and at most 1")
        for name in ("minimum_calls", "consecutive_failures", "half_open_probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be at least 1")
        for name in ("window", "open_for"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} = {getattr(self, name)} must be more than 0 seconds")


RATE_LIMIT_SCOPES: tuple[str, ...] = ("global", "provider", "model", "user", "api_key", "team")


@attrs.define(kw_only=True)
class RateLimitRule:
    """One limit. ``scope`` says what is counted separately; ``match`` which values it covers."""

    scope: str = "global"  # global, provider, model, user, api_key, team
    match: str = "*"  # "*" limits each value of the scope separately
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    # The requests bucket's size, in requests; defaults to one minute's allowance.
    burst: float | None = None
    # The tokens bucket's size, in tokens; defaults to one minute's allowance.
    burst_tokens: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.scope not in RATE_LIMIT_SCOPES:
            raise ValueError(
                f"rate-limit scope {self.scope!r} is not one of {', '.join(RATE_LIMIT_SCOPES)}"
            )
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError(
                "a rate-limit rule needs requests_per_minute, tokens_per_minute or both"
            )
        for name in ("requests_per_minute", "tokens_per_minute", "burst", "burst_tokens"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be greater than 0, not {value!r}")
        if self.burst is not None and self.requests_per_minute is None:
            raise ValueError(
                "burst sizes the requests bucket but the rule has no requests_per_minute; "
                "use burst_tokens to size the tokens bucket"
            )
        if self.burst_tokens is not None and self.tokens_per_minute is None:
            raise ValueError("burst_tokens is set but the rule has no tokens_per_minute")
        if self.scope == "global" and self.match != "*":
            raise ValueError("a global rule has one bucket; leave match as '*'")


@attrs.define(kw_only=True)
class RateLimitConfig:
    """``[rate_limits]`` with ``[[rate_limits.rules]]``."""

    enabled: bool = False
    backend: str = "local"  # or "redis", shared by every process
    url: str = "redis://127.0.0.1:6379/0"
    # Redis keys start with this; processes that share limits must share it.
    key_prefix: str = "tollway:ratelimit"
    rules: list[RateLimitRule] = attrs.field(factory=list)
    # Seconds a call may wait in the queue before QueueTimeoutError.
    queue_timeout: float = 30.0
    # Calls waiting at once; one more is refused at once with QueueTimeoutError.
    max_queue: int = 10_000
    # Weighted fairness across users: a user's share of waiting capacity. Default weight 1.
    weights: dict[str, float] = attrs.field(factory=dict)
    # Tighten limits from the provider's x-ratelimit-remaining-* headers where present.
    learn_from_headers: bool = True
    # The token estimate made before a call counts this many output tokens when the request
    # sets no max_tokens; the bucket is settled to the reported usage afterwards.
    default_max_tokens: int = 256

    def __attrs_post_init__(self) -> None:
        if not self.queue_timeout > 0:
            raise ValueError(f"queue_timeout must be greater than 0, not {self.queue_timeout!r}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, not {self.max_queue!r}")
        if self.default_max_tokens < 0:
            raise ValueError("default_max_tokens must be 0 or more")
        for user, weight in self.weights.items():
            if not weight > 0:
                raise ValueError(f"weights.{user} must be greater than 0, not {weight!r}")
        seen: set[tuple[str, str, str]] = set()
        for rule in self.rules:
            for unit, rate in (
                ("requests", rule.requests_per_minute),
                ("tokens", rule.tokens_per_minute),
            ):
                if rate is None:
                    continue
                key = (rule.scope, rule.match, unit)
                if key in seen:
                    raise ValueError(
                        f"two rules limit {unit} for scope={rule.scope} match={rule.match!r}; "
                        "keep one of them"
                    )
                seen.add(key)
