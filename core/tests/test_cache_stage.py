"""The cache stage through a real Pipeline and the fake OpenAI server, and on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_asyncio

from tollway import Pipeline
from tollway.cache.backend import CacheEntry, encode_entry
from tollway.cache.config import CacheConfig
from tollway.cache.keys import request_key
from tollway.cache.memory import MemoryCacheBackend
from tollway.cache.stage import CacheStage
from tollway.config import Config, load_config
from tollway.errors import ConfigError, StreamInterruptedError, TollwayError, UnavailableError
from tollway.metrics import Metrics
from tollway.plugins import build_plugin_manager
from tollway.streaming import StreamAssembler
from tollway.testing.fake_openai import FakeOpenAI
from tollway.testing.services import require_redis, unique_namespace
from tollway.types import Message, Request, Response, StreamChunk, Usage

MODEL = "openai/gpt-4o-mini"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def build(fake: FakeOpenAI, **cache: Any) -> Pipeline:
    config = Config(cache=CacheConfig(enabled=True, **cache), aliases={"mini": MODEL})
    return Pipeline.build(
        providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}}, config=config
    )


def stage_of(pipe: Pipeline) -> CacheStage:
    stage = pipe.cache
    assert isinstance(stage, CacheStage)
    return stage


def counter(pipe: Pipeline, name: str, *labels: str) -> float:
    metric = pipe.metrics.get(name)
    assert metric is not None, name
    value: float = metric.values.get(labels or ("tollway",), 0.0)
    return value


def chat_requests(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


# -- complete ----------------------------------------------------------------------------------


async def test_a_repeated_call_is_answered_from_the_cache(fake: FakeOpenAI) -> None:
    async with build(fake) as pipe:
        first = await pipe.complete(MODEL, "hello there", user="u-1")
        second = await pipe.complete(MODEL, "hello there", user="u-2", tags={"app": "x"})
        assert chat_requests(fake) == 1
        assert second.text == first.text
        assert (second.id, second.usage, second.finish_reason) == (
            first.id,
            first.usage,
            first.finish_reason,
        )
        assert second.cost is None
        assert second.latency_s is None
        assert (first.cached, second.cached) == (False, True)
        assert counter(pipe, "cache_hits_total") == 1
        assert counter(pipe, "cache_misses_total") == 1
        assert counter(pipe, "cache_saved_tokens_total") == first.usage.total_tokens > 0


async def test_tool_calls_come_back_from_the_cache(fake: FakeOpenAI) -> None:
    fake.reply(tool_calls=[{"id": "call_1", "name": "lookup", "arguments": '{"q":"x"}'}])
    async with build(fake) as pipe:
        first = await pipe.complete(MODEL, "use the tool")
        second = await pipe.complete(MODEL, "use the tool")
        assert chat_requests(fake) == 1
        assert second.tool_calls == first.tool_calls
        assert second.tool_calls[0].arguments == '{"q":"x"}'
        assert second.finish_reason == "tool_calls"


async def test_a_different_parameter_is_a_different_entry(fake: FakeOpenAI) -> None:
    async with build(fake) as pipe:
        await pipe.complete(MODEL, "hi", temperature=0.2)
        await pipe.complete(MODEL, "hi", temperature=0.7)
        await pipe.complete(MODEL, "hi", temperature=0.2, max_tokens=5)
        assert chat_requests(fake) == 3
        await pipe.complete("mini", "hi", temperature=0.2)  # an alias of the same model
        assert chat_requests(fake) == 3


async def test_no_cache_skips_the_read_but_stores_the_fresh_answer(fake: FakeOpenAI) -> None:
    fake.reply("old")
    fake.reply("new")
    async with build(fake) as pipe:
        assert (await pipe.complete(MODEL, "q")).text == "old"
        assert (await pipe.complete(MODEL, "q", cache="no-cache")).text == "new"
        assert (await pipe.complete(MODEL, "q")).text == "new"
        assert chat_requests(fake) == 2


async def test_no_store_reads_but_never_writes(fake: FakeOpenAI) -> None:
    fake.reply("first")
    fake.reply("second")
    fake.reply("third")
    async with build(fake) as pipe:
        assert (await pipe.complete(MODEL, "q", cache="no-store")).text == "first"
        assert (await pipe.complete(MODEL, "q")).text == "second"  # nothing was stored
        assert (await pipe.complete(MODEL, "q", cache="no-store")).text == "second"  # a hit
        assert chat_requests(fake) == 2


async def test_off_neither_reads_nor_writes_nor_counts(fake: FakeOpenAI) -> None:
    fake.reply("a")
    fake.reply("b")
    fake.reply("c")
    async with build(fake) as pipe:
        assert (await pipe.complete(MODEL, "q")).text == "a"
        assert (await pipe.complete(MODEL, "q", cache="off")).text == "b"
        assert (await pipe.complete(MODEL, "q")).text == "a"
        assert counter(pipe, "cache_misses_total") == 1
        assert counter(pipe, "cache_hits_total") == 1


async def test_errors_are_not_cached(fake: FakeOpenAI) -> None:
    fake.fail(503)
    async with build(fake) as pipe:
        with pytest.raises(UnavailableError):
            await pipe.complete(MODEL, "q")
        ok = await pipe.complete(MODEL, "q")
        again = await pipe.complete(MODEL, "q")
        assert again.text == ok.text
        assert chat_requests(fake) == 2


@pytest.mark.parametrize("finish_reason", ["content_filter"])
async def test_filtered_answers_are_not_cached(fake: FakeOpenAI, finish_reason: str) -> None:
    fake.reply("[filtered]", finish_reason=finish_reason)
    async with build(fake) as pipe:
        await pipe.complete(MODEL, "q")
        await pipe.complete(MODEL, "q")
        assert chat_requests(fake) == 2


async def test_a_truncated_answer_is_cached_since_max_tokens_is_in_the_key(
    fake: FakeOpenAI,
) -> None:
    fake.reply("cut", finish_reason="length")
    async with build(fake) as pipe:
        await pipe.complete(MODEL, "q", max_tokens=1)
        assert (await pipe.complete(MODEL, "q", max_tokens=1)).finish_reason == "length"
        assert chat_requests(fake) == 1


async def test_tags_invalidate_their_answers_only(fake: FakeOpenAI) -> None:
    async with build(fake) as pipe:
        await pipe.complete(MODEL, "research question", tags={"team": "research"})
        await pipe.complete(MODEL, "ops question", tags={"team": "ops"})
        assert await stage_of(pipe).invalidate(tag="team:research") == 1
        await pipe.complete(MODEL, "research question")
        await pipe.complete(MODEL, "ops question")
        assert chat_requests(fake) == 3


async def test_invalidate_by_model_alias_and_by_namespace(fake: FakeOpenAI) -> None:
    async with build(fake) as pipe:
        stage = stage_of(pipe)
        await pipe.complete(MODEL, "a")
        await pipe.complete("openai/gpt-4o", "a")
        assert await stage.invalidate(model="mini") == 1
        await pipe.complete("openai/gpt-4o", "a")
        assert chat_requests(fake) == 2
        assert await stage.invalidate() == 1  # the whole namespace
        await pipe.complete("openai/gpt-4o", "a")
        assert chat_requests(fake) == 3


async def test_namespaces_keep_their_answers_apart(fake: FakeOpenAI) -> None:
    backend = MemoryCacheBackend()
    metrics = Metrics()
    left = CacheStage(backend, namespace="left", metrics=metrics)
    right = CacheStage(backend, namespace="right", metrics=metrics)
    calls: list[Request] = []

    async def provider(request: Request) -> Response:
        calls.append(request)
        return _response("x")

    request = Request(MODEL, (Message.user("hi"),))
    await left.complete(request, provider)
    await right.complete(request, provider)
    await left.complete(request, provider)
    assert len(calls) == 2
    assert metrics.counter("cache_hits_total", "", ["namespace"]).get("left") == 1
    assert metrics.counter("cache_hits_total", "", ["namespace"]).get("right") == 0


# -- streams -----------------------------------------------------------------------------------


async def collect(stream: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


async def test_a_stream_is_replayed_chunk_for_chunk(fake: FakeOpenAI) -> None:
    async with build(fake) as pipe:
        first = await collect(pipe.stream(MODEL, "tell me a short story please"))
        second = await collect(pipe.stream(MODEL, "tell me a short story please"))
        assert chat_requests(fake) == 1
        assert len(first) > 2
        # The same chunks, each marked as coming from the cache.
        assert not any(c.cached for c in first)
        assert second == [attrs.evolve(c, cached=True) for c in first]
        assert any(c.usage for c in second)
        assert counter(pipe, "cache_hits_total") == 1


async def test_a_stored_stream_answers_complete_and_the_other_way_round(fake: FakeOpenAI) -> None:
    async with build(fake) as pipe:
        chunks = await collect(pipe.stream(MODEL, "streamed first"))
        assembler = StreamAssembler("openai", MODEL)
        for chunk in chunks:
            assembler.add(chunk)
        streamed = assembler.response()
        answered = await pipe.complete(MODEL, "streamed first")
        assert (answered.text, answered.usage, answered.finish_reason) == (
            streamed.text,
            streamed.usage,
            streamed.finish_reason,
        )

        completed = await pipe.complete(MODEL, "completed first")
        replayed = await collect(pipe.stream(MODEL, "completed first"))
        assert "".join(c.text for c in replayed) == completed.text
        assert replayed[-1].finish_reason == completed.finish_reason
        assert replayed[-1].usage == completed.usage
        assert chat_requests(fake) == 2


async def test_a_cut_stream_is_not_stored(fake: FakeOpenAI) -> None:
    fake.fault("cut_stream")
    async with build(fake) as pipe:
        with pytest.raises(StreamInterruptedError):
            await collect(pipe.stream(MODEL, "a long answer that gets cut off midway"))
        whole = await collect(pipe.stream(MODEL, "a long answer that gets cut off midway"))
        assert whole[-1].finish_reason is not None or any(c.finish_reason for c in whole)
        assert chat_requests(fake) == 2
        await collect(pipe.stream(MODEL, "a long answer that gets cut off midway"))
        assert chat_requests(fake) == 2


async def test_a_stream_abandoned_by_its_reader_is_not_stored(fake: FakeOpenAI) -> None:
    async with build(fake) as pipe:
        stream = pipe.stream(MODEL, "several words to make several chunks")
        async for _chunk in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        await collect(pipe.stream(MODEL, "several words to make several chunks"))
        assert chat_requests(fake) == 2


async def test_a_stream_that_fails_midway_is_not_stored(fake: FakeOpenAI) -> None:
    fake.fault("mid_stream_error")
    async with build(fake) as pipe:
        with pytest.raises(TollwayError):
            await collect(pipe.stream(MODEL, "q"))
        await collect(pipe.stream(MODEL, "q"))
        assert chat_requests(fake) == 2


async def test_streams_false_leaves_streams_alone(fake: FakeOpenAI) -> None:
    async with build(fake, streams=False) as pipe:
        await collect(pipe.stream(MODEL, "q"))
        await collect(pipe.stream(MODEL, "q"))
        assert chat_requests(fake) == 2
        await pipe.complete(MODEL, "q")
        await pipe.complete(MODEL, "q")
        assert chat_requests(fake) == 3


async def test_stream_directives_are_honoured(fake: FakeOpenAI) -> None:
    async with build(fake) as pipe:
        await collect(pipe.stream(MODEL, "q", cache="no-store"))
        await collect(pipe.stream(MODEL, "q", cache="off"))
        assert chat_requests(fake) == 2
        await collect(pipe.stream(MODEL, "q"))  # stores
        await collect(pipe.stream(MODEL, "q", cache="no-cache"))  # does not read
        await collect(pipe.stream(MODEL, "q", cache="no-store"))  # reads
        assert chat_requests(fake) == 4


# -- TTL, stage-level with a fake clock --------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _response(text: str, finish_reason: str | None = "stop") -> Response:
    return Response("resp-1", MODEL, "openai", Message.assistant(text), finish_reason, Usage(3, 4))


class Upstream:
    """The rest of the chain: answers in order, and counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: Request) -> Response:
        self.calls += 1
        return _response(f"answer {self.calls}")


