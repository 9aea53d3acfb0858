"""The Gemini provider against FakeGemini: payloads, answers, streams, usage and errors."""

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
    ContentFilteredError,
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
from tollway.testing.fake_gemini import FakeGemini, ModelSpec
from tollway.testing.streams import call, collect, drain, joined, wait_for
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

KEY = "AIza-test-0123456789"
MODEL = "gemini/gemini-2.5-flash"


def ask(text: str = "Hello there, how are you?", **fields: object) -> Request:
    model = str(fields.pop("model", MODEL))
    return Request(model, (Message.system("Be brief."), Message.user(text)), **fields)  # type: ignore[arg-type]


async def assemble(provider, request: Request) -> tuple[Response, list[StreamChunk]]:
    assembler = StreamAssembler(provider.name, request.model)
    chunks = await collect(provider.stream(request))
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.response(), chunks


def same_answer(streamed: Response, complete: Response) -> None:
    """A stream and a complete call of the same answer agree on everything but ids."""
    assert streamed.message == complete.message
    assert streamed.finish_reason == complete.finish_reason
    assert streamed.usage == complete.usage
    assert (streamed.model, streamed.provider) == (complete.model, complete.provider)


@pytest.fixture
def provider(make_provider, fake_gemini: FakeGemini):
    fake_gemini.require_api_key = KEY
    return make_provider("gemini", base_url=fake_gemini.base_url, api_key=Secret(KEY))


# -- answers -------------------------------------------------------------------------------


