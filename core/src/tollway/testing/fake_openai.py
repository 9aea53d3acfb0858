"""A fake OpenAI and Azure OpenAI server that speaks the real wire format, for tests.

The providers' public APIs cannot be reached from tests, so this server answers in their place:
the same routes, JSON bodies, SSE chunks, error bodies and headers as OpenAI's Chat Completions
API and Azure OpenAI's deployment routes. ``core/tests/test_fake_openai_sdk.py`` parses its
answers with the official ``openai`` SDK, so the fake cannot drift from what the SDK accepts.

Start it with ``async with FakeOpenAI() as fake:`` and point a client at ``fake.base_url`` (or
``fake.azure_endpoint``). Without a script it answers deterministically, echoing the last user
message, with token counts derived from the text. Script the next answers with ``reply``,
``fail`` and ``fault``; they are served in the order they were scripted, one per chat request.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import attrs
from aiohttp import web

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

__all__ = ["DEFAULT_MODELS", "FakeOpenAI", "Fault", "RecordedRequest"]

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o3-mini")

# OpenAI's chat format costs a few tokens per message and for priming the reply; an image at
# low detail costs 85. The exact numbers matter less than that they are deterministic.
_TOKENS_PER_MESSAGE = 3
_TOKENS_REPLY_PRIMING = 3
_TOKENS_PER_IMAGE = 85

# Models that reject ``max_tokens`` and insist on ``max_completion_tokens``, as OpenAI does.
_REASONING_MODEL_RE = re.compile(r"^(o\d|gpt-5)")
_ARGUMENT_FRAGMENT = 8

_ALNUM = string.ascii_letters + string.digits

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    409: ("invalid_request_error", None, "The request conflicts with another request."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 20s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_SERVER_ERROR = _OPENAI_ERRORS[500]

_NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    "a username. You can obtain an API key from https://platform.openai.com/account/api-keys."
)
_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
_AZURE_ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
_AZURE_NO_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the deployment within "
    "the last 5 minutes, please wait a moment and try again."
)
_SAFE = {"filtered": False, "severity": "safe"}
_AZURE_FILTERS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_AZURE_PROMPT_FILTERS = [{"prompt_index": 0, "content_filter_results": _AZURE_FILTERS}]


@attrs.frozen
class _Reply:
    text: str | None
    tool_calls: tuple[tuple[str, str, str], ...]  # (id, name, arguments)
    finish_reason: str | None
    usage: Mapping[str, int] | None
    cached_tokens: int
    reasoning_tokens: int
    model: str | None


@attrs.frozen
class _Failure:
    status: int
    message: str | None
    type: str | None
    code: str | None
    param: str | None
    headers: Mapping[str, str]
    raw_body: str | None


@attrs.frozen
class _Fault:
    kind: str


_Outcome: TypeAlias = _Reply | _Failure | _Fault


@attrs.frozen
class _Answer:
    """What one chat completion says, ready to be sent as JSON or as chunks."""

    id: str
    created: int
    model: str
    text: str | None
    tool_calls: tuple[tuple[str, str, str], ...]
    finish_reason: str
    usage: dict[str, Any]


class FakeOpenAI(FakeServer[_Outcome]):
    """An aiohttp.web server on 127.0.0.1 that answers like OpenAI and Azure OpenAI.

    Routes: ``POST /v1/chat/completions`` (JSON, or SSE when ``"stream": true``),
    ``GET /v1/models``, and Azure's ``POST /openai/deployments/{deployment}/chat/completions``
    and ``GET /openai/models``, which need an ``api-version`` query and an ``api-key`` header.

    Knobs, all settable at any time:

    - ``require_api_key``: when set, OpenAI routes answer 401 unless ``Authorization: Bearer``
      carries it, and Azure routes unless ``api-key`` does. Azure routes always need some key.
    - ``latency``: seconds to wait before answering; ``chunk_delay``: seconds between chunks.
    - ``azure_deployments``: deployment name -> model; ``None`` accepts any deployment and
      reports the deployment name as the model.
    - ``models``: what ``GET /v1/models`` lists.
    - ``stall_seconds``: how long the ``"stall"`` fault stays silent (the fake's close ends it).

    ``requests`` records every request received; ``abandoned_streams`` counts streams whose
    client went away before the end.
    """

    def __init__(
        self,
        *,
        require_api_key: str | None = None,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        models: Sequence[str] = DEFAULT_MODELS,
        azure_deployments: Mapping[str, str] | None = None,
        stall_seconds: float = 3600.0,
    ) -> None:
        super().__init__(latency=latency, chunk_delay=chunk_delay, stall_seconds=stall_seconds)
        self.require_api_key = require_api_key
        # Sent on every answer, as OpenAI sends its x-ratelimit-* headers.
        self.response_headers: dict[str, str] = {}
        self.models = list(models)
        self.azure_deployments = dict(azure_deployments) if azure_deployments is not None else None

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self._openai_chat)
        router.add_get("/v1/models", self._openai_models)
        router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure_chat)
        router.add_get("/openai/models", self._azure_models)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        """The Azure resource endpoint, ``http://127.0.0.1:PORT`` (routes start ``/openai``)."""
        return f"http://127.0.0.1:{self.port}"

    # -- scripting -------------------------------------------------------------------------

    def reply(
        self,
        text: str | None = None,
        *,
        tool_calls: Iterable[Mapping[str, Any] | Any] = (),
        finish_reason: str | None = None,
        usage: Mapping[str, int] | None = None,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        model: str | None = None,
        times: int = 1,
    ) -> None:
        """Queue the next answer(s), served verbatim (``max_tokens`` does not cut them).

        ``tool_calls`` items are mappings with ``name``, ``arguments`` (JSON text, or a mapping
        that is encoded) and optionally ``id``, or objects with those attributes (such as
        :class:`tollway.types.ToolCall`). ``usage`` overrides the counted ``prompt_tokens``,
        ``completion_tokens`` or ``total_tokens``; ``reasoning_tokens`` are added to the counted
        completion tokens, as OpenAI includes them there. ``model`` overrides the reported model.
        """
        calls = tuple(_tool_call(call) for call in tool_calls)
        outcome = _Reply(text, calls, finish_reason, usage, cached_tokens, reasoning_tokens, model)
        self._script(outcome, times)

    def fail(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        raw_body: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next chat request(s) with an HTTP error in OpenAI's error body.

        ``message``, ``type`` and ``code`` default to what OpenAI sends for the status.
        ``raw_body`` replaces the JSON body with an HTML page, as a proxy in front would send.
        """
        self._check_status(status)
        outcome = _Failure(status, message, type, code, param, dict(headers or {}), raw_body)
        self._script(outcome, times)

    def fault(self, kind: Fault, *, times: int = 1) -> None:
        """Misbehave on the next chat request(s).

        - ``reset``: the connection is reset (TCP RST) before any answer.
        - ``stall``: a JSON answer never comes; a stream stops part-way and goes silent.
        - ``malformed``: HTTP 200 with a body that is not valid JSON (or an invalid chunk).
        - ``cut_stream``: a stream ends cleanly part-way, without ``data: [DONE]``; a JSON answer
          is cut off before its declared length and the connection dropped.
        - ``mid_stream_error``: a stream sends some text, then an ``{"error": ...}`` event; a
          JSON request gets HTTP 500.
        """
        self._check_fault(kind)
        self._script(_Fault(kind), times)

    # -- plumbing --------------------------------------------------------------------------

    def _new_request_id(self) -> str:
        return f"req_{secrets.token_hex(16)}"

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        request_id = request.get(REQUEST_ID) or self._new_request_id()
        response.headers["x-request-id"] = request_id
        response.headers["openai-version"] = "2020-10-01"
        response.headers["openai-processing-ms"] = "7"
        if request.path.startswith("/openai/"):
            response.headers["apim-request-id"] = request_id
        for name, value in self.response_headers.items():
            response.headers[name] = value

    def _route_error(self, request: web.Request, exc: web.HTTPException) -> web.Response | None:
        if exc.status < 400:
            return None
        # OpenAI answers unknown routes with its own error body, not an HTML page.
        return _openai_error(
            exc.status,
            f"Invalid URL ({request.method} {request.path})",
            "invalid_request_error",
            None,
        )

    def _check_openai_key(self, request: web.Request) -> web.Response | None:
        if self.require_api_key is None:
            return None
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _openai_error(401, _NO_KEY_MESSAGE, "invalid_request_error", None)
        if key.strip() != self.require_api_key:
            shown = key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)
            return _openai_error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        return None

    def _check_azure_access(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("api-key")
        if key is None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            key = token if scheme.lower() == "bearer" else None
        if not key or (self.require_api_key is not None and key != self.require_api_key):
            return _azure_error(401, "401", _AZURE_ACCESS_DENIED)
        if not request.query.get("api-version"):
            return _azure_error(404, "404", "Resource not found")
        return None

    # -- routes ----------------------------------------------------------------------------

    async def _openai_models(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_openai_key(request)
        if denied is not None:
            return denied
        await self._wait(self.latency)
        data = [
            {"id": model, "object": "model", "created": 1_715_367_049, "owned_by": "system"}
            for model in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _azure_models(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_azure_access(request)
        if denied is not None:
            return denied
        await self._wait(self.latency)
        models = (
            sorted(set(self.azure_deployments.values())) if self.azure_deployments else self.models
        )
        data = [
            {
                "status": "succeeded",
                "capabilities": {
                    "fine_tune": False,
                    "inference": True,
                    "completion": False,
                    "chat_completion": True,
                    "embeddings": False,
                },
                "lifecycle_status": "generally-available",
                "id": model,
                "created_at": 1_715_558_400,
                "object": "model",
            }
            for model in models
        ]
        return web.json_response({"data": data, "object": "list"})

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_openai_key(request)
        if denied is not None:
            return denied
        return await self._chat(request, None)

    async def _azure_chat(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_azure_access(request)
        if denied is not None:
            return denied
        deployment = request.match_info["deployment"]
        if self.azure_deployments is None:
            model = deployment
        elif deployment in self.azure_deployments:
            model = self.azure_deployments[deployment]
        else:
            return _azure_error(404, "DeploymentNotFound", _AZURE_NO_DEPLOYMENT)
        return await self._chat(request, model)

    async def _chat(self, request: web.Request, azure_model: str | None) -> web.StreamResponse:
        body = request[BODY]
        invalid = _validate_chat(body, azure_model is None)
        if invalid is not None:
            return invalid
        outcome = self._next_outcome()
        await self._wait(self.latency)
        model = azure_model or str(body["model"])
        stream = body.get("stream") is True

        if isinstance(outcome, _Failure):
            return _scripted_error(outcome, model)
        fault = outcome.kind if isinstance(outcome, _Fault) else None
        if fault == "reset":
            return await reset_connection(request)
        if fault == "mid_stream_error" and not stream:
            kind, code, message = _SERVER_ERROR
            return _openai_error(500, message, kind, code)

        answer = self._answer(body, model, outcome if isinstance(outcome, _Reply) else None)
        if not stream:
            if fault == "stall":
                return await self._stall(request)
            if fault == "malformed":
                return web.Response(body=b'{"id": "chatcmpl-', content_type="application/json")
            payload = _completion_json(answer, azure=azure_model is not None)
            if fault == "cut_stream":
                return await cut_body(request, json.dumps(payload).encode())
            return web.json_response(payload)

        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        return await self._stream(request, answer, include_usage, azure_model is not None, fault)

    def _answer(self, body: Mapping[str, Any], model: str, reply: _Reply | None) -> _Answer:
        messages = body["messages"]
        prompt_tokens = _prompt_tokens(messages, body.get("tools"))
        cached = reasoning = 0
        overrides: Mapping[str, int] = {}
        tool_calls: tuple[tuple[str, str, str], ...] = ()
        if reply is None:
            text: str | None = _default_text(messages)
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            finish = "stop"
            if isinstance(limit, int) and limit >= 0:
                text, cut = truncate(text or "", limit)
                finish = "length" if cut else "stop"
        else:
            text = reply.text
            tool_calls = reply.tool_calls
            if text is None and not tool_calls:
                text = _default_text(messages)
            finish = reply.finish_reason or ("tool_calls" if tool_calls else "stop")
            cached, reasoning = reply.cached_tokens, reply.reasoning_tokens
            overrides = reply.usage or {}
            model = reply.model or model
        completion_tokens = count_tokens(text or "") + reasoning
        for _, name, arguments in tool_calls:
            completion_tokens += count_tokens(name) + count_tokens(arguments)
        prompt = overrides.get("prompt_tokens", prompt_tokens)
        completion = overrides.get("completion_tokens", completion_tokens)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": overrides.get("total_tokens", prompt + completion),
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        completion_id = "chatcmpl-" + "".join(secrets.choice(_ALNUM) for _ in range(29))
        return _Answer(completion_id, int(time.time()), model, text, tool_calls, finish, usage)

    async def _stream(
        self,
        request: web.Request,
        answer: _Answer,
        include_usage: bool,
        azure: bool,
        fault: str | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        events = list(_chunks(answer, include_usage, azure))
        # Faults strike after the role chunk and about half the content, like a real cut.
        cut_at = max(2 + azure, len(events) // 2)
        try:
            for n, event in enumerate(events):
                if fault is not None and n == cut_at:
                    await self._stream_fault(response, fault)
                    return response
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                if self.chunk_delay:
                    await self._wait(self.chunk_delay)
            if fault is not None:
                # The answer was too short to cut in the middle: misbehave at the end instead.
                await self._stream_fault(response, fault)
                return response
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:
            self.abandoned_streams += 1
        return response

    async def _stream_fault(self, response: web.StreamResponse, fault: str) -> None:
        if fault == "stall":
            await self._wait(self.stall_seconds)
        elif fault == "malformed":
            await response.write(b'data: {"id": "chatcmpl-\n\n')
        elif fault == "mid_stream_error":
            kind, code, message = _SERVER_ERROR
            error = {"error": {"message": message, "type": kind, "param": None, "code": code}}
            await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
        # cut_stream (and each of the above) then ends the body with no [DONE].
        await response.write_eof()


def _openai_error(
    status: int,
    message: str,
    kind: str | None,
    code: str | None,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _azure_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _scripted_error(failure: _Failure, model: str) -> web.Response:
    if failure.raw_body is not None:
        return web.Response(
            status=failure.status,
            text=failure.raw_body,
            content_type="text/html",
            headers=failure.headers,
        )
    default_type, default_code, default_message = _OPENAI_ERRORS.get(
        failure.status, _SERVER_ERROR if failure.status >= 500 else _OPENAI_ERRORS[400]
    )
    message = failure.message or default_message.replace("{model}", model)
    return _openai_error(
        failure.status,
        message,
        failure.type or default_type,
        failure.code if failure.code is not None else default_code,
        param=failure.param,
        headers=failure.headers,
    )


def _validate_chat(body: Any, openai_route: bool) -> web.Response | None:
    if not isinstance(body, dict):
        return _openai_error(400, _BAD_JSON_MESSAGE, "invalid_request_error", None)
    model = body.get("model")
    if openai_route and not isinstance(model, str):
        return _openai_error(
            400, "you must provide a model parameter", "invalid_request_error", None
        )
    messages = body.get("messages")
    if not isinstance(messages, list):
        return _openai_error(
            400,
            "Missing required parameter: 'messages'.",
            "invalid_request_error",
            "missing_required_parameter",
            param="messages",
        )
    if not messages:
        return _openai_error(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "invalid_request_error",
            "empty_array",
            param="messages",
        )
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (
            "system",
            "user",
            "assistant",
            "tool",
            "developer",
        ):
            return _openai_error(
                400,
                f"Invalid value for 'messages[{n}].role'.",
                "invalid_request_error",
                "invalid_value",
                param=f"messages[{n}].role",
            )
    if (
        openai_route
        and isinstance(model, str)
        and _REASONING_MODEL_RE.match(model)
        and ("max_tokens" in body)
    ):
        return _openai_error(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
            "'max_completion_tokens' instead.",
            "invalid_request_error",
            "unsupported_parameter",
            param="max_tokens",
        )
    return None


def _tool_call(call: Mapping[str, Any] | Any) -> tuple[str, str, str]:
    if isinstance(call, Mapping):
        name, arguments, call_id = call["name"], call.get("arguments", "{}"), call.get("id")
    else:
        name, arguments, call_id = call.name, call.arguments, getattr(call, "id", None)
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return (call_id or f"call_{secrets.token_hex(12)}", str(name), arguments)


def _content_text(content: Any) -> tuple[str, int]:
    """The text of a message's content and how many images it holds."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    images = sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return " ".join(t for t in texts if isinstance(t, str)), images


def _prompt_tokens(messages: list[dict[str, Any]], tools: Any) -> int:
    total = _TOKENS_REPLY_PRIMING
    for message in messages:
        text, images = _content_text(message.get("content"))
        total += _TOKENS_PER_MESSAGE + count_tokens(text) + images * _TOKENS_PER_IMAGE
        if message.get("name"):
            total += 1
        for call in message.get("tool_calls") or ():
            function = call.get("function", {}) if isinstance(call, dict) else {}
            total += count_tokens(str(function.get("name", "")))
            total += count_tokens(str(function.get("arguments", "")))
    if tools:
        total += count_tokens(json.dumps(tools))
    return total


def _default_text(messages: list[dict[str, Any]]) -> str:
    last = messages[-1]
    text, _ = _content_text(last.get("content"))
    if last.get("role") == "tool":
        return f"The tool returned: {text}"
    for message in reversed(messages):
        if message.get("role") == "user":
            text, _ = _content_text(message.get("content"))
            return f"Echo: {text}" if text else "Hello! How can I help you today?"
    return "Hello! How can I help you today?"


def _completion_json(answer: _Answer, *, azure: bool) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.text,
        "refusal": None,
        "annotations": [],
    }
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            for call_id, name, args in answer.tool_calls
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": answer.finish_reason,
    }
    out: dict[str, Any] = {
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [choice],
        "usage": answer.usage,
        "system_fingerprint": "fp_fake0001",
    }
    if azure:
        choice["content_filter_results"] = _AZURE_FILTERS
        out["prompt_filter_results"] = _AZURE_PROMPT_FILTERS
    else:
        out["service_tier"] = "default"
    return out


