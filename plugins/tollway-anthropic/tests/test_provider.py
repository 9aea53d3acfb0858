"""The Anthropic provider against the fake Anthropic server: payloads, answers, streams, errors."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tollway.errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthExceededError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
)
from tollway.providers import Secret
from tollway.providers.http import endpoint_key
from tollway.streaming import StreamAssembler
from tollway.testing.fake_anthropic import FakeAnthropic
from tollway.testing.streams import call, collect, joined, wait_for
from tollway.types import (
    ImagePart,
    Message,
    Request,
    Response,
    StreamChunk,
    TextPart,
    Tool,
    ToolCall,
    Usage,
)

MODEL = "claude-sonnet-4-6"


def ask(text: str = "Hello there, how are you?", **fields: object) -> Request:
    model = str(fields.pop("model", f"anthropic/{MODEL}"))
    return Request(model, (Message.system("Be brief."), Message.user(text)), **fields)  # type: ignore[arg-type]


def assemble(chunks: list[StreamChunk], model: str = f"anthropic/{MODEL}") -> Response:
    assembler = StreamAssembler("anthropic", model)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.response()


def same_answer(streamed: Response, completed: Response) -> None:
    """What a stream assembles to must be what complete() gives (ids differ per call)."""
    assert streamed.message == completed.message
    assert streamed.finish_reason == completed.finish_reason
    assert streamed.usage == completed.usage
    assert streamed.model == completed.model
    assert streamed.provider == completed.provider


async def read_into(stream: AsyncIterator[StreamChunk], received: list[StreamChunk]) -> None:
    async for chunk in stream:
        received.append(chunk)


# -- answers -------------------------------------------------------------------------------


async def test_complete(provider, fake_anthropic: FakeAnthropic) -> None:
    response = await provider.complete(ask())
    assert response.text == "Echo: Hello there, how are you?"
    assert response.provider == "anthropic"
    assert response.model == f"anthropic/{MODEL}"
    assert response.finish_reason == "stop"
    assert response.id.startswith("msg_01")
    assert response.request_id == fake_anthropic.last_request.request_id
    assert response.request_id.startswith("req_")
    assert response.tool_calls == ()
    # 3 priming + 3 system ("Be brief.") + 3 framing + 7 user tokens; 9 answer tokens.
    assert response.usage == Usage(input_tokens=16, output_tokens=9)
    assert response.latency_s is not None
    assert response.latency_s >= 0


async def test_what_goes_on_the_wire(make_provider, fake_anthropic) -> None:
    provider = make_provider(
        base_url=fake_anthropic.base_url,
        api_key=Secret(fake_anthropic.require_api_key),
        beta=["prompt-caching-2024-07-31", "token-efficient-tools-2025-02-19"],
        headers={"X-Team": "search"},
    )
    await provider.complete(ask(max_tokens=64))
    sent = fake_anthropic.last_request
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == fake_anthropic.require_api_key
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == (
        "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"
    )
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["X-Team"] == "search"
    assert "Authorization" not in sent.headers
    assert sent.json == {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hello there, how are you?"}],
        "system": "Be brief.",
    }


async def test_stream_assembles_the_same_answer_as_complete(provider, fake_anthropic) -> None:
    completed = await provider.complete(ask())
    chunks = await collect(provider.stream(ask()))
    same_answer(assemble(chunks), completed)
    assert len([c for c in chunks if c.text]) > 1
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert [c.usage for c in chunks if c.usage] == [completed.usage]
    assert all(c.model == f"anthropic/{MODEL}" for c in chunks)
    assert all(c.id and c.id.startswith("msg_01") for c in chunks)
    assert fake_anthropic.last_request.json["stream"] is True


async def test_completed_stream_returns_its_connection_to_the_pool(
    provider, fake_anthropic, http
) -> None:
    await collect(provider.stream(ask()))
    pool = http.endpoints()[endpoint_key(fake_anthropic.base_url)]
    assert pool["idle"] == 1
    assert pool["in_use"] == 0


@pytest.mark.parametrize(
    "text", ["Grüße aus Köln 👋 — 日本語のテキスト, ünïcödé “quotes”", ""], ids=["unicode", "empty"]
)
async def test_unicode_and_empty_answers(provider, fake_anthropic, text) -> None:
    fake_anthropic.reply(text, times=2)
    completed = await provider.complete(ask())
    assert completed.text == text
    assert completed.finish_reason == "stop"
    assert completed.usage.output_tokens >= 1
    same_answer(assemble(await collect(provider.stream(ask()))), completed)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),
    ],
)
async def test_stop_reasons(provider, fake_anthropic, stop_reason, finish_reason) -> None:
    fake_anthropic.reply("Some answer.", stop_reason=stop_reason, times=2)
    assert (await provider.complete(ask())).finish_reason == finish_reason
    chunks = await collect(provider.stream(ask()))
    assert [c.finish_reason for c in chunks if c.finish_reason] == [finish_reason]


async def test_max_tokens_cuts_the_answer_and_has_a_default(make_provider, fake_anthropic):
    provider = make_provider(
        base_url=fake_anthropic.base_url,
        api_key=Secret(fake_anthropic.require_api_key),
        default_max_tokens=3,
    )
    response = await provider.complete(ask("one two three four five six"))
    assert fake_anthropic.last_request.json["max_tokens"] == 3
    assert response.text == "Echo: one"
    assert response.finish_reason == "length"
    await provider.complete(ask(max_tokens=200))
    assert fake_anthropic.last_request.json["max_tokens"] == 200


async def test_stop_sequences(provider, fake_anthropic) -> None:
    response = await provider.complete(ask("alpha beta END gamma", stop=("END", "\n\nHuman:")))
    assert fake_anthropic.last_request.json["stop_sequences"] == ["END", "\n\nHuman:"]
    assert response.text == "Echo: alpha beta "
    assert response.finish_reason == "stop"


# -- usage ---------------------------------------------------------------------------------


async def test_usage_counts_cache_and_thinking_tokens(provider, fake_anthropic) -> None:
    fake_anthropic.reply(
        "Forty-two.",
        usage={"input_tokens": 30},
        cache_read_tokens=1200,
        cache_write_tokens=400,
        thinking="Six times seven.",
        thinking_tokens=250,
        times=2,
    )
    # Anthropic's input_tokens leaves the cache out; tollway's counts every prompt token.
    expected = Usage(
        input_tokens=30 + 1200 + 400,
        output_tokens=250 + 4,
        cache_read_tokens=1200,
        cache_write_tokens=400,
        reasoning_tokens=250,
    )
    completed = await provider.complete(ask())
    assert completed.text == "Forty-two."  # the thinking is not part of the answer
    assert completed.usage == expected
    same_answer(assemble(await collect(provider.stream(ask()))), completed)


async def test_system_prompt_cache_control_from_settings(make_provider, fake_anthropic):
    provider = make_provider(
        base_url=fake_anthropic.base_url,
        api_key=Secret(fake_anthropic.require_api_key),
        system_cache_control={"type": "ephemeral", "ttl": "1h"},
    )
    manual = " ".join(f"Rule {n}: answer in plain words." for n in range(200))
    request = Request(
        f"anthropic/{MODEL}",
        (Message.system(manual), Message.system("Be brief."), Message.user("Hi")),
    )
    first = await provider.complete(request)
    assert fake_anthropic.last_request.json["system"] == [
        {
            "type": "text",
            "text": manual + "\n\nBe brief.",
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    second = await provider.complete(request)
    prefix = first.usage.cache_write_tokens
    assert prefix > 1024
    assert first.usage.cache_read_tokens == 0
    assert second.usage.cache_read_tokens == prefix
    assert second.usage.cache_write_tokens == 0
    assert first.usage.input_tokens == second.usage.input_tokens > prefix


async def test_top_level_cache_control_passes_through_extra(provider, fake_anthropic) -> None:
    long_question = " ".join(f"fact{n}" for n in range(1100))
    request = ask(long_question, extra={"cache_control": {"type": "ephemeral"}})
    first = await provider.complete(request)
    assert fake_anthropic.last_request.json["cache_control"] == {"type": "ephemeral"}
    second = await provider.complete(request)
    assert first.usage.cache_write_tokens == first.usage.input_tokens
    assert second.usage.cache_read_tokens == first.usage.input_tokens


async def test_thinking_passes_through_and_stays_out_of_the_answer(provider, fake_anthropic):
    request = ask(max_tokens=4000, extra={"thinking": {"type": "enabled", "budget_tokens": 2000}})
    completed = await provider.complete(request)
    assert fake_anthropic.last_request.json["thinking"] == {
        "type": "enabled",
        "budget_tokens": 2000,
    }
    assert completed.text == "Echo: Hello there, how are you?"
    assert completed.usage.reasoning_tokens > 0
    assert completed.usage.output_tokens == completed.usage.reasoning_tokens + 9
    chunks = await collect(provider.stream(request))
    same_answer(assemble(chunks), completed)
    assert "Echo it back" not in joined(chunks)


# -- the request ---------------------------------------------------------------------------


async def test_payload_carries_every_request_field(provider, fake_anthropic) -> None:
    weather = Tool(
        "get_weather",
        "Weather for a city",
        {"type": "object", "properties": {"city": {"type": "string"}}},
    )
    request = Request(
        f"anthropic/{MODEL}",
        (
            Message.system("Answer in French."),
            Message("developer", "Be brief."),
            Message(
                "user",
                (
                    TextPart("What is this?"),
                    ImagePart("https://example.com/cat.png", "low"),
                    ImagePart("data:image/png;base64,iVBORw0KGgo="),
                ),
                name="ann",
            ),
        ),
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=("\n\n",),
        seed=7,  # Anthropic has no seed: not sent (the fake rejects unknown fields)
        tools=(weather,),
        tool_choice="get_weather",
        user="u-17",
        extra={"top_k": 5, "temperature": 0.5},
    )
    await provider.complete(request)
    assert fake_anthropic.last_request.json == {
        "model": MODEL,
        "max_tokens": 50,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.png"},
                    },
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                ],
            }
        ],
        "system": "Answer in French.\n\nBe brief.",
        "temperature": 0.5,  # extra is merged last
        "top_p": 0.9,
        "stop_sequences": ["\n\n"],
        "tools": [
            {
                "name": "get_weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "Weather for a city",
            }
        ],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "metadata": {"user_id": "u-17"},
        "top_k": 5,
    }


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ("lookup", {"type": "tool", "name": "lookup"}),
        ({"type": "function", "function": {"name": "lookup"}}, {"type": "tool", "name": "lookup"}),
        (
            {"type": "any", "disable_parallel_tool_use": True},
            {"type": "any", "disable_parallel_tool_use": True},
        ),
    ],
)
async def test_tool_choice(provider, fake_anthropic, choice, sent) -> None:
    await provider.complete(ask(tools=(Tool("lookup"),), tool_choice=choice))
    assert fake_anthropic.last_request.json["tool_choice"] == sent


async def test_consecutive_turns_of_one_role_are_merged(provider, fake_anthropic) -> None:
    request = Request(
        f"anthropic/{MODEL}",
        (
            Message.user("First question."),
            Message.user((TextPart("Second part."),)),
            Message.assistant("An answer."),
            Message.assistant("More of it."),
            Message.user("Thanks."),
        ),
    )
    response = await provider.complete(request)
    assert response.text == "Echo: Thanks."
    assert fake_anthropic.last_request.json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "First question."},
                {"type": "text", "text": "Second part."},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "An answer."},
                {"type": "text", "text": "More of it."},
            ],
        },
        {"role": "user", "content": "Thanks."},
    ]


@pytest.mark.parametrize(
    "message",
    [
        Message.assistant("", (ToolCall("toolu_1", "f", "[1, 2]"),)),
        Message.assistant("", (ToolCall("toolu_1", "f", '{"cut": '),)),
        Message("user", (ImagePart("data:image/png,not-base64"),)),
        Message("tool", "42"),  # no tool_call_id
    ],
    ids=["arguments-not-an-object", "arguments-not-json", "data-url-not-base64", "no-call-id"],
)
async def test_requests_anthropic_cannot_take_fail_before_sending(
    provider, fake_anthropic, message
) -> None:
    request = Request(f"anthropic/{MODEL}", (Message.user("hi"), message))
    with pytest.raises(BadRequestError) as info:
        await provider.complete(request)
    assert info.value.provider == "anthropic"
    assert fake_anthropic.requests == []


async def test_fake_rejections_keep_anthropics_message(provider, fake_anthropic) -> None:
    # Anthropic's temperature stops at 1 (OpenAI's at 2): the 400 is passed on as it came.
    with pytest.raises(BadRequestError) as info:
        await provider.complete(ask(temperature=1.5))
    assert info.value.provider_message == "temperature: Input should be less than or equal to 1"
    assert info.value.code == "invalid_request_error"
    assert info.value.request_id == fake_anthropic.last_request.request_id


# -- tools ---------------------------------------------------------------------------------


async def test_tool_calls_from_the_model(provider, fake_anthropic) -> None:
    calls = [
        {"id": "toolu_a", "name": "get_weather", "input": {"city": "Paris", "unit": "°C"}},
        ToolCall("toolu_b", "get_time", '{"zone": "Europe/Paris"}'),
    ]
    fake_anthropic.reply("Let me check both.", tool_calls=calls, times=2)
    completed = await provider.complete(ask())
    assert completed.finish_reason == "tool_calls"
    assert completed.text == "Let me check both."
    assert completed.tool_calls == (
        ToolCall("toolu_a", "get_weather", json.dumps({"city": "Paris", "unit": "°C"})),
        ToolCall("toolu_b", "get_time", '{"zone": "Europe/Paris"}'),
    )
    assert [json.loads(c.arguments) for c in completed.tool_calls] == [
        {"city": "Paris", "unit": "°C"},
        {"zone": "Europe/Paris"},
    ]

    chunks = await collect(provider.stream(ask()))
    same_answer(assemble(chunks), completed)
    deltas = [d for c in chunks for d in c.tool_calls]
    # Indexes count tool calls, not Anthropic's content blocks (the text block is block 0).
    assert sorted({d.index for d in deltas}) == [0, 1]
    assert len([d for d in deltas if d.index == 0 and d.arguments]) > 2
    assert [(d.id, d.name) for d in deltas if d.id] == [
        ("toolu_a", "get_weather"),
        ("toolu_b", "get_time"),
    ]


async def test_tool_call_without_arguments(provider, fake_anthropic) -> None:
    fake_anthropic.reply(tool_calls=[{"id": "toolu_n", "name": "now"}], times=2)
    completed = await provider.complete(ask())
    assert completed.tool_calls == (ToolCall("toolu_n", "now", "{}"),)
    assert completed.text == ""
    same_answer(assemble(await collect(provider.stream(ask()))), completed)


async def test_tool_results_go_back_to_the_model(provider, fake_anthropic) -> None:
    paris = ToolCall("toolu_a", "get_weather", '{"city": "Paris"}')
    rome = ToolCall("toolu_b", "get_weather", '{"city": "Rome"}')
    request = Request(
        f"anthropic/{MODEL}",
        (
            Message.system("Be brief."),
            Message.user("Weather in Paris and Rome?"),
            Message.assistant("Checking.", (paris, rome)),
            Message("tool", '{"temp": 21}', tool_call_id="toolu_a"),
            Message("tool", (TextPart("sunny, 25"),), tool_call_id="toolu_b"),
            Message.user("Which is warmer?"),
        ),
        tools=(Tool("get_weather"),),
    )
    response = await provider.complete(request)
    assert response.text.startswith("The tool returned:")
    # Tool results and the user's next words are one user turn, as Anthropic requires.
    assert fake_anthropic.last_request.json["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_a",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_b",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": '{"temp": 21}'},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_b",
                    "content": [{"type": "text", "text": "sunny, 25"}],
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "error_class", "retryable"),
    [
        (400, "invalid_request_error", BadRequestError, False),
        (401, "authentication_error", AuthenticationError, False),
        (403, "permission_error", PermissionDeniedError, False),
        (404, "not_found_error", NotFoundError, False),
        (413, "request_too_large", BadRequestError, False),
        (429, "rate_limit_error", RateLimitedError, True),
        (500, "api_error", UnavailableError, True),
        (529, "overloaded_error", UnavailableError, True),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_error_statuses(
    provider, fake_anthropic, status, kind, error_class, retryable, streaming
) -> None:
    fake_anthropic.fail(
        status,
        f"provider says {status}",
        headers={"retry-after": "2"} if status == 429 else None,
    )
    with pytest.raises(error_class) as info:
        await call(provider, ask(), streaming)
    error = info.value
    assert type(error) is error_class
    assert error.status == status
    assert error.provider == "anthropic"
    assert error.provider_message == f"provider says {status}"
    assert error.code == kind
    assert error.retryable is retryable
    assert error.request_id == fake_anthropic.last_request.request_id
    assert error.retry_after == (2.0 if status == 429 else None)
    assert f"provider says {status}" in str(error)


async def test_default_error_bodies(provider, fake_anthropic) -> None:
    fake_anthropic.fail(429)
    fake_anthropic.fail(404)
    with pytest.raises(RateLimitedError) as limited:
        await provider.complete(ask())
    assert limited.value.retry_after == 20.0
    assert "rate limit" in limited.value.provider_message
    with pytest.raises(NotFoundError) as missing:
        await provider.complete(ask())
    assert missing.value.provider_message == f"model: {MODEL}"


async def test_prompt_too_long_is_a_context_length_error(provider, fake_anthropic) -> None:
    fake_anthropic.fail(400, "prompt is too long: 215000 tokens > 200000 maximum")
    with pytest.raises(ContextLengthExceededError) as info:
        await provider.complete(ask())
    assert info.value.code == "invalid_request_error"


async def test_wrong_key_keeps_anthropics_message(make_provider, fake_anthropic) -> None:
    provider = make_provider(base_url=fake_anthropic.base_url, api_key=Secret("sk-ant-wrong"))
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(ask())
    assert info.value.status == 401
    assert info.value.code == "authentication_error"
    assert info.value.provider_message == "invalid x-api-key"


async def test_key_from_environment(make_provider, fake_anthropic, monkeypatch) -> None:
    monkeypatch.setenv("CLAUDE_KEY", fake_anthropic.require_api_key)
    provider = make_provider(base_url=fake_anthropic.base_url + "/v1", api_key_env="CLAUDE_KEY")
    assert (await provider.complete(ask())).text
    assert fake_anthropic.last_request.path == "/v1/messages"
    assert fake_anthropic.last_request.headers["x-api-key"] == fake_anthropic.require_api_key


async def test_error_page_from_a_proxy_keeps_an_excerpt(provider, fake_anthropic) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>" + "x" * 500 + "</body></html>"
    fake_anthropic.fail(502, raw_body=page)
    with pytest.raises(UnavailableError) as info:
        await provider.complete(ask())
    assert info.value.provider_message.startswith("<html><body><h1>502 Bad Gateway")
    assert len(info.value.provider_message) <= 200


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_reset(provider, fake_anthropic, http, streaming) -> None:
    fake_anthropic.fault("reset")
    with pytest.raises(UnavailableError) as info:
        await call(provider, ask(), streaming)
    assert info.value.retryable
    assert info.value.provider == "anthropic"
    stats = http.stats[endpoint_key(fake_anthropic.base_url)]
    assert (stats.requests, stats.failures) == (1, 1)
    # A transport failure: recorded through the handle, one failure in a row so far.
    assert stats.consecutive_failures == 1
    assert stats.last_error
    # The next call gets through on a fresh connection.
    assert (await provider.complete(ask())).text
    # Any HTTP answer ends the run of failures.
    assert (stats.requests, stats.failures, stats.consecutive_failures) == (2, 1, 0)


async def test_the_provider_follows_a_rebuilt_pool(provider, fake_anthropic, http) -> None:
    """Enough transport failures in a row rebuild the endpoint's session; the provider holds
    the pool's handle, not a session, so its next call goes out on the new one."""
    await provider.complete(ask())
    key = endpoint_key(fake_anthropic.base_url)
    fake_anthropic.fault("reset", times=http.rebuild_after)
    for _ in range(http.rebuild_after):
        with pytest.raises(UnavailableError):
            await provider.complete(ask())
    stats = http.stats[key]
    assert (stats.requests, stats.failures, stats.rebuilds) == (
        1 + http.rebuild_after,
        http.rebuild_after,
        1,
    )
    assert http.endpoints()[key]["open"] == 0  # the new session has no connection yet
    assert (await provider.complete(ask())).text
    # The call went out on the new session: its connection is back in the pool, idle.
    assert http.endpoints()[key]["idle"] == 1
    assert (stats.requests, stats.consecutive_failures) == (2 + http.rebuild_after, 0)


