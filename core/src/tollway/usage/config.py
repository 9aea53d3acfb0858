"""The ``[usage]`` table. Only attrs classes here: config loading imports it cheaply."""

from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class UsageConfig:
    """Recording every answered call in a usage store."""

    enabled: bool = False
    # A registered usage store: "sqlite" (the core's), "memory", "postgres" (tollway-postgres).
    store: str = "sqlite"
