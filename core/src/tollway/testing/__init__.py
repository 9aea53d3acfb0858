"""Test helpers for tollway and its plugins: wire-faithful fake provider servers.

Each fake is imported on first use, so ``import tollway.testing`` costs nothing and never
imports aiohttp's server or any vendor SDK. The pytest fixtures live in
``tollway.testing.fixtures``; opt in with ``pytest_plugins = ["tollway.testing.fixtures"]``.
The provider contract suite is ``tollway.testing.contract``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_MODULES = {
    "FakeOpenAI": "fake_openai",
    "RecordedRequest": "fake_openai",
    "FakeAnthropic": "fake_anthropic",
    "FakeGemini": "fake_gemini",
    "FakeBedrock": "fake_bedrock",
    "FakeOllama": "fake_ollama",
}

__all__ = [
    "FakeAnthropic",
    "FakeBedrock",
    "FakeGemini",
    "FakeOllama",
    "FakeOpenAI",
    "RecordedRequest",
]

if TYPE_CHECKING:
    from tollway.testing.fake_anthropic import FakeAnthropic
    from tollway.testing.fake_bedrock import FakeBedrock
    from tollway.testing.fake_gemini import FakeGemini
    from tollway.testing.fake_ollama import FakeOllama
    from tollway.testing.fake_openai import FakeOpenAI, RecordedRequest


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'tollway.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tollway.testing.{module}"), name)
    globals()[name] = value
    return value