async def test_connection_refused(make_provider) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = make_provider(base_url=f"http://127.0.0.1:{port}", api_key=Secret("k"))
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
        await provider.complete(ask())


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_answer(provider, fake_anthropic, http, streaming) -> None:
    fake_anthropic.fault("malformed")
    with pytest.raises(MalformedResponseError) as info:
        await call(provider, ask(), streaming)
    assert info.value.provider == "anthropic"
    assert "anthropic" in str(info.value)
    assert len(info.value.provider_message) <= 200
    fragment = '{"type": "content_block_delta", "ind' if streaming else '{"id": "msg_01'
    assert info.value.provider_message == fragment
    assert http.stats[endpoint_key(fake_anthropic.base_url)].failures == 1


@pytest.fixture
async def odd_server():
    """A server whose 200 answers are valid JSON but no Anthropic message; FakeAnthropic never
    sends such things, which is the point of it."""
    bodies: list[tuple[bytes, str]] = []

    async def answer(request: web.Request) -> web.Response:
        body, content_type = bodies.pop(0)
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/v1/messages", answer)
    app.router.add_get("/v1/models", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server, bodies


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "msg_1", "content": [], "stop_reason": "end_turn"}',
        b'{"id": "msg_1", "content": "text", "usage": {}}',
        b'{"id": "msg_1", "content": [{"type": "text", "text": ["a"]}], "usage": {}}',
        b'{"id": "msg_1", "content": [{"type": "tool_use", "id": "t"}], "usage": {}}',
        b"[1, 2, 3]",
        b"",
    ],
)
async def test_wrong_shape_answer_is_malformed(make_provider, odd_server, body) -> None:
    server, bodies = odd_server
    bodies.append((body, "application/json"))
    provider = make_provider(base_url=str(server.make_url("")), api_key=Secret("k"))
    with pytest.raises(MalformedResponseError) as info:
        await provider.complete(ask())
    assert info.value.provider_message == body.decode()