async def test_the_ttl_control_overrides_the_configured_ttl() -> None:
    clock = FakeClock()
    stage = CacheStage(MemoryCacheBackend(clock=clock), ttl=3600)
    upstream = Upstream()
    short = Request(MODEL, (Message.user("short"),), controls={"cache_ttl": 10})
    long = Request(MODEL, (Message.user("long"),))
    await stage.complete(short, upstream)
    await stage.complete(long, upstream)
    clock.now += 9
    await stage.complete(short, upstream)
    assert upstream.calls == 2
    clock.now += 2  # 11 s: the short one is gone, the long one (1 h) stays
    await stage.complete(short, upstream)
    await stage.complete(long, upstream)
    assert upstream.calls == 3
    clock.now += 3600
    await stage.complete(long, upstream)
    assert upstream.calls == 4


async def test_a_ttl_of_zero_stores_nothing() -> None:
    stage = CacheStage(MemoryCacheBackend())
    upstream = Upstream()
    request = Request(MODEL, (Message.user("q"),), controls={"cache_ttl": 0})
    await stage.complete(request, upstream)
    await stage.complete(request, upstream)
    assert upstream.calls == 2


async def test_a_request_that_has_no_key_goes_through_uncached() -> None:
    metrics = Metrics()
    stage = CacheStage(MemoryCacheBackend(), metrics=metrics)
    upstream = Upstream()
    request = Request(MODEL, (Message.user("q"),), extra={"opaque": object()})
    assert (await stage.complete(request, upstream)).text == "answer 1"
    assert (await stage.complete(request, upstream)).text == "answer 2"
    assert metrics.counter("cache_errors_total", "", ["namespace", "op"]).get("tollway", "key") == 2


