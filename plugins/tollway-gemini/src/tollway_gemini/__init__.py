"""tollway provider plugin for Google Gemini: the Gemini API (``gemini``) and Vertex AI
(``vertex``).

This module is what the ``tollway`` entry point loads, so it only registers names: the HTTP
implementation (and aiohttp with it) is imported when a provider is first built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tollway.hookspecs import hookimpl
from tollway_gemini.settings import GeminiSettings, VertexSettings

if TYPE_CHECKING:
    from tollway.providers.base import Provider, ProviderContext

__all__ = ["GeminiSettings", "VertexSettings", "tollway_register_providers"]


def gemini_factory(settings: GeminiSettings | None, context: ProviderContext) -> Provider:
    from tollway_gemini.provider import GeminiProvider

    return GeminiProvider(settings if settings is not None else GeminiSettings(), context)


def vertex_factory(settings: VertexSettings | None, context: ProviderContext) -> Provider:
    from tollway_gemini.provider import VertexProvider

    return VertexProvider(settings if settings is not None else VertexSettings(), context)


@hookimpl
def tollway_register_providers(register: Callable[..., Any]) -> None:
    register(
        "gemini",
        gemini_factory,
        settings=GeminiSettings,
        description="Google Gemini API generateContent (API key from GEMINI_API_KEY)",
    )
    register(
        "vertex",
        vertex_factory,
        settings=VertexSettings,
        description="Gemini on Google Vertex AI (set project; token from GOOGLE_ACCESS_TOKEN)",
    )
