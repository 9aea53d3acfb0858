"""Fault injection: with 30% of upstream calls failing, retries, breakers and fallbacks keep
at least 99.9% of calls succeeding, and usage is recorded for exactly the upstream successes.

Two fake OpenAI servers stand for two endpoints. Each upstream request takes the next outcome
from a script drawn with a seeded random: 70% answers, each with its own text and token counts,
and 30% failures spread over 429 (with a short Retry-After), 500, 503, connection resets and
stalls that end in the request's timeout. Calls go through a real Pipeline: retry, circuit
breaker and a fallback from the first server to the second, with a recording stage outermost
in place of the usage store.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs

from tollway.config import Config
from tollway.errors import TollwayError
from tollway.pipeline import CompleteFn, Pipeline, Stage, StreamFn
from tollway.resilience.config import CircuitBreakerConfig, RetryConfig
from tollway.testing.fake_openai import FakeOpenAI
from tollway.types import Request, Response, StreamChunk, Usage

SEED = 20240605
FAILURE_SHARE = 0.3
# The request timeout that turns a stalled answer into a ProviderTimeoutError. Generous, so a
# slow machine does not time out a real answer (which would be served but never recorded).
TIMEOUT = 1.0
MODEL = "primary/gpt-4o-mini"
BACKUP = "backup/gpt-4o-mini"


@attrs.frozen
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int


def script(
    fake: FakeOpenAI, rng: random.Random, label: str, n: int, kinds: Sequence[str]
) -> list[Answer | str]:
    """Queue ``n`` outcomes on ``fake``; returns them in the order they will be served."""
    outcomes: list[Answer | str] = []
    for index in range(n):
        if rng.random() < FAILURE_SHARE:
            kind = rng.choice(kinds)
            if kind == "429":
                fake.fail(429, headers={"retry-after-ms": str(rng.randint(1, 20))})
            elif kind in ("500", "503"):
                fake.fail(int(kind))
            else:
                fake.fault("reset" if kind == "reset" else "stall")
            outcomes.append(kind)
        else:
            answer = Answer(f"{label} answer {index}", rng.randint(5, 500), rng.randint(1, 300))
            fake.reply(
                answer.text,
                usage={
                    "prompt_tokens": answer.prompt_tokens,
                    "completion_tokens": answer.completion_tokens,
                },
            )
            outcomes.append(answer)
    return outcomes


class UsageRecorder(Stage):
    """Outermost: records the usage of each call that succeeded, as a usage store would."""

    name = "usage_recorder"

    def __init__(self) -> None:
        self.records: list[tuple[str, str, Usage]] = []

    async def complete(self, request: Request, call_next: CompleteFn) -> Response:
        response = await call_next(request)
        self.records.append((response.model, response.text, response.usage))
        return response

    async def stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        text: list[str] = []
        usage: Usage | None = None
        model = request.model
        async for chunk in call_next(request):
            text.append(chunk.text)
            usage = chunk.usage or usage
            model = chunk.model or model
            yield chunk
        assert usage is not None, "a finished stream must report its usage"
        self.records.append((model, "".join(text), usage))


def served_answers(fake: FakeOpenAI, outcomes: list[Answer | str]) -> list[Answer]:
    """The answers the fake actually sent: outcomes are served one per chat request, in order."""
    chats = sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))
    assert chats <= len(outcomes), "the script ran out; make it longer"
    return [o for o in outcomes[:chats] if isinstance(o, Answer)]


def pipeline(primary: FakeOpenAI, backup: FakeOpenAI, recorder: UsageRecorder) -> Pipeline:
    config = Config(
        retry=RetryConfig(
            enabled=True,
            max_attempts=6,
            base_delay=0.001,
            max_delay=0.01,
            max_retry_after=0.05,
            # A 30% failure rate needs ~0.43 retries per call: the budget allows 0.6.
            budget_ratio=0.6,
            budget_burst=20.0,
        ),
        # Tuned not to trip on a steady 30%; when it does, the fallback answers.
        circuit_breaker=CircuitBreakerConfig(
            enabled=True,
            failure_rate=0.7,
            minimum_calls=50,
            window=30.0,
            consecutive_failures=10,
            open_for=0.05,
        ),
        fallbacks={MODEL: [BACKUP]},
    )

    def table(fake: FakeOpenAI) -> dict[str, Any]:
        return {
            "type": "openai",
            "base_url": fake.base_url,
            "api_key": "sk-test",
            "timeout": TIMEOUT,
        }

    return Pipeline.build(
        providers={"primary": table(primary), "backup": table(backup)},
        config=config,
        stages=[recorder],
    )


async def run_calls(n: int, concurrency: int, call: Any) -> tuple[int, list[BaseException]]:
    gate = asyncio.Semaphore(concurrency)
    failures: list[BaseException] = []
    succeeded = 0

    async def one(index: int) -> None:
        nonlocal succeeded
        async with gate:
            try:
                await call(index)
            except TollwayError as exc:
                failures.append(exc)
            else:
                succeeded += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return succeeded, failures


def check_usage(recorder: UsageRecorder, served: list[Answer], succeeded: int) -> None:
    # Each successful call recorded once; failed attempts recorded nothing.
    assert len(recorder.records) == succeeded
    assert len(served) == succeeded, (
        f"{len(served)} answers were served upstream but {succeeded} calls succeeded"
    )
    assert Counter(text for _, text, _ in recorder.records) == Counter(a.text for a in served)
    recorded = sum((usage for _, _, usage in recorder.records), Usage())
    assert recorded.input_tokens == sum(a.prompt_tokens for a in served)
    assert recorded.output_tokens == sum(a.completion_tokens for a in served)


async def test_thirty_percent_upstream_failures_complete_calls() -> None:
    calls = 1000
    rng = random.Random(SEED)
    kinds = ("429", "500", "503", "reset", "timeout")
    recorder = UsageRecorder()
    async with FakeOpenAI(stall_seconds=30.0) as first, FakeOpenAI(stall_seconds=30.0) as second:
        first_outcomes = script(first, rng, "primary", 3 * calls, kinds)
        second_outcomes = script(second, rng, "backup", 3 * calls, kinds)
        async with pipeline(first, second, recorder) as pipe:

            async def call(index: int) -> None:
                await pipe.complete(MODEL, f"question {index}")

            succeeded, failures = await run_calls(calls, 50, call)
            metrics = pipe.metrics.snapshot()

    assert succeeded >= 0.999 * calls, failures[:3]
    served = served_answers(first, first_outcomes) + served_answers(second, second_outcomes)
    check_usage(recorder, served, succeeded)
    # The faults were really met and retried: every kind, on the first server at least.
    upstream = len(first.requests) + len(second.requests)
    assert upstream > calls * 1.3
    retried = metrics["tollway_retries_total"]["values"]
    for error in ("RateLimitedError", "UnavailableError", "ProviderTimeoutError"):
        assert retried.get(f"provider=primary,error={error}", 0) > 0, retried


async def test_streams_retry_failures_before_their_first_chunk() -> None:
    calls = 300
    rng = random.Random(SEED + 1)
    # The faults a stream can meet before its first chunk; a stall mid-stream is too late for
    # any retry, by design.
    kinds = ("429", "500", "503", "reset")
    recorder = UsageRecorder()
    async with FakeOpenAI() as first, FakeOpenAI() as second:
        first_outcomes = script(first, rng, "primary", 3 * calls, kinds)
        second_outcomes = script(second, rng, "backup", 3 * calls, kinds)
        async with pipeline(first, second, recorder) as pipe:

            async def call(index: int) -> None:
                async for _chunk in pipe.stream(MODEL, f"question {index}"):
                    pass

            succeeded, failures = await run_calls(calls, 30, call)

    assert succeeded >= 0.999 * calls, failures[:3]
    served = served_answers(first, first_outcomes) + served_answers(second, second_outcomes)
    check_usage(recorder, served, succeeded)
    assert len(first.requests) > calls * 1.2
