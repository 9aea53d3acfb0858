"""Budget config and windows: errors name their key, windows fall on the calendar (month end,
Monday, a time zone with daylight saving), rolling windows forget old spend."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tollway.budgets.config import BudgetLimit, BudgetsConfig, EmergencyStopConfig
from tollway.budgets.counters import BudgetWindow, LocalBudgetCounters
from tollway.budgets.emergency import SpendRate
from tollway.budgets.windows import SLOTS, Window
from tollway.config import load_config
from tollway.errors import ConfigError
from tollway.plugins import build_plugin_manager


def load(data: dict[str, Any]) -> BudgetsConfig:
    plugins = build_plugin_manager(load_entrypoints=False)
    return load_config(data={"budgets": data}, plugins=plugins, environ={}).budgets


def load_error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(data)
    return caught.value


def ts(*parts: int, tz: dt.tzinfo = dt.UTC) -> float:
    return dt.datetime(*parts, tzinfo=tz).timestamp()  # type: ignore[misc]


# -- config ------------------------------------------------------------------------------------


def test_a_toml_file_loads_into_limits(tmp_path: Path) -> None:
    file = tmp_path / "tollway.toml"
    file.write_text(
        """
[budgets]
enabled = true
timezone = "Europe/Paris"

[[budgets.limits]]
scope = "team"
match = "research"
window = "monthly"
amount = 500
alerts = [0.8, 0.5, 1.0]

[[budgets.limits]]
scope = "user"
window = "daily"
amount = "5.00"
hard = false

[[budgets.limits]]
window = "rolling"
seconds = 3600
amount = 0.1

