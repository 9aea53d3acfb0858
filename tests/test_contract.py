"""The provider contract, run against every provider plugin in this repository.

A third-party plugin runs the same suite by subclassing ``tollway.testing.contract`` classes.
"""

from __future__ import annotations

from typing import Any

from tollway.testing.contract import WireContract
from tollway.testing.fake_ollama import FakeOllama
from tollway.testing.fake_openai import FakeOpenAI


class TestOpenAI(WireContract):
    provider_type = "openai"
    model = "gpt-4o-mini"
    fake_class = FakeOpenAI

    def settings(self, fake: Any) -> dict[str, Any]:
        return {"base_url": fake.base_url, "api_key": "sk-contract"}


class TestAzureOpenAI(WireContract):
    provider_type = "azure"
    model = "gpt-4o-mini"
    fake_class = FakeOpenAI

    def settings(self, fake: Any) -> dict[str, Any]:
        return {"endpoint": fake.azure_endpoint, "api_key": "azure-contract"}


class TestOpenAICompatibleServer(WireContract):
    """A vLLM / llama.cpp server / Ollama /v1 endpoint: custom base_url, no key."""

    provider_type = "openai"
    model = "llama-3.1-8b"
    fake_class = FakeOpenAI

    def settings(self, fake: Any) -> dict[str, Any]:
        return {"base_url": fake.base_url}


class TestOllama(WireContract):
    provider_type = "ollama"
    model = "llama3.2"
    fake_class = FakeOllama

    def settings(self, fake: Any) -> dict[str, Any]:
        return {"base_url": fake.base_url}