@pytest.mark.parametrize(
    ("event", "content_type"),
    [
        (b'event: message_start\ndata: {"type": "message_start"}\n\n', "text/event-stream"),
        (
            b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
            b'"delta": {"type": "text_delta", "text": 5}}\n\n',
            "text/event-stream",
        ),
        (b"event: message_delta\ndata: [1]\n\n", "text/event-stream"),
        # A proxy's login page where the stream should be.
        (b"<html><body>Sign in to continue</body></html>", "text/html"),
    ],
)
async def test_wrong_shape_event_is_malformed(
    make_provider, odd_server, event, content_type
) -> None:
    server, bodies = odd_server
    bodies.append((event, content_type))
    provider = make_provider(base_url=str(server.make_url("")), api_key=Secret("k"))
    with pytest.raises(MalformedResponseError, match="not an Anthropic message"):
        await collect(provider.stream(ask()))


async def test_cut_stream_is_interrupted(provider, fake_anthropic) -> None:
    fake_anthropic.fault("cut_stream")
    received: list[StreamChunk] = []
    with pytest.raises(StreamInterruptedError) as info:
        await read_into(provider.stream(ask("one two three four five six seven eight")), received)
    assert info.value.retryable
    assert "message_stop" in str(info.value)
    assert info.value.request_id == fake_anthropic.last_request.request_id
    assert joined(received)  # some text came before the cut
    assert not any(c.finish_reason for c in received)


