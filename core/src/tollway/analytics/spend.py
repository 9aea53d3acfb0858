"""Spend by any dimension over time: the building block of every other analysis.

Everything here asks the store for sums (:meth:`UsageStore.query`), never for records, so it is
as fast as the store's grouped query. Times are UTC; a window is half-open, ``[since, until)``.
Money stays ``Decimal`` throughout.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from tollway.usage.records import BUCKETS, UsageQuery, UsageRow
from tollway.usage.store import UsageStore, bucket_start

_ZERO = Decimal(0)
_NANO = Decimal("1e-9")
_DAY = dt.timedelta(days=1)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def nano(amount: Decimal) -> Decimal:
    """``amount`` rounded (half-even) to the nano-unit the stores keep money in: derived
    figures (rates, shares, savings) are exact to the store's own precision, not to 28 digits."""
    return amount.quantize(_NANO)


def utc(when: dt.datetime) -> dt.datetime:
    """``when`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """A point in time from a command line: ``30d``, ``12h``, ``2w``, ``90m`` (that long before
    ``now``), ``today``, ``now``, or an ISO 8601 date or datetime (UTC unless it says otherwise).
    """
    now = utc(now or dt.datetime.now(dt.UTC))
    value = text.strip()
    lowered = value.lower()
    if lowered == "now":
        return now
    if lowered == "today":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    match = _DURATION.match(value)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
        return now - dt.timedelta(seconds=seconds)
    try:
        return utc(dt.datetime.fromisoformat(value))
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time; use a duration before now (30d, 12h, 2w, 90m), "
            "'today', 'now', or an ISO date such as 2025-06-01 or 2025-06-01T12:00"
        ) from None


@attrs.frozen(slots=True)
class Window:
    """A half-open UTC time range ``[since, until)``."""

    since: dt.datetime = attrs.field(converter=utc)
    until: dt.datetime = attrs.field(converter=utc)

    def __attrs_post_init__(self) -> None:
        if self.until <= self.since:
            raise ValueError(
                f"the window ends ({self.until.isoformat()}) before it starts "
                f"({self.since.isoformat()}); give --since earlier than --until"
            )

    @property
    def days(self) -> Decimal:
        """The window's length in days, exactly."""
        span = self.until - self.since
        micros = (span.days * 86400 + span.seconds) * 1_000_000 + span.microseconds
        return Decimal(micros) / Decimal(86_400_000_000)

    def previous(self) -> Window:
        """The window of the same length just before this one."""
        return Window(self.since - (self.until - self.since), self.since)

    def query(
        self,
        group_by: Sequence[str] = (),
        filters: Mapping[str, str] | None = None,
    ) -> UsageQuery:
        return UsageQuery(
            since=self.since,
            until=self.until,
            filters=dict(filters or {}),
            group_by=tuple(group_by),
        )


@attrs.frozen(slots=True)
class Share:
    """One value of a dimension and its part of the spend."""

    value: str
    calls: int
    cost: Decimal
    share: Decimal  # of the total cost, 0..1 (0 when the total is 0)
    saved: Decimal = _ZERO


@attrs.frozen(slots=True)
class Totals:
    calls: int = 0
    cost: Decimal = _ZERO
    saved: Decimal = _ZERO
    cached_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    currency: str = "USD"


async def spend(
    store: UsageStore,
    window: Window,
    by: Sequence[str] = (),
    *,
    bucket: str | None = None,
    filters: Mapping[str, str] | None = None,
) -> list[UsageRow]:
    """Sums grouped by the dimensions ``by`` (``model``, ``team``, ``tag:project``, ...) and,
    with ``bucket`` (hour, day, week, month), by time as well; the bucket is the group's
    ``"hour"``/``"day"``/... key, the ISO start of the bucket."""
    group_by = tuple(by)
    if bucket is not None:
        if bucket not in BUCKETS:
            raise ValueError(
                f"unknown time bucket {bucket!r}; use one of {', '.join(sorted(BUCKETS))}"
            )
        group_by = (bucket, *group_by)
    return await store.query(window.query(group_by, filters))


async def totals(
    store: UsageStore, window: Window, filters: Mapping[str, str] | None = None
) -> Totals:
    rows = await store.query(window.query((), filters))
    if not rows:
        return Totals()
    row = rows[0]
    return Totals(
        row.calls,
        row.cost,
        row.saved,
        row.cached_calls,
        row.input_tokens,
        row.output_tokens,
        row.currency,
    )


def shares(rows: Sequence[UsageRow], dimension: str, n: int | None = None) -> list[Share]:
    """Rows grouped by ``dimension`` as shares of their total, largest cost first; with ``n``,
    the top ``n`` and one ``"(other)"`` share for the rest. A missing value is ``"(none)"``."""
    merged: dict[str, list[Any]] = {}
    for row in rows:
        raw = row.group.get(dimension)
        key = "(none)" if raw is None else str(raw)
        entry = merged.setdefault(key, [0, _ZERO, _ZERO])
        entry[0] += row.calls
        entry[1] += row.cost
        entry[2] += row.saved
    total = sum((e[1] for e in merged.values()), _ZERO)
    ordered = sorted(merged.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))

    def share(name: str, calls: int, cost: Decimal, saved: Decimal) -> Share:
        return Share(name, calls, cost, nano(cost / total) if total else _ZERO, saved)

    out = [share(k, *v) for k, v in ordered]
    if n is not None and len(out) > n:
        rest = out[n:]
        out = out[:n]
        out.append(
            share(
                "(other)",
                sum(s.calls for s in rest),
                sum((s.cost for s in rest), _ZERO),
                sum((s.saved for s in rest), _ZERO),
            )
        )
    return out


async def top(
    store: UsageStore,
    window: Window,
    dimension: str,
    n: int = 10,
    *,
    filters: Mapping[str, str] | None = None,
) -> list[Share]:
    """The ``n`` values of ``dimension`` that cost most in the window, with their shares."""
    return shares(await spend(store, window, (dimension,), filters=filters), dimension, n)


def bucket_starts(window: Window, bucket: str) -> list[dt.datetime]:
    """The start of every ``bucket`` (hour, day, week, month) the window touches, in order."""
    out = []
    current = bucket_start(window.since, bucket)
    while current < window.until:
        out.append(current)
        current = _next_bucket(current, bucket)
    return out


def _next_bucket(start: dt.datetime, bucket: str) -> dt.datetime:
    if bucket == "hour":
        return start + dt.timedelta(hours=1)
    if bucket == "day":
        return start + _DAY
    if bucket == "week":
        return start + 7 * _DAY
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def series(
    rows: Sequence[UsageRow],
    window: Window,
    bucket: str,
    dimension: str | None = None,
) -> dict[str, dict[str, Decimal]]:
    """Rows grouped by ``bucket`` (and ``dimension``) as a dense table: every bucket of the
    window (ISO start) -> value of ``dimension`` (``"total"`` without one) -> cost, with the
    buckets that had no spend present at zero."""
    table: dict[str, dict[str, Decimal]] = {
        start.isoformat(): {} for start in bucket_starts(window, bucket)
    }
    for row in rows:
        key = str(row.group[bucket])
        name = "total" if dimension is None else _label(row.group.get(dimension))
        cell = table.setdefault(key, {})
        cell[name] = cell.get(name, _ZERO) + row.cost
    return dict(sorted(table.items()))


def _label(value: Any) -> str:
    return "(none)" if value is None else str(value)
