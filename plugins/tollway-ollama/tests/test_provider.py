"""The Ollama provider against FakeOllama: payloads, answers, streams, errors and faults."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tollway import Pipeline
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
from tollway.providers.http import endpoint_key
from tollway.streaming import StreamAssembler
from tollway.testing.fake_ollama import FakeOllama
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

WEATHER = Tool(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}},
)
TIME = Tool("get_time", parameters={"type": "object", "properties": {}})


def ask(text: str = "Hello there, how are you?", **fields: object) -> Request:
    model = str(fields.pop("model", "ollama/llama3.2"))
    return Request(model, (Message.system("Be brief."), Message.user(text)), **fields)  # type: ignore[arg-type]


def assemble(chunks: list[StreamChunk], provider: str = "ollama") -> Response:
    assembler = StreamAssembler(provider, "?")
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.response()


async def consume(stream: AsyncIterator[StreamChunk], into: list[StreamChunk]) -> None:
    """Keep every chunk that came before the stream failed."""
    async for chunk in stream:
        into.append(chunk)


@pytest.fixture
def provider(make_provider, fake_ollama: FakeOllama):
    return make_provider(base_url=fake_ollama.url)


# -- answers -------------------------------------------------------------------------------


async def test_complete(provider, fake_ollama: FakeOllama) -> None:
    response = await provider.complete(ask())
    assert response.text == "Echo: Hello there, how are you?"
    assert response.provider == "ollama"
    assert response.model == "ollama/llama3.2"
    assert response.finish_reason == "stop"
    assert response.tool_calls == ()
    # Ollama gives no id and (without a proxy in front) no request id.
    assert response.id == ""
    assert response.request_id is None
    # Prompt: frame 5 + system (5 + 3) + user (5 + 7); answer: 9 tokens + end of turn.
    assert response.usage == Usage(input_tokens=25, output_tokens=10)
    assert response.latency_s is not None
    assert response.latency_s >= 0


async def test_request_id_from_a_proxy_header(provider, fake_ollama: FakeOllama) -> None:
    fake_ollama.request_id_header = "x-request-id"
    response = await provider.complete(ask())
    assert response.request_id == fake_ollama.last_request.request_id
    fake_ollama.fail(500)
    with pytest.raises(UnavailableError) as info:
        await collect(provider.stream(ask()))
    assert info.value.request_id == fake_ollama.last_request.request_id


async def test_what_goes_on_the_wire(make_provider, fake_ollama: FakeOllama) -> None:
    provider = make_provider(
        base_url=fake_ollama.url,
        keep_alive="-1",
        options={"num_ctx": 8192, "temperature": 0.1},
        headers={"X-Team": "search"},
    )
    call = ToolCall("call_0", "get_weather", '{"city": "Paris"}')
    request = Request(
        "ollama/llama3.2",
        (
            Message("developer", "Answer in French."),
            Message.user("Weather in Paris?"),
            Message.assistant("", (call,)),
            Message("tool", '{"temp": 21}', tool_call_id="call_0"),
            Message("user", (TextPart("And this?"), ImagePart("data:image/png;base64,iVBORw0K"))),
        ),
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=("\n\n", "END"),
        seed=7,
        tools=(WEATHER,),
        tool_choice="auto",
        response_format={"type": "json_object"},
        user="u-17",
        extra={"think": False, "num_ctx": 16384, "top_k": 20},
    )
    await provider.complete(request)
    sent = fake_ollama.last_request
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["X-Team"] == "search"
    assert "Authorization" not in sent.headers
    assert sent.json == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"},
            {"role": "user", "content": "And this?", "images": ["iVBORw0K"]},
        ],
        "stream": False,
        "options": {
            "num_ctx": 16384,  # extra wins over the settings' options
            "temperature": 0.2,  # the request wins over the settings' options
            "num_predict": 50,
            "top_p": 0.9,
            "stop": ["\n\n", "END"],
            "seed": 7,
            "top_k": 20,  # an option name given in extra goes into options
        },
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
        "format": "json",
        "keep_alive": -1,  # a number: Ollama rejects "-1" as a duration string
        "think": False,
    }


async def test_extra_is_merged_last(provider, fake_ollama: FakeOllama) -> None:
    await provider.complete(
        ask(
            max_tokens=5,
            extra={
                "options": {"num_predict": 7, "mirostat": 2},
                "keep_alive": "10m",
                "format": "json",
                "stream": False,
            },
        )
    )
    sent = fake_ollama.last_request.json
    assert sent["options"] == {"num_predict": 7, "mirostat": 2}
    assert sent["keep_alive"] == "10m"
    assert sent["format"] == "json"


@pytest.mark.parametrize(
    ("choice", "offered"),
    [
        (None, ["get_weather", "get_time"]),
        ("auto", ["get_weather", "get_time"]),
        ("required", ["get_weather", "get_time"]),
        ("none", None),
        ("get_time", ["get_time"]),
        ({"type": "function", "function": {"name": "get_weather"}}, ["get_weather"]),
    ],
)
async def test_tool_choice(provider, fake_ollama: FakeOllama, choice, offered) -> None:
    await provider.complete(ask(tools=(WEATHER, TIME), tool_choice=choice))
    tools = fake_ollama.last_request.json.get("tools")
    assert (None if tools is None else [t["function"]["name"] for t in tools]) == offered


@pytest.mark.parametrize(
    ("response_format", "sent"),
    [
        ({"type": "json_object"}, "json"),
        ({"type": "text"}, None),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {"type": "object", "properties": {"a": {"type": "integer"}}},
        ),
    ],
)
async def test_response_format(provider, fake_ollama: FakeOllama, response_format, sent) -> None:
    response = await provider.complete(ask(response_format=response_format))
    assert fake_ollama.last_request.json.get("format") == sent
    if sent is not None:
        assert response.text == '{"echo": "Echo: Hello there, how are you?"}'


async def test_image_by_https_url_is_refused_before_sending(provider, fake_ollama) -> None:
    request = Request(
        "ollama/llama3.2", (Message("user", (TextPart("What?"), ImagePart("https://x/cat.png"))),)
    )
    with pytest.raises(BadRequestError, match="data: URL") as info:
        await provider.complete(request)
    assert info.value.provider == "ollama"
    assert fake_ollama.requests == []


async def test_max_tokens_cuts_the_answer(provider) -> None:
    response = await provider.complete(ask("one two three four five six", max_tokens=3))
    assert response.text == "Echo: one"
    assert response.finish_reason == "length"
    chunks = await collect(provider.stream(ask("one two three four five six", max_tokens=3)))
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


# -- streams -------------------------------------------------------------------------------


def _script_plain(fake: FakeOllama) -> None:
    pass


def _script_tools(fake: FakeOllama) -> None:
    fake.reply(
        "Let me check.",
        tool_calls=[
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_time", "arguments": {}},
        ],
        times=2,
    )


def _script_thinking(fake: FakeOllama) -> None:
    fake.reply("Blue.", thinking="Light scatters; blue scatters most.", times=2)


def _script_unicode(fake: FakeOllama) -> None:
    fake.reply("Grüße aus Köln 👋 — 你好\uff0c世界\uff01 naïve café", times=2)


def _script_empty(fake: FakeOllama) -> None:
    fake.reply("", times=2)


@pytest.mark.parametrize(
    "script", [_script_plain, _script_tools, _script_thinking, _script_unicode, _script_empty]
)
async def test_stream_assembles_to_what_complete_returns(provider, fake_ollama, script) -> None:
    script(fake_ollama)
    complete = await provider.complete(ask())
    chunks = await collect(provider.stream(ask()))
    assembled = assemble(chunks)
    assert assembled == attrs.evolve(complete, latency_s=None, request_id=None)
    assert [c.finish_reason for c in chunks if c.finish_reason] == [complete.finish_reason]
    assert [c.usage for c in chunks if c.usage] == [complete.usage]
    assert chunks[-1].usage is not None
    assert all(c.model == "ollama/llama3.2" for c in chunks)
    assert fake_ollama.last_request.json["stream"] is True


async def test_text_streams_in_pieces(provider) -> None:
    chunks = await collect(provider.stream(ask("one two three four five")))
    assert len([c for c in chunks if c.text]) > 3
    assert joined(chunks) == "Echo: one two three four five"


async def test_unicode_and_empty_answers(provider, fake_ollama) -> None:
    fake_ollama.reply("Grüße 👋 你好")
    fake_ollama.reply("")
    assert (await provider.complete(ask())).text == "Grüße 👋 你好"
    empty = await provider.complete(ask())
    assert (empty.text, empty.finish_reason, empty.tool_calls) == ("", "stop", ())
    assert empty.usage.output_tokens == 1  # the end-of-turn token


async def test_completed_stream_returns_its_connection_to_the_pool(provider, fake_ollama, http):
    await collect(provider.stream(ask()))
    pool = http.endpoints()[endpoint_key(fake_ollama.url)]
    assert (pool["idle"], pool["in_use"]) == (1, 0)


# -- usage ---------------------------------------------------------------------------------


async def test_usage_classes(provider, fake_ollama) -> None:
    # A thinking model: its reasoning is counted in eval_count, and Ollama does not split it.
    fake_ollama.reply("Blue.", thinking="Rayleigh.", prompt_eval_count=1200, eval_count=340)
    response = await provider.complete(ask())
    assert response.text == "Blue."
    assert response.usage == Usage(input_tokens=1200, output_tokens=340)

    # The whole prompt came from Ollama's KV cache: it reports no prompt count at all.
    fake_ollama.reply("Blue again.", prompt_cached=True, eval_count=4, times=2)
    cached = await provider.complete(ask())
    assert cached.usage == Usage(input_tokens=0, output_tokens=4)
    chunks = await collect(provider.stream(ask()))
    assert [c.usage for c in chunks if c.usage] == [Usage(0, 4)]


# -- tools ---------------------------------------------------------------------------------


async def test_tool_calls_from_the_model(provider, fake_ollama) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}},
        {"name": "get_time", "arguments": '{"zone": "Europe/Paris"}'},
    ]
    fake_ollama.reply(tool_calls=calls, times=2)
    response = await provider.complete(ask(tools=(WEATHER, TIME)))
    assert response.finish_reason == "tool_calls"
    assert response.text == ""
    assert response.tool_calls == (
        ToolCall("call_0", "get_weather", '{"city": "Paris", "unit": "\\u00b0C"}'),
        ToolCall("call_1", "get_time", '{"zone": "Europe/Paris"}'),
    )
    chunks = await collect(provider.stream(ask(tools=(WEATHER, TIME))))
    deltas = [d for c in chunks for d in c.tool_calls]
    assert [(d.index, d.id, d.name) for d in deltas] == [
        (0, "call_0", "get_weather"),
        (1, "call_1", "get_time"),
    ]
    assert assemble(chunks).tool_calls == response.tool_calls


async def test_tool_results_go_back_to_the_model(provider, fake_ollama) -> None:
    first = ToolCall("call_0", "get_weather", '{"city": "Paris"}')
    second = ToolCall("call_1", "get_time", "")
    request = Request(
        "ollama/llama3.2",
        (
            Message.user("Weather and time in Paris?"),
            Message.assistant("", (first, second)),
            Message("tool", "12:00", tool_call_id="call_1"),
            Message("tool", '{"temp": 21}', tool_call_id="call_0"),
        ),
        tools=(WEATHER, TIME),
    )
    response = await provider.complete(request)
    assert response.text == 'The tool returned: {"temp": 21}'
    assert fake_ollama.last_request.json["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "get_time", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"},
    ]


async def test_tool_arguments_that_are_not_an_object_are_refused(provider, fake_ollama) -> None:
    request = Request(
        "ollama/llama3.2",
        (Message.user("hi"), Message.assistant("", (ToolCall("c1", "f", "[1, 2]"),))),
    )
    with pytest.raises(BadRequestError, match="JSON object"):
        await provider.complete(request)
    assert fake_ollama.requests == []


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "error_class", "retryable"),
    [
        (400, "llama3.2 does not support tools", BadRequestError, False),
        (400, "input length exceeds the context length", ContextLengthExceededError, False),
        (401, "unauthorized", AuthenticationError, False),
        (404, 'model "llama3.2" not found, try pulling it first', NotFoundError, False),
        (429, "too many requests", RateLimitedError, True),
        (500, "llama runner process has terminated: exit status 2", UnavailableError, True),
        (
            503,
            "server busy, please try again.  maximum pending requests exceeded",
            UnavailableError,
            True,
        ),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_error_statuses(
    provider, fake_ollama, status, message, error_class, retryable, streaming
) -> None:
    fake_ollama.fail(status, message, headers={"Retry-After": "2"} if status == 429 else None)
    with pytest.raises(error_class) as info:
        await call(provider, ask(), streaming)
    error = info.value
    assert type(error) is error_class
    assert error.status == status
    assert error.provider == "ollama"
    assert error.provider_message == message
    assert error.retryable is retryable
    assert error.retry_after == (2.0 if status == 429 else None)
    assert message in str(error)


async def test_model_not_pulled_says_how_to_pull_it(provider) -> None:
    with pytest.raises(NotFoundError) as info:
        await provider.complete(ask(model="ollama/mistral:7b"))
    assert info.value.provider_message == 'model "mistral:7b" not found, try pulling it first'
    assert "ollama pull mistral:7b" in str(info.value)


async def test_wrong_base_url_path_says_what_base_url_should_be(make_provider, fake_ollama):
    provider = make_provider(base_url=fake_ollama.url + "/v1")
    with pytest.raises(NotFoundError) as info:
        await provider.complete(ask())
    assert info.value.provider_message == "404 page not found"
    assert "without /v1 or /api" in str(info.value)


async def test_hosted_ollama_key(make_provider, fake_ollama, monkeypatch) -> None:
    fake_ollama.require_api_key = "ok-123"
    keyless = make_provider(base_url=fake_ollama.url)
    with pytest.raises(AuthenticationError) as info:
        await keyless.complete(ask())
    assert info.value.provider_message == "unauthorized"
    assert "Authorization" not in fake_ollama.last_request.headers

    keyed = make_provider(base_url=fake_ollama.url, api_key=Secret("ok-123"))
    assert (await keyed.complete(ask())).text
    assert fake_ollama.last_request.headers["Authorization"] == "Bearer ok-123"

    monkeypatch.setenv("OLLAMA_API_KEY", "ok-123")
    from_env = make_provider(base_url=fake_ollama.url)
    assert [m.id for m in await from_env.list_models()]
    assert fake_ollama.last_request.headers["Authorization"] == "Bearer ok-123"


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_reset(provider, fake_ollama, http, streaming) -> None:
    fake_ollama.fault("reset")
    with pytest.raises(UnavailableError) as info:
        await call(provider, ask(), streaming)
    assert info.value.retryable
    stats = http.stats[endpoint_key(fake_ollama.url)]
    assert (stats.requests, stats.failures) == (1, 1)
    # A transport failure: recorded through the handle, one failure in a row so far.
    assert stats.consecutive_failures == 1
    assert stats.last_error
    # The next call gets through on a fresh connection.
    assert (await provider.complete(ask())).text
    # Any HTTP answer ends the run of failures.
    assert (stats.requests, stats.failures, stats.consecutive_failures) == (2, 1, 0)


async def test_the_provider_follows_a_rebuilt_pool(provider, fake_ollama, http) -> None:
    """Enough transport failures in a row rebuild the endpoint's session; the provider holds
    the pool's handle, not a session, so its next call goes out on the new one."""
    await provider.complete(ask())
    key = endpoint_key(fake_ollama.url)
    fake_ollama.fault("reset", times=http.rebuild_after)
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


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused_says_how_to_start_ollama(make_provider, streaming) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = make_provider(base_url=f"127.0.0.1:{port}")
    with pytest.raises(UnavailableError) as info:
        await call(provider, ask(), streaming)
    message = str(info.value)
    assert f"not seem to be running at http://127.0.0.1:{port}" in message
    assert "ollama serve" in message
    assert info.value.retryable


