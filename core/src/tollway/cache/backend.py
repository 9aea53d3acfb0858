"""The cache backend protocol, and the one record format every backend stores.

A backend stores opaque bytes under string keys; it never decodes them, and never unpickles
anything. What the bytes hold is a :class:`CacheEntry` encoded as versioned JSON through
tollway's own converter: either a finished ``Response`` or the ``StreamChunk``\\ s of a
streamed answer. An entry that does not decode (corrupt, truncated, written by something else)
is a miss, never a crash.

Keys come from :func:`tollway.cache.keys.request_key` and look like
``NAMESPACE:v1:PROVIDER/MODEL:SHA256``, so a backend can invalidate a namespace or a model by
key prefix (:func:`key_prefix`) and needs an index only for tags.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from tollway.cache.keys import KEY_VERSION
from tollway.converter import converter
from tollway.types import (
    Cost,
    ImagePart,
    Message,
    Response,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

ENTRY_VERSION = 1

EntryKind = Literal["response", "stream"]


@runtime_checkable
class CacheBackend(Protocol):
    """Where cached answers live. Every method is async; values are bytes."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or ``None`` when absent or expired."""
        ...

    async def set(
        self, key: str, value: bytes, *, ttl: float | None, tags: Sequence[str] = ()
    ) -> None:
        """Store ``value`` for ``ttl`` seconds (``None``: until evicted), findable by ``tags``."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove one entry; ``True`` when it was there."""
        ...

    async def invalidate(
        self, *, namespace: str | None = None, model: str | None = None, tag: str | None = None
    ) -> int:
        """Remove every entry that matches all the given filters; returns how many.

        ``namespace`` and ``model`` (``PROVIDER/MODEL``) match by key prefix, ``tag`` by the
        tags the entry was stored with. At least one filter must be given.
        """
        ...

    async def aclose(self) -> None:
        """Release connections, files and threads. Safe to call twice."""
        ...


def key_prefix(namespace: str | None, model: str | None) -> str | None:
    """The key prefix that the namespace (and model) filters select, when a namespace is given.

    ``None`` when only a model is given: its entries are in every namespace.
    """
    if namespace is None:
        return None
    if model is None:
        return f"{namespace}:"
    return f"{namespace}:{KEY_VERSION}:{model}:"


def key_matches(key: str, namespace: str | None, model: str | None) -> bool:
    """Whether ``key`` belongs to ``namespace`` and ``model`` (each ``None`` matches any)."""
    if namespace is not None and not key.startswith(f"{namespace}:"):
        return False
    if model is not None:
        _namespace, _, rest = key.partition(":")
        version, _, rest = rest.partition(":")
        key_model, _, _digest = rest.rpartition(":")
        return version == KEY_VERSION and key_model == model
    return True


def key_namespace(key: str) -> str:
    return key.partition(":")[0]


def check_filters(namespace: str | None, model: str | None, tag: str | None) -> None:
    if namespace is None and model is None and tag is None:
        raise ValueError(
            "invalidate() needs a namespace, a model or a tag; to empty the whole cache, "
            "invalidate its namespace"
        )


