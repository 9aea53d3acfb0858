"""The Bedrock provider against FakeBedrock: payloads, signing, answers, streams and errors."""

from __future__ import annotations

import asyncio
import socket

import attrs
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
from tollway.providers.http import endpoint_key
from tollway.streaming import StreamAssembler
from tollway.testing.fake_bedrock import FakeBedrock, encode_event, encode_message
from tollway.testing.streams import call, collect, drain, wait_for
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

MODEL_ID = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
MODEL = f"bedrock/{MODEL_ID}"
WEATHER = Tool(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}},
)
LONG = " ".join(f"word{n}" for n in range(12))


def ask(text: str = "Hello there, how are you?", **fields: object) -> Request:
    model = str(fields.pop("model", MODEL))
    return Request(model, (Message.system("Be brief."), Message.user(text)), **fields)  # type: ignore[arg-type]


def assemble(chunks: list[StreamChunk], model: str = MODEL) -> Response:
    assembler = StreamAssembler("bedrock", model)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.response()


def comparable(response: Response) -> Response:
    """A response without what differs between two calls (ids, timing)."""
    return attrs.evolve(response, id="", request_id=None, latency_s=None)


@pytest.fixture
def provider(make_provider, fake_bedrock: FakeBedrock):
    return make_provider(base_url=fake_bedrock.base_url, control_url=fake_bedrock.base_url)


# -- answers -------------------------------------------------------------------------------


async def test_complete(provider, fake_bedrock: FakeBedrock) -> None:
    response = await provider.complete(ask())
    assert response.text == "Echo: Hello there, how are you?"
    assert response.provider == "bedrock"
    assert response.model == MODEL
    assert response.finish_reason == "stop"
    assert response.tool_calls == ()
    sent = fake_bedrock.last_request
    # Converse answers carry no id of their own: the request id stands in for one.
    assert response.request_id == response.id == sent.request_id
    # 3 system tokens + (3 + 7) for the user turn; 9 answer tokens.
    assert response.usage == Usage(input_tokens=13, output_tokens=9)
    assert response.latency_s is not None
    assert response.latency_s >= 0
    assert sent.method == "POST"
    assert sent.raw_path == "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDTOLLWAYTEST01/"
    )
    assert "/us-east-1/bedrock/aws4_request" in sent.headers["Authorization"]
    assert sent.json == {
        "messages": [{"role": "user", "content": [{"text": "Hello there, how are you?"}]}],
        "system": [{"text": "Be brief."}],
    }


async def test_the_signature_is_valid_sigv4(provider, fake_bedrock: FakeBedrock) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    await provider.complete(ask())
    sent = fake_bedrock.last_request
    authorization = sent.headers["Authorization"]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "content-type"} <= set(signed)
    # Recompute it from what arrived, as AWS does: the path as sent, the headers it names.
    arrived = AWSRequest(
        method=sent.method,
        url=fake_bedrock.base_url + sent.raw_path,
        data=sent.body,
        headers={name: sent.headers[name] for name in signed},
    )
    arrived.context["timestamp"] = sent.headers["X-Amz-Date"]
    signer = SigV4Auth(
        Credentials("AKIDTOLLWAYTEST01", "tollway-test-secret-key"), "bedrock", "us-east-1"
    )
    string_to_sign = signer.string_to_sign(arrived, signer.canonical_request(arrived))
    assert authorization.endswith("Signature=" + signer.signature(string_to_sign, arrived))


async def test_stream_assembles_the_same_answer_as_complete(provider, fake_bedrock) -> None:
    complete = await provider.complete(ask())
    chunks = await collect(provider.stream(ask()))
    assert len([c for c in chunks if c.text]) > 1
    assert comparable(assemble(chunks)) == comparable(complete)
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert [c.usage for c in chunks if c.usage] == [complete.usage]
    assert chunks[-1].usage is not None
    assert {c.id for c in chunks} == {fake_bedrock.last_request.request_id}
    assert {c.model for c in chunks} == {MODEL}
    assert fake_bedrock.last_request.path == f"/model/{MODEL_ID}/converse-stream"


async def test_completed_stream_returns_its_connection_to_the_pool(provider, fake_bedrock, http):
    await collect(provider.stream(ask()))
    pool = http.endpoints()[endpoint_key(fake_bedrock.base_url)]
    assert (pool["idle"], pool["in_use"]) == (1, 0)


