"""tollway-hello: the smallest useful tollway plugin. Copy this folder to start your own.

It offers a provider type ``hello`` that greets whoever spoke last, so it needs no network and
no key. A real provider plugin has the same shape: this module registers a name and a factory
and imports nothing heavy; the work lives in the provider's methods.

    uv run tollway chat -m hello/friendly "Ada"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from tollway import hookimpl
from tollway.providers import ProviderContext, ProviderSettings


@attrs.define(kw_only=True)
class HelloSettings(ProviderSettings):
    """``[providers.hello]`` keys, on top of the ones every provider has."""

    greeting: str = "Hello"
    default_model: str | None = "friendly"


def make_provider(settings: HelloSettings, context: ProviderContext) -> Any:
    # Imported here, not at the top: plugin loading must stay cheap.
    from tollway_hello.provider import HelloProvider

    return HelloProvider(context.name, settings.greeting)


@hookimpl
def tollway_register_providers(register: Callable[..., None]) -> None:
    register(
        "hello",
        make_provider,
        settings=HelloSettings,
        description="Greets the last speaker; an example plugin.",
    )
