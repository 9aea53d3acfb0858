"""The spend report: one model built from a usage store, and the renderers that print it.

:func:`build_report` asks the store for everything a report shows (spend by model, team, user
and provider, daily spend by model, the trend, the month-end forecast, the recommendations and
the executive summary) and returns a :class:`Report`, a plain frozen value. Renderers turn a
Report into bytes; none of them touches the store.

Renderers by format
-------------------

``json`` and ``csv`` are built in (:class:`JsonRenderer`, :class:`CsvRenderer`). Any other
format ``F`` is looked up among the plugins' ``tollway_register_exporters`` registrations under
the name ``report-F``: tollway-reports registers ``report-html`` and ``report-pdf``. The
registration's factory is called with an options mapping (``{}`` unless given) and returns an
object with the :class:`Renderer` attributes: ``media_type``, ``suffix`` and
``render(report) -> bytes``. It is the exporters hook because a report is an export of the
usage records; the ``report-`` prefix keeps these apart from the exporters the pipeline feeds.
A third-party plugin adds a format (``report-xlsx``, say) the same way.

Money is ``Decimal`` in the model; JSON prints it as strings (exact, and parsed back with
``Decimal(text)``), CSV as plain decimal text. Times are UTC ISO 8601.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from tollway.analytics.forecast import Forecast, month_end_forecast
from tollway.analytics.progress import NullProgress, Progress
from tollway.analytics.recommendations import (
    Recommendation,
    RecommendationOptions,
    recommend,
)
from tollway.analytics.spend import Share, Totals, Window, series, shares, spend, totals
from tollway.analytics.summary import Summary, summarize
from tollway.analytics.trends import Trend, complete_days, trend_from
from tollway.errors import PluginError
from tollway.pricing.base import Pricer
from tollway.usage.store import UsageStore

if TYPE_CHECKING:
    from tollway.plugins import PluginManager

_ZERO = Decimal(0)
# Breakdowns every report has; more (tag:project, api_key_id...) can be asked for.
DEFAULT_DIMENSIONS: tuple[str, ...] = ("model", "team", "user", "provider")
# Series drawn per model in the daily chart; the rest are summed as "(other)".
CHART_SERIES = 6
BUILTIN_FORMATS: tuple[str, ...] = ("json", "csv")
PLUGIN_FORMATS: tuple[str, ...] = ("html", "pdf")
REPORT_SCHEMA = 1


@attrs.frozen(slots=True)
class Report:
    title: str
    generated_at: dt.datetime
    window: Window
    currency: str
    totals: Totals
    # Dimension -> the top values and their shares of spend, largest first, "(other)" last.
    breakdowns: Mapping[str, tuple[Share, ...]]
    # Day (ISO start, UTC) -> model -> cost; the top models and "(other)", every day present.
    daily_by_model: Mapping[str, Mapping[str, Decimal]]
    trend: Trend
    forecast: Forecast
    recommendations: tuple[Recommendation, ...]
    summary: Summary
    filters: Mapping[str, str] = attrs.field(factory=dict)
    # Steps that could not be done (no pricer, ...), said in the report rather than hidden.
    notes: tuple[str, ...] = ()

    def daily_totals(self) -> dict[str, Decimal]:
        return {day: sum(cells.values(), _ZERO) for day, cells in self.daily_by_model.items()}

    def models_in_chart(self) -> list[str]:
        """The series of :attr:`daily_by_model`, largest spend first, ``(other)`` last."""
        sums: dict[str, Decimal] = {}
        for cells in self.daily_by_model.values():
            for name, cost in cells.items():
                sums[name] = sums.get(name, _ZERO) + cost
        names = sorted(sums, key=lambda n: (n == "(other)", -sums[n], n))
        return names


async def build_report(
    store: UsageStore,
    window: Window,
    pricer: Pricer | None = None,
    *,
    title: str = "LLM spend report",
    filters: Mapping[str, str] | None = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    top: int = 10,
    options: RecommendationOptions | None = None,
    forecast_lookback: int = 7,
    progress: Progress | None = None,
    now: dt.datetime | None = None,
) -> Report:
    """Everything a report shows, for the window's traffic (and ``filters``)."""
    progress = progress or NullProgress()
    filters = dict(filters or {})
    dims = list(dict.fromkeys((*DEFAULT_DIMENSIONS[:3], *dimensions)))
    try:
        progress.step("summing spend")
        current = await totals(store, window, filters)
        previous = await totals(store, window.previous(), filters)
        breakdowns = {
            dim: tuple(shares(await spend(store, window, (dim,), filters=filters), dim, top))
            for dim in dims
        }
        progress.step("daily spend")
        daily_rows = await spend(store, window, ("model",), bucket="day", filters=filters)
        by_day = series(daily_rows, window, "day", "model")
        daily = _collapse(by_day, CHART_SERIES)
        day_totals = {day: sum(cells.values(), _ZERO) for day, cells in by_day.items()}
        trend = trend_from(current.cost, previous.cost, complete_days(day_totals, window))
        progress.step("forecasting the month")
        forecast = await month_end_forecast(
            store, window.until, lookback=forecast_lookback, filters=filters
        )
        notes = []
        if pricer is None:
            notes.append(
                "No pricer was available, so cheaper models of the same capability were not "
                "looked for; enable [pricing] to get them."
            )
        recommendations = await recommend(
            store, window, pricer, options, filters=filters, progress=progress
        )
    finally:
        progress.finish()
    currency = current.currency
    summary = summarize(
        window,
        current,
        trend,
        forecast,
        breakdowns["model"],
        breakdowns["team"],
        breakdowns["user"],
        recommendations,
    )
    return Report(
        title=title,
        generated_at=(now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC),
        window=window,
        currency=currency,
        totals=current,
        breakdowns=breakdowns,
        daily_by_model=daily,
        trend=trend,
        forecast=forecast,
        recommendations=tuple(recommendations),
        summary=summary,
        filters=filters,
        notes=tuple(notes),
    )


