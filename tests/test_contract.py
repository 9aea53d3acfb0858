"""The provider contract, run against every provider plugin in this repository.

A third-party plugin runs the same suite by subclassing ``tollway.testing.contract`` classes.
The local model runs ``ProviderContract`` in plugins/tollway-llamacpp/tests, where the model
file is assembled once per session.
"""

from __future__ import annotations

from typing import Any

import pytest

from tollway.testing.contract import WireContract
from tollway.testing.fake_anthropic import FakeAnthropic
from tollway.testing.fake_bedrock import FakeBedrock
from tollway.testing.fake_gemini import FakeGemini
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


class TestGemini(WireContract):
    provider_type = "gemini"
    model = "gemini-2.5-flash"
    fake_class = FakeGemini

    def settings(self, fake: Any) -> dict[str, Any]:
        return {"base_url": fake.base_url, "api_key": "AIza-contract"}


class TestVertex(WireContract):
    provider_type = "vertex"
    model = "gemini-2.5-flash"
    fake_class = FakeGemini

    def settings(self, fake: Any) -> dict[str, Any]:
        # A fixed token in headers: the suite's pipeline has no environment to read one from.
        return {
            "base_url": fake.vertex_base_url,
            "project": "contract-project",
            "location": "us-central1",
            "headers": {"Authorization": "Bearer ya29.contract"},
        }


class TestBedrock(WireContract):
    provider_type = "bedrock"
    model = "anthropic.claude-3-5-haiku-20241022-v1:0"
    fake_class = FakeBedrock

    @pytest.fixture(autouse=True)
    def _aws_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Credentials for SigV4 from the environment, and no instance-metadata lookup.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCONTRACT")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "contract-secret")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.delenv("AWS_PROFILE", raising=False)

    def settings(self, fake: Any) -> dict[str, Any]:
        return {"base_url": fake.base_url, "control_url": fake.base_url, "region": "us-east-1"}


class TestAnthropic(WireContract):
    provider_type = "anthropic"
    model = "claude-sonnet-4-5"
    fake_class = FakeAnthropic

    def settings(self, fake: Any) -> dict[str, Any]:
        return {"base_url": fake.base_url, "api_key": "sk-ant-contract"}
