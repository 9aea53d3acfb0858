"""What the rest of tollway asks of pricing: the cost of a call, and an estimate before it.

Built once per pipeline assembly by :func:`tollway.pricing.pricer.pricer_for` and shared by the
stages that need it (cost, budgets, usage), so rates are looked up once per model and the
request path does only arithmetic.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol, runtime_checkable

from tollway.types import Cost, Request, Usage


@runtime_checkable
class Pricer(Protocol):
    def knows(self, model: str) -> bool:
        """Whether any source prices ``model`` (canonical ``provider/model``)."""

    def price(self, model: str, usage: Usage) -> Cost:
        """What ``usage`` of ``model`` costs, each token class at its own rate, in the
        reporting currency. An unknown model costs zero (and is counted in metrics)."""

    def estimate(self, request: Request) -> Decimal:
        """The most the call can cost, before it is made: the prompt's tokens estimated
        offline, plus ``max_tokens`` (or the model's limit) at the output rate."""
