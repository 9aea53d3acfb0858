"""Retries: full jitter, Retry-After within a bound, the budget, per-provider policies, streams."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.config import Config
from tollway.errors import (
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    ContentFilteredError,
    ProviderTimeoutError,
    QueueTimeoutError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
)
from tollway.metrics import Metrics
from tollway.pipeline import Pipeline
from tollway.resilience.config import RetryConfig, RetryPolicy
from tollway.resilience.retry import RetryBudget, RetryStage
from tollway.testing.fake_openai import FakeOpenAI
from tollway.types import Message, ModelInfo, Request, Response, StreamChunk, Usage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Records the waits asked for, and moves the fake clock on by them."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.waits: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds


class Script:
    """The rest of the chain: each call takes the next outcome (an exception or a reply)."""

    def __init__(self, outcomes: Iterable[BaseException | str] = ()) -> None:
        self.outcomes: deque[BaseException | str] = deque(outcomes)
        self.calls: list[Request] = []
        self.closed = 0

    def _next(self, request: Request) -> str:
        self.calls.append(request)
        outcome = self.outcomes.popleft() if self.outcomes else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def complete(self, request: Request) -> Response:
        text = self._next(request)
        return Response("r", request.model, request.provider, Message.assistant(text))

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        try:
            outcome = self._next(request)
            if outcome.startswith("cut:"):
                yield StreamChunk(text="partial")
                raise StreamInterruptedError("cut", provider=request.provider)
            yield StreamChunk(text=outcome)
            yield StreamChunk(finish_reason="stop", usage=Usage(1, 1))
        finally:
            self.closed += 1


def down(n: int = 1) -> list[BaseException]:
    return [UnavailableError("down", provider="p", status=503) for _ in range(n)]


def make_stage(
    metrics: Metrics | None = None,
    *,
    random: float = 1.0,
    clock: FakeClock | None = None,
    sleeps: Sleeps | None = None,
    **settings: object,
) -> tuple[RetryStage, Sleeps]:
    clock = clock or FakeClock()
    sleeps = sleeps or Sleeps(clock)
    defaults: dict[str, object] = {"enabled": True, "base_delay": 1.0, "max_delay": 5.0}
    config = RetryConfig(**{**defaults, **settings})  # type: ignore[arg-type]
    stage = RetryStage(
        config, metrics or Metrics(), clock=clock, sleep=sleeps, random=lambda: random
    )
    return stage, sleeps


def request(model: str = "p/m", **controls: object) -> Request:
    return Request(model, (Message.user("hi"),), controls=controls)


async def test_backoff_ceiling_doubles_up_to_max_delay() -> None:
    stage, sleeps = make_stage(max_attempts=6, random=1.0)
    script = Script(down(5))
    response = await stage.complete(request(), script.complete)
    assert response.text == "ok"
    assert len(script.calls) == 6
    # Full jitter's ceiling: base_delay * 2**n, capped at max_delay.
    assert sleeps.waits == [1.0, 2.0, 4.0, 5.0, 5.0]


async def test_full_jitter_scales_the_ceiling_by_the_random_draw() -> None:
    stage, sleeps = make_stage(max_attempts=4, random=0.25)
    await stage.complete(request(), Script(down(3)).complete)
    assert sleeps.waits == [0.25, 0.5, 1.0]


@given(
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=60.0),
    attempts=st.integers(min_value=2, max_value=70),
)
def test_jitter_stays_within_zero_and_the_capped_ceiling(
    draw: float, base: float, cap: float, attempts: int
) -> None:
    stage, sleeps = make_stage(
        random=draw, base_delay=base, max_delay=cap, max_attempts=attempts, budget_burst=1000.0
    )
    asyncio.run(stage.complete(request(), Script(down(attempts - 1)).complete))
    assert len(sleeps.waits) == attempts - 1
    for n, wait in enumerate(sleeps.waits):
        assert 0.0 <= wait <= min(cap, base * 2.0**n)


async def test_retry_after_is_waited_when_longer_than_the_jitter() -> None:
    stage, sleeps = make_stage(random=0.1, max_retry_after=10.0)
    limited = RateLimitedError("slow down", provider="p", status=429, retry_after=3.0)
    await stage.complete(request(), Script([limited]).complete)
    assert sleeps.waits == [3.0]


async def test_jitter_is_waited_when_longer_than_retry_after() -> None:
    stage, sleeps = make_stage(random=1.0, base_delay=2.0)
    limited = RateLimitedError("slow down", provider="p", status=429, retry_after=0.5)
    await stage.complete(request(), Script([limited]).complete)
    assert sleeps.waits == [2.0]


async def test_retry_after_beyond_the_bound_gives_up_with_the_original_error() -> None:
    stage, sleeps = make_stage(max_retry_after=30.0)
    limited = RateLimitedError("slow down", provider="p", status=429, retry_after=120.0)
    script = Script([limited])
    with pytest.raises(RateLimitedError) as caught:
        await stage.complete(request(), script.complete)
    assert caught.value is limited
    assert len(script.calls) == 1
    assert sleeps.waits == []
    assert any("max_retry_after = 30s" in note for note in caught.value.__notes__)


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("bad", provider="p", status=400),
        ContentFilteredError("blocked"),
        CircuitOpenError("open", provider="p", retry_after=5.0),
        QueueTimeoutError("queued too long"),
    ],
    ids=type,
)
async def test_errors_that_must_not_retry_are_raised_at_once(error: Exception) -> None:
    stage, sleeps = make_stage(max_attempts=5)
    script = Script([error])
    with pytest.raises(type(error)):
        await stage.complete(request(), script.complete)
    assert len(script.calls) == 1
    assert sleeps.waits == []


@pytest.mark.parametrize(
    "error",
    [
        RateLimitedError("429", provider="p", status=429),
        UnavailableError("503", provider="p", status=503),
        ProviderTimeoutError("slow", provider="p"),
        StreamInterruptedError("cut", provider="p"),
    ],
    ids=type,
)
async def test_retryable_errors_are_retried(error: Exception) -> None:
    metrics = Metrics()
    stage, _ = make_stage(metrics)
    script = Script([error])
    assert (await stage.complete(request(), script.complete)).text == "ok"
    assert len(script.calls) == 2
    retries = metrics.counter("retries_total", "", ["provider", "error"])
    assert retries.get("p", type(error).__name__) == 1


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    stage, sleeps = make_stage(max_attempts=3)
    errors = down(5)
    script = Script(errors)
    with pytest.raises(UnavailableError) as caught:
        await stage.complete(request(), script.complete)
    assert caught.value is errors[2]
    assert len(script.calls) == 3
    assert len(sleeps.waits) == 2
    assert any("gave up after 3 attempts" in note for note in caught.value.__notes__)


async def test_retry_control_false_disables_retries_for_the_call() -> None:
    stage, _ = make_stage(max_attempts=5)
    script = Script(down(1))
    with pytest.raises(UnavailableError):
        await stage.complete(request(retry=False), script.complete)
    assert len(script.calls) == 1
    # The next call without the control retries as usual.
    script = Script(down(1))
    await stage.complete(request(), script.complete)
    assert len(script.calls) == 2


async def test_per_provider_policy_overrides_only_what_it_sets() -> None:
    stage, sleeps = make_stage(
        max_attempts=2,
        base_delay=1.0,
        providers={"slow": RetryPolicy(max_attempts=4)},
    )
    default = Script(down(9))
    with pytest.raises(UnavailableError):
        await stage.complete(request("p/m"), default.complete)
    assert len(default.calls) == 2
    special = Script(down(9))
    sleeps.waits.clear()
    with pytest.raises(UnavailableError):
        await stage.complete(request("slow/m"), special.complete)
    assert len(special.calls) == 4
    # base_delay was not overridden, so [retry]'s applies.
    assert sleeps.waits == [1.0, 2.0, 4.0]


async def test_the_budget_stops_retries_when_spent_and_refills_with_time() -> None:
    metrics = Metrics()
    clock = FakeClock()
    sleeps = Sleeps()  # waits do not move the clock: only the test does
    stage, _ = make_stage(
        metrics,
        clock=clock,
        sleeps=sleeps,
        max_attempts=10,
        budget_burst=2.0,
        budget_ratio=0.0,
        budget_floor_per_second=0.5,
    )
    first = Script(down(20))
    with pytest.raises(UnavailableError) as caught:
        await stage.complete(request(), first.complete)
    assert len(first.calls) == 3  # the call and the two retries the budget held
    assert any("retry budget" in note for note in caught.value.__notes__)
    exhausted = metrics.counter("retry_budget_exhausted_total", "", ["provider"])
    assert exhausted.get("p") == 1
    second = Script(down(20))
    with pytest.raises(UnavailableError):
        await stage.complete(request(), second.complete)
    assert len(second.calls) == 1
    assert exhausted.get("p") == 2
    clock.now += 2.0  # 0.5 retries per second: one more retry
    third = Script(down(20))
    with pytest.raises(UnavailableError):
        await stage.complete(request(), third.complete)
    assert len(third.calls) == 2
    # Another provider has a budget of its own.
    other = Script(down(1))
    await stage.complete(request("q/m"), other.complete)
    assert len(other.calls) == 2


def test_budget_deposits_a_ratio_per_first_attempt_up_to_the_burst() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.25, floor_per_second=0.0, burst=3.0, clock=clock)
    assert [budget.withdraw() for _ in range(4)] == [True, True, True, False]
    for _ in range(4):
        budget.deposit()
    assert budget.withdraw() is True
    assert budget.withdraw() is False
    for _ in range(100):
        budget.deposit()
    assert budget.tokens == 3.0


async def test_stream_retries_a_failure_before_the_first_chunk() -> None:
    stage, sleeps = make_stage()
    script = Script([*down(1), "streamed"])
    chunks = [c async for c in stage.stream(request(), script.stream)]
    assert [c.text for c in chunks] == ["streamed", ""]
    assert len(script.calls) == 2
    assert len(sleeps.waits) == 1
    assert script.closed == 2


async def test_stream_failure_after_the_first_chunk_is_not_retried() -> None:
    stage, sleeps = make_stage(max_attempts=5)
    script = Script(["cut:now"])
    received: list[str] = []

    async def drain() -> None:
        async for chunk in stage.stream(request(), script.stream):
            received.append(chunk.text)

    with pytest.raises(StreamInterruptedError):
        await drain()
    assert received == ["partial"]
    assert len(script.calls) == 1
    assert sleeps.waits == []


async def test_stream_with_retry_control_false_is_the_inner_stream_itself() -> None:
    stage, _ = make_stage()
    script = Script()
    inner = script.stream
    calls: list[AsyncIterator[StreamChunk]] = []

    def call_next(req: Request) -> AsyncIterator[StreamChunk]:
        calls.append(inner(req))
        return calls[-1]

    assert stage.stream(request(retry=False), call_next) is calls[0]
    await calls[0].aclose()  # type: ignore[attr-defined]


async def test_cancelling_a_retrying_call_stops_it() -> None:
    stage = RetryStage(RetryConfig(enabled=True, base_delay=100.0, max_delay=100.0), Metrics())
    script = Script(down(1))
    called = asyncio.Event()

    async def call_next(req: Request) -> Response:
        called.set()
        return await script.complete(req)

    task = asyncio.create_task(stage.complete(request(), call_next))
    await called.wait()
    await asyncio.sleep(0)  # let it reach its backoff sleep
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(script.calls) == 1


def test_config_rejects_nonsense_with_the_key_named(tmp_path: Path) -> None:
    from tollway.config import load_config
    from tollway.plugins import build_plugin_manager

    plugins = build_plugin_manager([], load_entrypoints=False)
    with pytest.raises(ConfigError, match=r"retry: max_attempts = 0 must be at least 1"):
        load_config(data={"retry": {"max_attempts": 0}}, plugins=plugins, environ={})
    with pytest.raises(ConfigError, match=r"retry\.providers\.openai: base_delay = -1"):
        load_config(
            data={"retry": {"providers": {"openai": {"base_delay": -1}}}},
            plugins=plugins,
            environ={},
        )


# -- through a real Pipeline -------------------------------------------------------------------


class Flaky:
    """A provider whose calls take outcomes from a script."""

    def __init__(self, name: str, outcomes: Iterable[BaseException] = ()) -> None:
        self.name = name
        self.outcomes = deque(outcomes)
        self.calls = 0

    async def complete(self, request: Request) -> Response:
        self.calls += 1
        if self.outcomes:
            raise self.outcomes.popleft()
        return Response("r", request.model, self.name, Message.assistant("fine"), "stop")

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        if self.outcomes:
            raise self.outcomes.popleft()
        yield StreamChunk(text="fine", finish_reason="stop")

    async def list_models(self) -> list[ModelInfo]:
        return []

    async def aclose(self) -> None:
        pass


async def test_pipeline_retries_with_the_built_in_stage() -> None:
    config = Config(retry=RetryConfig(enabled=True, base_delay=0.0, max_attempts=3))
    provider = Flaky("p", down(2))
    async with Pipeline.build(providers={"p": provider}, config=config) as pipe:
        assert (await pipe.complete("p/m", "hi")).text == "fine"
        assert provider.calls == 3
        retries = pipe.metrics.get("retries_total")
        assert retries is not None
        assert retries.values == {("p", "UnavailableError"): 2.0}
        provider.outcomes.extend(down(1))
        assert [c.text async for c in pipe.stream("p/m", "hi")] == ["fine"]
        assert provider.calls == 5


async def test_pipeline_retry_stage_is_not_built_when_disabled() -> None:
    provider = Flaky("p", down(1))
    async with Pipeline.build(providers={"p": provider}) as pipe:
        with pytest.raises(UnavailableError):
            await pipe.complete("p/m", "hi")
        assert provider.calls == 1
        assert pipe.metrics.get("retries_total") is None


async def test_pipeline_from_toml_retries_429_and_503_from_the_fake_server(
    tmp_path: Path,
) -> None:
    async with FakeOpenAI() as fake:
        file = tmp_path / "tollway.toml"
        file.write_text(
            f"""
[providers.openai]
base_url = "{fake.base_url}"
api_key = "sk-test"

[retry]
enabled = true
max_attempts = 2
base_delay = 0.001
max_delay = 0.002

[retry.providers.openai]
max_attempts = 3
max_retry_after = 0.5
"""
        )
        fake.fail(429, headers={"retry-after-ms": "5"})
        fake.fail(503)
        async with Pipeline.from_config(file) as pipe:
            response = await pipe.complete("openai/gpt-4o-mini", "hello")
            assert response.text == "Echo: hello"
            assert len(fake.requests) == 3
            # Past the provider's max_retry_after: not retried, the 429 is raised as it came.
            fake.fail(429, headers={"retry-after": "30"})
            with pytest.raises(RateLimitedError) as caught:
                await pipe.complete("openai/gpt-4o-mini", "hello")
            assert caught.value.retry_after == 30.0
            assert len(fake.requests) == 4
            # A 400 is the caller's to fix: one request.
            fake.fail(400)
            with pytest.raises(BadRequestError):
                await pipe.complete("openai/gpt-4o-mini", "hello")
            assert len(fake.requests) == 5
