"""The report model, its CSV and JSON renderings (parsed back), the renderer lookup, and
`tollway report` end to end with a store that a test plugin registers."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from tollway import hookimpl
from tollway.analytics.report import build_report, renderer_for
from tollway.analytics.spend import Window
from tollway.cli import main
from tollway.errors import PluginError
from tollway.plugins import build_plugin_manager
from tollway.types import Cost, Usage
from tollway.usage.records import UsageRecord
from tollway.usage.store import MemoryUsageStore

D = Decimal
UTC = dt.UTC
END = dt.datetime(2025, 6, 21, tzinfo=UTC)
WINDOW = Window(dt.datetime(2025, 6, 11, tzinfo=UTC), END)

MODELS = ("openai/gpt-4.1", "anthropic/claude-sonnet-4", "openai/gpt-4o-mini")
TEAMS = ("research", "support", None)


def traffic() -> list[UsageRecord]:
    """June 1-20: each day, nine calls (three models x three teams) at known prices, plus a
    repeated prompt and one cache hit; the day's spend grows by $0.09 each day."""
    out = []
    for day in range(1, 21):
        for m, model in enumerate(MODELS):
            for t, team in enumerate(TEAMS):
                cost = D(day) / 100 + D(m) + D(t) / 10
                out.append(
                    UsageRecord(
                        id=f"{day}-{m}-{t}",
                        timestamp=dt.datetime(2025, 6, day, 9 + t, tzinfo=UTC).timestamp(),
                        provider=model.split("/")[0],
                        model=model.split("/")[1],
                        usage=Usage(1000, 100),
                        cost=Cost(input=cost),
                        team=team,
                        user=f"u-{t}",
                        stream=True,
                        prompt_hash="repeat" if (m, t) == (0, 0) else f"h{day}{m}{t}",
                    )
                )
        out.append(
            UsageRecord(
                id=f"{day}-hit",
                timestamp=dt.datetime(2025, 6, day, 12, tzinfo=UTC).timestamp(),
                provider="openai",
                model="gpt-4.1",
                usage=Usage(1000, 100),
                cost=Cost(),
                cached=True,
                saved=D("0.5"),
                user="u-0",
            )
        )
    return out


def day_cost(day: int) -> Decimal:
    return sum(D(day) / 100 + D(m) + D(t) / 10 for m in range(3) for t in range(3))


async def filled_store() -> MemoryUsageStore:
    store = MemoryUsageStore()
    await store.write(traffic())
    return store


async def test_report_model_has_the_known_figures() -> None:
    report = await build_report(await filled_store(), WINDOW, now=END)
    total = sum(day_cost(d) for d in range(11, 21))
    assert report.totals.cost == total
    assert report.totals.calls == 100
    assert report.totals.cached_calls == 10
    assert report.totals.saved == D(5)
    assert report.trend.previous == sum(day_cost(d) for d in range(1, 11))
    assert report.trend.slope_per_day == D("0.09")
    assert sum(report.daily_totals().values()) == total
    assert [s.value for s in report.breakdowns["model"]] == [
        "gpt-4o-mini",
        "claude-sonnet-4",
        "gpt-4.1",
    ]
    assert report.forecast.spent == sum(day_cost(d) for d in range(1, 21))
    # The repeated prompt: 10 calls of "repeat" in the window, 9 of them answerable by a cache.
    [repeats] = [r for r in report.recommendations if r.kind == "cache-repeats"]
    assert repeats.savings == sum(D(d) / 100 for d in range(11, 21)) * 9 / 10
    assert report.notes
    assert "pricing" in report.notes[0]
    assert report.summary.lines()[0].startswith(f"Spent ${total:,.2f} on 100 calls")


async def test_json_report_parses_back_exactly() -> None:
    report = await build_report(await filled_store(), WINDOW, now=END)
    data = json.loads(renderer_for("json").render(report))
    assert data["schema"] == 1
    assert D(data["totals"]["cost"]) == report.totals.cost
    assert data["since"] == WINDOW.since.isoformat()
    daily = data["daily_by_model"]
    assert len(daily) == 10
    assert sum(D(v) for cells in daily.values() for v in cells.values()) == report.totals.cost
    assert D(data["forecast"]["projected"]) == report.forecast.projected
    assert sum(D(s["cost"]) for s in data["breakdowns"]["team"]) == report.totals.cost
    assert {r["kind"] for r in data["recommendations"]} >= {"cache-repeats"}
    assert data["summary"] == report.summary.lines()


async def test_csv_report_parses_back_and_its_sections_add_up() -> None:
    report = await build_report(await filled_store(), WINDOW, now=END)
    rows = list(csv.DictReader(io.StringIO(renderer_for("csv").render(report).decode())))
    by = {}
    for row in rows:
        by.setdefault(row["section"], []).append(row)
    [total] = [r for r in by["summary"] if r["key"] == "total"]
    assert D(total["amount"]) == report.totals.cost
    assert int(total["calls"]) == 100
    assert sum(D(r["amount"]) for r in by["daily"]) == report.totals.cost
    for dim in ("model", "team", "user", "provider"):
        assert sum(D(r["amount"]) for r in by[f"by_{dim}"]) == report.totals.cost
    assert {r["key"] for r in by["forecast"]} == {"spent", "daily_rate", "projected", "low", "high"}
    assert by["recommendation"][0]["key"] == report.recommendations[0].kind


def test_a_missing_renderer_says_what_to_install() -> None:
    plugins = build_plugin_manager(load_entrypoints=False)
    with pytest.raises(PluginError, match=r'pip install "tollway\[reports\]"'):
        renderer_for("pdf", plugins)
    with pytest.raises(PluginError, match="report-xlsx"):
        renderer_for("xlsx", plugins)