async def test_usage_with_cache_and_reasoning(provider, fake_bedrock) -> None:
    fake_bedrock.reply(
        "Forty-two.",
        reasoning="Let me think.",
        cache_read_tokens=1024,
        cache_write_tokens=100,
        times=2,
    )
    # Bedrock's inputTokens leave the cached tokens out; tollway's input counts them all.
    # Reasoning is billed as output, and Converse reports no separate count for it.
    expected = Usage(
        input_tokens=13 + 1024 + 100,
        output_tokens=4 + 4,
        cache_read_tokens=1024,
        cache_write_tokens=100,
        reasoning_tokens=0,
    )
    response = await provider.complete(ask())
    assert response.text == "Forty-two."
    assert response.usage == expected
    chunks = await collect(provider.stream(ask()))
    assert comparable(assemble(chunks)) == comparable(response)


async def test_reported_usage_is_taken_as_is(provider, fake_bedrock) -> None:
    fake_bedrock.reply("ok", usage={"inputTokens": 7, "outputTokens": 3, "cacheReadInputTokens": 0})
    response = await provider.complete(ask())
    assert response.usage == Usage(input_tokens=7, output_tokens=3)


@pytest.mark.parametrize("text", ["Grüße, 世界! 👋🏽 — ça va?", ""])
async def test_unicode_and_empty_answers(provider, fake_bedrock, text: str) -> None:
    fake_bedrock.reply(text, times=2)
    response = await provider.complete(ask())
    assert response.text == text
    assert response.finish_reason == "stop"
    chunks = await collect(provider.stream(ask()))
    assert comparable(assemble(chunks)) == comparable(response)


async def test_max_tokens_cuts_the_answer(provider, fake_bedrock) -> None:
    response = await provider.complete(ask("one two three four five six", max_tokens=3))
    assert response.text == "Echo: one"
    assert response.finish_reason == "length"
    assert fake_bedrock.last_request.json["inferenceConfig"] == {"maxTokens": 3}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("malformed_model_output", "malformed_model_output"),
    ],
)
async def test_stop_reasons_in_openai_words(provider, fake_bedrock, stop_reason, finish) -> None:
    fake_bedrock.reply("x", stop_reason=stop_reason, times=2)
    assert (await provider.complete(ask())).finish_reason == finish
    chunks = await collect(provider.stream(ask()))
    assert [c.finish_reason for c in chunks if c.finish_reason] == [finish]


async def test_model_arn_is_quoted_in_the_path(provider, fake_bedrock) -> None:
    arn = (
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
        "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    )
    response = await provider.complete(ask(model=f"bedrock/{arn}"))
    assert response.model == f"bedrock/{arn}"
    sent = fake_bedrock.last_request
    assert sent.raw_path == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
        "us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    )
    assert sent.path == f"/model/{arn}/converse"


# -- what is sent --------------------------------------------------------------------------


async def test_payload_carries_every_request_field(provider, fake_bedrock) -> None:
    request = Request(
        MODEL,
        (
            Message.system("Answer in French."),
            Message("developer", "Be exact."),
            Message(
                "user",
                (
                    TextPart("What is this?"),
                    ImagePart("data:image/jpg;base64,AAAA"),
                    ImagePart("s3://bucket/cat.webp"),
                ),
                name="ann",
            ),
        ),
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=("\n\n", "END"),
        seed=7,
        tools=(WEATHER,),
        tool_choice="get_weather",
        response_format={"type": "json_object"},
        user="u-17",
        extra={
            "additional_model_request_fields": {"top_k": 40},
            "inferenceConfig": {"temperature": 0.5},
            "guardrailConfig": {"guardrailIdentifier": "g-1", "guardrailVersion": "1"},
        },
    )
    await provider.complete(request)
    assert fake_bedrock.last_request.json == {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"text": "What is this?"},
                    {"image": {"format": "jpeg", "source": {"bytes": "AAAA"}}},
                    {
                        "image": {
                            "format": "webp",
                            "source": {"s3Location": {"uri": "s3://bucket/cat.webp"}},
                        }
                    },
                ],
            }
        ],
        "system": [{"text": "Answer in French."}, {"text": "Be exact."}],
        # extra is merged last, into the table it names
        "inferenceConfig": {
            "maxTokens": 50,
            "temperature": 0.5,
            "topP": 0.9,
            "stopSequences": ["\n\n", "END"],
        },
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "get_weather",
                        "description": "Weather for a city",
                        "inputSchema": {
                            "json": {"type": "object", "properties": {"city": {"type": "string"}}}
                        },
                    }
                }
            ],
            "toolChoice": {"tool": {"name": "get_weather"}},
        },
        "additionalModelRequestFields": {"top_k": 40},
        "guardrailConfig": {"guardrailIdentifier": "g-1", "guardrailVersion": "1"},
    }


