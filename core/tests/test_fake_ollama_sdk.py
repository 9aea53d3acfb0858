"""The official ``ollama`` SDK, pointed at FakeOllama, parses what the fake sends.

This is what keeps the fake honest: if its JSON bodies, NDJSON lines or error bodies drift from
Ollama's wire format, the SDK's own models and errors stop matching here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import ollama
import pytest

from tollway.testing.fake_ollama import DEFAULT_MODELS, FakeOllama


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOllama]:
    # The SDK sends OLLAMA_API_KEY as a bearer token when it is set; keep the tests hermetic.
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def client(fake: FakeOllama) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=fake.url) as sdk:
        yield sdk


USER = [{"role": "user", "content": "Why is the sky blue?"}]


async def chat(client: ollama.AsyncClient, stream: bool) -> None:
    if stream:
        async for _ in await client.chat(model="llama3.2", messages=USER, stream=True):
            pass
    else:
        await client.chat(model="llama3.2", messages=USER)


async def test_chat(client: ollama.AsyncClient, fake: FakeOllama) -> None:
    response = await client.chat(model="llama3.2", messages=USER)
    assert isinstance(response, ollama.ChatResponse)
    assert response.message.role == "assistant"
    assert response.message.content == "Echo: Why is the sky blue?"
    assert response.done is True
    assert response.done_reason == "stop"
    assert response.model == "llama3.2"
    assert response.created_at
    # Frame 5 + message 5 + 6 tokens in the prompt; 8 in the answer plus the end-of-turn token.
    assert response.prompt_eval_count == 16
    assert response.eval_count == 9
    assert response.total_duration is not None
    assert response.total_duration > (response.eval_duration or 0)
    sent = fake.last_request
    assert sent.path == "/api/chat"
    assert sent.json["stream"] is False
    assert sent.headers["Content-Type"] == "application/json"


async def test_chat_stream_with_counts(client: ollama.AsyncClient) -> None:
    parts = [
        part
        async for part in await client.chat(
            model="llama3.2", messages=USER, stream=True, options={"num_predict": 3}
        )
    ]
    assert len(parts) > 2
    assert all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert last.done is True
    assert last.done_reason == "length"
    assert last.message.content == ""
    assert "".join(p.message.content or "" for p in parts) == "Echo: Why"
    assert last.prompt_eval_count == 16
    assert last.eval_count == 4


async def test_thinking_and_cached_prompt(client: ollama.AsyncClient, fake: FakeOllama) -> None:
    fake.reply("Blue light scatters more.", thinking="Rayleigh scattering.", prompt_cached=True)
    response = await client.chat(model="qwen3:8b", messages=USER, think=True)
    assert response.message.thinking == "Rayleigh scattering."
    assert response.message.content == "Blue light scatters more."
    assert response.prompt_eval_count is None
    assert response.eval_count == 4 + 4 + 1
    assert fake.last_request.json["think"] is True


async def test_tool_calls(client: ollama.AsyncClient, fake: FakeOllama) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_time", "arguments": '{"zone": "CET"}'},
    ]
    fake.reply(tool_calls=calls, times=2)
    response = await client.chat(model="llama3.2", messages=USER, tools=[tool])
    assert response.message.content == ""
    assert [(c.function.name, dict(c.function.arguments)) for c in response.message.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET"}),
    ]
    streamed = [
        call
        async for part in await client.chat(
            model="llama3.2", messages=USER, tools=[tool], stream=True
        )
        for call in part.message.tool_calls or ()
    ]
    assert [c.function.name for c in streamed] == ["get_weather", "get_time"]
    # The SDK's own rendering of a tool result turn is accepted by the fake.
    follow_up = [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "21C", "tool_name": "get_weather"},
    ]
    answer = await client.chat(model="llama3.2", messages=follow_up)
    assert answer.message.content == "The tool returned: 21C"


async def test_images_are_base64(client: ollama.AsyncClient, fake: FakeOllama) -> None:
    png = b"\x89PNG\r\n\x1a\n fake image"
    response = await client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "What is it?", "images": [png]}]
    )
    assert response.message.content == "Echo: What is it? [1 image(s)]"
    assert response.prompt_eval_count == 5 + 5 + 4 + 576


async def test_list(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert [m.model for m in listed.models] == list(DEFAULT_MODELS)
    llama = listed.models[0]
    assert llama.details is not None
    assert llama.details.parameter_size == "3.2B"
    assert llama.details.family == "llama"
    assert llama.details.quantization_level == "Q4_K_M"
    assert llama.size is not None
    assert llama.size > 10**9
    assert llama.modified_at is not None
    assert llama.digest is not None
    assert len(llama.digest) == 64


async def test_model_not_pulled(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="mistral", messages=USER)
    assert info.value.status_code == 404
    assert info.value.error == 'model "mistral" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in await client.chat(model="mistral", messages=USER, stream=True):
            pass
    assert info.value.status_code == 404


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "llama3.2 does not support tools"),
        (401, "unauthorized"),
        (429, "too many requests, please try again later"),
        (500, "llama runner process has terminated: exit status 2"),
        (503, "server busy, please try again.  maximum pending requests exceeded"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_injected_failures(
    client: ollama.AsyncClient, fake: FakeOllama, status: int, message: str, stream: bool
) -> None:
    fake.fail(status, headers={"Retry-After": "3"} if status == 429 else None)
    with pytest.raises(ollama.ResponseError) as info:
        await chat(client, stream)
    assert info.value.status_code == status
    assert info.value.error == message


async def test_scripted_message(client: ollama.AsyncClient, fake: FakeOllama) -> None:
    fake.fail(400, '"gemma3" does not support thinking')
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="gemma3:270m", messages=USER, think=True)
    assert (info.value.status_code, info.value.error) == (400, '"gemma3" does not support thinking')


async def test_mid_stream_error(client: ollama.AsyncClient, fake: FakeOllama) -> None:
    fake.fault("mid_stream_error")
    received: list[str] = []
    parts = await client.chat(
        model="llama3.2",
        messages=[{"role": "user", "content": "one two three four five"}],
        stream=True,
    )

    async def read_all() -> None:
        async for part in parts:
            received.append(part.message.content or "")

    with pytest.raises(ollama.ResponseError) as info:
        await read_all()
    assert "".join(received).startswith("Echo:")
    assert info.value.error == "an error was encountered while running the model: unexpected EOF"


async def test_bad_bodies_get_ollamas_400s(fake: FakeOllama) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        cases = [
            (b"", "missing request body"),
            (b'{"messages": []}', "model is required"),
            (b"nope", "invalid character 'n' looking for beginning of value"),
            (b'{"model": "llama3.2", "keep_alive": "-1"}', 'time: invalid duration "-1"'),
            (
                b'{"model": "llama3.2", "messages": [{"role": "user", "content": "x", '
                b'"images": ["data:image/png;base64,AAAA"]}]}',
                "illegal base64 data at input byte 4",
            ),
        ]
        for body, message in cases:
            async with session.post(fake.url + "/api/chat", data=body) as response:
                assert response.status == 400
                assert await response.json() == {"error": message}
        async with session.get(fake.url + "/api/nothing") as response:
            assert response.status == 404
            assert await response.text() == "404 page not found"
        async with session.get(fake.url + "/") as response:
            assert await response.text() == "Ollama is running"


async def test_empty_chat_loads_the_model(client: ollama.AsyncClient) -> None:
    response = await client.chat(model="llama3.2", messages=[])
    assert response.done_reason == "load"
    assert response.message.content == ""
