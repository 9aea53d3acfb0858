"""The budget stage through a real Pipeline: hard budgets refuse before any provider is called,
reservations settle to the actual cost (streams, cache hits, failures), alerts go out once per
window, per-value scopes, the emergency stop, and 1,000 concurrent calls against $1."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway import hookimpl
from tollway.budgets.alerts import EMERGENCY_STOP, EXCEEDED, THRESHOLD, BudgetAlert
from tollway.budgets.config import BudgetLimit, BudgetsConfig, EmergencyStopConfig
from tollway.budgets.counters import BudgetWindow, LocalBudgetCounters
from tollway.budgets.stage import BudgetStage
from tollway.config import Config
from tollway.errors import BudgetExceededError, ConfigError, UnavailableError
from tollway.metrics import Metrics
from tollway.pipeline import Pipeline
from tollway.plugins import build_plugin_manager
from tollway.stages import StageContext
from tollway.types import Cost, Message, ModelInfo, Request, Response, StreamChunk, Usage

IN = Decimal("0.001")  # per input token
OUT = Decimal("0.002")  # per output token
MODEL = "fake/m1"


class FakePricer:
    """$1 per 1,000 input tokens, $2 per 1,000 output; the estimate counts 10 prompt tokens
    and max_tokens (50 when unset), so with max_tokens=20 a call's estimate is $0.05."""

    def __init__(self) -> None:
        self.priced: list[tuple[str, Usage]] = []

    def knows(self, model: str) -> bool:
        return not model.endswith("unpriced")

    def price(self, model: str, usage: Usage) -> Cost:
        self.priced.append((model, usage))
        if not self.knows(model):
            return Cost()
        return Cost(input=usage.input_tokens * IN, output=usage.output_tokens * OUT)

    def estimate(self, request: Request) -> Decimal:
        if not self.knows(request.model):
            return Decimal(0)
        return 10 * IN + (request.max_tokens or 50) * OUT


class FastProvider:
    """Answers after a few loop turns with Usage(10, min(max_tokens, 20)); can fail or stream."""

    name = "fake"

    def __init__(self) -> None:
        self.calls = 0
        self.fail: Exception | None = None
        self.delay: Callable[[], float] = lambda: 0.0
        self.cached = False

    def _usage(self, request: Request) -> Usage:
        return Usage(10, min(request.max_tokens or 20, 20))

    async def complete(self, request: Request) -> Response:
        self.calls += 1
        await asyncio.sleep(self.delay())
        if self.fail is not None:
            raise self.fail
        usage = self._usage(request)
        if self.cached:
            return Response(
                "r",
                request.model,
                "fake",
                Message.assistant("ok"),
                "stop",
                usage,
                cost=Cost(),
                cached=True,
            )
        return Response("r", request.model, "fake", Message.assistant("ok"), "stop", usage)

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        for piece in ("abcd" * 5, "efgh" * 5):
            await asyncio.sleep(0)
            yield StreamChunk(text=piece)
        yield StreamChunk(finish_reason="stop", usage=self._usage(request))

    async def list_models(self) -> list[ModelInfo]:
        return []

    async def aclose(self) -> None:
        pass


class Clock:
    def __init__(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: dt.datetime) -> None:
        self.now = when.timestamp()


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.UTC)  # type: ignore[misc]


def make_stage(
    *limits: BudgetLimit,
    clock: Callable[[], float] | None = None,
    metrics: Metrics | None = None,
    **config: Any,
) -> BudgetStage:
    budgets = BudgetsConfig(enabled=True, limits=list(limits), **config)
    counters = LocalBudgetCounters.from_config(budgets)
    return BudgetStage(
        budgets,
        counters,
        FakePricer(),
        metrics or Metrics(),
        clock=clock or Clock(utc(2025, 1, 15, 12)),
    )


def pipe_with(stage: BudgetStage, provider: FastProvider) -> Pipeline:
    return Pipeline.build(providers={"fake": provider}, stages=[stage], load_entrypoints=False)


