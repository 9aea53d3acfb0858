"""The plugin as an application meets it: a Pipeline built from a config table."""

from __future__ import annotations

import pytest

from tollway import Pipeline
from tollway.errors import RateLimitedError
from tollway.streaming import StreamAssembler
from tollway.testing.fake_anthropic import FakeAnthropic
from tollway.types import Usage

MODEL = "claude-sonnet-4-6"


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "anthropic")
    monkeypatch.delenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", raising=False)


async def test_pipeline_complete_stream_and_models(fake_anthropic: FakeAnthropic) -> None:
    table = {
        "base_url": fake_anthropic.base_url,
        "api_key": fake_anthropic.require_api_key,
        "beta": ["interleaved-thinking-2025-05-14"],
        "default_max_tokens": 512,
    }
    async with Pipeline.build(providers={"anthropic": table}) as pipe:
        reply = await pipe.complete(
            f"anthropic/{MODEL}",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there, how are you?"},
            ],
        )
        assert reply.text == "Echo: Hello there, how are you?"
        assert reply.model == f"anthropic/{MODEL}"
        assert reply.usage == Usage(input_tokens=16, output_tokens=9)
        sent = fake_anthropic.last_request
        assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
        assert sent.json["max_tokens"] == 512

        assembler = StreamAssembler("anthropic", f"anthropic/{MODEL}")
        async for chunk in pipe.stream(f"anthropic/{MODEL}", "Hello there, how are you?"):
            assembler.add(chunk)
        assert assembler.text == "Echo: Hello there, how are you?"
        assert assembler.finish_reason == "stop"

        models = await pipe.list_models("anthropic")
        assert [m.id for m in models] == list(fake_anthropic.models)


async def test_named_instance_of_the_anthropic_type(fake_anthropic: FakeAnthropic) -> None:
    table = {
        "type": "anthropic",
        "base_url": fake_anthropic.base_url,
        "api_key": fake_anthropic.require_api_key,
        "default_model": MODEL,
    }
    async with Pipeline.build(providers={"work": table}) as pipe:
        reply = await pipe.complete("work", "Hi")
        assert (reply.provider, reply.model) == ("work", f"work/{MODEL}")
        fake_anthropic.fail(429, headers={"retry-after": "3"})
        with pytest.raises(RateLimitedError) as info:
            await pipe.complete("work/claude-haiku-4-5-20251001", "Hi")
        assert (info.value.provider, info.value.retry_after) == ("work", 3.0)
        assert fake_anthropic.last_request.json["model"] == "claude-haiku-4-5-20251001"
