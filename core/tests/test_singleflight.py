"""Single-flight within a process: identical calls in flight share one upstream call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from tollway.config import Config
from tollway.errors import ConfigError, TollwayError, UnavailableError
from tollway.metrics import Metrics
from tollway.pipeline import Pipeline
from tollway.resilience.config import SingleFlightConfig
from tollway.resilience.singleflight import (
    LocalCoalescer,
    SharedCallCancelledError,
    SingleFlightStage,
)
from tollway.testing import FakeOpenAI
from tollway.types import Message, Response, StreamChunk

MODEL = "openai/gpt-4o-mini"
LONG_TEXT = " ".join(f"word{n}" for n in range(24))


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    # Latency keeps the first call in flight while the others arrive; nothing depends on
    # how long it is, only that the fake does not answer before the loop runs them all.
    async with FakeOpenAI(latency=0.2) as server:
        yield server


def make_pipe(fake: FakeOpenAI, **single_flight: Any) -> Pipeline:
    config = Config(single_flight=SingleFlightConfig(enabled=True, **single_flight))
    return Pipeline.build(
        providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}}, config=config
    )


def chat_requests(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


def metric(pipe: Pipeline, name: str, *labels: str) -> float:
    found = pipe.metrics.get(name)
    assert found is not None, f"metric {name} is not registered"
    value: float = found.values.get(labels, 0.0)
    return value


async def wait_for(condition: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def response(text: str) -> Response:
    return Response("r", MODEL, "openai", Message.assistant(text))


# -- through a real pipeline ------------------------------------------------------------------


async def test_twenty_identical_calls_make_one_upstream_call(fake: FakeOpenAI) -> None:
    fake.reply("the one answer")
    async with make_pipe(fake) as pipe:
        replies = await asyncio.gather(*(pipe.complete(MODEL, "hello") for _ in range(20)))
        assert chat_requests(fake) == 1
        assert {r.text for r in replies} == {"the one answer"}
        assert metric(pipe, "singleflight_leaders_total") == 1
        assert metric(pipe, "singleflight_joins_total", "local") == 19
        assert metric(pipe, "singleflight_inflight") == 0
        # Once the call is over, the next identical call goes upstream again: not a cache.
        fake.reply("a new answer")
        assert (await pipe.complete(MODEL, "hello")).text == "a new answer"
        assert chat_requests(fake) == 2


async def test_different_calls_are_not_coalesced(fake: FakeOpenAI) -> None:
    async with make_pipe(fake) as pipe:
        replies = await asyncio.gather(
            pipe.complete(MODEL, "one"),
            pipe.complete(MODEL, "two"),
            pipe.complete(MODEL, "one", temperature=0.5),
            pipe.complete("openai/gpt-4o", "one"),
        )
        assert chat_requests(fake) == 4
        assert [r.text for r in replies] == ["Echo: one", "Echo: two", "Echo: one", "Echo: one"]


async def test_who_asked_does_not_split_a_call(fake: FakeOpenAI) -> None:
    async with make_pipe(fake) as pipe:
        await asyncio.gather(
            pipe.complete(MODEL, "same", user="u1"),
            pipe.complete(MODEL, "same", user="u2", tags={"team": "x"}),
        )
        assert chat_requests(fake) == 1


async def test_a_call_can_opt_out(fake: FakeOpenAI) -> None:
    async with make_pipe(fake) as pipe:
        await asyncio.gather(
            pipe.complete(MODEL, "hi"),
            pipe.complete(MODEL, "hi", controls={"single_flight": False}),
        )
        assert chat_requests(fake) == 2


async def test_complete_and_stream_of_the_same_request_are_different_calls(
    fake: FakeOpenAI,
) -> None:
    async with make_pipe(fake) as pipe:

        async def streamed() -> str:
            return "".join([c.text async for c in pipe.stream(MODEL, "hi")])

        reply, text = await asyncio.gather(pipe.complete(MODEL, "hi"), streamed())
        assert reply.text == text == "Echo: hi"
        assert chat_requests(fake) == 2


async def test_a_failure_reaches_every_waiter(fake: FakeOpenAI) -> None:
    fake.fail(500)
    async with make_pipe(fake) as pipe:
        results = await asyncio.gather(
            *(pipe.complete(MODEL, "boom") for _ in range(10)), return_exceptions=True
        )
        assert chat_requests(fake) == 1
        assert all(isinstance(r, UnavailableError) for r in results), results
        errors = [r for r in results if isinstance(r, UnavailableError)]
        assert {(e.status, str(e)) for e in errors} == {(500, str(errors[0]))}
        # Each waiter raised its own copy, so no traceback collects the others' frames.
        assert len({id(e) for e in errors}) == 10


async def test_cancelling_the_first_caller_does_not_cancel_the_others(fake: FakeOpenAI) -> None:
    fake.reply("still here")
    async with make_pipe(fake) as pipe:
        tasks = [asyncio.create_task(pipe.complete(MODEL, "hold")) for _ in range(3)]
        await wait_for(lambda: chat_requests(fake) == 1, "the upstream request")
        tasks[0].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        assert [r.text for r in done[1:] if isinstance(r, Response)] == ["still here"] * 2
        assert chat_requests(fake) == 1


async def test_cancelling_every_caller_cancels_the_upstream_call() -> None:
    async with FakeOpenAI(latency=30.0) as slow, make_pipe(slow) as pipe:
        tasks = [asyncio.create_task(pipe.complete(MODEL, "hold")) for _ in range(3)]
        await wait_for(lambda: chat_requests(slow) == 1, "the upstream request")
        (endpoint,) = pipe.health().values()
        assert endpoint["in_use"] == 1
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The upstream request was cancelled: its connection is no longer in use.
        await wait_for(
            lambda: next(iter(pipe.health().values()))["in_use"] == 0,
            "the upstream connection to be released",
        )
        assert metric(pipe, "singleflight_inflight") == 0


async def test_stream_subscribers_at_different_speeds_get_the_same_chunks() -> None:
    async with FakeOpenAI(latency=0.1, chunk_delay=0.002) as fake:
        fake.reply(LONG_TEXT)
        async with make_pipe(fake) as pipe:

            async def consume(pause: float) -> list[StreamChunk]:
                chunks = []
                async for chunk in pipe.stream(MODEL, "tell me"):
                    chunks.append(chunk)
                    await asyncio.sleep(pause)
                return chunks

            results = await asyncio.gather(*(consume(p) for p in (0, 0, 0.001, 0.003, 0.01)))
            assert chat_requests(fake) == 1
            assert all(r == results[0] for r in results)
            assert "".join(c.text for c in results[0]) == LONG_TEXT
            assert results[0][-1].usage is not None
            assert metric(pipe, "singleflight_joins_total", "local") == 4


async def test_a_late_joiner_gets_every_chunk_from_the_start() -> None:
    async with FakeOpenAI(chunk_delay=0.02) as fake:
        fake.reply(LONG_TEXT)
        async with make_pipe(fake) as pipe:
            first = pipe.stream(MODEL, "tell me")
            head = [await anext(first)]
            head.append(await anext(first))
            # The stream is part-way through: a new identical call joins it.
            late = [c async for c in pipe.stream(MODEL, "tell me")]
            rest = [c async for c in first]
            assert late == head + rest
            assert "".join(c.text for c in late) == LONG_TEXT
            assert chat_requests(fake) == 1


async def test_a_mid_stream_error_reaches_every_subscriber_after_its_chunks() -> None:
    async with FakeOpenAI(latency=0.1) as fake:
        fake.fault("mid_stream_error")
        async with make_pipe(fake) as pipe:

            async def consume() -> tuple[list[StreamChunk], BaseException | None]:
                chunks: list[StreamChunk] = []
                try:
                    async for chunk in pipe.stream(MODEL, "tell me"):
                        chunks.append(chunk)
                except TollwayError as exc:
                    return chunks, exc
                return chunks, None

            results = await asyncio.gather(*(consume() for _ in range(4)))
            assert chat_requests(fake) == 1
            chunks, error = results[0]
            assert chunks
            assert error is not None
            for other_chunks, other_error in results:
                assert other_chunks == chunks
                assert type(other_error) is type(error)
                assert str(other_error) == str(error)


async def test_an_unknown_backend_names_the_ones_available(fake: FakeOpenAI) -> None:
    with pytest.raises(ConfigError) as caught:
        make_pipe(fake, backend="memcached")
    message = str(caught.value)
    assert "single_flight.backend" in message
    assert "'memcached'" in message
    assert "local" in message


# -- the local coalescer on its own -------------------------------------------------------------


class Upstream:
    """A call that waits for its gate, and records whether it finished or was cancelled."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.cancelled = 0

    async def complete(self) -> Response:
        self.calls += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return response(f"answer {self.calls}")


