"""The ``[providers.NAME]`` keys of the gemini and vertex provider types."""

from __future__ import annotations

import attrs

from tollway.providers.base import ProviderSettings

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"


@attrs.define(kw_only=True)
class GeminiSettings(ProviderSettings):
    """The Gemini API (Google AI Studio keys).

    The key comes from ``api_key``, else the variable named by ``api_key_env``; when that is the
    default ``GEMINI_API_KEY`` and unset, ``GOOGLE_API_KEY`` is tried as well, as Google's own
    SDK does. ``api_version`` is the path segment every URL starts with.
    """

    base_url: str | None = GEMINI_BASE_URL
    api_key_env: str | None = "GEMINI_API_KEY"
    api_version: str = "v1beta"


@attrs.define(kw_only=True)
class VertexSettings(ProviderSettings):
    """Gemini on Vertex AI, with an OAuth access token.

    ``project`` and ``location`` default to ``GOOGLE_CLOUD_PROJECT`` and
    ``GOOGLE_CLOUD_LOCATION`` (then ``us-central1``); ``base_url`` defaults to the location's
    endpoint (``https://{location}-aiplatform.googleapis.com``, or
    ``https://aiplatform.googleapis.com`` for ``global``). The token is read from the variable
    named by ``access_token_env`` on every call, so a refreshed token is picked up at once.
    """

    project: str | None = None
    location: str | None = None
    access_token_env: str = "GOOGLE_ACCESS_TOKEN"
    api_version: str = "v1"
