"""The real servers tests use (Redis, PostgreSQL), and a clear failure when one is down.

Tests never mock these servers. When one is not running, the test fails with the command that
starts it; it is never skipped, so CI cannot pass by not testing.
"""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit

REDIS_URL = os.environ.get("TOLLWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
POSTGRES_DSN = os.environ.get(
    "TOLLWAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
POSTGRES_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1.0
        ):
            return True
    except OSError:
        return False


def require_redis(url: str = REDIS_URL) -> str:
    """The Redis URL, or a test failure that says how to start Redis."""
    if not _reachable(url, 6379):
        import pytest

        pytest.fail(f"Redis is not reachable at {url}; start it with:\n  {REDIS_START}")
    return url


def require_postgres(dsn: str = POSTGRES_DSN) -> str:
    """The PostgreSQL DSN, or a test failure that says how to start PostgreSQL."""
    if not _reachable(dsn, 5432):
        import pytest

        pytest.fail(f"PostgreSQL is not reachable at {dsn}; start it with:\n  {POSTGRES_START}")
    return dsn


def unique_namespace(prefix: str = "test") -> str:
    """A namespace no other test run uses, so tests sharing one server never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
