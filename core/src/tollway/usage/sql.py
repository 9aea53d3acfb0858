"""What the SQL usage stores share: the columns, rollups, and a query planner over them.

A :class:`~tollway.usage.records.UsageQuery` becomes one SQL statement that agrees with the
reference :func:`tollway.usage.store.aggregate` exactly. Where the query's filters and groups
allow it, the time range is cut into pieces so that whole days are read from the daily
rollup (whole months and weeks from the monthly and weekly ones), whole hours from the hourly
one, and only the ragged ends from the raw records:

- rollups are used when every filter and group is one of ``provider``, ``model``, ``user``,
  ``team``, ``api_key_id`` or a time bucket; a query on ``session``, ``prompt_hash``,
  ``cached``, ``stream`` or a tag reads the raw records;
- whole calendar months (UTC) come from the monthly rollup and whole ISO weeks left over on
  either side from the weekly one, unless the query's time groups or filters forbid it: "hour"
  reads hourly rollups and raw records only, "day" no weekly or monthly rollup, "week" no
  monthly one, "month" no weekly one.

Dialects (SQLite, PostgreSQL) supply the placeholders, the time type and the time-bucket
expressions; the rest is common. Timestamps are microseconds since the epoch in Python.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

from tollway.types import Cost, Usage
from tollway.usage.records import BUCKETS, UsageQuery, UsageRecord, UsageRow, to_nanos

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000

# Query dimension -> raw column. ``user`` and ``session`` are SQL keywords, hence the suffix.
DIM_COLUMNS: Mapping[str, str] = {
    "provider": "provider",
    "model": "model",
    "user": "user_id",
    "session": "session_id",
    "team": "team",
    "api_key_id": "api_key_id",
    "prompt_hash": "prompt_hash",
    "cached": "cached",
    "stream": "stream",
}
BOOL_DIMS = frozenset(("cached", "stream"))
# What a rollup row is keyed by, besides its time bucket (and the currency).
ROLLUP_DIMS: tuple[str, ...] = ("provider", "model", "user", "team", "api_key_id")
# Fixed-width rollup levels; "week" (ISO, from Monday) and "month" (calendar months) are
# summed from the day buckets.
ROLLUP_LEVELS: tuple[tuple[str, int], ...] = (("hour", HOUR_US), ("day", DAY_US))
LEVELS: tuple[str, ...] = ("hour", "day", "week", "month")

# The raw table's columns, in the order rows are written.
RECORD_COLUMNS: tuple[str, ...] = (
    "id", "ts", "provider", "model", "user_id", "session_id", "team", "api_key_id", "tags",
    "cached", "stream", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost_input", "cost_output", "cost_cache_read",
    "cost_cache_write", "cost_reasoning", "cost_request", "cost_total", "saved", "currency",
    "latency_s", "request_id", "prompt_hash", "finish_reason",
)  # fmt: skip
SUM_COLUMNS: tuple[str, ...] = (
    "calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "cost", "saved", "cached_calls",
)  # fmt: skip
ROLLUP_COLUMNS: tuple[str, ...] = (
    "bucket", "key", "provider", "model", "user_id", "team", "api_key_id", "currency",
    *SUM_COLUMNS,
)  # fmt: skip


def money(nanos: int) -> Decimal:
    """Nano-units as a Decimal without trailing zeros (0.0105, not 0.010500000; 0, not 0E-9)."""
    if nanos % 1_000_000_000 == 0:  # whole units: 3, not 3E+0 or 3.000000000
        return Decimal(nanos // 1_000_000_000)
    return Decimal(nanos).scaleb(-9).normalize()


def to_micros(when: dt.datetime) -> int:
    """Exact microseconds since the epoch (a naive datetime is local time, as Python has it)."""
    if when.tzinfo is None:
        when = when.astimezone()
    return (when - EPOCH) // dt.timedelta(microseconds=1)


def from_micros(micros: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=micros)


def month_floor(micros: int) -> int:
    """The start of the UTC calendar month that ``micros`` falls in, in microseconds."""
    when = from_micros(micros)
    return to_micros(when.replace(day=1, hour=0, minute=0, second=0, microsecond=0))


def week_floor(micros: int) -> int:
    """The start of the ISO week (Monday, UTC) that ``micros`` falls in."""
    day = micros - micros % DAY_US
    return day - ((day // DAY_US + 3) % 7) * DAY_US  # 1970-01-01 was a Thursday


def week_ceil(micros: int) -> int:
    start = week_floor(micros)
    return start if start == micros else start + 7 * DAY_US


def month_ceil(micros: int) -> int:
    """The first UTC month start at or after ``micros``."""
    start = month_floor(micros)
    if start == micros:
        return start
    when = from_micros(start)
    nxt = (
        when.replace(year=when.year + 1, month=1)
        if when.month == 12
        else when.replace(month=when.month + 1)
    )
    return to_micros(nxt)


def record_micros(record: UsageRecord) -> int:
    return round(record.timestamp * 1_000_000)


# JSON texts of tag sets and rollup keys, which repeat: built once per process, not per record.
_JSON_CACHE: dict[Any, str] = {}
_JSON_CACHE_MAX = 100_000


def _cached_json(value: Any, make: Callable[[], str]) -> str:
    text = _JSON_CACHE.get(value)
    if text is None:
        if len(_JSON_CACHE) >= _JSON_CACHE_MAX:
            _JSON_CACHE.clear()
        text = _JSON_CACHE[value] = make()
    return text


def tags_json(tags: Mapping[str, str]) -> str | None:
    """The tags as the raw table's JSON text (keys sorted), NULL when there are none."""
    if not tags:
        return None
    items = tuple(sorted(tags.items()))
    return _cached_json(items, lambda: json.dumps(dict(items), ensure_ascii=False))


