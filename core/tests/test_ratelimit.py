"""Rate limits: local token buckets on a fake clock, rules, settling, the fair queue, limits
learned from provider headers, and the stage end to end through a Pipeline and FakeOpenAI."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.config import Config, load_config
from tollway.errors import (
    ConfigError,
    QueueTimeoutError,
    RateLimitedError,
    UnavailableError,
)
from tollway.metrics import Metrics
from tollway.pipeline import Pipeline
from tollway.plugins import build_plugin_manager
from tollway.resilience.config import RateLimitConfig, RateLimitRule
from tollway.resilience.ratelimit import (
    Bucket,
    LocalRateLimiter,
    RateLimitStage,
    estimate_tokens,
    parse_duration,
    parse_rate_limit_headers,
)
from tollway.stages import StageContext
from tollway.testing.fake_openai import FakeOpenAI
from tollway.types import Message, Request, Response, StreamChunk, Usage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def bucket(key: str = "b", rate: float = 1.0, capacity: float = 1.0) -> Bucket:
    return Bucket(key, rate, capacity, "global", f"the limit {key}")


def request(
    text: str = "hi",
    *,
    model: str = "openai/gpt-4o-mini",
    user: str | None = None,
    max_tokens: int | None = 10,
    priority: int | None = None,
    timeout: float | None = None,
    team: str | None = None,
    api_key_id: str | None = None,
) -> Request:
    controls = {"priority": priority} if priority is not None else {}
    return Request(
        model,
        (Message.user(text),),
        max_tokens=max_tokens,
        user=user,
        controls=controls,
        timeout=timeout,
        team=team,
        api_key_id=api_key_id,
    )


def make_stage(
    *rules: RateLimitRule, clock: FakeClock | None = None, **options: Any
) -> tuple[RateLimitStage, LocalRateLimiter, Metrics, FakeClock]:
    clock = clock or FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    metrics = Metrics()
    config = RateLimitConfig(enabled=True, rules=list(rules), **options)
    return RateLimitStage(config, limiter, metrics, clock=clock), limiter, metrics, clock


USAGE = Usage(3, 2)


def answer(request: Request, usage: Usage = USAGE) -> Response:
    return Response("r", request.model, request.provider, Message.assistant("ok"), "stop", usage)


class Recorder:
    """A call_next that records who got through, in order."""

    def __init__(self, usage: Usage = USAGE) -> None:
        self.order: list[str] = []
        self.usage = usage

    async def __call__(self, request: Request) -> Response:
        self.order.append(f"{request.user}:{request.messages[0].text}")
        return answer(request, self.usage)


async def until(predicate: Callable[[], bool], deadline: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0)


async def drain(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- the estimate ------------------------------------------------------------------------------


def test_estimate_is_prompt_chars_over_four_rounded_up_plus_max_tokens() -> None:
    assert estimate_tokens(request("x" * 9, max_tokens=100)) == 3 + 100
    assert estimate_tokens(request("x" * 8, max_tokens=None), 256) == 2 + 256
    assert estimate_tokens(request("", max_tokens=0)) == 0


# -- local buckets -----------------------------------------------------------------------------


def test_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    b = bucket(rate=1.0, capacity=3.0)
    assert [limiter.take([(b, 1.0)]) for _ in range(3)] == [(0.0, -1)] * 3
    wait, index = limiter.take([(b, 1.0)])
    assert index == 0
    assert wait == pytest.approx(1.0)
    clock.advance(0.5)
    assert limiter.take([(b, 1.0)])[0] == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.take([(b, 1.0)]) == (0.0, -1)
    clock.advance(3600)  # refills to its capacity, never beyond
    assert limiter.level(b) == pytest.approx(3.0)


def test_all_or_nothing_across_buckets() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    roomy, tight = bucket("roomy", 1.0, 10.0), bucket("tight", 0.5, 1.0)
    assert limiter.take([(tight, 1.0)]) == (0.0, -1)
    wait, index = limiter.take([(roomy, 4.0), (tight, 1.0)])
    assert (index, wait) == (1, pytest.approx(2.0))
    assert limiter.level(roomy) == pytest.approx(10.0), "nothing may be taken when one waits"


def test_charge_goes_into_debt_and_refund_stops_at_capacity() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock)
    b = bucket(rate=10.0, capacity=100.0)
    assert limiter.take([(b, 60.0)]) == (0.0, -1)
    limiter.charge([(b, 90.0)])  # used 150 in all
    assert limiter.level(b) == pytest.approx(-50.0)
    assert limiter.take([(b, 10.0)])[0] == pytest.approx(6.0)
    limiter.charge([(b, -1000.0)])
    assert limiter.level(b) == pytest.approx(100.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 5), st.floats(0.5, 8)), min_size=1, max_size=40),
    st.floats(0.5, 20),
    st.floats(1, 10),
)
def test_a_bucket_never_admits_more_than_capacity_plus_rate_times_time(
    steps: list[tuple[float, float]], rate: float, capacity: float
) -> None:
    clock = FakeClock()
    start = clock.now
    limiter = LocalRateLimiter(clock=clock)
    b = bucket(rate=rate, capacity=capacity)
    admitted = 0.0
    for pause, wanted in steps:
        clock.advance(pause)
        amount = min(wanted, capacity)
        wait, _ = limiter.take([(b, amount)])
        if wait == 0:
            admitted += amount
        else:
            # The promised wait is enough, and not more than needed.
            clock.advance(wait)
            assert limiter.take([(b, amount)]) == (0.0, -1)
            admitted += amount
        assert admitted <= capacity + rate * (clock.now - start) + 1e-6


# -- rules -------------------------------------------------------------------------------------


def keys(stage: RateLimitStage, req: Request) -> list[tuple[str, float]]:
    demands, _ = stage._demands(req)
    return [(bucket.key, amount) for bucket, amount in demands]


def test_rules_match_scopes_and_values() -> None:
    stage, *_ = make_stage(
        RateLimitRule(scope="global", requests_per_minute=1000),
        RateLimitRule(scope="user", requests_per_minute=10, tokens_per_minute=1000),
        RateLimitRule(scope="user", match="vip", tokens_per_minute=50_000),
        RateLimitRule(scope="model", match="openai/gpt-4o", requests_per_minute=5),
        RateLimitRule(scope="provider", match="anthropic", requests_per_minute=7),
        RateLimitRule(scope="team", requests_per_minute=9),
        RateLimitRule(scope="api_key", match="k1", requests_per_minute=3),
    )
    estimate = float(estimate_tokens(request("hi")))
    assert keys(stage, request("hi", user="u-1", team="t")) == [
        ("global:*:req:*", 1.0),
        ("user:*:req:u-1", 1.0),
        ("user:*:tok:u-1", estimate),
        ("team:*:req:t", 1.0),
    ]
    vip = keys(stage, request("hi", user="vip", model="openai/gpt-4o", api_key_id="k1"))
    assert ("user:vip:tok:vip", estimate) in vip
    assert ("model:openai/gpt-4o:req:openai/gpt-4o", 1.0) in vip
    assert ("api_key:k1:req:k1", 1.0) in vip
    assert ("provider:anthropic:req:anthropic", 1.0) not in vip
    # Calls with no user share one bucket rather than escape a per-user limit.
    assert ("user:*:req:(none)", 1.0) in keys(stage, request("hi"))
    assert ("provider:anthropic:req:anthropic", 1.0) in keys(
        stage, request(model="anthropic/claude")
    )


def test_a_model_rule_matches_through_aliases() -> None:
    clock = FakeClock()
    config = RateLimitConfig(
        enabled=True, rules=[RateLimitRule(scope="model", match="fast", requests_per_minute=1)]
    )
    stage = RateLimitStage(
        config,
        LocalRateLimiter(clock=clock),
        Metrics(),
        route=lambda m: "openai/gpt-4o-mini" if m == "fast" else m,
        clock=clock,
    )
    assert keys(stage, request(model="openai/gpt-4o-mini")) == [
        ("model:openai/gpt-4o-mini:req:openai/gpt-4o-mini", 1.0)
    ]


def test_per_user_buckets_are_separate() -> None:
    stage, limiter, *_ = make_stage(RateLimitRule(scope="user", requests_per_minute=60, burst=1))
    a, _ = stage._demands(request(user="a"))
    b, _ = stage._demands(request(user="b"))
    assert limiter.take(a) == (0.0, -1)
    assert limiter.take(a)[0] > 0
    assert limiter.take(b) == (0.0, -1)


def test_an_estimate_larger_than_the_bucket_takes_it_all_and_settles_the_rest() -> None:
    stage, *_ = make_stage(RateLimitRule(tokens_per_minute=600, burst_tokens=100))
    demands, estimate = stage._demands(request("x" * 400, max_tokens=500))
    assert estimate == 600
    assert demands[0][1] == 100


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"scope": "person", "requests_per_minute": 1}, "not one of global"),
        ({"scope": "user"}, "needs requests_per_minute"),
        ({"requests_per_minute": 0}, "greater than 0"),
        ({"tokens_per_minute": 10, "burst": 5}, "burst_tokens"),
        ({"match": "x", "requests_per_minute": 1}, "global rule"),
    ],
)
def test_bad_rules_are_refused_at_load_naming_the_key(data: dict[str, Any], message: str) -> None:
    manager = build_plugin_manager([], load_entrypoints=False)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(data={"rate_limits": {"rules": [data]}}, plugins=manager, environ={})
    assert "rate_limits.rules[0]" in str(info.value)


def test_two_rules_for_the_same_bucket_are_refused() -> None:
    with pytest.raises(ValueError, match="two rules limit requests"):
        RateLimitConfig(
            rules=[
                RateLimitRule(scope="user", requests_per_minute=1),
                RateLimitRule(scope="user", requests_per_minute=2),
            ]
        )


def test_an_unknown_backend_names_the_available_ones() -> None:
    manager = build_plugin_manager([], load_entrypoints=False)
    config = Config(rate_limits=RateLimitConfig(enabled=True, backend="memcached"))
    context = StageContext(config, manager, Metrics(), lambda m: m)
    with pytest.raises(ConfigError, match=r"'memcached'.*one of: local") as info:
        RateLimitStage.from_context(context)
    assert info.value.key == "rate_limits.backend"


def test_from_context_builds_the_local_backend() -> None:
    manager = build_plugin_manager([], load_entrypoints=False)
    config = Config(rate_limits=RateLimitConfig(enabled=True))
    stage = RateLimitStage.from_context(StageContext(config, manager, Metrics(), lambda m: m))
    assert isinstance(stage.limiter, LocalRateLimiter)


# -- settling ----------------------------------------------------------------------------------


async def test_settle_refunds_an_overestimate_and_charges_an_underestimate() -> None:
    rule = RateLimitRule(tokens_per_minute=6000)
    stage, limiter, _, _ = make_stage(rule)
    tok = stage._rules[0].fixed[1]
    assert tok is not None
    req = request("x" * 40, max_tokens=100)  # estimate 110
    await stage.complete(req, Recorder(Usage(10, 20)))
    assert limiter.level(tok) == pytest.approx(6000 - 30)
    await stage.complete(req, Recorder(Usage(100, 400)))
    assert limiter.level(tok) == pytest.approx(6000 - 30 - 500)


async def test_a_provider_error_gives_the_tokens_back_but_keeps_the_request() -> None:
    stage, limiter, _, _ = make_stage(RateLimitRule(requests_per_minute=10, tokens_per_minute=1000))
    req_bucket, tok_bucket = stage._rules[0].fixed
    assert req_bucket is not None
    assert tok_bucket is not None

    async def fail(request: Request) -> Response:
        raise UnavailableError("down", provider="openai", status=503)

    with pytest.raises(UnavailableError):
        await stage.complete(request(), fail)
    assert limiter.level(tok_bucket) == pytest.approx(1000)
    assert limiter.level(req_bucket) == pytest.approx(9)


async def test_a_stream_is_admitted_before_it_starts_and_settled_from_its_usage_chunk() -> None:
    stage, limiter, _, _ = make_stage(RateLimitRule(requests_per_minute=60, tokens_per_minute=600))
    req_bucket, tok_bucket = stage._rules[0].fixed
    assert req_bucket is not None
    assert tok_bucket is not None
    closed = []

    async def upstream(request: Request) -> AsyncIterator[StreamChunk]:
        assert limiter.level(req_bucket) == pytest.approx(59), "admitted before the first chunk"
        try:
            yield StreamChunk(text="a")
            yield StreamChunk(text="b")
            yield StreamChunk(finish_reason="stop", usage=Usage(7, 3))
        finally:
            closed.append(True)

    chunks = [c async for c in stage.stream(request(max_tokens=100), upstream)]
    assert [c.text for c in chunks] == ["a", "b", ""]
    assert limiter.level(tok_bucket) == pytest.approx(600 - 10)
    assert closed == [True]


# -- the queue ---------------------------------------------------------------------------------


async def test_calls_beyond_the_burst_wait_and_are_admitted_as_the_bucket_refills() -> None:
    stage, _, metrics, clock = make_stage(RateLimitRule(requests_per_minute=60, burst=2))
    calls = Recorder()
    await stage.complete(request("1"), calls)
    await stage.complete(request("2"), calls)
    third = asyncio.create_task(stage.complete(request("3"), calls))
    await until(lambda: stage._queued.get() == 1)
    assert calls.order == ["None:1", "None:2"]
    clock.advance(1.0)
    stage.wake()
    await third
    assert calls.order[-1] == "None:3"
    assert metrics.histogram("ratelimit_wait_seconds", "", ["scope"]).count("global") == 1
    assert stage._queued.get() == 0
    await stage.aclose()


async def fill_queue(
    stage: RateLimitStage, calls: Recorder, specs: list[tuple[str, int | None]]
) -> list[asyncio.Task[Response]]:
    await stage.complete(request("warm-up", user="w"), calls)  # empties the one-call bucket
    calls.order.clear()
    tasks = []
    counts: dict[str, int] = {}
    for user, priority in specs:
        counts[user] = counts.get(user, 0) + 1
        tasks.append(
            asyncio.create_task(
                stage.complete(request(str(counts[user]), user=user, priority=priority), calls)
            )
        )
    await until(lambda: stage._queued.get() == len(specs))
    return tasks


async def admit_one_at_a_time(
    stage: RateLimitStage, clock: FakeClock, calls: Recorder, count: int
) -> None:
    for served in range(1, count + 1):
        clock.advance(1.0)
        stage.wake()
        await until(lambda served=served: len(calls.order) >= served)  # type: ignore[misc]
    assert len(calls.order) == count


async def test_a_light_user_is_served_interleaved_with_a_heavy_one() -> None:
    stage, _, _, clock = make_stage(RateLimitRule(requests_per_minute=60, burst=1))
    calls = Recorder()
    tasks = await fill_queue(stage, calls, [("heavy", None)] * 100 + [("light", None)] * 5)
    await admit_one_at_a_time(stage, clock, calls, 105)
    assert calls.order[:10] == [call for n in range(1, 6) for call in (f"heavy:{n}", f"light:{n}")]
    assert calls.order[10:] == [f"heavy:{n}" for n in range(6, 101)]
    await asyncio.gather(*tasks)
    await stage.aclose()


async def test_weights_give_a_user_a_larger_share() -> None:
    stage, _, _, clock = make_stage(
        RateLimitRule(requests_per_minute=60, burst=1), weights={"gold": 2.0}
    )
    calls = Recorder()
    tasks = await fill_queue(stage, calls, [("plain", None)] * 6 + [("gold", None)] * 6)
    await admit_one_at_a_time(stage, clock, calls, 9)
    # Finish tags: gold 0.5, 1, 1.5, ...; plain 1, 2, 3: a tie goes to the earlier arrival.
    assert [c.split(":")[0] for c in calls.order] == [
        "gold",
        "plain",
        "gold",
        "gold",
        "plain",
        "gold",
        "gold",
        "plain",
        "gold",
    ]
    await drain(tasks)
    await stage.aclose()


async def test_higher_priority_goes_first_then_fifo_within_a_user() -> None:
    stage, _, _, clock = make_stage(RateLimitRule(requests_per_minute=60, burst=1))
    calls = Recorder()
    tasks = await fill_queue(
        stage, calls, [("a", None), ("a", None), ("b", 0), ("a", 5), ("c", 9), ("a", None)]
    )
    await admit_one_at_a_time(stage, clock, calls, 6)
    assert calls.order == ["c:1", "a:3", "a:1", "b:1", "a:2", "a:4"]
    await asyncio.gather(*tasks)
    await stage.aclose()


async def test_a_user_blocked_on_its_own_limit_does_not_hold_up_others() -> None:
    stage, _, _, _ = make_stage(RateLimitRule(scope="user", requests_per_minute=60, burst=1))
    calls = Recorder()
    await stage.complete(request("1", user="a"), calls)
    waiting = asyncio.create_task(stage.complete(request("2", user="a"), calls))
    await until(lambda: stage._queued.get() == 1)
    await stage.complete(request("1", user="b"), calls)  # not queued behind a
    assert calls.order == ["a:1", "b:1"]
    await drain([waiting])
    await stage.aclose()


async def test_a_big_call_is_not_starved_by_small_ones_on_a_shared_bucket() -> None:
    stage, _, _, clock = make_stage(RateLimitRule(tokens_per_minute=60, burst_tokens=10))
    calls = Recorder(usage=Usage())  # no usage reported: estimates stand
    await stage.complete(request("x", user="w", max_tokens=9), calls)  # leaves 0 tokens
    big = asyncio.create_task(stage.complete(request("big", user="big", max_tokens=9), calls))
    await until(lambda: stage._queued.get() == 1)
    small = [
        asyncio.create_task(stage.complete(request(str(n), user="small", max_tokens=0), calls))
        for n in range(3)
    ]
    await until(lambda: stage._queued.get() == 4)
    # 1 token a second: the small calls (1 token each) would fit first, but wait their turn.
    for _ in range(5):
        clock.advance(1.0)
        stage.wake()
        await asyncio.sleep(0.01)
    assert calls.order == ["w:x"]
    clock.advance(5.0)
    stage.wake()
    await big
    assert calls.order[1] == "big:big"
    await drain(small)
    await stage.aclose()


async def test_a_queue_timeout_names_the_limit_and_what_to_change() -> None:
    stage, _, metrics, _ = make_stage(
        RateLimitRule(scope="user", requests_per_minute=60, burst=1), queue_timeout=0.05
    )
    calls = Recorder()
    await stage.complete(request(user="u-17"), calls)
    with pytest.raises(QueueTimeoutError) as info:
        await stage.complete(request(user="u-17"), calls)
    text = str(info.value)
    assert "user='u-17'" in text
    assert "requests_per_minute=60, burst 1" in text
    assert "queue_timeout (now 0.05s)" in text
    assert "waited" in text
    assert info.value.retry_after == pytest.approx(1.0)
    rejected = metrics.counter("ratelimit_rejected_total", "", ["scope", "reason"])
    assert rejected.get("user", "queue_timeout") == 1
    assert stage._queued.get() == 0
    assert not stage._waiting_keys
    assert calls.order == ["u-17:hi"]
    await stage.aclose()


async def test_a_shorter_request_timeout_bounds_the_wait_and_says_so() -> None:
    stage, *_ = make_stage(RateLimitRule(requests_per_minute=60, burst=1))
    await stage.complete(request(), Recorder())
    with pytest.raises(QueueTimeoutError, match="pass a longer timeout"):
        await stage.complete(request(timeout=0.05), Recorder())
    await stage.aclose()


async def test_a_full_queue_refuses_at_once() -> None:
    stage, _, metrics, _ = make_stage(RateLimitRule(requests_per_minute=60, burst=1), max_queue=2)
    calls = Recorder()
    await stage.complete(request(), calls)
    tasks = [asyncio.create_task(stage.complete(request(), calls)) for _ in range(2)]
    await until(lambda: stage._queued.get() == 2)
    with pytest.raises(QueueTimeoutError, match=r"queue is full \(2 calls") as info:
        await stage.complete(request(), calls)
    assert info.value.code == "queue_full"
    rejected = metrics.counter("ratelimit_rejected_total", "", ["scope", "reason"])
    assert rejected.get("global", "queue_full") == 1
    await drain(tasks)
    await stage.aclose()


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_nothing() -> None:
    stage, limiter, _, clock = make_stage(RateLimitRule(requests_per_minute=60, burst=1))
    calls = Recorder()
    tasks = await fill_queue(stage, calls, [("a", None), ("b", None)])
    tasks[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    assert stage._queued.get() == 1
    clock.advance(1.0)
    stage.wake()
    await tasks[1]
    assert calls.order == ["b:1"]
    req_bucket = stage._rules[0].fixed[0]
    assert req_bucket is not None
    assert limiter.level(req_bucket) == pytest.approx(0.0)
    assert not stage._waiting_keys
    await stage.aclose()


async def test_closing_fails_the_waiters_clearly() -> None:
    stage, *_ = make_stage(RateLimitRule(requests_per_minute=60, burst=1))
    calls = Recorder()
    await stage.complete(request(), calls)
    waiting = asyncio.create_task(stage.complete(request(), calls))
    await until(lambda: stage._queued.get() == 1)
    await stage.aclose()
    with pytest.raises(Exception, match="closed while this call waited"):
        await waiting


# -- learned limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("2.5", 2.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "s"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    assert parse_duration(text) is None


def test_parse_rate_limit_headers_openai_and_anthropic() -> None:
    assert parse_rate_limit_headers(
        {
            "x-ratelimit-remaining-requests": "4",
            "x-ratelimit-reset-requests": "2s",
            "x-ratelimit-remaining-tokens": "900",
            "x-ratelimit-reset-tokens": "120ms",
        }
    ) == (4.0, 2.0, 900.0, pytest.approx(0.12))
    remaining, reset, _, _ = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z",
        }
    )
    assert remaining == 0
    assert reset is not None
    assert reset > 3600


async def test_headers_saying_nothing_remains_make_the_next_call_wait_for_the_reset() -> None:
    stage, _, metrics, clock = make_stage()  # no rules: only what the provider says
    calls: list[str] = []

    async def provider(request: Request) -> Any:
        calls.append(request.messages[0].text)
        return SimpleNamespace(
            usage=Usage(1, 1),
            rate_limit={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"},
        )

    await stage.complete(request("1"), provider)
    second = asyncio.create_task(stage.complete(request("2"), provider))
    await until(lambda: stage._queued.get() == 1)
    # Another model is not held back.
    await stage.complete(request("other", model="openai/gpt-4o"), provider)
    assert calls == ["1", "other"]
    clock.advance(1.0)
    stage.wake()
    await asyncio.sleep(0.01)
    assert calls == ["1", "other"]
    clock.advance(1.0)
    stage.wake()
    await second
    assert calls == ["1", "other", "2"]
    assert metrics.counter("ratelimit_learned_total", "", ["model"]).get("openai/gpt-4o-mini") >= 1
    await stage.aclose()


async def test_remaining_tokens_hold_back_a_call_that_would_not_fit() -> None:
    stage, _, _, clock = make_stage()

    async def provider(request: Request) -> Any:
        return SimpleNamespace(
            usage=Usage(1, 1),
            rate_limit={"x-ratelimit-remaining-tokens": "50", "x-ratelimit-reset-tokens": "1s"},
        )

    await stage.complete(request(max_tokens=10), provider)
    await stage.complete(request(max_tokens=10), provider)  # ~11 tokens fit in 50
    big = asyncio.create_task(stage.complete(request(max_tokens=100), provider))
    await until(lambda: stage._queued.get() == 1)
    clock.advance(1.5)
    stage.wake()
    await big
    await stage.aclose()


async def test_a_429_with_retry_after_holds_the_model_back() -> None:
    stage, _, _, clock = make_stage()
    calls: list[str] = []

    async def provider(request: Request) -> Response:
        calls.append(request.messages[0].text)
        if len(calls) == 1:
            raise RateLimitedError("slow down", provider="openai", status=429, retry_after=5.0)
        return answer(request)

    with pytest.raises(RateLimitedError):
        await stage.complete(request("1"), provider)
    second = asyncio.create_task(stage.complete(request("2"), provider))
    await until(lambda: stage._queued.get() == 1)
    clock.advance(5.0)
    stage.wake()
    await second
    assert calls == ["1", "2"]
    await stage.aclose()


async def test_learning_can_be_switched_off() -> None:
    stage, *_ = make_stage(learn_from_headers=False)

    async def provider(request: Request) -> Any:
        return SimpleNamespace(
            usage=Usage(1, 1), rate_limit={"x-ratelimit-remaining-requests": "0"}
        )

    await stage.complete(request(), provider)
    await stage.complete(request(), provider)
    assert not stage._windows


# -- end to end --------------------------------------------------------------------------------


def pipeline(fake: FakeOpenAI, **rate_limits: Any) -> Pipeline:
    config = Config(rate_limits=RateLimitConfig(enabled=True, **rate_limits))
    return Pipeline.build(
        providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}}, config=config
    )


async def test_end_to_end_calls_beyond_the_burst_wait_for_the_bucket() -> None:
    async with (
        FakeOpenAI() as fake,
        pipeline(fake, rules=[RateLimitRule(requests_per_minute=60, burst=2)]) as pipe,
    ):
        for n in range(2):
            await pipe.complete("openai/gpt-4o-mini", f"call {n}")
        queued = pipe.metrics.get("ratelimit_queued")
        assert queued is not None
        third = asyncio.create_task(pipe.complete("openai/gpt-4o-mini", "call 2"))
        await until(lambda: queued.values[()] == 1)
        assert len(fake.requests) == 2
        reply = await third  # about a second: one request a second refills the bucket
        assert reply.text
        assert len(fake.requests) == 3
        waits = pipe.metrics.get("ratelimit_wait_seconds")
        assert waits is not None
        assert math.isclose(sum(waits.values[("global",)][0]), 1)


async def test_end_to_end_queue_timeout() -> None:
    async with (
        FakeOpenAI() as fake,
        pipeline(
            fake,
            rules=[RateLimitRule(scope="user", requests_per_minute=1)],
            queue_timeout=0.1,
        ) as pipe,
    ):
        await pipe.complete("openai/gpt-4o-mini", "first", user="u-1")
        await pipe.complete("openai/gpt-4o-mini", "other user", user="u-2")
        with pytest.raises(QueueTimeoutError, match=r"user='u-1'.*requests_per_minute=1"):
            await pipe.complete("openai/gpt-4o-mini", "second", user="u-1")
        assert len(fake.requests) == 2


async def test_end_to_end_stream_settles_tokens_from_the_usage_chunk() -> None:
    async with (
        FakeOpenAI() as fake,
        pipeline(fake, rules=[RateLimitRule(tokens_per_minute=100_000)]) as pipe,
    ):
        stage = pipe._state.builtin["rate_limit"][1]
        assert isinstance(stage, RateLimitStage)
        assert isinstance(stage.limiter, LocalRateLimiter)
        stage.limiter._clock = lambda: 0.0  # no refill while we look
        chunks = [c async for c in pipe.stream("openai/gpt-4o-mini", "hello there", max_tokens=50)]
        usage = next(c.usage for c in chunks if c.usage is not None)
        tok = stage._rules[0].fixed[1]
        assert tok is not None
        used = 100_000 - stage.limiter.level(tok)
        assert used == pytest.approx(usage.input_tokens + usage.output_tokens, abs=1)


def test_forgetting_refilled_buckets_keeps_the_others() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock, prune_at=4)
    slow = bucket("slow", rate=0.01, capacity=100.0)  # takes hours to refill
    assert limiter.take([(slow, 100.0)]) == (0.0, -1)
    for n in range(6):
        assert limiter.take([(bucket(f"fast-{n}", rate=100.0, capacity=1.0), 1.0)]) == (0.0, -1)
        clock.advance(1.0)  # each fast one has refilled by the next
    assert limiter.level(slow) < 1.0, "a bucket still refilling must not be forgotten"
    assert len(limiter._levels) <= 4
