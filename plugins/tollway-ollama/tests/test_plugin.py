"""The entry point, the registered type and its settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tollway.errors import ConfigError
from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderSettings, Secret
from tollway_ollama.settings import OllamaSettings, normalise_host


def test_entry_point_registers_ollama(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "ollama")
    manager = build_plugin_manager()
    provider_type = manager.providers()["ollama"]
    assert manager.failures == []
    assert provider_type.settings is OllamaSettings
    assert provider_type.plugin == "ollama"
    assert "Ollama" in provider_type.description
    assert issubclass(OllamaSettings, ProviderSettings)


def test_loading_the_plugin_imports_neither_aiohttp_nor_the_sdk() -> None:
    code = """
import sys, tollway_ollama
calls = []
tollway_ollama.tollway_register_providers(lambda *a, **k: calls.append((a, k)))
(name, factory), options = calls[0]
assert name == "ollama" and callable(factory), calls
assert options["settings"] is tollway_ollama.OllamaSettings, options
heavy = ("aiohttp", "ollama", "httpx", "tollway_ollama.provider")
print(len(calls), [m for m in heavy if m in sys.modules])
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "1 []"


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = OllamaSettings()
    assert settings.base_url == "http://127.0.0.1:11434"
    assert settings.api_key is None
    assert settings.api_key_env == "OLLAMA_API_KEY"
    assert settings.keep_alive is None
    assert settings.options == {}
    assert settings.timeout == 600.0


def test_base_url_follows_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:8080")
    assert OllamaSettings().base_url == "http://gpu-box:8080"
    # Configured explicitly, it wins over the environment.
    assert OllamaSettings(base_url="http://other:11434").base_url == "http://other:11434"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("gpu-box", "http://gpu-box:11434"),
        ("gpu-box:8080", "http://gpu-box:8080"),
        (":9999", "http://127.0.0.1:9999"),
        ("0.0.0.0", "http://127.0.0.1:11434"),  # a bind address means this machine
        ("0.0.0.0:11500", "http://127.0.0.1:11500"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("https://ollama.example.com", "https://ollama.example.com"),
        ("https://ollama.example.com/", "https://ollama.example.com"),
        ("example.com:8080/ollama/", "http://example.com:8080/ollama"),
    ],
)
def test_normalise_host(value: str | None, expected: str) -> None:
    assert normalise_host(value) == expected


def test_factory_builds_a_provider(make_provider) -> None:
    provider = make_provider("local", base_url="gpu-box:8080")
    assert isinstance(provider, Provider)
    assert provider.name == "local"
    assert repr(provider) == "OllamaProvider(name='local', url='http://gpu-box:8080')"


def test_bad_base_url_is_a_config_error(make_provider) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        make_provider(base_url="ftp://gpu-box")


def test_secret_key_is_not_in_repr(make_provider) -> None:
    provider = make_provider(api_key=Secret("ollama-very-secret"))
    assert "ollama-very-secret" not in repr(provider)
    assert "ollama-very-secret" not in repr(provider.settings)
