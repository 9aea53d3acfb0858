"""A fake Amazon Bedrock server that speaks the real wire format, for tests.

Bedrock's endpoints cannot be reached from tests, so this server answers in their place: the
Converse (``POST /model/{modelId}/converse``) and ConverseStream
(``POST /model/{modelId}/converse-stream``) routes of ``bedrock-runtime``, and the control
plane's ListFoundationModels (``GET /foundation-models``), with the same JSON shapes, the binary
AWS event-stream framing, ``x-amzn-ErrorType`` error headers and ``x-amzn-RequestId``.
``core/tests/test_fake_bedrock_sdk.py`` parses its answers with boto3, so the fake cannot drift
from what botocore accepts.

Start it with ``async with FakeBedrock() as fake:`` and point a client at ``fake.base_url``
(both the runtime and the control-plane routes live there). Requests must carry a SigV4
``Authorization`` header for service ``bedrock`` and an ``X-Amz-Date``; the signature itself is
not checked. Without a script it answers deterministically, echoing the last user message, with
token counts derived from the text. Script the next answers with ``reply``, ``fail`` and
``fault``; they are served in the order they were scripted, one per Converse request.

The event-stream encoder here is the fake's own, written from the format's description and
kept apart from any client's decoder, so a shared misreading cannot hide.
"""

from __future__ import annotations

import json
import re
import secrets
import struct
import uuid
import zlib
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

__all__ = [
    "DEFAULT_MODELS",
    "FakeBedrock",
    "Fault",
    "FoundationModel",
    "RecordedRequest",
    "encode_event",
    "encode_exception",
    "encode_message",
]

# The exceptions ConverseStream can send inside a stream, and their modelled HTTP statuses.
STREAM_EXCEPTIONS: dict[str, int] = {
    "internalServerException": 500,
    "modelStreamErrorException": 424,
    "validationException": 400,
    "throttlingException": 429,
    "serviceUnavailableException": 503,
}

EventHeader: TypeAlias = str | bytes | bool | int | uuid.UUID


@attrs.frozen
class FoundationModel:
    """One entry of ListFoundationModels."""

    id: str
    name: str = ""
    provider: str = ""
    input_modalities: tuple[str, ...] = ("TEXT",)
    output_modalities: tuple[str, ...] = ("TEXT",)
    streaming: bool = True
    inference_types: tuple[str, ...] = ("ON_DEMAND",)
    customizations: tuple[str, ...] = ()
    status: str = "ACTIVE"


DEFAULT_MODELS: tuple[FoundationModel, ...] = (
    FoundationModel(
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "Claude 3.5 Haiku",
        "Anthropic",
        inference_types=("ON_DEMAND", "INFERENCE_PROFILE"),
    ),
    FoundationModel(
        "anthropic.claude-3-7-sonnet-20250219-v1:0",
        "Claude 3.7 Sonnet",
        "Anthropic",
        input_modalities=("TEXT", "IMAGE"),
        inference_types=("INFERENCE_PROFILE",),
    ),
    FoundationModel(
        "amazon.nova-lite-v1:0",
        "Nova Lite",
        "Amazon",
        input_modalities=("TEXT", "IMAGE", "VIDEO"),
        customizations=("FINE_TUNING", "DISTILLATION"),
    ),
    FoundationModel("amazon.nova-micro-v1:0", "Nova Micro", "Amazon"),
    FoundationModel("meta.llama3-1-8b-instruct-v1:0", "Llama 3.1 8B Instruct", "Meta"),
    FoundationModel(
        "amazon.titan-embed-text-v2:0",
        "Titan Text Embeddings V2",
        "Amazon",
        output_modalities=("EMBEDDING",),
        streaming=False,
    ),
)

_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_IMAGE = 1600  # a ~1 megapixel image, as Anthropic models bill it
_SIGV4_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)"
    r"/(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_AMZ_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")
_ARGUMENT_FRAGMENT = 8
# Bedrock pads every stream event with a "p" field of varying length, so that the size of an
# encrypted frame does not give away the tokens inside it.
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

