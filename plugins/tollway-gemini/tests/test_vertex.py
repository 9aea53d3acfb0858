"""The vertex type: Vertex AI routes, a bearer token read per call, its errors and models."""

from __future__ import annotations

import pytest

from tollway.errors import AuthenticationError, RateLimitedError
from tollway.streaming import StreamAssembler
from tollway.testing.fake_gemini import FakeGemini
from tollway.types import Message, Request, Usage

MODEL = "vertex/gemini-2.5-flash"
ROUTE = "/v1/projects/proj-1/locations/europe-west4/publishers/google/models/gemini-2.5-flash"


def ask(text: str = "Hello Vertex") -> Request:
    return Request(MODEL, (Message.user(text),))


@pytest.fixture
def vertex(make_provider, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch):
    fake_gemini.require_access_token = "ya29.first"
    monkeypatch.setenv("GOOGLE_ACCESS_TOKEN", "ya29.first")
    return make_provider(
        "vertex", base_url=fake_gemini.vertex_base_url, project="proj-1", location="europe-west4"
    )


async def test_complete_and_stream(vertex, fake_gemini) -> None:
    response = await vertex.complete(ask())
    assert response.text == "Echo: Hello Vertex"
    assert response.model == "vertex/gemini-2.5-flash"
    assert response.provider == "vertex"
    assert response.usage == Usage(input_tokens=2, output_tokens=4)
    sent = fake_gemini.last_request
    assert sent.path == ROUTE + ":generateContent"
    assert sent.headers["Authorization"] == "Bearer ya29.first"
    assert "x-goog-api-key" not in sent.headers

    assembler = StreamAssembler("vertex", MODEL)
    async for chunk in vertex.stream(ask()):
        assembler.add(chunk)
    streamed = assembler.response()
    assert (streamed.message, streamed.usage) == (response.message, response.usage)
    assert fake_gemini.last_request.path == ROUTE + ":streamGenerateContent"
    assert fake_gemini.last_request.query == {"alt": "sse"}


async def test_token_is_read_again_on_every_call(vertex, fake_gemini, monkeypatch) -> None:
    await vertex.complete(ask())
    # The token was refreshed (gcloud, a workload identity sidecar) while the provider lived.
    monkeypatch.setenv("GOOGLE_ACCESS_TOKEN", "ya29.second")
    with pytest.raises(AuthenticationError) as info:
        await vertex.complete(ask())
    assert fake_gemini.last_request.headers["Authorization"] == "Bearer ya29.second"
    assert info.value.status == 401
    assert info.value.code == "ACCESS_TOKEN_TYPE_UNSUPPORTED"
    assert info.value.provider_message.startswith("Request had invalid authentication")
    fake_gemini.require_access_token = "ya29.second"
    assert (await vertex.complete(ask())).text


async def test_quota_error(vertex, fake_gemini) -> None:
    fake_gemini.fail(429, "Resource exhausted. Please try again later.", retry_delay=2)
    with pytest.raises(RateLimitedError) as info:
        await vertex.complete(ask())
    assert info.value.retry_after == 2.0
    assert info.value.provider == "vertex"


async def test_list_models(vertex, fake_gemini) -> None:
    models = await vertex.list_models()
    assert [m.id for m in models] == [spec.id for spec in fake_gemini.models]
    assert {m.provider for m in models} == {"vertex"}
    assert fake_gemini.last_request.path == "/v1beta1/publishers/google/models"
