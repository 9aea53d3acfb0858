"""boto3 parses FakeBedrock's answers: the fake speaks Bedrock's real wire format.

boto3 is synchronous, so each call runs in a worker thread against the fake running on the
test's event loop. Retries are off so an injected error reaches the test on the first try.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.eventstream import EventStreamBuffer  # noqa: E402
from botocore.exceptions import ClientError, EventStreamError  # noqa: E402

from tollway.testing.fake_bedrock import (  # noqa: E402
    FakeBedrock,
    encode_event,
    encode_exception,
)

MODEL = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
PROMPT = [{"role": "user", "content": [{"text": "Hello there, how are you?"}]}]
WEATHER_TOOL = {
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
    ]
}


_open_clients: list[Any] = []


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock(require_access_key="AKIDFAKE") as server:
        try:
            yield server
        finally:
            # Their pooled sockets would otherwise be found unclosed (a ResourceWarning).
            while _open_clients:
                _open_clients.pop().close()


def client(fake: FakeBedrock, service: str = "bedrock-runtime", key: str = "AKIDFAKE") -> Any:
    made = boto3.client(
        service,
        endpoint_url=fake.base_url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="secret",
        # "max_attempts" counts retries in botocore's legacy mode: 1 would allow one retry.
        config=Config(retries={"total_max_attempts": 1}),
    )
    _open_clients.append(made)
    return made


async def call(function: Callable[..., Any], /, **kwargs: Any) -> Any:
    return await asyncio.to_thread(function, **kwargs)


async def stream_events(fake: FakeBedrock, **kwargs: Any) -> list[dict[str, Any]]:
    def run() -> list[dict[str, Any]]:
        stream = client(fake).converse_stream(modelId=MODEL, **kwargs)["stream"]
        try:
            return list(stream)
        finally:
            stream.close()

    return await asyncio.to_thread(run)


async def test_converse(fake: FakeBedrock) -> None:
    response = await call(client(fake).converse, modelId=MODEL, messages=PROMPT)
    assert response["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": "Echo: Hello there, how are you?"}],
    }
    assert response["stopReason"] == "end_turn"
    assert response["usage"] == {"inputTokens": 10, "outputTokens": 9, "totalTokens": 19}
    assert response["metrics"]["latencyMs"] > 0
    assert response["ResponseMetadata"]["RequestId"] == fake.last_request.request_id
    sent = fake.last_request
    # botocore quotes the ':' of the model id in the path, as the real endpoint expects.
    assert sent.raw_path == f"/model/{MODEL.replace(':', '%3A')}/converse"
    assert sent.path == f"/model/{MODEL}/converse"
    assert sent.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDFAKE/")


async def test_converse_max_tokens_and_system(fake: FakeBedrock) -> None:
    response = await call(
        client(fake).converse,
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": "one two three four five"}]}],
        system=[{"text": "Be brief."}],
        inferenceConfig={"maxTokens": 3, "temperature": 0.1},
    )
    assert response["output"]["message"]["content"] == [{"text": "Echo: one"}]
    assert response["stopReason"] == "max_tokens"
    assert fake.last_request.json["system"] == [{"text": "Be brief."}]


async def test_converse_stream_with_usage(fake: FakeBedrock) -> None:
    fake.reply("It is sunny today.", cache_read_tokens=1024, cache_write_tokens=16)
    events = await stream_events(fake, messages=PROMPT)
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "messageStart"
    assert kinds[-2:] == ["messageStop", "metadata"]
    assert events[0]["messageStart"] == {"role": "assistant"}
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
    )
    assert text == "It is sunny today."
    assert kinds.count("contentBlockDelta") > 1
    assert events[-2]["messageStop"] == {"stopReason": "end_turn"}
    usage = events[-1]["metadata"]["usage"]
    assert usage == {
        "inputTokens": 10,
        "outputTokens": 5,
        "totalTokens": 10 + 5 + 1024 + 16,
        "cacheReadInputTokens": 1024,
        "cacheWriteInputTokens": 16,
    }
    assert events[-1]["metadata"]["metrics"]["latencyMs"] > 0


async def test_stream_and_converse_say_the_same(fake: FakeBedrock) -> None:
    fake.reply("Same answer.", reasoning="Think first.", times=2)
    whole = await call(client(fake).converse, modelId=MODEL, messages=PROMPT)
    events = await stream_events(fake, messages=PROMPT)
    blocks = whole["output"]["message"]["content"]
    assert blocks[0]["reasoningContent"]["reasoningText"]["text"] == "Think first."
    assert blocks[1] == {"text": "Same answer."}
    deltas = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    reasoning = "".join(
        d["delta"]["reasoningContent"].get("text", "")
        for d in deltas
        if "reasoningContent" in d["delta"]
    )
    assert reasoning == "Think first."
    assert "".join(d["delta"].get("text", "") for d in deltas) == "Same answer."
    assert events[-1]["metadata"]["usage"] == whole["usage"]


async def test_tool_use(fake: FakeBedrock) -> None:
    call_spec = {"id": "tooluse_abc", "name": "get_weather", "arguments": {"city": "Paris"}}
    fake.reply(tool_calls=[call_spec], times=2)
    response = await call(
        client(fake).converse, modelId=MODEL, messages=PROMPT, toolConfig=WEATHER_TOOL
    )
    assert response["stopReason"] == "tool_use"
    assert response["output"]["message"]["content"] == [
        {"toolUse": {"toolUseId": "tooluse_abc", "name": "get_weather", "input": {"city": "Paris"}}}
    ]
    events = await stream_events(fake, messages=PROMPT, toolConfig=WEATHER_TOOL)
    starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert starts == [
        {
            "start": {"toolUse": {"toolUseId": "tooluse_abc", "name": "get_weather"}},
            "contentBlockIndex": 0,
        }
    ]
    pieces = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "contentBlockDelta" in e
    ]
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"


async def test_tool_result_round_trip(fake: FakeBedrock) -> None:
    messages = [
        PROMPT[0],
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}}
            ],
        },
        {
            "role": "user",
            "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"temp": 21}}]}}],
        },
    ]
    response = await call(
        client(fake).converse, modelId=MODEL, messages=messages, toolConfig=WEATHER_TOOL
    )
    assert response["output"]["message"]["content"] == [{"text": 'The tool returned: {"temp": 21}'}]
    # Bedrock refuses tool blocks without a toolConfig, and so does the fake.
    with pytest.raises(ClientError) as info:
        await call(client(fake).converse, modelId=MODEL, messages=messages)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "toolConfig" in info.value.response["Error"]["Message"]


async def test_image_bytes_reach_the_fake(fake: FakeBedrock) -> None:
    image = {"image": {"format": "png", "source": {"bytes": b"\x89PNG\r\n"}}}
    messages = [{"role": "user", "content": [{"text": "What is this?"}, image]}]
    await call(client(fake).converse, modelId=MODEL, messages=messages)
    sent = fake.last_request.json["messages"][0]["content"][1]
    # On the wire the bytes are base64, which is what a client that speaks JSON must send.
    assert sent == {"image": {"format": "png", "source": {"bytes": "iVBORw0K"}}}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "ValidationException"),
        (403, "AccessDeniedException"),
        (404, "ResourceNotFoundException"),
        (408, "ModelTimeoutException"),
        (424, "ModelErrorException"),
        (429, "ThrottlingException"),
        (500, "InternalServerException"),
        (503, "ServiceUnavailableException"),
    ],
)
async def test_injected_errors_are_typed_client_errors(fake, status, code) -> None:
    fake.fail(status, f"fake says {status}", headers={"Retry-After": "3"})
    runtime = client(fake)
    with pytest.raises(ClientError) as info:
        await call(runtime.converse, modelId=MODEL, messages=PROMPT)
    error = info.value
    assert isinstance(error, getattr(runtime.exceptions, code))
    assert error.response["Error"] == {"Code": code, "Message": f"fake says {status}"}
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error.response["ResponseMetadata"]["RequestId"] == fake.last_request.request_id
    assert error.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "3"


async def test_default_error_messages_and_model_not_ready(fake: FakeBedrock) -> None:
    fake.fail(429)
    fake.fail(429, code="ModelNotReadyException")
    runtime = client(fake)
    with pytest.raises(runtime.exceptions.ThrottlingException) as throttled:
        await call(runtime.converse, modelId=MODEL, messages=PROMPT)
    assert throttled.value.response["Error"]["Message"].startswith("Too many requests")
    with pytest.raises(runtime.exceptions.ModelNotReadyException):
        await call(runtime.converse, modelId=MODEL, messages=PROMPT)


async def test_error_on_a_stream_request(fake: FakeBedrock) -> None:
    fake.fail(400, "Input is too long for requested model.")
    with pytest.raises(ClientError) as info:
        await stream_events(fake, messages=PROMPT)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert info.value.response["Error"]["Message"] == "Input is too long for requested model."


@pytest.mark.parametrize(
    "exception",
    [
        "throttlingException",
        "modelStreamErrorException",
        "validationException",
        "internalServerException",
        "serviceUnavailableException",
    ],
)
async def test_mid_stream_exception(fake: FakeBedrock, exception: str) -> None:
    fake.reply("one two three four five six seven eight")
    fake.fault("mid_stream_error", exception=exception, message="went wrong")
    fake.reply("one two three four five six seven eight")

    def run() -> tuple[list[dict[str, Any]], EventStreamError]:
        seen = []
        runtime = client(fake)
        runtime.converse(modelId=MODEL, messages=PROMPT)
        stream = runtime.converse_stream(modelId=MODEL, messages=PROMPT)["stream"]
        try:
            for event in stream:
                seen.append(event)
        except EventStreamError as exc:
            return seen, exc
        finally:
            stream.close()
        raise AssertionError("the stream ended without its exception")

    seen, error = await asyncio.to_thread(run)
    assert any("contentBlockDelta" in e for e in seen)
    assert error.response["Error"]["Code"] == exception
    assert error.response["Error"]["Message"] == "went wrong"


async def test_unsigned_or_unknown_key_is_refused(fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as info:
        await call(client(fake, key="AKIDOTHER").converse, modelId=MODEL, messages=PROMPT)
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert info.value.response["Error"]["Message"] == (
        "The security token included in the request is invalid."
    )
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_validation_errors_read_like_bedrock(fake: FakeBedrock) -> None:
    messages = [PROMPT[0], PROMPT[0]]
    with pytest.raises(ClientError) as info:
        await call(client(fake).converse, modelId=MODEL, messages=messages)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "alternate between user and assistant" in info.value.response["Error"]["Message"]


async def test_list_foundation_models(fake: FakeBedrock) -> None:
    control = client(fake, "bedrock")
    response = await call(control.list_foundation_models)
    summaries = response["modelSummaries"]
    assert [s["modelId"] for s in summaries] == [m.id for m in fake.models]
    first = summaries[0]
    assert first["modelArn"].endswith(f":foundation-model/{first['modelId']}")
    assert first["providerName"] == "Anthropic"
    assert first["responseStreamingSupported"] is True
    assert first["modelLifecycle"] == {"status": "ACTIVE"}
    text_only = await call(control.list_foundation_models, byOutputModality="TEXT")
    assert "amazon.titan-embed-text-v2:0" not in [s["modelId"] for s in text_only["modelSummaries"]]
    by_vendor = await call(control.list_foundation_models, byProvider="meta")
    assert [s["modelId"] for s in by_vendor["modelSummaries"]] == ["meta.llama3-1-8b-instruct-v1:0"]
    assert fake.last_request.path == "/foundation-models"
    assert fake.last_request.query == {"byProvider": "meta"}


def test_encoder_frames_parse_with_botocore() -> None:
    frames = encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "é"}})
    frames += encode_exception("throttlingException", {"message": "slow down"})
    buffer = EventStreamBuffer()
    buffer.add_data(frames)
    messages = list(buffer)
    assert [m.headers for m in messages] == [
        {
            ":event-type": "contentBlockDelta",
            ":content-type": "application/json",
            ":message-type": "event",
        },
        {
            ":exception-type": "throttlingException",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
    ]
    assert json.loads(messages[0].payload) == {"contentBlockIndex": 0, "delta": {"text": "é"}}
