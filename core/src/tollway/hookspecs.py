"""The hooks a tollway plugin can implement.

Hooks are for discovery and assembly: they run when a Pipeline is built, never per request.
Registration hooks receive a ``register`` callback and call it once per thing they offer (the
shape of simonw/llm's hooks). Every hook here has a section of the same name in
``docs/plugins/hooks.md``; a test fails when one is missing.

A plugin implements a hook by defining a function of the same name decorated with
``tollway.hookimpl``; it may accept any subset of the arguments, by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("tollway")
hookimpl = pluggy.HookimplMarker("tollway")


@hookspec
def tollway_register_providers(register: Callable[..., None]) -> None:
    """Offer provider types.

    Call ``register(name, factory, settings=SettingsClass, description="...")`` once per type.
    ``name`` is the type a config section names (``[providers.work] type = "openai"``) and the
    model prefix used when no section is configured (``openai/gpt-4o-mini``).
    ``factory(settings, context)`` returns an object with the :class:`tollway.providers.Provider`
    methods; ``settings`` is an instance of ``SettingsClass`` (a subclass of
    :class:`tollway.providers.ProviderSettings`) built from the config section, and ``context``
    holds the instance name and the pipeline's pooled HTTP sessions. Import the vendor SDK in
    the factory or the provider's methods, never at module level.
    """


@hookspec
def tollway_register_pricing(register: Callable[..., None]) -> None:
    """Offer price sources.

    Call ``register(name, factory)``; ``factory(options)`` gets the source's
    ``[pricing.source_options.NAME]`` table and returns an object whose
    ``rates(provider, model)`` gives a :class:`tollway.pricing.rates.ModelRates` (or ``None``
    when it does not know the model), and optionally ``reload()``, called by
    ``pricer.reload()``. ``[pricing] sources`` orders them; ``[pricing.models]`` overrides
    them all. Rates are looked up once per model and kept, so the request path does
    arithmetic only.
    """


@hookspec
def tollway_register_filters(register: Callable[..., None]) -> None:
    """Offer safety filters for prompts and answers.

    Call ``register(name, factory)``; ``factory(options)`` returns an object with an async
    ``check(text, *, direction, request)`` method that returns the findings (an empty list when
    the text is clean). Policies decide what a finding does: log, redact or block.
    """


@hookspec
def tollway_register_cache_backends(register: Callable[..., None]) -> None:
    """Offer cache backends.

    Call ``register(name, factory)``; ``factory(config)`` gets the ``[cache]`` table
    (:class:`tollway.cache.config.CacheConfig`) and returns an object with the async methods of
    :class:`tollway.cache.backend.CacheBackend`: ``get``, ``set`` (with a TTL and tags),
    ``delete``, ``invalidate`` (by namespace, model or tag) and ``aclose``. Values are bytes;
    a backend never unpickles what it reads. ``[cache] backend = NAME`` selects it.
    """


@hookspec
def tollway_register_exporters(register: Callable[..., None]) -> None:
    """Offer exporters of usage records, metrics and alerts.

    Call ``register(name, factory)``; ``factory(options)`` returns an object with async
    ``export(events)`` and ``aclose()``. Exporters receive batches, off the request path.

    A registration named ``report-FORMAT`` is a report renderer rather than an event
    exporter: its ``factory(options)`` returns an object with ``media_type``, ``suffix`` and
    ``render(report) -> bytes``, used by ``tollway report --format FORMAT``.
    """


@hookspec
def tollway_register_usage_stores(register: Callable[..., None]) -> None:
    """Offer usage stores.

    Call ``register(name, factory)``; ``factory(config)`` gets the ``[usage]`` table
    (:class:`tollway.usage.config.UsageConfig`) and returns a
    :class:`tollway.usage.store.UsageStore`: async ``write(records)`` (idempotent on record
    id), ``query(UsageQuery) -> list[UsageRow]``, ``records(UsageQuery)`` (an async iterator)
    and ``aclose()``. ``tollway.usage.contract`` checks a store against the reference
    aggregation. The pipeline writes behind the request in batches; a store never slows a
    call down. ``[usage] store = NAME`` selects it.
    """


@hookspec
def tollway_register_rate_limiters(register: Callable[..., None]) -> None:
    """Offer rate-limit state shared across processes.

    Call ``register(name, factory)``; ``factory(config, metrics)`` gets the
    :class:`tollway.resilience.config.RateLimitConfig` and returns an object with async
    ``acquire(demands) -> (wait_seconds, index)`` (takes every
    ``(tollway.resilience.ratelimit.Bucket, amount)`` demand or none: ``(0.0, -1)`` when taken,
    else the seconds until all fit and the index of the demand that waits longest), async
    ``adjust(demands)`` (amounts above 0 charge, debt allowed; below 0 refund up to capacity)
    and ``aclose()``. ``[rate_limits] backend = NAME`` selects it; the built-in ``local`` one
    keeps the buckets in the process. The queue, priorities and fairness stay in the process.
    """


@hookspec
def tollway_register_coalescers(register: Callable[..., None]) -> None:
    """Offer in-flight coalescing shared across processes.

    Call ``register(name, factory)``; ``factory(config, metrics)`` gets the
    :class:`tollway.resilience.config.SingleFlightConfig` and returns an object that lets
    identical calls in flight at once, in any process, share one upstream call (see
    ``docs/resilience.md``). ``[single_flight] backend = NAME`` selects it; the built-in
    ``local`` one coalesces within the process.
    """


@hookspec
def tollway_register_budget_counters(register: Callable[..., None]) -> None:
    """Offer budget counters shared across processes.

    Call ``register(name, factory)``; ``factory(config, metrics)`` gets the
    :class:`tollway.budgets.config.BudgetsConfig` and returns the counters the budget stage
    reserves on before a call and settles after it (see ``docs/budgets.md``), atomically
    across every process that shares them. ``[budgets] backend = NAME`` selects it; the
    built-in ``local`` one keeps the counters in the process.
    """


@hookspec(firstresult=True)
def tollway_resolve_model(model: str) -> str | None:
    """Rewrite a model name before it is routed, or return ``None`` to leave it alone.

    Called once per distinct model name and cached, not per request. The first plugin to
    return a name wins: use it for aliases (``fast`` -> ``openai/gpt-4o-mini``).
    """


@hookspec(historic=True)
def tollway_addhooks(pm: pluggy.PluginManager) -> None:
    """Add hookspecs of your own (``pm.add_hookspecs(module)``) for other plugins to implement.

    Historic: a plugin registered later still gets the call.
    """


@hookspec(historic=True)
def tollway_configure(config: Any) -> None:
    """See the loaded :class:`tollway.config.Config` once, when a Pipeline is assembled or
    reloaded. Read your own ``[plugins.NAME]`` table from ``config.plugins``.

    Historic: a plugin registered later still gets the call with the current config.
    """
