"""A stream that is not UTF-8 is a typed error naming the provider, for each SSE provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tollway import Pipeline
from tollway.errors import MalformedResponseError

PROVIDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": ("gpt-4o-mini", {"api_key": "k"}),
    "anthropic": ("claude-sonnet-4-5", {"api_key": "k"}),
    "gemini": ("gemini-2.5-flash", {"api_key": "k"}),
}


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    async def garbage(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: \xff\xfe not utf-8\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", garbage)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_a_stream_that_is_not_utf8_is_malformed(server: TestServer, provider: str) -> None:
    model, settings = PROVIDERS[provider]
    base = str(server.make_url("/v1" if provider == "openai" else ""))
    async with Pipeline.build(providers={provider: {"base_url": base, **settings}}) as pipe:
        with pytest.raises(MalformedResponseError) as info:
            async for _ in pipe.stream(f"{provider}/{model}", "hi"):
                pass
    assert info.value.provider == provider
    assert "not UTF-8" in str(info.value)