async def test_custom_headers_are_sent_and_signed(make_provider, fake_bedrock) -> None:
    provider = make_provider(base_url=fake_bedrock.base_url, headers={"X-Team": "search"})
    await provider.complete(ask())
    headers = fake_bedrock.last_request.headers
    assert headers["X-Team"] == "search"
    assert "x-team" in headers["Authorization"].split("SignedHeaders=")[1]


async def test_image_urls_bedrock_cannot_fetch_are_refused_before_sending(
    provider, fake_bedrock
) -> None:
    request = Request(MODEL, (Message("user", (ImagePart("https://x/cat.png"),)),))
    with pytest.raises(BadRequestError, match="data: URLs"):
        await provider.complete(request)
    assert fake_bedrock.requests == []


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ("none", None),
        (None, None),
        ("get_weather", {"tool": {"name": "get_weather"}}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"tool": {"name": "get_weather"}},
        ),
        ({"type": "tool", "name": "get_weather"}, {"tool": {"name": "get_weather"}}),
        ({"any": {}}, {"any": {}}),
    ],
)
async def test_tool_choice(provider, fake_bedrock, choice, expected) -> None:
    await provider.complete(ask(tools=(WEATHER,), tool_choice=choice))
    assert fake_bedrock.last_request.json["toolConfig"].get("toolChoice") == expected


# -- tools ---------------------------------------------------------------------------------


async def test_tool_calls_from_the_model(provider, fake_bedrock) -> None:
    calls = [
        {"id": "tooluse_a", "name": "get_weather", "arguments": {"city": "Paris"}},
        {"id": "tooluse_b", "name": "get_time", "arguments": '{"zone": "Europe/Paris"}'},
    ]
    fake_bedrock.reply("Let me check.", tool_calls=calls, times=2)
    response = await provider.complete(ask(tools=(WEATHER,)))
    assert response.finish_reason == "tool_calls"
    assert response.text == "Let me check."
    assert response.tool_calls == (
        ToolCall("tooluse_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("tooluse_b", "get_time", '{"zone": "Europe/Paris"}'),
    )
    chunks = await collect(provider.stream(ask(tools=(WEATHER,))))
    # The input arrives as JSON text in several pieces, indexed per call from 0.
    pieces = [d for c in chunks for d in c.tool_calls]
    assert {d.index for d in pieces} == {0, 1}
    assert len([d for d in pieces if d.index == 0 and d.arguments]) > 1
    assert comparable(assemble(chunks)) == comparable(response)


async def test_tool_results_go_back_to_the_model(provider, fake_bedrock) -> None:
    request = Request(
        MODEL,
        (
            Message.user("Weather in Paris and Rome?"),
            Message.assistant(
                "",
                (
                    ToolCall("t1", "get_weather", '{"city": "Paris"}'),
                    ToolCall("t2", "get_weather", '{"city": "Rome"}'),
                ),
            ),
            Message("tool", '{"temp": 21}', tool_call_id="t1"),
            Message("tool", "sunny, 25C", tool_call_id="t2"),
        ),
        tools=(WEATHER,),
    )
    response = await provider.complete(request)
    assert response.text == 'The tool returned: {"temp": 21} sunny, 25C'
    # Tool results share one user turn, as Converse wants the roles to alternate.
    assert fake_bedrock.last_request.json["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "t2", "name": "get_weather", "input": {"city": "Rome"}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "t1", "content": [{"json": {"temp": 21}}]}},
                {"toolResult": {"toolUseId": "t2", "content": [{"text": "sunny, 25C"}]}},
            ],
        },
    ]


