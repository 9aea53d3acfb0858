"""The entry point, the registered type and its settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tollway.errors import AuthenticationError, ConfigError
from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderSettings, Secret
from tollway.types import Message, Request
from tollway_anthropic.settings import AnthropicSettings


def test_entry_point_registers_anthropic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "anthropic")
    manager = build_plugin_manager()
    types = manager.providers()
    assert manager.failures == []
    assert types["anthropic"].settings is AnthropicSettings
    assert types["anthropic"].plugin == "anthropic"
    assert "Anthropic" in types["anthropic"].description
    assert issubclass(AnthropicSettings, ProviderSettings)


def test_loading_the_plugin_imports_neither_sdk_nor_http_stack() -> None:
    # A fresh interpreter: what the entry point and its hook pull in, and nothing else.
    code = """
import json, sys
import tollway_anthropic
calls = []
tollway_anthropic.tollway_register_providers(
    register=lambda *args, **kwargs: calls.append((args[0], kwargs["settings"].__name__))
)
heavy = [m for m in ("anthropic", "botocore", "aiohttp", "tollway_anthropic.provider")
         if m in sys.modules]
print(json.dumps({"calls": calls, "heavy": heavy}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == {"calls": [["anthropic", "AnthropicSettings"]], "heavy": []}


def test_settings_defaults() -> None:
    settings = AnthropicSettings()
    assert settings.base_url == "https://api.anthropic.com"
    assert settings.api_key_env == "ANTHROPIC_API_KEY"
    assert settings.anthropic_version == "2023-06-01"
    assert settings.beta == []
    assert settings.default_max_tokens == 4096
    assert settings.system_cache_control is None


async def test_factory_builds_a_provider(make_provider) -> None:
    provider = make_provider(name="claude")
    assert isinstance(provider, Provider)
    assert provider.name == "claude"
    assert "claude" in repr(provider)
    assert "api.anthropic.com" in repr(provider)


async def test_missing_key_names_the_variable(make_provider) -> None:
    provider = make_provider(name="prod")
    request = Request("prod/claude-sonnet-4-20250514", (Message.user("hi"),))
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(request)
    assert "ANTHROPIC_API_KEY" in str(info.value)
    assert "[providers.prod]" in str(info.value)
    assert info.value.provider == "prod"
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        async for _ in provider.stream(request):
            pass
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        await provider.list_models()


def test_bad_base_url_is_a_config_error(make_provider) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        make_provider(base_url="api.anthropic.com")


def test_secret_key_is_not_in_repr(make_provider) -> None:
    provider = make_provider(api_key=Secret("sk-ant-very-secret"))
    assert "sk-ant-very-secret" not in repr(provider)
    assert "sk-ant-very-secret" not in repr(provider.settings)
