"""structlog set-up for the CLI and the gateway. A library never configures logging by itself.

Every event passes through ``redact_secrets`` before it is rendered, so a key that looks like a
credential is never written out, whoever logged it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

_SECRET_WORDS = ("api_key", "apikey", "authorization", "secret", "password", "token")


def _looks_secret(key: str) -> bool:
    # Header names spell it x-api-key; keyword arguments spell it api_key.
    lowered = key.lower().replace("-", "_")
    if lowered.endswith("_tokens") or lowered in ("max_tokens", "tokens"):
        return False
    return any(word in lowered for word in _SECRET_WORDS)


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: "***" if isinstance(k, str) and _looks_secret(k) else _redact(v)
            for k, v in value.items()
        }
    return value


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask values whose key looks like a credential, in nested tables (headers) too."""
    for key in list(event):
        if key == "event":
            continue
        if _looks_secret(key):
            event[key] = "***"
        else:
            event[key] = _redact(event[key])
    return event


def configure_logging(level: str = "warning", format: str = "console") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            # Context variables are merged first, so what was bound there is redacted too.
            structlog.contextvars.merge_contextvars,
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class TollwayLogger:
    """What tollway's modules log through.

    A library must not print unless the application asks: with structlog configured (by the
    application, or by the CLI through :func:`configure_logging`) events go through structlog;
    otherwise they go to the standard ``logging`` module under the logger's name, where nothing
    below WARNING shows unless the application turns it on.
    """

    __slots__ = ("_name", "_std")

    def __init__(self, name: str) -> None:
        self._name = name
        self._std = logging.getLogger(name)

    def _log(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(structlog.get_logger(self._name), method)(event, **fields)
            return
        if not self._std.isEnabledFor(level):
            return
        redact_secrets(None, method, fields)
        detail = " ".join(f"{key}={value!r}" for key, value in fields.items())
        self._std.log(level, "%s %s", event, detail)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "exception", event, fields)


def get_logger(name: str) -> TollwayLogger:
    return TollwayLogger(name)
