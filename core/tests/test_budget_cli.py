"""`tollway budget` on the local backend: it works, and says it cannot reach a running service."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tollway.cli import main


def write(tmp_path: Path, text: str) -> str:
    file = tmp_path / "tollway.toml"
    file.write_text(text, encoding="utf-8")
    return str(file)


def test_status_on_the_local_backend_says_to_use_redis(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        '[budgets]\nenabled = true\n[[budgets.limits]]\nscope = "team"\nmatch = "a"\namount = 5\n',
    )
    result = CliRunner().invoke(main, ["budget", "status", "-c", file, "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["backend"] == "local"
    assert status["emergency_stop"] is None
    (row,) = status["budgets"]
    assert row["budget"] == "team=a monthly"
    assert row["remaining"] == "5"
    assert 'backend = "redis"' in result.stderr


def test_trip_and_reset_work_and_warn_on_the_local_backend(tmp_path: Path) -> None:
    file = write(tmp_path, "[budgets]\nenabled = true\n")
    runner = CliRunner()
    tripped = runner.invoke(main, ["budget", "trip", "-c", file, "--reason", "drill"])
    assert tripped.exit_code == 0
    assert "emergency stop tripped: drill" in tripped.stdout
    assert "sees none of them" in tripped.stderr
    # A fresh process, fresh local counters: nothing to reset.
    reset = runner.invoke(main, ["budget", "reset", "-c", file])
    assert "was not tripped" in reset.stdout


def test_a_backend_that_is_not_installed_is_one_clear_line(tmp_path: Path) -> None:
    file = write(tmp_path, '[budgets]\nbackend = "etcd"\n')
    result = CliRunner().invoke(main, ["budget", "status", "-c", file])
    assert result.exit_code == 1
    assert "budgets.backend: no budget counters backend is called 'etcd'" in result.stderr


def test_a_wrong_limit_is_reported_with_its_key(tmp_path: Path) -> None:
    file = write(tmp_path, '[[budgets.limits]]\namount = 5\nwindow = "yearly"\n')
    result = CliRunner().invoke(main, ["budget", "status", "-c", file])
    assert result.exit_code == 1
    assert "budgets.limits[0].window: 'yearly' is not a window" in result.stderr
