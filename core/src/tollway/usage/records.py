"""What the usage store keeps: one record per answered call, and the query model over them.

Money is Decimal here; a store keeps it as an integer count of nano-units (1e-9 of the
currency unit), so sums are exact and never drift.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from tollway.types import Cost, Usage

NANO = Decimal("1e9")
_ZERO = Decimal(0)

# What a query may filter and group by, besides the time bucket and ``tag:NAME``.
DIMENSIONS: frozenset[str] = frozenset(
    (
        "provider",
        "model",
        "user",
        "session",
        "team",
        "api_key_id",
        "prompt_hash",
        "cached",
        "stream",
    )
)
BUCKETS: frozenset[str] = frozenset(("hour", "day", "week", "month"))


def to_nanos(amount: Decimal) -> int:
    """Decimal money to integer nano-units, rounded half-even (as banks do)."""
    return int((amount * NANO).to_integral_value())


def from_nanos(nanos: int) -> Decimal:
    return Decimal(nanos) / NANO


@attrs.frozen(slots=True)
class UsageRecord:
    """One answered call: who, what, how much, and when (``timestamp`` is UTC epoch seconds).

    A cache hit is recorded too, with ``cached=True``, cost 0 and ``saved`` the price the
    provider would have charged. ``prompt_hash`` is the canonical request key's digest, so that
    repeated prompts can be found without storing them.
    """

    id: str
    timestamp: float
    provider: str
    model: str
    usage: Usage
    cost: Cost
    user: str | None = None
    session: str | None = None
    team: str | None = None
    api_key_id: str | None = None
    tags: Mapping[str, str] = attrs.field(factory=dict)
    cached: bool = False
    saved: Decimal = _ZERO
    stream: bool = False
    latency_s: float | None = None
    request_id: str | None = None
    prompt_hash: str | None = None
    finish_reason: str | None = None

    @property
    def when(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.timestamp, dt.UTC)


@attrs.frozen(slots=True)
class UsageQuery:
    """Which records (time range and filters) and how to group them.

    ``filters`` maps a dimension (see :data:`DIMENSIONS`, or ``tag:NAME``) to the value it must
    have. ``group_by`` names dimensions and at most one time bucket (hour, day, week, month,
    in UTC); an empty ``group_by`` gives one total row.
    """

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    filters: Mapping[str, str] = attrs.field(factory=dict)
    group_by: tuple[str, ...] = ()
    currency: str | None = None

    def __attrs_post_init__(self) -> None:
        for name in (*self.filters, *self.group_by):
            if name in DIMENSIONS or name in BUCKETS or name.startswith("tag:"):
                continue
            raise ValueError(
                f"cannot filter or group by {name!r}; use one of "
                f"{', '.join(sorted(DIMENSIONS | BUCKETS))} or tag:NAME"
            )
        if sum(1 for g in self.group_by if g in BUCKETS) > 1:
            raise ValueError("group by at most one time bucket (hour, day, week or month)")


@attrs.frozen(slots=True)
class UsageRow:
    """One group of a query's answer: its key values and the sums over its records.

    ``group`` maps each ``group_by`` name to its value; a time bucket's value is the ISO 8601
    start of the bucket in UTC.
    """

    group: Mapping[str, Any]
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = _ZERO
    saved: Decimal = _ZERO
    cached_calls: int = 0
    currency: str = "USD"
