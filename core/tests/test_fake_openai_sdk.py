"""FakeOpenAI checked by the official openai SDK, so the fake cannot drift from the wire format.

Every JSON body and chunk is validated with the SDK's own pydantic models, and must carry no
field those models do not know (Azure's content-filter fields excepted, which the SDK leaves
out). Errors must come out as the SDK's typed exceptions with the injected status and message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import openai
import pydantic
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tollway.testing import FakeOpenAI

pytest_plugins = ["tollway.testing.fixtures"]

KEY = "sk-fake-0123456789abcdef"
AZURE_VERSION = "2024-10-21"
MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        # The SDK's stream helper only accumulates tool calls of strict tools.
        "strict": True,
    },
}


@pytest.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    fake_openai.require_api_key = KEY
    async with openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def azure(fake_openai: FakeOpenAI) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    fake_openai.require_api_key = KEY
    fake_openai.azure_deployments = {"prod-4o": "gpt-4o-2024-08-06"}
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=fake_openai.azure_endpoint,
        api_key=KEY,
        api_version=AZURE_VERSION,
        max_retries=0,
    ) as sdk:
        yield sdk


def assert_no_unknown_fields(model: pydantic.BaseModel, where: str = "") -> None:
    """Walk a validated SDK model: a field the SDK does not declare means the fake invented it."""
    assert not model.model_extra, f"{type(model).__name__}{where} has unknown {model.model_extra}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for n, item in enumerate(items):
            if isinstance(item, pydantic.BaseModel):
                assert_no_unknown_fields(item, f"{where}.{name}[{n}]")


def strictly(model_class: type[pydantic.BaseModel], raw: Any) -> Any:
    validated = model_class.model_validate(raw)
    assert_no_unknown_fields(validated)
    return validated


def test_importing_tollway_testing_is_cheap() -> None:
    code = (
        "import sys, tollway.testing; "
        "print(sorted(m for m in ('openai', 'aiohttp', 'tollway.testing.fake_openai') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- OpenAI --------------------------------------------------------------------------------


async def test_completion(client: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    completion = strictly(ChatCompletion, json.loads(raw.text))
    assert raw.headers["x-request-id"] == fake_openai.last_request.request_id
    parsed = raw.parse()
    assert parsed.model_dump() == completion.model_dump()
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Echo: What is the capital of France?"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert fake_openai.last_request.headers["Authorization"] == f"Bearer {KEY}"


async def test_cached_and_reasoning_tokens(client: openai.AsyncOpenAI, fake_openai) -> None:
    fake_openai.reply(
        "Paris.", cached_tokens=1024, reasoning_tokens=64, usage={"prompt_tokens": 1500}
    )
    completion = await client.chat.completions.create(model="o3-mini", messages=MESSAGES)
    strictly(ChatCompletion, completion.to_dict())
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 1500
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1024
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 64
    assert usage.completion_tokens == 64 + 2


async def test_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    expected = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [strictly(ChatCompletionChunk, chunk.to_dict()) async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # The usage chunk comes last, with no choices; the others carry usage: null.
    assert chunks[-1].choices == []
    assert chunks[-1].usage == expected.usage
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_without_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all("usage" not in c.to_dict() for c in chunks)


async def test_tool_calls(client: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Lyon"}},
    ]
    fake_openai.reply(tool_calls=calls, times=2)
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER_TOOL]
    )
    strictly(ChatCompletion, completion.to_dict())
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    assert [
        (c.type, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls
    ] == [
        ("function", "get_weather", {"city": "Paris"}),
        ("function", "get_weather", {"city": "Lyon"}),
    ]
    assert all(c.id.startswith("call_") for c in message.tool_calls)

    # The SDK's stream helper accumulates tool-call deltas by index and checks them as it goes.
    async with client.chat.completions.stream(
        model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER_TOOL]
    ) as stream:
        async for event in stream:
            if event.type == "chunk":
                strictly(ChatCompletionChunk, event.chunk.to_dict())
        final = await stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls
    assert streamed is not None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Lyon"}),
    ]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_text_then_tool_call_stream(client: openai.AsyncOpenAI, fake_openai) -> None:
    fake_openai.reply("Let me check.", tool_calls=[{"name": "get_weather", "arguments": "{}"}])
    # Text first, then a tool call: the role chunk carries content "" and no tool call.
    async with client.chat.completions.stream(
        model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER_TOOL]
    ) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Let me check."
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.arguments == "{}"


async def test_models_list(client: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    models = [strictly(Model, m.to_dict()) async for m in client.models.list()]
    assert [m.id for m in models] == fake_openai.models
    assert {m.object for m in models} == {"model"}


@pytest.mark.parametrize(
    ("status", "sdk_error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_injected_failures_raise_sdk_errors(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, status: int, sdk_error: type
) -> None:
    fake_openai.fail(
        status, f"injected {status}", code=f"code_{status}", headers={"retry-after": "2"}
    )
    with pytest.raises(sdk_error) as info:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    error = info.value
    assert error.status_code == status
    assert error.code == f"code_{status}"
    assert f"injected {status}" in error.message
    assert error.request_id == fake_openai.last_request.request_id
    assert error.response.headers["retry-after"] == "2"


async def test_default_rate_limit_body(client: openai.AsyncOpenAI, fake_openai) -> None:
    fake_openai.fail(429)
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.type == "requests"
    assert "Rate limit reached for gpt-4o-mini" in info.value.message


async def test_wrong_and_missing_key(fake_openai: FakeOpenAI) -> None:
    fake_openai.require_api_key = KEY
    async with openai.AsyncOpenAI(
        base_url=fake_openai.base_url, api_key="sk-wrong-key-000", max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError) as info:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert info.value.code == "invalid_api_key"
        assert "Incorrect API key provided" in info.value.message
        with pytest.raises(openai.AuthenticationError, match="didn't provide an API key"):
            await sdk.models.list(extra_headers={"Authorization": ""})


async def test_request_validation_like_openai(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="o3-mini", messages=MESSAGES, max_tokens=5)
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as empty:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert empty.value.param == "messages"


async def test_unknown_route(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="Invalid URL"):
        await client.embeddings.create(model="text-embedding-3-small", input="hi")


async def test_mid_stream_error(client: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.fault("mid_stream_error")
    fake_openai.reply("one two three four five six seven eight")
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    received: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="The server had an error"):
        await read()
    assert "".join(received)


async def test_reset_is_a_connection_error(client: openai.AsyncOpenAI, fake_openai) -> None:
    fake_openai.fault("reset")
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


async def test_stall_is_a_timeout(client: openai.AsyncOpenAI, fake_openai) -> None:
    fake_openai.fault("stall")
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, timeout=0.2)


# -- Azure ---------------------------------------------------------------------------------


async def test_azure_completion(azure: openai.AsyncAzureOpenAI, fake_openai) -> None:
    completion = await azure.chat.completions.create(model="prod-4o", messages=MESSAGES)
    # The SDK models leave out Azure's content-filter fields, so only validate here.
    ChatCompletion.model_validate(completion.to_dict())
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.choices[0].message.content == "Echo: What is the capital of France?"
    sent = fake_openai.last_request
    assert sent.path == "/openai/deployments/prod-4o/chat/completions"
    assert sent.query["api-version"] == AZURE_VERSION
    assert sent.headers["api-key"] == KEY
    raw = sent.json
    assert raw["model"] == "prod-4o"


async def test_azure_stream_with_usage(azure: openai.AsyncAzureOpenAI) -> None:
    stream = await azure.chat.completions.create(
        model="prod-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    # Azure opens with a content-filter chunk that has no choices, no model and an empty
    # "object", which the SDK's models would reject; the SDK builds chunks without validating,
    # so real Azure streams (and this one) still parse.
    assert chunks[0].choices == []
    assert chunks[0].model == ""
    assert chunks[0].object == ""
    for chunk in chunks[1:]:
        ChatCompletionChunk.model_validate(chunk.to_dict())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: What is the capital of France?"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0

    async with azure.chat.completions.stream(model="prod-4o", messages=MESSAGES) as helper:
        final = await helper.get_final_completion()
    assert final.choices[0].message.content == text


async def test_azure_models(azure: openai.AsyncAzureOpenAI, fake_openai) -> None:
    models = [m async for m in azure.models.list()]
    assert [m.id for m in models] == ["gpt-4o-2024-08-06"]
    assert fake_openai.last_request.path == "/openai/models"
    assert fake_openai.last_request.query["api-version"] == AZURE_VERSION


async def test_azure_errors(azure: openai.AsyncAzureOpenAI, fake_openai) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await azure.chat.completions.create(model="nope", messages=MESSAGES)
    assert missing.value.code == "DeploymentNotFound"
    fake_openai.fail(
        429, "Requests have exceeded the call rate limit.", code="429", headers={"retry-after": "7"}
    )
    with pytest.raises(openai.RateLimitError) as limited:
        await azure.chat.completions.create(model="prod-4o", messages=MESSAGES)
    assert limited.value.response.headers["retry-after"] == "7"
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=fake_openai.azure_endpoint,
        api_key="wrong",
        api_version=AZURE_VERSION,
        max_retries=0,
    ) as wrong:
        with pytest.raises(openai.AuthenticationError, match="Access denied"):
            await wrong.chat.completions.create(model="prod-4o", messages=MESSAGES)
