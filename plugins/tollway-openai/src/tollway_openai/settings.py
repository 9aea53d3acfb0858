"""The ``[providers.NAME]`` keys of the openai and azure provider types."""

from __future__ import annotations

import attrs

from tollway.providers.base import ProviderSettings

OPENAI_BASE_URL = "https://api.openai.com/v1"


@attrs.define(kw_only=True)
class OpenAISettings(ProviderSettings):
    """OpenAI, or any server that speaks its Chat Completions API (vLLM, llama.cpp, Ollama).

    ``max_tokens_param`` names the field ``Request.max_tokens`` is sent as. Left unset, it is
    ``max_completion_tokens`` for api.openai.com (its reasoning models reject ``max_tokens``) and
    for reasoning model names elsewhere, and ``max_tokens`` for other servers, many of which
    silently ignore the newer name and would not stop the answer.
    """

    base_url: str | None = OPENAI_BASE_URL
    api_key_env: str | None = "OPENAI_API_KEY"
    organization: str | None = None
    project: str | None = None
    max_tokens_param: str | None = None


@attrs.define(kw_only=True)
class AzureSettings(ProviderSettings):
    """An Azure OpenAI resource. ``deployments`` maps a model name to its deployment's name;
    a model not listed is taken to be deployed under its own name."""

    endpoint: str | None = None
    api_version: str = "2024-10-21"
    api_key_env: str | None = "AZURE_OPENAI_API_KEY"
    deployments: dict[str, str] = attrs.field(factory=dict)
    max_tokens_param: str | None = None