def rollup_key(dims: tuple[Any, ...]) -> str:
    """A rollup row's ``key``: its dimension values as a compact JSON array."""
    return _cached_json(
        ("key", dims), lambda: json.dumps(dims, ensure_ascii=False, separators=(",", ":"))
    )


def _nanos(amount: Decimal) -> int:
    return to_nanos(amount) if amount else 0


def record_row(record: UsageRecord) -> tuple[Any, ...]:
    """A record as the raw table's row (``ts`` in microseconds, money in nano-units)."""
    usage, cost = record.usage, record.cost
    return (
        record.id,
        round(record.timestamp * 1_000_000),
        record.provider,
        record.model,
        record.user,
        record.session,
        record.team,
        record.api_key_id,
        tags_json(record.tags),
        record.cached,
        record.stream,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        _nanos(cost.input),
        _nanos(cost.output),
        _nanos(cost.cache_read),
        _nanos(cost.cache_write),
        _nanos(cost.reasoning),
        _nanos(cost.request),
        _nanos(cost.total),
        _nanos(record.saved),
        cost.currency,
        record.latency_s,
        record.request_id,
        record.prompt_hash,
        record.finish_reason,
    )


def row_record(row: Sequence[Any], micros: int) -> UsageRecord:
    """A raw table row (in RECORD_COLUMNS order) back as a record."""
    tags = row[8]
    return UsageRecord(
        id=row[0],
        timestamp=micros / 1_000_000,
        provider=row[2],
        model=row[3],
        user=row[4],
        session=row[5],
        team=row[6],
        api_key_id=row[7],
        tags=json.loads(tags) if tags else {},
        cached=bool(row[9]),
        stream=bool(row[10]),
        usage=Usage(int(row[11]), int(row[12]), int(row[13]), int(row[14]), int(row[15])),
        cost=Cost(
            money(int(row[16])),
            money(int(row[17])),
            money(int(row[18])),
            money(int(row[19])),
            money(int(row[20])),
            money(int(row[21])),
            row[24],
        ),
        saved=money(int(row[23])),
        latency_s=row[25],
        request_id=row[26],
        prompt_hash=row[27],
        finish_reason=row[28],
    )


