"""Provider protocol, pooled HTTP sessions and the wire-format parsers providers share."""

from tollway.providers.base import (
    Provider,
    ProviderContext,
    ProviderFactory,
    ProviderSettings,
    ProviderType,
    Secret,
)

__all__ = [
    "Provider",
    "ProviderContext",
    "ProviderFactory",
    "ProviderSettings",
    "ProviderType",
    "Secret",
]
