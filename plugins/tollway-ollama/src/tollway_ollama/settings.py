"""The ``[providers.NAME]`` keys of the ollama provider type, and where Ollama is found."""

from __future__ import annotations

import os
from typing import Any

import attrs

from tollway.providers.base import ProviderSettings

DEFAULT_BASE_URL = "http://127.0.0.1:11434"
DEFAULT_PORT = 11434
# Addresses a server binds to, not ones a client can usefully connect to.
_BIND_ALL = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


def normalise_host(value: str | None) -> str:
    """A base URL from an ``OLLAMA_HOST``-style value, as the ``ollama`` CLI reads it.

    ``host``, ``host:port`` and ``:port`` are accepted without a scheme (http is assumed, and
    port 11434 when none is given); a trailing slash is dropped. ``0.0.0.0`` (what a server is
    told to bind to, and so what ``OLLAMA_HOST`` often says) means this machine.
    """
    value = (value or "").strip()
    if not value:
        return DEFAULT_BASE_URL
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "http", value
    hostport, slash, path = rest.partition("/")
    if hostport.startswith("["):  # IPv6 literal, with or without a port
        end = hostport.find("]") + 1
        host, port = hostport[:end], hostport[end + 1 :]
    elif hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
    else:
        host, port = hostport, ""
    host = _BIND_ALL.get(host, host) or "127.0.0.1"
    if not port and not sep:
        port = str(DEFAULT_PORT)
    path = path.rstrip("/")
    return f"{scheme}://{host}{':' + port if port else ''}{'/' + path if slash and path else ''}"


def default_base_url() -> str:
    """``$OLLAMA_HOST`` when it is set, else Ollama's own default, http://127.0.0.1:11434."""
    return normalise_host(os.environ.get("OLLAMA_HOST"))


@attrs.define(kw_only=True)
class OllamaSettings(ProviderSettings):
    """A local (or hosted) Ollama server, spoken to through its native ``/api/chat``.

    ``base_url`` is the server root, read from ``OLLAMA_HOST`` when that is set. A local Ollama
    needs no key; for a hosted one, set ``api_key`` or the ``OLLAMA_API_KEY`` variable, and it is
    sent as a bearer token. ``keep_alive`` is how long Ollama keeps the model loaded after a call
    (``"10m"``, ``"1h"``, or seconds: ``"0"`` unloads at once, ``"-1"`` keeps it loaded).
    ``options`` are Ollama model options sent with every call (``num_ctx`` above all: Ollama
    silently drops the start of a prompt longer than its context, which defaults to 4096).
    """

    base_url: str | None = attrs.field(factory=default_base_url)
    api_key_env: str | None = "OLLAMA_API_KEY"
    keep_alive: str | None = None
    options: dict[str, Any] = attrs.field(factory=dict)
