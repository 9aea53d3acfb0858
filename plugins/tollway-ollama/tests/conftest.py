from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderContext
from tollway.providers.http import HttpPool
from tollway.testing.fake_ollama import FakeOllama

__all__ = ["fake_ollama", "http", "make_provider"]

MakeProvider = Callable[..., Provider]


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own Ollama settings must not leak into what the tests send.
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)


@pytest_asyncio.fixture
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    """A started FakeOllama on 127.0.0.1, closed after the test."""
    async with FakeOllama() as fake:
        yield fake


@pytest_asyncio.fixture
async def http() -> AsyncIterator[HttpPool]:
    pool = HttpPool()
    yield pool
    await pool.aclose()


@pytest.fixture
def make_provider(http: HttpPool, monkeypatch: pytest.MonkeyPatch) -> MakeProvider:
    """Build a provider the way a pipeline does: entry point -> registered type -> factory."""
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "ollama")
    monkeypatch.delenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    types = build_plugin_manager().providers()

    def make(name: str = "ollama", **settings: Any) -> Provider:
        provider_type = types["ollama"]
        return provider_type.factory(
            provider_type.settings(type="ollama", **settings),
            ProviderContext(name=name, http=http),
        )

    return make
