"""A fake Google Gemini server (API-key and Vertex AI routes) that speaks the real wire format.

The providers' public APIs cannot be reached from tests, so this server answers in their place:
the same routes (``/{v1,v1beta,v1alpha}/models/{model}:generateContent``,
``:streamGenerateContent?alt=sse``, Vertex's ``/v1/projects/{p}/locations/{l}/publishers/google/
models/{model}:...``), camelCase JSON bodies, SSE events framed with CRLF, Google's error bodies
(``{"error": {"code", "message", "status", "details"}}``, pretty-printed as Google's front end
sends them) and headers. ``core/tests/test_fake_gemini_sdk.py`` parses its answers with the
official ``google-genai`` SDK, so the fake cannot drift from what the SDK accepts.

Start it with ``async with FakeGemini() as fake:`` and point a client at ``fake.base_url``.
Without a script it answers deterministically, echoing the last user turn, with token counts
derived from the text. Script the next answers with ``reply``, ``fail`` and ``fault``; they are
served in the order they were scripted, one per generate request.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs
from aiohttp import web

from tollway.testing._server import (
    BODY,
    BODY_ERROR,
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

__all__ = ["DEFAULT_MODELS", "FakeGemini", "Fault", "ModelSpec", "RecordedRequest"]


@attrs.frozen
class ModelSpec:
    """What ``GET /v1beta/models`` says about one model."""

    id: str
    display_name: str
    input_token_limit: int = 1_048_576
    output_token_limit: int = 65_536
    methods: tuple[str, ...] = (
        "generateContent",
        "countTokens",
        "createCachedContent",
        "batchGenerateContent",
    )
    thinking: bool = True


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("gemini-2.5-flash", "Gemini 2.5 Flash"),
    ModelSpec("gemini-2.5-pro", "Gemini 2.5 Pro"),
    ModelSpec("gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite"),
    ModelSpec("gemini-2.0-flash", "Gemini 2.0 Flash", output_token_limit=8192, thinking=False),
    ModelSpec(
        "gemini-embedding-001",
        "Gemini Embedding 001",
        input_token_limit=2048,
        output_token_limit=1,
        methods=("embedContent", "countTextTokens", "countTokens"),
        thinking=False,
    ),
)

API_VERSIONS: frozenset[str] = frozenset(("v1", "v1beta", "v1alpha"))
VERTEX_API_VERSIONS: frozenset[str] = frozenset(("v1", "v1beta1"))

# Gemini bills an image at 258 tokens whatever its size (up to 384 px a side, tiled above).
_TOKENS_PER_IMAGE = 258
# Gemini streams a few words per event, not a token per event as OpenAI does.
_PIECES_PER_EVENT = 2
_ALNUM = string.ascii_letters + string.digits

# Google's canonical status name for each HTTP status (google.rpc.Code's HTTP mapping).
_STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGES: dict[int, str] = {
    400: "Request contains an invalid argument.",
    401: (
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project."
    ),
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: (
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
    ),
    500: (
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting"
    ),
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_NO_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). Please "
    "use API Key or other form of API consumer identity to call this API."
)
_BAD_KEY_MESSAGE = "API key not valid. Please pass a valid API key."
_NOT_FOUND_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1"
    "</title>\n  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n  <p>The requested URL "
    "<code>{path}</code> was not found on this server.  <ins>That\u2019s all we know.</ins>\n"
)
# Field names the API accepts in a GenerateContentRequest; proto JSON takes either spelling,
# and anything else is rejected with "Unknown name".
_REQUEST_FIELDS = frozenset(
    [
        "model",
        "contents",
        "tools",
        "toolConfig",
        "tool_config",
        "safetySettings",
        "safety_settings",
        "systemInstruction",
        "system_instruction",
        "generationConfig",
        "generation_config",
        "cachedContent",
        "cached_content",
        "labels",
    ]
)
_GENERATION_FIELDS = frozenset(
    [
        "stopSequences",
        "stop_sequences",
        "responseMimeType",
        "response_mime_type",
        "responseSchema",
        "response_schema",
        "responseJsonSchema",
        "response_json_schema",
        "responseModalities",
        "response_modalities",
        "candidateCount",
        "candidate_count",
        "maxOutputTokens",
        "max_output_tokens",
        "temperature",
        "topP",
        "top_p",
        "topK",
        "top_k",
        "seed",
        "presencePenalty",
        "presence_penalty",
        "frequencyPenalty",
        "frequency_penalty",
        "responseLogprobs",
        "response_logprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "enable_enhanced_civic_answers",
        "speechConfig",
        "speech_config",
        "thinkingConfig",
        "thinking_config",
        "mediaResolution",
        "media_resolution",
        "imageConfig",
        "image_config",
    ]
)
_SAFETY_FINISHES = frozenset(
    ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
)
_HARM_CATEGORIES = (
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
)


@attrs.frozen
class _Reply:
    text: str | None
    thoughts: str | None
    function_calls: tuple[tuple[str | None, str, Any], ...]  # (id, name, args)
    finish_reason: str | None
    usage: Mapping[str, int] | None
    cached_tokens: int
    thoughts_tokens: int
    block_reason: str | None
    model: str | None


@attrs.frozen
class _Failure:
    status: int
    message: str | None
    status_name: str | None
    reason: str | None
    retry_delay: str | None
    details: tuple[Mapping[str, Any], ...] | None
    headers: Mapping[str, str]
    raw_body: str | None


@attrs.frozen
class _Fault:
    kind: str


_Outcome: TypeAlias = _Reply | _Failure | _Fault


@attrs.frozen
class _Answer:
    """What one generateContent says, ready to be sent as JSON or as events."""

    response_id: str
    model_version: str
    thoughts: str | None
    text: str
    function_calls: tuple[tuple[str | None, str, Any], ...]
    finish_reason: str
    usage: dict[str, Any]
    block_reason: str | None


class FakeGemini(FakeServer[_Outcome]):
    """An aiohttp.web server on 127.0.0.1 that answers like the Gemini API and Vertex AI.

    Routes (``{v}`` is ``v1``, ``v1beta`` or ``v1alpha``; Vertex's is ``v1`` or ``v1beta1``):

    - ``POST /{v}/models/{model}:generateContent`` and ``:streamGenerateContent`` (SSE with
      ``?alt=sse``, else a JSON array), with the key in ``x-goog-api-key`` or ``?key=``;
    - ``GET /{v}/models`` (paged by ``pageSize``/``pageToken``) and ``GET /{v}/models/{model}``;
    - Vertex: ``POST /{v}/projects/{p}/locations/{l}/publishers/google/models/{model}:...``
      with ``Authorization: Bearer``, and ``GET /{v}/publishers/google/models``.

    Knobs, all settable at any time:

    - ``require_api_key``: the key the API-key routes accept (400 ``API_KEY_INVALID`` for any
      other). They always need some key, as Google's do (403 without one).
    - ``require_access_token``: the token the Vertex routes accept (401 for any other); they
      always need a bearer token.
    - ``latency``: seconds to wait before answering; ``chunk_delay``: seconds between events.
    - ``models``: the models served and listed; a request for any other is a 404, as from Google.
    - ``stall_seconds``: how long the ``"stall"`` fault stays silent (the fake's close ends it).
    - ``request_id_header``: Google sends no request id header; name one (``x-request-id``) to
      have every answer carry the recorded request's id, as a gateway in front would.

    ``requests`` records every request received; ``abandoned_streams`` counts streams whose
    client went away before the end.
    """

    def __init__(
        self,
        *,
        require_api_key: str | None = None,
        require_access_token: str | None = None,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        models: Sequence[ModelSpec | str] = DEFAULT_MODELS,
        stall_seconds: float = 3600.0,
        request_id_header: str | None = None,
    ) -> None:
        super().__init__(latency=latency, chunk_delay=chunk_delay, stall_seconds=stall_seconds)
        self.require_api_key = require_api_key
        self.require_access_token = require_access_token
        self.models: list[ModelSpec] = [
            m if isinstance(m, ModelSpec) else ModelSpec(m, m) for m in models
        ]
        self.request_id_header = request_id_header
        self._knobs = (
            require_api_key,
            require_access_token,
            latency,
            chunk_delay,
            list(self.models),
            stall_seconds,
            request_id_header,
        )

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/{version}/models/{call}", self._gemini_generate)
        router.add_get("/{version}/models", self._gemini_models)
        router.add_get("/{version}/models/{model}", self._gemini_model)
        router.add_post(
            "/{version}/projects/{project}/locations/{location}/publishers/google/models/{call}",
            self._vertex_generate,
        )
        router.add_get("/{version}/publishers/google/models", self._vertex_models)

    @property
    def vertex_base_url(self) -> str:
        """The Vertex AI base URL; the same server, the routes start ``/v1/projects/``."""
        return self.base_url

    # -- scripting -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget recorded requests and unserved scripts, and set the knobs back to what the
        constructor was given, so one server (started once for a module) can serve many tests."""
        self._forget()
        (
            self.require_api_key,
            self.require_access_token,
            self.latency,
            self.chunk_delay,
            models,
            self.stall_seconds,
            self.request_id_header,
        ) = self._knobs
        self.models = list(models)

    def reply(
        self,
        text: str | None = None,
        *,
        tool_calls: Iterable[Mapping[str, Any] | Any] = (),
        thoughts: str | None = None,
        finish_reason: str | None = None,
        usage: Mapping[str, int] | None = None,
        cached_tokens: int = 0,
        thoughts_tokens: int = 0,
        block_reason: str | None = None,
        model: str | None = None,
        times: int = 1,
    ) -> None:
        """Queue the next answer(s), served verbatim (``maxOutputTokens`` does not cut them).

        ``tool_calls`` items are mappings with ``name``, ``arguments`` (or ``args``: a mapping,
        or JSON text of one) and optionally ``id``, or objects with those attributes (such as
        :class:`tollway.types.ToolCall`); they become ``functionCall`` parts, with an ``id`` only
        when one is given (the Gemini API usually sends none). ``thoughts`` adds a thought
        summary part (``"thought": true``). ``finish_reason`` is Gemini's (``STOP``,
        ``MAX_TOKENS``, ``SAFETY``, ``MALFORMED_FUNCTION_CALL``, ...); any but the first two
        comes without text unless ``text`` is given. ``block_reason`` answers with no
        candidate and a ``promptFeedback`` instead, as for a blocked prompt. ``usage``
        overrides the counted ``promptTokenCount``, ``candidatesTokenCount`` or
        ``totalTokenCount``.
        ``cached_tokens`` is the part of the prompt read from a cache (inside
        ``promptTokenCount``, as Gemini counts it); ``thoughts_tokens`` are reported apart from
        ``candidatesTokenCount``, as Gemini does. ``model`` overrides ``modelVersion``.
        """
        calls = tuple(_function_call(call) for call in tool_calls)
        outcome = _Reply(
            text,
            thoughts,
            calls,
            finish_reason,
            usage,
            cached_tokens,
            thoughts_tokens,
            block_reason,
            model,
        )
        self._script(outcome, times)

    def fail(
        self,
        status: int,
        message: str | None = None,
        *,
        status_name: str | None = None,
        reason: str | None = None,
        retry_delay: str | float | None = None,
        details: Iterable[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        raw_body: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next generate request(s) with an HTTP error in Google's error body.

        ``message`` and ``status_name`` (``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``, ...)
        default to what Google sends for the status. ``reason`` adds a
        ``google.rpc.ErrorInfo`` detail (``API_KEY_INVALID``), ``retry_delay`` a
        ``google.rpc.RetryInfo`` (``"12s"``, or seconds as a number); ``details`` replaces the
        details list. ``raw_body`` replaces the JSON body with an HTML page, as a proxy would.
        """
        self._check_status(status)
        delay = f"{retry_delay:g}s" if isinstance(retry_delay, (int, float)) else retry_delay
        outcome = _Failure(
            status,
            message,
            status_name,
            reason,
            delay,
            tuple(details) if details is not None else None,
            dict(headers or {}),
            raw_body,
        )
        self._script(outcome, times)

    def fault(self, kind: Fault, *, times: int = 1) -> None:
        """Misbehave on the next generate request(s).

        - ``reset``: the connection is reset (TCP RST) before any answer.
        - ``stall``: a JSON answer never comes; a stream stops part-way and goes silent.
        - ``malformed``: HTTP 200 with a body that is not valid JSON (or an invalid event).
        - ``cut_stream``: a stream ends cleanly part-way, before the event with
          ``finishReason``; a JSON answer is cut off before its declared length.
        - ``mid_stream_error``: a stream sends some text, then a ``{"error": ...}`` event; a
          JSON request gets HTTP 500.
        """
        self._check_fault(kind)
        self._script(_Fault(kind), times)

    # -- plumbing --------------------------------------------------------------------------

    def _new_request_id(self) -> str:
        return secrets.token_hex(16)

    def _json_error(self, body: bytes, exc: ValueError) -> str:
        return str(exc)

    def _route_error(self, request: web.Request, exc: web.HTTPException) -> web.Response | None:
        if exc.status == 404:
            # Google's front end answers an unknown path with an HTML page, not JSON.
            return web.Response(
                status=404,
                text=_NOT_FOUND_PAGE.replace("{path}", request.path),
                content_type="text/html",
            )
        if exc.status == 405:
            return _google_error(405, "Method Not Allowed", "UNIMPLEMENTED")
        return None

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers["Vary"] = "Origin, X-Origin, Referer"
        headers["Server"] = "scaffolding on HTTPServer2"
        headers["Server-Timing"] = "gfet4t7; dur=7"
        headers["X-XSS-Protection"] = "0"
        headers["X-Frame-Options"] = "SAMEORIGIN"
        headers["X-Content-Type-Options"] = "nosniff"
        if self.request_id_header:
            headers[self.request_id_header] = request.get(REQUEST_ID) or self._new_request_id()

    def _check_api_key(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _google_error(403, _NO_KEY_MESSAGE, "PERMISSION_DENIED")
        if self.require_api_key is not None and key != self.require_api_key:
            details = [
                _error_info("API_KEY_INVALID"),
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": _BAD_KEY_MESSAGE,
                },
            ]
            return _google_error(400, _BAD_KEY_MESSAGE, "INVALID_ARGUMENT", details)
        return None

    def _check_access_token(self, request: web.Request) -> web.Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if (
            scheme.lower() != "bearer"
            or not token
            or (self.require_access_token is not None and token != self.require_access_token)
        ):
            details = [_error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED", "aiplatform.googleapis.com")]
            return _google_error(401, _DEFAULT_MESSAGES[401], "UNAUTHENTICATED", details)
        return None

    def _spec(self, model: str) -> ModelSpec | None:
        for spec in self.models:
            if spec.id == model:
                return spec
        return None

    # -- routes ----------------------------------------------------------------------------

    async def _gemini_models(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["version"] not in API_VERSIONS:
            raise web.HTTPNotFound()
        denied = self._check_api_key(request)
        if denied is not None:
            return denied
        await self._wait(self.latency)
        try:
            size = min(int(request.query.get("pageSize", "50")), 1000) or 50
            start = int(request.query.get("pageToken") or 0)
        except ValueError:
            return _google_error(400, "Invalid page token or size.", "INVALID_ARGUMENT")
        page = self.models[start : start + size]
        out: dict[str, Any] = {"models": [_model_json(spec) for spec in page]}
        if start + size < len(self.models):
            # Google's tokens are opaque; an offset is enough for a client that passes it back.
            out["nextPageToken"] = str(start + size)
        return _pretty_json(out)

    async def _gemini_model(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["version"] not in API_VERSIONS:
            raise web.HTTPNotFound()
        denied = self._check_api_key(request)
        if denied is not None:
            return denied
        model = request.match_info["model"]
        spec = self._spec(model)
        if spec is None:
            return _google_error(
                404,
                f"models/{model} is not found for API version {request.match_info['version']}",
                "NOT_FOUND",
            )
        return _pretty_json(_model_json(spec))

    async def _vertex_models(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["version"] not in VERTEX_API_VERSIONS:
            raise web.HTTPNotFound()
        denied = self._check_access_token(request)
        if denied is not None:
            return denied
        await self._wait(self.latency)
        models = [
            {
                "name": f"publishers/google/models/{spec.id}",
                "versionId": "001",
                "openSourceCategory": "PROPRIETARY",
                "launchStage": "GA",
                "publisherModelTemplate": f"projects/{{project}}/locations/{{location}}/"
                f"publishers/google/models/{spec.id}@{{version_id}}",
            }
            for spec in self.models
        ]
        return _pretty_json({"publisherModels": models})

    async def _gemini_generate(self, request: web.Request) -> web.StreamResponse:
        version = request.match_info["version"]
        if version not in API_VERSIONS:
            raise web.HTTPNotFound()
        denied = self._check_api_key(request)
        if denied is not None:
            return denied
        return await self._generate(request, version, vertex=False)

    async def _vertex_generate(self, request: web.Request) -> web.StreamResponse:
        version = request.match_info["version"]
        if version not in VERTEX_API_VERSIONS:
            raise web.HTTPNotFound()
        denied = self._check_access_token(request)
        if denied is not None:
            return denied
        return await self._generate(request, version, vertex=True)

    async def _generate(
        self, request: web.Request, version: str, *, vertex: bool
    ) -> web.StreamResponse:
        model, _, method = request.match_info["call"].rpartition(":")
        if method not in ("generateContent", "streamGenerateContent") or not model:
            raise web.HTTPNotFound()
        spec = self._spec(model)
        if spec is None or "generateContent" not in spec.methods:
            if vertex:
                message = (
                    f"Publisher Model `projects/{request.match_info['project']}/locations/"
                    f"{request.match_info['location']}/publishers/google/models/{model}` "
                    "was not found or your project does not have access to it. Please ensure "
                    "you are using a valid model version. For more information, see: "
                    "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
                )
            else:
                message = (
                    f"models/{model} is not found for API version {version}, or is not "
                    f"supported for {method}. Call ListModels to see the list of available "
                    "models and their supported methods."
                )
            return _google_error(404, message, "NOT_FOUND")
        if BODY_ERROR in request:
            return _google_error(
                400,
                f"Invalid JSON payload received. {request[BODY_ERROR]}",
                "INVALID_ARGUMENT",
            )
        body = request[BODY]
        invalid = _validate(body)
        if invalid is not None:
            return invalid
        outcome = self._next_outcome()
        await self._wait(self.latency)
        stream = method == "streamGenerateContent"

        if isinstance(outcome, _Failure):
            return _scripted_error(outcome)
        fault = outcome.kind if isinstance(outcome, _Fault) else None
        if fault == "reset":
            return await reset_connection(request)
        if fault == "mid_stream_error" and not stream:
            return _google_error(500, _DEFAULT_MESSAGES[500], "INTERNAL")

        answer = _answer(body, model, outcome if isinstance(outcome, _Reply) else None, vertex)
        if not stream:
            if fault == "stall":
                return await self._stall(request)
            if fault == "malformed":
                return web.Response(
                    body=b'{\n  "candidates": [\n    {\n      "content": {\n',
                    content_type="application/json",
                    charset="UTF-8",
                )
            payload = _response_json(answer, vertex, final=True)
            if fault == "cut_stream":
                return await cut_body(
                    request, _dumps_pretty(payload), "application/json; charset=UTF-8"
                )
            return _pretty_json(payload)
        events = _events(answer, vertex)
        if request.query.get("alt") != "sse":
            # Without alt=sse the API streams one JSON array of the same objects.
            return _pretty_json(events)
        return await self._stream(request, events, fault)

    async def _stream(
        self, request: web.Request, events: list[dict[str, Any]], fault: str | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Content-Disposition": "attachment",
            }
        )
        await response.prepare(request)
        # Faults strike before the event carrying finishReason (the last one), about half-way.
        cut_at = min(max(1, len(events) // 2), len(events) - 1)
        try:
            for n, event in enumerate(events):
                if fault is not None and n == cut_at:
                    await self._stream_fault(response, fault)
                    return response
                await response.write(b"data: " + json.dumps(event).encode() + b"\r\n\r\n")
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
            await response.write(b'data: {"candidates": [{"content": {"parts": [\r\n\r\n')
        elif fault == "mid_stream_error":
            error = {
                "error": {"code": 500, "message": _DEFAULT_MESSAGES[500], "status": "INTERNAL"}
            }
            await response.write(b"data: " + json.dumps(error).encode() + b"\r\n\r\n")
        # cut_stream (and each of the above) then ends the body with no finishReason.
        await response.write_eof()


# -- answers ---------------------------------------------------------------------------------


def _answer(body: Mapping[str, Any], model: str, reply: _Reply | None, vertex: bool) -> _Answer:
    contents = body["contents"]
    config = body.get("generationConfig") or body.get("generation_config") or {}
    prompt_tokens = _prompt_tokens(body)
    cached = thoughts_tokens = 0
    overrides: Mapping[str, int] = {}
    thoughts: str | None = None
    calls: tuple[tuple[str | None, str, Any], ...] = ()
    block: str | None = None
    if reply is None:
        text = _default_text(contents)
        finish = "STOP"
        limit = config.get("maxOutputTokens", config.get("max_output_tokens"))
        if isinstance(limit, int) and limit >= 0:
            text, cut = truncate(text, limit)
            finish = "MAX_TOKENS" if cut else "STOP"
    else:
        calls = reply.function_calls
        thoughts = reply.thoughts
        block = reply.block_reason
        if reply.text is not None:
            text = reply.text
        elif calls or block or reply.finish_reason not in (None, "STOP", "MAX_TOKENS"):
            # A model stopped by a filter or a broken call says nothing, and Gemini sends no
            # content for it.
            text = ""
        else:
            text = _default_text(contents)
        finish = reply.finish_reason or "STOP"
        cached, thoughts_tokens = reply.cached_tokens, reply.thoughts_tokens
        overrides = reply.usage or {}
        model = reply.model or model
    candidates_tokens = count_tokens(text)
    for _, name, args in calls:
        candidates_tokens += count_tokens(name) + count_tokens(json.dumps(args))
    prompt = overrides.get("promptTokenCount", prompt_tokens)
    completion = 0 if block else overrides.get("candidatesTokenCount", candidates_tokens)
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    # Proto3 JSON leaves out zero counts, so an empty answer has no candidatesTokenCount.
    if completion:
        usage["candidatesTokenCount"] = completion
    usage["totalTokenCount"] = overrides.get(
        "totalTokenCount", prompt + completion + thoughts_tokens
    )
    if cached:
        usage["cachedContentTokenCount"] = cached
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if cached:
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts_tokens:
        usage["thoughtsTokenCount"] = thoughts_tokens
    if vertex:
        usage["trafficType"] = "ON_DEMAND"
        if completion:
            usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": completion}]
    response_id = "".join(secrets.choice(_ALNUM) for _ in range(23))
    return _Answer(response_id, model, thoughts, text, calls, finish, usage, block)


def _safety_ratings(blocked: bool) -> list[dict[str, Any]]:
    ratings: list[dict[str, Any]] = [
        {"category": category, "probability": "NEGLIGIBLE"} for category in _HARM_CATEGORIES
    ]
    if blocked:
        ratings[1] = {
            "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
            "probability": "HIGH",
            "blocked": True,
        }
    return ratings


def _response_json(
    answer: _Answer,
    vertex: bool,
    *,
    final: bool,
    parts: list[dict[str, Any]] | None = None,
    usage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A GenerateContentResponse: the whole answer, or one event of a stream."""
    out: dict[str, Any] = {}
    if answer.block_reason:
        out["promptFeedback"] = {
            "blockReason": answer.block_reason,
            "safetyRatings": _safety_ratings(True),
        }
    else:
        if parts is None:
            parts = _parts(answer)
        candidate: dict[str, Any] = {}
        if parts:
            candidate["content"] = {"parts": parts, "role": "model"}
        elif final:
            # A candidate that says nothing still names its role, as Gemini's do.
            candidate["content"] = {"role": "model"}
        if final:
            candidate["finishReason"] = answer.finish_reason
            if answer.finish_reason in _SAFETY_FINISHES:
                candidate["safetyRatings"] = _safety_ratings(True)
        if vertex and final:
            candidate["avgLogprobs"] = -0.25
        candidate["index"] = 0
        out["candidates"] = [candidate]
    out["usageMetadata"] = dict(answer.usage if usage is None else usage)
    out["modelVersion"] = answer.model_version
    if vertex:
        out["createTime"] = "2025-06-01T12:00:00.000000Z"
    out["responseId"] = answer.response_id
    return out


def _parts(answer: _Answer) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if answer.thoughts:
        parts.append({"text": answer.thoughts, "thought": True})
    if answer.text:
        parts.append({"text": answer.text})
    parts.extend(_call_part(call) for call in answer.function_calls)
    return parts


def _call_part(call: tuple[str | None, str, Any]) -> dict[str, Any]:
    call_id, name, args = call
    function: dict[str, Any] = {"name": name, "args": args}
    if call_id:
        function["id"] = call_id
    return {"functionCall": function}


def _events(answer: _Answer, vertex: bool) -> list[dict[str, Any]]:
    """The events of a streamed answer: thoughts, a few words each, whole function calls,
    and ``finishReason`` with the full usage on the last one. Usage in earlier events is the
    running count, as Gemini reports it."""
    if answer.block_reason:
        return [_response_json(answer, vertex, final=True)]
    groups: list[list[dict[str, Any]]] = []
    if answer.thoughts:
        groups.append([{"text": answer.thoughts, "thought": True}])
    pieces = [p for p in PIECE_RE.split(answer.text) if p]
    for start in range(0, len(pieces), _PIECES_PER_EVENT):
        groups.append([{"text": "".join(pieces[start : start + _PIECES_PER_EVENT])}])
    if answer.function_calls:
        # Gemini sends a function call whole, never its arguments in fragments.
        groups.append([_call_part(call) for call in answer.function_calls])
    if not groups:
        return [_response_json(answer, vertex, final=True)]
    prompt = answer.usage["promptTokenCount"]
    thoughts = answer.usage.get("thoughtsTokenCount", 0)
    events = []
    spent = 0
    for n, parts in enumerate(groups):
        if n == len(groups) - 1:
            events.append(_response_json(answer, vertex, final=True, parts=parts))
            break
        spent += sum(count_tokens(str(p.get("text", ""))) for p in parts if not p.get("thought"))
        running: dict[str, Any] = {"promptTokenCount": prompt}
        if spent:
            running["candidatesTokenCount"] = spent
        running["totalTokenCount"] = prompt + spent + thoughts
        running["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if thoughts:
            running["thoughtsTokenCount"] = thoughts
        events.append(_response_json(answer, vertex, final=False, parts=parts, usage=running))
    return events


# -- errors ----------------------------------------------------------------------------------


def _error_info(reason: str, service: str = "generativelanguage.googleapis.com") -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": service},
    }


def _google_error(
    status: int,
    message: str,
    status_name: str,
    details: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": status_name}
    if details:
        error["details"] = list(details)
    return web.Response(
        status=status,
        body=_dumps_pretty({"error": error}),
        content_type="application/json",
        charset="UTF-8",
        headers=headers,
    )


def _scripted_error(failure: _Failure) -> web.Response:
    if failure.raw_body is not None:
        return web.Response(
            status=failure.status,
            text=failure.raw_body,
            content_type="text/html",
            headers=failure.headers,
        )
    status = failure.status
    status_name = failure.status_name or _STATUS_NAMES.get(
        status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"
    )
    message = failure.message or _DEFAULT_MESSAGES.get(
        status, _DEFAULT_MESSAGES[500] if status >= 500 else _DEFAULT_MESSAGES[400]
    )
    details: list[Mapping[str, Any]]
    if failure.details is not None:
        details = list(failure.details)
    else:
        details = []
        if failure.reason:
            details.append(_error_info(failure.reason))
        if status == 429:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                            "quotaValue": "10",
                        }
                    ],
                }
            )
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                }
            )
        if failure.retry_delay is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": failure.retry_delay,
                }
            )
    return _google_error(status, message, status_name, details, failure.headers)


