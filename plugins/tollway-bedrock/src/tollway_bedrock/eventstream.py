"""An incremental decoder for AWS's binary event-stream framing (``vnd.amazon.eventstream``).

Each message is a prelude (total length, headers length, CRC32 of those eight bytes), the
headers, the payload, and a CRC32 of everything before it. ConverseStream sends one message per
event; this runs once per event, so it parses in place with ``struct.unpack_from`` on one
buffer and copies only the payload out.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "CorruptFrameError",
    "EventStreamDecoder",
    "EventStreamError",
    "TruncatedFrameError",
    "iter_messages",
]

HeaderValue = bool | int | bytes | str | uuid.UUID

_PRELUDE = struct.Struct(">III")
_PRELUDE_LENGTH = 12
_MIN_MESSAGE = _PRELUDE_LENGTH + 4
# The format's own limits: a frame claiming more is garbage, and waiting for it would hang.
_MAX_HEADERS = 128 * 1024
_MAX_PAYLOAD = 16 * 1024 * 1024

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class EventStreamError(ValueError):
    """The bytes are not a valid event stream."""


class CorruptFrameError(EventStreamError):
    """A frame's checksum or structure is wrong: the bytes were damaged on the way."""


class TruncatedFrameError(EventStreamError):
    """The stream ended in the middle of a frame."""


class EventStreamDecoder:
    """Feed it bytes as they arrive; it returns every message completed by them."""

    __slots__ = ("_buffer", "_error")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: CorruptFrameError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message held back; non-zero at the end means truncation."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[dict[str, HeaderValue], bytes]]:
        """The messages completed by ``data``. A damaged frame raises
        :class:`CorruptFrameError`, once the good messages before it have been returned."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        messages: list[tuple[dict[str, HeaderValue], bytes]] = []
        start = 0
        try:
            start = self._decode(buffer, messages)
        except CorruptFrameError as exc:
            if not messages:
                raise
            # The messages before the damage are good: hand them over, fail on the next call.
            self._error = exc
        finally:
            if start:
                del buffer[:start]
        return messages

    def finish(self) -> None:
        """Call at the end of the body: raises if it ended damaged or inside a message."""
        if self._error is not None:
            raise self._error
        if self._buffer:
            raise TruncatedFrameError(
                f"event stream ended inside a message ({len(self._buffer)} bytes of it arrived)"
            )

    @staticmethod
    def _decode(buffer: bytearray, messages: list[tuple[dict[str, HeaderValue], bytes]]) -> int:
        """Append each whole message in ``buffer`` to ``messages``; return the bytes used."""
        start = 0
        available = len(buffer)
        with memoryview(buffer) as view:
            while available - start >= _PRELUDE_LENGTH:
                total, headers_length, prelude_crc = _PRELUDE.unpack_from(view, start)
                if zlib.crc32(view[start : start + 8]) != prelude_crc:
                    raise CorruptFrameError("event-stream prelude checksum mismatch")
                if (
                    headers_length > _MAX_HEADERS
                    or total < _MIN_MESSAGE + headers_length
                    or total - _MIN_MESSAGE - headers_length > _MAX_PAYLOAD
                ):
                    raise CorruptFrameError(
                        f"event-stream frame with impossible lengths (total {total}, "
                        f"headers {headers_length})"
                    )
                end = start + total
                if end > available:
                    break
                (message_crc,) = _U32.unpack_from(view, end - 4)
                if zlib.crc32(view[start : end - 4]) != message_crc:
                    raise CorruptFrameError("event-stream message checksum mismatch")
                payload_start = start + _PRELUDE_LENGTH + headers_length
                headers = _parse_headers(view, start + _PRELUDE_LENGTH, payload_start)
                messages.append((headers, bytes(view[payload_start : end - 4])))
                start = end
        return start


def _parse_headers(data: memoryview, offset: int, end: int) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    try:
        while offset < end:
            name_length = data[offset]
            offset += 1
            name = bytes(data[offset : offset + name_length]).decode()
            offset += name_length
            kind = data[offset]
            offset += 1
            value: Any
            if kind == 7:  # string, the type ConverseStream uses for every header
                (length,) = _U16.unpack_from(data, offset)
                offset += 2
                value = bytes(data[offset : offset + length]).decode()
                offset += length
            elif kind == 0:
                value = True
            elif kind == 1:
                value = False
            elif kind == 2:
                value = int.from_bytes(data[offset : offset + 1], "big", signed=True)
                offset += 1
            elif kind == 3:
                (value,) = _I16.unpack_from(data, offset)
                offset += 2
            elif kind == 4:
                (value,) = _I32.unpack_from(data, offset)
                offset += 4
            elif kind in (5, 8):  # long, and a timestamp in ms since the epoch
                (value,) = _I64.unpack_from(data, offset)
                offset += 8
            elif kind == 6:
                (length,) = _U16.unpack_from(data, offset)
                offset += 2
                value = bytes(data[offset : offset + length])
                offset += length
            elif kind == 9:
                value = uuid.UUID(bytes=bytes(data[offset : offset + 16]))
                offset += 16
            else:
                raise CorruptFrameError(f"event-stream header {name!r} has unknown type {kind}")
            headers[name] = value
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, CorruptFrameError):
            raise
        raise CorruptFrameError(f"event-stream headers cannot be read: {exc}") from None
    if offset != end:
        raise CorruptFrameError("event-stream headers overrun their declared length")
    return headers


async def iter_messages(
    response: aiohttp.ClientResponse,
) -> AsyncIterator[tuple[dict[str, HeaderValue], bytes]]:
    """Each ``(headers, payload)`` of an event-stream body, as its bytes arrive.

    Raises :class:`CorruptFrameError` on a bad checksum and :class:`TruncatedFrameError` when
    the body ends part-way through a message.
    """
    decoder = EventStreamDecoder()
    async for chunk in response.content.iter_any():
        for message in decoder.feed(chunk):
            yield message
    decoder.finish()
