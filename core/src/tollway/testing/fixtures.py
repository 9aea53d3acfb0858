"""pytest fixtures for testing against tollway's fake provider servers.

Opt in from your top-level ``conftest.py`` with ``pytest_plugins = ["tollway.testing.fixtures"]``.
Each fixture yields a started fake on 127.0.0.1 and closes it after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tollway.testing.fake_anthropic import FakeAnthropic
from tollway.testing.fake_bedrock import FakeBedrock
from tollway.testing.fake_gemini import FakeGemini
from tollway.testing.fake_ollama import FakeOllama
from tollway.testing.fake_openai import FakeOpenAI

__all__ = ["fake_anthropic", "fake_bedrock", "fake_gemini", "fake_ollama", "fake_openai"]


@pytest_asyncio.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A started :class:`FakeOpenAI` (also serves the Azure OpenAI routes)."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    """A started :class:`FakeAnthropic`."""
    async with FakeAnthropic() as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    """A started :class:`FakeGemini` (API-key and Vertex routes)."""
    async with FakeGemini() as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_bedrock(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeBedrock]:
    """A started :class:`FakeBedrock`, with AWS credentials in the environment for SigV4 and
    instance-metadata lookups switched off."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    async with FakeBedrock() as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    """A started :class:`FakeOllama`."""
    async with FakeOllama() as fake:
        yield fake
