"""Small helpers for testing providers' streams, shared by every plugin's tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from tollway.types import Request, Response, StreamChunk

__all__ = ["call", "collect", "drain", "joined", "wait_for"]


async def collect(stream: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    """Every chunk of a stream, read to its end."""
    return [chunk async for chunk in stream]


async def drain(stream: AsyncIterator[StreamChunk], into: list[StreamChunk]) -> None:
    """Read a stream to its end into ``into``, keeping what came before it failed."""
    async for chunk in stream:
        into.append(chunk)


def joined(chunks: list[StreamChunk]) -> str:
    """The text of a stream's chunks, joined."""
    return "".join(chunk.text for chunk in chunks)


async def call(provider: Any, request: Request, streaming: bool) -> Response | list[StreamChunk]:
    """``complete()``, or ``stream()`` read to its end: one test covers both ways of failing."""
    if streaming:
        return await collect(provider.stream(request))
    result: Response = await provider.complete(request)
    return result


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``seconds``.

    For counters a fake server keeps (an abandoned stream is noticed when its next write
    fails), which have no event to wait on.
    """
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true within {seconds:g} s: {condition}")
