"""The plugin as tollway sees it: cheap to load, registered under its name, clear settings."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tollway.errors import ConfigError
from tollway.providers import ProviderType
from tollway_llamacpp import LlamaCppSettings
from tollway_llamacpp.model_files import default_cache_dir


def test_loading_the_plugin_imports_no_heavy_dependency() -> None:
    # A fresh interpreter: this session's other tests import llama_cpp.
    code = """
import sys
import tollway_llamacpp
from tollway.providers import ProviderContext
from tollway.providers.http import HttpPool

found = []
tollway_llamacpp.tollway_register_providers(register=lambda *a, **k: found.append((a, k)))
(name, factory), options = found[0]
assert name == "llamacpp" and options["settings"] is tollway_llamacpp.LlamaCppSettings, found
provider = factory(tollway_llamacpp.LlamaCppSettings(), ProviderContext("llamacpp", HttpPool()))
heavy = sorted(m for m in sys.modules if m.startswith(("llama_cpp", "gemma3_270m")))
print(heavy)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_entry_point_names_the_plugin_module() -> None:
    points = {ep.name: ep.value for ep in metadata.entry_points(group="tollway")}
    assert points.get("llamacpp") == "tollway_llamacpp"


def test_registered_type(provider_type: ProviderType) -> None:
    assert provider_type.name == "llamacpp"
    assert provider_type.settings is LlamaCppSettings
    assert provider_type.plugin == "tollway_llamacpp"
    assert "offline" in provider_type.description


def test_settings_defaults() -> None:
    settings = LlamaCppSettings()
    assert settings.default_model == "gemma-3-270m"
    assert settings.model_path is None
    assert settings.models == {}
    assert settings.n_ctx == 4096
    assert settings.n_threads is None
    assert settings.n_gpu_layers == 0
    assert settings.chat_format is None
    assert settings.cache_dir is None


def test_settings_reject_a_non_positive_context() -> None:
    with pytest.raises(ValueError, match="n_ctx"):
        LlamaCppSettings(n_ctx=0)


def test_missing_model_path_names_the_path_and_the_setting(
    provider_type: ProviderType, tmp_path: Path
) -> None:
    from tollway.providers import ProviderContext
    from tollway.providers.http import HttpPool

    missing = tmp_path / "nope.gguf"
    settings = LlamaCppSettings(model_path=str(missing))
    with pytest.raises(ConfigError) as info:
        provider_type.factory(settings, ProviderContext("local", HttpPool()))
    message = str(info.value)
    assert str(missing) in message
    assert "providers.local.model_path" in message
    assert "does not exist" in message
    assert info.value.key == "providers.local.model_path"


def test_missing_file_in_models_names_its_key(provider_type: ProviderType, tmp_path: Path) -> None:
    from tollway.providers import ProviderContext
    from tollway.providers.http import HttpPool

    settings = LlamaCppSettings(models={"tiny": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"providers\.llamacpp\.models\.tiny.*is a directory"):
        provider_type.factory(settings, ProviderContext("llamacpp", HttpPool()))


def test_default_cache_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path / "tw"))
    assert default_cache_dir() == tmp_path / "tw" / "models"
    monkeypatch.delenv("TOLLWAY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "tollway" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tollway" / "models"