async def test_complete(provider, fake_gemini: FakeGemini) -> None:
    response = await provider.complete(ask())
    assert response.text == "Echo: Hello there, how are you?"
    assert response.provider == "gemini"
    assert response.model == "gemini/gemini-2.5-flash"
    assert response.finish_reason == "stop"
    assert len(response.id) == 23
    # Google sends no request id header: the responseId stands in for it.
    assert response.request_id == response.id
    assert response.tool_calls == ()
    # "Be brief." (3) + "Hello there, how are you?" (7) in; "Echo: " (2) + 7 out.
    assert response.usage == Usage(input_tokens=10, output_tokens=9)
    assert response.latency_s is not None
    assert response.latency_s >= 0
    sent = fake_gemini.last_request
    assert sent.method == "POST"
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.query == {}
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.headers["Content-Type"] == "application/json"
    assert "Authorization" not in sent.headers
    assert sent.json == {
        "contents": [{"role": "user", "parts": [{"text": "Hello there, how are you?"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
    }


async def test_request_id_header_is_used_when_sent(provider, fake_gemini) -> None:
    fake_gemini.request_id_header = "x-request-id"
    response = await provider.complete(ask())
    assert response.request_id == fake_gemini.last_request.request_id != response.id


async def test_stream_assembles_the_same_answer_as_complete(provider, fake_gemini) -> None:
    complete = await provider.complete(ask())
    streamed, chunks = await assemble(provider, ask())
    same_answer(streamed, complete)
    assert len([c for c in chunks if c.text]) > 1
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert [c.usage for c in chunks if c.usage] == [complete.usage]
    assert all(c.model == "gemini/gemini-2.5-flash" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    sent = fake_gemini.last_request
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query == {"alt": "sse"}


async def test_completed_stream_returns_its_connection_to_the_pool(provider, fake_gemini, http):
    await collect(provider.stream(ask()))
    pool = http.endpoints()[endpoint_key(fake_gemini.base_url)]
    assert (pool["idle"], pool["in_use"]) == (1, 0)


async def test_usage_with_cached_and_thinking_tokens(provider, fake_gemini) -> None:
    fake_gemini.reply(
        "Forty-two.",
        thoughts="**Recalling** the number from the book.",
        usage={"promptTokenCount": 1200},
        cached_tokens=1024,
        thoughts_tokens=300,
        times=2,
    )
    # Gemini's candidatesTokenCount (4) leaves the 300 thinking tokens out; tollway counts them.
    expected = Usage(
        input_tokens=1200, output_tokens=304, cache_read_tokens=1024, reasoning_tokens=300
    )
    response = await provider.complete(ask())
    assert response.text == "Forty-two."  # the thought summary is not the answer
    assert response.usage == expected
    streamed, chunks = await assemble(provider, ask())
    same_answer(streamed, response)
    # Every event carries running usage; only the last, complete count is reported.
    assert [c.usage for c in chunks if c.usage] == [expected]


async def test_max_tokens_cuts_the_answer(provider) -> None:
    response = await provider.complete(ask("one two three four five six", max_tokens=3))
    assert response.text == "Echo: one"
    assert response.finish_reason == "length"
    streamed, _ = await assemble(provider, ask("one two three four five six", max_tokens=3))
    same_answer(streamed, response)


@pytest.mark.parametrize(
    "text", ["Grüße aus Köln, 世界 🌍 — «ok»", "", "\n"], ids=["unicode", "empty", "newline"]
)
async def test_unicode_and_empty_answers(provider, fake_gemini, text) -> None:
    fake_gemini.reply(text, times=2)
    response = await provider.complete(ask())
    assert response.text == text
    assert response.finish_reason == "stop"
    streamed, chunks = await assemble(provider, ask())
    same_answer(streamed, response)
    if not text.strip():
        assert response.usage.output_tokens == 0  # Gemini leaves candidatesTokenCount out
        assert chunks[-1].finish_reason == "stop"


async def test_unicode_prompt_is_sent_as_utf8(provider, fake_gemini) -> None:
    response = await provider.complete(ask("Ça va? Привет 👋"))
    assert response.text == "Echo: Ça va? Привет 👋"
    assert fake_gemini.last_request.json["contents"][0]["parts"] == [{"text": "Ça va? Привет 👋"}]


async def test_payload_carries_every_request_field(provider, fake_gemini) -> None:
    weather = Tool(
        "get_weather",
        "Weather for a city",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    clock = Tool("now", "The time")  # no parameters: declared without a schema
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    call = ToolCall("call_0", "get_weather", '{"city": "Paris"}')
    request = Request(
        MODEL,
        (
            Message.system("Answer in French."),
            Message("developer", "Be terse."),
            Message(
                "user",
                (
                    TextPart("What is this?"),
                    ImagePart("data:image/png;base64,iVBORw0KGgo="),
                    ImagePart("https://example.com/cat.jpg?size=large", "low"),
                    ImagePart("data:text/plain,hello%20world"),
                ),
            ),
            Message.assistant("Let me look.", (call,)),
            Message("tool", '{"temp": 21, "sky": "clear"}', tool_call_id="call_0"),
        ),
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=("\n\n", "END"),
        seed=7,
        tools=(weather, clock),
        tool_choice="get_weather",
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        user="u-17",
        extra={
            "safetySettings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
            ],
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}, "temperature": 0.5},
        },
    )
    response = await provider.complete(request)
    assert response.text == 'The tool returned: {"temp": 21, "sky": "clear"}'
    assert fake_gemini.last_request.json == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is this?"},
                    {"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgo="}},
                    {
                        "file_data": {
                            "file_uri": "https://example.com/cat.jpg?size=large",
                            "mime_type": "image/jpeg",
                        }
                    },
                    # A data: URL that is not base64 is encoded for the API.
                    {"inline_data": {"mime_type": "text/plain", "data": "aGVsbG8gd29ybGQ="}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Let me look."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "name": "get_weather",
                            "response": {"temp": 21, "sky": "clear"},
                        }
                    }
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Answer in French."}, {"text": "Be terse."}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather for a city",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                            "required": ["city"],
                        },
                    },
                    {"name": "now", "description": "The time"},
                ]
            }
        ],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
        },
        "safetySettings": [
            {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
        ],
        "generationConfig": {
            "maxOutputTokens": 50,
            "temperature": 0.5,  # extra is merged last
            "topP": 0.9,
            "stopSequences": ["\n\n", "END"],
            "seed": 7,
            "responseMimeType": "application/json",
            "responseSchema": schema,
            "thinkingConfig": {"thinkingBudget": 0},
        },
    }


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "f"}},
            {"mode": "ANY", "allowedFunctionNames": ["f"]},
        ),
        ({"functionCallingConfig": {"mode": "VALIDATED"}}, {"mode": "VALIDATED"}),
    ],
)
def test_tool_choice(provider, choice, config) -> None:
    request = Request(MODEL, (Message.user("hi"),), tool_choice=choice)
    assert provider._payload(request)["toolConfig"] == {"functionCallingConfig": config}


def test_unknown_tool_choice_is_a_clear_error(provider) -> None:
    request = Request(MODEL, (Message.user("hi"),), tool_choice={"type": "web_search"})
    with pytest.raises(BadRequestError, match="tool_choice"):
        provider._payload(request)


