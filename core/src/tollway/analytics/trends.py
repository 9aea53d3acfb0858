"""Trends: how spend changed against the previous period, and which way it is heading.

Two figures, both in ``Decimal``:

- *Period over period*: the window's spend against the window of the same length just before
  it (absolute change, and the change as a fraction of the previous spend; none when the
  previous spend was zero).
- *Slope*: the least-squares line through the daily spend of the window's complete UTC days
  (the partial first and last days would bend it), in money per day. A positive slope means
  spend is growing by that much each day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal

import attrs

from tollway.analytics.spend import Window, nano, series, spend, totals
from tollway.usage.store import UsageStore

_ZERO = Decimal(0)


@attrs.frozen(slots=True)
class Trend:
    current: Decimal
    previous: Decimal
    change: Decimal
    change_ratio: Decimal | None  # change / previous; None when previous is 0
    slope_per_day: Decimal  # least-squares, over the complete days
    intercept: Decimal  # the fitted spend on the first complete day
    days: int  # complete days the slope was fitted over


def least_squares(values: Sequence[Decimal]) -> tuple[Decimal, Decimal]:
    """Slope and intercept of the line through ``(i, values[i])`` that minimises the squared
    error. Fewer than two points: slope 0, intercept the one value (or 0)."""
    n = len(values)
    if n == 0:
        return _ZERO, _ZERO
    if n == 1:
        return _ZERO, values[0]
    count = Decimal(n)
    mean_x = Decimal(n - 1) / 2
    mean_y = sum(values, _ZERO) / count
    covariance = sum(((Decimal(i) - mean_x) * (y - mean_y) for i, y in enumerate(values)), _ZERO)
    variance = sum(((Decimal(i) - mean_x) ** 2 for i in range(n)), _ZERO)
    slope = covariance / variance
    return nano(slope), nano(mean_y - slope * mean_x)


def period_change(current: Decimal, previous: Decimal) -> tuple[Decimal, Decimal | None]:
    """The change from ``previous`` to ``current``, absolute and as a fraction of ``previous``."""
    change = current - previous
    return change, nano(change / previous) if previous else None


def complete_days(daily: Mapping[str, Decimal], window: Window) -> list[Decimal]:
    """The values of the days (ISO start -> cost) that lie wholly inside the window."""
    out = []
    for start, cost in daily.items():
        begin = dt.datetime.fromisoformat(start)
        if begin >= window.since and begin + dt.timedelta(days=1) <= window.until:
            out.append(cost)
    return out


async def trend(
    store: UsageStore, window: Window, *, filters: Mapping[str, str] | None = None
) -> Trend:
    current = await totals(store, window, filters)
    previous = await totals(store, window.previous(), filters)
    rows = await spend(store, window, bucket="day", filters=filters)
    daily = {day: cells.get("total", _ZERO) for day, cells in series(rows, window, "day").items()}
    return trend_from(current.cost, previous.cost, complete_days(daily, window))


def trend_from(current: Decimal, previous: Decimal, daily: Sequence[Decimal]) -> Trend:
    """The trend from the two periods' totals and the complete days' spend, oldest first."""
    change, ratio = period_change(current, previous)
    slope, intercept = least_squares(daily)
    return Trend(current, previous, change, ratio, slope, intercept, len(daily))
