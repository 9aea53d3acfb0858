"""tollway provider plugin for Anthropic's Messages API.

This module is what the ``tollway`` entry point loads, so it only registers names: the HTTP
implementation (and aiohttp with it) is imported when a provider is first built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tollway.hookspecs import hookimpl
from tollway_anthropic.settings import AnthropicSettings

if TYPE_CHECKING:
    from tollway.providers.base import Provider, ProviderContext

__all__ = ["AnthropicSettings", "anthropic_factory", "tollway_register_providers"]


def anthropic_factory(settings: AnthropicSettings | None, context: ProviderContext) -> Provider:
    from tollway_anthropic.provider import AnthropicProvider

    return AnthropicProvider(settings if settings is not None else AnthropicSettings(), context)


@hookimpl
def tollway_register_providers(register: Callable[..., Any]) -> None:
    register(
        "anthropic",
        anthropic_factory,
        settings=AnthropicSettings,
        description="Anthropic Messages API: Claude models, streaming, tools, prompt caching",
    )
