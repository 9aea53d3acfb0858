"""The metrics registry and its Prometheus text, which stages and exporters rely on."""

from __future__ import annotations

import pytest

from tollway.metrics import Metrics


def test_counters_gauges_and_histograms_keep_their_values() -> None:
    metrics = Metrics()
    hits = metrics.counter("cache_hits_total", "Answers served from the cache.", ["namespace"])
    hits.inc("a")
    hits.inc("a", amount=2)
    hits.inc("b")
    assert (hits.get("a"), hits.get("b"), hits.get("c")) == (3.0, 1.0, 0.0)
    state = metrics.gauge("circuit_state", "0 closed, 1 half-open, 2 open.", ["provider"])
    state.set(2, "openai")
    state.add(-1, "openai")
    assert state.get("openai") == 1.0
    wait = metrics.histogram("wait_seconds", "Time queued.", ["scope"], buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        wait.observe(value, "user")
    assert wait.count("user") == 3
    assert wait.sum("user") == pytest.approx(5.55)
    # Asking again by name gives the same metric.
    assert metrics.counter("cache_hits_total", "x", ["namespace"]) is hits


def test_misuse_is_refused_with_the_metric_named() -> None:
    metrics = Metrics()
    hits = metrics.counter("hits_total", "Hits.", ["namespace"])
    with pytest.raises(ValueError, match=r"tollway_hits_total takes labels \('namespace',\)"):
        hits.inc("a", "b")
    with pytest.raises(ValueError, match="already registered"):
        metrics.gauge("hits_total", "Not a counter.", ["namespace"])


def test_prometheus_text_and_snapshot() -> None:
    metrics = Metrics()
    metrics.counter("calls_total", "Calls.", ["model"]).inc('gpt "4o"\n')
    wait = metrics.histogram("wait_seconds", "Wait.", buckets=(0.1, 1.0))
    wait.observe(0.05)
    wait.observe(0.5)
    text = metrics.render_prometheus()
    assert "# HELP tollway_calls_total Calls.\n# TYPE tollway_calls_total counter\n" in text
    assert 'tollway_calls_total{model="gpt \\"4o\\"\\n"} 1.0' in text
    # Buckets are cumulative, and +Inf equals the count.
    assert 'tollway_wait_seconds_bucket{le="0.1"} 1' in text
    assert 'tollway_wait_seconds_bucket{le="1.0"} 2' in text
    assert 'tollway_wait_seconds_bucket{le="+Inf"} 2' in text
    assert "tollway_wait_seconds_count 2" in text
    snapshot = metrics.snapshot()
    assert snapshot["tollway_wait_seconds"] == {
        "kind": "histogram",
        "values": {"": {"count": 2, "sum": 0.55}},
    }
    assert snapshot["tollway_calls_total"]["values"] == {'model=gpt "4o"\n': 1.0}
