"""The ``[pricing]`` table. Only attrs classes here: config loading imports it cheaply."""

from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class PricingConfig:
    """How calls are priced. Turning on usage or budgets turns pricing on too."""

    enabled: bool = False
    # Registered price sources, asked in order; the first that knows a model prices it.
    # Prices in [pricing.models] always win over every source.
    sources: list[str] = attrs.field(factory=lambda: ["toml", "genai-prices"])
    # The currency costs are reported in.
    currency: str = "USD"
