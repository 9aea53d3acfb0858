"""The entry point, the registered types and their settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tollway.errors import AuthenticationError, ConfigError
from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderSettings, Secret
from tollway.types import Message, Request
from tollway_openai.settings import AzureSettings, OpenAISettings


def test_entry_point_registers_openai_and_azure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "openai")
    manager = build_plugin_manager()
    types = manager.providers()
    assert manager.failures == []
    assert types["openai"].settings is OpenAISettings
    assert types["azure"].settings is AzureSettings
    assert types["openai"].plugin == types["azure"].plugin == "openai"
    assert types["openai"].description
    assert types["azure"].description
    assert issubclass(OpenAISettings, ProviderSettings)
    assert issubclass(AzureSettings, ProviderSettings)


def test_importing_the_plugin_does_not_import_aiohttp() -> None:
    code = (
        "import sys, tollway_openai; "
        "heavy = [m for m in ('aiohttp', 'tollway_openai.provider') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_settings_defaults() -> None:
    openai = OpenAISettings()
    assert openai.base_url == "https://api.openai.com/v1"
    assert openai.api_key_env == "OPENAI_API_KEY"
    azure = AzureSettings(endpoint="https://res.openai.azure.com")
    assert azure.api_version == "2024-10-21"
    assert azure.api_key_env == "AZURE_OPENAI_API_KEY"
    assert azure.deployments == {}


async def test_factories_build_providers(make_provider) -> None:
    openai = make_provider("openai", name="work")
    azure = make_provider("azure", endpoint="https://res.openai.azure.com")
    assert isinstance(openai, Provider)
    assert isinstance(azure, Provider)
    assert openai.name == "work"
    assert "work" in repr(openai)


async def test_missing_key_for_api_openai_com_names_the_variable(make_provider) -> None:
    provider = make_provider("openai", name="prod")
    request = Request("prod/gpt-4o-mini", (Message.user("hi"),))
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(request)
    assert "OPENAI_API_KEY" in str(info.value)
    assert "[providers.prod]" in str(info.value)
    assert info.value.provider == "prod"
    with pytest.raises(AuthenticationError):
        async for _ in provider.stream(request):
            pass


async def test_missing_azure_key_names_the_variable(make_provider) -> None:
    provider = make_provider("azure", endpoint="https://res.openai.azure.com")
    with pytest.raises(AuthenticationError, match="AZURE_OPENAI_API_KEY"):
        await provider.complete(Request("azure/gpt-4o", (Message.user("hi"),)))


def test_azure_without_endpoint_is_a_config_error(make_provider) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        make_provider("azure", name="az")


def test_bad_base_url_is_a_config_error(make_provider) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        make_provider("openai", base_url="localhost:8000/v1")


def test_secret_key_is_not_in_repr(make_provider) -> None:
    provider = make_provider("openai", api_key=Secret("sk-very-secret"))
    assert "sk-very-secret" not in repr(provider)
    assert "sk-very-secret" not in repr(provider.settings)
