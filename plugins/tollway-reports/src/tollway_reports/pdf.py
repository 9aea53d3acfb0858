"""The report as a PDF, made with matplotlib's PdfPages: no dependency beyond matplotlib.

Pages (landscape A4), in order:

1. the title and the executive summary, with the headline figures;
2. spend per day, stacked by model;
3. spend by team and by user;
4. the month-end forecast;
5. the recommendations, with the money each would save a month (more pages if long);
6. the breakdowns by each dimension (more pages if long).
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterator, Sequence
from decimal import Decimal

import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from tollway.analytics.report import Report
from tollway.analytics.summary import format_money, format_ratio
from tollway_reports import charts

# Lines of text that fit a page below its heading, and characters that fit a line.
_LINES_PER_PAGE = 38
_WRAP = 110


class PdfRenderer:
    media_type = "application/pdf"
    suffix = ".pdf"

    def render(self, report: Report) -> bytes:
        buf = io.BytesIO()
        metadata = {
            "Title": report.title,
            "Creator": "tollway-reports",
            "CreationDate": None,
        }
        with matplotlib.rc_context(charts.PLAIN_TEXT), PdfPages(buf, metadata=metadata) as pdf:
            for figure in self.pages(report):
                pdf.savefig(figure)
        return buf.getvalue()

    def pages(self, report: Report) -> Iterator[Figure]:
        yield from _text_pages(report.title, _summary_lines(report), first=True)
        yield charts.daily_by_model(report, charts.PAGE)
        yield charts.team_and_user(report, charts.PAGE)
        yield charts.forecast(report, charts.PAGE)
        yield from _text_pages("Recommendations", _recommendation_lines(report))
        yield from _text_pages("Breakdowns", _breakdown_lines(report), mono=True)


def _money(report: Report, amount: Decimal) -> str:
    return format_money(amount, report.currency)


def _summary_lines(report: Report) -> list[str]:
    totals = report.totals
    lines = [
        f"{report.window.since:%Y-%m-%d %H:%M} to {report.window.until:%Y-%m-%d %H:%M} UTC"
        + (
            f"   filters: {', '.join(f'{k}={v}' for k, v in report.filters.items())}"
            if report.filters
            else ""
        ),
        "",
        f"Spent: {_money(report, totals.cost)} on {totals.calls:,} calls   "
        f"Change: {format_ratio(report.trend.change_ratio)}   "
        f"Forecast: {_money(report, report.forecast.projected)}   "
        f"Savings: {_money(report, report.summary.savings_per_month)} a month",
        "",
    ]
    for line in report.summary.lines():
        lines += textwrap.wrap(line, _WRAP, initial_indent="- ", subsequent_indent="  ")
    if report.notes:
        lines.append("")
        for note in report.notes:
            lines += textwrap.wrap(note, _WRAP, initial_indent="Note: ", subsequent_indent="  ")
    lines += ["", f"Generated {report.generated_at:%Y-%m-%d %H:%M} UTC by tollway."]
    return lines


def _recommendation_lines(report: Report) -> list[str]:
    if not report.recommendations:
        return ["No recommendation: nothing in this period would have cost less."]
    lines = []
    for index, r in enumerate(report.recommendations, 1):
        lines.append(
            f"{index}. {r.title}: saves {_money(report, r.savings_per_month)} a month "
            f"({r.calls:,} calls costing {_money(report, r.cost)})"
        )
        lines += textwrap.wrap(r.detail, _WRAP, initial_indent="   ", subsequent_indent="   ")
        for item in r.items[:5]:
            text = ", ".join(f"{k}: {v}" for k, v in item.items())
            lines += textwrap.wrap(
                text, _WRAP, initial_indent="     - ", subsequent_indent="       "
            )
        lines.append("")
    return lines


def _breakdown_lines(report: Report) -> list[str]:
    lines = []
    for dimension, shares in report.breakdowns.items():
        lines.append(f"By {dimension}")
        lines.append(f"  {'value':<44} {'calls':>10} {'cost':>16} {'share':>8}")
        for s in shares:
            value = s.value if len(s.value) <= 44 else s.value[:41] + "..."
            lines.append(
                f"  {value:<44} {s.calls:>10,} {_money(report, s.cost):>16} {s.share:>8.1%}"
            )
        lines.append("")
    return lines


def _chunks(lines: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, max(len(lines), 1), size):
        yield lines[start : start + size]


def _text_pages(
    title: str,
    lines: Sequence[str],
    *,
    mono: bool = False,
    first: bool = False,
) -> Iterator[Figure]:
    for number, chunk in enumerate(_chunks(lines, _LINES_PER_PAGE)):
        fig = Figure(figsize=charts.PAGE)
        heading = title if number == 0 else f"{title} (continued)"
        fig.text(0.06, 0.93, heading, fontsize=22 if first else 18, fontweight="bold")
        top = 0.86
        for index, line in enumerate(chunk):
            fig.text(
                0.06,
                top - index * 0.021,
                line,
                fontsize=10,
                family="monospace" if mono else "sans-serif",
                va="top",
            )
        yield fig
