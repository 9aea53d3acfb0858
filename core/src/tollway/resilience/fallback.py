"""Fallbacks: when a model fails, or its endpoint's breaker is open, try the next one in order.

``[fallbacks]`` maps a model (canonical or an alias, as written) to the models to try after it;
a call's ``fallbacks`` control replaces that list for the call. Every name is resolved to its
canonical ``provider/model`` once, when the pipeline is built (and per call for a control).

A call falls back on the errors that another model could answer: retryable ones (rate limits,
timeouts, 5xx, resets, an open breaker, a rate-limit queue timeout) and malformed answers. A
400, 401, 403 or 404, a content filter or a budget stop it: the next model would be sent the
same wrong request, or the same key. Each model is tried with its own retries, since this
stage sits outside the retry stage.

When every model fails, the error raised is the last one; the earlier ones are in its
``__notes__`` (shown under the traceback) and in its ``fallback_errors`` attribute, a tuple of
``(model, error)`` pairs in the order they were tried.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from tollway.errors import ConfigError, MalformedResponseError, TollwayError
from tollway.logging import get_logger
from tollway.pipeline import CompleteFn, Stage, StreamFn
from tollway.types import Request, Response, StreamChunk

if TYPE_CHECKING:
    from tollway.metrics import Metrics
    from tollway.stages import StageContext

log = get_logger("tollway.fallback")


def falls_back(exc: TollwayError) -> bool:
    """Whether another model might answer where this error came from."""
    return exc.retryable or isinstance(exc, MalformedResponseError)


class FallbackStage(Stage):
    """Tries the configured models in order until one answers."""

    name = "fallback"

    def __init__(
        self,
        chains: Mapping[str, tuple[str, ...]],
        route: Callable[[str], str],
        metrics: Metrics,
    ) -> None:
        # Canonical model -> canonical fallbacks, the model itself left out.
        self._chains = dict(chains)
        self._route = route
        self._fallbacks = metrics.counter(
            "fallbacks_total",
            "Calls passed on from a failed model to the next one.",
            ["from", "to"],
        )

    @classmethod
    def from_context(cls, context: StageContext) -> FallbackStage:
        chains: dict[str, tuple[str, ...]] = {}
        for model, targets in context.config.fallbacks.items():
            key = f"fallbacks.{model}"
            canonical = _resolve(context.route, model, key)
            if len(targets) > 1 and all(len(target) == 1 for target in targets):
                # cattrs turns a string given where a list belongs into its characters.
                raise ConfigError(
                    f"expected a list of models, got the string {''.join(targets)!r}; write "
                    f'"{model}" = ["{"".join(targets)}"] in [fallbacks]',
                    key=key,
                )
            resolved = [_resolve(context.route, target, key) for target in targets]
            chains[canonical] = _dedupe(canonical, resolved)
        return cls(chains, context.route, context.metrics)

    def chain(self, request: Request) -> tuple[str, ...]:
        """The models to try after ``request.model``, for this call."""
        controls = request.controls
        if controls:
            given: Any = controls.get("fallbacks")
            if given is not None:
                if isinstance(given, str):
                    given = (given,)
                route = self._route
                return _dedupe(request.model, [route(model) for model in given])
        return self._chains.get(request.model, ())

    async def complete(self, request: Request, call_next: CompleteFn) -> Response:
        chain = self.chain(request)
        if not chain:
            return await call_next(request)
        failed: list[tuple[str, TollwayError]] = []
        current = request
        for next_model in (*chain, None):
            try:
                return await call_next(current)
            except TollwayError as exc:
                if next_model is None or not falls_back(exc):
                    _attach(exc, failed, _why(exc))
                    raise
                failed.append((current.model, exc))
                self._passed_on(current.model, next_model, exc)
            current = attrs.evolve(request, model=next_model)
        raise AssertionError("unreachable: the last model either answers or raises")

    def stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        chain = self.chain(request)
        if not chain:
            return call_next(request)
        return self._stream(request, chain, call_next)

    async def _stream(
        self, request: Request, chain: tuple[str, ...], call_next: StreamFn
    ) -> AsyncIterator[StreamChunk]:
        failed: list[tuple[str, TollwayError]] = []
        current = request
        for next_model in (*chain, None):
            iterator = call_next(current)
            started = False
            try:
                async for chunk in iterator:
                    started = True
                    yield chunk
                return
            except TollwayError as exc:
                # After the first chunk the caller holds part of this model's answer; another
                # model's answer cannot be spliced onto it.
                if started or next_model is None or not falls_back(exc):
                    _attach(exc, failed, _why(exc, started))
                    raise
                failed.append((current.model, exc))
                self._passed_on(current.model, next_model, exc)
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            current = attrs.evolve(request, model=next_model)

    def _passed_on(self, failed_model: str, next_model: str, exc: TollwayError) -> None:
        self._fallbacks.inc(failed_model, next_model)
        log.info(
            "falling_back",
            model=failed_model,
            to=next_model,
            error=type(exc).__name__,
            reason=exc.message,
        )


def _resolve(route: Callable[[str], str], model: str, key: str) -> str:
    if not isinstance(model, str):
        raise ConfigError(f"expected a model name, got {type(model).__name__}", key=key)
    try:
        return route(model)
    except ConfigError as exc:
        raise ConfigError(f"cannot use {model!r} as a fallback: {exc.message}", key=key) from None


def _dedupe(model: str, targets: Iterable[str]) -> tuple[str, ...]:
    """The targets in order, each once, without the model they stand in for."""
    seen = {model}
    out = []
    for target in targets:
        if target not in seen:
            seen.add(target)
            out.append(target)
    return tuple(out)


def _attach(exc: TollwayError, failed: list[tuple[str, TollwayError]], why: str) -> None:
    """Put the earlier models' errors on the one raised, so none is lost, and say why it stands."""
    if not failed:
        return
    setattr(exc, "fallback_errors", tuple(failed))  # noqa: B010 (TollwayError has no such field)
    for model, earlier in failed:
        exc.add_note(
            f"tollway: fallback: {model} failed first: {type(earlier).__name__}: {earlier}"
        )
    tried = ", ".join(model for model, _ in failed)
    exc.add_note(f"tollway: after {tried} failed, {why}")


def _why(exc: TollwayError, started: bool = False) -> str:
    if started:
        return "this model's stream failed after its first chunk, too late to fall back"
    if not falls_back(exc):
        return (
            "this error stopped the fallbacks: another model would be sent the same request "
            "(fix the request, the key or the permissions)"
        )
    return "the last fallback failed too; add models to [fallbacks] or retry later"
