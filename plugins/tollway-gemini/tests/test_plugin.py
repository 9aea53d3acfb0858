"""The entry point, the registered types and their settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tollway.errors import AuthenticationError, ConfigError
from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderSettings, Secret
from tollway.types import Message, Request
from tollway_gemini.settings import GeminiSettings, VertexSettings


def test_entry_point_registers_gemini_and_vertex(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "gemini")
    manager = build_plugin_manager()
    types = manager.providers()
    assert manager.failures == []
    assert types["gemini"].settings is GeminiSettings
    assert types["vertex"].settings is VertexSettings
    assert types["gemini"].plugin == types["vertex"].plugin == "gemini"
    assert "GEMINI_API_KEY" in types["gemini"].description
    assert "Vertex" in types["vertex"].description
    assert issubclass(GeminiSettings, ProviderSettings)
    assert issubclass(VertexSettings, ProviderSettings)


def test_loading_the_plugin_imports_no_http_stack_and_no_sdk() -> None:
    code = (
        "import json, sys, tollway_gemini\n"
        "seen = []\n"
        "tollway_gemini.tollway_register_providers("
        "register=lambda name, factory, **kw: seen.append((name, kw['settings'].__name__)))\n"
        "heavy = [m for m in ('aiohttp', 'google.genai', 'google.auth', 'tollway_gemini.provider')"
        " if m in sys.modules]\n"
        "print(json.dumps({'registered': seen, 'heavy': heavy}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == {
        "registered": [["gemini", "GeminiSettings"], ["vertex", "VertexSettings"]],
        "heavy": [],
    }


def test_settings_defaults() -> None:
    gemini = GeminiSettings()
    assert gemini.base_url == "https://generativelanguage.googleapis.com"
    assert gemini.api_key_env == "GEMINI_API_KEY"
    assert gemini.api_version == "v1beta"
    vertex = VertexSettings()
    assert vertex.access_token_env == "GOOGLE_ACCESS_TOKEN"
    assert vertex.api_version == "v1"
    assert (vertex.project, vertex.location, vertex.base_url) == (None, None, None)


async def test_factories_build_providers(make_provider) -> None:
    gemini = make_provider("gemini", name="google")
    vertex = make_provider("vertex", project="proj-1", location="europe-west4")
    assert isinstance(gemini, Provider)
    assert isinstance(vertex, Provider)
    assert gemini.name == "google"
    assert "generativelanguage.googleapis.com" in repr(gemini)
    assert "https://europe-west4-aiplatform.googleapis.com" in repr(vertex)
    assert "https://aiplatform.googleapis.com" in repr(
        make_provider("vertex", project="p", location="global")
    )


async def test_vertex_project_and_location_from_environment(make_provider, monkeypatch) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-proj")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "asia-northeast1")
    vertex = make_provider("vertex")
    assert "asia-northeast1-aiplatform" in repr(vertex)
    assert "/projects/env-proj/locations/asia-northeast1/" in str(vertex._urls_for("m")[0])


def test_vertex_without_project_is_a_config_error(make_provider) -> None:
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT") as info:
        make_provider("vertex", name="vx")
    assert info.value.key == "providers.vx.project"


def test_bad_base_url_is_a_config_error(make_provider) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        make_provider("gemini", base_url="generativelanguage.googleapis.com")


async def test_missing_key_names_the_variables(make_provider) -> None:
    provider = make_provider("gemini", name="prod")
    request = Request("prod/gemini-2.5-flash", (Message.user("hi"),))
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(request)
    assert "GEMINI_API_KEY" in str(info.value)
    assert "[providers.prod]" in str(info.value)
    assert info.value.provider == "prod"
    with pytest.raises(AuthenticationError):
        async for _ in provider.stream(request):
            pass


async def test_missing_vertex_token_says_how_to_get_one(make_provider) -> None:
    provider = make_provider("vertex", project="p")
    with pytest.raises(AuthenticationError, match="gcloud auth print-access-token") as info:
        await provider.complete(Request("vertex/gemini-2.5-flash", (Message.user("hi"),)))
    assert "GOOGLE_ACCESS_TOKEN" in str(info.value)


def test_secret_key_is_not_in_repr(make_provider) -> None:
    provider = make_provider("gemini", api_key=Secret("AIza-very-secret"))
    assert "AIza-very-secret" not in repr(provider)
    assert "AIza-very-secret" not in repr(provider.settings)
