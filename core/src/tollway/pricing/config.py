"""The ``[pricing]`` table. Only attrs classes here: config loading imports it cheaply.

Prices are per million tokens (``*_mtok``), as the providers' price pages state them, and
``request`` is a price per call. Money is ``Decimal``: write prices as strings (``"0.15"``) or
numbers; a TOML float is read through its shortest text, so ``0.15`` stays ``0.15``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs

PERIODS: frozenset[str] = frozenset(("day", "week", "month"))


def _check_price(owner: str, name: str, value: Decimal | None) -> None:
    if value is not None and not (value.is_finite() and value >= 0):
        raise ValueError(f"{owner}{name} = {value} must be a price of 0 or more")


@attrs.define(kw_only=True)
class TierPrice:
    """``[[pricing.models."P/M".tiers]]``: the prices once a call's prompt exceeds a size.

    A call whose input tokens (cached ones included) are more than ``above_input_tokens`` pays
    these rates on all its tokens, as Gemini 2.5 Pro above 200k and Anthropic's long context
    do. A price left out stays the model's base price.
    """

    above_input_tokens: int
    input_mtok: Decimal | None = None
    output_mtok: Decimal | None = None
    cache_read_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None
    reasoning_mtok: Decimal | None = None

    def __attrs_post_init__(self) -> None:
        if self.above_input_tokens < 0:
            raise ValueError(f"above_input_tokens = {self.above_input_tokens} must be 0 or more")
        for name in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"):
            _check_price("", name, getattr(self, name))
        _check_price("", "reasoning_mtok", self.reasoning_mtok)


@attrs.define(kw_only=True)
class ModelPriceConfig:
    """``[pricing.models."PROVIDER/MODEL"]``: your price for a model; it wins over every source.

    ``cache_read_mtok`` and ``cache_write_mtok`` default to the input price, ``reasoning_mtok``
    to the output price. ``PROVIDER`` is an instance name (``work``) or a provider type
    (``openai``); an instance's own entry wins over its type's.
    """

    input_mtok: Decimal
    output_mtok: Decimal = Decimal(0)
    cache_read_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None
    reasoning_mtok: Decimal | None = None
    # A price per call, on top of the tokens.
    request: Decimal = Decimal(0)
    tiers: list[TierPrice] = attrs.field(factory=list)
    # The currency these prices are in; converted with [pricing.exchange_rates].
    currency: str = "USD"
    # The output tokens a call's estimate assumes when the request sets no max_tokens.
    max_output_tokens: int | None = None

    def __attrs_post_init__(self) -> None:
        for name in (
            "input_mtok",
            "output_mtok",
            "cache_read_mtok",
            "cache_write_mtok",
            "reasoning_mtok",
            "request",
        ):
            _check_price("", name, getattr(self, name))
        starts = [tier.above_input_tokens for tier in self.tiers]
        if len(set(starts)) != len(starts):
            raise ValueError(f"two tiers start above the same size: {sorted(starts)}")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ValueError(f"max_output_tokens = {self.max_output_tokens} must be at least 1")


@attrs.define(kw_only=True)
class VolumeDiscount:
    """``[[pricing.volume_discounts]]``: a fraction off once a period's usage passes a size.

    Every rule with the same ``match`` and ``period`` shares one running count of tokens (input
    plus output); a call made once the count has reached ``after_tokens`` gets ``discount``
    off (the largest reached, not compounded). The count is kept per process.
    """

    # "*", a provider ("openai"), or a "provider/model" pattern with * wildcards.
    match: str = "*"
    period: str = "month"
    after_tokens: int
    discount: Decimal

    def __attrs_post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ValueError(
                f"period {self.period!r} is not one of {', '.join(sorted(PERIODS))} "
                "(calendar periods, UTC)"
            )
        if self.after_tokens < 0:
            raise ValueError(f"after_tokens = {self.after_tokens} must be 0 or more")
        if not (self.discount.is_finite() and 0 <= self.discount <= 1):
            raise ValueError(f"discount = {self.discount} must be a fraction from 0 to 1")


@attrs.define(kw_only=True)
class PricingConfig:
    """How calls are priced. Turning on usage or budgets turns pricing on too."""

    enabled: bool = False
    # Registered price sources, asked in order; the first that knows a model prices it.
    # Prices in [pricing.models] always win over every source.
    sources: list[str] = attrs.field(factory=lambda: ["toml", "genai-prices"])
    # The currency costs are reported in.
    currency: str = "USD"
    # Per currency, how many units of the reporting currency one unit of it is worth, e.g.
    # currency = "EUR" and USD = "0.92". Needed for every currency a price is stated in.
    exchange_rates: dict[str, Decimal] = attrs.field(factory=dict)
    # Your own prices: "PROVIDER/MODEL" -> its prices. They win over every source.
    models: dict[str, ModelPriceConfig] = attrs.field(factory=dict)
    # Negotiated discounts, a fraction off: "*", "PROVIDER" or "PROVIDER/MODEL" -> "0.15".
    # The most specific key applies.
    discounts: dict[str, Decimal] = attrs.field(factory=dict)
    # A margin added on top (for chargeback), keyed the same way: "*" -> "0.10" adds 10%.
    margins: dict[str, Decimal] = attrs.field(factory=dict)
    volume_discounts: list[VolumeDiscount] = attrs.field(factory=list)
    # Providers whose calls cost nothing (local models); known to the pricer at zero.
    free_providers: list[str] = attrs.field(factory=lambda: ["llamacpp", "ollama"])
    # The output tokens an estimate assumes when the request sets no max_tokens and the
    # model's price entry names no max_output_tokens.
    default_output_tokens: int = 4096
    # The estimate counts one prompt token per this many UTF-8 bytes (English runs about 4-5
    # bytes a token, code 3-4, CJK 3 bytes a character and about one token): 3 keeps the
    # estimate above the real count for ordinary text.
    estimate_bytes_per_token: int = 3
    # Options passed to each source's factory, by source name, e.g.
    # [pricing.source_options.toml] files = ["/etc/tollway/prices.toml"].
    source_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.currency = self.currency.upper()
        for name, rate in self.exchange_rates.items():
            if not (rate.is_finite() and rate > 0):
                raise ValueError(f"exchange_rates.{name} = {rate} must be a positive number")
        self.exchange_rates = {k.upper(): v for k, v in self.exchange_rates.items()}
        if self.currency != "USD" and self.sources and "USD" not in self.exchange_rates:
            raise ValueError(
                f"currency = {self.currency!r} but the price sources state prices in USD; set "
                f'[pricing.exchange_rates] USD = "..." (how many {self.currency} one USD is)'
            )
        for key, model in self.models.items():
            if "/" not in key:
                raise ValueError(
                    f'models.{key!r} must be named PROVIDER/MODEL, e.g. "openai/gpt-4o-mini"'
                )
            currency = model.currency.upper()
            if currency != self.currency and currency not in self.exchange_rates:
                raise ValueError(
                    f"models.{key!r} is priced in {currency} but [pricing.exchange_rates] has "
                    f"no {currency}; add it (how many {self.currency} one {currency} is)"
                )
        for table in ("discounts", "margins"):
            for key, value in getattr(self, table).items():
                if not value.is_finite() or value < 0 or (table == "discounts" and value > 1):
                    limit = "a fraction from 0 to 1" if table == "discounts" else "0 or more"
                    raise ValueError(f"{table}.{key!r} = {value} must be {limit}")
        if self.default_output_tokens < 1:
            raise ValueError(
                f"default_output_tokens = {self.default_output_tokens} must be at least 1"
            )
        if self.estimate_bytes_per_token < 1:
            raise ValueError(
                f"estimate_bytes_per_token = {self.estimate_bytes_per_token} must be at least 1"
            )
