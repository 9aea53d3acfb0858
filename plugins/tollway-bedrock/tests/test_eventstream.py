"""The event-stream decoder against botocore's own parser, on frames FakeBedrock produces."""

from __future__ import annotations

import json
import struct
import uuid

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.testing.fake_bedrock import encode_event, encode_exception, encode_message
from tollway_bedrock.eventstream import (
    CorruptFrameError,
    EventStreamDecoder,
    TruncatedFrameError,
    iter_messages,
)

FRAMES = [
    encode_event("messageStart", {"role": "assistant", "p": "abc"}),
    encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Grüße 👋"}}),
    encode_event("contentBlockStop", {"contentBlockIndex": 0}),
    encode_event("messageStop", {"stopReason": "end_turn"}),
    encode_event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 2}}),
    encode_exception("throttlingException", {"message": "slow down"}),
    encode_message({":message-type": "event"}, b""),
]
STREAM = b"".join(FRAMES)


def botocore_messages(data: bytes) -> list[tuple[dict, bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, message.payload) for message in buffer]


def decode(chunks: list[bytes]) -> list[tuple[dict, bytes]]:
    decoder = EventStreamDecoder()
    out = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    assert decoder.pending == 0
    return out


def test_matches_botocore_on_whole_stream() -> None:
    expected = botocore_messages(STREAM)
    assert len(expected) == len(FRAMES)
    assert decode([STREAM]) == expected
    assert json.loads(expected[1][1])["delta"]["text"] == "Grüße 👋"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_any_chunking_gives_the_same_messages(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert decode(chunks) == botocore_messages(STREAM)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) < 256),
        st.one_of(
            st.text(max_size=40),
            st.binary(max_size=40),
            st.booleans(),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.uuids(),
        ),
        max_size=6,
    ),
    st.binary(max_size=300),
)
def test_every_header_type_reads_as_botocore_reads_it(headers: dict, payload: bytes) -> None:
    frame = encode_message(headers, payload)
    [(ours, our_payload)] = decode([frame])
    [(theirs, their_payload)] = botocore_messages(frame)
    assert our_payload == their_payload == payload
    # botocore gives UUIDs as their 16 bytes; the decoder gives uuid.UUID.
    normalised = {k: v.bytes if isinstance(v, uuid.UUID) else v for k, v in ours.items()}
    assert normalised == theirs


def corrupt(frame: bytes, position: int) -> bytes:
    data = bytearray(frame)
    data[position] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize(
    ("position", "what"),
    [(0, "prelude"), (9, "prelude"), (20, "message"), (-1, "message"), (-8, "message")],
)
def test_damaged_frames_are_refused_like_botocore_refuses_them(position: int, what: str) -> None:
    frame = corrupt(FRAMES[1], position)
    with pytest.raises(ChecksumMismatch):
        botocore_messages(frame)
    with pytest.raises(CorruptFrameError, match=what):
        decode([frame])


def test_impossible_lengths_with_a_valid_prelude_checksum() -> None:
    import zlib

    prelude = struct.pack(">II", 8, 0)
    frame = prelude + struct.pack(">I", zlib.crc32(prelude)) + b"\0" * 8
    with pytest.raises(CorruptFrameError, match="impossible"):
        EventStreamDecoder().feed(frame)


def test_a_stream_cut_inside_a_frame_leaves_bytes_pending() -> None:
    decoder = EventStreamDecoder()
    messages = decoder.feed(STREAM[: len(FRAMES[0]) + 10])
    assert len(messages) == 1
    assert decoder.pending == 10


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self):
        for chunk in self._chunks:
            yield chunk


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Content(chunks)


async def test_iter_messages_reads_a_response_in_chunks() -> None:
    chunks = [STREAM[i : i + 7] for i in range(0, len(STREAM), 7)]
    got = [message async for message in iter_messages(_Response(chunks))]  # type: ignore[arg-type]
    assert got == botocore_messages(STREAM)


async def test_iter_messages_reports_truncation() -> None:
    received = []

    async def read() -> None:
        async for message in iter_messages(_Response([STREAM[:-3]])):  # type: ignore[arg-type]
            received.append(message)

    with pytest.raises(TruncatedFrameError, match="ended inside a message"):
        await read()
    assert len(received) == len(FRAMES) - 1


def test_good_messages_before_a_damaged_one_are_still_delivered() -> None:
    decoder = EventStreamDecoder()
    messages = decoder.feed(FRAMES[0] + FRAMES[1] + corrupt(FRAMES[2], -1))
    assert messages == botocore_messages(FRAMES[0] + FRAMES[1])
    with pytest.raises(CorruptFrameError, match="message checksum"):
        decoder.finish()
    with pytest.raises(CorruptFrameError):
        decoder.feed(FRAMES[3])
