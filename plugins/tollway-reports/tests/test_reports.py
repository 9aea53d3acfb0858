"""tollway-reports: registration without matplotlib, PDF pages, self-contained HTML with the
charts and figures, and `tollway report` writing both."""

from __future__ import annotations

import base64
import datetime as dt
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

import tollway_reports
from tollway import hookimpl
from tollway.analytics.report import Report, build_report, renderer_for
from tollway.analytics.spend import Window
from tollway.analytics.summary import format_money
from tollway.cli import main
from tollway.plugins import build_plugin_manager
from tollway.types import Cost, Usage
from tollway.usage.records import UsageRecord
from tollway.usage.store import MemoryUsageStore
from tollway_reports.html import HtmlRenderer
from tollway_reports.pdf import PdfRenderer

D = Decimal
UTC = dt.UTC
END = dt.datetime(2025, 6, 21, tzinfo=UTC)
WINDOW = Window(dt.datetime(2025, 6, 7, tzinfo=UTC), END)
TEAMS = ("research", "support", "growth")
MODELS = ("anthropic/claude-sonnet-4", "openai/gpt-4.1", "openai/gpt-4o-mini")


def traffic(users: int = 3) -> list[UsageRecord]:
    out = []
    for day in range(1, 21):
        for i in range(12):
            model = MODELS[i % 3]
            out.append(
                UsageRecord(
                    id=f"{day}-{i}",
                    timestamp=dt.datetime(2025, 6, day, i * 2, tzinfo=UTC).timestamp(),
                    provider=model.split("/")[0],
                    model=model.split("/")[1],
                    usage=Usage(3000, 200),
                    cost=Cost(input=D(day) / 10 + D(i % 3), output=D("0.25")),
                    team=TEAMS[i % 3],
                    user=f"u-{(day * 12 + i) % users}",
                    session=f"s{i % 4}-{day}",
                    prompt_hash=f"p{i % 5}",
                    stream=i % 2 == 0,
                )
            )
    return out


async def report_of(records: list[UsageRecord], top: int = 10) -> Report:
    store = MemoryUsageStore()
    await store.write(records)
    return await build_report(store, WINDOW, top=top, now=END)


def pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", data))


def test_importing_the_plugin_does_not_import_matplotlib() -> None:
    code = "import sys, tollway_reports; assert 'matplotlib' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_renderers_are_registered_as_report_exporters() -> None:
    plugins = build_plugin_manager([tollway_reports], load_entrypoints=False)
    exporters = plugins.registrations("exporters")
    assert {"report-html", "report-pdf"} <= set(exporters)
    assert isinstance(renderer_for("pdf", plugins), PdfRenderer)
    html = renderer_for("html", plugins, {"charts": "png"})
    assert isinstance(html, HtmlRenderer)
    assert html.charts == "png"


async def test_pdf_has_its_pages() -> None:
    report = await report_of(traffic())
    data = PdfRenderer().render(report)
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    # Summary, daily spend, team and user, forecast, recommendations, breakdowns.
    assert pdf_pages(data) == 6


async def test_a_long_pdf_continues_its_tables_on_more_pages() -> None:
    report = await report_of(traffic(users=45), top=45)
    data = PdfRenderer().render(report)
    expected = len(list(PdfRenderer().pages(report)))
    assert expected > 6
    assert pdf_pages(data) == expected


async def test_html_is_self_contained_with_charts_and_figures() -> None:
    report = await report_of(traffic())
    page = HtmlRenderer().render(report).decode()
    assert page.startswith("<!doctype html>")
    for chart in ("daily", "team", "user", "forecast"):
        match = re.search(rf'<figure class="chart" id="chart-{chart}"><svg.*?</svg>', page, re.S)
        assert match, chart
    # Chart text stays text: the models and teams are named inside the SVGs.
    daily_svg = re.search(r'id="chart-daily">(.*?)</figure>', page, re.S)
    assert daily_svg
    assert "claude-sonnet-4" in daily_svg.group(1)
    team_svg = re.search(r'id="chart-team">(.*?)</figure>', page, re.S)
    assert team_svg
    assert "research" in team_svg.group(1)
    money = format_money(report.totals.cost)
    assert f'id="kpi-spent"><b>{money}</b>' in page
    assert format_money(report.forecast.projected) in page
    for r in report.recommendations:
        assert r.title in page
    for line in report.summary.lines():
        assert line.replace("&", "&amp;") in page
    # Nothing to fetch: no script, no stylesheet or image from elsewhere.
    assert "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


async def test_html_with_png_charts() -> None:
    report = await report_of(traffic())
    page = HtmlRenderer(charts="png").render(report).decode()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    with pytest.raises(ValueError, match="svg"):
        HtmlRenderer(charts="gif")


async def test_an_empty_period_still_renders() -> None:
    report = await report_of([])
    assert "No spend in this period" in HtmlRenderer().render(report).decode()
    assert pdf_pages(PdfRenderer().render(report)) == 6


def test_tollway_report_writes_pdf_and_html(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import asyncio

    import tollway.plugins

    store = MemoryUsageStore()
    asyncio.run(store.write(traffic()))

    class StorePlugin:
        @hookimpl
        def tollway_register_usage_stores(self, register):  # type: ignore[no-untyped-def]
            register("fixture", lambda config: store)

    real = tollway.plugins.build_plugin_manager
    monkeypatch.setattr(
        tollway.plugins,
        "build_plugin_manager",
        lambda plugins=(), **_: real([StorePlugin(), tollway_reports], load_entrypoints=False),
    )
    monkeypatch.delenv("TOLLWAY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tollway.toml").write_text('[usage]\nstore = "fixture"\n')
    runner = CliRunner()
    args = ["report", "--since", "2025-06-07", "--until", "2025-06-21"]
    pdf = runner.invoke(main, [*args, "-o", "spend.pdf"])
    assert pdf.exit_code == 0, pdf.output
    data = (tmp_path / "spend.pdf").read_bytes()
    assert data.startswith(b"%PDF-")
    assert pdf_pages(data) == 6
    html = runner.invoke(main, [*args, "--format", "html"])
    assert html.exit_code == 0, html.output
    assert html.stdout.startswith("<!doctype html>")
    assert 'id="chart-forecast"' in html.stdout
