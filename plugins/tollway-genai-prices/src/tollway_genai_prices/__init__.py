"""tollway-genai-prices: the price data of the ``genai-prices`` package as a tollway price source.

Registers the source ``genai-prices``. Nothing here imports genai_prices: the factory imports
:mod:`tollway_genai_prices.source` (and it genai_prices) when a pricer first needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollway import hookimpl


def _source(options: Any) -> Any:
    from tollway_genai_prices.source import GenaiPricesSource

    return GenaiPricesSource.from_options(options or {})


@hookimpl
def tollway_register_pricing(register: Callable[..., None]) -> None:
    register(
        "genai-prices",
        _source,
        description="genai-prices' data, offline: every provider it covers, tiers, history.",
    )
