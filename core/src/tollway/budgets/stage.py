"""The budget stage: reserve a call's most possible cost before it, settle to the actual after.

Before the call the stage estimates the most the call can cost (the shared pricer's
``estimate``: the prompt's tokens estimated offline plus ``max_tokens`` at the output rate) and
reserves it on every budget that applies, all or none, in one atomic step of the counters
backend. If a hard budget would go over its amount, the call raises BudgetExceededError naming
the budget, and no provider is called. After the call the reservation is replaced by the actual
cost (``response.cost.total``, priced by the cost stage inside this one; a cache hit costs 0, so
its reservation is simply released). A call that fails is released.

A stream is settled when it ends: to the cost of its usage chunk; if it ends without one
(abandoned by the reader, or cut off after it started), to an estimate of what it used (the
prompt, plus the text received); if it fails before anything arrived, released.

Because every call in flight holds its estimated maximum, concurrent calls cannot together
spend past a hard budget: the spend stays within the amount as long as the estimates hold,
and beyond it by at most the one call whose actual cost exceeded its estimate.

Per call this is arithmetic and dict lookups: which budgets apply (their window recomputed only
when it ends), one estimate, and with the local backend two synchronous counter updates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from tollway.budgets.alerts import (
    EMERGENCY_STOP,
    EXCEEDED,
    THRESHOLD,
    AlertSink,
    BudgetAlert,
    money,
)
from tollway.budgets.config import BudgetLimit, BudgetsConfig
from tollway.budgets.counters import (
    GRACE,
    RESERVED,
    STOPPED,
    BudgetCounters,
    BudgetWindow,
    Charge,
    Settled,
)
from tollway.budgets.emergency import SpendRate
from tollway.budgets.windows import Window, iso
from tollway.errors import BudgetExceededError, ConfigError, TollwayError
from tollway.pipeline import Stage
from tollway.types import Request, Response, StreamChunk, Usage
from tollway.usage.records import from_nanos, to_nanos

if TYPE_CHECKING:
    from tollway.metrics import Metrics
    from tollway.pricing.base import Pricer
    from tollway.stages import StageContext

log = structlog.get_logger("tollway.budgets")

Clock = Callable[[], float]

# The value of a scope for calls that do not carry it (no user, ...): they share one budget
# rather than escape it.
UNATTRIBUTED = "(none)"
# How often a process asks a shared backend whether the emergency stop is tripped, for calls
# that no budget applies to (calls that reserve learn it from the reserve itself).
STOP_POLL = 1.0


def _scope_getter(scope: str) -> Callable[[Request], str | None]:
    if scope == "global":
        return lambda request: "*"
    if scope == "team":
        return lambda request: request.team
    if scope == "user":
        return lambda request: request.user
    if scope == "api_key":
        return lambda request: request.api_key_id
    if scope == "model":
        return lambda request: request.model
    raise ConfigError(f"unknown budget scope {scope!r}", key="budgets.limits.scope")


@attrs.frozen(slots=True)
class BudgetStatus:
    """One budget in its current window, as ``tollway budget status`` shows it."""

    budget: str
    scope: str
    value: str | None
    window: str
    amount: Decimal
    spent: Decimal
    reserved: Decimal
    hard: bool
    window_start: float | None
    window_end: float | None
    currency: str = "USD"

    @property
    def remaining(self) -> Decimal:
        return max(self.amount - self.spent - self.reserved, Decimal(0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "scope": self.scope,
            "value": self.value,
            "window": self.window,
            "amount": _plain(self.amount),
            "spent": _plain(self.spent),
            "reserved": _plain(self.reserved),
            "remaining": _plain(self.remaining),
            "hard": self.hard,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "currency": self.currency,
        }


def _plain(amount: Decimal) -> str:
    """Money as a plain decimal string: ``0.1``, ``499.9``, ``0`` (not ``0E-9``)."""
    return f"{amount.normalize():f}"


class _Applied:
    """A budget for one value of its scope (``team=research``), with its current window."""

    __slots__ = ("budget", "end", "label", "start", "value", "window")

    def __init__(self, budget: _Budget, value: str) -> None:
        self.budget = budget
        self.value = value
        self.label = budget.label_for(value)
        self.end = -1.0  # the current window's end; before anything, recompute
        self.start = 0.0
        self.window: BudgetWindow = BudgetWindow("", 0, False)

    def current(self, now: float) -> BudgetWindow:
        if now < self.end:
            return self.window
        budget = self.budget
        span = budget.window.span(now)
        rolling = budget.window.rolling
        self.start = span.start
        # A rolling window's one counter never changes: look again only after a long while.
        self.end = span.end if not rolling else now + 86_400.0
        self.window = BudgetWindow(
            key=budget.key(span.id, self.value),
            limit=budget.limit,
            hard=budget.hard,
            expires_at=span.end + GRACE if not rolling else 0.0,
            rolling=rolling,
            slot=budget.window.slot,
            thresholds=budget.thresholds,
        )
        return self.window


class _Budget:
    """One configured limit, compiled for the request path."""

    __slots__ = (
        "_applied",
        "amount",
        "fixed",
        "fractions",
        "get",
        "hard",
        "index",
        "limit",
        "limit_config",
        "match",
        "match_all",
        "name",
        "scope",
        "spec",
        "thresholds",
        "window",
    )

    def __init__(self, limit: BudgetLimit, index: int, match: str, default_timezone: str) -> None:
        from tollway.budgets.config import window_spec

        self.limit_config = limit
        self.index = index
        self.scope = limit.scope
        self.match = match
        self.match_all = match == "*" and limit.scope != "global"
        self.get = _scope_getter(limit.scope)
        self.window = Window.of(limit, default_timezone)
        self.spec = window_spec(limit, default_timezone)
        self.name = limit.name
        self.amount = limit.amount
        self.limit = to_nanos(limit.amount)
        self.hard = limit.hard
        self.fractions = tuple(limit.alerts)
        self.thresholds = tuple(to_nanos(limit.amount * f) for f in limit.alerts)
        self._applied: dict[str, _Applied] = {}
        self.fixed = (
            None if self.match_all else _Applied(self, "*" if self.scope == "global" else match)
        )

    def key(self, window_id: str, value: str) -> str:
        # scope | "=" (one value) or "*" (each value) | window spec | window id | value: the
        # value goes last, so it may hold any character.
        kind = "*" if self.match_all else "="
        return f"{self.scope}|{kind}|{self.spec}|{window_id}|{value}"

    def label_for(self, value: str) -> str:
        if self.name:
            return f"{self.name}[{value}]" if self.match_all else self.name
        who = "all calls" if self.scope == "global" else f"{self.scope}={value}"
        return f"{who} {self.spec}"

    def applied(self, value: str) -> _Applied:
        found = self._applied.get(value)
        if found is None:
            if len(self._applied) > 100_000:  # many users: a bounded memo, rebuilt as used
                self._applied.clear()
            found = self._applied[value] = _Applied(self, value)
        return found


class Budgets:
    """The configured limits, compiled: which apply to a call, and what they stand at.

    Shared by the stage and ``tollway budget status``.
    """

    def __init__(self, config: BudgetsConfig, *, route: Callable[[str], str] | None = None) -> None:
        self.config = config
        budgets = []
        for index, limit in enumerate(config.limits):
            match = limit.match
            if limit.scope == "model" and match != "*" and route is not None:
                try:
                    match = route(match)
                except TollwayError:
                    pass  # a model no provider offers yet is matched as written
            budgets.append(_Budget(limit, index, match, config.timezone))
        self.budgets = tuple(budgets)

    def applied(self, request: Request) -> list[_Applied]:
        out = []
        for budget in self.budgets:
            value = budget.get(request)
            if value is None:
                value = UNATTRIBUTED
            if budget.match_all:
                out.append(budget.applied(value))
            elif budget.fixed is not None and (value == budget.match or budget.scope == "global"):
                out.append(budget.fixed)
        return out

    async def status(
        self, counters: BudgetCounters, now: float, currency: str = "USD"
    ) -> list[BudgetStatus]:
        """Every budget in its current window: the fixed ones always, a per-value one for each
        value that has a counter in the window."""
        entries: dict[str, tuple[int, int]] | None = None
        targets: list[_Applied] = []
        for budget in self.budgets:
            if budget.fixed is not None:
                targets.append(budget.fixed)
                continue
            if entries is None:
                entries = await counters.entries(now)
            span = budget.window.span(now)
            prefix = budget.key(span.id, "")
            for key in sorted(entries):
                if key.startswith(prefix):
                    targets.append(budget.applied(key[len(prefix) :]))
        windows = [applied.current(now) for applied in targets]
        read = await counters.read(windows, now) if windows else []
        out = []
        for applied, (spent, reserved) in zip(targets, read, strict=True):
            budget = applied.budget
            rolling = bool(budget.window.rolling)
            out.append(
                BudgetStatus(
                    budget=applied.label,
                    scope=budget.scope,
                    value=None if budget.scope == "global" else applied.value,
                    window=budget.window.describe(),
                    amount=budget.amount,
                    spent=from_nanos(spent),
                    reserved=from_nanos(reserved),
                    hard=budget.hard,
                    window_start=None if rolling else applied.start,
                    window_end=None if rolling else applied.end,
                    currency=currency,
                )
            )
        return out


class BudgetStage(Stage):
    """Reserves on every budget that applies before a call; settles after it."""

    name = "budget"

    def __init__(
        self,
        config: BudgetsConfig,
        counters: BudgetCounters,
        pricer: Pricer,
        metrics: Metrics,
        *,
        route: Callable[[str], str] | None = None,
        clock: Clock = time.time,
        alerts: AlertSink | None = None,
        currency: str = "USD",
    ) -> None:
        self.config = config
        self.counters = counters
        self.pricer = pricer
        self.currency = currency
        self.budgets = Budgets(config, route=route)
        self._clock = clock
        self._estimate = pricer.estimate
        self._alerts = alerts if alerts is not None else AlertSink(metrics)
        self._refuse_unpriced = config.unpriced == "refuse"
        self._known: dict[str, bool] = {}
        # The local backend is called synchronously: no coroutine on the request path.
        self._reserve_now: Callable[[Sequence[Charge], float], tuple[int, int, int, bool]] | None
        self._reserve_now = getattr(counters, "reserve_now", None)
        self._settle_now: Callable[[Sequence[Charge], int, float, float], list[Settled]] | None
        self._settle_now = getattr(counters, "settle_now", None)
        self._stopped_now: Callable[[], tuple[str, float] | None] | None = getattr(
            counters, "stopped_now", None
        )
        self._stop_seen: tuple[str, float] | None = None
        self._stop_checked = float("-inf")
        self._rate = SpendRate(config.emergency_stop) if config.emergency_stop.enabled else None
        self._next_judgement = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._spent = metrics.gauge(
            "budget_spent",
            "What each budget has spent in its current window, in the reporting currency.",
            ["budget"],
        )
        self._refused = metrics.counter(
            "budget_refused_total",
            "Calls refused before any provider was called: by a hard budget (its name) or the "
            "emergency stop (budget 'emergency_stop').",
            ["budget"],
        )
        self._stopped_gauge = metrics.gauge(
            "budget_emergency_stopped", "1 while the emergency stop is tripped, else 0."
        )
        self._stopped_gauge.set(0.0)

    @classmethod
    def from_context(cls, context: StageContext) -> BudgetStage:
        config = context.config.budgets
        backends = context.plugins.registrations("budget_counters")
        registration = backends.get(config.backend)
        if registration is None:
            hint = (
                ' (install tollway-redis: pip install "tollway[redis]")'
                if config.backend == "redis"
                else ""
            )
            raise ConfigError(
                f"no budget counters backend is called {config.backend!r}{hint}; set it to one "
                f"of: {', '.join(sorted(backends)) or 'none'}",
                key="budgets.backend",
            )
        counters = registration.factory(config, context.metrics)
        pricer = context.shared.get("pricer")
        if pricer is None:
            from tollway.pricing.pricer import pricer_for

            # The pricer shared by the cost, usage and budget stages of this assembly.
            pricer = pricer_for(context)
        alerts = AlertSink.from_plugins(
            context.plugins, config.exporters, context.config.plugins, context.metrics
        )
        return cls(
            config,
            counters,
            pricer,
            context.metrics,
            route=context.route,
            alerts=alerts,
            currency=context.config.pricing.currency,
        )

    # -- the request path ------------------------------------------------------------------

    async def complete(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        now = self._clock()
        applied = self.budgets.applied(request) if self.budgets.budgets else []
        if not applied:
            await self._check_stop(now)
            return await call_next(request)
        charges = await self._reserve(request, applied, now)
        try:
            response = await call_next(request)
        except BaseException:
            await self._settle(applied, charges, 0, now)
            raise
        cost = response.cost
        if cost is not None:
            actual = to_nanos(cost.total)
        elif response.cached:
            actual = 0
        else:  # no cost stage inside this one: price it here
            actual = to_nanos(self.pricer.price(request.model, response.usage).total)
        await self._settle(applied, charges, actual, now)
        return response

    async def stream(
        self, request: Request, call_next: Callable[[Request], AsyncIterator[StreamChunk]]
    ) -> AsyncIterator[StreamChunk]:
        now = self._clock()
        applied = self.budgets.applied(request) if self.budgets.budgets else []
        if not applied:
            await self._check_stop(now)
            iterator = call_next(request)
            try:
                async for chunk in iterator:
                    yield chunk
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            return
        charges = await self._reserve(request, applied, now)
        actual = -1
        received = 0
        iterator = call_next(request)
        try:
            async for chunk in iterator:
                if chunk.usage is not None:
                    if chunk.cost is not None:
                        actual = to_nanos(chunk.cost.total)
                    else:
                        actual = to_nanos(self.pricer.price(request.model, chunk.usage).total)
                else:
                    received += len(chunk.text)
                    for call in chunk.tool_calls:
                        received += len(call.arguments) + len(call.name or "")
                yield chunk
        finally:
            try:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if actual < 0:
                    actual = self._partial(request, received) if received else 0
                await self._settle(applied, charges, actual, now)

    def _partial(self, request: Request, received: int) -> int:
        """What a stream that ended without usage probably cost: the prompt and what came.

        Priced with the pricer's ``quote`` where it has one, which counts nothing toward
        volume discounts: this is a guess, not a bill."""
        pricer = self.pricer
        prompt_tokens = getattr(pricer, "prompt_tokens", None)
        if prompt_tokens is not None:
            prompt = int(prompt_tokens(request))
        else:
            from tollway.resilience.ratelimit import estimate_tokens

            prompt = estimate_tokens(request, 0) - (request.max_tokens or 0)
        usage = Usage(input_tokens=prompt, output_tokens=-(-received // 4))
        quote = getattr(pricer, "quote", pricer.price)
        try:
            return to_nanos(quote(request.model, usage).total)
        except Exception:
            return 0

    async def _reserve(self, request: Request, applied: list[_Applied], now: float) -> list[Charge]:
        estimate = to_nanos(self._estimate(request))
        if not estimate:
            self._unpriced(request, applied)
        charges = [(a.current(now), estimate) for a in applied]
        reserve_now = self._reserve_now
        if reserve_now is not None:
            result = reserve_now(charges, now)
            if result[0] == RESERVED:  # the local fast path: no await at all
                return charges
        else:
            result = await self.counters.reserve(charges, now)
        index, spent, reserved, first = result
        if index == RESERVED:
            return charges
        if index == STOPPED:
            raise await self._stop_error(now)
        raise self._refusal(request, applied[index], estimate, spent, reserved, first, now)

    def _unpriced(self, request: Request, applied: list[_Applied]) -> None:
        model = request.model
        known = self._known.get(model)
        if known is None:
            try:
                known = bool(self.pricer.knows(model))
            except Exception:
                known = False
            self._known[model] = known
            if not known and not self._refuse_unpriced:
                log.warning(
                    "budget_unpriced_model",
                    model=model,
                    note="no price source knows this model: its calls cost nothing against "
                    "budgets; add its prices to [pricing.models], or set [budgets] unpriced = "
                    "'refuse'",
                )
        if known or not self._refuse_unpriced:
            return
        hard = [a for a in applied if a.budget.hard]
        if hard:
            self._refused.inc(hard[0].label)
            raise BudgetExceededError(
                f"{model} has no price, and budget {hard[0].label} is hard: a call that "
                "cannot be priced cannot be held to it. Add the model's prices to "
                "[pricing.models], or set [budgets] unpriced = 'allow'",
                code="budget_unpriced",
            )

    def _refusal(
        self,
        request: Request,
        applied: _Applied,
        estimate: int,
        spent: int,
        reserved: int,
        first: bool,
        now: float,
    ) -> BudgetExceededError:
        budget = applied.budget
        currency = self.currency
        label = applied.label
        self._refused.inc(label)
        rolling = budget.window.rolling
        if rolling:
            when = f"rolling window of {rolling:g} s: spend older than that stops counting"
            retry_after = None
        else:
            when = (
                f"{budget.window.describe()} window, resets {iso(applied.end, budget.window.zone)}"
            )
            retry_after = max(applied.end - now, 0.0)
        message = (
            f"budget {label} would be exceeded by this call to {request.model}: spent "
            f"{money(from_nanos(spent), currency)} + reserved "
            f"{money(from_nanos(reserved), currency)} for calls in flight + this call's "
            "estimated maximum "
            f"{money(from_nanos(estimate), currency)} > {money(budget.amount, currency)} "
            f"({when}). No provider was called. Wait for the window to reset, raise "
            f"budgets.limits[{budget.index}].amount, lower max_tokens, or use a cheaper model"
        )
        if first:
            self._alerts.emit(
                BudgetAlert(
                    kind=EXCEEDED,
                    budget=label,
                    message=message,
                    scope=budget.scope,
                    value=None if budget.scope == "global" else applied.value,
                    window=budget.window.describe(),
                    spent=from_nanos(spent),
                    amount=budget.amount,
                    currency=currency,
                    window_end=None if rolling else applied.end,
                    timestamp=now,
                )
            )
        return BudgetExceededError(message, code="budget_exceeded", retry_after=retry_after)

    async def _settle(
        self, applied: list[_Applied], charges: list[Charge], actual: int, reserved_at: float
    ) -> None:
        now = self._clock()
        try:
            settle_now = self._settle_now
            if settle_now is not None:
                results = settle_now(charges, actual, reserved_at, now)
            else:
                results = await self.counters.settle(charges, actual, reserved_at, now)
        except Exception as exc:  # a settle that fails must not fail the call it follows
            log.warning(
                "budget_settle_failed",
                error=f"{type(exc).__name__}: {exc}",
                note="the reservation stays until it lapses (reservation_timeout)",
            )
            return
        set_spent = self._spent.set
        for entry, (spent, before, after) in zip(applied, results, strict=True):
            set_spent(spent / 1e9, entry.label)
            if after > before:
                self._threshold_alerts(entry, spent, before, after, now)
        if actual and self._rate is not None and now >= self._next_judgement:
            self._next_judgement = now + self._rate.slot
            self._spawn(self.check_emergency(now))

    def _threshold_alerts(
        self, applied: _Applied, spent: int, before: int, after: int, now: float
    ) -> None:
        budget = applied.budget
        currency = self.currency
        rolling = bool(budget.window.rolling)
        for fraction in budget.fractions[before:after]:
            percent = f"{fraction * 100:f}".rstrip("0").rstrip(".")
            message = (
                f"budget {applied.label} has spent {money(from_nanos(spent), currency)} of "
                f"{money(budget.amount, currency)}: {percent}% reached "
                f"({budget.window.describe()} window"
                + ("" if rolling else f", resets {iso(applied.end, budget.window.zone)}")
                + ")"
            )
            self._alerts.emit(
                BudgetAlert(
                    kind=THRESHOLD,
                    budget=applied.label,
                    message=message,
                    scope=budget.scope,
                    value=None if budget.scope == "global" else applied.value,
                    window=budget.window.describe(),
                    threshold=fraction,
                    spent=from_nanos(spent),
                    amount=budget.amount,
                    currency=currency,
                    window_end=None if rolling else applied.end,
                    timestamp=now,
                )
            )

    # -- the emergency stop ----------------------------------------------------------------

    async def _check_stop(self, now: float) -> None:
        stopped_now = self._stopped_now
        if stopped_now is not None:
            if stopped_now() is not None:
                raise await self._stop_error(now)
            return
        if now - self._stop_checked >= STOP_POLL:
            self._stop_checked = now
            try:
                self._stop_seen = await self.counters.stopped()
            except Exception as exc:  # no budget applies to this call: do not fail it
                log.warning(
                    "budget_stop_check_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    note="the emergency stop could not be read; the last known state holds",
                )
        if self._stop_seen is not None:
            raise await self._stop_error(now)

    async def _stop_error(self, now: float) -> BudgetExceededError:
        state = await self.counters.stopped()
        self._stop_seen = state
        self._stop_checked = now
        self._refused.inc("emergency_stop")
        self._stopped_gauge.set(1.0 if state is not None else 0.0)
        reason, since = state if state is not None else ("reason unknown", now)
        return BudgetExceededError(
            f"emergency stop: every call is refused since {iso(since)}: {reason}. No provider "
            "was called. Once the cause is dealt with, an operator resets it with `tollway "
            "budget reset` (shared backends) or BudgetStage.reset()",
            code="emergency_stop",
        )

    async def check_emergency(self, now: float | None = None) -> str | None:
        """Judge the recent spend now; trip the stop when it jumped. Returns why, or None."""
        if self._rate is None:
            return None
        now = self._clock() if now is None else now
        try:
            history = await self.counters.spend_history(now)
            reason = self._rate.judge(history, self.currency)
            if reason is None:
                return None
            tripped = await self.counters.trip(reason, now)
        except Exception as exc:
            log.warning("budget_emergency_check_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        if tripped:
            self._on_trip(reason, now)
        return reason

    def _on_trip(self, reason: str, now: float) -> None:
        self._stop_seen = (reason, now)
        self._stop_checked = now
        self._stopped_gauge.set(1.0)
        log.error("budget_emergency_stop", reason=reason)
        self._alerts.emit(
            BudgetAlert(
                kind=EMERGENCY_STOP,
                budget="emergency_stop",
                message=f"emergency stop tripped: {reason}; every call is refused until reset",
                currency=self.currency,
                timestamp=now,
            )
        )

    async def trip(self, reason: str = "tripped by an operator") -> bool:
        """Trip the emergency stop by hand. True when it was not tripped before."""
        now = self._clock()
        tripped = await self.counters.trip(reason, now)
        if tripped:
            self._on_trip(reason, now)
        return tripped

    async def reset(self) -> bool:
        """Reset the emergency stop. True when it was tripped."""
        was = await self.counters.reset()
        self._stop_seen = None
        self._stop_checked = float("-inf")
        self._stopped_gauge.set(0.0)
        if was:
            log.warning("budget_emergency_reset")
        return was

    async def status(self) -> list[BudgetStatus]:
        """Every budget in its current window (per-value budgets: the values seen)."""
        return await self.budgets.status(self.counters, self._clock(), self.currency)

    # -- background and closing ------------------------------------------------------------

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush(self) -> None:
        """Wait for background checks and alert exports (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self._alerts.flush()

    @property
    def alerts(self) -> AlertSink:
        return self._alerts

    async def aclose(self) -> None:
        await self.flush()
        await self._alerts.aclose()
        await self.counters.aclose()
