"""The Azure provider against the fake's Azure routes: URLs, api-key, api-version, deployments."""

from __future__ import annotations

import pytest

from tollway.errors import AuthenticationError, NotFoundError
from tollway.providers import Secret
from tollway.testing import FakeOpenAI
from tollway.types import Message, Request, Usage

KEY = "azure-key-123"


def ask(model: str = "azure/gpt-4o") -> Request:
    return Request(model, (Message.user("Hello from Azure"),), max_tokens=64)


@pytest.fixture
def azure(make_provider, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch):
    fake_openai.require_api_key = KEY
    fake_openai.azure_deployments = {"prod-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini"}
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    return make_provider(
        "azure",
        endpoint=fake_openai.azure_endpoint + "/",
        deployments={"gpt-4o": "prod-4o"},
    )


async def test_complete_uses_deployment_url_key_and_version(azure, fake_openai) -> None:
    response = await azure.complete(ask())
    assert response.text == "Echo: Hello from Azure"
    assert response.model == "azure/gpt-4o-2024-08-06"
    assert response.provider == "azure"
    assert response.request_id == fake_openai.last_request.request_id
    sent = fake_openai.last_request
    assert sent.path == "/openai/deployments/prod-4o/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == KEY
    assert "Authorization" not in sent.headers
    assert sent.json["max_tokens"] == 64


async def test_model_not_in_deployments_is_its_own_deployment(azure, fake_openai) -> None:
    await azure.complete(ask("azure/gpt-4o-mini"))
    assert fake_openai.last_request.path == "/openai/deployments/gpt-4o-mini/chat/completions"


async def test_stream_skips_azure_filter_preamble(azure, fake_openai) -> None:
    complete = await azure.complete(ask())
    chunks = [chunk async for chunk in azure.stream(ask())]
    assert "".join(c.text for c in chunks) == complete.text
    assert chunks[-1].usage == complete.usage
    # Azure's first event has no choices and an empty model; it must not become a chunk.
    assert all(c.model == "azure/gpt-4o-2024-08-06" for c in chunks)


async def test_unknown_deployment_is_not_found(azure) -> None:
    with pytest.raises(NotFoundError) as info:
        await azure.complete(ask("azure/gpt-5"))
    assert info.value.code == "DeploymentNotFound"
    assert "deployment for this resource does not exist" in info.value.provider_message


async def test_wrong_key_is_azures_401(make_provider, fake_openai) -> None:
    fake_openai.require_api_key = KEY
    provider = make_provider("azure", endpoint=fake_openai.azure_endpoint, api_key=Secret("wrong"))
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(ask())
    assert info.value.code == "401"
    assert info.value.provider_message.startswith("Access denied")


async def test_api_version_setting(make_provider, fake_openai) -> None:
    provider = make_provider(
        "azure",
        endpoint=fake_openai.azure_endpoint,
        api_key=Secret(KEY),
        api_version="2025-01-01-preview",
    )
    await provider.complete(ask())
    assert fake_openai.last_request.query["api-version"] == "2025-01-01-preview"


async def test_reasoning_deployment_gets_max_completion_tokens(make_provider, fake_openai) -> None:
    provider = make_provider("azure", endpoint=fake_openai.azure_endpoint, api_key=Secret(KEY))
    await provider.complete(ask("azure/o3-mini"))
    assert fake_openai.last_request.json["max_completion_tokens"] == 64
    assert "max_tokens" not in fake_openai.last_request.json


async def test_endpoint_from_environment(make_provider, fake_openai, monkeypatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", fake_openai.azure_endpoint)
    provider = make_provider("azure", api_key=Secret(KEY))
    assert (await provider.complete(ask())).usage.output_tokens > 0


async def test_list_models(azure, fake_openai) -> None:
    models = await azure.list_models()
    assert sorted(m.id for m in models) == ["gpt-4o-2024-08-06", "gpt-4o-mini"]
    assert {m.provider for m in models} == {"azure"}
    assert fake_openai.last_request.path == "/openai/models"
    assert fake_openai.last_request.query == {"api-version": "2024-10-21"}
    assert fake_openai.last_request.headers["api-key"] == KEY


async def test_usage(azure, fake_openai) -> None:
    fake_openai.reply("ok", usage={"prompt_tokens": 50}, cached_tokens=32)
    response = await azure.complete(ask())
    assert response.usage == Usage(input_tokens=50, output_tokens=1, cache_read_tokens=32)
