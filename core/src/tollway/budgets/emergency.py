"""The emergency stop: every call refused once the spend rate jumps, until an operator resets it.

The counters keep the settled spend in slots of ``window / 10`` seconds for the last
``window + baseline`` seconds. The stop trips when the last ``window`` seconds (the current
slot and the nine before it) spent at least ``minimum`` and at a rate above ``factor`` times
the rate of the ``baseline`` seconds before them. A quiet baseline (no spend) counts as a rate
of zero, so from silence any spend of ``minimum`` or more within a window trips it: set
``minimum`` above what a normal start-up spends in one window.

The stage judges the history at most once per slot, off the request path; the stop itself is
state in the counters backend, so with redis one process tripping it stops them all, and
``tollway budget trip`` / ``tollway budget reset`` act on every process at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from tollway.budgets.alerts import money
from tollway.usage.records import from_nanos, to_nanos

if TYPE_CHECKING:
    from tollway.budgets.config import EmergencyStopConfig

# Slots per short window.
SHORT_SLOTS = 10


class SpendRate:
    """The shape of the spend history, and the judgement on it."""

    __slots__ = ("baseline", "baseline_slots", "config", "factor", "minimum", "slot", "slots")

    def __init__(self, config: EmergencyStopConfig) -> None:
        self.config = config
        self.slot = config.window / SHORT_SLOTS
        self.baseline_slots = max(1, math.ceil(config.baseline / self.slot - 1e-9))
        self.slots = SHORT_SLOTS + self.baseline_slots
        self.baseline = self.baseline_slots * self.slot
        self.factor = Decimal(repr(config.factor))
        self.minimum = to_nanos(config.minimum)

    def judge(self, history: Sequence[int], currency: str = "USD") -> str | None:
        """Why to trip, given the history (oldest slot first, the current one last), or None."""
        if len(history) < SHORT_SLOTS:
            return None
        recent = sum(history[-SHORT_SLOTS:])
        before = sum(history[:-SHORT_SLOTS])
        if recent <= 0 or recent < self.minimum:
            return None
        window = Decimal(repr(self.config.window))
        baseline = Decimal(repr(self.baseline))
        # recent / window > factor * before / baseline, without dividing by a zero baseline.
        if Decimal(recent) * baseline <= self.factor * Decimal(before) * window:
            return None
        if before:
            ratio = (Decimal(recent) / window) / (Decimal(before) / baseline)
            compared = f"{ratio:.1f}x the rate of the {self.baseline:g} s before"
        else:
            compared = f"after nothing in the {self.baseline:g} s before"
        return (
            f"the spend rate jumped: {money(from_nanos(recent), currency)} in the last "
            f"{self.config.window:g} s, {compared} (factor {self.config.factor:g}, minimum "
            f"{money(self.config.minimum, currency)})"
        )
