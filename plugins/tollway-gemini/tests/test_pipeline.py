"""The gemini plugin found through its entry point and used by a real Pipeline."""

from __future__ import annotations

import pytest

from tollway import Pipeline
from tollway.errors import RateLimitedError
from tollway.streaming import StreamAssembler
from tollway.testing.fake_gemini import FakeGemini
from tollway.types import Usage

KEY = "AIza-pipeline"


async def test_pipeline_routes_to_gemini(fake_gemini: FakeGemini, monkeypatch) -> None:
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "gemini")
    monkeypatch.setenv("MY_GEMINI_KEY", KEY)
    fake_gemini.require_api_key = KEY
    fake_gemini.reply("Bonjour!", cached_tokens=2, thoughts_tokens=5, times=2)
    async with Pipeline.build(
        providers={
            "google": {
                "type": "gemini",
                "base_url": fake_gemini.base_url,
                "api_key_env": "MY_GEMINI_KEY",
            }
        }
    ) as pipe:
        reply = await pipe.complete(
            "google/gemini-2.5-flash",
            [{"role": "system", "content": "French only."}, {"role": "user", "content": "Hi"}],
            max_tokens=20,
        )
        assembler = StreamAssembler("google", "google/gemini-2.5-flash")
        async for chunk in pipe.stream("google/gemini-2.5-flash", "Hi"):
            assembler.add(chunk)
        fake_gemini.fail(429, retry_delay="7s")
        with pytest.raises(RateLimitedError) as info:
            await pipe.complete("google/gemini-2.5-flash", "Hi")
        models = await pipe.list_models("google")
    assert reply.text == "Bonjour!"
    assert (reply.provider, reply.model) == ("google", "google/gemini-2.5-flash")
    # "French only." (3) + "Hi" (1) in; "Bonjour!" (2) + 5 thinking out.
    assert reply.usage == Usage(
        input_tokens=4, output_tokens=7, cache_read_tokens=2, reasoning_tokens=5
    )
    assert assembler.response().message == reply.message
    assert assembler.response().usage == Usage(1, 7, 2, 0, 5)  # "Hi" alone this time
    assert info.value.retry_after == 7.0
    assert info.value.provider == "google"
    assert "gemini-2.5-flash" in [m.id for m in models]
    sent = fake_gemini.requests[0]
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.json["generationConfig"] == {"maxOutputTokens": 20}
