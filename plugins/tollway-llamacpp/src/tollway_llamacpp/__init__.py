"""tollway provider plugin: a llama.cpp model in process, the provider that works offline.

This module only registers a name, a factory and a settings class: loading plugins must stay
cheap, so llama_cpp and the bundled model package are imported on first use, never here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tollway.hookspecs import hookimpl
from tollway_llamacpp.settings import BUNDLED_MODEL, LlamaCppSettings

if TYPE_CHECKING:
    from tollway.providers import Provider, ProviderContext

__all__ = ["BUNDLED_MODEL", "LlamaCppSettings", "create_provider", "tollway_register_providers"]


def create_provider(settings: LlamaCppSettings | None, context: ProviderContext) -> Provider:
    """Build the provider; the model itself is loaded on the first call."""
    from tollway_llamacpp.provider import LlamaCppProvider

    return LlamaCppProvider(settings if settings is not None else LlamaCppSettings(), context)


@hookimpl
def tollway_register_providers(register: Callable[..., None]) -> None:
    register(
        "llamacpp",
        create_provider,
        settings=LlamaCppSettings,
        description=f"a local llama.cpp model in process, offline ({BUNDLED_MODEL} by default)",
    )