@pytest.mark.parametrize("streaming", [False, True])
async def test_stall_times_out(provider, fake_ollama, streaming) -> None:
    fake_ollama.fault("stall")
    with pytest.raises(ProviderTimeoutError, match=r"within 0\.2s") as info:
        await call(provider, ask(timeout=0.2), streaming)
    assert info.value.retryable


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_answer(provider, fake_ollama, http, streaming) -> None:
    fake_ollama.fault("malformed")
    with pytest.raises(MalformedResponseError) as info:
        await call(provider, ask(), streaming)
    assert info.value.provider == "ollama"
    assert "not an Ollama chat response" in str(info.value)
    assert info.value.provider_message.startswith('{"model":"llama3.2"')
    assert http.stats[endpoint_key(fake_ollama.url)].failures == 1


async def test_cut_stream_is_interrupted(provider, fake_ollama) -> None:
    fake_ollama.fault("cut_stream")
    received: list[StreamChunk] = []
    with pytest.raises(StreamInterruptedError) as info:
        await consume(provider.stream(ask("one two three four five six seven eight")), received)
    assert info.value.retryable
    assert '"done": true' in str(info.value)
    assert joined(received).startswith("Echo: one")
    assert not any(c.finish_reason or c.usage for c in received)


async def test_cut_json_answer_is_unavailable(provider, fake_ollama) -> None:
    fake_ollama.fault("cut_stream")
    with pytest.raises(UnavailableError, match="cut off"):
        await provider.complete(ask())


