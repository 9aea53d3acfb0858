"""The examples run, and the example config is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tollway.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_quickstart_runs_offline() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = result.stdout
    assert "answer:" in out
    assert "again:   cached=True, upstream calls so far=1" in out
    assert "retried:" in out
    assert "cache hits 1" in out


def test_the_example_config_is_valid() -> None:
    result = CliRunner().invoke(main, ["config", "check", str(EXAMPLES / "tollway.toml")])
    assert result.exit_code == 0, result.output
    assert "providers.vllm: type openai" in result.stdout


@pytest.mark.slow
def test_the_local_model_example_answers() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "local_model.py"), "Say hello"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "model: llamacpp" in result.stdout
    assert " in, " in result.stdout
