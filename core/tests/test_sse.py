"""SSE and NDJSON parsing over a real aiohttp response from a local server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tollway.providers.sse import iter_ndjson_lines, iter_sse

Pieces = list[bytes]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Pieces], Awaitable[str]]]:
    """``await serve(pieces)`` gives a URL whose body is ``pieces``, each written and drained."""
    bodies: dict[str, Pieces] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in bodies[request.match_info["name"]]:
            await response.write(piece)
            await asyncio.sleep(0)  # give each piece its own trip to the client
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()

    async def add(pieces: Pieces) -> str:
        name = f"body{len(bodies)}"
        bodies[name] = pieces
        return str(server.make_url(f"/{name}"))

    try:
        yield add
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def sse_events(session: aiohttp.ClientSession, url: str) -> list[tuple[str, str]]:
    async with session.get(url) as response:
        return [event async for event in iter_sse(response)]


def split_every(data: bytes, n: int) -> Pieces:
    return [data[i : i + n] for i in range(0, len(data), n)]


async def test_basic_events_and_done(serve, session) -> None:  # type: ignore[no-untyped-def]
    body = b'data: {"a": 1}\n\ndata: {"a": 2}\n\ndata: [DONE]\n\n'
    events = await sse_events(session, await serve([body]))
    assert events == [("message", '{"a": 1}'), ("message", '{"a": 2}'), ("message", "[DONE]")]


async def test_multi_line_data_is_joined_with_newlines(serve, session) -> None:  # type: ignore[no-untyped-def]
    body = b"data: first\ndata: second\ndata:\ndata: fourth\n\n"
    assert await sse_events(session, await serve([body])) == [
        ("message", "first\nsecond\n\nfourth")
    ]


async def test_event_names_apply_to_one_event_only(serve, session) -> None:  # type: ignore[no-untyped-def]
    body = (
        b"event: message_start\ndata: {}\n\n"
        b'event:content_block_delta\ndata: {"t": "hi"}\n\n'
        b"data: plain\n\n"
    )
    assert await sse_events(session, await serve([body])) == [
        ("message_start", "{}"),
        ("content_block_delta", '{"t": "hi"}'),
        ("message", "plain"),
    ]


async def test_comments_keepalives_id_and_retry_are_ignored(serve, session) -> None:  # type: ignore[no-untyped-def]
    body = (
        b": OPENROUTER PROCESSING\n\n"
        b":\n"
        b"id: 7\nretry: 1000\ndata: kept\n\n"
        b": ping\n\n"
        b"event: ping\n\n"  # an event with no data is not dispatched
        b"data: last\n\n"
    )
    assert await sse_events(session, await serve([body])) == [
        ("message", "kept"),
        ("message", "last"),
    ]


async def test_crlf_line_endings(serve, session) -> None:  # type: ignore[no-untyped-def]
    body = b"event: a\r\ndata: one\r\ndata: two\r\n\r\ndata: three\r\n\r\n"
    assert await sse_events(session, await serve([body])) == [
        ("a", "one\ntwo"),
        ("message", "three"),
    ]


async def test_data_without_space_and_extra_spaces_kept(serve, session) -> None:  # type: ignore[no-untyped-def]
    body = b"data:tight\n\ndata:  two spaces\n\n"
    assert await sse_events(session, await serve([body])) == [
        ("message", "tight"),
        ("message", " two spaces"),
    ]


async def test_final_event_without_trailing_blank_line(serve, session) -> None:  # type: ignore[no-untyped-def]
    body = b"data: one\n\nevent: end\ndata: last"
    assert await sse_events(session, await serve([body])) == [
        ("message", "one"),
        ("end", "last"),
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
async def test_chunk_boundaries_inside_lines_and_crlf(serve, session, size: int) -> None:  # type: ignore[no-untyped-def]
    body = (
        'event: delta\r\ndata: {"text": "héllo wörld ✓"}\r\n\r\n'
        ": keep-alive\r\n\r\n"
        "data: a\r\ndata: b\r\n\r\n"
        "data: [DONE]\r\n\r\n"
    ).encode()
    # Odd piece sizes split lines, the \r\n pair and multi-byte UTF-8 characters.
    events = await sse_events(session, await serve(split_every(body, size)))
    assert events == [
        ("delta", '{"text": "héllo wörld ✓"}'),
        ("message", "a\nb"),
        ("message", "[DONE]"),
    ]


async def test_a_data_line_longer_than_aiohttps_line_limit(serve, session) -> None:  # type: ignore[no-untyped-def]
    # A final "response.completed" event can carry the whole answer on one line.
    payload = json.dumps({"text": "x" * 1_500_000})
    body = f"event: response.completed\ndata: {payload}\n\ndata: [DONE]\n\n".encode()
    events = await sse_events(session, await serve(split_every(body, 65_536)))
    assert events == [("response.completed", payload), ("message", "[DONE]")]


async def test_events_arrive_before_the_body_ends(session) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await release.wait()  # the rest is sent only once the client has seen the first event
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        seen = []
        async with asyncio.timeout(10), session.get(server.make_url("/")) as response:
            async for event in iter_sse(response):
                seen.append(event)
                release.set()
        assert seen == [("message", "first"), ("message", "second")]
    finally:
        release.set()
        await server.close()


async def ndjson(session: aiohttp.ClientSession, url: str) -> list[bytes]:
    async with session.get(url) as response:
        return [line async for line in iter_ndjson_lines(response)]


async def test_ndjson_lines(serve, session) -> None:  # type: ignore[no-untyped-def]
    body = b'{"a":1}\n\n  \n{"b":2}\r\n{"c":3}'
    assert await ndjson(session, await serve([body])) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


@pytest.mark.parametrize("size", [1, 5])
async def test_ndjson_split_pieces(serve, session, size: int) -> None:  # type: ignore[no-untyped-def]
    lines = [json.dumps({"message": {"content": f"tok{i} é"}, "done": i == 4}) for i in range(5)]
    body = ("\n".join(lines) + "\n").encode()
    got = await ndjson(session, await serve(split_every(body, size)))
    assert [json.loads(line) for line in got] == [json.loads(line) for line in lines]


async def test_ndjson_long_line(serve, session) -> None:  # type: ignore[no-untyped-def]
    line = json.dumps({"content": "y" * 1_500_000}).encode()
    assert await ndjson(session, await serve([line[:700_000], line[700_000:] + b"\n"])) == [line]


async def test_empty_body(serve, session) -> None:  # type: ignore[no-untyped-def]
    url = await serve([])
    assert await sse_events(session, url) == []
    assert await ndjson(session, url) == []