@pytest.mark.parametrize(
    ("message", "error_class", "retryable"),
    [
        (None, UnavailableError, True),
        ("llama runner process has terminated: signal: killed", UnavailableError, True),
        ('template: :3:7: executing "" at <.Tools>: invalid value', BadRequestError, False),
        ('model "llama3.2" not found, try pulling it first', NotFoundError, False),
    ],
)
async def test_mid_stream_error(provider, fake_ollama, message, error_class, retryable) -> None:
    fake_ollama.fault("mid_stream_error", message=message)
    received: list[StreamChunk] = []
    with pytest.raises(error_class) as info:
        await consume(provider.stream(ask("one two three four five six seven eight")), received)
    assert type(info.value) is error_class
    assert joined(received).startswith("Echo:")
    expected = message or "an error was encountered while running the model: unexpected EOF"
    assert info.value.provider_message == expected
    assert info.value.retryable is retryable


async def test_mid_stream_error_on_a_json_request_is_a_500(provider, fake_ollama) -> None:
    fake_ollama.fault("mid_stream_error")
    with pytest.raises(UnavailableError) as info:
        await provider.complete(ask())
    assert info.value.status == 500


@pytest.fixture
async def odd_server():
    """A server whose 200 answers are valid JSON but no Ollama chat response; FakeOllama never
    sends such things, which is the point of it."""
    bodies: list[bytes] = []

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=bodies.pop(0), content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/chat", answer)
    app.router.add_get("/api/tags", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server, bodies


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "llama3.2", "done": true}',
        b'{"message": {"role": "assistant", "content": ["not", "text"]}}',
        b'{"message": {"content": "", "tool_calls": [{"function": {}}]}}',
        b"[1, 2, 3]",
        b"",
    ],
)
async def test_wrong_shape_answer_is_malformed(make_provider, odd_server, body) -> None:
    server, bodies = odd_server
    bodies.append(body)
    provider = make_provider(base_url=str(server.make_url("")))
    with pytest.raises(MalformedResponseError) as info:
        await provider.complete(ask())
    assert info.value.provider_message == body.decode()


