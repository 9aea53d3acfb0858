"""What the rest of tollway asks of pricing: the cost of a call, and an estimate before it.

Built once per pipeline assembly by :func:`tollway.pricing.pricer.pricer_for` and shared by the
stages that need it (cost, budgets, usage), so rates are looked up once per model and the
request path does only arithmetic. Outside a pipeline (the CLI, analytics, reports) build one
with :func:`tollway.pricing.pricer.build_pricer`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tollway.types import Cost, Request, Usage

if TYPE_CHECKING:
    from tollway.pricing.rates import ModelRates


@runtime_checkable
class Pricer(Protocol):
    # The currency every Cost and estimate is in ([pricing] currency).
    currency: str

    def knows(self, model: str) -> bool:
        """Whether any source prices ``model`` (canonical ``provider/model``)."""

    def price(self, model: str, usage: Usage) -> Cost:
        """What ``usage`` of ``model`` costs, each token class at its own rate, in the
        reporting currency. An unknown model costs zero (and is counted in metrics).
        Counts the usage toward volume discounts: call it once per real call."""

    def quote(self, model: str, usage: Usage) -> Cost:
        """What ``usage`` of ``model`` would cost now, without counting it toward volume
        discounts: a cache hit's saving, a what-if (a cheaper model for the same traffic)."""

    def count(self, model: str, usage: Usage) -> None:
        """Count usage toward volume discounts without pricing it (after :meth:`quote`)."""

    def estimate(self, request: Request) -> Decimal:
        """The most the call can cost, before it is made: the prompt's tokens estimated
        offline, plus ``max_tokens`` (or the model's limit) at the output rate."""

    def model_rates(self, model: str) -> ModelRates | None:
        """The model's prices per million tokens as its source states them, or None."""

    def reload(self) -> None:
        """Read the price sources again and forget what was resolved per model."""