@attrs.frozen(slots=True)
class CacheEntry:
    """One cached answer: a finished ``response``, or the ``chunks`` of a streamed one."""

    kind: EntryKind
    response: Response | None = None
    chunks: tuple[StreamChunk, ...] = ()
    stored_at: float = 0.0

    @classmethod
    def of_response(cls, response: Response) -> CacheEntry:
        return cls("response", response=response, stored_at=time.time())

    @classmethod
    def of_stream(cls, chunks: Sequence[StreamChunk]) -> CacheEntry:
        return cls("stream", chunks=tuple(chunks), stored_at=time.time())

    def to_response(self, provider: str, model: str) -> Response:
        """The answer as ``complete`` gives it; a stream is assembled into one."""
        if self.response is not None:
            return self.response
        from tollway.streaming import StreamAssembler

        assembler = StreamAssembler(provider, model)
        for chunk in self.chunks:
            assembler.add(chunk)
        return attrs.evolve(assembler.response(), cached=True)

    def to_chunks(self) -> tuple[StreamChunk, ...]:
        """The answer as ``stream`` gives it; a finished response becomes two chunks.

        The first carries the text and tool calls, the second the finish reason and usage, as
        a provider's stream ends.
        """
        response = self.response
        if response is None:
            return self.chunks
        deltas = tuple(
            ToolCallDelta(index, call.id, call.name, call.arguments)
            for index, call in enumerate(response.tool_calls)
        )
        return (
            StreamChunk(
                response.text, deltas, None, None, response.id, response.model, cached=True
            ),
            StreamChunk(
                "",
                (),
                response.finish_reason,
                response.usage,
                response.id,
                response.model,
                cached=True,
            ),
        )

    def usage_tokens(self) -> int:
        """Input plus output tokens of the answer: what a hit saved."""
        if self.response is not None:
            return self.response.usage.total_tokens
        for chunk in reversed(self.chunks):
            if chunk.usage is not None:
                return chunk.usage.total_tokens
        return 0


_structure_response = converter.get_structure_hook(Response)
_structure_chunk = converter.get_structure_hook(StreamChunk)

# The JSON an entry is written with: ``json.dumps(data, separators=(",", ":"),
# ensure_ascii=False)``, its C encoder built once instead of per call (an entry is a fresh
# tree of dicts and lists, so it needs no circular-reference check).
_make_encoder = getattr(json.encoder, "c_make_encoder", None)
if _make_encoder is not None:
    _c_encoder = _make_encoder(
        None,
        json.JSONEncoder().default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )

    def _dumps(data: Any) -> str:
        return "".join(_c_encoder(data, 0))

else:  # pragma: no cover - CPython always has the accelerator
    _slow_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

    def _dumps(data: Any) -> str:
        return _slow_encoder.encode(data)


# Records to JSON-ready data by hand, field for field what tollway's cattrs converter gives
# (tests compare the two), at a fraction of its cost: every stored answer goes through here.


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def _cost(cost: Cost) -> dict[str, Any]:
    return {
        "input": str(cost.input),
        "output": str(cost.output),
        "cache_read": str(cost.cache_read),
        "cache_write": str(cost.cache_write),
        "reasoning": str(cost.reasoning),
        "request": str(cost.request),
        "currency": cost.currency,
    }


def _part(part: Any) -> dict[str, Any]:
    if type(part) is TextPart:
        return {"text": part.text, "type": part.type}
    if type(part) is ImagePart:
        return {"url": part.url, "detail": part.detail, "type": part.type}
    return converter.unstructure(part)  # type: ignore[no-any-return]


def _message(message: Message) -> dict[str, Any]:
    content = message.content
    return {
        "role": message.role,
        "content": content if isinstance(content, str) else [_part(p) for p in content],
        "tool_calls": [
            {"id": call.id, "name": call.name, "arguments": call.arguments}
            for call in message.tool_calls
        ],
        "tool_call_id": message.tool_call_id,
        "name": message.name,
    }


def _stored_response(response: Response) -> dict[str, Any]:
    """A response as stored: without its cost, latency and rate-limit headers, and cached."""
    return {
        "id": response.id,
        "model": response.model,
        "provider": response.provider,
        "message": _message(response.message),
        "finish_reason": response.finish_reason,
        "usage": _usage(response.usage),
        # A hit costs nothing; stored cached, so every decoded hit says it is one at no
        # per-call cost.
        "cost": None,
        "request_id": response.request_id,
        "latency_s": None,
        "rate_limit": None,
        "cached": True,
        "saved": str(response.saved),
    }


