"""Fallbacks: order, alias resolution, the per-call control, what stops them, errors kept."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable

import pytest

from tollway.config import Config
from tollway.errors import (
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    MalformedResponseError,
    ProviderTimeoutError,
    QueueTimeoutError,
    RateLimitedError,
    StreamInterruptedError,
    TollwayError,
    UnavailableError,
    UnknownModelError,
)
from tollway.pipeline import Pipeline
from tollway.resilience.config import CircuitBreakerConfig, RetryConfig
from tollway.types import Message, ModelInfo, Request, Response, StreamChunk, Usage


class Scripted:
    """A provider: each call takes the next outcome for its model (an error, or "cut")."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.script: dict[str, deque[BaseException | str]] = {}
        self.seen: list[str] = []

    def will(self, model: str, outcomes: Iterable[BaseException | str]) -> None:
        self.script.setdefault(model, deque()).extend(outcomes)

    def _next(self, request: Request) -> BaseException | str | None:
        self.seen.append(request.model)
        queue = self.script.get(request.model)
        return queue.popleft() if queue else None

    async def complete(self, request: Request) -> Response:
        outcome = self._next(request)
        if isinstance(outcome, BaseException):
            raise outcome
        return Response(
            "r", request.model, self.name, Message.assistant(f"from {request.model}"), "stop"
        )

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        outcome = self._next(request)
        if isinstance(outcome, BaseException):
            raise outcome
        yield StreamChunk(text=f"from {request.model}")
        if outcome == "cut":
            raise StreamInterruptedError("cut off", provider=self.name)
        yield StreamChunk(finish_reason="stop", usage=Usage(1, 1))

    async def list_models(self) -> list[ModelInfo]:
        return []

    async def aclose(self) -> None:
        pass


async def drain(iterator: AsyncIterator[StreamChunk], into: list[str]) -> None:
    async for chunk in iterator:
        into.append(chunk.text)


def down(provider: str = "a") -> UnavailableError:
    return UnavailableError(f"{provider} is down", provider=provider, status=503)


def build(
    fallbacks: dict[str, list[str]],
    *,
    aliases: dict[str, str] | None = None,
    **sections: object,
) -> tuple[Pipeline, Scripted, Scripted]:
    a, b = Scripted("a"), Scripted("b")
    config = Config(fallbacks=fallbacks, aliases=aliases or {}, **sections)  # type: ignore[arg-type]
    return Pipeline.build(providers={"a": a, "b": b}, config=config), a, b


async def test_tries_the_models_in_order_until_one_answers() -> None:
    pipe, a, b = build({"a/one": ["a/two", "b/three", "b/four"]})
    async with pipe:
        a.will("a/one", [down()])
        a.will("a/two", [RateLimitedError("429", provider="a", status=429)])
        response = await pipe.complete("a/one", "hi")
        assert response.model == "b/three"
        assert response.text == "from b/three"
        assert a.seen == ["a/one", "a/two"]
        assert b.seen == ["b/three"]
        counts = pipe.metrics.snapshot()["tollway_fallbacks_total"]["values"]
        assert counts == {"from=a/one,to=a/two": 1, "from=a/two,to=b/three": 1}


async def test_a_model_that_answers_is_not_passed_on() -> None:
    pipe, a, b = build({"a/one": ["b/two"]})
    async with pipe:
        assert (await pipe.complete("a/one", "hi")).model == "a/one"
        assert b.seen == []
        # A model with no fallbacks configured goes straight through.
        a.will("a/other", [down()])
        with pytest.raises(UnavailableError):
            await pipe.complete("a/other", "hi")
        assert b.seen == []


async def test_aliases_are_resolved_on_both_sides() -> None:
    pipe, a, b = build({"fast": ["backup"]}, aliases={"fast": "a/small", "backup": "b/large"})
    async with pipe:
        a.will("a/small", [down()])
        # Called by its canonical name, the model still finds its fallbacks.
        assert (await pipe.complete("a/small", "hi")).model == "b/large"
        a.will("a/small", [down()])
        assert (await pipe.complete("fast", "hi")).model == "b/large"
        assert b.seen == ["b/large", "b/large"]


async def test_the_fallbacks_control_replaces_the_configured_list() -> None:
    pipe, a, b = build({"a/one": ["b/configured"]}, aliases={"spare": "b/spare"})
    async with pipe:
        a.will("a/one", [down()])
        response = await pipe.complete("a/one", "hi", fallbacks=["spare"])
        assert response.model == "b/spare"
        assert b.seen == ["b/spare"]
        # An empty list in the controls means no fallback for this call.
        a.will("a/one", [down()])
        with pytest.raises(UnavailableError):
            await pipe.complete("a/one", "hi", controls={"fallbacks": []})
        # The control also works for a model with nothing configured.
        a.will("a/lonely", [down()])
        assert (await pipe.complete("a/lonely", "hi", fallbacks=["b/x"])).model == "b/x"


