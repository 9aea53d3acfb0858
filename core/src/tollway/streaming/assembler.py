"""Builds the final Response of a stream from its chunks, as they pass."""

from __future__ import annotations

from decimal import Decimal

import attrs

from tollway.types import Cost, Message, Response, StreamChunk, ToolCall, Usage


@attrs.define
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = attrs.field(factory=list)


@attrs.define
class StreamAssembler:
    """Feed it every chunk with ``add``; ``response()`` gives what ``complete`` would have.

    Tool-call pieces are joined by their ``index``; the last ``finish_reason`` and ``usage``
    seen win, since providers send them at the end.
    """

    provider: str
    model: str
    _text: list[str] = attrs.field(factory=list, init=False)
    _tools: dict[int, _ToolCallParts] = attrs.field(factory=dict, init=False)
    id: str | None = attrs.field(default=None, init=False)
    finish_reason: str | None = attrs.field(default=None, init=False)
    usage: Usage | None = attrs.field(default=None, init=False)
    cost: Cost | None = attrs.field(default=None, init=False)
    cached: bool = attrs.field(default=False, init=False)
    saved: Decimal = attrs.field(default=Decimal(0), init=False)
    chunks: int = attrs.field(default=0, init=False)

    def add(self, chunk: StreamChunk) -> None:
        self.chunks += 1
        if chunk.text:
            self._text.append(chunk.text)
        for delta in chunk.tool_calls:
            parts = self._tools.get(delta.index)
            if parts is None:
                parts = self._tools[delta.index] = _ToolCallParts()
            if delta.id:
                parts.id = delta.id
            if delta.name:
                parts.name = delta.name
            if delta.arguments:
                parts.arguments.append(delta.arguments)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.cost is not None:
            self.cost = chunk.cost
        if chunk.cached:
            self.cached = True
        if chunk.saved:
            self.saved = chunk.saved
        if chunk.id and self.id is None:
            self.id = chunk.id
        if chunk.model:
            self.model = chunk.model

    @property
    def text(self) -> str:
        return "".join(self._text)

    def response(self) -> Response:
        tool_calls = tuple(
            ToolCall(parts.id, parts.name, "".join(parts.arguments) or "{}")
            for _, parts in sorted(self._tools.items())
        )
        return Response(
            id=self.id or "",
            model=self.model,
            provider=self.provider,
            message=Message("assistant", self.text, tool_calls),
            finish_reason=self.finish_reason,
            usage=self.usage or Usage(),
            cost=self.cost,
            cached=self.cached,
            saved=self.saved,
        )