def _collapse(
    table: Mapping[str, Mapping[str, Decimal]], keep: int
) -> dict[str, dict[str, Decimal]]:
    sums: dict[str, Decimal] = {}
    for cells in table.values():
        for name, cost in cells.items():
            sums[name] = sums.get(name, _ZERO) + cost
    ranked = sorted(sums, key=lambda n: (-sums[n], n))
    kept = set(ranked if len(ranked) <= keep else ranked[: keep - 1])
    out: dict[str, dict[str, Decimal]] = {}
    for day, cells in table.items():
        row: dict[str, Decimal] = {}
        for name, cost in cells.items():
            label = name if name in kept else "(other)"
            row[label] = row.get(label, _ZERO) + cost
        out[day] = row
    return out


# -- JSON ---------------------------------------------------------------------------------


def decimal_text(value: Decimal) -> str:
    """A canonical decimal string: no exponent, no trailing zeros (``216.90`` -> ``216.9``),
    so that equal amounts print alike whichever store summed them."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if attrs.has(type(value)):
        return {a.name: _plain(getattr(value, a.name)) for a in attrs.fields(type(value))}
    return value


def report_to_dict(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data: money as decimal strings, times as ISO 8601."""
    return {
        "schema": REPORT_SCHEMA,
        "title": report.title,
        "generated_at": report.generated_at.isoformat(),
        "since": report.window.since.isoformat(),
        "until": report.window.until.isoformat(),
        "currency": report.currency,
        "filters": dict(report.filters),
        "summary": report.summary.lines(),
        "totals": _plain(report.totals),
        "trend": _plain(report.trend),
        "forecast": _plain(report.forecast),
        "breakdowns": _plain(report.breakdowns),
        "daily_by_model": _plain(report.daily_by_model),
        "recommendations": _plain(report.recommendations),
        "savings_per_month": decimal_text(report.summary.savings_per_month),
        "notes": list(report.notes),
    }