# Service errors are namespaced under Bedrock; the authentication layer's under Coral itself.
_BEDROCK_NS = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_CORAL_NS = "http://internal.amazon.com/coral/com.amazon.coral.service/"
_AUTH_ERRORS = frozenset(
    (
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
    )
)
_ERRORS_BY_STATUS: dict[int, tuple[str, str]] = {
    400: (
        "ValidationException",
        "Malformed input request, please reformat your input and try again.",
    ),
    403: (
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    404: (
        "ResourceNotFoundException",
        "Model not found. Check the model identifier and try again.",
    ),
    408: (
        "ModelTimeoutException",
        "Model has timed out in processing the request. Try your request again.",
    ),
    424: (
        "ModelErrorException",
        "The system encountered an unexpected error during processing. Try your request again.",
    ),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: (
        "InternalServerException",
        "The server encountered an internal error while processing the request.",
    ),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}
_ERRORS_BY_TYPE: dict[str, tuple[int, str]] = {
    kind: (status, message) for status, (kind, message) in _ERRORS_BY_STATUS.items()
}
_ERRORS_BY_TYPE.update(
    {
        "ModelNotReadyException": (
            429,
            "Model is not ready for inference. Wait and try your request again. Refer to the "
            "Bedrock user guide for more information.",
        ),
        "ServiceQuotaExceededException": (
            400,
            "Your request exceeded the service quota for your account. You can view your "
            "quotas at Viewing service quotas. You can resubmit your request later.",
        ),
        "UnrecognizedClientException": (
            403,
            "The security token included in the request is invalid.",
        ),
        "ExpiredTokenException": (403, "The security token included in the request is expired"),
        "InvalidSignatureException": (
            403,
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.",
        ),
    }
)
_STREAM_MESSAGES: dict[str, str] = {
    "internalServerException": "The server encountered an internal error while processing the "
    "request.",
    "modelStreamErrorException": "An error occurred while streaming the response. Retry your "
    "request.",
    "validationException": "Input is too long for requested model.",
    "throttlingException": "Too many tokens, please wait before trying again.",
    "serviceUnavailableException": "Bedrock is unable to process your request.",
}


@attrs.frozen
class _Reply:
    text: str | None
    tool_calls: tuple[tuple[str, str, Any], ...]  # (toolUseId, name, input)
    reasoning: str | None
    stop_reason: str | None
    usage: Mapping[str, int] | None
    cache_read_tokens: int
    cache_write_tokens: int


@attrs.frozen
class _Failure:
    status: int
    message: str | None
    code: str | None
    headers: Mapping[str, str]
    raw_body: str | None


@attrs.frozen
class _Fault:
    kind: str
    exception: str
    message: str | None


_Outcome: TypeAlias = _Reply | _Failure | _Fault


@attrs.frozen
class _Answer:
    """One Converse answer: its content blocks in order, why it stopped, and its usage."""

    blocks: tuple[dict[str, Any], ...]
    stop_reason: str
    usage: dict[str, int]
    latency_ms: int


class FakeBedrock(FakeServer[_Outcome]):
    """An aiohttp.web server on 127.0.0.1 that answers like Amazon Bedrock; ``base_url`` is the
    runtime and the control-plane endpoint at once.

    Knobs, all settable at any time:

    - ``require_access_key``: when set, requests signed with another access key id are refused
      with 403 ``UnrecognizedClientException``, as AWS refuses an unknown key.
    - ``latency``: seconds to wait before answering; ``chunk_delay``: seconds between events.
    - ``models``: what ``GET /foundation-models`` lists (:class:`FoundationModel` or model ids).
    - ``stall_seconds``: how long the ``"stall"`` fault stays silent (the fake's close ends it).

    ``requests`` records every request received; ``abandoned_streams`` counts streams whose
    client went away before the end.
    """

    def __init__(
        self,
        *,
        require_access_key: str | None = None,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        models: Sequence[FoundationModel | str] = DEFAULT_MODELS,
        stall_seconds: float = 3600.0,
    ) -> None:
        super().__init__(latency=latency, chunk_delay=chunk_delay, stall_seconds=stall_seconds)
        self.require_access_key = require_access_key
        self.models = [m if isinstance(m, FoundationModel) else _model_from_id(m) for m in models]

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/model/{model_id}/converse", self._converse)
        router.add_post("/model/{model_id}/converse-stream", self._converse_stream)
        router.add_get("/foundation-models", self._foundation_models)

    # -- scripting -------------------------------------------------------------------------

    def reply(
        self,
        text: str | None = None,
        *,
        tool_calls: Iterable[Mapping[str, Any] | Any] = (),
        reasoning: str | None = None,
        stop_reason: str | None = None,
        usage: Mapping[str, int] | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        times: int = 1,
    ) -> None:
        """Queue the next answer(s), served verbatim (``maxTokens`` does not cut them).

        ``tool_calls`` items are mappings with ``name``, ``arguments`` (a mapping, or its JSON
        text) and optionally ``id``, or objects with those attributes (such as
        :class:`tollway.types.ToolCall`). ``reasoning`` adds a ``reasoningContent`` block before
        the text; its tokens count as output tokens, as Bedrock counts them. ``stop_reason`` is
        Bedrock's (``end_turn``, ``max_tokens``, ``tool_use``, ``guardrail_intervened``...).
        ``cache_read_tokens``/``cache_write_tokens`` are reported on top of the counted
        ``inputTokens``, which exclude them; ``usage`` overrides any wire field of ``usage``.
        """
        calls = tuple(_tool_call(call) for call in tool_calls)
        outcome = _Reply(
            text, calls, reasoning, stop_reason, usage, cache_read_tokens, cache_write_tokens
        )
        self._script(outcome, times)

    def fail(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        raw_body: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next Converse request(s) with an HTTP error, as Bedrock sends it.

        ``code`` is the error type sent in ``x-amzn-ErrorType`` (``ThrottlingException``...);
        it and ``message`` default to what Bedrock sends for the status (or for ``code``).
        ``raw_body`` replaces the JSON body with an HTML page, as a proxy in front would send.
        """
        self._check_status(status)
        outcome = _Failure(status, message, code, dict(headers or {}), raw_body)
        self._script(outcome, times)

    def fault(
        self,
        kind: Fault,
        *,
        exception: str = "modelStreamErrorException",
        message: str | None = None,
        times: int = 1,
    ) -> None:
        """Misbehave on the next Converse request(s).

        - ``reset``: the connection is reset (TCP RST) before any answer.
        - ``stall``: a JSON answer never comes; a stream stops part-way and goes silent.
        - ``malformed``: HTTP 200 with a body that is not valid JSON; in a stream, a frame whose
          checksum is wrong.
        - ``cut_stream``: a stream ends cleanly part-way, without ``messageStop``/``metadata``;
          a JSON answer is cut off before its declared length and the connection dropped.
        - ``mid_stream_error``: a stream sends some text, then an exception message of type
          ``exception`` (one of :data:`STREAM_EXCEPTIONS`); a JSON request gets HTTP 500.
        """
        self._check_fault(kind)
        if exception not in STREAM_EXCEPTIONS:
            raise ValueError(
                f"unknown stream exception {exception!r}; use one of "
                f"{', '.join(sorted(STREAM_EXCEPTIONS))}"
            )
        self._script(_Fault(kind, exception, message), times)

    # -- plumbing --------------------------------------------------------------------------

    def _new_request_id(self) -> str:
        return str(uuid.uuid4())

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-amzn-RequestId"] = request.get(REQUEST_ID) or self._new_request_id()

    def _route_error(self, request: web.Request, exc: web.HTTPException) -> web.Response | None:
        if exc.status < 400:
            return None
        return _aws_error(404, "UnknownOperationException", None, namespace=_CORAL_NS)

    def _refuse(self, request: web.Request) -> web.Response | None:
        """Refuse what AWS would refuse before looking at the request: no SigV4, or a key it
        does not know."""
        auth = request.headers.get("Authorization", "")
        match = _SIGV4_RE.match(auth)
        date = request.headers.get("X-Amz-Date", "")
        if match is None or match["service"] != "bedrock" or not _AMZ_DATE_RE.match(date):
            return _aws_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        signed = match["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return _aws_error(
                403,
                "IncompleteSignatureException",
                "'Host' or 'x-amz-date' must be a signed header.",
            )
        if self.require_access_key is not None and match["key"] != self.require_access_key:
            return _aws_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        return None

    # -- routes ----------------------------------------------------------------------------

    async def _foundation_models(self, request: web.Request) -> web.StreamResponse:
        await self._wait(self.latency)
        query = request.query
        by_provider = query.get("byProvider", "").lower()
        by_output = query.get("byOutputModality")
        by_inference = query.get("byInferenceType")
        by_customization = query.get("byCustomizationType")
        summaries = [
            _model_summary(model)
            for model in self.models
            if (not by_provider or model.provider.lower() == by_provider)
            and (by_output is None or by_output in model.output_modalities)
            and (by_inference is None or by_inference in model.inference_types)
            and (by_customization is None or by_customization in model.customizations)
        ]
        return web.json_response({"modelSummaries": summaries})

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        return await self._chat(request, stream=False)

    async def _converse_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._chat(request, stream=True)

    async def _chat(self, request: web.Request, *, stream: bool) -> web.StreamResponse:
        body = request[BODY]
        invalid = _validate(body)
        if invalid is not None:
            return _aws_error(400, "ValidationException", invalid)
        outcome = self._next_outcome()
        await self._wait(self.latency)

        if isinstance(outcome, _Failure):
            return _scripted_error(outcome)
        fault = outcome if isinstance(outcome, _Fault) else None
        kind = fault.kind if fault is not None else None
        if kind == "reset":
            return await reset_connection(request)
        if kind == "mid_stream_error" and not stream:
            return _aws_error(500, "InternalServerException", _ERRORS_BY_STATUS[500][1])

        answer = _answer(body, outcome if isinstance(outcome, _Reply) else None)
        if not stream:
            if kind == "stall":
                return await self._stall(request)
            if kind == "malformed":
                return web.Response(
                    body=b'{"output": {"message": {"content": [{"text": "',
                    content_type="application/json",
                )
            payload = json.dumps(_converse_json(answer)).encode()
            if kind == "cut_stream":
                return await cut_body(request, payload)
            return web.Response(body=payload, content_type="application/json")
        return await self._stream(request, answer, fault)

    async def _stream(
        self, request: web.Request, answer: _Answer, fault: _Fault | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/vnd.amazon.eventstream"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        frames = list(_stream_frames(answer))
        # Faults strike after messageStart and about half the content, like a real cut; the
        # last two frames (messageStop, metadata) are never reached.
        cut_at = min(max(2, len(frames) // 2), len(frames) - 2)
        try:
            for n, frame in enumerate(frames):
                if fault is not None and n == cut_at:
                    await self._stream_fault(response, fault, frame)
                    return response
                await response.write(frame)
                if self.chunk_delay:
                    await self._wait(self.chunk_delay)
            await response.write_eof()
        except ConnectionError:
            self.abandoned_streams += 1
        return response

    async def _stream_fault(
        self, response: web.StreamResponse, fault: _Fault, next_frame: bytes
    ) -> None:
        if fault.kind == "stall":
            await self._wait(self.stall_seconds)
        elif fault.kind == "malformed":
            # The frame that was due, with its message checksum damaged.
            (crc,) = struct.unpack(">I", next_frame[-4:])
            await response.write(next_frame[:-4] + struct.pack(">I", crc ^ 0xFFFFFFFF))
        elif fault.kind == "mid_stream_error":
            payload: dict[str, Any] = {
                "message": fault.message or _STREAM_MESSAGES[fault.exception]
            }
            if fault.exception == "modelStreamErrorException":
                payload["originalStatusCode"] = 500
                payload["originalMessage"] = "Internal server error"
            await response.write(encode_exception(fault.exception, payload))
        # cut_stream (and each of the above) then ends the body before messageStop.
        await response.write_eof()


# -- the event-stream encoder ------------------------------------------------------------------


def _encode_header(name: str, value: EventHeader) -> bytes:
    raw_name = name.encode()
    head = bytes((len(raw_name),)) + raw_name
    if isinstance(value, bool):
        return head + (b"\x00" if value else b"\x01")
    if isinstance(value, str):
        raw = value.encode()
        return head + b"\x07" + struct.pack(">H", len(raw)) + raw
    if isinstance(value, bytes):
        return head + b"\x06" + struct.pack(">H", len(value)) + value
    if isinstance(value, uuid.UUID):
        return head + b"\x09" + value.bytes
    if -(2**31) <= value < 2**31:
        return head + b"\x04" + struct.pack(">i", value)
    return head + b"\x05" + struct.pack(">q", value)


def encode_message(headers: Mapping[str, EventHeader], payload: bytes) -> bytes:
    """One event-stream message: prelude, headers, payload and the two CRC32 checksums.

    Header types follow the values: ``str`` is a string (7), ``bytes`` a byte array (6),
    ``bool`` true/false (0/1), ``int`` a 32-bit (4) or 64-bit (5) integer, ``UUID`` a uuid (9).
    """
    raw_headers = b"".join(_encode_header(name, value) for name, value in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def encode_event(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """A ConverseStream event, with the headers Bedrock sends, in its order."""
    return encode_message(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        json.dumps(payload, separators=(",", ":")).encode(),
    )


def encode_exception(exception_type: str, payload: Mapping[str, Any]) -> bytes:
    """An exception message inside a stream (``throttlingException``...)."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps(payload, separators=(",", ":")).encode(),
    )


# -- answers ------------------------------------------------------------------------------------


def _answer(body: Mapping[str, Any], reply: _Reply | None) -> _Answer:
    messages: list[dict[str, Any]] = body["messages"]
    prompt_tokens = _prompt_tokens(body)
    blocks: list[dict[str, Any]] = []
    overrides: Mapping[str, int] = {}
    cache_read = cache_write = 0
    if reply is None:
        text = _default_text(messages)
        stop_reason = "end_turn"
        config = body.get("inferenceConfig") or {}
        limit = config.get("maxTokens") if isinstance(config, dict) else None
        if isinstance(limit, int) and limit >= 0:
            text, cut = truncate(text, limit)
            if cut:
                stop_reason = "max_tokens"
        if text:
            blocks.append({"text": text})
    else:
        if reply.reasoning is not None:
            signature = secrets.token_urlsafe(48)
            blocks.append(
                {
                    "reasoningContent": {
                        "reasoningText": {"text": reply.reasoning, "signature": signature}
                    }
                }
            )
        reply_text = reply.text
        if reply_text is None and not reply.tool_calls:
            reply_text = _default_text(messages)
        if reply_text:
            blocks.append({"text": reply_text})
        for call_id, name, arguments in reply.tool_calls:
            blocks.append({"toolUse": {"toolUseId": call_id, "name": name, "input": arguments}})
        stop_reason = reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")
        overrides = reply.usage or {}
        cache_read, cache_write = reply.cache_read_tokens, reply.cache_write_tokens
    output_tokens = 0
    for block in blocks:
        if "text" in block:
            output_tokens += count_tokens(block["text"])
        elif "reasoningContent" in block:
            output_tokens += count_tokens(block["reasoningContent"]["reasoningText"]["text"])
        else:
            use = block["toolUse"]
            output_tokens += count_tokens(use["name"]) + count_tokens(json.dumps(use["input"]))
    usage = {
        "inputTokens": overrides.get("inputTokens", prompt_tokens),
        "outputTokens": overrides.get("outputTokens", output_tokens),
    }
    # Bedrock's total counts the cached prompt tokens too; inputTokens does not.
    usage["totalTokens"] = overrides.get(
        "totalTokens", usage["inputTokens"] + usage["outputTokens"] + cache_read + cache_write
    )
    if cache_read or cache_write or "cacheReadInputTokens" in overrides:
        usage["cacheReadInputTokens"] = overrides.get("cacheReadInputTokens", cache_read)
        usage["cacheWriteInputTokens"] = overrides.get("cacheWriteInputTokens", cache_write)
    latency_ms = 180 + 9 * usage["outputTokens"]
    return _Answer(tuple(blocks), stop_reason, usage, latency_ms)


def _converse_json(answer: _Answer) -> dict[str, Any]:
    return {
        "metrics": {"latencyMs": answer.latency_ms},
        "output": {"message": {"content": list(answer.blocks), "role": "assistant"}},
        "stopReason": answer.stop_reason,
        "usage": answer.usage,
    }


def _stream_frames(answer: _Answer) -> Iterator[bytes]:
    """The frames of a streamed answer, in ConverseStream's order."""
    count = 0

    def event(event_type: str, payload: dict[str, Any]) -> bytes:
        nonlocal count
        count += 1
        payload["p"] = _PADDING[: 1 + (count * 7) % len(_PADDING)]
        return encode_event(event_type, payload)

    yield event("messageStart", {"role": "assistant"})
    for index, block in enumerate(answer.blocks):
        if "text" in block:
            for piece in PIECE_RE.split(block["text"]):
                if piece:
                    yield event(
                        "contentBlockDelta",
                        {"contentBlockIndex": index, "delta": {"text": piece}},
                    )
        elif "reasoningContent" in block:
            reasoning = block["reasoningContent"]["reasoningText"]
            for piece in PIECE_RE.split(reasoning["text"]):
                if piece:
                    delta = {"reasoningContent": {"text": piece}}
                    yield event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta})
            yield event(
                "contentBlockDelta",
                {
                    "contentBlockIndex": index,
                    "delta": {"reasoningContent": {"signature": reasoning["signature"]}},
                },
            )
        else:
            use = block["toolUse"]
            yield event(
                "contentBlockStart",
                {
                    "contentBlockIndex": index,
                    "start": {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}},
                },
            )
            # Anthropic models stream the input as JSON text with spaces after separators.
            arguments = json.dumps(use["input"])
            for start in range(0, len(arguments), _ARGUMENT_FRAGMENT):
                fragment = arguments[start : start + _ARGUMENT_FRAGMENT]
                yield event(
                    "contentBlockDelta",
                    {"contentBlockIndex": index, "delta": {"toolUse": {"input": fragment}}},
                )
        yield event("contentBlockStop", {"contentBlockIndex": index})
    yield event("messageStop", {"stopReason": answer.stop_reason})
    yield event(
        "metadata", {"usage": dict(answer.usage), "metrics": {"latencyMs": answer.latency_ms}}
    )


