"""The ``[providers.NAME]`` keys of the bedrock provider type."""

from __future__ import annotations

import os

import attrs

from tollway.providers.base import ProviderSettings, Secret

DEFAULT_REGION = "us-east-1"


def _default_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def runtime_url(region: str) -> str:
    return f"https://bedrock-runtime.{region}.amazonaws.com"


def control_plane_url(region: str) -> str:
    return f"https://bedrock.{region}.amazonaws.com"


@attrs.define(kw_only=True)
class BedrockSettings(ProviderSettings):
    """Amazon Bedrock's Converse API in one AWS region, signed with AWS SigV4.

    Credentials are ``access_key_id``/``secret_access_key`` (and ``session_token``) when given,
    else botocore's chain: the ``AWS_*`` environment variables, ``profile`` (or
    ``AWS_PROFILE``) in ``~/.aws``, SSO, web identity, container and instance roles.
    ``api_key``/``api_key_env`` are not used. ``base_url`` is the runtime endpoint and
    ``control_url`` the control-plane one (``list_models``); both follow ``region`` unless set.
    """

    region: str = attrs.field(factory=_default_region)
    base_url: str | None = attrs.field(
        default=attrs.Factory(lambda self: runtime_url(self.region), takes_self=True)
    )
    control_url: str | None = attrs.field(
        default=attrs.Factory(lambda self: control_plane_url(self.region), takes_self=True)
    )
    profile: str | None = None
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
