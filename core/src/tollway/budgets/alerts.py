"""Budget alerts: a threshold crossed, a hard budget refusing calls, the emergency stop.

Each alert is counted in ``tollway_budget_alerts_total{budget,threshold}``, logged, and sent to
the exporters named in ``[budgets] exporters`` (registered through
``tollway_register_exporters``; each built with its ``[plugins.NAME]`` table as options). The
sending happens in a background task, never on the request path; an exporter that fails is
logged and the others still get the alert. With no exporter configured, an alert is a
warning in the log: it is never silently dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import structlog

if TYPE_CHECKING:
    from tollway.metrics import Metrics
    from tollway.plugins import PluginManager

log = structlog.get_logger("tollway.budgets")

# What an alert is about.
THRESHOLD = "budget_threshold"  # spend reached a fraction of the amount
EXCEEDED = "budget_exceeded"  # a hard budget refused a call (first time in the window)
EMERGENCY_STOP = "budget_emergency_stop"  # the emergency stop tripped


def money(amount: Decimal, currency: str = "USD") -> str:
    """``12.50 USD``, ``0.000375 USD``: at least two decimals, at most six, never a float."""
    text = f"{amount.quantize(Decimal('0.000001')):f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction} {currency}"


@attrs.frozen(slots=True)
class BudgetAlert:
    """One alert, as exporters receive it. Money is Decimal; ``timestamp`` UTC epoch seconds.

    ``threshold`` is the fraction crossed (``Decimal("0.8")``) for a threshold alert, else
    None. ``window_end`` is when the budget's window resets (None for a rolling window).
    """

    kind: str
    budget: str
    message: str
    scope: str = "global"
    value: str | None = None
    window: str = ""
    threshold: Decimal | None = None
    spent: Decimal = Decimal(0)
    amount: Decimal = Decimal(0)
    currency: str = "USD"
    window_end: float | None = None
    timestamp: float = attrs.field(factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, money as strings."""
        return {
            "kind": self.kind,
            "budget": self.budget,
            "message": self.message,
            "scope": self.scope,
            "value": self.value,
            "window": self.window,
            "threshold": None if self.threshold is None else str(self.threshold),
            "spent": str(self.spent),
            "amount": str(self.amount),
            "currency": self.currency,
            "window_end": self.window_end,
            "timestamp": self.timestamp,
        }


class AlertSink:
    """Counts, logs and exports alerts; owned by the budget stage, closed with it."""

    def __init__(
        self,
        metrics: Metrics,
        exporters: Mapping[str, Any] | None = None,
    ) -> None:
        self._exporters = dict(exporters or {})
        self._tasks: set[asyncio.Task[None]] = set()
        self._counter = metrics.counter(
            "budget_alerts_total",
            "Budget alerts sent, by budget and threshold (a fraction such as 0.8, 'exceeded' "
            "when a hard budget first refuses a call in its window, 'emergency_stop').",
            ["budget", "threshold"],
        )
        self.sent: list[BudgetAlert] = []  # the last few, for status and tests
        self._keep = 100

    @classmethod
    def from_plugins(
        cls,
        plugins: PluginManager,
        names: Sequence[str],
        options: Mapping[str, Mapping[str, Any]],
        metrics: Metrics,
    ) -> AlertSink:
        """Build the exporters ``[budgets] exporters`` names; a name not registered is an error."""
        from tollway.errors import ConfigError

        # report-FORMAT registrations render reports; they are not event exporters.
        registered = (
            {
                name: registration
                for name, registration in plugins.registrations("exporters").items()
                if not name.startswith("report-")
            }
            if names
            else {}
        )
        exporters: dict[str, Any] = {}
        for index, name in enumerate(names):
            registration = registered.get(name)
            if registration is None:
                raise ConfigError(
                    f"no exporter is called {name!r}; the registered ones are: "
                    f"{', '.join(sorted(registered)) or 'none'} (install the plugin that "
                    "offers it, or remove it from the list)",
                    key=f"budgets.exporters[{index}]",
                )
            exporters[name] = registration.factory(dict(options.get(name, {})))
        return cls(metrics, exporters)

    def emit(self, alert: BudgetAlert) -> None:
        label = (
            "exceeded"
            if alert.kind == EXCEEDED
            else ("emergency_stop" if alert.kind == EMERGENCY_STOP else str(alert.threshold))
        )
        self._counter.inc(alert.budget, label)
        self.sent.append(alert)
        if len(self.sent) > self._keep:
            del self.sent[: -self._keep]
        fields = alert.to_dict()
        fields.pop("message")
        if not self._exporters:
            log.warning(alert.kind, note=alert.message, exporters="none configured", **fields)
            return
        log.info(alert.kind, note=alert.message, **fields)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the log line is all there is
            return
        task = loop.create_task(self._export(alert))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _export(self, alert: BudgetAlert) -> None:
        for name, exporter in self._exporters.items():
            try:
                await exporter.export([alert])
            except Exception as exc:  # one exporter failing must not stop the others
                log.warning(
                    "budget_alert_export_failed",
                    exporter=name,
                    alert=alert.kind,
                    budget=alert.budget,
                    error=f"{type(exc).__name__}: {exc}",
                )

    async def flush(self) -> None:
        """Wait for every alert in flight to be exported."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush()
        for name, exporter in self._exporters.items():
            try:
                await exporter.aclose()
            except Exception as exc:
                log.warning("exporter_close_failed", exporter=name, error=str(exc))
        self._exporters = {}
