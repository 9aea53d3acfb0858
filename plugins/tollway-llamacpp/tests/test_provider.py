"""The provider against the real bundled model: completions, streams, limits and errors.

Generations are kept to a few tokens; the model is loaded once for the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import pytest

from tollway.errors import (
    BadRequestError,
    ContextLengthExceededError,
    NotFoundError,
    ProviderError,
)
from tollway.types import ImagePart, Message, Request, StreamChunk, TextPart, Tool, Usage
from tollway_llamacpp.engine import _PRIMER
from tollway_llamacpp.provider import STREAM_BUFFER, LlamaCppProvider

ProviderMaker = Callable[..., LlamaCppProvider]

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

SYSTEM = "You are a helpful assistant. Answer briefly."
# Greedy decoding continues this one for well over 200 tokens (the base model mostly echoes a
# question back and stops, but it does count on).
LONG_ANSWER = "Please continue: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
# Generous, only so that a broken stop or lock fails the test instead of hanging it.
HANG = 60.0


def _request(text: str, *, system: str | None = SYSTEM, **fields: object) -> Request:
    messages = (Message.system(system),) if system else ()
    fields.setdefault("temperature", 0.0)
    fields.setdefault("seed", 7)
    return Request("llamacpp/gemma-3-270m", (*messages, Message.user(text)), **fields)  # type: ignore[arg-type]


async def _collect(provider: LlamaCppProvider, request: Request) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


@pytest.mark.slow
async def test_complete_answers_with_real_token_counts(
    provider: LlamaCppProvider, bundled_gguf: Path
) -> None:
    response = await provider.complete(_request("What is the capital of France?", max_tokens=16))

    assert response.text.strip()
    assert response.text == response.text.strip()
    assert response.model == "llamacpp/gemma-3-270m"
    assert response.provider == "llamacpp"
    assert response.id
    assert response.message.role == "assistant"
    assert response.finish_reason in ("stop", "length")
    assert 0 < response.usage.output_tokens <= 16
    # The prompt is the transcript the model saw, counted with its own tokenizer, BOS included.
    vocab = llama_cpp.Llama(str(bundled_gguf), vocab_only=True, verbose=False)
    try:
        prompt = f"{SYSTEM}\n\n{_PRIMER}\nUser: What is the capital of France?\nAssistant:"
        expected = len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))
    finally:
        vocab.close()
    assert response.usage.input_tokens == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "max_tokens"),
    [("What is the capital of France?", 16), (LONG_ANSWER, 12)],
    ids=["ends-by-itself", "cut-by-max-tokens"],
)
async def test_stream_matches_complete(
    provider: LlamaCppProvider, question: str, max_tokens: int
) -> None:
    request = _request(question, max_tokens=max_tokens)
    response = await provider.complete(request)
    chunks = await _collect(provider, request)

    assert "".join(chunk.text for chunk in chunks) == response.text
    assert len(chunks) > 2  # it streamed, it did not arrive in one piece
    *pieces, last = chunks
    assert all(chunk.finish_reason is None and chunk.usage is None for chunk in pieces)
    assert last.finish_reason == response.finish_reason
    assert last.usage == response.usage
    assert last.text == ""
    assert {chunk.id for chunk in chunks} == {last.id}
    assert {chunk.model for chunk in chunks} == {"llamacpp/gemma-3-270m"}


@pytest.mark.slow
async def test_max_tokens_is_honoured(provider: LlamaCppProvider) -> None:
    request = _request(LONG_ANSWER, max_tokens=3)
    response = await provider.complete(request)
    last = (await _collect(provider, request))[-1]

    assert response.finish_reason == "length"
    assert response.usage.output_tokens == 3
    assert last.finish_reason == "length"
    assert last.usage is not None
    assert last.usage.output_tokens == 3


@pytest.mark.slow
async def test_a_stream_left_early_stops_generating_and_frees_the_model(
    provider: LlamaCppProvider,
) -> None:
    stream = provider.stream(_request(LONG_ANSWER, max_tokens=200))
    first = await anext(stream)  # type: ignore[arg-type]
    assert first.text
    control = provider._models["gemma-3-270m"].control
    assert control is not None
    # Let the worker run ahead until it stalls: backpressure must stop it at the buffer, far
    # from the 200 tokens it would otherwise go on to. The buffer counts pieces of text, and a
    # piece can take a few tokens (digits are single tokens; whitespace waits for what follows).
    bound = 3 * STREAM_BUFFER
    ahead, still = control.completion_tokens, 0
    while still < 10 and ahead <= bound:
        await asyncio.sleep(0.1)
        ahead, before = control.completion_tokens, ahead
        still = still + 1 if ahead == before else 0
    assert ahead <= bound
    await stream.aclose()  # type: ignore[attr-defined]

    response = await asyncio.wait_for(provider.complete(_request("Say hello.", max_tokens=4)), HANG)

    assert response.text
    assert control.cancelled
    # Stopped within a token or two of where it stalled, far from its 200-token limit.
    assert control.completion_tokens <= ahead + 2


@pytest.mark.slow
async def test_a_cancelled_task_stops_its_stream_and_the_next_call_works(
    provider: LlamaCppProvider,
) -> None:
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(_request(LONG_ANSWER, max_tokens=200)):
            got_one.set()

    task = asyncio.create_task(consume())
    await got_one.wait()
    control = provider._models["gemma-3-270m"].control
    assert control is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert control.cancelled

    chunks = await asyncio.wait_for(_collect(provider, _request("Say hello.", max_tokens=4)), HANG)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.output_tokens > 0
    assert control.completion_tokens < 200


@pytest.mark.slow
async def test_a_cancelled_complete_stops_generating_and_the_next_call_works(
    provider: LlamaCppProvider,
) -> None:
    task = asyncio.create_task(provider.complete(_request(LONG_ANSWER, max_tokens=200)))
    model = None
    async with asyncio.timeout(HANG):
        while model is None or model.control is None:  # wait until it is generating
            await asyncio.sleep(0.01)
            model = provider._models.get("gemma-3-270m")
    control = model.control
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert control.cancelled

    response = await asyncio.wait_for(provider.complete(_request("Say hello.", max_tokens=4)), HANG)
    assert response.usage.output_tokens > 0
    assert control.completion_tokens < 200


@pytest.mark.slow
async def test_concurrent_calls_take_turns(provider: LlamaCppProvider) -> None:
    request = _request("Say hello.", max_tokens=4)
    alone = await provider.complete(request)

    together = await asyncio.gather(
        provider.complete(request), _collect(provider, request), provider.complete(request)
    )

    assert together[0].text == together[2].text == alone.text
    assert "".join(chunk.text for chunk in together[1]) == alone.text


@pytest.mark.slow
async def test_a_prompt_longer_than_the_context_is_context_length_exceeded(
    make_provider: ProviderMaker,
) -> None:
    # 200 asks for the smallest context llama.cpp allocates, 256 tokens.
    small = make_provider(n_ctx=200)
    request = _request("word " * 300, max_tokens=4)

    with pytest.raises(ContextLengthExceededError) as info:
        await small.complete(request)
    assert info.value.provider == "llamacpp"
    assert "exceed context window of 256" in (info.value.provider_message or "")
    assert "n_ctx" in str(info.value)

    with pytest.raises(ContextLengthExceededError):
        await _collect(small, request)

    # The error left the model usable, and a prompt past the 200 asked for but within the 256
    # allocated fits (llama-cpp-python's own buffers would be 200 long if asked for 200).
    response = await small.complete(_request("word " * 160, system=None, max_tokens=2))
    assert 200 < response.usage.input_tokens < 256
    assert response.usage.output_tokens == 2


@pytest.mark.slow
async def test_json_mode_constrains_the_answer(provider: LlamaCppProvider) -> None:
    response = await provider.complete(
        _request(
            "Give the capital of France as JSON.",
            max_tokens=12,
            response_format={"type": "json_object"},
        )
    )
    assert response.text.startswith("{")


async def test_tools_are_rejected_clearly(provider: LlamaCppProvider) -> None:
    request = _request("What's the weather?", tools=(Tool("get_weather"),))
    with pytest.raises(BadRequestError, match="does not support tools") as info:
        await provider.complete(request)
    assert info.value.provider == "llamacpp"
    with pytest.raises(BadRequestError, match="does not support tools"):
        await _collect(provider, request)

    tool_result = Request(
        "llamacpp/gemma-3-270m",
        (Message.user("Weather?"), Message("tool", "sunny", tool_call_id="c1")),
    )
    with pytest.raises(BadRequestError, match="does not support tools"):
        await provider.complete(tool_result)


async def test_images_and_empty_requests_are_rejected(provider: LlamaCppProvider) -> None:
    with_image = Request(
        "llamacpp/gemma-3-270m",
        (Message("user", (TextPart("what is this?"), ImagePart("https://x/y.png"))),),
    )
    with pytest.raises(BadRequestError, match="text only"):
        await provider.complete(with_image)
    with pytest.raises(BadRequestError, match="no messages"):
        await provider.complete(Request("llamacpp/gemma-3-270m", ()))
    with pytest.raises(BadRequestError, match="max_tokens"):
        await provider.complete(_request("Hi.", max_tokens=0))


async def test_unknown_model_names_the_known_ones(provider: LlamaCppProvider) -> None:
    with pytest.raises(NotFoundError, match=r"no model 'gpt-4o'.*gemma-3-270m"):
        await provider.complete(Request("llamacpp/gpt-4o", (Message.user("Hi."),)))


@pytest.mark.slow
async def test_the_bare_provider_name_means_the_default_model(provider: LlamaCppProvider) -> None:
    response = await provider.complete(
        Request("llamacpp", (Message.user("Hi."),), max_tokens=2, temperature=0.0)
    )
    assert response.model == "llamacpp/gemma-3-270m"
    assert response.usage == Usage(response.usage.input_tokens, 2)


async def test_list_models_describes_the_configured_models(
    make_provider: ProviderMaker, tmp_path: Path
) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")  # listing loads nothing, so any file will do
    provider = make_provider(models={"other": str(other)}, n_ctx=1000)
    models = {model.id: model for model in await provider.list_models()}

    assert set(models) == {"gemma-3-270m", "other"}
    assert all(model.provider == "llamacpp" for model in models.values())
    # What llama.cpp really allocates: n_ctx padded to a multiple of 256.
    assert all(model.context_window == 1024 for model in models.values())
    assert all(model.supports_tools is False for model in models.values())


@pytest.mark.slow
async def test_a_closed_provider_says_so(make_provider: ProviderMaker, bundled_gguf: Path) -> None:
    provider = make_provider(model_path=str(bundled_gguf), default_model="mine", n_ctx=256)
    response = await provider.complete(
        Request("llamacpp/mine", (Message.user("Hi."),), max_tokens=1)
    )
    assert response.model == "llamacpp/mine"

    await provider.aclose()

    with pytest.raises(ProviderError, match="closed"):
        await provider.complete(Request("llamacpp/mine", (Message.user("Hi."),), max_tokens=1))
