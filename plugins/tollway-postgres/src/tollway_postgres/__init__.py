"""tollway-postgres: the usage store in PostgreSQL, shared by many processes and machines.

Registers the usage store ``postgres``; select it with ``[usage] store = "postgres"`` and set
``dsn`` (and ``schema``). Nothing here imports asyncpg: the factory imports the store's module
when a pipeline first uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollway import hookimpl


def _usage_store(config: Any) -> Any:
    from tollway_postgres.store import PostgresUsageStore

    return PostgresUsageStore.from_config(config)


@hookimpl
def tollway_register_usage_stores(register: Callable[..., None]) -> None:
    register(
        "postgres",
        _usage_store,
        description="PostgreSQL through asyncpg: one store for many processes, with rollups.",
    )
