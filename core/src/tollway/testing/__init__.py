"""Test helpers for tollway and its plugins: wire-faithful fake provider servers.

``FakeOpenAI`` is imported on first use, so ``import tollway.testing`` costs nothing and never
imports aiohttp's server or any vendor SDK. The pytest fixtures live in
``tollway.testing.fixtures``; opt in with ``pytest_plugins = ["tollway.testing.fixtures"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["FakeOpenAI", "RecordedRequest"]

if TYPE_CHECKING:
    from tollway.testing.fake_openai import FakeOpenAI, RecordedRequest


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tollway.testing import fake_openai

        value = getattr(fake_openai, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tollway.testing' has no attribute {name!r}")
