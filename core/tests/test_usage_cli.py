"""``tollway usage`` as a user runs it: a table by default, CSV and JSON on request, and errors
that say what to do."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from tollway.cli import main
from tollway.cli.usage import format_money, parse_when
from tollway.types import Cost, Usage
from tollway.usage.records import UsageRecord
from tollway.usage.sqlite import SQLiteUsageStore

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("TOLLWAY_LOAD_PLUGINS", "")
    monkeypatch.delenv("TOLLWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def write_config(tmp_path: Path, enabled: bool = True) -> Path:
    db = tmp_path / "usage.db"
    (tmp_path / "tollway.toml").write_text(
        f"[usage]\nenabled = {str(enabled).lower()}\npath = {str(db)!r}\n"
    )
    return db


def fill(db: Path) -> None:
    def rec(i: int, user: str, model: str, cost: str, days_ago: float) -> UsageRecord:
        return UsageRecord(
            id=f"r{i}",
            timestamp=(NOW - dt.timedelta(days=days_ago)).timestamp(),
            provider="openai",
            model=model,
            usage=Usage(1000, 200),
            cost=Cost(Decimal(cost)),
            user=user,
            team="research",
        )

    records = [
        rec(1, "u-1", "openai/gpt-4o", "1.25", 1),
        rec(2, "u-1", "openai/gpt-4o", "1.25", 2),
        rec(3, "u-2", "openai/gpt-4o-mini", "0.000150", 1),
        rec(4, "u-2", "openai/gpt-4o-mini", "5", 20),  # outside the default 7 days
    ]

    async def write() -> None:
        store = SQLiteUsageStore(db)
        try:
            await store.write(records)
        finally:
            await store.aclose()

    asyncio.run(write())


def test_a_table_grouped_by_user_and_model(runner: CliRunner, tmp_path: Path) -> None:
    fill(write_config(tmp_path))
    result = runner.invoke(main, ["usage", "--by", "user,model"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "user",
        "model",
        "calls",
        "input",
        "output",
        "cached",
        "cost",
        "saved",
    ]
    assert lines[1].split()[:3] == ["u-1", "openai/gpt-4o", "2"]
    assert "USD 2.5000" in lines[1]
    assert "USD 0.000150" in lines[2]
    assert lines[3].startswith("total")
    assert "3" in lines[3].split()


def test_filters_formats_and_a_longer_range(runner: CliRunner, tmp_path: Path) -> None:
    fill(write_config(tmp_path))
    result = runner.invoke(main, ["usage", "--since", "30d", "--user", "u-2", "--format", "json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["calls"] == 2
    assert row["cost"] == "5.00015"
    csv_out = runner.invoke(main, ["usage", "--by", "model", "--format", "csv"])
    assert csv_out.stdout.splitlines()[0].startswith("model,calls,input_tokens")


def test_a_missing_database_says_how_to_get_one(runner: CliRunner, tmp_path: Path) -> None:
    write_config(tmp_path, enabled=False)
    result = runner.invoke(main, ["usage"])
    assert result.exit_code == 1
    assert "no usage database at" in result.stderr
    assert "set enabled = true in [usage]" in result.stderr
    assert not (tmp_path / "usage.db").exists()


def test_a_bad_group_names_what_exists(runner: CliRunner, tmp_path: Path) -> None:
    fill(write_config(tmp_path))
    result = runner.invoke(main, ["usage", "--by", "colour"])
    assert result.exit_code == 2
    assert "cannot filter or group by 'colour'" in result.output
    bad_time = runner.invoke(main, ["usage", "--since", "last tuesday"])
    assert "neither an age" in bad_time.output


def test_times_and_money_read_well() -> None:
    now = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
    assert parse_when("7d", now) == dt.datetime(2026, 11, 15, 12, tzinfo=dt.UTC)
    assert parse_when("2026-11-01") == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert format_money(Decimal("0.0001234"), "USD") == "USD 0.000123"
    assert format_money(Decimal("1234.5"), "EUR") == "EUR 1,234.50"
