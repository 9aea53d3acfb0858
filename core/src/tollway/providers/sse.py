"""Server-sent events and NDJSON, parsed from an aiohttp response body line by line.

These run once per streamed chunk, so they do the least work they can: no regex, no per-line
decoding of fields that are not ``data``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp


async def iter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event, data)`` for each event; ``event`` is ``"message"`` when none was named.

    Follows the WHATWG rules that matter for LLM APIs: ``data:`` lines join with newlines,
    a blank line ends an event, lines starting with ``:`` are comments (keep-alives), and the
    space after the colon is optional. A final event without a trailing blank line is kept.
    """
    event = ""
    data: list[str] = []
    async for raw in response.content:
        line = raw.rstrip(b"\r\n")
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
    async for raw in response.content:
        line = raw.strip()
        if line:
            yield line