async def test_cut_json_answer_is_unavailable(provider, fake_anthropic) -> None:
    fake_anthropic.fault("cut_stream")
    with pytest.raises(UnavailableError, match="cut off"):
        await provider.complete(ask())


@pytest.mark.parametrize(
    ("kind", "message", "error_class"),
    [
        ("overloaded_error", "Overloaded", UnavailableError),
        ("api_error", "Internal server error", UnavailableError),
        ("rate_limit_error", "Output rate limit exceeded", RateLimitedError),
        ("invalid_request_error", "prompt is too long: 201000 tokens", ContextLengthExceededError),
    ],
)
async def test_mid_stream_error(provider, fake_anthropic, kind, message, error_class) -> None:
    fake_anthropic.mid_stream_error = (kind, message)
    fake_anthropic.fault("mid_stream_error")
    received: list[StreamChunk] = []
    with pytest.raises(error_class) as info:
        await read_into(provider.stream(ask("one two three four five six seven eight")), received)
    assert type(info.value) is error_class
    assert joined(received)
    assert info.value.provider_message == message
    assert info.value.code == kind
    assert info.value.status is None  # it came inside a 200 answer
    assert info.value.request_id == fake_anthropic.last_request.request_id


async def test_mid_stream_error_fault_on_a_json_request(provider, fake_anthropic) -> None:
    fake_anthropic.fault("mid_stream_error")
    with pytest.raises(UnavailableError) as info:
        await provider.complete(ask())
    assert (info.value.status, info.value.code) == (529, "overloaded_error")


