"""A fake Anthropic Messages API server that speaks the real wire format, for tests.

Anthropic's API cannot be reached from tests, so this server answers in its place: the same
routes, required headers, JSON bodies, SSE events, error bodies and ``request-id`` header as
``api.anthropic.com``. ``core/tests/test_fake_anthropic_sdk.py`` parses its answers with the
official ``anthropic`` SDK, so the fake cannot drift from what the SDK accepts.

Start it with ``async with FakeAnthropic() as fake:`` and point a client at ``fake.base_url``.
Without a script it answers deterministically, echoing the last user message, with token counts
derived from the text and a prompt cache that behaves like Anthropic's. Script the next answers
with ``reply``, ``fail`` and ``fault``; they are served in the order they were scripted, one
per ``POST /v1/messages``.

It is stricter than a mock: requests that the real API rejects (no ``max_tokens``, a
``system`` role in ``messages``, roles that do not alternate, a ``tool_use`` without its
``tool_result`` right after, fields the API does not know) get the 400 Anthropic sends.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import attrs
from aiohttp import web
from multidict import CIMultiDict

from tollway.testing._server import (
    BODY,
    PIECE_RE,
    REQUEST_ID,
    FakeServer,
    Fault,
    RecordedRequest,
    count_tokens,
    cut_body,
    reset_connection,
    truncate,
)

__all__ = ["DEFAULT_MODELS", "FakeAnthropic", "Fault", "RecordedRequest"]

# Newest first, as /v1/models lists them: id -> (display name, release date).
DEFAULT_MODELS: dict[str, tuple[str, str]] = {
    "claude-sonnet-4-6": ("Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
    "claude-opus-4-6": ("Claude Opus 4.6", "2026-02-05T00:00:00Z"),
    "claude-opus-4-5-20251101": ("Claude Opus 4.5", "2025-11-24T00:00:00Z"),
    "claude-haiku-4-5-20251001": ("Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
}
_CONTEXT_WINDOW = 200_000
_MAX_OUTPUT = 64_000

# The exact numbers matter less than that they are deterministic: a few tokens of framing per
# turn, Anthropic's hidden tool-use system prompt, and ~1.6k tokens for a typical image.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PRIMING = 3
_TOKENS_TOOL_SYSTEM_PROMPT = 346
_TOKENS_PER_IMAGE = 1568
_MIN_CACHEABLE_TOKENS = 1024  # Sonnet and Opus; shorter prefixes are silently not cached
_MIN_THINKING_BUDGET = 1024

_JSON_FRAGMENT = 8
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: (
        "billing_error",
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
        "Billing to upgrade or purchase credits.",
    ),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see "
        "the response headers for current usage. Please reduce the prompt length or the "
        "maximum tokens requested, or try again later.",
    ),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}
_RETRY_AFTER_DEFAULT = "20"

# Every top-level field of the Messages API; anything else is rejected, as Anthropic does.
_MESSAGE_FIELDS = frozenset(
    [
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "cache_control",
        "context_management",
        "output_config",
        "output_format",
        "inference_geo",
        "speed",
        "diagnostics",
    ]
)
_COUNT_FIELDS = frozenset(
    [
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "context_management",
        "mcp_servers",
        "output_config",
        "output_format",
    ]
)
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_USER_BLOCKS = frozenset(("text", "image", "document", "tool_result", "search_result"))
_ASSISTANT_BLOCKS = frozenset(
    ("text", "tool_use", "thinking", "redacted_thinking", "server_tool_use")
)

_ORGANIZATION = str(uuid.UUID(int=0x70_11_3A_7E))


@attrs.frozen
class _Reply:
    text: str | None
    tool_calls: tuple[tuple[str, str, dict[str, Any]], ...]  # (id, name, input)
    stop_reason: str | None
    usage: Mapping[str, int] | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    thinking: str | None
    thinking_tokens: int | None
    model: str | None


@attrs.frozen
class _Failure:
    status: int
    message: str | None
    type: str | None
    headers: Mapping[str, str]
    raw_body: str | None


@attrs.frozen
class _Fault:
    kind: str


_Outcome: TypeAlias = _Reply | _Failure | _Fault


@attrs.frozen
class _Answer:
    """What one message says, ready to be sent as JSON or as events."""

    id: str
    model: str
    content: tuple[dict[str, Any], ...]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, Any]


class _Invalid(Exception):
    """A request Anthropic would reject with 400 invalid_request_error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FakeAnthropic(FakeServer[_Outcome]):
    """An aiohttp.web server on 127.0.0.1 that answers like Anthropic's Messages API.

    Routes: ``POST /v1/messages`` (JSON, or SSE when ``"stream": true``),
    ``POST /v1/messages/count_tokens``, ``GET /v1/models`` (paginated with ``limit``,
    ``after_id`` and ``before_id``) and ``GET /v1/models/{model_id}``. Every route needs an
    ``x-api-key`` (or ``Authorization: Bearer``) and an ``anthropic-version`` header.

    Knobs, all settable at any time:

    - ``require_api_key``: when set, only this key is accepted.
    - ``latency``: seconds to wait before answering; ``chunk_delay``: seconds between events.
    - ``models``: what ``GET /v1/models`` lists, ids (display names derived) or id -> name.
    - ``min_cache_tokens``: the shortest prefix the prompt cache keeps.
    - ``stall_seconds``: how long the ``"stall"`` fault stays silent (the fake's close ends it).
    - ``mid_stream_error``: the error ``type`` and ``message`` of the ``"mid_stream_error"``
      fault's ``error`` event.

    ``requests`` records every request received; ``abandoned_streams`` counts streams whose
    client went away before the end.
    """

    def __init__(
        self,
        *,
        require_api_key: str | None = None,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        models: Sequence[str] | Mapping[str, str] | None = None,
        min_cache_tokens: int = _MIN_CACHEABLE_TOKENS,
        stall_seconds: float = 3600.0,
    ) -> None:
        super().__init__(latency=latency, chunk_delay=chunk_delay, stall_seconds=stall_seconds)
        self.require_api_key = require_api_key
        self.models: Sequence[str] | Mapping[str, str] = (
            {k: v[0] for k, v in DEFAULT_MODELS.items()} if models is None else models
        )
        self.min_cache_tokens = min_cache_tokens
        self.mid_stream_error: tuple[str, str] = ("overloaded_error", "Overloaded")
        self._knobs = (
            require_api_key,
            latency,
            chunk_delay,
            self.models,
            min_cache_tokens,
            stall_seconds,
        )
        self._cached_prefixes: set[str] = set()

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self._messages)
        router.add_post("/v1/messages/count_tokens", self._count_tokens)
        router.add_get("/v1/models", self._list_models)
        router.add_get("/v1/models/{model_id}", self._get_model)

    # -- scripting -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget recorded requests, unserved scripts and the prompt cache, and set the knobs
        back to what the constructor was given, so one server can serve many tests."""
        self._forget()
        self._cached_prefixes.clear()
        (
            self.require_api_key,
            self.latency,
            self.chunk_delay,
            models,
            self.min_cache_tokens,
            self.stall_seconds,
        ) = self._knobs
        # A copy, so a test that edited the list in place does not leave it edited.
        self.models = dict(models) if isinstance(models, Mapping) else list(models)
        self.mid_stream_error = ("overloaded_error", "Overloaded")

    def reply(
        self,
        text: str | None = None,
        *,
        tool_calls: Iterable[Mapping[str, Any] | Any] = (),
        stop_reason: str | None = None,
        usage: Mapping[str, int] | None = None,
        cache_read_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        thinking: str | None = None,
        thinking_tokens: int | None = None,
        model: str | None = None,
        times: int = 1,
    ) -> None:
        """Queue the next answer(s), served verbatim (``max_tokens`` does not cut them).

        ``tool_calls`` items are mappings with ``name``, ``input`` (a mapping) or
        ``arguments`` (JSON text or a mapping) and optionally ``id``, or objects with those
        attributes (such as :class:`tollway.types.ToolCall`). ``stop_reason`` is Anthropic's
        (``end_turn``, ``max_tokens``, ``tool_use``, ``refusal``...). ``usage`` overrides the
        counted ``input_tokens`` or ``output_tokens`` (Anthropic's meaning: input without the
        cache); ``cache_read_tokens`` and ``cache_write_tokens`` replace what the simulated
        cache would report. ``thinking`` adds a thinking block before the answer;
        ``thinking_tokens`` (counted from it by default) are included in ``output_tokens``.
        ``model`` overrides the reported model.
        """
        calls = tuple(_tool_call(call) for call in tool_calls)
        outcome = _Reply(
            text,
            calls,
            stop_reason,
            usage,
            cache_read_tokens,
            cache_write_tokens,
            thinking,
            thinking_tokens,
            model,
        )
        self._script(outcome, times)

    def fail(
        self,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
        raw_body: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next message request(s) with an HTTP error in Anthropic's error body.

        ``message`` and ``type`` default to what Anthropic sends for the status (``429`` also
        gets a ``retry-after`` header unless ``headers`` names one). ``raw_body`` replaces the
        JSON body with an HTML page, as a proxy in front would send.
        """
        self._check_status(status)
        outcome = _Failure(status, message, type, dict(headers or {}), raw_body)
        self._script(outcome, times)

    def fault(self, kind: Fault, *, times: int = 1) -> None:
        """Misbehave on the next message request(s).

        - ``reset``: the connection is reset (TCP RST) before any answer.
        - ``stall``: a JSON answer never comes; a stream stops part-way and goes silent.
        - ``malformed``: HTTP 200 with a body that is not valid JSON (or an invalid event).
        - ``cut_stream``: a stream ends cleanly part-way, without ``message_stop``; a JSON
          answer is cut off before its declared length and the connection dropped.
        - ``mid_stream_error``: a stream sends some text, then an ``error`` event
          (``overloaded_error`` unless ``mid_stream_error`` says otherwise); a JSON request
          gets the same error with its HTTP status (529 for overloaded).
        """
        self._check_fault(kind)
        self._script(_Fault(kind), times)

    # -- plumbing --------------------------------------------------------------------------

    def _new_request_id(self) -> str:
        return "req_011C" + _random_id(20)

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["request-id"] = request.get(REQUEST_ID) or self._new_request_id()
        response.headers["anthropic-organization-id"] = _ORGANIZATION
        if request.path.startswith("/v1/messages") and response.status < 400:
            reset = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for kind, limit in (
                ("requests", 4000),
                ("input-tokens", 2_000_000),
                ("output-tokens", 400_000),
                ("tokens", 2_400_000),
            ):
                prefix = f"anthropic-ratelimit-{kind}"
                response.headers[f"{prefix}-limit"] = str(limit)
                response.headers[f"{prefix}-remaining"] = str(limit - 1)
                response.headers[f"{prefix}-reset"] = reset

    def _route_error(self, request: web.Request, exc: web.HTTPException) -> web.Response | None:
        if exc.status < 400:
            return None
        # Anthropic answers unknown routes with its own error body, not an HTML page.
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        return _error(request, exc.status, kind, exc.reason)

    def _check_access(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-api-key")
        if key is None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        if not key:
            return _error(request, 401, "authentication_error", "x-api-key header is required")
        if self.require_api_key is not None and key != self.require_api_key:
            return _error(request, 401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(
                request, 400, "invalid_request_error", "anthropic-version: header is required"
            )
        return None

    def _model_list(self) -> list[dict[str, Any]]:
        models = self.models
        names = (
            dict(models) if isinstance(models, Mapping) else {m: _display_name(m) for m in models}
        )
        return [_model_json(model_id, name) for model_id, name in names.items()]

    # -- routes ----------------------------------------------------------------------------

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        await self._wait(self.latency)
        models = self._model_list()
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _error(
                request,
                400,
                "invalid_request_error",
                "limit: Input should be greater than or equal to 1 and less than or equal to 1000",
            )
        ids = [m["id"] for m in models]
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if before is not None:
            end = ids.index(before) if before in ids else len(ids)
            page = models[max(end - limit, 0) : end]
            has_more = end - limit > 0
        else:
            start = ids.index(after) + 1 if after in ids else 0
            page = models[start : start + limit]
            has_more = start + limit < len(models)
        return web.json_response(
            {
                "data": page,
                "has_more": has_more,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    async def _get_model(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        model_id = request.match_info["model_id"]
        for model in self._model_list():
            if model["id"] == model_id:
                return web.json_response(model)
        return _error(request, 404, "not_found_error", f"model: {model_id}")

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        body = request[BODY]
        try:
            _validate(body, count_only=True)
        except _Invalid as exc:
            return _error(request, 400, "invalid_request_error", exc.message)
        return web.json_response({"input_tokens": _prompt(body)[0]})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        body = request[BODY]
        try:
            _validate(body, count_only=False)
        except _Invalid as exc:
            return _error(request, 400, "invalid_request_error", exc.message)
        outcome = self._next_outcome()
        await self._wait(self.latency)
        model = str(body["model"])
        stream = body.get("stream") is True

        if isinstance(outcome, _Failure):
            return _scripted_error(request, outcome, model)
        fault = outcome.kind if isinstance(outcome, _Fault) else None
        if fault == "reset":
            return await reset_connection(request)
        if fault == "mid_stream_error" and not stream:
            kind, message = self.mid_stream_error
            status = next((s for s, (t, _) in _ERRORS.items() if t == kind), 500)
            return _error(request, status, kind, message)

        answer = self._answer(body, model, outcome if isinstance(outcome, _Reply) else None)
        if not stream:
            if fault == "stall":
                return await self._stall(request)
            if fault == "malformed":
                return web.Response(body=b'{"id": "msg_01', content_type="application/json")
            payload = _message_json(answer)
            if fault == "cut_stream":
                return await cut_body(request, json.dumps(payload).encode())
            return web.json_response(payload)
        return await self._stream(request, answer, fault)

    def _answer(self, body: Mapping[str, Any], model: str, reply: _Reply | None) -> _Answer:
        total, prefix, ttl = _prompt(body)
        cache_read = cache_write = 0
        if prefix is not None and prefix[0] >= self.min_cache_tokens:
            key = hashlib.sha256((model + "\0" + prefix[1]).encode()).hexdigest()
            if key in self._cached_prefixes:
                cache_read = prefix[0]
            else:
                cache_write = prefix[0]
                self._cached_prefixes.add(key)
        overrides: Mapping[str, int] = {}
        tool_calls: tuple[tuple[str, str, dict[str, Any]], ...] = ()
        stop_sequence: str | None = None
        thinking: str | None = None
        thinking_tokens: int | None = None
        messages = body["messages"]
        wants_thinking = _thinking_enabled(body)
        if reply is None:
            text = _default_text(messages)
            if wants_thinking:
                thinking = f"The user wrote: {_last_user_text(messages)}. Echo it back."
            stop = "end_turn"
            text, stop_sequence = _cut_at_stop(text, body.get("stop_sequences"))
            if stop_sequence is not None:
                stop = "stop_sequence"
            limit = body.get("max_tokens")
            if isinstance(limit, int):
                text, cut = truncate(text, limit)
                if cut:
                    stop, stop_sequence = "max_tokens", None
        else:
            tool_calls = reply.tool_calls
            text = reply.text if reply.text is not None else ""
            if reply.text is None and not tool_calls:
                text = _default_text(messages)
            stop = reply.stop_reason or ("tool_use" if tool_calls else "end_turn")
            overrides = reply.usage or {}
            if reply.cache_read_tokens is not None:
                cache_read = reply.cache_read_tokens
            if reply.cache_write_tokens is not None:
                cache_write = reply.cache_write_tokens
            thinking, thinking_tokens = reply.thinking, reply.thinking_tokens
            model = reply.model or model

        content: list[dict[str, Any]] = []
        output_tokens = 0
        if thinking is not None:
            content.append(
                {"type": "thinking", "thinking": thinking, "signature": _signature(thinking)}
            )
            if thinking_tokens is None:
                thinking_tokens = count_tokens(thinking)
            output_tokens += thinking_tokens
        if text:
            content.append({"type": "text", "text": text})
            output_tokens += count_tokens(text)
        for call_id, name, arguments in tool_calls:
            content.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
            output_tokens += count_tokens(name) + count_tokens(json.dumps(arguments))
        # Anthropic counts the end-of-turn marker: output_tokens is never 0.
        output_tokens = max(output_tokens, 1)

        uncached = max(total - cache_read - cache_write, 0)
        usage: dict[str, Any] = {
            "input_tokens": overrides.get("input_tokens", uncached),
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache_write if ttl != "1h" else 0,
                "ephemeral_1h_input_tokens": cache_write if ttl == "1h" else 0,
            },
            "output_tokens": overrides.get("output_tokens", output_tokens),
            "service_tier": "standard",
        }
        if thinking_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": thinking_tokens}
        return _Answer("msg_01" + _random_id(22), model, tuple(content), stop, stop_sequence, usage)

    async def _stream(
        self, request: web.Request, answer: _Answer, fault: str | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        events = list(_events(answer))
        # Faults strike after message_start, the first block's start and a ping, around the
        # middle of the answer, and always before message_stop.
        cut_at = min(max(3, len(events) // 2), len(events) - 1)
        try:
            for n, event in enumerate(events):
                if fault is not None and n == cut_at:
                    await self._stream_fault(response, fault)
                    return response
                await response.write(_sse(event))
                if self.chunk_delay:
                    await self._wait(self.chunk_delay)
            await response.write_eof()
        except ConnectionError:
            self.abandoned_streams += 1
        return response

    async def _stream_fault(self, response: web.StreamResponse, fault: str) -> None:
        if fault == "stall":
            await self._wait(self.stall_seconds)
        elif fault == "malformed":
            await response.write(
                b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n'
            )
        elif fault == "mid_stream_error":
            kind, message = self.mid_stream_error
            await response.write(
                _sse({"type": "error", "error": {"type": kind, "message": message}})
            )
        # cut_stream (and each of the above) then ends the body with no message_stop.
        await response.write_eof()


# -- responses -------------------------------------------------------------------------------


def _error(
    request: web.Request,
    status: int,
    kind: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request.get(REQUEST_ID),
    }
    out = CIMultiDict(headers or {})
    # Anthropic tells its SDKs whether a retry can help.
    retry = status in (408, 409, 429) or status >= 500
    out.setdefault("x-should-retry", "true" if retry else "false")
    return web.json_response(body, status=status, headers=out)


def _scripted_error(request: web.Request, failure: _Failure, model: str) -> web.Response:
    headers = CIMultiDict(failure.headers)
    if failure.status == 429 and "retry-after" not in headers:
        headers["retry-after"] = _RETRY_AFTER_DEFAULT
    if failure.raw_body is not None:
        return web.Response(
            status=failure.status, text=failure.raw_body, content_type="text/html", headers=headers
        )
    default_type, default_message = _ERRORS.get(
        failure.status, _ERRORS[500] if failure.status >= 500 else _ERRORS[400]
    )
    return _error(
        request,
        failure.status,
        failure.type or default_type,
        failure.message or default_message.replace("{model}", model),
        headers,
    )


def _message_json(answer: _Answer) -> dict[str, Any]:
    return {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": list(answer.content),
        "stop_reason": answer.stop_reason,
        "stop_sequence": answer.stop_sequence,
        "usage": answer.usage,
    }


def _sse(event: Mapping[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _events(answer: _Answer) -> Iterator[dict[str, Any]]:
    """The events of a streamed message, in Anthropic's order."""
    usage = answer.usage
    start_usage = {k: v for k, v in usage.items() if k != "output_tokens_details"}
    # message_start reports the prompt and a token or so of output; message_delta the total.
    start_usage["output_tokens"] = min(usage["output_tokens"], 1)
    yield {
        "type": "message_start",
        "message": {
            "id": answer.id,
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        },
    }
    for index, block in enumerate(answer.content):
        kind = block["type"]
        if kind == "text":
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            }
        elif kind == "thinking":
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            }
        else:
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {
                    "type": "tool_use",
                    "id": block["id"],
                    "name": block["name"],
                    "input": {},
                },
            }
        if index == 0:
            yield {"type": "ping"}
        if kind == "text":
            for piece in PIECE_RE.split(block["text"]):
                if piece:
                    yield {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    }
        elif kind == "thinking":
            for piece in PIECE_RE.split(block["thinking"]):
                if piece:
                    yield {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": piece},
                    }
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "signature_delta", "signature": block["signature"]},
            }
        else:
            arguments = json.dumps(block["input"]) if block["input"] else ""
            # Anthropic opens every tool input with an empty fragment.
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            }
            for start in range(0, len(arguments), _JSON_FRAGMENT):
                yield {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": arguments[start : start + _JSON_FRAGMENT],
                    },
                }
        yield {"type": "content_block_stop", "index": index}
    if not answer.content:
        yield {"type": "ping"}
    final_usage = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": usage["output_tokens"],
    }
    if "output_tokens_details" in usage:
        final_usage["output_tokens_details"] = usage["output_tokens_details"]
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence},
        "usage": final_usage,
    }
    yield {"type": "message_stop"}