def _validate(body: Any) -> web.Response | None:
    """The 400s Google sends for a request it cannot take, in its own words."""
    if not isinstance(body, dict):
        return _google_error(
            400,
            "Invalid JSON payload received. Expected an object (GenerateContentRequest).",
            "INVALID_ARGUMENT",
        )
    unknown = [key for key in body if key not in _REQUEST_FIELDS]
    config = body.get("generationConfig", body.get("generation_config"))
    if isinstance(config, dict):
        unknown += [f"generationConfig.{k}" for k in config if k not in _GENERATION_FIELDS]
    if unknown:
        message = "Invalid JSON payload received. " + "\n".join(
            f"Unknown name \"{name.rpartition('.')[2]}\" at '{name.rpartition('.')[0]}': "
            "Cannot find field."
            if "." in name
            else f'Unknown name "{name}": Cannot find field.'
            for name in unknown
        )
        violations = [
            {"field": name, "description": f'Invalid JSON payload received. Unknown name "{name}"'}
            for name in unknown
        ]
        details = [
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}
        ]
        return _google_error(400, message, "INVALID_ARGUMENT", details)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return _google_error(
            400,
            "* GenerateContentRequest.contents: contents is not specified\n",
            "INVALID_ARGUMENT",
        )
    for n, content in enumerate(contents):
        if not isinstance(content, dict):
            return _google_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
        if content.get("role", "user") not in ("user", "model", "function"):
            return _google_error(400, "Please use a valid role: user, model.", "INVALID_ARGUMENT")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return _google_error(
                400,
                f"* GenerateContentRequest.contents[{n}].parts: contents.parts must not be "
                "empty.\n",
                "INVALID_ARGUMENT",
            )
        for m, part in enumerate(parts):
            response = part.get("functionResponse") if isinstance(part, dict) else None
            if isinstance(response, dict) and not response.get("name"):
                return _google_error(
                    400,
                    f"* GenerateContentRequest.contents[{n}].parts[{m}].function_response.name:"
                    " Name cannot be empty.\n",
                    "INVALID_ARGUMENT",
                )
    tools = body.get("tools") or []
    for n, tool in enumerate(tools if isinstance(tools, list) else [tools]):
        if not isinstance(tool, dict):
            return _google_error(
                400,
                f"Invalid value at 'tools[{n}]': expected an object (Tool).",
                "INVALID_ARGUMENT",
            )
        declarations = tool.get("functionDeclarations", tool.get("function_declarations"))
        for m, declaration in enumerate(declarations or ()):
            parameters = declaration.get("parameters") if isinstance(declaration, dict) else None
            if (
                isinstance(parameters, dict)
                and str(parameters.get("type", "")).upper() == "OBJECT"
                and not parameters.get("properties")
            ):
                return _google_error(
                    400,
                    f"* GenerateContentRequest.tools[{n}].function_declarations[{m}].parameters"
                    ".properties: should be non-empty for OBJECT type\n",
                    "INVALID_ARGUMENT",
                )
    return None


