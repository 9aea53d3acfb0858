"""How a third-party plugin tests itself: through a real Pipeline, found by its entry point."""

from tollway import Pipeline
from tollway.streaming import StreamAssembler


async def test_found_by_entry_point_and_answers() -> None:
    async with Pipeline.build() as pipe:
        assert "hello" in pipe.providers()
        reply = await pipe.complete("hello/friendly", "Ada")
    assert reply.text == "Hello, Ada!"
    assert reply.usage.output_tokens == 2
    assert reply.model == "hello/friendly"


async def test_settings_come_from_config_and_stream_matches_complete() -> None:
    async with Pipeline.build(providers={"hi": {"type": "hello", "greeting": "Hi"}}) as pipe:
        whole = await pipe.complete("hi", "Grace Hopper")
        assembler = StreamAssembler("hi", "hi/friendly")
        async for chunk in pipe.stream("hi", "Grace Hopper"):
            assembler.add(chunk)
    assert whole.text == "Hi, Grace Hopper!"
    assert assembler.response().text == whole.text
    assert assembler.response().usage == whole.usage