def test_json_object_response_format(provider) -> None:
    request = Request(MODEL, (Message.user("hi"),), response_format={"type": "json_object"})
    assert provider._payload(request)["generationConfig"] == {
        "responseMimeType": "application/json"
    }


async def test_model_paths(make_provider, fake_gemini) -> None:
    provider = make_provider("gemini", api_key=Secret(KEY))
    base = "https://generativelanguage.googleapis.com/v1beta/"
    assert str(provider._urls_for("tunedModels/my-tune")[0]) == (
        base + "tunedModels/my-tune:generateContent"
    )
    assert str(provider._urls_for("models/gemini-2.5-pro")[1]) == (
        base + "models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    )


async def test_key_from_google_api_key_fallback(make_provider, fake_gemini, monkeypatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    provider = make_provider("gemini", base_url=fake_gemini.base_url)
    assert (await provider.complete(ask())).text
    assert fake_gemini.last_request.headers["x-goog-api-key"] == KEY
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-preferred")
    preferred = make_provider("gemini", base_url=fake_gemini.base_url)
    await preferred.complete(ask())
    assert fake_gemini.last_request.headers["x-goog-api-key"] == "AIza-preferred"


async def test_custom_headers(make_provider, fake_gemini) -> None:
    provider = make_provider(
        "gemini", base_url=fake_gemini.base_url, api_key=Secret(KEY), headers={"X-Team": "s"}
    )
    await provider.complete(ask())
    assert fake_gemini.last_request.headers["X-Team"] == "s"


# -- tools ---------------------------------------------------------------------------------


async def test_tool_calls_from_the_model(provider, fake_gemini) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"id": "fc-2", "name": "get_time", "arguments": {"zone": "Europe/Paris"}},
    ]
    fake_gemini.reply(tool_calls=calls, times=2)
    response = await provider.complete(ask())
    assert response.finish_reason == "tool_calls"
    assert response.text == ""
    # Gemini usually sends no call id; the position stands in for it.
    assert response.tool_calls == (
        ToolCall("call_0", "get_weather", '{"city": "Paris"}'),
        ToolCall("fc-2", "get_time", '{"zone": "Europe/Paris"}'),
    )
    streamed, chunks = await assemble(provider, ask())
    same_answer(streamed, response)
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_tool_results_go_back_to_the_model(provider, fake_gemini) -> None:
    first = ToolCall("call_0", "get_weather", '{"city": "Paris"}')
    second = ToolCall("call_1", "get_time", "{}")
    request = Request(
        MODEL,
        (
            Message.user("Weather and time in Paris?"),
            Message.assistant("", (first, second)),
            Message("tool", '{"temp": 21}', tool_call_id="call_0"),
            Message("tool", "noon", tool_call_id="call_1"),
        ),
    )
    response = await provider.complete(request)
    assert response.text == 'The tool returned: {"temp": 21}, {"result": "noon"}'
    assert fake_gemini.last_request.json["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        # The answers to one turn's calls travel together, in one turn.
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}},
            ],
        },
    ]


async def test_tool_result_for_an_unknown_call_is_refused_before_sending(provider, fake_gemini):
    request = Request(MODEL, (Message.user("hi"), Message("tool", "42", tool_call_id="call_9")))
    with pytest.raises(BadRequestError, match="call_9"):
        await provider.complete(request)
    assert fake_gemini.requests == []
    named = Request(
        MODEL, (Message.user("hi"), Message("tool", "42", tool_call_id="x", name="lookup"))
    )
    await provider.complete(named)
    part = fake_gemini.last_request.json["contents"][1]["parts"][0]
    assert part == {"functionResponse": {"name": "lookup", "response": {"result": "42"}}}


# -- safety --------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
async def test_safety_stop_without_text_is_content_filtered(provider, fake_gemini, streaming):
    fake_gemini.reply(finish_reason="SAFETY")
    with pytest.raises(ContentFilteredError) as info:
        await call(provider, ask(), streaming)
    assert info.value.provider == "gemini"
    assert info.value.code == "SAFETY"
    assert "SAFETY" in str(info.value)
    assert "DANGEROUS_CONTENT=HIGH" in str(info.value)


@pytest.mark.parametrize("streaming", [False, True])
async def test_blocked_prompt_is_content_filtered(provider, fake_gemini, streaming) -> None:
    fake_gemini.reply(block_reason="PROHIBITED_CONTENT")
    with pytest.raises(ContentFilteredError, match="blocked the prompt") as info:
        await call(provider, ask(), streaming)
    assert info.value.code == "PROHIBITED_CONTENT"