# -- HTTP ------------------------------------------------------------------------------------


def _dumps_pretty(payload: Any) -> bytes:
    # Google's front end pretty-prints JSON answers with two spaces.
    return json.dumps(payload, indent=2, ensure_ascii=False).encode()


def _pretty_json(payload: Any) -> web.Response:
    return web.Response(
        body=_dumps_pretty(payload), content_type="application/json", charset="UTF-8"
    )


# -- counting and echoing --------------------------------------------------------------------


def _function_call(call: Mapping[str, Any] | Any) -> tuple[str | None, str, Any]:
    if isinstance(call, Mapping):
        name = call["name"]
        args = call.get("args", call.get("arguments", {}))
        call_id = call.get("id")
    else:
        name, args, call_id = call.name, call.arguments, getattr(call, "id", None)
    if isinstance(args, str):
        args = json.loads(args) if args.strip() else {}
    return (call_id or None, str(name), dict(args))


def _part_tokens(part: Any) -> int:
    if not isinstance(part, dict):
        return 0
    if "text" in part:
        return count_tokens(str(part["text"]))
    for key in ("inlineData", "inline_data", "fileData", "file_data"):
        if key in part:
            return _TOKENS_PER_IMAGE
    for key in ("functionCall", "function_call", "functionResponse", "function_response"):
        value = part.get(key)
        if isinstance(value, dict):
            return count_tokens(json.dumps(value))
    return 0


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    total = 0
    for content in body["contents"]:
        total += sum(_part_tokens(part) for part in content.get("parts", ()))
    system = body.get("systemInstruction", body.get("system_instruction"))
    if isinstance(system, dict):
        total += sum(_part_tokens(part) for part in system.get("parts", ()))
    if body.get("tools"):
        total += count_tokens(json.dumps(body["tools"]))
    return max(total, 1)


