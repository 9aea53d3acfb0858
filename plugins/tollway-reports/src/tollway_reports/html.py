"""The report as one self-contained HTML page: charts inline (SVG, or PNG as base64), tables,
no script, no link to anything outside the file, so it can be mailed or archived as it is."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from html import escape

import matplotlib
from matplotlib.figure import Figure

from tollway.analytics.report import Report
from tollway.analytics.spend import Share
from tollway.analytics.summary import format_money, format_ratio
from tollway_reports import charts

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;
margin:2rem auto;max-width:70rem;padding:0 1rem}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.period{color:#666;margin-top:0}
.kpis{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.kpi{background:#f5f6f8;border-radius:8px;padding:.7rem 1rem;min-width:12rem}
.kpi b{display:block;font-size:1.5rem}.kpi span{color:#666;font-size:.85rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .7rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.num,th.num{text-align:right}
figure.chart{margin:1rem 0}figure.chart svg,figure.chart img{max-width:100%;height:auto}
.detail{color:#555;font-size:.9rem}.notes{color:#8a5300}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(28rem,1fr));gap:1rem}
"""


class HtmlRenderer:
    media_type = "text/html"
    suffix = ".html"

    def __init__(self, charts: str = "svg") -> None:
        if charts not in ("svg", "png"):
            raise ValueError(f"charts must be 'svg' or 'png', not {charts!r}")
        self.charts = charts

    def render(self, report: Report) -> bytes:
        with matplotlib.rc_context(charts.PLAIN_TEXT):
            return self.page(report).encode("utf-8")

    def page(self, report: Report) -> str:
        money = _money(report)
        parts = [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(report.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{escape(report.title)}</h1>",
            f'<p class="period">{report.window.since:%Y-%m-%d %H:%M} to '
            f"{report.window.until:%Y-%m-%d %H:%M} UTC{_filters(report)} &middot; generated "
            f"{report.generated_at:%Y-%m-%d %H:%M} UTC</p>",
            self._kpis(report),
            "<h2>Summary</h2><ul>",
            *(f"<li>{escape(line)}</li>" for line in report.summary.lines()),
            "</ul>",
        ]
        if report.notes:
            parts.append(
                '<ul class="notes">'
                + "".join(f"<li>{escape(n)}</li>" for n in report.notes)
                + "</ul>"
            )
        parts += [
            "<h2>Spend per day</h2>",
            self._figure("daily", charts.daily_by_model(report)),
            '<h2>Spend by team and user</h2><div class="grid">',
            self._figure("team", charts.breakdown(report, "team", "Spend by team", (6.5, 4))),
            self._figure("user", charts.breakdown(report, "user", "Spend by user", (6.5, 4))),
            "</div>",
            "<h2>Month-end forecast</h2>",
            self._figure("forecast", charts.forecast(report)),
            _table(
                ("", "amount"),
                [
                    ("Spent so far", money(report.forecast.spent)),
                    (
                        f"Recent daily rate ({report.forecast.basis_days} days)",
                        money(report.forecast.daily_rate),
                    ),
                    ("Projected at month end", money(report.forecast.projected)),
                    ("95% range, low", money(report.forecast.low)),
                    ("95% range, high", money(report.forecast.high)),
                ],
                numeric=(1,),
            ),
            "<h2>Recommendations</h2>",
            self._recommendations(report),
            "<h2>Breakdowns</h2>",
        ]
        for dimension, shares in report.breakdowns.items():
            parts.append(f"<h3>By {escape(dimension)}</h3>")
            parts.append(_shares_table(report, shares))
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def _kpis(self, report: Report) -> str:
        money = _money(report)
        s = report.summary
        cells = [
            ("spent", money(report.totals.cost), f"{report.totals.calls:,} calls"),
            (
                "change",
                format_ratio(report.trend.change_ratio),
                f"previous period {money(report.trend.previous)}",
            ),
            (
                "forecast",
                money(report.forecast.projected),
                f"{report.forecast.month_start:%B} month end",
            ),
            ("savings", money(s.savings_per_month), "a month, if all recommendations are taken"),
        ]
        return (
            '<div class="kpis">'
            + "".join(
                f'<div class="kpi" id="kpi-{key}"><b>{escape(value)}</b>'
                f"<span>{escape(label)}</span></div>"
                for key, value, label in cells
            )
            + "</div>"
        )

    def _recommendations(self, report: Report) -> str:
        if not report.recommendations:
            return "<p>No recommendation: nothing in this period would have cost less.</p>"
        money = _money(report)
        rows = []
        for r in report.recommendations:
            items = ""
            if r.items:
                columns = list(r.items[0])
                items = _table(columns, [[item.get(c, "") for c in columns] for item in r.items])
            rows.append(
                "<tr>"
                f"<td><b>{escape(r.title)}</b>"
                f'<div class="detail">{escape(r.detail)}</div>{items}</td>'
                f'<td class="num">{r.calls:,}</td>'
                f'<td class="num">{escape(money(r.cost))}</td>'
                f'<td class="num"><b>{escape(money(r.savings_per_month))}</b></td>'
                "</tr>"
            )
        return (
            '<table id="recommendations"><tr><th>recommendation</th><th class="num">calls</th>'
            '<th class="num">their cost</th><th class="num">saves a month</th></tr>'
            + "".join(rows)
            + "</table>"
        )

    def _figure(self, name: str, fig: Figure) -> str:
        if self.charts == "png":
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
            data = base64.b64encode(buf.getvalue()).decode("ascii")
            body = f'<img alt="{escape(name)} chart" src="data:image/png;base64,{data}">'
        else:
            text = io.StringIO()
            # The salt keeps the ids of clip paths unique across the page's charts.
            with matplotlib.rc_context({"svg.hashsalt": name}):
                fig.savefig(text, format="svg", metadata={"Date": None})
            svg = text.getvalue()
            body = svg[svg.index("<svg") :]
        return f'<figure class="chart" id="chart-{escape(name)}">{body}</figure>'


def _money(report: Report) -> Callable[[Decimal], str]:
    def money(amount: Decimal) -> str:
        return format_money(amount, report.currency)

    return money


def _filters(report: Report) -> str:
    if not report.filters:
        return ""
    return " &middot; " + escape(", ".join(f"{k}={v}" for k, v in report.filters.items()))


def _table(
    header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()
) -> str:
    def cell(tag: str, index: int, value: str) -> str:
        cls = ' class="num"' if index in numeric else ""
        return f"<{tag}{cls}>{escape(str(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _shares_table(report: Report, shares: Sequence[Share]) -> str:
    money = _money(report)
    return _table(
        ("value", "calls", "cost", "share"),
        [(s.value, f"{s.calls:,}", money(s.cost), f"{s.share:.1%}") for s in shares],
        numeric=(1, 2, 3),
    )