async def test_tool_call_arguments_that_are_not_json(provider, fake_bedrock) -> None:
    request = Request(
        MODEL,
        (
            Message.user("hi"),
            Message.assistant("", (ToolCall("t1", "f", "{not json"),)),
            Message("tool", "x", tool_call_id="t1"),
        ),
        tools=(Tool("f"),),
    )
    with pytest.raises(BadRequestError, match="not JSON"):
        await provider.complete(request)
    assert fake_bedrock.requests == []


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "error_class", "retryable"),
    [
        (400, "ValidationException", BadRequestError, False),
        (403, "AccessDeniedException", PermissionDeniedError, False),
        (403, "UnrecognizedClientException", AuthenticationError, False),
        (403, "ExpiredTokenException", AuthenticationError, False),
        (404, "ResourceNotFoundException", NotFoundError, False),
        (408, "ModelTimeoutException", ProviderTimeoutError, True),
        (424, "ModelErrorException", UnavailableError, True),
        (429, "ThrottlingException", RateLimitedError, True),
        (429, "ModelNotReadyException", UnavailableError, True),
        (500, "InternalServerException", UnavailableError, True),
        (503, "ServiceUnavailableException", UnavailableError, True),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_error_types(
    provider, fake_bedrock, status, code, error_class, retryable, streaming
) -> None:
    fake_bedrock.fail(
        status,
        f"bedrock says {code}",
        code=code,
        headers={"Retry-After": "2"} if status == 429 else None,
    )
    with pytest.raises(ProviderError) as info:
        await call(provider, ask(), streaming)
    error = info.value
    assert type(error) is error_class
    assert error.status == status
    assert error.code == code
    assert error.provider == "bedrock"
    # "Message" or "message" in the body, as the layer that answered spells it.
    assert error.provider_message == f"bedrock says {code}"
    assert error.request_id == fake_bedrock.last_request.request_id
    assert error.retryable is retryable
    assert error.retry_after == (2.0 if status == 429 else None)
    assert f"bedrock says {code}" in str(error)


async def test_default_bedrock_error_bodies(provider, fake_bedrock) -> None:
    fake_bedrock.fail(429)
    with pytest.raises(RateLimitedError) as info:
        await provider.complete(ask())
    assert info.value.code == "ThrottlingException"
    assert info.value.provider_message == "Too many requests, please wait before trying again."


@pytest.mark.parametrize(
    "message",
    [
        "Input is too long for requested model.",
        "The model returned the following errors: prompt is too long: 203361 tokens > 199999 "
        "maximum",
        "Too many input tokens. Max input tokens: 8192, request input token count: 9000",
    ],
)
async def test_context_length_errors(provider, fake_bedrock, message) -> None:
    fake_bedrock.fail(400, message)
    with pytest.raises(ContextLengthExceededError) as info:
        await provider.complete(ask())
    assert info.value.provider_message == message
    assert info.value.code == "ValidationException"


async def test_the_fakes_own_validation_reaches_the_caller(provider, fake_bedrock) -> None:
    request = Request(MODEL, (Message.user(""),))
    with pytest.raises(BadRequestError, match="is blank") as info:
        await provider.complete(request)
    assert info.value.code == "ValidationException"


async def test_unknown_access_key(make_provider, fake_bedrock, aws_env) -> None:
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN")
    provider = make_provider(base_url=fake_bedrock.base_url)
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(ask())
    assert info.value.status == 403
    assert info.value.provider_message == "The security token included in the request is invalid."


@pytest.mark.parametrize(
    ("status", "error_class"), [(401, AuthenticationError), (502, UnavailableError)]
)
async def test_error_page_from_a_proxy_keeps_an_excerpt(
    provider, fake_bedrock, status, error_class
) -> None:
    page = f"<html><body><h1>{status} from the proxy</h1>" + "x" * 500 + "</body></html>"
    fake_bedrock.fail(status, raw_body=page)
    with pytest.raises(error_class) as info:
        await provider.complete(ask())
    assert info.value.provider_message.startswith(f"<html><body><h1>{status} from the proxy")
    assert len(info.value.provider_message) <= 200
    assert info.value.code is None


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_reset(provider, fake_bedrock, http, streaming) -> None:
    fake_bedrock.fault("reset")
    with pytest.raises(UnavailableError) as info:
        await call(provider, ask(), streaming)
    assert info.value.retryable
    assert info.value.provider == "bedrock"
    stats = http.stats[endpoint_key(fake_bedrock.base_url)]
    assert (stats.requests, stats.failures) == (1, 1)
    # A transport failure: recorded through the handle, one failure in a row so far.
    assert stats.consecutive_failures == 1
    assert stats.last_error
    assert (await provider.complete(ask())).text  # a fresh connection for the next call
    # Any HTTP answer ends the run of failures.
    assert (stats.requests, stats.failures, stats.consecutive_failures) == (2, 1, 0)


async def test_the_provider_follows_a_rebuilt_pool(provider, fake_bedrock, http) -> None:
    """Enough transport failures in a row rebuild the endpoint's session; the provider holds
    the pool's handle, not a session, so its next call goes out on the new one."""
    await provider.complete(ask())
    key = endpoint_key(fake_bedrock.base_url)
    fake_bedrock.fault("reset", times=http.rebuild_after)
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
    provider = make_provider(base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
        await provider.complete(ask())


@pytest.mark.parametrize("streaming", [False, True])
async def test_stall_times_out(provider, fake_bedrock, streaming) -> None:
    fake_bedrock.fault("stall")
    with pytest.raises(ProviderTimeoutError, match=r"within 0\.2s") as info:
        await call(provider, ask(LONG, timeout=0.2), streaming)
    assert info.value.retryable


async def test_malformed_answer(provider, fake_bedrock, http) -> None:
    fake_bedrock.fault("malformed")
    with pytest.raises(MalformedResponseError) as info:
        await provider.complete(ask())
    assert "bedrock" in str(info.value)
    assert info.value.provider_message.startswith('{"output": {"message"')
    assert info.value.request_id == fake_bedrock.last_request.request_id
    assert http.stats[endpoint_key(fake_bedrock.base_url)].failures == 1


async def test_damaged_frame_in_a_stream(provider, fake_bedrock) -> None:
    fake_bedrock.fault("malformed")
    received: list[StreamChunk] = []
    with pytest.raises(MalformedResponseError, match="checksum") as info:
        await drain(provider.stream(ask(LONG)), received)
    assert "".join(c.text for c in received)
    assert info.value.provider == "bedrock"


async def test_cut_stream_is_interrupted(provider, fake_bedrock) -> None:
    fake_bedrock.fault("cut_stream")
    received: list[StreamChunk] = []
    with pytest.raises(StreamInterruptedError) as info:
        await drain(provider.stream(ask(LONG)), received)
    assert info.value.retryable
    assert "messageStop" in str(info.value)
    assert "".join(c.text for c in received)
    assert not any(c.finish_reason or c.usage for c in received)


async def test_cut_json_answer_is_unavailable(provider, fake_bedrock) -> None:
    fake_bedrock.fault("cut_stream")
    with pytest.raises(UnavailableError, match="cut off"):
        await provider.complete(ask())


@pytest.mark.parametrize(
    ("exception", "message", "error_class"),
    [
        ("throttlingException", None, RateLimitedError),
        ("modelStreamErrorException", None, UnavailableError),
        ("internalServerException", None, UnavailableError),
        ("serviceUnavailableException", None, UnavailableError),
        ("validationException", "Value at 'x' failed to satisfy constraint", BadRequestError),
        ("validationException", None, ContextLengthExceededError),
    ],
)
async def test_mid_stream_error(provider, fake_bedrock, exception, message, error_class) -> None:
    fake_bedrock.fault("mid_stream_error", exception=exception, message=message)
    received: list[StreamChunk] = []
    with pytest.raises(ProviderError) as info:
        await drain(provider.stream(ask(LONG)), received)
    error = info.value
    assert type(error) is error_class
    assert error.code == exception
    assert error.provider_message
    assert message is None or error.provider_message == message
    assert error.request_id == fake_bedrock.last_request.request_id
    assert "".join(c.text for c in received)


async def test_mid_stream_error_on_a_json_request(provider, fake_bedrock) -> None:
    fake_bedrock.fault("mid_stream_error")
    with pytest.raises(UnavailableError) as info:
        await provider.complete(ask())
    assert info.value.code == "InternalServerException"


@pytest.fixture
async def odd_server():
    """A server sending what FakeBedrock never does: the bodies each test queues."""
    bodies: list[tuple[str, bytes]] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        content_type, body = bodies.pop(0)
        response = web.StreamResponse(
            headers={"Content-Type": content_type, "x-amzn-RequestId": "odd-1"}
        )
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/model/{model_id}/converse", answer)
    app.router.add_post("/model/{model_id}/converse-stream", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server, bodies


START = encode_event("messageStart", {"role": "assistant"})
DELTA = encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}})