@pytest.mark.parametrize("streaming", [False, True])
async def test_stall_times_out(provider, fake_anthropic, streaming) -> None:
    fake_anthropic.fault("stall")
    with pytest.raises(ProviderTimeoutError, match=r"within 0\.2s") as info:
        await call(provider, ask(timeout=0.2), streaming)
    assert info.value.retryable


async def test_settings_timeout_applies_without_a_request_timeout(make_provider, fake_anthropic):
    provider = make_provider(
        base_url=fake_anthropic.base_url,
        api_key=Secret(fake_anthropic.require_api_key),
        timeout=0.2,
    )
    fake_anthropic.fault("stall")
    with pytest.raises(ProviderTimeoutError, match=r"within 0\.2s"):
        await provider.complete(ask())


# -- stopping early ------------------------------------------------------------------------


async def test_closing_a_stream_early_closes_the_connection(provider, fake_anthropic, http):
    fake_anthropic.chunk_delay = 0.01
    fake_anthropic.reply(" ".join(f"word{n}" for n in range(300)))
    stream = provider.stream(ask())
    assert (await anext(stream)).text
    assert (await anext(stream)).text
    await stream.aclose()
    await wait_for(lambda: fake_anthropic.abandoned_streams == 1)
    assert http.endpoints()[endpoint_key(fake_anthropic.base_url)]["open"] == 0


