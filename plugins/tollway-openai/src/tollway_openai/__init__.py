"""tollway provider plugin for OpenAI, Azure OpenAI and OpenAI-compatible servers.

This module is what the ``tollway`` entry point loads, so it only registers names: the HTTP
implementation (and aiohttp with it) is imported when a provider is first built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tollway.hookspecs import hookimpl
from tollway_openai.settings import AzureSettings, OpenAISettings

if TYPE_CHECKING:
    from tollway.providers.base import Provider, ProviderContext

__all__ = ["AzureSettings", "OpenAISettings", "tollway_register_providers"]


def openai_factory(settings: OpenAISettings | None, context: ProviderContext) -> Provider:
    from tollway_openai.provider import OpenAIProvider

    return OpenAIProvider(settings if settings is not None else OpenAISettings(), context)


def azure_factory(settings: AzureSettings | None, context: ProviderContext) -> Provider:
    from tollway_openai.provider import AzureOpenAIProvider

    return AzureOpenAIProvider(settings if settings is not None else AzureSettings(), context)


@hookimpl
def tollway_register_providers(register: Callable[..., Any]) -> None:
    register(
        "openai",
        openai_factory,
        settings=OpenAISettings,
        description="OpenAI Chat Completions, or any OpenAI-compatible server (set base_url)",
    )
    register(
        "azure",
        azure_factory,
        settings=AzureSettings,
        description="Azure OpenAI deployments (set endpoint, and deployments if names differ)",
    )
