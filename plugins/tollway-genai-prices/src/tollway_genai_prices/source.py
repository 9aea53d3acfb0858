"""genai-prices' data as per-model rates, derived once per model.

``genai_prices.calc_price`` costs about half a millisecond a call, so it is never called on the
request path: :meth:`GenaiPricesSource.rates` reads the model's ``ModelPrice`` once and states
it as a :class:`tollway.pricing.rates.ModelRates` (per-class prices, tiers by prompt size, a
per-request price), and the pricer does the arithmetic. The result is the same, to the last
digit, as ``calc_price`` for the token classes tollway's ``Usage`` carries (a test walks every
model genai-prices covers).

Price history and off-peak windows (``ConditionalPrice``) are resolved at the moment of the
lookup, and ``valid_until`` tells the pricer when to look again. Request-specific variants
(service tiers) and prices per image, audio second, web search or page are not expressed:
tollway's ``Usage`` does not count them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import attrs
from genai_prices import data_snapshot
from genai_prices import types as gp

from tollway.pricing.rates import ModelRates, Tier

Clock = Callable[[], float]

# tollway provider types -> genai-prices provider ids, where they differ.
PROVIDER_IDS: dict[str, str] = {
    "gemini": "google",
    "vertex": "google",
    "bedrock": "aws",
    "xai": "x-ai",
    "grok": "x-ai",
    "moonshot": "moonshotai",
}

# genai-prices price keys tollway prices, by the ModelRates field they become.
_TOKEN_KEYS = {
    "input_mtok": "input_mtok",
    "output_mtok": "output_mtok",
    "cache_read_mtok": "cache_read_mtok",
    "cache_write_mtok": "cache_write_mtok",
    "output_reasoning_mtok": "reasoning_mtok",
}
_THOUSAND = Decimal(1000)


def _base(value: Decimal | gp.TieredPrices) -> Decimal:
    return value.base if isinstance(value, gp.TieredPrices) else value


def _at(value: Decimal | gp.TieredPrices, above: int) -> Decimal | None:
    """The price a call with more than ``above`` input tokens pays, or None when the same
    as the base price (genai-prices: a tier applies when input tokens > its start)."""
    if not isinstance(value, gp.TieredPrices):
        return None
    price = value.base
    for tier in sorted(value.tiers, key=lambda t: t.start):
        if tier.start <= above:
            price = tier.price
    return price


def model_rates(prices: gp.ModelPrice, *, model_id: str = "") -> ModelRates | None:
    """A genai-prices ``ModelPrice`` as ModelRates.

    A model with no price at all (``:free`` models, ones included in a subscription) costs
    zero, as genai-prices says. One priced only in units tollway's Usage does not count
    (audio hours, characters, pages) gives None: tollway cannot price its calls.
    """
    stated = {k: v for k, v in vars(prices).items() if v is not None and not k.startswith("_")}
    found = {field: stated[key] for key, field in _TOKEN_KEYS.items() if key in stated}
    per_request = stated.get("requests_kcount")
    if not found and per_request is None and stated:
        return None
    starts = sorted(
        {
            tier.start
            for value in found.values()
            if isinstance(value, gp.TieredPrices)
            for tier in value.tiers
        }
    )
    tiers = tuple(
        Tier(above, **{field: _at(value, above) for field, value in found.items()})
        for above in starts
    )
    return ModelRates(
        **{field: _base(value) for field, value in found.items()},
        request=_base(per_request) / _THOUSAND if per_request is not None else Decimal(0),
        tiers=tiers,
        currency="USD",
        source="genai-prices",
        model_id=model_id,
    )


def _utc_time(value: dt.time) -> dt.time:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return dt.datetime.combine(dt.date(1970, 1, 1), value).astimezone(dt.UTC).timetz()


def next_change(model: gp.ModelInfo, now: dt.datetime) -> float | None:
    """When the model's price may change next (a dated price, an off-peak window), or None."""
    if not isinstance(model.prices, list):
        return None
    moments: list[dt.datetime] = []
    for conditional in model.prices:
        constraint = conditional.constraint
        if isinstance(constraint, gp.StartDateConstraint):
            start = dt.datetime.combine(constraint.start_date, dt.time(0), dt.UTC)
            if start > now:
                moments.append(start)
        elif isinstance(constraint, gp.TimeOfDateConstraint):
            for boundary in (constraint.start_time, constraint.end_time):
                moment = dt.datetime.combine(now.date(), _utc_time(boundary))
                if moment <= now:
                    moment += dt.timedelta(days=1)
                moments.append(moment)
    return min(moments).timestamp() if moments else None


class GenaiPricesSource:
    """Answers ``rates(provider, model)`` from genai-prices' bundled (or updated) snapshot."""

    def __init__(
        self,
        *,
        provider_ids: Mapping[str, str] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.provider_ids = {**PROVIDER_IDS, **(provider_ids or {})}
        self.clock = clock
        self.snapshot = data_snapshot.get_snapshot()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> GenaiPricesSource:
        unknown = set(options) - {"provider_ids"}
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(sorted(unknown))}; the genai-prices source "
                "takes provider_ids (tollway provider type -> genai-prices provider id)"
            )
        ids = options.get("provider_ids") or {}
        if not isinstance(ids, Mapping):
            raise ValueError(f"provider_ids must be a table, got {ids!r}")
        return cls(provider_ids={str(k): str(v) for k, v in ids.items()})

    def reload(self) -> None:
        """Take genai-prices' current snapshot (updated data, if its updater has run)."""
        self.snapshot = data_snapshot.get_snapshot()

    def find(self, provider: str, model: str) -> tuple[gp.Provider, gp.ModelInfo] | None:
        provider_id = self.provider_ids.get(provider, provider)
        try:
            return self.snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            return None

    def rates(self, provider: str, model: str) -> ModelRates | None:
        found = self.find(provider, model)
        if found is None:
            return None
        vendor, info = found
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        rates = model_rates(info.get_prices(now), model_id=f"{vendor.id}/{info.id}")
        if rates is None:
            return None
        until = next_change(info, now)
        if until is None:
            return rates
        return attrs.evolve(rates, valid_until=until)
