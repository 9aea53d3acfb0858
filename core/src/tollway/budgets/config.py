"""The ``[budgets]`` table. Only attrs classes here: config loading imports it cheaply.

A wrong limit fails at load with its full key (``budgets.limits[2].window``): the errors are
raised as cattrs validation errors that carry the field's name, so the config loader reports
them at their own path.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)

BUDGET_SCOPES: tuple[str, ...] = ("global", "team", "user", "api_key", "model")
BUDGET_WINDOWS: tuple[str, ...] = ("daily", "weekly", "monthly", "rolling")
UNPRICED_POLICIES: tuple[str, ...] = ("allow", "refuse")


def _field_error(cls: type, path: tuple[str | int, ...], message: str) -> Exception:
    """An error at ``path`` below ``cls`` (field names and list indexes), for the loader to
    report as ``budgets.limits[2].window`` rather than at the whole table."""
    error: Exception = ValueError(message)
    for step in reversed(path):
        note: Any
        if isinstance(step, int):
            note = IterableValidationNote(f"Structuring item @ index {step}", step, Any)
            error.__notes__ = [*getattr(error, "__notes__", []), note]
            error = IterableValidationError("While structuring a list", [error], list)
        else:
            note = AttributeValidationNote(f"Structuring @ attribute {step}", step, None)
            error.__notes__ = [*getattr(error, "__notes__", []), note]
            error = ClassValidationError(f"While structuring {cls.__name__}", [error], cls)
    return error


def _finite(value: Decimal) -> bool:
    return value.is_finite()


@attrs.define(kw_only=True)
class BudgetLimit:
    """One ``[[budgets.limits]]`` entry: at most ``amount`` per ``window`` for a scope.

    ``scope`` is what is counted: every call (``global``), or per ``team``, ``user``,
    ``api_key`` (the request's ``api_key_id``) or ``model``. ``match`` is one value of that
    scope, or ``"*"`` for a separate budget per value (each user their own $5 a day).
    """

    amount: Decimal
    scope: str = "global"
    match: str = "*"
    # Calendar windows (daily, weekly from Monday, monthly) start at midnight in ``timezone``;
    # a rolling window is the last ``seconds`` seconds.
    window: str = "monthly"
    seconds: float | None = None
    # Fractions of ``amount`` at which an alert goes out once per window (1.0 is 100%).
    alerts: list[Decimal] = attrs.field(
        factory=lambda: [Decimal("0.5"), Decimal("0.8"), Decimal("1.0")]
    )
    # Refuse a call (BudgetExceededError, before any provider is called) that could take the
    # spend over ``amount``. A soft budget (false) only alerts.
    hard: bool = True
    # Overrides ``[budgets] timezone`` for this limit's calendar windows.
    timezone: str | None = None
    # A name for alerts, metrics and errors; made from scope, match and window when left out.
    name: str | None = None

    def __attrs_post_init__(self) -> None:
        for field, message in self.problems():
            raise _field_error(BudgetLimit, (field,), message)
        self.alerts = sorted(set(self.alerts))

    def problems(self) -> list[tuple[str, str]]:
        """``(field, message)`` for everything wrong with this limit."""
        out: list[tuple[str, str]] = []
        if self.scope not in BUDGET_SCOPES:
            out.append(
                (
                    "scope",
                    f"{self.scope!r} is not a budget scope; use one of {', '.join(BUDGET_SCOPES)}",
                )
            )
        if self.scope == "global" and self.match != "*":
            out.append(("match", "a global budget counts every call; leave match as '*'"))
        if not self.match:
            out.append(("match", "is empty; give a value of the scope, or '*' for each value"))
        if self.window not in BUDGET_WINDOWS:
            out.append(
                (
                    "window",
                    f"{self.window!r} is not a window; use one of {', '.join(BUDGET_WINDOWS)}",
                )
            )
        if self.window == "rolling":
            if self.seconds is None or not self.seconds > 0:
                out.append(
                    (
                        "seconds",
                        "a rolling window needs its length: seconds = 3600 for the last hour",
                    )
                )
        elif self.seconds is not None:
            out.append(
                (
                    "seconds",
                    f"only a rolling window has a length; a {self.window} window "
                    "follows the calendar (remove seconds, or set window = 'rolling')",
                )
            )
        if not _finite(self.amount) or self.amount < 0:
            out.append(("amount", f"{self.amount} must be an amount of money, 0 or more"))
        for fraction in self.alerts:
            if not _finite(fraction) or not fraction > 0:
                out.append(
                    (
                        "alerts",
                        f"{fraction} is not a fraction of the amount above 0 (0.5 alerts at 50%)",
                    )
                )
                break
        if self.timezone is not None:
            problem = timezone_problem(self.timezone)
            if problem:
                out.append(("timezone", problem))
        return out

    def identity(self, default_timezone: str) -> tuple[str, str, str]:
        """What makes two limits the same budget: (scope, match, window spec)."""
        return (self.scope, self.match, window_spec(self, default_timezone))

    def label(self, default_timezone: str = "UTC") -> str:
        if self.name:
            return self.name
        who = "all calls" if self.scope == "global" else f"{self.scope}={self.match}"
        return f"{who} {window_spec(self, default_timezone)}"


def window_spec(limit: BudgetLimit, default_timezone: str = "UTC") -> str:
    """``monthly``, ``daily@Europe/Paris`` or ``rolling3600``: part of every counter's key."""
    if limit.window == "rolling":
        return f"rolling{limit.seconds:g}"
    zone = limit.timezone or default_timezone
    return limit.window if zone == "UTC" else f"{limit.window}@{zone}"


def timezone_problem(name: str) -> str | None:
    if name == "UTC":
        return None
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"{name!r} is not a time zone; use an IANA name such as 'UTC' or 'Europe/Paris'"
    return None


@attrs.define(kw_only=True)
class EmergencyStopConfig:
    """``[budgets.emergency_stop]``: stop every call when the spend rate jumps.

    Trips when the spend of the last ``window`` seconds is at least ``minimum`` and its rate is
    above ``factor`` times the rate of the ``baseline`` seconds before it. Once tripped, every
    call raises BudgetExceededError until an operator resets it (``tollway budget reset``).
    """

    # Automatic tripping; an operator can trip and reset by hand whether or not it is on.
    enabled: bool = False
    window: float = 300.0
    baseline: float = 3600.0
    factor: float = 5.0
    # Spend in the reporting currency the last ``window`` must reach before it can trip.
    minimum: Decimal = Decimal("10")

    def __attrs_post_init__(self) -> None:
        if not self.window > 0:
            raise _field_error(EmergencyStopConfig, ("window",), "must be more than 0 seconds")
        if not self.baseline >= self.window:
            raise _field_error(
                EmergencyStopConfig,
                ("baseline",),
                f"{self.baseline:g} must be at least window ({self.window:g} s): the baseline "
                "is the longer stretch the last window is compared with",
            )
        if not self.factor > 0:
            raise _field_error(EmergencyStopConfig, ("factor",), "must be more than 0")
        if not _finite(self.minimum) or self.minimum < 0:
            raise _field_error(
                EmergencyStopConfig, ("minimum",), "must be an amount of money, 0 or more"
            )


@attrs.define(kw_only=True)
class BudgetsConfig:
    """Spending limits enforced before any provider is called."""

    enabled: bool = False
    # "local" keeps the counters in the process; "redis" shares them (tollway-redis).
    backend: str = "local"
    # Redis: the server, and the prefix of every key (processes that share budgets share it).
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "tollway:budgets"
    # Redis: connections per process; calls beyond that wait for one rather than fail.
    max_connections: int = 64
    # Where calendar windows start (midnight, Monday, the 1st) unless a limit says otherwise.
    timezone: str = "UTC"
    limits: list[BudgetLimit] = attrs.field(factory=list)
    emergency_stop: EmergencyStopConfig = attrs.field(factory=EmergencyStopConfig)
    # Registered exporters (tollway_register_exporters) that receive alert events; their
    # options come from [plugins.NAME]. With none, alerts are logged as warnings.
    exporters: list[str] = attrs.field(factory=list)
    # A call to a model no price source knows costs nothing: "allow" lets it through a hard
    # budget (with a warning once per model), "refuse" refuses it where a hard budget applies.
    unpriced: str = "allow"
    # Redis: seconds a reservation is held at most; one that a dead process never settled
    # lapses after this long instead of holding budget until the window ends.
    reservation_timeout: float = 600.0

    def __attrs_post_init__(self) -> None:
        problem = timezone_problem(self.timezone)
        if problem:
            raise _field_error(BudgetsConfig, ("timezone",), problem)
        if self.unpriced not in UNPRICED_POLICIES:
            raise _field_error(
                BudgetsConfig,
                ("unpriced",),
                f"{self.unpriced!r} is not 'allow' or 'refuse'",
            )
        if self.max_connections < 1:
            raise _field_error(BudgetsConfig, ("max_connections",), "must be at least 1")
        if not self.reservation_timeout > 0:
            raise _field_error(
                BudgetsConfig, ("reservation_timeout",), "must be more than 0 seconds"
            )
        seen: dict[tuple[str, str, str], int] = {}
        names: dict[str, int] = {}
        for index, limit in enumerate(self.limits):
            identity = limit.identity(self.timezone)
            if identity in seen:
                raise _field_error(
                    BudgetsConfig,
                    ("limits", index, "match"),
                    f"limits[{seen[identity]}] is already a budget for scope={limit.scope} "
                    f"match={limit.match!r} window={identity[2]}; merge the two, or change "
                    "the window",
                )
            seen[identity] = index
            label = limit.label(self.timezone)
            if label in names:
                raise _field_error(
                    BudgetsConfig,
                    ("limits", index, "name"),
                    f"limits[{names[label]}] is already called {label!r}; give each a name "
                    "of its own",
                )
            names[label] = index
