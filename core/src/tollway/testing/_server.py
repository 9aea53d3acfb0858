"""The plumbing the fake provider servers share; each fake adds only its provider's wire format.

:class:`FakeServer` runs an aiohttp.web app on an ephemeral port of 127.0.0.1, records every
request as a :class:`RecordedRequest`, keeps the queue of scripted outcomes (served in the order
they were scripted), and offers the misbehaviours every fake needs: a wait that the fake's close
cuts short, a connection reset, and a body cut off before its declared length.
"""

from __future__ import annotations

import abc
import asyncio
import json
import re
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeAlias, TypeVar

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "BODY",
    "BODY_ERROR",
    "FAULTS",
    "PIECE_RE",
    "REQUEST_ID",
    "TOKEN_RE",
    "FakeServer",
    "Fault",
    "RecordedRequest",
    "count_tokens",
    "cut_body",
    "reset_connection",
    "truncate",
]

Fault = Literal["reset", "stall", "malformed", "cut_stream", "mid_stream_error"]
FAULTS: frozenset[str] = frozenset(
    ("reset", "stall", "malformed", "cut_stream", "mid_stream_error")
)

# What the recording middleware leaves on each request for the handlers.
REQUEST_ID = web.RequestKey("tollway_fake_request_id", str)
BODY: web.RequestKey[Any] = web.RequestKey("tollway_fake_json")
BODY_ERROR = web.RequestKey("tollway_fake_json_error", str)

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Splits before each whitespace run that follows a word, so the pieces join back to the text.
PIECE_RE = re.compile(r"(?<=\S)(?=\s)")

_Handler: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]
_O = TypeVar("_O")


@attrs.frozen
class RecordedRequest:
    """One request the fake received, as it arrived. ``path`` is decoded, ``raw_path`` not."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    json: Any
    request_id: str
    raw_path: str = ""


class FakeServer(abc.ABC, Generic[_O]):
    """An aiohttp.web server on 127.0.0.1 that records requests and serves scripted outcomes.

    A subclass adds its routes (:meth:`_add_routes`), the request ids it makes up
    (:meth:`_new_request_id`) and the headers it stamps on every answer (:meth:`_stamp_headers`),
    and may answer unknown routes in its provider's way (:meth:`_route_error`).
    """

    def __init__(self, *, latency: float, chunk_delay: float, stall_seconds: float) -> None:
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.stall_seconds = stall_seconds
        self.requests: list[RecordedRequest] = []
        self.abandoned_streams = 0
        self._outcomes: deque[_O] = deque()
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._record_middleware])
        self._add_routes(app.router)
        app.on_response_prepare.append(self._stamp_headers)
        # A short shutdown timeout: a handler still running at close (a stalled answer) is
        # cancelled instead of holding the test up for aiohttp's default minute.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            name = type(self).__name__
            raise RuntimeError(f"{name} is not started; use `async with {name}() as fake`")
        return self._port

    @property
    def base_url(self) -> str:
        """The server root, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def last_request(self) -> RecordedRequest:
        if not self.requests:
            raise AssertionError(f"{type(self).__name__} has received no request yet")
        return self.requests[-1]

    # -- what a subclass provides ----------------------------------------------------------

    @abc.abstractmethod
    def _add_routes(self, router: web.UrlDispatcher) -> None:
        """Add the provider's routes."""

    @abc.abstractmethod
    def _new_request_id(self) -> str:
        """A fresh request id, in the provider's format."""

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add the headers the provider sends on every answer."""

    def _json_error(self, body: bytes, exc: ValueError) -> str | None:
        """What to remember (under :data:`BODY_ERROR`) of a body that is not JSON, if anything."""
        return None

    def _refuse(self, request: web.Request) -> web.StreamResponse | None:
        """An answer that refuses a recorded request before any route sees it, if any."""
        return None

    def _route_error(
        self, request: web.Request, exc: web.HTTPException
    ) -> web.StreamResponse | None:
        """The provider's answer for an unknown route or method, or ``None`` to let aiohttp's
        stand."""
        return None

    # -- scripting -------------------------------------------------------------------------

    def _script(self, outcome: _O, times: int) -> None:
        self._outcomes.extend([outcome] * times)

    def _next_outcome(self) -> _O | None:
        return self._outcomes.popleft() if self._outcomes else None

    def _forget(self) -> None:
        """Forget recorded requests, unserved scripts and abandoned streams."""
        self.requests.clear()
        self._outcomes.clear()
        self.abandoned_streams = 0

    @staticmethod
    def _check_status(status: int) -> None:
        if status < 400:
            raise ValueError(f"fail() needs an error status (400-599), not {status}")

    @staticmethod
    def _check_fault(kind: str) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; use one of {', '.join(sorted(FAULTS))}")

    # -- plumbing --------------------------------------------------------------------------

    @web.middleware
    async def _record_middleware(
        self, request: web.Request, handler: _Handler
    ) -> web.StreamResponse:
        request_id = self._new_request_id()
        request[REQUEST_ID] = request_id
        body = await request.read()
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                error = self._json_error(body, exc)
                if error is not None:
                    request[BODY_ERROR] = error
        request[BODY] = parsed
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                dict(request.query),
                CIMultiDictProxy(CIMultiDict(request.headers)),
                body,
                parsed,
                request_id,
                request.raw_path,
            )
        )
        refused = self._refuse(request)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except web.HTTPException as exc:
            answer = self._route_error(request, exc)
            if answer is None:
                raise
            return answer

    async def _wait(self, seconds: float) -> None:
        """Sleep, but wake when the fake closes so no handler outlives it."""
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            pass

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        """Say nothing for ``stall_seconds`` (or until the fake closes), then reset."""
        await self._wait(self.stall_seconds)
        return await reset_connection(request)


async def reset_connection(request: web.Request) -> web.StreamResponse:
    """Drop the connection with a TCP RST, as a crashed server, proxy or load balancer would."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 makes close() send RST instead of FIN: the client sees a reset.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # Nothing can be written any more; aiohttp drops a response for a closed transport.
    return web.Response(status=499)


async def cut_body(
    request: web.Request, body: bytes, content_type: str = "application/json"
) -> web.StreamResponse:
    """Send half of ``body`` under its full ``Content-Length``, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response


def count_tokens(text: str) -> int:
    """A deterministic token count: words and punctuation marks."""
    return len(TOKEN_RE.findall(text))


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """The first ``limit`` tokens of ``text``, and whether anything was cut."""
    for n, match in enumerate(TOKEN_RE.finditer(text)):
        if n == limit:
            return text[: match.start()].rstrip(), True
    return text, False
