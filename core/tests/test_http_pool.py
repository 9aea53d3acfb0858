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
        start = {"open": 0, "in_use": 0, "idle": 0, "requests": 0, "failures": 0, "rebuilds": 0}
        assert pool.endpoints()[key].items() >= start.items()
        async with session.get(url) as response:
            assert pool.endpoints()[key]["in_use"] == 1
            assert pool.endpoints()[key]["open"] == 1
            finish.set()
            assert await response.text() == "hi"
        # Released to the pool and kept alive for the next request.
        counts = pool.endpoints()[key]
        released = {"open": 1, "in_use": 0, "idle": 1, "requests": 0, "failures": 0}
        assert counts.items() >= released.items()
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


# -- health, probe and recovery --------------------------------------------------------------


async def _server(handler: object) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)  # type: ignore[arg-type]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_probe_counts_any_http_answer_as_up_and_a_refusal_as_down() -> None:
    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404)

    server = await _server(not_found)
    pool = HttpPool()
    try:
        up = await pool.endpoint(str(server.make_url("/v1"))).probe()
        assert (up.ok, up.status, up.error) == (True, 404, None)
        port = server.port
        await server.close()
        down = await pool.endpoint(f"http://127.0.0.1:{port}/v1").probe(timeout=2)
        assert not down.ok
        assert down.error
        assert "Connect" in down.error
        health = pool.endpoints()[f"http://127.0.0.1:{port}"]
        assert health["requests"] == 2
        assert health["failures"] == 1
        assert health["last_error"] == down.error
        assert health["latency_ewma_ms"] > 0
    finally:
        await pool.aclose()


async def test_failures_in_a_row_rebuild_the_pool_without_dropping_calls_in_flight() -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"part-")
            await release.wait()
            await response.write(b"done")
            await response.write_eof()
            return response
        return web.Response(text="ok")

    server = await _server(handler)
    pool = HttpPool(rebuild_after=3)
    try:
        url = str(server.make_url("/"))
        endpoint = pool.endpoint(url)
        old = endpoint.session
        # A call in flight on the old session...
        slow = await old.get(str(server.make_url("/slow")))
        for _ in range(3):
            endpoint.failed(0.0, ConnectionResetError("reset by peer"))
        assert endpoint.stats.rebuilds == 1
        # ...new calls go to a fresh session...
        assert endpoint.session is not old
        async with endpoint.session.get(url) as response:
            assert await response.text() == "ok"
        # ...and the old one stays open until its call ends, then closes.
        assert not old.closed
        release.set()
        assert await slow.text() == "part-done"
        slow.release()
        for _ in range(100):
            if old.closed:
                break
            await asyncio.sleep(0.02)
        assert old.closed
        assert endpoint.health()["consecutive_failures"] == 0
    finally:
        release.set()
        await pool.aclose()
        await server.close()


async def test_a_success_resets_the_failure_run() -> None:
    pool = HttpPool(rebuild_after=2)
    try:
        endpoint = pool.endpoint("http://127.0.0.1:9/")
        endpoint.failed(0.0, OSError("refused"))
        endpoint.ok(0.0)
        endpoint.failed(0.0, OSError("refused"))
        assert endpoint.stats.rebuilds == 0
        assert endpoint.stats.failures == 2
    finally:
        await pool.aclose()


async def test_aclose_closes_sessions_still_retiring() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"x")
        await asyncio.sleep(30)
        return response

    server = await _server(handler)
    pool = HttpPool(rebuild_after=1)
    try:
        endpoint = pool.endpoint(str(server.make_url("/")))
        old = endpoint.session
        hanging = await old.get(str(server.make_url("/")))
        endpoint.failed(0.0, OSError("boom"))
        await pool.aclose()
        assert old.closed
        hanging.close()
    finally:
        await pool.aclose()
        await server.close()
