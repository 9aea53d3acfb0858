"""Server-sent events and NDJSON, parsed from an aiohttp response body line by line.

These run once per streamed chunk, so they do the least work they can: no regex, no per-line
decoding of fields that are not ``data``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp


async def _iter_lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Each line of the body, without its line feed, however long it is.

    ``async for line in response.content`` raises ``LineTooLong`` past twice the read buffer
    (128 or 512 KiB, by aiohttp version), and one SSE ``data:`` line (a final
    ``response.completed`` event, a large tool call) can be longer.
    """
    pending: list[bytes] = []
    async for chunk in response.content.iter_any():
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        if pending:
            pending.append(chunk)
            chunk = b"".join(pending)
            pending = []
        *lines, rest = chunk.split(b"\n")
        for line in lines:
            yield line
        if rest:
            pending.append(rest)
    if pending:
        yield b"".join(pending)


async def iter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event, data)`` for each event; ``event`` is ``"message"`` when none was named.

    Follows the WHATWG rules that matter for LLM APIs: ``data:`` lines join with newlines,
    a blank line ends an event, lines starting with ``:`` are comments (keep-alives), and the
    space after the colon is optional. A final event without a trailing blank line is kept.
    """
    event = ""
    data: list[str] = []
    async for raw in _iter_lines(response):
        line = raw.rstrip(b"\r")
        if not line:
            if data:
                yield event or "message", "\n".join(data)
                data = []
            event = ""
            continue
        if line[:5] == b"data:":
            value = line[5:]
            if value[:1] == b" ":
                value = value[1:]
            data.append(value.decode())
        elif line[:6] == b"event:":
            event = line[6:].strip().decode()
        # ``id:``, ``retry:`` and ``:`` comments carry nothing a model API needs.
    if data:
        yield event or "message", "\n".join(data)


async def iter_ndjson_lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Yield each non-empty line of a newline-delimited JSON body."""
    async for raw in _iter_lines(response):
        line = raw.strip()
        if line:
            yield line
