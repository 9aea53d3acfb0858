from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

import tollway_llamacpp
from tollway.plugins import build_plugin_manager
from tollway.providers import ProviderContext, ProviderType
from tollway.providers.http import HttpPool
from tollway_llamacpp.model_files import bundled_model_file
from tollway_llamacpp.provider import LlamaCppProvider


@pytest.fixture(scope="session")
def provider_type() -> ProviderType:
    """The provider type as the plugin registers it through its hook."""
    manager = build_plugin_manager([tollway_llamacpp], load_entrypoints=False)
    return manager.providers()["llamacpp"]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cache the bundled model is assembled into, once per session. The model is deleted
    afterwards: pytest keeps the temporary directories of recent runs, and it is 250 MB."""
    cache = tmp_path_factory.mktemp("models")
    yield cache
    for path in cache.glob("*.gguf"):
        path.unlink()


@pytest.fixture(scope="session")
def bundled_gguf(model_cache: Path) -> Path:
    return bundled_model_file(model_cache, key="providers.llamacpp.cache_dir")


ProviderMaker = Callable[..., LlamaCppProvider]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def make_provider(
    provider_type: ProviderType, model_cache: Path
) -> AsyncIterator[ProviderMaker]:
    """Builds providers through the registered factory; closes them and the pool at the end."""
    http = HttpPool()
    made: list[LlamaCppProvider] = []

    def make(**settings: object) -> LlamaCppProvider:
        settings.setdefault("cache_dir", str(model_cache))
        provider = provider_type.factory(
            provider_type.settings(**settings), ProviderContext(name="llamacpp", http=http)
        )
        assert isinstance(provider, LlamaCppProvider)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()
    await http.aclose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def provider(make_provider: ProviderMaker) -> LlamaCppProvider:
    """The bundled model with default settings, loaded once per session (on first call)."""
    return make_provider()
