"""The month-end forecast: what this calendar month (UTC) will have cost when it ends.

The method, simple on purpose so that anyone can check it by hand:

1. ``spent``: the spend from the start of the month up to ``as_of``.
2. ``daily_rate``: the mean spend of the last ``lookback`` complete UTC days before ``as_of``
   (7 by default; days before the store's first call are left out, so a new deployment is not
   averaged with empty days that were never recorded).
3. ``projected = spent + daily_rate * remaining_days``, ``remaining_days`` being the exact time
   from ``as_of`` to the month's end, in days.
4. The interval treats each remaining day as an independent draw with the spread seen in the
   recent days (sample standard deviation ``s`` over ``n`` days), plus the uncertainty of the
   rate itself: ``projected +/- z * s * sqrt(R + R**2 / n)`` with ``z = 1.96`` (about 95%) and
   ``R`` the remaining days. The low end never drops below what is already spent. With fewer
   than two days to learn from, the interval is the remainder itself either way.

Without a complete day of history the rate is the month's spend so far per elapsed day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal

import attrs

from tollway.analytics.spend import Window, nano, series, spend, totals, utc
from tollway.usage.store import UsageStore

_ZERO = Decimal(0)
_DAY = dt.timedelta(days=1)
Z_95 = Decimal("1.96")


@attrs.frozen(slots=True)
class Forecast:
    as_of: dt.datetime
    month_start: dt.datetime
    month_end: dt.datetime
    spent: Decimal  # month start to as_of
    daily_rate: Decimal
    basis_days: int  # complete days the rate was learnt from
    remaining_days: Decimal
    projected: Decimal  # at month end
    low: Decimal
    high: Decimal
    # Recent daily spend the rate came from, oldest first (ISO day -> cost).
    history: Mapping[str, Decimal] = attrs.field(factory=dict)
    # Each day of the month up to as_of (ISO day -> cost), for the month's chart.
    month_to_date: Mapping[str, Decimal] = attrs.field(factory=dict)


def month_bounds(when: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The UTC start of ``when``'s calendar month and of the next one."""
    start = utc(when).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        return start, start.replace(year=start.year + 1, month=1)
    return start, start.replace(month=start.month + 1)


def _days(span: dt.timedelta) -> Decimal:
    micros = (span.days * 86400 + span.seconds) * 1_000_000 + span.microseconds
    return Decimal(micros) / Decimal(86_400_000_000)


def forecast_from(
    as_of: dt.datetime,
    spent: Decimal,
    recent: Sequence[Decimal],
    *,
    z: Decimal = Z_95,
    history: Mapping[str, Decimal] | None = None,
    month_to_date: Mapping[str, Decimal] | None = None,
) -> Forecast:
    """The forecast from the month's spend so far and the recent complete days' spend."""
    as_of = utc(as_of)
    start, end = month_bounds(as_of)
    remaining = _days(end - as_of)
    n = len(recent)
    if n:
        rate = sum(recent, _ZERO) / n
    else:
        elapsed = _days(as_of - start)
        rate = spent / elapsed if elapsed else _ZERO
    remainder = rate * remaining
    if n >= 2:
        variance = sum(((v - rate) ** 2 for v in recent), _ZERO) / (n - 1)
        half_width = z * (variance * (remaining + remaining * remaining / n)).sqrt()
    else:
        half_width = remainder
    projected = spent + remainder
    return Forecast(
        as_of=as_of,
        month_start=start,
        month_end=end,
        spent=spent,
        daily_rate=nano(rate),
        basis_days=n,
        remaining_days=remaining,
        projected=nano(projected),
        low=nano(max(spent, projected - half_width)),
        high=nano(projected + half_width),
        history=dict(history or {}),
        month_to_date=dict(month_to_date or {}),
    )


async def month_end_forecast(
    store: UsageStore,
    as_of: dt.datetime | None = None,
    *,
    lookback: int = 7,
    filters: Mapping[str, str] | None = None,
) -> Forecast:
    """The forecast for the month ``as_of`` (default: now) falls in, from the store."""
    if lookback < 1:
        raise ValueError(f"lookback is {lookback} days; it must be at least 1")
    as_of = utc(as_of or dt.datetime.now(dt.UTC))
    start, _ = month_bounds(as_of)
    spent = _ZERO
    month_to_date: dict[str, Decimal] = {}
    if as_of > start:
        so_far = Window(start, as_of)
        spent = (await totals(store, so_far, filters)).cost
        rows = await spend(store, so_far, bucket="day", filters=filters)
        for day, cells in series(rows, so_far, "day").items():
            month_to_date[day] = cells.get("total", _ZERO)
    today = as_of.replace(hour=0, minute=0, second=0, microsecond=0)
    recent_window = Window(today - lookback * _DAY, today)
    rows = await spend(store, recent_window, bucket="day", filters=filters)
    calls = {str(row.group["day"]): row.calls for row in rows}
    daily = {
        day: cells.get("total", _ZERO) for day, cells in series(rows, recent_window, "day").items()
    }
    # Leave out the days before the first recorded call: the store did not exist yet.
    days = list(daily)
    first = next((i for i, day in enumerate(days) if calls.get(day)), len(days))
    kept = {day: daily[day] for day in days[first:]}
    return forecast_from(
        as_of, spent, list(kept.values()), history=kept, month_to_date=month_to_date
    )
