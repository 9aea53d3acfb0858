"""The OpenAI provider against the fake OpenAI server: payloads, answers, streams and errors."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tollway.errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthExceededError,
    MalformedResponseError,
    NotFoundError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
)
from tollway.providers import Secret
from tollway.providers.http import HttpPool, endpoint_key
from tollway.testing import FakeOpenAI
from tollway.testing.streams import call, collect, drain, joined, wait_for
from tollway.types import (
    ImagePart,
    Message,
    Request,
    StreamChunk,
    TextPart,
    Tool,
    ToolCall,
    Usage,
)

KEY = "sk-test-0123456789"


def ask(text: str = "Hello there, how are you?", **fields: object) -> Request:
    model = str(fields.pop("model", "openai/gpt-4o-mini"))
    return Request(model, (Message.system("Be brief."), Message.user(text)), **fields)  # type: ignore[arg-type]


@pytest.fixture
def provider(make_provider, fake_openai: FakeOpenAI):
    fake_openai.require_api_key = KEY
    return make_provider("openai", base_url=fake_openai.base_url, api_key=Secret(KEY))


# -- answers -------------------------------------------------------------------------------


async def test_complete(provider, fake_openai: FakeOpenAI) -> None:
    response = await provider.complete(ask())
    assert response.text == "Echo: Hello there, how are you?"
    assert response.provider == "openai"
    assert response.model == "openai/gpt-4o-mini"
    assert response.finish_reason == "stop"
    assert response.id.startswith("chatcmpl-")
    assert response.request_id == fake_openai.last_request.request_id
    assert response.tool_calls == ()
    # 3 priming + (3 + 3) system + (3 + 7) user tokens; 9 answer tokens.
    assert response.usage == Usage(input_tokens=19, output_tokens=9)
    assert response.latency_s is not None
    assert response.latency_s >= 0
    sent = fake_openai.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert "stream" not in sent.json


async def test_stream_assembles_the_same_answer_as_complete(provider, fake_openai) -> None:
    complete = await provider.complete(ask())
    chunks = await collect(provider.stream(ask()))
    assert joined(chunks) == complete.text
    assert len([c for c in chunks if c.text]) > 1
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage == complete.usage
    assert all(c.model == "openai/gpt-4o-mini" for c in chunks)
    assert all(c.id and c.id.startswith("chatcmpl-") for c in chunks)
    sent = fake_openai.last_request.json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_completed_stream_returns_its_connection_to_the_pool(provider, fake_openai, http):
    await collect(provider.stream(ask()))
    pool = http.endpoints()[endpoint_key(fake_openai.base_url)]
    assert pool["idle"] == 1
    assert pool["in_use"] == 0


async def test_usage_with_cached_and_reasoning_tokens(provider, fake_openai) -> None:
    fake_openai.reply(
        "Forty-two.",
        usage={"prompt_tokens": 1200},
        cached_tokens=1024,
        reasoning_tokens=300,
        times=2,
    )
    expected = Usage(
        input_tokens=1200, output_tokens=304, cache_read_tokens=1024, reasoning_tokens=300
    )
    response = await provider.complete(ask())
    assert response.text == "Forty-two."
    assert response.usage == expected
    chunks = await collect(provider.stream(ask()))
    assert [c.usage for c in chunks if c.usage] == [expected]


async def test_payload_carries_every_request_field(make_provider, fake_openai) -> None:
    provider = make_provider("openai", base_url=fake_openai.base_url)
    weather = Tool(
        "get_weather",
        "Weather for a city",
        {"type": "object", "properties": {"city": {"type": "string"}}},
    )
    request = Request(
        "openai/gpt-4o-mini",
        (
            Message("developer", "Answer in French."),
            Message(
                "user",
                (
                    TextPart("What is this?"),
                    ImagePart("https://x/cat.png", "low"),
                    ImagePart("data:image/png;base64,AAAA"),
                ),
                name="ann",
            ),
        ),
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=("\n\n", "END"),
        seed=7,
        tools=(weather,),
        tool_choice="get_weather",
        response_format={"type": "json_object"},
        user="u-17",
        session="s-1",
        extra={"logprobs": True, "temperature": 0.5},
    )
    await provider.complete(request)
    assert fake_openai.last_request.json == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "developer", "content": "Answer in French."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/cat.png", "detail": "low"},
                    },
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
                "name": "ann",
            },
        ],
        # A server other than api.openai.com gets the name every compatible server knows.
        "max_tokens": 50,
        "temperature": 0.5,  # extra is merged last
        "top_p": 0.9,
        "stop": ["\n\n", "END"],
        "seed": 7,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_object"},
        "user": "u-17",
        "logprobs": True,
    }


async def test_max_tokens_field(make_provider, fake_openai, http) -> None:
    compatible = make_provider("openai", base_url=fake_openai.base_url)
    # The fake, like OpenAI, rejects max_tokens for reasoning models.
    await compatible.complete(ask(model="openai/o3-mini", max_tokens=5))
    assert fake_openai.last_request.json["max_completion_tokens"] == 5
    assert "max_tokens" not in fake_openai.last_request.json

    forced = make_provider(
        "openai", base_url=fake_openai.base_url, max_tokens_param="max_completion_tokens"
    )
    await forced.complete(ask(max_tokens=5))
    assert fake_openai.last_request.json["max_completion_tokens"] == 5

    # api.openai.com always gets max_completion_tokens; building the payload needs no network.
    official = make_provider("openai", api_key=Secret(KEY))
    payload = official._payload(ask(max_tokens=5), "gpt-4o-mini")
    assert payload["max_completion_tokens"] == 5
    assert "max_tokens" not in payload


async def test_max_tokens_cuts_the_answer(provider) -> None:
    response = await provider.complete(ask("one two three four five six", max_tokens=3))
    assert response.text == "Echo: one"
    assert response.finish_reason == "length"


async def test_organization_project_and_custom_headers(make_provider, fake_openai) -> None:
    provider = make_provider(
        "openai",
        base_url=fake_openai.base_url,
        api_key=Secret(KEY),
        organization="org-1",
        project="proj-2",
        headers={"X-Team": "search"},
    )
    await provider.complete(ask())
    headers = fake_openai.last_request.headers
    assert headers["OpenAI-Organization"] == "org-1"
    assert headers["OpenAI-Project"] == "proj-2"
    assert headers["X-Team"] == "search"


async def test_key_from_environment(make_provider, fake_openai, monkeypatch) -> None:
    fake_openai.require_api_key = KEY
    monkeypatch.setenv("MY_KEY", KEY)
    provider = make_provider("openai", base_url=fake_openai.base_url, api_key_env="MY_KEY")
    response = await provider.complete(ask())
    assert response.text
    assert fake_openai.last_request.headers["Authorization"] == f"Bearer {KEY}"


async def test_compatible_server_without_a_key(make_provider, fake_openai) -> None:
    provider = make_provider("openai", name="local", base_url=fake_openai.base_url)
    response = await provider.complete(ask(model="local/llama-3"))
    assert response.model == "local/llama-3"
    assert response.provider == "local"
    assert "Authorization" not in fake_openai.last_request.headers


async def test_wrong_key_keeps_openai_message(make_provider, fake_openai) -> None:
    fake_openai.require_api_key = KEY
    provider = make_provider(
        "openai", base_url=fake_openai.base_url, api_key=Secret("sk-wrong-999")
    )
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(ask())
    assert info.value.status == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.provider_message.startswith("Incorrect API key provided")


# -- tools ---------------------------------------------------------------------------------


async def test_tool_calls_from_the_model(provider, fake_openai) -> None:
    calls = [
        {"id": "call_a", "name": "get_weather", "arguments": {"city": "Paris"}},
        {"id": "call_b", "name": "get_time", "arguments": '{"zone": "Europe/Paris"}'},
    ]
    fake_openai.reply(tool_calls=calls, times=2)
    response = await provider.complete(ask())
    assert response.finish_reason == "tool_calls"
    assert response.text == ""
    assert response.tool_calls == (
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", '{"zone": "Europe/Paris"}'),
    )

    chunks = await collect(provider.stream(ask()))
    assembled: dict[int, list[str]] = {}
    ids: dict[int, str] = {}
    names: dict[int, str] = {}
    for chunk in chunks:
        for delta in chunk.tool_calls:
            assembled.setdefault(delta.index, []).append(delta.arguments)
            if delta.id:
                ids[delta.index] = delta.id
            if delta.name:
                names[delta.index] = delta.name
    # Arguments arrive in several fragments, as from OpenAI.
    assert len(assembled[0]) > 2
    rebuilt = tuple(ToolCall(ids[i], names[i], "".join(assembled[i])) for i in sorted(assembled))
    assert rebuilt == response.tool_calls
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_tool_results_go_back_to_the_model(provider, fake_openai) -> None:
    call = ToolCall("call_a", "get_weather", '{"city": "Paris"}')
    request = Request(
        "openai/gpt-4o-mini",
        (
            Message.user("Weather in Paris?"),
            Message.assistant("", (call,)),
            Message("tool", '{"temp": 21}', tool_call_id="call_a"),
        ),
    )
    response = await provider.complete(request)
    assert response.text == 'The tool returned: {"temp": 21}'
    assert fake_openai.last_request.json["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_a"},
    ]


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "retryable"),
    [
        (400, BadRequestError, False),
        (401, AuthenticationError, False),
        (404, NotFoundError, False),
        (429, RateLimitedError, True),
        (500, UnavailableError, True),
        (503, UnavailableError, True),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_error_statuses(provider, fake_openai, status, error_class, retryable, streaming):
    fake_openai.fail(
        status,
        f"provider says {status}",
        code=f"code_{status}",
        headers={"retry-after": "2"} if status == 429 else None,
    )
    with pytest.raises(error_class) as info:
        await call(provider, ask(), streaming)
    error = info.value
    assert type(error) is error_class
    assert error.status == status
    assert error.provider == "openai"
    assert error.provider_message == f"provider says {status}"
    assert error.code == f"code_{status}"
    assert error.retryable is retryable
    assert error.request_id == fake_openai.last_request.request_id
    assert error.retry_after == (2.0 if status == 429 else None)
    assert f"provider says {status}" in str(error)


async def test_context_length_error(provider, fake_openai) -> None:
    fake_openai.fail(
        400, "This model's maximum context length is 128000 tokens.", code="context_length_exceeded"
    )
    with pytest.raises(ContextLengthExceededError):
        await provider.complete(ask())


async def test_default_openai_error_bodies(provider, fake_openai) -> None:
    fake_openai.fail(429)
    with pytest.raises(RateLimitedError) as info:
        await provider.complete(ask())
    assert info.value.code == "rate_limit_exceeded"
    assert "Rate limit reached for gpt-4o-mini" in info.value.provider_message


async def test_error_page_from_a_proxy_keeps_an_excerpt(provider, fake_openai) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>" + "x" * 500 + "</body></html>"
    fake_openai.fail(502, raw_body=page)
    with pytest.raises(UnavailableError) as info:
        await provider.complete(ask())
    assert info.value.provider_message.startswith("<html><body><h1>502 Bad Gateway")
    assert len(info.value.provider_message) <= 200


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_reset(provider, fake_openai, http, streaming) -> None:
    fake_openai.fault("reset")
    with pytest.raises(UnavailableError) as info:
        await call(provider, ask(), streaming)
    assert info.value.retryable
    assert info.value.provider == "openai"
    stats = http.stats[endpoint_key(fake_openai.base_url)]
    assert (stats.requests, stats.failures) == (1, 1)
    # The next call gets through on a fresh connection.
    assert (await provider.complete(ask())).text


async def test_connection_refused(make_provider) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = make_provider("openai", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
        await provider.complete(ask())


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_answer(provider, fake_openai, http, streaming) -> None:
    fake_openai.fault("malformed")
    with pytest.raises(MalformedResponseError) as info:
        await call(provider, ask(), streaming)
    assert info.value.provider == "openai"
    assert "openai" in str(info.value)
    assert '{"id": "chatcmpl-' in info.value.provider_message
    assert len(info.value.provider_message) <= 200
    assert http.stats[endpoint_key(fake_openai.base_url)].failures == 1


async def test_scripted_outcomes_are_served_in_order(provider, fake_openai) -> None:
    fake_openai.fail(400)
    fake_openai.reply("fine")
    with pytest.raises(BadRequestError):
        await provider.complete(ask())
    assert (await provider.complete(ask())).text == "fine"
    assert (await provider.complete(ask())).text.startswith("Echo:")


@pytest.fixture
async def odd_server():
    """A server whose 200 answers are no chat completion; FakeOpenAI never sends such things,
    which is the point of it. Queue (content type, body) pairs."""
    bodies: list[tuple[str, bytes]] = []

    async def answer(request: web.Request) -> web.Response:
        content_type, body = bodies.pop(0)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server, bodies


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "x", "choices": []}',
        b'{"id": "x", "choices": [{"message": {"content": ["not", "text"]}}]}',
        b'{"id": "x", "choices": [{"message": {"tool_calls": [{"id": "c"}]}}]}',
        b"[1, 2, 3]",
        b"",
    ],
)
async def test_wrong_shape_answer_is_malformed(make_provider, odd_server, body) -> None:
    server, bodies = odd_server
    bodies.append(("application/json", body))
    provider = make_provider("openai", base_url=str(server.make_url("/v1")))
    with pytest.raises(MalformedResponseError) as info:
        await provider.complete(ask())
    assert info.value.provider_message == body.decode()


async def test_error_inside_a_200_answer(make_provider, odd_server) -> None:
    server, bodies = odd_server
    bodies.append(
        ("application/json", b'{"error": {"message": "model overloaded", "type": "server_error"}}')
    )
    provider = make_provider("openai", name="vllm", base_url=str(server.make_url("/v1")))
    with pytest.raises(UnavailableError, match="model overloaded") as info:
        await provider.complete(ask(model="vllm/llama"))
    assert info.value.provider == "vllm"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/event-stream", b"data: \xff\xfe not utf-8\n\n"),
        ("text/event-stream", b'data: {"choices": "nope"}\n\n'),
        # A server that ignored "stream": true and answered in one piece.
        ("application/json", b'{"id": "x", "choices": []}'),
    ],
)
async def test_malformed_streams(make_provider, odd_server, content_type, body) -> None:
    server, bodies = odd_server
    bodies.append((content_type, body))
    provider = make_provider("openai", base_url=str(server.make_url("/v1")))
    with pytest.raises(MalformedResponseError, match="openai"):
        await collect(provider.stream(ask()))


async def test_latency_counts_against_the_timeout(provider, fake_openai) -> None:
    fake_openai.latency = 30
    with pytest.raises(ProviderTimeoutError):
        await provider.complete(ask(timeout=0.2))


async def test_cut_stream_is_interrupted(provider, fake_openai) -> None:
    fake_openai.fault("cut_stream")
    received: list[StreamChunk] = []
    with pytest.raises(StreamInterruptedError) as info:
        await drain(provider.stream(ask("one two three four five six seven eight")), received)
    assert info.value.retryable
    assert "[DONE]" in str(info.value)
    assert joined(received)  # some text came before the cut
    assert not any(c.finish_reason for c in received)


async def test_cut_json_answer_is_unavailable(provider, fake_openai) -> None:
    fake_openai.fault("cut_stream")
    with pytest.raises(UnavailableError, match="cut off"):
        await provider.complete(ask())


async def test_mid_stream_error(provider, fake_openai) -> None:
    fake_openai.fault("mid_stream_error")
    received: list[StreamChunk] = []
    with pytest.raises(UnavailableError) as info:
        await drain(provider.stream(ask("one two three four five six seven eight")), received)
    assert joined(received)
    assert info.value.provider_message.startswith("The server had an error")
    assert info.value.retryable


@pytest.mark.parametrize("streaming", [False, True])
async def test_stall_times_out(provider, fake_openai, streaming) -> None:
    fake_openai.fault("stall")
    with pytest.raises(ProviderTimeoutError, match=r"within 0\.2s") as info:
        await call(provider, ask(timeout=0.2), streaming)
    assert info.value.retryable


# -- stopping early ------------------------------------------------------------------------


async def test_closing_a_stream_early_closes_the_connection(provider, fake_openai, http):
    fake_openai.chunk_delay = 0.01
    fake_openai.reply(" ".join(f"word{n}" for n in range(300)))
    stream = provider.stream(ask())
    assert (await anext(stream)).text
    assert (await anext(stream)).text
    await stream.aclose()
    await wait_for(lambda: fake_openai.abandoned_streams == 1)
    pool = http.endpoints()[endpoint_key(fake_openai.base_url)]
    assert pool["open"] == 0


async def test_cancelling_a_stream_consumer_closes_the_connection(provider, fake_openai, http):
    fake_openai.chunk_delay = 0.05
    fake_openai.reply(" ".join(f"word{n}" for n in range(300)))
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
    await wait_for(lambda: fake_openai.abandoned_streams == 1)
    assert http.endpoints()[endpoint_key(fake_openai.base_url)]["open"] == 0


# -- models and bookkeeping ----------------------------------------------------------------


async def test_list_models(provider, fake_openai) -> None:
    models = await provider.list_models()
    assert [m.id for m in models] == list(fake_openai.models)
    assert {m.provider for m in models} == {"openai"}
    assert {m.owned_by for m in models} == {"system"}
    assert fake_openai.last_request.path == "/v1/models"
    assert fake_openai.last_request.method == "GET"


async def test_stats_count_requests_and_endpoint_failures(provider, fake_openai, http) -> None:
    fake_openai.fail(400)  # the caller's fault: not the endpoint's
    fake_openai.fail(500)
    for _ in range(2):
        with pytest.raises(ProviderError):
            await provider.complete(ask())
    await provider.complete(ask())
    await collect(provider.stream(ask()))
    stats = http.stats[endpoint_key(fake_openai.base_url)]
    assert (stats.requests, stats.failures) == (4, 1)


async def test_aclose_leaves_the_pool_to_its_owner(provider, http, fake_openai) -> None:
    await provider.complete(ask())
    await provider.aclose()
    assert http.endpoints()[endpoint_key(fake_openai.base_url)]["idle"] == 1
    # Still usable: the session is fetched again from the pool.
    assert (await provider.complete(ask())).text


async def test_closed_pool_says_so(make_provider, fake_openai) -> None:
    pool = HttpPool()
    from tollway.providers import ProviderContext
    from tollway_openai import openai_factory
    from tollway_openai.settings import OpenAISettings

    provider = openai_factory(
        OpenAISettings(base_url=fake_openai.base_url), ProviderContext(name="openai", http=pool)
    )
    await provider.complete(ask())
    await pool.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await provider.complete(ask())


def test_payload_is_json_serialisable_with_mapping_proxies(make_provider, fake_openai) -> None:
    from types import MappingProxyType

    provider = make_provider("openai", base_url=fake_openai.base_url)
    request = Request(
        "openai/gpt-4o-mini",
        (Message.user("hi"),),
        tool_choice=MappingProxyType({"type": "function", "function": {"name": "f"}}),
        response_format=MappingProxyType({"type": "json_object"}),
        tools=(Tool("f", parameters=MappingProxyType({"type": "object"})),),
    )
    assert json.loads(json.dumps(provider._payload(request, "gpt-4o-mini")))["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]


def test_fast_json_decoding_agrees_with_json_loads() -> None:
    from tollway_openai.provider import _decode

    assert _decode('{"a": [1, "x"]}') == {"a": [1, "x"]}
    assert _decode(' {"a": 1}\r\n') == {"a": 1}
    for text in ('{"a": 1} trailing', "", "{", "[DONE]"):
        with pytest.raises(ValueError):
            _decode(text)


async def test_rate_limit_headers_reach_the_response(fake_openai: FakeOpenAI) -> None:
    from tollway import Pipeline

    fake_openai.response_headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-remaining-tokens": "149000",
        "x-ratelimit-reset-requests": "120ms",
    }
    async with Pipeline.build(
        providers={"openai": {"base_url": fake_openai.base_url, "api_key": "sk-test"}}
    ) as pipe:
        reply = await pipe.complete("openai/gpt-4o-mini", "hi")
        fake_openai.response_headers = {}
        plain = await pipe.complete("openai/gpt-4o-mini", "hi")
    assert reply.rate_limit == {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-remaining-tokens": "149000",
        "x-ratelimit-reset-requests": "120ms",
    }
    assert plain.rate_limit is None