# -- CSV ----------------------------------------------------------------------------------

CSV_COLUMNS = ("section", "key", "bucket", "calls", "amount", "share", "detail")


def report_rows(report: Report) -> list[dict[str, str]]:
    """The report as one long table (see :data:`CSV_COLUMNS`): every ``amount`` is money in
    the report's currency, except the ``trend`` section's ``slope_per_day`` (money per day)."""
    rows: list[dict[str, str]] = []

    def add(section: str, key: str, amount: Decimal | None = None, **rest: Any) -> None:
        row = {column: "" for column in CSV_COLUMNS}
        row.update(section=section, key=key)
        if amount is not None:
            row["amount"] = decimal_text(amount)
        for name, value in rest.items():
            text = decimal_text(value) if isinstance(value, Decimal) else str(value)
            row[name] = "" if value is None else text
        rows.append(row)

    t = report.totals
    add("summary", "total", t.cost, calls=t.calls, detail=report.currency)
    add("summary", "previous_period", report.trend.previous)
    add("summary", "change", report.trend.change, share=report.trend.change_ratio)
    add("summary", "saved_by_cache", t.saved, calls=t.cached_calls)
    add("summary", "savings_per_month", report.summary.savings_per_month)
    for line in report.summary.lines():
        add("summary", "text", detail=line)
    f = report.forecast
    add("forecast", "spent", f.spent, bucket=f.month_start.isoformat())
    add("forecast", "daily_rate", f.daily_rate, calls=f.basis_days)
    add("forecast", "projected", f.projected, bucket=f.month_end.isoformat())
    add("forecast", "low", f.low)
    add("forecast", "high", f.high)
    add("trend", "slope_per_day", report.trend.slope_per_day, calls=report.trend.days)
    for dim, items in report.breakdowns.items():
        for s in items:
            add(f"by_{dim}", s.value, s.cost, calls=s.calls, share=s.share)
    for day, cells in report.daily_by_model.items():
        for model, cost in sorted(cells.items()):
            add("daily", model, cost, bucket=day)
    for r in report.recommendations:
        add(
            "recommendation",
            r.kind,
            r.savings_per_month,
            calls=r.calls,
            detail=f"{r.title}: {r.detail}",
        )
    for note in report.notes:
        add("note", "note", detail=note)
    return rows


# -- Renderers ----------------------------------------------------------------------------


class Renderer(Protocol):
    media_type: str
    suffix: str

    def render(self, report: Report) -> bytes: ...


class JsonRenderer:
    media_type = "application/json"
    suffix = ".json"

    def render(self, report: Report) -> bytes:
        return (json.dumps(report_to_dict(report), indent=2, ensure_ascii=False) + "\n").encode()


class CsvRenderer:
    media_type = "text/csv"
    suffix = ".csv"

    def render(self, report: Report) -> bytes:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(report_rows(report))
        return out.getvalue().encode()


def renderer_for(
    fmt: str,
    plugins: PluginManager | None = None,
    options: Mapping[str, Any] | None = None,
) -> Renderer:
    """The renderer of a format: built in (json, csv) or a plugin's ``report-FORMAT``."""
    fmt = fmt.lower()
    if fmt == "json":
        return JsonRenderer()
    if fmt == "csv":
        return CsvRenderer()
    registration = None
    if plugins is not None:
        registration = plugins.registrations("exporters").get(f"report-{fmt}")
    if registration is None:
        if fmt in PLUGIN_FORMATS:
            raise PluginError(
                f"{fmt.upper()} reports need the tollway-reports plugin, which is not "
                f'installed: pip install "tollway[reports]" (or use --format csv or json)'
            )
        known = ", ".join((*BUILTIN_FORMATS, *PLUGIN_FORMATS))
        raise PluginError(
            f"no renderer for the report format {fmt!r}; use one of {known}, or install a "
            f"plugin that registers an exporter named 'report-{fmt}'"
        )
    renderer: Renderer = registration.factory(dict(options or {}))
    return renderer
