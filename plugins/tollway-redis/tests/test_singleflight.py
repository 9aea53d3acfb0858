"""Single-flight across processes through a real Redis server.

Two pipelines, each with its own RedisCoalescer (its own client and state), stand for two
processes; one test starts real subprocesses. Every key lives under a unique namespace and is
deleted at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from tollway.cache.keys import request_key
from tollway.config import Config
from tollway.errors import (
    ConfigError,
    RateLimitedError,
    StreamInterruptedError,
    TollwayError,
    UnavailableError,
)
from tollway.metrics import Metrics
from tollway.pipeline import Pipeline
from tollway.resilience.config import SingleFlightConfig
from tollway.resilience.singleflight import KEY_NAMESPACE, SingleFlightStage
from tollway.testing import FakeOpenAI
from tollway.testing.services import require_redis, unique_namespace
from tollway.types import StreamChunk, ToolCallDelta, Usage
from tollway_redis.singleflight import (
    RedisCoalescer,
    _dump_chunk,
    _dump_error,
    _load_chunk,
    _load_error,
)

MODEL = "openai/gpt-4o-mini"
LONG_TEXT = " ".join(f"word{n}" for n in range(16))


@pytest_asyncio.fixture
async def redis_url() -> str:
    return require_redis()


@pytest_asyncio.fixture
async def namespace(redis_url: str) -> AsyncIterator[str]:
    ns = unique_namespace("sf")
    yield ns
    client = Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{{{ns}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    # Latency keeps the leader's call in flight while the other "processes" claim theirs.
    async with FakeOpenAI(latency=0.3) as server:
        yield server


def make_pipe(fake: FakeOpenAI, url: str, namespace: str, **settings: Any) -> Pipeline:
    config = Config(
        single_flight=SingleFlightConfig(
            enabled=True, backend="redis", url=url, namespace=namespace, **settings
        )
    )
    return Pipeline.build(
        providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}}, config=config
    )


def chat_requests(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


def metric(pipe: Pipeline, name: str, *labels: str) -> float:
    found = pipe.metrics.get(name)
    return float(found.values.get(labels, 0.0)) if found is not None else 0.0


async def wait_for(condition: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def lock_key(pipe: Pipeline, namespace: str, text: str) -> tuple[str, str]:
    key = request_key(pipe.request(MODEL, text), KEY_NAMESPACE)
    base = f"{{{namespace}:{key}}}"
    return base + ":lock", base + ":out:"


async def test_two_processes_make_one_upstream_call(
    fake: FakeOpenAI, redis_url: str, namespace: str
) -> None:
    fake.reply("shared answer")
    async with (
        make_pipe(fake, redis_url, namespace) as one,
        make_pipe(fake, redis_url, namespace) as two,
    ):
        calls = [p.complete(MODEL, "hello") for p in (one, two) for _ in range(5)]
        replies = await asyncio.gather(*calls)
        assert chat_requests(fake) == 1
        assert {r.text for r in replies} == {"shared answer"}
        leaders = [metric(p, "singleflight_leaders_total") for p in (one, two)]
        assert sorted(leaders) == [0, 1]
        follower = two if leaders[0] else one
        # One Redis follower in the other process; its four neighbours joined it locally.
        assert metric(follower, "singleflight_joins_total", "redis") == 1
        assert metric(follower, "singleflight_joins_total", "local") == 4
        assert metric(one, "singleflight_inflight") == metric(two, "singleflight_inflight") == 0

        # The claim is given back and the outcome expires soon: a later call goes upstream.
        lock, _ = lock_key(one, namespace, "hello")
        client = Redis.from_url(redis_url)
        try:
            assert await client.exists(lock) == 0
            outs = [k async for k in client.scan_iter(match=f"{{{namespace}:*:out:*")]
            assert len(outs) == 1
            assert 0 < await client.pttl(outs[0]) <= 30_000
        finally:
            await client.aclose()
        fake.reply("fresh answer")
        assert (await two.complete(MODEL, "hello")).text == "fresh answer"
        assert chat_requests(fake) == 2


async def test_different_calls_are_not_coalesced_across_processes(
    fake: FakeOpenAI, redis_url: str, namespace: str
) -> None:
    async with (
        make_pipe(fake, redis_url, namespace) as one,
        make_pipe(fake, redis_url, namespace) as two,
    ):
        replies = await asyncio.gather(one.complete(MODEL, "a"), two.complete(MODEL, "b"))
        assert [r.text for r in replies] == ["Echo: a", "Echo: b"]
        assert chat_requests(fake) == 2


async def test_a_failure_reaches_the_other_process_as_the_same_error(
    fake: FakeOpenAI, redis_url: str, namespace: str
) -> None:
    fake.fail(500, "upstream exploded")
    async with (
        make_pipe(fake, redis_url, namespace) as one,
        make_pipe(fake, redis_url, namespace) as two,
    ):
        results = await asyncio.gather(
            *(p.complete(MODEL, "boom") for p in (one, two, one, two)), return_exceptions=True
        )
        assert chat_requests(fake) == 1
        assert all(isinstance(r, UnavailableError) for r in results), results
        first = results[0]
        assert isinstance(first, UnavailableError)
        for other in results:
            assert isinstance(other, UnavailableError)
            assert (str(other), other.status, other.provider, other.retryable) == (
                str(first),
                500,
                "openai",
                True,
            )


async def test_streams_fan_out_across_processes(redis_url: str, namespace: str) -> None:
    async with FakeOpenAI(latency=0.3, chunk_delay=0.002) as fake:
        fake.reply(LONG_TEXT)
        async with (
            make_pipe(fake, redis_url, namespace) as one,
            make_pipe(fake, redis_url, namespace) as two,
        ):

            async def consume(pipe: Pipeline, pause: float) -> list[StreamChunk]:
                chunks = []
                async for chunk in pipe.stream(MODEL, "tell me"):
                    chunks.append(chunk)
                    await asyncio.sleep(pause)
                return chunks

            results = await asyncio.gather(
                *(consume(p, pause) for p in (one, two) for pause in (0, 0.001, 0.004))
            )
            assert chat_requests(fake) == 1
            assert all(r == results[0] for r in results)
            assert "".join(c.text for c in results[0]) == LONG_TEXT
            assert results[0][-1].usage == results[-1][-1].usage is not None


async def test_a_mid_stream_error_reaches_the_other_process(redis_url: str, namespace: str) -> None:
    async with FakeOpenAI(latency=0.3) as fake:
        fake.fault("mid_stream_error")
        async with (
            make_pipe(fake, redis_url, namespace) as one,
            make_pipe(fake, redis_url, namespace) as two,
        ):

            async def consume(pipe: Pipeline) -> tuple[list[StreamChunk], BaseException | None]:
                chunks: list[StreamChunk] = []
                try:
                    async for chunk in pipe.stream(MODEL, "tell me"):
                        chunks.append(chunk)
                except TollwayError as exc:
                    return chunks, exc
                return chunks, None

            (chunks_one, error_one), (chunks_two, error_two) = await asyncio.gather(
                consume(one), consume(two)
            )
            assert chat_requests(fake) == 1
            assert chunks_one
            assert chunks_one == chunks_two
            assert error_one is not None
            assert error_two is not None
            assert type(error_one) is type(error_two)
            assert str(error_one) == str(error_two)


async def test_a_dead_leader_is_replaced(fake: FakeOpenAI, redis_url: str, namespace: str) -> None:
    fake.reply("taken over")
    async with make_pipe(fake, redis_url, namespace, heartbeat=0.1) as pipe:
        lock, _ = lock_key(pipe, namespace, "orphan")
        client = Redis.from_url(redis_url)
        try:
            # A leader that claimed the call, then died: it never renews and never publishes.
            await client.set(lock, b"dead-leader", px=150)
            reply = await asyncio.wait_for(pipe.complete(MODEL, "orphan"), 20)
        finally:
            await client.aclose()
        assert reply.text == "taken over"
        assert chat_requests(fake) == 1
        assert metric(pipe, "singleflight_leaders_total") == 1


async def test_a_dead_stream_leader_is_replaced_if_nothing_was_delivered(
    fake: FakeOpenAI, redis_url: str, namespace: str
) -> None:
    async with make_pipe(fake, redis_url, namespace, heartbeat=0.1) as pipe:
        lock, _ = lock_key(pipe, namespace, "orphan")
        client = Redis.from_url(redis_url)
        try:
            await client.set(lock, b"dead-leader", px=150)
            chunks = [c async for c in pipe.stream(MODEL, "orphan")]
        finally:
            await client.aclose()
        assert "".join(c.text for c in chunks) == "Echo: orphan"
        assert chat_requests(fake) == 1


async def test_a_stream_leader_dying_part_way_interrupts_its_followers(
    fake: FakeOpenAI, redis_url: str, namespace: str
) -> None:
    async with make_pipe(fake, redis_url, namespace, heartbeat=0.1) as pipe:
        lock, out = lock_key(pipe, namespace, "orphan")
        client = Redis.from_url(redis_url)
        received: list[StreamChunk] = []
        try:
            await client.set(lock, b"dead-leader", px=150)
            await client.xadd(out + "dead-leader", {b"c": _dump_chunk(StreamChunk(text="half"))})
            stream = pipe.stream(MODEL, "orphan")
            received.append(await anext(stream))
            with pytest.raises(StreamInterruptedError, match="send the call again"):
                await anext(stream)
        finally:
            await client.aclose()
        assert received == [StreamChunk(text="half")]
        # A new call could not continue the dead one's answer, so none was made.
        assert chat_requests(fake) == 0


async def test_a_leader_whose_callers_all_left_hands_over_at_once(
    redis_url: str, namespace: str
) -> None:
    async with FakeOpenAI(latency=0.3) as fake:
        fake.reply("first try", times=1)
        fake.reply("second try", times=1)
        async with (
            make_pipe(fake, redis_url, namespace) as one,
            make_pipe(fake, redis_url, namespace) as two,
        ):
            leaving = asyncio.create_task(one.complete(MODEL, "hand over"))
            await wait_for(lambda: chat_requests(fake) == 1, "the leader's request")
            staying = asyncio.create_task(two.complete(MODEL, "hand over"))
            await asyncio.sleep(0.05)  # let it claim and start following; not required
            leaving.cancel()
            reply = await asyncio.wait_for(staying, 20)
            assert reply.text == "second try"
            assert chat_requests(fake) == 2
            assert metric(two, "singleflight_leaders_total") == 1


async def test_redis_down_sends_the_call_on_its_own(fake: FakeOpenAI, namespace: str) -> None:
    async with make_pipe(fake, "redis://127.0.0.1:1/0", namespace) as pipe:
        replies = await asyncio.gather(*(pipe.complete(MODEL, "hi") for _ in range(3)))
        assert [r.text for r in replies] == ["Echo: hi"] * 3
        # Still coalesced within the process.
        assert chat_requests(fake) == 1


async def test_real_processes_share_one_upstream_call(redis_url: str, namespace: str) -> None:
    script = textwrap.dedent(
        """
        import asyncio, json, sys
        from tollway.config import Config
        from tollway.pipeline import Pipeline
        from tollway.resilience.config import SingleFlightConfig

        async def main(base_url, url, namespace):
            config = Config(single_flight=SingleFlightConfig(
                enabled=True, backend="redis", url=url, namespace=namespace))
            pipe = Pipeline.build(
                providers={"openai": {"base_url": base_url, "api_key": "sk-test"}},
                config=config)
            async with pipe:
                print("ready", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                reply = await pipe.complete("openai/gpt-4o-mini", "across processes")
                leaders = pipe.metrics.get("singleflight_leaders_total").values.get((), 0)
                print(json.dumps({"text": reply.text, "leaders": leaders}), flush=True)

        asyncio.run(main(*sys.argv[1:4]))
        """
    )
    async with FakeOpenAI(latency=0.5) as fake:
        fake.reply("one answer for all")
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                script,
                fake.base_url,
                redis_url,
                namespace,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 60)
                if line.strip() != b"ready":
                    _, err = await proc.communicate()
                    raise AssertionError(f"subprocess failed to start: {line!r} {err.decode()}")
            for proc in procs:  # everyone goes at once
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            results = []
            for proc in procs:
                out, err = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 0, err.decode()
                results.append(json.loads(out.decode().strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        assert chat_requests(fake) == 1
        assert [r["text"] for r in results] == ["one answer for all"] * 2
        assert sum(r["leaders"] for r in results) == 1


async def test_the_redis_backend_is_selected_by_config(
    fake: FakeOpenAI, redis_url: str, namespace: str
) -> None:
    async with make_pipe(fake, redis_url, namespace) as pipe:
        stage = pipe._state.builtin["single_flight"][1]
        assert isinstance(stage, SingleFlightStage)
        assert isinstance(stage.coalescer, RedisCoalescer)


async def test_bad_timings_are_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat = 0"):
        SingleFlightConfig(heartbeat=0)
    client = Redis.from_url(require_redis())
    try:
        with pytest.raises(ConfigError, match=r"single_flight\.result_ttl"):
            RedisCoalescer(client, Metrics(), result_ttl=-1)
    finally:
        await client.aclose()


# -- what travels through Redis ------------------------------------------------------------------


def test_errors_are_rebuilt_as_the_same_class_with_their_fields() -> None:
    original = RateLimitedError(
        "openai returned HTTP 429: slow down",
        provider="openai",
        status=429,
        provider_message="slow down",
        request_id="req_1",
        code="rate_limit_exceeded",
        retry_after=2.5,
    )
    rebuilt = _load_error(_dump_error(original))
    assert type(rebuilt) is RateLimitedError
    assert isinstance(rebuilt, RateLimitedError)
    assert rebuilt.to_dict() == original.to_dict()
    assert str(rebuilt) == str(original)

    config_error = ConfigError("bad value", file="t.toml", key="cache.ttl")
    again = _load_error(_dump_error(config_error))
    assert isinstance(again, ConfigError)
    assert (str(again), again.file, again.key) == (str(config_error), "t.toml", "cache.ttl")

    foreign = _load_error(_dump_error(ValueError("not json")))
    assert type(foreign) is ValueError
    assert str(foreign) == "not json"
    unknown = _load_error(json.dumps({"type": "os.system", "message": "x"}).encode())
    assert type(unknown) is TollwayError


def test_chunks_survive_the_trip() -> None:
    chunks = [
        StreamChunk(),
        StreamChunk(text="héllo ✓", id="c1", model="gpt-4o-mini"),
        StreamChunk(tool_calls=(ToolCallDelta(0, "call_1", "lookup", '{"q"'),)),
        StreamChunk(finish_reason="stop", usage=Usage(10, 5, 2, 1, 3)),
    ]
    assert [_load_chunk(_dump_chunk(c)) for c in chunks] == chunks
