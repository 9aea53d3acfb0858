"""Loading configuration: the file, TOLLWAY_* overrides, and errors that name the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from tollway.config import Config, env_overrides, load_config
from tollway.errors import ConfigError
from tollway.hookspecs import hookimpl
from tollway.plugins import PluginManager
from tollway.providers.base import ProviderSettings, Secret


@attrs.define(kw_only=True)
class DummySettings(ProviderSettings):
    model_dir: str = "models"
    threads: int = 2


def dummy_factory(settings: Any, context: Any) -> Any:
    raise AssertionError("config loading must not build providers")


class DummyPlugin:
    @hookimpl
    def tollway_register_providers(self, register: Any) -> None:
        register("dummy", dummy_factory, settings=DummySettings, threads=4)


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> PluginManager:
    monkeypatch.setenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", "1")
    manager = PluginManager()
    manager.load_entrypoints()
    manager.register(DummyPlugin(), name="dummy-plugin")
    return manager


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tollway.toml"
    path.write_text(text, encoding="utf-8")
    return path


VALID = """
default_model = "work/small"
watch = true
watch_interval = 0.5

[aliases]
fast = "work/small"

[logging]
level = "info"
format = "json"

[providers.work]
type = "dummy"
base_url = "http://127.0.0.1:9000/v1"
api_key = "sk-very-secret-value"
timeout = 12.5
model_dir = "/srv/models"

[providers.dummy]
headers = { "x-team" = "blue" }

