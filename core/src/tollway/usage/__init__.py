"""Usage records, the store protocol, and the stores that ship with the core."""

from tollway.usage.records import UsageQuery, UsageRecord, UsageRow
from tollway.usage.store import MemoryUsageStore, UsageStore

__all__ = ["MemoryUsageStore", "UsageQuery", "UsageRecord", "UsageRow", "UsageStore"]