# -- a failing backend never fails the call ---------------------------------------------------


class BrokenBackend(MemoryCacheBackend):
    """A real memory backend that can be switched to raising, as a backend that went down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.attempts = 0

    async def get(self, key: str) -> bytes | None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("connection refused")
        return await super().get(key)

    async def set(
        self, key: str, value: bytes, *, ttl: float | None, tags: Sequence[str] = ()
    ) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("connection refused")
        await super().set(key, value, ttl=ttl, tags=tags)


async def test_a_backend_that_fails_is_a_miss_then_skipped_for_a_while() -> None:
    clock = FakeClock()
    metrics = Metrics()
    backend = BrokenBackend()
    stage = CacheStage(backend, metrics=metrics, error_cooldown=5.0, clock=clock)
    errors = metrics.counter("cache_errors_total", "", ["namespace", "op"])
    upstream = Upstream()
    request = Request(MODEL, (Message.user("q"),))

    backend.down = True
    assert (await stage.complete(request, upstream)).text == "answer 1"
    assert errors.get("tollway", "get") == 1
    assert backend.attempts == 1  # the store was skipped: the backend just failed
    assert (await stage.complete(request, upstream)).text == "answer 2"
    assert backend.attempts == 1
    assert errors.get("tollway", "skipped") == 3  # one lookup and two stores skipped

    backend.down = False
    clock.now += 6  # the cooldown is over: the backend is tried again
    assert (await stage.complete(request, upstream)).text == "answer 3"
    assert (await stage.complete(request, upstream)).text == "answer 3"
    assert upstream.calls == 3


async def test_a_corrupt_entry_is_a_miss_and_is_replaced() -> None:
    metrics = Metrics()
    backend = MemoryCacheBackend()
    stage = CacheStage(backend, metrics=metrics)
    upstream = Upstream()
    request = Request(MODEL, (Message.user("q"),))
    key = request_key(request, "tollway")
    for garbage in (b"\x00\xff not json", b'{"v":1,"kind":"response"}', b'{"v":1,"kind":"?"}'):
        await backend.set(key, garbage, ttl=None)
        assert (await stage.complete(request, upstream)).text == f"answer {upstream.calls}"
        assert (await stage.complete(request, upstream)).text == f"answer {upstream.calls}"
    assert upstream.calls == 3
    assert (
        metrics.counter("cache_errors_total", "", ["namespace", "op"]).get("tollway", "decode") == 3
    )


async def test_an_entry_of_another_format_version_is_a_miss_but_left_alone() -> None:
    backend = MemoryCacheBackend()
    stage = CacheStage(backend, metrics=Metrics())
    request = Request(MODEL, (Message.user("q"),))
    key = request_key(request, "tollway")
    await backend.set(key, b'{"v":99,"kind":"future"}', ttl=None)
    entry = await stage._lookup(key)
    assert entry is None
    assert await backend.get(key) == b'{"v":99,"kind":"future"}'


@pytest.mark.parametrize("backend_name", ["memory", "disk", "redis"])
async def test_corrupt_entries_in_every_backend_are_misses(
    fake: FakeOpenAI, backend_name: str, tmp_path: Path
) -> None:
    namespace = unique_namespace("cachestage")
    options: dict[str, Any] = {"backend": backend_name, "namespace": namespace}
    if backend_name == "disk":
        options["path"] = str(tmp_path / "answers")
    if backend_name == "redis":
        options["url"] = require_redis()
    async with build(fake, **options) as pipe:
        stage = stage_of(pipe)
        request = pipe.request(MODEL, "q")
        key = request_key(request, namespace)
        await stage.backend.set(key, b"{truncated", ttl=60)
        first = await pipe.send(request)
        second = await pipe.send(request)
        assert second.text == first.text
        assert chat_requests(fake) == 1
        assert counter(pipe, "cache_errors_total", namespace, "decode") == 1
        assert await stage.invalidate() == 1


# -- assembly ----------------------------------------------------------------------------------


async def test_the_stage_is_not_built_when_the_cache_is_off(fake: FakeOpenAI) -> None:
    async with Pipeline.build(
        providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}}
    ) as pipe:
        assert "cache" not in pipe._state.builtin
        assert pipe.metrics.get("cache_hits_total") is None


def test_an_unknown_backend_is_a_config_error_that_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"cache\.backend.*'nosuch'.*memory"):
        Pipeline.build(config=Config(cache=CacheConfig(enabled=True, backend="nosuch")))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"namespace": "a:b"}, "namespace"),
        ({"ttl": -1}, "ttl"),
        ({"max_entries": 0}, "max_entries"),
    ],
)
def test_a_bad_cache_table_fails_at_load(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(data={"cache": table}, plugins=build_plugin_manager(), environ={})


def test_ttl_zero_in_the_file_means_no_expiry() -> None:
    config = load_config(data={"cache": {"ttl": 0}}, plugins=build_plugin_manager(), environ={})
    assert config.cache.ttl is None


async def test_the_disk_backend_from_a_config_file(fake: FakeOpenAI, tmp_path: Path) -> None:
    config_file = tmp_path / "tollway.toml"
    config_file.write_text(
        f"""