[plugins.hello]
greeting = "hi"
"""


def test_valid_file(tmp_path: Path, plugins: PluginManager) -> None:
    path = write(tmp_path, VALID)
    config = load_config(path, plugins=plugins, environ={})
    assert isinstance(config, Config)
    assert config.source == str(path)
    assert config.default_model == "work/small"
    assert config.watch is True
    assert config.watch_interval == 0.5
    assert config.aliases == {"fast": "work/small"}
    assert config.logging.level == "info"
    assert config.logging.format == "json"
    assert config.plugins == {"hello": {"greeting": "hi"}}

    work = config.providers["work"]
    assert type(work) is DummySettings
    assert work.type == "dummy"
    assert work.base_url == "http://127.0.0.1:9000/v1"
    assert work.timeout == 12.5
    assert work.model_dir == "/srv/models"
    assert work.threads == 4  # the plugin's default_settings
    assert isinstance(work.api_key, Secret)
    assert work.api_key.get() == "sk-very-secret-value"

    # A section with no type is of the type its name says.
    same_name = config.providers["dummy"]
    assert type(same_name) is DummySettings
    assert same_name.type == "dummy"
    assert same_name.headers == {"x-team": "blue"}


def test_secret_never_shows_in_repr_or_str(tmp_path: Path, plugins: PluginManager) -> None:
    config = load_config(write(tmp_path, VALID), plugins=plugins, environ={})
    secret = config.providers["work"].api_key
    assert secret is not None
    assert "sk-very-secret-value" not in repr(secret)
    assert "sk-very-secret-value" not in str(secret)
    assert "sk-very-secret-value" not in f"{secret}"
    assert "sk-very-secret-value" not in repr(config)
    assert "sk-very-secret-value" not in repr(config.providers)


def test_env_overrides(tmp_path: Path, plugins: PluginManager) -> None:
    environ = {
        "TOLLWAY_PROVIDERS__WORK__TIMEOUT": "30",
        "TOLLWAY_PROVIDERS__WORK__BASE_URL": "http://127.0.0.1:8000/v1",
        "TOLLWAY_DEFAULT_MODEL": "work/large",
        "TOLLWAY_WATCH": "false",
        "TOLLWAY_LOGGING__LEVEL": "debug",
        # These select plugins or the file; they are not settings.
        "TOLLWAY_CONFIG": "elsewhere.toml",
        "TOLLWAY_LOAD_PLUGINS": "",
        "TOLLWAY_DISABLE_PLUGIN_AUTOLOAD": "1",
        "OTHER_VARIABLE": "ignored",
    }
    config = load_config(write(tmp_path, VALID), plugins=plugins, environ=environ)
    work = config.providers["work"]
    assert work.timeout == 30
    assert isinstance(work.timeout, float)
    assert work.base_url == "http://127.0.0.1:8000/v1"
    assert work.model_dir == "/srv/models"  # the rest of the section stays
    assert config.default_model == "work/large"
    assert config.watch is False
    assert config.logging.level == "debug"
    assert config.logging.format == "json"


def test_env_override_values_are_parsed_as_toml() -> None:
    table = env_overrides(
        {
            "TOLLWAY_PROVIDERS__X__TIMEOUT": "30",
            "TOLLWAY_PROVIDERS__X__BASE_URL": "http://h:1/v1",
            "TOLLWAY_WATCH": "true",
            "TOLLWAY_WATCH_INTERVAL": "2.5",
        }
    )
    assert table == {
        "providers": {"x": {"timeout": 30, "base_url": "http://h:1/v1"}},
        "watch": True,
        "watch_interval": 2.5,
    }


def test_env_override_alone_makes_a_provider_section(plugins: PluginManager) -> None:
    config = load_config(plugins=plugins, environ={"TOLLWAY_PROVIDERS__DUMMY__THREADS": "8"})
    assert config.providers["dummy"].threads == 8  # type: ignore[attr-defined]
    assert config.source is None


def test_data_is_merged_over_the_file_and_not_mutated(
    tmp_path: Path, plugins: PluginManager
) -> None:
    data = {"providers": {"work": {"timeout": 99}}}
    config = load_config(write(tmp_path, VALID), data=data, plugins=plugins, environ={})
    assert config.providers["work"].timeout == 99
    assert config.providers["work"].model_dir == "/srv/models"  # type: ignore[attr-defined]
    assert data == {"providers": {"work": {"timeout": 99}}}


def test_unknown_top_level_key(tmp_path: Path, plugins: PluginManager) -> None:
    path = write(tmp_path, 'defualt_model = "work/small"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins=plugins, environ={})
    error = info.value
    assert error.file == str(path)
    assert error.key == "defualt_model"
    assert str(path) in str(error)
    assert "did you mean 'default_model'?" in str(error)


def test_unknown_provider_key_names_file_key_path_and_suggestion(
    tmp_path: Path, plugins: PluginManager
) -> None:
    path = write(tmp_path, '[providers.openai]\ntype = "dummy"\ntimeoutt = 30\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins=plugins, environ={})
    error = info.value
    assert error.file == str(path)
    assert error.key == "providers.openai.timeoutt"
    text = str(error)
    assert str(path) in text
    assert "providers.openai.timeoutt" in text
    assert "did you mean 'timeout'?" in text


def test_unknown_nested_key_names_its_path(tmp_path: Path, plugins: PluginManager) -> None:
    path = write(tmp_path, '[logging]\nlevle = "info"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins=plugins, environ={})
    assert info.value.key == "logging.levle"
    assert "did you mean 'level'?" in str(info.value)


def test_wrong_type_names_key_and_expected_type(tmp_path: Path, plugins: PluginManager) -> None:
    path = write(tmp_path, '[providers.work]\ntype = "dummy"\ntimeout = "soon"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins=plugins, environ={})
    error = info.value
    assert error.key == "providers.work.timeout"
    assert error.file == str(path)
    assert "float" in str(error)


def test_several_wrong_values_are_all_reported(plugins: PluginManager) -> None:
    data = {"providers": {"work": {"type": "dummy", "timeout": "soon", "threads": "many"}}}
    with pytest.raises(ConfigError) as info:
        load_config(data=data, plugins=plugins, environ={})
    text = str(info.value)
    assert "providers.work.timeout" in text
    assert "providers.work.threads" in text


def test_wrong_type_from_env_names_the_key(plugins: PluginManager) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(plugins=plugins, environ={"TOLLWAY_WATCH_INTERVAL": "often"})
    assert info.value.key == "watch_interval"
    assert "float" in str(info.value)


def test_missing_file(tmp_path: Path, plugins: PluginManager) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins=plugins, environ={})
    assert info.value.file == str(path)
    assert "does not exist" in str(info.value)


def test_invalid_toml_names_the_file(tmp_path: Path, plugins: PluginManager) -> None:
    path = write(tmp_path, "[providers.work\ntype = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins=plugins, environ={})
    assert info.value.file == str(path)
    assert str(path) in str(info.value)
    assert "TOML" in str(info.value)


def test_provider_type_without_plugin_says_to_install_it(
    tmp_path: Path, plugins: PluginManager
) -> None:
    path = write(tmp_path, '[providers.claude]\ntype = "anthropic"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins=plugins, environ={})
    error = info.value
    assert error.key == "providers.claude.type"
    text = str(error)
    assert "'anthropic'" in text
    assert "install" in text
    assert "tollway[anthropic]" in text
    assert "dummy" in text  # what is available instead


def test_provider_section_must_be_a_table(plugins: PluginManager) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data={"providers": {"dummy": "yes"}}, plugins=plugins, environ={})
    assert info.value.key == "providers.dummy"


def test_alias_without_provider_is_rejected(tmp_path: Path, plugins: PluginManager) -> None:
    path = write(tmp_path, '[aliases]\nfast = "gpt-4o-mini"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins=plugins, environ={})
    assert info.value.key == "aliases.fast"
    assert info.value.file == str(path)
    assert "PROVIDER/MODEL" in str(info.value)


def test_bad_logging_level_is_reported_at_its_key(plugins: PluginManager) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data={"logging": {"level": "verbose"}}, plugins=plugins, environ={})
    assert info.value.key == "logging"
    assert "'verbose'" in str(info.value)
    assert "expected None" not in str(info.value)


def test_empty_config_has_defaults(plugins: PluginManager) -> None:
    config = load_config(plugins=plugins, environ={})
    assert config.providers == {}
    assert config.default_model is None
    assert config.logging.level == "warning"


def test_a_string_where_a_list_of_models_belongs_names_the_key() -> None:
    from tollway.errors import ConfigError
    from tollway.plugins import PluginManager

    with pytest.raises(ConfigError) as info:
        load_config(data={"fallbacks": {"a/b": "openai/x"}}, plugins=PluginManager(), environ={})
    assert "fallbacks" in str(info.value)
    assert "expected a list of strings" in str(info.value)


def test_directory_variables_are_not_settings() -> None:
    from tollway.plugins import PluginManager

    environ = {"TOLLWAY_DATA_DIR": "/tmp/x", "TOLLWAY_CACHE_DIR": "/tmp/y"}
    config = load_config(data={}, plugins=PluginManager(), environ=environ)
    assert config.default_model is None
