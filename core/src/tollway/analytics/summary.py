"""The executive summary: the few figures a reader needs first, and the sentences that say them.

Total spend and calls, the change against the previous period of the same length, the
month-end forecast, the top spenders (models, teams, users) and the recommendations that would
save the most. Renderers (CSV, JSON, HTML, PDF) all print the same :meth:`Summary.lines`.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal

import attrs

from tollway.analytics.forecast import Forecast
from tollway.analytics.recommendations import Recommendation
from tollway.analytics.spend import Share, Totals, Window
from tollway.analytics.trends import Trend

_ZERO = Decimal(0)
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


def format_money(amount: Decimal, currency: str = "USD") -> str:
    """``$1,234.57``; amounts under one unit keep four places (``$0.0042``), so that the cost
    of small calls does not print as zero. Rounded half-even."""
    places = Decimal("0.01") if abs(amount) >= 1 or amount == 0 else Decimal("0.0001")
    text = f"{amount.quantize(places, rounding=ROUND_HALF_EVEN):,}"
    symbol = _SYMBOLS.get(currency)
    if symbol is None:
        return f"{text} {currency}"
    return f"-{symbol}{text[1:]}" if text.startswith("-") else f"{symbol}{text}"


def format_ratio(ratio: Decimal | None) -> str:
    """``+12.5%`` / ``-3.0%``; ``n/a`` when there is nothing to compare with."""
    if ratio is None:
        return "n/a"
    return f"{(ratio * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_EVEN):+}%"


@attrs.frozen(slots=True)
class Summary:
    window: Window
    totals: Totals
    trend: Trend
    forecast: Forecast
    top_models: tuple[Share, ...]
    top_teams: tuple[Share, ...]
    top_users: tuple[Share, ...]
    top_recommendations: tuple[Recommendation, ...]
    # All recommendations added up: an upper bound, as one call may count in several.
    savings_per_month: Decimal

    @property
    def currency(self) -> str:
        return self.totals.currency

    def lines(self) -> list[str]:
        """The summary as sentences, most important first."""
        money = self._money
        start = self.window.since.strftime("%Y-%m-%d %H:%M")
        end = self.window.until.strftime("%Y-%m-%d %H:%M")
        totals = self.totals
        out = [
            f"Spent {money(totals.cost)} on {totals.calls:,} calls from {start} to {end} UTC "
            f"({format_ratio(self.trend.change_ratio)} on the previous period, "
            f"{money(self.trend.previous)}).",
        ]
        if totals.cached_calls:
            out.append(
                f"The answer cache served {totals.cached_calls:,} calls and saved "
                f"{money(totals.saved)}."
            )
        f = self.forecast
        out.append(
            f"Forecast for {f.month_start.strftime('%B %Y')}: {money(f.projected)} "
            f"(95% interval {money(f.low)} to {money(f.high)}; {money(f.spent)} spent so far, "
            f"{money(f.daily_rate)} a day recently)."
        )
        if self.trend.days >= 2:
            direction = "growing" if self.trend.slope_per_day > 0 else "shrinking"
            if self.trend.slope_per_day == 0:
                direction = "flat"
            out.append(
                f"Daily spend is {direction}: {money(self.trend.slope_per_day)} a day per day "
                f"over the last {self.trend.days} complete days."
            )
        for label, shares in (
            ("model", self.top_models),
            ("team", self.top_teams),
            ("user", self.top_users),
        ):
            named = [s for s in shares if s.value not in ("(none)", "(other)")]
            if named:
                first = named[0]
                out.append(
                    f"Top {label}: {first.value}, {money(first.cost)} "
                    f"({format_ratio(first.share)[1:]} of spend)."
                )
        if self.top_recommendations:
            out.append(
                f"Recommendations could save up to {money(self.savings_per_month)} a month "
                "(each is estimated alone, and one call may count in several); the largest: "
                f"{self.top_recommendations[0].title} "
                f"({money(self.top_recommendations[0].savings_per_month)} a month)."
            )
        return out

    def _money(self, amount: Decimal) -> str:
        return format_money(amount, self.currency)


def summarize(
    window: Window,
    totals: Totals,
    trend: Trend,
    forecast: Forecast,
    models: Sequence[Share],
    teams: Sequence[Share],
    users: Sequence[Share],
    recommendations: Sequence[Recommendation],
    *,
    top: int = 3,
) -> Summary:
    return Summary(
        window=window,
        totals=totals,
        trend=trend,
        forecast=forecast,
        top_models=tuple(models[:top]),
        top_teams=tuple(teams[:top]),
        top_users=tuple(users[:top]),
        top_recommendations=tuple(recommendations[:top]),
        savings_per_month=sum((r.savings_per_month for r in recommendations), _ZERO),
    )
