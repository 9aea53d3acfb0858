"""The provider contract: one suite of pytest tests that every provider plugin must pass.

A plugin runs it by subclassing in its own tests and saying how to reach its provider::

    from tollway.testing.contract import WireContract
    from tollway.testing.fake_openai import FakeOpenAI

    class TestOpenAIContract(WireContract):
        provider_type = "openai"
        model = "gpt-4o-mini"
        fake_class = FakeOpenAI

        def settings(self, fake):
            return {"base_url": fake.base_url, "api_key": "sk-test"}

``ProviderContract`` needs only a working provider (the local model passes it); ``WireContract``
adds what a fake server makes possible: every error class, connection resets, stalls, malformed
replies, cut streams, and tool calls scripted both ways. The fake must offer the scripting API of
the fakes in ``tollway.testing`` (``reply``, ``fail``, ``fault``, ``requests``).

Every test runs under a deadline, so a provider that hangs fails instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from tollway import errors
from tollway.pipeline import Pipeline
from tollway.streaming import StreamAssembler
from tollway.types import Message, Response, Tool, ToolCall

DEADLINE = 20.0
INSTANCE = "contract"

WEATHER = Tool(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


async def _call(pipe: Pipeline, streamed: bool, model: str, prompt: str) -> Response:
    """One call, complete or streamed, under the deadline."""
    async with asyncio.timeout(DEADLINE):
        if streamed:
            return await _collect(pipe, model, prompt)
        return await pipe.complete(model, prompt)


async def _collect(pipe: Pipeline, *args: Any, **kwargs: Any) -> Response:
    assembler = StreamAssembler(INSTANCE, "")
    async for chunk in pipe.stream(*args, **kwargs):
        assembler.add(chunk)
    return assembler.response()


class ProviderContract:
    """What every provider does, whatever its vendor. Subclass and set the class attributes."""

    provider_type: ClassVar[str]
    model: ClassVar[str]
    # A prompt the provider answers with some text; short, so a local model stays fast.
    prompt: ClassVar[str] = "Say hello."
    max_tokens: ClassVar[int] = 8

    def settings(self, fake: Any) -> dict[str, Any]:
        """The ``[providers.NAME]`` table for the provider under test."""
        return {}

    @pytest.fixture
    async def fake(self) -> Any:
        return None

    @pytest.fixture
    async def pipe(self, fake: Any) -> AsyncIterator[Pipeline]:
        table = {"type": self.provider_type, **self.settings(fake)}
        async with Pipeline.build(providers={INSTANCE: table}) as pipe:
            yield pipe

    @property
    def full_model(self) -> str:
        return f"{INSTANCE}/{self.model}"

    async def test_complete_answers_with_text_and_usage(self, pipe: Pipeline) -> None:
        async with asyncio.timeout(DEADLINE):
            reply = await pipe.complete(
                self.full_model, self.prompt, max_tokens=self.max_tokens, temperature=0
            )
        assert reply.provider == INSTANCE
        assert reply.model.startswith(f"{INSTANCE}/")
        assert reply.message.role == "assistant"
        assert reply.text.strip()
        assert reply.finish_reason in ("stop", "length")
        assert reply.usage.input_tokens > 0
        assert 0 < reply.usage.output_tokens <= max(self.max_tokens, reply.usage.output_tokens)

    async def test_stream_assembles_to_what_complete_returns(self, pipe: Pipeline) -> None:
        params = {"max_tokens": self.max_tokens, "temperature": 0, "seed": 7}
        async with asyncio.timeout(DEADLINE):
            whole = await pipe.complete(self.full_model, self.prompt, **params)
            streamed = await _collect(pipe, self.full_model, self.prompt, **params)
        assert streamed.text == whole.text
        assert streamed.finish_reason == whole.finish_reason
        assert streamed.usage == whole.usage
        assert streamed.tool_calls == whole.tool_calls

    async def test_cancelled_stream_closes_its_connection(self, pipe: Pipeline) -> None:
        async with asyncio.timeout(DEADLINE):
            stream = pipe.stream(self.full_model, self.prompt, max_tokens=self.max_tokens)
            async for _ in stream:
                break
            await stream.aclose()  # type: ignore[attr-defined]
            for pool in pipe.http.endpoints().values():
                assert pool["in_use"] == 0, "a cancelled stream left its connection in use"
            # And the provider is usable straight after.
            reply = await pipe.complete(self.full_model, self.prompt, max_tokens=self.max_tokens)
        assert reply.text

    async def test_unicode_round_trips(self, pipe: Pipeline) -> None:
        async with asyncio.timeout(DEADLINE):
            reply = await pipe.complete(
                self.full_model, "Répète: « naïve café » — 東京 🚀", max_tokens=self.max_tokens
            )
        assert isinstance(reply.text, str)
        reply.text.encode("utf-8")

    async def test_list_models(self, pipe: Pipeline) -> None:
        async with asyncio.timeout(DEADLINE):
            models = await pipe.list_models(INSTANCE)
        assert models
        assert all(m.provider == INSTANCE for m in models)


class WireContract(ProviderContract):
    """The contract for providers reached over HTTP, driven through a fake server."""

    fake_class: ClassVar[type]
    supports_tools: ClassVar[bool] = True
    prompt = "Say hello to the contract suite."
    max_tokens = 64

    @pytest.fixture
    async def fake(self) -> AsyncIterator[Any]:
        async with self.fake_class() as fake:
            yield fake

    # -- answers -----------------------------------------------------------------------------

    async def test_scripted_text_and_usage_arrive_exactly(self, pipe: Pipeline, fake: Any) -> None:
        fake.reply("Bonjour, 世界!")
        fake.reply("Bonjour, 世界!")
        async with asyncio.timeout(DEADLINE):
            whole = await pipe.complete(self.full_model, self.prompt)
            streamed = await _collect(pipe, self.full_model, self.prompt)
        assert whole.text == "Bonjour, 世界!"
        assert streamed.text == whole.text
        assert streamed.usage == whole.usage

    async def test_empty_answer_is_an_empty_string(self, pipe: Pipeline, fake: Any) -> None:
        fake.reply("")
        async with asyncio.timeout(DEADLINE):
            reply = await pipe.complete(self.full_model, self.prompt)
        assert reply.text == ""

    async def test_tool_calls_round_trip(self, pipe: Pipeline, fake: Any) -> None:
        if not self.supports_tools:
            pytest.skip(f"{self.provider_type} does not support tools")
        call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
        fake.reply(tool_calls=[call])
        fake.reply(tool_calls=[call])
        async with asyncio.timeout(DEADLINE):
            whole = await pipe.complete(self.full_model, "Weather in Paris?", tools=[WEATHER])
            streamed = await _collect(pipe, self.full_model, "Weather in Paris?", tools=[WEATHER])
        for reply in (whole, streamed):
            assert reply.finish_reason == "tool_calls"
            assert len(reply.tool_calls) == 1
            assert reply.tool_calls[0].name == "get_weather"
            assert json.loads(reply.tool_calls[0].arguments) == {"city": "Paris"}
        # The tool's result goes back, and the provider accepts the whole conversation.
        made = whole.tool_calls[0]
        fake.reply("It is sunny in Paris.")
        async with asyncio.timeout(DEADLINE):
            final = await pipe.complete(
                self.full_model,
                [
                    Message.user("Weather in Paris?"),
                    Message("assistant", "", (ToolCall(made.id, made.name, made.arguments),)),
                    Message("tool", '{"sky": "sunny"}', tool_call_id=made.id),
                ],
                tools=[WEATHER],
            )
        assert final.text == "It is sunny in Paris."

    # -- errors ------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("status", "error_class", "retryable"),
        [
            (400, errors.BadRequestError, False),
            (401, errors.AuthenticationError, False),
            (404, errors.NotFoundError, False),
            (429, errors.RateLimitedError, True),
            (500, errors.UnavailableError, True),
            (503, errors.UnavailableError, True),
        ],
    )
    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    async def test_error_statuses_map_to_one_taxonomy(
        self,
        pipe: Pipeline,
        fake: Any,
        status: int,
        error_class: type[errors.TollwayError],
        retryable: bool,
        streamed: bool,
    ) -> None:
        message = f"contract says {status}"
        headers = {"retry-after": "7"} if status == 429 else None
        fake.fail(status, message, headers=headers)
        with pytest.raises(error_class) as info:
            await _call(pipe, streamed, self.full_model, self.prompt)
        error = info.value
        assert error.provider == INSTANCE
        assert error.status == status
        assert error.retryable is retryable
        assert message in (error.provider_message or "")
        if status == 429:
            assert error.retry_after == 7

    async def test_connection_reset_is_unavailable(self, pipe: Pipeline, fake: Any) -> None:
        fake.fault("reset")
        with pytest.raises(errors.UnavailableError) as info:
            async with asyncio.timeout(DEADLINE):
                await pipe.complete(self.full_model, self.prompt)
        assert info.value.retryable

    async def test_endpoint_health_is_recorded(self, pipe: Pipeline, fake: Any) -> None:
        async with asyncio.timeout(DEADLINE):
            await pipe.complete(self.full_model, self.prompt)
        health = pipe.health()
        # One endpoint, the fake's: whatever a provider does to find credentials (Bedrock reads
        # them without HTTP) does not go through the pool.
        assert len(health) == 1, health
        ((key, before),) = health.items()
        assert before["requests"] >= 1
        assert before["failures"] == 0
        fake.fault("reset")
        with pytest.raises(errors.UnavailableError):
            async with asyncio.timeout(DEADLINE):
                # Another prompt, so no cache can answer in the provider's place.
                await pipe.complete(self.full_model, "And now once more, please.")
        after = pipe.health()[key]
        assert after["requests"] > before["requests"]
        assert after["failures"] >= 1
        assert after["last_error"]

    async def test_stall_times_out_instead_of_hanging(self, pipe: Pipeline, fake: Any) -> None:
        fake.fault("stall")
        with pytest.raises(errors.ProviderTimeoutError):
            async with asyncio.timeout(DEADLINE):
                await pipe.complete(self.full_model, self.prompt, timeout=0.5)

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    async def test_malformed_reply_is_a_typed_error_naming_the_provider(
        self, pipe: Pipeline, fake: Any, streamed: bool
    ) -> None:
        fake.fault("malformed")
        with pytest.raises(errors.ProviderError) as info:
            await _call(pipe, streamed, self.full_model, self.prompt)
        assert info.value.provider == INSTANCE
        assert isinstance(
            info.value, (errors.MalformedResponseError, errors.StreamInterruptedError)
        )

    async def test_cut_stream_is_interrupted_not_finished(self, pipe: Pipeline, fake: Any) -> None:
        fake.fault("cut_stream")
        with pytest.raises(errors.StreamInterruptedError) as info:
            async with asyncio.timeout(DEADLINE):
                await _collect(pipe, self.full_model, self.prompt)
        assert info.value.retryable
        assert info.value.provider == INSTANCE

    async def test_error_in_the_middle_of_a_stream_is_raised(
        self, pipe: Pipeline, fake: Any
    ) -> None:
        fake.fault("mid_stream_error")
        with pytest.raises(errors.ProviderError) as info:
            async with asyncio.timeout(DEADLINE):
                await _collect(pipe, self.full_model, self.prompt)
        assert info.value.provider == INSTANCE

    async def test_the_pool_recovers_after_faults(self, pipe: Pipeline, fake: Any) -> None:
        fake.fault("reset")
        fake.fault("cut_stream")
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(errors.UnavailableError):
                await pipe.complete(self.full_model, self.prompt)
            with pytest.raises(errors.StreamInterruptedError):
                await _collect(pipe, self.full_model, self.prompt)
            replies = await asyncio.gather(
                *(pipe.complete(self.full_model, self.prompt) for _ in range(8))
            )
        assert all(r.text for r in replies)
