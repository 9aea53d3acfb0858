"""Configuration: a TOML file, then ``TOLLWAY_*`` environment overrides, structured with cattrs.

A wrong config fails at load, naming the file, the key and what was expected; it never fails
later on the request path. Secrets are read from the environment (``api_key_env``) and are
never logged: their type hides the value.

Environment overrides use ``__`` between levels, and their values are read as TOML values
when they parse as such (numbers, booleans, arrays), else as strings::

    TOLLWAY_DEFAULT_MODEL=openai/gpt-4o-mini
    TOLLWAY_PROVIDERS__OPENAI__BASE_URL=http://127.0.0.1:8000/v1
    TOLLWAY_PROVIDERS__OPENAI__TIMEOUT=30
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from tollway.budgets.config import BudgetsConfig
from tollway.cache.config import CacheConfig
from tollway.errors import ConfigError
from tollway.pricing.config import PricingConfig
from tollway.providers.base import ProviderSettings
from tollway.resilience.config import (
    CircuitBreakerConfig,
    RateLimitConfig,
    RetryConfig,
    SingleFlightConfig,
)
from tollway.usage.config import UsageConfig

if TYPE_CHECKING:
    from tollway.plugins import PluginManager

ENV_PREFIX = "TOLLWAY_"
# Variables that select plugins or the file are not settings.
_NOT_SETTINGS = frozenset(
    (
        "TOLLWAY_LOAD_PLUGINS",
        "TOLLWAY_DISABLE_PLUGIN_AUTOLOAD",
        "TOLLWAY_CONFIG",
        "TOLLWAY_CACHE_DIR",
        "TOLLWAY_DATA_DIR",
        # Test suites point these at their servers; they are not settings either.
        "TOLLWAY_TEST_REDIS_URL",
        "TOLLWAY_TEST_POSTGRES_DSN",
    )
)


@attrs.define(kw_only=True)
class LoggingConfig:
    level: str = "warning"
    format: str = "console"

    def __attrs_post_init__(self) -> None:
        if self.level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"log level {self.level!r} is not debug, info, warning or error")
        if self.format not in ("console", "json"):
            raise ValueError(f"log format {self.format!r} is not 'console' or 'json'")


@attrs.define(kw_only=True)
class Config:
    """The whole configuration. ``providers`` holds each section structured by its plugin."""

    default_model: str | None = None
    aliases: dict[str, str] = attrs.field(factory=dict)
    providers: dict[str, ProviderSettings] = attrs.field(factory=dict)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    watch: bool = False
    watch_interval: float = 1.0
    plugins: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    pricing: PricingConfig = attrs.field(factory=PricingConfig)
    usage: UsageConfig = attrs.field(factory=UsageConfig)
    budgets: BudgetsConfig = attrs.field(factory=BudgetsConfig)
    cache: CacheConfig = attrs.field(factory=CacheConfig)
    single_flight: SingleFlightConfig = attrs.field(factory=SingleFlightConfig)
    rate_limits: RateLimitConfig = attrs.field(factory=RateLimitConfig)
    retry: RetryConfig = attrs.field(factory=RetryConfig)
    circuit_breaker: CircuitBreakerConfig = attrs.field(factory=CircuitBreakerConfig)
    # Model -> the models to try, in order, when it fails or its circuit is open.
    fallbacks: dict[str, list[str]] = attrs.field(factory=dict)
    source: str | None = None


_TOP_LEVEL = frozenset(a.name for a in attrs.fields(Config)) - {"source"}


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The nested table that ``TOLLWAY_*`` variables describe."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = out
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[path[-1]] = _parse_env_value(raw)
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_toml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "the config file does not exist; create it (see docs/configuration.md) or pass "
            "another path",
            file=str(file),
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}", file=str(file)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(file)) from None


def _fail(file: str | None, errors: list[tuple[str, str]]) -> ConfigError:
    key, message = errors[0]
    error = ConfigError(message, file=file, key=key or None)
    if len(errors) > 1:
        more = "; ".join(f"{k}: {m}" for k, m in errors[1:])
        error = ConfigError(
            f"{message} (and {len(errors) - 1} more: {more})", file=file, key=key or None
        )
    return error


def structure_provider(
    name: str,
    table: Mapping[str, Any] | ProviderSettings,
    plugins: PluginManager,
    *,
    file: str | None = None,
) -> ProviderSettings:
    """Structure one ``[providers.NAME]`` section with the settings class of its type."""
    from tollway.converter import converter, structure_errors

    types = plugins.providers()
    if isinstance(table, ProviderSettings):
        type_name = table.type or name
    else:
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"expected a table, got {type(table).__name__}", file=file, key=f"providers.{name}"
            )
        type_name = str(table.get("type") or name)
    provider_type = types.get(type_name)
    if provider_type is None:
        known = ", ".join(sorted(types)) or "none"
        hint = (
            f'install its plugin (pip install "tollway[{type_name}]") or set type to one of: '
            f"{known}"
        )
        raise ConfigError(
            f"no installed plugin provides the provider type {type_name!r}; {hint}",
            file=file,
            key=f"providers.{name}.type",
        )
    if isinstance(table, ProviderSettings):
        return table
    data = {**provider_type.default_settings, **dict(table), "type": type_name}
    try:
        return converter.structure(data, provider_type.settings)
    except Exception as exc:
        errors = [
            (f"providers.{name}" + (f".{k}" if k else ""), m) for k, m in structure_errors(exc)
        ]
        raise _fail(file, errors) from None


def load_config(
    path: str | Path | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    plugins: PluginManager,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read ``path`` (or take ``data``), apply ``TOLLWAY_*`` overrides, and structure it."""
    from tollway.converter import converter, structure_errors

    file = str(path) if path is not None else None
    raw: dict[str, Any] = read_toml(path) if path is not None else {}
    if data is not None:
        raw = _merge(raw, data)
    raw = _merge(raw, env_overrides(os.environ if environ is None else environ))

    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        import difflib

        guesses = [difflib.get_close_matches(k, sorted(_TOP_LEVEL), n=1) for k in unknown]
        hint = "".join(f" (did you mean {g[0]!r}?)" for g in guesses if g)
        raise ConfigError(
            f"unknown key {', '.join(map(repr, unknown))}{hint}; the top-level keys are: "
            f"{', '.join(sorted(_TOP_LEVEL))}",
            file=file,
            key=unknown[0],
        )

    sections = raw.pop("providers", {}) or {}
    if not isinstance(sections, Mapping):
        raise ConfigError("expected a table of provider sections", file=file, key="providers")
    try:
        config = converter.structure(raw, Config)
    except Exception as exc:
        raise _fail(file, structure_errors(exc)) from None
    config.providers = {
        name: structure_provider(name, table, plugins, file=file)
        for name, table in sections.items()
    }
    for alias, target in config.aliases.items():
        if "/" not in target:
            raise ConfigError(
                f"alias target {target!r} must be PROVIDER/MODEL", file=file, key=f"aliases.{alias}"
            )
    config.source = file
    return config


def find_config_file(explicit: str | Path | None = None) -> Path | None:
    """``explicit``, else ``$TOLLWAY_CONFIG``, else ``./tollway.toml`` if it exists."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("TOLLWAY_CONFIG")
    if env:
        return Path(env)
    local = Path("tollway.toml")
    return local if local.exists() else None