[budgets.emergency_stop]
enabled = true
factor = 4
minimum = 2.5
""",
        encoding="utf-8",
    )
    config = load_config(file, plugins=build_plugin_manager(load_entrypoints=False), environ={})
    team, user, rolling = config.budgets.limits
    assert team.amount == Decimal(500)
    assert team.alerts == [Decimal("0.5"), Decimal("0.8"), Decimal("1.0")]  # sorted
    assert (user.scope, user.match, user.window, user.amount, user.hard) == (
        "user",
        "*",
        "daily",
        Decimal("5.00"),
        False,
    )
    assert rolling.amount == Decimal("0.1")  # a TOML float becomes its decimal, not 0.1000..5
    assert (rolling.window, rolling.seconds) == ("rolling", 3600)
    assert config.budgets.emergency_stop.minimum == Decimal("2.5")
    assert team.label(config.budgets.timezone) == "team=research monthly@Europe/Paris"


@pytest.mark.parametrize(
    ("limit", "key", "words"),
    [
        ({"window": "yearly"}, "budgets.limits[1].window", "daily, weekly, monthly, rolling"),
        ({"scope": "org"}, "budgets.limits[1].scope", "global, team, user, api_key, model"),
        ({"scope": "global", "match": "x"}, "budgets.limits[1].match", "leave match as '*'"),
        ({"window": "rolling"}, "budgets.limits[1].seconds", "seconds = 3600"),
        ({"window": "daily", "seconds": 60}, "budgets.limits[1].seconds", "only a rolling"),
        ({"amount": -1}, "budgets.limits[1].amount", "0 or more"),
        ({"alerts": [0.5, 0]}, "budgets.limits[1].alerts", "above 0"),
        ({"timezone": "Mars/Olympus"}, "budgets.limits[1].timezone", "IANA name"),
        ({"scope": "user", "match": ""}, "budgets.limits[1].match", "is empty"),
        ({"amount": None}, "budgets.limits[1].amount", ""),
    ],
)
def test_a_wrong_limit_names_its_key(limit: dict[str, Any], key: str, words: str) -> None:
    entry = {"amount": 5, **limit}
    if entry["amount"] is None:
        del entry["amount"]
    error = load_error({"limits": [{"amount": 1, "window": "weekly"}, entry]})
    assert error.key == key
    assert str(error).startswith(key + ":")
    assert words in str(error)


def test_two_limits_for_the_same_budget_are_refused() -> None:
    error = load_error(
        {
            "limits": [
                {"scope": "team", "match": "a", "amount": 1},
                {"scope": "team", "match": "b", "amount": 1},
                {"scope": "team", "match": "a", "amount": 2},
            ]
        }
    )
    assert error.key == "budgets.limits[2].match"
    assert "limits[0] is already a budget for scope=team match='a'" in str(error)
    # The same scope and match over another window is another budget.
    load(
        {
            "limits": [
                {"scope": "team", "match": "a", "amount": 1},
                {"scope": "team", "match": "a", "amount": 1, "window": "daily"},
            ]
        }
    )


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"timezone": "Nowhere/Special"}, "budgets.timezone"),
        ({"unpriced": "maybe"}, "budgets.unpriced"),
        ({"emergency_stop": {"window": 0}}, "budgets.emergency_stop.window"),
        ({"emergency_stop": {"baseline": 60}}, "budgets.emergency_stop.baseline"),
        ({"emergency_stop": {"factor": -1}}, "budgets.emergency_stop.factor"),
        ({"limits": [{"amount": 1, "windw": "daily"}]}, "budgets.limits[0].windw"),
    ],
)
def test_a_wrong_budgets_table_names_its_key(table: dict[str, Any], key: str) -> None:
    assert load_error(table).key == key


def test_an_unknown_key_suggests_the_right_one() -> None:
    error = load_error({"limits": [{"amount": 1, "windw": "daily"}]})
    assert "did you mean 'window'" in str(error)


# -- windows -----------------------------------------------------------------------------------


def test_a_month_ends_at_midnight_on_the_first_of_the_next() -> None:
    monthly = Window("monthly")
    last_second = monthly.span(ts(2025, 1, 31, 23, 59, 59))
    assert last_second.id == "m2025-01"
    assert (last_second.start, last_second.end) == (ts(2025, 1, 1), ts(2025, 2, 1))
    first_second = monthly.span(ts(2025, 2, 1))
    assert first_second.id == "m2025-02"
    assert first_second.end == ts(2025, 3, 1)
    assert monthly.span(ts(2024, 2, 29, 12)).end == ts(2024, 3, 1)  # a leap year
    assert monthly.span(ts(2025, 12, 31, 23, 59)).end == ts(2026, 1, 1)  # the year turns


def test_a_week_starts_on_monday() -> None:
    weekly = Window("weekly")
    sunday_night = weekly.span(ts(2025, 2, 2, 23, 59, 59))  # a Sunday
    monday = weekly.span(ts(2025, 2, 3))
    assert sunday_night.id == "w2025-01-27"
    assert (sunday_night.start, sunday_night.end) == (ts(2025, 1, 27), ts(2025, 2, 3))
    assert monday.id == "w2025-02-03"
    assert dt.datetime.fromtimestamp(monday.start, dt.UTC).weekday() == 0


def test_a_day_in_a_time_zone_follows_its_midnight_and_its_clock_changes() -> None:
    import zoneinfo

    paris = zoneinfo.ZoneInfo("Europe/Paris")
    daily = Window("daily", timezone="Europe/Paris")
    # 23:30 UTC on 9 January is already the 10th in Paris (UTC+1).
    span = daily.span(ts(2025, 1, 9, 23, 30))
    assert span.id == "d2025-01-10"
    assert span.start == ts(2025, 1, 9, 23)
    # The day the clocks go forward has 23 hours; the day they go back, 25.
    spring = daily.span(ts(2025, 3, 30, 12, tz=paris))
    autumn = daily.span(ts(2025, 10, 26, 12, tz=paris))
    assert spring.end - spring.start == 23 * 3600
    assert autumn.end - autumn.start == 25 * 3600
    assert autumn.end == ts(2025, 10, 27, tz=paris)


def test_rolling_spend_is_forgotten_once_older_than_the_window() -> None:
    counters = LocalBudgetCounters()
    window = BudgetWindow("w", limit=100, hard=True, rolling=600.0, slot=600.0 / SLOTS)
    start = 1_000_000.0
    assert counters.reserve_now([(window, 60)], start)[0] == -1
    counters.settle_now([(window, 60)], 60, start, start)
    assert counters.reserve_now([(window, 60)], start + 300)[0] == 0  # 60 + 60 > 100
    # Still there just before the window has passed (never less than the window)...
    assert counters.read_now([window], start + 599)[0] == (60, 0)
    assert counters.reserve_now([(window, 60)], start + 599)[0] == 0
    # ...and gone one slot after it.
    later = start + 600 + window.slot
    assert counters.read_now([window], later)[0] == (0, 0)
    assert counters.reserve_now([(window, 60)], later)[0] == -1


def test_a_calendar_window_counter_is_fresh_in_the_next_window() -> None:
    counters = LocalBudgetCounters()
    monthly = Window("monthly")
    january = monthly.span(ts(2025, 1, 31, 23))
    february = monthly.span(ts(2025, 2, 1, 0, 0, 1))
    jan = BudgetWindow(f"k|{january.id}", limit=10, hard=True, expires_at=january.end)
    feb = BudgetWindow(f"k|{february.id}", limit=10, hard=True, expires_at=february.end)
    counters.reserve_now([(jan, 10)], january.start)
    counters.settle_now([(jan, 10)], 10, january.start, january.start)
    assert counters.reserve_now([(jan, 1)], january.end - 1)[0] == 0
    assert counters.reserve_now([(feb, 10)], february.start)[0] == -1


# -- the emergency stop's judgement --------------------------------------------------------------


def test_the_spend_rate_trips_on_a_jump_above_factor_and_minimum() -> None:
    rate = SpendRate(
        EmergencyStopConfig(enabled=True, window=60, baseline=600, factor=3, minimum=Decimal("0.5"))
    )
    assert (rate.slot, rate.slots) == (6.0, 110)
    nano = 10**9
    # A steady dollar a minute: the last minute is no faster than the ten before it.
    steady = [nano // 10] * 110
    assert rate.judge(steady) is None
    # Four dollars in the last minute after a dollar a minute: 4x > 3x.
    jump = [nano // 10] * 100 + [4 * nano // 10] * 10
    reason = rate.judge(jump)
    assert reason is not None
    assert "4.0x the rate of the 600 s before" in reason
    # Three dollars is not above 3x.
    assert rate.judge([nano // 10] * 100 + [3 * nano // 10] * 10) is None
    # From silence, the minimum decides.
    assert rate.judge([0] * 100 + [nano // 25] * 10) is None  # $0.40 < $0.50
    assert "after nothing" in (rate.judge([0] * 100 + [nano // 10] * 10) or "")


def test_limits_can_be_built_in_code() -> None:
    limit = BudgetLimit(amount=Decimal(5), scope="user", window="daily")
    assert limit.label() == "user=* daily"
    with pytest.raises(Exception, match="BudgetLimit") as caught:
        BudgetLimit(amount=Decimal(5), window="hourly")
    assert "'hourly' is not a window" in str(caught.value.exceptions[0])  # type: ignore[attr-defined]
