"""The tollway command, run as a user would (through click's runner, in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tollway.cli import main


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    # Only the example plugin: no real provider, no config file from the working directory.
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "hello")
    monkeypatch.delenv("TOLLWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_chat_prints_the_answer_and_its_usage(runner: CliRunner) -> None:
    result = runner.invoke(main, ["chat", "-m", "hello/friendly", "Ada Lovelace"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Hello, Ada Lovelace!"
    assert "2 in, 3 out tokens" in result.stderr
    assert "finish: stop" in result.stderr


def test_chat_without_streaming_and_as_json(runner: CliRunner) -> None:
    plain = runner.invoke(main, ["chat", "--no-stream", "-m", "hello/friendly", "Bob"])
    assert plain.stdout.strip() == "Hello, Bob!"
    as_json = runner.invoke(main, ["chat", "--json", "-m", "hello", "Bob"])
    body = json.loads(as_json.stdout)
    assert body["message"]["content"] == "Hello, Bob!"
    assert body["usage"]["output_tokens"] == 2
    assert body["model"] == "hello/friendly"


def test_chat_reads_the_prompt_from_stdin(runner: CliRunner) -> None:
    result = runner.invoke(main, ["chat", "-m", "hello/friendly"], input="Grace\n")
    assert result.stdout.strip() == "Hello, Grace!"


def test_chat_with_an_unknown_provider_says_what_exists(runner: CliRunner) -> None:
    result = runner.invoke(main, ["chat", "-m", "nope/x", "hi"])
    assert result.exit_code == 1
    assert "no provider is called 'nope'" in result.stderr
    assert "hello" in result.stderr
    assert "Traceback" not in result.output


def test_chat_uses_the_config_file(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "tollway.toml").write_text(
        'default_model = "greeter/friendly"\n'
        '[providers.greeter]\ntype = "hello"\ngreeting = "Howdy"\n'
    )
    result = runner.invoke(main, ["chat", "partner"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Howdy, partner!"


def test_plugins_lists_names_versions_and_hooks(runner: CliRunner) -> None:
    result = runner.invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "hello  tollway-hello 0.1.0" in result.stdout
    assert "hooks: tollway_register_providers" in result.stdout
    assert "tollway.defaults  tollway 0.1.0 (built in)" in result.stdout
    data = json.loads(runner.invoke(main, ["plugins", "--json"]).stdout)
    assert data["providers"]["hello"] == "hello"
    assert data["failures"] == []


def test_config_check_accepts_a_good_file(runner: CliRunner, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('default_model = "hello/friendly"\n[providers.hello]\ngreeting = "Hi"\n')
    result = runner.invoke(main, ["config", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert f"{good}: ok" in result.stdout
    assert "providers.hello: type hello" in result.stdout


def test_config_check_names_the_file_and_the_key(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[providers.hello]\ngreeting = "Hi"\ntimeout = "soon"\n')
    result = runner.invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert str(bad) in result.stderr
    assert "providers.hello.timeout" in result.stderr
    assert "float" in result.stderr


def test_models_lists_a_providers_models(runner: CliRunner) -> None:
    result = runner.invoke(main, ["models", "hello"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "hello/friendly"


def test_chat_shows_the_cost_when_pricing_is_on(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "tollway.toml").write_text(
        "[pricing]\nenabled = true\nsources = []\n"
        '[pricing.models."hello/friendly"]\ninput_mtok = "1000000"\noutput_mtok = "2000000"\n'
    )
    result = runner.invoke(main, ["chat", "-m", "hello/friendly", "Ada"])
    assert result.exit_code == 0, result.output
    # 1 input token at $1 each, 2 output tokens at $2 each.
    assert "| USD 5 |" in result.stderr