def tag_rows(records: Iterable[UsageRecord]) -> list[tuple[str, str, str]]:
    return [(r.id, name, value) for r in records for name, value in r.tags.items()]


def rollup_rows(
    records: Iterable[UsageRecord],
    rows: Sequence[Sequence[Any]] | None = None,
    levels: Sequence[str] = LEVELS,
) -> dict[str, list[list[Any]]]:
    """Per level ("hour", "day", "month"): rows in ROLLUP_COLUMNS order (bucket in
    microseconds) summing the records, to be added to what the rollup tables hold. ``rows``
    are the records' :func:`record_row` tuples when the caller has them already."""
    if rows is None:
        rows = [record_row(r) for r in records]
    keys: dict[tuple[Any, ...], str] = {}
    hourly: dict[tuple[int, str], list[Any]] = {}
    for row in rows:
        micros = row[1]
        bucket = micros - micros % HOUR_US
        dims = (row[2], row[3], row[4], row[6], row[7], row[24])
        key = keys.get(dims)
        if key is None:
            key = keys[dims] = rollup_key(dims)
        found = hourly.get((bucket, key))
        if found is None:
            found = hourly[(bucket, key)] = [bucket, key, *dims, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        found[8] += 1
        found[9] += row[11]
        found[10] += row[12]
        found[11] += row[13]
        found[12] += row[14]
        found[13] += row[15]
        found[14] += row[22]
        found[15] += row[23]
        found[16] += int(row[9])
    out: dict[str, list[list[Any]]] = {"hour": list(hourly.values())}
    daily = _coarser(hourly, lambda bucket: bucket - bucket % DAY_US)
    out["day"] = list(daily.values())
    if "week" in levels:
        out["week"] = list(_coarser(daily, week_floor).values())
    if "month" in levels:
        months: dict[int, int] = {}

        def month_of(bucket: int) -> int:
            start = months.get(bucket)
            if start is None:
                start = months[bucket] = month_floor(bucket)
            return start

        out["month"] = list(_coarser(daily, month_of).values())
    return {level: sums for level, sums in out.items() if level in levels}


def _coarser(
    finer: Mapping[tuple[int, str], list[Any]], start_of: Callable[[int], int]
) -> dict[tuple[int, str], list[Any]]:
    out: dict[tuple[int, str], list[Any]] = {}
    for (bucket, key), sums in finer.items():
        start = start_of(bucket)
        found = out.get((start, key))
        if found is None:
            out[(start, key)] = [start, *sums[1:]]
        else:
            for i in range(8, 17):
                found[i] += sums[i]
    return out


class Dialect(Protocol):
    """What differs between SQL stores."""

    def placeholder(self, index: int) -> str:
        """The text of the ``index``-th (1-based) parameter."""

    def time_param(self, micros: int) -> Any:
        """A time bound as the store compares it with ``ts`` and ``bucket``."""

    def bucket_expr(self, bucket: str, column: str) -> str:
        """SQL for the start of the hour/day/week/month that ``column`` falls in (UTC)."""

    def bucket_param(self, bucket: str, start: dt.datetime) -> Any:
        """A bucket start as ``bucket_expr`` gives it."""

    def bucket_iso(self, bucket: str, value: Any) -> str:
        """What ``bucket_expr`` gave, as the ISO 8601 start of the bucket in UTC."""

    def flag(self, column: str, value: bool) -> str:
        """SQL true where the boolean column has ``value``."""

    def flag_count(self, column: str) -> str:
        """SQL counting the rows where the boolean column is true, inside an aggregate."""


class Tables(Protocol):
    records: str
    tags: str
    rollup_hour: str
    rollup_day: str
    rollup_week: str
    rollup_month: str


class _Params:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return self.dialect.placeholder(len(self.values))


def _parse_bucket(bucket: str, wanted: str) -> dt.datetime | None:
    """The bucket start ``wanted`` names, when it is exactly one as the reference writes it."""
    from tollway.usage.store import bucket_start

    try:
        when = dt.datetime.fromisoformat(wanted)
    except ValueError:
        return None
    if when.tzinfo is None or when.isoformat() != wanted:
        return None
    when = when.astimezone(dt.UTC)
    if bucket_start(when, bucket) != when or when.isoformat() != wanted:
        return None
    return when


def rollups_usable(query: UsageQuery) -> bool:
    names = (*query.filters, *query.group_by)
    return all(n in ROLLUP_DIMS or n in BUCKETS for n in names)


def rollup_levels(query: UsageQuery) -> frozenset[str]:
    """The rollups whose buckets a query's time groups and filters can be read from.

    A bucket filter or group must see each rollup row's own bucket: an hour one needs hourly
    rows, a day one daily rows; weeks and months do not split into each other.
    """
    names = {*query.filters, *query.group_by}
    if "hour" in names:
        return frozenset(("hour",))
    if "day" in names or ("week" in names and "month" in names):
        return frozenset(("hour", "day"))
    if "week" in names:
        return frozenset(("hour", "day", "week"))
    if "month" in names:
        return frozenset(("hour", "day", "month"))
    return frozenset(LEVELS)


def plan_segments(
    lo: int | None,
    hi: int | None,
    allow_day: bool,
    allow_month: bool = False,
    allow_week: bool = False,
) -> list[tuple[str, int | None, int | None]]:
    """Cut [lo, hi) into (source, lo, hi) pieces: "raw" ends, "hour", "day" and (when
    allowed, which needs ``allow_day``) "month" then "week" middles: whole calendar months
    first, whole ISO weeks in what is left on either side, days around them."""
    if lo is not None and hi is not None and lo >= hi:
        return [("raw", lo, hi)]

    def ceil(value: int | None, width: int) -> int | None:
        return None if value is None else -(-value // width) * width

    def floor(value: int | None, width: int) -> int | None:
        return None if value is None else value - value % width

    def before(a: int | None, b: int | None) -> bool:  # a < b, None being -inf / +inf
        return a is None or b is None or a < b

    def cut(
        a: int | None,
        b: int | None,
        level: str,
        up: Callable[[int], int],
        down: Callable[[int], int],
        inner: Callable[[int | None, int | None], None],
    ) -> bool:
        """[a, b) as whole ``level`` buckets in the middle and ``inner`` pieces at the ends."""
        c_lo = None if a is None else up(a)
        c_hi = None if b is None else down(b)
        if not before(c_lo, c_hi):
            return False
        if a is not None and c_lo is not None and a < c_lo:
            inner(a, c_lo)
        if b is not None and c_hi is not None and c_hi < b:
            inner(c_hi, b)
        segments.append((level, c_lo, c_hi))
        return True

    def days(a: int | None, b: int | None) -> None:
        if not (allow_week and cut(a, b, "week", week_ceil, week_floor, days_only)):
            days_only(a, b)

    def days_only(a: int | None, b: int | None) -> None:
        segments.append(("day", a, b))

    h_lo, h_hi = ceil(lo, HOUR_US), floor(hi, HOUR_US)
    if not before(h_lo, h_hi):
        return [("raw", lo, hi)]
    segments: list[tuple[str, int | None, int | None]] = []
    if lo is not None and h_lo is not None and lo < h_lo:
        segments.append(("raw", lo, h_lo))
    if hi is not None and h_hi is not None and h_hi < hi:
        segments.append(("raw", h_hi, hi))
    d_lo, d_hi = ceil(h_lo, DAY_US), floor(h_hi, DAY_US)
    if not (allow_day and before(d_lo, d_hi)):
        segments.append(("hour", h_lo, h_hi))
        return segments
    if h_lo is not None and d_lo is not None and h_lo < d_lo:
        segments.append(("hour", h_lo, d_lo))
    if h_hi is not None and d_hi is not None and d_hi < h_hi:
        segments.append(("hour", d_hi, h_hi))
    if not (allow_month and cut(d_lo, d_hi, "month", month_ceil, month_floor, days)):
        days(d_lo, d_hi)
    return segments


def build_query(
    query: UsageQuery, dialect: Dialect, tables: Tables, *, use_rollups: bool = True
) -> tuple[str, list[Any]]:
    """One SQL statement answering ``query``: group columns g0..gN, then SUM_COLUMNS, currency."""
    p = _Params(dialect)
    lo = to_micros(query.since) if query.since is not None else None
    hi = to_micros(query.until) if query.until is not None else None
    if use_rollups and rollups_usable(query):
        levels = rollup_levels(query)
        segments = plan_segments(
            lo,
            hi,
            allow_day="day" in levels,
            allow_month="month" in levels,
            allow_week="week" in levels,
        )
    else:
        segments = [("raw", lo, hi)]
    parts = [_segment(query, dialect, tables, p, source, a, b) for source, a, b in segments]
    groups = [f"g{i}" for i in range(len(query.group_by))]
    if len(parts) == 1:
        return parts[0], p.values
    sums = ", ".join(f"SUM({c}) AS {c}" for c in SUM_COLUMNS)
    select = ", ".join([*groups, sums, "MIN(currency) AS currency"])
    union = " UNION ALL ".join(parts)
    sql = f"SELECT {select} FROM ({union}) AS segments"
    if groups:
        sql += " GROUP BY " + ", ".join(groups)
    return sql, p.values


def _segment(
    query: UsageQuery,
    dialect: Dialect,
    tables: Tables,
    p: _Params,
    source: str,
    lo: int | None,
    hi: int | None,
) -> str:
    raw = source == "raw"
    table = tables.records if raw else getattr(tables, f"rollup_{source}")
    time_column = "r.ts" if raw else "r.bucket"
    joins: list[str] = []
    where: list[str] = []
    selects: list[str] = []
    for index, name in enumerate(query.group_by):
        if name in BUCKETS:
            expr = dialect.bucket_expr(name, time_column)
        elif name.startswith("tag:"):
            alias = f"tg{index}"
            joins.append(
                f"LEFT JOIN {tables.tags} {alias} ON {alias}.record_id = r.id "
                f"AND {alias}.name = {p(name[4:])}"
            )
            expr = f"{alias}.value"
        else:
            expr = f"r.{DIM_COLUMNS[name]}"
        selects.append(f"{expr} AS g{index}")
    # Parameters are positional in SQLite: the WHERE's come after the JOINs', as in the text.
    if lo is not None:
        where.append(f"{time_column} >= {p(dialect.time_param(lo))}")
    if hi is not None:
        where.append(f"{time_column} < {p(dialect.time_param(hi))}")
    for name, wanted in query.filters.items():
        where.append(_filter(name, str(wanted), dialect, tables, p, time_column))
    if raw:
        sums = [
            "COUNT(*) AS calls",
            "SUM(r.input_tokens) AS input_tokens",
            "SUM(r.output_tokens) AS output_tokens",
            "SUM(r.cache_read_tokens) AS cache_read_tokens",
            "SUM(r.cache_write_tokens) AS cache_write_tokens",
            "SUM(r.reasoning_tokens) AS reasoning_tokens",
            "SUM(r.cost_total) AS cost",
            "SUM(r.saved) AS saved",
            f"{dialect.flag_count('r.cached')} AS cached_calls",
        ]
    else:
        sums = [f"SUM(r.{c}) AS {c}" for c in SUM_COLUMNS]
    sql = f"SELECT {', '.join([*selects, *sums, 'MIN(r.currency) AS currency'])} FROM {table} r"
    if joins:
        sql += " " + " ".join(joins)
    if where:
        sql += " WHERE " + " AND ".join(where)
    if query.group_by:
        sql += " GROUP BY " + ", ".join(f"g{i}" for i in range(len(query.group_by)))
    return sql


def _filter(
    name: str, wanted: str, dialect: Dialect, tables: Tables, p: _Params, time_column: str
) -> str:
    # The reference compares str(value) with the wanted string: None matches "None", a flag
    # matches "true" or "false" only, a bucket its exact ISO start.
    if name in BOOL_DIMS:
        if wanted not in ("true", "false"):
            return "1 = 0"
        return dialect.flag(f"r.{DIM_COLUMNS[name]}", wanted == "true")
    if name in BUCKETS:
        start = _parse_bucket(name, wanted)
        if start is None:
            return "1 = 0"
        return f"{dialect.bucket_expr(name, time_column)} = {p(dialect.bucket_param(name, start))}"
    if name.startswith("tag:"):
        tag = name[4:]
        found = (
            f"EXISTS (SELECT 1 FROM {tables.tags} t WHERE t.record_id = r.id "
            f"AND t.name = {p(tag)} AND t.value = {p(wanted)})"
        )
        if wanted == "None":
            missing = (
                f"NOT EXISTS (SELECT 1 FROM {tables.tags} t WHERE t.record_id = r.id "
                f"AND t.name = {p(tag)})"
            )
            return f"({found} OR {missing})"
        return found
    column = f"r.{DIM_COLUMNS[name]}"
    if wanted == "None":
        return f"({column} = {p(wanted)} OR {column} IS NULL)"
    return f"{column} = {p(wanted)}"


def result_rows(
    query: UsageQuery, dialect: Dialect, rows: Iterable[Sequence[Any]]
) -> list[UsageRow]:
    """Rows of :func:`build_query`'s statement as UsageRows, sorted as the reference sorts."""
    width = len(query.group_by)
    out: list[UsageRow] = []
    for row in rows:
        calls = int(row[width] or 0)
        if not calls:
            continue  # the single row of an ungrouped query over nothing
        group: dict[str, Any] = {}
        for index, name in enumerate(query.group_by):
            value = row[index]
            if value is not None:
                if name in BUCKETS:
                    value = dialect.bucket_iso(name, value)
                elif name in BOOL_DIMS:
                    value = bool(value)
            group[name] = value
        sums = [int(v or 0) for v in row[width : width + len(SUM_COLUMNS)]]
        out.append(
            UsageRow(
                group,
                calls=sums[0],
                input_tokens=sums[1],
                output_tokens=sums[2],
                cache_read_tokens=sums[3],
                cache_write_tokens=sums[4],
                reasoning_tokens=sums[5],
                cost=money(sums[6]),
                saved=money(sums[7]),
                cached_calls=sums[8],
                currency=row[width + len(SUM_COLUMNS)] or "USD",
            )
        )
    out.sort(key=lambda r: tuple("" if v is None else str(v) for v in r.group.values()))
    return out


def records_where(
    query: UsageQuery, dialect: Dialect, tables: Tables, p_start: int = 0
) -> tuple[str, list[Any]]:
    """The WHERE clause (possibly empty) selecting a query's raw records, alias ``r``."""
    p = _Params(dialect)
    p.values.extend([None] * p_start)
    where: list[str] = []
    if query.since is not None:
        where.append(f"r.ts >= {p(dialect.time_param(to_micros(query.since)))}")
    if query.until is not None:
        where.append(f"r.ts < {p(dialect.time_param(to_micros(query.until)))}")
    for name, wanted in query.filters.items():
        where.append(_filter(name, str(wanted), dialect, tables, p, "r.ts"))
    return (" AND ".join(where) if where else "1 = 1"), p.values[p_start:]