[providers.openai]
base_url = "{fake.base_url}"
api_key = "sk-test"

[cache]
enabled = true
backend = "disk"
path = "{tmp_path / "answers"}"
ttl = 60
"""
    )
    async with Pipeline.from_config(config_file) as pipe:
        await pipe.complete(MODEL, "from a file")
    # A new pipeline (a restart) finds the answer on disk.
    async with Pipeline.from_config(config_file) as pipe:
        await pipe.complete(MODEL, "from a file")
        assert counter(pipe, "cache_hits_total") == 1
    assert chat_requests(fake) == 1


def test_an_entry_round_trips_through_its_json_format() -> None:
    response = _response("hi")
    from tollway.cache.backend import decode_entry

    entry = decode_entry(encode_entry(CacheEntry.of_response(response)))
    # Everything comes back as it was, marked as coming from the cache.
    assert entry.to_response("openai", MODEL) == attrs.evolve(response, cached=True)


async def test_a_stream_that_ends_without_a_finish_reason_is_not_stored() -> None:
    # A provider that ends quietly part-way (no error, no finish reason): not a whole answer.
    stage = CacheStage(MemoryCacheBackend())
    opened = 0

    async def upstream(request: Request) -> AsyncIterator[StreamChunk]:
        nonlocal opened
        opened += 1
        yield StreamChunk("partial")

    request = Request(MODEL, (Message.user("q"),))
    for _ in range(2):
        assert [c.text async for c in stage.stream(request, upstream)] == ["partial"]
    assert opened == 2
