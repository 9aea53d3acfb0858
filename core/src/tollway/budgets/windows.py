"""Budget windows: which stretch of time a spend counts in, and when that stretch ends.

Calendar windows (daily, weekly from Monday, monthly) start at midnight in a time zone (UTC
unless configured), and each has an id (``d2025-01-31``, ``w2025-01-27``, ``m2025-01``) that is
part of its counter's key, so a new window starts from zero without anyone resetting anything.
Boundaries are computed on the local calendar, not by adding 24 hours, so a day that has 23 or
25 hours in a zone with daylight saving ends at the right midnight.

A rolling window is the last ``seconds`` seconds; its counter keeps the spend in ``SLOTS``
slots of ``seconds / SLOTS`` each and forgets a slot once all of it is older than the window.
A spend therefore counts for between ``seconds`` and ``seconds * (1 + 1/SLOTS)``: never less
than the window, so a rolling budget is never looser than configured.

Times are UTC epoch seconds (``time.time()``), from a clock the stage is given, so tests move
time by hand.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from tollway.budgets.config import BudgetLimit

# Slots a rolling window is kept in.
SLOTS = 60
# The id of a rolling window's one counter: it never changes.
ROLLING_ID = "r"


def _zone(name: str) -> dt.tzinfo:
    if name == "UTC":
        return dt.UTC
    import zoneinfo

    return zoneinfo.ZoneInfo(name)


@attrs.frozen(slots=True)
class Span:
    """One window of a budget: its id, and when it starts and ends (UTC epoch seconds).

    For a rolling window ``start`` is ``now - seconds`` and ``end`` is ``now``.
    """

    id: str
    start: float
    end: float


class Window:
    """How a limit's windows fall: ``span(now)`` gives the window ``now`` is in."""

    __slots__ = ("kind", "rolling", "slot", "zone", "zone_name")

    def __init__(self, kind: str, *, seconds: float | None = None, timezone: str = "UTC") -> None:
        if kind not in ("daily", "weekly", "monthly", "rolling"):
            raise ValueError(f"unknown budget window {kind!r}")
        self.kind = kind
        self.zone_name = timezone
        self.zone = _zone(timezone)
        # Seconds of a rolling window (0 for a calendar one), and its slot length.
        self.rolling = float(seconds or 0.0) if kind == "rolling" else 0.0
        self.slot = self.rolling / SLOTS if self.rolling else 0.0
        if kind == "rolling" and not self.rolling > 0:
            raise ValueError("a rolling window needs a length in seconds, above 0")

    @classmethod
    def of(cls, limit: BudgetLimit, default_timezone: str = "UTC") -> Window:
        return cls(limit.window, seconds=limit.seconds, timezone=limit.timezone or default_timezone)

    def span(self, now: float) -> Span:
        if self.rolling:
            return Span(ROLLING_ID, now - self.rolling, now)
        local = dt.datetime.fromtimestamp(now, self.zone)
        day = local.date()
        if self.kind == "daily":
            first, after = day, day + dt.timedelta(days=1)
            ident = f"d{first.isoformat()}"
        elif self.kind == "weekly":
            first = day - dt.timedelta(days=day.weekday())  # Monday
            after = first + dt.timedelta(days=7)
            ident = f"w{first.isoformat()}"
        else:
            first = day.replace(day=1)
            after = (first + dt.timedelta(days=32)).replace(day=1)
            ident = f"m{first.year:04d}-{first.month:02d}"
        return Span(ident, self._midnight(first), self._midnight(after))

    def _midnight(self, day: dt.date) -> float:
        return dt.datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp()

    def describe(self) -> str:
        if self.rolling:
            return f"rolling {self.rolling:g} s"
        return self.kind if self.zone_name == "UTC" else f"{self.kind} ({self.zone_name})"


def slot_of(now: float, slot_seconds: float) -> int:
    """The index of the slot ``now`` falls in."""
    return int(now // slot_seconds)


def iso(when: float, zone: dt.tzinfo = dt.UTC) -> str:
    """A window boundary for people: ``2025-02-01T00:00:00+00:00``."""
    return dt.datetime.fromtimestamp(when, zone).isoformat(timespec="seconds")