def limit(amount: str, **fields: Any) -> BudgetLimit:
    return BudgetLimit(amount=Decimal(amount), **fields)


async def spent_of(stage: BudgetStage) -> dict[str, tuple[Decimal, Decimal]]:
    return {row.budget: (row.spent, row.reserved) for row in await stage.status()}


# -- reserve, refuse, settle -------------------------------------------------------------------


async def test_a_hard_budget_refuses_before_the_provider_is_called() -> None:
    provider = FastProvider()
    stage = make_stage(limit("0.10", scope="team", match="research"))
    async with pipe_with(stage, provider) as pipe:
        for _ in range(2):  # $0.05 each: exactly the budget
            await pipe.complete(MODEL, "hi", max_tokens=20, team="research")
        assert provider.calls == 2
        with pytest.raises(BudgetExceededError) as caught:
            await pipe.complete(MODEL, "hi", max_tokens=20, team="research")
        assert provider.calls == 2  # refused before the provider
        error = caught.value
        message = str(error)
        assert error.code == "budget_exceeded"
        assert "budget team=research monthly would be exceeded" in message
        assert "spent 0.10 USD + reserved 0.00 USD" in message
        assert "estimated maximum 0.05 USD > 0.10 USD" in message
        assert "resets 2025-02-01T00:00:00+00:00" in message
        assert "budgets.limits[0].amount" in message
        assert "lower max_tokens" in message
        assert error.retry_after == pytest.approx(utc(2025, 2, 1).timestamp() - stage._clock())
        # Other teams and unattributed calls are not this budget's.
        await pipe.complete(MODEL, "hi", max_tokens=20, team="ops")
        await pipe.complete(MODEL, "hi", max_tokens=20)
        assert provider.calls == 4
        assert await spent_of(stage) == {"team=research monthly": (Decimal("0.1"), Decimal(0))}


async def test_the_reservation_is_the_estimate_and_settles_to_the_actual_cost() -> None:
    provider = FastProvider()
    gate = asyncio.Event()
    started = asyncio.Event()

    async def held(request: Request) -> Response:
        started.set()
        await gate.wait()
        return await FastProvider.complete(provider, request)

    provider.complete = held  # type: ignore[method-assign]
    stage = make_stage(limit("1"))
    async with pipe_with(stage, provider) as pipe:
        call = asyncio.create_task(pipe.complete(MODEL, "hi", max_tokens=100))
        await started.wait()
        # In flight it holds its most possible cost: 10 x $0.001 + 100 x $0.002.
        assert await spent_of(stage) == {"all calls monthly": (Decimal(0), Decimal("0.21"))}
        gate.set()
        reply = await call
        # Settled to what it used: 10 in, 20 out.
        assert reply.usage == Usage(10, 20)
        assert await spent_of(stage) == {"all calls monthly": (Decimal("0.05"), Decimal(0))}


async def test_a_failed_call_releases_its_reservation() -> None:
    provider = FastProvider()
    provider.fail = UnavailableError("down", provider="fake", status=503)
    stage = make_stage(limit("1"))
    async with pipe_with(stage, provider) as pipe:
        with pytest.raises(UnavailableError):
            await pipe.complete(MODEL, "hi", max_tokens=20)
        assert await spent_of(stage) == {"all calls monthly": (Decimal(0), Decimal(0))}


async def test_a_cache_hit_costs_nothing_and_releases_its_reservation() -> None:
    provider = FastProvider()
    provider.cached = True
    stage = make_stage(limit("0.05"))
    async with pipe_with(stage, provider) as pipe:
        for _ in range(5):  # each would cost the whole budget if it were not a hit
            await pipe.complete(MODEL, "hi", max_tokens=20)
        assert await spent_of(stage) == {"all calls monthly": (Decimal(0), Decimal(0))}


