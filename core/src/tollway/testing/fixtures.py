"""pytest fixtures for testing against tollway's fake provider servers.

Opt in from your top-level ``conftest.py`` with ``pytest_plugins = ["tollway.testing.fixtures"]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tollway.testing.fake_openai import FakeOpenAI

__all__ = ["fake_openai"]


@pytest_asyncio.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A started :class:`FakeOpenAI` on 127.0.0.1, closed after the test."""
    async with FakeOpenAI() as fake:
        yield fake
