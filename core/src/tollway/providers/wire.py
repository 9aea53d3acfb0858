"""The plumbing every HTTP provider plugin shares: the pool handle, timeouts, sending, errors.

A provider subclasses :class:`HttpProvider` for the per-endpoint state and the one-request
``_send``, and keeps everything about its vendor (payloads, parsing, error bodies) to itself.
The helpers here run on every call, so they add no await and build nothing a provider did not
build before; a provider's hottest path may still inline ``_send``'s steps.

Importing this module imports aiohttp, so ``tollway.providers`` does not re-export it: only
provider plugins, which need aiohttp anyway, import it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from tollway.errors import (
    AuthenticationError,
    ConfigError,
    MalformedResponseError,
    ProviderError,
    ProviderTimeoutError,
    StreamInterruptedError,
    UnavailableError,
    error_for_status,
)
from tollway.providers.http import endpoint_key

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy
    from yarl import URL

    from tollway.providers.base import ProviderContext, ProviderSettings
    from tollway.providers.http import Endpoint

__all__ = [
    "EXCERPT_CHARS",
    "PARSE_ERRORS",
    "HttpProvider",
    "checked_endpoint",
    "configured_key",
    "decode",
    "excerpt",
    "malformed",
    "no_api_key",
    "status_error",
]

# How much of a body an error message quotes.
EXCERPT_CHARS = 200
# What reading a body that is not what it should be raises; each is reported as malformed.
PARSE_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError)


class HttpProvider:
    """A provider that speaks HTTP to one endpoint through the pipeline's pool.

    ``__init__`` sets ``name``, ``settings``, the default timeout and an empty handle; the
    subclass sets ``_base`` (the URL its paths hang from) and ``_endpoint`` (with
    :func:`checked_endpoint`), and defines ``_status_error`` for its vendor's error bodies.
    """

    name: str
    settings: ProviderSettings
    _base: str
    _endpoint: str

    def __init__(self, settings: ProviderSettings, context: ProviderContext) -> None:
        self.name = context.name
        self.settings = settings
        self._http = context.http
        self._timeout = aiohttp.ClientTimeout(
            total=settings.timeout, sock_connect=settings.connect_timeout
        )
        # The pool's handle on this endpoint, taken on first use: it records health and
        # hands out the current session, which the pool may rebuild after transport failures.
        self._handle: Endpoint | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self._base!r})"

    async def aclose(self) -> None:
        # The sessions belong to the pipeline's pool, which closes them; only forget it here.
        self._handle = None

    def _take_handle(self) -> Endpoint:
        handle = self._handle = self._http.endpoint(self._base, limit=self.settings.max_connections)
        return handle

    def _timeout_for(self, seconds: float | None) -> aiohttp.ClientTimeout:
        if seconds is None:
            return self._timeout
        return aiohttp.ClientTimeout(total=seconds, sock_connect=self.settings.connect_timeout)

    async def _send(
        self,
        method: str,
        url: URL,
        data: bytes | None,
        seconds: float | None,
        headers: Mapping[str, str],
        handle: Endpoint | None = None,
        *,
        model: str | None = None,
    ) -> tuple[bytes, CIMultiDictProxy[str]]:
        """The body and headers of a 2xx answer; every failure raised as a tollway error.

        ``handle`` is the endpoint's handle when it is not the provider's own (a second
        endpoint); ``model``, when the call is for one, is passed on to ``_status_error``.
        """
        handle = handle or self._handle or self._take_handle()
        sent = time.monotonic()
        try:
            async with handle.session.request(
                method, url, data=data, headers=headers, timeout=self._timeout_for(seconds)
            ) as response:
                body = await response.read()
                status = response.status
                response_headers = response.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            handle.failed(sent, exc)
            raise self._transport_error(exc, seconds, handle.key) from exc
        handle.ok(sent)
        if status >= 400:
            error = self._status_error(status, body, response_headers, model=model)
            if error.retryable:
                # The endpoint's fault (5xx, 429), not the call's: it counts against its health.
                handle.stats.failures += 1
            raise error
        return body, response_headers

    def _status_error(
        self,
        status: int,
        body: bytes,
        headers: CIMultiDictProxy[str],
        *,
        model: str | None = None,
    ) -> ProviderError:
        """The error for an HTTP error status. Providers read their vendor's error body; this
        default quotes the body."""
        return status_error(self.name, status, body, headers, None, request_id=None)

    def _count(self, error: ProviderError) -> ProviderError:
        """Count an error against the endpoint when it is the endpoint's fault, not the call's."""
        if (error.retryable or isinstance(error, MalformedResponseError)) and self._handle:
            self._handle.stats.failures += 1
        return error

    def _not_utf8(self, exc: UnicodeDecodeError) -> ProviderError:
        """An event stream whose bytes are not UTF-8: a malformed reply, counted as such."""
        return self._count(
            MalformedResponseError(
                f"{self.name} sent an event stream that is not UTF-8: {exc}",
                provider=self.name,
                provider_message=repr(exc.object[: EXCERPT_CHARS // 4]),
            )
        )

    def _transport_error(
        self, exc: BaseException, timeout: float | None, endpoint: str | None = None
    ) -> ProviderError:
        """The tollway error for a failure below HTTP; ``endpoint`` (by default the provider's
        own) is where the call went."""
        name = self.name
        where = endpoint or self._endpoint
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return ProviderTimeoutError(
                f"could not connect to {name} at {where} within {self.settings.connect_timeout:g}s",
                provider=name,
            )
        if isinstance(exc, TimeoutError):
            seconds = timeout if timeout is not None else self.settings.timeout
            return ProviderTimeoutError(f"{name} did not answer within {seconds:g}s", provider=name)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return UnavailableError(f"{name}'s answer was cut off: {exc}", provider=name)
        return UnavailableError(
            f"could not reach {name} at {where}: {type(exc).__name__}: {exc}", provider=name
        )

    def _stream_broken(
        self,
        handle: Endpoint,
        exc: BaseException,
        started: bool,
        request_id: str | None,
        timeout: float | None,
    ) -> ProviderError:
        """A transport failure while a stream is read, counted against the endpoint.

        Once chunks have gone to the caller (``started``) it is a cut-off stream, which cannot
        be retried as if nothing had come; before that, or on a timeout, the transport error.
        """
        handle.stats.failures += 1
        if started and not isinstance(exc, TimeoutError):
            return StreamInterruptedError(
                f"{self.name}'s stream was cut off: {type(exc).__name__}: {exc}",
                provider=self.name,
                request_id=request_id,
            )
        return self._transport_error(exc, timeout)


def checked_endpoint(url: str, provider: str, key: str) -> str:
    """``url``'s pool key (``scheme://host:port``); a URL that is not one is a config error at
    ``[providers.PROVIDER] KEY``."""
    try:
        return endpoint_key(url)
    except ValueError as exc:
        raise ConfigError(str(exc), key=f"providers.{provider}.{key}") from None


def configured_key(settings: ProviderSettings) -> str | None:
    """The API key from ``api_key``, else from the variable ``api_key_env`` names."""
    key = settings.api_key.get() if settings.api_key is not None else None
    if not key and settings.api_key_env:
        key = os.environ.get(settings.api_key_env) or None
    return key


def no_api_key(provider: str, env: str | None, hint: str = "") -> AuthenticationError:
    """The error for a provider that needs a key and has none; ``hint`` is added at the end."""
    how = f"the {env} environment variable, or " if env else ""
    return AuthenticationError(
        f"no API key for provider {provider!r}: set {how}api_key (or api_key_env) "
        f"in [providers.{provider}]{hint}",
        provider=provider,
    )


def status_error(
    provider: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    message: Any,
    *,
    request_id: str | None,
    code: str | None = None,
) -> ProviderError:
    """:func:`~tollway.errors.error_for_status` with the vendor's ``message``, or, when the
    body had none (a proxy's error page), an excerpt of the body."""
    if not message:
        message = excerpt(body) or None
    return error_for_status(
        status,
        provider=provider,
        provider_message=str(message) if message is not None else None,
        request_id=request_id,
        code=code,
        headers=headers,
    )


def malformed(
    provider: str, what: str, body: bytes, cause: BaseException, request_id: str | None = None
) -> MalformedResponseError:
    """The error for an answer that is not ``what`` (``"an OpenAI chat completion"``)."""
    text = excerpt(body)
    return MalformedResponseError(
        f"{provider} sent an answer that is not {what} ({type(cause).__name__}: {cause}): {text!r}",
        provider=provider,
        provider_message=text,
        request_id=request_id,
    )


def excerpt(body: bytes) -> str:
    """The start of a body as text, for an error message."""
    text = body[: EXCERPT_CHARS * 4].decode("utf-8", "replace").strip()
    return text[:EXCERPT_CHARS]


_raw_decode = json.JSONDecoder().raw_decode


def decode(text: str) -> Any:
    """``json.loads``, about twice as fast on what APIs send.

    ``json.loads`` spends much of its time matching whitespace around the document; an API's
    bodies and SSE data lines have none, so ``raw_decode`` is tried first and ``json.loads``
    decides only the unusual cases (surrounding whitespace, or text that is not JSON at all).
    """
    try:
        value, end = _raw_decode(text)
    except ValueError:
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value