def _chunks(answer: _Answer, include_usage: bool, azure: bool) -> Iterator[dict[str, Any]]:
    """The chunk objects of a streamed answer, in OpenAI's order (``[DONE]`` not included)."""
    if azure:
        # Azure opens every stream with a chunk that has no choices and no model, carrying
        # only the prompt's content-filter results.
        yield {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": _AZURE_PROMPT_FILTERS,
        }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        if azure and (delta or finish_reason):
            choice["content_filter_results"] = {} if not delta.get("content") else _AZURE_FILTERS
        out: dict[str, Any] = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "system_fingerprint": "fp_fake0001",
            "choices": [choice],
        }
        if not azure:
            out["service_tier"] = "default"
        if include_usage:
            out["usage"] = None
        return out

    calls = [
        {
            "index": n,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        for n, (call_id, name, _) in enumerate(answer.tool_calls)
    ]
    if answer.text is None and calls:
        yield chunk(
            {"role": "assistant", "content": None, "tool_calls": [calls[0]], "refusal": None}
        )
        pending = calls[1:]
        first_done = True
    else:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        pending = calls
        first_done = False
    for piece in PIECE_RE.split(answer.text or ""):
        if piece:
            yield chunk({"content": piece})
    for n, (_, _, arguments) in enumerate(answer.tool_calls):
        if not (first_done and n == 0):
            yield chunk({"tool_calls": [pending.pop(0)]})
        for start in range(0, len(arguments), _ARGUMENT_FRAGMENT):
            fragment = arguments[start : start + _ARGUMENT_FRAGMENT]
            yield chunk({"tool_calls": [{"index": n, "function": {"arguments": fragment}}]})
    yield chunk({}, answer.finish_reason)
    if include_usage:
        final: dict[str, Any] = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "system_fingerprint": "fp_fake0001",
            "choices": [],
            "usage": answer.usage,
        }
        if not azure:
            final["service_tier"] = "default"
        yield final