def test_a_plugin_renderer_is_found_by_its_report_name() -> None:
    class Upper:
        media_type = "text/plain"
        suffix = ".txt"

        def __init__(self, options: dict[str, object]) -> None:
            self.options = options

        def render(self, report: object) -> bytes:
            return b"TEXT"

    class Plugin:
        @hookimpl
        def tollway_register_exporters(self, register):  # type: ignore[no-untyped-def]
            register("report-txt", Upper)

    plugins = build_plugin_manager([Plugin()], load_entrypoints=False)
    renderer = renderer_for("txt", plugins, {"x": 1})
    assert isinstance(renderer, Upper)
    assert renderer.options == {"x": 1}


# -- the command --------------------------------------------------------------------------


class StorePlugin:
    """Registers a usage store called "fixture" that serves the test's traffic."""

    def __init__(self, store: MemoryUsageStore) -> None:
        self.store = store
        self.configs: list[object] = []

    @hookimpl
    def tollway_register_usage_stores(self, register):  # type: ignore[no-untyped-def]
        def factory(config: object) -> MemoryUsageStore:
            self.configs.append(config)
            return self.store

        register("fixture", factory)


@pytest.fixture
async def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[CliRunner, StorePlugin]:
    import tollway.plugins

    plugin = StorePlugin(await filled_store())
    real = tollway.plugins.build_plugin_manager
    monkeypatch.setattr(
        tollway.plugins,
        "build_plugin_manager",
        lambda plugins=(), **_: real([plugin], load_entrypoints=False),
    )
    monkeypatch.delenv("TOLLWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tollway.toml").write_text('[usage]\nstore = "fixture"\n')
    return CliRunner(), plugin


ARGS = ["report", "--since", "2025-06-11", "--until", "2025-06-21"]


def test_cli_report_as_json(cli: tuple[CliRunner, StorePlugin]) -> None:
    runner, plugin = cli
    result = runner.invoke(main, ARGS)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert D(data["totals"]["cost"]) == sum(day_cost(d) for d in range(11, 21))
    assert plugin.configs[0].store == "fixture"  # type: ignore[attr-defined]


def test_cli_report_to_a_csv_file_with_filters(
    cli: tuple[CliRunner, StorePlugin], tmp_path: Path
) -> None:
    runner, _ = cli
    out = tmp_path / "june.csv"
    result = runner.invoke(
        main, [*ARGS, "-o", str(out), "--filter", "team=research", "--by", "session"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    [total] = [r for r in rows if r["section"] == "summary" and r["key"] == "total"]
    assert D(total["amount"]) == sum(D(d) / 100 + D(m) for d in range(11, 21) for m in range(3))
    assert any(r["section"] == "by_session" for r in rows)


def test_cli_report_shows_progress_when_asked(cli: tuple[CliRunner, StorePlugin]) -> None:
    runner, _ = cli
    result = runner.invoke(main, [*ARGS, "--format", "csv", "--progress"])
    assert result.exit_code == 0, result.output
    assert "scanning records for prompt caching" in result.stderr
    assert "rendering csv" in result.stderr
    quiet = runner.invoke(main, [*ARGS, "--format", "csv"])
    assert quiet.stderr == ""


def test_cli_report_pdf_without_the_plugin(cli: tuple[CliRunner, StorePlugin]) -> None:
    runner, _ = cli
    result = runner.invoke(main, [*ARGS, "-o", "spend.pdf"])
    assert result.exit_code == 1
    assert 'pip install "tollway[reports]"' in result.stderr
    assert "Traceback" not in result.output


def test_cli_report_bad_input_is_named(cli: tuple[CliRunner, StorePlugin], tmp_path: Path) -> None:
    runner, _ = cli
    bad_time = runner.invoke(main, ["report", "--since", "yesterday-ish"])
    assert bad_time.exit_code == 2
    assert "30d, 12h" in bad_time.stderr
    bad_filter = runner.invoke(main, [*ARGS, "--filter", "colour=red"])
    assert bad_filter.exit_code == 2
    assert "cannot filter or group by 'colour'" in bad_filter.stderr
    (tmp_path / "tollway.toml").write_text('[usage]\nstore = "nowhere"\n')
    no_store = runner.invoke(main, ARGS)
    assert no_store.exit_code == 1
    assert "no usage store is called 'nowhere'" in no_store.stderr
    assert "fixture" in no_store.stderr


async def test_the_sqlite_store_gives_the_same_report(tmp_path: Path) -> None:
    from tollway.analytics.report import report_to_dict
    from tollway.usage.sqlite import SQLiteUsageStore

    records = traffic()
    # Batch-eligible and prompt-caching traffic too, so that every query kind is compared.
    records += [
        UsageRecord(
            id=f"night-{i}",
            timestamp=dt.datetime(2025, 6, 15, 3, i, tzinfo=UTC).timestamp(),
            provider="anthropic",
            model="claude-sonnet-4",
            usage=Usage(2000 + 1000 * i, 50),
            cost=Cost(input=D("0.006") + D("0.003") * i),
            session="conversation",
            tags={"batch": "true"} if i == 0 else {},
        )
        for i in range(3)
    ]
    memory = MemoryUsageStore()
    await memory.write(records)
    sqlite = SQLiteUsageStore(tmp_path / "usage.db")
    try:
        await sqlite.write(records)
        from_memory = report_to_dict(await build_report(memory, WINDOW, now=END))
        from_sqlite = report_to_dict(await build_report(sqlite, WINDOW, now=END))
    finally:
        await sqlite.aclose()
    assert {r["kind"] for r in from_memory["recommendations"]} == {
        "cache-repeats",
        "batch",
        "prompt-caching",
    }
    assert from_sqlite == from_memory