async def test_an_unknown_model_in_the_control_is_a_clear_error() -> None:
    pipe, a, _ = build({"a/one": ["b/two"]})
    async with pipe:
        a.will("a/one", [down()])
        with pytest.raises(UnknownModelError, match="nowhere"):
            await pipe.complete("a/one", "hi", fallbacks=["nowhere/model"])


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("bad", provider="a", status=400),
        AuthenticationError("no key", provider="a", status=401),
    ],
    ids=type,
)
async def test_client_errors_do_not_fall_back(error: Exception) -> None:
    pipe, a, b = build({"a/one": ["b/two"]})
    async with pipe:
        a.will("a/one", [error])
        with pytest.raises(type(error)) as caught:
            await pipe.complete("a/one", "hi")
        assert caught.value is error
        assert b.seen == []
        assert not getattr(caught.value, "__notes__", None)


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpenError("open", provider="a", retry_after=3.0),
        QueueTimeoutError("queued too long"),
        ProviderTimeoutError("slow", provider="a"),
        MalformedResponseError("garbage", provider="a"),
    ],
    ids=type,
)
async def test_provider_side_errors_fall_back(error: Exception) -> None:
    pipe, a, _ = build({"a/one": ["b/two"]})
    async with pipe:
        a.will("a/one", [error])
        assert (await pipe.complete("a/one", "hi")).model == "b/two"


async def test_when_all_fail_the_last_error_is_raised_with_the_earlier_ones() -> None:
    pipe, a, b = build({"a/one": ["a/two", "b/three"]})
    async with pipe:
        first, second = down(), down()
        last = UnavailableError("b is down too", provider="b", status=502)
        a.will("a/one", [first])
        a.will("a/two", [second])
        b.will("b/three", [last])
        with pytest.raises(UnavailableError) as caught:
            await pipe.complete("a/one", "hi")
        assert caught.value is last
        errors: tuple[tuple[str, TollwayError], ...] = caught.value.fallback_errors  # type: ignore[attr-defined]
        assert errors == (("a/one", first), ("a/two", second))
        notes = "\n".join(caught.value.__notes__)
        assert "a/one failed first" in notes
        assert "a/two failed first" in notes
        assert "the last fallback failed too" in notes


async def test_a_client_error_after_a_fallback_keeps_the_earlier_errors() -> None:
    pipe, a, b = build({"a/one": ["b/two", "b/three"]})
    async with pipe:
        a.will("a/one", [down()])
        b.will("b/two", [AuthenticationError("b's key is wrong", provider="b", status=401)])
        with pytest.raises(AuthenticationError) as caught:
            await pipe.complete("a/one", "hi")
        assert b.seen == ["b/two"]
        assert "stopped the fallbacks" in "\n".join(caught.value.__notes__)


async def test_streams_fall_back_before_the_first_chunk() -> None:
    pipe, a, _ = build({"a/one": ["b/two"]})
    async with pipe:
        a.will("a/one", [down()])
        texts = [c.text async for c in pipe.stream("a/one", "hi")]
        assert texts == ["from b/two", ""]


async def test_streams_do_not_fall_back_after_the_first_chunk() -> None:
    pipe, a, b = build({"a/one": ["b/two"]})
    async with pipe:
        a.will("a/one", ["cut"])
        received: list[str] = []
        with pytest.raises(StreamInterruptedError):
            await drain(pipe.stream("a/one", "hi"), received)
        assert received == ["from a/one"]
        assert b.seen == []


async def test_an_open_breaker_sends_the_call_to_the_fallback_at_once() -> None:
    pipe, a, _ = build(
        {"a/one": ["b/two"]},
        retry=RetryConfig(enabled=True, max_attempts=5, base_delay=0.0),
        circuit_breaker=CircuitBreakerConfig(enabled=True, consecutive_failures=2),
    )
    async with pipe:
        a.will("a/one", [down(), down(), down()])
        # Two failures open a's breaker; the retry then meets CircuitOpenError and gives up
        # at once, and the fallback answers.
        assert (await pipe.complete("a/one", "hi")).model == "b/two"
        assert a.seen == ["a/one", "a/one"]
        # While open, a is not called at all.
        assert (await pipe.complete("a/one", "hi")).model == "b/two"
        assert a.seen == ["a/one", "a/one"]
        counts = pipe.metrics.snapshot()["tollway_fallbacks_total"]["values"]
        assert counts == {"from=a/one,to=b/two": 2}


def test_an_unknown_configured_fallback_fails_at_build_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"fallbacks\.a/one: cannot use 'nowhere/x'"):
        build({"a/one": ["nowhere/x"]})


def test_a_string_where_a_list_belongs_is_named() -> None:
    from tollway.config import load_config
    from tollway.plugins import build_plugin_manager

    plugins = build_plugin_manager([], load_entrypoints=False)
    # Refused when the config is loaded, naming the key, before any pipeline is built.
    with pytest.raises(ConfigError, match=r"fallbacks\.a/one: expected a list of strings"):
        load_config(data={"fallbacks": {"a/one": "b/two"}}, plugins=plugins, environ={})
