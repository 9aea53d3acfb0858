"""The error taxonomy: status mapping, retry hints, and messages that keep the provider's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tollway.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ContextLengthExceededError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    StreamInterruptedError,
    TollwayError,
    UnavailableError,
    error_for_status,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, BadRequestError, False),
        (401, AuthenticationError, False),
        (403, PermissionDeniedError, False),
        (404, NotFoundError, False),
        (408, ProviderTimeoutError, True),
        (422, BadRequestError, False),
        (429, RateLimitedError, True),
        (500, UnavailableError, True),
        (502, UnavailableError, True),
        (503, UnavailableError, True),
        (529, UnavailableError, True),  # Anthropic's "overloaded"
    ],
)
def test_error_for_status_maps_class_and_retryable(
    status: int, cls: type[ProviderError], retryable: bool
) -> None:
    error = error_for_status(status, provider="openai", provider_message="boom")
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.status == status
    assert error.provider == "openai"
    assert error.provider_message == "boom"
    assert isinstance(error, ProviderError)


def test_unknown_4xx_is_a_bad_request_and_not_retryable() -> None:
    error = error_for_status(418, provider="p", provider_message=None)
    assert type(error) is BadRequestError
    assert not error.retryable
    assert "HTTP 418" in str(error)


def test_retry_after_seconds() -> None:
    error = error_for_status(
        429, provider="openai", provider_message="slow down", headers={"retry-after": "7"}
    )
    assert error.retry_after == 7.0


def test_retry_after_ms_wins_over_seconds() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "9"}
    assert parse_retry_after(headers) == 1.5


def test_retry_after_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    seconds = parse_retry_after({"retry-after": format_datetime(when, usegmt=True)})
    assert seconds is not None
    assert 100 < seconds <= 120


def test_retry_after_http_date_with_minus_zero_zone_does_not_crash() -> None:
    # "-0000" makes email.utils return a naive datetime; comparing it must not raise.
    when = datetime.now(UTC) + timedelta(seconds=120)
    value = when.strftime("%a, %d %b %Y %H:%M:%S -0000")
    seconds = parse_retry_after({"retry-after": value})
    assert seconds is not None
    assert 100 < seconds <= 120


def test_retry_after_in_the_past_or_negative_is_zero() -> None:
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "-3"}) == 0.0


@pytest.mark.parametrize("value", ["soon", "nan", "inf", ""])
def test_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after({"retry-after": value}) is None


def test_no_headers_no_retry_after() -> None:
    assert error_for_status(503, provider="p", provider_message="x").retry_after is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("context_length_exceeded", "whatever"),
        (None, "This model's maximum context length is 8192 tokens. However, you requested 9000"),
        (None, "prompt is too long: 200345 tokens > 200000 maximum"),
        (None, "the request exceeds the available context size, try increasing it"),
    ],
)
def test_context_length_is_detected(code: str | None, message: str) -> None:
    error = error_for_status(400, provider="p", provider_message=message, code=code)
    assert isinstance(error, ContextLengthExceededError)
    assert isinstance(error, BadRequestError)
    assert not error.retryable
    assert error.provider_message == message


def test_an_ordinary_bad_request_is_not_context_length() -> None:
    error = error_for_status(400, provider="p", provider_message="temperature must be <= 2")
    assert type(error) is BadRequestError


def test_str_keeps_provider_status_request_id_and_message() -> None:
    error = error_for_status(
        429,
        provider="anthropic",
        provider_message="Number of request tokens has exceeded your rate limit",
        request_id="req_123",
        code="rate_limit_error",
        headers={"retry-after": "3"},
    )
    text = str(error)
    assert "Number of request tokens has exceeded your rate limit" in text
    assert "provider=anthropic" in text
    assert "status=429" in text
    assert "request_id=req_123" in text
    assert "code=rate_limit_error" in text
    assert "retry_after=3s" in text


def test_to_dict() -> None:
    error = error_for_status(
        401, provider="openai", provider_message="bad key", request_id="r1", code="invalid_api_key"
    )
    assert error.to_dict() == {
        "type": "AuthenticationError",
        "message": "openai returned HTTP 401: bad key",
        "provider": "openai",
        "status": 401,
        "provider_message": "bad key",
        "request_id": "r1",
        "code": "invalid_api_key",
        "retry_after": None,
        "retryable": False,
    }


def test_retryable_can_be_overridden_per_instance() -> None:
    assert StreamInterruptedError("cut").retryable is True
    assert StreamInterruptedError("cut", retryable=False).retryable is False
    assert StreamInterruptedError.retryable is True
    assert TollwayError("x").retryable is False


def test_config_error_names_file_and_key() -> None:
    error = ConfigError("expected float", file="tollway.toml", key="providers.openai.timeout")
    assert str(error) == "tollway.toml: providers.openai.timeout: expected float"
    assert error.file == "tollway.toml"
    assert error.key == "providers.openai.timeout"
    assert str(ConfigError("plain")) == "plain"