@pytest.mark.parametrize(
    "body",
    [
        b'{"output": {"message": {"content": [{"text": ["not", "text"]}]}}}',
        b'{"output": {"message": {"content": [{"toolUse": {"name": "f"}}]}}}',
        b'{"output": {}}',
        b"[1, 2, 3]",
        b"",
    ],
)
async def test_wrong_shape_answer_is_malformed(make_provider, odd_server, body) -> None:
    server, bodies = odd_server
    bodies.append(("application/json", body))
    provider = make_provider(base_url=str(server.make_url("")).rstrip("/"))
    with pytest.raises(MalformedResponseError) as info:
        await provider.complete(ask())
    assert info.value.provider_message == body.decode()
    assert info.value.request_id == "odd-1"


@pytest.mark.parametrize(
    ("content_type", "body", "error_class"),
    [
        # A frame whose checksums are right but whose payload is not JSON.
        (
            "application/vnd.amazon.eventstream",
            START
            + encode_message(
                {":event-type": "contentBlockDelta", ":message-type": "event"}, b'{"delta": '
            ),
            MalformedResponseError,
        ),
        # A tool input delta for a block that never started.
        (
            "application/vnd.amazon.eventstream",
            START
            + encode_event(
                "contentBlockDelta", {"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{"}}}
            ),
            MalformedResponseError,
        ),
        ("application/json", b'{"output": {}}', MalformedResponseError),
        ("application/vnd.amazon.eventstream", START + DELTA[:-5], StreamInterruptedError),
        ("application/vnd.amazon.eventstream", START + DELTA, StreamInterruptedError),
        (
            "application/vnd.amazon.eventstream",
            START
            + encode_message(
                {
                    ":message-type": "error",
                    ":error-code": "InternalFailure",
                    ":error-message": "boom",
                },
                b"",
            ),
            UnavailableError,
        ),
    ],
)
async def test_odd_streams(make_provider, odd_server, content_type, body, error_class) -> None:
    server, bodies = odd_server
    bodies.append((content_type, body))
    provider = make_provider(base_url=str(server.make_url("")).rstrip("/"))
    with pytest.raises(ProviderError) as info:
        await collect(provider.stream(ask()))
    assert type(info.value) is error_class
    assert info.value.request_id == "odd-1"


