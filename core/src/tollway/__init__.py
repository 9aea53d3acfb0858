"""tollway: every LLM call of an application passes through it.

``import tollway`` is kept cheap: the names below are imported on first use, so a program that
only needs the records does not pay for aiohttp, cattrs or the plugin system.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": "tollway.pipeline",
    "Stage": "tollway.pipeline",
    "Config": "tollway.config",
    "load_config": "tollway.config",
    "hookimpl": "tollway.hookspecs",
    "Message": "tollway.types",
    "Request": "tollway.types",
    "Response": "tollway.types",
    "StreamChunk": "tollway.types",
    "Usage": "tollway.types",
    "Cost": "tollway.types",
    "ModelInfo": "tollway.types",
    "Tool": "tollway.types",
    "ToolCall": "tollway.types",
    "ToolCallDelta": "tollway.types",
    "TextPart": "tollway.types",
    "ImagePart": "tollway.types",
    "TollwayError": "tollway.errors",
}

__all__ = [
    "Config",
    "Cost",
    "ImagePart",
    "Message",
    "ModelInfo",
    "Pipeline",
    "Request",
    "Response",
    "Stage",
    "StreamChunk",
    "TextPart",
    "TollwayError",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "__version__",
    "hookimpl",
    "load_config",
]

if TYPE_CHECKING:
    from tollway.config import Config, load_config
    from tollway.errors import TollwayError
    from tollway.hookspecs import hookimpl
    from tollway.pipeline import Pipeline, Stage
    from tollway.types import (
        Cost,
        ImagePart,
        Message,
        ModelInfo,
        Request,
        Response,
        StreamChunk,
        TextPart,
        Tool,
        ToolCall,
        ToolCallDelta,
        Usage,
    )


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tollway' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