async def test_a_cost_set_by_the_cost_stage_is_what_is_settled() -> None:
    provider = FastProvider()

    async def priced(request: Request) -> Response:
        provider.calls += 1
        return Response(
            "r",
            request.model,
            "fake",
            Message.assistant("ok"),
            "stop",
            Usage(10, 20),
            cost=Cost(input=Decimal("0.004"), output=Decimal("0.0061")),
        )

    provider.complete = priced  # type: ignore[method-assign]
    stage = make_stage(limit("1"))
    pricer = stage.pricer
    assert isinstance(pricer, FakePricer)
    async with pipe_with(stage, provider) as pipe:
        await pipe.complete(MODEL, "hi", max_tokens=20)
        assert pricer.priced == []  # not priced a second time
        assert await spent_of(stage) == {"all calls monthly": (Decimal("0.0101"), Decimal(0))}


# -- streams -----------------------------------------------------------------------------------


async def test_a_stream_settles_to_its_usage_chunk() -> None:
    provider = FastProvider()
    stage = make_stage(limit("1"))
    async with pipe_with(stage, provider) as pipe:
        chunks = [c async for c in pipe.stream(MODEL, "hi", max_tokens=20)]
        assert chunks[-1].usage == Usage(10, 20)
        assert await spent_of(stage) == {"all calls monthly": (Decimal("0.05"), Decimal(0))}


async def test_a_stream_refused_by_its_budget_never_reaches_the_provider() -> None:
    provider = FastProvider()
    stage = make_stage(limit("0.01"))
    async with pipe_with(stage, provider) as pipe:
        with pytest.raises(BudgetExceededError, match="all calls monthly"):
            async for _ in pipe.stream(MODEL, "hi", max_tokens=20):
                pass
        assert provider.calls == 0


async def test_an_abandoned_stream_settles_to_an_estimate_of_what_it_used() -> None:
    provider = FastProvider()
    stage = make_stage(limit("1"))
    async with pipe_with(stage, provider) as pipe:
        stream = pipe.stream(MODEL, "hi", max_tokens=20)
        async for _chunk in stream:
            break  # 20 characters read, then the reader goes away
        await stream.aclose()  # type: ignore[attr-defined]
        spent, reserved = (await spent_of(stage))["all calls monthly"]
        # The prompt (estimated offline, a few tokens) and 20 characters: 5 tokens out.
        assert reserved == 0
        assert 5 * OUT < spent < Decimal("0.05")


async def test_a_stream_that_fails_before_anything_arrives_is_released() -> None:
    provider = FastProvider()
    provider.fail = UnavailableError("down", provider="fake", status=503)
    stage = make_stage(limit("1"))
    async with pipe_with(stage, provider) as pipe:
        with pytest.raises(UnavailableError):
            async for _ in pipe.stream(MODEL, "hi", max_tokens=20):
                pass
        assert await spent_of(stage) == {"all calls monthly": (Decimal(0), Decimal(0))}


# -- scopes ------------------------------------------------------------------------------------


async def test_a_per_value_budget_counts_each_value_apart() -> None:
    provider = FastProvider()
    stage = make_stage(limit("0.05", scope="user", window="daily"))
    async with pipe_with(stage, provider) as pipe:
        await pipe.complete(MODEL, "hi", max_tokens=20, user="u-1")
        await pipe.complete(MODEL, "hi", max_tokens=20, user="u-2")
        with pytest.raises(BudgetExceededError, match=r"user=u-1 daily"):
            await pipe.complete(MODEL, "hi", max_tokens=20, user="u-1")
        # Calls with no user share one budget rather than escape it.
        await pipe.complete(MODEL, "hi", max_tokens=20)
        with pytest.raises(BudgetExceededError, match=r"user=\(none\) daily"):
            await pipe.complete(MODEL, "hi", max_tokens=20)
        assert sorted(await spent_of(stage)) == [
            "user=(none) daily",
            "user=u-1 daily",
            "user=u-2 daily",
        ]