async def test_the_upstream_call_finishes_after_its_starter_is_cancelled() -> None:
    coalescer = LocalCoalescer(Metrics())
    upstream = Upstream()
    first = asyncio.create_task(coalescer.complete("k", upstream.complete))
    await wait_for(lambda: upstream.calls == 1, "the call to start")
    second = asyncio.create_task(coalescer.complete("k", upstream.complete))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    upstream.gate.set()
    assert (await second).text == "answer 1"
    assert upstream.cancelled == 0
    assert upstream.calls == 1
    await coalescer.aclose()


async def test_when_every_waiter_leaves_the_call_is_cancelled_and_the_next_starts_afresh() -> None:
    metrics = Metrics()
    coalescer = LocalCoalescer(metrics)
    upstream = Upstream()
    waiters = [asyncio.create_task(coalescer.complete("k", upstream.complete)) for _ in range(3)]
    await wait_for(lambda: upstream.calls == 1, "the call to start")
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await wait_for(lambda: upstream.cancelled == 1, "the upstream call to be cancelled")
    assert coalescer.inflight == 0
    upstream.gate.set()
    assert (await coalescer.complete("k", upstream.complete)).text == "answer 2"
    assert metrics.counter("singleflight_leaders_total", "").get() == 2
    await coalescer.aclose()