# -- stopping early ------------------------------------------------------------------------


async def test_closing_a_stream_early_closes_the_connection(provider, fake_bedrock, http):
    fake_bedrock.chunk_delay = 0.01
    fake_bedrock.reply(" ".join(f"word{n}" for n in range(300)))
    stream = provider.stream(ask())
    assert (await anext(stream)).text
    assert (await anext(stream)).text
    await stream.aclose()
    await wait_for(lambda: fake_bedrock.abandoned_streams == 1)
    assert http.endpoints()[endpoint_key(fake_bedrock.base_url)]["open"] == 0


async def test_cancelling_a_stream_consumer_closes_the_connection(provider, fake_bedrock, http):
    fake_bedrock.chunk_delay = 0.05
    fake_bedrock.reply(" ".join(f"word{n}" for n in range(300)))
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
    await wait_for(lambda: fake_bedrock.abandoned_streams == 1)
    assert http.endpoints()[endpoint_key(fake_bedrock.base_url)]["open"] == 0


# -- models and bookkeeping ----------------------------------------------------------------


async def test_list_models(provider, fake_bedrock) -> None:
    models = await provider.list_models()
    text_models = [m for m in fake_bedrock.models if "TEXT" in m.output_modalities]
    assert [m.id for m in models] == [m.id for m in text_models]
    assert "amazon.titan-embed-text-v2:0" not in [m.id for m in models]
    assert {m.provider for m in models} == {"bedrock"}
    assert models[0].owned_by == "Anthropic"
    assert all(m.supports_streaming for m in models)
    sent = fake_bedrock.last_request
    assert (sent.method, sent.path) == ("GET", "/foundation-models")
    assert sent.query == {"byOutputModality": "TEXT"}
    assert "/bedrock/aws4_request" in sent.headers["Authorization"]