async def test_every_matching_budget_reserves_or_none_does() -> None:
    provider = FastProvider()
    stage = make_stage(
        limit("1", scope="team", match="research"),
        limit("0.05", scope="api_key", match="key-1", name="key-1 cap"),
        limit("1", scope="model", match=MODEL, window="weekly"),
    )
    async with pipe_with(stage, provider) as pipe:
        await pipe.complete(MODEL, "hi", max_tokens=20, team="research", api_key_id="key-1")
        with pytest.raises(BudgetExceededError, match="budget key-1 cap would be exceeded"):
            await pipe.complete(MODEL, "hi", max_tokens=20, team="research", api_key_id="key-1")
        # The refused call reserved nothing on the budgets that had room.
        assert await spent_of(stage) == {
            "team=research monthly": (Decimal("0.05"), Decimal(0)),
            "key-1 cap": (Decimal("0.05"), Decimal(0)),
            f"model={MODEL} weekly": (Decimal("0.05"), Decimal(0)),
        }


async def test_a_soft_budget_only_alerts() -> None:
    provider = FastProvider()
    stage = make_stage(limit("0.05", hard=False))
    async with pipe_with(stage, provider) as pipe:
        for _ in range(3):
            await pipe.complete(MODEL, "hi", max_tokens=20)
        assert await spent_of(stage) == {"all calls monthly": (Decimal("0.15"), Decimal(0))}
    assert [a.threshold for a in stage.alerts.sent] == [
        Decimal("0.5"),
        Decimal("0.8"),
        Decimal("1.0"),
    ]


async def test_an_unpriced_model_is_let_through_with_a_warning_or_refused() -> None:
    provider = FastProvider()
    with structlog.testing.capture_logs() as logs:
        stage = make_stage(limit("0.01"))
        async with pipe_with(stage, provider) as pipe:
            await pipe.complete("fake/unpriced", "hi", max_tokens=20)
            await pipe.complete("fake/unpriced", "hi", max_tokens=20)
    warnings = [e for e in logs if e["event"] == "budget_unpriced_model"]
    assert len(warnings) == 1  # once per model
    assert "unpriced = 'refuse'" in warnings[0]["note"]
    strict = make_stage(limit("100"), unpriced="refuse")
    async with pipe_with(strict, provider) as pipe:
        with pytest.raises(BudgetExceededError, match="has no price") as caught:
            await pipe.complete("fake/unpriced", "hi", max_tokens=20)
        assert caught.value.code == "budget_unpriced"


# -- windows and alerts ------------------------------------------------------------------------


async def test_alerts_go_out_once_per_threshold_per_window() -> None:
    provider = FastProvider()
    clock = Clock(utc(2025, 1, 31, 23, 0))
    metrics = Metrics()
    stage = make_stage(limit("0.20"), clock=clock, metrics=metrics)
    async with pipe_with(stage, provider) as pipe:
        with structlog.testing.capture_logs() as logs:
            for _ in range(4):  # 25%, 50%, 75%, 100%
                await pipe.complete(MODEL, "hi", max_tokens=20)
            with pytest.raises(BudgetExceededError):
                await pipe.complete(MODEL, "hi", max_tokens=20)
            with pytest.raises(BudgetExceededError):
                await pipe.complete(MODEL, "hi", max_tokens=20)
        sent = stage.alerts.sent
        assert [(a.kind, a.threshold) for a in sent] == [
            (THRESHOLD, Decimal("0.5")),
            (THRESHOLD, Decimal("0.8")),
            (THRESHOLD, Decimal("1.0")),
            (EXCEEDED, None),  # the first refusal of the window only
        ]
        assert sent[0].spent == Decimal("0.10")
        assert sent[0].amount == Decimal("0.20")
        assert "has spent 0.10 USD of 0.20 USD: 50% reached" in sent[0].message
        # No exporter is configured: each alert is a warning in the log.
        warned = [e for e in logs if e["log_level"] == "warning" and e.get("budget")]
        assert [e["event"] for e in warned] == ["budget_threshold"] * 3 + ["budget_exceeded"]
        alerts = metrics.get("budget_alerts_total")
        assert alerts is not None
        assert alerts.values == {
            ("all calls monthly", "0.5"): 1,
            ("all calls monthly", "0.8"): 1,
            ("all calls monthly", "1.0"): 1,
            ("all calls monthly", "exceeded"): 1,
        }
        gauge = metrics.get("budget_spent")
        assert gauge is not None
        assert gauge.values == {("all calls monthly",): 0.2}
        refused = metrics.get("budget_refused_total")
        assert refused is not None
        assert refused.values == {("all calls monthly",): 2}
        # February: a fresh window, the budget is whole again and its alerts re-arm.
        clock.set(utc(2025, 2, 1, 0, 0, 1))
        for _ in range(2):
            await pipe.complete(MODEL, "hi", max_tokens=20)
        assert [a.threshold for a in stage.alerts.sent[4:]] == [Decimal("0.5")]
        assert stage.alerts.sent[4].window_end == utc(2025, 3, 1).timestamp()


