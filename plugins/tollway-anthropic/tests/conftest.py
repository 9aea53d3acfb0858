from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderContext, Secret
from tollway.providers.http import HttpPool
from tollway.testing.fake_anthropic import FakeAnthropic

__all__ = ["KEY", "fake_anthropic", "http", "make_provider", "provider"]

KEY = "sk-ant-test-0123456789"

MakeProvider = Callable[..., Provider]


@pytest_asyncio.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    """A started FakeAnthropic on 127.0.0.1 that only takes ``KEY``, closed after the test."""
    async with FakeAnthropic(require_api_key=KEY) as fake:
        yield fake


@pytest_asyncio.fixture
async def http() -> AsyncIterator[HttpPool]:
    pool = HttpPool()
    yield pool
    await pool.aclose()


@pytest.fixture
def make_provider(http: HttpPool, monkeypatch: pytest.MonkeyPatch) -> MakeProvider:
    """Build a provider the way a pipeline does: entry point -> registered type -> factory."""
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "anthropic")
    monkeypatch.delenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    types = build_plugin_manager().providers()

    def make(name: str = "anthropic", **settings: Any) -> Provider:
        provider_type = types["anthropic"]
        return provider_type.factory(
            provider_type.settings(type="anthropic", **settings),
            ProviderContext(name=name, http=http),
        )

    return make


@pytest.fixture
def provider(make_provider: MakeProvider, fake_anthropic: FakeAnthropic) -> Provider:
    return make_provider(base_url=fake_anthropic.base_url, api_key=Secret(KEY))
