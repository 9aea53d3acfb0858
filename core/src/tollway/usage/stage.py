"""The usage stage: the outermost built-in stage, recording every answered call.

After a call is answered (``complete`` returned, or a stream delivered its usage chunk), the
stage hands a record to the write-behind :class:`~tollway.usage.writer.UsageWriter` and
returns: the request path never waits on the store. What it records is what the stages inside
it settled: the cost the cost stage put on the response (or the stream's usage chunk), cache
hits with cost 0 and what they saved. Calls that raised are not recorded.

Per call, the request path takes the time and appends a small object to a deque; the record
itself (its id, the prompt hash) is built in the background, batch by batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tollway.cache.keys import request_key
from tollway.pipeline import CompleteFn, Stage, StreamFn
from tollway.types import Cost, Request, Response, StreamChunk, Usage
from tollway.usage.records import UsageRecord
from tollway.usage.store import UsageStore, open_store
from tollway.usage.writer import UsageWriter

if TYPE_CHECKING:
    from tollway.stages import StageContext

_ZERO = Decimal(0)
_NO_COST = Cost()
STORE_KEY = "usage_store"


def store_for(context: StageContext) -> UsageStore:
    """The assembly's usage store, opened once and shared by the stages that need it."""
    store = context.shared.get(STORE_KEY)
    if store is None:
        store = context.shared[STORE_KEY] = open_store(context.config.usage, context.plugins)
    return store  # type: ignore[no-any-return]


def prompt_hash(request: Request) -> str | None:
    """The digest part of the canonical cache key: equal prompts, equal hashes."""
    try:
        return request_key(request).rpartition(":")[2]
    except TypeError:  # something in ``extra`` with no JSON form
        return None


class _Answered:
    """A call answered; becomes a UsageRecord in the writer's background task."""

    __slots__ = (
        "cached", "cost", "finish_reason", "latency", "model", "provider", "request",
        "request_id", "saved", "stream", "timestamp", "usage",
    )  # fmt: skip

    def __init__(
        self,
        request: Request,
        timestamp: float,
        latency: float,
        provider: str,
        model: str,
        usage: Usage,
        cost: Cost | None,
        cached: bool,
        saved: Decimal,
        stream: bool,
        request_id: str | None,
        finish_reason: str | None,
    ) -> None:
        self.request = request
        self.timestamp = timestamp
        self.latency = latency
        self.provider = provider
        self.model = model
        self.usage = usage
        self.cost = cost
        self.cached = cached
        self.saved = saved
        self.stream = stream
        self.request_id = request_id
        self.finish_reason = finish_reason

    def build(self) -> UsageRecord:
        request = self.request
        return UsageRecord(
            id=uuid.uuid4().hex,
            timestamp=self.timestamp,
            provider=self.provider,
            model=self.model,
            usage=self.usage,
            cost=self.cost if self.cost is not None else _NO_COST,
            user=request.user,
            session=request.session,
            team=request.team,
            api_key_id=request.api_key_id,
            tags=dict(request.tags) if request.tags else {},
            cached=self.cached,
            saved=self.saved,
            stream=self.stream,
            latency_s=self.latency,
            request_id=self.request_id,
            prompt_hash=prompt_hash(request),
            finish_reason=self.finish_reason,
        )


class UsageStage(Stage):
    """Records every answered call through a write-behind writer."""

    name = "usage"

    def __init__(self, writer: UsageWriter, *, clock: Any = time.time) -> None:
        self.writer = writer
        self.clock = clock

    @property
    def store(self) -> UsageStore:
        return self.writer.store

    @classmethod
    def from_context(cls, context: StageContext) -> UsageStage:
        config = context.config.usage
        writer = UsageWriter(
            store_for(context),
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
            max_pending=config.max_pending,
            retry_initial=config.retry_initial,
            retry_max=config.retry_max,
            flush_on_sigterm=config.flush_on_sigterm,
            metrics=context.metrics,
            store_name=config.store,
        )
        return cls(writer)

    async def complete(self, request: Request, call_next: CompleteFn) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        latency = response.latency_s
        if latency is None:
            latency = time.perf_counter() - started
        self.writer.submit(
            _Answered(
                request,
                self.clock(),
                latency,
                response.provider or request.provider,
                response.model or request.model,
                response.usage,
                response.cost,
                response.cached,
                getattr(response, "saved", _ZERO),
                False,
                response.request_id,
                response.finish_reason,
            )
        )
        return response

    def stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        return self._stream(request, call_next)

    async def _stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        started = time.perf_counter()
        iterator = call_next(request)
        last: StreamChunk | None = None  # the chunk that carried the usage (and cost)
        finish_reason: str | None = None
        model: str | None = None
        try:
            async for chunk in iterator:
                if chunk.usage is not None:
                    last = chunk
                if chunk.finish_reason is not None:
                    finish_reason = chunk.finish_reason
                if chunk.model:
                    model = chunk.model
                yield chunk
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            # Answered as far as billing goes once the usage arrived, even if the consumer
            # stopped right after.
            if last is not None and last.usage is not None:
                self.writer.submit(
                    _Answered(
                        request,
                        self.clock(),
                        time.perf_counter() - started,
                        request.provider,
                        model or request.model,
                        last.usage,
                        last.cost,
                        bool(getattr(last, "cached", False)),
                        getattr(last, "saved", _ZERO),
                        True,
                        None,
                        finish_reason,
                    )
                )

    async def flush(self) -> None:
        """Write every pending record now (tests, the CLI, before a report)."""
        await self.writer.flush()

    async def aclose(self) -> None:
        try:
            await self.writer.aclose()
        finally:
            await self.writer.store.aclose()