def _content_text(content: Mapping[str, Any]) -> str:
    texts = [
        str(p["text"])
        for p in content.get("parts", ())
        if isinstance(p, dict) and "text" in p and not p.get("thought")
    ]
    return " ".join(texts)


def _default_text(contents: list[dict[str, Any]]) -> str:
    last = contents[-1]
    responses = [
        p.get("functionResponse", p.get("function_response"))
        for p in last.get("parts", ())
        if isinstance(p, dict) and ("functionResponse" in p or "function_response" in p)
    ]
    if responses:
        shown = ", ".join(
            json.dumps(r.get("response"), ensure_ascii=False)
            for r in responses
            if isinstance(r, dict)
        )
        return f"The tool returned: {shown}"
    for content in reversed(contents):
        if content.get("role", "user") == "user":
            text = _content_text(content)
            return f"Echo: {text}" if text else "Hello! How can I help you today?"
    return "Hello! How can I help you today?"


def _model_json(spec: ModelSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": f"models/{spec.id}",
        "version": "001",
        "displayName": spec.display_name,
        "description": f"{spec.display_name}, served by tollway's fake Gemini.",
        "inputTokenLimit": spec.input_token_limit,
        "outputTokenLimit": spec.output_token_limit,
        "supportedGenerationMethods": list(spec.methods),
    }
    if "generateContent" in spec.methods:
        out.update({"temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2})
    if spec.thinking:
        out["thinking"] = True
    return out
