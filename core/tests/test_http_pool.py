"""The pooled HTTP sessions: one per endpoint, closed together, with clear errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tollway.providers.http import HttpPool, endpoint_key


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://api.openai.com/v1/chat/completions", "https://api.openai.com:443"),
        ("https://api.openai.com:443/v1", "https://api.openai.com:443"),
        ("HTTPS://API.OpenAI.com/v1", "https://api.openai.com:443"),
        ("http://localhost/v1", "http://localhost:80"),
        ("http://localhost:80", "http://localhost:80"),
        ("http://127.0.0.1:11434/api/chat", "http://127.0.0.1:11434"),
        ("http://user:pw@example.com:8080/x?y=1#z", "http://example.com:8080"),
        ("http://[::1]:8000/v1", "http://[::1]:8000"),
    ],
)
def test_endpoint_key_normalises(url: str, key: str) -> None:
    assert endpoint_key(url) == key


def test_endpoint_keys_of_different_endpoints_differ() -> None:
    keys = {
        endpoint_key("https://api.openai.com/v1"),
        endpoint_key("http://api.openai.com/v1"),
        endpoint_key("https://api.anthropic.com/v1"),
        endpoint_key("https://api.openai.com:8443/v1"),
    }
    assert len(keys) == 4


@pytest.mark.parametrize("url", ["/v1/chat/completions", "api.openai.com/v1", "", "ftp://h/x"])
def test_relative_or_non_http_url_is_rejected_clearly(url: str) -> None:
    with pytest.raises(ValueError) as info:
        endpoint_key(url)
    assert repr(url) in str(info.value)
    assert "absolute" in str(info.value)
    assert "https://" in str(info.value)


@pytest.fixture
async def pool() -> AsyncIterator[HttpPool]:
    pool = HttpPool(limit_per_endpoint=7)
    try:
        yield pool
    finally:
        await pool.aclose()


async def test_same_endpoint_shares_one_session(pool: HttpPool) -> None:
    first = pool.session("https://api.openai.com/v1/chat/completions")
    second = pool.session("https://api.openai.com:443/v1/models")
    assert first is second
    assert first.connector is not None
    assert first.connector.limit == 7


async def test_different_endpoints_get_different_sessions(pool: HttpPool) -> None:
    a = pool.session("https://api.openai.com/v1")
    b = pool.session("https://api.anthropic.com/v1")
    c = pool.session("http://127.0.0.1:8000/v1")
    assert len({id(a), id(b), id(c)}) == 3
    assert set(pool.endpoints()) == {
        "https://api.openai.com:443",
        "https://api.anthropic.com:443",
        "http://127.0.0.1:8000",
    }


async def test_limit_per_session(pool: HttpPool) -> None:
    session = pool.session("http://127.0.0.1:1/", limit=3)
    assert session.connector is not None
    assert session.connector.limit == 3


async def test_aclose_closes_all_and_later_use_fails_clearly() -> None:
    pool = HttpPool()
    sessions = [pool.session("https://a.example/"), pool.session("https://b.example/")]
    await pool.aclose()
    assert all(s.closed for s in sessions)
    assert pool.endpoints() == {}
    with pytest.raises(RuntimeError, match="closed"):
        pool.session("https://a.example/")
    await pool.aclose()  # closing twice is harmless


async def test_a_session_closed_elsewhere_is_replaced(pool: HttpPool) -> None:
    first = pool.session("https://a.example/")
    await first.close()
    second = pool.session("https://a.example/")
    assert second is not first
    assert not second.closed


async def test_endpoints_counts_connections_and_stats() -> None:
    finish = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"h")
        await finish.wait()  # the connection stays in use until the test lets the body end
        await response.write(b"i")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    pool = HttpPool()
    try:
        url = str(server.make_url("/"))
        key = endpoint_key(url)
        session = pool.session(url)
        assert pool.endpoints()[key] == {
            "open": 0,
            "in_use": 0,
            "idle": 0,
            "requests": 0,
            "failures": 0,
        }
        async with session.get(url) as response:
            assert pool.endpoints()[key]["in_use"] == 1
            assert pool.endpoints()[key]["open"] == 1
            finish.set()
            assert await response.text() == "hi"
        # Released to the pool and kept alive for the next request.
        counts = pool.endpoints()[key]
        assert counts == {"open": 1, "in_use": 0, "idle": 1, "requests": 0, "failures": 0}
        pool.stats[key].requests += 1
        pool.stats[key].failures += 1
        assert pool.endpoints()[key]["requests"] == 1
        assert pool.endpoints()[key]["failures"] == 1
        # The second request reuses the kept-alive connection.
        async with session.get(url) as response:
            await response.read()
        assert pool.endpoints()[key]["open"] == 1
    finally:
        finish.set()
        await pool.aclose()
        await server.close()