async def test_error_inside_a_200_answer(make_provider, odd_server) -> None:
    server, bodies = odd_server
    bodies.append(b'{"error": "model requires more system memory (9.1 GiB) than is available"}')
    bodies.append(b'{"models": [{"size": 1}]}')
    provider = make_provider(name="box", base_url=str(server.make_url("")))
    with pytest.raises(UnavailableError, match="more system memory") as info:
        await provider.complete(ask(model="box/llama3.2"))
    assert info.value.provider == "box"
    with pytest.raises(MalformedResponseError):
        await provider.list_models()


# -- stopping early ------------------------------------------------------------------------


async def test_closing_a_stream_early_closes_the_connection(provider, fake_ollama, http):
    fake_ollama.chunk_delay = 0.01
    fake_ollama.reply(" ".join(f"word{n}" for n in range(300)))
    stream = provider.stream(ask())
    assert (await anext(stream)).text
    assert (await anext(stream)).text
    await stream.aclose()
    await wait_for(lambda: fake_ollama.abandoned_streams == 1)
    assert http.endpoints()[endpoint_key(fake_ollama.url)]["open"] == 0


async def test_cancelling_a_stream_consumer_closes_the_connection(provider, fake_ollama, http):
    fake_ollama.chunk_delay = 0.05
    fake_ollama.reply(" ".join(f"word{n}" for n in range(300)))
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
    await wait_for(lambda: fake_ollama.abandoned_streams == 1)
    assert http.endpoints()[endpoint_key(fake_ollama.url)]["open"] == 0


