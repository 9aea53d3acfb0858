"""The ``[providers.NAME]`` keys of the anthropic provider type."""

from __future__ import annotations

from typing import Any

import attrs

from tollway.providers.base import ProviderSettings

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


@attrs.define(kw_only=True)
class AnthropicSettings(ProviderSettings):
    """Anthropic's Messages API, or a server that speaks it at ``base_url`` (a proxy).

    ``default_max_tokens`` is sent when a request gives no ``max_tokens``: Anthropic requires
    one on every call. ``beta`` names features sent in the ``anthropic-beta`` header.
    ``system_cache_control`` (for example ``{type = "ephemeral"}`` or
    ``{type = "ephemeral", ttl = "1h"}``) marks the system prompt as a prompt-cache breakpoint,
    so a long, stable system prompt is billed at the cache-read rate from the second call on.
    """

    base_url: str | None = ANTHROPIC_BASE_URL
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    anthropic_version: str = ANTHROPIC_VERSION
    beta: list[str] = attrs.field(factory=list)
    default_max_tokens: int = 4096
    system_cache_control: dict[str, Any] | None = None
