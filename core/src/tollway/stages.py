"""The built-in stages, in their order on the request path, assembled from the config.

Only the stages that are switched on are imported and built, so an unused stage costs neither
import time nor a call. A stage whose config did not change across a reload is carried over
with its state (cached answers, breaker state, rate-limit buckets); the others are rebuilt.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from tollway.config import Config
    from tollway.metrics import Metrics
    from tollway.pipeline import Stage
    from tollway.plugins import PluginManager


@attrs.frozen
class StageContext:
    """What a built-in stage is built from."""

    config: Config
    plugins: PluginManager
    metrics: Metrics
    # The canonical PROVIDER/MODEL for any model string (aliases and defaults applied).
    route: Callable[[str], str]
    # Objects several stages of one assembly share, made by the first that needs them
    # (the pricer, the usage store): ``context.shared.setdefault(...)`` or a helper like
    # ``tollway.pricing.pricer.pricer_for(context)``.
    shared: dict[str, Any] = attrs.field(factory=dict)


# (kind, the config attribute, "module:Class"), outermost first. A fallback tries each model
# through retries; each attempt waits for its rate limit, then passes its endpoint's breaker.
BUILTIN_STAGES: tuple[tuple[str, str, str], ...] = (
    # Usage records what the stages inside it settled; budgets reserve before and settle
    # after; cost prices every answer, cache hits included (at zero, with their saving).
    ("usage", "usage", "tollway.usage.stage:UsageStage"),
    ("budget", "budgets", "tollway.budgets.stage:BudgetStage"),
    ("cost", "pricing", "tollway.pricing.stage:CostStage"),
    ("cache", "cache", "tollway.cache.stage:CacheStage"),
    ("single_flight", "single_flight", "tollway.resilience.singleflight:SingleFlightStage"),
    ("fallback", "fallbacks", "tollway.resilience.fallback:FallbackStage"),
    ("retry", "retry", "tollway.resilience.retry:RetryStage"),
    ("rate_limit", "rate_limits", "tollway.resilience.ratelimit:RateLimitStage"),
    ("circuit_breaker", "circuit_breaker", "tollway.resilience.breaker:CircuitBreakerStage"),
)


def _enabled(section: Any) -> bool:
    if isinstance(section, Mapping):  # [fallbacks] is on when it names any model
        return bool(section)
    return bool(getattr(section, "enabled", False))


def _section_enabled(config: Config, kind: str, section: Any) -> bool:
    if kind == "cost":
        # Usage records and budgets are in money: they need every answer priced.
        return _enabled(section) or config.usage.enabled or config.budgets.enabled
    return _enabled(section)


def build_stages(
    context: StageContext, previous: Mapping[str, tuple[Any, Stage]] | None = None
) -> dict[str, tuple[Any, Stage]]:
    """Kind -> (its config section, the stage), in request-path order, enabled ones only."""
    built: dict[str, tuple[Any, Stage]] = {}
    for kind, attribute, target in BUILTIN_STAGES:
        section = getattr(context.config, attribute)
        if not _section_enabled(context.config, kind, section):
            continue
        if kind == "cost":
            # Prices depend on which type each provider instance is, not only on [pricing].
            types = {name: s.type for name, s in context.config.providers.items()}
            section = (section, context.config.usage.enabled, context.config.budgets.enabled, types)
        old = (previous or {}).get(kind)
        if old is not None and old[0] == section:
            built[kind] = old
            continue
        module_name, _, class_name = target.partition(":")
        stage_class = getattr(importlib.import_module(module_name), class_name)
        built[kind] = (section, stage_class.from_context(context))
    return built