async def test_safety_stop_after_some_text_keeps_the_text(provider, fake_gemini) -> None:
    fake_gemini.reply("Here is the start of it", finish_reason="RECITATION", times=2)
    response = await provider.complete(ask())
    assert (response.text, response.finish_reason) == ("Here is the start of it", "content_filter")
    streamed, _ = await assemble(provider, ask())
    same_answer(streamed, response)


async def test_malformed_function_call_is_retryable(provider, fake_gemini) -> None:
    fake_gemini.reply(finish_reason="MALFORMED_FUNCTION_CALL")
    with pytest.raises(MalformedResponseError) as info:
        await provider.complete(ask())
    assert info.value.retryable
    assert info.value.code == "MALFORMED_FUNCTION_CALL"


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "status_name", "error_class", "retryable"),
    [
        (400, "INVALID_ARGUMENT", BadRequestError, False),
        (400, "FAILED_PRECONDITION", BadRequestError, False),
        (403, "PERMISSION_DENIED", PermissionDeniedError, False),
        (404, "NOT_FOUND", NotFoundError, False),
        (429, "RESOURCE_EXHAUSTED", RateLimitedError, True),
        (500, "INTERNAL", UnavailableError, True),
        (503, "UNAVAILABLE", UnavailableError, True),
        (504, "DEADLINE_EXCEEDED", ProviderTimeoutError, True),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_error_statuses(
    provider, fake_gemini, status, status_name, error_class, retryable, streaming
):
    fake_gemini.request_id_header = "x-request-id"
    fake_gemini.fail(
        status,
        f"provider says {status}",
        status_name=status_name,
        retry_delay="12s" if status == 429 else None,
    )
    with pytest.raises(error_class) as info:
        await call(provider, ask(), streaming)
    error = info.value
    assert type(error) is error_class
    assert error.status == status
    assert error.provider == "gemini"
    assert error.provider_message == f"provider says {status}"
    assert error.code == status_name
    assert error.retryable is retryable
    assert error.request_id == fake_gemini.last_request.request_id
    # Google puts the wait in a RetryInfo detail, not a header.
    assert error.retry_after == (12.0 if status == 429 else None)
    assert f"provider says {status}" in str(error)


async def test_retry_after_header_is_used_without_retry_info(provider, fake_gemini) -> None:
    fake_gemini.fail(429, headers={"Retry-After": "3"})
    with pytest.raises(RateLimitedError) as info:
        await provider.complete(ask())
    assert info.value.retry_after == 3.0
    assert "exceeded your current quota" in info.value.provider_message


async def test_invalid_api_key_is_an_authentication_error(make_provider, fake_gemini) -> None:
    fake_gemini.require_api_key = KEY
    provider = make_provider("gemini", base_url=fake_gemini.base_url, api_key=Secret("AIza-no"))
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(ask())
    # Google answers a bad key with 400 INVALID_ARGUMENT; its ErrorInfo reason says what it is.
    assert info.value.status == 400
    assert info.value.code == "API_KEY_INVALID"
    assert info.value.provider_message == "API key not valid. Please pass a valid API key."
    assert not info.value.retryable


async def test_unknown_model_is_not_found(provider) -> None:
    with pytest.raises(NotFoundError) as info:
        await provider.complete(ask(model="gemini/gemini-9-ultra"))
    assert info.value.provider_message.startswith(
        "models/gemini-9-ultra is not found for API version v1beta"
    )


async def test_prompt_too_long_is_a_context_length_error(provider, fake_gemini) -> None:
    fake_gemini.fail(
        400,
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
    )
    with pytest.raises(ContextLengthExceededError) as info:
        await provider.complete(ask())
    assert info.value.code == "INVALID_ARGUMENT"


async def test_request_the_api_rejects_keeps_googles_message(provider) -> None:
    with pytest.raises(BadRequestError) as info:
        await provider.complete(ask(extra={"frequency_penalty_x": 1}))
    assert 'Unknown name "frequency_penalty_x"' in info.value.provider_message


async def test_error_page_from_a_proxy_keeps_an_excerpt(provider, fake_gemini) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>" + "x" * 500 + "</body></html>"
    fake_gemini.fail(502, raw_body=page)
    with pytest.raises(UnavailableError) as info:
        await provider.complete(ask())
    assert info.value.provider_message.startswith("<html><body><h1>502 Bad Gateway")
    assert len(info.value.provider_message) <= 200


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_reset(provider, fake_gemini, http, streaming) -> None:
    fake_gemini.fault("reset")
    with pytest.raises(UnavailableError) as info:
        await call(provider, ask(), streaming)
    assert info.value.retryable
    assert info.value.provider == "gemini"
    stats = http.stats[endpoint_key(fake_gemini.base_url)]
    assert (stats.requests, stats.failures) == (1, 1)
    # A transport failure: recorded through the handle, one failure in a row so far.
    assert stats.consecutive_failures == 1
    assert stats.last_error
    assert (await provider.complete(ask())).text  # a fresh connection works
    # Any HTTP answer ends the run of failures.
    assert (stats.requests, stats.failures, stats.consecutive_failures) == (2, 1, 0)


async def test_the_provider_follows_a_rebuilt_pool(provider, fake_gemini, http) -> None:
    """Enough transport failures in a row rebuild the endpoint's session; the provider holds
    the pool's handle, not a session, so its next call goes out on the new one."""
    await provider.complete(ask())
    key = endpoint_key(fake_gemini.base_url)
    fake_gemini.fault("reset", times=http.rebuild_after)
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
    provider = make_provider("gemini", base_url=f"http://127.0.0.1:{port}", api_key=Secret(KEY))
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
        await provider.complete(ask())


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_answer(provider, fake_gemini, http, streaming) -> None:
    fake_gemini.fault("malformed")
    with pytest.raises(MalformedResponseError) as info:
        await call(provider, ask(), streaming)
    assert info.value.provider == "gemini"
    assert "gemini" in str(info.value)
    assert '"candidates": [' in info.value.provider_message
    assert len(info.value.provider_message) <= 200
    assert http.stats[endpoint_key(fake_gemini.base_url)].failures == 1


async def test_cut_stream_is_interrupted(provider, fake_gemini) -> None:
    fake_gemini.fault("cut_stream")
    received: list[StreamChunk] = []
    with pytest.raises(StreamInterruptedError) as info:
        await drain(provider.stream(ask("one two three four five six seven eight")), received)
    assert info.value.retryable
    assert "finishReason" in str(info.value)
    assert joined(received).startswith("Echo:")  # some text came before the cut
    assert not any(c.finish_reason for c in received)


async def test_cut_json_answer_is_unavailable(provider, fake_gemini) -> None:
    fake_gemini.fault("cut_stream")
    with pytest.raises(UnavailableError, match="cut off"):
        await provider.complete(ask())


async def test_mid_stream_error(provider, fake_gemini) -> None:
    fake_gemini.fault("mid_stream_error")
    received: list[StreamChunk] = []
    with pytest.raises(UnavailableError) as info:
        await drain(provider.stream(ask("one two three four five six seven eight")), received)
    assert joined(received).startswith("Echo:")
    assert info.value.provider_message.startswith("An internal error has occurred")
    assert info.value.code == "INTERNAL"
    assert "in the middle of its stream" in str(info.value)
    assert info.value.retryable


@pytest.mark.parametrize("streaming", [False, True])
async def test_stall_times_out(provider, fake_gemini, streaming) -> None:
    fake_gemini.fault("stall")
    with pytest.raises(ProviderTimeoutError, match=r"within 0\.2s") as info:
        await call(provider, ask(timeout=0.2), streaming)
    assert info.value.retryable


async def test_scripted_outcomes_are_served_in_order(provider, fake_gemini) -> None:
    fake_gemini.fail(400)
    fake_gemini.reply("fine")
    with pytest.raises(BadRequestError):
        await provider.complete(ask())
    assert (await provider.complete(ask())).text == "fine"
    assert (await provider.complete(ask())).text.startswith("Echo:")


@pytest.fixture
async def odd_server():
    """A server whose answers are valid HTTP but no proper GenerateContentResponse, or a stream
    with an error Google can send but FakeGemini's faults do not script."""
    bodies: list[tuple[bytes, str]] = []

    async def answer(request: web.Request) -> web.Response:
        body, content_type = bodies.pop(0)
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/v1beta/models/{call}", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server, bodies


@pytest.mark.parametrize(
    "body",
    [
        b'{"candidates": []}',
        b'{"candidates": [{"content": {"parts": [{"text": 5}]}}]}',
        b'{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}',
        b'{"usageMetadata": {"promptTokenCount": 3}}',
        b'{"candidates": [{"content": {"parts": [{"text": "x"}]}}], "usageMetadata": [3]}',
        b"[1, 2, 3]",
        b"",
    ],
)
async def test_wrong_shape_answer_is_malformed(make_provider, odd_server, body) -> None:
    server, bodies = odd_server
    bodies.append((body, "application/json"))
    provider = make_provider("gemini", base_url=str(server.make_url("")), api_key=Secret(KEY))
    with pytest.raises(MalformedResponseError) as info:
        await provider.complete(ask())
    assert info.value.provider_message == body.decode()


async def test_error_inside_a_200_answer(make_provider, odd_server) -> None:
    server, bodies = odd_server
    error = {"error": {"code": 503, "message": "model overloaded", "status": "UNAVAILABLE"}}
    bodies.append((json.dumps(error).encode(), "application/json"))
    provider = make_provider("gemini", base_url=str(server.make_url("")), api_key=Secret(KEY))
    with pytest.raises(UnavailableError, match="model overloaded"):
        await provider.complete(ask())


async def test_rate_limit_in_the_middle_of_a_stream(make_provider, odd_server) -> None:
    server, bodies = odd_server
    first = {
        "candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}, "index": 0}],
        "responseId": "r-1",
    }
    error = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}
            ],
        }
    }
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in (first, error))
    bodies.append((sse, "text/event-stream"))
    provider = make_provider("gemini", base_url=str(server.make_url("")), api_key=Secret(KEY))
    received: list[StreamChunk] = []
    with pytest.raises(RateLimitedError) as info:
        await drain(provider.stream(ask()), received)
    assert joined(received) == "Hel"
    assert info.value.retry_after == 1.5
    assert info.value.status == 429