def _model_json(model_id: str, display_name: str) -> dict[str, Any]:
    known = DEFAULT_MODELS.get(model_id)
    return {
        "type": "model",
        "id": model_id,
        "display_name": display_name,
        "created_at": known[1] if known else "2025-01-01T00:00:00Z",
        "lifecycle": "active",
        "max_input_tokens": _CONTEXT_WINDOW,
        "max_tokens": _MAX_OUTPUT,
    }


def _display_name(model_id: str) -> str:
    known = DEFAULT_MODELS.get(model_id)
    if known:
        return known[0]
    words = [w for w in model_id.split("-") if not w.isdigit() or len(w) < 8]
    return " ".join(w.capitalize() for w in words)


# -- reading requests ------------------------------------------------------------------------


def _validate(body: Any, *, count_only: bool) -> None:
    """Raise _Invalid with Anthropic's message for a request it would reject."""
    if not isinstance(body, dict):
        raise _Invalid("There was an error parsing the body of your request: not a JSON object")
    allowed = _COUNT_FIELDS if count_only else _MESSAGE_FIELDS
    for key in body:
        if key not in allowed:
            raise _Invalid(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str):
        raise _Invalid("model: Field required")
    if not count_only:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _Invalid("max_tokens: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        raise _Invalid("temperature: Input should be less than or equal to 1")
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise _Invalid("stop_sequences: Input should be a valid list of strings")
    _validate_system(body.get("system"))
    tool_names = _validate_tools(body.get("tools"))
    _validate_tool_choice(body.get("tool_choice"), tool_names)
    _validate_thinking(body)
    _validate_messages(body.get("messages"))


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _Invalid("system: Input should be a valid string or a list of text blocks")
    for n, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _Invalid(f"system.{n}.type: Input should be 'text'")
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise _Invalid("system: text content blocks must be non-empty")


def _validate_tools(tools: Any) -> set[str]:
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise _Invalid("tools: Input should be a valid list")
    names: set[str] = set()
    for n, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _Invalid(f"tools.{n}.custom.name: Field required")
        if "type" in tool and tool["type"] != "custom":
            names.add(tool["name"])  # a server tool (web_search...): its own schema
            continue
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _Invalid(f"tools.{n}.custom.input_schema: Field required")
        if schema.get("type") != "object":
            raise _Invalid(f"tools.{n}.custom.input_schema.type: Input should be 'object'")
        if tool["name"] in names:
            raise _Invalid("tools: Tool names must be unique.")
        names.add(tool["name"])
    return names


def _validate_tool_choice(choice: Any, tool_names: set[str]) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise _Invalid(
            "tool_choice: Input tag does not match any of the expected tags: "
            "'auto', 'any', 'tool', 'none'"
        )
    if kind in ("any", "tool") and not tool_names:
        raise _Invalid("tool_choice may only be specified while providing tools.")
    if kind == "tool" and choice.get("name") not in tool_names:
        raise _Invalid(f"Tool '{choice.get('name')}' not found in the provided tools.")


def _thinking_enabled(body: Mapping[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _validate_thinking(body: Mapping[str, Any]) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict) or thinking.get("type") not in (
        "enabled",
        "disabled",
        "adaptive",
    ):
        raise _Invalid(
            "thinking: Input tag does not match any of the expected tags: "
            "'enabled', 'disabled', 'adaptive'"
        )
    if thinking["type"] != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < _MIN_THINKING_BUDGET:
        raise _Invalid(
            f"thinking.enabled.budget_tokens: Input should be greater than or equal to "
            f"{_MIN_THINKING_BUDGET}"
        )
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens <= budget:
        raise _Invalid(
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
            "documentation at https://docs.claude.com/en/docs/build-with-claude/"
            "extended-thinking#max-tokens-and-context-window-size"
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise _Invalid(
            "`temperature` may only be set to 1 when thinking is enabled. Please consult our "
            "documentation at https://docs.claude.com/en/docs/build-with-claude/"
            "extended-thinking#feature-compatibility"
        )


def _validate_messages(messages: Any) -> None:
    if messages is None:
        raise _Invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _Invalid("messages: Input should be a valid list")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    pending_tool_uses: list[str] = []
    previous_role: str | None = None
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Invalid(f"messages.{n}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system":
            raise _Invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _Invalid(f"messages.{n}.role: Input should be 'user' or 'assistant'")
        if role == previous_role:
            raise _Invalid(
                f'messages: roles must alternate between "user" and "assistant", but found '
                f'multiple "{role}" roles in a row'
            )
        previous_role = role
        blocks = _validate_content(message.get("content"), n, role)
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        if pending_tool_uses:
            missing = [i for i in pending_tool_uses if i not in results]
            if missing:
                raise _Invalid(
                    f"messages.{n}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message."
                )
        for k, block in enumerate(blocks):
            if block["type"] == "tool_result" and block["tool_use_id"] not in pending_tool_uses:
                raise _Invalid(
                    f"messages.{n}.content.{k}: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` block "
                    "must have a corresponding `tool_use` block in the previous message."
                )
        pending_tool_uses = [b["id"] for b in blocks if b["type"] == "tool_use"]


def _validate_content(content: Any, n: int, role: str) -> list[dict[str, Any]]:
    """The message's blocks (a string is one text block), each checked as Anthropic does."""
    if isinstance(content, str):
        if not content and role == "user":
            raise _Invalid(f"messages.{n}: user messages must have non-empty content")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _Invalid(f"messages.{n}.content: Input should be a valid string or list")
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    for k, block in enumerate(content):
        where = f"messages.{n}.content.{k}"
        if not isinstance(block, dict):
            raise _Invalid(f"{where}: Input should be a valid dictionary")
        kind = block.get("type")
        if kind not in allowed:
            raise _Invalid(
                f"{where}: Input tag '{kind}' found using 'type' does not match any of the "
                f"expected tags: {', '.join(repr(t) for t in sorted(allowed))}"
            )
        if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
            raise _Invalid("messages: text content blocks must be non-empty")
        if kind == "image":
            _validate_image(block.get("source"), f"{where}.image.source")
        if kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _Invalid(f"{where}.tool_use.id: Field required")
            if not isinstance(block.get("input"), dict):
                raise _Invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
        if kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise _Invalid(f"{where}.tool_result.tool_use_id: Field required")
            inner = block.get("content")
            if isinstance(inner, list):
                for part in inner:
                    kind_inner = part.get("type") if isinstance(part, dict) else None
                    if kind_inner not in ("text", "image", "document", "search_result"):
                        raise _Invalid(
                            f"{where}.tool_result.content: Input should be a "
                            "valid string or a list of text or image blocks"
                        )
                    if kind_inner == "image":
                        _validate_image(part.get("source"), f"{where}.tool_result.image.source")
            elif inner is not None and not isinstance(inner, str):
                raise _Invalid(f"{where}.tool_result.content: Input should be a valid string")
    return content


def _validate_image(source: Any, where: str) -> None:
    if not isinstance(source, dict):
        raise _Invalid(f"{where}: Field required")
    kind = source.get("type")
    if kind == "base64":
        if source.get("media_type") not in _IMAGE_TYPES:
            raise _Invalid(
                f"{where}.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                "'image/gif' or 'image/webp'"
            )
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise _Invalid(f"{where}.base64.data: Field required")
    elif kind == "url":
        if not isinstance(source.get("url"), str) or not source["url"].startswith(
            ("https://", "http://")
        ):
            raise _Invalid(f"{where}.url.url: Input should be a valid URL")
    elif kind != "file":
        raise _Invalid(
            f"{where}: Input tag '{kind}' found using 'type' does not match any of the "
            "expected tags: 'base64', 'file', 'url'"
        )


def _tool_call(call: Mapping[str, Any] | Any) -> tuple[str, str, dict[str, Any]]:
    if isinstance(call, Mapping):
        name, call_id = call["name"], call.get("id")
        arguments = call.get("input", call.get("arguments", {}))
    else:
        name, arguments, call_id = call.name, call.arguments, getattr(call, "id", None)
    if isinstance(arguments, str):
        arguments = json.loads(arguments) if arguments else {}
    if not isinstance(arguments, Mapping):
        raise ValueError(f"tool call {name!r}: Anthropic's tool input is a JSON object")
    return (call_id or "toolu_01" + _random_id(22), str(name), dict(arguments))


def _text_of(content: Any) -> tuple[str, int]:
    """The text of a message's (or tool result's) content and how many images it holds."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts: list[str] = []
    images = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "image":
            images += 1
        elif kind == "tool_result":
            inner, inner_images = _text_of(block.get("content"))
            texts.append(inner)
            images += inner_images
        elif kind == "tool_use":
            texts.append(f"{block.get('name', '')} {json.dumps(block.get('input', {}))}")
    return " ".join(t for t in texts if t), images


def _prompt(body: Mapping[str, Any]) -> tuple[int, tuple[int, str] | None, str | None]:
    """The prompt's token count, and the cached prefix (its tokens, a canonical text) with the
    TTL of its breakpoint when the request marks one with ``cache_control``.

    The prefix runs, in Anthropic's order (tools, system, messages), through the last block
    that carries ``cache_control``, or through the whole prompt for a top-level one.
    """
    segments: list[tuple[int, Any, Any]] = []  # (tokens, content, cache_control)
    tools = body.get("tools") or []
    if tools:
        segments.append((_TOKENS_TOOL_SYSTEM_PROMPT, "tools", None))
    for tool in tools:
        segments.append((count_tokens(json.dumps(tool)), tool, tool.get("cache_control")))
    system = body.get("system")
    if isinstance(system, str):
        segments.append((count_tokens(system), system, None))
    elif isinstance(system, list):
        for block in system:
            segments.append(
                (count_tokens(block.get("text", "")), block, block.get("cache_control"))
            )
    for message in body.get("messages") or []:
        content = message.get("content")
        blocks = content if isinstance(content, list) else [content]
        segments.append((_TOKENS_PER_MESSAGE, message.get("role"), None))
        for block in blocks:
            text, images = _text_of([block] if isinstance(block, dict) else block)
            marker = block.get("cache_control") if isinstance(block, dict) else None
            segments.append((count_tokens(text) + images * _TOKENS_PER_IMAGE, block, marker))
    total = _TOKENS_PRIMING + sum(tokens for tokens, _, _ in segments)
    last = None
    for n, (_, _, marker) in enumerate(segments):
        if isinstance(marker, dict):
            last = n
    top = body.get("cache_control")
    if isinstance(top, dict) and segments:
        last, marker_source = len(segments) - 1, top
    elif last is not None:
        marker_source = segments[last][2]
    else:
        return total, None, None
    prefix = segments[: last + 1]
    canonical = json.dumps([content for _, content, _ in prefix], sort_keys=True)
    ttl = marker_source.get("ttl")
    return (
        total,
        (_TOKENS_PRIMING + sum(tokens for tokens, _, _ in prefix), canonical),
        ttl if isinstance(ttl, str) else None,
    )


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            text, _ = _text_of(message.get("content"))
            return text
    return ""


def _default_text(messages: list[dict[str, Any]]) -> str:
    last = messages[-1]
    content = last.get("content")
    if last.get("role") == "user" and isinstance(content, list):
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            text, _ = _text_of(results)
            return f"The tool returned: {text}"
    text = _last_user_text(messages)
    return f"Echo: {text}" if text else "Hello! How can I help you today?"


def _cut_at_stop(text: str, stops: Any) -> tuple[str, str | None]:
    """The text up to the first stop sequence in it, and that sequence."""
    best: tuple[int, str] | None = None
    for stop in stops or ():
        at = text.find(stop) if stop else -1
        if at >= 0 and (best is None or at < best[0]):
            best = (at, stop)
    if best is None:
        return text, None
    return text[: best[0]], best[1]


def _signature(thinking: str) -> str:
    return hashlib.sha256(thinking.encode()).hexdigest()


def _random_id(length: int) -> str:
    return "".join(secrets.choice(_BASE58) for _ in range(length))