# -- validation, as Bedrock words it ----------------------------------------------------------


def _validate(body: Any) -> str | None:
    """Bedrock's ValidationException message for what it would refuse, or None."""
    if not isinstance(body, dict):
        return "Malformed input request, please reformat your input and try again."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return (
            "A conversation must start with a user message. Try again with a conversation "
            "that starts with a user message."
        )
    system = body.get("system", [])
    if not isinstance(system, list) or not all(
        isinstance(block, dict) and block for block in system
    ):
        return (
            "1 validation error detected: Value at 'system' failed to satisfy constraint: "
            "Member must be a list of SystemContentBlock"
        )
    tool_blocks = False
    previous_role: str | None = None
    pending_ids: list[str] = []
    for n, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return (
                f"1 validation error detected: Value '{role}' at 'messages.{n + 1}.member.role' "
                "failed to satisfy constraint: Member must satisfy enum value set: "
                "[user, assistant]"
            )
        if n == 0 and role != "user":
            return (
                "A conversation must start with a user message. Try again with a conversation "
                "that starts with a user message."
            )
        if role == previous_role:
            return (
                "A conversation must alternate between user and assistant roles. Make sure the "
                "conversation alternates between user and assistant roles and try again."
            )
        previous_role = role
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return (
                f"The content field in the Message object at messages.{n} is empty. Add a "
                "ContentBlock object to the content field and try again."
            )
        result_ids: list[str] = []
        use_ids: list[str] = []
        for m, block in enumerate(content):
            if not isinstance(block, dict) or len(block) != 1:
                return (
                    f"1 validation error detected: Value at 'messages.{n + 1}.member.content."
                    f"{m + 1}.member' failed to satisfy constraint: Member must be a union with "
                    "exactly one member set"
                )
            if "text" in block and (not isinstance(block["text"], str) or not block["text"]):
                return (
                    f"The text field in the ContentBlock object at messages.{n}.content.{m} is "
                    "blank. Add text to the text field, and try again."
                )
            if "toolUse" in block:
                tool_blocks = True
                use_ids.append(str(block["toolUse"].get("toolUseId")))
            if "toolResult" in block:
                tool_blocks = True
                result_ids.append(str(block["toolResult"].get("toolUseId")))
        if role == "user" and pending_ids and sorted(result_ids) != sorted(pending_ids):
            return (
                f"Expected toolResult blocks at messages.{n}.content for the following Ids: "
                f"{', '.join(pending_ids)}"
            )
        if role == "user" and result_ids and not pending_ids:
            return (
                f"messages.{n}.content: a toolResult block must follow an assistant message "
                "with the matching toolUse block"
            )
        pending_ids = use_ids
    if tool_blocks and not body.get("toolConfig"):
        return (
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )
    config = body.get("inferenceConfig")
    if config is not None:
        max_tokens = config.get("maxTokens") if isinstance(config, dict) else None
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return (
                "1 validation error detected: Value at 'inferenceConfig.maxTokens' failed to "
                "satisfy constraint: Member must have value greater than or equal to 1"
            )
    return None


