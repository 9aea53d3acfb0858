from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderContext
from tollway.providers.http import HttpPool
from tollway.testing.fake_bedrock import FakeBedrock

__all__ = ["ACCESS_KEY", "SECRET_KEY", "aws_env", "fake_bedrock", "http", "make_provider"]

ACCESS_KEY = "AKIDTOLLWAYTEST01"
SECRET_KEY = "tollway-test-secret-key"

MakeProvider = Callable[..., Provider]

_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_BEARER_TOKEN_BEDROCK",
)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Static test credentials, and nothing of the machine's own AWS setup: no ~/.aws files
    and no instance-metadata lookup, which would hang for a second per try without network."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    return monkeypatch


@pytest_asyncio.fixture
async def fake_bedrock() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock(require_access_key=ACCESS_KEY) as fake:
        yield fake


@pytest_asyncio.fixture
async def http() -> AsyncIterator[HttpPool]:
    pool = HttpPool()
    yield pool
    await pool.aclose()


@pytest.fixture
def make_provider(http: HttpPool, monkeypatch: pytest.MonkeyPatch) -> MakeProvider:
    """Build a provider the way a pipeline does: entry point -> registered type -> factory."""
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "bedrock")
    monkeypatch.delenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    types = build_plugin_manager().providers()

    def make(name: str = "bedrock", **settings: Any) -> Provider:
        provider_type = types["bedrock"]
        return provider_type.factory(
            provider_type.settings(type="bedrock", **settings),
            ProviderContext(name=name, http=http),
        )

    return make
