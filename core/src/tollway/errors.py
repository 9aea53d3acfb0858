"""One error taxonomy for every provider and every stage.

Each error keeps what the provider said (its message, HTTP status and request id), which provider
said it, and whether trying again could help. Stages decide on ``retryable`` and ``retry_after``,
never on a provider's own exception classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class TollwayError(Exception):
    """Base of every error tollway raises."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        provider_message: str | None = None,
        request_id: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status
        self.provider_message = provider_message
        self.request_id = request_id
        self.code = code
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        parts = [self.message]
        details = []
        if self.provider:
            details.append(f"provider={self.provider}")
        if self.status is not None:
            details.append(f"status={self.status}")
        if self.code:
            details.append(f"code={self.code}")
        if self.request_id:
            details.append(f"request_id={self.request_id}")
        if self.retry_after is not None:
            details.append(f"retry_after={self.retry_after:g}s")
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary, for logs, the audit trail and the gateway's error bodies."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "provider": self.provider,
            "status": self.status,
            "provider_message": self.provider_message,
            "request_id": self.request_id,
            "code": self.code,
            "retry_after": self.retry_after,
            "retryable": self.retryable,
        }


class ConfigError(TollwayError):
    """The configuration is wrong. Names the file and the key, and says what is expected."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        where = ": ".join(x for x in (file, key) if x)
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.key = key


class PluginError(TollwayError):
    """A plugin could not be loaded, or two plugins claim the same name."""


class UnknownModelError(ConfigError):
    """The model string names a provider that no installed plugin or config section offers."""


class ProviderError(TollwayError):
    """The provider answered with an error, or did not answer usefully."""


class AuthenticationError(ProviderError):
    """The credentials were missing, wrong or expired (HTTP 401)."""


class PermissionDeniedError(ProviderError):
    """The credentials are valid but may not do this (HTTP 403)."""


class BadRequestError(ProviderError):
    """The provider rejected the request as malformed (HTTP 400/422); the same call fails again."""


class NotFoundError(BadRequestError):
    """The model or deployment does not exist at this provider (HTTP 404)."""


class ContextLengthExceededError(BadRequestError):
    """The prompt plus max_tokens do not fit in the model's context window."""


class RateLimitedError(ProviderError):
    """Too many requests or tokens (HTTP 429). ``retry_after`` is the provider's hint, in s."""

    retryable = True


class ProviderTimeoutError(ProviderError):
    """The provider did not answer in time (connect, read, or the request's own timeout)."""

    retryable = True


class UnavailableError(ProviderError):
    """The provider is down, overloaded or unreachable (HTTP 5xx, connection refused or reset)."""

    retryable = True


class MalformedResponseError(ProviderError):
    """The provider's reply could not be understood. Keeps a short excerpt of what came."""


class StreamInterruptedError(ProviderError):
    """A stream ended before the provider said it was done (no finish, no [DONE])."""

    retryable = True


class ContentFilteredError(TollwayError):
    """A safety filter (the provider's or tollway's) blocked the prompt or the answer."""


class BudgetExceededError(TollwayError):
    """A hard budget limit would be crossed; raised before any provider is called."""


class QueueTimeoutError(TollwayError):
    """A rate-limited call waited in the queue longer than it was allowed to."""

    retryable = True


class CircuitOpenError(TollwayError):
    """The circuit breaker for this endpoint is open: the call was not sent."""

    retryable = True


_BY_STATUS: dict[int, type[ProviderError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: ProviderTimeoutError,
    409: UnavailableError,
    413: BadRequestError,
    422: BadRequestError,
    429: RateLimitedError,
}


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP-date)."""
    value = headers.get("retry-after-ms") or headers.get("Retry-After-Ms")
    if value:
        try:
            seconds = float(value) / 1000.0
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):
                return max(seconds, 0.0)
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value:
        try:
            seconds = float(value)
        except ValueError:
            from datetime import UTC, datetime
            from email.utils import parsedate_to_datetime

            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:  # "-0000" parses naive; HTTP-dates are always UTC
                when = when.replace(tzinfo=UTC)
            return max((when - datetime.now(UTC)).total_seconds(), 0.0)
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    return None


def error_for_status(
    status: int,
    *,
    provider: str,
    provider_message: str | None,
    request_id: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProviderError:
    """The error class and fields for an HTTP error status; the provider's message is kept."""
    cls: type[ProviderError]
    if status >= 500:
        cls = UnavailableError
    else:
        cls = _BY_STATUS.get(status, BadRequestError if 400 <= status < 500 else ProviderError)
    if cls is BadRequestError and _is_context_length(code, provider_message):
        cls = ContextLengthExceededError
    retry_after = parse_retry_after(headers) if headers is not None else None
    summary = provider_message or f"HTTP {status}"
    return cls(
        f"{provider} returned HTTP {status}: {summary}",
        provider=provider,
        status=status,
        provider_message=provider_message,
        request_id=request_id,
        code=code,
        retry_after=retry_after,
    )


# How providers word it: OpenAI ("maximum context length"), Anthropic ("prompt is too long"),
# llama.cpp ("exceeds the available context size"), others ("context window").
_CONTEXT_LENGTH_PHRASES = ("context length", "context window", "context size", "prompt is too long")


def _is_context_length(code: str | None, message: str | None) -> bool:
    if code in ("context_length_exceeded", "string_above_max_length"):
        return True
    lowered = (message or "").lower()
    return any(phrase in lowered for phrase in _CONTEXT_LENGTH_PHRASES)
