"""The official google-genai SDK parses what FakeGemini sends: the fake speaks Gemini's wire format.

If Google's format (as the SDK knows it) and the fake drift apart, these tests fail, not the
provider tests that trust the fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from google import genai
from google.genai import errors, types

from tollway.testing.fake_gemini import FakeGemini

KEY = "AIza-test-key"
MODEL = "gemini-2.5-flash"

# One server and one SDK client for the module: building a genai.Client costs a quarter of a
# second (it loads CA certificates for its httpx clients), which would be most of this file's time.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(require_api_key=KEY) as started:
        yield started


@pytest.fixture
def fake(server: FakeGemini) -> FakeGemini:
    server.reset()
    return server


def make_client(base_url: str, key: str = KEY) -> genai.Client:
    # attempts=1 switches off both tenacity's retries and the SDK's implicit retry of
    # connection errors, which sleeps 1-10 s.
    options = types.HttpOptions(base_url=base_url, retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key=key, http_options=options)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(server: FakeGemini) -> AsyncIterator[genai.Client]:
    sdk = make_client(server.base_url)
    yield sdk
    await sdk.aio.aclose()


async def test_generate_content(client: genai.Client, fake: FakeGemini) -> None:
    response = await client.aio.models.generate_content(
        model=MODEL,
        contents="Hello there",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=50),
    )
    assert response.text == "Echo: Hello there"
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.response_id
    assert len(response.response_id) == 23
    assert response.model_version == MODEL
    usage = response.usage_metadata
    assert usage is not None
    # "Hello there" + "Be brief." (2 + 3) prompt tokens; "Echo: Hello there" is 4.
    assert (usage.prompt_token_count, usage.candidates_token_count) == (5, 4)
    assert usage.total_token_count == 9
    sent = fake.last_request
    # The SDK's own choice of API version (v1) is served as well as the provider's v1beta.
    assert sent.path == f"/v1/models/{MODEL}:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.json["systemInstruction"]["parts"] == [{"text": "Be brief."}]


async def test_max_output_tokens_cuts_the_default_answer(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model=MODEL,
        contents="one two three four",
        config=types.GenerateContentConfig(max_output_tokens=3),
    )
    assert response.text == "Echo: one"
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS


async def test_stream_with_thoughts_and_cached_usage(client: genai.Client, fake: FakeGemini):
    fake.reply(
        "The answer is forty-two, as everyone knows.",
        thoughts="**Recalling** the famous number.",
        cached_tokens=1024,
        thoughts_tokens=120,
        usage={"promptTokenCount": 1500},
    )
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model=MODEL, contents="What is the answer?"
        )
    ]
    assert len(chunks) > 2
    # The SDK's .text leaves thought parts out; the first event is the thought summary.
    assert chunks[0].candidates is not None
    assert chunks[0].candidates[0].content is not None
    first_parts = chunks[0].candidates[0].content.parts
    assert first_parts is not None
    assert first_parts[0].thought is True
    text = "".join(c.text or "" for c in chunks[1:])
    assert text == "The answer is forty-two, as everyone knows."
    last = chunks[-1]
    assert last.candidates is not None
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert all(c.candidates and c.candidates[0].finish_reason is None for c in chunks[:-1])
    usage = last.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == 1500
    assert usage.cached_content_token_count == 1024
    assert usage.thoughts_token_count == 120
    assert usage.candidates_token_count == 11
    assert usage.total_token_count == 1500 + 11 + 120
    assert len({c.response_id for c in chunks}) == 1
    sent = fake.last_request
    assert sent.path == f"/v1/models/{MODEL}:streamGenerateContent"
    assert sent.query == {"alt": "sse"}


async def test_function_calls(client: genai.Client, fake: FakeGemini) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"id": "fc-2", "name": "get_time", "arguments": '{"zone": "Europe/Paris"}'},
    ]
    fake.reply(tool_calls=calls, times=2)
    weather = types.FunctionDeclaration(
        name="get_weather",
        description="Weather for a city",
        parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    response = await client.aio.models.generate_content(
        model=MODEL, contents="Weather and time in Paris?", config=config
    )
    assert response.function_calls is not None
    assert [(c.id, c.name, c.args) for c in response.function_calls] == [
        (None, "get_weather", {"city": "Paris"}),
        ("fc-2", "get_time", {"zone": "Europe/Paris"}),
    ]
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP

    streamed = [
        call
        async for chunk in await client.aio.models.generate_content_stream(
            model=MODEL, contents="Weather and time in Paris?", config=config
        )
        for call in chunk.function_calls or ()
    ]
    assert [(c.name, c.args) for c in streamed] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "Europe/Paris"}),
    ]


async def test_function_response_round_trip(client: genai.Client) -> None:
    contents = [
        types.Content(role="user", parts=[types.Part.from_text(text="Weather in Paris?")]),
        types.Content(
            role="model",
            parts=[types.Part.from_function_call(name="get_weather", args={"city": "Paris"})],
        ),
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"t": 21})],
        ),
    ]
    response = await client.aio.models.generate_content(model=MODEL, contents=contents)
    assert response.text == 'The tool returned: {"t": 21}'


async def test_blocked_prompt(client: genai.Client, fake: FakeGemini) -> None:
    fake.reply(block_reason="SAFETY")
    response = await client.aio.models.generate_content(model=MODEL, contents="something bad")
    assert response.candidates is None
    assert response.prompt_feedback is not None
    assert response.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    ratings = response.prompt_feedback.safety_ratings or []
    assert any(r.blocked for r in ratings)


async def test_safety_finish(client: genai.Client, fake: FakeGemini) -> None:
    fake.reply(finish_reason="SAFETY")
    response = await client.aio.models.generate_content(model=MODEL, contents="hm")
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.SAFETY
    assert response.text is None


async def test_models_list_and_get(client: genai.Client, fake: FakeGemini) -> None:
    pager = await client.aio.models.list(config={"page_size": 2})
    models = [model async for model in pager]
    assert [m.name for m in models] == [f"models/{spec.id}" for spec in fake.models]
    flash = models[0]
    assert flash.input_token_limit == 1_048_576
    assert flash.output_token_limit == 65_536
    assert flash.supported_actions is not None
    assert "generateContent" in flash.supported_actions
    assert flash.thinking is True
    assert len([r for r in fake.requests if r.path == "/v1/models"]) == 3  # 2 + 2 + 1

    one = await client.aio.models.get(model="gemini-2.0-flash")
    assert one.display_name == "Gemini 2.0 Flash"


@pytest.mark.parametrize(
    ("status", "status_name", "error_class"),
    [
        (400, "INVALID_ARGUMENT", errors.ClientError),
        (403, "PERMISSION_DENIED", errors.ClientError),
        (429, "RESOURCE_EXHAUSTED", errors.ClientError),
        (500, "INTERNAL", errors.ServerError),
        (503, "UNAVAILABLE", errors.ServerError),
        (504, "DEADLINE_EXCEEDED", errors.ServerError),
    ],
)
async def test_injected_errors(client, fake, status, status_name, error_class) -> None:
    fake.fail(status, f"provider says {status}", retry_delay="12s" if status == 429 else None)
    with pytest.raises(error_class) as info:
        await client.aio.models.generate_content(model=MODEL, contents="hi")
    assert info.value.code == status
    assert info.value.status == status_name
    assert info.value.message == f"provider says {status}"
    if status == 429:
        details = info.value.details["error"]["details"]
        assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"} in details
    assert len(fake.requests) == 1  # no retry


async def test_injected_error_on_a_stream(client: genai.Client, fake: FakeGemini) -> None:
    fake.fail(429)
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents="hi")
    # The SDK sends the request, and raises, when the stream is first read.
    with pytest.raises(errors.ClientError) as info:
        await anext(stream)
    assert info.value.code == 429
    assert info.value.message is not None
    assert "exceeded your current quota" in info.value.message


async def test_wrong_key_and_unknown_model(fake: FakeGemini) -> None:
    wrong = make_client(fake.base_url, key="AIza-wrong")
    try:
        with pytest.raises(errors.ClientError) as info:
            await wrong.aio.models.generate_content(model=MODEL, contents="hi")
    finally:
        await wrong.aio.aclose()
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    assert info.value.message == "API key not valid. Please pass a valid API key."
    assert info.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"

    right = make_client(fake.base_url)
    try:
        with pytest.raises(errors.ClientError) as info:
            await right.aio.models.generate_content(model="gemini-9-ultra", contents="hi")
    finally:
        await right.aio.aclose()
    assert info.value.code == 404
    assert info.value.message is not None
    assert info.value.message.startswith("models/gemini-9-ultra is not found")


async def test_mid_stream_error(client: genai.Client, fake: FakeGemini) -> None:
    fake.fault("mid_stream_error")
    texts: list[str] = []

    async def read() -> None:
        async for chunk in await client.aio.models.generate_content_stream(
            model=MODEL, contents="one two three four five six seven eight"
        ):
            texts.append(chunk.text or "")

    with pytest.raises(errors.ServerError) as info:
        await read()
    assert "".join(texts).startswith("Echo:")
    assert info.value.code == 500
    assert info.value.status == "INTERNAL"


async def test_vertex_route(fake: FakeGemini) -> None:
    from google.oauth2.credentials import Credentials

    fake.require_access_token = "ya29.token"
    options = types.HttpOptions(
        base_url=fake.vertex_base_url, retry_options=types.HttpRetryOptions(attempts=1)
    )
    vertex = genai.Client(
        vertexai=True,
        project="proj-1",
        location="us-central1",
        credentials=Credentials(token="ya29.token"),
        http_options=options,
    )
    try:
        response = await vertex.aio.models.generate_content(model=MODEL, contents="Hi Vertex")
    finally:
        await vertex.aio.aclose()
    assert response.text == "Echo: Hi Vertex"
    assert response.usage_metadata is not None
    assert response.usage_metadata.traffic_type == types.TrafficType.ON_DEMAND
    sent = fake.last_request
    assert sent.path == (
        f"/v1beta1/projects/proj-1/locations/us-central1/publishers/google/models/{MODEL}"
        ":generateContent"
    )
    assert sent.headers["Authorization"] == "Bearer ya29.token"
