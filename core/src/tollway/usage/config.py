"""The ``[usage]`` table. Only attrs classes here: config loading imports it cheaply."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define(kw_only=True)
class UsageConfig:
    """Recording every answered call in a usage store."""

    enabled: bool = False
    # A registered usage store: "sqlite" (the core's), "memory", "postgres" (tollway-postgres).
    store: str = "sqlite"
    # SQLite: the database file (default: $TOLLWAY_DATA_DIR/usage.db, else
    # ~/.local/share/tollway/usage.db).
    path: str | None = None
    # PostgreSQL: the DSN, and the schema the tables live in (created when missing).
    dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    schema: str = "tollway"
    # Where retention archives old records, one gzip JSONL file per day (default: an
    # "archive" folder next to the SQLite file, or under the data dir).
    archive_dir: str | None = None
    # The write-behind writer: records are written in batches of up to batch_size, at least
    # every flush_interval seconds; at most max_pending wait in memory while the store is
    # down (beyond that the oldest are dropped, with an error log and a counter).
    batch_size: int = 1000
    flush_interval: float = 1.0
    max_pending: int = 100_000
    # Backoff between retries while the store fails: starts at retry_initial seconds and
    # doubles up to retry_max.
    retry_initial: float = 0.5
    retry_max: float = 30.0
    # Flush pending records on SIGTERM (only when the pipeline runs in the main thread and no
    # other handler was installed with the event loop; a previous signal.signal handler is
    # chained to).
    flush_on_sigterm: bool = True
    # Store-specific extras passed through (postgres: min_size, max_size of the pool).
    options: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"usage batch_size must be at least 1, not {self.batch_size}")
        if self.flush_interval <= 0:
            raise ValueError(
                f"usage flush_interval must be positive seconds, not {self.flush_interval}"
            )
        if self.max_pending < self.batch_size:
            raise ValueError(
                f"usage max_pending ({self.max_pending}) must be at least batch_size "
                f"({self.batch_size})"
            )
        if self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ValueError(
                "usage retry_initial must be positive and retry_max at least retry_initial"
            )
        if not self.schema.replace("_", "").isalnum():
            raise ValueError(
                f"usage schema {self.schema!r} must be letters, digits and '_' (a PostgreSQL "
                "schema name)"
            )
