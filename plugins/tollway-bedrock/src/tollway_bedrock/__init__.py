"""tollway provider plugin for Amazon Bedrock (the Converse and ConverseStream APIs).

This module is what the ``tollway`` entry point loads, so it only registers names: the HTTP
implementation, and botocore (heavy, and only needed to sign), are imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tollway.hookspecs import hookimpl
from tollway_bedrock.settings import BedrockSettings

if TYPE_CHECKING:
    from tollway.providers.base import Provider, ProviderContext

__all__ = ["BedrockSettings", "bedrock_factory", "tollway_register_providers"]


def bedrock_factory(settings: BedrockSettings | None, context: ProviderContext) -> Provider:
    from tollway_bedrock.provider import BedrockProvider

    return BedrockProvider(settings if settings is not None else BedrockSettings(), context)


@hookimpl
def tollway_register_providers(register: Callable[..., Any]) -> None:
    register(
        "bedrock",
        bedrock_factory,
        settings=BedrockSettings,
        description="Amazon Bedrock Converse API (AWS credentials; set region or profile)",
    )
