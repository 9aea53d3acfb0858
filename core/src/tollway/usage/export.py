"""Usage out of the store: query rows or raw records as CSV or JSON, money as strings.

Money stays exact on the way out: a Decimal is written as its string (``"0.000150"``), never a
float. Times are ISO 8601 in UTC. Records can be many, so they are written as they are read.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import IO, Any

from tollway.usage.records import UsageRecord, UsageRow

FORMATS = ("csv", "json")

ROW_FIELDS: tuple[str, ...] = (
    "calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "cost", "saved", "cached_calls", "currency",
)  # fmt: skip
RECORD_FIELDS: tuple[str, ...] = (
    "id", "time", "timestamp", "provider", "model", "user", "session", "team", "api_key_id",
    "tags", "cached", "stream", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost_input", "cost_output", "cost_cache_read",
    "cost_cache_write", "cost_reasoning", "cost_request", "cost", "saved", "currency",
    "latency_s", "request_id", "prompt_hash", "finish_reason",
)  # fmt: skip


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")


def row_dict(row: UsageRow) -> dict[str, Any]:
    """A query row as JSON-ready values: its group keys, then its sums."""
    out: dict[str, Any] = dict(row.group)
    out.update(
        calls=row.calls,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cache_read_tokens=row.cache_read_tokens,
        cache_write_tokens=row.cache_write_tokens,
        reasoning_tokens=row.reasoning_tokens,
        cost=str(row.cost),
        saved=str(row.saved),
        cached_calls=row.cached_calls,
        currency=row.currency,
    )
    return out


def record_dict(record: UsageRecord) -> dict[str, Any]:
    """A record as JSON-ready values (the archive and export format)."""
    usage, cost = record.usage, record.cost
    return {
        "id": record.id,
        "time": record.when.isoformat(),
        "timestamp": record.timestamp,
        "provider": record.provider,
        "model": record.model,
        "user": record.user,
        "session": record.session,
        "team": record.team,
        "api_key_id": record.api_key_id,
        "tags": dict(record.tags),
        "cached": record.cached,
        "stream": record.stream,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_input": str(cost.input),
        "cost_output": str(cost.output),
        "cost_cache_read": str(cost.cache_read),
        "cost_cache_write": str(cost.cache_write),
        "cost_reasoning": str(cost.reasoning),
        "cost_request": str(cost.request),
        "cost": str(cost.total),
        "saved": str(record.saved),
        "currency": cost.currency,
        "latency_s": record.latency_s,
        "request_id": record.request_id,
        "prompt_hash": record.prompt_hash,
        "finish_reason": record.finish_reason,
    }


def record_from_dict(data: Mapping[str, Any]) -> UsageRecord:
    """The inverse of :func:`record_dict` (reads archives back)."""
    from tollway.types import Cost, Usage

    return UsageRecord(
        id=data["id"],
        timestamp=float(data["timestamp"]),
        provider=data["provider"],
        model=data["model"],
        usage=Usage(
            data["input_tokens"],
            data["output_tokens"],
            data["cache_read_tokens"],
            data["cache_write_tokens"],
            data["reasoning_tokens"],
        ),
        cost=Cost(
            Decimal(data["cost_input"]),
            Decimal(data["cost_output"]),
            Decimal(data["cost_cache_read"]),
            Decimal(data["cost_cache_write"]),
            Decimal(data["cost_reasoning"]),
            Decimal(data["cost_request"]),
            data["currency"],
        ),
        user=data["user"],
        session=data["session"],
        team=data["team"],
        api_key_id=data["api_key_id"],
        tags=data.get("tags") or {},
        cached=data["cached"],
        saved=Decimal(data["saved"]),
        stream=data["stream"],
        latency_s=data["latency_s"],
        request_id=data["request_id"],
        prompt_hash=data["prompt_hash"],
        finish_reason=data["finish_reason"],
    )


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return json.dumps(dict(value), ensure_ascii=False, sort_keys=True) if value else ""
    return value


def write_rows(
    rows: Sequence[UsageRow], out: IO[str], fmt: str, group_by: Sequence[str] = ()
) -> None:
    """Query rows to a text stream: CSV with a header, or a JSON array of objects."""
    _check(fmt)
    names = list(group_by) or (list(rows[0].group) if rows else [])
    if fmt == "json":
        json.dump([row_dict(r) for r in rows], out, indent=2, ensure_ascii=False)
        out.write("\n")
        return
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*names, *ROW_FIELDS])
    for row in rows:
        values = row_dict(row)
        writer.writerow([_cell(values.get(n)) for n in (*names, *ROW_FIELDS)])


def write_records(records: Iterable[UsageRecord], out: IO[str], fmt: str) -> int:
    """Records to a text stream: CSV, or JSON Lines (one object per line). Returns the count."""
    _check(fmt)
    count = 0
    if fmt == "json":
        for record in records:
            out.write(json.dumps(record_dict(record), ensure_ascii=False) + "\n")
            count += 1
        return count
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RECORD_FIELDS)
    for record in records:
        values = record_dict(record)
        writer.writerow([_cell(values[n]) for n in RECORD_FIELDS])
        count += 1
    return count


async def export_records(records: AsyncIterator[UsageRecord], out: IO[str], fmt: str) -> int:
    """:func:`write_records` for a store's ``records(query)``, page by page."""
    _check(fmt)
    count = 0
    page: list[UsageRecord] = []
    header = True
    async for record in records:
        page.append(record)
        if len(page) >= 1000:
            count += _write_page(page, out, fmt, header)
            header = False
            page = []
    if page or header:
        count += _write_page(page, out, fmt, header)
    return count


def _write_page(page: list[UsageRecord], out: IO[str], fmt: str, header: bool) -> int:
    if fmt == "json" or header:
        return write_records(page, out, fmt)
    writer = csv.writer(out, lineterminator="\n")
    for record in page:
        values = record_dict(record)
        writer.writerow([_cell(values[n]) for n in RECORD_FIELDS])
    return len(page)
