"""Analytics math on synthetic traffic whose answers are known: spend, shares, trends, the
month-end forecast and the four kinds of recommendation with their savings."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import pytest

from tollway.analytics.forecast import forecast_from, month_bounds, month_end_forecast
from tollway.analytics.progress import StderrProgress
from tollway.analytics.recommendations import (
    MONTH_DAYS,
    RecommendationOptions,
    bare_model,
    batch_eligible,
    cache_repeats,
    cheaper_models,
    prompt_caching,
    recommend,
)
from tollway.analytics.spend import (
    Window,
    bucket_starts,
    parse_time,
    series,
    shares,
    spend,
    top,
    totals,
)
from tollway.analytics.trends import least_squares, period_change, trend
from tollway.types import Cost, Request, Usage
from tollway.usage.records import UsageQuery
from tollway.usage.store import MemoryUsageStore

D = Decimal
UTC = dt.UTC
_ids = itertools.count()
M = D(1_000_000)


def at(day: int, hour: int = 12, month: int = 6) -> dt.datetime:
    return dt.datetime(2025, month, day, hour, tzinfo=UTC)


def record(
    when: dt.datetime,
    cost: str | Decimal,
    *,
    model: str = "gpt-4.1",
    provider: str = "openai",
    usage: Usage | None = None,
    input_cost: str | Decimal | None = None,
    **fields: object,
):
    from tollway.usage.records import UsageRecord

    total = D(cost)
    part_in = D(input_cost) if input_cost is not None else total
    return UsageRecord(
        id=f"r{next(_ids)}",
        timestamp=when.timestamp(),
        provider=provider,
        model=model,
        usage=usage or Usage(100, 10),
        cost=Cost(input=part_in, output=total - part_in),
        **fields,  # type: ignore[arg-type]
    )


async def store_of(*records) -> MemoryUsageStore:
    store = MemoryUsageStore()
    await store.write(list(records))
    return store


class FakePricer:
    """Per-million-token rates: (input, output, cache read, cache write)."""

    RATES = {
        "anthropic/claude-sonnet-4": ("3", "15", "0.30", "3.75"),
        "openai/gpt-4.1": ("2", "8", "0.50", "2"),
        "gemini/gemini-2.5-pro": ("1.25", "10", "0.31", "1.25"),
        "openai/gpt-4o": ("2.5", "10", "1.25", "2.5"),
        "openai/gpt-4o-mini": ("0.15", "0.60", "0.075", "0.15"),
    }

    def __init__(self, known: set[str] | None = None) -> None:
        self.rates = {
            model: tuple(D(r) / M for r in rates)
            for model, rates in self.RATES.items()
            if known is None or model in known
        }

    def _key(self, model: str) -> str:
        provider, _, name = model.partition("/")
        return f"{provider}/{bare_model(name)}"

    def knows(self, model: str) -> bool:
        return self._key(model) in self.rates

    def price(self, model: str, usage: Usage) -> Cost:
        rates = self.rates.get(self._key(model))
        if rates is None:
            return Cost()
        i, o, r, w = rates
        plain = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        return Cost(
            input=plain * i,
            output=usage.output_tokens * o,
            cache_read=usage.cache_read_tokens * r,
            cache_write=usage.cache_write_tokens * w,
        )

    def estimate(self, request: Request) -> Decimal:
        return D(0)


# -- spend ----------------------------------------------------------------------------------


async def test_spend_by_dimension_with_shares_and_top_n() -> None:
    store = await store_of(
        record(at(1), "2", team="research", user="u1"),
        record(at(1), "1", team="research", user="u2"),
        record(at(2), "0.75", team="ops", user="u3"),
        record(at(2), "0.25", user="u4"),
    )
    window = Window(at(1, 0), at(3, 0))
    ranked = await top(store, window, "team")
    assert [(s.value, s.cost, s.share) for s in ranked] == [
        ("research", D(3), D("0.75")),
        ("ops", D("0.75"), D("0.1875")),
        ("(none)", D("0.25"), D("0.0625")),
    ]
    top_one = shares(await spend(store, window, ("user",)), "user", 1)
    assert [(s.value, s.cost, s.calls) for s in top_one] == [("u1", D(2), 1), ("(other)", D(2), 3)]
    assert (await totals(store, window)).cost == D(4)
    only_ops = await totals(store, window, {"team": "ops"})
    assert (only_ops.calls, only_ops.cost) == (1, D("0.75"))


async def test_daily_series_is_dense_and_sums_by_model() -> None:
    store = await store_of(
        record(at(1), "1", model="a"),
        record(at(1, 20), "2", model="b"),
        record(at(3), "4", model="a"),
    )
    window = Window(at(1, 0), at(4, 0))
    rows = await spend(store, window, ("model",), bucket="day")
    table = series(rows, window, "day", "model")
    assert list(table) == [at(d, 0).isoformat() for d in (1, 2, 3)]
    assert table[at(1, 0).isoformat()] == {"a": D(1), "b": D(2)}
    assert table[at(2, 0).isoformat()] == {}
    assert table[at(3, 0).isoformat()] == {"a": D(4)}


def test_bucket_starts_cover_the_window() -> None:
    window = Window(dt.datetime(2025, 11, 20, tzinfo=UTC), dt.datetime(2026, 2, 3, tzinfo=UTC))
    months = [s.strftime("%Y-%m") for s in bucket_starts(window, "month")]
    assert months == ["2025-11", "2025-12", "2026-01", "2026-02"]
    assert len(bucket_starts(Window(at(1, 0), at(2, 0)), "hour")) == 24


def test_parse_time_reads_durations_dates_and_words() -> None:
    now = dt.datetime(2025, 6, 30, 15, 30, tzinfo=UTC)
    assert parse_time("30d", now) == now - dt.timedelta(days=30)
    assert parse_time("12h", now) == now - dt.timedelta(hours=12)
    assert parse_time("2w", now) == now - dt.timedelta(days=14)
    assert parse_time("today", now) == dt.datetime(2025, 6, 30, tzinfo=UTC)
    assert parse_time("2025-06-01", now) == dt.datetime(2025, 6, 1, tzinfo=UTC)
    assert parse_time("2025-06-01T02:00+02:00", now) == dt.datetime(2025, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="30d, 12h"):
        parse_time("last tuesday", now)
    with pytest.raises(ValueError, match="before it starts"):
        Window(now, now - dt.timedelta(days=1))


def test_window_length_and_previous() -> None:
    window = Window(at(1, 0), at(11, 6))
    assert window.days == D("10.25")
    assert window.previous() == Window(at(1, 0) - dt.timedelta(days=10.25), at(1, 0))


# -- trends ---------------------------------------------------------------------------------


def test_least_squares_on_a_known_line() -> None:
    assert least_squares([D(1), D(3), D(5), D(7)]) == (D(2), D(1))
    slope, intercept = least_squares([D(2), D(2), D(5), D(5)])
    assert slope == D("1.2")
    assert intercept == D("1.7")
    assert least_squares([D(9)]) == (D(0), D(9))
    assert least_squares([]) == (D(0), D(0))


def test_period_change() -> None:
    assert period_change(D(150), D(100)) == (D(50), D("0.5"))
    assert period_change(D(5), D(0)) == (D(5), None)


async def test_trend_fits_complete_days_and_compares_periods() -> None:
    # Day i of June costs i dollars, days 1..20; the previous 10 days cost 1 dollar each.
    records = [record(at(day), str(day)) for day in range(11, 21)]
    records += [record(at(day), "1") for day in range(1, 11)]
    # Half a day's spend at the window's ragged end must not bend the slope.
    records.append(record(at(21, 3), "100"))
    store = await store_of(*records)
    window = Window(at(11, 0), at(21, 6))
    result = await trend(store, window)
    assert result.current == sum(D(d) for d in range(11, 21)) + 100
    assert result.previous == D(10)
    assert result.days == 10
    assert result.slope_per_day == D(1)
    assert result.intercept == D(11)


# -- forecast -------------------------------------------------------------------------------


def test_forecast_with_a_constant_rate_is_exact() -> None:
    # June has 30 days; on the 15th at midnight, 14 days at $10 are spent and 16 remain.
    result = forecast_from(at(15, 0), D(140), [D(10)] * 7)
    assert result.remaining_days == D(16)
    assert result.daily_rate == D(10)
    assert result.projected == D(300)
    assert (result.low, result.high) == (D(300), D(300))
    assert month_bounds(at(15)) == (at(1, 0), dt.datetime(2025, 7, 1, tzinfo=UTC))


def test_forecast_interval_from_the_spread_of_recent_days() -> None:
    result = forecast_from(at(15, 0), D(140), [D(8), D(12)])
    # s^2 = 8 over n = 2 days, R = 16: half-width 1.96 * sqrt(8 * (16 + 256 / 2)) = 66.5247...
    assert result.projected == D(300)
    assert abs(result.high - D("366.5247")) < D("0.0001")
    assert abs(result.low - D("233.4753")) < D("0.0001")
    # The low end never falls below what is already spent.
    wide = forecast_from(at(15, 0), D(140), [D(0), D(40)])
    assert wide.low == D(140)
    assert wide.high > wide.projected


def test_forecast_mid_day_counts_the_exact_remainder() -> None:
    as_of = dt.datetime(2025, 2, 14, 18, tzinfo=UTC)  # February 2025: 28 days
    result = forecast_from(as_of, D(100), [D(8)] * 7)
    assert result.remaining_days == D("14.25")
    assert result.projected == D(100) + D(8) * D("14.25")


async def test_month_end_forecast_from_the_store() -> None:
    records = [record(at(day, month=5), "10") for day in range(20, 32)]
    records += [record(at(day), "10") for day in range(1, 15)]
    store = await store_of(*records)
    result = await month_end_forecast(store, at(15, 0))
    assert result.spent == D(140)
    assert result.basis_days == 7
    assert result.projected == D(300)
    assert len(result.month_to_date) == 14
    assert sum(result.month_to_date.values()) == D(140)


async def test_month_end_forecast_ignores_days_before_the_first_call() -> None:
    # A deployment three days old: the rate is $10 a day, not $30 / 7.
    store = await store_of(*(record(at(day), "10") for day in (12, 13, 14)))
    result = await month_end_forecast(store, at(15, 0), lookback=7)
    assert result.basis_days == 3
    assert result.daily_rate == D(10)
    assert result.projected == D(30) + D(160)


async def test_month_end_forecast_with_no_complete_day_uses_the_month_so_far() -> None:
    store = await store_of(record(at(1, 2), "3"))
    result = await month_end_forecast(store, at(1, 6))
    assert result.basis_days == 0
    assert result.daily_rate == D(12)  # $3 in a quarter of a day
    assert result.low == result.spent == D(3)


# -- recommendations ------------------------------------------------------------------------

TEN_DAYS = Window(at(1, 0), at(11, 0))
SCALE = MONTH_DAYS / 10


async def test_cheaper_model_of_the_same_tier_with_re_priced_savings() -> None:
    usage = Usage(1_000_000, 100_000)
    store = await store_of(
        record(at(2), "4.5", model="claude-sonnet-4-20250514", provider="anthropic", usage=usage)
    )
    rows = await spend(store, TEN_DAYS, ("provider", "model"))
    [found] = cheaper_models(rows, FakePricer(), SCALE, RecommendationOptions())
    # Sonnet: 3 + 1.5 = $4.50; gpt-4.1: 2 + 0.8 = $2.80; gemini-2.5-pro: 1.25 + 1 = $2.25.
    assert found.title == "Move anthropic/claude-sonnet-4-20250514 to gemini/gemini-2.5-pro"
    assert found.savings == D("2.25")
    assert found.savings_per_month == D("2.25") * D("3.04375")
    assert found.items[0]["tier"] == "large"


async def test_a_cheaper_model_of_a_lower_tier_is_not_a_recommendation() -> None:
    store = await store_of(record(at(2), "3.5", model="gpt-4o", usage=Usage(1_000_000, 100_000)))
    rows = await spend(store, TEN_DAYS, ("provider", "model"))
    pricer = FakePricer({"openai/gpt-4o", "openai/gpt-4o-mini"})
    assert cheaper_models(rows, pricer, SCALE, RecommendationOptions()) == []
    # The same traffic, with gpt-4.1 priced: it is the same tier, and cheaper.
    [found] = cheaper_models(
        rows, FakePricer({"openai/gpt-4o", "openai/gpt-4.1"}), SCALE, RecommendationOptions()
    )
    assert found.items[0]["alternative"] == "openai/gpt-4.1"
    assert found.savings == D("3.5") * (1 - D("2.8") / D("3.5"))


async def test_repeated_prompts_save_all_but_the_first_call() -> None:
    store = await store_of(
        *(record(at(2), "1", prompt_hash="h1") for _ in range(3)),
        *(record(at(3), "0.5", prompt_hash="h2") for _ in range(2)),
        record(at(3), "9", prompt_hash="h3"),
        record(at(4), "7"),  # no hash: cannot tell
        record(at(4), "0", prompt_hash="h1", cached=True, saved=D(1)),
    )
    rows = await spend(store, TEN_DAYS, ("model", "prompt_hash"), filters={"cached": "false"})
    [found] = cache_repeats(rows, SCALE)
    assert found.savings == D("2.5")
    assert found.calls == 5
    assert found.items[0] == {
        "model": "gpt-4.1",
        "prompts": "2",
        "repeats": "3",
        "savings": "2.5",
    }


async def test_batch_eligible_traffic_at_half_price() -> None:
    store = await store_of(
        record(at(2, 14), "2", stream=True, tags={"batch": "true"}),  # marked
        record(at(2, 3), "1", provider="anthropic", model="claude-sonnet-4"),  # off-hours
        record(at(2, 3), "5", stream=True),  # someone is watching it stream
        record(at(2, 12), "7"),  # working hours
        record(at(2, 4), "1", provider="ollama", model="llama3"),  # no batch API
        record(at(3, 13), "4", user="etl-bot"),
    )
    options = RecommendationOptions()
    by = ("provider", "model", "stream", "tag:batch")
    rows = await spend(store, TEN_DAYS, by, bucket="hour")
    [found] = batch_eligible(rows, SCALE, options)
    assert found.savings == D("1.5")
    assert found.calls == 2
    with_users = RecommendationOptions(batch_users=frozenset({"etl-bot"}))
    rows = await spend(store, TEN_DAYS, (*by, "user"), bucket="hour")
    [found] = batch_eligible(rows, SCALE, with_users)
    assert found.savings == D("3.5")
    assert RecommendationOptions(off_hours=(22, 4)).off_hour(23)
    assert not RecommendationOptions(off_hours=(22, 4)).off_hour(12)


def _turn(day: int, hour: int, tokens: int, session: str, cache_read: int = 0, **kw: object):
    cost = D(tokens - cache_read) * 3 / M
    return record(
        at(day, hour),
        cost,
        model="claude-sonnet-4",
        provider="anthropic",
        usage=Usage(tokens, 0, cache_read),
        session=session,
        **kw,
    )


async def test_prompt_caching_savings_for_long_shared_beginnings() -> None:
    store = await store_of(
        _turn(2, 10, 2000, "s1"),
        _turn(2, 11, 3000, "s1"),
        _turn(2, 12, 4000, "s1"),
        _turn(2, 10, 500, "s2"),  # too short to cache
        _turn(2, 11, 800, "s2"),
        _turn(3, 10, 5000, "s3"),
        _turn(3, 11, 6000, "s3", cache_read=5000),  # already cached
    )
    progress_lines = []

    class Spy:
        def step(self, label: str, total: int | None = None) -> None:
            progress_lines.append((label, total))

        def advance(self, count: int = 1) -> None:
            progress_lines.append(("advance", count))

        def finish(self) -> None:
            pass

    options = RecommendationOptions()
    [priced] = await prompt_caching(
        store, TEN_DAYS, FakePricer(), SCALE, options, progress=Spy(), total=7
    )
    # 2000 + 3000 tokens could be read from the cache: $0.015 as input, $0.0015 as reads,
    # less writing the longest shared beginning (3000) once at a premium of $0.75 a million.
    assert priced.savings == D("0.015") - D("0.0015") - D("0.00225")
    assert priced.calls == 2
    assert priced.items[0]["cacheable_tokens"] == "5000"
    assert progress_lines[0] == ("scanning records for prompt caching", 7)
    assert sum(n for label, n in progress_lines if label == "advance") == 7
    # No pricer: reads at half the input rate seen in the records, no write premium.
    [unpriced] = await prompt_caching(store, TEN_DAYS, None, SCALE, options)
    assert unpriced.savings == D(5000) * 3 / M / 2


async def test_prompt_caching_groups_by_the_prefix_tag_too() -> None:
    store = await store_of(
        *(
            _turn(2, h, 3000, None, tags={"prefix": "support-bot"})  # type: ignore[arg-type]
            for h in range(10, 14)
        )
    )
    [found] = await prompt_caching(store, TEN_DAYS, None, SCALE, RecommendationOptions())
    assert found.calls == 3
    assert found.items[0]["cacheable_tokens"] == "9000"


async def test_recommend_orders_by_monthly_savings_and_leaves_out_cache_hits() -> None:
    store = await store_of(
        record(
            at(2),
            "4.5",
            model="claude-sonnet-4",
            provider="anthropic",
            usage=Usage(1_000_000, 100_000),
        ),
        *(record(at(3), "1", model="gpt-4o-mini", prompt_hash="same") for _ in range(2)),
        record(at(3), "0", model="gpt-4o-mini", prompt_hash="same", cached=True, saved=D(1)),
        record(at(4, 2), "0.5", model="gpt-4o-mini"),
    )
    found = await recommend(store, TEN_DAYS, FakePricer())
    assert [r.kind for r in found] == ["cheaper-model", "cache-repeats", "batch"]
    savings = [r.savings_per_month for r in found]
    assert savings == sorted(savings, reverse=True)
    assert found[1].savings == D(1)
    # Without a pricer there is no model to compare with; the others still come.
    assert [r.kind for r in await recommend(store, TEN_DAYS)] == ["cache-repeats", "batch"]
    tiny = RecommendationOptions(min_monthly_savings=D(100))
    assert await recommend(store, TEN_DAYS, FakePricer(), tiny) == []


def test_bare_model_names() -> None:
    assert bare_model("anthropic/claude-sonnet-4-20250514") == "claude-sonnet-4"
    assert bare_model("claude-opus-4-0") == "claude-opus-4"
    assert bare_model("gpt-4o-2024-08-06") == "gpt-4o"
    assert bare_model("gemini/gemini-2.5-pro-preview-05-06") == "gemini-2.5-pro"
    assert bare_model("gemini-2.0-flash") == "gemini-2.0-flash"


def test_stderr_progress_draws_one_line() -> None:
    import io

    out = io.StringIO()
    progress = StderrProgress(out, interval=0)
    progress.step("scanning records", 2000)
    progress.advance(1000)
    assert progress.line() == "scanning records: 1,000/2,000 (50%)"
    progress.finish()
    assert out.getvalue().endswith("\r")
    assert "\n" not in out.getvalue()


def test_usage_query_is_what_the_store_receives() -> None:
    query = TEN_DAYS.query(("model",), {"team": "x"})
    assert query == UsageQuery(TEN_DAYS.since, TEN_DAYS.until, {"team": "x"}, ("model",))
