from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderContext
from tollway.providers.http import HttpPool
from tollway.testing.fake_gemini import FakeGemini

__all__ = ["fake_gemini", "http", "make_provider"]

MakeProvider = Callable[..., Provider]


@pytest_asyncio.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    """A started FakeGemini on 127.0.0.1, closed after the test."""
    async with FakeGemini() as fake:
        yield fake


@pytest_asyncio.fixture
async def http() -> AsyncIterator[HttpPool]:
    pool = HttpPool()
    yield pool
    await pool.aclose()


@pytest.fixture
def make_provider(http: HttpPool, monkeypatch: pytest.MonkeyPatch) -> MakeProvider:
    """Build a provider the way a pipeline does: entry point -> registered type -> factory."""
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "gemini")
    monkeypatch.delenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    for name in (
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_ACCESS_TOKEN",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
    ):
        monkeypatch.delenv(name, raising=False)
    types = build_plugin_manager().providers()

    def make(type_name: str = "gemini", name: str | None = None, **settings: Any) -> Provider:
        provider_type = types[type_name]
        return provider_type.factory(
            provider_type.settings(type=type_name, **settings),
            ProviderContext(name=name or type_name, http=http),
        )

    return make