async def test_a_rolling_budget_frees_up_as_its_spend_ages() -> None:
    provider = FastProvider()
    clock = Clock(utc(2025, 1, 15, 12))
    stage = make_stage(limit("0.10", window="rolling", seconds=3600), clock=clock)
    async with pipe_with(stage, provider) as pipe:
        await pipe.complete(MODEL, "hi", max_tokens=20)
        clock.now += 1800
        await pipe.complete(MODEL, "hi", max_tokens=20)
        with pytest.raises(BudgetExceededError, match="rolling window of 3600 s"):
            await pipe.complete(MODEL, "hi", max_tokens=20)
        clock.now += 1800 + 60  # the first call is now more than an hour (and a slot) old
        await pipe.complete(MODEL, "hi", max_tokens=20)
        with pytest.raises(BudgetExceededError):
            await pipe.complete(MODEL, "hi", max_tokens=20)
        # The spend fell back to 50% as the first call aged out: 80% and 100% re-armed, and
        # went out again when the spend climbed past them.
        thresholds = [a.threshold for a in stage.alerts.sent if a.kind == THRESHOLD]
        assert thresholds == [Decimal(f) for f in ("0.5", "0.8", "1.0", "0.8", "1.0")]
        # One refusal alert per rolling period.
        assert [a.kind for a in stage.alerts.sent].count(EXCEEDED) == 1