def _chunk(chunk: StreamChunk) -> dict[str, Any]:
    usage = chunk.usage
    cost = chunk.cost
    return {
        "text": chunk.text,
        "tool_calls": [
            {"index": d.index, "id": d.id, "name": d.name, "arguments": d.arguments}
            for d in chunk.tool_calls
        ],
        "finish_reason": chunk.finish_reason,
        "usage": _usage(usage) if usage is not None else None,
        "id": chunk.id,
        "model": chunk.model,
        "cost": _cost(cost) if cost is not None else None,
        "cached": chunk.cached,
        "saved": str(chunk.saved),
    }


# The fields the functions above write, per record. Should a record gain or lose one, the
# converter is used instead (and the tests that compare the two fail until these are updated).
_KNOWN_FIELDS: dict[type, tuple[str, ...]] = {
    Response: (
        "id",
        "model",
        "provider",
        "message",
        "finish_reason",
        "usage",
        "cost",
        "request_id",
        "latency_s",
        "rate_limit",
        "cached",
        "saved",
    ),
    Message: ("role", "content", "tool_calls", "tool_call_id", "name"),
    ToolCall: ("id", "name", "arguments"),
    TextPart: ("text", "type"),
    ImagePart: ("url", "detail", "type"),
    Usage: (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ),
    Cost: ("input", "output", "cache_read", "cache_write", "reasoning", "request", "currency"),
    StreamChunk: (
        "text",
        "tool_calls",
        "finish_reason",
        "usage",
        "id",
        "model",
        "cost",
        "cached",
        "saved",
    ),
    ToolCallDelta: ("index", "id", "name", "arguments"),
}
FAST_ENCODE = all(
    tuple(field.name for field in attrs.fields(cls)) == names
    for cls, names in _KNOWN_FIELDS.items()
)


def _converted_response(response: Response) -> dict[str, Any]:
    data: dict[str, Any] = converter.unstructure(response)
    data["cost"] = None
    data["latency_s"] = None
    data["cached"] = True
    data["rate_limit"] = None
    return data


def _converted_chunk(chunk: StreamChunk) -> dict[str, Any]:
    data: dict[str, Any] = converter.unstructure(chunk)
    return data


def encode_entry(entry: CacheEntry) -> bytes:
    """Versioned JSON. A response is stored without its cost and latency: a hit costs nothing."""
    data: dict[str, Any] = {"v": ENTRY_VERSION, "kind": entry.kind, "at": entry.stored_at}
    if entry.response is not None:
        response = _stored_response if FAST_ENCODE else _converted_response
        data["response"] = response(entry.response)
    else:
        chunk = _chunk if FAST_ENCODE else _converted_chunk
        data["chunks"] = [chunk(c) for c in entry.chunks]
    return _dumps(data).encode()


class EntryError(ValueError):
    """Stored bytes that are not a cache entry: corrupt, truncated, or not tollway's."""


class EntryVersionError(EntryError):
    """An entry in another version of the format, written by an older or newer tollway.

    Not corrupt: another process sharing the backend may read it, so it is left in place.
    """


def decode_entry(value: bytes) -> CacheEntry:
    """The entry in ``value``; raises :class:`EntryError` when it is not one."""
    try:
        data = json.loads(value)
        version = data["v"]
        if version != ENTRY_VERSION:
            raise EntryVersionError(f"cache entry version {version!r}, expected {ENTRY_VERSION}")
        kind = data["kind"]
        stored_at = float(data.get("at", 0.0))
        if kind == "response":
            return CacheEntry(
                "response",
                response=_structure_response(data["response"], Response),
                stored_at=stored_at,
            )
        if kind == "stream":
            # Every replayed chunk says it came from the cache, so the cost stage prices the
            # replay as a hit; marked once here, at decode, not on every replay.
            chunks = tuple(
                _structure_chunk({**chunk, "cached": True}, StreamChunk) for chunk in data["chunks"]
            )
            return CacheEntry("stream", chunks=chunks, stored_at=stored_at)
        raise EntryError(f"cache entry of unknown kind {kind!r}")
    except EntryError:
        raise
    except Exception as exc:  # bad JSON, missing keys, wrong types: all the same to a reader
        raise EntryError(f"not a cache entry: {type(exc).__name__}: {exc}") from None