async def test_list_models_error(provider, fake_bedrock, aws_env) -> None:
    fake_bedrock.require_access_key = "AKIDSOMEONEELSE"
    with pytest.raises(AuthenticationError):
        await provider.list_models()


async def test_runtime_and_control_plane_each_have_a_handle(
    make_provider, fake_bedrock, http
) -> None:
    # The same fake under two host names: two endpoints as far as the pool can tell.
    control = f"http://localhost:{fake_bedrock.port}"
    provider = make_provider(base_url=fake_bedrock.base_url, control_url=control)
    await provider.complete(ask())
    await provider.list_models()
    await provider.list_models()
    runtime, plane = endpoint_key(fake_bedrock.base_url), endpoint_key(control)
    assert set(http.endpoints()) == {runtime, plane}
    assert (http.stats[runtime].requests, http.stats[plane].requests) == (1, 2)
    fake_bedrock.require_access_key = "AKIDSOMEONEELSE"
    with pytest.raises(AuthenticationError):
        await provider.list_models()
    # An HTTP answer, however unwelcome, is the control plane's health, not the runtime's.
    assert (http.stats[runtime].requests, http.stats[plane].requests) == (1, 3)
    assert http.stats[plane].failures == 0


async def test_stats_count_requests_and_endpoint_failures(provider, fake_bedrock, http) -> None:
    fake_bedrock.fail(400)  # the caller's fault: not the endpoint's
    fake_bedrock.fail(500)
    for _ in range(2):
        with pytest.raises(ProviderError):
            await provider.complete(ask())
    await provider.complete(ask())
    await collect(provider.stream(ask()))
    stats = http.stats[endpoint_key(fake_bedrock.base_url)]
    assert (stats.requests, stats.failures) == (4, 1)


async def test_aclose_leaves_the_pool_to_its_owner(provider, http, fake_bedrock) -> None:
    await provider.complete(ask())
    await provider.aclose()
    assert http.endpoints()[endpoint_key(fake_bedrock.base_url)]["idle"] == 1
    assert (await provider.complete(ask())).text


# -- through a pipeline ----------------------------------------------------------------------


async def test_through_a_pipeline(fake_bedrock, monkeypatch) -> None:
    from tollway import Pipeline

    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "bedrock")
    fake_bedrock.reply(
        tool_calls=[{"id": "t1", "name": "get_weather", "arguments": {"city": "Oslo"}}], times=2
    )
    async with Pipeline.build(
        providers={
            "bedrock": {
                "base_url": fake_bedrock.base_url,
                "control_url": fake_bedrock.base_url,
                "region": "us-east-1",
            }
        }
    ) as pipe:
        reply = await pipe.complete(
            f"bedrock/{MODEL_ID}", "Weather in Oslo?", tools=[WEATHER], max_tokens=20
        )
        assert reply.tool_calls == (ToolCall("t1", "get_weather", '{"city": "Oslo"}'),)
        assert reply.finish_reason == "tool_calls"
        assert reply.model == f"bedrock/{MODEL_ID}"
        chunks = [
            c async for c in pipe.stream(f"bedrock/{MODEL_ID}", "Weather in Oslo?", tools=[WEATHER])
        ]
        assert comparable(assemble(chunks, f"bedrock/{MODEL_ID}")) == comparable(reply)
        answer = await pipe.complete(f"bedrock/{MODEL_ID}", "¿Qué tal?")
        assert answer.text == "Echo: ¿Qué tal?"
        assert answer.usage.input_tokens > 0
        models = await pipe.list_models("bedrock")
        assert models
        assert all(m.provider == "bedrock" for m in models)
    sent = fake_bedrock.requests[0]
    assert sent.json["inferenceConfig"] == {"maxTokens": 20}
    assert sent.json["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"