# -- helpers ------------------------------------------------------------------------------------


def _aws_error(
    status: int,
    kind: str,
    message: str | None,
    *,
    namespace: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error as AWS's REST-JSON services send it: the type in ``x-amzn-ErrorType``, the
    text in the body (``Message`` from the authentication layer, ``message`` otherwise)."""
    auth = kind in _AUTH_ERRORS
    ns = namespace or (_CORAL_NS if auth else _BEDROCK_NS)
    out = {"x-amzn-ErrorType": f"{kind}:{ns}"}
    out.update(headers or {})
    body = {"Message" if auth else "message": message}
    return web.json_response(body, status=status, headers=out)


def _scripted_error(failure: _Failure) -> web.Response:
    if failure.raw_body is not None:
        return web.Response(
            status=failure.status,
            text=failure.raw_body,
            content_type="text/html",
            headers=failure.headers,
        )
    if failure.code is not None:
        kind = failure.code
        default = _ERRORS_BY_TYPE.get(kind, (failure.status, "An error occurred."))[1]
    elif failure.status in _ERRORS_BY_STATUS:
        kind, default = _ERRORS_BY_STATUS[failure.status]
    else:
        # A status Bedrock does not send itself (a gateway's 401, 502...): say only that.
        kind = "InternalFailure" if failure.status >= 500 else "UnknownError"
        default = "An error occurred."
    return _aws_error(failure.status, kind, failure.message or default, headers=failure.headers)


def _model_from_id(model_id: str) -> FoundationModel:
    vendor = model_id.split(".", 1)[0]
    return FoundationModel(model_id, model_id, vendor.capitalize())


def _model_summary(model: FoundationModel) -> dict[str, Any]:
    return {
        "modelArn": f"arn:aws:bedrock:us-east-1::foundation-model/{model.id}",
        "modelId": model.id,
        "modelName": model.name or model.id,
        "providerName": model.provider,
        "inputModalities": list(model.input_modalities),
        "outputModalities": list(model.output_modalities),
        "responseStreamingSupported": model.streaming,
        "customizationsSupported": list(model.customizations),
        "inferenceTypesSupported": list(model.inference_types),
        "modelLifecycle": {"status": model.status},
    }


def _tool_call(call: Mapping[str, Any] | Any) -> tuple[str, str, Any]:
    if isinstance(call, Mapping):
        name, arguments, call_id = call["name"], call.get("arguments", {}), call.get("id")
    else:
        name, arguments, call_id = call.name, call.arguments, getattr(call, "id", None)
    if isinstance(arguments, str):
        # Converse carries tool input as a JSON document, never as text.
        arguments = json.loads(arguments) if arguments.strip() else {}
    return (call_id or f"tooluse_{secrets.token_urlsafe(16)}", str(name), arguments)


def _block_text(block: Mapping[str, Any]) -> tuple[str, int]:
    """The text in a content block (tool results included) and how many images it holds."""
    if "text" in block:
        return str(block["text"]), 0
    if "image" in block:
        return "", 1
    if "toolUse" in block:
        use = block["toolUse"]
        return f"{use.get('name', '')} {json.dumps(use.get('input'))}", 0
    if "toolResult" in block:
        texts, images = [], 0
        for part in block["toolResult"].get("content") or ():
            if "json" in part:
                texts.append(json.dumps(part["json"]))
            else:
                text, found = _block_text(part)
                texts.append(text)
                images += found
        return " ".join(t for t in texts if t), images
    return "", 0


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    total = 0
    for block in body.get("system") or ():
        total += count_tokens(str(block.get("text", "")))
    for message in body["messages"]:
        total += _TOKENS_PER_MESSAGE
        for block in message["content"]:
            text, images = _block_text(block)
            total += count_tokens(text) + images * _TOKENS_PER_IMAGE
    tools = body.get("toolConfig")
    if tools:
        total += count_tokens(json.dumps(tools))
    return total


def _default_text(messages: list[dict[str, Any]]) -> str:
    last = messages[-1]
    if last["role"] == "user":
        results = [b for b in last["content"] if "toolResult" in b]
        if results:
            return "The tool returned: " + " ".join(_block_text(b)[0] for b in results)
        text = " ".join(_block_text(b)[0] for b in last["content"] if "text" in b)
        if text:
            return f"Echo: {text}"
    return "Hello! How can I help you today?"