# -- stopping early ------------------------------------------------------------------------


async def test_closing_a_stream_early_closes_the_connection(provider, fake_gemini, http):
    fake_gemini.chunk_delay = 0.01
    fake_gemini.reply(" ".join(f"word{n}" for n in range(300)))
    stream = provider.stream(ask())
    assert (await anext(stream)).text
    assert (await anext(stream)).text
    await stream.aclose()
    await wait_for(lambda: fake_gemini.abandoned_streams == 1)
    assert http.endpoints()[endpoint_key(fake_gemini.base_url)]["open"] == 0


async def test_cancelling_a_stream_consumer_closes_the_connection(provider, fake_gemini, http):
    fake_gemini.chunk_delay = 0.05
    fake_gemini.reply(" ".join(f"word{n}" for n in range(300)))
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
    await wait_for(lambda: fake_gemini.abandoned_streams == 1)
    assert http.endpoints()[endpoint_key(fake_gemini.base_url)]["open"] == 0


# -- models and bookkeeping ----------------------------------------------------------------


async def test_list_models(provider, fake_gemini) -> None:
    models = await provider.list_models()
    assert [m.id for m in models] == [spec.id for spec in fake_gemini.models]
    flash = models[0]
    assert (flash.id, flash.provider, flash.owned_by) == ("gemini-2.5-flash", "gemini", "google")
    assert (flash.context_window, flash.max_output_tokens) == (1_048_576, 65_536)
    assert flash.supports_streaming
    embedding = next(m for m in models if m.id == "gemini-embedding-001")
    assert not embedding.supports_streaming
    sent = fake_gemini.last_request
    assert (sent.method, sent.path, sent.query) == ("GET", "/v1beta/models", {"pageSize": "1000"})


async def test_list_models_follows_pages(provider, fake_gemini) -> None:
    fake_gemini.models = [ModelSpec(f"m-{n}", f"M {n}") for n in range(1005)]
    models = await provider.list_models()
    assert len(models) == 1005
    assert [r.query.get("pageToken") for r in fake_gemini.requests] == [None, "1000"]


async def test_stats_count_requests_and_endpoint_failures(provider, fake_gemini, http) -> None:
    fake_gemini.fail(400)  # the caller's fault: not the endpoint's
    fake_gemini.fail(500)
    for _ in range(2):
        with pytest.raises(ProviderError):
            await provider.complete(ask())
    await provider.complete(ask())
    await collect(provider.stream(ask()))
    stats = http.stats[endpoint_key(fake_gemini.base_url)]
    assert (stats.requests, stats.failures) == (4, 1)


async def test_aclose_leaves_the_pool_to_its_owner(provider, http, fake_gemini) -> None:
    await provider.complete(ask())
    await provider.aclose()
    assert http.endpoints()[endpoint_key(fake_gemini.base_url)]["idle"] == 1
    assert (await provider.complete(ask())).text
