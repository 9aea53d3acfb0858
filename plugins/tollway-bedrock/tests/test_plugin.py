"""The entry point, the registered type, its settings, and where credentials come from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tollway.errors import AuthenticationError, ConfigError
from tollway.plugins import build_plugin_manager
from tollway.providers import Provider, ProviderSettings, Secret
from tollway.testing.fake_bedrock import FakeBedrock
from tollway.types import Message, Request
from tollway_bedrock.settings import BedrockSettings

MODEL = "bedrock/amazon.nova-micro-v1:0"


def ask() -> Request:
    return Request(MODEL, (Message.user("hi"),))


def test_hook_registers_the_bedrock_type() -> None:
    import tollway_bedrock

    calls = []

    def register(name, factory, **options):
        calls.append((name, factory, options))

    tollway_bedrock.tollway_register_providers(register=register)
    assert len(calls) == 1
    name, factory, options = calls[0]
    assert name == "bedrock"
    assert factory is tollway_bedrock.bedrock_factory
    assert options["settings"] is BedrockSettings
    assert "Bedrock" in options["description"]


def test_entry_point_registers_bedrock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "bedrock")
    manager = build_plugin_manager()
    assert manager.failures == []
    provider_type = manager.providers()["bedrock"]
    assert provider_type.settings is BedrockSettings
    assert provider_type.plugin == "bedrock"
    assert issubclass(BedrockSettings, ProviderSettings)


def test_loading_the_plugin_imports_neither_botocore_nor_aiohttp() -> None:
    code = (
        "import sys, tollway_bedrock\n"
        "seen = []\n"
        "tollway_bedrock.tollway_register_providers(register=lambda *a, **k: seen.append(a))\n"
        "assert seen, 'nothing registered'\n"
        "heavy = ('botocore', 'boto3', 'aiohttp', 'tollway_bedrock.provider')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_settings_follow_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BedrockSettings().region == "us-east-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert BedrockSettings().region == "ap-south-1"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    settings = BedrockSettings()
    assert settings.region == "us-east-1"
    assert settings.api_key_env is None  # SigV4 credentials, not an API key
    europe = BedrockSettings(region="eu-west-3")
    assert europe.base_url == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    assert europe.control_url == "https://bedrock.eu-west-3.amazonaws.com"
    assert BedrockSettings(base_url="http://proxy:8080").control_url == (
        "https://bedrock.us-east-1.amazonaws.com"
    )


def test_factory_builds_a_provider(make_provider) -> None:
    provider = make_provider(name="aws", region="eu-central-1")
    assert isinstance(provider, Provider)
    assert provider.name == "aws"
    assert "eu-central-1" in repr(provider)


@pytest.mark.parametrize("key", ["base_url", "control_url"])
def test_bad_url_is_a_config_error(make_provider, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make_provider(**{key: "bedrock.example.com/path"})


def test_secrets_are_not_in_repr(make_provider) -> None:
    provider = make_provider(
        access_key_id=Secret("AKIDSECRETVALUE"), secret_access_key=Secret("very-secret")
    )
    for text in (repr(provider), repr(provider.settings)):
        assert "very-secret" not in text
        assert "AKIDSECRETVALUE" not in text


def clear_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")


async def test_missing_credentials_say_what_to_set(make_provider, aws_env, http) -> None:
    clear_credentials(aws_env)
    provider = make_provider(name="aws", base_url="http://127.0.0.1:9")
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(Request("aws/amazon.nova-micro-v1:0", (Message.user("hi"),)))
    message = str(info.value)
    assert "AWS_ACCESS_KEY_ID" in message
    assert "AWS_PROFILE" in message
    assert "[providers.aws]" in message
    assert info.value.provider == "aws"
    with pytest.raises(AuthenticationError):
        async for _ in provider.stream(ask()):
            pass
    # Found wanting before any HTTP: no endpoint was touched, so none reports on its health.
    assert http.endpoints() == {}


async def test_half_a_key_pair_is_refused(make_provider) -> None:
    provider = make_provider(access_key_id=Secret("AKID"), base_url="http://127.0.0.1:9")
    with pytest.raises(AuthenticationError, match="secret_access_key"):
        await provider.complete(ask())


async def test_keys_from_settings_with_session_token(make_provider, fake_bedrock) -> None:
    fake_bedrock.require_access_key = "AKIDFROMSETTINGS"
    provider = make_provider(
        base_url=fake_bedrock.base_url,
        access_key_id=Secret("AKIDFROMSETTINGS"),
        secret_access_key=Secret("s"),
        session_token=Secret("session-token-value"),
    )
    assert (await provider.complete(ask())).text == "Echo: hi"
    headers = fake_bedrock.last_request.headers
    assert headers["X-Amz-Security-Token"] == "session-token-value"
    assert "x-amz-security-token" in headers["Authorization"]


@pytest.fixture
def work_profile(tmp_path: Path) -> None:
    """A profile in the credentials file that aws_env points AWS_SHARED_CREDENTIALS_FILE at."""
    (tmp_path / "aws-credentials").write_text(
        "[work]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = from-profile\n"
    )


@pytest.mark.usefixtures("work_profile")
async def test_keys_from_a_named_profile(make_provider, fake_bedrock, aws_env) -> None:
    clear_credentials(aws_env)
    fake_bedrock.require_access_key = "AKIDPROFILE"
    provider = make_provider(base_url=fake_bedrock.base_url, profile="work")
    assert (await provider.complete(ask())).text == "Echo: hi"
    assert "Credential=AKIDPROFILE/" in fake_bedrock.last_request.headers["Authorization"]


async def test_unknown_profile_is_an_authentication_error(make_provider) -> None:
    provider = make_provider(base_url="http://127.0.0.1:9", profile="nope")
    with pytest.raises(AuthenticationError, match="nope"):
        await provider.complete(ask())


async def test_credentials_are_resolved_once(
    make_provider, fake_bedrock: FakeBedrock, monkeypatch
) -> None:
    provider = make_provider(base_url=fake_bedrock.base_url)
    await provider.complete(ask())
    # Changing the environment afterwards does not matter: the chain was walked once.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCHANGED")
    await provider.complete(ask())
    key = fake_bedrock.require_access_key
    assert f"Credential={key}/" in fake_bedrock.last_request.headers["Authorization"]


def test_settings_structure_from_a_config_table(monkeypatch) -> None:
    from tollway.config import structure_provider

    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "bedrock")
    settings = structure_provider(
        "aws",
        {
            "type": "bedrock",
            "region": "eu-west-1",
            "profile": "prod",
            "access_key_id": "AKID",
            "secret_access_key": "s",
        },
        build_plugin_manager(),
    )
    assert isinstance(settings, BedrockSettings)
    assert settings.base_url == "https://bedrock-runtime.eu-west-1.amazonaws.com"
    assert settings.access_key_id == Secret("AKID")
