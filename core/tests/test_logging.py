"""Secrets never reach a log line; token counts still do."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from tollway.logging import configure_logging, redact_secrets
from tollway.providers.base import Secret


def redact(**event: Any) -> dict[str, Any]:
    return dict(redact_secrets(None, "info", {"event": "x", **event}))


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "openai_api_key",
        "apikey",
        "Authorization",
        "authorization",
        "x-api-key",
        "x-goog-api-key",
        "client_secret",
        "password",
        "token",
        "access_token",
        "refresh_token",
    ],
)
def test_credential_keys_are_masked(key: str) -> None:
    assert redact(**{key: "sk-live-123"})[key] == "***"


@pytest.mark.parametrize(
    "key",
    [
        "max_tokens",
        "output_tokens",
        "input_tokens",
        "cache_read_tokens",
        "reasoning_tokens",
        "total_tokens",
        "tokens",
        "model",
        "provider",
        "status",
    ],
)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert redact(**{key: 42})[key] == 42


def test_the_event_text_itself_is_kept() -> None:
    assert redact_secrets(None, "info", {"event": "token refreshed"})["event"] == "token refreshed"


def test_nested_tables_are_redacted_without_touching_the_original() -> None:
    headers = {"Authorization": "Bearer sk-live-123", "x-api-key": "k", "content-type": "json"}
    out = redact(headers=headers, usage={"output_tokens": 3, "nested": {"password": "p"}})
    assert out["headers"] == {"Authorization": "***", "x-api-key": "***", "content-type": "json"}
    assert out["usage"] == {"output_tokens": 3, "nested": {"password": "***"}}
    assert headers["Authorization"] == "Bearer sk-live-123"


@pytest.fixture
def configured() -> Iterator[io.StringIO]:
    """configure_logging, writing to a buffer; structlog's defaults are restored afterwards."""
    buffer = io.StringIO()
    try:
        configure_logging("info", "json")
        config = structlog.get_config()
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
        assert config["processors"]
        yield buffer
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()


def test_configured_logging_redacts_events_and_bound_context(configured: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(authorization="Bearer sk-bound-999", user="u-17")
    log = structlog.get_logger("test")
    log.info("call_made", api_key="sk-live-123", output_tokens=5, key=Secret("sk-secret-456"))
    log.debug("hidden_below_level", api_key="sk-debug")
    text = configured.getvalue()
    assert "call_made" in text
    assert '"output_tokens": 5' in text
    assert '"user": "u-17"' in text
    for secret in ("sk-live-123", "sk-bound-999", "sk-secret-456", "sk-debug"):
        assert secret not in text


def test_library_logs_stay_quiet_until_the_application_asks(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import structlog

    from tollway.logging import get_logger

    structlog.reset_defaults()
    log = get_logger("tollway.test")
    log.debug("retrying", attempt=2)
    log.info("reloaded")
    assert capsys.readouterr() == ("", "")

    with caplog.at_level(logging.DEBUG, logger="tollway.test"):
        log.debug("retrying", attempt=2, api_key="sk-secret")
    assert "retrying attempt=2" in caplog.text
    assert "sk-secret" not in caplog.text
