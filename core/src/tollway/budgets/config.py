"""The ``[budgets]`` table. Only attrs classes here: config loading imports it cheaply."""

from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class BudgetsConfig:
    """Spending limits enforced before any provider is called."""

    enabled: bool = False
    # "local" keeps the counters in the process; "redis" shares them (tollway-redis).
    backend: str = "local"
