"""In-process metrics: counters, gauges and histograms with labels, owned by a Pipeline.

Stages update them on the request path, so an update is a dict lookup and an add. Exporters
read ``snapshot()`` or ``render_prometheus()`` off the request path.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from typing import Any

Labels = tuple[str, ...]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class _Metric:
    kind = ""
    values: dict[Labels, Any]

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(labels)

    def _check(self, labels: Labels) -> None:
        if len(labels) != len(self.label_names):
            raise ValueError(f"metric {self.name} takes labels {self.label_names}, got {labels!r}")


class Counter(_Metric):
    """A value that only goes up."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[Labels, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        values = self.values
        if labels in values:
            values[labels] += amount
        else:
            self._check(labels)
            values[labels] = amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)


class Gauge(_Metric):
    """A value that goes up and down: a state, a queue length."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[Labels, float] = {}

    def set(self, value: float, *labels: str) -> None:
        if labels not in self.values:
            self._check(labels)
        self.values[labels] = value

    def add(self, amount: float, *labels: str) -> None:
        if labels not in self.values:
            self._check(labels)
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        # Per label set: [count per bucket..., +Inf count], sum.
        self.values: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        found = self.values.get(labels)
        if found is None:
            self._check(labels)
            found = self.values[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        counts, total = found
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value

    def count(self, *labels: str) -> int:
        found = self.values.get(labels)
        return sum(found[0]) if found else 0

    def sum(self, *labels: str) -> float:
        found = self.values.get(labels)
        return found[1][0] if found else 0.0


class Metrics:
    """A registry: asking twice for the same name gives the same metric."""

    def __init__(self, prefix: str = "tollway_") -> None:
        self.prefix = prefix
        self._metrics: dict[str, _Metric] = {}

    def _get(
        self, cls: type[Any], name: str, help: str, labels: Sequence[str], **extra: Any
    ) -> Any:
        full = self.prefix + name
        found = self._metrics.get(full)
        if found is None:
            found = self._metrics[full] = cls(full, help, labels, **extra)
        elif not isinstance(found, cls) or found.label_names != tuple(labels):
            raise ValueError(f"metric {full} is already registered as another kind or labels")
        return found

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        counter: Counter = self._get(Counter, name, help, labels)
        return counter

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        gauge: Gauge = self._get(Gauge, name, help, labels)
        return gauge

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        histogram: Histogram = self._get(Histogram, name, help, labels, buckets=buckets)
        return histogram

    def __iter__(self) -> Iterator[_Metric]:
        return iter(list(self._metrics.values()))

    def get(self, name: str) -> _Metric | None:
        return self._metrics.get(self.prefix + name) or self._metrics.get(name)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every metric's values keyed by a ``k=v,...`` label string; JSON-ready."""
        out: dict[str, dict[str, Any]] = {}
        for metric in self._metrics.values():
            values: dict[str, Any] = {}
            for labels, value in metric.values.items():
                key = ",".join(f"{n}={v}" for n, v in zip(metric.label_names, labels, strict=True))
                if isinstance(metric, Histogram):
                    counts, total = value
                    values[key] = {"count": sum(counts), "sum": total[0]}
                else:
                    values[key] = value
            out[metric.name] = {"kind": metric.kind, "values": values}
        return out

    def render_prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for labels, value in metric.values.items():
                pairs = [
                    f'{n}="{_escape(v)}"' for n, v in zip(metric.label_names, labels, strict=True)
                ]
                if isinstance(metric, Histogram):
                    counts, total = value
                    running = 0
                    for bound, count in zip([*metric.buckets, math.inf], counts, strict=True):
                        running += count
                        le = "+Inf" if bound == math.inf else repr(bound)
                        bucket_labels = _fmt([*pairs, 'le="' + le + '"'])
                        lines.append(f"{metric.name}_bucket{bucket_labels} {running}")
                    lines.append(f"{metric.name}_sum{_fmt(pairs)} {total[0]!r}")
                    lines.append(f"{metric.name}_count{_fmt(pairs)} {running}")
                else:
                    lines.append(f"{metric.name}{_fmt(pairs)} {value!r}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(pairs: list[str]) -> str:
    return "{" + ",".join(pairs) + "}" if pairs else ""