async def test_cancelling_a_stream_consumer_closes_the_connection(provider, fake_anthropic, http):
    fake_anthropic.chunk_delay = 0.05
    fake_anthropic.reply(" ".join(f"word{n}" for n in range(300)))
    first = asyncio.Event()

    async def consume() -> None:
        async for chunk in provider.stream(ask()):
            if chunk.text:
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: fake_anthropic.abandoned_streams == 1)
    assert http.endpoints()[endpoint_key(fake_anthropic.base_url)]["open"] == 0


# -- models and bookkeeping ----------------------------------------------------------------


async def test_list_models(provider, fake_anthropic) -> None:
    models = await provider.list_models()
    assert [m.id for m in models] == list(fake_anthropic.models)
    assert {m.provider for m in models} == {"anthropic"}
    assert {m.owned_by for m in models} == {"anthropic"}
    assert all(m.context_window == 200_000 and m.max_output_tokens for m in models)
    sent = fake_anthropic.last_request
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert sent.headers["anthropic-version"] == "2023-06-01"


async def test_list_models_follows_pages(provider, fake_anthropic, monkeypatch) -> None:
    import tollway_anthropic.provider

    monkeypatch.setattr(tollway_anthropic.provider, "_MODELS_PAGE", 2)
    fake_anthropic.models = [f"claude-test-{n}" for n in range(5)]
    models = await provider.list_models()
    assert [m.id for m in models] == fake_anthropic.models
    assert [r.query.get("after_id") for r in fake_anthropic.requests] == [
        None,
        "claude-test-1",
        "claude-test-3",
    ]


async def test_list_models_wrong_shape_is_malformed(make_provider, odd_server) -> None:
    server, bodies = odd_server
    bodies.append((b'{"data": [{"name": "no id"}]}', "application/json"))
    provider = make_provider(base_url=str(server.make_url("")), api_key=Secret("k"))
    with pytest.raises(MalformedResponseError):
        await provider.list_models()


async def test_stats_count_requests_and_endpoint_failures(provider, fake_anthropic, http):
    fake_anthropic.fail(400)  # the caller's fault: not the endpoint's
    fake_anthropic.fail(529)
    for _ in range(2):
        with pytest.raises(ProviderError):
            await provider.complete(ask())
    await provider.complete(ask())
    await collect(provider.stream(ask()))
    stats = http.stats[endpoint_key(fake_anthropic.base_url)]
    assert (stats.requests, stats.failures) == (4, 1)


async def test_aclose_leaves_the_pool_to_its_owner(provider, http, fake_anthropic) -> None:
    await provider.complete(ask())
    await provider.aclose()
    assert http.endpoints()[endpoint_key(fake_anthropic.base_url)]["idle"] == 1
    # Still usable: the session is fetched again from the pool.
    assert (await provider.complete(ask())).text