# -- models, health and bookkeeping --------------------------------------------------------


async def test_list_models(provider, fake_ollama) -> None:
    fake_ollama.models = ["llama3.2:latest", "qwen3:8b"]
    models = await provider.list_models()
    assert [m.id for m in models] == ["llama3.2:latest", "qwen3:8b"]
    assert {m.provider for m in models} == {"ollama"}
    assert (fake_ollama.last_request.method, fake_ollama.last_request.path) == ("GET", "/api/tags")


async def test_ping(provider, make_provider, fake_ollama, http) -> None:
    assert await provider.ping() is True
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert await make_provider(base_url=f"http://127.0.0.1:{port}").ping() is False
    # A ping is an HTTP request like any other, and its outcome is the endpoint's health.
    up = http.stats[endpoint_key(fake_ollama.url)]
    down = http.stats[endpoint_key(f"http://127.0.0.1:{port}")]
    assert (up.requests, up.failures) == (1, 0)
    assert (down.requests, down.failures) == (1, 1)
    assert down.last_error


async def test_stats_count_requests_and_endpoint_failures(provider, fake_ollama, http) -> None:
    fake_ollama.fail(400)  # the caller's fault: not the endpoint's
    fake_ollama.fail(500)
    for _ in range(2):
        with pytest.raises(ProviderError):
            await provider.complete(ask())
    await provider.complete(ask())
    await collect(provider.stream(ask()))
    stats = http.stats[endpoint_key(fake_ollama.url)]
    assert (stats.requests, stats.failures) == (4, 1)


# -- through a real pipeline ---------------------------------------------------------------


async def test_through_a_pipeline(fake_ollama, monkeypatch) -> None:
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "ollama")
    fake_ollama.reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    async with Pipeline.build(
        providers={"ollama": {"base_url": fake_ollama.url, "keep_alive": "5m"}}
    ) as pipe:
        reply = await pipe.complete("ollama/llama3.2", "Hi there", max_tokens=20)
        assert reply.tool_calls == (ToolCall("call_0", "get_weather", '{"city": "Oslo"}'),)
        assert reply.finish_reason == "tool_calls"
        assert fake_ollama.last_request.json["keep_alive"] == "5m"

        reply = await pipe.complete("ollama/llama3.2", "Hi there")
        chunks = [c async for c in pipe.stream("ollama/llama3.2", "Hi there")]
        assert joined(chunks) == reply.text == "Echo: Hi there"
        assert chunks[-1].usage == reply.usage
        with pytest.raises(NotFoundError, match="ollama pull phi4"):
            await pipe.complete("ollama/phi4", "Hi")
        models = await pipe.list_models("ollama")
        assert models[0].id == "llama3.2:latest"
