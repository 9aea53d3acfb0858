from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderContext
from tollway.providers.http import HttpPool
from tollway.testing import FakeOpenAI

MakeProvider = Callable[..., Provider]


@pytest_asyncio.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    # The same fixture as tollway.testing.fixtures; pytest_plugins would load that one, but
    # pytest honours it only in the rootdir's conftest, which this distribution does not own.
    async with FakeOpenAI() as fake:
        yield fake


@pytest_asyncio.fixture
async def http() -> AsyncIterator[HttpPool]:
    pool = HttpPool()
    yield pool
    await pool.aclose()


@pytest.fixture
def make_provider(http: HttpPool, monkeypatch: pytest.MonkeyPatch) -> MakeProvider:
    """Build a provider the way a pipeline does: entry point -> registered type -> factory."""
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "openai")
    monkeypatch.delenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    types = build_plugin_manager().providers()

    def make(type_name: str = "openai", name: str | None = None, **settings: Any) -> Provider:
        provider_type = types[type_name]
        return provider_type.factory(
            provider_type.settings(type=type_name, **settings),
            ProviderContext(name=name or type_name, http=http),
        )

    return make
