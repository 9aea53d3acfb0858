"""Circuit breakers: opening on failure rate or a run of failures, half-open probes, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tollway.config import Config
from tollway.errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    CircuitOpenError,
    ContentFilteredError,
    MalformedResponseError,
    NotFoundError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
)
from tollway.metrics import Metrics
from tollway.pipeline import Pipeline
from tollway.resilience.breaker import CircuitBreakerStage, counts_as_failure
from tollway.resilience.config import CircuitBreakerConfig, RetryConfig
from tollway.types import Message, ModelInfo, Request, Response, StreamChunk


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class Endpoint:
    """The rest of the chain: answers, or raises ``failing`` while it is set; can be held."""

    def __init__(self) -> None:
        self.failing: BaseException | None = None
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Condition()

    async def until(self, calls: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: self.calls >= calls)

    async def complete(self, request: Request) -> Response:
        async with self.arrived:
            self.calls += 1
            self.arrived.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        if self.failing is not None:
            raise self.failing
        return Response("r", request.model, request.provider, Message.assistant("ok"))

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        yield StreamChunk(text="first")
        if self.failing is not None:
            raise self.failing
        yield StreamChunk(text="second", finish_reason="stop")


def make(**settings: object) -> tuple[CircuitBreakerStage, FakeClock, Metrics]:
    clock = FakeClock()
    metrics = Metrics()
    defaults: dict[str, object] = {
        "enabled": True,
        "consecutive_failures": 3,
        "minimum_calls": 100,
        "open_for": 10.0,
    }
    config = CircuitBreakerConfig(**{**defaults, **settings})  # type: ignore[arg-type]
    return CircuitBreakerStage(config, metrics, clock=clock), clock, metrics


def request(provider: str = "p") -> Request:
    return Request(f"{provider}/m", (Message.user("hi"),))


def state(metrics: Metrics, provider: str = "p") -> float:
    return metrics.gauge("circuit_state", "", ["provider"]).get(provider)


def transitions(metrics: Metrics, to: str, provider: str = "p") -> float:
    return metrics.counter("circuit_transitions_total", "", ["provider", "to"]).get(provider, to)


async def fail_times(stage: CircuitBreakerStage, endpoint: Endpoint, n: int, p: str = "p") -> None:
    for _ in range(n):
        with pytest.raises(ProviderError):
            await stage.complete(request(p), endpoint.complete)


async def test_opens_after_consecutive_failures_and_refuses_without_calling() -> None:
    stage, clock, metrics = make()
    endpoint = Endpoint()
    endpoint.failing = UnavailableError("down", provider="p", status=503)
    await fail_times(stage, endpoint, 3)
    assert state(metrics) == 2.0
    clock.now += 4.0
    with pytest.raises(CircuitOpenError) as caught:
        await stage.complete(request(), endpoint.complete)
    assert endpoint.calls == 3
    assert caught.value.provider == "p"
    assert caught.value.retry_after == pytest.approx(6.0)
    assert "'p'" in caught.value.message
    assert "6s" in caught.value.message
    assert transitions(metrics, "open") == 1


async def test_a_success_resets_the_run_of_failures() -> None:
    stage, _, metrics = make()
    endpoint = Endpoint()
    for _ in range(3):
        endpoint.failing = UnavailableError("down", provider="p", status=503)
        await fail_times(stage, endpoint, 2)
        endpoint.failing = None
        await stage.complete(request(), endpoint.complete)
    assert state(metrics) == 0.0
    assert transitions(metrics, "open") == 0


async def test_opens_on_failure_rate_once_minimum_calls_are_seen() -> None:
    stage, _, metrics = make(
        consecutive_failures=1000, minimum_calls=10, failure_rate=0.5, window=60.0
    )
    endpoint = Endpoint()
    # Alternate: never two failures in a row, but half of all calls fail.
    for n in range(9):
        endpoint.failing = UnavailableError("down", provider="p") if n % 2 else None
        try:
            await stage.complete(request(), endpoint.complete)
        except UnavailableError:
            pass
    assert state(metrics) == 0.0  # 4 of 9: below the rate, and too few calls anyway
    endpoint.failing = UnavailableError("down", provider="p")
    with pytest.raises(UnavailableError):
        await stage.complete(request(), endpoint.complete)
    assert state(metrics) == 2.0  # 5 of 10


async def test_failures_older_than_the_window_do_not_count() -> None:
    stage, clock, metrics = make(
        consecutive_failures=1000, minimum_calls=4, failure_rate=0.5, window=10.0
    )
    endpoint = Endpoint()
    endpoint.failing = UnavailableError("down", provider="p")
    # Three failures, then a success so they are not "in a row" that matters here.
    await fail_times(stage, endpoint, 1)
    clock.now += 1
    await fail_times(stage, endpoint, 1)
    clock.now += 1
    await fail_times(stage, endpoint, 1)
    assert state(metrics) == 0.0  # 3 calls: fewer than minimum_calls
    clock.now += 30.0  # they fall out of the window
    endpoint.failing = None
    for _ in range(3):
        await stage.complete(request(), endpoint.complete)
    endpoint.failing = UnavailableError("down", provider="p")
    await fail_times(stage, endpoint, 1)
    assert state(metrics) == 0.0  # 1 of 4 in the window
    await fail_times(stage, endpoint, 1)
    assert state(metrics) == 0.0  # 2 of 5
    await fail_times(stage, endpoint, 1)
    assert state(metrics) == 2.0  # 3 of 6


async def test_half_open_lets_one_probe_through_and_a_success_closes() -> None:
    stage, clock, metrics = make(half_open_probes=1)
    endpoint = Endpoint()
    endpoint.failing = UnavailableError("down", provider="p")
    await fail_times(stage, endpoint, 3)
    clock.now += 10.0
    endpoint.failing = None
    endpoint.gate = asyncio.Event()
    probe = asyncio.create_task(stage.complete(request(), endpoint.complete))
    await endpoint.until(4)
    assert state(metrics) == 1.0
    # A second call while the probe is out is refused, and says why.
    with pytest.raises(CircuitOpenError, match="trial call"):
        await stage.complete(request(), endpoint.complete)
    assert endpoint.calls == 4
    endpoint.gate.set()
    assert (await probe).text == "ok"
    assert state(metrics) == 0.0
    assert transitions(metrics, "half_open") == 1
    assert transitions(metrics, "closed") == 1
    endpoint.gate = None
    await stage.complete(request(), endpoint.complete)
    assert endpoint.calls == 5


async def test_half_open_allows_the_configured_number_of_concurrent_probes() -> None:
    stage, clock, _ = make(half_open_probes=2)
    endpoint = Endpoint()
    endpoint.failing = UnavailableError("down", provider="p")
    await fail_times(stage, endpoint, 3)
    clock.now += 10.0
    endpoint.failing = None
    endpoint.gate = asyncio.Event()
    probes = [asyncio.create_task(stage.complete(request(), endpoint.complete)) for _ in range(2)]
    await endpoint.until(5)
    with pytest.raises(CircuitOpenError):
        await stage.complete(request(), endpoint.complete)
    endpoint.gate.set()
    await asyncio.gather(*probes)
    assert endpoint.calls == 5


async def test_a_failed_probe_opens_the_breaker_again_for_open_for() -> None:
    stage, clock, metrics = make()
    endpoint = Endpoint()
    endpoint.failing = UnavailableError("down", provider="p")
    await fail_times(stage, endpoint, 3)
    clock.now += 10.0
    await fail_times(stage, endpoint, 1)  # the probe
    assert state(metrics) == 2.0
    assert transitions(metrics, "open") == 2
    clock.now += 9.0
    with pytest.raises(CircuitOpenError) as caught:
        await stage.complete(request(), endpoint.complete)
    assert caught.value.retry_after == pytest.approx(1.0)
    assert endpoint.calls == 4


async def test_a_probe_ending_in_a_client_error_frees_its_slot() -> None:
    stage, clock, metrics = make()
    endpoint = Endpoint()
    endpoint.failing = UnavailableError("down", provider="p")
    await fail_times(stage, endpoint, 3)
    clock.now += 10.0
    endpoint.failing = BadRequestError("bad", provider="p", status=400)
    await fail_times(stage, endpoint, 1)
    assert state(metrics) == 1.0  # neither closed nor opened again
    endpoint.failing = None
    await stage.complete(request(), endpoint.complete)  # the slot is free for the next probe
    assert state(metrics) == 0.0


async def test_a_cancelled_probe_frees_its_slot() -> None:
    stage, clock, _ = make()
    endpoint = Endpoint()
    endpoint.failing = UnavailableError("down", provider="p")
    await fail_times(stage, endpoint, 3)
    clock.now += 10.0
    endpoint.failing = None
    endpoint.gate = asyncio.Event()
    probe = asyncio.create_task(stage.complete(request(), endpoint.complete))
    await endpoint.until(4)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    endpoint.gate = None
    assert (await stage.complete(request(), endpoint.complete)).text == "ok"


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("bad", provider="p", status=400),
        AuthenticationError("who", provider="p", status=401),
        NotFoundError("no model", provider="p", status=404),
        ContentFilteredError("blocked"),
        BudgetExceededError("over budget"),
    ],
    ids=type,
)
async def test_client_errors_do_not_count_as_failures(error: Exception) -> None:
    stage, _, metrics = make(consecutive_failures=2, minimum_calls=2)
    endpoint = Endpoint()
    endpoint.failing = error
    for _ in range(10):
        with pytest.raises(type(error)):
            await stage.complete(request(), endpoint.complete)
    assert state(metrics) == 0.0
    assert not counts_as_failure(error)


@pytest.mark.parametrize(
    "error",
    [
        RateLimitedError("429", provider="p", status=429),
        UnavailableError("reset", provider="p"),
        ProviderTimeoutError("slow", provider="p"),
        MalformedResponseError("garbage", provider="p"),
        ProviderError("odd 500", provider="p", status=500),
        ConnectionResetError("raw"),
    ],
    ids=type,
)
def test_provider_side_failures_count(error: Exception) -> None:
    assert counts_as_failure(error)


def test_cancellation_does_not_count() -> None:
    assert not counts_as_failure(asyncio.CancelledError())
    assert not counts_as_failure(GeneratorExit())


async def test_each_provider_endpoint_has_its_own_breaker() -> None:
    stage, _, metrics = make()
    endpoint = Endpoint()
    endpoint.failing = UnavailableError("down", provider="a")
    await fail_times(stage, endpoint, 3, "a")
    endpoint.failing = None
    assert (await stage.complete(request("b"), endpoint.complete)).text == "ok"
    assert state(metrics, "a") == 2.0
    assert state(metrics, "b") == 0.0


async def test_stream_failing_midway_counts_and_a_finished_stream_succeeds() -> None:
    stage, _, metrics = make()
    endpoint = Endpoint()
    endpoint.failing = StreamInterruptedError("cut", provider="p")
    for _ in range(2):
        with pytest.raises(StreamInterruptedError):
            async for _chunk in stage.stream(request(), endpoint.stream):
                pass
    endpoint.failing = None
    texts = [c.text async for c in stage.stream(request(), endpoint.stream)]
    assert texts == ["first", "second"]  # resets the run of failures
    endpoint.failing = StreamInterruptedError("cut", provider="p")
    for _ in range(2):
        with pytest.raises(StreamInterruptedError):
            async for _chunk in stage.stream(request(), endpoint.stream):
                pass
    assert state(metrics) == 0.0
    with pytest.raises(StreamInterruptedError):
        async for _chunk in stage.stream(request(), endpoint.stream):
            pass
    assert state(metrics) == 2.0


async def test_a_stream_the_caller_abandons_is_neither_outcome() -> None:
    stage, clock, metrics = make()
    endpoint = Endpoint()
    endpoint.failing = UnavailableError("down", provider="p")
    await fail_times(stage, endpoint, 3)
    clock.now += 10.0
    endpoint.failing = None
    iterator = stage.stream(request(), endpoint.stream)
    assert (await anext(iterator)).text == "first"  # the probe
    await iterator.aclose()  # type: ignore[attr-defined]
    assert state(metrics) == 1.0
    # Its probe slot is free again.
    assert [c.text async for c in stage.stream(request(), endpoint.stream)] == ["first", "second"]
    assert state(metrics) == 0.0


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        CircuitBreakerConfig(failure_rate=1.5)
    with pytest.raises(ValueError, match="half_open_probes"):
        CircuitBreakerConfig(half_open_probes=0)


# -- through a real Pipeline -------------------------------------------------------------------


class Down:
    name = "p"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: Request) -> Response:
        self.calls += 1
        raise UnavailableError("p is down", provider="p", status=503)

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        raise UnavailableError("p is down", provider="p", status=503)
        yield StreamChunk()  # pragma: no cover

    async def list_models(self) -> list[ModelInfo]:
        return []

    async def aclose(self) -> None:
        pass


async def test_pipeline_breaker_inside_retries_stops_the_retries_once_open() -> None:
    config = Config(
        retry=RetryConfig(enabled=True, max_attempts=10, base_delay=0.0),
        circuit_breaker=CircuitBreakerConfig(enabled=True, consecutive_failures=3),
    )
    provider = Down()
    async with Pipeline.build(providers={"p": provider}, config=config) as pipe:
        # Three attempts fail and open the breaker; the third's error is retried, and that
        # fourth attempt is refused by the breaker, which is not retried.
        with pytest.raises(CircuitOpenError):
            await pipe.complete("p/m", "hi")
        assert provider.calls == 3
        with pytest.raises(CircuitOpenError):
            async for _chunk in pipe.stream("p/m", "hi"):
                pass
        assert provider.calls == 3
        snapshot = pipe.metrics.snapshot()
        assert snapshot["tollway_circuit_state"]["values"] == {"provider=p": 2.0}
        assert snapshot["tollway_circuit_transitions_total"]["values"] == {"provider=p,to=open": 1}
        assert snapshot["tollway_retries_total"]["values"] == {
            "provider=p,error=UnavailableError": 3
        }
