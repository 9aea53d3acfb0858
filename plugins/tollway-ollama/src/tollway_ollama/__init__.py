"""tollway provider plugin for Ollama's native API (``/api/chat``, NDJSON streaming).

This module is what the ``tollway`` entry point loads, so it only registers names: the HTTP
implementation (and aiohttp with it) is imported when a provider is first built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tollway.hookspecs import hookimpl
from tollway_ollama.settings import OllamaSettings

if TYPE_CHECKING:
    from tollway.providers.base import Provider, ProviderContext

__all__ = ["OllamaSettings", "ollama_factory", "tollway_register_providers"]


def ollama_factory(settings: OllamaSettings | None, context: ProviderContext) -> Provider:
    from tollway_ollama.provider import OllamaProvider

    return OllamaProvider(settings if settings is not None else OllamaSettings(), context)


@hookimpl
def tollway_register_providers(register: Callable[..., Any]) -> None:
    register(
        "ollama",
        ollama_factory,
        settings=OllamaSettings,
        description="Ollama's native API: local models (ollama serve), or a hosted Ollama",
    )
