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
from tollway.types import Response, StreamChunk, ToolCallDelta

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
            StreamChunk(response.text, deltas, None, None, response.id, response.model),
            StreamChunk(
                "", (), response.finish_reason, response.usage, response.id, response.model
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
_unstructure_response = converter.get_unstructure_hook(Response)
_unstructure_chunk = converter.get_unstructure_hook(StreamChunk)


def encode_entry(entry: CacheEntry) -> bytes:
    """Versioned JSON. A response is stored without its cost and latency: a hit costs nothing."""
    data: dict[str, Any] = {"v": ENTRY_VERSION, "kind": entry.kind, "at": entry.stored_at}
    if entry.response is not None:
        response = _unstructure_response(entry.response)
        response["cost"] = None
        response["latency_s"] = None
        # Stored once, so every decoded hit says it is one at no per-call cost.
        response["cached"] = True
        response["rate_limit"] = None
        data["response"] = response
    else:
        data["chunks"] = [_unstructure_chunk(chunk) for chunk in entry.chunks]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


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
            chunks = tuple(_structure_chunk(chunk, StreamChunk) for chunk in data["chunks"])
            return CacheEntry("stream", chunks=chunks, stored_at=stored_at)
        raise EntryError(f"cache entry of unknown kind {kind!r}")
    except EntryError:
        raise
    except Exception as exc:  # bad JSON, missing keys, wrong types: all the same to a reader
        raise EntryError(f"not a cache entry: {type(exc).__name__}: {exc}") from None
