"""Finding, loading and asking plugins. One PluginManager per Pipeline, never module-global.

Plugins are modules named by entry points in the group ``tollway``. The core's own defaults are
registered first through the same hooks, so an installed plugin can override any of them.
Loading is idempotent; a plugin that fails to import, or whose hook raises, is logged with its
name and the error and skipped, and the rest carry on.

Environment:

- ``TOLLWAY_LOAD_PLUGINS``: comma-separated entry-point or distribution names to load, and no
  others; set it empty to load none.
- ``TOLLWAY_DISABLE_PLUGIN_AUTOLOAD``: any non-empty value other than ``0`` loads no entry
  points (the built-in defaults stay).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from importlib import metadata
from types import ModuleType
from typing import Any

import attrs
import pluggy

from tollway import hookspecs
from tollway.errors import PluginError
from tollway.logging import get_logger
from tollway.providers.base import ProviderSettings, ProviderType

ENTRYPOINT_GROUP = "tollway"
log = get_logger("tollway.plugins")

_REGISTRATION_HOOKS = (
    "tollway_register_providers",
    "tollway_register_pricing",
    "tollway_register_filters",
    "tollway_register_cache_backends",
    "tollway_register_exporters",
    "tollway_register_usage_stores",
    "tollway_register_rate_limiters",
    "tollway_register_coalescers",
    "tollway_register_budget_counters",
)


@attrs.frozen(slots=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    name: str
    error: str
    stage: str


@attrs.frozen(slots=True)
class PluginInfo:
    """One registered plugin, as ``tollway plugins`` shows it."""

    name: str
    version: str | None
    distribution: str | None
    hooks: tuple[str, ...]
    builtin: bool


@attrs.frozen(slots=True)
class Registration:
    """Something a plugin registered through a ``register`` callback (not a provider)."""

    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""
    options: dict[str, Any] = attrs.field(factory=dict)


def _env_plugin_selection() -> set[str] | None:
    raw = os.environ.get("TOLLWAY_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _autoload_disabled() -> bool:
    value = os.environ.get("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", "")
    return value not in ("", "0", "false", "False")


class PluginManager:
    """Wraps a pluggy manager with tollway's loading rules and registration helpers."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("tollway")
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        self._builtin: set[str] = set()
        self._entrypoints_loaded = False
        self._providers: dict[str, ProviderType] | None = None
        self._registrations: dict[str, dict[str, Registration]] = {}
        from tollway import defaults

        self.register(defaults, name="tollway.defaults", builtin=True)

    # -- loading ---------------------------------------------------------------------------

    def register(
        self, plugin: ModuleType | object, name: str | None = None, *, builtin: bool = False
    ) -> str | None:
        """Register a plugin object or module. Registering the same name twice is a no-op."""
        plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if self.pm.has_plugin(plugin_name) or self.pm.is_registered(plugin):
            return plugin_name
        try:
            registered = self.pm.register(plugin, name=plugin_name)
        except Exception as exc:  # a malformed hookimpl: skip this plugin, keep the rest
            self._fail(plugin_name, exc, "register")
            return None
        if builtin:
            self._builtin.add(plugin_name)
        self._invalidate()
        return registered

    def load_entrypoints(self) -> None:
        """Import and register every selected plugin of the ``tollway`` entry-point group, once."""
        if self._entrypoints_loaded:
            return
        self._entrypoints_loaded = True
        if _autoload_disabled():
            return
        selection = _env_plugin_selection()
        for ep in metadata.entry_points(group=ENTRYPOINT_GROUP):
            dist = ep.dist
            dist_name = dist.name if dist is not None else None
            if selection is not None and ep.name not in selection and dist_name not in selection:
                continue
            if self.pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as exc:
                self._fail(ep.name, exc, "import")
                continue
            self._dists[ep.name] = (dist_name, dist.version if dist is not None else None)
            self.register(module, name=ep.name)

    def _fail(self, name: str, exc: BaseException, stage: str) -> None:
        error = f"{type(exc).__name__}: {exc}"
        failure = PluginFailure(name, error, stage)
        if failure in self.failures:  # asked again after a new registration: already reported
            return
        self.failures.append(failure)
        log.warning("plugin_skipped", plugin=name, stage=stage, error=error)

    def _invalidate(self) -> None:
        self._providers = None
        self._registrations.clear()

    def check_pending(self) -> None:
        """Raise PluginError naming any hook implementation that matches no hookspec (a typo)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"{exc}; hook names start with tollway_ and are listed in docs/plugins/hooks.md"
            ) from exc

    # -- asking ----------------------------------------------------------------------------

    def _call_each(
        self,
        hook_name: str,
        register: Callable[..., None],
        current: list[str],
        found: dict[str, Any],
    ) -> None:
        """Call a registration hook plugin by plugin, so one that raises is skipped alone.

        What a plugin registered before it raised is dropped too: half a plugin is not used.
        """
        caller = getattr(self.pm.hook, hook_name)
        # get_hookimpls() lists implementations first-registered first (pluggy calls them in
        # reverse); walking them in that order lets a later plugin's registration override the
        # built-in defaults.
        for impl in caller.get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                continue
            current[0] = impl.plugin_name
            before = dict(found)
            try:
                if "register" in impl.argnames:
                    impl.function(register=register)
                else:
                    impl.function()
            except Exception as exc:
                found.clear()
                found.update(before)
                self._fail(impl.plugin_name, exc, hook_name)

    def providers(self) -> dict[str, ProviderType]:
        """Every registered provider type by name. Asked once and kept."""
        if self._providers is not None:
            return self._providers
        found: dict[str, ProviderType] = {}
        current = [""]

        def register(
            name: str,
            factory: Callable[..., Any],
            *,
            settings: type[ProviderSettings] = ProviderSettings,
            description: str = "",
            **default_settings: Any,
        ) -> None:
            if not isinstance(settings, type) or not issubclass(settings, ProviderSettings):
                raise PluginError(
                    f"plugin {current[0]!r} registered provider {name!r} with settings "
                    f"{settings!r}; it must be a subclass of tollway.providers.ProviderSettings"
                )
            previous = found.get(name)
            if previous is not None and previous.plugin not in self._builtin:
                log.warning(
                    "provider_overridden",
                    provider=name,
                    previous=previous.plugin,
                    plugin=current[0],
                )
            found[name] = ProviderType(
                name, factory, settings, description, current[0], default_settings
            )

        self._call_each("tollway_register_providers", register, current, found)
        self._providers = found
        return found

    def registrations(self, kind: str) -> dict[str, Registration]:
        """What plugins registered through ``tollway_register_<kind>``, e.g. ``cache_backends``."""
        hook_name = f"tollway_register_{kind}"
        if hook_name not in _REGISTRATION_HOOKS or hook_name == "tollway_register_providers":
            raise ValueError(f"unknown registration kind {kind!r}")
        cached = self._registrations.get(kind)
        if cached is not None:
            return cached
        found: dict[str, Registration] = {}
        current = [""]

        def register(
            name: str, factory: Callable[..., Any], *, description: str = "", **options: Any
        ) -> None:
            found[name] = Registration(name, factory, current[0], description, options)

        self._call_each(hook_name, register, current, found)
        self._registrations[kind] = found
        return found

    def resolve_model(self, model: str) -> str:
        result: str | None = self.pm.hook.tollway_resolve_model(model=model)
        return result or model

    def configure(self, config: Any) -> None:
        self.pm.hook.tollway_configure.call_historic(kwargs={"config": config})

    # -- describing ------------------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin with its distribution, version and the hooks it implements."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()))
            dist, version = self._dists.get(name, (None, None))
            if name in self._builtin:
                dist, version = "tollway", _version("tollway")
            out.append(PluginInfo(name, version, dist, hooks, name in self._builtin))
        return sorted(out, key=lambda p: (not p.builtin, p.name))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def build_plugin_manager(
    plugins: Iterable[ModuleType | object] = (), *, load_entrypoints: bool = True
) -> PluginManager:
    """A fresh manager: defaults, then entry points (unless disabled), then ``plugins``."""
    manager = PluginManager()
    if load_entrypoints:
        manager.load_entrypoints()
    for plugin in plugins:
        manager.register(plugin)
    return manager
