"""The hand-written fast paths of the cache and single-flight stages give what the slow ones do."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import attrs
import pytest

from tollway.cache import keys
from tollway.cache.backend import CacheEntry, decode_entry, encode_entry
from tollway.converter import converter
from tollway.types import (
    Cost,
    ImagePart,
    Message,
    Request,
    Response,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

RESPONSES = [
    Response("r1", "gpt", "openai", Message("assistant", "hi"), "stop", Usage(3, 4)),
    Response(
        "r2",
        "gpt",
        "openai",
        Message(
            "assistant",
            (TextPart("a"), ImagePart("https://x/y.png", "low"), ImagePart("data:,z")),
            (ToolCall("c1", "f", '{"a": 1}'), ToolCall("c2", "g")),
            tool_call_id="t",
            name="n",
        ),
        "tool_calls",
        Usage(1, 2, 3, 4, 5),
        Cost(Decimal("0.1"), Decimal("2E-7"), currency="EUR"),
        "req",
        1.5,
        {"x-ratelimit-remaining-requests": "9"},
        False,
        Decimal("0.003"),
    ),
    Response("r3", "m", "p", Message("assistant", 'é ünïcode \u2028 "q" \\'), "length"),
]

CHUNKS = (
    StreamChunk("a", id="c", model="m"),
    StreamChunk(
        "", (ToolCallDelta(0, "id", "f", '{"'), ToolCallDelta(0, None, None, "}")), None, None
    ),
    StreamChunk("", (), "stop", Usage(5, 6), "c", "m", Cost(Decimal(1), Decimal("0.5"))),
)


def slow_encode(entry: CacheEntry) -> bytes:
    """encode_entry as it was written through the cattrs converter."""
    data: dict[str, Any] = {"v": 1, "kind": entry.kind, "at": entry.stored_at}
    if entry.response is not None:
        response = converter.unstructure(entry.response)
        response["cost"] = None
        response["latency_s"] = None
        response["cached"] = True
        response["rate_limit"] = None
        data["response"] = response
    else:
        data["chunks"] = [converter.unstructure(chunk) for chunk in entry.chunks]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("response", RESPONSES)
def test_a_response_is_encoded_byte_for_byte_as_through_the_converter(response: Response) -> None:
    entry = CacheEntry.of_response(response)
    assert encode_entry(entry) == slow_encode(entry)
    decoded = decode_entry(encode_entry(entry))
    assert decoded.response is not None
    assert decoded.response.message == response.message
    assert decoded.response.cached is True


def test_stream_chunks_are_encoded_byte_for_byte_as_through_the_converter() -> None:
    entry = CacheEntry.of_stream(CHUNKS)
    assert encode_entry(entry) == slow_encode(entry)
    # Decoded for replay, every chunk is marked as coming from the cache.
    assert decode_entry(encode_entry(entry)).chunks == tuple(
        attrs.evolve(c, cached=True) for c in CHUNKS
    )


def test_the_key_json_is_what_json_dumps_gives() -> None:
    value = {"b": [1, 2.5, "é\u2028", None, True], "a": {"z": 1, "y": "NaN"}, "": []}
    assert keys._encode(value) == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def test_a_handed_on_digest_reaches_only_the_same_request_once() -> None:
    request = Request("openai/gpt", (Message.user("hi"),))
    other = Request("openai/gpt", (Message.user("hi"),))
    digest = keys.request_digest(request)
    assert keys.request_key(request, "ns") == keys.key_of("ns", request, digest)
    keys.hand_on(request, digest)
    assert keys.take_handed(other) is None  # an equal request, but not this call's
    assert keys.take_handed(request) is None  # the slot was emptied by the first taker
    keys.hand_on(request, digest)
    assert keys.take_handed(request) == digest
    assert keys.take_handed(request) is None
    keys.hand_on(request, digest)
    keys.clear_handed()
    assert keys.take_handed(request) is None


def test_the_fast_encoder_knows_every_field_of_the_records() -> None:
    from tollway.cache import backend

    # When a record changes, update the hand-written encoder and its field lists.
    assert backend.FAST_ENCODE


class _Gated:
    """A provider whose answers wait for a gate, counting the calls that reach it."""

    name = "fake"

    def __init__(self) -> None:
        import asyncio

        self.gate = asyncio.Event()
        self.calls = 0

    async def complete(self, request: Request) -> Response:
        self.calls += 1
        await self.gate.wait()
        return Response("r", request.model_name, "fake", Message("assistant", "ok"), "stop")

    async def stream(self, request: Request) -> Any:
        self.calls += 1
        await self.gate.wait()
        yield StreamChunk("ok")
        yield StreamChunk("", finish_reason="stop", usage=Usage(1, 1))

    async def list_models(self) -> list[Any]:
        return []

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("kind", ["complete", "stream"])
async def test_cache_and_single_flight_together_share_one_call_then_hit(kind: str) -> None:
    import asyncio

    from tollway import Pipeline

    provider = _Gated()
    settings = {"cache": {"enabled": True}, "single_flight": {"enabled": True}}
    async with Pipeline.build(providers={"fake": provider}, settings=settings) as pipe:

        async def call(text: str, **params: Any) -> str:
            if kind == "complete":
                return (await pipe.complete("fake/m", text, **params)).text
            return "".join([c.text async for c in pipe.stream("fake/m", text, **params)])

        tasks = [asyncio.create_task(call("same")) for _ in range(5)]
        other = asyncio.create_task(call("other"))
        off = asyncio.create_task(call("same", cache="off"))
        for _ in range(20):
            await asyncio.sleep(0)
        provider.gate.set()
        assert await asyncio.gather(*tasks, other, off) == ["ok"] * 7
        # "same" once (its cache-off twin joined it in flight), "other" once.
        assert provider.calls == 2
        assert await call("same") == "ok"  # from the cache
        assert provider.calls == 2
