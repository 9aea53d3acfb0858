"""The report's charts, drawn with matplotlib's object API (no pyplot, no global state).

Each function takes a :class:`tollway.analytics.report.Report` and returns a ``Figure``; the
HTML renderer saves them as SVG (or PNG), the PDF renderer puts each on a page. Money is
turned into floats here only to be drawn; every figure printed as text comes from the
report's ``Decimal`` values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter

from tollway.analytics.report import Report
from tollway.analytics.spend import Share
from tollway.analytics.summary import format_money

# A landscape A4 page, and the size of a chart inside an HTML page.
PAGE = (11.69, 8.27)
CHART = (10.0, 4.2)
PALETTE = (
    "#4269d0",
    "#efb118",
    "#ff725c",
    "#6cc5b0",
    "#3ca951",
    "#ff8ab7",
    "#a463f2",
    "#97bbf5",
    "#9c6b4e",
    "#9498a0",
)
OTHER = "#bab0ac"
# Text is text: "$" in money or in a team's name is not the start of a formula.
PLAIN_TEXT = {"text.parse_math": False, "svg.fonttype": "none"}
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


def color(index: int, name: str = "") -> str:
    return OTHER if name in ("(other)", "(none)") else PALETTE[index % len(PALETTE)]


class _MoneyFormatter(Formatter):
    """Axis ticks in money, with as many decimals as the axis's span needs."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self.symbol = _SYMBOLS.get(currency)

    def __call__(self, x: float, pos: int | None = None) -> str:
        low, high = self.axis.get_view_interval() if self.axis is not None else (0.0, x)
        span = abs(high - low)
        decimals = 0 if span >= 20 else 2 if span >= 0.2 else 4
        number = f"{x:,.{decimals}f}"
        return f"{self.symbol}{number}" if self.symbol else f"{number} {self.currency}"


def _money_axis(report: Report) -> Formatter:
    return _MoneyFormatter(report.currency)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def daily_by_model(report: Report, size: tuple[float, float] = CHART) -> Figure:
    """Spend per day, one stacked bar per day, one colour per model."""
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Spend per day, by model", loc="left", fontweight="bold")
    days = list(report.daily_by_model)
    names = report.models_in_chart()
    if not days or not names:
        _empty(ax, "No spend in this period")
        return fig
    starts = [dt.datetime.fromisoformat(d) + dt.timedelta(hours=12) for d in days]
    bottom = [0.0] * len(days)
    for index, name in enumerate(names):
        values = [float(report.daily_by_model[d].get(name, Decimal(0))) for d in days]
        ax.bar(starts, values, width=0.8, bottom=bottom, label=name, color=color(index, name))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.yaxis.set_major_formatter(_money_axis(report))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", frameon=False, loc="upper left", ncols=min(len(names), 4))
    return fig


def breakdown(
    report: Report, dimension: str, title: str, size: tuple[float, float] = CHART
) -> Figure:
    """Horizontal bars: spend by each value of ``dimension``, the largest at the top."""
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    draw_breakdown(ax, report, report.breakdowns.get(dimension, ()), title)
    return fig


def draw_breakdown(ax: Axes, report: Report, shares: Sequence[Share], title: str) -> None:
    ax.set_title(title, loc="left", fontweight="bold")
    if not shares:
        _empty(ax, "No spend in this period")
        return
    items = list(reversed(shares))
    labels = [s.value for s in items]
    values = [float(s.cost) for s in items]
    colors = [color(0, s.value) for s in items]
    bars = ax.barh(labels, values, color=colors)
    texts = [f"{format_money(s.cost, report.currency)}  {s.share:.0%}" for s in items]
    ax.bar_label(bars, texts, padding=3, fontsize="small")
    ax.xaxis.set_major_formatter(_money_axis(report))
    ax.margins(x=0.25)
    ax.spines[["top", "right"]].set_visible(False)


def team_and_user(report: Report, size: tuple[float, float] = PAGE) -> Figure:
    """Spend by team and by user, side by side (a page of the PDF)."""
    fig = Figure(figsize=size, layout="constrained")
    left, right = fig.subplots(1, 2)
    draw_breakdown(left, report, report.breakdowns.get("team", ()), "Spend by team")
    draw_breakdown(right, report, report.breakdowns.get("user", ()), "Spend by user")
    return fig


def forecast(report: Report, size: tuple[float, float] = CHART) -> Figure:
    """The month's cumulative spend so far, and the projection to month end with its range."""
    f = report.forecast
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()

    def money(amount: Decimal) -> str:
        return format_money(amount, report.currency)

    ax.set_title(
        f"{f.month_start:%B %Y}: {money(f.spent)} so far, forecast {money(f.projected)} "
        f"({money(f.low)} to {money(f.high)})",
        loc="left",
        fontweight="bold",
    )
    xs = [f.month_start]
    ys = [0.0]
    running = Decimal(0)
    for day, cost in f.month_to_date.items():
        running += cost
        xs.append(min(dt.datetime.fromisoformat(day) + dt.timedelta(days=1), f.as_of))
        ys.append(float(running))
    ax.plot(xs, ys, color=PALETTE[0], linewidth=2, label="spent", marker="o", markersize=3)
    ends = [f.as_of, f.month_end]
    ax.plot(
        ends,
        [float(f.spent), float(f.projected)],
        color=PALETTE[2],
        linewidth=2,
        linestyle="--",
        label="forecast",
    )
    ax.fill_between(
        ends,
        [float(f.spent), float(f.low)],
        [float(f.spent), float(f.high)],
        color=PALETTE[2],
        alpha=0.15,
        label="95% range",
    )
    ax.annotate(
        money(f.projected),
        (f.month_end, float(f.projected)),
        textcoords="offset points",
        xytext=(-4, 6),
        ha="right",
        fontsize="small",
    )
    ax.set_xlim(f.month_start, f.month_end)
    ax.set_ylim(bottom=0)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.yaxis.set_major_formatter(_money_axis(report))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", frameon=False, loc="upper left")
    return fig
