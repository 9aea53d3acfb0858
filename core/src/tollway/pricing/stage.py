"""The cost stage: prices every answer from the provider's reported usage.

It sits outside the cache, so it sees cache hits too: a hit costs zero, and what the provider
would have charged for it is its saving (``Response.saved``, and the ``cost_saved_total``
metric). A stream passes through untouched but for the chunk that carries usage, which gets
its ``cost``. A model no source prices costs zero, is counted in
``pricing_unknown_model_total`` and is logged once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from tollway.metrics import Metrics
from tollway.pipeline import CompleteFn, Stage, StreamFn
from tollway.pricing.pricer import TablePricer, pricer_for
from tollway.types import Cost, Request, Response, StreamChunk, Usage

if TYPE_CHECKING:
    from tollway.stages import StageContext

log = structlog.get_logger("tollway.pricing")

# Fields the lead may add to StreamChunk for a replayed (cached) stream; used when present.
_CHUNK_FIELDS = frozenset(attrs.fields_dict(StreamChunk))
_CHUNK_SAVED = "saved" in _CHUNK_FIELDS


class CostStage(Stage):
    """Sets ``Response.cost`` (and ``saved`` for a cache hit) and the usage chunk's ``cost``."""

    name = "cost"

    def __init__(self, pricer: TablePricer, metrics: Metrics | None = None) -> None:
        self.pricer = pricer
        metrics = metrics if metrics is not None else Metrics()
        self._cost = metrics.counter(
            "cost_total",
            "Money spent on calls, in the reporting currency (a float for dashboards; the "
            "usage store keeps exact amounts).",
            ["provider", "model", "currency"],
        )
        self._saved = metrics.counter(
            "cost_saved_total",
            "Money cache hits saved: what the provider would have charged for them.",
            ["currency"],
        )
        self._unknown = metrics.counter(
            "pricing_unknown_model_total",
            "Answers from models no price source knows, priced at zero.",
            ["model"],
        )
        self._warned: set[str] = set()
        self._zero = Cost(currency=pricer.currency)

    @classmethod
    def from_context(cls, context: StageContext) -> CostStage:
        return cls(pricer_for(context), context.metrics)

    # -- the request path --------------------------------------------------------------------

    def _model(self, reported: str | None, requested: str) -> str | None:
        """The model to price: the one that answered, else the one asked for."""
        knows = self.pricer.knows
        if reported is not None and knows(reported):
            return reported
        if knows(requested):
            return requested
        model = reported or requested
        self._unknown.inc(model)
        if model not in self._warned:
            self._warned.add(model)
            log.warning(
                "pricing_unknown_model",
                model=model,
                effect="its calls are priced at 0 and budgets cannot count them",
                fix=f'add [pricing.models."{model}"] with its prices, or a price source '
                "that knows it",
            )
        return None

    def _saving(self, model: str | None, usage: Usage) -> Decimal:
        if model is None:
            return Decimal(0)
        saved = self.pricer.quote(model, usage).total
        if saved:
            self._saved.inc(self.pricer.currency, amount=float(saved))
        return saved

    async def complete(self, request: Request, call_next: CompleteFn) -> Response:
        response = await call_next(request)
        model = self._model(response.model, request.model)
        if response.cached:
            saved = self._saving(model, response.usage)
            return attrs.evolve(response, cost=self._zero, saved=saved)
        if model is None:
            return attrs.evolve(response, cost=self._zero)
        cost = self.pricer.price(model, response.usage)
        total = cost.total
        if total:
            self._cost.inc(response.provider, model, cost.currency, amount=float(total))
        return attrs.evolve(response, cost=cost)

    def stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        return self._stream(request, call_next)

    async def _stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        iterator = call_next(request)
        priced: tuple[str, Usage, Cost] | None = None
        try:
            async for chunk in iterator:
                usage = chunk.usage
                if usage is None:
                    yield chunk
                    continue
                model = self._model(chunk.model, request.model)
                # The stream's usage is cumulative: a later usage chunk restates the whole.
                if getattr(chunk, "cached", False):
                    saved = self._saving(model, usage)
                    extra: dict[str, Any] = {"saved": saved} if _CHUNK_SAVED else {}
                    yield attrs.evolve(chunk, cost=self._zero, **extra)
                    continue
                if model is None:
                    yield attrs.evolve(chunk, cost=self._zero)
                    continue
                cost = self.pricer.quote(model, usage)
                priced = (model, usage, cost)
                yield attrs.evolve(chunk, cost=cost)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            if priced is not None:
                # Counted once, with the last (whole) usage, however many chunks restated it.
                model, usage, cost = priced
                self.pricer.count(model, usage)
                total = cost.total
                if total:
                    self._cost.inc(request.provider, model, cost.currency, amount=float(total))