async def test_closing_the_coalescer_fails_its_waiters_clearly() -> None:
    coalescer = LocalCoalescer(Metrics())
    upstream = Upstream()
    waiter = asyncio.create_task(coalescer.complete("k", upstream.complete))
    await wait_for(lambda: upstream.calls == 1, "the call to start")
    await coalescer.aclose()
    with pytest.raises(SharedCallCancelledError, match="send the call again"):
        await waiter


async def test_a_slow_subscriber_holds_up_neither_the_others_nor_the_provider() -> None:
    coalescer = LocalCoalescer(Metrics())
    produced = asyncio.Event()
    pieces = [f"p{n}" for n in range(50)]

    async def provider() -> AsyncIterator[StreamChunk]:
        for piece in pieces:
            yield StreamChunk(text=piece)
        produced.set()

    slow = coalescer.stream("k", provider)
    first = await anext(slow)  # subscribed; now it stops reading
    fast = [c.text async for c in coalescer.stream("k", provider)]
    assert fast == pieces
    assert produced.is_set()
    assert [first.text] + [c.text async for c in slow] == pieces


async def test_the_provider_stream_closes_when_its_last_subscriber_leaves() -> None:
    coalescer = LocalCoalescer(Metrics())
    closed = asyncio.Event()
    release = asyncio.Event()

    async def provider() -> AsyncIterator[StreamChunk]:
        try:
            yield StreamChunk(text="a")
            await release.wait()
            yield StreamChunk(text="b")
        finally:
            closed.set()

    one = coalescer.stream("k", provider)
    two = coalescer.stream("k", provider)
    assert (await anext(one)).text == "a"
    assert (await anext(two)).text == "a"
    await one.aclose()  # type: ignore[attr-defined]
    assert not closed.is_set()  # the other subscriber still reads
    await two.aclose()  # type: ignore[attr-defined]
    assert closed.is_set()
    assert coalescer.inflight == 0


async def test_the_stage_is_built_from_the_config_with_the_registered_backend() -> None:
    config = Config(single_flight=SingleFlightConfig(enabled=True))
    async with Pipeline.build(config=config) as pipe:
        stage = pipe._state.builtin["single_flight"][1]
        assert isinstance(stage, SingleFlightStage)
        assert isinstance(stage.coalescer, LocalCoalescer)
    async with Pipeline.build() as pipe:
        assert "single_flight" not in pipe._state.builtin  # off: not built at all
