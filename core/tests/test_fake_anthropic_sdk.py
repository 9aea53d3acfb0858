"""The official anthropic SDK, pointed at FakeAnthropic, parses every kind of answer it gives.

This is what keeps the fake honest: if its JSON, its events or its error bodies drifted from
Anthropic's wire format, the SDK's own parsing and typed errors would break here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import pytest
import pytest_asyncio

from tollway.testing.fake_anthropic import FakeAnthropic

KEY = "sk-ant-sdk-check"
MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(require_api_key=KEY) as server:
        yield server


@pytest_asyncio.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key=KEY, max_retries=0)
    yield sdk
    await sdk.close()


async def test_create(client: anthropic.AsyncAnthropic, fake: FakeAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=HELLO
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.id.startswith("msg_01")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Echo: Hello there, how are you?"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == 16
    assert message.usage.output_tokens == 9
    assert message.usage.cache_read_input_tokens == 0
    assert message._request_id == fake.last_request.request_id
    sent = fake.last_request
    # This SDK sends its key as a bearer token, and a newer API version than 2023-06-01.
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION


async def test_stream_helper_with_cache_usage(client, fake) -> None:
    fake.reply(
        "Paris is the capital of France.",
        usage={"input_tokens": 21},
        cache_read_tokens=2048,
        cache_write_tokens=512,
    )
    pieces: list[str] = []
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        async for text in stream.text_stream:
            pieces.append(text)
        final = await stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == final.content[0].text == "Paris is the capital of France."
    assert final.stop_reason == "end_turn"
    usage = final.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (21, 2048)
    assert usage.cache_creation_input_tokens == 512
    assert usage.cache_creation.ephemeral_5m_input_tokens == 512
    assert usage.output_tokens == 7


async def test_raw_event_stream(client, fake) -> None:
    stream = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(kinds)
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    text = "".join(d.text for d in deltas if d.type == "text_delta")
    assert text == "Echo: Hello there, how are you?"
    start, delta = events[0], events[-2]
    assert start.message.usage.input_tokens == 13
    assert delta.usage.output_tokens == 9
    assert delta.delta.stop_reason == "end_turn"


async def test_prompt_cache_simulation_as_the_sdk_sees_it(client, fake) -> None:
    manual = " ".join(f"Rule {n}: answer in plain words." for n in range(200))
    system = [{"type": "text", "text": manual, "cache_control": {"type": "ephemeral"}}]
    first = await client.messages.create(model=MODEL, max_tokens=50, system=system, messages=HELLO)
    second = await client.messages.create(model=MODEL, max_tokens=50, system=system, messages=HELLO)
    written = first.usage.cache_creation_input_tokens
    assert written > 1024
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == written
    assert first.usage.input_tokens == second.usage.input_tokens  # the uncached rest


async def test_tool_use(client, fake) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    call = {"id": "toolu_01abc", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}}
    fake.reply("Checking.", tool_calls=[call], times=2)
    message = await client.messages.create(
        model=MODEL, max_tokens=100, messages=HELLO, tools=tools, tool_choice={"type": "any"}
    )
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.text == "Checking."
    assert (tool.type, tool.id, tool.name) == ("tool_use", "toolu_01abc", "get_weather")
    assert tool.input == {"city": "Paris", "days": [1, 2]}

    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=HELLO, tools=tools
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[1].input == {"city": "Paris", "days": [1, 2]}
    assert final.stop_reason == "tool_use"

    # The answer goes back as a tool_result, which the fake pairs with the tool_use.
    answered = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=tools,
        messages=[
            *HELLO,
            {"role": "assistant", "content": [block.to_dict() for block in message.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01abc", "content": "21C"}
                ],
            },
        ],
    )
    assert answered.content[0].text == "The tool returned: 21C"


async def test_thinking_blocks(client, fake) -> None:
    fake.reply("Four.", thinking="Two plus two is four.", times=2)
    message = await client.messages.create(
        model=MODEL,
        max_tokens=2048,
        messages=HELLO,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    thinking, text = message.content
    assert (thinking.type, thinking.thinking) == ("thinking", "Two plus two is four.")
    assert thinking.signature
    assert text.text == "Four."
    assert message.usage.output_tokens_details.thinking_tokens == 6
    async with client.messages.stream(
        model=MODEL,
        max_tokens=2048,
        messages=HELLO,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].thinking == "Two plus two is four."
    assert final.content[0].signature == thinking.signature
    assert final.usage.output_tokens_details.thinking_tokens == 6


async def test_models_list_pages_and_get(client, fake) -> None:
    fake.models = {f"claude-test-{n}": f"Claude Test {n}" for n in range(5)}
    page = await client.models.list(limit=2)
    assert [m.id for m in page.data] == ["claude-test-0", "claude-test-1"]
    assert page.has_more is True
    ids = [model.id async for model in client.models.list(limit=2)]
    assert ids == list(fake.models)
    model = await client.models.retrieve("claude-test-3")
    assert (model.display_name, model.type) == ("Claude Test 3", "model")
    assert model.created_at.year == 2025
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("claude-none")


async def test_count_tokens(client, fake) -> None:
    counted = await client.messages.count_tokens(model=MODEL, system="Be brief.", messages=HELLO)
    created = await client.messages.create(
        model=MODEL, max_tokens=10, system="Be brief.", messages=HELLO
    )
    assert counted.input_tokens == created.usage.input_tokens == 16


async def test_rate_limit_error(client, fake) -> None:
    fake.fail(429, "Number of request tokens has exceeded your per-minute rate limit")
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    error = info.value
    assert error.status_code == 429
    assert error.type == "rate_limit_error"
    assert error.api_message == "Number of request tokens has exceeded your per-minute rate limit"
    assert error.response.headers["retry-after"] == "20"
    assert error.request_id == fake.last_request.request_id
    assert error.body["request_id"] == error.request_id


@pytest.mark.parametrize(
    ("status", "error_class", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.ContentTooLargeError, "request_too_large"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
async def test_typed_errors(client, fake, status, error_class, kind) -> None:
    fake.fail(status)
    with pytest.raises(error_class) as info:
        await client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert info.value.status_code == status
    assert info.value.type == kind
    if status >= 500:
        assert isinstance(info.value, anthropic.InternalServerError)


async def test_requests_anthropic_rejects(client, fake) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "system", "content": "Be brief."}]
        )
    assert 'Unexpected role "system"' in info.value.api_message
    with pytest.raises(anthropic.BadRequestError, match="roles must alternate"):
        await client.messages.create(model=MODEL, max_tokens=10, messages=HELLO + HELLO)
    with pytest.raises(anthropic.BadRequestError, match="seed: Extra inputs"):
        await client.messages.create(
            model=MODEL, max_tokens=10, messages=HELLO, extra_body={"seed": 1}
        )


async def test_wrong_key(fake) -> None:
    sdk = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="sk-ant-wrong", max_retries=0)
    try:
        with pytest.raises(anthropic.AuthenticationError) as info:
            await sdk.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
        assert info.value.api_message == "invalid x-api-key"
    finally:
        await sdk.close()


async def test_error_event_in_the_middle_of_a_stream(client, fake) -> None:
    fake.fault("mid_stream_error")
    received: list[str] = []

    async def read() -> None:
        async with client.messages.stream(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "a b c d e f g h"}]
        ) as stream:
            async for text in stream.text_stream:
                received.append(text)

    with pytest.raises(anthropic.APIStatusError) as info:
        await read()
    assert received
    assert info.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


async def test_overloaded_json_request(client, fake) -> None:
    fake.fault("mid_stream_error")
    with pytest.raises(anthropic.OverloadedError) as info:
        await client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert info.value.status_code == 529


async def test_reset_forgets_scripts_requests_and_the_cache(client, fake) -> None:
    manual = " ".join(f"Rule {n}: answer in plain words." for n in range(200))
    system = [{"type": "text", "text": manual, "cache_control": {"type": "ephemeral"}}]
    await client.messages.create(model=MODEL, max_tokens=50, system=system, messages=HELLO)
    fake.fail(529)
    fake.models = {"claude-only": "Claude Only"}
    fake.reset()
    assert fake.requests == []
    again = await client.messages.create(model=MODEL, max_tokens=50, system=system, messages=HELLO)
    assert again.usage.cache_read_input_tokens == 0
    assert again.usage.cache_creation_input_tokens > 0
    assert [m.id async for m in client.models.list()][:1] == ["claude-sonnet-4-6"]
