"""The Provider protocol, the settings every provider section shares, and the context it gets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from tollway.types import ModelInfo, Request, Response, StreamChunk

if TYPE_CHECKING:
    from tollway.providers.http import HttpPool


@attrs.frozen(slots=True, repr=False)
class Secret:
    """A credential. Its repr and str never show the value, so it cannot leak into a log."""

    value: str

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def get(self) -> str:
        return self.value


@attrs.define(kw_only=True)
class ProviderSettings:
    """The keys every ``[providers.NAME]`` section may have. A plugin subclasses it for its own.

    ``api_key`` is best left out of files: name an environment variable in ``api_key_env``.
    """

    type: str = ""
    base_url: str | None = None
    api_key: Secret | None = None
    api_key_env: str | None = None
    timeout: float = 600.0
    connect_timeout: float = 10.0
    max_connections: int = 100
    headers: dict[str, str] = attrs.field(factory=dict)
    default_model: str | None = None


@attrs.frozen(slots=True)
class ProviderContext:
    """What the pipeline hands a provider factory: the instance's name and the shared HTTP pool."""

    name: str
    http: HttpPool


@runtime_checkable
class Provider(Protocol):
    """A model vendor's API, spoken in tollway's records.

    ``request.model_name`` is the model within this provider (the part after ``name/``).
    Errors are raised as :mod:`tollway.errors` classes carrying the provider's own message.
    """

    name: str

    async def complete(self, request: Request) -> Response: ...

    def stream(self, request: Request) -> AsyncIterator[StreamChunk]: ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def aclose(self) -> None: ...


ProviderFactory = Callable[[Any, ProviderContext], Provider]


@attrs.frozen(slots=True)
class ProviderType:
    """A registered provider implementation: its type name, factory and settings class."""

    name: str
    factory: ProviderFactory
    settings: type[ProviderSettings] = ProviderSettings
    description: str = ""
    plugin: str | None = None
    default_settings: Mapping[str, Any] = attrs.field(factory=dict)
