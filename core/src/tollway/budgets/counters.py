"""Budget counters: how much each budget has spent and holds reserved, in integer nano-units.

The budget stage reserves a call's estimated maximum on every budget that applies before the
call, all or none, and settles after it (the reservation replaced by the actual cost, or
released). A counters backend does each of those atomically; ``local`` (here) for one process,
``redis`` (tollway-redis) for every process that shares a server. A backend also holds the
emergency stop (tripped or not, and why) and the recent spend history the stop is judged on.

The protocol (what a ``tollway_register_budget_counters`` factory returns)::

    async reserve(charges, now) -> (index, spent, reserved, first)
        # index RESERVED (-1): every charge reserved. index STOPPED (-2): the emergency stop is
        # tripped and nothing was reserved. index >= 0: nothing reserved; that charge's hard
        # budget would go over its limit, with its spent and reserved nanos, and ``first`` True
        # the first time this budget refuses in its window (for the one "exceeded" alert).
    async settle(charges, actual, reserved_at, now) -> [(spent, alerted_before, alerted_now)]
        # each charge's reservation removed and ``actual`` added to its spend (0: a release);
        # per charge its spend after, and how many of its thresholds had alerted before and now
        # (an alert goes out for each threshold in between, once per window).
    async read(windows, now) -> [(spent, reserved)]
    async entries(now) -> {counter key: (spent, reserved)}   # every counter of a live window
    async spend_history(now) -> [nanos per slot, oldest first, the current slot last]
    async trip(reason, now) -> bool        # True when this call tripped it
    async reset() -> bool                  # True when it was tripped
    async stopped() -> (reason, since) | None
    async aclose()

where a charge is ``(BudgetWindow, nanos)``. ``reserved_at`` is the ``now`` of the reserve, so
a backend that lets abandoned reservations lapse (redis) takes back the right one.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from tollway.budgets.windows import slot_of

if TYPE_CHECKING:
    from tollway.budgets.config import BudgetsConfig
    from tollway.metrics import Metrics

RESERVED = -1
STOPPED = -2
# A calendar counter is kept this long past its window's end (reservations still settling,
# ``tollway budget status`` of the window just ended), then forgotten.
GRACE = 86_400.0


@attrs.frozen(slots=True, eq=False)
class BudgetWindow:
    """One budget in one window: the unit a counter counts. Built by the stage, once per window.

    ``key`` is unique per budget and window, and the same in every process. ``limit`` and
    ``thresholds`` are nano-units; ``thresholds`` ascending. A calendar window's counter lives
    until ``expires_at``; a rolling window (``rolling`` seconds, in slots of ``slot`` s) has one
    counter for good.
    """

    key: str
    limit: int
    hard: bool
    expires_at: float = 0.0
    rolling: float = 0.0
    slot: float = 0.0
    thresholds: tuple[int, ...] = ()


Charge = tuple[BudgetWindow, int]
Settled = tuple[int, int, int]


@runtime_checkable
class BudgetCounters(Protocol):
    """Where budgets are counted. See the module docstring for the contract."""

    async def reserve(
        self, charges: Sequence[Charge], now: float
    ) -> tuple[int, int, int, bool]: ...

    async def settle(
        self, charges: Sequence[Charge], actual: int, reserved_at: float, now: float
    ) -> list[Settled]: ...

    async def read(self, windows: Sequence[BudgetWindow], now: float) -> list[tuple[int, int]]: ...

    async def entries(self, now: float) -> dict[str, tuple[int, int]]: ...

    async def spend_history(self, now: float) -> list[int]: ...

    async def trip(self, reason: str, now: float) -> bool: ...

    async def reset(self) -> bool: ...

    async def stopped(self) -> tuple[str, float] | None: ...

    async def aclose(self) -> None: ...


def history_shape(config: BudgetsConfig) -> tuple[float, int]:
    """(slot seconds, slots kept) of the spend history the emergency stop is judged on."""
    from tollway.budgets.emergency import SpendRate

    rate = SpendRate(config.emergency_stop)
    return rate.slot, rate.slots


class _Counter:
    __slots__ = ("alerted", "expires_at", "refused_until", "reserved", "slots", "spent_total")

    def __init__(self, expires_at: float) -> None:
        self.spent_total = 0
        self.reserved = 0
        self.alerted = 0
        self.refused_until = 0.0
        self.expires_at = expires_at
        # Rolling windows only: [slot index, nanos], oldest first.
        self.slots: deque[list[int]] | None = None

    def spent(self, window: BudgetWindow, now: float) -> int:
        slots = self.slots
        if slots is None:
            return self.spent_total
        # A slot is forgotten once all of it is older than the window.
        oldest = slot_of(now - window.rolling, window.slot)
        while slots and slots[0][0] < oldest:
            self.spent_total -= slots.popleft()[1]
        return self.spent_total

    def add(self, window: BudgetWindow, amount: int, now: float) -> None:
        self.spent_total += amount
        if window.rolling:
            if self.slots is None:
                self.slots = deque()
            index = slot_of(now, window.slot)
            slots = self.slots
            if slots and slots[-1][0] == index:
                slots[-1][1] += amount
            else:
                slots.append([index, amount])


class LocalBudgetCounters:
    """Counters in this process. Safe across threads; calls are synchronous underneath.

    ``reserve_now`` and ``settle_now`` are the synchronous forms the stage calls directly, so
    a local budget check costs no coroutine. State is per process: for ``tollway budget`` (or
    another process) to see it, use a shared backend (redis).
    """

    def __init__(
        self,
        *,
        rate_slot: float = 0.0,
        rate_slots: int = 0,
        prune_at: int = 10_000,
    ) -> None:
        self._counters: dict[str, _Counter] = {}
        self._lock = threading.Lock()
        self._stop: tuple[str, float] | None = None
        # The emergency stop's spend history: slot index -> nanos (0 slot length: kept off).
        self._rate_slot = rate_slot
        self._rate_slots = rate_slots
        self._rate: dict[int, int] = {}
        self._prune_at = prune_at

    @classmethod
    def from_config(
        cls, config: BudgetsConfig, metrics: Metrics | None = None
    ) -> LocalBudgetCounters:
        slot, slots = history_shape(config)
        return cls(rate_slot=slot, rate_slots=slots)

    # -- the synchronous core ----------------------------------------------------------------

    def _get(self, window: BudgetWindow, now: float) -> _Counter:
        counter = self._counters.get(window.key)
        if counter is None:
            if len(self._counters) >= self._prune_at:
                self._prune(now)
            counter = self._counters[window.key] = _Counter(window.expires_at)
        return counter

    def _prune(self, now: float) -> None:
        """Forget counters of windows long over, and rolling ones with nothing in them."""
        stale = [
            key
            for key, counter in self._counters.items()
            if not counter.reserved
            and (
                (counter.expires_at and counter.expires_at + GRACE < now)
                or (counter.slots is not None and not counter.slots)
            )
        ]
        for key in stale:
            del self._counters[key]
        if len(self._counters) > self._prune_at // 2:
            self._prune_at *= 2

    def reserve_now(self, charges: Sequence[Charge], now: float) -> tuple[int, int, int, bool]:
        with self._lock:
            if self._stop is not None:
                return STOPPED, 0, 0, False
            counters = []
            for index, (window, amount) in enumerate(charges):
                counter = self._get(window, now)
                if window.hard:
                    spent = counter.spent(window, now)
                    if spent + counter.reserved + amount > window.limit:
                        first = counter.refused_until <= now
                        if first:
                            counter.refused_until = (
                                now + window.rolling if window.rolling else float("inf")
                            )
                        return index, spent, counter.reserved, first
                counters.append(counter)
            for counter, (_, amount) in zip(counters, charges, strict=True):
                counter.reserved += amount
            return RESERVED, 0, 0, False

    def settle_now(
        self, charges: Sequence[Charge], actual: int, reserved_at: float, now: float
    ) -> list[Settled]:
        out: list[Settled] = []
        with self._lock:
            for window, amount in charges:
                counter = self._get(window, now)
                reserved = counter.reserved - amount
                counter.reserved = reserved if reserved > 0 else 0
                thresholds = window.thresholds
                if window.rolling and counter.alerted:
                    # A rolling window's spend falls as it ages: thresholds it is back under
                    # re-arm, to go out again when it climbs past them.
                    below = bisect.bisect_right(thresholds, counter.spent(window, now))
                    if below < counter.alerted:
                        counter.alerted = below
                if actual:
                    counter.add(window, actual, now)
                spent = counter.spent(window, now)
                before = counter.alerted
                if thresholds:
                    crossed = bisect.bisect_right(thresholds, spent)
                    if crossed > before:
                        counter.alerted = crossed
                out.append((spent, before, counter.alerted))
            if actual and self._rate_slot:
                slot = slot_of(now, self._rate_slot)
                rate = self._rate
                rate[slot] = rate.get(slot, 0) + actual
                if len(rate) > 2 * self._rate_slots:
                    oldest = slot - self._rate_slots
                    for old in [s for s in rate if s <= oldest]:
                        del rate[old]
        return out

    def read_now(self, windows: Sequence[BudgetWindow], now: float) -> list[tuple[int, int]]:
        with self._lock:
            out = []
            for window in windows:
                counter = self._counters.get(window.key)
                if counter is None:
                    out.append((0, 0))
                else:
                    out.append((counter.spent(window, now), counter.reserved))
            return out

    def stopped_now(self) -> tuple[str, float] | None:
        return self._stop

    # -- the protocol ----------------------------------------------------------------------

    async def reserve(self, charges: Sequence[Charge], now: float) -> tuple[int, int, int, bool]:
        return self.reserve_now(charges, now)

    async def settle(
        self, charges: Sequence[Charge], actual: int, reserved_at: float, now: float
    ) -> list[Settled]:
        return self.settle_now(charges, actual, reserved_at, now)

    async def read(self, windows: Sequence[BudgetWindow], now: float) -> list[tuple[int, int]]:
        return self.read_now(windows, now)

    async def entries(self, now: float) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {
                key: (counter.spent_total, counter.reserved)
                for key, counter in self._counters.items()
                if not counter.expires_at or counter.expires_at > now
            }

    async def spend_history(self, now: float) -> list[int]:
        if not self._rate_slot:
            return []
        current = slot_of(now, self._rate_slot)
        with self._lock:
            rate = self._rate
            return [
                rate.get(slot, 0) for slot in range(current - self._rate_slots + 1, current + 1)
            ]

    async def trip(self, reason: str, now: float) -> bool:
        with self._lock:
            if self._stop is not None:
                return False
            self._stop = (reason, now)
            return True

    async def reset(self) -> bool:
        with self._lock:
            was, self._stop = self._stop, None
            return was is not None

    async def stopped(self) -> tuple[str, float] | None:
        return self._stop

    async def aclose(self) -> None:
        with self._lock:
            self._counters.clear()
            self._rate.clear()