class AlertPlugin:
    """Registers an exporter that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.options: list[dict[str, Any]] = []
        self.closed = 0

    @hookimpl
    def tollway_register_exporters(self, register: Callable[..., None]) -> None:
        plugin = self

        class Exporter:
            def __init__(self, options: dict[str, Any]) -> None:
                plugin.options.append(options)

            async def export(self, events: Sequence[Any]) -> None:
                plugin.received.extend(events)

            async def aclose(self) -> None:
                plugin.closed += 1

        class Broken(Exporter):
            async def export(self, events: Sequence[Any]) -> None:
                raise OSError("disk full")

        register("keep", Exporter)
        register("broken", Broken)


def context_for(config: Config, plugin: object | None = None) -> StageContext:
    plugins = build_plugin_manager([plugin] if plugin else [], load_entrypoints=False)
    return StageContext(config, plugins, Metrics(), lambda m: m, shared={"pricer": FakePricer()})


async def test_alerts_reach_the_configured_exporters_off_the_request_path() -> None:
    plugin = AlertPlugin()
    config = Config(
        budgets=BudgetsConfig(enabled=True, limits=[limit("0.10")], exporters=["broken", "keep"]),
        plugins={"keep": {"path": "alerts.jsonl"}},
    )
    stage = BudgetStage.from_context(context_for(config, plugin))
    provider = FastProvider()
    async with pipe_with(stage, provider) as pipe:
        with structlog.testing.capture_logs() as logs:
            await pipe.complete(MODEL, "hi", max_tokens=20)
            await stage.flush()
    assert plugin.options == [{}, {"path": "alerts.jsonl"}]  # each its [plugins.NAME] table
    assert [type(a) for a in plugin.received] == [BudgetAlert]
    assert plugin.received[0].to_dict()["threshold"] == "0.5"
    # The broken exporter is logged, and did not keep the other from its alert.
    failed = [e for e in logs if e["event"] == "budget_alert_export_failed"]
    assert [e["exporter"] for e in failed] == ["broken"]
    assert "disk full" in failed[0]["error"]
    assert plugin.closed == 2  # closed with the pipeline


def test_a_wrong_backend_or_exporter_is_a_config_error() -> None:
    config = Config(budgets=BudgetsConfig(enabled=True, backend="nosuch"))
    with pytest.raises(ConfigError, match="no budget counters backend is called 'nosuch'") as e:
        BudgetStage.from_context(context_for(config))
    assert e.value.key == "budgets.backend"
    config = Config(budgets=BudgetsConfig(enabled=True, exporters=["slack"]))
    with pytest.raises(ConfigError, match="no exporter is called 'slack'") as e:
        BudgetStage.from_context(context_for(config))
    assert e.value.key == "budgets.exporters[0]"


# -- the emergency stop ------------------------------------------------------------------------


async def test_the_emergency_stop_trips_on_a_spend_jump_and_holds_until_reset() -> None:
    provider = FastProvider()
    clock = Clock(utc(2025, 1, 15, 12))
    emergency = EmergencyStopConfig(
        enabled=True, window=60, baseline=600, factor=3, minimum=Decimal("0.20")
    )
    stage = make_stage(limit("100"), clock=clock, emergency_stop=emergency)
    async with pipe_with(stage, provider) as pipe:
        # A call ($0.05) every 20 s for ten minutes: the baseline.
        for _ in range(30):
            await pipe.complete(MODEL, "hi", max_tokens=20)
            clock.now += 20
        await stage.flush()
        assert await stage.check_emergency() is None
        # Then a call a second: 3x the baseline's rate is $0.45 in a minute; the stop trips
        # once the last minute's spend passes that, judged once per slot (6 s).
        answered = 0
        caught = None
        for _ in range(20):
            try:
                await pipe.complete(MODEL, "hi", max_tokens=20)
                answered += 1
            except BudgetExceededError as exc:
                caught = exc
                break
            clock.now += 1
            await stage.flush()
        assert caught is not None
        assert 6 <= answered <= 12
        assert caught.code == "emergency_stop"
        assert "the spend rate jumped" in str(caught)
        assert "tollway budget reset" in str(caught)
        assert [a.kind for a in stage.alerts.sent if a.kind == EMERGENCY_STOP] == [EMERGENCY_STOP]
        # Calls no budget applies to are stopped too; streams as well.
        stage.budgets.budgets = ()
        with pytest.raises(BudgetExceededError, match="emergency stop"):
            await pipe.complete(MODEL, "hi", max_tokens=20)
        with pytest.raises(BudgetExceededError, match="emergency stop"):
            async for _ in pipe.stream(MODEL, "hi", max_tokens=20):
                pass
        calls = provider.calls
        clock.now += 3600  # time alone does not lift it
        with pytest.raises(BudgetExceededError):
            await pipe.complete(MODEL, "hi", max_tokens=20)
        assert provider.calls == calls
        assert await stage.reset() is True
        await pipe.complete(MODEL, "hi", max_tokens=20)
        assert provider.calls == calls + 1


async def test_an_operator_can_trip_and_reset_the_stop_by_hand() -> None:
    provider = FastProvider()
    stage = make_stage()  # no limits, no automatic stop: the switch still works
    async with pipe_with(stage, provider) as pipe:
        await pipe.complete(MODEL, "hi")
        assert await stage.trip("incident 42") is True
        assert await stage.trip("again") is False
        with pytest.raises(BudgetExceededError, match="incident 42"):
            await pipe.complete(MODEL, "hi")
        assert await stage.reset() is True
        assert await stage.reset() is False
        await pipe.complete(MODEL, "hi")
    assert provider.calls == 2


# -- concurrency -------------------------------------------------------------------------------


@pytest.mark.parametrize("estimate_tokens", [20, 40])
async def test_a_thousand_concurrent_calls_do_not_overspend_a_dollar(estimate_tokens: int) -> None:
    """Each call costs $0.05 (10 in, 20 out); it reserves $0.05 (an exact estimate) or $0.09
    (max_tokens=40, of which it uses 20). Callers start at random moments and the provider
    answers after a random delay, so reservations and settlements interleave."""
    provider = FastProvider()
    rng = random.Random(4)
    provider.delay = lambda: rng.random() * 0.01
    stage = make_stage(limit("1"))
    cost = Decimal("0.05")

    async def caller(pipe: Pipeline) -> bool:
        await asyncio.sleep(rng.random() * 0.05)
        try:
            await pipe.complete(MODEL, "hi", max_tokens=estimate_tokens)
        except BudgetExceededError:
            return False
        return True

    async with pipe_with(stage, provider) as pipe:
        results = await asyncio.gather(*(caller(pipe) for _ in range(1000)))
        spent, reserved = (await spent_of(stage))["all calls monthly"]
    answered = sum(results)
    assert reserved == 0
    assert spent == answered * cost
    assert spent <= Decimal(1) + cost
    assert answered == provider.calls
    assert answered >= 10  # the budget was used, not refused wholesale


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 60), st.booleans()), min_size=1, max_size=60
    )
)
def test_reservations_never_let_a_hard_budget_go_over(ops: list[tuple[int, int, bool]]) -> None:
    """Whatever the order of reserves and settles, with actual costs at most their estimates,
    spent + reserved never passes the limit, and settling everything leaves nothing reserved."""
    counters = LocalBudgetCounters()
    window = BudgetWindow("k", limit=200, hard=True, expires_at=2e9, thresholds=(100, 160, 200))
    held: list[int] = []
    for estimate, actual, settle_first in ops:
        if settle_first and held:
            amount = held.pop(0)
            counters.settle_now([(window, amount)], min(actual, amount), 0.0, 1.0)
        index, *_ = counters.reserve_now([(window, estimate)], 1.0)
        if index == -1:
            held.append(estimate)
        spent, reserved = counters.read_now([window], 1.0)[0]
        assert spent + reserved <= 200
        assert reserved == sum(held)
    for amount in held:
        counters.settle_now([(window, amount)], amount, 0.0, 1.0)
    spent, reserved = counters.read_now([window], 1.0)[0]
    assert reserved == 0
    assert spent <= 200


async def test_the_stage_is_built_in_and_prices_with_the_pipelines_pricer() -> None:
    """End to end through the built-in stages: the cost stage inside prices the answer with
    the shared pricer, and the budget stage settles that cost."""
    from tollway.testing.fake_openai import FakeOpenAI

    config = Config(budgets=BudgetsConfig(enabled=True, limits=[limit("1", scope="user")]))
    async with (
        FakeOpenAI() as fake,
        Pipeline.build(
            providers={"openai": {"base_url": fake.base_url, "api_key": "sk-test"}},
            config=config,
        ) as pipe,
    ):
        reply = await pipe.complete("openai/gpt-4o-mini", "hello there", user="u-1", max_tokens=50)
        stage = pipe._state.builtin["budget"][1]
        assert isinstance(stage, BudgetStage)
        assert reply.cost is not None
        assert reply.cost.total > 0
        rows = {row.budget: row for row in await stage.status()}
        assert rows["user=u-1 monthly"].spent == reply.cost.total
        assert rows["user=u-1 monthly"].reserved == 0
